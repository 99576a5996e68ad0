"""Last values: the latest message per last-value topic, in memory, written out once a second.

A stream of health reports must not cost a SQLite transaction per message (it cost the
broker 85 us of CPU a message at 5,000 msg/s): the journal keeps the last message per topic
in memory and writes the topics that changed at most once every :data:`LAST_FLUSH` seconds,
and at stop. A ``kill -9`` can lose the last second of them; a restart of the journal thread
loses none (they live on this object).

Nor is each message checked as it comes: the newest per topic waits, unchecked, until it
would be answered or written, and only it is checked then (a stream of 5,000 reports a second
on 20 topics checks 20 a second). One that does not follow the protocol is counted and
dropped, and the topic keeps the well-formed value before it: ``last`` never answers with a
message a reader cannot decode.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from typing import Final

import msgspec
from exesdb_sdk.errors import ProtocolError
from exesdb_sdk.protocol import Decoder

from .store import JournalStore

__all__ = ["LAST_FLUSH", "LAST_TOPICS", "LastValues"]

log = logging.getLogger("exesdb.broker.journal")

LAST_TOPICS: Final = 10_000
"""Last-value topics kept; past this the least recently updated is forgotten."""
LAST_FLUSH: Final = 1.0
"""Seconds between writes of changed last values to SQLite."""

_ARRAYS: Final = frozenset(range(0x90, 0xA0)) | {0xDC, 0xDD}
_elements: Final = msgspec.msgpack.Decoder(list[msgspec.Raw])


class LastValues:
    """Topic -> (receive time in UTC ns, body), least recently updated first."""

    def __init__(self) -> None:
        self._kept: dict[bytes, tuple[int, bytes]] = {}
        self._unchecked: dict[bytes, tuple[int, bytes]] = {}
        """The newest message of each topic since it was last settled, not checked yet."""
        self._dirty: dict[bytes, tuple[int, bytes]] = {}
        self._decoder = Decoder()
        self._loaded = False
        self.writes = 0
        """Transactions that wrote last values."""
        self.malformed = 0
        """Newest messages of a topic not kept because they do not follow the protocol."""
        self.error = ""

    def load(self, store: JournalStore) -> None:
        """Read the stored ones once (on the journal's first opening of its store)."""
        if self._loaded:
            return
        stored = sorted(store.last_values().items(), key=lambda item: item[1][0])[-LAST_TOPICS:]
        self._kept = {**dict(stored), **self._kept}
        self._loaded = True

    def keep(self, topic: bytes, body: bytes, *, checked: bool = False) -> None:
        """The newest message of ``topic`` (``checked``: it is known to follow the protocol)."""
        value = (time.time_ns(), body)
        if checked:
            self._unchecked.pop(topic, None)
            self._keep(topic, value)
            return
        unchecked = self._unchecked
        unchecked[topic] = value
        if len(unchecked) >= LAST_TOPICS:
            self._settle()

    @property
    def kept(self) -> dict[bytes, tuple[int, bytes]]:
        """Every topic's newest well-formed message."""
        self._settle()
        return self._kept

    @property
    def topics(self) -> int:
        """Topics with a checked value (it is behind :attr:`kept` by at most a flush interval)."""
        return len(self._kept)

    def flush(self, store: JournalStore | None) -> None:
        """Write the topics changed since the last flush, in one transaction."""
        self._settle()
        if not self._dirty or store is None:
            return
        dirty, self._dirty = self._dirty, {}
        try:
            store.write_last(dirty)
            self.writes += 1
        except sqlite3.Error as exc:
            self.error = f"last values not written: {exc}"
            log.error("journal: last values not written: %s", exc)

    def _settle(self) -> None:
        unchecked, self._unchecked = self._unchecked, {}
        check = self._decoder.check
        for topic, value in unchecked.items():
            try:
                check((topic, value[1]))
            except ProtocolError:
                self.malformed += 1
            else:
                self._keep(topic, value)

    def _keep(self, topic: bytes, value: tuple[int, bytes]) -> None:
        body = value[1]
        if body and body[0] in _ARRAYS:
            # a batch (publishers coalesce consecutive messages of a topic into one): the last
            # value is its last envelope, each of which stands (and is signed) on its own
            value = (value[0], bytes(_elements.decode(body)[-1]))
        kept = self._kept
        kept.pop(topic, None)
        kept[topic] = value
        self._dirty[topic] = value
        if len(kept) > LAST_TOPICS:
            del kept[next(iter(kept))]
