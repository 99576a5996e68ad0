"""Replay and catch-up-then-live against real broker processes: pages, the seam, the CLI."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import pytest
from exesdb_sdk import AsyncPublisher, AsyncSubscriber, ControlClient, Publisher, Subscriber
from exesdb_sdk.errors import ReceiveTimeoutError

from .conftest import BrokerProcess, StartBroker, raw_publisher, wait_until

EXESDB = str(Path(sys.executable).with_name("exesdb"))


def head(broker: BrokerProcess, instance: str = "ex_esdb_audit") -> int:
    with ControlClient(broker.control) as control:
        found: int = control.stats()["journal"]["heads"][instance]
    return found


@pytest.fixture
def journaled(start_broker: StartBroker, tmp_path: Path) -> BrokerProcess:
    return start_broker("--data-dir", str(tmp_path / "data"))


@pytest.mark.timeout(60)
def test_replay_pages_through_100k_records(journaled: BrokerProcess) -> None:
    raw = raw_publisher(journaled.frontend)
    pack = msgspec.msgpack.Encoder().encode
    try:
        # in bursts the journal keeps up with: a raw flood faster than it reads is shed, by
        # design (counted and marked; see test_journal_incidents), which is not what this tests
        for burst in range(10):
            last = burst * 10_000 + 10_000
            for n in range(last - 9_999, last + 1):
                body = pack({"type": "Custom", "pub": "bulk", "seq": n, "data": {}})
                raw.send_multipart([b"ex_esdb_audit/bulk", body])
            assert wait_until(lambda: head(journaled) == last, timeout=10)  # noqa: B023
    finally:
        raw.close()
    with ControlClient(journaled.control) as control:
        assert control.stats()["journal"]["dropped"] == 0

    seen = 0
    pages = 0
    with ControlClient(journaled.control) as control:
        request: dict[str, Any] = {"instance": "audit", "limit": 1000}
        for _ in range(1000):
            reply = control.request("replay", request)
            pages += 1
            for record in reply["records"]:
                seen += 1
                assert record[0] == seen
            if not reply["more"]:
                break
            request = {"instance": "audit", "from_seq": reply["next"], "limit": 1000}
    assert seen == 100_000 and pages >= 100

    with Subscriber(journaled.backend, control=journaled.control) as sub:
        sub.subscribe("audit", "bulk", replay_from=99_001)
        seqs = [message.seq for message in sub.iter(timeout=0.5)]
    assert seqs == list(range(99_001, 100_001))


def test_offline_subscriber_catches_up_then_continues_live_without_gap_or_duplicate(journaled: BrokerProcess) -> None:
    with Publisher(journaled.frontend, coalesce=0) as early:  # one journal record per message
        for n in range(500):  # nobody is listening: only the journal records these
            early.publish("audit", "orders", "Custom", {"n": n})
        early_id = early.pub_id
    assert wait_until(lambda: head(journaled) == 500)

    stop = threading.Event()
    started = threading.Event()
    sent: list[int] = []

    def keep_publishing() -> None:  # steady live traffic (tens of thousands a second) straddling the seam
        with Publisher(journaled.frontend) as pub:
            for _ in range(200_000):
                sent.append(pub.publish("audit", "orders", "Custom", {}))
                started.set()
                if len(sent) % 50 == 0 and stop.wait(0.001):  # the pace, not a wait for a socket
                    return

    thread = threading.Thread(target=keep_publishing, daemon=True)
    thread.start()
    assert started.wait(10)
    got: dict[str, list[int]] = {}
    sources: dict[str, set[bool]] = {}
    with Subscriber(journaled.backend, control=journaled.control) as sub:
        sub.subscribe("audit", "orders", replay_from="earliest")
        replayed = 0
        for message in sub.iter(timeout=2):
            got.setdefault(message.pub, []).append(message.seq)
            sources.setdefault(message.pub, set()).add(message.replayed)
            replayed += message.replayed
            if not message.replayed and message.pub != early_id and len(got[message.pub]) >= 300:
                stop.set()
        stats = sub.stats
    thread.join(10)
    assert got[early_id] == list(range(1, 501))
    (live_id,) = set(got) - {early_id}
    assert got[live_id] == list(range(1, len(sent) + 1))  # every one, once, in order
    assert sources[live_id] == {True, False}  # the seam fell inside the live stream
    assert stats.duplicates > 0  # messages both replayed and received live were delivered once
    assert stats.gaps == 0 and replayed >= 500


def test_replay_from_a_seq_and_from_a_time(journaled: BrokerProcess) -> None:
    with Publisher(journaled.frontend, control=journaled.control) as pub:
        for n in range(10):
            pub.publish("audit", "x", "Custom", {"n": n}, durable=True)
    with Subscriber(journaled.backend, control=journaled.control) as sub:
        sub.subscribe("audit", replay_from=7)
        assert [m.data["n"] for m in sub.iter(timeout=0.3)] == [6, 7, 8, 9]
    with Subscriber(journaled.backend, control=journaled.control) as sub:
        sub.subscribe("audit", replay_from=timedelta(hours=1))
        assert len(list(sub.iter(timeout=0.3))) == 10
    with Subscriber(journaled.backend, control=journaled.control) as sub:
        sub.subscribe("audit", replay_from=datetime.now(UTC) + timedelta(hours=1))
        with pytest.raises(ReceiveTimeoutError):
            sub.recv(timeout=0.3)
    with Subscriber(journaled.backend, control=journaled.control) as sub, pytest.raises(ValueError, match="aware"):
        sub.subscribe("audit", replay_from=datetime.now())  # naive on purpose


def test_asyncio_durable_publish_and_catch_up_then_live(journaled: BrokerProcess) -> None:
    with Publisher(journaled.frontend, control=journaled.control) as pub:
        for n in range(5):
            pub.publish("alerts", "critical", "Custom", {"n": n}, durable=True)

    async def main() -> list[tuple[int, bool]]:
        async with AsyncSubscriber(journaled.backend, control=journaled.control) as sub:
            await sub.subscribe("alerts", replay_from="earliest")
            async with AsyncPublisher(journaled.frontend, control=journaled.control) as live:
                assert await live.publish("alerts", "critical", "Custom", {"n": 5}, durable=True) == 6
            return [(m.data["n"], m.replayed) async for m in sub.iter(timeout=1)]

    assert asyncio.run(main()) == [(0, True), (1, True), (2, True), (3, True), (4, True), (5, False)]


def _cli(broker: BrokerProcess, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [EXESDB, *args],
        env={**env, "EXESDB_FRONTEND": broker.frontend, "EXESDB_BACKEND": broker.backend,
             "EXESDB_CONTROL": broker.control},
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip


def test_cli_durable_publish_and_tail_replay(journaled: BrokerProcess, clean_env: dict[str, str]) -> None:
    done = _cli(journaled, clean_env, "publish", "audit", "admin", '{"n": 1}', "--durable", "--count", "3")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["1", "2", "3"]
    refused = _cli(journaled, clean_env, "publish", "metrics", "x", "{}", "--durable")
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1 and "not journaled" in refused.stderr

    for flags, expected in (
        (["--from-start"], 3),
        (["--since", "1h"], 3),
        (["--from-seq", "3"], 1),
    ):
        tail = _cli(journaled, clean_env, "tail", "audit", *flags, "--count", str(expected), "--timeout", "10")
        assert tail.returncode == 0, tail.stderr
        lines = [json.loads(line) for line in tail.stdout.splitlines()]
        assert len(lines) == expected and all(line["replayed"] for line in lines)
    bad = _cli(journaled, clean_env, "tail", "audit", "--since", "yesterday-ish")
    assert bad.returncode == 1 and "--since" in bad.stderr and "Traceback" not in bad.stderr
    everything = _cli(journaled, clean_env, "tail", "--from-start")
    assert everything.returncode == 1 and "name the instances" in everything.stderr

    with Publisher(journaled.frontend) as pub:
        pub.publish("health", "health_summary:orders", "HealthSummary", {"store": "orders", "total": 1})
    assert wait_until(lambda: _last_count(journaled) == 1)
    tail = _cli(journaled, clean_env, "tail", "health", "--last", "--count", "1", "--timeout", "10")
    assert tail.returncode == 0, tail.stderr
    assert json.loads(tail.stdout)["topic"] == "ex_esdb_health/health_summary:orders"
    assert "--last" in _cli(journaled, clean_env, "tail", "--help").stdout


def _last_count(broker: BrokerProcess) -> int:
    with ControlClient(broker.control) as control:
        return len(control.request("last", {"prefix": ""})["records"])


def test_only_a_record_that_came_in_live_can_end_a_catch_up_early() -> None:
    from collections import deque

    from exesdb_sdk.durable import CatchUp
    from exesdb_sdk.subscriber import SubscriberCore

    def frames(seq: int) -> list[bytes]:
        body = msgspec.msgpack.encode({"type": "Custom", "pub": "p", "seq": seq, "data": {}})
        return [b"ex_esdb_audit/x", body]

    core = SubscriberCore(None, None)
    core.held = deque([frames(2), frames(3)])  # received live while catching up
    catchup = CatchUp("audit", "", "earliest")
    page = {"records": [[1, 0, "ex_esdb_audit/x", frames(1)[1], False], [2, 0, "ex_esdb_audit/x", frames(2)[1], True]]}
    taken = catchup.advance({**page, "next": 3, "more": True})
    assert [durable for _, durable in taken] == [False, True]
    replayed = [m for f, _ in taken for m in core.take_replayed(f)]
    assert core.overlaps(replayed)  # seq 2 was received live ...
    assert not core.overlaps([m for (f, durable), m in zip(taken, replayed, strict=True) if not durable])
    live_recorded = core.take_replayed(frames(3))  # ... but only a live-recorded overlap may end it
    assert core.overlaps(live_recorded)
    core.release()
    assert [m.seq for m in core.pending] == [1, 2, 3] and core.duplicates == 2
