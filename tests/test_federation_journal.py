"""Journaled instances across brokers through JetStream: a durable publish acknowledged at A is
in B's journal, a broker that was down catches up with no gap, nothing loops, and a NATS node
killed mid-stream loses nothing (real three-node ``nats-server`` cluster, real brokers)."""

from __future__ import annotations

import json
import subprocess
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from exesdb_sdk import ControlClient, Publisher

from tests.conftest import BrokerProcess, StartBroker, wait_until
from tests.nats_cluster import BINARY, SKIP_REASON, NatsCluster
from tests.peers import free_port, stop_process

pytestmark = [pytest.mark.skipif(BINARY is None, reason=SKIP_REASON), pytest.mark.timeout(90)]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    nats = NatsCluster(tmp_path)
    try:
        nats.start()
        yield nats
    finally:
        nats.close()


def _stats(broker: BrokerProcess) -> dict[str, Any]:
    with ControlClient(broker.control) as control:
        return control.stats()


def _jetstream(broker: BrokerProcess) -> dict[str, Any]:
    js: dict[str, Any] = _stats(broker)["federation"]["jetstream"]
    return js


def _member(start_broker: StartBroker, tmp_path: Path, name: str, urls: list[str], *extra: str) -> BrokerProcess:
    args = ["--federation-nats", ",".join(urls), "--federation-name", name, "--node", name]
    broker = start_broker(*args, "--data-dir", str(tmp_path / name), "--metrics-interval", "3600", *extra)
    assert wait_until(lambda: _jetstream(broker)["state"] == "ok", 20), _jetstream(broker)
    return broker


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
    cluster: NatsCluster, start_broker: StartBroker, tmp_path: Path
) -> None:
    a, b, c = (_member(start_broker, tmp_path, name, cluster.urls) for name in "abc")
    sent = _durable(a, "federated", 200)
    assert len(sent) == 200
    for broker in (b, c):
        assert wait_until(lambda broker=broker: len(_bodies(broker, "ex_esdb_alerts", "federated")) >= 200, 20)
        assert _bodies(broker, "ex_esdb_alerts", "federated") == sent  # body unchanged, in order, once
    # nothing came back to A, and B and C exported nothing of it again
    assert wait_until(lambda: _jetstream(a)["instances"]["ex_esdb_alerts"]["echo"] >= 200, 10), _jetstream(a)
    assert _bodies(a, "ex_esdb_alerts", "federated") == sent
    for broker in (b, c):
        js = _jetstream(broker)["instances"]["ex_esdb_alerts"]
        assert js["exported"] == 0 and js["imported"] == 200, js
    assert _jetstream(a)["instances"]["ex_esdb_alerts"]["exported"] == 200


def test_a_broker_killed_catches_up_when_it_returns_with_no_gap(
    cluster: NatsCluster, start_broker: StartBroker, tmp_path: Path
) -> None:
    a = _member(start_broker, tmp_path, "a", cluster.urls)
    b = _member(start_broker, tmp_path, "b", cluster.urls)
    before = _durable(a, "outage", 50)
    assert wait_until(lambda: len(_bodies(b, "ex_esdb_alerts", "outage")) >= 50, 20)
    b.proc.kill()  # kill -9
    b.wait_exit(10)
    during = _durable(a, "outage", 300, start=51)
    b = _member(start_broker, tmp_path, "b", cluster.urls)
    assert wait_until(lambda: len(_bodies(b, "ex_esdb_alerts", "outage")) >= 350, 30), _jetstream(b)
    assert _bodies(b, "ex_esdb_alerts", "outage") == during  # `during` is A's whole journal of it: 350
    assert during[:50] == before
    records = _replay(b, "ex_esdb_alerts")
    assert not [r for r in records if r[2].startswith("_exesdb/")], "a gap marker in B's journal"
    assert wait_until(lambda: _jetstream(b)["instances"]["ex_esdb_alerts"]["import_lag"] == 0, 10), _jetstream(b)


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
    assert _bodies(b, "ex_esdb_alerts", "nodeloss") == sent
    print(f"A: {_jetstream(a)}\nB: {_jetstream(b)}")


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
