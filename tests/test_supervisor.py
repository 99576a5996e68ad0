"""Every broker thread runs under one supervisor: a failure is logged once with its traceback,
counted, and the thread restarted with fresh sockets; past the restart intensity the broker
gives up and the daemon exits 1. Faults are injected into an embedded ``Broker`` (and, for the
daemon, into a real ``exesdb-broker`` process started with a patched thread)."""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from exesdb_broker import Broker, BrokerConfig
from exesdb_broker.journal import Journal
from exesdb_broker.service import Service
from exesdb_broker.supervisor import Supervisor
from exesdb_broker.tap import Tap
from exesdb_sdk import ControlClient, Publisher, Subscriber

from .conftest import FREE, wait_until


@pytest.fixture
def config(tmp_path: Path) -> BrokerConfig:
    return BrokerConfig(
        frontend=FREE,
        backend=FREE,
        control=FREE,
        data_dir=str(tmp_path),
        metrics_interval=0.2,
        start_grace=0,
        http="none",
    )


def _stats(broker: Broker) -> dict[str, Any]:
    with ControlClient(broker.control, timeout=5) as control:
        return control.stats()


def _failing_once(monkeypatch: pytest.MonkeyPatch, cls: type, name: str, on_call: int) -> dict[str, int]:
    """Make ``cls.name`` raise once, on call number ``on_call``; return the call counter."""
    calls = {"n": 0}
    original = getattr(cls, name)

    def flaky(self: Any, *args: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == on_call:
            raise RuntimeError(f"injected {cls.__name__} fault")
        return original(self, *args)

    monkeypatch.setattr(cls, name, flaky)
    return calls


@pytest.fixture
def tracebacks(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    with caplog.at_level(logging.ERROR, logger="exesdb.broker"):
        yield caplog


def test_a_failing_tap_is_restarted_and_counting_goes_on(
    monkeypatch: pytest.MonkeyPatch, config: BrokerConfig, tracebacks: pytest.LogCaptureFixture
) -> None:
    _failing_once(monkeypatch, Tap, "_drain", on_call=3)
    with Broker(config) as broker:
        assert wait_until(lambda: broker.restarts.get("tap") == 1, 5)
        with Publisher(broker.frontend) as pub:
            # the restarted tap counts once its fresh socket is subscribed: probe until it does
            for n in range(50):
                pub.publish("diagnostics", "probe", "Custom", {"n": n})
                if wait_until(lambda: _stats(broker)["instances"]["ex_esdb_diagnostics"]["messages"] > 0, 0.2):
                    break
            for n in range(100):
                pub.publish("logging", "app", "AppLog", {"n": n})
        # envelopes: the burst travels coalesced, in batch messages
        assert wait_until(lambda: _stats(broker)["instances"]["ex_esdb_logging"]["envelopes"] == 100, 10)
        stats = _stats(broker)
        assert stats["restarts"]["by_thread"] == {"tap": 1} and stats["restarts"]["total"] == 1
        assert broker.running and broker.failure is None
    failures = [r for r in tracebacks.records if "the tap thread failed" in r.getMessage()]
    assert len(failures) == 1 and failures[0].exc_info is not None  # logged once, with its traceback
    assert "injected Tap fault" in failures[0].getMessage()


def test_a_failing_service_comes_back_with_a_fresh_publisher(
    monkeypatch: pytest.MonkeyPatch, config: BrokerConfig
) -> None:
    _failing_once(monkeypatch, Service, "_sample", on_call=3)
    with Broker(config) as broker:
        assert wait_until(lambda: broker.restarts.get("service") == 1, 10)
        with Subscriber(broker.backend) as sub:
            sub.subscribe("metrics", "broker")  # probe acks come from the restarted service
            assert sub.recv(timeout=5).type == "BrokerMetrics"  # published by its new publisher
        with ControlClient(broker.control, timeout=5) as control:  # same control endpoint
            assert control.ping()["pong"] is True
        assert broker.running


def test_a_failing_journal_counts_and_marks_what_it_lost(monkeypatch: pytest.MonkeyPatch, config: BrokerConfig) -> None:
    original = Journal._commit
    state = {"armed": False}

    def failing(self: Journal, durable: Any, limit: int) -> None:
        if state["armed"] and self.backlog:
            state["armed"] = False
            raise RuntimeError("injected Journal fault")
        original(self, durable, limit)

    monkeypatch.setattr(Journal, "_commit", failing)
    # one message per envelope: the journal counts what it lost in messages
    with Broker(config) as broker, Publisher(broker.frontend, control=broker.control, coalesce=0) as pub:
        assert pub.publish("audit", "x", "Custom", {"n": 0}, durable=True) == 1
        state["armed"] = True
        for n in range(1, 51):
            pub.publish("audit", "x", "Custom", {"n": n})
        assert wait_until(lambda: broker.restarts.get("journal") == 1, 10)
        # after the restart: durable publishes and live recording work again
        later = pub.publish("audit", "x", "Custom", {"n": 51}, durable=True)
        gaps: list[tuple[str, int]] = []
        with Subscriber(broker.backend, control=broker.control, on_gap=lambda m, k: gaps.append((m.type, k))) as sub:
            sub.subscribe("audit", replay_from="earliest")
            seen = [m.data["n"] for m in sub.iter(timeout=1)]
        journal = _stats(broker)["journal"]
        assert broker.running
    # What was buffered when the thread failed, and what arrived while it was restarting (its
    # feed had no reader), was lost: counted, marked in the journal, surfaced by the catch-up.
    lost = 50 - len([n for n in seen if 1 <= n <= 50])
    assert lost >= 1 and seen[0] == 0 and seen[-1] == 51
    assert journal["dropped_by_instance"] == {"ex_esdb_audit": lost}
    assert journal["dropped_by_reason"].get("journal thread restarted", 0) >= 1
    assert sum(k for kind, k in gaps if kind == "JournalGap") == lost == sub.stats.journal_gaps
    assert sub.stats.gaps == lost  # the same hole, seen in the publisher's sequence numbers
    assert later == 2 + (50 - lost) + journal["gaps"]  # each gap marker takes a sequence number


def test_past_the_restart_intensity_the_broker_gives_up(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def broken(self: Tap, sub: Any) -> None:
        raise RuntimeError("injected Tap fault")

    monkeypatch.setattr(Tap, "_drain", broken)
    config = BrokerConfig(
        frontend=FREE,
        backend=FREE,
        control=FREE,
        data_dir=str(tmp_path),
        max_restarts=2,
        restart_period=60,
        http="none",
    )
    with Broker(config) as broker:
        assert wait_until(lambda: not broker.running, 5)
        assert broker.failure == ("the tap thread failed (RuntimeError: injected Tap fault) and 3 failures in 60 s")
        assert broker.restarts == {"tap": 2}


def test_the_daemon_exits_1_when_the_supervisor_gives_up() -> None:
    script = (
        "import sys\n"
        "from exesdb_broker.tap import Tap\n"
        "def broken(self, sub): raise RuntimeError('injected Tap fault')\n"
        "Tap._drain = broken\n"
        "from exesdb_broker.cli import main\n"
        "sys.argv = ['exesdb-broker', *sys.argv[1:]]\n"
        "main()\n"
    )
    args = ["--frontend", FREE, "--backend", FREE, "--control", FREE, "--max-restarts", "2", "--http", "none"]
    done = subprocess.run(
        [sys.executable, "-c", script, *args], stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 1, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last == (
        "exesdb-broker: error: broker stopped unexpectedly: "
        "the tap thread failed (RuntimeError: injected Tap fault) and 3 failures in 30 s"
    )
    assert done.stderr.count("Traceback (most recent call last)") == 3  # each failure logged once


def test_the_restart_intensity_counts_failures_in_a_sliding_window() -> None:
    now = [0.0]

    class Failing:
        name = "x"
        restartable = True

    supervisor = Supervisor(max_restarts=2, period=10, clock=lambda: now[0])
    child = Failing()
    for t in (0.0, 5.0, 16.0, 17.0):  # never more than 2 in any 10 s
        now[0] = t
        assert supervisor._give_up(child, RuntimeError("x")) is False  # type: ignore[arg-type]
    now[0] = 18.0  # 16, 17, 18: three within 10 s
    assert supervisor._give_up(child, RuntimeError("x")) is True  # type: ignore[arg-type]
    assert supervisor.restarts["x"] == 4 and supervisor.failure is not None
