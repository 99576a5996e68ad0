"""The HTTP surface honours the restricted class: a token of ``subscribers`` or ``publishers``
neither streams nor publishes ``security`` / ``audit``, a token of ``restricted_subscribers`` /
``restricted_publishers`` does (through the class's own pair), and SIGHUP moves a token in and
out, ending an open stream whose token lost the right.

Every test runs a real CURVE ``exesdb-broker`` with ``--restricted security,audit`` and its HTTP
surface on 127.0.0.1, raw pyzmq CURVE sockets on the restricted pair and httpx clients.
"""

from __future__ import annotations

import json
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import zmq
from exesdb_sdk import Instance, Publisher
from exesdb_sdk.protocol import Decoder, Encoder

from .conftest import BrokerProcess, StartBroker, wait_until
from .test_http_stream import Event, Events
from .test_restricted import _args
from .test_security import TIMEOUT, Keys, _curve_socket, keys

__all__ = ["keys"]  # the fixture, shared with test_security
pytestmark = pytest.mark.timeout(60)

ROLES = ("subscribers", "publishers", "admins", "restricted_subscribers", "restricted_publishers")
TOKENS = {role: f"{role}-token-0123456789abcdef" for role in ROLES}
BOTH = "both-roles-token-0123456789abcdef"
"""A token of subscribers and of restricted_subscribers."""


class Broker:
    """A CURVE broker with the restricted class, its HTTP surface and its token files."""

    def __init__(self, process: BrokerProcess, keys: Keys, files: dict[str, Path]) -> None:
        self.process, self.keys, self.files = process, keys, files
        assert process.http is not None and process.restricted_frontend is not None
        assert process.restricted_backend is not None
        self.url: str = process.http
        self.restricted_frontend: str = process.restricted_frontend
        self.restricted_backend: str = process.restricted_backend

    def get(self, path: str, token: str, **params: Any) -> httpx.Response:
        return httpx.get(self.url + path, params=params, headers=_bearer(token), timeout=TIMEOUT)

    def post(self, path: str, token: str, body: dict[str, Any], **params: Any) -> httpx.Response:
        return httpx.post(self.url + path, params=params, json=body, headers=_bearer(token), timeout=TIMEOUT)

    def http_counters(self) -> dict[str, int]:
        counters: dict[str, int] = self.get("/v1/stats", TOKENS["admins"]).json()["http"]
        return counters

    def reload(self) -> None:
        self.process.terminate(signal.SIGHUP)
        assert self.process.wait_line(re.compile("http tokens reloaded"), TIMEOUT) is not None, self.process.stderr


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def secured(start_broker: StartBroker, keys: Keys, tmp_path: Path) -> Broker:
    files = {}
    args = _args(keys)
    for role in ROLES:
        files[role] = tmp_path / f"{role}.tokens"
        extra = f"{BOTH}\n" if role in ("subscribers", "restricted_subscribers") else ""
        files[role].write_text(f"# {role}\n{TOKENS[role]}\n{extra}")
        args += [f"--http-token-{role.replace('_', '-')}", str(files[role])]
    return Broker(start_broker(*args, "--metrics-interval", "0.2", http=True), keys, files)


@pytest.fixture
def raw_rpub(secured: Broker) -> Iterator[zmq.Socket[bytes]]:
    """A raw CURVE PUB on the restricted frontend, its key in allow_restricted_publishers."""
    socket = _curve_socket(zmq.PUB, secured.keys, "rpub")
    socket.connect(secured.restricted_frontend)
    yield socket
    socket.close()


ENCODER = Encoder(src="test")


def _send(raw: zmq.Socket[bytes], instance: Instance, subtopic: str, title: str) -> None:
    topic = ENCODER.topic(instance, subtopic)
    raw.send_multipart([topic, ENCODER.encode(topic, "Custom", {"title": title})])


def _until_read(raw: zmq.Socket[bytes], sub: zmq.Socket[bytes]) -> None:
    """Send on ``raw`` until ``sub`` reads: both are then connected and subscribed."""
    end = time.monotonic() + TIMEOUT
    for _ in range(10_000):
        assert time.monotonic() < end, "the raw sockets never met"
        _send(raw, Instance.SECURITY, "ready", "ready")
        if sub.poll(50):
            return
    raise AssertionError("the raw sockets never met")


def _ready(secured: Broker, raw: zmq.Socket[bytes]) -> None:
    """Once the raw restricted publisher reaches a subscriber of the class, nothing it sends is lost."""
    sub = _raw_sub(secured, "rsub", secured.restricted_backend)
    try:
        _until_read(raw, sub)
    finally:
        sub.close()


def _titles(events: list[Event], instance: str) -> list[str]:
    return [e.data["data"]["title"] for e in events if e.event == "message" and e.data["instance"] == instance]


def _open(secured: Broker, http: httpx.Client, token: str, **params: Any) -> tuple[httpx.Response, Events]:
    """An open stream, once the broker confirmed its subscriptions (the first comment)."""
    response = http.send(http.build_request("GET", "/v1/stream", params=params, headers=_bearer(token)), stream=True)
    assert response.status_code == 200, response.read()
    events = Events(response)
    end = time.monotonic() + TIMEOUT
    for line in events._lines:  # the opening comment is written once the subscriptions are confirmed
        assert time.monotonic() < end
        if line.startswith(": exesdb stream"):
            break
    return response, events


def _client(secured: Broker) -> httpx.Client:
    return httpx.Client(base_url=secured.url, timeout=httpx.Timeout(TIMEOUT, read=TIMEOUT))


def test_only_a_token_of_the_class_streams_restricted_instances(secured: Broker, raw_rpub: zmq.Socket[bytes]) -> None:
    refused = secured.get("/v1/stream", TOKENS["subscribers"], instance="security")
    assert refused.status_code == 403 and refused.text.count("\n") == 1
    message = refused.json()["error"]["message"]
    assert "ex_esdb_security is restricted" in message and "restricted_subscribers" in message, message
    # a token of the class alone streams the class and nothing else
    public = secured.get("/v1/stream", TOKENS["restricted_subscribers"], instance="health")
    assert public.status_code == 403 and "subscribers" in public.json()["error"]["message"]
    with (
        _client(secured) as http,
        Publisher(secured.process.frontend, **secured.keys.client("pub")) as pub,
    ):
        every, outside = _open(secured, http, TOKENS["subscribers"])
        named, inside = _open(secured, http, TOKENS["restricted_subscribers"], instance=["security", "audit"])
        both, everything = _open(secured, http, BOTH)
        _ready(secured, raw_rpub)
        for n in range(3):
            _send(raw_rpub, Instance.SECURITY, "access_violations", f"late{n}")
        _send(raw_rpub, Instance.AUDIT, "change", "a-end")
        got = inside.until("a-end")
        # a public marker after every security message: the public stream reads up to it
        pub.publish("alerts", "critical", "SystemAlert", {"severity": "critical", "title": "p-end"})
        seen = outside.until("p-end")
        mixed = everything.until("p-end", limit=100_000)
        mixed_titles = _titles(mixed, "ex_esdb_security")
        if "late2" not in mixed_titles:  # the two pairs' messages keep no order between them
            mixed += everything.until("late2")
        for response in (every, named, both):
            response.close()
    assert {e.data["instance"] for e in got if e.event == "message"} == {"ex_esdb_security", "ex_esdb_audit"}
    assert _titles(got, "ex_esdb_security")[-3:] == ["late0", "late1", "late2"]
    assert any(e.own_id for e in got if e.data.get("instance") == "ex_esdb_audit")  # from the journal, with an id
    assert _titles(seen, "ex_esdb_alerts") == ["p-end"]
    assert not [e for e in seen if e.event == "message" and e.data["instance"] in ("ex_esdb_security", "ex_esdb_audit")]
    assert "late2" in _titles(mixed, "ex_esdb_security") and "p-end" in _titles(mixed, "ex_esdb_alerts")
    counters = secured.http_counters()
    assert counters["auth_forbidden"] == 2
    metrics = secured.get("/metrics", TOKENS["admins"]).text
    assert "exesdb_http_auth_forbidden_total 2.0" in metrics


def _raw_sub(secured: Broker, key: str, endpoint: str) -> zmq.Socket[bytes]:
    socket = _curve_socket(zmq.SUB, secured.keys, key)
    socket.setsockopt(zmq.SUBSCRIBE, b"ex_esdb_security")
    socket.connect(endpoint)
    return socket


def _titles_of(socket: zmq.Socket[bytes], until: str) -> list[str]:
    """The titles a raw SUB reads up to and including ``until``."""
    decoder, titles = Decoder(), []
    end = time.monotonic() + TIMEOUT
    for _ in range(10_000):
        remaining = end - time.monotonic()
        assert remaining > 0 and socket.poll(int(remaining * 1000) + 1), f"no {until!r}: {titles}"
        for message in decoder.decode(socket.recv_multipart()):
            titles.append(message.data.get("title"))
        if until in titles:
            return titles
    raise AssertionError(f"no {until!r} in 10000 messages")


def test_only_a_token_of_the_class_publishes_restricted_instances(secured: Broker, raw_rpub: zmq.Socket[bytes]) -> None:
    inside = _raw_sub(secured, "rsub", secured.restricted_backend)
    outside = _raw_sub(secured, "sub", secured.process.backend)
    outside.setsockopt(zmq.SUBSCRIBE, b"ex_esdb_alerts")
    marker = {"type": "Custom", "data": {"title": "p-ready"}}
    try:
        _until_read(raw_rpub, inside)
        assert wait_until(
            lambda: (
                secured.post("/v1/publish/alerts/x", TOKENS["publishers"], marker).is_success and outside.poll(50) != 0
            ),
            TIMEOUT,
        )
        forged = {"type": "Custom", "data": {"title": "forged"}}
        refused = secured.post("/v1/publish/security/forged", TOKENS["publishers"], forged)
        assert refused.status_code == 403, refused.text
        message = refused.json()["error"]["message"]
        assert "ex_esdb_security is restricted" in message and "restricted_publishers" in message, message
        assert (
            secured.post("/v1/publish/security/forged", TOKENS["publishers"], forged, durable="true").status_code == 403
        )
        # a token of the class publishes the class, and only the class
        assert secured.post("/v1/publish/alerts/x", TOKENS["restricted_publishers"], forged).status_code == 403
        assert secured.post("/v1/publish/alerts/x", TOKENS["publishers"], {"type": "Custom"}).status_code == 200
        body = {"type": "Custom", "data": {"title": "fine"}}
        ok = secured.post("/v1/publish/security/fine", TOKENS["restricted_publishers"], body)
        assert ok.status_code == 200, ok.text
        titles = _titles_of(inside, "fine")
        assert "forged" not in titles
        durable = secured.post(
            "/v1/publish/audit/change", TOKENS["restricted_publishers"], {"type": "Custom"}, durable="true"
        )
        assert durable.status_code == 200 and durable.json()["durable"] is True, durable.text
        # the public backend never carries what the surface published on the class: the public
        # marker is published after it, by the surface
        marker["data"] = {"title": "p-end"}
        assert secured.post("/v1/publish/alerts/x", TOKENS["publishers"], marker).status_code == 200
        public = _titles_of(outside, "p-end")
        assert "fine" not in public and "forged" not in public and "p-ready" in public
    finally:
        inside.close()
        outside.close()
    assert secured.http_counters()["auth_forbidden"] == 3


def _revoked(events: Events) -> Event:
    """The stream's ``revoked`` error, after what was on its way before the reload; the stream then ends."""
    end = time.monotonic() + TIMEOUT * 2
    for _ in range(10_000):
        event = events.next(end)
        assert event is not None, "the stream ended without saying why"
        if event.event == "error":
            assert event.data["code"] == "revoked", event
            assert events.next(time.monotonic() + TIMEOUT) is None  # and then it ended
            return event
    raise AssertionError("no revoked error in 10000 events")


def test_sighup_moves_a_token_out_of_the_class_and_back(secured: Broker, raw_rpub: zmq.Socket[bytes]) -> None:
    token = TOKENS["restricted_subscribers"]
    with _client(secured) as http:
        response, events = _open(secured, http, token, instance="security")
        mixed, everything = _open(secured, http, BOTH)  # subscribers and restricted_subscribers
        public, untouched = _open(secured, http, TOKENS["subscribers"])
        _ready(secured, raw_rpub)
        _send(raw_rpub, Instance.SECURITY, "x", "before")
        assert _titles(events.until("before"), "ex_esdb_security")[-1] == "before"
        assert _titles(everything.until("before"), "ex_esdb_security")[-1] == "before"
        secured.files["restricted_subscribers"].write_text("# nobody\n")
        secured.reload()
        assert "no longer known" in _revoked(events).data["message"]
        why = _revoked(everything).data["message"]  # the token stays, the class's role went
        assert "is restricted" in why and "restricted_subscribers" in why, why
        for stream in (response, mixed):
            stream.close()
        assert secured.get("/v1/stream", token, instance="security").status_code == 401
        assert secured.get("/v1/stream", BOTH, instance="security").status_code == 403
        # a stream whose token keeps its rights goes on
        with Publisher(secured.process.frontend, **secured.keys.client("pub")) as pub:
            pub.publish("alerts", "critical", "SystemAlert", {"severity": "critical", "title": "after"})
        assert _titles(untouched.until("after"), "ex_esdb_alerts")[-1] == "after"
        public.close()
        secured.files["restricted_subscribers"].write_text(f"{BOTH}\n{token}\n")
        secured.reload()
        again, events = _open(secured, http, token, instance="security")
        _send(raw_rpub, Instance.SECURITY, "x", "back")
        assert _titles(events.until("back"), "ex_esdb_security")[-1] == "back"
        again.close()
    counters = secured.http_counters()
    assert counters["sse_streams_revoked"] == 2 and counters["auth_forbidden"] == 1


def test_a_restricted_token_file_without_a_class_is_a_one_line_error(
    start_broker: StartBroker, keys: Keys, tmp_path: Path
) -> None:
    tokens = tmp_path / "r.tokens"
    tokens.write_text(TOKENS["restricted_subscribers"] + "\n")
    broker = start_broker(
        *keys.broker_args(), "--http-token-restricted-subscribers", str(tokens), http=True, ready=False
    )
    assert broker.wait_exit(15) != 0
    lines = [line for line in broker.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "http_token_restricted_subscribers given without restricted" in lines[0], lines
    assert "Traceback" not in broker.stderr
    assert json.dumps(TOKENS["restricted_subscribers"]).strip('"') not in broker.stderr
