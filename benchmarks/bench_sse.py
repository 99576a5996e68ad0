"""SSE benchmark: delivery rate of ``GET /v1/stream`` to one client, against an SDK Subscriber.

Run it (about a minute with the default 3 repetitions; ``--quick`` is a smoke run)::

    /work/venv/bin/python benchmarks/bench_sse.py [--reps 3] [--quick] [--json-out PATH]

Method: a fresh ``exesdb-broker`` per run, its HTTP application served standalone in a process
of its own (``WebServer`` over the broker's tcp endpoints), and a publisher process sending
``count`` typed ``NodeHealth`` messages (~100 B bodies) on ``ex_esdb_health`` as fast as it can.
The stream runs without its default rate cap (``--http-stream-rate``, 2000 events/s), to measure
what it can deliver. The receiver, in this process, is either a plain SDK ``Subscriber`` (left)
or an httpx client reading ``/v1/stream?instance=health`` and decoding each event's JSON
(right); it counts messages from its first to its last (it stops once none came for a second).
Both sides run in the same invocation, interleaved, and the table shows medians and the ratio
right / left with the delivered fraction (received / sent: the broker and the stream shed for a
receiver that falls behind, counted as gaps). Only the ratio means much on a small shared
machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Final

import httpx
from exesdb_sdk import ReceiveTimeoutError, Subscriber
from harness import environment, handle_exits, started_broker, write_report

IDLE: Final = 1.0
SERVE: Final = """
import sys
from exesdb_web import BusAccess, WebServer, WebSettings
# no rate limit: what the stream can deliver, not its default cap (WebSettings.sse_max_rate)
server = WebServer(BusAccess(sys.argv[1], sys.argv[2], sys.argv[3]), "127.0.0.1", 0, WebSettings(sse_max_rate=0))
import threading
threading.Thread(target=lambda: (sys.stdin.read(), server.stop()), daemon=True).start()
def announce():
    server.ready.wait(10)
    print(server.url, flush=True)
threading.Thread(target=announce, daemon=True).start()
server.run()
"""
PUBLISH: Final = """
import sys
from exesdb_sdk import Publisher
from exesdb_sdk.messages import NodeHealth
sys.stdin.readline()  # go
with Publisher(sys.argv[1]) as pub:
    for _ in range(int(sys.argv[2])):
        pub.publish_message(NodeHealth(node="node1", status="healthy", load_avg=0.42, memory_usage=0.61))
"""


def _receive_sdk(backend: str, count: int, go: subprocess.Popen[str]) -> tuple[int, float]:
    with Subscriber(backend, hwm=100_000, typed=False) as sub:
        sub.subscribe("health")
        _go(go)
        got, first, last = 0, 0.0, 0.0
        while got < count:
            try:
                sub.recv(timeout=20 if got == 0 else IDLE)
            except ReceiveTimeoutError:
                break
            last = time.perf_counter()
            first = first or last
            got += 1
    return got, last - first


def _receive_sse(url: str, count: int, go: subprocess.Popen[str]) -> tuple[int, float]:
    got, first, last = 0, 0.0, 0.0
    timeout = httpx.Timeout(10.0, read=IDLE + 1)
    with httpx.Client(timeout=timeout) as http, http.stream("GET", f"{url}/v1/stream?instance=health") as stream:
        _go(go)
        try:
            for line in stream.iter_lines():
                if line.startswith("data: "):
                    json.loads(line[6:])
                    last = time.perf_counter()
                    first = first or last
                    got += 1
                    if got >= count:
                        break
                elif got and time.perf_counter() - last > IDLE:
                    break
        except httpx.ReadTimeout:
            pass
    return got, last - first


def _go(publisher: subprocess.Popen[str]) -> None:
    assert publisher.stdin is not None
    publisher.stdin.write("go\n")
    publisher.stdin.flush()


def run(side: str, count: int) -> dict[str, Any]:
    """One run of ``side`` (``sdk`` or ``sse``) on a fresh broker."""
    with started_broker("exesdb") as broker:
        assert broker.control is not None
        web = subprocess.Popen(
            [sys.executable, "-c", SERVE, broker.frontend, broker.backend, broker.control],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        publisher = subprocess.Popen(
            [sys.executable, "-c", PUBLISH, broker.frontend, str(count)], stdin=subprocess.PIPE, text=True
        )
        try:
            assert web.stdout is not None
            url = web.stdout.readline().strip()
            if side == "sdk":
                got, seconds = _receive_sdk(broker.backend, count, publisher)
            else:
                got, seconds = _receive_sse(url, count, publisher)
            publisher.wait(60)
        finally:
            for proc in (publisher, web):
                if proc.poll() is None:
                    proc.communicate("", timeout=20)
    rate = got / seconds if seconds > 0 else 0.0
    return {"received": got, "sent": count, "delivered": got / count, "seconds": seconds, "rate": rate}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=3, help="interleaved repetitions per side (default 3)")
    parser.add_argument("--quick", action="store_true", help="small counts, 1 repetition: a smoke run")
    parser.add_argument("--json-out", type=Path, help="JSON file (default benchmarks/results/sse-<UTC>.json)")
    args = parser.parse_args(argv)
    if args.reps < 1:
        parser.error("--reps must be at least 1")
    handle_exits()
    started = time.monotonic()
    reps, count = (1, 5_000) if args.quick else (args.reps, 100_000)
    runs: dict[str, list[dict[str, Any]]] = {"sdk": [], "sse": []}
    for rep in range(reps):
        for side in ("sdk", "sse") if rep % 2 == 0 else ("sse", "sdk"):
            runs[side].append(run(side, count))
    median = {side: statistics.median(r["rate"] for r in runs[side]) for side in runs}
    delivered = {side: statistics.median(r["delivered"] for r in runs[side]) for side in runs}
    ratio = median["sse"] / median["sdk"] if median["sdk"] else 0.0
    scenario = {
        "description": "NodeHealth (~100 B) to one receiver: SDK Subscriber (left) vs /v1/stream over httpx (right)",
        "sides": ["sdk", "sse"],
        "runs": runs,
        "median_rate": median,
        "median_delivered": delivered,
        "ratio": ratio,
    }
    report = {
        "environment": environment(),
        "config": {"quick": args.quick, "reps": reps, "count": count},
        "scenarios": {"sse_delivery": scenario},
        "elapsed_seconds": round(time.monotonic() - started, 1),
    }
    print("scenario       side  events/s   delivered")
    for side in ("sdk", "sse"):
        print(f"sse_delivery   {side}  {median[side]:>9,.0f}  {delivered[side]:>9.1%}")
    print(f"ratio sse/sdk: {ratio:.3f}")
    write_report(report, args.json_out, "sse")
    return 0


if __name__ == "__main__":
    sys.exit(main())
