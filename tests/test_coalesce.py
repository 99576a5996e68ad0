"""Coalescing against a real broker: consecutive publishes of a topic travel as one batch and
arrive one by one with their own sequence numbers; what is held goes on time with no further
publish (the sync timer thread, the asyncio timer), on ``flush()``, on close and before a
durable publish; signing, gap counting, the catch-up seam and last values work as without it."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from exesdb_sdk import (
    AsyncPublisher,
    AsyncSubscriber,
    ConfigError,
    ControlClient,
    Publisher,
    ReceiveTimeoutError,
    Subscriber,
)
from exesdb_sdk.messages import NodeHealth
from exesdb_sdk.publisher import DEFAULT_COALESCE

from .conftest import BrokerProcess, StartBroker, wait_until

pytestmark = pytest.mark.timeout(30)

SECRET = "coalesce-secret"


def broker_counts(broker: BrokerProcess, instance: str) -> tuple[int, int]:
    """The broker's (messages, envelopes) of ``instance``."""
    with ControlClient(broker.control) as control:
        stats: dict[str, Any] = control.stats()["instances"][instance]
    return stats["messages"], stats["envelopes"]


def test_a_burst_travels_in_batches_and_arrives_one_by_one_in_order(broker: BrokerProcess) -> None:
    with Publisher(broker.frontend) as default:
        assert default.coalesce == DEFAULT_COALESCE == 0.001  # on by default
    # 20 ms: a burst is calls within 1 ms of each other, whatever a loaded machine's pauses
    with Subscriber(broker.backend) as sub, Publisher(broker.frontend, coalesce=0.02) as pub:
        sub.subscribe("metrics")
        seqs = [pub.publish("metrics", "burst", "Custom", {"n": n}) for n in range(2000)]
        seqs += [pub.publish("metrics", "other", "Custom", {"n": n}) for n in range(3)]
        assert seqs == [*range(1, 2001), 1, 2, 3]  # a batch of n takes n sequence numbers
        got = [sub.recv(timeout=5) for _ in range(2003)]
        stats = pub.stats
    assert [(m.subtopic, m.seq, m.data["n"]) for m in got[:2000]] == [("burst", n + 1, n) for n in range(2000)]
    assert [(m.subtopic, m.seq) for m in got[2000:]] == [("other", 1), ("other", 2), ("other", 3)]
    assert sub.stats.gaps == 0 and sub.stats.received == 2003
    assert stats.envelopes == 2003 and stats.messages < 1000 and stats.coalesced > 1000
    # the broker saw the batches, one message each (its counters converge a moment later; it
    # publishes its own metrics on this instance too)
    assert wait_until(lambda: stats.messages <= broker_counts(broker, "ex_esdb_metrics")[0] < 1000)


def test_coalesce_0_sends_each_publish_alone(broker: BrokerProcess, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EXESDB_COALESCE", "0")
    with Subscriber(broker.backend) as sub, Publisher(broker.frontend) as pub:
        sub.subscribe("metrics")
        for n in range(300):
            pub.publish("metrics", "single", "Custom", {"n": n})
        assert pub.coalesce == 0 and pub.stats.messages == 300 and pub.stats.coalesced == 0
        assert [sub.recv(timeout=5).seq for _ in range(300)] == list(range(1, 301))


def test_what_is_held_goes_on_time_and_on_flush_without_another_publish(broker: BrokerProcess) -> None:
    # a long coalesce, so that a loaded machine's pauses between two calls (ms) still make a burst
    with Subscriber(broker.backend) as sub, Publisher(broker.frontend, coalesce=0.5) as pub:
        sub.subscribe("metrics")
        pub.publish("metrics", "timer", "Custom", {"n": 0})  # the start of a burst: at once
        pub.publish("metrics", "timer", "Custom", {"n": 1})  # held
        pub.publish("metrics", "timer", "Custom", {"n": 2})  # held with it
        assert pub.stats.held == 2
        # no further call on the publisher: only its timer thread can send them
        assert [sub.recv(timeout=5).data["n"] for _ in range(3)] == [0, 1, 2]
        assert pub.stats.held == 0 and pub.stats.coalesced == 2
    with Subscriber(broker.backend) as sub, Publisher(broker.frontend, coalesce=1.0) as pub:
        sub.subscribe("metrics")
        pub.publish("metrics", "flush", "Custom", {"n": 3})
        pub.publish("metrics", "flush", "Custom", {"n": 4})  # held for up to a second
        assert pub.stats.held == 1
        pub.flush()
        assert pub.stats.held == 0 and pub.stats.messages == 2
        assert [sub.recv(timeout=5).data["n"] for _ in range(2)] == [3, 4]


def test_close_and_a_durable_publish_send_what_is_held_first(start_broker: StartBroker, tmp_path: Path) -> None:
    broker = start_broker("--data-dir", str(tmp_path))
    with Subscriber(broker.backend) as sub:
        sub.subscribe("audit")
        with Publisher(broker.frontend, control=broker.control, coalesce=1.0) as pub:
            for n in range(5):
                pub.publish("audit", "order", "Custom", {"n": n})
            assert pub.stats.held >= 4
            assert pub.publish("audit", "order", "Custom", {"n": 5}, durable=True) >= 1
            assert pub.stats.held == 0
            for n in range(6, 9):
                pub.publish("audit", "order", "Custom", {"n": n})
            assert pub.stats.held >= 2
        # closed with messages held for up to a second: close sent them
        got = [sub.recv(timeout=5) for _ in range(9)]
    assert [(m.data["n"], m.seq) for m in got] == [(n, n + 1) for n in range(9)]
    assert sub.stats.gaps == 0


def test_signed_envelopes_are_each_verified_in_a_coalesced_batch(broker: BrokerProcess) -> None:
    with (
        Subscriber(broker.backend, secret=SECRET) as good,
        Subscriber(broker.backend, secret="another-secret") as bad,
        Publisher(broker.frontend, secret=SECRET) as pub,
    ):
        good.subscribe("metrics")
        bad.subscribe("metrics")
        for n in range(200):
            pub.publish("metrics", "signed", "Custom", {"n": n})
        pub.flush()
        assert pub.stats.coalesced > 100
        assert [good.recv(timeout=5).data["n"] for _ in range(200)] == list(range(200))
        assert good.stats.rejected == 0
        assert wait_until(lambda: _rejections(bad) == pub.stats.messages)  # every batch refused, none delivered


def _rejections(sub: Subscriber) -> int:
    with pytest.raises(ReceiveTimeoutError):
        sub.recv(timeout=0.05)
    return sub.stats.rejected


def test_the_catch_up_seam_and_last_values_work_with_batches(start_broker: StartBroker, tmp_path: Path) -> None:
    broker = start_broker("--data-dir", str(tmp_path))
    with Publisher(broker.frontend, coalesce=0.5) as pub:
        for n in range(100):
            pub.publish("audit", "seam", "Custom", {"n": n})
        pub.flush()
        for n in range(20):
            pub.publish_message(NodeHealth(node="n1", status="healthy", load_avg=float(n)))
        pub.flush()
        assert pub.stats.coalesced >= 100
        with Subscriber(broker.backend, control=broker.control) as sub:
            sub.subscribe("audit", replay_from="earliest")
            for n in range(100, 200):  # live while the subscriber catches up
                pub.publish("audit", "seam", "Custom", {"n": n})
            pub.flush()
            got = [sub.recv(timeout=5) for _ in range(200)]
            assert [m.seq for m in got] == list(range(1, 201))  # each once, in order, across the seam
            assert sub.stats.gaps == 0 and any(m.replayed for m in got) and not got[-1].replayed
        with Subscriber(broker.backend, control=broker.control) as last:
            last.subscribe("health", "node_health:", with_last=True)
            first = last.recv(timeout=5)
            assert first.replayed and first.seq == 20 and first.payload.load_avg == 19.0  # the last only
            pub.publish_message(NodeHealth(node="n1", status="degraded"))
            pub.flush()
            assert last.recv(timeout=5).seq == 21


def test_the_asyncio_publisher_coalesces_with_its_loop_timer(broker: BrokerProcess) -> None:
    async def main() -> tuple[list[int], Any]:
        async with AsyncSubscriber(broker.backend) as sub:
            await sub.subscribe("metrics")
            async with AsyncPublisher(broker.frontend, coalesce=0.05) as pub:
                for n in range(500):
                    await pub.publish("metrics", "aio", "Custom", {"n": n})
                assert pub.stats.held > 0
                # nothing else publishes: the loop's timer sends what is held
                got = [(await sub.recv(timeout=5)).seq for _ in range(500)]
                stats = pub.stats
                await pub.publish("metrics", "aio", "Custom", {"n": 500})
                await pub.publish("metrics", "aio", "Custom", {"n": 501})
            got += [(await sub.recv(timeout=5)).seq for _ in range(2)]  # aclose sent what was held
            return got, stats

    got, stats = asyncio.run(main())
    assert got == list(range(1, 503))
    assert stats.held == 0 and stats.messages < 250 and stats.envelopes == 500


@pytest.mark.parametrize(
    ("env", "argument", "message"),
    [
        ("soon", None, "EXESDB_COALESCE='soon': not a number of seconds"),
        ("2", None, "EXESDB_COALESCE: 2.0 is not a number of seconds from 0 to 1"),
        (None, -0.1, "coalesce: -0.1 is not a number of seconds from 0 to 1"),
        (None, True, "coalesce: True is not a number of seconds from 0 to 1"),
    ],
)
def test_a_bad_coalesce_setting_is_a_one_line_error(
    monkeypatch: pytest.MonkeyPatch, env: str | None, argument: Any, message: str
) -> None:
    if env is not None:
        monkeypatch.setenv("EXESDB_COALESCE", env)
    with pytest.raises(ConfigError) as info:  # refused before any socket exists
        Publisher("tcp://127.0.0.1:9", coalesce=argument)
    assert str(info.value) == message and "\n" not in str(info.value)
