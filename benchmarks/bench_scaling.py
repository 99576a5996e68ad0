"""Scaling benchmark: the broker CPU each federation hop costs per message, and a check of the
cost model of docs/scaling.md against a three-broker run.

    python benchmarks/bench_scaling.py [--quick] [--json-out PATH]

A real three-node ``nats-server`` cluster with JetStream (tests/nats_cluster.py), three
federated brokers a, b, c (one per NATS node) and one broker without federation. Publishers and
subscribers run in client processes (paced, so what is measured is the broker, not a client's
GIL). Costs are CPU time (utime + stime from /proc/<pid>/stat of each broker and nats-server)
over a run, minus the process's idle rate measured beforehand, divided by the messages:

- ``c_local``: the plain broker, 1 publisher -> 1 subscriber; ``c_delivery``: each extra
  subscriber, from 1 vs 4 subscribers on it;
- ``c_export``: broker a, whose only consumer is its federation bridge; ``c_import``: broker b,
  importing and delivering to 1 subscriber; ``c_import_bare``: broker c, importing for nobody;
  ``c_nats``: the three nats-servers together, per message; the same at 3,000 and 1,000 msg/s
  (a cost falls as the rate grows), and each bridge's own thread (``exesdb-federati``);
- ``c_journal_export`` / ``c_journal_import``: durable alerts published at a (several publisher
  threads), committed and exported by a, pulled and committed by b and c; ``durable_e2e_per_s``:
  durable publish at a -> in b's and c's journals;
- ``check``: N=3 brokers, M=2 subscribers each, each with a local publisher at R msg/s for T s:
  measured broker CPU against R*c_export + (N-1)*R*(c_import - c_delivery) + N*R*M*c_delivery,
  and each subscriber's count against N*R*T (the rest counted as gaps); the prediction with the
  costs at each rate, and with a fit of CPU/s = fixed + per-message * rate through both.

A cost below the clock tick (10 ms over the run) is reported as 0.001 us, ``c_delivery_raw_us``
as measured.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import os
import queue
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.context import ForkContext
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any, Final

ROOT: Final = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from exesdb_sdk import ControlClient, Publisher, ReceiveTimeoutError, Subscriber  # noqa: E402
from harness import environment, handle_exits, write_report  # noqa: E402

from tests.conftest import FREE, BrokerProcess  # noqa: E402
from tests.nats_cluster import BINARY, NatsCluster  # noqa: E402

INSTANCE: Final = "events"
PAD: Final = "x" * 100
TICK: Final = 0.01
"""The publishers' pacing step: R/100 messages every 10 ms."""
FIRST_TIMEOUT: Final = 20.0
IDLE: Final = 2.0
"""A subscriber stops once nothing has come for this long after its first message."""
READY_TIMEOUT: Final = 20.0
CLOCK_TICK: Final = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class Sizes:
    rate: int
    seconds: float
    durable: int
    durable_threads: int
    check_rate: int
    check_seconds: float
    idle_seconds: float


FULL: Final = Sizes(3000, 4.0, 2000, 4, 1000, 6.0, 3.0)
QUICK: Final = Sizes(2000, 1.0, 300, 4, 400, 1.0, 1.0)


# -- client processes ------------------------------------------------------------------------------


def _publish(
    frontend: str, subtopic: str, rate: int, seconds: float, ready: Event, start: Event, out: Queue[Any]
) -> None:
    """Publish ``rate * seconds`` messages on events/<subtopic>, ``rate / 100`` every 10 ms."""
    total, per_tick = int(rate * seconds), max(1, rate // 100)
    with Publisher(frontend) as pub:  # connected once constructed
        ready.set()
        start.wait(60)
        began = time.perf_counter()
        sent = 0
        while sent < total:
            for _ in range(min(per_tick, total - sent)):
                pub.publish(INSTANCE, subtopic, "Bench", {"n": sent, "pad": PAD})
                sent += 1
            delay = began + (sent / per_tick) * TICK - time.perf_counter()
            if delay > 0:
                time.sleep(delay)  # the pace
        out.put(("pub", sent, time.perf_counter() - began))


def _subscribe(backend: str, expected: int, ready: Event, out: Queue[Any]) -> None:
    """Receive until ``expected`` messages came, or nothing came for ``IDLE`` s; report counts."""
    with Subscriber(backend, hwm=1_000_000) as sub:
        sub.subscribe(INSTANCE, "bench")
        sub.wait_ready(READY_TIMEOUT)
        ready.set()
        got, timeout = 0, FIRST_TIMEOUT
        while got < expected:
            try:
                sub.recv(timeout=timeout)
            except ReceiveTimeoutError:
                break
            got, timeout = got + 1, IDLE
        out.put(("sub", got, sub.stats.gaps))


def _durable(
    frontend: str, control: str, count: int, threads: int, ready: Event, start: Event, out: Queue[Any]
) -> None:
    """Publish ``count`` durable alerts from ``threads`` threads (each waits for its acknowledgement)."""
    done = [0] * threads
    pubs = [Publisher(frontend, control=control) for _ in range(threads)]

    def one(index: int) -> None:
        with pubs[index] as pub:
            for n in range(index, count, threads):
                pub.publish("alerts", f"scaling{index}", "Counted", {"n": n}, durable=True)
                done[index] += 1

    ready.set()
    start.wait(60)
    began = time.perf_counter()
    workers = [threading.Thread(target=one, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(300)
    out.put(("durable", sum(done), time.perf_counter() - began))


# -- the run ---------------------------------------------------------------------------------------


def _thread_stat(pid: int, prefix: str) -> Path:
    """The /proc stat file of ``pid``'s thread whose name starts with ``prefix``."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        if (task / "comm").read_text().startswith(prefix):
            return task / "stat"
    raise SystemExit(f"bench_scaling: process {pid} has no thread named {prefix}*")


def _cpu_seconds(stat: Path) -> float:
    """utime + stime of a process's or a thread's stat file."""
    fields = stat.read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICK


class Meter:
    """CPU seconds of a set of processes and threads (their /proc stat files), net of each one's
    idle rate."""

    def __init__(self, stats: dict[str, Path]) -> None:
        self.pids = stats
        self.idle: dict[str, float] = dict.fromkeys(stats, 0.0)

    def sample(self) -> tuple[float, dict[str, float]]:
        return time.monotonic(), {name: _cpu_seconds(stat) for name, stat in self.pids.items()}

    def measure_idle(self, seconds: float) -> None:
        t0, before = self.sample()
        time.sleep(seconds)  # the idle window itself is what is measured
        t1, after = self.sample()
        self.idle = {name: (after[name] - before[name]) / (t1 - t0) for name in self.pids}

    def net(self, start: tuple[float, dict[str, float]], end: tuple[float, dict[str, float]]) -> dict[str, float]:
        window = end[0] - start[0]
        return {name: end[1][name] - start[1][name] - self.idle[name] * window for name in self.pids}


def _broker(name: str, tmp: Path, url: str | None) -> BrokerProcess:
    args = ["--frontend", FREE, "--backend", FREE, "--control", FREE, "--http", "none", "--start-grace", "0"]
    args += ["--data-dir", str(tmp / f"data-{name}"), "--node", name, "--metrics-interval", "3600", "--hwm", "100000"]
    if url is not None:
        args += ["--federation-nats", url, "--federation-name", name]
    return BrokerProcess(args)


def _until(what: str, predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"bench_scaling: {what} within {timeout:g} s")
        time.sleep(interval)


def _stats(broker: BrokerProcess) -> dict[str, Any]:
    with ControlClient(broker.control) as control:
        stats: dict[str, Any] = control.stats()
    return stats


def _journal_imported(broker: BrokerProcess) -> int:
    imported: int = _stats(broker)["federation"]["jetstream"]["instances"]["ex_esdb_alerts"]["imported"]
    return imported


def _carries(brokers: list[BrokerProcess]) -> None:
    """Until a message published at each federated broker reaches each other one (NATS interest
    spreads over the routes asynchronously)."""
    for source in brokers:
        for target in brokers:
            if target is source:
                continue
            with Subscriber(target.backend) as sub, Publisher(source.frontend) as pub:
                sub.subscribe(INSTANCE, "probe")
                sub.wait_ready(READY_TIMEOUT)
                for _ in range(200):
                    pub.publish(INSTANCE, "probe", "Probe", {})
                    try:
                        sub.recv(timeout=0.05)
                        break
                    except ReceiveTimeoutError:
                        continue
                else:
                    raise SystemExit("bench_scaling: the federation did not carry a probe in 10 s")


class Bench:
    def __init__(self, ctx: ForkContext, meter: Meter) -> None:
        self.ctx, self.meter = ctx, meter

    def run(
        self,
        pubs: list[tuple[BrokerProcess, int, float]],
        subs: list[tuple[BrokerProcess, int]],
        durable: tuple[BrokerProcess, int, int] | None = None,
        until: Callable[[], bool] | None = None,
    ) -> dict[str, Any]:
        """Start the subscribers, wait until each is subscribed, start the publishers together,
        collect every report; return the net CPU seconds per process and the reports."""
        out: Queue[Any] = self.ctx.Queue()
        start = self.ctx.Event()
        procs, readies = [], []
        for broker, expected in subs:
            ready = self.ctx.Event()
            readies.append(ready)
            procs.append(self.ctx.Process(target=_subscribe, args=(broker.backend, expected, ready, out)))
        for index, (broker, rate, seconds) in enumerate(pubs):
            readies.append(ready := self.ctx.Event())
            args = (broker.frontend, f"bench{index}", rate, seconds, ready, start, out)
            procs.append(self.ctx.Process(target=_publish, args=args))
        if durable is not None:
            broker, count, threads = durable
            readies.append(ready := self.ctx.Event())
            args = (broker.frontend, broker.control, count, threads, ready, start, out)
            procs.append(self.ctx.Process(target=_durable, args=args))
        for proc in procs:
            proc.start()
        try:
            for ready in readies:
                if not ready.wait(READY_TIMEOUT + 10):
                    raise SystemExit("bench_scaling: a client did not connect")
            before = self.meter.sample()
            began = time.monotonic()
            start.set()
            reports = _collect(out, procs)
            finished = time.monotonic()
            if until is not None:
                _until("the journal import did not finish", until, 120, 0.2)  # a stats request costs the broker too
                finished = time.monotonic()
            after = self.meter.sample()
        finally:
            for proc in procs:
                proc.join(10)
                if proc.is_alive():
                    proc.kill()
        return {
            "cpu": self.meter.net(before, after),
            "elapsed": finished - began,
            "received": [r[1] for r in reports if r[0] == "sub"],
            "gaps": [r[2] for r in reports if r[0] == "sub"],
            "sent": sum(r[1] for r in reports if r[0] in ("pub", "durable")),
            "publish_seconds": max([r[2] for r in reports if r[0] in ("pub", "durable")], default=0.0),
        }


def _collect(out: Queue[Any], procs: list[Any]) -> list[Any]:
    """Every client's report; a client that died without one ends the run with its exit code."""
    reports: list[Any] = []
    deadline = time.monotonic() + 300
    while len(reports) < len(procs):
        try:
            reports.append(out.get(timeout=0.5))
        except queue.Empty:
            failed = [proc.exitcode for proc in procs if proc.exitcode not in (None, 0)]
            if failed or time.monotonic() > deadline:
                raise SystemExit(f"bench_scaling: a client process failed (exit codes {failed})") from None
    return reports


def _costs(
    bench: Bench, runs: dict[str, Any], point: str, brokers: dict[str, BrokerProcess], rate: int, seconds: float
) -> dict[str, float]:
    """The live costs at ``rate`` msg/s: local with 1 and 4 subscribers, and one federation hop."""
    a, b, plain = brokers["a"], brokers["b"], brokers["plain"]
    count = int(rate * seconds)
    print(f"{point} ({rate} msg/s, {seconds:g} s): local 1, local 4, hop a -> b (1 subscriber), c (none)", flush=True)
    one = [(plain, rate, seconds)]
    local_1 = runs[f"{point}_local_1"] = bench.run(one, [(plain, count)])
    local_4 = runs[f"{point}_local_4"] = bench.run(one, [(plain, count)] * 4)
    hop = runs[f"{point}_hop"] = bench.run([(a, rate, seconds)], [(b, count)])
    for run, subscribers in ((local_1, 1), (local_4, 4), (hop, 1)):
        if run["received"] != [count] * subscribers:
            print(f"  note: received {run['received']} of {count} (gaps {run['gaps']})", flush=True)
    cpu = hop["cpu"]
    return {
        "rate": rate,
        "c_local_us": _per_message(local_1["cpu"]["plain"], count),
        "c_delivery_us": _per_message((local_4["cpu"]["plain"] - local_1["cpu"]["plain"]) / 3, count),
        "c_delivery_raw_us": 1e6 * (local_4["cpu"]["plain"] - local_1["cpu"]["plain"]) / 3 / count,
        "c_export_us": _per_message(cpu["a"], count),
        "c_import_us": _per_message(cpu["b"], count),
        "c_import_bare_us": _per_message(cpu["c"], count),
        "c_nats_us": _per_message(sum(cpu[f"nats{i}"] for i in range(3)), count),
        "c_export_bridge_us": _per_message(cpu["a_bridge"], count),
        "c_import_bridge_us": _per_message(cpu["b_bridge"], count),
    }


def _model_us(c: dict[str, float], n: int, m: int) -> float:
    """Broker CPU microseconds per message published at each broker (docs/scaling.md)."""
    return c["c_export_us"] + (n - 1) * (c["c_import_us"] - c["c_delivery_us"]) + n * m * c["c_delivery_us"]


def _affine(costs: dict[str, dict[str, float]]) -> dict[str, float]:
    """CPU/s = fixed + per_message * rate for export and import, fitted through the two rates:
    a busy broker's threads wake per message at a low rate and per batch at a high one, so the
    per-message cost falls as the rate grows (docs/scaling.md)."""
    high, low = costs["high"], costs["low"]
    fit: dict[str, float] = {}
    for role in ("export", "import", "export_bridge", "import_bridge", "nats"):
        key = f"c_{role}_us"
        slope = (high[key] * high["rate"] - low[key] * low["rate"]) / (high["rate"] - low["rate"])
        fit[f"{role}_per_message_us"] = slope
        fit[f"{role}_fixed_cpu_per_s"] = (low[key] - slope) * low["rate"] / 1e6
    return fit


def _affine_cpu_per_s(fit: dict[str, float], delivery_us: float, n: int, m: int, rate: float) -> float:
    """A broker's CPU/s at ``rate`` msg/s published at each of ``n`` brokers, ``m`` subscribers each."""
    export = fit["export_fixed_cpu_per_s"] + fit["export_per_message_us"] * rate / 1e6
    imports = fit["import_fixed_cpu_per_s"] + (fit["import_per_message_us"] - delivery_us) * (n - 1) * rate / 1e6
    return export + imports + n * m * rate * delivery_us / 1e6


def _per_message(cpu: float, count: int) -> float:
    """Microseconds of CPU per message (at least 0.001: a cost below the clock tick is not zero)."""
    return max(1e6 * cpu / max(count, 1), 0.001)


def scenarios(sizes: Sizes, tmp: Path) -> dict[str, Any]:
    cluster = NatsCluster(tmp)
    cluster.start()
    brokers = {name: _broker(name, tmp, cluster.urls[i]) for i, name in enumerate("abc")}
    brokers["plain"] = _broker("plain", tmp, None)
    try:
        for broker in brokers.values():
            broker.wait_ready()
        fed = [brokers[name] for name in "abc"]
        for broker in fed:
            _until(
                "a broker's federation was not connected with JetStream ok",
                lambda b=broker: (
                    (f := _stats(b)["federation"])["state"] == "connected"  # type: ignore[misc]
                    and f["jetstream"]["state"] == "ok"
                ),
                20,
            )
        _carries(fed)
        pids = {name: Path(f"/proc/{broker.proc.pid}/stat") for name, broker in brokers.items()}
        for name in "abc":  # the bridge's thread: one Python thread per broker, the hop's ceiling
            pids[f"{name}_bridge"] = _thread_stat(brokers[name].proc.pid, "exesdb-federati")
        for index, node in enumerate(cluster.nodes):
            assert node.process is not None
            pids[f"nats{index}"] = Path(f"/proc/{node.process.pid}/stat")
        meter = Meter(pids)
        meter.measure_idle(sizes.idle_seconds)
        bench = Bench(multiprocessing.get_context("fork"), meter)
        a, b, c = brokers["a"], brokers["b"], brokers["c"]
        runs: dict[str, dict[str, Any]] = {}
        costs = {
            "high": _costs(bench, runs, "high", brokers, sizes.rate, sizes.seconds),
            "low": _costs(bench, runs, "low", brokers, sizes.check_rate, sizes.check_seconds),
        }
        print(f"durable alerts at a: {sizes.durable} from {sizes.durable_threads} threads", flush=True)
        base_b, base_c = _journal_imported(b), _journal_imported(c)
        runs["journal"] = bench.run(
            [],
            [],
            durable=(a, sizes.durable, sizes.durable_threads),
            until=lambda: (
                _journal_imported(b) - base_b >= sizes.durable and _journal_imported(c) - base_c >= sizes.durable
            ),
        )
        journal = runs["journal"]["cpu"]
        journal_costs = {
            "c_journal_export_us": _per_message(journal["a"], sizes.durable),
            "c_journal_import_us": _per_message((journal["b"] + journal["c"]) / 2, sizes.durable),
            "c_journal_nats_us": _per_message(sum(journal[f"nats{i}"] for i in range(3)), sizes.durable),
        }
        rates = {
            "durable_publish_per_s": runs["journal"]["sent"] / max(runs["journal"]["publish_seconds"], 1e-9),
            "durable_e2e_per_s": sizes.durable / max(runs["journal"]["elapsed"], 1e-9),
        }

        n, m, rate, seconds = 3, 2, sizes.check_rate, sizes.check_seconds
        expected = int(n * rate * seconds)
        print(f"check: N={n} brokers, M={m} subscribers each, R={rate} msg/s each for {seconds:g} s", flush=True)
        check = bench.run([(x, rate, seconds) for x in fed], [(x, expected) for x in fed for _ in range(m)])
        sent_each = rate * seconds
        fit = _affine(costs)
        per_broker: dict[str, dict[str, float]] = {}
        for name in "abc":
            row = per_broker[name] = {
                "measured_cpu_s": check["cpu"][name],
                "bridge_measured_cpu_s": check["cpu"][f"{name}_bridge"],
            }
            predicted = seconds * _affine_cpu_per_s(fit, costs["high"]["c_delivery_us"], n, m, rate)
            row["predicted_cpu_s_affine"] = predicted
            row["error_affine"] = (row["measured_cpu_s"] - predicted) / predicted
            bridge = fit["export_bridge_fixed_cpu_per_s"] + fit["import_bridge_fixed_cpu_per_s"]
            bridge += (fit["export_bridge_per_message_us"] + (n - 1) * fit["import_bridge_per_message_us"]) * rate / 1e6
            row["bridge_predicted_cpu_s_affine"] = seconds * bridge
            for point, point_costs in costs.items():
                predicted = sent_each * _model_us(point_costs, n, m) / 1e6
                row[f"predicted_cpu_s_{point}"] = predicted
                row[f"error_{point}"] = (row["measured_cpu_s"] - predicted) / predicted
                bridge = point_costs["c_export_bridge_us"] + (n - 1) * point_costs["c_import_bridge_us"]
                row[f"bridge_predicted_cpu_s_{point}"] = sent_each * bridge / 1e6
        nats_measured = sum(check["cpu"][f"nats{i}"] for i in range(3))
        nats: dict[str, float] = {"measured_cpu_s": nats_measured}
        nats["predicted_cpu_s_affine"] = seconds * (
            fit["nats_fixed_cpu_per_s"] + fit["nats_per_message_us"] * n * rate / 1e6
        )
        nats["error_affine"] = (nats_measured - nats["predicted_cpu_s_affine"]) / nats["predicted_cpu_s_affine"]
        for point, point_costs in costs.items():
            predicted = nats[f"predicted_cpu_s_{point}"] = n * sent_each * point_costs["c_nats_us"] / 1e6
            nats[f"error_{point}"] = (nats_measured - predicted) / predicted
        check_report = {
            "n": n,
            "m": m,
            "rate": rate,
            "seconds": seconds,
            "expected_per_subscriber": expected,
            "received": check["received"],
            "gaps": check["gaps"],
            "lost": [expected - got for got in check["received"]],
            "brokers": per_broker,
            "nats": nats,
            "mean_abs_error_high": statistics.mean(abs(x["error_high"]) for x in per_broker.values()),
            "mean_abs_error_low": statistics.mean(abs(x["error_low"]) for x in per_broker.values()),
            "mean_abs_error_affine": statistics.mean(abs(x["error_affine"]) for x in per_broker.values()),
        }
    finally:
        for broker in brokers.values():
            broker.stop()
        cluster.close()
    return {
        "idle_cpu_per_s": meter.idle,
        "costs": costs,
        "affine": fit,
        "journal_costs": journal_costs,
        "rates": rates,
        "check": check_report,
        "runs": {name: {k: v for k, v in run.items()} for name, run in runs.items()},
    }


def render(result: dict[str, Any]) -> str:
    """The result as text: the costs at both rates, the journal's, and the check's table."""
    costs, check = result["costs"], result["check"]
    high, low = costs["high"], costs["low"]
    lines = [f"CPU per message, us (utime + stime, net of idle) at {high['rate']:g} and {low['rate']:g} msg/s:"]
    lines += [f"  {name:<22} {high[name]:>9.1f} {low[name]:>9.1f}" for name in high if name != "rate"]
    lines += [f"  affine {name:<30} {value:>9.3f}" for name, value in result["affine"].items()]
    lines += [f"  {name:<22} {value:>9.1f}" for name, value in result["journal_costs"].items()]
    lines += [f"  {name:<22} {value:>9,.0f}" for name, value in result["rates"].items()]
    lines.append(
        f"check: N={check['n']} M={check['m']} R={check['rate']} msg/s per broker for {check['seconds']:g} s;"
        f" each subscriber expects {check['expected_per_subscriber']:,}"
    )
    lines.append(
        f"  {'CPU s':<9} {'measured':>9} {'high':>7} {'error':>7} {'low':>7} {'error':>7} {'affine':>7} {'error':>7}"
    )
    for name, row in [*check["brokers"].items(), ("nats x3", check["nats"])]:
        affine = (
            f" {row['predicted_cpu_s_affine']:>7.3f} {100 * row['error_affine']:>6.1f}%"
            if "error_affine" in row
            else ""
        )
        lines.append(
            f"  {name:<9} {row['measured_cpu_s']:>9.3f} {row['predicted_cpu_s_high']:>7.3f}"
            f" {100 * row['error_high']:>6.1f}% {row['predicted_cpu_s_low']:>7.3f} {100 * row['error_low']:>6.1f}%"
            + affine
        )
    for name, row in check["brokers"].items():
        lines.append(
            f"  {name + ' bridge':<9} {row['bridge_measured_cpu_s']:>9.3f} {row['bridge_predicted_cpu_s_high']:>7.3f}"
            f" {'':>7} {row['bridge_predicted_cpu_s_low']:>7.3f} {'':>7} {row['bridge_predicted_cpu_s_affine']:>7.3f}"
        )
    lines.append(f"  received per subscriber: {check['received']}  gaps: {check['gaps']}  lost: {check['lost']}")
    lines.append(
        f"  mean |error| over brokers: {100 * check['mean_abs_error_high']:.1f}% (high-rate costs),"
        f" {100 * check['mean_abs_error_low']:.1f}% (costs at the check's rate),"
        f" {100 * check['mean_abs_error_affine']:.1f}% (affine fit)"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small counts: a smoke run (< 40 s)")
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args(argv)
    if BINARY is None:
        print("bench_scaling: skipped (nats-server is not installed)")
        return 0
    handle_exits()
    sizes = QUICK if args.quick else FULL
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-scaling-") as directory:
        try:
            result = scenarios(sizes, Path(directory))
        except RuntimeError as exc:  # a NATS server or a broker that did not start
            print(f"bench_scaling: {str(exc).splitlines()[0]}", file=sys.stderr)
            return 1
    print(render(result))
    finite = all(math.isfinite(v) for c in result["costs"].values() for v in c.values())
    report = {
        "environment": environment(),
        "config": {"quick": args.quick, **{k: getattr(sizes, k) for k in Sizes.__slots__}},
        "scenarios": {"scaling": result},
        "finite": finite,
        "elapsed_seconds": round(time.monotonic() - started, 1),
    }
    write_report(report, args.json_out, "scaling")
    return 0


if __name__ == "__main__":
    sys.exit(main())
