"""``connectors.db``: each connector's cursor per journaled instance and its parked messages.

A cursor is ``(broker seq, envelopes taken of that record)``, committed in one transaction
after the sink acknowledged a batch, so a restart resumes after the last acknowledged message
(at least once: what was sent but not yet committed is sent again, with the same id).

Parked messages (refused for good by the sink) are kept here, at most ``parked_max`` per
connector: past it the oldest are deleted, counted in ``parked_dropped``. ``request_replay``
flags a connector's parked messages; the running connector picks flagged ones up (at most once
a second), hands them to its sink again and deletes each once the sink has answered it (a
refusal parks it anew). Any process may open the file (the broker's ``connector_*`` control
ops, ``exesdb connectors --state-dir``): sqlite's locking keeps writers apart.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from exesdb_sdk.errors import ConfigError

__all__ = ["DB_NAME", "Parked", "StateStore"]

DB_NAME: Final = "connectors.db"
_TIMEOUT: Final = 5.0
_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS cursor (
    connector TEXT NOT NULL, instance TEXT NOT NULL, seq INTEGER NOT NULL, within INTEGER NOT NULL,
    PRIMARY KEY (connector, instance));
CREATE TABLE IF NOT EXISTS parked (
    row INTEGER PRIMARY KEY AUTOINCREMENT, connector TEXT NOT NULL, id TEXT NOT NULL, topic TEXT NOT NULL,
    reason TEXT NOT NULL, parked_at INTEGER NOT NULL, message TEXT NOT NULL, body BLOB NOT NULL,
    broker_seq INTEGER, last_value INTEGER NOT NULL DEFAULT 0, replay INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS parked_by_connector ON parked (connector, replay, row);
CREATE TABLE IF NOT EXISTS counts (
    connector TEXT NOT NULL, name TEXT NOT NULL, value INTEGER NOT NULL, PRIMARY KEY (connector, name));
"""


@dataclass(frozen=True, slots=True)
class Parked:
    """One parked message."""

    row: int
    id: str
    topic: str
    reason: str
    parked_at: int
    """UTC nanoseconds."""
    message: dict[str, Any]
    """The ``exesdb tail --json`` object."""
    body: bytes
    broker_seq: int | None
    last_value: bool
    replay: bool

    def summary(self) -> dict[str, Any]:
        """JSON-ready, without the body."""
        return {
            "row": self.row,
            "id": self.id,
            "topic": self.topic,
            "reason": self.reason,
            "parked_at": self.parked_at,
            "broker_seq": self.broker_seq,
            "replay_requested": self.replay,
            "message": self.message,
        }


class StateStore:
    """The ``connectors.db`` of one data directory (or ``--state-dir``)."""

    def __init__(self, directory: str | Path) -> None:
        self.path = Path(directory) / DB_NAME
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, timeout=_TIMEOUT, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise ConfigError(f"connector state {self.path}: {exc}") from None

    def close(self) -> None:
        self._db.close()

    # -- cursors -----------------------------------------------------------------------------

    def cursors(self, connector: str) -> dict[str, tuple[int, int]]:
        """Instance -> (seq, within) committed for ``connector``."""
        rows = self._db.execute("SELECT instance, seq, within FROM cursor WHERE connector = ?", (connector,))
        return {instance: (seq, within) for instance, seq, within in rows}

    def commit(
        self,
        connector: str,
        cursors: Mapping[str, tuple[int, int]],
        parked: Iterable[tuple[str, str, str, Mapping[str, Any], bytes, int | None, bool]] = (),
        done: Iterable[int] = (),
        parked_max: int = 10_000,
    ) -> int:
        """In one transaction: move ``connector``'s cursors, park ``parked`` (id, topic, reason,
        message, body, broker seq, last value), delete the replayed rows ``done``, and trim the
        parked table to ``parked_max``; return how many parked rows the trim removed."""
        db = self._db
        now = time.time_ns()
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany(
                "INSERT INTO cursor VALUES (?, ?, ?, ?) ON CONFLICT (connector, instance) "
                "DO UPDATE SET seq = excluded.seq, within = excluded.within",
                [(connector, instance, seq, within) for instance, (seq, within) in cursors.items()],
            )
            db.executemany("DELETE FROM parked WHERE row = ? AND connector = ?", [(row, connector) for row in done])
            rows = [
                (connector, ident, topic, reason, now, json.dumps(message), body, seq, int(last))
                for ident, topic, reason, message, body, seq, last in parked
            ]
            trimmed = 0
            if rows:
                db.executemany(
                    "INSERT INTO parked (connector, id, topic, reason, parked_at, message, body, broker_seq, "
                    "last_value) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    rows,
                )
                count = db.execute("SELECT count(*) FROM parked WHERE connector = ?", (connector,)).fetchone()[0]
                if count > parked_max:
                    trimmed = count - parked_max
                    db.execute(
                        "DELETE FROM parked WHERE row IN (SELECT row FROM parked WHERE connector = ? "
                        "ORDER BY row LIMIT ?)",
                        (connector, trimmed),
                    )
                    self._add(connector, "parked_dropped", trimmed)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return trimmed

    def _add(self, connector: str, name: str, value: int) -> None:
        self._db.execute(
            "INSERT INTO counts VALUES (?, ?, ?) ON CONFLICT (connector, name) DO UPDATE SET value = value + ?",
            (connector, name, value, value),
        )

    def count(self, connector: str, name: str) -> int:
        row = self._db.execute(
            "SELECT value FROM counts WHERE connector = ? AND name = ?", (connector, name)
        ).fetchone()
        return int(row[0]) if row else 0

    # -- parked ------------------------------------------------------------------------------

    def parked_count(self, connector: str) -> int:
        return int(self._db.execute("SELECT count(*) FROM parked WHERE connector = ?", (connector,)).fetchone()[0])

    def parked(self, connector: str, limit: int = 100, *, replay_only: bool = False) -> list[Parked]:
        """``connector``'s parked messages, oldest first (only those flagged for replay, with ``replay_only``)."""
        sql = (
            "SELECT row, id, topic, reason, parked_at, message, body, broker_seq, last_value, replay FROM parked "
            "WHERE connector = ?" + (" AND replay = 1" if replay_only else "") + " ORDER BY row LIMIT ?"
        )
        return [
            Parked(row, ident, topic, reason, at, json.loads(message), body, seq, bool(last), bool(replay))
            for row, ident, topic, reason, at, message, body, seq, last, replay in self._db.execute(
                sql, (connector, limit)
            )
        ]

    def request_replay(self, connector: str) -> int:
        """Flag every parked message of ``connector`` for replay; return how many."""
        cursor = self._db.execute("UPDATE parked SET replay = 1 WHERE connector = ? AND replay = 0", (connector,))
        return cursor.rowcount

    def reset_in_flight(self) -> None:
        """At start: replays a previous run took but never saw answered are flagged again."""
        self._db.execute("UPDATE parked SET replay = 1 WHERE replay = 2")

    def take_replays(self, connector: str, limit: int) -> list[Parked]:
        """Up to ``limit`` flagged messages, unflagged now (they are on their way again; each row is
        deleted once the sink answered it)."""
        found = self.parked(connector, limit, replay_only=True)
        if found:
            self._db.executemany("UPDATE parked SET replay = 2 WHERE row = ?", [(p.row,) for p in found])
        return found
