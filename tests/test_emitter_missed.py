"""An EmitterPool across a broker restart (kill -9, then a new broker on the same endpoints and
data directory): every event its subscription misses is counted (``WorkerStats.missed``,
``EmitterMetrics.missed_events``) and reported (a ``SubscriptionHealth`` ``event_gap``, status
``degraded``), never lost invisibly."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Any

import pytest
import zmq
from exesdb_sdk import ReceiveTimeoutError, Subscriber
from exesdb_sdk.health import EmitterPool, HealthConfig, SubscriptionState, apply_event
from exesdb_sdk.messages import EmitterMetrics, MetricsSummary, SubscriptionHealth
from exesdb_sdk.protocol import Encoder

from .conftest import BrokerProcess, wait_until
from .peers import free_endpoint

STORE = "restarted"
SUBSCRIPTION = f"{STORE}:$all"
CONFIG = HealthConfig(check_interval=60_000, metrics_interval=200, delivery_timeout=2000)
PACE = 0.002
"""Seconds between two published events: a steady 500 events/s."""


class PacedPublisher:
    """Publishes one ``Events`` message (one event, numbered from 1) every :data:`PACE` seconds
    from a raw PUB socket that queues nothing while it is not connected (``ZMQ_IMMEDIATE``): what
    it publishes while the broker is down is lost, deterministically, and numbered, so the
    subscriber sees the jump."""

    def __init__(self, frontend: str) -> None:
        self._socket: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.XPUB)
        self._socket.setsockopt(zmq.IMMEDIATE, 1)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.setsockopt(zmq.SNDTIMEO, 1000)
        self._socket.connect(frontend)
        assert self._socket.poll(5000), "no subscription from the broker"
        self._socket.recv()
        self._encoder = Encoder(src="test")
        self._topic = self._encoder.topic("events", SUBSCRIPTION)
        self.published = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        for n in range(1, 1_000_000):
            if self._stop.wait(PACE):
                return
            events = [{"event_type": "OrderPlaced", "version": n}]
            body = self._encoder.encode(self._topic, "Events", {"store": STORE, "selector": "$all", "events": events})
            self._socket.send_multipart([self._topic, body])
            self.published = n

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._socket.close(0)


class Listener:
    """Collects the pool's ``SubscriptionHealth`` and ``EmitterMetrics`` in a thread of its own."""

    def __init__(self, backend: str) -> None:
        self.reports: list[SubscriptionHealth] = []
        self.metrics: list[EmitterMetrics | MetricsSummary] = []
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._backend = backend
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self._ready.wait(10), "the listener did not subscribe"

    def _run(self) -> None:
        with Subscriber(self._backend) as sub:
            sub.subscribe("health", f"store_health:{STORE}")
            sub.subscribe("metrics", f"store_metrics:{STORE}")
            sub.subscribe("metrics", f"metrics_summary:{STORE}")
            self._ready.set()
            for _ in range(10_000_000):
                if self._stop.is_set():
                    return
                try:
                    payload: Any = sub.recv(timeout=0.05).payload
                except ReceiveTimeoutError:
                    continue
                if isinstance(payload, SubscriptionHealth):
                    self.reports.append(payload)
                elif isinstance(payload, EmitterMetrics | MetricsSummary):
                    self.metrics.append(payload)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def test_an_event_gap_degrades_a_subscription_until_the_next_delivery_but_never_lifts_failed() -> None:
    state = SubscriptionState(SUBSCRIPTION, status="healthy")
    assert apply_event(state, "event_gap", 3, error="7 message(s) of events missed")
    assert (state.status, state.error_count, state.consecutive_failures) == ("degraded", 1, 0)
    assert state.last_error == "7 message(s) of events missed"
    assert apply_event(state, "event_delivery_success", 3)
    assert state.status == "healthy"
    failed = SubscriptionState(SUBSCRIPTION, status="failed")
    assert not apply_event(failed, "event_gap", 3)
    assert failed.status == "failed"


@pytest.mark.timeout(60)
def test_events_lost_to_a_broker_restart_are_counted_reported_and_degrade_the_subscription(tmp_path: Path) -> None:
    frontend, backend, control = free_endpoint(), free_endpoint(), free_endpoint()
    args = ["--frontend", frontend, "--backend", backend, "--control", control, "--data-dir", str(tmp_path)]
    first = BrokerProcess(args).wait_ready()
    second: BrokerProcess | None = None
    delivered: list[int] = []
    publisher: PacedPublisher | None = None
    listener: Listener | None = None
    try:
        listener = Listener(backend)
        with EmitterPool(config=CONFIG, frontend=frontend, backend=backend) as pool:
            worker = pool.add(STORE, "$all", lambda event: delivered.append(event["version"]))
            publisher = PacedPublisher(frontend)
            publisher.start()
            assert wait_until(lambda: len(delivered) >= 100, 10)

            first.terminate(signal.SIGKILL)
            first.wait_exit(5)
            down_from = publisher.published
            assert wait_until(lambda: publisher is not None and publisher.published >= down_from + 200, 10)
            down_to = publisher.published  # at least these were published with no broker at all
            second = BrokerProcess(args).wait_ready()
            back_at = len(delivered)
            assert wait_until(lambda: len(delivered) >= back_at + 100, 15), second.stderr
            publisher.stop()
            published = publisher.published

            # the last event published was delivered or counted: nothing is unaccounted for
            assert wait_until(lambda: delivered[-1:] == [published], 10)
            stats = worker.stats
            reports = list(listener.reports)
            gap_reports = [r for r in reports if r.subscription == SUBSCRIPTION and r.event == "event_gap"]
            assert gap_reports, [(r.event, r.status) for r in reports]
            assert gap_reports[0].status == "degraded"
            assert stats.missed >= down_to - down_from > 0
            assert len(delivered) + stats.missed == published
            assert delivered == sorted(set(delivered))  # in order, no duplicate
            assert stats.dropped == 0
            assert stats.status == "healthy"  # recovered with the next delivered event
            assert gap_reports[0].last_error is not None and "missed" in gap_reports[0].last_error
            missed = stats.missed

            def published_missed() -> bool:
                assert listener is not None
                own = [m for m in listener.metrics if isinstance(m, EmitterMetrics)]
                summaries = [m for m in listener.metrics if isinstance(m, MetricsSummary)]
                return bool(own and summaries) and own[-1].missed_events == summaries[-1].missed_events == missed

            assert wait_until(published_missed, 5)
    finally:
        if publisher is not None:
            publisher.stop()
        if listener is not None:
            listener.stop()
        first.stop()
        if second is not None:
            second.stop()
