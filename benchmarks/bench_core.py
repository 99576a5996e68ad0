"""Core benchmark: ``exesdb-broker`` against a bare ``zmq.proxy``, and the SDK against raw pyzmq.

Run it (about 2 minutes with the default 5 repetitions; ``--quick`` is a smoke run of a few seconds)::

    /work/venv/bin/python benchmarks/bench_core.py [--reps 5] [--quick] [--json-out PATH]

It prints a table and writes JSON to ``benchmarks/results/core-<UTC timestamp>.json``
(a git-ignored directory) unless ``--json-out`` names another file.

Scenarios, each a pair of sides measured in the same run:

(a) raw frames, raw pyzmq publisher and subscriber on both sides, through a bare
    ``zmq.proxy`` (XSUB/XPUB bound, SNDHWM/RCVHWM 10000) and through ``exesdb-broker``
    (whose stats tap decodes every message, as in production). The body is a valid
    100-byte protocol envelope on ``ex_esdb_metrics/bench``, packed once.

    - ``raw_throughput``: messages per second delivered to one subscriber (target
      exesdb/bare >= 0.95).
    - ``raw_latency``: one-way latency at a fixed 5,000 msg/s; the publisher writes
      ``time.monotonic_ns()`` (system-wide on Linux) as 16 hex digits into the start of
      ``data.pad`` just before each send, so both brokers carry the same bytes (target p99
      exesdb/bare <= 1.1).

(b) ``sdk_throughput``: ``Publisher.publish`` -> ``exesdb-broker`` -> ``Subscriber.recv``
    (decoding) against a raw publisher of pre-packed bytes -> bare proxy -> raw
    ``recv_multipart`` subscriber (no decoding), with a raw body of the SDK body's length
    (target SDK/raw >= 0.8).

Method: every role is its own process (broker or proxy: a subprocess; publisher and
subscriber: spawned ``multiprocessing`` processes), with a fresh broker per run on
127.0.0.1 ports. The subscriber subscribes first; the publisher waits until the subscription
has come back to it through the broker (raw: the XPUB's ``b"\\x01<topic>"`` message; SDK:
``Subscriber.subscribe`` confirmed before the publisher is let go) and then sends. The rate
is measured at the subscriber from its first to its last received message, and the
delivered fraction (received / sent) is reported next to it. Both publishers use the SDK's
socket options (XPUB_NODROP, SNDHWM 10000), both subscribers the SDK's RCVHWM. A warm-up run
per side comes first, then ``--reps`` runs interleaved (bare, exesdb, bare, exesdb, ...);
the table shows medians per side and the ratio of the medians. Only ratios are meaningful
across machines and runs: absolute numbers on a small shared machine drift a lot.

Every wait has a deadline; children are stopped on exit. ``--profile DIR`` adds, after the
measured runs, one unmeasured run per side with its publisher and subscriber under cProfile,
written to ``DIR/<scenario>-<side>-<role>.prof`` (read with ``python -m pstats``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from harness import (
    IDLE_TIMEOUT,
    LATENCY_SKIP,
    RAW_BODY_SIZE,
    SDK_DATA,
    TOPIC,
    Config,
    Side,
    compare,
    environment,
    handle_exits,
    latency_summary,
    make_body,
    render,
    sdk_body_size,
    serve_bare_proxy,
    throughput_summary,
    write_report,
)


def raw_throughput(config: Config) -> dict[str, Any]:
    body = make_body(RAW_BODY_SIZE)
    pub_kwargs = {"body": body, "rate": None}
    sub_kwargs = {"stamp_offset": None}
    sides = (
        Side("bare", "bare", "raw_publisher", "raw_subscriber", pub_kwargs, sub_kwargs),
        Side("exesdb", "exesdb", "raw_publisher", "raw_subscriber", pub_kwargs, sub_kwargs),
    )
    title = f"(a) raw {RAW_BODY_SIZE} B throughput"
    result = compare(
        "raw_throughput", title, sides, config.raw_count, throughput_summary,
        ["msgs_per_s"], ("msgs_per_s", ">=", 0.95), config,
    )  # fmt: skip
    return {**result, "body_bytes": body.size, "topic": TOPIC.decode()}


def raw_latency(config: Config) -> dict[str, Any]:
    body = make_body(RAW_BODY_SIZE)
    count = int(config.latency_rate * config.latency_seconds)
    pub_kwargs = {"body": body, "rate": config.latency_rate}
    sub_kwargs = {"stamp_offset": len(body.head)}
    sides = (
        Side("bare", "bare", "raw_publisher", "raw_subscriber", pub_kwargs, sub_kwargs),
        Side("exesdb", "exesdb", "raw_publisher", "raw_subscriber", pub_kwargs, sub_kwargs),
    )
    title = f"(a) raw latency @ {config.latency_rate:,.0f} msg/s"
    result = compare(
        "raw_latency", title, sides, count, latency_summary,
        ["p50_us", "p99_us", "p999_us"], ("p99_us", "<=", 1.1), config,
    )  # fmt: skip
    return {**result, "body_bytes": body.size, "rate": config.latency_rate, "skipped_samples": LATENCY_SKIP}


def sdk_throughput(config: Config) -> dict[str, Any]:
    body = make_body(sdk_body_size(config.sdk_count))
    sides = (
        Side("raw_bare", "bare", "raw_publisher", "raw_subscriber",
             {"body": body, "rate": None}, {"stamp_offset": None}),
        Side("sdk_exesdb", "exesdb", "sdk_publisher", "sdk_subscriber", {"data": SDK_DATA}, {}),
    )  # fmt: skip
    result = compare(
        "sdk_throughput", "(b) SDK e2e vs raw throughput", sides, config.sdk_count, throughput_summary,
        ["msgs_per_s"], ("msgs_per_s", ">=", 0.8), config,
    )  # fmt: skip
    return {**result, "body_bytes": body.size, "topic": TOPIC.decode(), "sdk_data": SDK_DATA}


def make_config(*, quick: bool, reps: int, profile_dir: Path | None = None) -> Config:
    if quick:
        return Config(
            reps=1, warmup=False, raw_count=5_000, latency_rate=5_000, latency_seconds=0.5,
            sdk_count=5_000, profile_dir=profile_dir,
        )  # fmt: skip
    return Config(
        reps=reps, warmup=True, raw_count=400_000, latency_rate=5_000, latency_seconds=6.0,
        sdk_count=200_000, profile_dir=profile_dir,
    )  # fmt: skip


SCENARIOS = {"raw_throughput": raw_throughput, "raw_latency": raw_latency, "sdk_throughput": sdk_throughput}


def scenarios(*, quick: bool, reps: int) -> dict[str, dict[str, Any]]:
    """Every core scenario (the interface benchmarks/bench.py runs)."""
    config = make_config(quick=quick, reps=reps)
    return {name: scenario(config) for name, scenario in SCENARIOS.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=5, help="interleaved repetitions per side (default 5)")
    parser.add_argument("--quick", action="store_true", help="tiny counts, 1 repetition: a smoke run")
    parser.add_argument("--json-out", type=Path, help="JSON file (default benchmarks/results/core-<UTC>.json)")
    parser.add_argument("--profile", type=Path, metavar="DIR", help="after the runs, one more per side under cProfile")
    parser.add_argument(
        "--only",
        action="append",
        choices=["raw_throughput", "raw_latency", "sdk_throughput"],
        help="run only this scenario (repeatable)",
    )
    parser.add_argument("--serve-bare-proxy", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_bare_proxy:
        serve_bare_proxy()
        return 0
    if args.reps < 1:
        parser.error("--reps must be at least 1")

    handle_exits()
    config = make_config(quick=args.quick, reps=args.reps, profile_dir=args.profile)
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)

    started = time.monotonic()
    report: dict[str, Any] = {"environment": environment(), "config": {}, "scenarios": {}}
    report["config"] = {
        "quick": args.quick,
        "reps": config.reps,
        "warmup_run_per_side": config.warmup,
        "raw_count": config.raw_count,
        "latency_rate": config.latency_rate,
        "latency_seconds": config.latency_seconds,
        "sdk_count": config.sdk_count,
        "idle_timeout_s": IDLE_TIMEOUT,
    }
    print(f"running (w = warm-up, . = measured run), {config.reps} rep(s):", flush=True)
    for name, scenario in SCENARIOS.items():
        if args.only is None or name in args.only:
            report["scenarios"][name] = scenario(config)
    report["elapsed_seconds"] = round(time.monotonic() - started, 1)

    print()
    print(render(report, "exesdb-pubsub core benchmark"))
    write_report(report, args.json_out, "core")
    return 0


if __name__ == "__main__":
    sys.exit(main())
