"""Last values: the latest message per last-value topic, in memory, written out once a second.

A stream of health reports must not cost a SQLite transaction per message (it cost the
broker 85 us of CPU a message at 5,000 msg/s): the journal keeps the last message per topic
in memory and writes the topics that changed at most once every :data:`LAST_FLUSH` seconds,
and at stop. A ``kill -9`` can lose the last second of them; a restart of the journal thread
loses none (they live on this object).
"""

from __future__ import annotations

import logging
import sqlite3
import time
from typing import Final

from .store import JournalStore

__all__ = ["LAST_FLUSH", "LAST_TOPICS", "LastValues"]

log = logging.getLogger("exesdb.broker.journal")

LAST_TOPICS: Final = 10_000
"""Last-value topics kept; past this the least recently updated is forgotten."""
LAST_FLUSH: Final = 1.0
"""Seconds between writes of changed last values to SQLite."""


class LastValues:
    """Topic -> (receive time in UTC ns, body), least recently updated first."""

    def __init__(self) -> None:
        self.kept: dict[bytes, tuple[int, bytes]] = {}
        self._dirty: dict[bytes, tuple[int, bytes]] = {}
        self._loaded = False
        self.writes = 0
        """Transactions that wrote last values."""
        self.error = ""

    def load(self, store: JournalStore) -> None:
        """Read the stored ones once (on the journal's first opening of its store)."""
        if self._loaded:
            return
        stored = sorted(store.last_values().items(), key=lambda item: item[1][0])[-LAST_TOPICS:]
        self.kept = {**dict(stored), **self.kept}
        self._loaded = True

    def keep(self, topic: bytes, body: bytes) -> None:
        value = (time.time_ns(), body)
        kept = self.kept
        kept.pop(topic, None)
        kept[topic] = value
        self._dirty[topic] = value
        if len(kept) > LAST_TOPICS:
            del kept[next(iter(kept))]

    def flush(self, store: JournalStore | None) -> None:
        """Write the topics changed since the last flush, in one transaction."""
        if not self._dirty or store is None:
            return
        dirty, self._dirty = self._dirty, {}
        try:
            store.write_last(dirty)
            self.writes += 1
        except sqlite3.Error as exc:
            self.error = f"last values not written: {exc}"
            log.error("journal: last values not written: %s", exc)
