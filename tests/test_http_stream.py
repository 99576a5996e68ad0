"""``GET /v1/stream`` against a real broker: several instances and globs, resume with
``Last-Event-ID`` (no gap, no duplicate), slow clients (shed with a visible gap, or cut off),
journal gap markers, and bad requests (400 with a one-line JSON error)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from aiohttp import web
from exesdb_sdk import ControlClient, Publisher
from exesdb_sdk.protocol import Decoder
from exesdb_web import BusAccess, WebServer, WebSettings, create_app
from exesdb_web import server as web_server
from exesdb_web.app import COUNTERS

from .conftest import BrokerProcess, StartBroker, instance_messages, wait_until
from .test_journal import journal as journal_stats

JSON_KEYS = {"topic", "instance", "type", "ts", "src", "seq", "corr", "data"}


@dataclass
class Served:
    """The HTTP application of one broker, served by a :class:`WebServer` thread."""

    server: WebServer
    thread: threading.Thread
    app: web.Application

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def counters(self) -> Counter[str]:
        return self.app[COUNTERS]

    def stop(self) -> None:
        self.server.stop()
        self.thread.join(10)
        assert not self.thread.is_alive(), "the web server did not stop"


@pytest.fixture
def serve(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """``serve(broker, settings)``: a started :class:`Served` (stopped in teardown)."""
    yield from serving(monkeypatch)


def serving(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The ``serve`` fixture's body (shared with tests/test_http_publish.py). The app the
    server builds is kept, to read its counters."""
    started: list[Served] = []
    apps: list[web.Application] = []

    def recording(access: BusAccess, settings: WebSettings | None = None) -> web.Application:
        app = create_app(access, settings)
        apps.append(app)
        return app

    monkeypatch.setattr(web_server, "create_app", recording)

    def start(broker: BrokerProcess, settings: WebSettings | None = None) -> Served:
        server = WebServer(BusAccess(broker.frontend, broker.backend, broker.control), "127.0.0.1", 0, settings)
        thread = threading.Thread(target=server.run, name="web", daemon=True)
        thread.start()
        assert server.ready.wait(10) and server.error is None, server.error
        served = Served(server, thread, apps[-1])
        started.append(served)
        return served

    yield start
    for served in started:
        served.stop()


@dataclass
class Event:
    data: Any
    event: str = "message"
    id: str = ""
    """The client's last event id once this event arrived (SSE keeps it across events)."""
    own_id: bool = False
    """Whether this event carried an ``id`` field itself."""


@dataclass
class Events:
    """An SSE parser over a streaming httpx response (every read bounded by its timeout)."""

    response: httpx.Response
    last_id: str = ""
    comments: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lines = self.response.iter_lines()

    def next(self, end: float) -> Event | None:
        """The next event, or ``None`` at the end of the stream; fails past ``end`` (monotonic)."""
        data: list[str] = []
        kind, has_id = "message", False
        for line in self._lines:
            assert time.monotonic() < end, "no event in time"
            if not line:
                if data:
                    return Event(json.loads("\n".join(data)), kind, self.last_id, has_id)
                kind, has_id = "message", False  # an id-only block sets the id, dispatches nothing
                continue
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if not name:
                self.comments.append(value)
            elif name == "data":
                data.append(value)
            elif name == "event":
                kind = value
            elif name == "id":
                self.last_id, has_id = value, True
        return None

    def take(self, count: int, deadline: float = 15.0) -> list[Event]:
        """The next ``count`` events; fails if the stream ends or ``deadline`` passes first."""
        events: list[Event] = []
        end = time.monotonic() + deadline
        while len(events) < count:
            assert time.monotonic() < end, f"only {len(events)} of {count} events: {events}"
            event = self.next(end)
            assert event is not None, f"stream ended after {len(events)} of {count} events"
            events.append(event)
        return events

    def until(self, title: str, deadline: float = 15.0, limit: int = 10_000) -> list[Event]:
        """Events up to and including the first whose data's title is ``title``."""
        events: list[Event] = []
        end = time.monotonic() + deadline
        for _ in range(limit):
            assert time.monotonic() < end, f"no {title!r} in time: {events}"
            event = self.next(end)
            assert event is not None, f"stream ended before {title!r}: {events}"
            events.append(event)
            if isinstance(event.data, dict) and event.data.get("data", {}).get("title") == title:
                return events
        raise AssertionError(f"no {title!r} in {limit} events")


def client(served: Served) -> httpx.Client:
    return httpx.Client(base_url=served.url, timeout=httpx.Timeout(10.0, read=10.0))


def alert(pub: Publisher, title: str, severity: str = "critical", durable: bool = False) -> int:
    return pub.publish("alerts", severity, "SystemAlert", {"severity": severity, "title": title}, durable=durable)


def titles(events: list[Event], instance: str) -> list[str]:
    return [e.data["data"]["title"] for e in events if e.event == "message" and e.data["instance"] == instance]


def test_several_instances_and_a_glob_each_event_the_tail_json(
    broker: BrokerProcess, serve: Any, clean_env: dict[str, str]
) -> None:
    served = serve(broker)
    params = [("instance", "health"), ("topic", "alerts/crit*"), ("topic", "ex_esdb_audit/login:*")]
    with (
        client(served) as http,
        http.stream("GET", "/v1/stream", params=params) as response,
        Publisher(broker.frontend, control=broker.control) as pub,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = Events(response)
        pub.publish("health", "node_health:a", "NodeHealth", {"node": "a", "status": "healthy"}, corr="c-1")
        alert(pub, "a1")
        alert(pub, "w1", "warning")  # not critical: left out
        pub.publish("alerts", "critters", "Custom", {"title": "a2"})  # matches crit*
        pub.publish("audit", "login:alice", "Custom", {"title": "u1"})
        pub.publish("audit", "logout:alice", "Custom", {"title": "u2"})  # not login:*
        pub.publish("metrics", "x", "Custom", {"title": "m1"})  # not asked for
        # a durable publish can overtake a live one on its way to the journal (docs/protocol.md 10.5)
        assert wait_until(lambda: "u1" in _journaled_titles(broker, "ex_esdb_audit"), 10)
        pub.publish("audit", "login:bob", "Custom", {"title": "u3"}, durable=True)
        pub.publish("health", "node_health:b", "Custom", {"title": "h-end"})
        got = events.take(6)

    assert events.comments[0] == "exesdb stream"
    assert all(e.event == "message" for e in got)
    assert titles(got, "ex_esdb_alerts") == ["a1", "a2"]
    assert titles(got, "ex_esdb_audit") == ["u1", "u3"]
    health = [e for e in got if e.data["instance"] == "ex_esdb_health"]
    assert [e.data["type"] for e in health] == ["NodeHealth", "Custom"]
    assert health[0].data["data"] == {"node": "a", "status": "healthy"} and health[0].data["corr"] == "c-1"
    assert not any(e.own_id for e in health)  # live-only: no id of their own
    journaled = [e for e in got if e.data["instance"] != "ex_esdb_health"]
    assert all(e.own_id and e.id.startswith("ex_esdb_alerts:") and ",ex_esdb_audit:" in e.id for e in journaled)
    for event in got:
        assert set(event.data) == JSON_KEYS  # exactly what ``exesdb tail --json`` prints
    assert served.counters["sse_events"] == len(got)
    assert served.counters["sse_streams_opened"] == 1
    assert wait_until(lambda: served.counters["sse_streams_closed"] == 1, 5)


def _cursor(event_id: str) -> dict[str, str]:
    return dict(part.split(":") for part in event_id.split(","))


def test_resume_with_last_event_id_has_no_gap_no_duplicate_and_keeps_order(broker: BrokerProcess, serve: Any) -> None:
    served = serve(broker)
    params = [("instance", "alerts"), ("instance", "audit"), ("instance", "health")]
    with client(served) as http, Publisher(broker.frontend, control=broker.control) as pub:
        with http.stream("GET", "/v1/stream", params=params) as response:
            events = Events(response)
            for n in range(1, 4):
                alert(pub, f"a{n}")
            # instances are followed side by side (no order between them): the batch goes once a1-a3 came
            first = events.take(3)
            pub.publish_batch("audit", "batch", "Custom", [{"title": f"b{n}"} for n in range(1, 4)])
            first += events.take(2)  # two of the batch's three envelopes
            last_id = events.last_id
        assert titles(first, "ex_esdb_alerts") == ["a1", "a2", "a3"]
        assert titles(first, "ex_esdb_audit") == ["b1", "b2"]
        assert _cursor(last_id)["ex_esdb_audit"].endswith(".2"), last_id  # inside the batch

        # disconnected: live, durable and a health message (live-only: at most once, not resumed).
        # a durable publish is journaled when its request arrives, and a live one when it comes
        # through the data plane: wait for a4 to be journaled, so that the journal's order (the
        # stream's) is the publisher's (docs/protocol.md 10.5)
        alert(pub, "a4")
        assert wait_until(lambda: "a4" in _journaled_titles(broker, "ex_esdb_alerts"), 10)
        alert(pub, "a5", durable=True)
        pub.publish("audit", "x", "Custom", {"title": "u1"})
        health_before = instance_messages(broker, "ex_esdb_health")
        pub.publish("health", "node_health:a", "Custom", {"title": "h-missed"})
        # past the broker (its tap counted it) before the client comes back: else, on a loaded
        # machine, it could still be on its way and reach the new subscription
        pub.flush()
        assert wait_until(lambda: instance_messages(broker, "ex_esdb_health") > health_before, 10, 0.05)
        headers = {"Last-Event-ID": last_id}
        with http.stream("GET", "/v1/stream", params=params, headers=headers) as response:
            assert response.status_code == 200
            events = Events(response)
            resumed = events.take(4)
            alert(pub, "a6")
            resumed += events.until("a6")

    assert titles(resumed, "ex_esdb_alerts") == ["a4", "a5", "a6"]
    assert titles(resumed, "ex_esdb_audit") == ["b3", "u1"]
    assert titles(resumed, "ex_esdb_health") == []
    # what the journal held when the client came back is marked replayed; what came later is not
    assert [e.data.get("replayed", False) for e in resumed if e.data["instance"] == "ex_esdb_alerts"] == [
        True, True, False,
    ]  # fmt: skip
    seqs = [int(_cursor(e.id)["ex_esdb_alerts"].split(".")[0]) for e in first + resumed if e.own_id]
    assert seqs == sorted(seqs)  # ids only move forward
    assert served.counters["sse_resumed"] == 1
    assert served.counters["sse_streams_opened"] == 2


def _journaled_titles(broker: BrokerProcess, instance: str) -> list[str]:
    with ControlClient(broker.control) as control:
        reply = control.request("replay", {"instance": instance, "limit": 1000})
    decoded = [Decoder().decode([record[2].encode(), record[3]]) for record in reply["records"]]
    return [m.data.get("title", "") for messages in decoded for m in messages]


def test_bad_stream_requests_get_a_one_line_json_400(broker: BrokerProcess, serve: Any) -> None:
    served = serve(broker)
    with Publisher(broker.frontend, control=broker.control) as pub:
        head = alert(pub, "one", durable=True)
    bad: list[tuple[list[tuple[str, str]], dict[str, str], str]] = [
        ([("instance", "nosuch")], {}, "nosuch"),
        ([("topic", "health")], {}, "needs '<instance>/'"),
        ([("topic", "nosuch/x")], {}, "nosuch"),
        ([("instanse", "health")], {}, "unknown query parameter 'instanse'"),
        ([("instance", "health")] * 65, {}, "at most 64"),
        ([("topic", "health/" + "x" * 1025)], {}, "over 1024 bytes"),
        ([("instance", "alerts")], {"Last-Event-ID": "garbage"}, "not <instance>:<broker seq>"),
        ([("instance", "alerts")], {"Last-Event-ID": "ex_esdb_alerts:1,ex_esdb_alerts:1"}, "twice"),
        ([("instance", "alerts")], {"Last-Event-ID": "nosuch:1"}, "nosuch"),
        ([("instance", "alerts")], {"Last-Event-ID": "ex_esdb_alerts:99999999999999999999"}, "not <instance>"),
        ([("instance", "alerts")], {"Last-Event-ID": "ex_esdb_health:1"}, "does not follow"),
        ([("instance", "alerts")], {"Last-Event-ID": f"ex_esdb_alerts:{head + 5}"}, f"past the journal's head {head}"),
    ]
    with client(served) as http:
        for params, headers, needle in bad:
            response = http.get("/v1/stream", params=params, headers=headers)
            assert response.status_code == 400, (params[:2], headers, response.text)
            assert response.headers["content-type"].startswith("application/json")
            assert response.text.count("\n") == 1 and response.text.endswith("\n")
            error = response.json()["error"]
            assert error["code"] == "bad_request" and needle in error["message"], error
        # and the server goes on serving streams
        with http.stream("GET", "/v1/stream", params={"instance": "alerts"}) as response:
            assert response.status_code == 200
    assert wait_until(lambda: served.counters["sse_streams_closed"] == 1, 5)
    assert served.counters["sse_streams_opened"] == 1  # none of the bad ones


def _raw_stream(served: Served, query: str) -> socket.socket:
    """A raw client with a small receive buffer that has read the response head, no more."""
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    raw.settimeout(10)
    raw.connect((served.server.host, served.server.port))
    raw.sendall(f"GET /v1/stream?{query} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    head = b""
    for _ in range(100):
        if b"\r\n\r\n" in head:
            break
        head += raw.recv(1)
    assert head.startswith(b"HTTP/1.1 200"), head
    return raw


FLOODER = """
import sys, threading
from exesdb_sdk import Publisher
stop = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
data = {"node": "node1", "status": "healthy", "load_avg": 0.42, "memory_usage": 0.61}
with Publisher(sys.argv[1], linger=0, coalesce=0) as pub:  # a flood of single messages, as measured
    for n in range(10_000_000):
        if n % 1000 == 0 and stop.is_set():
            break
        pub.publish("health", "node_health:node1", "NodeHealth", data)
"""


@pytest.mark.timeout(60)
def test_slow_clients_are_shed_with_a_visible_gap_or_cut_off_and_others_are_served(
    start_broker: StartBroker, serve: Any
) -> None:
    broker = start_broker("--hwm", "1000")  # the broker drops for a subscriber 1,000 behind
    served = serve(broker, WebSettings(sse_queue=50, sse_write_timeout=2.0))
    counters = served.counters
    stopped = _raw_stream(served, "instance=health")  # reads nothing more from here on
    slow = _raw_stream(served, "instance=health")
    received = bytearray()
    done = threading.Event()

    def read_slowly() -> None:  # at most 64 KiB per 5 ms: it never stops, and keeps up with little
        with slow:
            while not done.is_set() and len(received) < 200 << 20:
                try:
                    received.extend(slow.recv(65536))
                except OSError:
                    return
                done.wait(0.005)

    reader = threading.Thread(target=read_slowly, daemon=True)
    reader.start()
    flood = subprocess.Popen([sys.executable, "-c", FLOODER, broker.frontend], stdin=subprocess.PIPE)
    try:
        shed = wait_until(lambda: counters["sse_cut_off"] >= 1 and b"event: gap\n" in received, 30, 0.05)
        # meanwhile the server serves everyone else
        with client(served) as http, Publisher(broker.frontend, control=broker.control, coalesce=0) as pub:
            assert http.get("/v1/stats").status_code == 200
            with http.stream("GET", "/v1/stream", params={"instance": "alerts"}) as response:
                events = Events(response)
                alert(pub, "still served")
                assert titles(events.until("still served"), "ex_esdb_alerts") == ["still served"]
    finally:
        flood.communicate(b"", timeout=20)
        done.set()
        reader.join(10)
        stopped.close()

    assert shed, dict(counters)
    assert counters["sse_cut_off"] >= 1, dict(counters)  # the client that stopped reading
    assert counters["sse_gaps"] >= 1 and counters["sse_missed"] >= counters["sse_gaps"], dict(counters)
    text = received.decode("utf-8", "replace")
    gaps = [json.loads(block.split("data: ", 1)[1]) for block in text.split("\n\n") if "event: gap\n" in block]
    assert gaps, "the slow client saw no gap event"
    assert all(g["instance"] == "ex_esdb_health" and g["missed"] >= 1 for g in gaps), gaps[:3]
    assert wait_until(lambda: counters["sse_streams_closed"] == counters["sse_streams_opened"] == 3, 10), dict(counters)


FLOOD = 80_000
"""More than the journal's feed holds (50,000) while its journal takes little at a time."""
FLOOD_ROUNDS = 5


@pytest.mark.timeout(90)
def test_journal_gap_markers_become_gap_events(start_broker: StartBroker, serve: Any) -> None:
    broker = start_broker("--journal-buffer", "1")  # the journal takes one message at a time
    served = serve(broker, WebSettings(sse_keepalive=0.5))  # a gap marker rings no doorbell
    with (
        client(served) as http,
        http.stream("GET", "/v1/stream", params={"topic": "alerts/critical"}) as response,
        Publisher(broker.frontend, control=broker.control, coalesce=0) as pub,
    ):
        events = Events(response)
        # On alerts/warning: the stream wants none of them, only the gaps. Whether one flood
        # outruns the journal depends on how the two share the cores, so flood until it has shed.
        for _ in range(FLOOD_ROUNDS):
            for n in range(FLOOD):
                alert(pub, f"live {n}", "warning")
            if wait_until(lambda: journal_stats(broker)["dropped_by_instance"].get("ex_esdb_alerts", 0) > 0, 3, 0.1):
                break
        alert(pub, "after the shedding", "warning")  # a marker is recorded before the next record
        gap = events.take(1, deadline=20)[0]
    assert any(c == "keepalive" for c in events.comments)
    assert gap.event == "gap" and gap.own_id, gap
    assert gap.data["instance"] == "ex_esdb_alerts" and gap.data["missed"] >= 1 and gap.data["reason"], gap
    journal = journal_stats(broker)
    assert 1 <= gap.data["missed"] <= journal["dropped_by_instance"]["ex_esdb_alerts"]
    assert int(gap.id.split(":")[1]) <= journal["heads"]["ex_esdb_alerts"]  # the marker's broker sequence
    assert served.counters["sse_gaps"] >= 1 and served.counters["sse_missed"] >= gap.data["missed"]


@pytest.mark.timeout(60)
def test_a_stream_over_its_rate_sheds_in_the_broker_and_counts_every_loss(start_broker: StartBroker) -> None:
    # the broker's own HTTP surface (inproc, no TCP buffers between it and the stream), which
    # delivers at most 500 events a second per stream and queues 100 + 1,000 for it
    broker = start_broker("--hwm", "100", "--http-stream-rate", "500", http=True)
    assert broker.http is not None
    seen: list[Event] = []
    last_seq = threading.Event()
    flood, sentinel = 8000, {"n": 0}

    def read(response: httpx.Response) -> None:
        events = Events(response)
        end = time.monotonic() + 45
        while not last_seq.is_set():
            event = events.next(end)
            if event is None:
                return
            seen.append(event)
            if event.event == "message" and event.data["data"].get("sentinel"):
                last_seq.set()

    with (
        httpx.Client(base_url=broker.http, timeout=httpx.Timeout(10.0, read=15.0)) as http,
        http.stream("GET", "/v1/stream", params={"topic": "diagnostics/flood"}) as response,
        Publisher(broker.frontend, coalesce=0) as pub,
    ):
        assert response.status_code == 200
        reader = threading.Thread(target=read, args=(response,), daemon=True)
        reader.start()
        # 4,000 a second for 2 s: an unlimited stream keeps up with it (it delivers tens of
        # thousands a second), one limited to 500 a second sheds most of it
        for n in range(flood):
            pub.publish("diagnostics", "flood", "Custom", {"n": n})
            if n % 200 == 199:
                time.sleep(0.05)  # the publisher's pace, not a wait for a socket

        def one_more() -> bool:  # the loss shows at the next message that gets through
            sentinel["n"] += 1
            pub.publish("diagnostics", "flood", "Custom", {"sentinel": sentinel["n"]})
            return last_seq.wait(0.5)

        assert wait_until(one_more, 30, 0), f"no sentinel arrived; {len(seen)} events"
        reader.join(10)
    messages = [e.data for e in seen if e.event == "message"]
    missed = sum(e.data["missed"] for e in seen if e.event == "gap")
    assert missed >= 2000, (missed, len(messages))  # shed: far beyond the 1,100 queued for it
    # nothing lost silently: every sequence number either arrived or is counted in a gap
    assert len(messages) + missed == messages[-1]["seq"], (len(messages), missed, messages[-1]["seq"])
    assert [m["seq"] for m in messages] == sorted({m["seq"] for m in messages})  # in order, no duplicate


def test_max_rate_must_be_a_positive_whole_number(broker: BrokerProcess, serve: Any) -> None:
    served = serve(broker)
    with client(served) as http:
        for bad in ("0", "-1", "fast", "1.5", "١٢"):
            reply = http.get("/v1/stream", params={"instance": "health", "max_rate": bad})
            assert reply.status_code == 400, (bad, reply.text)
            assert reply.text.count("\n") == 1 and "max_rate" in reply.json()["error"]["message"], reply.text
