"""Federation benchmark: what crossing NATS costs, against staying on one broker and against
nats-py end to end through the same NATS cluster.

    python benchmarks/bench_federation.py [--reps 3] [--quick] [--json-out PATH]

A real three-node ``nats-server`` cluster (tests/nats_cluster.py) and two brokers, A on
node 1 and B on node 2, federated (live instances). Three paths, interleaved, medians:

- ``local``: SDK publisher at A -> SDK subscriber at A;
- ``federated``: SDK publisher at A -> A's bridge -> NATS node 1 -> route -> node 2 -> B's
  bridge -> B -> SDK subscriber at B;
- ``nats``: nats-py publisher on node 1 -> nats-py subscriber on node 2 (the same bodies).

Throughput: ``count`` 100-byte-data messages published as fast as the publisher goes, counted
at the subscriber from its first to its last (with the delivered fraction: a path sheds what a
full queue cannot take, counted as gaps). Latency: 1000 messages a second for ``seconds``, each
carrying its send time, p50 and p99 at the subscriber. The publisher and the subscriber share
this process (a thread each), alike for every path. Only the ratios mean much here.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import msgspec

ROOT: Final = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import nats  # noqa: E402
from exesdb_sdk import ControlClient, Publisher, ReceiveTimeoutError, Subscriber  # noqa: E402
from harness import environment, handle_exits, write_report  # noqa: E402

from tests.conftest import FREE, BrokerProcess  # noqa: E402
from tests.nats_cluster import BINARY, NatsCluster  # noqa: E402

PAD: Final = "x" * 100
IDLE: Final = 2.0
_ENCODE: Final = msgspec.json.Encoder().encode
_DECODE: Final = msgspec.json.Decoder().decode


def _broker(name: str, url: str, tmp: Path) -> BrokerProcess:
    args = ["--frontend", FREE, "--backend", FREE, "--control", FREE, "--http", "none", "--start-grace", "0"]
    args += ["--data-dir", str(tmp / f"data-{name}"), "--federation-nats", url, "--federation-name", name]
    args += ["--node", name, "--metrics-interval", "3600", "--hwm", "100000"]
    broker = BrokerProcess(args).wait_ready()
    deadline = time.monotonic() + 10
    with ControlClient(broker.control) as control:
        while control.stats()["federation"]["state"] != "connected":
            if time.monotonic() > deadline:
                raise SystemExit(f"bench_federation: broker {name} did not connect to NATS")
            time.sleep(0.05)
    return broker


Run = Callable[[list[dict[str, Any]], float], list[float]]
"""A run of a path: publish the items (paced, or flat out with 0), return each one's latency."""


def _sdk_path(publisher_at: BrokerProcess, subscriber_at: BrokerProcess) -> Run:
    """A run through the brokers: publish ``items`` (pacing ``interval`` seconds apart, 0: flat
    out), return the receive times minus each item's ``t`` (seconds) and the count received."""

    def run(items: list[dict[str, Any]], interval: float) -> list[float]:
        got: list[float] = []
        with Subscriber(subscriber_at.backend, hwm=1_000_000) as sub, Publisher(publisher_at.frontend) as pub:
            sub.subscribe("events", "bench")
            for _ in range(200):  # until the path carries (NATS interest spreads over the routes)
                pub.publish("events", "bench", "Probe", {"probe": True})
                try:
                    if sub.recv(timeout=0.05).data.get("probe"):
                        break
                except ReceiveTimeoutError:
                    continue
            for _ in range(1000):  # late probes
                try:
                    sub.recv(timeout=0.3)
                except ReceiveTimeoutError:
                    break

            def receive() -> None:
                for _ in range(len(items) + 1000):  # a probe later than the drain above is skipped
                    try:
                        message = sub.recv(timeout=IDLE)
                    except ReceiveTimeoutError:
                        return
                    if message.type == "Bench":
                        got.append(time.perf_counter() - message.data["t"])
                        if len(got) == len(items):
                            return

            reader = threading.Thread(target=receive)
            reader.start()
            _pace(items, interval, lambda item: pub.publish("events", "bench", "Bench", item))
            reader.join(120)
        return got

    return run


def _nats_path(publish_url: str, subscribe_url: str) -> Run:
    def run(items: list[dict[str, Any]], interval: float) -> list[float]:
        async def scenario() -> list[float]:
            got: list[float] = []
            done = asyncio.Event()
            sub_client = await nats.connect(subscribe_url)
            pub_client = await nats.connect(publish_url)

            async def on_message(message: Any) -> None:
                got.append(time.perf_counter() - _DECODE(message.data)["t"])
                if len(got) >= len(items):
                    done.set()

            await sub_client.subscribe("bench.direct", cb=on_message, pending_msgs_limit=10_000_000)
            await sub_client.flush()
            for _ in range(200):  # interest crosses the routes asynchronously
                probe = await sub_client.subscribe("bench.probe")
                await pub_client.publish("bench.probe", b"p")
                await pub_client.flush()
                try:
                    await probe.next_msg(timeout=0.05)
                    break
                except nats.errors.TimeoutError:
                    continue
                finally:
                    await probe.unsubscribe()
            for index, item in enumerate(items):
                item["t"] = time.perf_counter()
                await pub_client.publish("bench.direct", _ENCODE(item))
                if interval:
                    await asyncio.sleep(max(0.0, items[0]["t"] + (index + 1) * interval - time.perf_counter()))
            await pub_client.flush()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), IDLE + len(items) / 1000)
            await pub_client.close()
            await sub_client.close()
            return got

        return asyncio.run(scenario())

    return run


def _pace(items: list[dict[str, Any]], interval: float, send: Callable[[dict[str, Any]], object]) -> None:
    start = time.perf_counter()
    for index, item in enumerate(items):
        item["t"] = time.perf_counter()
        send(item)
        if interval:
            delay = start + (index + 1) * interval - time.perf_counter()
            if delay > 0:
                time.sleep(delay)  # the publisher's pace


def _items(count: int) -> list[dict[str, Any]]:
    return [{"n": n, "pad": PAD, "t": 0.0} for n in range(count)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--count", type=int, default=20_000, help="messages per throughput run")
    parser.add_argument("--seconds", type=float, default=2.0, help="seconds of a latency run at 1000 msg/s")
    parser.add_argument("--quick", action="store_true", help="small counts, one repetition: a smoke run")
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args(argv)
    if BINARY is None:
        print("bench_federation: skipped (nats-server is not installed)")
        return 0
    handle_exits()
    reps, count, seconds = (1, 2000, 0.5) if args.quick else (args.reps, args.count, args.seconds)
    started = time.monotonic()
    results: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-federation-") as directory:
        tmp = Path(directory)
        cluster = NatsCluster(tmp)
        cluster.start()
        brokers = [_broker("a", cluster.urls[0], tmp), _broker("b", cluster.urls[1], tmp)]
        try:
            paths = {
                "local": _sdk_path(brokers[0], brokers[0]),
                "federated": _sdk_path(brokers[0], brokers[1]),
                "nats": _nats_path(cluster.urls[0], cluster.urls[1]),
            }
            for rep in range(reps):
                order = list(paths) if rep % 2 == 0 else list(reversed(paths))
                for name in order:
                    figures = results.setdefault(name, {"msgs_per_s": [], "delivered": [], "p50_ms": [], "p99_ms": []})
                    t0 = time.perf_counter()
                    got = paths[name](_items(count), 0.0)
                    elapsed = time.perf_counter() - t0
                    figures["msgs_per_s"].append(len(got) / max(elapsed, 1e-9))
                    figures["delivered"].append(len(got) / count)
                    lat = sorted(paths[name](_items(int(seconds * 1000)), 0.001))
                    if lat:
                        figures["p50_ms"].append(1000 * lat[len(lat) // 2])
                        figures["p99_ms"].append(1000 * lat[min(len(lat) - 1, int(len(lat) * 0.99))])
        finally:
            for broker in brokers:
                broker.stop()
            cluster.close()
    medians = {name: {k: statistics.median(v) if v else 0.0 for k, v in f.items()} for name, f in results.items()}
    ratios = {
        "federated/local msgs_per_s": medians["federated"]["msgs_per_s"] / medians["local"]["msgs_per_s"],
        "federated/nats msgs_per_s": medians["federated"]["msgs_per_s"] / medians["nats"]["msgs_per_s"],
        "federated/local p50": medians["federated"]["p50_ms"] / max(medians["local"]["p50_ms"], 1e-9),
        "federated/nats p50": medians["federated"]["p50_ms"] / max(medians["nats"]["p50_ms"], 1e-9),
    }
    print(
        f"federation: {count:,} msgs per throughput run, {seconds:g} s at 1000 msg/s per latency run, medians of {reps}"
    )
    print(f"{'path':<10} {'msgs/s':>10} {'delivered':>9} {'p50 ms':>8} {'p99 ms':>8}")
    for name, m in medians.items():
        print(f"{name:<10} {m['msgs_per_s']:>10,.0f} {m['delivered']:>9.3f} {m['p50_ms']:>8.2f} {m['p99_ms']:>8.2f}")
    for name, value in ratios.items():
        print(f"{name}: {value:.3f}")
    report = {
        "environment": environment(),
        "config": {"reps": reps, "count": count, "seconds": seconds},
        "scenarios": {"federation": {"runs": results, "medians": medians, "ratios": ratios}},
        "elapsed_seconds": round(time.monotonic() - started, 1),
    }
    write_report(report, args.json_out, "federation")
    return 0


if __name__ == "__main__":
    sys.exit(main())
