"""Security benchmark: what CURVE encryption costs, as a ratio from one run.

    python benchmarks/bench_security.py [--reps 5] [--quick] [--json-out PATH]

One scenario, ``curve_throughput``: 100-byte protocol envelopes from a raw pyzmq publisher
through ``exesdb-broker`` to a raw pyzmq subscriber, with security off (``plain``) and with
CURVE on every endpoint and the clients' keys in the allowlists (``curve``). Both sides use
the same broker build, socket options and pre-packed body, so the ratio curve/plain of the
messages per second delivered is the price of encryption (each message is encrypted by the
publisher, decrypted and re-encrypted by the broker, decrypted by the subscriber). Every role
is its own process, a fresh broker per run; warm-up then ``--reps`` interleaved runs, medians.
Only the ratio is meaningful across machines and runs.

``restricted_class`` (issue 18): the same flow on a public instance (``ex_esdb_metrics``) with
CURVE on, through today's broker (``no_class``) and through the same broker with the restricted
class configured (``with_class``: ``--restricted security,audit``, its own proxy pair and its
two allowlists with a key each, and one idle restricted subscriber connected to the class's
backend). Target: the delivered rate of ``with_class`` >= 0.95 of ``no_class``. Each run also
reads the broker's threads, descriptors (OS sockets and eventfds among them) and RSS from ``/proc`` once it is
idle after start, before any client connects; the medians' differences are the cost of a class.
``restricted_class_plain`` is the same with security off (informative, no target).
"""

from __future__ import annotations

import os
import queue
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any, Final

import zmq
from exesdb_sdk.curve import load_key_file, write_key_pair
from exesdb_sdk.subscriber import DEFAULT_RCVHWM
from harness import (
    BROKER_START_TIMEOUT,
    FIRST_MESSAGE_TIMEOUT,
    HWM,
    IDLE_TIMEOUT,
    RAW_BODY_SIZE,
    SEND_TIMEOUT_MS,
    SPAWN,
    TOPIC,
    Body,
    Child,
    interleave,
    make_body,
    medians_of,
    process_rss_mb,
    spawn,
    stop_process,
    suite_main,
    throughput_summary,
    wait_for_subscription,
)

READY: Final = re.compile(r"ready frontend=(\S+) backend=(\S+)")
RESTRICTED_BACKEND: Final = re.compile(r"restricted_backend=(\S+)")
SIDES: Final = ("plain", "curve")


# -- roles (spawned children) ------------------------------------------------------------------


def _apply_keys(socket: zmq.Socket[Any], keys: dict[str, str] | None) -> None:
    if keys is None:
        return
    client = load_key_file(keys["client"], secret=True)
    assert client.secret is not None
    socket.curve_serverkey = load_key_file(keys["server"]).public
    socket.curve_publickey = client.public
    socket.curve_secretkey = client.secret


def curve_publisher(
    *, ready: Callable[[], None], go: Event, frontend: str, count: int, body: Body, keys: dict[str, str] | None
) -> dict[str, Any]:
    """Send ``count`` pre-packed messages as fast as possible, with CURVE keys or without."""
    context = zmq.Context()
    socket = context.socket(zmq.XPUB)
    socket.setsockopt(zmq.XPUB_NODROP, 1)
    socket.setsockopt(zmq.SNDHWM, HWM)
    socket.setsockopt(zmq.SNDTIMEO, SEND_TIMEOUT_MS)
    _apply_keys(socket, keys)
    try:
        socket.connect(frontend)
        wait_for_subscription(socket, TOPIC, FIRST_MESSAGE_TIMEOUT)
        ready()
        if not go.wait(FIRST_MESSAGE_TIMEOUT):
            raise TimeoutError("never told to start")
        send, more, plain = socket.send, zmq.SNDMORE, body.plain
        start = time.perf_counter()
        for _ in range(count):
            send(TOPIC, more)
            send(plain)
        elapsed = time.perf_counter() - start
    finally:
        socket.close(linger=SEND_TIMEOUT_MS)
        context.term()
    return {"sent": count, "send_seconds": elapsed}


def curve_subscriber(
    *, ready: Callable[[], None], backend: str, count: int, keys: dict[str, str] | None
) -> dict[str, Any]:
    """Receive up to ``count`` messages with ``recv_multipart`` (no decoding)."""
    context = zmq.Context()
    socket = context.socket(zmq.SUB)
    socket.setsockopt(zmq.RCVHWM, DEFAULT_RCVHWM)
    socket.setsockopt(zmq.LINGER, 0)
    socket.setsockopt(zmq.RCVTIMEO, int(FIRST_MESSAGE_TIMEOUT * 1000))
    _apply_keys(socket, keys)
    received, first, last = 0, 0, 0
    try:
        socket.connect(backend)
        socket.setsockopt(zmq.SUBSCRIBE, TOPIC)
        ready()
        recv, clock = socket.recv_multipart, time.monotonic_ns
        try:
            recv()
            first = last = clock()
            received = 1
            socket.setsockopt(zmq.RCVTIMEO, int(IDLE_TIMEOUT * 1000))
            while received < count:
                recv()
                last = clock()
                received += 1
        except zmq.Again:
            pass
    finally:
        socket.close()
        context.term()
    return {"received": received, "first_ns": first, "last_ns": last}


# -- broker and keys -------------------------------------------------------------------------------


RESTRICTED: Final = "security,audit"
"""The restricted class of ``restricted_class``'s ``with_class`` side."""
RESTRICTED_PREFIXES: Final = (b"ex_esdb_security", b"ex_esdb_audit")
FREE: Final = "tcp://127.0.0.1:*"
SETTLE_TIMEOUT: Final = 5.0
"""How long an idle broker may take to stop starting threads and opening descriptors."""
SETTLE_POLL: Final = 0.1


class KeySet:
    """Broker and client key pairs in a temporary directory, with the allowlists filled in (the
    restricted class's two among them: one key each, none of them in the public lists)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.server_public, self.server_secret = write_key_pair(root / "broker", "broker")
        roles = ("publishers", "subscribers", "admins", "restricted_publishers", "restricted_subscribers")
        self.dirs = {role: root / role for role in roles}
        self.clients: dict[str, dict[str, str]] = {}
        for role, directory in self.dirs.items():
            directory.mkdir()
            public, secret = write_key_pair(root / "clients", role)
            shutil.copy(public, directory / public.name)
            self.clients[role] = {"client": str(secret), "server": str(self.server_public)}

    def broker_args(self) -> list[str]:
        return [
            "--broker-key", str(self.server_secret),
            "--allow-publishers", str(self.dirs["publishers"]),
            "--allow-subscribers", str(self.dirs["subscribers"]),
            "--allow-admins", str(self.dirs["admins"]),
        ]  # fmt: skip

    def restricted_args(self) -> list[str]:
        return [
            "--allow-restricted-publishers", str(self.dirs["restricted_publishers"]),
            "--allow-restricted-subscribers", str(self.dirs["restricted_subscribers"]),
        ]  # fmt: skip


def class_args() -> list[str]:
    """The flags that configure the restricted class on free ports (without its allowlists)."""
    return ["--restricted", RESTRICTED, "--restricted-frontend", FREE, "--restricted-backend", FREE]


@dataclass(frozen=True, slots=True)
class Running:
    """A broker started by :func:`broker`: its endpoints and pid."""

    frontend: str
    backend: str
    pid: int
    restricted_backend: str | None
    """The restricted class's backend from the readiness line; ``None`` without a class."""


@contextmanager
def broker(extra: list[str]) -> Iterator[Running]:
    """A fresh ``exesdb-broker`` on free 127.0.0.1 ports with ``extra`` flags and its journal in a
    temporary directory; yields its endpoints and pid."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXESDB_")}
    state = tempfile.mkdtemp(prefix="exesdb-bench-state-")
    env["XDG_STATE_HOME"] = state  # each run's journal is its own, and nothing is left behind
    command = [
        sys.executable, "-m", "exesdb_broker", "--frontend", FREE, "--backend", FREE,
        "--control", FREE, "--log-level", "warning", "--http", "none", *extra,
    ]  # fmt: skip
    proc = subprocess.Popen(
        command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env
    )
    lines: queue.Queue[str | None] = queue.Queue()

    def drain() -> None:  # reads stderr for the broker's whole life, so it never blocks
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=drain, daemon=True).start()
    try:
        deadline = time.monotonic() + BROKER_START_TIMEOUT
        seen: list[str] = []
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                line = lines.get(timeout=remaining)
            except queue.Empty:
                break
            if line is None:
                raise RuntimeError("broker exited before it was ready:\n" + "".join(seen[-10:]))
            seen.append(line)
            if match := READY.search(line):
                restricted = RESTRICTED_BACKEND.search(line)
                yield Running(match.group(1), match.group(2), proc.pid, restricted and restricted.group(1))
                return
        raise RuntimeError("broker not ready in time:\n" + "".join(seen[-10:]))
    finally:
        stop_process(proc)
        shutil.rmtree(state, ignore_errors=True)


def _resources(pid: int) -> dict[str, float]:
    """Threads, open descriptors, OS sockets and eventfds among them (libzmq gives each ZMQ socket
    an eventfd as its mailbox) and RSS (MiB) of a process, from /proc."""
    sockets = eventfds = 0
    descriptors = os.listdir(f"/proc/{pid}/fd")
    for fd in descriptors:
        with suppress(OSError):  # closed between the listing and the read
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            sockets += target.startswith("socket:")
            eventfds += target == "anon_inode:[eventfd]"
    return {
        "idle_threads": len(os.listdir(f"/proc/{pid}/task")),
        "idle_fds": len(descriptors),
        "idle_socket_fds": sockets,
        "idle_eventfds": eventfds,
        "idle_rss_mib": process_rss_mb(pid),
    }


def idle_resources(pid: int) -> dict[str, float]:
    """:func:`_resources` once two readings in a row agree on threads and descriptors (a broker
    that has just said ready may still be starting a thread), or at the deadline."""
    deadline = time.monotonic() + SETTLE_TIMEOUT
    last = _resources(pid)
    while time.monotonic() < deadline:
        time.sleep(SETTLE_POLL)
        now = _resources(pid)
        if (now["idle_threads"], now["idle_fds"]) == (last["idle_threads"], last["idle_fds"]):
            return now
        last = now
    return last


@contextmanager
def idle_restricted_subscriber(backend: str, keys: dict[str, str] | None) -> Iterator[None]:
    """A raw SUB of both restricted instances, connected to the class's backend (its handshake
    done) and reading nothing while the flow runs."""
    context = zmq.Context()
    socket = context.socket(zmq.SUB)
    socket.setsockopt(zmq.LINGER, 0)
    _apply_keys(socket, keys)
    monitor = socket.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)
    try:
        for prefix in RESTRICTED_PREFIXES:
            socket.setsockopt(zmq.SUBSCRIBE, prefix)
        socket.connect(backend)
        if not monitor.poll(int(FIRST_MESSAGE_TIMEOUT * 1000)):
            raise RuntimeError(f"the idle restricted subscriber got no handshake with {backend}")
        yield
    finally:
        socket.disable_monitor()
        monitor.close()
        socket.close()
        context.term()


def flow(running: Running, count: int, body: Body, keys: KeySet | None) -> dict[str, Any]:
    """Subscriber, then publisher, of ``count`` messages on ``TOPIC`` through ``running``; the
    throughput summary."""
    go = SPAWN.Event()
    children: list[Child] = []
    try:
        sub = spawn(
            "bench_security:curve_subscriber",
            {"backend": running.backend, "count": count, "keys": keys.clients["subscribers"] if keys else None},
        )
        children.append(sub)
        pub = spawn(
            "bench_security:curve_publisher",
            {
                "frontend": running.frontend,
                "count": count,
                "go": go,
                "body": body,
                "keys": keys.clients["publishers"] if keys else None,
            },
        )
        children.append(pub)
        sub.expect("ready", FIRST_MESSAGE_TIMEOUT)
        pub.expect("ready", FIRST_MESSAGE_TIMEOUT)
        go.set()
        expected = 60.0 + count / 1000
        sent = pub.expect("result", expected)
        got = sub.expect("result", expected)
    finally:
        for child in children:
            child.stop()
    return throughput_summary({**sent, **got})


def run_once(side: str, keys: KeySet, count: int, body: Body) -> dict[str, Any]:
    """One ``curve_throughput`` run: fresh broker, subscriber, then publisher."""
    secure = side == "curve"
    with broker(keys.broker_args() if secure else []) as running:
        return flow(running, count, body, keys if secure else None)


def run_class_once(side: str, keys: KeySet | None, count: int, body: Body) -> dict[str, Any]:
    """One ``restricted_class`` run (CURVE with ``keys``, security off without): a fresh broker with
    the class (``with_class``) or without, its idle resources, then the flow on a public instance
    (with the idle restricted subscriber connected on ``with_class``)."""
    extra = keys.broker_args() if keys else []
    if side == "with_class":
        extra += class_args() + (keys.restricted_args() if keys else [])
    with broker(extra) as running:
        idle = idle_resources(running.pid)
        if side != "with_class":
            return {**flow(running, count, body, keys), **idle}
        if running.restricted_backend is None:
            raise RuntimeError("the broker announced no restricted class")
        with idle_restricted_subscriber(
            running.restricted_backend, keys.clients["restricted_subscribers"] if keys else None
        ):
            return {**flow(running, count, body, keys), **idle}


def _ratios(base: dict[str, float], other: dict[str, float]) -> dict[str, float]:
    return {
        metric: other[metric] / base[metric] if base[metric] else float("nan")
        for metric in ("msgs_per_s", "publish_msgs_per_s")
    }


def curve_throughput(*, quick: bool, reps: int) -> dict[str, Any]:
    """CURVE-on vs CURVE-off throughput of 100 B messages: medians per side and their ratio."""
    count = 5_000 if quick else 200_000
    reps = 1 if quick else reps
    body = make_body(RAW_BODY_SIZE)
    root = Path(tempfile.mkdtemp(prefix="exesdb-bench-keys-"))
    title = f"CURVE on vs off, raw {RAW_BODY_SIZE} B throughput"
    print(f"  {title}: ", end="", flush=True)
    try:
        keys = KeySet(root)
        runs = interleave(SIDES, lambda side, n: run_once(side, keys, n, body), count, warmup=not quick, reps=reps)
        medians = medians_of(runs)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return {
        "title": title,
        "sides": list(SIDES),
        "count_per_run": count,
        "body_bytes": body.size,
        "runs": runs,
        "medians": medians,
        "min_delivered_fraction": {side: min(r["delivered_fraction"] for r in rs) for side, rs in runs.items()},
        "ratios": _ratios(medians["plain"], medians["curve"]),
        "target": None,
    }


CLASS_SIDES: Final = ("no_class", "with_class")
CLASS_TARGET: Final = 0.95
"""Issue 18: an unrestricted instance keeps >= 0.95 of its throughput with a class configured."""
COST_METRICS: Final = {
    "idle_threads": "threads",
    "idle_fds": "fds",
    "idle_socket_fds": "socket_fds",
    "idle_eventfds": "eventfds",
}


def restricted_class(*, quick: bool, reps: int, secure: bool = True) -> dict[str, Any]:
    """A public instance's 100 B throughput with the restricted class configured vs not, and the
    class's idle cost in threads, descriptors, sockets and RSS (medians, with - without)."""
    count = 5_000 if quick else 200_000
    reps = 1 if quick else reps
    body = make_body(RAW_BODY_SIZE)
    root = Path(tempfile.mkdtemp(prefix="exesdb-bench-keys-"))
    title = f"restricted class on vs off, {'CURVE' if secure else 'security off'}, raw {RAW_BODY_SIZE} B public"
    print(f"  {title}: ", end="", flush=True)
    try:
        keys = KeySet(root) if secure else None
        runs = interleave(
            CLASS_SIDES, lambda side, n: run_class_once(side, keys, n, body), count, warmup=not quick, reps=reps
        )
        medians = medians_of(runs)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    base, other = medians["no_class"], medians["with_class"]
    ratios = _ratios(base, other)
    cost: dict[str, float] = {name: other[metric] - base[metric] for metric, name in COST_METRICS.items()}
    cost["rss_mib"] = round(other["idle_rss_mib"] - base["idle_rss_mib"], 2)
    met = ratios["msgs_per_s"] >= CLASS_TARGET
    return {
        "title": title,
        "sides": list(CLASS_SIDES),
        "count_per_run": count,
        "body_bytes": body.size,
        "runs": runs,
        "medians": medians,
        "min_delivered_fraction": {side: min(r["delivered_fraction"] for r in rs) for side, rs in runs.items()},
        "ratios": ratios,
        "target": {"metric": "msgs_per_s", "op": ">=", "value": CLASS_TARGET, "met": met} if secure else None,
        "cost_per_class": cost,
        "notes": [
            f"cost per class (idle broker, medians, with_class - no_class): {cost['threads']:+g} threads, "
            f"{cost['fds']:+g} descriptors ({cost['socket_fds']:+g} OS sockets, {cost['eventfds']:+g} eventfds: one "
            f"per ZMQ socket), {cost['rss_mib']:+.2f} MiB RSS"
        ],
    }


def scenarios(*, quick: bool, reps: int) -> dict[str, dict[str, Any]]:
    """Every security scenario (the interface benchmarks/bench.py runs)."""
    return {
        "curve_throughput": curve_throughput(quick=quick, reps=reps),
        "restricted_class": restricted_class(quick=quick, reps=reps),
        "restricted_class_plain": restricted_class(quick=quick, reps=reps, secure=False),
    }


def main(argv: list[str] | None = None) -> int:
    return suite_main(argv, __doc__, "security", "exesdb-pubsub security benchmark", scenarios)


if __name__ == "__main__":
    sys.exit(main())
