"""All benchmarks in one run: one command, one table, one JSON file.

    python benchmarks/bench.py                # everything, about 30 minutes
    python benchmarks/bench.py --quick        # a smoke run of every scenario
    python benchmarks/bench.py --only core --only peers --reps 3

Suites, each a module of this directory with ``scenarios(quick=..., reps=...)``:

- ``core``: exesdb-broker vs a bare zmq.proxy (throughput, p99 latency), SDK vs raw pyzmq;
- ``sdk``: frame sizes over tcp and ipc, typed messages, batches, the asyncio client;
- ``topology``: fan-out, fan-in, a stalled subscriber, ten instances mixed, the emitter pool,
  broker memory;
- ``peers``: NATS (nats-server + nats-py) and Redis pub/sub (redis-server + redis-py), skipped
  when their servers or clients are not installed (``pip install '.[bench]'``; Debian packages
  ``redis-server`` and ``nats-server``);
- ``security``: CURVE on vs off, 100 B throughput through exesdb-broker, and a public instance
  with and without a restricted class (with its cost in threads, descriptors and memory);
- ``journal``: live throughput on a non-journaled instance with the journal off and on,
  acknowledged durable publishes per second (fsync never vs the default policy), and the
  journal's ingest rate under a flood;
- ``incident``: a 25 s flood of alerts (durable acks, replays and memory meanwhile, then a
  SIGTERM), and the share of messages ``stats`` counts at 20,000 and 50,000 msg/s.

Suites run one after another, never at the same time: on a 2-core machine anything running
beside a benchmark changes its figures. Only the ratios inside one run are comparable.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path
from typing import Any

from harness import (
    environment,
    handle_exits,
    render,
    write_report,
)

SUITES = ("core", "sdk", "topology", "peers", "security", "journal", "incident", "http")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny counts, 1 repetition: a smoke run")
    parser.add_argument("--reps", type=int, default=5, help="interleaved repetitions per side (default 5)")
    parser.add_argument("--only", action="append", choices=SUITES, help="run only this suite (repeatable)")
    parser.add_argument("--json-out", type=Path, help="JSON file (default benchmarks/results/all-<UTC>.json)")
    args = parser.parse_args(argv)
    if args.reps < 1:
        parser.error("--reps must be at least 1")
    handle_exits()

    started = time.monotonic()
    report: dict[str, Any] = {
        "environment": environment(),
        "config": {"quick": args.quick, "reps": 1 if args.quick else args.reps, "suites": args.only or list(SUITES)},
        "scenarios": {},
    }
    for suite in args.only or SUITES:
        print(f"{suite}:", flush=True)
        module = importlib.import_module(f"bench_{suite}")
        for name, scenario in module.scenarios(quick=args.quick, reps=args.reps).items():
            report["scenarios"][f"{suite}.{name}"] = scenario
    report["elapsed_seconds"] = round(time.monotonic() - started, 1)
    print()
    print(render(report))
    write_report(report, args.json_out, "all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
