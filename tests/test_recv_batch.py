"""``recv_batch`` and batched iteration against a real broker: what ``recv`` gives one by one,
in order, with typed payloads, gaps, decode errors and wildcards, bounded, and nothing lost."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import pytest
from exesdb_sdk import AsyncSubscriber, Message, Publisher, ReceiveTimeoutError, Subscriber
from exesdb_sdk.messages import NodeHealth

from .conftest import BrokerProcess, raw_publisher

COUNT = 2000


def _node_health(n: int) -> NodeHealth:
    return NodeHealth(node="n1", status="healthy", load_avg=n / COUNT)


def _collect(sub: Subscriber, total: int, max_messages: int) -> list[list[Message]]:
    batches: list[list[Message]] = []
    got = 0
    for _ in range(total):  # bounded: every call returns at least one message or raises
        if got >= total:
            break
        batch = sub.recv_batch(max_messages=max_messages, timeout=5)
        batches.append(batch)
        got += len(batch)
    return batches


@pytest.mark.timeout(30)
def test_recv_batch_drains_in_order_typed_and_bounded(broker: BrokerProcess) -> None:
    with Subscriber(broker.backend) as sub, Publisher(broker.frontend) as pub:
        sub.subscribe("health")
        for n in range(COUNT):
            pub.publish_message(_node_health(n))
        pub.publish_batch("health", "batched", "Custom", [{"i": i} for i in range(300)])  # one ZeroMQ message
        batches = _collect(sub, COUNT + 300, max_messages=500)
    messages = [m for batch in batches for m in batch]
    assert all(1 <= len(batch) <= 500 for batch in batches)
    assert len(batches) < len(messages)  # several messages per call: it drains, not one per call
    typed, custom = messages[:COUNT], messages[COUNT:]
    assert [m.seq for m in typed] == list(range(1, COUNT + 1))
    assert all(isinstance(m.payload, NodeHealth) for m in typed)
    assert [m.payload.load_avg for m in typed[:3]] == [0.0, 1 / COUNT, 2 / COUNT]
    assert [m.data["i"] for m in custom] == list(range(300)) and all(m.payload is None for m in custom)
    assert (sub.stats.received, sub.stats.gaps, sub.stats.pending) == (COUNT + 300, 0, 0)


@pytest.mark.timeout(30)
def test_breaking_out_of_iteration_loses_nothing(broker: BrokerProcess) -> None:
    with Subscriber(broker.backend) as sub, Publisher(broker.frontend) as pub:
        sub.subscribe("health")
        for n in range(100):
            pub.publish("health", "x", "Custom", {"n": n})
        first = []
        for message in sub.iter(timeout=5):
            first.append(message.data["n"])
            if len(first) == 10:
                break
        rest = [m.data["n"] for batch in _collect(sub, 90, max_messages=1000) for m in batch]
        assert first + rest == list(range(100))
        with pytest.raises(ReceiveTimeoutError):
            sub.recv_batch(timeout=0.05)
        with pytest.raises(ValueError, match="max_messages must be at least 1"):
            sub.recv_batch(max_messages=0)


@pytest.mark.timeout(30)
def test_gaps_decode_errors_and_wildcards_in_one_batch(broker: BrokerProcess) -> None:
    gaps: list[tuple[int, int]] = []
    errors: list[str] = []
    with Subscriber(
        broker.backend,
        on_gap=lambda message, missing: gaps.append((message.seq, missing)),
        on_error=lambda exc, frames: errors.append(exc.reason),
    ) as sub:
        sub.subscribe("metrics", "store_*:eu")
        raw = raw_publisher(broker.frontend)
        try:

            def envelope(seq: int) -> bytes:
                return msgspec.msgpack.encode({"type": "Custom", "data": {"seq": seq}, "pub": "p1", "seq": seq})

            sent = [
                (b"ex_esdb_metrics/store_a:eu", envelope(1)),
                (b"ex_esdb_metrics/store_a:eu", envelope(2)),
                (b"ex_esdb_metrics/store_a:us", envelope(3)),  # the glob's literal start matches, the glob not
                (b"ex_esdb_metrics/store_a:eu", b"\xc1 not msgpack"),
                (b"ex_esdb_metrics/store_a:eu", envelope(5)),  # 3 and 4 missing on this topic
                (b"ex_esdb_metrics/store_a:eu", envelope(6)),
            ]
            for topic, body in sent:
                raw.send_multipart([topic, body])
        finally:
            raw.close()
        got = [m for batch in _collect(sub, 4, max_messages=100) for m in batch]
        stats = sub.stats
    assert [m.seq for m in got] == [1, 2, 5, 6]
    assert gaps == [(5, 2)] and errors == ["bad_body"]
    assert (stats.gaps, stats.decode_errors, stats.filtered, stats.received) == (2, 1, 1, 4)


@pytest.mark.timeout(30)
def test_async_recv_batch_and_iteration_match_the_sync_ones(broker: BrokerProcess) -> None:
    async def run() -> tuple[list[int], list[int], int]:
        async with AsyncSubscriber(broker.backend) as sub:
            await sub.subscribe("health")
            with Publisher(broker.frontend) as pub:
                for n in range(COUNT):
                    pub.publish_message(_node_health(n))
            seqs: list[int] = []
            calls = 0
            for _ in range(COUNT):
                if len(seqs) >= 1500:
                    break
                batch = await sub.recv_batch(max_messages=250, timeout=5)
                assert 1 <= len(batch) <= 250
                assert all(isinstance(m.payload, NodeHealth) for m in batch)
                seqs += [m.seq for m in batch]
                calls += 1
            rest = []
            async for message in sub.iter(timeout=5):
                rest.append(message.seq)
                if len(seqs) + len(rest) == COUNT:
                    break
            with pytest.raises(ReceiveTimeoutError):
                await sub.recv_batch(timeout=0.05)
            return seqs, rest, calls

    seqs, rest, calls = asyncio.run(run())
    assert seqs + rest == list(range(1, COUNT + 1))
    assert calls < len(seqs)


@pytest.mark.timeout(10)
def test_big_bodies_are_walked_to_the_same_nesting_answer() -> None:
    """Bodies of 8 KB and more are walked rather than counted: the decoder refuses the same."""
    from exesdb_sdk.protocol import MAX_DEPTH, Decoder, ProtocolError

    def nested(depth: int, key: Any = "k") -> Any:
        value: Any = "leaf"
        for level in range(depth):
            value = {key: value} if level % 2 else [value]
        return value

    pad = "\x90" * 9000  # string bytes that look like array headers: passed over, not counted
    decoder = Decoder()
    topic = b"ex_esdb_metrics/x"
    for depth, key, expected in [
        (MAX_DEPTH - 2, "k", None),  # the envelope's map and data are two levels more
        (MAX_DEPTH - 1, "k", "too_deep"),
        (MAX_DEPTH - 1, 7, "too_deep"),  # a map with another kind of key: counted instead
        (3, 7, None),
    ]:
        body = msgspec.msgpack.encode({"type": "T", "data": {"deep": nested(depth, key), "pad": pad}})
        assert len(body) > 8192
        try:
            decoder.decode([topic, body])
            reason = None
        except ProtocolError as exc:
            reason = exc.reason
        assert reason == expected, (depth, key, reason)
    with pytest.raises(ProtocolError) as truncated:
        decoder.decode([topic, body[:-1]])
    assert truncated.value.reason == "bad_body"
