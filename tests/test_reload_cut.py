"""SIGHUP cuts the open connections of removed keys: the endpoints whose allowlist lost a key
are unbound and bound again, their peers reconnect by themselves, and ZAP refuses the removed
keys at that handshake. A reload that only adds keys cuts nothing.

Every test runs a real CURVE ``exesdb-broker`` with the restricted class (``security,audit``)
and raw pyzmq clients on 127.0.0.1; nothing waits on a fixed sleep except the bounded drains
that show a message did *not* arrive.
"""

from __future__ import annotations

import contextlib
import re
import signal
import time
from collections.abc import Callable, Iterator

import pytest
import zmq
from exesdb_broker.security import PUBLISHERS, RESTRICTED_PUBLISHERS, RESTRICTED_SUBSCRIBERS, SUBSCRIBERS
from exesdb_sdk import ControlClient, ControlError, ExesdbError
from exesdb_sdk.curve import write_key_pair
from zmq.utils.monitor import recv_monitor_message

from .conftest import BrokerProcess, StartBroker, wait_until
from .test_restricted import _args, _stats, _topics
from .test_security import RELOADED, TIMEOUT, Keys, _curve_socket, keys

__all__ = ["keys"]  # the fixture, shared with test_security
pytestmark = pytest.mark.timeout(60)

N = 50
ABSENT = 0.5
"""Seconds a socket is drained to show that a message did not arrive."""


def _cut(endpoint: str) -> re.Pattern[str]:
    return re.compile(rf"reload: .*: connections to {endpoint} \S+ cut; peers reconnect")


@pytest.fixture
def broker(start_broker: StartBroker, keys: Keys) -> BrokerProcess:
    args = _args(keys)
    for name, role in (("rsub2", RESTRICTED_SUBSCRIBERS), ("rpub2", RESTRICTED_PUBLISHERS), ("sub2", SUBSCRIBERS)):
        keys.clients[name] = write_key_pair(keys.root / "clients", name)[1]
        keys.allow(name, role)
    started = start_broker(*args)
    assert started.restricted_frontend is not None and started.restricted_backend is not None
    return started


@pytest.fixture
def sockets() -> Iterator[Callable[[int, Keys, str], zmq.Socket[bytes]]]:
    """Raw CURVE sockets of a client key, closed at the end of the test."""
    made: list[zmq.Socket[bytes]] = []

    def make(socket_type: int, keys: Keys, name: str) -> zmq.Socket[bytes]:
        socket = _curve_socket(socket_type, keys, name)
        socket.setsockopt(zmq.RECONNECT_IVL, 50)
        made.append(socket)
        return socket

    yield make
    for socket in made:
        socket.close(linger=0)


def _sub(make: Callable[[int, Keys, str], zmq.Socket[bytes]], keys: Keys, name: str, url: str) -> zmq.Socket[bytes]:
    socket = make(zmq.SUB, keys, name)
    socket.setsockopt(zmq.SUBSCRIBE, b"ex_esdb_")
    socket.connect(url)
    return socket


def _pub(make: Callable[[int, Keys, str], zmq.Socket[bytes]], keys: Keys, name: str, url: str) -> zmq.Socket[bytes]:
    """A raw XPUB publisher, connected (the broker's subscription to everything arrived)."""
    socket = make(zmq.XPUB, keys, name)
    socket.connect(url)
    assert socket.poll(int(TIMEOUT * 1000)), f"{name}: no subscription from the broker"
    socket.recv()
    return socket


def _send(publisher: zmq.Socket[bytes], topic: bytes, body: bytes = b"x") -> None:
    with contextlib.suppress(zmq.Again):  # not connected (refused): the message stays out, as intended
        publisher.send_multipart([topic, body], zmq.NOBLOCK)


def _reached(publisher: zmq.Socket[bytes], readers: list[zmq.Socket[bytes]], topic: bytes) -> None:
    """Probe until every reader receives ``topic`` from ``publisher`` (each reader is connected
    and subscribed through the broker), then drain what is left of the probes."""
    waiting = set(range(len(readers)))
    deadline = time.monotonic() + TIMEOUT
    while waiting and time.monotonic() < deadline:
        _send(publisher, topic)
        for index in list(waiting):
            if readers[index].poll(20) and readers[index].recv_multipart()[0] == topic:
                waiting.discard(index)
    assert not waiting, f"readers {sorted(waiting)} got no {topic!r} within {TIMEOUT} s"
    for reader in readers:
        _topics(reader, 0.05)


def _sighup(broker: BrokerProcess, *waits: re.Pattern[str]) -> None:
    broker.terminate(signal.SIGHUP)
    for pattern in (RELOADED, *waits):
        assert broker.wait_line(pattern, TIMEOUT) is not None, f"no {pattern.pattern!r}:\n{broker.stderr}"


def _count(topic: bytes, n: int) -> Callable[[list[bytes]], bool]:
    return lambda topics: topics.count(topic) >= n


def test_a_removed_restricted_subscriber_is_cut_at_once_and_the_kept_one_reconnects(
    broker: BrokerProcess, keys: Keys, sockets: Callable[[int, Keys, str], zmq.Socket[bytes]]
) -> None:
    assert broker.restricted_backend is not None and broker.restricted_frontend is not None
    removed = _sub(sockets, keys, "rsub", broker.restricted_backend)
    kept = _sub(sockets, keys, "rsub2", broker.restricted_backend)
    publisher = _pub(sockets, keys, "rpub", broker.restricted_frontend)
    _reached(publisher, [removed, kept], b"ex_esdb_audit/probe")
    (keys.dirs[RESTRICTED_SUBSCRIBERS] / "rsub.key").unlink()
    _sighup(broker, _cut("restricted_backend"))
    _reached(publisher, [kept], b"ex_esdb_audit/probe")  # the kept key is back
    for n in range(N):
        _send(publisher, b"ex_esdb_audit/after", str(n).encode())
    assert _topics(kept, TIMEOUT, _count(b"ex_esdb_audit/after", N)).count(b"ex_esdb_audit/after") == N
    assert b"ex_esdb_audit/after" not in _topics(removed, ABSENT)
    assert wait_until(
        lambda: _stats(broker, keys)["security"]["handshake_failures_by_endpoint"]["restricted_backend"] >= 1, TIMEOUT
    )
    security = _stats(broker, keys)["security"]
    # rsub lost its only role: its control connections are cut too (their User-Id still held it)
    assert security["cuts"] == {
        "frontend": 0,
        "backend": 0,
        "control": 1,
        "restricted_frontend": 0,
        "restricted_backend": 1,
    }
    assert security["unbound"] == {} and security["rebind_failures"]["restricted_backend"] == 0


def test_a_removed_restricted_publisher_gets_nothing_through_after_the_reload(
    broker: BrokerProcess, keys: Keys, sockets: Callable[[int, Keys, str], zmq.Socket[bytes]]
) -> None:
    assert broker.restricted_backend is not None and broker.restricted_frontend is not None
    reader = _sub(sockets, keys, "rsub", broker.restricted_backend)
    removed = _pub(sockets, keys, "rpub", broker.restricted_frontend)
    kept = _pub(sockets, keys, "rpub2", broker.restricted_frontend)
    _reached(removed, [reader], b"ex_esdb_audit/probe")
    (keys.dirs[RESTRICTED_PUBLISHERS] / "rpub.key").unlink()
    broker.terminate(signal.SIGHUP)
    # the kept publisher keeps sending through the cut
    cut = None
    for _ in range(int(TIMEOUT / 0.01)):
        for _ in range(10):
            _send(kept, b"ex_esdb_audit/load")
        cut = broker.wait_line(_cut("restricted_frontend"), 0.01)
        if cut is not None:
            break
    assert cut is not None, broker.stderr
    _reached(kept, [reader], b"ex_esdb_audit/probe")
    for n in range(N):
        _send(removed, b"ex_esdb_audit/forged", str(n).encode())
        _send(kept, b"ex_esdb_audit/kept", str(n).encode())
    topics = _topics(reader, TIMEOUT, _count(b"ex_esdb_audit/kept", N))  # after the probe: none lost
    topics += _topics(reader, ABSENT)
    assert topics.count(b"ex_esdb_audit/kept") == N
    assert b"ex_esdb_audit/forged" not in topics
    assert _stats(broker, keys)["security"]["cuts"]["restricted_frontend"] == 1


def test_a_removed_public_subscriber_is_cut_from_the_backend(
    broker: BrokerProcess, keys: Keys, sockets: Callable[[int, Keys, str], zmq.Socket[bytes]]
) -> None:
    removed = _sub(sockets, keys, "sub", broker.backend)
    kept = _sub(sockets, keys, "sub2", broker.backend)
    publisher = _pub(sockets, keys, "pub", broker.frontend)
    _reached(publisher, [removed, kept], b"ex_esdb_alerts/probe")
    (keys.dirs[SUBSCRIBERS] / "sub.key").unlink()
    _sighup(broker, _cut("backend"))
    _reached(publisher, [kept], b"ex_esdb_alerts/probe")
    for n in range(N):
        _send(publisher, b"ex_esdb_alerts/after", str(n).encode())
    assert _topics(kept, TIMEOUT, _count(b"ex_esdb_alerts/after", N)).count(b"ex_esdb_alerts/after") == N
    assert b"ex_esdb_alerts/after" not in _topics(removed, ABSENT)
    cuts = _stats(broker, keys)["security"]["cuts"]
    assert (cuts["backend"], cuts["frontend"], cuts["restricted_backend"]) == (1, 0, 0)


def test_a_key_added_back_gets_in_again(
    broker: BrokerProcess, keys: Keys, sockets: Callable[[int, Keys, str], zmq.Socket[bytes]]
) -> None:
    assert broker.restricted_backend is not None and broker.restricted_frontend is not None
    subscriber = _sub(sockets, keys, "rsub", broker.restricted_backend)
    publisher = _pub(sockets, keys, "rpub", broker.restricted_frontend)
    _reached(publisher, [subscriber], b"ex_esdb_audit/probe")
    (keys.dirs[RESTRICTED_SUBSCRIBERS] / "rsub.key").unlink()
    _sighup(broker, _cut("restricted_backend"))
    _send(publisher, b"ex_esdb_audit/out")
    assert b"ex_esdb_audit/out" not in _topics(subscriber, ABSENT)
    keys.allow("rsub", RESTRICTED_SUBSCRIBERS)
    _sighup(broker)
    # libzmq does not retry a connection the server refused (a handshake error ends it): the
    # key comes back with a new connection
    again = _sub(sockets, keys, "rsub", broker.restricted_backend)
    _reached(publisher, [again], b"ex_esdb_audit/back")
    assert _stats(broker, keys)["security"]["cuts"]["restricted_backend"] == 1  # the addition cut nothing


def test_a_reload_that_only_adds_keys_cuts_nothing(
    broker: BrokerProcess, keys: Keys, sockets: Callable[[int, Keys, str], zmq.Socket[bytes]]
) -> None:
    assert broker.restricted_backend is not None and broker.restricted_frontend is not None
    subscriber = _sub(sockets, keys, "rsub", broker.restricted_backend)
    watch = subscriber.get_monitor_socket(zmq.EVENT_DISCONNECTED | zmq.EVENT_CONNECTED)
    publisher = _pub(sockets, keys, "rpub", broker.restricted_frontend)
    _reached(publisher, [subscriber], b"ex_esdb_audit/probe")
    newcomer = write_key_pair(keys.root / "clients", "newcomer")[1]
    keys.clients["newcomer"] = newcomer
    for role in (PUBLISHERS, SUBSCRIBERS, RESTRICTED_PUBLISHERS, RESTRICTED_SUBSCRIBERS):
        keys.allow("newcomer", role)
    for n in range(N):
        _send(publisher, b"ex_esdb_audit/seq", str(n).encode())
    _sighup(broker)
    for n in range(N, 2 * N):
        _send(publisher, b"ex_esdb_audit/seq", str(n).encode())
    bodies: list[bytes] = []
    deadline = time.monotonic() + TIMEOUT
    while len(bodies) < 2 * N and subscriber.poll(max(1, int((deadline - time.monotonic()) * 1000))):
        topic, body = subscriber.recv_multipart()
        if topic == b"ex_esdb_audit/seq":
            bodies.append(body)
    assert bodies == [str(n).encode() for n in range(2 * N)]  # no gap
    events = []
    while watch.poll(0):
        events.append(recv_monitor_message(watch)["event"])
    watch.close(linger=0)
    assert zmq.EVENT_DISCONNECTED not in events, events
    security = _stats(broker, keys)["security"]
    assert security["reloads"] == 1 and set(security["cuts"].values()) == {0}


def test_a_control_connection_loses_the_role_its_key_lost(broker: BrokerProcess, keys: Keys) -> None:
    keys.allow("rsub", SUBSCRIBERS)  # rsub keeps a role: its control connection comes back, with fewer roles
    _sighup(broker)
    with ControlClient(broker.control, timeout=1.0, **keys.client("rsub")) as control:
        assert control.request("replay", {"instance": "audit"})["instance"] == "ex_esdb_audit"
        (keys.dirs[RESTRICTED_SUBSCRIBERS] / "rsub.key").unlink()
        _sighup(broker, _cut("control"))

        def refused() -> bool:
            try:
                control.request("replay", {"instance": "audit"})
            except ControlError as exc:
                return exc.code == "forbidden"
            except ExesdbError:  # the request in flight at the cut: no reply
                return False
            return False

        assert wait_until(refused, TIMEOUT)
        assert control.request("replay", {"instance": "alerts"})["instance"] == "ex_esdb_alerts"
    assert _stats(broker, keys)["security"]["cuts"]["control"] == 1
