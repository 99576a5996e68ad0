"""The broker under the conditions of an incident, each driven against a real ``exesdb-broker``
process: counting under load, running out of file descriptors, a kill -9 and restart."""

from __future__ import annotations

import re
import resource
import signal
import socket
import subprocess
import sys
import threading
from typing import Any

import zmq
from exesdb_sdk import ControlClient, Publisher, ReceiveTimeoutError, Subscriber

from .conftest import FREE, BrokerProcess, wait_until
from .peers import free_endpoint


def _stats(broker: BrokerProcess) -> dict[str, Any]:
    with ControlClient(broker.control, timeout=5) as control:
        return control.stats()


SUBSCRIBER = """
import sys
from exesdb_sdk import Subscriber, ReceiveTimeoutError
with Subscriber(sys.argv[1]) as sub:
    sub.subscribe("diagnostics", "load")
    print("ready", flush=True)
    got = 0
    for _ in range(int(sys.argv[2])):
        try:
            sub.recv(timeout=5)
        except ReceiveTimeoutError:
            break
        got += 1
    print(got, sub.stats.gaps, flush=True)
"""

PACED_PUBLISHER = """
import sys, time
from exesdb_sdk import Publisher
rate, count = int(sys.argv[2]), int(sys.argv[3])
with Publisher(sys.argv[1]) as pub:
    start = time.monotonic()
    sent = 0
    while sent < count:  # paced by spinning, as a busy service would: one core stays at 100%
        due = min(count, int((time.monotonic() - start) * rate) + 1)
        while sent < due:
            pub.publish("diagnostics", "load", "Custom", {"n": sent})
            sent += 1
print(sent, flush=True)
"""


def test_stats_are_exact_at_the_rate_three_sdk_subscribers_keep_up_with(broker: BrokerProcess) -> None:
    rate, count = 20_000, 100_000
    subscribers = [
        subprocess.Popen(
            [sys.executable, "-c", SUBSCRIBER, broker.backend, str(count)], stdout=subprocess.PIPE, text=True
        )
        for _ in range(3)
    ]
    try:
        for sub in subscribers:
            assert sub.stdout is not None and sub.stdout.readline().strip() == "ready"
        # envelopes: the spinning publisher's bursts are coalesced into batch messages
        before = _stats(broker)["instances"]["ex_esdb_diagnostics"]["envelopes"]
        publisher = subprocess.run(
            [sys.executable, "-c", PACED_PUBLISHER, broker.frontend, str(rate), str(count)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert publisher.returncode == 0, publisher.stderr
        assert int(publisher.stdout) == count
        results = [sub.communicate(timeout=60)[0].split() for sub in subscribers]
    finally:
        for sub in subscribers:
            sub.kill()
    # the three subscribers kept up: this is a rate the bus sustains, not an overload
    assert results == [[str(count), "0"]] * 3

    def counted() -> int:
        return int(_stats(broker)["instances"]["ex_esdb_diagnostics"]["envelopes"]) - before

    assert wait_until(lambda: counted() >= count, 10), f"counted {counted()} of {count}"
    stats = _stats(broker)
    assert counted() == count  # exact, not an estimate
    assert stats["counting"]["exact"] is True and stats["counting"]["missed_frames"] == 0


def _limit_descriptors() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))  # soft and hard, as under prlimit


def test_out_of_file_descriptors_the_broker_stays_answerable_and_stops_cleanly() -> None:
    args = ["--frontend", FREE, "--backend", FREE, "--control", FREE]
    broker = BrokerProcess(args, preexec=_limit_descriptors).wait_ready()
    connections: list[socket.socket] = []
    try:
        with ControlClient(broker.control, timeout=5) as control:
            fds = control.stats()["fds"]
            assert fds["limit"] == 256 and 0 < fds["used"] < 100 and fds["paused"] == []
            host, port = broker.frontend.removeprefix("tcp://").rsplit(":", 1)
            for _ in range(400):  # more connections than descriptors
                try:
                    connections.append(socket.create_connection((host, int(port)), timeout=5))
                except OSError:
                    break  # refused: the broker stopped accepting, as it should
            assert wait_until(lambda: control.stats()["fds"]["pauses"] >= 1, 10)
            stats = control.stats()["fds"]
            assert stats["accept_failures"].get("frontend", 0) >= 1 and stats["peak"] >= 0.8 * 256
        # a new operator still gets in on the control endpoint
        with ControlClient(broker.control, timeout=5) as late:
            assert late.ping()["pong"] is True
        assert broker.wait_line(re.compile(r"WARNING .*file descriptors: \d+ of 256 in use"), 10)
        code = broker.stop()  # with the connections still open: stopping needs no new descriptor
    finally:
        for connection in connections:
            connection.close()
        broker.stop()
    assert code == 0, broker.stderr
    assert "Traceback" not in broker.stderr
    assert "out of file descriptors; not accepting new connections" in broker.stderr
    assert "broker stopped" in broker.stderr


def test_a_restart_delivers_what_publishers_queued_during_the_outage() -> None:
    frontend, backend, control = free_endpoint(), free_endpoint(), free_endpoint()
    args = ["--frontend", frontend, "--backend", backend, "--control", control, "--start-grace", "5"]
    first = BrokerProcess(args).wait_ready()
    second: BrokerProcess | None = None
    # The subscriber reconnects ten times slower than the publisher: without a start grace the
    # publisher's queue reaches the new broker before the subscription does.
    context: zmq.Context[Any] = zmq.Context()
    context.setsockopt(zmq.RECONNECT_IVL, 1000)
    stop = threading.Event()
    sent = [0]
    seen: set[int] = set()
    try:
        with Subscriber(backend, context=context) as sub, Publisher(frontend) as pub:
            sub.subscribe("metrics", "restart")

            def publish() -> None:
                for n in range(1, 100_000):
                    if stop.wait(0.001):
                        return
                    sent[0] = pub.publish("metrics", "restart", "Custom", {"n": n})

            def receive() -> None:  # a live subscriber: always waiting in recv, as in production
                for _ in range(1_000_000):
                    if stop.is_set() and not seen.isdisjoint({sent[0]}):
                        return
                    try:
                        seen.add(sub.recv(timeout=0.05).seq)
                    except ReceiveTimeoutError:
                        if stop.is_set():
                            return

            publisher = threading.Thread(target=publish, daemon=True)
            receiver = threading.Thread(target=receive, daemon=True)
            publisher.start()
            receiver.start()
            assert wait_until(lambda: len(seen) >= 200, 10)
            first.terminate(signal.SIGKILL)
            first.wait_exit(5)
            killed_at = sent[0]
            assert wait_until(lambda: sent[0] >= killed_at + 500, 10)  # an outage of 500+ messages
            second = BrokerProcess(args).wait_ready()
            restarted_at = sent[0]
            assert wait_until(lambda: sent[0] >= restarted_at + 500, 10)
            stop.set()
            publisher.join(5)
            last = sent[0]
            receiver.join(20)
            assert not receiver.is_alive()
            missing = [n for n in range(1, last + 1) if n not in seen]
            # everything published after the crash arrived; what was inside the broker when it
            # died is the only loss, and it is counted
            assert [n for n in missing if n > killed_at] == []
            assert sub.stats.gaps == len(missing)
            assert "start grace: 1 of 1 subscriber connection(s) back" in second.stderr
    finally:
        stop.set()
        context.term()
        first.stop()
        if second is not None:
            second.stop()
