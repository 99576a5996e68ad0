"""The nats sink's throughput next to nats-py used directly, same server, same run.

Run it (about 15 seconds)::

    python benchmarks/bench_sink_nats.py [--messages 20000] [--batch 500] [--reps 5]

A ``nats-server -js`` is started on a free 127.0.0.1 port with a temporary data directory;
the stream ``BENCH`` (subjects ``exesdb.>``, file storage) is purged before every run. The
messages are NodeHealth envelopes with about 100 bytes of data, encoded and decoded with the
SDK into :class:`Delivery` objects before the clock starts, each with a new id.

- ``sink``: ``NatsSink.send`` of batches of ``--batch`` deliveries (JSON body, subject
  mapping, headers, per-item outcomes), one connection for the whole run.
- ``direct``: nats-py's best asynchronous JetStream publishing: ``js.publish_async`` of the
  same subjects, bodies and headers (computed before the clock starts, so this side does
  less work than the sink), the futures gathered per batch of the same size.

The sides alternate (direct, sink, direct, sink...); each reports messages/s (all messages
acknowledged), and the result is the medians and their ratio sink/direct.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import nats
from exesdb_connect.sink import Delivery
from exesdb_connect.sinks import nats as nats_sink
from exesdb_connect.source import delivery_of
from exesdb_sdk.protocol import Decoder, Encoder
from nats.js.api import StorageType, StreamConfig

STREAM = "BENCH"
START_TIMEOUT = 15.0


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextmanager
def nats_server(directory: Path) -> Iterator[str]:
    """A ``nats-server -js`` on a free loopback port, stopped on exit; yields its URL."""
    binary = shutil.which("nats-server")
    if binary is None:
        raise SystemExit("bench_sink_nats: nats-server is not installed (apt-get install nats-server)")
    port = free_port()
    log = directory / "server.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [binary, "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(directory / "js")],
            stdout=out,
            stderr=out,
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while b"Server is ready" not in log.read_bytes():
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"bench_sink_nats: nats-server did not start: {log.read_text()[-300:]}")
            time.sleep(0.02)
        yield f"nats://127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def deliveries(count: int) -> list[Delivery]:
    """``count`` NodeHealth deliveries built from real envelopes, each with its own id."""
    encoder, decoder = Encoder(src="bench"), Decoder()
    topic = encoder.topic("ex_esdb_health", "node_health:bench")
    data = {"node": "bench@127.0.0.1", "status": "healthy", "uptime_s": 12345, "load": 0.42, "connections": 17}
    out = []
    for _ in range(count):
        body = encoder.encode(topic, "NodeHealth", data)
        (message,) = decoder.decode([topic, body])
        out.append(delivery_of(message, body=body))
    return out


async def purge(url: str) -> None:
    client = await nats.connect(url)
    try:
        js = client.jetstream()
        try:
            await js.purge_stream(STREAM)
        except nats.js.errors.NotFoundError:
            await js.add_stream(StreamConfig(name=STREAM, subjects=["exesdb.>"], storage=StorageType.FILE))
    finally:
        await client.close()


async def run_sink(url: str, batches: list[list[Delivery]]) -> float:
    sink = nats_sink.create("bench", {"url": url, "stream": STREAM})
    await sink.open()
    try:
        start = time.perf_counter()
        for batch in batches:
            outcomes = await sink.send(batch)
            if any(outcome is not None for outcome in outcomes):
                raise SystemExit(f"bench_sink_nats: the sink refused messages: {outcomes[:3]}")
        return time.perf_counter() - start
    finally:
        await sink.close()


async def run_direct(url: str, batches: list[list[tuple[str, bytes, dict[str, str]]]]) -> float:
    client = await nats.connect(url)
    try:
        js = client.jetstream()
        start = time.perf_counter()
        for batch in batches:
            futures = [await js.publish_async(s, body, headers=dict(h), stream=STREAM) for s, body, h in batch]
            await asyncio.wait_for(asyncio.gather(*futures), 30)
        return time.perf_counter() - start
    finally:
        await client.close()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; print a table and a JSON line; return the result."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args(argv)
    rates: dict[str, list[float]] = {"direct": [], "sink": []}
    with tempfile.TemporaryDirectory(prefix="bench-sink-nats-") as tmp, nats_server(Path(tmp)) as url:
        size = len(json.dumps(deliveries(1)[0].json["data"]))
        for _ in range(args.reps):
            for side in ("direct", "sink"):
                items = deliveries(args.messages)
                batches = [items[i : i + args.batch] for i in range(0, len(items), args.batch)]
                asyncio.run(purge(url))
                if side == "sink":
                    elapsed = asyncio.run(run_sink(url, batches))
                else:
                    prepared = [
                        [
                            (
                                nats_sink.subject("exesdb", d.instance, d.subtopic),
                                json.dumps(d.json, separators=(",", ":")).encode(),
                                {"Nats-Msg-Id": d.id, "Exesdb-Topic": d.topic, "Exesdb-Type": d.type},
                            )
                            for d in batch
                        ]
                        for batch in batches
                    ]
                    elapsed = asyncio.run(run_direct(url, prepared))
                rates[side].append(args.messages / elapsed)
    direct, sink = statistics.median(rates["direct"]), statistics.median(rates["sink"])
    result = {
        "messages": args.messages,
        "batch": args.batch,
        "reps": args.reps,
        "data_bytes": size,
        "direct_msgs_per_s": round(direct),
        "sink_msgs_per_s": round(sink),
        "ratio_sink_to_direct": round(sink / direct, 3),
        "runs": {side: [round(r) for r in values] for side, values in rates.items()},
    }
    print(f"{'side':<8} {'median msgs/s':>14}  runs")
    for side, median in (("direct", direct), ("sink", sink)):
        print(f"{side:<8} {median:>14,.0f}  {', '.join(f'{r:,.0f}' for r in rates[side])}")
    print(f"ratio sink/direct: {sink / direct:.3f}")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
