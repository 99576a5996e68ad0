"""The journal file's schema 2: its tables and the chunk codec (see :mod:`.store`)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from typing import Annotated, Final

import msgspec
from exesdb_sdk.instances import Instance

__all__ = [
    "CHUNK_BYTES",
    "CHUNK_RECORDS",
    "SCHEMA_VERSION",
    "Chunk",
    "Packed",
    "chunks",
    "create_tables",
    "table_name",
    "unpack",
]

SCHEMA_VERSION: Final = 2
CHUNK_RECORDS: Final = 1000
"""Records per chunk at most."""
CHUNK_BYTES: Final = 256 * 1024
"""Body bytes per chunk, about (a chunk closes at the record that reaches this)."""
Chunk = tuple[int, int, int, int, int, bytes]
"""One chunk row: first_seq, last_seq, rt, n, bytes, data."""


class Packed(msgspec.Struct, array_like=True):
    """A chunk's ``data`` (the layout is in :mod:`.store`'s docstring)."""

    topics: list[bytes]
    index: list[Annotated[int, msgspec.Meta(ge=0)]]
    bodies: list[bytes]
    durable: list[int]


_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(Packed).decode


def table_name(instance: Instance) -> str:
    """The chunk table of ``instance``, e.g. ``c_audit``."""
    return "c_" + instance.alias


def chunks(
    topics: list[bytes], bodies: list[bytes], durable: Sequence[int], first_seq: int, rt: int
) -> Iterator[Chunk]:
    """Pack records ``first_seq`` on, all received at ``rt`` (their topics, their bodies and
    the positions of the durable ones), into chunk rows."""
    if len(bodies) == 1:  # a lone record (a durable publish at a quiet time): the short way
        _check(topics)
        yield first_seq, first_seq, rt, 1, len(bodies[0]), _encode(Packed(topics, [0], bodies, list(durable)))
        return
    start = 0
    while start < len(bodies):
        end = min(start + CHUNK_RECORDS, len(bodies))
        size = sum(map(len, bodies[start:end]))
        if size > CHUNK_BYTES:  # large bodies: close the chunk at the record that reaches the size
            size, end = 0, start
            while size < CHUNK_BYTES:
                size += len(bodies[end])
                end += 1
        part = topics[start:end]
        where = {topic: i for i, topic in enumerate(dict.fromkeys(part))}
        _check(where)
        marks = [p - start for p in durable if start <= p < end]
        data = _encode(Packed(list(where), list(map(where.__getitem__, part)), bodies[start:end], marks))
        yield first_seq + start, first_seq + end - 1, rt, end - start, size, data
        start = end


def _check(topics: Iterable[bytes]) -> None:
    for topic in topics:  # the codec would pack anything, and the chunk would not unpack
        if type(topic) is not bytes:
            raise TypeError(f"a record's topic must be bytes, not {type(topic).__name__}")


def unpack(data: bytes, n: int, where: str) -> Packed:
    """The ``n`` records of a chunk; a damaged one is a :class:`sqlite3.DatabaseError` like any other."""
    try:
        chunk = _decode(data)
    except msgspec.DecodeError as exc:
        raise sqlite3.DatabaseError(f"journal chunk {where} is unreadable: {exc}") from None
    if len(chunk.bodies) != n or len(chunk.index) != n or (n and max(chunk.index) >= len(chunk.topics)):
        raise sqlite3.DatabaseError(f"journal chunk {where} is unreadable: it does not hold its {n} records")
    return chunk


def create_tables(db: sqlite3.Connection) -> None:
    """The schema-2 tables (idempotent); inside the caller's transaction."""
    db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value)")
    db.execute("CREATE TABLE IF NOT EXISTS heads (instance TEXT PRIMARY KEY, seq INTEGER NOT NULL)")
    db.execute(
        "CREATE TABLE IF NOT EXISTS last_values (topic BLOB PRIMARY KEY, rt INTEGER NOT NULL, body BLOB NOT NULL)"
    )
    for instance in Instance:
        table = table_name(instance)
        db.execute(
            f"CREATE TABLE IF NOT EXISTS {table} (first_seq INTEGER PRIMARY KEY, last_seq INTEGER NOT NULL, "
            "rt INTEGER NOT NULL, n INTEGER NOT NULL, bytes INTEGER NOT NULL, data BLOB NOT NULL)"
        )
        db.execute(f"CREATE INDEX IF NOT EXISTS {table}_rt ON {table}(rt)")
