"""Publisher and Subscriber against a real broker process."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import time

import msgspec
import pytest
from exesdb_sdk import (
    AsyncPublisher,
    AsyncSubscriber,
    BrokerUnavailableError,
    ClosedError,
    Instance,
    MessageTooLargeError,
    Publisher,
    ReceiveTimeoutError,
    Subscriber,
    UnknownInstanceError,
)
from exesdb_sdk.protocol import ProtocolError

from .conftest import BrokerProcess, raw_publisher
from .peers import free_endpoint


def test_round_trip_carries_every_envelope_field(broker: BrokerProcess) -> None:
    with Subscriber(broker.backend) as sub, Publisher(broker.frontend, node="node-a") as pub:
        sub.subscribe("health")
        before = time.time_ns()
        seq = pub.publish(
            "health",
            "store_health:main",
            "NodeHealth",
            {"node": "node-a", "status": "healthy", "load_avg": 0.5},
            corr="corr-1",
            cause="cause-1",
            trace="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )
        message = sub.recv(timeout=5)
    assert seq == 1
    assert message.topic == "ex_esdb_health/store_health:main"
    assert message.instance is Instance.HEALTH
    assert message.subtopic == "store_health:main"
    assert message.type == "NodeHealth"
    assert message.data == {"node": "node-a", "status": "healthy", "load_avg": 0.5}
    assert message.src == "node-a"
    assert message.pub == pub.pub_id and len(message.pub) == 16
    assert message.seq == 1
    assert message.v == 1
    assert before <= message.ts <= time.time_ns()
    assert (message.corr, message.cause) == ("corr-1", "cause-1")
    assert message.trace is not None and message.trace.startswith("00-")
    assert message.message_id == f"{pub.pub_id}:ex_esdb_health/store_health:main:1"


def test_instance_isolation(broker: BrokerProcess) -> None:
    """A health subscriber never sees metrics, nor an instance whose name starts the same."""
    with Subscriber(broker.backend) as health, Subscriber(broker.backend) as metrics:
        health.subscribe("health")
        metrics.subscribe(Instance.METRICS)
        with Publisher(broker.frontend) as pub:
            pub.publish("metrics", "store_metrics:s", "PerfSample", {"value": 1})
            pub.publish("health", "store_health:s", "NodeHealth", {"node": "n1", "status": "healthy"})
            pub.publish("metrics", "store_metrics:s", "PerfSample", {"value": 2})
        got = health.recv(timeout=5)
        assert got.type == "NodeHealth"
        assert [metrics.recv(timeout=5).data["value"] for _ in range(2)] == [1, 2]
        with pytest.raises(ReceiveTimeoutError):
            health.recv(timeout=0.3)
        assert health.stats.received == 1


def test_prefix_narrowing(broker: BrokerProcess) -> None:
    with Subscriber(broker.backend) as sub:
        sub.subscribe("health", "store_health:a")
        with Publisher(broker.frontend) as pub:
            for subtopic in ("store_health:b", "health_summary:a", "store_health:a", "store_health:ab"):
                pub.publish("health", subtopic, "T", {"sub": subtopic})
        received = [m.subtopic for m in sub.iter(timeout=0.5)]
    assert received == ["store_health:a", "store_health:ab"]


def test_subscribe_all_and_unsubscribe(broker: BrokerProcess) -> None:
    with Subscriber(broker.backend) as sub, Publisher(broker.frontend) as pub:
        sub.subscribe()
        for instance in Instance:
            pub.publish(instance, "x", "T", {})
        seen = {sub.recv(timeout=5).instance for _ in Instance}
        assert seen == set(Instance)
        sub.unsubscribe()
        sub.subscribe("audit")
        pub.publish("health", "x", "T", {})
        pub.publish("audit", "x", "T", {})
        assert sub.recv(timeout=5).instance is Instance.AUDIT
        with pytest.raises(ReceiveTimeoutError):
            sub.recv(timeout=0.2)


def test_one_shot_publish_is_not_lost(broker: BrokerProcess) -> None:
    """A publisher that connects, publishes once and closes at once still delivers."""
    with Subscriber(broker.backend) as sub:
        sub.subscribe("alerts")
        for i in range(5):
            with Publisher(broker.frontend) as pub:
                pub.publish("alerts", "critical", "AlertNote", {"i": i})
            assert sub.recv(timeout=5).data == {"i": i}


def test_one_shot_publish_from_a_process_that_exits_at_once(broker: BrokerProcess) -> None:
    script = textwrap.dedent(
        f"""
        from exesdb_sdk import Publisher
        Publisher({broker.frontend!r}).publish("audit", "admin", "AdminNote", {{"who": "ops"}})
        """
    )
    with Subscriber(broker.backend) as sub:
        sub.subscribe("audit")
        done = subprocess.run([sys.executable, "-c", script], timeout=30, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert sub.recv(timeout=5).data == {"who": "ops"}


def test_batches_arrive_as_separate_messages_in_order(broker: BrokerProcess) -> None:
    with Subscriber(broker.backend) as sub, Publisher(broker.frontend) as pub:
        sub.subscribe("events")
        pub.publish("events", "store:s1", "EventNote", {"n": 0})
        assert pub.publish_batch("events", "store:s1", "EventNote", ({"n": n} for n in range(1, 101))) == 100
        pub.publish("events", "store:s1", "EventNote", {"n": 101})
        messages = [sub.recv(timeout=5) for _ in range(102)]
        assert [m.data["n"] for m in messages] == list(range(102))
        assert [m.seq for m in messages] == list(range(1, 103))
        assert sub.stats.gaps == 0
        assert pub.stats.messages == 3 and pub.stats.envelopes == 102


def _envelope(seq: int, pub: str = "feedfacefeedface") -> bytes:
    return msgspec.msgpack.encode(
        {"v": 1, "type": "T", "ts": time.time_ns(), "src": "n", "pub": pub, "seq": seq, "data": {"seq": seq}}
    )


def test_a_gap_is_counted_and_reported(broker: BrokerProcess) -> None:
    gaps: list[tuple[int, int]] = []
    with Subscriber(broker.backend, on_gap=lambda m, missing: gaps.append((m.seq, missing))) as sub:
        sub.subscribe("metrics")
        raw = raw_publisher(broker.frontend)
        try:
            for seq in (1, 2, 5, 6, 10):
                raw.send_multipart([b"ex_esdb_metrics/x", _envelope(seq)])
            # another publisher on the same topic has its own sequence: no gap
            raw.send_multipart([b"ex_esdb_metrics/x", _envelope(1, pub="0000000000000001")])
            received = [sub.recv(timeout=5).seq for _ in range(6)]
        finally:
            raw.close()
    assert received == [1, 2, 5, 6, 10, 1]
    assert sub.stats.gaps == 5
    assert gaps == [(5, 2), (10, 3)]


def test_asyncio_round_trip(broker: BrokerProcess) -> None:
    async def main() -> list[tuple[str, dict[str, int]]]:
        async with AsyncSubscriber(broker.backend) as sub:
            await sub.subscribe("lifecycle")
            async with AsyncPublisher(broker.frontend) as pub:
                await pub.publish("lifecycle", "process", "LifecycleNote", {"n": 1})
                await pub.publish_batch("lifecycle", "process", "LifecycleNote", [{"n": 2}, {"n": 3}])
            received = [(m.type, m.data) async for m in sub.iter(timeout=0.5)]
            assert sub.stats.received == 3
            return received

    received = asyncio.run(asyncio.wait_for(main(), 20))
    assert received == [("LifecycleNote", {"n": n}) for n in (1, 2, 3)]


def test_no_broker_is_a_clear_error_within_the_timeout() -> None:
    endpoint = free_endpoint()
    started = time.monotonic()
    with pytest.raises(BrokerUnavailableError, match=f"no broker answered at {endpoint} within 0.3 s"):
        Publisher(endpoint, connect_timeout=0.3)
    with Subscriber(endpoint) as sub, pytest.raises(BrokerUnavailableError, match=endpoint):
        sub.subscribe("health", timeout=0.3)
    assert time.monotonic() - started < 5

    async def main() -> None:
        with pytest.raises(BrokerUnavailableError, match=endpoint):
            await AsyncPublisher(endpoint, connect_timeout=0.3).connect()

    asyncio.run(main())


def test_bad_arguments_raise_before_anything_is_sent(broker: BrokerProcess) -> None:
    with Subscriber(broker.backend) as sub, Publisher(broker.frontend, max_message_size=1000) as pub:
        sub.subscribe("health")
        with pytest.raises(UnknownInstanceError, match="unknown instance 'healthz'"):
            pub.publish("healthz", "x", "T", {})
        with pytest.raises(ProtocolError, match="subtopic must not be empty"):
            pub.publish("health", "", "T", {})
        with pytest.raises(MessageTooLargeError, match="over the limit of 1000 bytes"):
            pub.publish("health", "x", "T", {"blob": b"\0" * 2000})
        with pytest.raises(ProtocolError, match="cannot be packed"):
            pub.publish("health", "x", "T", {"bad": object()})
        pub.publish("health", "x", "T", {"ok": True})
        message = sub.recv(timeout=5)
    assert message.data == {"ok": True}
    assert message.seq == 1, "the refused publishes must not use up sequence numbers"
    assert pub.stats.messages == 1


def test_closed_objects_raise_closed_error(broker: BrokerProcess) -> None:
    pub = Publisher(broker.frontend)
    pub.close()
    pub.close()  # idempotent
    with pytest.raises(ClosedError):
        pub.publish("health", "x", "T", {})
    sub = Subscriber(broker.backend)
    sub.close()
    with pytest.raises(ClosedError):
        sub.recv(timeout=0)
