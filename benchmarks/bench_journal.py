"""Journal benchmark: what durability costs.

Run it (about a minute with the default 5 repetitions; ``--quick`` is a smoke run)::

    /work/venv/bin/python benchmarks/bench_journal.py [--reps 5] [--quick] [--json-out PATH]

It prints a table and writes JSON to ``benchmarks/results/journal-<UTC timestamp>.json``
(git-ignored) unless ``--json-out`` names another file. Built on :mod:`harness`.

Scenarios, each two sides measured in the same run:

- ``live_journal_on_off``: the core benchmark's raw throughput (raw publisher of 100-byte
  frames -> broker -> raw subscriber, on ``ex_esdb_metrics/bench``, an instance that is not
  journaled) with the journal off (``--journal none --last-values none``) and on (the
  defaults: alerts and audit journaled, health last values kept). Target on/off >= 0.95:
  recording some instances must not slow the others.
- ``durable_publish``: one ``Publisher`` sending ``publish(..., durable=True)`` back to back
  on ``ex_esdb_audit``, each acknowledged before the next is sent, with ``--journal-fsync
  never`` and with the default ``durable`` policy (an fsync of SQLite's write-ahead log before
  each acknowledgement). Reported: acknowledged publishes per second. No target; the ratio is
  the price of the fsync. The journal lives on the machine's disk (the run's temporary
  directory), not in memory.
- ``durable_pipelined``: the same durable publishes on the default ``durable`` policy, one
  ``Publisher`` acknowledged one by one (``publish(..., durable=True)``), pipelined one
  ``publish`` request per message (``per_message``: the path an older broker without
  ``publish_many`` gets, and what ``publish_durable_many`` did before that op), and pipelined
  in ``publish_many`` chunks (``pipelined``: ``publish_durable_many``, 1,024 in flight by default, each
  still confirmed on its own, sharing the journal's group commits). Reported: acknowledged
  publishes per second; target: pipelined >= 20,000/s.
- ``journal_ingest``: a raw publisher floods ``ex_esdb_audit`` (journaled) with 100-byte and
  with 1,000-byte envelopes; reported: records committed per second, from the first send until
  the broker's ``stats`` accounts for every message (committed, or shed and counted; polled
  every 10 ms), and the share shed. Past the rate the journal keeps up with, its bounded
  buffer fills and its feeds shed, countably (see broker/exesdb_broker/intake.py).

Method: a fresh broker per run (harness :func:`~harness.started_broker`, journal in the
run's own directory); one warm-up per side, then ``--reps`` runs interleaved; medians and
the ratio of medians (right / left).
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from typing import Any

import zmq
from exesdb_sdk import ControlClient, Publisher
from harness import (
    HWM,
    RAW_BODY_SIZE,
    TOPIC,
    Config,
    Side,
    compare,
    interleave,
    make_body,
    medians_of,
    started_broker,
    suite_main,
    throughput_summary,
)


def live_journal_on_off(config: Config) -> dict[str, Any]:
    body = make_body(RAW_BODY_SIZE)
    pub_kwargs = {"body": body, "rate": None}
    sub_kwargs = {"stamp_offset": None}
    sides = (
        Side("journal_off", "exesdb-nojournal", "raw_publisher", "raw_subscriber", pub_kwargs, sub_kwargs),
        Side("journal_on", "exesdb", "raw_publisher", "raw_subscriber", pub_kwargs, sub_kwargs),
    )
    title = f"live {RAW_BODY_SIZE} B on a non-journaled instance, journal off vs on"
    result = compare(
        "live_journal_on_off", title, sides, config.raw_count, throughput_summary,
        ["msgs_per_s"], ("msgs_per_s", ">=", 0.95), config,
    )  # fmt: skip
    return {**result, "body_bytes": body.size, "topic": TOPIC.decode()}


PATIENCE = 60.0
"""How long a benchmark's publisher waits for the broker's commit replies (the SDK's default is
5 s): a loaded machine's journal can stall past that, and a benchmark measures, it does not
give up."""


def durable_run(kind: str, count: int) -> dict[str, Any]:
    """``count`` acknowledged durable publishes, one after another, on a fresh broker."""
    with started_broker(kind) as handle:
        assert handle.control is not None
        with Publisher(handle.frontend, control=handle.control, node="bench", control_timeout=PATIENCE) as pub:
            publish = pub.publish
            start = time.perf_counter()
            for n in range(count):
                publish("audit", "bench", "Custom", {"n": n, "pad": "x" * 60}, durable=True)
            elapsed = time.perf_counter() - start
    return {"acked_per_s": count / elapsed, "mean_ack_us": elapsed / count * 1e6, "acked": count}


def pipelined_run(kind: str, count: int, per_message: bool = False) -> dict[str, Any]:
    """``count`` durable publishes sent with ``publish_durable_many`` (1,024 in flight by default), each
    confirmed: in ``publish_many`` chunks, or (``per_message``) one ``publish`` request each."""
    with started_broker(kind) as handle:
        assert handle.control is not None
        with Publisher(handle.frontend, control=handle.control, node="bench", control_timeout=PATIENCE) as pub:
            if per_message:  # as if the broker had answered publish_many with unknown_op
                pub._control.get()._without_many.add(handle.control)
            items = [("audit", "bench", "Custom", {"n": n, "pad": "x" * 60}) for n in range(count)]
            start = time.perf_counter()
            results = pub.publish_durable_many(items)
            elapsed = time.perf_counter() - start
    acked = sum(isinstance(r, int) for r in results)
    if acked != count:
        why = Counter(f"{r.code}: {r.message}" for r in results if not isinstance(r, int))
        raise RuntimeError(f"only {acked} of {count} pipelined durable publishes were confirmed: {dict(why)}")
    return {"acked_per_s": count / elapsed, "mean_ack_us": elapsed / count * 1e6, "acked": count}


def per_message_run(kind: str, count: int) -> dict[str, Any]:
    """:func:`pipelined_run` with one ``publish`` request per message."""
    return pipelined_run(kind, count, per_message=True)


def durable_pipelined(config: Config, count: int) -> dict[str, Any]:
    # each side's function, and how many times ``count`` it sends (the pipelined ones are fast)
    sides = {"one_by_one": (durable_run, 1), "per_message": (per_message_run, 10), "pipelined": (pipelined_run, 10)}
    print("  durable pipelined: ", end="", flush=True)

    def run(name: str, n: int) -> dict[str, Any]:
        function, times = sides[name]
        return function("exesdb", n * times)

    runs = interleave(list(sides), run, count, warmup=config.warmup, reps=config.reps, least=100)
    medians = medians_of(runs)
    spread = {
        name: {"acked_per_s": [min(r["acked_per_s"] for r in rs), max(r["acked_per_s"] for r in rs)]}
        for name, rs in runs.items()
    }
    base, per_message, other = medians["one_by_one"], medians["per_message"], medians["pipelined"]
    ratio = other["acked_per_s"] / per_message["acked_per_s"] if per_message["acked_per_s"] else float("nan")
    return {
        "title": "durable publish (fsync durable): acknowledged one by one vs pipelined one publish per message vs "
        "pipelined in publish_many chunks (publish_durable_many)",
        "sides": ["one_by_one", "pipelined"],
        "also": ["per_message"],
        "notes": [
            f"per_message (one publish request each, pipelined): {per_message['acked_per_s']:,.0f} acked/s; "
            f"pipelined / per_message = {ratio:.2f}"
        ],
        "count_per_run": count,
        "pipelined_count_per_run": count * 10,
        "runs": runs,
        "medians": medians,
        "spread": spread,
        "ratios": {k: other[k] / base[k] if base[k] else float("nan") for k in ("acked_per_s", "mean_ack_us")},
        "ratios_vs_per_message": {
            k: other[k] / per_message[k] if per_message[k] else float("nan") for k in ("acked_per_s", "mean_ack_us")
        },
        "target": {
            "metric": "acked_per_s",
            "op": ">=",
            "value": 20_000,
            "side": "pipelined",
            "met": bool(other["acked_per_s"] >= 20_000),
        },
    }


def durable_publish(config: Config, count: int) -> dict[str, Any]:
    sides = (("fsync_never", "exesdb-fsync-never"), ("fsync_durable", "exesdb"))
    print("  durable publish: ", end="", flush=True)
    kinds = dict(sides)
    runs = interleave(
        list(kinds),
        lambda name, n: durable_run(kinds[name], n),
        count,
        warmup=config.warmup,
        reps=config.reps,
        least=100,
    )
    medians = medians_of(runs)
    base, other = medians["fsync_never"], medians["fsync_durable"]
    return {
        "title": "durable publish, acknowledged one by one: fsync never vs durable (default)",
        "sides": [name for name, _ in sides],
        "count_per_run": count,
        "runs": runs,
        "medians": medians,
        "ratios": {k: other[k] / base[k] if base[k] else float("nan") for k in ("acked_per_s", "mean_ack_us")},
        "target": None,
    }


INGEST_TOPIC = b"ex_esdb_audit/bench"


def ingest_run(size: int, count: int) -> dict[str, Any]:
    """Flood ``count`` envelopes of ``size`` bytes on a journaled instance; time until each is
    committed or counted as shed."""
    body = make_body(size).plain
    with (
        started_broker("exesdb", extra=["--journal-max-records", "0"]) as handle,
        ControlClient(handle.control) as control,
    ):
        context = zmq.Context()
        socket = context.socket(zmq.XPUB)
        socket.setsockopt(zmq.XPUB_NODROP, 1)
        socket.setsockopt(zmq.SNDHWM, HWM)
        socket.setsockopt(zmq.SNDTIMEO, 5000)
        try:
            socket.connect(handle.frontend)
            if not socket.poll(20_000):
                raise TimeoutError("no subscription from the broker")
            start = time.perf_counter()
            for _ in range(count):
                socket.send_multipart((INGEST_TOPIC, body))
            sent = time.perf_counter()
            deadline = time.monotonic() + 60 + count / 10_000
            while True:
                journal = control.stats()["journal"]
                if journal["committed_live"] + journal["dropped_by_instance"].get("ex_esdb_audit", 0) >= count:
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError("the journal did not account for every record in time")
                time.sleep(0.01)  # polling interval of the broker's stats
            done = time.perf_counter()
        finally:
            socket.close(linger=5000)
            context.term()
    return {
        "records_per_s": journal["committed_live"] / (done - start),
        "shed_fraction": journal["dropped"] / count,
        "publish_msgs_per_s": count / (sent - start),
    }


def journal_ingest(config: Config, count: int) -> dict[str, Any]:
    sizes = {"body_100B": 100, "body_1000B": 1000}
    print("  journal ingest: ", end="", flush=True)
    runs = interleave(list(sizes), lambda name, n: ingest_run(sizes[name], n), count, warmup=False, reps=config.reps)
    medians = medians_of(runs)
    base, other = medians["body_100B"], medians["body_1000B"]
    return {
        "title": "journal ingest: flood of a journaled instance, records committed per second",
        "sides": list(sizes),
        "count_per_run": count,
        "runs": runs,
        "medians": medians,
        "ratios": {k: other[k] / base[k] if base[k] else float("nan") for k in base},
        "target": None,
    }


def make_config(*, quick: bool, reps: int) -> tuple[Config, int]:
    if quick:
        config = Config(
            reps=1, warmup=False, raw_count=5_000, latency_rate=5_000, latency_seconds=0.5,
            sdk_count=5_000, profile_dir=None,
        )  # fmt: skip
        return config, 200
    config = Config(
        reps=reps, warmup=True, raw_count=400_000, latency_rate=5_000, latency_seconds=6.0,
        sdk_count=200_000, profile_dir=None,
    )  # fmt: skip
    return config, 2_000


SCENARIOS = ("live_journal_on_off", "durable_publish", "durable_pipelined", "journal_ingest")


def scenarios(*, quick: bool, reps: int) -> dict[str, dict[str, Any]]:
    """Every journal scenario (the interface benchmarks/bench.py runs)."""
    config, durable_count = make_config(quick=quick, reps=reps)
    return {
        "live_journal_on_off": live_journal_on_off(config),
        "durable_publish": durable_publish(config, durable_count),
        "durable_pipelined": durable_pipelined(config, durable_count),
        "journal_ingest": journal_ingest(config, 5_000 if quick else 200_000),
    }


def main(argv: list[str] | None = None) -> int:
    return suite_main(argv, __doc__, "journal", "exesdb-pubsub journal benchmark", scenarios)


if __name__ == "__main__":
    sys.exit(main())
