"""Redis sink benchmark: messages/s of ``RedisSink.send`` against the same entries written by
redis-py directly (a non-transactional pipeline of ``XADD ... MAXLEN ~`` per batch).

Run it (some seconds; ``--quick`` is a smoke run)::

    python benchmarks/bench_sink_redis.py [--reps 5] [--count 20000] [--batch 500] [--quick] [--json-out PATH]

Method: a fresh ``redis-server`` on a free loopback port (no persistence: the sink's cost, not
the disk's), ``count`` typed ``NodeHealth`` messages (~100 B bodies) encoded and decoded by the
SDK and turned into connector deliveries once, before timing. The left side writes each batch
with one redis-py pipeline, building each entry inline from the same JSON view; the right side
is ``await sink.send(batch)``. Both write the same fields to the same stream (emptied before
each run) and check every entry landed. Runs alternate sides; the table shows the medians and
the ratio right / left. Only the ratio means much on a small shared machine.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, Final

import redis
import redis.asyncio as aioredis
from exesdb_connect.sink import Delivery
from exesdb_connect.sinks.redis import DEFAULT_MAXLEN, RedisSink, create
from sink_bench import sink_main

STREAM: Final = "exesdb:ex_esdb_health"
START_TIMEOUT: Final = 10.0


def start_server(directory: Path) -> tuple[subprocess.Popen[bytes], int]:
    """A ``redis-server`` on a free 127.0.0.1 port, answering ``PING`` (with a deadline)."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("bench_sink_redis: redis-server is not installed")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory), "--save", ""]
    proc = subprocess.Popen([*args, "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=1, socket_timeout=1)
    deadline = time.monotonic() + START_TIMEOUT
    try:
        while True:
            try:
                if client.ping():
                    return proc, port
            except redis.ConnectionError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise SystemExit("bench_sink_redis: redis-server did not start")
            time.sleep(0.02)
    finally:
        client.close()


async def direct(client: aioredis.Redis, batches: Sequence[Sequence[Delivery]]) -> None:
    """What a user would write by hand: one pipeline of XADDs per batch."""
    for batch in batches:
        pipe = client.pipeline(transaction=False)
        for d in batch:
            view = d.json
            fields = {
                "id": d.id,
                "topic": d.topic,
                "type": d.type,
                "ts": view["ts"],
                "src": view["src"],
                "seq": view["seq"],
                "data": json.dumps(view["data"], separators=(",", ":")),
            }
            pipe.xadd(STREAM, fields, maxlen=DEFAULT_MAXLEN, approximate=True)  # type: ignore[arg-type]
        for reply in await pipe.execute(raise_on_error=False):
            if not isinstance(reply, bytes):
                raise SystemExit(f"bench_sink_redis: XADD failed: {reply!r}")


async def through_sink(sink: RedisSink, batches: Sequence[Sequence[Delivery]]) -> None:
    for batch in batches:
        outcomes = await sink.send(batch)
        if any(outcome is not None for outcome in outcomes):
            raise SystemExit(f"bench_sink_redis: the sink refused items: {outcomes[:3]}")


def timed(port: int, count: int, work: Callable[[], Coroutine[Any, Any, None]]) -> float:
    """Messages/s of one run of ``work`` on an emptied server."""
    with redis.Redis(host="127.0.0.1", port=port) as client:
        client.flushall()
    started = time.perf_counter()
    asyncio.run(work())
    seconds = time.perf_counter() - started
    with redis.Redis(host="127.0.0.1", port=port) as client:
        landed = client.xlen(STREAM)
    if landed != count:
        raise SystemExit(f"bench_sink_redis: {landed} entries of {count}")
    return count / seconds


def run(port: int, side: str, batches: Sequence[Sequence[Delivery]], count: int) -> float:
    if side == "direct":

        async def work() -> None:
            client = aioredis.Redis(host="127.0.0.1", port=port)
            try:
                await direct(client, batches)
            finally:
                await client.aclose()

    else:

        async def work() -> None:
            sink = create("bench", {"url": f"redis://127.0.0.1:{port}/0"})
            try:
                await sink.open()
                await through_sink(sink, batches)
            finally:
                await sink.close()

    return timed(port, count, work)


def main(argv: list[str] | None = None) -> int:
    return sink_main(
        argv,
        kind="redis",
        doc=__doc__,
        description="NodeHealth to a Redis stream: redis-py pipeline (left) vs RedisSink.send (right)",
        start_server=start_server,
        run=run,
    )


if __name__ == "__main__":
    sys.exit(main())
