"""Receive-path micro-benchmark: what an SDK ``Subscriber`` spends per queued ``NodeHealth``.

Run it (about half a minute with the default 5 repetitions; ``--quick`` is a smoke run)::

    python benchmarks/micro/bench_recv.py [--reps 5] [--count 60000] [--quick] [--json-out PATH]

No broker: a bare pyzmq XPUB in this process queues ``--count`` single-envelope ``NodeHealth``
bodies (the SDK's ``Encoder``, one publisher, consecutive ``seq``) over ``inproc`` to a
``Subscriber`` sharing its context, so every message is queued before the clock starts, then
the subscriber reads them all. Measured: CPU time of the reading thread per message
(``time.thread_time``: libzmq's I/O thread and other processes left out), for

- ``recv+payload``: ``recv()`` per message, reading ``payload`` (what ``bench_peers`` does);
- ``recv``: ``recv()`` per message, ``payload`` never read (built on first read, so never built);
- ``recv_batch+payload``: ``recv_batch()`` of up to 1,000, reading each ``payload``.

Modes run interleaved ``--reps`` times after one warm-up each; the table shows medians (and
``--json-out`` writes them with every run). To
compare two versions of the SDK, run it under each (``PYTHONPATH=<tree>/sdk``) in turn: on a
shared machine only such side-by-side figures mean anything. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import zmq
from exesdb_sdk import Subscriber
from exesdb_sdk.messages import NodeHealth
from exesdb_sdk.protocol import Encoder

ENDPOINT = "inproc://bench-recv"
HEALTH = NodeHealth(node="node1", status="healthy", load_avg=0.42, memory_usage=0.61, disk_usage=0.33)


def read_recv(sub: Subscriber, count: int, payload: bool) -> int:
    """``recv()`` ``count`` messages; the number whose payload is a ``NodeHealth`` (when read)."""
    typed, recv = 0, sub.recv
    for _ in range(count):
        message = recv(timeout=5)
        if payload and type(message.payload) is NodeHealth:
            typed += 1
    return typed


def read_batches(sub: Subscriber, count: int) -> int:
    """``recv_batch()`` until ``count`` messages; the number whose payload is a ``NodeHealth``."""
    typed = got = 0
    for _ in range(count):  # each batch has at least one message
        if got >= count:
            break
        batch = sub.recv_batch(timeout=5)
        got += len(batch)
        typed += sum(type(message.payload) is NodeHealth for message in batch)
    return typed


MODES: dict[str, Callable[[Subscriber, int], int]] = {
    "recv+payload": lambda sub, count: read_recv(sub, count, True),
    "recv": lambda sub, count: read_recv(sub, count, False),
    "recv_batch+payload": read_batches,
}


def run(mode: str, count: int) -> float:
    """One run of ``mode``: microseconds of the reading thread's CPU per message."""
    context = zmq.Context()
    pub = context.socket(zmq.XPUB)
    pub.setsockopt(zmq.SNDHWM, 0)
    pub.bind(ENDPOINT)
    try:
        with Subscriber(ENDPOINT, hwm=0, context=context) as sub:
            sub.subscribe("health", wait=False)
            if not pub.poll(5000):
                raise SystemExit("the subscription did not reach the publisher")
            pub.recv()
            encoder = Encoder(src="bench", pub="00000000000000aa")
            topic = encoder.topic("health", "node_health:node1")
            for body in [encoder.encode(topic, "NodeHealth", HEALTH) for _ in range(count)]:
                pub.send_multipart([topic, body])  # inproc: queued at the subscriber when this returns
            start = time.thread_time()
            typed = MODES[mode](sub, count)
            elapsed = time.thread_time() - start
            if mode.endswith("payload") and typed != count:
                raise SystemExit(f"{mode}: {count - typed} messages without a NodeHealth payload")
            if sub.stats.gaps:
                raise SystemExit(f"{mode}: {sub.stats.gaps} messages lost")
    finally:
        pub.close(0)
        context.term()
    return elapsed / count * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=5, help="interleaved repetitions per mode (default 5)")
    parser.add_argument("--count", type=int, default=60_000, help="messages per run (default 60,000)")
    parser.add_argument("--quick", action="store_true", help="2,000 messages, 1 repetition, no warm-up")
    parser.add_argument("--json-out", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args()
    reps, count = (1, 2_000) if args.quick else (args.reps, args.count)
    if not args.quick:
        for mode in MODES:
            run(mode, count // 4)
    runs: dict[str, list[float]] = {mode: [] for mode in MODES}
    for _ in range(reps):
        for mode in MODES:
            runs[mode].append(run(mode, count))
    print(f"{'mode':20s} {'us/msg (median)':>16s}  runs")
    for mode, values in runs.items():
        print(f"{mode:20s} {statistics.median(values):16.2f}  {' '.join(f'{v:.2f}' for v in values)}")
    if args.json_out is not None:
        modes = {mode: {"us_per_msg": statistics.median(values), "runs": values} for mode, values in runs.items()}
        args.json_out.write_text(json.dumps({"count": count, "reps": reps, "modes": modes}, indent=2))


if __name__ == "__main__":
    main()
