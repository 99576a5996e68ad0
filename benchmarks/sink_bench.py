"""What the in-process sink benchmarks (bench_sink_redis.py, bench_sink_mqtt.py) share: the
NodeHealth deliveries they send, and the run: interleaved repetitions of the direct client and
the sink against one server, medians, the ratio, a report."""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from subprocess import Popen
from typing import Any

from exesdb_connect.sink import Delivery
from exesdb_connect.source import delivery_of
from exesdb_sdk.messages import NodeHealth
from exesdb_sdk.protocol import Decoder, Encoder
from harness import environment, handle_exits, write_report

Run = Callable[[int, str, Sequence[Sequence[Delivery]], int], float]
"""``run(port, side, batches, count)``: messages/s of one run of side ``direct`` or ``sink``."""


def deliveries(count: int) -> tuple[list[Delivery], int]:
    """``count`` NodeHealth deliveries, as the connector builds them; and the body size."""
    encoder, decoder = Encoder(src="node1"), Decoder()
    topic = encoder.topic("ex_esdb_health", "node_health:node1")
    made = []
    for _ in range(count):
        body = encoder.encode(topic, "NodeHealth", NodeHealth(node="node1", status="healthy", load_avg=0.42))
        (message,) = decoder.decode([topic, body])
        made.append(delivery_of(message, body=body))
    return made, len(made[0].body)


def sink_main(
    argv: list[str] | None,
    *,
    kind: str,
    doc: str | None,
    description: str,
    start_server: Callable[[Path], tuple[Popen[Any], int]],
    run: Run,
    warm: tuple[str, ...] = ("direct",),
) -> int:
    """Parse the flags, warm up ``warm``'s sides on two batches, run the interleaved
    repetitions on a fresh server, print the table and write the report ``sink_<kind>``."""
    parser = argparse.ArgumentParser(description=(doc or "").split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=5, help="interleaved repetitions per side (default 5)")
    parser.add_argument("--count", type=int, default=20_000, help="messages per run (default 20000)")
    parser.add_argument("--batch", type=int, default=500, help="messages per send (default 500)")
    parser.add_argument("--quick", action="store_true", help="2000 messages, 1 repetition: a smoke run")
    parser.add_argument("--json-out", type=Path, help=f"JSON file (default benchmarks/results/sink_{kind}-<UTC>.json)")
    args = parser.parse_args(argv)
    if args.reps < 1 or args.count < 1 or args.batch < 1:
        parser.error("--reps, --count and --batch must be at least 1")
    handle_exits()
    started = time.monotonic()
    reps, count = (1, 2_000) if args.quick else (args.reps, args.count)
    made, body_bytes = deliveries(count)
    batches = [made[i : i + args.batch] for i in range(0, count, args.batch)]
    rates: dict[str, list[float]] = {"direct": [], "sink": []}
    with tempfile.TemporaryDirectory(prefix=f"bench-{kind}-") as directory:
        proc, port = start_server(Path(directory))
        try:
            for side in warm:
                run(port, side, batches[:2], sum(map(len, batches[:2])))
            for rep in range(reps):
                for side in ("direct", "sink") if rep % 2 == 0 else ("sink", "direct"):
                    rates[side].append(run(port, side, batches, count))
        finally:
            proc.terminate()
            proc.wait(10)
    median = {side: statistics.median(values) for side, values in rates.items()}
    ratio = median["sink"] / median["direct"] if median["direct"] else 0.0
    report = {
        "environment": environment(),
        "config": {"quick": args.quick, "reps": reps, "count": count, "batch": args.batch, "body_bytes": body_bytes},
        "scenarios": {
            f"{kind}_sink": {
                "description": description,
                "sides": ["direct", "sink"],
                "runs": rates,
                "median_rate": median,
                "ratio": ratio,
            }
        },
        "elapsed_seconds": round(time.monotonic() - started, 1),
    }
    print(f"{kind} sink, {count:,} msgs of {body_bytes} B in batches of {args.batch}, medians of {reps}")
    print("side     msgs/s")
    for side in ("direct", "sink"):
        print(f"{side:<7} {median[side]:>8,.0f}")
    print(f"ratio sink/direct: {ratio:.3f}")
    write_report(report, args.json_out, f"sink_{kind}")
    return 0
