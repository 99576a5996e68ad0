"""Catalogue overhead: building, encoding and publishing a typed message vs a plain dict.

Run: ``python benchmarks/bench_catalogue.py`` (about 30 s; ``--quick`` for a smoke run).

One ``exesdb-broker`` process receives; this process publishes ``NodeHealth`` messages with
the same fields, either built as the typed class (``publish_message(NodeHealth(...))``, which
validates every field) or as a dict (``publish("health", ..., "NodeHealth", {...})``).
Repetitions interleave the two; the report is the median time per message of each and their
ratio (target: typed <= 1.3x dict). Results go to stdout and, as JSON, to
``benchmarks/results/catalogue-<UTC>.json``.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from exesdb_sdk import Publisher, __version__
from exesdb_sdk.messages import NodeHealth

RESULTS_DIR = Path(__file__).resolve().parent / "results"
READY = re.compile(r"exesdb-broker ready frontend=(\S+) backend=(\S+) control=(\S+)")


def start_broker() -> tuple[subprocess.Popen[str], str]:
    free = "tcp://127.0.0.1:*"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "exesdb_broker",
            "--frontend",
            free,
            "--backend",
            free,
            "--control",
            free,
            "--http",
            "none",
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        match = READY.search(line)
        if match:
            return proc, match.group(1)
        if not line:
            break
    proc.kill()
    raise RuntimeError("broker did not start")


def typed(pub: Publisher, count: int) -> float:
    started = time.perf_counter()
    for i in range(count):
        pub.publish_message(
            NodeHealth(node="node1", status="healthy", load_avg=0.42, memory_usage=0.61, disk_usage=float(i))
        )
    return (time.perf_counter() - started) / count


def plain(pub: Publisher, count: int) -> float:
    started = time.perf_counter()
    for i in range(count):
        pub.publish(
            "health",
            "node_health:node1",
            "NodeHealth",
            {
                "node": "node1",
                "status": "healthy",
                "checks": {},
                "load_avg": 0.42,
                "memory_usage": 0.61,
                "disk_usage": float(i),
            },
        )
    return (time.perf_counter() - started) / count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny counts: a smoke run")
    parser.add_argument("--json-out", type=Path, help="JSON file (default benchmarks/results/...)")
    args = parser.parse_args(argv)
    count, reps = (2_000, 1) if args.quick else (100_000, 7)
    broker, frontend = start_broker()
    try:
        with Publisher(frontend, send_timeout=30) as pub:
            typed(pub, count // 10)  # warm-up
            plain(pub, count // 10)
            runs: dict[str, list[float]] = {"typed": [], "dict": []}
            for _ in range(reps):
                runs["typed"].append(typed(pub, count))
                runs["dict"].append(plain(pub, count))
    finally:
        broker.terminate()
        broker.wait(10)
    medians = {name: statistics.median(times) for name, times in runs.items()}
    ratio = medians["typed"] / medians["dict"]
    report: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "exesdb_sdk": __version__,
        "python": sys.version.split()[0],
        "count_per_run": count,
        "reps": reps,
        "us_per_message": {name: round(value * 1e6, 3) for name, value in medians.items()},
        "ratio_typed_to_dict": round(ratio, 3),
        "target": "<= 1.3",
        "met": ratio <= 1.3,
    }
    print(f"typed NodeHealth  {report['us_per_message']['typed']:.2f} us/msg")
    print(f"plain dict        {report['us_per_message']['dict']:.2f} us/msg")
    print(f"ratio typed/dict  {ratio:.3f}  (target <= 1.3: {'met' if report['met'] else 'NOT MET'})")
    out = args.json_out or RESULTS_DIR / f"catalogue-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"JSON: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
