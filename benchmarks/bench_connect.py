"""Connector benchmark: what a sink sustains from the bus, and what connectors cost the data plane.

    python benchmarks/bench_connect.py [--reps 3] [--quick] [--json-out PATH]

Scenarios, each a ratio against a reference measured in the same run:

- ``sink_<kind>``: messages/s a connector delivers from the bus (a journaled instance, published
  as fast as the SDK publishes, until the far side holds them all, read with its own client)
  to the kind's real server (tests/peer_<kind>.py: webhook receiver, redis-server, mosquitto,
  nats-server -js), against the same server fed directly by that kind's own best client
  (:data:`FEEDERS`: one function per kind, batches of 500 where the client batches).
- ``dataplane``: raw 100-byte messages/s through ``exesdb-broker`` with two connectors running
  (on alerts and audit, idle) against the same broker without connectors (target >= 0.95).

Every role is its own process; medians over ``--reps`` interleaved runs.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import importlib
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import zmq

ROOT: Final = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from exesdb_sdk import Publisher  # noqa: E402

from tests.conftest import FREE, BrokerProcess  # noqa: E402

RAW_BODY: Final = b"\x00" * 100
SERVERS: Final = {"webhook": sys.executable, "redis": "redis-server", "mqtt": "mosquitto", "nats": "nats-server"}
"""The far side's server binary per kind (the webhook receiver is a Python process)."""
_DEADLINE: Final = 120.0


def _wait_lines(path: Path, count: int, deadline: float) -> None:
    for _ in range(10**9):
        if path.exists() and path.read_bytes().count(b"\n") >= count:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path}: fewer than {count} lines")
        time.sleep(0.01)


async def _feed_webhook(url: str, secret: bytes, bodies: list[bytes]) -> None:
    import aiohttp

    async with aiohttp.ClientSession() as session:
        for index, body in enumerate(bodies):
            signature = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
            headers = {"Content-Type": "application/json", "X-Exesdb-Id": f"direct:{index}"}
            headers["X-Exesdb-Signature"] = signature
            async with session.post(url, data=body, headers=headers) as response:
                response.raise_for_status()


def _wait_received(peer: Any, topic: str, count: int, deadline: float) -> None:
    """Until the far side holds ``count`` distinct messages of ``topic`` (read with its own client)."""
    for _ in range(10**9):
        if len({r.id for r in peer.received() if r.topic == topic}) >= count:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{peer.kind}: fewer than {count} messages of {topic}")
        time.sleep(0.05)


def _bench_json(count: int, run: int) -> list[tuple[str, dict[str, Any]]]:
    """(id, tail-json object) of ``count`` messages as the direct feeders send them."""
    return [
        (
            f"direct:{run}:{n}",
            {"topic": "ex_esdb_alerts/bench", "instance": "ex_esdb_alerts", "type": "Bench", "data": {"n": n}},
        )
        for n in range(count)
    ]


def direct_redis(peer: Any, count: int) -> float:
    """Messages/s into Redis from redis-py's asyncio client, one pipeline of XADDs per 500."""
    import redis.asyncio as aioredis

    items = _bench_json(count, time.monotonic_ns())

    async def feed() -> None:
        client = aioredis.Redis.from_url(peer.url, password=peer.password_file.read_text().strip())
        try:
            for start in range(0, count, 500):
                pipe = client.pipeline(transaction=False)
                for key, view in items[start : start + 500]:
                    fields = {"id": key, "topic": view["topic"], "type": view["type"], "data": json.dumps(view["data"])}
                    pipe.xadd("exesdb:bench-direct", fields, maxlen=100_000, approximate=True)  # type: ignore[arg-type]
                await pipe.execute()
        finally:
            await client.aclose()

    started = time.monotonic()
    asyncio.run(feed())
    return count / (time.monotonic() - started)


def direct_mqtt(peer: Any, count: int) -> float:
    """Messages/s into mosquitto from aiomqtt, QoS 1, each 500's publishes gathered."""
    import aiomqtt

    items = _bench_json(count, time.monotonic_ns())

    async def feed() -> None:
        async with aiomqtt.Client("127.0.0.1", peer.port, protocol=aiomqtt.ProtocolVersion.V5) as client:
            client.pending_calls_threshold = 1 << 30
            for start in range(0, count, 500):
                batch = items[start : start + 500]
                await asyncio.gather(
                    *(client.publish("exesdb/bench-direct", json.dumps({"id": k, **v}), qos=1) for k, v in batch)
                )

    started = time.monotonic()
    asyncio.run(feed())
    return count / (time.monotonic() - started)


def direct_nats(peer: Any, count: int) -> float:
    """Messages/s into JetStream from nats-py, each 500's ``publish_async`` acks gathered."""
    import nats

    items = _bench_json(count, time.monotonic_ns())

    async def feed() -> None:
        client = await nats.connect(peer.url, user="exesdb", password=peer.password_file.read_text().strip())
        try:
            js = client.jetstream()
            for start in range(0, count, 500):
                futures = [
                    await js.publish_async("exesdb.bench.direct", json.dumps(v).encode(), headers={"Nats-Msg-Id": k})
                    for k, v in items[start : start + 500]
                ]
                await asyncio.wait_for(asyncio.gather(*futures), 30)
        finally:
            await client.close()

    started = time.monotonic()
    asyncio.run(feed())
    return count / (time.monotonic() - started)


def direct_webhook(peer: Any, count: int) -> float:
    """Messages/s into the webhook receiver from one aiohttp client, one POST at a time (as the sink sends)."""
    bodies = [
        json.dumps({"topic": "ex_esdb_alerts/bench", "type": "Bench", "data": {"n": n}}).encode() for n in range(count)
    ]
    before = peer.log.read_bytes().count(b"\n") if peer.log.exists() else 0
    started = time.monotonic()
    asyncio.run(_feed_webhook(peer.url(), peer.secret_file.read_bytes().strip(), bodies))
    _wait_lines(peer.log, before + count, time.monotonic() + _DEADLINE)
    return count / (time.monotonic() - started)


FEEDERS: Final[dict[str, Callable[[Any, int], float]]] = {
    "webhook": direct_webhook,
    "redis": direct_redis,
    "mqtt": direct_mqtt,
    "nats": direct_nats,
}


def _toml(table: dict[str, Any]) -> str:
    return "[[connectors]]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in table.items())


def via_connector(peer: Any, count: int, tmp: Path) -> float:
    config = tmp / f"bench-{time.monotonic_ns()}.toml"
    config.write_text(_toml({"name": "bench", "sink": peer.kind, "topics": ["alerts/bench"], **peer.sink_options()}))
    args = ["--frontend", FREE, "--backend", FREE, "--control", FREE, "--config", str(config)]
    broker = BrokerProcess([*args, "--data-dir", str(tmp / f"data-{time.monotonic_ns()}"), "--start-grace", "0"])
    broker.wait_ready()
    try:
        # every run's messages are new ones (a fresh publisher: fresh ids)
        held = len({r.id for r in peer.received() if r.topic == "ex_esdb_alerts/bench"})
        started = time.monotonic()
        with Publisher(broker.frontend, control=broker.control) as pub:
            for n in range(count):
                pub.publish("alerts", "bench", "Bench", {"n": n})
        _wait_received(peer, "ex_esdb_alerts/bench", held + count, time.monotonic() + _DEADLINE)
        return count / (time.monotonic() - started)
    finally:
        broker.stop()


def dataplane(count: int, connectors: int, tmp: Path, receiver_url: str) -> float:
    """Raw 100-byte messages/s publisher -> broker -> subscriber, with ``connectors`` idle connectors."""
    args = ["--frontend", FREE, "--backend", FREE, "--control", FREE, "--start-grace", "0"]
    args += ["--data-dir", str(tmp / f"dp-{time.monotonic_ns()}")]
    if connectors:
        config = tmp / f"dp-{time.monotonic_ns()}.toml"
        tables = [
            {"name": f"c{i}", "sink": "webhook", "instances": ["alerts", "audit"], "url": receiver_url}
            for i in range(connectors)
        ]
        config.write_text("".join(_toml(t) for t in tables))
        args += ["--config", str(config)]
    broker = BrokerProcess(args).wait_ready()
    try:
        code = f"""
import sys, time, zmq
ctx = zmq.Context(); sub = ctx.socket(zmq.SUB); sub.setsockopt(zmq.RCVHWM, 0)
sub.setsockopt(zmq.SUBSCRIBE, b"ex_esdb_metrics/"); sub.connect({broker.backend!r})
pub = ctx.socket(zmq.PUB); pub.setsockopt(zmq.SNDHWM, 0); pub.connect({broker.frontend!r})
for _ in range(500):
    pub.send_multipart([b"ex_esdb_metrics/warm", b"x"])
    if sub.poll(10): break
while sub.poll(100): sub.recv_multipart()
n = {count}; got = 0
import threading
def send():
    for _ in range(n): pub.send_multipart([b"ex_esdb_metrics/bench", {RAW_BODY!r}])
t = threading.Thread(target=send); start = time.monotonic(); t.start()
while got < n and sub.poll(2000):
    sub.recv_multipart(); got += 1
print(got / (time.monotonic() - start)); t.join()
"""
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=_DEADLINE)
        return float(out.stdout.strip())
    finally:
        broker.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="small counts (a smoke run)")
    parser.add_argument("--json-out", type=Path)
    options = parser.parse_args()
    sink_count, plane_count = (200, 50_000) if options.quick else (2000, 300_000)
    report: dict[str, Any] = {"scenarios": {}}
    with tempfile.TemporaryDirectory() as directory:
        tmp = Path(directory)
        for kind, feeder in FEEDERS.items():
            if shutil.which(SERVERS[kind]) is None:
                print(f"sink_{kind}: skipped ({SERVERS[kind]} is not installed)")
                continue
            (tmp / kind).mkdir()
            peer = importlib.import_module(f"tests.peer_{kind}").make_peer(tmp / kind)
            peer.start()
            try:
                bus, direct = [], []
                for _ in range(options.reps):
                    bus.append(via_connector(peer, sink_count, tmp))
                    direct.append(feeder(peer, sink_count))
            finally:
                peer.close()
            b, d = statistics.median(bus), statistics.median(direct)
            report["scenarios"][f"sink_{kind}"] = {"via_connector": b, "direct": d, "ratio": b / d}
        none, two = [], []
        for _ in range(options.reps):
            none.append(dataplane(plane_count, 0, tmp, "http://127.0.0.1:9/x"))
            two.append(dataplane(plane_count, 2, tmp, "http://127.0.0.1:9/x"))
        n, t = statistics.median(none), statistics.median(two)
        report["scenarios"]["dataplane"] = {"no_connectors": n, "two_connectors": t, "ratio": t / n, "target": 0.95}
    for name, figures in report["scenarios"].items():
        print(
            f"{name:<14} "
            + "  ".join(f"{k}={v:,.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in figures.items())
        )
    if options.json_out is not None:
        options.json_out.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    zmq.Context.instance()
    sys.exit(main())
