"""The conversion of a schema-1 journal (one ``j_<alias>`` row per record) to schema 2 (chunks).

Schema 1, for reference: ``j_<alias>(seq INTEGER PRIMARY KEY, rt, topic BLOB, body BLOB, pub,
pseq, n, durable)`` indexed on ``rt``, with ``heads``, ``last_values`` and ``meta`` as in
schema 2 (they are kept as they are). :class:`~.store.JournalStore` calls :func:`migrate` when
it opens a file whose ``meta`` says schema 1, inside the transaction that then sets schema 2.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from pathlib import Path

from exesdb_sdk.instances import Instance

from .store_format import CHUNK_RECORDS, SCHEMA_VERSION, Chunk, chunks, create_tables, table_name

__all__ = ["migrate"]

log = logging.getLogger("exesdb.broker.journal")


def migrate(db: sqlite3.Connection, path: Path) -> None:
    """Convert a schema-1 journal in the caller's transaction: each ``j_<alias>`` table's rows
    become chunks in sequence order, keeping every record's seq, rt and durable flag (a chunk
    has one receive time, so chunks also split where rt changes), then the table goes."""
    started = time.monotonic()
    log.info("journal %s: converting it from schema 1 to %d (once)", path, SCHEMA_VERSION)
    create_tables(db)
    tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    converted = written = 0
    for instance in Instance:
        old = "j_" + instance.alias
        if old not in tables:
            continue
        insert = f"INSERT INTO {table_name(instance)} VALUES (?, ?, ?, ?, ?, ?)"
        pending: list[Chunk] = []
        topics: list[bytes] = []
        bodies: list[bytes] = []
        marks: list[int] = []
        first = run_rt = top = 0
        rows = db.execute(f"SELECT seq, rt, topic, body, durable FROM {old} ORDER BY seq")
        for seq, rt, topic, body, durable in rows:
            if bodies and (rt != run_rt or seq != first + len(bodies) or len(bodies) >= CHUNK_RECORDS):
                pending.extend(chunks(topics, bodies, marks, first, run_rt))
                topics, bodies, marks = [], [], []
                if len(pending) >= 1000:
                    db.executemany(insert, pending)
                    written += len(pending)
                    pending = []
            if not bodies:
                first, run_rt = seq, rt
            if durable:
                marks.append(len(bodies))
            topics.append(topic)
            bodies.append(body)
            top = seq
            converted += 1
        pending.extend(chunks(topics, bodies, marks, first, run_rt))
        db.executemany(insert, pending)
        written += len(pending)
        db.execute(
            "INSERT INTO heads VALUES (?, ?) ON CONFLICT (instance) DO UPDATE SET seq = max(seq, excluded.seq)",
            (instance.value, top),
        )
        db.execute(f"DROP TABLE {old}")
    log.info(
        "journal %s: converted schema 1 to %d: %d records into %d chunks in %.2f s",
        path, SCHEMA_VERSION, converted, written, time.monotonic() - started,
    )  # fmt: skip
