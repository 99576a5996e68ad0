"""Health tracking, health-gated emitter workers and the circuit breaker, against a real broker."""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from exesdb_sdk import Publisher, Subscriber
from exesdb_sdk.broadcast import broadcast_store_events
from exesdb_sdk.errors import ConfigError
from exesdb_sdk.health import (
    CircuitBreaker,
    EmitterPool,
    HealthConfig,
    SubscriptionHealthTracker,
    SubscriptionState,
    apply_event,
    load_health_config,
)
from exesdb_sdk.messages import EmitterMetrics, HealthSummary, SubscriptionHealth

from .conftest import FREE, BrokerProcess, wait_until

FAST = HealthConfig(
    check_interval=200,
    unhealthy_threshold=3,
    backoff_initial=300,
    backoff_max=1000,
    delivery_timeout=1000,
    metrics_interval=200,
)


@pytest.fixture(scope="module")
def shared_broker() -> Iterator[BrokerProcess]:
    broker = BrokerProcess(["--frontend", FREE, "--backend", FREE, "--control", FREE]).wait_ready()
    yield broker
    broker.stop()


def _events(*numbers: int) -> list[dict[str, Any]]:
    return [{"event_type": "OrderPlaced", "version": n} for n in numbers]


# -- the mapping, the breaker, the settings (no broker) ---------------------------------------


def test_one_mapping_from_events_to_statuses() -> None:
    state = SubscriptionState("s")
    steps = [
        ("registration_started", "registering"),
        ("registration_success", "healthy"),
        ("event_delivery_failed", "degraded"),
        ("event_delivery_failed", "degraded"),
        ("event_delivery_success", "healthy"),  # a success resets the run of failures
        ("event_delivery_failed", "degraded"),
        ("event_delivery_failed", "degraded"),
        ("event_delivery_failed", "failed"),  # the third in a row: the threshold
        ("heartbeat", "failed"),  # a heartbeat does not heal
        ("circuit_breaker_half_open", "degraded"),
        ("circuit_breaker_closed", "healthy"),
        ("proxy_crashed", "failed"),
        ("proxy_started", "healthy"),
        ("proxy_stopped", "unknown"),
        ("heartbeat", "healthy"),  # but it revives an unknown or stale one
    ]
    for event, status in steps:
        apply_event(state, event, 3, error="boom" if "failed" in event else None)
        assert state.status == status, event
    assert (state.error_count, state.last_error) == (6, "boom")
    with pytest.raises(ValueError, match="unknown subscription event"):
        apply_event(state, "exploded", 3)


def test_circuit_breaker_opens_half_opens_and_backs_off() -> None:
    now = [0.0]
    breaker = CircuitBreaker(3, backoff_initial=1.0, backoff_max=3.0, clock=lambda: now[0])
    assert [breaker.record_failure() for _ in range(3)] == [None, None, "open"]
    assert not breaker.allows() and breaker.before_try() is None
    now[0] = 1.0
    assert breaker.before_try() == "half_open"
    assert breaker.record_failure() == "open"  # a failed try opens it again...
    assert breaker.seconds_until_retry() == 2.0  # ...for twice as long
    now[0] = 3.0
    assert breaker.before_try() == "half_open" and breaker.record_failure() == "open"
    assert breaker.seconds_until_retry() == 3.0  # capped
    now[0] = 6.0
    assert breaker.before_try() == "half_open"
    assert breaker.record_success() == "closed"
    assert breaker.backoff == 1.0 and breaker.failures == 0 and breaker.opened == 3


def test_health_config_layers(tmp_path: Path) -> None:
    config = tmp_path / "exesdb.toml"
    config.write_text("[health_monitoring]\ncheck_interval = 1000\ncircuit_breaker_enabled = false\n")
    settings = load_health_config(
        {"unhealthy_threshold": 5}, config_file=config, env={"EXESDB_HEALTH_BUFFER_SIZE": "7"}
    )
    assert (settings.check_interval, settings.circuit_breaker_enabled) == (1000, False)
    assert (settings.unhealthy_threshold, settings.buffer_size, settings.enabled) == (5, 7, True)
    with pytest.raises(ConfigError, match="EXESDB_HEALTH_OVERFLOW_POLICY: 'keep_all' is not one of"):
        load_health_config(env={"EXESDB_HEALTH_OVERFLOW_POLICY": "keep_all"})
    assert (HealthConfig().check_interval, HealthConfig().unhealthy_threshold) == (5000, 3)  # the original's
    assert (HealthConfig().enabled, HealthConfig().circuit_breaker_enabled) == (True, True)


# -- the tracker ------------------------------------------------------------------------------


def test_tracker_publishes_changes_and_summaries_and_marks_stale(shared_broker: BrokerProcess) -> None:
    with Subscriber(shared_broker.backend) as sub:
        sub.subscribe("health", "store_health:t1")
        sub.subscribe("health", "health_summary:t1")
        tracker = SubscriptionHealthTracker(
            "t1", config=FAST, frontend=shared_broker.frontend, backend=shared_broker.backend
        )
        with tracker:
            tracker.record("t1:a", "registration_success")
            tracker.record("t1:b", "registration_started")
            for _ in range(3):
                tracker.record("t1:b", "event_delivery_failed", error="timeout")
            tracker.record("t1:a", "event_delivery_success")  # no change: nothing published
            changes: list[tuple[str, str]] = []
            summary: HealthSummary | None = None

            def heard() -> bool:
                nonlocal summary
                message = sub.recv(timeout=2)
                if isinstance(message.payload, SubscriptionHealth):
                    changes.append((message.payload.subscription, message.payload.status))
                elif isinstance(message.payload, HealthSummary):
                    summary = message.payload
                return summary is not None and ("t1:a", "stale") in changes

            assert wait_until(heard, timeout=5, interval=0)
            assert changes[:4] == [
                ("t1:a", "healthy"),
                ("t1:b", "registering"),
                ("t1:b", "degraded"),
                ("t1:b", "failed"),
            ]
            assert summary is not None and summary.total == 2
            state = tracker.subscription("t1:b")
            assert state is not None and (state.error_count, state.last_error) == (3, "timeout")
            assert [s.name for s in tracker.subscriptions()] == ["t1:a", "t1:b"]
            final = tracker.summary()
            assert (final.total, final.stale, final.failed + final.stale) == (2, final.stale, 2)
            assert tracker.subscription("nope") is None


def test_tracker_adopts_reports_of_other_processes(shared_broker: BrokerProcess) -> None:
    config = HealthConfig(check_interval=60_000)
    with SubscriptionHealthTracker(
        "t2", config=config, frontend=shared_broker.frontend, backend=shared_broker.backend
    ) as tracker:
        with Publisher(shared_broker.frontend) as pub:
            pub.publish_message(
                SubscriptionHealth(store="t2", subscription="t2:x", status="failed", event="circuit_breaker_opened")
            )
            pub.publish_message(SubscriptionHealth(store="other", subscription="t2:y", status="failed", event="x"))
        assert wait_until(lambda: tracker.subscription("t2:x") is not None, timeout=5)
        state = tracker.subscription("t2:x")
        assert state is not None and (state.status, state.last_event) == ("failed", "circuit_breaker_opened")
        assert tracker.subscription("t2:y") is None  # another store's report


# -- emitter workers -----------------------------------------------------------------------


def _collector() -> tuple[list[dict[str, Any]], Any]:
    seen: list[dict[str, Any]] = []
    return seen, seen.append


def test_worker_delivers_in_order_and_sync_or_async(shared_broker: BrokerProcess) -> None:
    seen_sync, sync_subscriber = _collector()
    seen_async: list[dict[str, Any]] = []

    async def async_subscriber(event: dict[str, Any]) -> None:
        await asyncio.sleep(0)
        seen_async.append(event)

    with EmitterPool(config=FAST, frontend=shared_broker.frontend, backend=shared_broker.backend) as pool:
        pool.add("w1", "orders", sync_subscriber)
        pool.add("w1", "invoices", async_subscriber)
        with Publisher(shared_broker.frontend) as pub:
            broadcast_store_events("w1", "orders", _events(1, 2, 3), publisher=pub)
            broadcast_store_events("w1", "invoices", _events(10, 11), publisher=pub)
            broadcast_store_events("w1", "orders", _events(4, 5), publisher=pub)
            broadcast_store_events("w1", "orders-archive", _events(99), publisher=pub)  # not a prefix match
        assert wait_until(lambda: len(seen_sync) == 5 and len(seen_async) == 2, timeout=5)
    assert [e["version"] for e in seen_sync] == [1, 2, 3, 4, 5]
    assert [e["version"] for e in seen_async] == [10, 11]


def test_breaker_opens_after_exactly_the_threshold_and_everything_arrives_in_order(
    shared_broker: BrokerProcess,
) -> None:
    calls: list[int] = []
    delivered: list[int] = []
    failing = threading.Event()
    failing.set()

    def flaky(event: dict[str, Any]) -> None:
        calls.append(event["version"])
        if failing.is_set():
            raise RuntimeError("database down")
        delivered.append(event["version"])

    with Subscriber(shared_broker.backend) as sub:
        sub.subscribe("health", "store_health:w2")
        with EmitterPool(config=FAST, frontend=shared_broker.frontend, backend=shared_broker.backend) as pool:
            worker = pool.add("w2", "orders", flaky)
            with Publisher(shared_broker.frontend) as pub:
                broadcast_store_events("w2", "orders", _events(1, 2, 3), publisher=pub)
                assert wait_until(lambda: worker.stats.breaker == "open", timeout=5)
                assert calls == [1, 1, 1]  # exactly unhealthy_threshold tries, of the first event
                assert worker.paused
                broadcast_store_events("w2", "orders", _events(4, 5), publisher=pub)
                assert wait_until(lambda: worker.stats.buffered == 5, timeout=5)
                failing.clear()
                assert wait_until(lambda: delivered == [1, 2, 3, 4, 5], timeout=5)
            assert worker.stats.breaker == "closed" and not worker.paused
            assert (worker.stats.failures, worker.stats.dropped) == (len(calls) - 5, 0)
        reports = [m.payload.event for m in sub.iter(timeout=0.3) if m.payload.subscription == "w2:orders"]
    for transition in ("circuit_breaker_opened", "circuit_breaker_half_open", "circuit_breaker_closed"):
        assert transition in reports


WORKER_B = textwrap.dedent(
    """
    import json, sys, threading
    from exesdb_sdk.health import EmitterPool, HealthConfig

    frontend, backend = sys.argv[1:3]
    config = HealthConfig(check_interval=200, metrics_interval=100, backoff_initial=300)
    done = threading.Event()

    def project(event):
        print(json.dumps(event), flush=True)

    with EmitterPool(config=config, frontend=frontend, backend=backend, node="proc-b") as pool:
        pool.add("w3", "replica", project, subscription="w3:projection")
        print("READY", flush=True)
        sys.stdin.readline()  # the test says when to stop
    """
)


def test_a_health_event_pauses_a_worker_in_another_process_and_resume_loses_nothing(
    shared_broker: BrokerProcess,
) -> None:
    failing = threading.Event()
    failing.set()

    def flaky(event: dict[str, Any]) -> None:
        if failing.is_set():
            raise RuntimeError("down")

    other = subprocess.Popen(
        [sys.executable, "-c", WORKER_B, shared_broker.frontend, shared_broker.backend],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert other.stdin is not None and other.stdout is not None
    try:
        assert other.stdout.readline().strip() == "READY"
        with (
            Subscriber(shared_broker.backend) as metrics,
            EmitterPool(config=FAST, frontend=shared_broker.frontend, backend=shared_broker.backend) as pool,
            Publisher(shared_broker.frontend) as pub,
        ):
            metrics.subscribe("metrics", "store_metrics:w3")

            def b_paused(expected: bool) -> bool:
                message = metrics.recv(timeout=2)
                return bool(
                    message.src == "proc-b"
                    and isinstance(message.payload, EmitterMetrics)
                    and message.payload.paused is expected
                )

            assert wait_until(lambda: b_paused(False), timeout=5, interval=0)
            worker = pool.add("w3", "primary", flaky, subscription="w3:projection")
            broadcast_store_events("w3", "primary", _events(0), publisher=pub)
            assert wait_until(lambda: worker.stats.breaker == "open", timeout=5)
            assert wait_until(lambda: b_paused(True), timeout=5, interval=0)  # B heard A's failure
            broadcast_store_events("w3", "replica", _events(1, 2, 3, 4), publisher=pub)
            failing.clear()  # A's half-open try succeeds, closes, reports healthy: B resumes
            assert wait_until(lambda: b_paused(False), timeout=5, interval=0)
        received = [json.loads(other.stdout.readline())["version"] for _ in range(4)]
        assert received == [1, 2, 3, 4]
    finally:
        other.communicate("stop\n", timeout=20)
    assert other.returncode == 0


@pytest.mark.parametrize(("policy", "kept"), [("drop_newest", [1, 2, 3, 4, 5]), ("drop_oldest", [4, 5, 6, 7, 8])])
def test_overflow_drops_exactly_what_the_policy_says(
    shared_broker: BrokerProcess, policy: str, kept: list[int]
) -> None:
    config = HealthConfig(check_interval=60_000, metrics_interval=60_000, buffer_size=5, overflow_policy=policy)
    seen, collect = _collector()
    store = f"ov-{policy}"
    with (
        EmitterPool(config=config, frontend=shared_broker.frontend, backend=shared_broker.backend) as pool,
        Publisher(shared_broker.frontend) as pub,
    ):
        worker = pool.add(store, "s", collect)
        pub.publish_message(
            SubscriptionHealth(store=store, subscription=f"{store}:s", status="failed", event="proxy_crashed")
        )
        assert wait_until(lambda: worker.paused, timeout=5)
        broadcast_store_events(store, "s", _events(1, 2, 3, 4, 5, 6, 7, 8), publisher=pub)
        assert wait_until(lambda: worker.stats.dropped == 3, timeout=5)
        assert worker.stats.buffered == 5 and seen == []
        pub.publish_message(
            SubscriptionHealth(store=store, subscription=f"{store}:s", status="healthy", event="proxy_started")
        )
        assert wait_until(lambda: len(seen) == 5, timeout=5)
    assert [e["version"] for e in seen] == kept
    assert worker.stats.dropped == 3


def test_a_worker_ignores_health_events_about_other_subscriptions(shared_broker: BrokerProcess) -> None:
    seen, collect = _collector()
    with (
        EmitterPool(config=FAST, frontend=shared_broker.frontend, backend=shared_broker.backend) as pool,
        Publisher(shared_broker.frontend) as pub,
    ):
        worker = pool.add("w4", "mine", collect)
        for subscription, store in (("w4:theirs", "w4"), ("w4:mine", "another-store")):
            pub.publish_message(SubscriptionHealth(store=store, subscription=subscription, status="failed", event="x"))
        broadcast_store_events("w4", "mine", _events(1), publisher=pub)
        assert wait_until(lambda: len(seen) == 1, timeout=5)
        assert not worker.paused


def test_a_slow_subscriber_times_out_as_a_failure(shared_broker: BrokerProcess) -> None:
    config = HealthConfig(delivery_timeout=100, unhealthy_threshold=2, backoff_initial=60_000, check_interval=60_000)

    async def slow(event: dict[str, Any]) -> None:
        await asyncio.sleep(10)

    with (
        EmitterPool(config=config, frontend=shared_broker.frontend, backend=shared_broker.backend) as pool,
        Publisher(shared_broker.frontend) as pub,
    ):
        worker = pool.add("w5", "s", slow)
        broadcast_store_events("w5", "s", _events(1), publisher=pub)
        assert wait_until(lambda: worker.stats.breaker == "open", timeout=5)
        assert worker.stats.failures == 2 and worker.stats.buffered == 1


def test_without_the_breaker_an_event_is_given_up_after_the_threshold_and_counted(
    shared_broker: BrokerProcess,
) -> None:
    config = HealthConfig(circuit_breaker_enabled=False, unhealthy_threshold=2, check_interval=60_000)
    seen: list[int] = []

    def picky(event: dict[str, Any]) -> None:
        if event["version"] == 2:
            raise ValueError("poison")
        seen.append(event["version"])

    with (
        EmitterPool(config=config, frontend=shared_broker.frontend, backend=shared_broker.backend) as pool,
        Publisher(shared_broker.frontend) as pub,
    ):
        worker = pool.add("w6", "s", picky)
        broadcast_store_events("w6", "s", _events(1, 2, 3), publisher=pub)
        assert wait_until(lambda: seen == [1, 3], timeout=5)
        assert (worker.stats.dropped, worker.stats.failures, worker.stats.breaker) == (1, 2, "closed")


def test_metrics_and_summaries_are_published(shared_broker: BrokerProcess) -> None:
    seen, collect = _collector()
    with Subscriber(shared_broker.backend) as sub:
        sub.subscribe("metrics", "metrics_summary:w7")
        with (
            EmitterPool(config=FAST, frontend=shared_broker.frontend, backend=shared_broker.backend) as pool,
            Publisher(shared_broker.frontend) as pub,
        ):
            pool.add("w7", "a", collect)
            pool.add("w7", "b", collect)
            broadcast_store_events("w7", "a", _events(1, 2, 3), publisher=pub)
            assert wait_until(lambda: len(seen) == 3, timeout=5)

            def summary_counts() -> bool:
                payload = sub.recv(timeout=2).payload
                return (payload.total_events, payload.active_subscriptions, payload.dropped_events) == (
                    3,
                    2,
                    0,
                )

            assert wait_until(summary_counts, timeout=5, interval=0)


def test_banners_and_lines_render_with_their_fields(shared_broker: BrokerProcess) -> None:
    from exesdb_sdk.observe import setup_observability, teardown_observability

    stream = io.StringIO()
    setup_observability(stream=stream, output="plain")
    try:
        with EmitterPool(config=FAST, frontend=shared_broker.frontend, backend=shared_broker.backend) as pool:
            pool.add("w8", "orders", lambda event: None)
    finally:
        teardown_observability()
    text = stream.getvalue()
    assert "EMITTER WORKER ACTIVATION" in text and "EMITTER WORKER TERMINATION" in text
    for field in (
        '"w8:orders"',
        "Store:",
        "Selector:",
        "Subscriber:",
        "PID:",
        "Thread:",
        "Reason:",
        "shutdown",
    ):
        assert field in text, field
    assert "SUBSCRIBED to health events for store: w8" in text


def test_stopping_in_the_middle_of_deliveries_does_not_hang(shared_broker: BrokerProcess) -> None:
    """A stop that lands while deliveries complete must still end the worker promptly."""
    import time

    for attempt in range(8):
        seen, collect = _collector()
        store = f"w9-{attempt}"
        pool = EmitterPool(config=FAST, frontend=shared_broker.frontend, backend=shared_broker.backend).start()
        try:
            pool.add(store, "s", collect)
            with Publisher(shared_broker.frontend) as pub:
                broadcast_store_events(store, "s", _events(*range(2000)), publisher=pub)
            wanted = 20 * (attempt + 1)
            assert wait_until(lambda seen=seen, wanted=wanted: len(seen) >= wanted, timeout=10)
        finally:
            started = time.monotonic()
            pool.stop()
            assert time.monotonic() - started < 5, f"stop took {time.monotonic() - started:.1f} s"
