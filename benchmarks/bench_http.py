"""HTTP surface benchmark: what serving it costs the data plane, and what a scrape costs.

    python benchmarks/bench_http.py [--reps 5] [--quick] [--json-out PATH]

Two scenarios, each a ratio against a reference measured in the same run:

- ``http_throughput`` and ``http_overhead``: 100-byte envelopes from a raw pyzmq publisher to
  a raw pyzmq subscriber through the bare libzmq proxy (``bare``), through ``exesdb-broker
  --http none`` (``exesdb``) and through ``exesdb-broker`` with its HTTP surface on and one
  client reading ``/v1/stream`` of every instance (``exesdb_http``; the SSE client is its own
  process, reading as fast as it can), the three interleaved. ``http_throughput`` is the ratio
  exesdb_http/bare of the messages per second delivered to the ZeroMQ subscriber (the issue's
  target, >= 0.95), ``http_overhead`` exesdb_http/exesdb from the same runs (what the surface
  itself costs). What the SSE client received is reported beside it (``sse_fraction``: it may
  shed; a slow HTTP client never slows the bus).
- ``metrics_scrape``: milliseconds per ``GET /metrics`` (one control ``stats`` snapshot
  rendered by prometheus-client) against a bare control ``stats`` request to the same broker
  (``stats``, the reference), medians over a few dozen of each, interleaved.

Every role is its own process, a fresh broker per run; warm-up then ``--reps`` interleaved
runs, medians. Only the ratios are meaningful across machines and runs.
"""

from __future__ import annotations

import re
import statistics
import sys
import threading
import time
from collections.abc import Callable
from multiprocessing.synchronize import Event
from typing import Any, Final

import httpx
from exesdb_sdk import ControlClient
from harness import (
    FIRST_MESSAGE_TIMEOUT,
    IDLE_TIMEOUT,
    RAW_BODY_SIZE,
    SPAWN,
    Child,
    interleave,
    make_body,
    medians_of,
    spawn,
    started_broker,
    suite_main,
    throughput_summary,
)

HTTP_READY: Final = re.compile(r" http=(http://\S+)")
SIDES: Final = ("bare", "exesdb", "exesdb_http")
"""The bare proxy, the broker with ``--http none``, the broker with HTTP on and an SSE client."""
TARGET: Final = 0.95


def sse_reader(*, ready: Callable[[], None], url: str, stop: Event) -> dict[str, Any]:
    """Read ``/v1/stream`` of everything as fast as it comes, counting events, until ``stop``
    (a reader thread counts; this one waits for the word, then reports what was counted)."""
    counted = [0]
    opened = threading.Event()

    def read() -> None:
        with httpx.stream("GET", url + "/v1/stream", timeout=httpx.Timeout(5, read=None)) as response:
            response.raise_for_status()
            opened.set()
            for line in response.iter_lines():
                if line.startswith("data:"):
                    counted[0] += 1

    threading.Thread(target=read, daemon=True).start()  # ends with this process
    if not opened.wait(FIRST_MESSAGE_TIMEOUT):
        raise TimeoutError(f"{url}/v1/stream did not answer")
    ready()
    if not stop.wait(600):
        raise TimeoutError("never told to stop")
    time.sleep(IDLE_TIMEOUT)  # the last events still on their way: a bounded grace, not a sync
    return {"sse_events": counted[0]}


def _http_url(lines: list[str]) -> str:
    for line in lines:
        if match := HTTP_READY.search(line):
            return match.group(1)
    raise RuntimeError("the broker's readiness line names no HTTP URL:\n" + "\n".join(lines[-5:]))


def run_once(side: str, count: int) -> dict[str, Any]:
    """One run of ``side``: fresh broker, subscriber (and SSE client), then publisher."""
    kind, extra = {
        "bare": ("bare", ()),
        "exesdb": ("exesdb", ()),
        "exesdb_http": ("exesdb", ("--http", "127.0.0.1:0")),
    }[side]
    body = make_body(RAW_BODY_SIZE)
    with started_broker(kind, extra=extra) as broker:
        go, stop = SPAWN.Event(), SPAWN.Event()
        children: list[Child] = []
        try:
            sse: Child | None = None
            if side == "exesdb_http":
                sse = spawn("bench_http:sse_reader", {"url": _http_url(broker.lines), "stop": stop})
                children.append(sse)
                sse.expect("ready", FIRST_MESSAGE_TIMEOUT)
            sub = spawn("raw_subscriber", {"backend": broker.backend, "count": count, "stamp_offset": None})
            children.append(sub)
            pub = spawn(
                "raw_publisher", {"frontend": broker.frontend, "count": count, "go": go, "body": body, "rate": None}
            )
            children.append(pub)
            sub.expect("ready", FIRST_MESSAGE_TIMEOUT)
            pub.expect("ready", FIRST_MESSAGE_TIMEOUT)
            go.set()
            expected = 60.0 + count / 1000
            sent = pub.expect("result", expected)
            got = sub.expect("result", expected)
            summary = throughput_summary({**sent, **got})
            if sse is not None:
                stop.set()
                summary["sse_fraction"] = sse.expect("result", 30)["sse_events"] / count
        finally:
            stop.set()
            for child in children:
                child.stop()
    return summary


def _throughput_scenario(
    title: str, sides: tuple[str, str], runs: dict[str, list[dict[str, Any]]], count: int
) -> dict[str, Any]:
    chosen = {side: runs[side] for side in sides}
    medians = medians_of(chosen)
    base, other = (medians[side] for side in sides)
    ratios = {m: other[m] / base[m] if base[m] else float("nan") for m in ("msgs_per_s", "publish_msgs_per_s")}
    return {
        "title": title,
        "sides": list(sides),
        "count_per_run": count,
        "body_bytes": RAW_BODY_SIZE,
        "runs": chosen,
        "medians": medians,
        "min_delivered_fraction": {side: min(r["delivered_fraction"] for r in rs) for side, rs in chosen.items()},
        "ratios": ratios,
        "target": {"metric": "msgs_per_s", "op": ">=", "value": TARGET, "met": ratios["msgs_per_s"] >= TARGET},
    }


def http_throughput(*, quick: bool, reps: int) -> dict[str, dict[str, Any]]:
    """The three sides interleaved, 100 B messages; two scenarios from the same runs: HTTP on
    + SSE client vs the bare proxy (the issue's target), and vs the broker with HTTP off (what
    the surface itself costs)."""
    count = 5_000 if quick else 200_000
    reps = 1 if quick else reps
    print(f"  raw {RAW_BODY_SIZE} B throughput, bare / exesdb / exesdb_http: ", end="", flush=True)
    runs = interleave(SIDES, run_once, count, warmup=not quick, reps=reps)
    for side in ("bare", "exesdb"):
        for run in runs[side]:
            run["sse_fraction"] = 0.0  # no SSE client on these sides
    return {
        "http_throughput": _throughput_scenario(
            f"HTTP on + 1 SSE client vs bare proxy, raw {RAW_BODY_SIZE} B throughput",
            ("bare", "exesdb_http"),
            runs,
            count,
        ),
        "http_overhead": _throughput_scenario(
            f"HTTP on + 1 SSE client vs HTTP off, raw {RAW_BODY_SIZE} B throughput",
            ("exesdb", "exesdb_http"),
            runs,
            count,
        ),
    }


def metrics_scrape(*, quick: bool, reps: int) -> dict[str, Any]:
    """Milliseconds per ``/metrics`` scrape vs per control ``stats`` request, same broker."""
    samples = 10 if quick else 40
    title = "GET /metrics vs control stats, ms per request"
    print(f"  {title}: ", end="", flush=True)
    times: dict[str, list[float]] = {"stats": [], "metrics": []}
    size = 0
    with started_broker("exesdb", extra=("--http", "127.0.0.1:0")) as broker:
        url = _http_url(broker.lines) + "/metrics"
        with httpx.Client(timeout=5) as client, ControlClient(broker.control, timeout=5) as control:
            client.get(url).raise_for_status()  # warm: imports, the first snapshot
            control.stats()
            for _ in range(samples):
                started = time.perf_counter()
                control.stats()
                times["stats"].append((time.perf_counter() - started) * 1000)
                started = time.perf_counter()
                response = client.get(url)
                times["metrics"].append((time.perf_counter() - started) * 1000)
                response.raise_for_status()
                size = len(response.content)
    print("." * samples)
    runs = {side: [{"ms": ms} for ms in values] for side, values in times.items()}
    medians = {side: {"ms": statistics.median(values)} for side, values in times.items()}
    return {
        "title": title,
        "sides": ["stats", "metrics"],
        "samples": samples,
        "exposition_bytes": size,
        "runs": runs,
        "medians": medians,
        "p90_ms": {side: sorted(values)[int(len(values) * 0.9) - 1] for side, values in times.items()},
        "ratios": {"ms": medians["metrics"]["ms"] / medians["stats"]["ms"]},
        "target": None,
    }


def scenarios(*, quick: bool, reps: int) -> dict[str, dict[str, Any]]:
    """Every HTTP scenario (the interface benchmarks/bench.py runs)."""
    return {**http_throughput(quick=quick, reps=reps), "metrics_scrape": metrics_scrape(quick=quick, reps=reps)}


def main(argv: list[str] | None = None) -> int:
    return suite_main(argv, __doc__, "http", "exesdb-pubsub HTTP surface benchmark", scenarios)


if __name__ == "__main__":
    sys.exit(main())
