"""No single point of failure for clients: a publisher, a subscriber and a control client given
two real brokers carry on through the second when the first is killed (SIGKILL) mid-stream,
deliver no duplicate, and account for every message as received or as a gap."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from exesdb_sdk import AsyncPublisher, AsyncSubscriber, ControlClient, Publisher, Subscriber
from exesdb_sdk.errors import ConfigError, ReceiveTimeoutError
from exesdb_sdk.protocol import Encoder

from .conftest import BrokerProcess, Lines, StartBroker, instance_messages, raw_publisher, wait_until
from .peers import freeze

pytestmark = pytest.mark.timeout(30)

EXESDB = str(Path(sys.executable).with_name("exesdb"))

TOTAL = 3000
KILL_AT = 1000
PAUSE_EVERY = 100
"""Every this many messages the publisher lets the subscriber read (its queue stays short)."""


@pytest.fixture
def pair(start_broker: StartBroker) -> Iterator[tuple[BrokerProcess, BrokerProcess]]:
    """Two independent brokers, A and B."""
    yield start_broker(), start_broker()


def _read_all(sub: Subscriber, got: list[int], wait: float = 0.0) -> list[int]:
    """What the subscriber has now (waiting up to ``wait`` for the first), into ``got``."""
    for _ in range(TOTAL * 2):
        try:
            got.append(sub.recv(wait).data["i"])
        except ReceiveTimeoutError:
            break
        wait = 0.0
    return got


def _check_accounted(got: list[int], gaps: int) -> None:
    """No duplicate delivered, every message received or counted as a gap, the last one received."""
    assert len(got) == len(set(got)), "a message was delivered twice"
    assert got == sorted(got), "messages out of order"
    assert got[-1] == TOTAL - 1, "the stream did not continue through the second broker"
    assert len(got) + gaps == TOTAL, f"{TOTAL - len(got) - gaps} messages neither received nor counted as gaps"


def test_publisher_and_subscriber_fail_over_to_the_second_broker(pair: tuple[BrokerProcess, BrokerProcess]) -> None:
    a, b = pair
    with (
        Subscriber([a.backend, b.backend], subscribe_timeout=3) as sub,
        Publisher(f"{a.frontend},{b.frontend}", connect_timeout=3) as pub,
    ):
        sub.subscribe("health")
        assert (pub.frontend, sub.backend) == (a.frontend, a.backend)
        got: list[int] = []
        for i in range(TOTAL):
            if i == KILL_AT:
                a.proc.kill()
                a.proc.wait(5)
                # the subscriber moves on while it waits for messages: A sends none any more
                assert wait_until(lambda: bool(_read_all(sub, got, 0.05)) and sub.stats.failovers == 1, timeout=10)
            pub.publish("health", "stream", "Custom", {"i": i})
            if i % PAUSE_EVERY == 0:
                _read_all(sub, got, 0.001)
        assert wait_until(lambda: _read_all(sub, got, 0.05)[-1] == TOTAL - 1, timeout=10)
        stats = sub.stats
        _check_accounted(got, stats.gaps)
        assert (pub.frontend, sub.backend) == (b.frontend, b.backend)
        assert pub.stats.failovers == 1 and stats.failovers == 1
        assert stats.duplicates == 0 and stats.resets == 0
        assert pub.stats.possibly_lost >= 0


def test_async_clients_fail_over(pair: tuple[BrokerProcess, BrokerProcess]) -> None:
    a, b = pair

    async def scenario() -> tuple[list[int], Any, Any, str, str]:
        got: list[int] = []

        async def read_all(sub: AsyncSubscriber, wait: float) -> None:
            for _ in range(TOTAL * 2):
                try:
                    got.append((await sub.recv(wait)).data["i"])
                except ReceiveTimeoutError:
                    return
                wait = 0.0

        async with AsyncSubscriber([a.backend, b.backend], subscribe_timeout=3) as sub:
            await sub.subscribe("health")
            async with AsyncPublisher([a.frontend, b.frontend], connect_timeout=3) as pub:
                for i in range(TOTAL):
                    if i == KILL_AT:
                        a.proc.kill()
                        await asyncio.to_thread(a.proc.wait, 5)
                        for _ in range(200):  # bounded: each turn waits up to 0.05 s
                            await read_all(sub, 0.05)
                            if sub.stats.failovers:
                                break
                    await pub.publish("health", "stream", "Custom", {"i": i})
                    if i % PAUSE_EVERY == 0:
                        await read_all(sub, 0.001)
                for _ in range(200):
                    await read_all(sub, 0.05)
                    if got and got[-1] == TOTAL - 1:
                        break
                return got, sub.stats, pub.stats, pub.frontend, sub.backend

    got, sub_stats, pub_stats, frontend, backend = asyncio.run(asyncio.wait_for(scenario(), 25))
    _check_accounted(got, sub_stats.gaps)
    assert (frontend, backend) == (b.frontend, b.backend)
    assert pub_stats.failovers == 1 and sub_stats.failovers == 1
    assert sub_stats.duplicates == 0


def test_messages_the_next_broker_sends_again_are_skipped(pair: tuple[BrokerProcess, BrokerProcess]) -> None:
    """As with federated brokers, B carries what A carried: after the failover the subscriber
    skips what it had from A by (pub, topic, seq) and delivers only the new ones, no gap."""
    a, b = pair
    encoder = Encoder(src="test")
    topic = encoder.topic("health", "twice")
    bodies = [encoder.encode(topic, "Custom", {"i": i}, None, None, None) for i in range(40)]
    raw_a, raw_b = raw_publisher(a.frontend), raw_publisher(b.frontend)
    try:
        with Subscriber([a.backend, b.backend], subscribe_timeout=3) as sub:
            sub.subscribe("health")
            for body in bodies[:30]:
                raw_a.send_multipart([topic, body])
            got = [sub.recv(5).data["i"] for _ in range(30)]
            a.proc.kill()
            a.proc.wait(5)
            with pytest.raises(ReceiveTimeoutError):
                sub.recv(1.0)  # the failover happens during this wait; nothing new yet
            assert sub.stats.failovers == 1 and sub.backend == b.backend
            for body in bodies[20:]:  # ten it had from A, then ten new
                raw_b.send_multipart([topic, body])
            got += [sub.recv(5).data["i"] for _ in range(10)]
            stats = sub.stats
    finally:
        raw_a.close(0)
        raw_b.close(0)
    assert got == list(range(40))
    assert stats.duplicates == 10 and stats.gaps == 0


def test_a_frozen_broker_is_left_after_the_heartbeat_timeout(pair: tuple[BrokerProcess, BrokerProcess]) -> None:
    """SIGSTOP, not SIGKILL: no TCP reset tells the clients (as when a machine vanishes); the
    ZMTP heartbeats they send with several brokers do, within their timeout."""
    a, b = pair
    with (
        Subscriber([a.backend, b.backend], subscribe_timeout=3) as sub,
        Publisher([a.frontend, b.frontend], connect_timeout=3) as pub,
    ):
        sub.subscribe("health")
        sent = 0

        def publish() -> bool:
            nonlocal sent
            pub.publish("health", "frozen", "Custom", {"i": sent})
            sent += 1
            return pub.stats.failovers == 1

        publish()
        got = [sub.recv(5).data["i"]]
        freeze(a.proc.pid)
        try:
            assert wait_until(lambda: bool(_read_all(sub, got, 0.05) or True) and sub.stats.failovers == 1, 15)
            assert wait_until(publish, 15, interval=0.05)
        finally:
            a.proc.kill()
        assert pub.frontend == b.frontend and sub.backend == b.backend
        last = sent
        publish()
        assert wait_until(lambda: bool(_read_all(sub, got, 0.05)) and got[-1] == last, 10), (
            got,
            sub.stats,
            pub.stats,
            instance_messages(b, "ex_esdb_health"),
        )
        assert len(got) == len(set(got)) and len(got) + sub.stats.gaps == sent


def test_control_client_tries_each_endpoint(pair: tuple[BrokerProcess, BrokerProcess]) -> None:
    a, b = pair
    with ControlClient(f"{a.control},{b.control}", timeout=1) as control:
        assert control.ping()["ok"] and control.endpoint == a.control
        a.proc.kill()
        a.proc.wait(5)
        assert control.ping()["ok"], "B should have answered"
        assert control.endpoint == b.control
        assert control.stats()["ok"]  # it stays with B


def test_first_broker_down_at_connect(start_broker: StartBroker) -> None:
    """A publisher and a subscriber whose first broker is not there connect to the second."""
    b = start_broker()
    nowhere = "tcp://127.0.0.1:1"
    with (
        Subscriber([nowhere, b.backend], subscribe_timeout=1) as sub,
        Publisher([nowhere, b.frontend], connect_timeout=1) as pub,
    ):
        sub.subscribe("health")
        assert pub.frontend == b.frontend and sub.backend == b.backend
        pub.publish("health", "x", "Custom", {"i": 1})
        assert sub.recv(5).data == {"i": 1}


def _cli(*args: str, env: dict[str, str], timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [EXESDB, *args], capture_output=True, text=True, env=env, timeout=timeout, stdin=subprocess.DEVNULL
    )


def test_cli_tail_and_publish_with_endpoint_lists(
    pair: tuple[BrokerProcess, BrokerProcess], clean_env: dict[str, str]
) -> None:
    a, b = pair
    backends, frontends = f"{a.backend},{b.backend}", f"{a.frontend},{b.frontend}"
    tail = subprocess.Popen(
        [EXESDB, "tail", "health", "--json", "--count", "2", "--backend", backends],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env,
    )
    try:
        assert tail.stderr is not None and tail.stdout is not None
        err = Lines(tail.stderr)
        following = err.wait("following", 15)
        assert following is not None and a.backend in following, err.lines
        first = _cli("publish", "health", "x", '{"n": 1}', "--frontend", frontends, env=clean_env)
        assert first.returncode == 0, first.stderr
        a.proc.kill()
        a.proc.wait(5)
        assert err.wait(f"now subscribed at {b.backend}", 15) is not None, err.lines
        # A is gone: the publish command connects to B once A's connect timeout has passed
        second = _cli(
            "publish", "health", "x", '{"n": 2}', "--frontend", frontends, "--connect-timeout", "1", env=clean_env
        )
        assert second.returncode == 0, second.stderr
        out = tail.stdout.read()
        assert tail.wait(15) == 0, err.lines
    finally:
        if tail.poll() is None:
            tail.kill()
            tail.wait(5)
        if tail.stdout is not None:
            tail.stdout.close()
    received = [json.loads(text)["data"] for text in out.splitlines()]
    assert received == [{"n": 1}, {"n": 2}]


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("tcp://127.0.0.1:7100,,tcp://127.0.0.1:7200", "endpoint 2 of 3 is empty"),
        ("tcp://127.0.0.1:7100,", "endpoint 2 of 2 is empty"),
        ("tcp://127.0.0.1:7100,http://127.0.0.1:7200", "transport 'http'"),
        ("tcp://127.0.0.1:7100,tcp://127.0.0.1:7100", "is given twice"),
        ("tcp://127.0.0.1:7100,tcp://127.0.0.1:99999", "port '99999'"),
    ],
)
def test_bad_endpoint_lists(value: str, says: str, clean_env: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match=says):
        Publisher(value)
    with pytest.raises(ConfigError, match=says):
        Subscriber(value)
    with pytest.raises(ConfigError, match=says):
        ControlClient(value)
    with pytest.raises(ConfigError, match="list of endpoints is empty"):
        Subscriber([])
    result = _cli("publish", "health", "x", "{}", "--frontend", value, env=clean_env, timeout=15)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and says in result.stderr and "Traceback" not in result.stderr
    env = {**clean_env, "EXESDB_BACKEND": value}
    result = _cli("tail", "health", "--count", "1", env=env, timeout=15)
    assert result.returncode == 1
    assert says in result.stderr and result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
