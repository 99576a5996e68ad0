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
"""

from __future__ import annotations

import os
import queue
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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
    make_body,
    spawn,
    stop_process,
    suite_main,
    throughput_summary,
    wait_for_subscription,
)

READY: Final = re.compile(r"ready frontend=(\S+) backend=(\S+)")
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


class KeySet:
    """Broker and client key pairs in a temporary directory, with the allowlists filled in."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.server_public, self.server_secret = write_key_pair(root / "broker", "broker")
        self.dirs = {role: root / role for role in ("publishers", "subscribers", "admins")}
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


@contextmanager
def broker(extra: list[str]) -> Iterator[tuple[str, str]]:
    """A fresh ``exesdb-broker`` on free 127.0.0.1 ports with ``extra`` flags; yields (frontend, backend)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXESDB_")}
    command = [
        sys.executable, "-m", "exesdb_broker", "--frontend", "tcp://127.0.0.1:*", "--backend", "tcp://127.0.0.1:*",
        "--control", "tcp://127.0.0.1:*", "--log-level", "warning", "--http", "none", *extra,
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
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                line = lines.get(timeout=remaining)
            except queue.Empty:
                break
            if line is None:
                raise RuntimeError("broker exited before it was ready")
            if match := READY.search(line):
                yield match.group(1), match.group(2)
                return
        raise RuntimeError("broker not ready in time")
    finally:
        stop_process(proc)


def run_once(side: str, keys: KeySet, count: int, body: Body) -> dict[str, Any]:
    """One run: fresh broker, subscriber, then publisher; the throughput summary."""
    secure = side == "curve"
    with broker(keys.broker_args() if secure else []) as (frontend, backend):
        go = SPAWN.Event()
        children: list[Child] = []
        try:
            sub = spawn(
                "bench_security:curve_subscriber",
                {"backend": backend, "count": count, "keys": keys.clients["subscribers"] if secure else None},
            )
            children.append(sub)
            pub = spawn(
                "bench_security:curve_publisher",
                {
                    "frontend": frontend,
                    "count": count,
                    "go": go,
                    "body": body,
                    "keys": keys.clients["publishers"] if secure else None,
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
        if not quick:
            for side in SIDES:
                run_once(side, keys, max(1000, count // 4), body)
                print("w", end="", flush=True)
        runs: dict[str, list[dict[str, Any]]] = {side: [] for side in SIDES}
        for _ in range(reps):
            for side in SIDES:
                runs[side].append(run_once(side, keys, count, body))
                print(".", end="", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print()
    medians = {
        side: {metric: statistics.median(run[metric] for run in side_runs) for metric in side_runs[0]}
        for side, side_runs in runs.items()
    }
    plain, curve = medians["plain"], medians["curve"]
    ratios = {
        metric: curve[metric] / plain[metric] if plain[metric] else float("nan")
        for metric in ("msgs_per_s", "publish_msgs_per_s")
    }
    return {
        "title": title,
        "sides": list(SIDES),
        "count_per_run": count,
        "body_bytes": body.size,
        "runs": runs,
        "medians": medians,
        "min_delivered_fraction": {side: min(r["delivered_fraction"] for r in rs) for side, rs in runs.items()},
        "ratios": ratios,
        "target": None,
    }


def scenarios(*, quick: bool, reps: int) -> dict[str, dict[str, Any]]:
    """Every security scenario (the interface benchmarks/bench.py runs)."""
    return {"curve_throughput": curve_throughput(quick=quick, reps=reps)}


def main(argv: list[str] | None = None) -> int:
    return suite_main(argv, __doc__, "security", "exesdb-pubsub security benchmark", scenarios)


if __name__ == "__main__":
    sys.exit(main())
