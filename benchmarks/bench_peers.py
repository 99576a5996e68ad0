"""Peers benchmark: the SDK end to end against NATS and Redis pub/sub, measured side by side.

Run it (about 3 minutes with the default 9 repetitions; ``--quick`` is a smoke run of a few seconds)::

    /work/venv/bin/python benchmarks/bench_peers.py [--reps 9] [--quick] [--json-out PATH]

It prints a table and writes JSON (with the environment and the peers' server and client
versions) to ``benchmarks/results/peers-<UTC timestamp>.json`` unless ``--json-out`` names
another file. The peers are optional: ``apt-get install redis-server nats-server`` and
``pip install '.[bench]'``. A scenario whose server binary (on ``PATH``) or Python client is
missing is reported as skipped, never as a failure.

Sides (every side's publisher and subscriber are spawned processes of their own, and its
server a subprocess started fresh for each run on a free 127.0.0.1 port):

- ``nats``: nats-py's asyncio client on core NATS, as its documentation has it: the publisher
  does ``await nc.publish(subject, payload)`` of a 100-byte raw payload in a loop and one
  ``await nc.flush()`` at the end (the client coalesces the publishes into large writes
  itself; a flush is a PING/PONG round trip); the subscriber counts in a
  ``subscribe(cb=...)`` callback. Server: ``nats-server -a 127.0.0.1 -p <port>``.
- ``nats_msgpack``: the same client and server carrying what the SDK carries: the publisher
  encodes the SDK's MessagePack envelope of the same ``NodeHealth`` data per publish (the
  SDK's ``Encoder``, ~160 B), and the subscriber decodes each with the SDK's ``Decoder`` and
  rebuilds the typed ``NodeHealth`` (``NodeHealth.from_data``), as ``Subscriber.recv`` does.
  The like-for-like row: same work in the clients, only the transport differs.
- ``redis_plain`` / ``redis_pipelined``: redis-py against ``redis-server --port <port> --bind
  127.0.0.1 --save "" --appendonly no``. The publisher does ``r.publish(channel, payload)``
  per message (one round trip each), or queues them on ``r.pipeline(transaction=False)`` and
  ``execute()``-s every 1,000; the subscriber reads ``pubsub.listen()`` (a blocking read per
  message, cheaper than polling ``get_message(timeout=...)``), ending at 1 s idle through
  the connection's socket timeout. redis-py's pure-Python reply parser is used unless
  ``hiredis`` happens to be installed (not a dependency of this project).
- ``sdk``: ``Publisher.publish_message(NodeHealth(...))`` (a typed message built per publish,
  validated and encoded) -> ``exesdb-broker`` -> ``Subscriber.recv`` with ``subscribe("health")``,
  each message decoded into a typed ``NodeHealth`` payload (the subscriber checks it is one;
  payloads are built on first read, so the check builds every one: the honest figure).
- ``sdk_batch``: the same, but ``publish_batch`` of 100 NodeHealth-like dicts per call; the
  subscriber still receives (and types) them one by one.

Scenarios (ratio = right side / left side, so > 1 means the SDK is faster):

- ``nats_vs_sdk``: nats vs sdk, target SDK/NATS delivered msgs/s >= 1.5.
- ``nats_vs_sdk_batch``: nats vs sdk_batch, informative (no target). Same NATS runs as above.
- ``nats_msgpack_vs_sdk``: nats_msgpack vs sdk, informative: the SDK against NATS doing the
  same encoding, decoding and typing. Same SDK runs as ``nats_vs_sdk``.
- ``redis_vs_sdk``: redis_pipelined vs sdk, target SDK/Redis-pipelined >= 2.0.
- ``redis_plain_vs_sdk``: redis_plain vs sdk, informative. Same SDK runs as ``redis_vs_sdk``.

Method, as in ``bench_core.py``: the subscriber subscribes first and reports ready once the
server has confirmed it (NATS: ``flush()`` after ``SUBSCRIBE``; Redis: the ``subscribe``
reply; SDK: ``subscribe()`` returns after the broker's confirmation); the publisher connects,
reports ready and waits to be let go. The rate is measured at the subscriber from its first
to its last message (``msgs_per_s``), with the delivered fraction (received / sent) next to
it; a subscriber stops at the expected count or after 1 s without a message. Also per run:
the publisher's own send rate, and CPU time per message of the publisher, subscriber and
server (from ``time.process_time`` and ``/proc``), which shows where time goes when all three
share two cores. Each group of sides (NATS group, Redis group) gets one warm-up run per
side, then ``--reps`` interleaved rounds; the table shows medians per side and the ratio of
the medians. Only ratios are meaningful: absolute numbers on a small shared machine drift.

Not like for like, by design: the peers carry an opaque 100-byte payload, the SDK a typed
message of about 210 bytes (topic plus envelope) that it validates, encodes, decodes and
rebuilds. CPU per message counts every thread of a process (libzmq's I/O thread too).
redis-py parses replies in Python unless ``hiredis`` is installed (the JSON records which).
Under overload the peers buffer in the server (up to their slow-consumer limits), while
``exesdb-broker`` drops at a slow subscriber's high-water mark; the SDK subscriber's gap
count is in each run's ``details``.

Every wait has a deadline; servers, brokers and children are stopped on exit (``finally``,
``atexit``, and SIGTERM).
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import importlib
import importlib.metadata
import math
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any, Final

from exesdb_sdk import Publisher, ReceiveTimeoutError, Subscriber
from exesdb_sdk.messages import NodeHealth
from exesdb_sdk.protocol import Decoder, Encoder
from harness import (
    FIRST_MESSAGE_TIMEOUT,
    IDLE_TIMEOUT,
    SPAWN,
    Child,
    environment,
    handle_exits,
    kill_children,
    process_cpu_seconds,
    render,
    spawn,
    started_broker,
    write_report,
)

PAYLOAD_BYTES: Final = 100
"""Size of the peers' raw payload."""
SUBJECT: Final = "bench.peers"
"""NATS subject and Redis channel."""
NATS_FLUSH_EVERY: Final = 0
"""Publishes between ``nc.flush()`` calls of the NATS publisher (0: one flush at the end)."""
REDIS_PIPELINE_CHUNK: Final = 1_000
BATCH_SIZE: Final = 100
CHECKS: Final[dict[str, Any]] = {"db": "pass"}
HEALTH_DATA: Final[dict[str, Any]] = {
    "node": "node1",
    "status": "healthy",
    "load_avg": 0.42,
    "memory_usage": 0.61,
    "disk_usage": 0.33,
    "checks": CHECKS,
}
SERVER_START_TIMEOUT: Final = 10.0
SERVER_START_TRIES: Final = 3
CLIENT_TIMEOUT: Final = 10.0
"""Connect timeout of the peer clients, in seconds."""
NATS_FLUSH_TIMEOUT: Final = 10
"""Seconds ``nc.flush()`` waits for the server's PONG (nats-py wants an int)."""
LINGER_S: Final = 5.0
METRICS: Final = (
    "msgs_per_s",
    "delivered_fraction",
    "publish_msgs_per_s",
    "publisher_cpu_us_per_msg",
    "subscriber_cpu_us_per_msg",
    "server_cpu_us_per_msg",
)
RATIO_METRICS: Final = tuple(m for m in METRICS if m != "delivered_fraction")

_servers: list[subprocess.Popen[bytes]] = []


# -- roles: the SDK (run in spawned children) ----------------------------------------------------


def _wait_go(go: Event) -> None:
    if not go.wait(FIRST_MESSAGE_TIMEOUT):
        raise TimeoutError("never told to start")


def sdk_typed_publisher(*, ready: Callable[[], None], go: Event, frontend: str, count: int) -> dict[str, Any]:
    """Publish ``count`` typed ``NodeHealth`` messages, one built per ``publish_message``."""
    with Publisher(frontend, node="bench", linger=LINGER_S) as pub:
        ready()
        _wait_go(go)
        publish = pub.publish_message
        cpu, start = time.process_time(), time.perf_counter()
        for i in range(count):
            publish(
                NodeHealth(
                    node="node1",
                    status="healthy",
                    load_avg=0.42,
                    memory_usage=0.61,
                    disk_usage=(i % 100) / 100,
                    checks=CHECKS,
                )
            )
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
        stats = pub.stats
    return {
        "sent": count,
        "send_seconds": elapsed,
        "publisher_cpu_s": cpu,
        "bytes_per_msg": stats.bytes / max(1, stats.envelopes),
    }


def sdk_batch_publisher(
    *, ready: Callable[[], None], go: Event, frontend: str, count: int, batch_size: int
) -> dict[str, Any]:
    """Publish ``count`` NodeHealth envelopes as ``publish_batch`` calls of ``batch_size`` dicts."""
    batch = [dict(HEALTH_DATA, disk_usage=i / batch_size) for i in range(batch_size)]
    with Publisher(frontend, node="bench", linger=LINGER_S) as pub:
        ready()
        _wait_go(go)
        publish_batch, sent = pub.publish_batch, 0
        cpu, start = time.process_time(), time.perf_counter()
        while sent < count:
            sent += publish_batch("health", "node_health:node1", "NodeHealth", batch[: count - sent])
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
        stats = pub.stats
    return {
        "sent": sent,
        "send_seconds": elapsed,
        "publisher_cpu_s": cpu,
        "bytes_per_msg": stats.bytes / max(1, stats.envelopes),
    }


def sdk_health_subscriber(*, ready: Callable[[], None], backend: str, count: int) -> dict[str, Any]:
    """Receive up to ``count`` messages on ``health`` with ``Subscriber.recv``; count those
    whose payload is not a typed ``NodeHealth`` (should be none)."""
    received, untyped, first, last = 0, 0, 0, 0
    with Subscriber(backend) as sub:
        sub.subscribe("health")  # returns once the broker has confirmed it
        ready()
        clock, cpu = time.monotonic_ns, time.process_time()
        try:
            message = sub.recv(timeout=FIRST_MESSAGE_TIMEOUT)
            first = last = clock()
            received, untyped = 1, type(message.payload) is not NodeHealth
            recv = sub.recv
            while received < count:
                message = recv(timeout=IDLE_TIMEOUT)
                last = clock()
                received += 1
                if type(message.payload) is not NodeHealth:
                    untyped += 1
        except ReceiveTimeoutError:
            pass
        cpu = time.process_time() - cpu
        gaps = sub.stats.gaps
    return {
        "received": received,
        "first_ns": first,
        "last_ns": last,
        "subscriber_cpu_s": cpu,
        "untyped": untyped,
        "gaps": gaps,
    }


# -- roles: NATS -----------------------------------------------------------------------------------


def nats_publisher(
    *,
    ready: Callable[[], None],
    go: Event,
    url: str,
    count: int,
    payload_bytes: int,
    flush_every: int,
    envelope: bool = False,
) -> dict[str, Any]:
    """``await nc.publish`` ``count`` raw payloads (or, with ``envelope``, the SDK's envelope of
    ``NodeHealth`` data, encoded per publish), ``await nc.flush()`` every ``flush_every`` (0:
    at the end only)."""
    return asyncio.run(_nats_publish(ready, go, url, count, payload_bytes, flush_every, envelope))


async def _nats_publish(
    ready: Callable[[], None], go: Event, url: str, count: int, payload_bytes: int, flush_every: int, envelope: bool
) -> dict[str, Any]:
    import nats

    errors: list[str] = []

    async def on_error(exc: Exception) -> None:
        errors.append(repr(exc))

    nc = await nats.connect(url, connect_timeout=CLIENT_TIMEOUT, allow_reconnect=False, error_cb=on_error)
    try:
        ready()
        if not await asyncio.get_running_loop().run_in_executor(None, go.wait, FIRST_MESSAGE_TIMEOUT):
            raise TimeoutError("never told to start")
        payload = b"x" * payload_bytes
        publish, flush = nc.publish, nc.flush
        encoder = Encoder(src="bench")
        topic = encoder.topic("health", "node_health:node1")
        encode, size = encoder.encode, 0
        cpu, start = time.process_time(), time.perf_counter()
        for i in range(1, count + 1):
            if envelope:
                payload = encode(topic, "NodeHealth", dict(HEALTH_DATA, disk_usage=(i % 100) / 100))
                size += len(payload)
            await publish(SUBJECT, payload)
            if flush_every and i % flush_every == 0:
                await flush(NATS_FLUSH_TIMEOUT)
        await flush(NATS_FLUSH_TIMEOUT)
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    finally:
        await nc.close()
    return {
        "sent": count,
        "send_seconds": elapsed,
        "publisher_cpu_s": cpu,
        "bytes_per_msg": size / count if envelope else payload_bytes,
        "publisher_errors": errors[:5],
    }


def nats_subscriber(*, ready: Callable[[], None], url: str, count: int, decode: bool = False) -> dict[str, Any]:
    """Count messages in a ``subscribe(cb=...)`` callback until ``count`` or 1 s idle; with
    ``decode``, decode each as the SDK's envelope and rebuild its typed ``NodeHealth``."""
    return asyncio.run(_nats_subscribe(ready, url, count, decode))


async def _nats_subscribe(ready: Callable[[], None], url: str, count: int, decode: bool) -> dict[str, Any]:
    import nats

    received, untyped, first, last = 0, 0, 0, 0
    done = asyncio.Event()
    clock = time.monotonic_ns
    errors: list[str] = []
    decoder = Decoder()
    topic = Encoder(src="bench").topic("health", "node_health:node1")
    from_data = NodeHealth.from_data

    async def on_message(msg: Any) -> None:
        nonlocal received, untyped, first, last
        if decode:
            for message in decoder.decode((topic, msg.data)):  # raises on a bad body: a broken benchmark
                if type(from_data(message.data)) is not NodeHealth:
                    untyped += 1
        last = clock()
        if not received:
            first = last
        received += 1
        if received >= count:
            done.set()

    async def on_error(exc: Exception) -> None:
        errors.append(repr(exc))

    nc = await nats.connect(url, connect_timeout=CLIENT_TIMEOUT, allow_reconnect=False, error_cb=on_error)
    try:
        await nc.subscribe(SUBJECT, cb=on_message)
        await nc.flush(NATS_FLUSH_TIMEOUT)  # the server has processed the SUBSCRIBE
        ready()
        cpu = time.process_time()
        first_deadline = time.monotonic() + FIRST_MESSAGE_TIMEOUT
        while not done.is_set():
            if received == 0:
                if time.monotonic() > first_deadline:
                    break
            elif clock() - last > IDLE_TIMEOUT * 1e9:
                break
            with suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), 0.05)
        cpu = time.process_time() - cpu
    finally:
        await nc.close()
    return {
        "received": received,
        "first_ns": first,
        "last_ns": last,
        "subscriber_cpu_s": cpu,
        "subscriber_errors": errors[:5],
        "untyped": untyped,
    }


# -- roles: Redis ----------------------------------------------------------------------------------


def redis_publisher(
    *, ready: Callable[[], None], go: Event, port: int, count: int, payload_bytes: int, pipeline_chunk: int | None
) -> dict[str, Any]:
    """``r.publish`` ``count`` raw payloads one by one, or pipelined in chunks of ``pipeline_chunk``."""
    import redis

    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=60, socket_connect_timeout=CLIENT_TIMEOUT)
    try:
        client.ping()
        ready()
        _wait_go(go)
        payload = b"x" * payload_bytes
        cpu, start = time.process_time(), time.perf_counter()
        if pipeline_chunk is None:
            publish = client.publish
            for _ in range(count):
                publish(SUBJECT, payload)
        else:
            pipe = client.pipeline(transaction=False)
            for begin in range(0, count, pipeline_chunk):
                for _ in range(min(pipeline_chunk, count - begin)):
                    pipe.publish(SUBJECT, payload)
                pipe.execute()
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    finally:
        client.close()
    return {"sent": count, "send_seconds": elapsed, "publisher_cpu_s": cpu, "bytes_per_msg": payload_bytes}


def redis_subscriber(*, ready: Callable[[], None], port: int, count: int) -> dict[str, Any]:
    """``pubsub.subscribe`` and count ``get_message`` results until ``count`` or 1 s idle."""
    import redis

    # the socket timeout ends listen() after IDLE_TIMEOUT without a message
    client = redis.Redis(
        host="127.0.0.1", port=port, socket_timeout=IDLE_TIMEOUT, socket_connect_timeout=CLIENT_TIMEOUT
    )
    pubsub = client.pubsub()  # type: ignore[no-untyped-call]
    received, first, last, disconnected = 0, 0, 0, ""
    try:
        pubsub.subscribe(SUBJECT)
        deadline = time.monotonic() + CLIENT_TIMEOUT
        while True:  # the server's subscribe reply: from now on, what is published reaches us
            reply = pubsub.get_message(timeout=1.0)
            if reply is not None and reply["type"] == "subscribe":
                break
            if time.monotonic() > deadline:
                raise TimeoutError("no subscribe confirmation from redis-server")
        ready()
        clock, cpu = time.monotonic_ns, time.process_time()
        get_message = pubsub.get_message
        try:
            deadline = time.monotonic() + FIRST_MESSAGE_TIMEOUT
            while (message := get_message(timeout=0.1)) is None and time.monotonic() < deadline:
                pass
            if message is not None:
                first = last = clock()
                received = 1
                if received < count:
                    for _ in pubsub.listen():  # only messages now: the subscribe reply came first
                        last = clock()
                        received += 1
                        if received >= count:
                            break
        except redis.TimeoutError:  # IDLE_TIMEOUT without a message: the run is over
            pass
        except redis.ConnectionError as exc:  # e.g. dropped as a slow consumer (output buffer limit)
            disconnected = repr(exc)
        cpu = time.process_time() - cpu
    finally:
        pubsub.close()
        client.close()
    return {
        "received": received,
        "first_ns": first,
        "last_ns": last,
        "subscriber_cpu_s": cpu,
        "disconnected": disconnected,
    }


# -- peer servers --------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def server_command(kind: str, port: int) -> list[str]:
    if kind == "nats":
        return [_binary("nats-server"), "-a", "127.0.0.1", "-p", str(port)]
    if kind == "redis":
        return [_binary("redis-server"), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    raise ValueError(f"unknown peer server {kind!r}")


def _binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise FileNotFoundError(name)
    return path


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@dataclass(frozen=True, slots=True)
class ServerHandle:
    """A running server: the role arguments that reach it, and its pid for CPU readings."""

    publisher_kwargs: dict[str, Any]
    subscriber_kwargs: dict[str, Any]
    pid: int


@contextmanager
def peer_server(kind: str) -> Iterator[ServerHandle]:
    """Start ``nats-server`` or ``redis-server`` on a free 127.0.0.1 port, wait until it accepts
    connections (a few tries, in case another process took the port), stop it on exit."""
    failures: list[str] = []
    for _ in range(SERVER_START_TRIES):
        port = free_port()
        with tempfile.TemporaryFile() as log:
            proc = subprocess.Popen(
                server_command(kind, port), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
            _servers.append(proc)
            try:
                deadline = time.monotonic() + SERVER_START_TIMEOUT
                while proc.poll() is None and time.monotonic() < deadline and not _accepts(port):
                    time.sleep(0.02)
                if proc.poll() is None and _accepts(port):
                    kwargs = {"url": f"nats://127.0.0.1:{port}"} if kind == "nats" else {"port": port}
                    yield ServerHandle(kwargs, kwargs, proc.pid)
                    return
                log.seek(0)
                failures.append(log.read().decode(errors="replace")[-2000:])
            finally:
                _stop(proc)
                _servers.remove(proc)
    raise RuntimeError(f"{kind}-server did not start:\n" + "\n---\n".join(failures))


@contextmanager
def side_server(kind: str) -> Iterator[ServerHandle]:
    """A fresh server of ``kind``: ``"exesdb"`` (exesdb-broker over tcp), ``"nats"`` or ``"redis"``."""
    if kind == "exesdb":
        with started_broker("exesdb", "tcp") as broker:
            yield ServerHandle({"frontend": broker.frontend}, {"backend": broker.backend}, broker.pid)
    else:
        with peer_server(kind) as server:
            yield server


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, wait up to 5 s, then SIGKILL (as ``harness.stop_process``)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def kill_servers() -> None:
    for proc in list(_servers):
        _stop(proc)


# -- one run, and a group of sides -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PeerSide:
    """How one side runs: its server kind, publisher and subscriber roles, messages per run."""

    name: str
    server: str
    publisher: str
    subscriber: str
    count: int
    publisher_kwargs: dict[str, Any] = field(default_factory=dict)
    subscriber_kwargs: dict[str, Any] = field(default_factory=dict)


def run_peer_side(side: PeerSide, count: int | None = None) -> dict[str, Any]:
    """One run, as ``harness.run_side``: a fresh server, the subscriber, then the publisher;
    the merged results of both plus the server's CPU seconds while they ran."""
    count = side.count if count is None else count
    expected_seconds = 60.0 + count / 1000  # generous: every side does >> 1,000 msg/s
    with side_server(side.server) as server:
        go = SPAWN.Event()
        children: list[Child] = []
        try:
            sub = spawn(side.subscriber, {**server.subscriber_kwargs, "count": count, **side.subscriber_kwargs})
            children.append(sub)
            pub = spawn(side.publisher, {**server.publisher_kwargs, "count": count, "go": go, **side.publisher_kwargs})
            children.append(pub)
            sub.expect("ready", FIRST_MESSAGE_TIMEOUT)
            pub.expect("ready", FIRST_MESSAGE_TIMEOUT)
            server_cpu = process_cpu_seconds(server.pid)
            go.set()
            sent = pub.expect("result", expected_seconds)
            got = sub.expect("result", expected_seconds)
            server_cpu = process_cpu_seconds(server.pid) - server_cpu
        finally:
            for child in children:
                child.stop()
    return {**sent, **got, "server_cpu_s": server_cpu}


def summarize(result: dict[str, Any]) -> dict[str, float]:
    """The numbers of one run (all numeric; the same keys for every side)."""
    sent, received = result["sent"], result["received"]
    span = (result["last_ns"] - result["first_ns"]) / 1e9
    return {
        "msgs_per_s": (received - 1) / span if received > 1 and span > 0 else 0.0,
        "delivered_fraction": received / sent,
        "publish_msgs_per_s": sent / result["send_seconds"] if result["send_seconds"] > 0 else 0.0,
        "publisher_cpu_us_per_msg": result["publisher_cpu_s"] / sent * 1e6,
        "subscriber_cpu_us_per_msg": result["subscriber_cpu_s"] / max(1, received) * 1e6,
        "server_cpu_us_per_msg": result["server_cpu_s"] / sent * 1e6,
    }


def details(result: dict[str, Any]) -> dict[str, Any]:
    """What a run reports beyond the numbers: body size, errors, drops, gaps."""
    keys = (
        "bytes_per_msg",
        "received",
        "sent",
        "gaps",
        "untyped",
        "disconnected",
        "publisher_errors",
        "subscriber_errors",
    )
    return {key: result[key] for key in keys if key in result}


@dataclass(frozen=True, slots=True)
class Pair:
    """A scenario drawn from a group's runs: two of its sides and an optional ratio target."""

    key: str
    title: str
    left: str
    right: str
    target: tuple[str, str, float] | None


def run_group(
    label: str, sides: tuple[PeerSide, ...], pairs: tuple[Pair, ...], reps: int, warmup: bool
) -> dict[str, Any]:
    """Warm up each side, run them interleaved ``reps`` times, and report each pair as a
    scenario: medians per side and the ratio of the medians (right / left)."""
    print(f"  {label}: ", end="", flush=True)
    if warmup:
        for side in sides:
            run_peer_side(side, max(1000, side.count // 4))
            print("w", end="", flush=True)
    runs: dict[str, list[dict[str, float]]] = {side.name: [] for side in sides}
    extra: dict[str, list[dict[str, Any]]] = {side.name: [] for side in sides}
    for _ in range(reps):
        for side in sides:
            result = run_peer_side(side)
            runs[side.name].append(summarize(result))
            extra[side.name].append(details(result))
            print(".", end="", flush=True)
    print()
    for name, side_details in extra.items():  # a typed-payload miss is a broken benchmark, not a slow one
        if any(d.get("untyped") for d in side_details):
            raise RuntimeError(f"{name}: some messages came without a typed NodeHealth payload: {side_details}")
    medians = {
        name: {m: statistics.median(run[m] for run in side_runs) for m in METRICS} for name, side_runs in runs.items()
    }
    counts = {side.name: side.count for side in sides}
    scenarios: dict[str, Any] = {}
    for pair in pairs:
        left, right = medians[pair.left], medians[pair.right]
        ratios = {m: right[m] / left[m] if left[m] > 0 else math.nan for m in RATIO_METRICS}
        ratios = {m: r for m, r in ratios.items() if math.isfinite(r) or m == "msgs_per_s"}
        scenario: dict[str, Any] = {
            "title": pair.title,
            "sides": [pair.left, pair.right],
            "runs": {pair.left: runs[pair.left], pair.right: runs[pair.right]},
            "details": {pair.left: extra[pair.left], pair.right: extra[pair.right]},
            "medians": {pair.left: left, pair.right: right},
            "min_delivered_fraction": {
                name: min(run["delivered_fraction"] for run in runs[name]) for name in (pair.left, pair.right)
            },
            "ratios": ratios,
            "counts": {pair.left: counts[pair.left], pair.right: counts[pair.right]},
            "target": None,
        }
        if counts[pair.left] == counts[pair.right]:
            scenario["count_per_run"] = counts[pair.left]
        if pair.target is not None:
            metric, op, value = pair.target
            ratio = ratios[metric]
            met = ratio >= value if op == ">=" else ratio <= value
            scenario["target"] = {"metric": metric, "op": op, "value": value, "met": bool(met)}
        scenarios[pair.key] = scenario
    return scenarios


# -- scenarios -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Counts:
    """Messages per measured run, per kind of side."""

    nats: int
    sdk: int
    redis_pipelined: int
    redis_plain: int


QUICK_COUNTS: Final = Counts(nats=3_000, sdk=3_000, redis_pipelined=3_000, redis_plain=1_000)
FULL_COUNTS: Final = Counts(nats=250_000, sdk=250_000, redis_pipelined=250_000, redis_plain=40_000)


def missing(binary: str, module: str) -> str | None:
    """Why a peer cannot run here, or None when its server binary and Python client are both present."""
    reasons = []
    if shutil.which(binary) is None:
        reasons.append(f"{binary} not found on PATH (apt-get install {binary})")
    try:
        importlib.import_module(module)
    except ImportError as exc:
        reasons.append(f"Python module {module!r} not importable ({exc}; pip install '.[bench]')")
    return "; ".join(reasons) or None


def _sdk_sides(count: int, *, batch: bool) -> tuple[PeerSide, ...]:
    sdk = PeerSide("sdk", "exesdb", "bench_peers:sdk_typed_publisher", "bench_peers:sdk_health_subscriber", count)
    if not batch:
        return (sdk,)
    batched = PeerSide(
        "sdk_batch", "exesdb", "bench_peers:sdk_batch_publisher", "bench_peers:sdk_health_subscriber", count,
        {"batch_size": BATCH_SIZE},
    )  # fmt: skip
    return sdk, batched


def nats_group(counts: Counts, reps: int, warmup: bool) -> dict[str, Any]:
    pairs = (
        Pair("nats_vs_sdk", "nats_vs_sdk: NATS core vs SDK publish_message(NodeHealth)", "nats", "sdk",
             ("msgs_per_s", ">=", 1.5)),
        Pair("nats_vs_sdk_batch", f"nats_vs_sdk_batch: NATS core vs SDK publish_batch x{BATCH_SIZE}, informative",
             "nats", "sdk_batch", None),
        Pair("nats_msgpack_vs_sdk",
             "nats_msgpack_vs_sdk: NATS carrying the SDK envelope, decoded and typed, vs SDK, informative",
             "nats_msgpack", "sdk", None),
    )  # fmt: skip
    why = missing("nats-server", "nats")
    if why:
        return {p.key: {"title": p.title, "sides": [p.left, p.right], "skipped": why} for p in pairs}
    nats = PeerSide(
        "nats", "nats", "bench_peers:nats_publisher", "bench_peers:nats_subscriber", counts.nats,
        {"payload_bytes": PAYLOAD_BYTES, "flush_every": NATS_FLUSH_EVERY},
    )  # fmt: skip
    nats_msgpack = PeerSide(
        "nats_msgpack", "nats", "bench_peers:nats_publisher", "bench_peers:nats_subscriber", counts.nats,
        {"payload_bytes": PAYLOAD_BYTES, "flush_every": NATS_FLUSH_EVERY, "envelope": True}, {"decode": True},
    )  # fmt: skip
    sides = (nats, nats_msgpack, *_sdk_sides(counts.sdk, batch=True))
    scenarios = run_group("NATS group", sides, pairs, reps, warmup)
    return _with_sizes(scenarios)


def redis_group(counts: Counts, reps: int, warmup: bool) -> dict[str, Any]:
    pairs = (
        Pair("redis_vs_sdk",
             f"redis_vs_sdk: Redis pipelined x{REDIS_PIPELINE_CHUNK} vs SDK publish_message(NodeHealth)",
             "redis_pipelined", "sdk", ("msgs_per_s", ">=", 2.0)),
        Pair("redis_plain_vs_sdk", "redis_plain_vs_sdk: Redis publish per message vs SDK, informative",
             "redis_plain", "sdk", None),
    )  # fmt: skip
    why = missing("redis-server", "redis")
    if why:
        return {p.key: {"title": p.title, "sides": [p.left, p.right], "skipped": why} for p in pairs}
    plain = PeerSide(
        "redis_plain", "redis", "bench_peers:redis_publisher", "bench_peers:redis_subscriber", counts.redis_plain,
        {"payload_bytes": PAYLOAD_BYTES, "pipeline_chunk": None},
    )  # fmt: skip
    pipelined = PeerSide(
        "redis_pipelined", "redis", "bench_peers:redis_publisher", "bench_peers:redis_subscriber",
        counts.redis_pipelined, {"payload_bytes": PAYLOAD_BYTES, "pipeline_chunk": REDIS_PIPELINE_CHUNK},
    )  # fmt: skip
    scenarios = run_group("Redis group", (plain, pipelined, *_sdk_sides(counts.sdk, batch=False)), pairs, reps, warmup)
    return _with_sizes(scenarios)


def _with_sizes(scenarios: dict[str, Any]) -> dict[str, Any]:
    """Add each side's bytes per message (peers: the raw payload; SDK: topic plus envelope, from
    its publisher's stats) to the scenario and its title."""
    for scenario in scenarios.values():
        sizes = {
            name: statistics.median(d["bytes_per_msg"] for d in scenario["details"][name]) for name in scenario["sides"]
        }
        scenario["bytes_per_msg"] = sizes
        same_count = "count_per_run" in scenario
        facts = [
            f"{name} {size:.0f} B" + ("" if same_count else f" x {scenario['counts'][name]:,}")
            for name, size in sizes.items()
        ]
        scenario["title"] += " [" + ", ".join(facts) + "]"
    return scenarios


def scenarios(*, quick: bool, reps: int) -> dict[str, dict[str, Any]]:
    """Every scenario, measured here: complete dicts in ``harness.render``'s format, or
    ``{"title", "sides", "skipped"}`` for a peer that is not installed."""
    counts = QUICK_COUNTS if quick else FULL_COUNTS
    reps = 1 if quick else reps
    return {**nats_group(counts, reps, not quick), **redis_group(counts, reps, not quick)}


# -- versions, main --------------------------------------------------------------------------------


def _server_version(binary: str) -> str | None:
    path = shutil.which(binary)
    if path is None:
        return None
    try:
        done = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    text = (done.stdout or done.stderr).strip()
    match = re.search(r"\bv=?(\d+\.\d+\.\d+)", text)  # "Redis server v=7.0.15 ...", "nats-server: v2.9.10"
    return match.group(1) if match else text or "unknown"


def _package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def peer_versions() -> dict[str, str | None]:
    """Server and client versions of the peers (None: not installed)."""
    return {
        "redis_server": _server_version("redis-server"),
        "nats_server": _server_version("nats-server"),
        "redis_py": _package_version("redis"),
        "hiredis": _package_version("hiredis"),
        "nats_py": _package_version("nats-py"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=9, help="interleaved repetitions per side (default 9)")
    parser.add_argument("--quick", action="store_true", help="tiny counts, 1 repetition, no warm-up: a smoke run")
    parser.add_argument("--json-out", type=Path, help="JSON file (default benchmarks/results/peers-<UTC>.json)")
    args = parser.parse_args(argv)
    if args.reps < 1:
        parser.error("--reps must be at least 1")

    handle_exits()
    atexit.register(kill_servers)  # runs first (atexit is last in, first out)

    counts = QUICK_COUNTS if args.quick else FULL_COUNTS
    reps = 1 if args.quick else args.reps
    started = time.monotonic()
    report: dict[str, Any] = {
        "environment": environment(),
        "peers": peer_versions(),
        "config": {
            "quick": args.quick,
            "reps": reps,
            "warmup_run_per_side": not args.quick,
            "counts": asdict(counts),
            "payload_bytes": PAYLOAD_BYTES,
            "nats_flush_every": NATS_FLUSH_EVERY,
            "redis_pipeline_chunk": REDIS_PIPELINE_CHUNK,
            "batch_size": BATCH_SIZE,
            "idle_timeout_s": IDLE_TIMEOUT,
        },
        "scenarios": {},
    }
    print(f"running (w = warm-up, . = measured run), {reps} rep(s):", flush=True)
    try:
        report["scenarios"] = scenarios(quick=args.quick, reps=reps)
    finally:
        kill_servers()
        kill_children()
    report["elapsed_seconds"] = round(time.monotonic() - started, 1)

    print()
    print(render(report, "exesdb-pubsub vs peers"))
    peers = report["peers"]
    print(
        f"peers: redis-server {peers['redis_server']} | nats-server {peers['nats_server']} | "
        f"redis-py {peers['redis_py']} (hiredis {peers['hiredis']}) | nats-py {peers['nats_py']}"
    )
    write_report(report, args.json_out, "peers")
    return 0


if __name__ == "__main__":
    sys.exit(main())
