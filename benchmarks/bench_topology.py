"""Topology benchmark: fan-out, fan-in, a stalled subscriber, ten instances, the emitter pool, broker memory.

Run it (about 5 minutes with the default 5 repetitions; ``--quick`` is a smoke run of well under a minute)::

    /work/venv/bin/python benchmarks/bench_topology.py [--reps 5] [--quick] [--json-out PATH] [--only NAME]

It prints a table and writes JSON to ``benchmarks/results/topology-<UTC timestamp>.json``
(git-ignored) unless ``--json-out`` names another file. Built on :mod:`harness`.

Scenarios, each two sides measured in the same run:

- ``fanout_1`` (reference), ``fanout_10``, ``fanout_50``: one raw publisher of 100-byte
  frames, as fast as it goes, to 1, 10 or 50 raw SUB sockets, through the bare ``zmq.proxy``
  and through ``exesdb-broker``. The sockets live in up to 5 subscriber processes (1 x 1,
  5 x 2, 5 x 10 sockets), each process reading its sockets round-robin. Reported: total
  deliveries per second (every socket's messages over the span from the first delivery to
  the last, on the system-wide monotonic clock), the mean and lowest per-subscriber
  delivered fraction, and the broker's CPU seconds per million deliveries and per million
  published messages (``/proc`` deltas from the start signal to the last result, in 10 ms
  ticks, so meaningless in ``--quick``). Target exesdb/bare
  deliveries/s >= 0.95 for 10 and 50; the 1-subscriber run (the core benchmark's
  ``raw_throughput``, which holds that target) is the reference the JSON's
  ``vs_one_subscriber`` scaling is computed from. ``--quick`` uses 2 and 5 subscribers under
  the same keys. Counts are chosen so that subscribers mostly keep up (each socket queues up
  to the SDK's RCVHWM of 100,000); where the broker drops for one (on two cores its I/O
  thread can be starved while the proxy fills the 10,000-message pipe), the delivered
  fraction shows it.
- ``fanin_4``: four raw publishers, as fast as they go, to one raw subscriber, bare vs
  exesdb; target >= 0.95. Four unpaced publishers outrun one Python subscriber many times
  over, so both brokers drop for it and it receives about a third: the figure is the
  subscriber's intake while the broker merges and sheds, not a lossless rate.
- ``slow_subscriber``: exesdb only. Three raw subscribers reading, against the same three
  plus a fourth that connects, subscribes and never reads. Metric: the readers' mean
  msgs/s; target stalled/all >= 0.9. The publisher is unpaced, so the readers drop too
  (their delivered fraction is shown). The stalled subscriber drains its queue after the
  run and its count is in the JSON (``stalled_received_fraction``): below 1 means its
  queues filled and the broker dropped for it instead of slowing the others. It takes
  about 150,000 messages to fill them, so ``--quick`` never gets there.
- ``mixed_ten_instances``: two SDK publisher processes publishing round-robin over the ten
  instances, against the same count on ``metrics`` only; one SDK ``Subscriber`` subscribed
  to all ten instances on both sides. No target: it shows what multiplexing by prefix costs.
- ``emitter_pool``: an ``EmitterPool`` (``HealthConfig()`` defaults, health gating on)
  delivering store events, published as one ``Events`` message per event, to a trivial
  function, against a plain ``Subscriber`` calling the same function per event. No target.
- ``broker_rss``: exesdb-broker RSS 0.5 s after start, and with 200 SUB sockets (SDK
  subscribers, one process) connected and confirmed, subscribed to the ten instances in
  turn. Absolute target: idle <= 40 MB; the 200-subscriber figure is reported.

Method: every role runs in its own process (broker: a subprocess; the others: spawned
processes). Raw subscribers are primed: until the start signal the publisher sends a
priming message on a sub-topic every millisecond, and a subscriber process reports ready
once every one of its sockets has received one, so every subscription is in place at the
broker before the first measured message; priming messages are not counted. SDK roles use
the SDK's own readiness (``Publisher()`` returns when connected, ``subscribe()`` once the
broker has confirmed). Each scenario runs one warm-up per side, then ``--reps`` runs
interleaved side by side; the table shows medians and the ratio of medians (right / left),
which the targets use. Under the table, and in the JSON as ``paired_ratios``, is the median
of the per-repetition ratios (run i of one side against run i of the other, back to back),
which load coming and going on a shared machine disturbs less: when the two disagree, the
run was noisy. Absolute numbers drift; compare ratios. Every wait has a deadline; brokers
and children are stopped on exit.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any, Final

import zmq
from exesdb_sdk import Instance, Publisher, ReceiveTimeoutError, Subscriber
from exesdb_sdk.broadcast import broadcast_store_events
from exesdb_sdk.health import EmitterPool, HealthConfig
from exesdb_sdk.messages import Events
from exesdb_sdk.subscriber import DEFAULT_RCVHWM
from harness import (
    FIRST_MESSAGE_TIMEOUT,
    HWM,
    IDLE_TIMEOUT,
    RAW_BODY_SIZE,
    SDK_DATA,
    SEND_TIMEOUT_MS,
    SPAWN,
    TOPIC,
    BrokerHandle,
    Child,
    environment,
    handle_exits,
    interleave,
    make_body,
    medians_of,
    process_cpu_seconds,
    process_rss_mb,
    render,
    spawn,
    started_broker,
    wait_for_subscription,
    write_report,
)

TITLE: Final = "exesdb-pubsub topology benchmark"
PRIME_TOPIC: Final = TOPIC + b"/prime"
"""Priming messages: under ``TOPIC``'s prefix, so a subscriber's one subscription gets them."""
PRIME_BODY: Final = b"prime"
PRIME_PERIOD: Final = 0.001
BATCH: Final = 256
"""Messages a multi-socket subscriber reads from one socket before turning to the next."""
MAX_SOCKETS_PER_PROCESS: Final = 10
MAX_SUBSCRIBER_PROCESSES: Final = 5
STALL_LIMIT: Final = 600.0
"""The longest a stalled or idle role waits to be told to stop (the run ends it much sooner)."""
DRAIN_LIMIT: Final = 10.0
POOL_STOP_GRACE: Final = 0.2
SETTLE: Final = 0.5
"""Seconds the broker is left alone before an RSS reading."""
STORE: Final = "bench"
SELECTOR: Final = "$all"
STORE_EVENT: Final[dict[str, Any]] = {
    "event_id": "0f8fad5b-d9cb-469f-a165-70867728950e",
    "event_type": "OrderPlaced",
    "stream_id": "order-42",
    "version": 1,
    "data": {"order": 42, "amount": 9.5},
    "metadata": {},
}
INSTANCE_NAMES: Final = [instance.alias for instance in Instance]
RSS_TARGET_MB: Final = 40.0
BROKER_RATIO_TARGET: Final = 0.95

Summary = dict[str, float]


# -- roles (each runs in its own spawned process) --------------------------------------------------


def priming_publisher(
    *, ready: Callable[[], None], go: Event, frontend: str, count: int, body_size: int
) -> dict[str, Any]:
    """Send a priming message every millisecond until ``go``, then ``count`` pre-packed
    messages on ``TOPIC`` as fast as possible (the harness's raw publisher, primed)."""
    body = make_body(body_size).plain
    context = zmq.Context()
    socket = context.socket(zmq.XPUB)
    socket.setsockopt(zmq.XPUB_NODROP, 1)  # as the SDK Publisher
    socket.setsockopt(zmq.SNDHWM, HWM)
    socket.setsockopt(zmq.SNDTIMEO, SEND_TIMEOUT_MS)
    try:
        socket.connect(frontend)
        wait_for_subscription(socket, TOPIC, FIRST_MESSAGE_TIMEOUT)
        ready()
        deadline = time.monotonic() + FIRST_MESSAGE_TIMEOUT * 3
        while not go.wait(PRIME_PERIOD):
            if time.monotonic() > deadline:
                raise TimeoutError("never told to start")
            socket.send_multipart((PRIME_TOPIC, PRIME_BODY))
        send, more = socket.send, zmq.SNDMORE
        start = time.perf_counter()
        for _ in range(count):
            send(TOPIC, more)
            send(body)
        elapsed = time.perf_counter() - start
    finally:
        socket.close(linger=SEND_TIMEOUT_MS)
        context.term()
    return {"sent": count, "send_seconds": elapsed}


def _prime(sockets: list[zmq.Socket[Any]]) -> None:
    """Wait until every socket has received something (a priming message)."""
    poller = zmq.Poller()
    for socket in sockets:
        poller.register(socket, zmq.POLLIN)
    waiting = set(sockets)
    deadline = time.monotonic() + FIRST_MESSAGE_TIMEOUT
    while waiting:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"{len(waiting)} of {len(sockets)} sockets got no priming message")
        for socket, _ in poller.poll(max(1, int(remaining * 1000))):
            with_more = True
            while with_more:
                try:
                    socket.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    with_more = False
            waiting.discard(socket)


def _drain(socket: zmq.Socket[Any]) -> int:
    """Read what is queued (bounded in time); the count of ``TOPIC`` messages."""
    got, deadline = 0, time.monotonic() + DRAIN_LIMIT
    while time.monotonic() < deadline:
        try:
            if socket.recv_multipart(zmq.NOBLOCK)[0] == TOPIC:
                got += 1
        except zmq.Again:
            if not socket.poll(100):
                break
    return got


def raw_sockets_subscriber(
    *,
    ready: Callable[[], None],
    backend: str,
    sockets: int,
    count: int,
    stall: bool = False,
    stop: Event | None = None,
) -> dict[str, Any]:
    """``sockets`` raw SUB sockets on ``TOPIC``, primed, then each read until ``count`` messages
    (or ``IDLE_TIMEOUT`` with nothing on any). With ``stall``, read nothing until ``stop``,
    then count what was queued."""
    context = zmq.Context()
    socks: list[zmq.Socket[Any]] = []
    try:
        for _ in range(sockets):
            socket = context.socket(zmq.SUB)
            socket.setsockopt(zmq.RCVHWM, DEFAULT_RCVHWM)  # as the SDK Subscriber
            socket.setsockopt(zmq.LINGER, 0)
            socket.connect(backend)
            socket.setsockopt(zmq.SUBSCRIBE, TOPIC)
            socks.append(socket)
        _prime(socks)
        ready()
        if stall:
            if stop is None or not stop.wait(STALL_LIMIT):
                raise TimeoutError("never told to stop")
            return {"received": [_drain(s) for s in socks]}
        return _read_sockets(socks, count)
    finally:
        for socket in socks:
            socket.close()
        context.term()


def _read_sockets(socks: list[zmq.Socket[Any]], count: int) -> dict[str, Any]:
    """Read every socket round-robin, ``BATCH`` at a time; per socket: messages, the clock at
    the end of its first and last batch, and how many the first batch held."""
    n = len(socks)
    poller = zmq.Poller()
    index = {}
    for i, socket in enumerate(socks):
        poller.register(socket, zmq.POLLIN)
        index[socket] = i
    received, first, last, first_batch = [0] * n, [0] * n, [0] * n, [0] * n
    clock, again, noblock, topic = time.monotonic_ns, zmq.Again, zmq.NOBLOCK, TOPIC
    timeout_ms, open_sockets = int(FIRST_MESSAGE_TIMEOUT * 1000), n
    while open_sockets:
        events = poller.poll(timeout_ms)
        if not events:
            break
        for socket, _ in events:
            recv, got = socket.recv_multipart, 0
            try:
                for _ in range(BATCH):
                    if recv(noblock)[0] == topic:
                        got += 1
            except again:
                pass
            if not got:
                continue
            i, now = index[socket], clock()
            if not received[i]:
                first[i], first_batch[i] = now, got
                timeout_ms = int(IDLE_TIMEOUT * 1000)
            received[i] += got
            last[i] = now
            if received[i] >= count:
                poller.unregister(socket)
                open_sockets -= 1
    return {"received": received, "first_ns": first, "last_ns": last, "first_batch": first_batch}


def sdk_instances_publisher(
    *, ready: Callable[[], None], go: Event, frontend: str, count: int, instances: list[str]
) -> dict[str, Any]:
    """Publish ``count`` envelopes with ``Publisher.publish``, cycling through ``instances``."""
    with Publisher(frontend, node="bench", linger=SEND_TIMEOUT_MS / 1000) as pub:
        ready()
        if not go.wait(FIRST_MESSAGE_TIMEOUT * 3):
            raise TimeoutError("never told to start")
        publish, k = pub.publish, len(instances)
        start = time.perf_counter()
        for i in range(count):
            publish(instances[i % k], "bench", "NodeHealth", SDK_DATA)
        elapsed = time.perf_counter() - start
    return {"sent": count, "send_seconds": elapsed}


def sdk_all_subscriber(*, ready: Callable[[], None], backend: str, count: int) -> dict[str, Any]:
    """Subscribe to all ten instances; receive up to ``count`` of the benchmark's envelopes
    (the broker's own messages are not counted)."""
    received, first, last = 0, 0, 0
    with Subscriber(backend) as sub:
        sub.subscribe()  # all ten instances, confirmed by the broker
        ready()
        recv, clock = sub.recv, time.monotonic_ns
        timeout = FIRST_MESSAGE_TIMEOUT
        try:
            while received < count:
                if recv(timeout=timeout).src == "bench":
                    last = clock()
                    if not received:
                        first, timeout = last, IDLE_TIMEOUT
                    received += 1
        except ReceiveTimeoutError:
            pass
        gaps = sub.stats.gaps
    return {"received": received, "first_ns": first, "last_ns": last, "gaps": gaps}


class Tally:
    """The trivial subscriber function of ``emitter_pool``: counts events and stamps the first
    and last; sets ``done`` at ``count``."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.n = 0
        self.first = 0
        self.last = 0
        self.done = threading.Event()

    def __call__(self, event: dict[str, Any]) -> None:
        now = time.monotonic_ns()
        if not self.n:
            self.first = now
        self.n += 1
        self.last = now
        if self.n >= self.count:
            self.done.set()

    def wait(self) -> None:
        """Until ``count`` events, ``FIRST_MESSAGE_TIMEOUT`` without any, or ``IDLE_TIMEOUT`` without progress."""
        started = progress_at = time.monotonic()
        seen = 0
        while not self.done.wait(0.05):
            now = time.monotonic()
            if self.n != seen:
                seen, progress_at = self.n, now
            elif (seen == 0 and now - started > FIRST_MESSAGE_TIMEOUT) or (seen and now - progress_at > IDLE_TIMEOUT):
                return

    def result(self) -> dict[str, Any]:
        return {"received": self.n, "first_ns": self.first, "last_ns": self.last}


def store_events_publisher(*, ready: Callable[[], None], go: Event, frontend: str, count: int) -> dict[str, Any]:
    """Publish ``count`` ``Events`` messages of one store event each, with ``broadcast_store_events``."""
    with Publisher(frontend, node="bench", linger=SEND_TIMEOUT_MS / 1000) as pub:
        ready()
        if not go.wait(FIRST_MESSAGE_TIMEOUT * 3):
            raise TimeoutError("never told to start")
        start = time.perf_counter()
        for _ in range(count):
            broadcast_store_events(STORE, SELECTOR, [STORE_EVENT], publisher=pub)
        elapsed = time.perf_counter() - start
    return {"sent": count, "send_seconds": elapsed}


def pool_receiver(*, ready: Callable[[], None], frontend: str, backend: str, count: int) -> dict[str, Any]:
    """An ``EmitterPool`` with ``HealthConfig()`` defaults delivering to a :class:`Tally`."""
    tally = Tally(count)
    with EmitterPool(config=HealthConfig(), frontend=frontend, backend=backend) as pool:
        worker = pool.add(STORE, SELECTOR, tally)
        ready()
        tally.wait()
        stats = worker.stats
        # Let the last delivery's completion reach the pool's loop before stopping: stopped
        # while a delivery is in flight, a worker can miss its cancellation on Python 3.11
        # (asyncio.wait_for) and the pool's stop then waits out its 10 s timeout.
        time.sleep(POOL_STOP_GRACE)
    return {**tally.result(), "dropped": stats.dropped, "failures": stats.failures}


def plain_receiver(*, ready: Callable[[], None], backend: str, count: int) -> dict[str, Any]:
    """A plain ``Subscriber`` calling a :class:`Tally` for each event of each ``Events`` message."""
    tally = Tally(count)
    with Subscriber(backend) as sub:
        sub.subscribe("events", f"{STORE}:{SELECTOR}")
        ready()
        timeout = FIRST_MESSAGE_TIMEOUT
        try:
            while tally.n < count:
                payload = sub.recv(timeout=timeout).payload
                timeout = IDLE_TIMEOUT
                if isinstance(payload, Events):
                    for event in payload.events:
                        tally(event)
        except ReceiveTimeoutError:
            pass
    return {**tally.result(), "dropped": 0, "failures": 0}


def rss_subscribers(*, ready: Callable[[], None], backend: str, sockets: int, stop: Event) -> dict[str, Any]:
    """``sockets`` SDK subscribers on one context, the i-th subscribed to the (i mod 10)-th
    instance, each confirmed by the broker; held until ``stop``."""
    context: zmq.Context[Any] = zmq.Context()
    subs: list[Subscriber] = []
    try:
        for i in range(sockets):
            sub = Subscriber(backend, context=context)
            subs.append(sub)
            sub.subscribe(INSTANCE_NAMES[i % len(INSTANCE_NAMES)])
        ready()
        if not stop.wait(STALL_LIMIT):
            raise TimeoutError("never told to stop")
    finally:
        for sub in subs:
            sub.close()
        context.term()
    return {"subscribers": len(subs)}


# -- one run -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Member:
    """One role of a run. ``kind``: "publisher" (its result comes first), "subscriber", or
    "late" (returns only once the others are done and ``stop`` is set)."""

    role: str
    kwargs: dict[str, Any]
    kind: str


Build = Callable[[BrokerHandle, Event, Event], list[Member]]


def run_topology(broker: str, build: Build, timeout: float) -> dict[str, Any]:
    """One run: a fresh broker, every member spawned and ready, then ``go``; the members'
    results by kind and the broker's CPU seconds from ``go`` to the last non-late result."""
    with started_broker(broker) as handle:
        go, stop = SPAWN.Event(), SPAWN.Event()
        members = build(handle, go, stop)
        children: list[tuple[Member, Child]] = []
        try:
            for member in members:
                children.append((member, spawn(f"bench_topology:{member.role}", member.kwargs)))
            for _, child in children:
                child.expect("ready", FIRST_MESSAGE_TIMEOUT * 2)
            cpu_before = process_cpu_seconds(handle.pid)
            go.set()
            results: dict[str, list[dict[str, Any]]] = {"publisher": [], "subscriber": [], "late": []}
            for kind in ("publisher", "subscriber"):
                for member, child in children:
                    if member.kind == kind:
                        results[kind].append(child.expect("result", timeout))
            cpu_seconds = process_cpu_seconds(handle.pid) - cpu_before
            stop.set()
            for member, child in children:
                if member.kind == "late":
                    results["late"].append(child.expect("result", timeout))
        finally:
            stop.set()
            for _, child in children:
                child.stop()
    return {**results, "broker_cpu_s": cpu_seconds}


def subscriber_layout(subscribers: int) -> tuple[int, int]:
    """(processes, sockets per process) for a fan-out to ``subscribers`` sockets."""
    processes = min(subscribers, MAX_SUBSCRIBER_PROCESSES)
    while subscribers % processes or subscribers // processes > MAX_SOCKETS_PER_PROCESS:
        processes += 1
    return processes, subscribers // processes


def fanout_build(subscribers: int, count: int) -> Build:
    processes, per_process = subscriber_layout(subscribers)

    def build(handle: BrokerHandle, go: Event, stop: Event) -> list[Member]:
        pub = {"frontend": handle.frontend, "go": go, "count": count, "body_size": RAW_BODY_SIZE}
        sub = {"backend": handle.backend, "sockets": per_process, "count": count}
        return [Member("priming_publisher", pub, "publisher")] + [
            Member("raw_sockets_subscriber", sub, "subscriber") for _ in range(processes)
        ]

    return build


def _socket_rows(results: list[dict[str, Any]]) -> list[tuple[int, int, int, int]]:
    """(received, first_ns, last_ns, first_batch) of every socket of every subscriber process."""
    rows: list[tuple[int, int, int, int]] = []
    for result in results:
        rows.extend(zip(result["received"], result["first_ns"], result["last_ns"], result["first_batch"], strict=True))
    return rows


def _rate(rows: list[tuple[int, int, int, int]]) -> float:
    """Deliveries per second over the span from the earliest first batch to the latest last one
    (the earliest socket's first batch falls before the span and is not counted)."""
    live = [row for row in rows if row[0]]
    if not live:
        return 0.0
    start = min(live, key=lambda row: row[1])
    span = (max(row[2] for row in live) - start[1]) / 1e9
    total = sum(row[0] for row in live) - start[3]
    return total / span if span > 0 and total > 0 else 0.0


def _publish_rate(publishers: list[dict[str, Any]]) -> float:
    return float(sum(p["sent"] / p["send_seconds"] for p in publishers if p["send_seconds"] > 0))


def deliveries_summary(run: dict[str, Any]) -> Summary:
    """Fan-out and fan-in figures: total deliveries/s, delivered fractions, broker CPU."""
    rows = _socket_rows(run["subscriber"])
    sent = sum(p["sent"] for p in run["publisher"])
    fractions = [row[0] / sent for row in rows]
    deliveries = sum(row[0] for row in rows)
    return {
        "deliveries_per_s": _rate(rows),
        "delivered_fraction": statistics.fmean(fractions),
        "lowest_delivered_fraction": min(fractions),
        "broker_cpu_s_per_M_deliveries": run["broker_cpu_s"] / deliveries * 1e6 if deliveries else math.nan,
        "broker_cpu_s_per_M_published": run["broker_cpu_s"] / sent * 1e6,
        "broker_cpu_s": run["broker_cpu_s"],
        "deliveries": float(deliveries),
        "publish_msgs_per_s": _publish_rate(run["publisher"]),
    }


def readers_summary(run: dict[str, Any]) -> Summary:
    """The reading subscribers' mean msgs/s (each over its own span) and delivered fractions."""
    rows = _socket_rows(run["subscriber"])
    sent = sum(p["sent"] for p in run["publisher"])
    fractions = [row[0] / sent for row in rows]
    summary: Summary = {
        "readers_mean_msgs_per_s": statistics.fmean(_rate([row]) for row in rows),
        "readers_delivered_fraction": statistics.fmean(fractions),
        "readers_lowest_delivered_fraction": min(fractions),
        "broker_cpu_s_per_M_deliveries": run["broker_cpu_s"] / max(1, sum(r[0] for r in rows)) * 1e6,
        "broker_cpu_s": run["broker_cpu_s"],
        "publish_msgs_per_s": _publish_rate(run["publisher"]),
    }
    stalled = [n for late in run["late"] for n in late["received"]]
    if stalled:
        summary["stalled_received_fraction"] = stalled[0] / sent
    return summary


def single_receiver_summary(run: dict[str, Any]) -> Summary:
    """One receiver's msgs (or events) per second from its first to its last, and its fraction."""
    (result,) = run["subscriber"]
    sent = sum(p["sent"] for p in run["publisher"])
    received, span = result["received"], (result["last_ns"] - result["first_ns"]) / 1e9
    summary: Summary = {
        "msgs_per_s": (received - 1) / span if received > 1 and span > 0 else 0.0,
        "delivered_fraction": received / sent,
        "publish_msgs_per_s": _publish_rate(run["publisher"]),
    }
    for extra in ("gaps", "dropped"):
        if extra in result:
            summary[extra] = float(result[extra])
    return summary


# -- scenarios ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Plan:
    quick: bool
    reps: int
    warmup: bool
    fanout: tuple[int, int, int]
    fanout_counts: tuple[int, int, int]
    fanin_count: int
    slow_count: int
    mixed_count: int
    emitter_count: int
    rss_subscribers: int


@dataclass(frozen=True, slots=True)
class Way:
    """One side of a scenario: its name, broker, members and how a run is summarised."""

    name: str
    broker: str
    build: Callable[[int], Build]
    summarize: Callable[[dict[str, Any]], Summary]


def _timeout(count: int) -> float:
    return 60.0 + count / 5_000


def _met(value: float, op: str, limit: float) -> bool:
    return value >= limit if op == ">=" else value <= limit


def assemble(
    title: str,
    sides: list[str],
    runs: dict[str, list[Summary]],
    ratios: list[str],
    target: tuple[str, str, float] | None,
    extras: list[str] = [],  # noqa: B006 - read only
) -> dict[str, Any]:
    """A scenario dict for :func:`harness.render`: medians of the metrics both sides have (the
    others, in ``extras``, as medians of the side that has them), ratios, target."""
    left, right = sides
    common = [m for m in runs[left][0] if m in runs[right][0] and m not in extras]
    shown = {name: [{m: run[m] for m in common} for run in side_runs] for name, side_runs in runs.items()}
    medians = medians_of(shown)
    ratio_of = {m: medians[right][m] / medians[left][m] for m in ratios if m in common and medians[left][m]}
    scenario: dict[str, Any] = {
        "title": title,
        "sides": sides,
        "runs": runs,
        "medians": medians,
        "ratios": ratio_of,
        "target": None,
    }
    # Runs i of both sides ran back to back: the median of their ratios is less sensitive to
    # load that comes and goes on a shared machine than the ratio of medians (the table's).
    scenario["paired_ratios"] = {
        m: statistics.median(b[m] / a[m] for a, b in zip(shown[left], shown[right], strict=False))
        for m in ratio_of
        if all(run[m] for run in shown[left])
    }
    if target is not None:
        metric, op, value = target
        ratio = ratio_of.get(metric, math.nan)  # nan (never met) when the left side measured nothing
        scenario["target"] = {"metric": metric, "op": op, "value": value, "met": _met(ratio, op, value)}
    for extra in extras:
        scenario[extra] = {
            name: statistics.median(run[extra] for run in side_runs)
            for name, side_runs in runs.items()
            if extra in side_runs[0]
        }
    return scenario


def compare(plan: Plan, title: str, ways: tuple[Way, Way], count: int) -> dict[str, list[Summary]]:
    """A warm-up run per side (a quarter of ``count``), then ``plan.reps`` interleaved runs."""
    print(f"  {title}: ", end="", flush=True)
    by_name = {way.name: way for way in ways}

    def run(name: str, n: int) -> Summary:
        way = by_name[name]
        return way.summarize(run_topology(way.broker, way.build(n), _timeout(count)))

    return interleave(list(by_name), run, count, warmup=plan.warmup, reps=plan.reps)


def fanout(plan: Plan, subscribers: int, count: int) -> dict[str, Any]:
    processes, per_process = subscriber_layout(subscribers)

    def ways(broker: str) -> Way:
        return Way(broker, broker, lambda n: fanout_build(subscribers, n), deliveries_summary)

    layout = (
        f"{processes} process{'es' if processes > 1 else ''} x {per_process} socket{'s' if per_process > 1 else ''}"
    )
    title = f"fan-out 1 -> {subscribers} raw SUB ({layout})" + (", reference" if subscribers == 1 else "")
    runs = compare(plan, title, (ways("bare"), ways("exesdb")), count)
    # the 1-subscriber run is the reference the others scale from (the core benchmark holds its target)
    target = ("deliveries_per_s", ">=", BROKER_RATIO_TARGET) if subscribers > 1 else None
    ratios = ["deliveries_per_s", "broker_cpu_s_per_M_deliveries"]
    scenario = assemble(title, ["bare", "exesdb"], runs, ratios, target)
    lowest = {name: min(run["lowest_delivered_fraction"] for run in side) for name, side in runs.items()}
    return {
        **scenario,
        "count_per_run": count,
        "body_bytes": RAW_BODY_SIZE,
        "subscribers": subscribers,
        "subscriber_processes": processes,
        "sockets_per_process": per_process,
        "min_delivered_fraction": lowest,
    }


def fanin(plan: Plan, publishers: int = 4) -> dict[str, Any]:
    count = plan.fanin_count

    def build(n: int) -> Build:
        def members(handle: BrokerHandle, go: Event, stop: Event) -> list[Member]:
            pub = {"frontend": handle.frontend, "go": go, "count": n, "body_size": RAW_BODY_SIZE}
            sub = {"backend": handle.backend, "sockets": 1, "count": n * publishers}
            return [Member("priming_publisher", pub, "publisher") for _ in range(publishers)] + [
                Member("raw_sockets_subscriber", sub, "subscriber")
            ]

        return members

    title = f"fan-in {publishers} raw publishers -> 1 raw SUB"
    ways = (Way("bare", "bare", build, deliveries_summary), Way("exesdb", "exesdb", build, deliveries_summary))
    runs = compare(plan, title, ways, count)
    ratios = ["deliveries_per_s", "broker_cpu_s_per_M_deliveries"]
    scenario = assemble(title, ["bare", "exesdb"], runs, ratios, ("deliveries_per_s", ">=", BROKER_RATIO_TARGET))
    lowest = {name: min(run["lowest_delivered_fraction"] for run in side) for name, side in runs.items()}
    return {
        **scenario,
        "count_per_run": count * publishers,
        "body_bytes": RAW_BODY_SIZE,
        "publishers": publishers,
        "min_delivered_fraction": lowest,
    }


def slow_subscriber(plan: Plan, readers: int = 3) -> dict[str, Any]:
    count = plan.slow_count

    def build(stalled: bool) -> Callable[[int], Build]:
        def with_count(n: int) -> Build:
            def members(handle: BrokerHandle, go: Event, stop: Event) -> list[Member]:
                pub = {"frontend": handle.frontend, "go": go, "count": n, "body_size": RAW_BODY_SIZE}
                sub = {"backend": handle.backend, "sockets": 1, "count": n}
                found = [Member("priming_publisher", pub, "publisher")]
                found += [Member("raw_sockets_subscriber", sub, "subscriber") for _ in range(readers)]
                if stalled:
                    late = {**sub, "stall": True, "stop": stop}
                    found.append(Member("raw_sockets_subscriber", late, "late"))
                return found

            return members

        return with_count

    title = f"slow subscriber: {readers} readers, + 1 stalled (exesdb)"
    ways = (
        Way("all reading", "exesdb", build(False), readers_summary),
        Way("one stalled", "exesdb", build(True), readers_summary),
    )
    runs = compare(plan, title, ways, count)
    ratios = ["readers_mean_msgs_per_s", "broker_cpu_s_per_M_deliveries"]
    target = ("readers_mean_msgs_per_s", ">=", 0.9)
    scenario = assemble(title, ["all reading", "one stalled"], runs, ratios, target, ["stalled_received_fraction"])
    lowest = {name: min(run["readers_lowest_delivered_fraction"] for run in side) for name, side in runs.items()}
    return {
        **scenario,
        "count_per_run": count,
        "body_bytes": RAW_BODY_SIZE,
        "readers": readers,
        "stalled_rcvhwm": DEFAULT_RCVHWM,
        "min_delivered_fraction": lowest,
    }


def mixed_ten_instances(plan: Plan, publishers: int = 2) -> dict[str, Any]:
    count = plan.mixed_count

    def build(instances: list[str]) -> Callable[[int], Build]:
        def with_count(n: int) -> Build:
            def members(handle: BrokerHandle, go: Event, stop: Event) -> list[Member]:
                pub = {"frontend": handle.frontend, "go": go, "count": n, "instances": instances}
                sub = {"backend": handle.backend, "count": n * publishers}
                return [Member("sdk_instances_publisher", pub, "publisher") for _ in range(publishers)] + [
                    Member("sdk_all_subscriber", sub, "subscriber")
                ]

            return members

        return with_count

    title = f"SDK: {publishers} publishers -> 1 subscriber to all, 1 vs 10 instances"
    ways = (
        Way("single instance", "exesdb", build(["metrics"] * len(INSTANCE_NAMES)), single_receiver_summary),
        Way("ten instances", "exesdb", build(INSTANCE_NAMES), single_receiver_summary),
    )
    runs = compare(plan, title, ways, count)
    scenario = assemble(title, ["single instance", "ten instances"], runs, ["msgs_per_s"], None)
    return {**scenario, "count_per_run": count * publishers, "publishers": publishers, "sdk_data": SDK_DATA}


def emitter_pool(plan: Plan) -> dict[str, Any]:
    count = plan.emitter_count

    def build(receiver: str) -> Callable[[int], Build]:
        def with_count(n: int) -> Build:
            def members(handle: BrokerHandle, go: Event, stop: Event) -> list[Member]:
                pub = {"frontend": handle.frontend, "go": go, "count": n}
                sub: dict[str, Any] = {"backend": handle.backend, "count": n}
                if receiver == "pool_receiver":
                    sub["frontend"] = handle.frontend
                return [Member("store_events_publisher", pub, "publisher"), Member(receiver, sub, "subscriber")]

            return members

        return with_count

    title = "store events: plain Subscriber vs EmitterPool (gated)"
    ways = (
        Way("plain subscriber", "exesdb", build("plain_receiver"), single_receiver_summary),
        Way("emitter pool", "exesdb", build("pool_receiver"), single_receiver_summary),
    )
    runs = compare(plan, title, ways, count)
    for side in runs.values():  # events, not messages: one event per message here
        for run in side:
            run["events_per_s"] = run.pop("msgs_per_s")
    scenario = assemble(title, ["plain subscriber", "emitter pool"], runs, ["events_per_s"], None)
    return {**scenario, "count_per_run": count, "events_per_message": 1, "health_config": "HealthConfig()"}


def broker_rss(plan: Plan) -> dict[str, Any]:
    """Both sides from one broker per repetition: idle first, then with the subscribers."""
    subscribers = plan.rss_subscribers
    title = f"exesdb-broker RSS: idle vs {subscribers} SUB subscribers"
    print(f"  {title}: ", end="", flush=True)
    busy = f"{subscribers} subscribers"
    runs: dict[str, list[Summary]] = {"idle": [], busy: []}
    for _ in range(plan.reps):
        with started_broker("exesdb") as handle:
            time.sleep(SETTLE)
            runs["idle"].append({"rss_mb": process_rss_mb(handle.pid)})
            stop = SPAWN.Event()
            child = spawn(
                "bench_topology:rss_subscribers", {"backend": handle.backend, "sockets": subscribers, "stop": stop}
            )
            try:
                child.expect("ready", _timeout(subscribers * 100))
                time.sleep(SETTLE)
                runs[busy].append({"rss_mb": process_rss_mb(handle.pid)})
                stop.set()
                child.expect("result", FIRST_MESSAGE_TIMEOUT)
            finally:
                stop.set()
                child.stop()
        print(".", end="", flush=True)
    print()
    scenario = assemble(title, ["idle", busy], runs, ["rss_mb"], None)
    idle = scenario["medians"]["idle"]["rss_mb"]
    scenario["target"] = {
        "metric": "rss_mb",
        "op": "<=",
        "value": RSS_TARGET_MB,
        "side": "idle",
        "met": _met(idle, "<=", RSS_TARGET_MB),
    }
    return {**scenario, "subscribers": subscribers}


SCENARIOS: Final = (
    "fanout_1",
    "fanout_10",
    "fanout_50",
    "fanin_4",
    "slow_subscriber",
    "mixed_ten_instances",
    "emitter_pool",
    "broker_rss",
)


def plan_for(*, quick: bool, reps: int) -> Plan:
    if quick:
        return Plan(
            quick=True, reps=1, warmup=False, fanout=(1, 2, 5), fanout_counts=(10_000, 5_000, 2_000),
            fanin_count=2_500, slow_count=5_000, mixed_count=2_500, emitter_count=1_000, rss_subscribers=200,
        )  # fmt: skip
    return Plan(
        quick=False, reps=reps, warmup=True, fanout=(1, 10, 50), fanout_counts=(150_000, 40_000, 20_000),
        fanin_count=50_000, slow_count=400_000, mixed_count=40_000, emitter_count=8_000, rss_subscribers=200,
    )  # fmt: skip


def scenarios(*, quick: bool, reps: int, only: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """Run every scenario (or those in ``only``); the scenario dicts by key, ready for :func:`harness.render`."""
    plan = plan_for(quick=quick, reps=reps)
    runners: dict[str, Callable[[], dict[str, Any]]] = {
        "fanout_1": lambda: fanout(plan, plan.fanout[0], plan.fanout_counts[0]),
        "fanout_10": lambda: fanout(plan, plan.fanout[1], plan.fanout_counts[1]),
        "fanout_50": lambda: fanout(plan, plan.fanout[2], plan.fanout_counts[2]),
        "fanin_4": lambda: fanin(plan),
        "slow_subscriber": lambda: slow_subscriber(plan),
        "mixed_ten_instances": lambda: mixed_ten_instances(plan),
        "emitter_pool": lambda: emitter_pool(plan),
        "broker_rss": lambda: broker_rss(plan),
    }
    done: dict[str, dict[str, Any]] = {}
    for name in SCENARIOS:
        if only is None or name in only:
            started = time.monotonic()
            done[name] = runners[name]()
            done[name]["elapsed_seconds"] = round(time.monotonic() - started, 1)
    reference = done.get("fanout_1")
    if reference:  # how total deliveries scale with the fan-out, per broker
        for name in ("fanout_10", "fanout_50"):
            if name in done:
                done[name]["vs_one_subscriber"] = {
                    side: done[name]["medians"][side]["deliveries_per_s"]
                    / reference["medians"][side]["deliveries_per_s"]
                    for side in done[name]["sides"]
                }
    return done


def notes(report: dict[str, Any]) -> list[str]:
    """Lines printed under the table: figures that are in the JSON but not in the table's columns."""
    found = report["scenarios"]
    lines = []
    for name, scenario in found.items():
        for metric, paired in scenario.get("paired_ratios", {}).items():
            lines.append(
                f"{name}: {metric} ratio of medians {scenario['ratios'][metric]:.3f}, "
                f"median of per-repetition ratios {paired:.3f}"
            )
            break  # the headline metric only
    for name in ("fanout_10", "fanout_50"):
        if "vs_one_subscriber" in found.get(name, {}):
            scaling = ", ".join(f"{side} {value:.2f}x" for side, value in found[name]["vs_one_subscriber"].items())
            lines.append(f"{name}: total deliveries/s vs 1 subscriber: {scaling}")
    stalled = found.get("slow_subscriber", {}).get("stalled_received_fraction", {})
    for side, fraction in stalled.items():
        lines.append(f"slow_subscriber ({side}): the stalled subscriber held {fraction:.3f} of the messages")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=5, help="interleaved repetitions per side (default 5)")
    parser.add_argument("--quick", action="store_true", help="tiny counts, small fan-out, 1 repetition: a smoke run")
    parser.add_argument("--json-out", type=Path, help="JSON file (default benchmarks/results/topology-<UTC>.json)")
    parser.add_argument("--only", action="append", choices=SCENARIOS, help="run only this scenario (repeatable)")
    args = parser.parse_args(argv)
    if args.reps < 1:
        parser.error("--reps must be at least 1")

    handle_exits()
    plan = plan_for(quick=args.quick, reps=args.reps)
    started = time.monotonic()
    report: dict[str, Any] = {
        "environment": environment(),
        "config": {
            "quick": plan.quick,
            "reps": plan.reps,
            "warmup_run_per_side": plan.warmup,
            "fanout_subscribers": list(plan.fanout),
            "fanout_counts": list(plan.fanout_counts),
            "fanin_count_per_publisher": plan.fanin_count,
            "slow_count": plan.slow_count,
            "mixed_count_per_publisher": plan.mixed_count,
            "emitter_events": plan.emitter_count,
            "rss_subscribers": plan.rss_subscribers,
            "idle_timeout_s": IDLE_TIMEOUT,
        },
        "scenarios": {},
    }
    print(f"running (w = warm-up, . = measured run), {plan.reps} rep(s):", flush=True)
    report["scenarios"] = scenarios(quick=args.quick, reps=args.reps, only=args.only)
    report["elapsed_seconds"] = round(time.monotonic() - started, 1)

    print()
    print(render(report, TITLE))
    for line in notes(report):
        print(line)
    write_report(report, args.json_out, "topology")
    return 0


if __name__ == "__main__":
    sys.exit(main())
