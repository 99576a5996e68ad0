"""Connectors end to end: a real broker running a connector (``[[connectors]]`` in its TOML
file) and the real far side of every peer module present (``tests/peer_*.py``), started on a
free loopback port by the peer. A kind whose server binary is missing is skipped."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from exesdb_sdk import ControlClient, Publisher

from .conftest import FREE, BrokerProcess, wait_until
from .peers import Received

HERE = Path(__file__).resolve().parent
KINDS = sorted(p.stem.removeprefix("peer_") for p in HERE.glob("peer_*.py"))
BINARIES = {"redis": "redis-server", "mqtt": "mosquitto", "nats": "nats-server"}
ALERTS = "ex_esdb_alerts/e2e"
LIVE = "ex_esdb_health/e2e_live"


def _module(kind: str) -> ModuleType:
    binary = BINARIES.get(kind)
    if binary is not None and shutil.which(binary) is None:
        pytest.skip(f"{binary} is not installed")
    return importlib.import_module(f"tests.peer_{kind}")


@pytest.fixture(params=KINDS)
def peer(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    made = _module(request.param).make_peer(tmp_path)
    try:
        made.start()
        yield made
    finally:
        made.close()


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {_toml(v)}" for k, v in value.items()) + "}"
    raise TypeError(value)


def _config(tmp_path: Path, peer: Any, **extra: Any) -> Path:
    instance, subtopic, _ = peer.poison()
    table = {
        "name": "c",
        "sink": peer.kind,
        "topics": ["alerts/e2e*", "health/e2e_live*", f"{instance}/{subtopic}"],
        "backoff_initial": 100,
        "backoff_max": 400,
        "unhealthy_threshold": 2,
        "delivery_timeout": 3000,
        "check_interval": 500,
        "batch_size": 20,
        **peer.sink_options(),
        **extra,
    }
    path = tmp_path / "broker.toml"
    path.write_text("[[connectors]]\n" + "".join(f"{k} = {_toml(v)}\n" for k, v in table.items()))
    return path


def _broker(config: Path, data: Path) -> BrokerProcess:
    args = ["--frontend", FREE, "--backend", FREE, "--control", FREE, "--config", str(config)]
    return BrokerProcess([*args, "--data-dir", str(data), "--start-grace", "0"]).wait_ready()


def _stats(broker: BrokerProcess) -> dict[str, Any]:
    with ControlClient(broker.control) as control:
        entry: dict[str, Any] = control.stats()["connectors"]["c"]
        return entry


def _journal_head(broker: BrokerProcess, instance: str) -> int:
    with ControlClient(broker.control) as control:
        head: int = control.request("replay", {"instance": instance, "from_seq": 2**62, "limit": 1})["last"]
        return head


def _of(received: list[Received], topic: str) -> list[Received]:
    return [r for r in received if r.topic == topic]


def _unique_in_order(received: list[Received], topic: str) -> list[int]:
    """The ``n`` of each message of ``topic``, first arrivals only; a duplicate must carry the
    id (and data) of a message delivered before."""
    seen: dict[str, dict[str, Any]] = {}
    order: list[int] = []
    for item in _of(received, topic):
        if item.id in seen:
            assert seen[item.id] == item.data, "a duplicate with the same id must carry the same data"
            continue
        seen[item.id] = item.data
        order.append(int(item.data["n"]))
    return order


def _publish(broker: BrokerProcess, topic: str, numbers: range) -> None:
    instance, _, subtopic = topic.partition("/")
    # one message per envelope: these tests bound the connector's buffer in messages (a
    # coalesced batch is one journal record of many envelopes; see the report of issue 17)
    with Publisher(broker.frontend, control=broker.control, coalesce=0) as pub:
        for n in numbers:
            pub.publish(instance, subtopic, "E2e", {"n": n})


@pytest.mark.timeout(60)
def test_mixed_stream_arrives_and_a_poison_message_is_parked(peer: Any, tmp_path: Path) -> None:
    broker = _broker(_config(tmp_path, peer), tmp_path / "data")
    try:
        instance, subtopic, poison = peer.poison()
        with Publisher(broker.frontend, control=broker.control) as pub:
            for n in range(15):
                pub.publish("alerts", "e2e", "E2e", {"n": n})
                if n == 7:
                    pub.publish(instance, subtopic, "E2e", poison)
                pub.publish("health", "e2e_live", "E2e", {"n": n})
        assert wait_until(
            lambda: len(_of(peer.received(), ALERTS)) >= 15 and len(_of(peer.received(), LIVE)) >= 15, 15
        ), peer.received()
        assert wait_until(lambda: _stats(broker)["parked"] == 1, 5), _stats(broker)
        received = peer.received()
        assert _unique_in_order(received, ALERTS) == list(range(15))
        assert _unique_in_order(received, LIVE) == list(range(15))
        assert not any(r.data.get("poison") is True for r in received)
        stats = _stats(broker)
        assert stats["state"] == "running" and stats["dropped"] == 0 and stats["missed"] == 0
        # the cursor moves once the connector has the sink's answer, after the peer has the message
        assert wait_until(lambda: _stats(broker)["cursor"].get("ex_esdb_alerts", 0) >= 16, 10), _stats(broker)
        listed = subprocess.run(
            [sys.executable, "-c", "from exesdb_cli.app import main; main()", "connectors", "--parked", "c", "--json"],
            capture_output=True,
            text=True,
            timeout=30,
            env={**os.environ, "EXESDB_CONTROL": broker.control},
        )
        assert listed.returncode == 0, listed.stderr
        parked = json.loads(listed.stdout)
        assert parked["total"] == 1 and parked["parked"][0]["message"]["data"] == poison
        first_row = parked["parked"][0]["row"]
        with ControlClient(broker.control) as control:
            assert control.request("connector_replay", {"name": "c"})["requeued"] == 1

            def parked_again() -> bool:
                rows = control.request("connector_parked", {"name": "c"})["parked"]
                return len(rows) == 1 and rows[0]["row"] != first_row

            assert wait_until(parked_again, 10), "a replayed poison message is refused and parked anew"
    finally:
        broker.stop()


@pytest.mark.timeout(90)
def test_sink_outage_pauses_then_every_journaled_message_arrives(peer: Any, tmp_path: Path) -> None:
    broker = _broker(_config(tmp_path, peer, buffer_size=8), tmp_path / "data")
    try:
        _publish(broker, ALERTS, range(5))
        assert wait_until(lambda: len(_of(peer.received(), ALERTS)) >= 5, 10)
        peer.stop()
        _publish(broker, ALERTS, range(5, 40))
        _publish(broker, LIVE, range(20))
        seen: list[dict[str, Any]] = []

        def paused() -> bool:
            seen.append(_stats(broker))  # one snapshot: the breaker moves on its own clock
            return bool(seen[-1]["state"] == "paused")

        assert wait_until(paused, 20), seen[-1:]
        assert seen[-1]["buffered"] <= 8, seen[-1]
        # the journal holds alerts the connector has not taken: it waits while the buffer is full
        # (its own lag figure is as of its last journal read, which may predate the outage)
        assert seen[-1]["cursor"]["ex_esdb_alerts"] < _journal_head(broker, "ex_esdb_alerts"), seen[-1]
        peer.start()
        assert wait_until(lambda: len(set(_unique_in_order(peer.received(), ALERTS))) >= 40, 30), (
            _stats(broker),
            _unique_in_order(peer.received(), ALERTS),
        )
        assert _unique_in_order(peer.received(), ALERTS) == list(range(40))
        assert wait_until(lambda: _stats(broker)["state"] == "running", 10)
        stats = _stats(broker)
        live = len(_unique_in_order(peer.received(), LIVE))
        assert stats["dropped"] > 0, "live messages past the bound while paused are dropped, counted"
        assert live + stats["dropped"] + stats["missed"] == 20, (live, stats)
    finally:
        broker.stop()


@pytest.mark.timeout(60)
def test_a_journal_record_larger_than_the_buffer_arrives_whole(tmp_path: Path) -> None:
    # a batch (explicit, or what a coalescing publisher makes of a burst) is one journal record:
    # with more envelopes than the buffer holds, the connector takes it a buffer's worth at a time
    peer = _module("webhook").make_peer(tmp_path)
    peer.start()
    broker = _broker(_config(tmp_path, peer, buffer_size=8), tmp_path / "data")
    try:
        with Publisher(broker.frontend, control=broker.control) as pub:
            pub.publish_batch("alerts", "e2e", "E2e", [{"n": n} for n in range(30)])
            pub.publish_batch("alerts", "e2e", "E2e", [{"n": n} for n in range(30, 45)])
        assert _journal_head(broker, "ex_esdb_alerts") == 2  # two records
        assert wait_until(lambda: len(set(_unique_in_order(peer.received(), ALERTS))) >= 45, 20), _stats(broker)
        assert _unique_in_order(peer.received(), ALERTS) == list(range(45))
        assert _stats(broker)["dropped"] == 0, _stats(broker)
    finally:
        broker.stop()
        peer.close()


@pytest.mark.timeout(90)
def test_broker_restart_resumes_from_the_cursor(peer: Any, tmp_path: Path) -> None:
    config, data = _config(tmp_path, peer), tmp_path / "data"
    broker = _broker(config, data)
    try:
        _publish(broker, ALERTS, range(10))
        assert wait_until(lambda: len(_of(peer.received(), ALERTS)) >= 10, 10)
        peer.stop()
        _publish(broker, ALERTS, range(10, 25))
        assert wait_until(lambda: _stats(broker)["failures"] > 0, 10)
    finally:
        broker.stop()
    peer.start()
    broker = _broker(config, data)
    try:
        _publish(broker, ALERTS, range(25, 30))
        assert wait_until(lambda: len(set(_unique_in_order(peer.received(), ALERTS))) >= 30, 20), _stats(broker)
        assert _unique_in_order(peer.received(), ALERTS) == list(range(30))
        # the cursor moves once the connector has the sink's answer, a moment after the sink has it
        assert wait_until(lambda: _stats(broker)["cursor"]["ex_esdb_alerts"] >= 30, 10), _stats(broker)
    finally:
        broker.stop()


@pytest.mark.timeout(60)
def test_the_readme_webhook_example_delivers(tmp_path: Path) -> None:
    """The README's worked example, pointed at a real receiver: a signed critical alert arrives."""
    from . import peer_webhook

    readme = (HERE.parent / "README.md").read_text()
    section = readme[readme.index("## Connectors") :]
    block = section[section.index("```toml\n") + 8 : section.index("```", section.index("```toml\n") + 8)]
    receiver = peer_webhook.make_peer(tmp_path)
    receiver.start()
    try:
        config = tmp_path / "broker.toml"
        config.write_text(
            block.replace("http://127.0.0.1:8080/exesdb", receiver.url()).replace(
                "/etc/exesdb/pager.secret", str(receiver.secret_file)
            )
        )
        broker = _broker(config, tmp_path / "data")
        try:
            with Publisher(broker.frontend, control=broker.control) as pub:
                pub.publish("alerts", "critical", "E2e", {"n": 1})
                pub.publish("alerts", "warning", "E2e", {"n": 2})
            assert wait_until(lambda: len(receiver.received()) >= 1, 10)
            assert [r.topic for r in receiver.received()] == ["ex_esdb_alerts/critical"]
            with ControlClient(broker.control) as control:
                assert control.stats()["connectors"]["pager"]["state"] == "running"
        finally:
            broker.stop()
    finally:
        receiver.close()
