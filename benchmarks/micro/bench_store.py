"""Journal store micro-benchmark: chunked records (schema 2) against one row per record (schema 1).

Run it (about two minutes with the default 5 repetitions; ``--quick`` is a smoke run)::

    python benchmarks/micro/bench_store.py [--reps 5] [--quick] [--json-out PATH]

It prints a table and writes JSON to ``benchmarks/results/store-<UTC timestamp>.json``
(git-ignored) unless ``--json-out`` names another file. No broker, no sockets: the store's
own calls, in this process, on files in a temporary directory on this machine's disk. Not
part of the test suite (``testpaths`` is ``tests/``, and pytest collects ``test_*.py`` only).

Scenarios, the per-row design on the left, :class:`exesdb_broker.store.JournalStore` on the
right:

- ``write_never`` / ``write_normal``: records of 100-byte bodies on ``ex_esdb_audit``,
  committed in transactions of 10,000, with ``--journal-fsync never`` (synchronous OFF) and
  with the default policy and no durable record (NORMAL). Records already built (the
  journal's part); the store's part counts: numbering, packing or building the row tuples,
  the SQL and the commit. The per-row side is the schema-1 store's write path (8 columns, an
  index on ``rt``). Target: >= 1,000,000 records/s, both.
- ``page``: pages of 1,000 records (the ``replay`` maximum) through 200,000 records with
  the instance prefix (what ``replay`` asks for without a sub-topic prefix) and with a
  sub-topic prefix matching one record in five. Target: >= 500,000 records/s.
- ``migrate``: opening a schema-1 file of 1,000,000 rows (``--quick``: 20,000), which
  converts it; with receive times shared by 10,000 rows (live traffic) and with a different
  one per row (durable publishes, one chunk each: the worst case). Reported: seconds.

Method: a fresh file per run; one warm-up per side, then ``--reps`` runs interleaved;
medians and the ratio of medians (right / left).
"""

from __future__ import annotations

import contextlib
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from exesdb_broker.store import DB_NAME, JournalStore, Record, open_store
from exesdb_sdk.instances import Instance
from harness import suite_main

INSTANCE: Final = Instance.AUDIT
TRANSACTION: Final = 10_000
BODY: Final = bytes(range(100))
TOPICS: Final = [f"ex_esdb_audit/orders:{i}".encode() for i in range(5)]
WRITE_TARGET: Final = 1_000_000
PAGE_TARGET: Final = 500_000


@contextlib.contextmanager
def directory() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="bench-store-", dir="/tmp") as name:
        yield Path(name)


def batch() -> list[Record]:
    return [Record(INSTANCE, TOPICS[i % 5], BODY) for i in range(TRANSACTION)]


# -- the per-row design (schema 1), its write and page paths as they were ----------------------


class PerRow:
    """The schema-1 store's hot paths: one row per record, 8 columns, an index on ``rt``."""

    def __init__(self, path: Path, synchronous: str) -> None:
        self.db = sqlite3.connect(path / DB_NAME, isolation_level=None)
        self.db.execute("PRAGMA journal_mode = WAL")
        self.db.execute(f"PRAGMA synchronous = {synchronous}")
        self.db.execute(
            "CREATE TABLE j_audit (seq INTEGER PRIMARY KEY, rt INTEGER NOT NULL, topic BLOB NOT NULL, "
            "body BLOB NOT NULL, pub TEXT NOT NULL, pseq INTEGER NOT NULL, n INTEGER NOT NULL, "
            "durable INTEGER NOT NULL)"
        )
        self.db.execute("CREATE INDEX j_audit_rt ON j_audit(rt)")
        self.db.execute("CREATE TABLE heads (instance TEXT PRIMARY KEY, seq INTEGER NOT NULL)")
        self.head = 0

    def write(self, records: list[Record]) -> None:
        rt = time.time_ns()
        values = []
        for record in records:
            self.head += 1
            record.seq = self.head
            values.append((self.head, rt, record.topic, record.body, "pub", self.head, 1, int(record.durable)))
        self.db.execute("BEGIN")
        self.db.executemany("INSERT INTO j_audit VALUES (?, ?, ?, ?, ?, ?, ?, ?)", values)
        self.db.execute("INSERT OR REPLACE INTO heads VALUES (?, ?)", (INSTANCE.value, self.head))
        self.db.execute("COMMIT")

    def page(self, from_seq: int, prefix: bytes, limit: int) -> tuple[list[Any], int, bool]:
        cursor = self.db.execute(
            "SELECT seq, rt, topic, body, durable FROM j_audit WHERE seq >= ? AND topic >= ? AND topic < ? "
            "ORDER BY seq LIMIT ?",
            (from_seq, prefix, prefix + b"\xff", limit + 1),
        )
        records: list[Any] = []
        size, more = 0, False
        for record in cursor:
            if len(records) >= limit or (records and size + len(record[3]) > 1 << 20):
                more = True
                break
            records.append(record)
            size += len(record[3])
        cursor.close()
        return records, records[-1][0] + 1 if records else self.head + 1, more

    def close(self) -> None:
        self.db.close()


# -- measurements ---------------------------------------------------------------------------------


def write_rate(side: str, synchronous: str, transactions: int) -> float:
    records = batch()
    with directory() as path:
        store: PerRow | JournalStore
        store = PerRow(path, synchronous) if side == "per_row" else open_store(str(path), _policy(synchronous))
        try:
            started = time.perf_counter()
            for _ in range(transactions):
                store.write(records)
            elapsed = time.perf_counter() - started
        finally:
            store.close()
    return transactions * TRANSACTION / elapsed


def _policy(synchronous: str) -> str:
    return "never" if synchronous == "OFF" else "durable"


def page_rate(side: str, narrow: bool, total: int) -> float:
    prefix = TOPICS[0] if narrow else INSTANCE.prefix.encode()
    records = batch()
    with directory() as path:
        store: PerRow | JournalStore
        store = PerRow(path, "OFF") if side == "per_row" else open_store(str(path), "never")
        try:
            for _ in range(total // TRANSACTION):
                store.write(records)
            seen, start, more = 0, 1, True
            started = time.perf_counter()
            while more:
                if isinstance(store, PerRow):
                    page, start, more = store.page(start, prefix, 1000)
                else:
                    page, start, more = store.page(INSTANCE, start, prefix, 1000, 1 << 20)
                seen += len(page)
            elapsed = time.perf_counter() - started
        finally:
            store.close()
    assert seen == (total // 5 if narrow else total), seen
    return seen / elapsed


def migrate_seconds(rt_per_row: bool, rows: int) -> float:
    with directory() as path:
        v1 = PerRow(path, "OFF")
        v1.db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value)")
        v1.db.execute("CREATE TABLE last_values (topic BLOB PRIMARY KEY, rt INTEGER NOT NULL, body BLOB NOT NULL)")
        v1.db.execute("INSERT INTO meta VALUES ('schema', 1)")
        v1.db.execute("BEGIN")
        for start in range(1, rows + 1, TRANSACTION):
            v1.db.executemany(
                "INSERT INTO j_audit VALUES (?, ?, ?, ?, 'pub', ?, 1, 0)",
                [
                    (seq, seq if rt_per_row else start, TOPICS[seq % 5], BODY, seq)
                    for seq in range(start, min(start + TRANSACTION, rows + 1))
                ],
            )
        v1.db.execute("INSERT INTO heads VALUES (?, ?)", (INSTANCE.value, rows))
        v1.db.execute("COMMIT")
        v1.close()
        started = time.perf_counter()
        store = open_store(str(path), "durable")
        elapsed = time.perf_counter() - started
        try:
            assert store.heads[INSTANCE] == rows and store.count(INSTANCE) == rows
        finally:
            store.close()
    return elapsed


def compare(
    title: str, sides: tuple[str, str], metric: str, measure: Callable[[str], float], reps: int
) -> dict[str, Any]:
    """Warm up each side once, then ``reps`` interleaved runs; medians and right/left ratio."""
    for side in sides:
        measure(side)
    runs: dict[str, list[float]] = {side: [] for side in sides}
    for _ in range(reps):
        for side in sides:
            runs[side].append(measure(side))
    medians = {side: {metric: statistics.median(values)} for side, values in runs.items()}
    left, right = sides
    return {
        "title": title,
        "sides": list(sides),
        "runs": runs,
        "medians": medians,
        "ratios": {metric: medians[right][metric] / medians[left][metric]},
        "target": None,
    }


def with_target(scenario: dict[str, Any], metric: str, value: float) -> dict[str, Any]:
    side = scenario["sides"][1]
    met = scenario["medians"][side][metric] >= value
    scenario["target"] = {"metric": metric, "op": ">=", "value": value, "side": side, "met": met}
    return scenario


def scenarios(quick: bool, reps: int) -> dict[str, Any]:
    reps = 1 if quick else reps
    transactions = 3 if quick else 30
    total = 20_000 if quick else 200_000
    rows = 20_000 if quick else 1_000_000
    sides = ("per_row", "chunks")
    found: dict[str, Any] = {}
    for name, synchronous in (("write_never", "OFF"), ("write_normal", "NORMAL")):
        found[name] = with_target(
            compare(
                f"write, synchronous {synchronous}, transactions of {TRANSACTION:,}",
                sides,
                "records_per_s",
                lambda side, s=synchronous: write_rate(side, s, transactions),  # type: ignore[misc]
                reps,
            ),
            "records_per_s",
            WRITE_TARGET,
        )
        found[name]["body_bytes"] = len(BODY)
    for name, narrow in (("page", False), ("page_narrow", True)):
        found[name] = with_target(
            compare(
                f"page of 1,000 through {total:,}, {'one topic in five' if narrow else 'instance prefix'}",
                sides,
                "records_per_s",
                lambda side, n=narrow: page_rate(side, n, total),  # type: ignore[misc]
                reps,
            ),
            "records_per_s",
            PAGE_TARGET,
        )
    found["migrate"] = compare(
        f"open a schema-1 file of {rows:,} rows (converts it)",
        ("rt_per_10k_rows", "rt_per_row"),
        "seconds",
        lambda side: migrate_seconds(side == "rt_per_row", rows),
        1 if quick else min(reps, 3),
    )
    return found


def main(argv: list[str] | None = None) -> int:
    return suite_main(argv, __doc__, "store", "exesdb-pubsub journal store", scenarios)


if __name__ == "__main__":
    sys.exit(main())
