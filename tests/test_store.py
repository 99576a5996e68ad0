"""The journal store on its own (no broker process): chunked writes and their numbering,
rollback, pages, retention, last values, the schema-1 conversion and damaged files."""

from __future__ import annotations

import json
import logging
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from exesdb_broker import store as store_module
from exesdb_broker.store import DB_NAME, JournalStore, Record, StoreError, open_store
from exesdb_broker.store_format import CHUNK_BYTES, CHUNK_RECORDS, table_name
from exesdb_sdk.instances import Instance

AUDIT, ALERTS = Instance.AUDIT, Instance.ALERTS
GAP = b"_exesdb/journal/gap"


def topic(sub: str, instance: Instance = AUDIT) -> bytes:
    return f"{instance.value}/{sub}".encode()


def records(n: int, sub: str = "x", instance: Instance = AUDIT, start: int = 0) -> list[Record]:
    return [Record(instance, topic(sub, instance), b"body-%d" % (start + i)) for i in range(n)]


class Clock:
    """A settable ``time.time_ns`` for the store."""

    def __init__(self, now: int = 1_000_000_000_000) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(time, "time_ns", fake)
    return fake


@pytest.fixture
def store(tmp_path: Path) -> Iterator[JournalStore]:
    opened = open_store(str(tmp_path), "never")
    yield opened
    opened.close()


def everything(store: JournalStore, instance: Instance = AUDIT, prefix: bytes | None = None, limit: int = 1000,
               max_bytes: int = 1 << 20) -> list[tuple[int, int, bytes, bytes, bool]]:  # fmt: skip
    """Every record from the start, page by page (bounded), checking that ``next`` advances."""
    wanted = instance.prefix.encode() if prefix is None else prefix
    found: list[tuple[int, int, bytes, bytes, bool]] = []
    start = store.first_seq(instance)
    for _ in range(10_000):
        page, following, more = store.page(instance, start, wanted, limit, max_bytes)
        found.extend(page)
        assert following > start or not more
        if not more:
            return found
        start = following
    raise AssertionError("paging did not end")


def chunk_rows(path: Path, instance: Instance = AUDIT) -> list[tuple[int, int, int, int]]:
    with sqlite3.connect(path / DB_NAME) as db:
        rows: list[tuple[int, int, int, int]] = db.execute(
            f"SELECT first_seq, last_seq, n, bytes FROM {table_name(instance)} ORDER BY first_seq"
        ).fetchall()
    return rows


# -- writing -------------------------------------------------------------------------------


def test_numbers_are_per_instance_in_list_order_and_continue_across_writes(store: JournalStore) -> None:
    batch = [
        Record(AUDIT, topic("a"), b"1"),
        Record(ALERTS, topic("a", ALERTS), b"2", durable=True),
        Record(AUDIT, topic("b"), b"3"),
    ]
    store.write(batch)
    assert [r.seq for r in batch] == [1, 1, 2]
    assert store.heads[AUDIT] == 2 and store.heads[ALERTS] == 1 and store.heads[Instance.HEALTH] == 0
    more = [*records(3, "c"), Record(ALERTS, topic("b", ALERTS), b"4")]
    store.write(more)
    assert [r.seq for r in more] == [3, 4, 5, 2]
    assert [(seq, t, body) for seq, _, t, body, _ in everything(store)] == [
        (1, topic("a"), b"1"), (2, topic("b"), b"3"),
        (3, topic("c"), b"body-0"), (4, topic("c"), b"body-1"), (5, topic("c"), b"body-2"),
    ]  # fmt: skip
    assert [(seq, durable) for seq, _, _, _, durable in everything(store, ALERTS)] == [(1, True), (2, False)]
    assert store.count(AUDIT) == 5 and store.count(ALERTS) == 2 and store.count(Instance.HEALTH) == 0
    assert store.write([]) > 0 and store.heads[AUDIT] == 5  # nothing to do


def test_one_write_has_one_receive_time_that_never_goes_back(store: JournalStore, clock: Clock) -> None:
    first = store.write(records(3))
    assert first == clock.now
    clock.now -= 5_000  # the wall clock steps back
    second = store.write(records(2))
    assert second == first  # held, so receive times follow the sequence numbers
    clock.now = first + 10
    third = store.write(records(1))
    assert [rt for _, rt, *_ in everything(store)] == [first] * 5 + [third] and third == first + 10


def test_numbers_and_receive_times_survive_a_reopen(tmp_path: Path, clock: Clock) -> None:
    opened = open_store(str(tmp_path), "durable")
    rt = opened.write(records(5))
    opened.close()
    clock.now = rt - 1_000
    again = open_store(str(tmp_path), "durable")
    try:
        assert again.heads[AUDIT] == 5 and again.first_seq(AUDIT) == 1
        assert again.write(records(1)) == rt
        assert again.heads[AUDIT] == 6
    finally:
        again.close()


def test_writes_are_split_into_chunks_by_count_and_by_size(store: JournalStore, tmp_path: Path) -> None:
    store.write(records(2 * CHUNK_RECORDS + 500))
    assert [(first, last, n) for first, last, n, _ in chunk_rows(tmp_path)] == [
        (1, CHUNK_RECORDS, CHUNK_RECORDS),
        (CHUNK_RECORDS + 1, 2 * CHUNK_RECORDS, CHUNK_RECORDS),
        (2 * CHUNK_RECORDS + 1, 2 * CHUNK_RECORDS + 500, 500),
    ]
    store.write(records(1))  # a new chunk: a write never appends to an existing one
    assert chunk_rows(tmp_path)[-1][:3] == (2 * CHUNK_RECORDS + 501,) * 2 + (1,)
    assert 2 * 100_000 < CHUNK_BYTES <= 3 * 100_000
    big = [Record(AUDIT, topic("big"), bytes(100_000)) for _ in range(7)]
    store.write(big)
    sizes = [(n, size) for _, _, n, size in chunk_rows(tmp_path)[4:]]
    assert [n for n, _ in sizes] == [3, 3, 1]  # a chunk closes at the record that reaches CHUNK_BYTES
    assert [size for _, size in sizes] == [300_000, 300_000, 100_000]  # the bodies' bytes
    assert [body for _, _, _, body, _ in everything(store, prefix=topic("big"))] == [bytes(100_000)] * 7


def test_a_failed_write_keeps_nothing_and_gives_no_number_away(store: JournalStore, tmp_path: Path) -> None:
    store.write(records(2) + records(1, instance=ALERTS))
    with sqlite3.connect(tmp_path / DB_NAME) as other:  # a chunk in the way of the next alerts one
        other.execute("INSERT INTO c_alerts VALUES (2, 2, 0, 1, 1, x'91')")
    batch = records(3, start=10) + records(1, instance=ALERTS)
    with pytest.raises(sqlite3.IntegrityError):
        store.write(batch)  # the audit chunk went in first: it is rolled back with the rest
    assert [r.seq for r in batch] == [0, 0, 0, 0]
    assert store.heads[AUDIT] == 2 and store.heads[ALERTS] == 1
    assert [seq for seq, *_ in everything(store)] == [1, 2] and store.count(AUDIT) == 2
    with sqlite3.connect(tmp_path / DB_NAME) as other:
        other.execute("DELETE FROM c_alerts WHERE first_seq = 2")
        assert dict(other.execute("SELECT instance, seq FROM heads")) == {"ex_esdb_audit": 2, "ex_esdb_alerts": 1}
    again = records(1)
    store.write(again)
    assert again[0].seq == 3  # the numbers of the failed write were not used up


def test_any_exception_inside_a_write_is_raised_as_is_after_the_rollback(store: JournalStore) -> None:
    for batch in ([*records(2), Record(AUDIT, None, b"x")], [Record(AUDIT, None, b"x")]):  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="topic must be bytes"):
            store.write(batch)
        assert all(r.seq == 0 for r in batch) and store.heads[AUDIT] == 0 and store.count(AUDIT) == 0
    store.write(records(1))
    assert store.heads[AUDIT] == 1


def test_a_full_disk_is_an_sqlite_error_and_leaves_the_store_consistent(tmp_path: Path) -> None:
    # A file size limit stands in for a full disk (as in test_journal): past it, writes fail.
    script = f"""
import json, resource, sqlite3
from exesdb_broker.store import Record, open_store
from exesdb_sdk.instances import Instance
store = open_store({str(tmp_path)!r}, "durable")
resource.setrlimit(resource.RLIMIT_FSIZE, (400_000, 400_000))
written = 0
for _ in range(1000):
    batch = [Record(Instance.AUDIT, b"ex_esdb_audit/x", bytes(20_000), durable=True)]
    try:
        store.write(batch)
    except sqlite3.Error as exc:
        print(json.dumps({{"written": written, "seq": batch[0].seq, "head": store.heads[Instance.AUDIT],
                          "count": store.count(Instance.AUDIT), "error": str(exc)}}))
        break
    written += 1
store.close()
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["written"] > 0 and result["seq"] == 0
    assert result["head"] == result["count"] == result["written"]
    reopened = open_store(str(tmp_path), "durable")
    try:
        assert reopened.heads[AUDIT] == result["written"] == reopened.count(AUDIT)
    finally:
        reopened.close()


def test_synchronous_follows_the_fsync_policy(tmp_path: Path) -> None:
    expected = {  # policy -> (plain write, durable write, last values); 0 OFF, 1 NORMAL, 2 FULL
        "never": (0, 0, 0),
        "durable": (1, 2, 1),
        "always": (2, 2, 1),
    }
    for policy, modes in expected.items():
        opened = open_store(str(tmp_path / policy), policy)
        seen = []
        try:
            opened.write(records(1))
            seen.append(opened._db.execute("PRAGMA synchronous").fetchone()[0])
            opened.write([*records(1), Record(AUDIT, topic("d"), b"", durable=True)])
            seen.append(opened._db.execute("PRAGMA synchronous").fetchone()[0])
            opened.write_last({b"t": (1, b"v")})
            seen.append(opened._db.execute("PRAGMA synchronous").fetchone()[0])
        finally:
            opened.close()
        assert tuple(seen) == modes, policy


def test_last_values_round_trip_and_upsert(tmp_path: Path) -> None:
    opened = open_store(str(tmp_path), "durable")
    opened.write_last({b"ex_esdb_health/health_summary:a": (1, b"one"), b"ex_esdb_health/node_health:n": (2, b"n")})
    opened.write_last({b"ex_esdb_health/health_summary:a": (3, b"three")})
    opened.write_last({})
    opened.close()
    again = open_store(str(tmp_path), "durable")
    try:
        assert again.last_values() == {
            b"ex_esdb_health/health_summary:a": (3, b"three"),
            b"ex_esdb_health/node_health:n": (2, b"n"),
        }
    finally:
        again.close()


# -- pages ---------------------------------------------------------------------------------


def test_pages_cross_chunk_boundaries_in_order(store: JournalStore) -> None:
    for size in (700, 1, 1500, 42):
        store.write(records(size))
    total = 700 + 1 + 1500 + 42
    page, following, more = store.page(AUDIT, 695, AUDIT.prefix.encode(), 20, 1 << 20)
    assert [r[0] for r in page] == list(range(695, 715)) and following == 715 and more
    assert [r[0] for r in everything(store, limit=333)] == list(range(1, total + 1))
    last, following, more = store.page(AUDIT, total, b"", 10, 1 << 20)
    assert [r[0] for r in last] == [total] and following == total + 1 and not more  # exactly at the end
    empty, following, more = store.page(AUDIT, total + 5, b"", 10, 1 << 20)
    assert empty == [] and following == total + 5 and not more
    assert store.page(Instance.HEALTH, 1, b"", 10, 1 << 20) == ([], 1, False)


def test_a_prefix_narrows_the_page_across_chunks(store: JournalStore) -> None:
    mixed = [Record(AUDIT, topic("orders" if i % 3 == 0 else "billing"), b"%d" % i) for i in range(2500)]
    store.write(mixed)
    store.write([Record(AUDIT, topic("orders:eu"), b"eu")])
    orders = everything(store, prefix=topic("orders"), limit=100)
    assert [r[0] for r in orders] == [i + 1 for i in range(0, 2500, 3)] + [2501]
    assert orders[-1][2] == topic("orders:eu")
    page, following, more = store.page(AUDIT, 1, topic("orders"), 834, 1 << 20)
    assert len(page) == 834 and page[-1][0] == 2500 and following == 2501 and more  # one more matches: 2501
    page, following, more = store.page(AUDIT, 2498, topic("orders"), 834, 1 << 20)
    assert [r[0] for r in page] == [2500, 2501] and following == 2502 and not more
    page, following, more = store.page(AUDIT, 1, topic("orders:eu"), 1, 1 << 20)
    assert [r[0] for r in page] == [2501] and following == 2502 and not more
    assert store.page(AUDIT, 1, topic("nothing"), 10, 1 << 20) == ([], 2502, False)


def test_journal_markers_are_in_every_page_whatever_the_prefix(store: JournalStore) -> None:
    store.write([*records(5, "orders"), Record(AUDIT, GAP, b"lost 7"), *records(5, "billing")])
    for prefix in (topic("orders"), topic("billing"), topic("nothing"), AUDIT.prefix.encode(), b""):
        seqs = [seq for seq, _, t, _, _ in everything(store, prefix=prefix) if t == GAP]
        assert seqs == [6], prefix
    assert [r[0] for r in everything(store, prefix=topic("nothing"))] == [6]


def test_a_page_holds_about_max_bytes_and_always_one_record(store: JournalStore) -> None:
    store.write([Record(AUDIT, topic("x"), bytes(100)) for _ in range(10)])
    page, following, more = store.page(AUDIT, 1, b"", 100, 350)
    assert [r[0] for r in page] == [1, 2, 3] and following == 4 and more
    page, following, more = store.page(AUDIT, 4, b"", 100, 10)  # smaller than one body
    assert [r[0] for r in page] == [4] and following == 5 and more
    page, following, more = store.page(AUDIT, 9, b"", 100, 10)
    assert [r[0] for r in page] == [9] and following == 10 and more
    assert len(everything(store, max_bytes=250)) == 10


def test_a_narrow_prefix_over_a_long_journal_answers_in_bounded_pieces(
    store: JournalStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_module, "_PAGE_SCAN", 1000)
    store.write([*records(4000, "noise"), *records(1, "rare"), *records(3000, "noise"), *records(1, "rare")])
    page, following, more = store.page(AUDIT, 1, topic("rare"), 10, 1 << 20)
    assert page == [] and following == 1001 and more  # stopped by the bound, and said so
    pages = 0
    start, found = 1, list[int]()
    for _ in range(100):
        page, start, more = store.page(AUDIT, start, topic("rare"), 10, 1 << 20)
        pages += 1
        found.extend(r[0] for r in page)
        if not more:
            break
    assert found == [4001, 7002] and not more and 7 <= pages <= 9 and start == 7003


def test_seq_at_finds_the_first_record_received_at_or_after_a_time(store: JournalStore, clock: Clock) -> None:
    assert store.seq_at(AUDIT, 0) == 1  # nothing yet: head + 1
    times = []
    for size in (3, 1500, 2):
        clock.now += 1000
        times.append(store.write(records(size)))
    assert store.seq_at(AUDIT, 0) == 1
    assert store.seq_at(AUDIT, times[0]) == 1
    assert store.seq_at(AUDIT, times[0] + 1) == 4
    assert store.seq_at(AUDIT, times[1]) == 4
    assert store.seq_at(AUDIT, times[2]) == 1504
    assert store.seq_at(AUDIT, times[2] + 1) == 1506


# -- retention -----------------------------------------------------------------------------


def trim_all(store: JournalStore, max_age: float = 0, max_records: int = 0) -> int:
    deleted = 0
    for _ in range(1000):
        step = store.trim([AUDIT, ALERTS], max_age, max_records)
        if not step:
            return deleted
        deleted += step
    raise AssertionError("trim did not end")


def test_trim_by_count_is_exact_per_record(store: JournalStore) -> None:
    for size in (120, 1, 229):
        store.write(records(size))
    assert store.first_seq(AUDIT) == 1
    assert trim_all(store, max_records=100) == 250
    assert store.first_seq(AUDIT) == 251 and store.count(AUDIT) == 100
    assert [r[0] for r in everything(store)] == list(range(251, 351))
    assert [r[3] for r in everything(store)][:2] == [b"body-129", b"body-130"]  # the cut chunk kept its tail
    store.write(records(1))
    assert trim_all(store, max_records=100) == 1 and store.first_seq(AUDIT) == 252
    assert store.page(AUDIT, 1, b"", 1, 1 << 20)[0][0][0] == 252


def test_trim_by_age_keeps_the_young_records(store: JournalStore, clock: Clock) -> None:
    store.write(records(1500))
    clock.now += 10 * 10**9
    store.write(records(7))
    assert trim_all(store, max_age=5) == 1500
    assert [r[0] for r in everything(store)] == list(range(1501, 1508))
    clock.now += 10 * 10**9
    assert trim_all(store, max_age=5) == 7
    assert store.count(AUDIT) == 0 and store.first_seq(AUDIT) == 1508  # numbers never go back
    assert everything(store) == []
    store.write(records(1))
    assert store.heads[AUDIT] == 1508


def test_one_trim_call_does_bounded_work(store: JournalStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_module, "_TRIM_RECORDS", 700)
    store.write(records(5000))
    assert store.trim([AUDIT], 0, 10) == 700
    assert store.first_seq(AUDIT) == 701
    monkeypatch.setattr(store_module, "_TRIM_CHUNKS", 2)
    for _ in range(5):
        store.write(records(3))
    assert store.trim([AUDIT], 0, 10) == 700  # the record bound, from inside a chunk
    monkeypatch.setattr(store_module, "_TRIM_RECORDS", 100_000)
    assert store.trim([AUDIT], 0, 10) == 1600  # two chunks: the rest of one and a whole one
    assert trim_all(store, max_records=10) == 5015 - 10 - 3000
    assert [r[0] for r in everything(store)] == list(range(5006, 5016))


# -- schema, migration and damaged files -----------------------------------------------------

V1_DDL = [  # the schema-1 DDL, as the old store created it
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value)",
    "CREATE TABLE IF NOT EXISTS heads (instance TEXT PRIMARY KEY, seq INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS last_values (topic BLOB PRIMARY KEY, rt INTEGER NOT NULL, body BLOB NOT NULL)",
]
for _instance in Instance:
    _table = "j_" + _instance.value.removeprefix("ex_esdb_")
    V1_DDL += [
        f"CREATE TABLE IF NOT EXISTS {_table} (seq INTEGER PRIMARY KEY, rt INTEGER NOT NULL, "
        "topic BLOB NOT NULL, body BLOB NOT NULL, pub TEXT NOT NULL, pseq INTEGER NOT NULL, "
        "n INTEGER NOT NULL, durable INTEGER NOT NULL)",
        f"CREATE INDEX IF NOT EXISTS {_table}_rt ON {_table}(rt)",
    ]


def v1_file(directory: Path, rows: dict[str, list[tuple[int, int, bytes, bytes, int]]],
            heads: dict[str, int], last: dict[bytes, tuple[int, bytes]]) -> None:  # fmt: skip
    """A schema-1 journal as the old store wrote it (WAL mode, meta schema 1)."""
    directory.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(directory / DB_NAME, isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("BEGIN")
    for statement in V1_DDL:
        db.execute(statement)
    db.execute("INSERT INTO meta VALUES ('schema', 1)")
    for alias, values in rows.items():
        db.executemany(
            f"INSERT INTO j_{alias} VALUES (?, ?, ?, ?, 'pub', ?, 1, ?)",
            [(seq, rt, t, body, seq, durable) for seq, rt, t, body, durable in values],
        )
    db.executemany("INSERT INTO heads VALUES (?, ?)", list(heads.items()))
    db.executemany("INSERT INTO last_values VALUES (?, ?, ?)", [(t, rt, b) for t, (rt, b) in last.items()])
    db.execute("COMMIT")
    db.close()


def test_a_schema_1_journal_is_converted_in_place(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    audit = [(seq, 5000 + seq // 1200, topic("x"), b"a%d" % seq, 0) for seq in range(11, 2511)]  # trimmed below 11
    alerts = [(seq, 7000 + seq, topic("c", ALERTS), b"d%d" % seq, seq % 2) for seq in range(1, 6)]  # each its own rt
    alerts.append((6, 7003, topic("c", ALERTS), b"late", 0))  # a receive time out of order, kept as it was
    last = {b"ex_esdb_health/health_summary:s": (9, b"summary")}
    logs = [(seq, 100, topic("l", Instance.LOGGING), b"l", 0) for seq in (1, 2, 3)]  # its heads row says 1
    v1_file(tmp_path, {"audit": audit, "alerts": alerts, "logging": logs},
            {"ex_esdb_audit": 2510, "ex_esdb_alerts": 6, "ex_esdb_security": 42, "ex_esdb_logging": 1},
            last)  # fmt: skip
    with caplog.at_level(logging.INFO, logger="exesdb.broker.journal"):
        opened = open_store(str(tmp_path), "durable")
    try:
        assert any("converted schema 1 to 2: 2509 records" in m for m in caplog.messages), caplog.messages
        assert opened.heads[AUDIT] == 2510 and opened.heads[ALERTS] == 6
        assert opened.heads[Instance.SECURITY] == 42 and opened.first_seq(Instance.SECURITY) == 43  # all trimmed
        assert everything(opened) == [(s, rt, t, b, False) for s, rt, t, b, _ in audit]
        assert everything(opened, ALERTS) == [(s, rt, t, b, bool(d)) for s, rt, t, b, d in alerts]
        assert opened.first_seq(AUDIT) == 11 and opened.count(AUDIT) == 2500
        assert opened.seq_at(AUDIT, 5001) == 1200 and opened.seq_at(AUDIT, 5002) == 2400
        assert opened.seq_at(ALERTS, 7003) == 3
        assert opened.last_values() == last
        opened.write(records(1) + records(1, instance=Instance.SECURITY))
        assert opened.heads[AUDIT] == 2511 and opened.heads[Instance.SECURITY] == 43
        assert opened.trim([Instance.LOGGING], 1, 0) == 3 and opened.count(Instance.LOGGING) == 0
    finally:
        opened.close()
    with sqlite3.connect(tmp_path / DB_NAME) as db:
        tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master")}
        assert not any(name.startswith("j_") for name in tables) and "c_audit_rt" in tables
        assert db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone() == (2,)
        assert [n for (n,) in db.execute("SELECT n FROM c_audit ORDER BY first_seq")][:4] == [1000, 189, 1000, 200]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="exesdb.broker.journal"):
        again = open_store(str(tmp_path), "durable")  # schema 2 now: opened as it is
    try:
        assert not any("converted" in m for m in caplog.messages) and again.heads[AUDIT] == 2511
        assert again.heads[Instance.LOGGING] == 3  # the conversion recorded the head the rows implied
    finally:
        again.close()


def test_a_failed_conversion_leaves_the_schema_1_file_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    v1_file(tmp_path, {"audit": [(1, 5, topic("x"), b"a", 0)]}, {"ex_esdb_audit": 1}, {})

    def broken(*_: object) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(store_module, "migrate", broken)
    with pytest.raises(StoreError, match=r"cannot open journal .*disk is full"):
        open_store(str(tmp_path), "durable")
    with sqlite3.connect(tmp_path / DB_NAME) as db:
        assert db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone() == (1,)
        assert db.execute("SELECT count(*) FROM j_audit").fetchone() == (1,)
    monkeypatch.undo()
    opened = open_store(str(tmp_path), "durable")
    try:
        assert [r[0] for r in everything(opened)] == [1]
    finally:
        opened.close()


def test_a_newer_schema_is_a_one_line_store_error(tmp_path: Path) -> None:
    opened = open_store(str(tmp_path), "durable")
    opened._db.execute("UPDATE meta SET value = 3 WHERE key = 'schema'")
    opened.close()
    with pytest.raises(StoreError, match="schema version 3") as info:
        open_store(str(tmp_path), "durable")
    assert "\n" not in str(info.value)
    assert (tmp_path / DB_NAME).exists()  # not moved aside: it is not damaged


def test_a_damaged_file_is_moved_aside_and_a_new_journal_started(tmp_path: Path) -> None:
    opened = open_store(str(tmp_path), "durable")
    opened.write(records(10))
    opened.close()
    with (tmp_path / DB_NAME).open("r+b") as handle:
        handle.write(b"\x00" * 100)  # the header
    again = open_store(str(tmp_path), "durable")
    try:
        assert again.heads[AUDIT] == 0
        assert any(p.name.startswith(f"{DB_NAME}.corrupt-") for p in tmp_path.iterdir())
    finally:
        again.close()


def test_a_damaged_chunk_is_a_database_error_not_a_crash(store: JournalStore, tmp_path: Path) -> None:
    store.write(records(3))
    with sqlite3.connect(tmp_path / DB_NAME) as db:
        db.execute("UPDATE c_audit SET data = x'c1'")
    with pytest.raises(sqlite3.DatabaseError, match="c_audit@1 is unreadable"):
        store.page(AUDIT, 1, b"", 10, 1 << 20)


def test_one_store_per_directory_and_unusable_directories(tmp_path: Path) -> None:
    opened = open_store(str(tmp_path), "durable")
    try:
        with pytest.raises(StoreError, match="in use by another broker"):
            open_store(str(tmp_path), "durable")
    finally:
        opened.close()
    open_store(str(tmp_path), "durable").close()  # released on close
    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreError, match=r"is not a directory|cannot create"):
        open_store(str(tmp_path / "file"), "durable")
