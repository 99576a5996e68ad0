"""The journal's storage: SQLite (standard library) in WAL mode, one table per journaled instance.

Only the journal thread touches a :class:`JournalStore`. Rows are inserted in batches, one
transaction per batch. ``synchronous`` is FULL (an fsync of the write-ahead log before the
commit returns) for batches that hold a durable publish under the default ``durable`` policy,
and NORMAL otherwise: a NORMAL commit survives the broker being killed (the WAL is written
before the commit returns) but not a power cut.

Schema (version 1):

- ``j_<instance>(seq INTEGER PRIMARY KEY, rt, topic BLOB, body BLOB, pub, pseq, n, durable)``:
  one row per received message; ``seq`` is the broker's sequence number within the instance,
  ``rt`` the receive time (UTC ns), ``pub``/``pseq`` the first envelope's publisher id and
  sequence number, ``n`` the envelope count;
- ``heads(instance PRIMARY KEY, seq)``: the last sequence number given out per instance, so
  numbers never go back even when retention has removed every row;
- ``last_values(topic PRIMARY KEY, rt, body)``: the latest message per last-value topic.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import sqlite3
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from exesdb_sdk.instances import Instance

__all__ = ["DB_NAME", "FSYNC_POLICIES", "JournalStore", "Record", "Row", "StoreError", "open_store"]

log = logging.getLogger("exesdb.broker.journal")

DB_NAME: Final = "journal.db"
FSYNC_POLICIES: Final = ("durable", "always", "never")
SCHEMA_VERSION: Final = 1
_TRIM_CHUNK: Final = 20_000
"""Rows deleted per retention statement, so one trim never holds the writer for long."""


class StoreError(Exception):
    """The store cannot be opened or written; the message is one line for the operator."""


@dataclass(slots=True)
class Row:
    """One message to record."""

    instance: Instance
    rt: int
    topic: bytes
    body: bytes
    pub: str
    pseq: int
    count: int
    durable: bool
    seq: int = 0


@dataclass(slots=True)
class Record:
    """One message to record (interim: mapped onto the schema-1 rows)."""

    instance: Instance
    topic: bytes
    body: bytes
    durable: bool = False
    seq: int = 0


def _table(instance: Instance) -> str:
    return "j_" + instance.value.removeprefix("ex_esdb_")


class JournalStore:
    """An open journal database: batched inserts, replay pages, last values, retention."""

    def __init__(self, path: Path, connection: sqlite3.Connection, fsync: str) -> None:
        self.path = path
        self.lock: int | None = None
        self._db = connection
        self._fsync = fsync
        self._synchronous = ""
        self.heads: dict[Instance, int] = {}
        self._ensure_schema()

    # -- schema ------------------------------------------------------------------------------

    def _ensure_schema(self) -> None:
        db = self._db
        with db:
            db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value)")
            db.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (SCHEMA_VERSION,))
            db.execute("CREATE TABLE IF NOT EXISTS heads (instance TEXT PRIMARY KEY, seq INTEGER NOT NULL)")
            db.execute(
                "CREATE TABLE IF NOT EXISTS last_values "
                "(topic BLOB PRIMARY KEY, rt INTEGER NOT NULL, body BLOB NOT NULL)"
            )
            for instance in Instance:
                table = _table(instance)
                db.execute(
                    f"CREATE TABLE IF NOT EXISTS {table} (seq INTEGER PRIMARY KEY, rt INTEGER NOT NULL, "
                    "topic BLOB NOT NULL, body BLOB NOT NULL, pub TEXT NOT NULL, pseq INTEGER NOT NULL, "
                    "n INTEGER NOT NULL, durable INTEGER NOT NULL)"
                )
                db.execute(f"CREATE INDEX IF NOT EXISTS {table}_rt ON {table}(rt)")
        version = db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()[0]
        if version != SCHEMA_VERSION:
            raise StoreError(f"journal {self.path} has schema version {version}, this broker reads {SCHEMA_VERSION}")
        heads = dict(db.execute("SELECT instance, seq FROM heads").fetchall())
        for instance in Instance:
            top = db.execute(f"SELECT max(seq) FROM {_table(instance)}").fetchone()[0] or 0
            self.heads[instance] = max(top, heads.get(instance.value, 0))

    # -- writing -----------------------------------------------------------------------------

    def _set_synchronous(self, durable: bool) -> None:
        if self._fsync == "never":
            mode = "OFF"
        elif self._fsync == "always" or durable:
            mode = "FULL"
        else:
            mode = "NORMAL"
        if mode != self._synchronous:
            self._db.execute(f"PRAGMA synchronous = {mode}")
            self._synchronous = mode

    def write(self, rows: Sequence[Row], last: dict[bytes, tuple[int, bytes]]) -> None:
        """Give ``rows`` their sequence numbers and commit them, with the ``last`` values, in one
        transaction. On failure nothing is kept (numbers are not used up) and it raises
        :class:`sqlite3.Error`."""
        if not rows and not last:
            return
        self._set_synchronous(any(row.durable for row in rows))
        heads = dict(self.heads)
        by_table: dict[Instance, list[tuple[int, int, bytes, bytes, str, int, int, int]]] = {}
        for row in rows:
            seq = heads[row.instance] + 1
            heads[row.instance] = seq
            row.seq = seq
            by_table.setdefault(row.instance, []).append(
                (seq, row.rt, row.topic, row.body, row.pub, row.pseq, row.count, int(row.durable))
            )
        db = self._db
        try:
            db.execute("BEGIN")
            for instance, values in by_table.items():
                db.executemany(f"INSERT INTO {_table(instance)} VALUES (?, ?, ?, ?, ?, ?, ?, ?)", values)
                db.execute("INSERT OR REPLACE INTO heads VALUES (?, ?)", (instance.value, heads[instance]))
            if last:
                db.executemany(
                    "INSERT OR REPLACE INTO last_values VALUES (?, ?, ?)",
                    [(topic, rt, body) for topic, (rt, body) in last.items()],
                )
            db.execute("COMMIT")
        except BaseException:
            for row in rows:
                row.seq = 0
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            raise
        self.heads = heads

    def write_records(self, records: Sequence[Record]) -> int:
        rt = time.time_ns()
        rows = [Row(r.instance, rt, r.topic, r.body, "", 0, 0, r.durable) for r in records]
        self.write(rows, {})
        for record, row in zip(records, rows, strict=True):
            record.seq = row.seq
        return rt

    def write_last(self, last: dict[bytes, tuple[int, bytes]]) -> None:
        self.write([], last)

    # -- reading -----------------------------------------------------------------------------

    def first_seq(self, instance: Instance) -> int:
        """The oldest sequence number still kept (head + 1 when the instance has none)."""
        found = self._db.execute(f"SELECT min(seq) FROM {_table(instance)}").fetchone()[0]
        return int(found) if found is not None else self.heads[instance] + 1

    def seq_at(self, instance: Instance, since_ns: int) -> int:
        """The first sequence number received at or after ``since_ns`` (receive times follow the
        sequence numbers, so the time index finds it without a scan)."""
        found = self._db.execute(
            f"SELECT seq FROM {_table(instance)} WHERE rt >= ? ORDER BY rt, seq LIMIT 1", (since_ns,)
        ).fetchone()
        return int(found[0]) if found is not None else self.heads[instance] + 1

    def page(
        self, instance: Instance, from_seq: int, prefix: bytes, limit: int, max_bytes: int
    ) -> tuple[list[tuple[int, int, bytes, bytes, int]], int, bool]:
        """Records from ``from_seq`` on whose topic starts with ``prefix``: at most ``limit``
        records and about ``max_bytes`` of bodies (always at least one). Returns the records,
        the next sequence number to ask for, and whether more may follow."""
        table = _table(instance)
        if prefix:
            cursor = self._db.execute(
                f"SELECT seq, rt, topic, body, durable FROM {table} WHERE seq >= ? AND topic >= ? AND topic < ? "
                "ORDER BY seq LIMIT ?",
                (from_seq, prefix, prefix + b"\xff", limit + 1),
            )
        else:
            cursor = self._db.execute(
                f"SELECT seq, rt, topic, body, durable FROM {table} WHERE seq >= ? ORDER BY seq LIMIT ?",
                (from_seq, limit + 1),
            )
        records: list[tuple[int, int, bytes, bytes, int]] = []
        size = 0
        more = False
        for record in cursor:
            if len(records) >= limit or (records and size + len(record[3]) > max_bytes):
                more = True
                break
            records.append(record)
            size += len(record[3])
        cursor.close()
        following = records[-1][0] + 1 if records else max(from_seq, self.heads[instance] + 1)
        return records, following, more

    def count(self, instance: Instance) -> int:
        found: int = self._db.execute(f"SELECT count(*) FROM {_table(instance)}").fetchone()[0]
        return found

    def last_values(self) -> dict[bytes, tuple[int, bytes]]:
        return {topic: (rt, body) for topic, rt, body in self._db.execute("SELECT topic, rt, body FROM last_values")}

    # -- retention ---------------------------------------------------------------------------

    def trim(self, instances: Iterable[Instance], max_age: float, max_records: int) -> int:
        """Delete rows older than ``max_age`` seconds or beyond the newest ``max_records`` per
        instance (0: no limit), at most a chunk per instance per call. Returns rows deleted."""
        deleted = 0
        now = time.time_ns()
        db = self._db
        self._set_synchronous(False)
        for instance in instances:
            table = _table(instance)
            first = self.first_seq(instance)
            cutoff = first
            if max_records:
                cutoff = max(cutoff, self.heads[instance] - max_records + 1)
            if max_age:
                young = self.seq_at(instance, now - int(max_age * 1e9))
                cutoff = max(cutoff, young)
            cutoff = min(cutoff, first + _TRIM_CHUNK)
            if cutoff > first:
                with db:
                    deleted += db.execute(f"DELETE FROM {table} WHERE seq < ?", (cutoff,)).rowcount
        return deleted

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._db.close()
        if self.lock is not None:
            os.close(self.lock)
            self.lock = None


def open_store(directory: str, fsync: str) -> JournalStore:
    """Open (creating it and the directory if needed) the journal under ``directory``.

    Raises :class:`StoreError` with a one-line reason when the directory or the file cannot
    be used. A database file that SQLite reports as corrupt is moved aside (to
    ``journal.db.corrupt-<UTC ns>``, with its WAL) and a new one started, so a damaged file
    never stops the broker from starting; the old file stays for inspection.
    """
    path = Path(directory).expanduser() / DB_NAME
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"cannot create data dir {path.parent}: {exc.strerror or exc}") from None
    if not path.parent.is_dir():
        raise StoreError(f"data dir {path.parent} is not a directory")
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise StoreError(f"data dir {path.parent} is not writable")
    lock = _lock(path.parent)
    try:
        store = _open_or_replace(path, fsync)
    except BaseException:
        os.close(lock)
        raise
    store.lock = lock
    return store


def _lock(directory: Path) -> int:
    """Hold ``journal.lock`` in ``directory`` for the broker's life: one broker per data dir."""
    try:
        fd = os.open(directory / "journal.lock", os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise StoreError(f"data dir {directory} is not usable: {exc.strerror or exc}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise StoreError(f"data dir {directory} is in use by another broker (give each its own --data-dir)") from None
    return fd


def _open_or_replace(path: Path, fsync: str) -> JournalStore:
    try:
        return _open(path, fsync)
    except sqlite3.DatabaseError as exc:
        if isinstance(exc, sqlite3.OperationalError) and not _looks_corrupt(exc):
            raise StoreError(f"cannot open journal {path}: {exc}") from None
        aside = path.with_name(f"{DB_NAME}.corrupt-{time.time_ns()}")
        log.error("journal %s is unreadable (%s): moved it to %s and started a new one", path, exc, aside)
        for suffix in ("", "-wal", "-shm"):
            source = Path(str(path) + suffix)
            if source.exists():
                source.rename(Path(str(aside) + suffix))
        try:
            return _open(path, fsync)
        except sqlite3.Error as again:
            raise StoreError(f"cannot open journal {path}: {again}") from None


def _looks_corrupt(exc: sqlite3.Error) -> bool:
    text = str(exc).lower()
    return "malformed" in text or "not a database" in text or "corrupt" in text


def _open(path: Path, fsync: str) -> JournalStore:
    connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        mode = connection.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise StoreError(f"journal {path}: SQLite refused WAL mode (got {mode})")
        connection.execute("PRAGMA busy_timeout = 2000")
        # A small probe write: a read-only file or directory fails here, at start-up.
        connection.execute("BEGIN IMMEDIATE")
        connection.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value)")
        connection.execute("COMMIT")
        return JournalStore(path, connection, fsync)
    except sqlite3.DatabaseError:
        connection.close()
        raise
    except StoreError:
        connection.close()
        raise
