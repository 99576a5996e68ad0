"""Pipelined durable publishes against a real broker: ``Publisher.publish_durable_many`` and the
raw ``ControlClient.commit_many`` (sync and asyncio), each message confirmed or refused on its
own, bodies passed unchanged, a broker that stops answering, and bad input."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import msgspec
import pytest
from exesdb_sdk import (
    AsyncControlClient,
    AsyncPublisher,
    ControlClient,
    ControlError,
    DurabilityError,
    Publisher,
    Subscriber,
)
from exesdb_sdk.messages import NodeHealth
from exesdb_sdk.protocol import Encoder

from .conftest import StartBroker, wait_until
from .peers import freeze
from .test_journal import journal, replay_all

pytestmark = pytest.mark.timeout(40)


def test_publish_durable_many_confirms_or_refuses_each_message(start_broker: StartBroker, tmp_path: Path) -> None:
    broker = start_broker("--data-dir", str(tmp_path))
    items: list[Any] = []
    for n in range(300):
        items.append(("audit", "import", "Custom", {"n": n}))
        if n % 50 == 0:
            items.append(("metrics", "import", "Custom", {"n": n}))  # not journaled: refused
    items.append(NodeHealth(node="n1", status="healthy"))  # health: not journaled either
    with Subscriber(broker.backend) as sub, Publisher(broker.frontend, control=broker.control) as pub:
        sub.subscribe("audit")
        results = pub.publish_durable_many(items, window=64)
        assert len(results) == len(items)
        committed = [
            r for r, item in zip(results, items, strict=True) if isinstance(item, tuple) and item[0] == "audit"
        ]
        assert committed == list(range(1, 301))  # the broker's journal sequence, in order
        refused = [r for r in results if not isinstance(r, int)]
        assert len(refused) == 7
        assert all(isinstance(r, DurabilityError) and r.code == "not_journaled" for r in refused)
        live = [sub.recv(timeout=5) for _ in range(300)]
        assert [(m.data["n"], m.seq) for m in live] == [(n, n + 1) for n in range(300)]
        # the refused ones gave their sequence numbers back: no gap on those topics
        assert pub.publish("metrics", "import", "Custom", {}) == 1
        assert pub.stats.messages == 301 and pub.stats.envelopes == 301
    assert [r[0] for r in replay_all(broker)] == list(range(1, 301))
    stats = journal(broker)
    assert stats["durable"] == 300 and stats["refused"] == 7


def test_commit_many_sends_raw_bodies_unchanged_and_answers_each(start_broker: StartBroker, tmp_path: Path) -> None:
    broker = start_broker("--data-dir", str(tmp_path))
    other = Encoder(src="elsewhere", pub="feedfacefeedface")
    topic = other.topic("audit", "imported")
    messages = [(topic, other.encode(topic, "Custom", {"n": n})) for n in range(200)]
    messages.insert(50, (topic, b"\xc1"))  # not MessagePack
    messages.insert(100, (b"\xff\xfe", messages[0][1]))  # a topic that is not UTF-8
    messages.insert(150, (b"ex_esdb_metrics/x", messages[0][1]))  # not journaled
    with ControlClient(broker.control) as control:
        results = control.commit_many(messages, window=16)
        assert len(results) == len(messages)
        errors = {index: result for index, result in enumerate(results) if not isinstance(result, int)}
        assert sorted(errors) == [50, 100, 150]
        assert errors[50].code == "bad_request" and errors[100].code == "bad_request"
        assert isinstance(errors[150], DurabilityError) and errors[150].code == "not_journaled"
        assert [r for r in results if isinstance(r, int)] == list(range(1, 201))
        assert control.commit_many([]) == []
        assert control.ping()["pong"]  # the broker carries on
    records = replay_all(broker)
    decoded = [msgspec.msgpack.decode(r[3]) for r in records]
    assert [(e["pub"], e["seq"], e["data"]["n"]) for e in decoded] == [
        ("feedfacefeedface", n + 1, n) for n in range(200)
    ]
    assert [r[3] for r in records] == [body for t, body in messages if t == topic and body != b"\xc1"]


def test_the_asyncio_twins_pipeline_too(start_broker: StartBroker, tmp_path: Path) -> None:
    broker = start_broker("--data-dir", str(tmp_path))

    async def main() -> tuple[list[Any], list[Any]]:
        async with AsyncPublisher(broker.frontend, control=broker.control) as pub:
            mine = await pub.publish_durable_many([("audit", "a", "Custom", {"n": n}) for n in range(100)], window=8)
        async with AsyncControlClient(broker.control) as control:
            raw = await control.commit_many([(b"ex_esdb_audit/b", mine_body) for mine_body in bodies], window=4)
        return mine, raw

    encoder = Encoder(src="x")
    bodies = [encoder.encode(b"ex_esdb_audit/b", "Custom", {"n": n}) for n in range(20)]
    mine, raw = asyncio.run(main())
    assert mine == list(range(1, 101)) and raw == list(range(101, 121))
    # through publish_many: chunks of window // 2 (100 in 25 requests, 20 in 10)
    assert wait_until(lambda: journal(broker)["publish_many"] == 35, 10)


def test_a_broker_that_stops_answering_leaves_unanswered_and_unsent_entries(
    start_broker: StartBroker, tmp_path: Path
) -> None:
    broker = start_broker("--data-dir", str(tmp_path))
    encoder = Encoder(src="x")
    messages = [(b"ex_esdb_audit/c", encoder.encode(b"ex_esdb_audit/c", "Custom", {"n": n})) for n in range(30)]
    with ControlClient(broker.control, timeout=0.5) as control:
        assert control.commit_many(messages[:2]) == [1, 2]
        freeze(broker.proc.pid)
        try:
            results = control.commit_many(messages[2:], window=10)
        finally:
            broker.terminate(signal.SIGCONT)
        assert [r.code if isinstance(r, ControlError) else r for r in results] == ["unanswered"] * 10 + [
            "not_sent"
        ] * 18


def test_bad_input_is_refused_before_anything_is_sent(start_broker: StartBroker, tmp_path: Path) -> None:
    broker = start_broker("--data-dir", str(tmp_path))
    with ControlClient(broker.control) as control, Publisher(broker.frontend, control=broker.control) as pub:
        for window in (0, 10_001, True, 2.5):
            with pytest.raises(ValueError, match="window must be an integer from 1 to 10000"):
                control.commit_many([(b"ex_esdb_audit/x", b"")], window=window)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="message 1 must be a \\(topic, body\\) tuple of bytes"):
            control.commit_many([(b"ex_esdb_audit/x", b""), ("ex_esdb_audit/x", b"")])  # type: ignore[list-item]
        with pytest.raises(TypeError, match="item 1 must be a typed payload"):
            pub.publish_durable_many([("audit", "x", "Custom", {}), "nope"])  # type: ignore[list-item]
        with pytest.raises(ValueError, match="window"):
            pub.publish_durable_many([("audit", "x", "Custom", {})], window=0)
        assert pub.publish("audit", "x", "Custom", {}) == 1  # nothing sent, no sequence number taken
        assert journal(broker)["durable"] == 0
