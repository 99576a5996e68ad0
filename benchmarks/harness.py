"""The benchmark harness shared by every ``benchmarks/bench_*.py``: brokers, roles, runs, reports.

A run starts a fresh broker (``exesdb-broker``, or a bare ``zmq.proxy`` as the reference) on
free 127.0.0.1 ports, spawns each role (publisher, subscriber...) as its own process, and
collects their results. :func:`compare` warms up, interleaves repetitions of two sides and
reports medians and ratios. A role is a function in :data:`WORKERS`, or any
``"module:function"`` importable from this directory, called as ``role(ready=..., **kwargs)``.

``python benchmarks/harness.py --serve-bare-proxy`` runs the reference proxy.
"""

from __future__ import annotations

import argparse
import atexit
import cProfile
import importlib
import json
import multiprocessing
import os
import platform
import queue
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any, Final

import exesdb_sdk
import msgspec
import zmq
from exesdb_sdk import Publisher, ReceiveTimeoutError, Subscriber
from exesdb_sdk.protocol import Encoder
from exesdb_sdk.subscriber import DEFAULT_RCVHWM

TOPIC: Final = b"ex_esdb_metrics/bench"
"""Topic of every benchmark message; subscribers subscribe to exactly this prefix."""
HWM: Final = 10_000
"""SNDHWM/RCVHWM of the bare proxy and the publishers, as in exesdb-broker and the SDK."""
STAMP_PLACEHOLDER: Final = "T" * 16
RAW_BODY_SIZE: Final = 100
SDK_DATA: Final[dict[str, Any]] = {
    "node": "node1",
    "status": "healthy",
    "load_avg": 0.42,
    "memory_usage": 0.61,
    "disk_usage": 0.33,
    "checks": {"db": "pass"},
}
LATENCY_SKIP: Final = 250
"""Latency samples dropped at the start of each run (50 ms at 5,000 msg/s)."""
BROKER_START_TIMEOUT: Final = 15.0
FIRST_MESSAGE_TIMEOUT: Final = 20.0
IDLE_TIMEOUT: Final = 1.0
"""A subscriber stops once no message has come for this long (messages may have been dropped)."""
SEND_TIMEOUT_MS: Final = 5_000
READY_LINE: Final = re.compile(r"ready frontend=(\S+) backend=(\S+)")
RESULTS_DIR: Final = Path(__file__).resolve().parent / "results"

_children: list[subprocess.Popen[str]] = []


# -- message bodies ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Body:
    """A packed envelope split around a 16-character stamp at the start of ``data.pad``."""

    head: bytes
    tail: bytes

    def stamped(self, stamp: int) -> bytes:
        return self.head + b"%016x" % stamp + self.tail

    @property
    def plain(self) -> bytes:
        return self.head + b"0" * 16 + self.tail

    @property
    def size(self) -> int:
        return len(self.head) + 16 + len(self.tail)


def make_body(size: int) -> Body:
    """A valid protocol envelope of exactly ``size`` bytes (>= 90), padded in ``data.pad``."""
    for src in ("bench", "bench2"):  # a second try when msgpack's string header skips ``size``
        for filler in range(size):
            envelope = {
                "v": 1,
                "type": "Bench",
                "ts": time.time_ns(),
                "src": src,
                "pub": "0123456789abcdef",
                "seq": 1,
                "data": {"pad": STAMP_PLACEHOLDER + "x" * filler},
            }
            packed = msgspec.msgpack.encode(envelope)
            if len(packed) == size:
                head, tail = packed.split(STAMP_PLACEHOLDER.encode())
                return Body(head, tail)
            if len(packed) > size:
                break
    raise ValueError(f"no envelope of exactly {size} bytes")


def sdk_body_size(count: int) -> int:
    """The length of the SDK publisher's body for ``SDK_DATA`` at the run's middle sequence number
    (the msgpack width of ``seq`` is the only thing that varies, by at most 4 bytes)."""
    encoder = Encoder(src="bench")
    return len(msgspec.msgpack.encode(encoder.envelope(count // 2 + 1, "NodeHealth", SDK_DATA)))


# -- processes: brokers --------------------------------------------------------------------------


def serve_bare_proxy(frontend_url: str = "tcp://127.0.0.1:*", backend_url: str = "tcp://127.0.0.1:*") -> None:
    """The baseline broker: ``zmq.proxy`` between a bound XSUB and a bound XPUB, nothing else."""
    context = zmq.Context()
    frontend = context.socket(zmq.XSUB)
    backend = context.socket(zmq.XPUB)
    for socket in (frontend, backend):
        socket.setsockopt(zmq.SNDHWM, HWM)
        socket.setsockopt(zmq.RCVHWM, HWM)
        socket.setsockopt(zmq.LINGER, 0)
    frontend.bind(frontend_url)
    backend.bind(backend_url)
    front, back = (s.getsockopt_string(zmq.LAST_ENDPOINT) for s in (frontend, backend))
    print(f"bare-proxy ready frontend={front} backend={back}", file=sys.stderr, flush=True)
    zmq.proxy(frontend, backend)  # runs until SIGTERM ends the process


def endpoints_for(transport: str, directory: str) -> tuple[str, str, str]:
    """Frontend, backend and control endpoints to bind: free tcp ports, or ipc files in ``directory``."""
    if transport == "tcp":
        return "tcp://127.0.0.1:*", "tcp://127.0.0.1:*", "tcp://127.0.0.1:*"
    if transport == "ipc":
        return f"ipc://{directory}/frontend", f"ipc://{directory}/backend", f"ipc://{directory}/control"
    raise ValueError(f"unknown transport {transport!r}")


BROKER_FLAGS: Final[dict[str, list[str]]] = {
    "exesdb": [],
    "exesdb-nojournal": ["--journal", "none", "--last-values", "none"],
    "exesdb-fsync-never": ["--journal-fsync", "never"],
}
"""Extra ``exesdb-broker`` flags per broker kind (defaults: journal alerts and audit, fsync durable)."""


def broker_command(kind: str, transport: str = "tcp", directory: str = "", extra: Sequence[str] = ()) -> list[str]:
    frontend, backend, control = endpoints_for(transport, directory)
    if kind == "bare":  # this module, as a script
        return [sys.executable, str(Path(__file__).resolve()), "--serve-bare-proxy", frontend, backend]
    return [
        sys.executable, "-m", "exesdb_broker",
        "--frontend", frontend, "--backend", backend, "--control", control, "--log-level", "warning",
        "--http", "none", *BROKER_FLAGS[kind], *extra,
    ]  # fmt: skip


def stop_process(proc: subprocess.Popen[str]) -> None:
    """SIGTERM, wait up to 5 s, then SIGKILL."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@dataclass(frozen=True, slots=True)
class BrokerHandle:
    """A running broker process: its endpoints and pid (for CPU and memory readings)."""

    frontend: str
    backend: str
    control: str | None
    pid: int
    lines: list[str] = field(default_factory=list)
    """What the broker printed on stderr so far (it keeps growing)."""
    process: subprocess.Popen[str] | None = None


@contextmanager
def running_broker(kind: str, transport: str = "tcp") -> Iterator[tuple[str, str]]:
    """Start ``exesdb-broker`` or the bare proxy on free ports; yield (frontend, backend)."""
    with started_broker(kind, transport) as handle:
        yield handle.frontend, handle.backend


@contextmanager
def started_broker(kind: str, transport: str = "tcp", extra: Sequence[str] = ()) -> Iterator[BrokerHandle]:
    """Start ``exesdb-broker`` (kind ``"exesdb"``) or the bare proxy (``"bare"``) over ``transport``
    (``"tcp"`` on free 127.0.0.1 ports, or ``"ipc"`` in a temporary directory); stop it on exit."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXESDB_")}  # default settings
    directory = tempfile.mkdtemp(prefix="exesdb-bench-")
    env["XDG_STATE_HOME"] = directory  # the broker's journal goes in the run's own directory
    proc = subprocess.Popen(
        broker_command(kind, transport, directory, extra),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    _children.append(proc)
    lines: queue.Queue[str | None] = queue.Queue()
    seen: list[str] = []

    def drain() -> None:  # keeps reading stderr for the broker's whole life, so it never blocks
        assert proc.stderr is not None
        for line in proc.stderr:
            seen.append(line.rstrip())
            lines.put(line)
        lines.put(None)

    threading.Thread(target=drain, daemon=True).start()
    try:
        deadline = time.monotonic() + BROKER_START_TIMEOUT
        endpoints = None
        while endpoints is None and (remaining := deadline - time.monotonic()) > 0:
            try:
                line = lines.get(timeout=remaining)
            except queue.Empty:
                break
            if line is None:
                break
            if match := READY_LINE.search(line):
                control = re.search(r"control=(\S+)", line)
                endpoints = match.group(1), match.group(2), control.group(1) if control else None
        if endpoints is None:
            raise RuntimeError(f"{kind} broker did not become ready:\n" + "\n".join(seen[-20:]))
        yield BrokerHandle(*endpoints, pid=proc.pid, lines=seen, process=proc)
    finally:
        stop_process(proc)
        _children.remove(proc)
        shutil.rmtree(directory, ignore_errors=True)


# -- processes: publishers and subscribers (run in spawned children) ----------------------------


def wait_for_subscription(socket: zmq.Socket[Any], topic: bytes, timeout: float) -> None:
    """Read an XPUB's subscription messages until ``topic``'s arrives: the path is then ready."""
    deadline = time.monotonic() + timeout
    while (remaining := deadline - time.monotonic()) > 0:
        if socket.poll(max(1, int(remaining * 1000))) and socket.recv() == b"\x01" + topic:
            return
    raise TimeoutError(f"no subscription to {topic!r} within {timeout} s")


def raw_publisher(
    *, ready: Callable[[], None], go: Event, frontend: str, count: int, body: Body, rate: float | None
) -> dict[str, Any]:
    """Send ``count`` pre-packed messages, as fast as possible or paced at ``rate`` msg/s with
    a monotonic stamp in each."""
    context = zmq.Context()
    socket = context.socket(zmq.XPUB)
    socket.setsockopt(zmq.XPUB_NODROP, 1)  # as the SDK Publisher: wait, never drop, when full
    socket.setsockopt(zmq.SNDHWM, HWM)
    socket.setsockopt(zmq.SNDTIMEO, SEND_TIMEOUT_MS)
    try:
        socket.connect(frontend)
        wait_for_subscription(socket, TOPIC, FIRST_MESSAGE_TIMEOUT)
        ready()
        if not go.wait(FIRST_MESSAGE_TIMEOUT):
            raise TimeoutError("never told to start")
        send, more, clock = socket.send, zmq.SNDMORE, time.monotonic_ns
        start = time.perf_counter()
        if rate is None:
            plain = body.plain
            for _ in range(count):
                send(TOPIC, more)
                send(plain)
        else:
            period, sleep, t0 = 1e9 / rate, time.sleep, clock()
            for i in range(count):
                due = t0 + int(i * period)
                now = clock()
                if due > now:
                    sleep((due - now) / 1e9)
                send(TOPIC, more)
                send(body.stamped(clock()))
        elapsed = time.perf_counter() - start
    finally:
        socket.close(linger=SEND_TIMEOUT_MS)  # flush what is queued
        context.term()
    return {"sent": count, "send_seconds": elapsed}


def sdk_publisher(
    *, ready: Callable[[], None], go: Event, frontend: str, count: int, data: dict[str, Any]
) -> dict[str, Any]:
    """Publish ``count`` envelopes with ``Publisher.publish`` as fast as it goes."""
    with Publisher(frontend, node="bench", linger=SEND_TIMEOUT_MS / 1000) as pub:
        ready()
        if not go.wait(FIRST_MESSAGE_TIMEOUT):
            raise TimeoutError("never told to start")
        publish = pub.publish
        start = time.perf_counter()
        for _ in range(count):
            publish("metrics", "bench", "NodeHealth", data)
        elapsed = time.perf_counter() - start
    return {"sent": count, "send_seconds": elapsed}


def raw_subscriber(*, ready: Callable[[], None], backend: str, count: int, stamp_offset: int | None) -> dict[str, Any]:
    """Receive up to ``count`` messages with ``recv_multipart`` (no decoding); with
    ``stamp_offset``, read the publisher's monotonic stamp there and record latencies."""
    context = zmq.Context()
    socket = context.socket(zmq.SUB)
    socket.setsockopt(zmq.RCVHWM, DEFAULT_RCVHWM)  # as the SDK Subscriber
    socket.setsockopt(zmq.LINGER, 0)
    socket.setsockopt(zmq.RCVTIMEO, int(FIRST_MESSAGE_TIMEOUT * 1000))
    received, first, last = 0, 0, 0
    latencies: list[int] = []
    try:
        socket.connect(backend)
        socket.setsockopt(zmq.SUBSCRIBE, TOPIC)
        ready()
        recv, clock = socket.recv_multipart, time.monotonic_ns
        try:
            frames = recv()
            first = last = clock()
            received = 1
            socket.setsockopt(zmq.RCVTIMEO, int(IDLE_TIMEOUT * 1000))
            if stamp_offset is None:
                while received < count:
                    recv()
                    last = clock()
                    received += 1
            else:
                end = stamp_offset + 16
                latencies.append(last - int(frames[1][stamp_offset:end], 16))
                while received < count:
                    frames = recv()
                    last = clock()
                    received += 1
                    latencies.append(last - int(frames[1][stamp_offset:end], 16))
        except zmq.Again:
            pass
    finally:
        socket.close()
        context.term()
    return {"received": received, "first_ns": first, "last_ns": last, "latencies_ns": latencies}


def sdk_subscriber(*, ready: Callable[[], None], backend: str, count: int) -> dict[str, Any]:
    """Receive up to ``count`` decoded messages with ``Subscriber.recv``."""
    received, first, last = 0, 0, 0
    with Subscriber(backend) as sub:
        sub.subscribe("metrics", "bench")  # returns once the broker has confirmed it
        ready()
        clock = time.monotonic_ns
        try:
            sub.recv(timeout=FIRST_MESSAGE_TIMEOUT)
            first = last = clock()
            received = 1
            recv = sub.recv
            while received < count:
                recv(timeout=IDLE_TIMEOUT)
                last = clock()
                received += 1
        except ReceiveTimeoutError:
            pass
        gaps = sub.stats.gaps
    return {"received": received, "first_ns": first, "last_ns": last, "gaps": gaps}


WORKERS: Final[dict[str, Callable[..., dict[str, Any]]]] = {
    "raw_publisher": raw_publisher,
    "sdk_publisher": sdk_publisher,
    "raw_subscriber": raw_subscriber,
    "sdk_subscriber": sdk_subscriber,
}


def _worker(role: str) -> Callable[..., dict[str, Any]]:
    """A role by name: one of WORKERS, or "module:function" from this directory."""
    if ":" not in role:
        return WORKERS[role]
    module, _, function = role.partition(":")
    found: Callable[..., dict[str, Any]] = getattr(importlib.import_module(module), function)
    return found


def child_main(conn: Connection, role: str, kwargs: dict[str, Any], profile: str | None) -> None:
    """Entry point of a spawned child: run one role, send ("ready"|"result"|"error", value)."""

    def ready() -> None:
        conn.send(("ready", None))

    try:
        worker = _worker(role)
        if profile:
            profiler = cProfile.Profile()
            result = profiler.runcall(worker, ready=ready, **kwargs)
            profiler.dump_stats(profile)
        else:
            result = worker(ready=ready, **kwargs)
        conn.send(("result", result))
    except BaseException:
        conn.send(("error", traceback.format_exc()))
    finally:
        conn.close()


@dataclass(slots=True)
class Child:
    """A spawned role and the read end of its pipe."""

    role: str
    process: multiprocessing.process.BaseProcess
    conn: Connection

    def expect(self, tag: str, timeout: float) -> Any:
        if not self.conn.poll(timeout):
            raise RuntimeError(f"{self.role}: no {tag} within {timeout:.0f} s")
        try:
            got, value = self.conn.recv()
        except EOFError:
            raise RuntimeError(f"{self.role} died (exit code {self.process.exitcode})") from None
        if got == "error":
            raise RuntimeError(f"{self.role} failed:\n{value}")
        if got != tag:
            raise RuntimeError(f"{self.role}: expected {tag}, got {got}")
        return value

    def stop(self) -> None:
        self.process.join(5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)
        self.conn.close()


SPAWN: Final = multiprocessing.get_context("spawn")


def spawn(role: str, kwargs: dict[str, Any], profile: str | None = None) -> Child:
    reader, writer = SPAWN.Pipe(duplex=False)
    process = SPAWN.Process(target=child_main, args=(writer, role, kwargs, profile), name=role, daemon=True)
    process.start()
    writer.close()
    return Child(role, process, reader)


# -- one run ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Side:
    """How one side of a scenario runs: which broker, which publisher and subscriber roles."""

    name: str
    broker: str
    publisher: str
    subscriber: str
    publisher_kwargs: dict[str, Any]
    subscriber_kwargs: dict[str, Any]


def run_side(side: Side, count: int, profile: str | None = None) -> dict[str, Any]:
    """One run: fresh broker, subscriber, then publisher; the merged results of both. With
    ``profile`` (a path prefix), the children run under cProfile."""
    expected_seconds = 60.0 + count / 1000  # generous: the slowest path does >> 1,000 msg/s
    with running_broker(side.broker) as (frontend, backend):
        go = SPAWN.Event()
        children: list[Child] = []
        try:
            sub = spawn(
                side.subscriber,
                {"backend": backend, "count": count, **side.subscriber_kwargs},
                profile and f"{profile}-subscriber.prof",
            )
            children.append(sub)
            pub = spawn(
                side.publisher,
                {"frontend": frontend, "count": count, "go": go, **side.publisher_kwargs},
                profile and f"{profile}-publisher.prof",
            )
            children.append(pub)
            sub.expect("ready", FIRST_MESSAGE_TIMEOUT)
            pub.expect("ready", FIRST_MESSAGE_TIMEOUT)
            go.set()
            sent = pub.expect("result", expected_seconds)
            got = sub.expect("result", expected_seconds)
        finally:
            for child in children:
                child.stop()
    return {**sent, **got}


def throughput_summary(result: dict[str, Any]) -> dict[str, Any]:
    received, span = result["received"], (result["last_ns"] - result["first_ns"]) / 1e9
    return {
        "msgs_per_s": (received - 1) / span if received > 1 and span > 0 else 0.0,
        "delivered_fraction": received / result["sent"],
        "received": received,
        "sent": result["sent"],
        "publish_msgs_per_s": result["sent"] / result["send_seconds"],
        **({"gaps": result["gaps"]} if "gaps" in result else {}),
    }


def percentile(ordered: list[float], fraction: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))]


def latency_summary(result: dict[str, Any]) -> dict[str, Any]:
    micros = sorted(ns / 1000 for ns in result["latencies_ns"][LATENCY_SKIP:])
    return {
        "p50_us": percentile(micros, 0.50),
        "p99_us": percentile(micros, 0.99),
        "p999_us": percentile(micros, 0.999),
        "max_us": micros[-1] if micros else 0.0,
        "samples": len(micros),
        "delivered_fraction": result["received"] / result["sent"],
        "publish_msgs_per_s": result["sent"] / result["send_seconds"],
    }


# -- scenarios ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Config:
    reps: int
    warmup: bool
    raw_count: int
    latency_rate: float
    latency_seconds: float
    sdk_count: int
    profile_dir: Path | None


def interleave(
    sides: Sequence[str],
    run: Callable[[str, int], dict[str, Any]],
    count: int,
    *,
    warmup: bool,
    reps: int,
    least: int = 1000,
) -> dict[str, list[dict[str, Any]]]:
    """A warm-up run of each side (a quarter of ``count``, at least ``least``; not counted)
    unless not ``warmup``, then ``reps`` interleaved runs of ``count``: the runs per side.
    Prints ``w`` and ``.`` as it goes, then ends the line."""
    if warmup:
        for side in sides:
            run(side, max(least, count // 4))
            print("w", end="", flush=True)
    runs: dict[str, list[dict[str, Any]]] = {side: [] for side in sides}
    for _ in range(reps):
        for side in sides:
            runs[side].append(run(side, count))
            print(".", end="", flush=True)
    print()
    return runs


def medians_of(runs: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, float]]:
    """Per side, the median of each metric of its first run over all its runs."""
    return {
        side: {metric: statistics.median(run[metric] for run in side_runs) for metric in side_runs[0]}
        for side, side_runs in runs.items()
    }


def compare(
    key: str,
    title: str,
    sides: tuple[Side, Side],
    count: int,
    summarize: Callable[[dict[str, Any]], dict[str, Any]],
    ratios: list[str],
    target: tuple[str, str, float],
    config: Config,
) -> dict[str, Any]:
    """Warm up each side, run them interleaved ``config.reps`` times, and report medians and
    the ratio of the medians (second side / first side) for each metric in ``ratios``."""
    print(f"  {title}: ", end="", flush=True)
    if config.warmup:
        for side in sides:
            run_side(side, max(1000, count // 4))
            print("w", end="", flush=True)
    runs: dict[str, list[dict[str, Any]]] = {side.name: [] for side in sides}
    for _ in range(config.reps):
        for side in sides:
            runs[side.name].append(summarize(run_side(side, count)))
            print(".", end="", flush=True)
    if config.profile_dir:  # extra runs under cProfile, not counted
        for side in sides:
            run_side(side, count, str(config.profile_dir / f"{key}-{side.name}"))
            print("p", end="", flush=True)
    print()
    medians = medians_of(runs)
    base, other = (medians[side.name] for side in sides)
    metric, op, value = target
    ratio_of = {m: other[m] / base[m] if base[m] else float("nan") for m in ratios}
    met = ratio_of[metric] >= value if op == ">=" else ratio_of[metric] <= value
    return {
        "title": title,
        "sides": [side.name for side in sides],
        "count_per_run": count,
        "runs": runs,
        "medians": medians,
        "min_delivered_fraction": {
            name: min(run["delivered_fraction"] for run in side_runs) for name, side_runs in runs.items()
        },
        "ratios": ratio_of,
        "target": {"metric": metric, "op": op, "value": value, "met": met},
    }


# -- environment and report ------------------------------------------------------------------------


def environment() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.partition(":")[2].strip()
                break
    except OSError:
        pass
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "pyzmq": zmq.pyzmq_version(),
        "libzmq": zmq.zmq_version(),
        "msgspec": msgspec.__version__,
        "exesdb_sdk": exesdb_sdk.__version__,
        "cpu_model": cpu,
        "cpu_count": os.cpu_count(),
        "kernel": f"{platform.system()} {platform.release()}",
    }


def fmt(value: float) -> str:
    if value >= 1000:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.3f}"


def render(report: dict[str, Any], title: str = "exesdb-pubsub benchmark") -> str:
    """The report as a text table: per scenario, each metric's median per side and the ratio.

    A scenario dict has ``title``, ``sides`` (two names), ``medians`` (side -> metric -> value),
    ``ratios`` (metric -> right/left) and ``target``: ``None``; a ratio target
    ``{"metric", "op", "value", "met"}``; or, with a ``"side"`` key, an absolute target on that
    side's value. ``count_per_run``, ``body_bytes``, ``min_delivered_fraction`` and ``notes``
    (lines printed under the scenario, e.g. about a third side it measured) are optional.
    """
    env = report["environment"]
    lines = [
        f"{title}, {env['date']}",
        f"Python {env['python']} | pyzmq {env['pyzmq']} | libzmq {env['libzmq']} | "
        f"msgspec {env['msgspec']} | exesdb_sdk {env['exesdb_sdk']}",
        f"{env['cpu_model']} x {env['cpu_count']} cores | {env['kernel']}",
        f"medians of {report['config']['reps']} interleaved runs; ratio = right side / left side",
        "",
        f"{'scenario / metric':<38} {'left':>22} {'right':>22} {'ratio':>7}  target",
    ]
    for scenario in report["scenarios"].values():
        left, right = scenario["sides"]
        facts = []
        if "count_per_run" in scenario:
            facts.append(f"{scenario['count_per_run']:,} msgs")
        if scenario.get("body_bytes"):
            facts.append(f"{scenario['body_bytes']} B")
        lines.append(scenario["title"] + (f" ({', '.join(facts)})" if facts else ""))
        if scenario.get("skipped"):
            lines.append(f"  skipped: {scenario['skipped']}")
            continue
        lines.append(f"  {'sides':<36} {left:>22} {right:>22}")
        target = scenario.get("target")
        for metric in scenario["medians"][left]:
            a, b = scenario["medians"][left][metric], scenario["medians"][right][metric]
            ratio = scenario["ratios"].get(metric)
            ratio_text = f"{ratio:7.3f}" if ratio is not None else " " * 7
            goal = ""
            if target and metric == target["metric"]:
                where = f" ({target['side']})" if "side" in target else ""
                goal = f"{target['op']} {target['value']}{where}  {'met' if target['met'] else 'NOT MET'}"
            lines.append(f"  {metric:<36} {fmt(a):>22} {fmt(b):>22} {ratio_text}  {goal}")
        low = scenario.get("min_delivered_fraction")
        if low:
            lines.append(f"  {'min delivered_fraction':<36} {fmt(low[left]):>22} {fmt(low[right]):>22}")
        lines.extend(f"  {note}" for note in scenario.get("notes", ()))
    return "\n".join(lines)


# -- main ------------------------------------------------------------------------------------------


def handle_exits() -> None:
    """Kill every child process at exit, on SIGTERM too (each suite's ``main`` calls it)."""
    atexit.register(kill_children)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


def write_report(report: dict[str, Any], out: Path | None, suite: str) -> Path:
    """Write ``report`` as JSON to ``out`` (default ``benchmarks/results/<suite>-<UTC>.json``) and say where."""
    if out is None:
        out = RESULTS_DIR / f"{suite}-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nJSON: {out}  ({report['elapsed_seconds']} s)")
    return out


def suite_main(
    argv: list[str] | None,
    doc: str | None,
    suite: str,
    title: str,
    scenarios: Callable[..., dict[str, Any]],
) -> int:
    """The ``main`` of a suite with no options of its own: ``--reps``, ``--quick``, ``--json-out``."""
    parser = argparse.ArgumentParser(description=(doc or "").split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=5, help="interleaved repetitions per side (default 5)")
    parser.add_argument("--quick", action="store_true", help="tiny counts, 1 repetition: a smoke run")
    parser.add_argument("--json-out", type=Path, help=f"JSON file (default benchmarks/results/{suite}-<UTC>.json)")
    args = parser.parse_args(argv)
    if args.reps < 1:
        parser.error("--reps must be at least 1")
    handle_exits()
    started = time.monotonic()
    report: dict[str, Any] = {
        "environment": environment(),
        "config": {"quick": args.quick, "reps": 1 if args.quick else args.reps},
        "scenarios": scenarios(quick=args.quick, reps=args.reps),
    }
    report["elapsed_seconds"] = round(time.monotonic() - started, 1)
    print()
    print(render(report, title))
    write_report(report, args.json_out, suite)
    return 0


def kill_children() -> None:
    for proc in list(_children):
        stop_process(proc)


def process_cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_rss_mb(pid: int) -> float:
    """Resident memory of a process in MiB (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


if __name__ == "__main__" and sys.argv[1:2] == ["--serve-bare-proxy"]:
    serve_bare_proxy(*sys.argv[2:4])
