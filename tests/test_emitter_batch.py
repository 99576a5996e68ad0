"""Emitter workers deliver a pass of buffered events at once: against a real broker, a failure
or a closing health gate in the middle of a pass keeps every event, in order, exactly once."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from exesdb_sdk import Publisher
from exesdb_sdk.broadcast import broadcast_store_events
from exesdb_sdk.health import EmitterPool, HealthConfig
from exesdb_sdk.messages import SubscriptionHealth

from .conftest import FREE, BrokerProcess, wait_until

CONFIG = HealthConfig(check_interval=60_000, metrics_interval=60_000, backoff_initial=50, delivery_timeout=5000)
EVENTS = 200


@pytest.fixture(scope="module")
def shared_broker() -> Iterator[BrokerProcess]:
    broker = BrokerProcess(["--frontend", FREE, "--backend", FREE, "--control", FREE]).wait_ready()
    yield broker
    broker.stop()


def _events(count: int) -> list[dict[str, Any]]:
    return [{"event_type": "OrderPlaced", "version": n} for n in range(count)]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_failure_in_the_middle_of_a_pass_keeps_the_rest_in_order(shared_broker: BrokerProcess, kind: str) -> None:
    delivered: list[int] = []
    failed_once: list[int] = []

    def deliver(event: dict[str, Any]) -> None:
        if event["version"] == 50 and not failed_once:
            failed_once.append(50)
            raise RuntimeError("once")
        delivered.append(event["version"])

    async def deliver_async(event: dict[str, Any]) -> None:
        await asyncio.sleep(0)
        deliver(event)

    with EmitterPool(config=CONFIG, frontend=shared_broker.frontend, backend=shared_broker.backend) as pool:
        worker = pool.add(f"b1{kind}", "orders", deliver if kind == "sync" else deliver_async)
        with Publisher(shared_broker.frontend) as pub:
            broadcast_store_events(f"b1{kind}", "orders", _events(EVENTS), publisher=pub)  # one message: one pass
        assert wait_until(lambda: worker.stats.delivered == EVENTS, timeout=10)
        stats = worker.stats
    assert delivered == list(range(EVENTS))
    assert (stats.failures, stats.dropped, stats.buffered, failed_once) == (1, 0, 0, [50])


@pytest.mark.timeout(30)
def test_a_gate_closing_during_a_pass_holds_the_rest(shared_broker: BrokerProcess) -> None:
    delivered: list[int] = []
    entered, release = threading.Event(), threading.Event()

    def deliver(event: dict[str, Any]) -> None:
        if event["version"] == 5 and not entered.is_set():
            entered.set()
            release.wait(10)
        delivered.append(event["version"])

    with (
        EmitterPool(config=CONFIG, frontend=shared_broker.frontend, backend=shared_broker.backend) as pool,
        Publisher(shared_broker.frontend) as pub,
    ):
        worker = pool.add("b2", "orders", deliver)
        broadcast_store_events("b2", "orders", _events(20), publisher=pub)
        assert entered.wait(10)
        pub.publish_message(SubscriptionHealth(store="b2", subscription="b2:orders", status="failed", event="x"))
        assert wait_until(lambda: worker.paused, timeout=5)
        release.set()
        # the pass stops at the next event: 0-5 delivered, 6-19 held in order
        assert wait_until(lambda: worker.stats.delivered == 6 and worker.stats.buffered == 14, timeout=5)
        assert delivered == list(range(6))
        pub.publish_message(SubscriptionHealth(store="b2", subscription="b2:orders", status="healthy", event="x"))
        assert wait_until(lambda: worker.stats.delivered == 20, timeout=5)
    assert delivered == list(range(20))
    assert (worker.stats.dropped, worker.stats.failures) == (0, 0)
