"""SDK benchmark: frame sizes over tcp and ipc, typed messages, batches and the asyncio client.

Run it (about 5 minutes with the default 5 repetitions; ``--quick`` is a smoke run of well
under a minute)::

    /work/venv/bin/python benchmarks/bench_sdk.py [--reps 5] [--quick] [--json-out PATH]
                                                  [--only NAME] [--profile DIR]

It prints a table and writes JSON to ``benchmarks/results/sdk-<UTC timestamp>.json`` (a
git-ignored directory) unless ``--json-out`` names another file. ``benchmarks/bench.py``
runs the same scenarios through :func:`scenarios`.

Scenarios, each a pair of sides measured in the same run (ratio = right side / left side):

- ``raw_sizes_<tcp|ipc>_<100|1024|10240>``: raw pyzmq publisher and subscriber (pre-packed
  envelopes of exactly 100 B, 1 KB and 10 KB, no decoding) through the bare ``zmq.proxy``
  (left) and through ``exesdb-broker`` (right), with 127.0.0.1 tcp ports or ipc files.
  Target exesdb/bare msgs/s >= 0.95 each.
- ``sdk_typed``: raw pyzmq publisher -> bare proxy -> raw subscriber (left) against
  ``Publisher.publish_message(NodeHealth(...))`` (one typed message built and validated per
  publish) -> ``exesdb-broker`` -> ``Subscriber.recv`` (decoding, and rebuilding the typed
  ``NodeHealth`` payload) (right). The raw body has the SDK body's length. Target >= 0.8
  (informative: it is the core benchmark's SDK target, for untyped publishes).
- ``sdk_batch``: raw 100 B frames (left, messages/s) against ``Publisher.publish_batch`` of
  100 envelopes of ~100 B each -> ``exesdb-broker`` -> ``Subscriber.recv``, which yields
  the envelopes one by one (right, envelopes/s). Target >= 1.0.
- ``coalesce_throughput``: ``Publisher.publish`` one message per call (``harness.SDK_DATA``)
  -> ``exesdb-broker`` -> ``Subscriber.recv``, with coalescing off (``coalesce=0``, left) and
  on (the default, 1 ms, right). Reported: msgs/s at the subscriber. No target.
- ``coalesce_latency_<1000|5000>``: the same pair paced at 1,000 and 5,000 msg/s, each message
  stamped with the publisher's monotonic clock and the latency taken at the subscriber (after
  decoding): p50/p99/p99.9 with coalescing off (left) and on (right). Target: on/off p99 <= 1.5
  (coalescing must not cost a paced publisher).
- ``sdk_asyncio``: the synchronous SDK pair (left) against ``AsyncPublisher`` ->
  ``exesdb-broker`` -> ``AsyncSubscriber`` (right), both publishing the same dict. No target.

Method (as ``benchmarks/bench_core.py``, through ``benchmarks/harness.py``): every role is its
own process, with a fresh broker per run; the subscriber subscribes first and the publisher
is let go once the path is confirmed. The rate is measured at the subscriber from its first
to its last message, next to the delivered fraction (received / sent): the bare proxy and the
broker drop for a subscriber that falls 110,000 messages behind, so a fast raw publisher
loses some, and the rate is then the subscriber's (or the broker's) pace. One warm-up run per
side, then ``--reps`` runs, interleaved and alternating the order (left-right, right-left, ...)
so that drift of the machine hits both sides alike; the table shows medians. Each run also
reads the broker process (all its threads): CPU time and minor page faults per message sent,
and resident memory at the end.
Only the ratios are meaningful across runs: absolute figures on a small shared machine drift.

``--profile DIR`` adds, after the measured runs, one unmeasured run per side with publisher
and subscriber under cProfile: ``DIR/<scenario>-<side>-<role>.prof``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from functools import partial
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any, Final

import msgspec
from exesdb_sdk import AsyncPublisher, AsyncSubscriber, Publisher, ReceiveTimeoutError, Subscriber
from exesdb_sdk.messages import NodeHealth
from exesdb_sdk.protocol import Encoder
from harness import (
    FIRST_MESSAGE_TIMEOUT,
    IDLE_TIMEOUT,
    LATENCY_SKIP,
    SDK_DATA,
    SEND_TIMEOUT_MS,
    SPAWN,
    TOPIC,
    Child,
    Side,
    environment,
    handle_exits,
    latency_summary,
    make_body,
    medians_of,
    process_cpu_seconds,
    process_rss_mb,
    render,
    spawn,
    started_broker,
    throughput_summary,
    write_report,
)

SIZES: Final = (100, 1024, 10240)
TRANSPORTS: Final = ("tcp", "ipc")
BATCH_SIZE: Final = 100
BATCH_ENVELOPE_BYTES: Final = 100
RAW_TARGET: Final = ("msgs_per_s", ">=", 0.95)
TYPED_TARGET: Final = ("msgs_per_s", ">=", 0.8)
BATCH_TARGET: Final = ("items_per_s", ">=", 1.0)
BATCH_SUBTOPIC: Final = TOPIC.decode().partition("/")[2]  # "bench": the raw side's topic, ex_esdb_metrics/bench


@dataclass(frozen=True, slots=True)
class Plan:
    """Counts per run and repetitions: a smoke run (``quick``) or a measurement."""

    reps: int
    warmup: bool
    raw_counts: dict[int, int]
    typed_count: int
    batch_count: int
    asyncio_count: int
    coalesce_count: int = 5_000
    latency_seconds: float = 1.0
    profile_dir: Path | None = None

    @classmethod
    def make(cls, *, quick: bool, reps: int, profile_dir: Path | None = None) -> Plan:
        if quick:
            return cls(1, False, {100: 5_000, 1024: 5_000, 10240: 2_000}, 5_000, 5_000, 5_000, 5_000, 1.0, profile_dir)
        return cls(
            reps, True, {100: 300_000, 1024: 200_000, 10240: 80_000}, 200_000, 300_000, 150_000, 200_000, 4.0,
            profile_dir,
        )  # fmt: skip


# -- roles (each runs in its own spawned process) ---------------------------------------------------


def node_health(disk_usage: float) -> NodeHealth:
    """The typed twin of ``harness.SDK_DATA``: built, and so validated, once per publish."""
    return NodeHealth(
        node="node1", status="healthy", checks={"db": "pass"}, load_avg=0.42, memory_usage=0.61, disk_usage=disk_usage
    )


def typed_publisher(*, ready: Callable[[], None], go: Event, frontend: str, count: int) -> dict[str, Any]:
    """Publish ``count`` freshly built ``NodeHealth`` messages with ``publish_message``."""
    with Publisher(frontend, node="bench", linger=SEND_TIMEOUT_MS / 1000) as pub:
        ready()
        if not go.wait(FIRST_MESSAGE_TIMEOUT):
            raise TimeoutError("never told to start")
        publish, build = pub.publish_message, node_health
        start = time.perf_counter()
        for i in range(count):
            publish(build(0.33 + (i & 1) / 100))  # same width: msgpack floats are always 9 bytes
        elapsed = time.perf_counter() - start
    return {"sent": count, "send_seconds": elapsed}


def coalesce_publisher(
    *, ready: Callable[[], None], go: Event, frontend: str, count: int, coalesce: float, rate: float | None
) -> dict[str, Any]:
    """``count`` ``Publisher.publish`` calls, one message each, with ``coalesce``: as fast as it
    goes, or paced at ``rate`` msg/s with the monotonic send time in each message (``t``)."""
    with Publisher(frontend, node="bench", linger=SEND_TIMEOUT_MS / 1000, coalesce=coalesce) as pub:
        ready()
        if not go.wait(FIRST_MESSAGE_TIMEOUT):
            raise TimeoutError("never told to start")
        publish, clock = pub.publish, time.monotonic_ns
        start = time.perf_counter()
        if rate is None:
            for _ in range(count):
                publish("metrics", "bench", "NodeHealth", SDK_DATA)
        else:
            period, sleep, t0 = 1e9 / rate, time.sleep, clock()
            for i in range(count):
                due = t0 + int(i * period)
                now = clock()
                if due > now:
                    sleep((due - now) / 1e9)
                publish("metrics", "bench", "Stamped", {"t": clock(), "pad": "x" * 40})
        elapsed = time.perf_counter() - start
    return {"sent": count, "send_seconds": elapsed}


def latency_subscriber(*, ready: Callable[[], None], backend: str, count: int) -> dict[str, Any]:
    """Up to ``count`` decoded messages; per message, now minus its publisher's stamp ``t``."""
    latencies: list[int] = []
    received = 0
    with Subscriber(backend) as sub:
        sub.subscribe("metrics", "bench")
        ready()
        clock = time.monotonic_ns
        try:
            recv = sub.recv
            message = recv(timeout=FIRST_MESSAGE_TIMEOUT)
            latencies.append(clock() - message.data["t"])
            received = 1
            while received < count:
                message = recv(timeout=IDLE_TIMEOUT)
                latencies.append(clock() - message.data["t"])
                received += 1
        except ReceiveTimeoutError:
            pass
    return {"received": received, "latencies_ns": latencies}


def batch_publisher(
    *, ready: Callable[[], None], go: Event, frontend: str, count: int, item: dict[str, Any], batch_size: int
) -> dict[str, Any]:
    """Publish ``count`` envelopes (a multiple of ``batch_size``) as batches of ``batch_size``."""
    batch = [item] * batch_size
    batches = count // batch_size
    with Publisher(frontend, node="bench", linger=SEND_TIMEOUT_MS / 1000) as pub:
        ready()
        if not go.wait(FIRST_MESSAGE_TIMEOUT):
            raise TimeoutError("never told to start")
        publish_batch = pub.publish_batch
        start = time.perf_counter()
        for _ in range(batches):
            publish_batch("metrics", BATCH_SUBTOPIC, "Bench", batch)
        elapsed = time.perf_counter() - start
    return {"sent": batches * batch_size, "send_seconds": elapsed}


def sdk_topic_subscriber(
    *, ready: Callable[[], None], backend: str, count: int, instance: str, prefix: str
) -> dict[str, Any]:
    """``harness.sdk_subscriber`` on any instance and prefix: up to ``count`` envelopes with
    ``Subscriber.recv`` (decoded; catalogue types rebuilt as typed payloads)."""
    received, first, last = 0, 0, 0
    with Subscriber(backend) as sub:
        sub.subscribe(instance, prefix)  # returns once the broker has confirmed it
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
        stats = sub.stats
    return {
        "received": received,
        "first_ns": first,
        "last_ns": last,
        "gaps": stats.gaps,
        "invalid_payloads": stats.invalid_payloads,
    }


def async_publisher(
    *, ready: Callable[[], None], go: Event, frontend: str, count: int, data: dict[str, Any]
) -> dict[str, Any]:
    """``harness.sdk_publisher`` with ``AsyncPublisher``: ``count`` awaited publishes."""

    async def run() -> dict[str, Any]:
        async with AsyncPublisher(frontend, node="bench", linger=SEND_TIMEOUT_MS / 1000) as pub:
            ready()
            if not go.wait(FIRST_MESSAGE_TIMEOUT):  # blocks the loop: nothing else runs in it yet
                raise TimeoutError("never told to start")
            publish = pub.publish
            start = time.perf_counter()
            for _ in range(count):
                await publish("metrics", BATCH_SUBTOPIC, "NodeHealth", data)
            elapsed = time.perf_counter() - start
        return {"sent": count, "send_seconds": elapsed}

    return asyncio.run(run())


def async_subscriber(*, ready: Callable[[], None], backend: str, count: int) -> dict[str, Any]:
    """``harness.sdk_subscriber`` with ``AsyncSubscriber``: up to ``count`` awaited receives."""

    async def run() -> dict[str, Any]:
        received, first, last = 0, 0, 0
        async with AsyncSubscriber(backend) as sub:
            await sub.subscribe("metrics", BATCH_SUBTOPIC)
            ready()
            clock = time.monotonic_ns
            try:
                await sub.recv(timeout=FIRST_MESSAGE_TIMEOUT)
                first = last = clock()
                received = 1
                recv = sub.recv
                while received < count:
                    await recv(timeout=IDLE_TIMEOUT)
                    last = clock()
                    received += 1
            except ReceiveTimeoutError:
                pass
            gaps = sub.stats.gaps
        return {"received": received, "first_ns": first, "last_ns": last, "gaps": gaps}

    return asyncio.run(run())


# -- runs -------------------------------------------------------------------------------------------


def minor_faults(pid: int) -> int:
    """Minor page faults a process has taken so far (Linux /proc): fresh memory being touched."""
    return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[7])


def run_side_over(side: Side, count: int, transport: str, profile: str | None = None) -> dict[str, Any]:
    """``harness.run_side`` over ``transport`` ("tcp" or "ipc"), adding readings of the broker
    process (all its threads) from its readiness to the subscriber's last message: CPU seconds,
    minor page faults, and its resident memory at the end."""
    expected_seconds = 60.0 + count / 1000
    with started_broker(side.broker, transport) as broker:
        cpu_before, faults_before = process_cpu_seconds(broker.pid), minor_faults(broker.pid)
        go = SPAWN.Event()
        children: list[Child] = []
        try:
            sub = spawn(
                side.subscriber,
                {"backend": broker.backend, "count": count, **side.subscriber_kwargs},
                profile and f"{profile}-subscriber.prof",
            )
            children.append(sub)
            pub = spawn(
                side.publisher,
                {"frontend": broker.frontend, "count": count, "go": go, **side.publisher_kwargs},
                profile and f"{profile}-publisher.prof",
            )
            children.append(pub)
            sub.expect("ready", FIRST_MESSAGE_TIMEOUT)
            pub.expect("ready", FIRST_MESSAGE_TIMEOUT)
            go.set()
            sent = pub.expect("result", expected_seconds)
            got = sub.expect("result", expected_seconds)
            broker_cpu = process_cpu_seconds(broker.pid) - cpu_before
            broker_faults = minor_faults(broker.pid) - faults_before
            broker_rss = process_rss_mb(broker.pid)
        finally:
            for child in children:
                child.stop()
    return {**sent, **got, "broker_cpu_s": broker_cpu, "broker_faults": broker_faults, "broker_rss_mb": broker_rss}


Summary = Callable[[dict[str, Any]], dict[str, Any]]


def with_broker_readings(summarize: Summary) -> Summary:
    """``summarize`` plus the broker's CPU time and minor faults per message sent, and its RSS."""

    def summary(result: dict[str, Any]) -> dict[str, Any]:
        return {
            **summarize(result),
            "broker_cpu_us_per_msg": result["broker_cpu_s"] * 1e6 / result["sent"],
            "broker_faults_per_msg": result["broker_faults"] / result["sent"],
            "broker_rss_mb": result["broker_rss_mb"],
        }

    return summary


def compare_over(
    key: str,
    title: str,
    sides: tuple[Side, Side],
    count: int,
    summarize: Summary,
    ratios: list[str],
    target: tuple[str, str, float] | None,
    plan: Plan,
    transport: str = "tcp",
) -> dict[str, Any]:
    """``harness.compare`` over ``transport``, with the order of the sides alternating per
    repetition and an optional target (``None``: informative)."""
    print(f"  {title}: ", end="", flush=True)
    summarize = with_broker_readings(summarize)
    if plan.warmup:
        for side in sides:
            run_side_over(side, max(1000, count // 4), transport)
            print("w", end="", flush=True)
    runs: dict[str, list[dict[str, Any]]] = {side.name: [] for side in sides}
    for rep in range(plan.reps):
        for side in sides if rep % 2 == 0 else sides[::-1]:
            runs[side.name].append(summarize(run_side_over(side, count, transport)))
            print(".", end="", flush=True)
    if plan.profile_dir:  # extra runs under cProfile, not counted
        for side in sides:
            run_side_over(side, count, transport, str(plan.profile_dir / f"{key}-{side.name}"))
            print("p", end="", flush=True)
    print()
    medians = medians_of(runs)
    base, other = (medians[side.name] for side in sides)
    ratio_of = {m: other[m] / base[m] for m in ratios if base[m]}  # none for a zero base (CPU below a tick)
    goal: dict[str, Any] | None = None
    if target is not None:
        metric, op, value = target
        ratio = ratio_of.get(metric, float("nan"))  # nan when nothing arrived: never met
        met = ratio >= value if op == ">=" else ratio <= value
        goal = {"metric": metric, "op": op, "value": value, "met": bool(met)}
    return {
        "title": title,
        "sides": [side.name for side in sides],
        "transport": transport,
        "count_per_run": count,
        "runs": runs,
        "medians": medians,
        "min_delivered_fraction": {
            name: min(run["delivered_fraction"] for run in side_runs) for name, side_runs in runs.items()
        },
        "ratios": ratio_of,
        "rep_ratios": {  # per repetition, right / left of that repetition: the spread behind the median
            m: [b[m] / a[m] if a[m] else None for a, b in zip(*(runs[side.name] for side in sides), strict=True)]
            for m in ratios[:1]
        },
        "target": goal,
    }


# -- scenarios --------------------------------------------------------------------------------------


def raw_sizes(plan: Plan, transport: str, size: int) -> dict[str, Any]:
    body = make_body(size)
    pub_kwargs = {"body": body, "rate": None}
    sub_kwargs = {"stamp_offset": None}
    sides = (
        Side("bare", "bare", "raw_publisher", "raw_subscriber", pub_kwargs, sub_kwargs),
        Side("exesdb", "exesdb", "raw_publisher", "raw_subscriber", pub_kwargs, sub_kwargs),
    )

    def summarize(result: dict[str, Any]) -> dict[str, Any]:
        summary = throughput_summary(result)
        return {**summary, "mb_per_s": summary["msgs_per_s"] * size / 1e6}

    result = compare_over(
        f"raw_sizes_{transport}_{size}", f"raw {size} B frames over {transport}", sides, plan.raw_counts[size],
        summarize, ["msgs_per_s", "broker_cpu_us_per_msg"], RAW_TARGET, plan, transport,
    )  # fmt: skip
    return {**result, "body_bytes": body.size, "topic": TOPIC.decode()}


def typed_body_size(count: int) -> int:
    """The SDK body's length for :func:`node_health` at the run's middle sequence number."""
    encoder = Encoder(src="bench")
    return len(msgspec.msgpack.encode(encoder.envelope(count // 2 + 1, "NodeHealth", node_health(0.33))))


def sdk_typed(plan: Plan) -> dict[str, Any]:
    count = plan.typed_count
    body = make_body(typed_body_size(count))
    sides = (
        Side("raw_bare", "bare", "raw_publisher", "raw_subscriber", {"body": body, "rate": None},
             {"stamp_offset": None}),
        Side("sdk_typed_exesdb", "exesdb", "bench_sdk:typed_publisher", "bench_sdk:sdk_topic_subscriber", {},
             {"instance": "health", "prefix": "node_health:"}),
    )  # fmt: skip
    result = compare_over(
        "sdk_typed", "SDK typed NodeHealth e2e vs raw", sides, count, throughput_summary,
        ["msgs_per_s", "broker_cpu_us_per_msg"], TYPED_TARGET, plan,
    )  # fmt: skip
    sample = node_health(0.33)
    return {
        **result,
        "body_bytes": body.size,
        "topics": {"raw_bare": TOPIC.decode(), "sdk_typed_exesdb": f"ex_esdb_health/{sample.default_subtopic()}"},
        "typed_data": msgspec.to_builtins(sample),
    }


def batch_item(count: int) -> tuple[dict[str, Any], int]:
    """The data of every envelope of a batch, padded so that an envelope packs to
    ``BATCH_ENVELOPE_BYTES`` at the run's middle sequence numbers; and the batch body's length."""
    encoder = Encoder(src="bench")
    middle = count // 2
    for pad in range(BATCH_ENVELOPE_BYTES):
        item = {"pad": "x" * pad}
        envelopes = [encoder.envelope(middle + i, "Bench", item) for i in range(BATCH_SIZE)]
        size = len(msgspec.msgpack.encode(envelopes))
        if size >= BATCH_SIZE * BATCH_ENVELOPE_BYTES:
            return item, size
    raise ValueError("no padding fits")


def sdk_batch(plan: Plan) -> dict[str, Any]:
    count = plan.batch_count - plan.batch_count % BATCH_SIZE
    item, batch_bytes = batch_item(count)
    body = make_body(BATCH_ENVELOPE_BYTES)
    sides = (
        Side("raw_bare", "bare", "raw_publisher", "raw_subscriber", {"body": body, "rate": None},
             {"stamp_offset": None}),
        Side("sdk_batch_exesdb", "exesdb", "bench_sdk:batch_publisher", "sdk_subscriber",
             {"item": item, "batch_size": BATCH_SIZE}, {}),
    )  # fmt: skip

    def summarize(result: dict[str, Any]) -> dict[str, Any]:
        summary = throughput_summary(result)
        return {"items_per_s": summary.pop("msgs_per_s"), **summary}

    result = compare_over(
        "sdk_batch", f"SDK batches of {BATCH_SIZE} envelopes/s vs raw msgs/s", sides, count, summarize,
        ["items_per_s", "broker_cpu_us_per_msg"], BATCH_TARGET, plan,
    )  # fmt: skip
    return {
        **result,
        "body_bytes": body.size,
        "batch_size": BATCH_SIZE,
        "batch_body_bytes": batch_bytes,
        "envelope_bytes": batch_bytes / BATCH_SIZE,
        "items": {"raw_bare": "ZeroMQ messages", "sdk_batch_exesdb": "envelopes"},
        "topic": TOPIC.decode(),
    }


def coalesce_throughput(plan: Plan) -> dict[str, Any]:
    publisher = "bench_sdk:coalesce_publisher"
    sides = (
        Side("coalesce_off", "exesdb", publisher, "sdk_subscriber", {"coalesce": 0.0, "rate": None}, {}),
        Side("coalesce_on", "exesdb", publisher, "sdk_subscriber", {"coalesce": None, "rate": None}, {}),
    )
    result = compare_over(
        "coalesce_throughput", "SDK one message per call, coalescing off vs on", sides, plan.coalesce_count,
        throughput_summary, ["msgs_per_s", "publish_msgs_per_s", "broker_cpu_us_per_msg"], None, plan,
    )  # fmt: skip
    return {**result, "topic": TOPIC.decode(), "sdk_data": SDK_DATA}


def coalesce_latency(plan: Plan, rate: int) -> dict[str, Any]:
    publisher = "bench_sdk:coalesce_publisher"
    subscriber = "bench_sdk:latency_subscriber"
    sides = (
        Side("coalesce_off", "exesdb", publisher, subscriber, {"coalesce": 0.0, "rate": rate}, {}),
        Side("coalesce_on", "exesdb", publisher, subscriber, {"coalesce": None, "rate": rate}, {}),
    )
    count = max(LATENCY_SKIP * 4, int(rate * plan.latency_seconds))

    result = compare_over(
        f"coalesce_latency_{rate}", f"SDK latency at {rate} msg/s, coalescing off vs on", sides, count,
        latency_summary, ["p99_us", "p50_us", "p999_us"], ("p99_us", "<=", 1.5), plan,
    )  # fmt: skip
    return {**result, "rate": rate, "topic": TOPIC.decode()}


def sdk_asyncio(plan: Plan) -> dict[str, Any]:
    sides = (
        Side("sync_exesdb", "exesdb", "sdk_publisher", "sdk_subscriber", {"data": SDK_DATA}, {}),
        Side("asyncio_exesdb", "exesdb", "bench_sdk:async_publisher", "bench_sdk:async_subscriber",
             {"data": SDK_DATA}, {}),
    )  # fmt: skip
    result = compare_over(
        "sdk_asyncio", "SDK asyncio vs sync e2e", sides, plan.asyncio_count, throughput_summary,
        ["msgs_per_s", "publish_msgs_per_s", "broker_cpu_us_per_msg"], None, plan,
    )  # fmt: skip
    return {**result, "topic": TOPIC.decode(), "sdk_data": SDK_DATA}


def scenario_table(plan: Plan) -> dict[str, Callable[[], dict[str, Any]]]:
    """Every scenario by name, not yet run, in the order they run."""
    table: dict[str, Callable[[], dict[str, Any]]] = {}
    for transport in TRANSPORTS:
        for size in SIZES:
            table[f"raw_sizes_{transport}_{size}"] = partial(raw_sizes, plan, transport, size)
    table["sdk_typed"] = partial(sdk_typed, plan)
    table["sdk_batch"] = partial(sdk_batch, plan)
    table["sdk_asyncio"] = partial(sdk_asyncio, plan)
    table["coalesce_throughput"] = partial(coalesce_throughput, plan)
    for rate in (1000, 5000):
        table[f"coalesce_latency_{rate}"] = partial(coalesce_latency, plan, rate)
    return table


def scenarios(
    *, quick: bool, reps: int, only: Collection[str] | None = None, profile_dir: Path | None = None
) -> dict[str, dict[str, Any]]:
    """Run the scenarios (``only``: those whose name starts with one of these) and return
    them by name, each a scenario dict as ``harness.render`` takes it."""
    plan = Plan.make(quick=quick, reps=reps, profile_dir=profile_dir)
    print(f"running (w = warm-up, . = measured run), {plan.reps} rep(s):", flush=True)
    return {
        name: run()
        for name, run in scenario_table(plan).items()
        if only is None or any(name.startswith(prefix) for prefix in only)
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=5, help="interleaved repetitions per side (default 5)")
    parser.add_argument("--quick", action="store_true", help="tiny counts, 1 repetition: a smoke run")
    parser.add_argument("--json-out", type=Path, help="JSON file (default benchmarks/results/sdk-<UTC>.json)")
    parser.add_argument("--profile", type=Path, metavar="DIR", help="after the runs, one more per side under cProfile")
    parser.add_argument(
        "--only", action="append", metavar="NAME", help="run only scenarios starting with NAME (repeatable)"
    )
    args = parser.parse_args(argv)
    if args.reps < 1:
        parser.error("--reps must be at least 1")
    if args.only and not any(
        name.startswith(prefix) for name in scenario_table(Plan.make(quick=True, reps=1)) for prefix in args.only
    ):
        parser.error(f"--only {args.only} names no scenario")
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)

    handle_exits()
    started = time.monotonic()
    plan = Plan.make(quick=args.quick, reps=args.reps)
    report: dict[str, Any] = {
        "environment": environment(),
        "config": {
            "quick": args.quick,
            "reps": plan.reps,
            "warmup_run_per_side": plan.warmup,
            "raw_counts": {str(size): count for size, count in plan.raw_counts.items()},
            "typed_count": plan.typed_count,
            "batch_count": plan.batch_count,
            "asyncio_count": plan.asyncio_count,
            "idle_timeout_s": IDLE_TIMEOUT,
        },
    }
    report["scenarios"] = scenarios(quick=args.quick, reps=args.reps, only=args.only, profile_dir=args.profile)
    report["elapsed_seconds"] = round(time.monotonic() - started, 1)

    print()
    print(render(report, "exesdb-pubsub SDK benchmark"))
    write_report(report, args.json_out, "sdk")
    return 0


if __name__ == "__main__":
    sys.exit(main())
