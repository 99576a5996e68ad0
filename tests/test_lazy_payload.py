"""Typed payloads are built from ``data`` when a reader first asks for them, not as messages
arrive: what a reader sees (``payload``, equality, repr, pickling, ``stats.invalid_payloads``)
is what it saw when every payload was built on receipt."""

from __future__ import annotations

import asyncio
import pickle
from typing import Any

import msgspec
import pytest
from exesdb_sdk import AsyncSubscriber, Message, Subscriber
from exesdb_sdk.messages import NodeHealth

from .conftest import BrokerProcess, raw_publisher

TOPIC = b"ex_esdb_health/node_health:n1"
GOOD = {"node": "n1", "status": "degraded", "load_avg": 0.5}
BROKEN = {"status": "on fire"}  # a NodeHealth without a node, with a status it does not know


def _send(frontend: str, *datas: dict[str, Any], type: str = "NodeHealth") -> None:
    """Publish one raw envelope per ``data`` (no ``pub`` nor ``seq``: no gap, no duplicate)."""
    raw = raw_publisher(frontend)
    try:
        for data in datas:
            raw.send_multipart([TOPIC, msgspec.msgpack.encode({"v": 1, "type": type, "data": data})])
    finally:
        raw.close()


@pytest.mark.timeout(30)
def test_a_payload_is_built_on_first_read_and_a_misfit_is_counted_then(broker: BrokerProcess) -> None:
    with Subscriber(broker.backend) as sub:
        sub.subscribe("health")
        _send(broker.frontend, GOOD, BROKEN)
        good, broken = sub.recv(timeout=5), sub.recv(timeout=5)
        assert (sub.stats.received, sub.stats.invalid_payloads) == (2, 0)  # nothing built yet
        assert broken.payload is None and broken.data == BROKEN  # generic, not lost
        assert sub.stats.invalid_payloads == 1
        assert broken.payload is None and sub.stats.invalid_payloads == 1  # counted once
        payload = good.payload
        assert payload == NodeHealth(**GOOD)
        assert good.payload is payload  # built once, then kept
        assert sub.stats.invalid_payloads == 1


@pytest.mark.timeout(30)
def test_equality_repr_and_pickling_see_the_payload(broker: BrokerProcess) -> None:
    with Subscriber(broker.backend) as sub:
        sub.subscribe("health")
        _send(broker.frontend, GOOD, GOOD, GOOD, GOOD, GOOD)
        _send(broker.frontend, {"a": 1}, type="Custom")
        messages = [sub.recv(timeout=5) for _ in range(6)]
    first, second, third, fourth, fifth, custom = messages
    assert first.payload == NodeHealth(**GOOD)
    assert first == second and second == first  # one built, the other not: equal all the same
    assert "payload=NodeHealth(node='n1', status='degraded', load_avg=0.5)" in repr(third)
    restored = pickle.loads(pickle.dumps(fourth))
    assert restored == first and restored.payload == NodeHealth(**GOOD)
    without = Message(type="NodeHealth", data=GOOD, topic=first.topic)
    assert without.payload is None and fifth != without and without != fifth
    assert Message(type="NodeHealth", data=GOOD, topic=first.topic, payload=NodeHealth(**GOOD)) == fifth
    assert custom.payload is None and custom.data == {"a": 1}


@pytest.mark.timeout(30)
def test_untyped_subscribers_build_no_payload(broker: BrokerProcess) -> None:
    with Subscriber(broker.backend, typed=False) as sub:
        sub.subscribe("health")
        _send(broker.frontend, GOOD, BROKEN)
        messages = sub.recv_batch(timeout=5)
        messages += sub.recv_batch(timeout=5) if len(messages) < 2 else []
        assert [m.payload for m in messages] == [None, None]
        assert [m.data for m in messages] == [GOOD, BROKEN]
        assert sub.stats.invalid_payloads == 0


@pytest.mark.timeout(30)
def test_the_asyncio_subscriber_builds_payloads_on_first_read_too(broker: BrokerProcess) -> None:
    async def run() -> tuple[int, int, Any, Any]:
        async with AsyncSubscriber(broker.backend) as sub:
            await sub.subscribe("health")
            _send(broker.frontend, GOOD, BROKEN)
            good, broken = await sub.recv(timeout=5), await sub.recv(timeout=5)
            before = sub.stats.invalid_payloads
            payloads = good.payload, broken.payload
            return before, sub.stats.invalid_payloads, *payloads

    before, after, good, broken = asyncio.run(run())
    assert (before, after) == (0, 1)
    assert good == NodeHealth(**GOOD) and broken is None
