"""Journaled instances across brokers through JetStream: a durable publish acknowledged at A is
in B's journal, a broker that was down catches up with no gap, nothing loops, and a NATS node
killed mid-stream loses nothing (real three-node ``nats-server`` cluster, real brokers)."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from exesdb_broker.jetstream import JetStreamBridge, _Counts
from exesdb_sdk import ControlClient, Message, Publisher, Subscriber

from tests.conftest import BrokerProcess, StartBroker, cli_env, wait_until
from tests.nats_cluster import BINARY, SKIP_REASON, NatsCluster
from tests.peers import free_port, stop_process

EXESDB = str(Path(sys.executable).with_name("exesdb"))
pytestmark = [pytest.mark.skipif(BINARY is None, reason=SKIP_REASON), pytest.mark.timeout(90)]


def _stats(broker: BrokerProcess) -> dict[str, Any]:
    with ControlClient(broker.control) as control:
        return control.stats()


def _jetstream(broker: BrokerProcess) -> dict[str, Any]:
    js: dict[str, Any] = _stats(broker)["federation"]["jetstream"]
    return js


def _alerts(broker: BrokerProcess) -> dict[str, Any]:
    """The JetStream counts of ``ex_esdb_alerts``, the instance these tests journal."""
    counts: dict[str, Any] = _jetstream(broker)["instances"]["ex_esdb_alerts"]
    return counts


def _member(
    start_broker: StartBroker, tmp_path: Path, name: str, urls: list[str], *extra: str, http: bool = False
) -> BrokerProcess:
    args = ["--federation-nats", ",".join(urls), "--federation-name", name, "--node", name]
    broker = start_broker(*args, "--data-dir", str(tmp_path / name), "--metrics-interval", "3600", *extra, http=http)
    assert wait_until(lambda: _jetstream(broker)["state"] == "ok", 20), _jetstream(broker)
    return broker


def _subscriber(broker: BrokerProcess) -> Subscriber:
    sub = Subscriber(broker.backend)
    sub.subscribe("alerts", "federated")
    sub.wait_ready(5)
    return sub


def _take(sub: Subscriber, count: int, timeout: float = 10.0) -> list[Message]:
    taken: list[Message] = []
    deadline = time.monotonic() + timeout
    while len(taken) < count and (remaining := deadline - time.monotonic()) > 0:
        try:
            taken.append(sub.recv(timeout=remaining))
        except TimeoutError:
            break
    return taken


def _replay(broker: BrokerProcess, instance: str, prefix: str = "") -> list[list[Any]]:
    records: list[list[Any]] = []
    start = 1
    with ControlClient(broker.control) as control:
        for _ in range(1000):
            reply = control.request("replay", {"instance": instance, "prefix": prefix, "from_seq": start, "limit": 500})
            records += reply["records"]
            if not reply.get("more"):
                break
            start = reply["next"]
    return records


def _bodies(broker: BrokerProcess, instance: str, prefix: str) -> list[bytes]:
    return [record[3] for record in _replay(broker, instance, prefix)]


def _durable(broker: BrokerProcess, subtopic: str, count: int, start: int = 1) -> list[bytes]:
    """``count`` durable alerts at ``broker``; the bodies as its journal holds them."""
    with Publisher(broker.frontend, control=broker.control) as publisher:
        for n in range(start, start + count):
            publisher.publish("alerts", subtopic, "Counted", {"n": n}, durable=True)
    return _bodies(broker, "ex_esdb_alerts", subtopic)


def test_a_durable_publish_at_a_is_replayable_at_b_and_c_once(
    cluster: NatsCluster, start_broker: StartBroker, tmp_path: Path, clean_env: dict[str, str]
) -> None:
    a = _member(start_broker, tmp_path, "a", cluster.urls)
    b = _member(start_broker, tmp_path, "b", cluster.urls, http=True)
    c = _member(start_broker, tmp_path, "c", cluster.urls)
    at_a, at_b = _subscriber(a), _subscriber(b)
    try:
        sent = _durable(a, "federated", 200)
        assert len(sent) == 200
        for broker in (b, c):
            assert wait_until(lambda broker=broker: len(_bodies(broker, "ex_esdb_alerts", "federated")) >= 200, 20)
            assert _bodies(broker, "ex_esdb_alerts", "federated") == sent  # body unchanged, in order, once
        # live subscribers: B's see the imports as they are committed there, A's see each message once
        assert [m.data["n"] for m in _take(at_b, 200)] == list(range(1, 201))
        assert [m.data["n"] for m in _take(at_a, 200)] == list(range(1, 201))
        assert not _take(at_a, 1, timeout=1.0), "a message came back to A"
        # nothing came back into A's journal, and B and C exported nothing of it again
        assert wait_until(lambda: _alerts(a)["echo"] >= 200, 10), _jetstream(a)
        assert _bodies(a, "ex_esdb_alerts", "federated") == sent
        # counted once committed (imports) or acknowledged (exports): after a reader can see them
        assert wait_until(
            lambda: _alerts(a)["exported"] >= 200 and all(_alerts(x)["imported"] >= 200 for x in (b, c)), 10
        )
        for broker in (b, c):
            js = _alerts(broker)
            assert js["exported"] == 0 and js["imported"] == 200, js
        assert _alerts(a)["exported"] == 200
        # what B says of it: /metrics and exesdb stats
        assert b.http is not None
        with urllib.request.urlopen(f"{b.http}/metrics", timeout=5) as reply:
            metrics = reply.read().decode()
        assert 'exesdb_federation_jetstream_imported_total{channel="ex_esdb_alerts"} 200.0' in metrics, metrics[-2000:]
        assert "exesdb_federation_jetstream_up 1.0" in metrics, _jetstream(b)
        assert 'exesdb_federation_jetstream_reordered_total{channel="ex_esdb_alerts"} 0.0' in metrics
        shown = subprocess.run(
            [EXESDB, "stats"],
            env={**cli_env(b, clean_env), "COLUMNS": "200"},
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert shown.returncode == 0, shown.stderr
        assert "jetstream ok" in shown.stdout and "alerts: exported 0 (lag 0)  imported 200" in shown.stdout, (
            shown.stdout
        )
    finally:
        at_a.close()
        at_b.close()


def test_a_broker_killed_before_it_could_export_exports_from_its_cursor_when_it_returns(
    cluster: NatsCluster, start_broker: StartBroker, tmp_path: Path
) -> None:
    # A reaches NATS through n0 only; B through the others
    a = _member(start_broker, tmp_path, "a", cluster.urls[:1])
    b = _member(start_broker, tmp_path, "b", cluster.urls[1:])
    before = _durable(a, "crash", 20)
    assert wait_until(lambda: len(_bodies(b, "ex_esdb_alerts", "crash")) >= 20, 20)
    cluster.kill(0)
    assert wait_until(lambda: _stats(a)["federation"]["state"] == "reconnecting", 10)
    sent = _durable(a, "crash", 300, start=21)  # acknowledged by A's journal, not exported: no NATS
    assert sent[:20] == before
    a.proc.kill()  # kill -9
    a.wait_exit(10)
    assert len(_bodies(b, "ex_esdb_alerts", "crash")) == 20
    cluster.restart(0)
    a = _member(start_broker, tmp_path, "a", cluster.urls[:1])
    assert wait_until(lambda: len(_bodies(b, "ex_esdb_alerts", "crash")) >= 320, 30), _jetstream(b)
    assert _bodies(b, "ex_esdb_alerts", "crash") == sent  # every one, once, in order
    assert wait_until(lambda: _alerts(a)["exported"] >= 300, 10), _jetstream(a)  # counted once acknowledged
    assert _alerts(a)["exported"] == 300, _jetstream(a)


def test_a_broker_killed_catches_up_when_it_returns_with_no_gap(
    cluster: NatsCluster, start_broker: StartBroker, tmp_path: Path
) -> None:
    a = _member(start_broker, tmp_path, "a", cluster.urls)
    b = _member(start_broker, tmp_path, "b", cluster.urls)
    before = _durable(a, "outage", 50)
    assert wait_until(lambda: len(_bodies(b, "ex_esdb_alerts", "outage")) >= 50, 20), _jetstream(b)
    b.proc.kill()  # kill -9
    b.wait_exit(10)
    during = _durable(a, "outage", 300, start=51)
    b = _member(start_broker, tmp_path, "b", cluster.urls)
    assert wait_until(lambda: len(_bodies(b, "ex_esdb_alerts", "outage")) >= 350, 30), _jetstream(b)
    assert _bodies(b, "ex_esdb_alerts", "outage") == during  # `during` is A's whole journal of it: 350
    assert during[:50] == before
    records = _replay(b, "ex_esdb_alerts")
    assert not [r for r in records if r[2].startswith("_exesdb/")], "a gap marker in B's journal"
    assert wait_until(lambda: _alerts(b)["import_lag"] == 0, 10), _jetstream(b)


def test_a_batch_committed_before_its_cursor_moved_is_not_committed_again(
    cluster: NatsCluster, start_broker: StartBroker, tmp_path: Path
) -> None:
    """The state a kill -9 leaves between B's commit of a batch and its cursor's write, made on
    purpose: the cursor put back before the 50, with the mark the bridge writes before a commit."""
    a = _member(start_broker, tmp_path, "a", cluster.urls)
    b = _member(start_broker, tmp_path, "b", cluster.urls)
    before = _durable(a, "crashwindow", 50)
    assert wait_until(lambda: len(_bodies(b, "ex_esdb_alerts", "crashwindow")) >= 50, 20)
    assert wait_until(lambda: _alerts(b)["import_lag"] == 0, 10), _jetstream(b)
    head_before = _replay(b, "ex_esdb_alerts", "crashwindow")[0][0] - 1
    assert b.stop() == 0
    with sqlite3.connect(tmp_path / "b" / "federation.db") as db:
        (high,) = db.execute("SELECT seq FROM cursor WHERE kind = 'import' AND instance = 'ex_esdb_alerts'").fetchone()
        db.execute("UPDATE cursor SET seq = ? WHERE kind = 'import' AND instance = 'ex_esdb_alerts'", (high - 50,))
        db.execute("INSERT INTO cursor VALUES ('import_pending', 'ex_esdb_alerts', ?)", (head_before,))
        db.execute("INSERT INTO cursor VALUES ('import_high', 'ex_esdb_alerts', ?)", (high,))
    b = _member(start_broker, tmp_path, "b", cluster.urls)
    during = _durable(a, "crashwindow", 10, start=51)
    assert wait_until(lambda: len(_bodies(b, "ex_esdb_alerts", "crashwindow")) >= 60, 20), _jetstream(b)
    assert wait_until(lambda: _alerts(b)["import_lag"] == 0, 10), _jetstream(b)
    assert _bodies(b, "ex_esdb_alerts", "crashwindow") == during  # 60, once each
    assert during[:50] == before
    assert _alerts(b)["duplicates"] >= 50
    with sqlite3.connect(tmp_path / "b" / "federation.db") as db:
        kinds = {kind for (kind,) in db.execute("SELECT kind FROM cursor WHERE instance = 'ex_esdb_alerts'")}
    assert kinds == {"export", "import"}, "the mark outlived the cursor's move past it"


def test_a_nats_node_killed_mid_stream_loses_no_journaled_message(
    cluster: NatsCluster, start_broker: StartBroker, tmp_path: Path
) -> None:
    a = _member(start_broker, tmp_path, "a", cluster.urls)
    b = _member(start_broker, tmp_path, "b", cluster.urls)
    server = _stats(a)["federation"]["server"]
    failed: list[BaseException] = []
    count = 600

    def publish() -> None:
        try:
            with Publisher(a.frontend, control=a.control) as publisher:
                for n in range(1, count + 1):
                    publisher.publish("alerts", "nodeloss", "Counted", {"n": n}, durable=True)
        except BaseException as exc:
            failed.append(exc)

    thread = threading.Thread(target=publish, daemon=True)
    thread.start()
    assert wait_until(lambda: len(_bodies(b, "ex_esdb_alerts", "nodeloss")) >= 100, 20)
    cluster.kill(cluster.urls.index(server))
    thread.join(60)
    assert not failed, failed
    sent = _bodies(a, "ex_esdb_alerts", "nodeloss")
    assert len(sent) == count
    assert wait_until(lambda: len(_bodies(b, "ex_esdb_alerts", "nodeloss")) >= count, 40), _jetstream(b)
    got = _bodies(b, "ex_esdb_alerts", "nodeloss")
    print(f"A: {_jetstream(a)}\nB: {_jetstream(b)}")
    # every one, once; in order, unless a page was in flight on the killed server's connection
    # (docs/protocol.md 13: then a later message can be stored first, and that is counted)
    assert sorted(got) == sorted(sent) and len(set(got)) == count
    if got != sent:
        assert _alerts(a)["reordered"] >= 1, "out of order at b, none counted at a"


def test_without_jetstream_the_journaled_part_is_degraded_and_live_federation_runs(
    tmp_path: Path, start_broker: StartBroker
) -> None:
    assert BINARY is not None
    port = free_port()
    config = tmp_path / "plain.conf"
    config.write_text(f"listen: 127.0.0.1:{port}\n")  # no jetstream block
    server = subprocess.Popen([BINARY, "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"nats://127.0.0.1:{port}"
        broker = start_broker("--federation-nats", url, "--data-dir", str(tmp_path / "d"), http=True)
        assert wait_until(lambda: _jetstream(broker)["state"] == "degraded", 15), _jetstream(broker)
        federation = _stats(broker)["federation"]
        assert federation["state"] == "connected", federation
        assert "JetStream is not enabled" in federation["jetstream"]["last_error"], federation["jetstream"]
        with urllib.request.urlopen(f"{broker.http}/healthz", timeout=5) as reply:
            health = json.load(reply)
        assert reply.status == 200 and "JetStream is not enabled" in health["degraded"], health
    finally:
        stop_process(server, 5)


@pytest.mark.parametrize(
    ("outcomes", "behind"),
    [
        ("ok ok ok", 0),
        ("ok ok lost", 0),  # the page's last ones lost: published again, still in order
        ("lost lost", 0),
        ("ok lost ok", 1),  # a later one stored first: the lost one lands after it
        ("lost timeout ok lost", 2),
    ],
)
def test_a_page_whose_later_message_was_stored_before_an_earlier_one_counts_it_reordered(
    outcomes: str, behind: int
) -> None:
    async def page() -> _Counts:
        futures: list[asyncio.Future[Any]] = []
        for outcome in outcomes.split():
            future = asyncio.get_running_loop().create_future()
            if outcome == "ok":
                future.set_result(None)
            elif outcome == "lost":
                future.set_exception(ConnectionError("connection lost"))
            else:
                future.cancel()  # no acknowledgement in time
            futures.append(future)
        counts = _Counts()
        JetStreamBridge._note_reordered(futures, counts)
        for future in futures:  # retrieved, so that asyncio does not warn of them
            if not future.cancelled():
                future.exception()
        return counts

    assert asyncio.run(page()).reordered == behind
