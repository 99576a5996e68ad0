"""The journal's storage: SQLite (standard library) in WAL mode, records kept in chunks.

Only the journal thread touches a :class:`JournalStore`. One SQLite row per message costs
4 to 7 us here, more than the journal can spend, so a row holds a **chunk**: many
consecutive records of one instance, packed with msgspec. A :meth:`JournalStore.write` is one
transaction that adds new chunks only (it never appends to an existing one), all records of
it sharing one receive time. Under the default fsync policy ``durable``, ``synchronous`` is
FULL (an fsync of the write-ahead log before the commit returns) for a write that holds a
durable publish and NORMAL otherwise: a NORMAL commit survives the broker being killed (the
WAL is written before the commit returns) but not a power cut. ``always`` makes every write
FULL, ``never`` everything OFF; last values and retention are NORMAL (OFF under ``never``).

Schema (version 2):

- ``c_<instance>(first_seq INTEGER PRIMARY KEY, last_seq, rt, n, bytes, data BLOB)``, indexed
  on ``rt``: one row per chunk, holding the records ``first_seq..last_seq`` (``n`` of them,
  no hole) of the instance, all received at ``rt`` (UTC ns; it never decreases with the
  sequence number, except where a schema-1 file recorded it otherwise: converted chunks keep
  the receive times as they were). ``bytes`` is the sum of their body sizes. ``data`` is the
  msgpack array ``[topics, index, bodies, durable]``: each distinct topic once (bin), per
  record the position of its topic in ``topics``, per record its body (bin), and the
  positions of the records that came as durable publishes (usually none). A chunk holds at
  most ``CHUNK_RECORDS`` records and closes at the record that brings it to ``CHUNK_BYTES``;
- ``heads(instance PRIMARY KEY, seq)``: the last sequence number given out per instance, so
  numbers never go back even when retention has removed every record;
- ``last_values(topic PRIMARY KEY, rt, body)``: the latest message per last-value topic;
- ``meta(key PRIMARY KEY, value)``: ``schema`` = 2.

Retention is exact per record: whole chunks below the cutoff go, and the chunk across it is
rewritten without its leading records. A schema-1 file (one ``j_<instance>`` row per record)
is converted in place, in one transaction, when opened (:mod:`.store_v1`). The tables and the
chunk codec are in :mod:`.store_format`.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import compress, islice
from pathlib import Path
from typing import Final

from exesdb_sdk.instances import Instance
from exesdb_sdk.protocol import RESERVED_PREFIX

from .store_format import SCHEMA_VERSION, chunks, create_tables, table_name, unpack
from .store_v1 import migrate

__all__ = [
    "DB_NAME",
    "FSYNC_POLICIES",
    "SCHEMA_VERSION",
    "JournalStore",
    "Record",
    "StoreError",
    "open_store",
]

log = logging.getLogger("exesdb.broker.journal")

DB_NAME: Final = "journal.db"
FSYNC_POLICIES: Final = ("durable", "always", "never")
_RESERVED: Final = RESERVED_PREFIX.encode()
"""Topics of the journal's own records (gap markers): every page includes them."""
_PAGE_SCAN: Final = 200_000
"""Records a page examines at most: a narrow prefix over a long journal answers in pieces
(``more`` true, ``next`` advanced) instead of holding the journal thread."""
_TRIM_RECORDS: Final = 250_000
_TRIM_BYTES: Final = 64 << 20
_TRIM_CHUNKS: Final = 20_000
"""Work per instance per :meth:`JournalStore.trim` call, so one trim never holds the writer long."""

PageRecord = tuple[int, int, bytes, bytes, bool]
"""One record of a page: seq, rt, topic, body, durable."""


class StoreError(Exception):
    """The store cannot be opened or written; the message is one line for the operator."""


@dataclass(slots=True)
class Record:
    """One message to record."""

    instance: Instance
    topic: bytes
    body: bytes
    durable: bool = False
    seq: int = 0
    """The broker sequence number, set by :meth:`JournalStore.write` (0 until committed)."""


class JournalStore:
    """An open journal database: chunked writes, replay pages, last values, retention."""

    def __init__(self, path: Path, connection: sqlite3.Connection, fsync: str) -> None:
        self.path = path
        self.lock: int | None = None
        self._db = connection
        self._fsync = fsync
        self._synchronous = ""
        self.heads: dict[Instance, int] = {}
        """The last sequence number given out per instance (it never goes back)."""
        self._rt = 0
        self._ensure_schema()

    @contextlib.contextmanager
    def _transaction(self, begin: str = "BEGIN") -> Iterator[sqlite3.Connection]:
        """Commit what the block does, or roll it back and re-raise whatever it raised."""
        db = self._db
        db.execute(begin)
        try:
            yield db
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
            raise

    # -- schema ------------------------------------------------------------------------------

    def _ensure_schema(self) -> None:
        with self._transaction("BEGIN IMMEDIATE") as db:
            found = db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
            version = SCHEMA_VERSION if found is None else found[0]
            if version == 1:
                migrate(db, self.path)
            elif version != SCHEMA_VERSION:
                raise StoreError(f"journal {self.path} has schema version {version}; this broker reads 1 and 2")
            create_tables(db)
            db.execute("INSERT OR REPLACE INTO meta VALUES ('schema', ?)", (SCHEMA_VERSION,))
        db = self._db
        heads = dict(db.execute("SELECT instance, seq FROM heads").fetchall())
        for instance in Instance:
            table = table_name(instance)
            top = db.execute(f"SELECT last_seq FROM {table} ORDER BY first_seq DESC LIMIT 1").fetchone()
            self.heads[instance] = max(top[0] if top else 0, heads.get(instance.value, 0))
            self._rt = max(self._rt, db.execute(f"SELECT coalesce(max(rt), 0) FROM {table}").fetchone()[0])

    # -- writing -----------------------------------------------------------------------------

    def _set_synchronous(self, durable: bool | None) -> None:
        """FULL for a write holding a durable record (``durable`` policy) or any write
        (``always``); NORMAL otherwise and for the rest (``durable`` None); OFF under ``never``."""
        if self._fsync == "never":
            mode = "OFF"
        elif durable is not None and (self._fsync == "always" or durable):
            mode = "FULL"
        else:
            mode = "NORMAL"
        if mode != self._synchronous:
            self._db.execute(f"PRAGMA synchronous = {mode}")
            self._synchronous = mode

    def write(self, records: Sequence[Record]) -> int:
        """Give ``records`` consecutive sequence numbers per instance (in list order) and commit
        them in one transaction, all with the receive time ``rt`` taken now (never below an
        earlier write's, so ``rt`` never decreases with ``seq``). Returns ``rt``.

        On failure nothing is kept: the transaction is rolled back, every record's ``seq`` is
        back to 0, :attr:`heads` is unchanged, and the exception (a :class:`sqlite3.Error`
        for a storage failure) propagates as it was raised.
        """
        if not records:
            return max(time.time_ns(), self._rt)
        heads = dict(self.heads)
        by_instance: dict[Instance, list[Record]] = {}
        for record in records:
            group = by_instance.get(record.instance)
            if group is None:
                group = by_instance[record.instance] = []
            group.append(record)
        durable = any([record.durable for record in records])
        try:
            self._set_synchronous(durable)
            rt = max(time.time_ns(), self._rt)
            with self._transaction() as db:
                for instance, group in by_instance.items():
                    first = heads[instance] + 1
                    for seq, record in enumerate(group, first):
                        record.seq = seq
                    heads[instance] = first + len(group) - 1
                    topics = [record.topic for record in group]
                    bodies = [record.body for record in group]
                    marks = [i for i, record in enumerate(group) if record.durable] if durable else []
                    db.executemany(
                        f"INSERT INTO {table_name(instance)} VALUES (?, ?, ?, ?, ?, ?)",
                        chunks(topics, bodies, marks, first, rt),
                    )
                db.executemany(
                    "INSERT OR REPLACE INTO heads VALUES (?, ?)",
                    [(instance.value, heads[instance]) for instance in by_instance],
                )
        except BaseException:
            for record in records:
                record.seq = 0
            raise
        self.heads = heads
        self._rt = rt
        return rt

    def write_last(self, last: Mapping[bytes, tuple[int, bytes]]) -> None:
        """Upsert last values (topic -> (rt, body)) in one transaction (synchronous NORMAL,
        OFF under the ``never`` policy). On failure nothing is kept and it raises."""
        if not last:
            return
        self._set_synchronous(None)
        with self._transaction() as db:
            db.executemany(
                "INSERT OR REPLACE INTO last_values VALUES (?, ?, ?)",
                [(topic, rt, body) for topic, (rt, body) in last.items()],
            )

    # -- reading -----------------------------------------------------------------------------

    def first_seq(self, instance: Instance) -> int:
        """The oldest sequence number still kept (head + 1 when the instance has none)."""
        found = self._db.execute(f"SELECT min(first_seq) FROM {table_name(instance)}").fetchone()[0]
        return int(found) if found is not None else self.heads[instance] + 1

    def seq_at(self, instance: Instance, since_ns: int) -> int:
        """The first sequence number received at or after ``since_ns`` (head + 1 when none).
        A chunk has one receive time, so the time index answers without unpacking."""
        found = self._db.execute(
            f"SELECT first_seq FROM {table_name(instance)} WHERE rt >= ? ORDER BY rt, first_seq LIMIT 1", (since_ns,)
        ).fetchone()
        return int(found[0]) if found is not None else self.heads[instance] + 1

    def page(
        self, instance: Instance, from_seq: int, prefix: bytes, limit: int, max_bytes: int
    ) -> tuple[list[PageRecord], int, bool]:
        """Records from ``from_seq`` on whose topic starts with ``prefix``, and every journal
        marker (topic ``_exesdb/...``) whatever the prefix: at most ``limit`` (>= 1) records
        and about ``max_bytes`` of bodies (always at least one when any).

        Returns the records, the ``from_seq`` of the next page, and whether more may follow:
        true when a further record matched, or when the page stopped after examining
        ``_PAGE_SCAN`` records short of the head (then it may hold fewer than ``limit``,
        even none, and the next ``from_seq`` is past what it examined).
        """
        table = table_name(instance)
        head = self.heads[instance]
        cursor = self._db.execute(
            f"SELECT first_seq, rt, n, data FROM {table} WHERE first_seq >= coalesce("
            f"(SELECT first_seq FROM {table} WHERE first_seq <= ?1 ORDER BY first_seq DESC LIMIT 1), ?1) "
            "ORDER BY first_seq",
            (from_seq,),
        )
        wanted = (prefix, _RESERVED)
        records: list[PageRecord] = []
        size = scanned = 0
        seq = from_seq - 1  # the last record examined
        more = full = False
        for first, rt, n, data in cursor:
            chunk = unpack(data, n, f"{table}@{first}")
            topics, index, bodies, durable = chunk.topics, chunk.index, chunk.bodies, set(chunk.durable)
            skip = max(0, from_seq - first)
            matches = [topic.startswith(wanted) for topic in topics]
            positions: Iterable[int] = range(skip, n)
            if not all(matches):
                positions = compress(positions, map(matches.__getitem__, islice(index, skip, None)))
            for i in positions:
                body = bodies[i]
                if len(records) >= limit or (records and size + len(body) > max_bytes):
                    more = full = True
                    break
                records.append((first + i, rt, topics[index[i]], body, i in durable))
                size += len(body)
            if full:
                break
            seq = max(seq, first + n - 1)
            scanned += max(0, n - skip)
            if scanned >= _PAGE_SCAN:
                more = seq < head
                break
        cursor.close()
        if full or (records and not more):
            following = records[-1][0] + 1
        elif more:  # stopped by the scan bound: nothing examined so far matched past the last record
            following = seq + 1
        else:
            following = max(from_seq, head + 1)
        return records, following, more

    def count(self, instance: Instance) -> int:
        """Records kept for ``instance``."""
        found: int = self._db.execute(f"SELECT coalesce(sum(n), 0) FROM {table_name(instance)}").fetchone()[0]
        return found

    def last_values(self) -> dict[bytes, tuple[int, bytes]]:
        """Every last value kept: topic -> (rt, body)."""
        return {topic: (rt, body) for topic, rt, body in self._db.execute("SELECT topic, rt, body FROM last_values")}

    # -- retention ---------------------------------------------------------------------------

    def trim(self, instances: Iterable[Instance], max_age: float, max_records: int) -> int:
        """Delete the records older than ``max_age`` seconds or beyond the newest
        ``max_records`` per instance (0: no limit), exactly, but at most a bounded amount per
        instance per call (about ``_TRIM_RECORDS`` records, ``_TRIM_BYTES`` bytes or
        ``_TRIM_CHUNKS`` chunks): call it again to go on. Returns the records deleted."""
        deleted = 0
        now = time.time_ns()
        self._set_synchronous(None)
        for instance in instances:
            first = self.first_seq(instance)
            cutoff = first
            if max_records:
                cutoff = max(cutoff, self.heads[instance] - max_records + 1)
            if max_age:
                cutoff = max(cutoff, self.seq_at(instance, now - int(max_age * 1e9)))
            if cutoff > first:
                deleted += self._trim_below(instance, self._bounded(instance, cutoff))
        return deleted

    def _bounded(self, instance: Instance, cutoff: int) -> int:
        """``cutoff``, lowered so that trimming below it stays within the per-call bounds."""
        records = size = 0
        rows: list[tuple[int, int, int]] = self._db.execute(
            f"SELECT first_seq, n, bytes FROM {table_name(instance)} WHERE first_seq < ? ORDER BY first_seq LIMIT ?",
            (cutoff, _TRIM_CHUNKS),
        ).fetchall()
        for first, n, chunk_bytes in rows:
            if records + n > _TRIM_RECORDS:
                return min(cutoff, first + _TRIM_RECORDS - records)
            records += n
            size += chunk_bytes
            if size >= _TRIM_BYTES:
                return min(cutoff, first + n)
        if len(rows) == _TRIM_CHUNKS:
            first, n, _ = rows[-1]
            return min(cutoff, first + n)
        return cutoff

    def _trim_below(self, instance: Instance, cutoff: int) -> int:
        """Delete the records below ``cutoff`` in one transaction: whole chunks, then the
        leading records of the chunk across it. Returns how many."""
        table = table_name(instance)
        with self._transaction() as db:
            deleted: int = db.execute(
                f"SELECT coalesce(sum(n), 0) FROM {table} WHERE first_seq < ?1 AND last_seq < ?1", (cutoff,)
            ).fetchone()[0]
            db.execute(f"DELETE FROM {table} WHERE first_seq < ?1 AND last_seq < ?1", (cutoff,))
            across = db.execute(f"SELECT first_seq, rt, n, data FROM {table} WHERE first_seq < ?", (cutoff,)).fetchone()
            if across is not None:
                first, rt, n, data = across
                chunk, cut = unpack(data, n, f"{table}@{first}"), cutoff - first
                topics = [chunk.topics[i] for i in chunk.index[cut:]]
                marks = [p - cut for p in chunk.durable if p >= cut]
                db.execute(f"DELETE FROM {table} WHERE first_seq = ?", (first,))
                db.executemany(
                    f"INSERT INTO {table} VALUES (?, ?, ?, ?, ?, ?)",
                    chunks(topics, chunk.bodies[cut:], marks, cutoff, rt),
                )
                deleted += cut
        return deleted

    def close(self) -> None:
        """Close the database and release the data directory's lock."""
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
