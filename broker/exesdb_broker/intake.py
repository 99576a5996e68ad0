"""The journal's input: what it reads from its feeds, the bounded buffer, and what it sheds.

Two places may shed, and both count exactly and mark the hole in the journal:

- a **feed** (see :mod:`.feed`) drops in C when the journal reads too slowly. The journal
  counts the frames it reads from each feed; the feed's proxy counts the frames it sent. When
  the journal then finds its socket empty, every frame the feed had sent before its count was
  sampled has been read or dropped, so ``sent - read`` is the exact number dropped so far
  (while it cannot find it empty, ``sent - read - what the queue can hold`` is a lower bound);
- the **buffer** (``journal_buffer`` bytes: topic + body + :data:`RECORD_OVERHEAD` per
  message) holds what was read until it is committed. When it is full the journal stops
  reading (and commits): what arrives meanwhile waits in the feeds, which shed past their
  bound, in C, at no cost to the commits. So the buffer absorbs a burst, and a flood the
  journal cannot keep up with is shed where shedding is cheapest.

Either way the loss is counted per instance (``stats.journal.dropped_by_instance``) and a gap
marker (topic ``_exesdb/journal/gap``, docs/protocol.md 10.6) is recorded before the next
record of that instance, saying how many messages are missing there; a ``SystemAlert`` says
so too, at most every :data:`SHED_ALERT_INTERVAL` seconds. Feeds carry two-frame messages, as
the protocol has senders send them; frames convert to messages on that basis.

Journaled messages are not decoded here (the tap classifies malformed ones; a replay delivers
what came, and readers skip what they would skip live): reading is what keeps the feeds from
shedding, so it is kept to the minimum. Last-value messages are handed to
:class:`~.lastvalues.LastValues`, which checks the newest per topic before it is answered.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import zmq
from exesdb_sdk._frames import recv_frames
from exesdb_sdk.durable import JOURNAL_GAP_TOPIC, encode_journal_gap
from exesdb_sdk.errors import ExesdbError
from exesdb_sdk.instances import Instance
from exesdb_sdk.protocol import RESERVED_PREFIX

from .feed import FEED_HWM, SYNC_PREFIX
from .store import Record

__all__ = [
    "LAST_FEED",
    "RECORD_OVERHEAD",
    "SHED_ALERT_INTERVAL",
    "Intake",
    "IntakeCounters",
]

log = logging.getLogger("exesdb.broker.journal")

RECORD_OVERHEAD: Final = 128
"""Bytes counted per buffered message on top of its topic and body (the Python objects)."""
SHED_ALERT_INTERVAL: Final = 10.0
"""Seconds between ``SystemAlert`` messages while the journal sheds."""
LAST_FEED: Final = "last"
"""The label of the feed of last-value topics outside the journaled instances."""
GAP_TOPIC: Final = JOURNAL_GAP_TOPIC.encode()
FEED_FULL: Final = "journal feed full (the journal could not read fast enough)"
RESTARTED: Final = "journal thread restarted"
_SLICE: Final = 1_000
_RESERVED: Final = RESERVED_PREFIX.encode()
_NOBLOCK: Final = int(zmq.NOBLOCK)
_TOPICS_KEPT: Final = 4096


@dataclass(slots=True)
class IntakeCounters:
    """Written by the journal thread only; read under the GIL by ``stats``."""

    received: int = 0
    """Messages of journaled instances read from the feeds."""
    dropped: Counter[str] = field(default_factory=Counter)
    """Messages of journaled instances not journaled, per instance (feed or buffer full, or
    lost with the buffer when the journal thread restarted)."""
    dropped_by_reason: Counter[str] = field(default_factory=Counter)
    last_dropped: int = 0
    """Last-value updates a feed shed (the latest value per topic may then be older)."""
    gaps: int = 0
    """Gap markers recorded."""
    shed_alerts: int = 0


@dataclass(slots=True)
class _Gap:
    missed: int
    since: int
    until: int
    reason: str


@dataclass(slots=True)
class _FeedBook:
    """Frame accounting of one feed."""

    instance: Instance | None
    read: int = 0
    """Frames read from it, over every run of the journal thread."""
    proven: int = 0
    """Frames proven dropped by it."""
    counted: int = 0
    """Messages already counted as dropped from it."""
    echoes_expected: int = 0
    """Messages of the journal's own that come back through the feed: the durable publishes
    it forwarded on the feed's topics and its sync markers. A feed may shed them too; that is
    no loss."""
    echoes_seen: int = 0
    sample: tuple[float, int] | None = None
    """(monotonic time after the reply, frames the feed had sent)."""
    synced: int = 0
    """The highest sync marker number read from it."""


class Intake:
    """The journal's input side (used by the journal thread only)."""

    def __init__(
        self,
        feeds: Sequence[tuple[str, Instance | None]],
        *,
        journaled: frozenset[Instance],
        last_values: tuple[bytes, ...],
        buffer_bytes: int,
        node: str,
        keep_last: Callable[[bytes, bytes], None],
        alert: Callable[[str, dict[str, Any]], None],
    ) -> None:
        self.counters = IntakeCounters()
        self.buffer: deque[Record] = deque()
        self.buffer_bytes = 0
        self.bound = buffer_bytes
        self.recording = True
        """False while the store cannot be opened: messages are then counted, not kept."""
        self.overdraw = 0
        """Messages that may still be read past the bound while a query waits for its sync
        marker (at most what the feeds can hold: the marker is behind no more than that)."""
        self._journaled = journaled
        self._last_values = last_values
        self._node = node
        self._keep_last = keep_last
        self._alert = alert
        self._feeds = {label: _FeedBook(instance) for label, instance in feeds}
        self._instance_feed = {book.instance: label for label, book in self._feeds.items() if book.instance}
        self._gaps: dict[Instance, _Gap] = {}
        self._topics: dict[bytes, tuple[Instance | None, bool, _FeedBook]] = {}
        self._stray = _FeedBook(None)
        """The book of topics no feed carries (cannot happen unless the settings changed)."""
        self.injected: dict[bytes, None] = {}
        """Bodies of durable publishes forwarded by the journal itself: skipped when they come
        back around (they were recorded before they were forwarded)."""
        self._max_frames = 2
        self._shed_since_alert = 0
        self._next_shed_alert = 0.0
        self._markers_buffered = 0
        self.taken = 0
        """Messages read from the feeds, of every kind (journaled, last values, markers)."""

    # -- reading -------------------------------------------------------------------------------

    def _classify(self, topic: bytes) -> tuple[Instance | None, bool, _FeedBook]:
        """(the instance when journaled, whether the topic keeps a last value, its feed's book),
        remembered for the next message on the topic."""
        instance: Instance | None = None
        with contextlib.suppress(ExesdbError, UnicodeDecodeError):
            resolved = Instance.resolve(topic.decode().partition("/")[0])
            instance = resolved if resolved in self._journaled else None
        last = any(topic.startswith(prefix) for prefix in self._last_values)
        label = self._instance_feed.get(instance, LAST_FEED) if instance is not None else LAST_FEED
        book = self._feeds.get(label) or self._stray
        if len(self._topics) >= _TOPICS_KEPT:
            self._topics.clear()
        known = self._topics[topic] = (instance, last, book)
        return known

    def ingest(self, sub: zmq.Socket[Any], limit: int, interrupt: Callable[[], bool]) -> bool:
        """Read up to ``limit`` messages into the buffer, stopping early when ``interrupt()``
        says a request waits; return whether the socket was found empty."""
        # The hot loop of the journal: names are local, the per-topic facts cached.
        counters = self.counters
        buffer = self.buffer
        bound = self.bound
        injected = self.injected
        topics = self._topics
        recording = self.recording
        size_now = self.buffer_bytes
        received = taken = 0
        empty = False
        try:
            for read in range(limit):
                if read % _SLICE == _SLICE - 1 and interrupt():
                    break
                if size_now >= bound:
                    if self.overdraw <= 0:
                        break  # full: leave the rest to the feed, which sheds in C, countably
                    self.overdraw -= 1
                try:
                    frames = recv_frames(sub, _NOBLOCK)
                except zmq.Again:
                    empty = True
                    break
                taken += 1
                if len(frames) != 2:
                    self._max_frames = max(self._max_frames, len(frames))
                    if len(frames) < 2:
                        continue
                topic, body = frames[0], frames[1]
                known = topics.get(topic)
                if known is None:
                    if topic.startswith(_RESERVED):
                        self._on_reserved(topic, len(frames))
                        continue
                    known = self._classify(topic)
                instance, keeps_last, book = known
                book.read += len(frames)
                if injected and body in injected:
                    del injected[body]  # a durable publish coming back around: recorded already
                    book.echoes_seen += 1
                    continue
                if keeps_last:
                    self._keep_last(topic, body)
                if instance is None:
                    continue
                received += 1
                if not recording:
                    continue
                if self._gaps:
                    self.buffer_bytes = size_now
                    self._mark_gap(instance)
                    size_now = self.buffer_bytes
                buffer.append(Record(instance, topic, body))
                size_now += len(topic) + len(body) + RECORD_OVERHEAD
        finally:
            self.buffer_bytes = size_now
            counters.received += received
            self.taken += taken
        return empty

    def _on_reserved(self, topic: bytes, frames: int) -> None:
        if not topic.startswith(SYNC_PREFIX):
            return
        label, _, number = topic[len(SYNC_PREFIX) :].decode(errors="replace").partition("/")
        book = self._feeds.get(label)
        if book is not None:
            book.read += frames
            book.echoes_seen += 1
            with contextlib.suppress(ValueError):
                book.synced = max(book.synced, int(number))

    def synced(self, number: int) -> bool:
        """Whether sync marker ``number`` has come back through every feed."""
        return all(book.synced >= number for book in self._feeds.values())

    def allow_overdraw(self) -> None:
        """A query waits for a sync marker: let reading go on past the bound for a while."""
        self.overdraw = FEED_HWM * len(self._feeds)

    # -- proving what the feeds shed -------------------------------------------------------------

    def sampled(self, label: str, sent_frames: int, at: float) -> None:
        """A feed's ``STATISTICS``: it had sent ``sent_frames`` when it answered (``at``)."""
        book = self._feeds[label]
        book.sample = (at, sent_frames)
        # lower bound at any time: what its queue can hold may still be on its way
        in_flight = (FEED_HWM + 1) * self._max_frames
        self._prove(book, sent_frames - book.read - in_flight)

    def found_empty(self, at: float) -> None:
        """The socket was found empty at ``at``: every feed sample taken before is settled."""
        for book in self._feeds.values():
            if book.sample is not None and book.sample[0] < at:
                self._prove(book, book.sample[1] - book.read)

    def unaccounted(self) -> int:
        """Frames the feeds sent (at their last samples) that are neither read nor proven dropped."""
        return sum(max(0, b.sample[1] - b.read - b.proven) for b in self._feeds.values() if b.sample is not None)

    def expect_markers(self) -> None:
        """A sync marker was sent through every feed."""
        for book in self._feeds.values():
            book.echoes_expected += 1

    def expect_echo(self, instance: Instance) -> None:
        """A committed durable publish is being forwarded: it will come back through a feed,
        and if that feed sheds it, it is no loss (it is journaled)."""
        label = self._instance_feed.get(instance)
        if label is not None:
            self._feeds[label].echoes_expected += 1

    def _prove(self, book: _FeedBook, dropped_frames: int) -> None:
        book.proven = max(book.proven, dropped_frames)
        # the journal's own messages not seen (yet) may be among the dropped: they are no loss
        lost = book.proven // 2 - max(0, book.echoes_expected - book.echoes_seen)
        messages = lost - book.counted
        if messages <= 0:
            return
        book.counted += messages
        if book.instance is None:
            self.counters.last_dropped += messages
        else:
            self.dropped(book.instance, messages, FEED_FULL)

    # -- shedding and marking ------------------------------------------------------------------

    def dropped(self, instance: Instance, count: int, reason: str) -> None:
        """``count`` messages of ``instance`` are not journaled: count, mark, alert."""
        now = time.time_ns()
        counters = self.counters
        counters.dropped[instance.value] += count
        counters.dropped_by_reason[reason] += count
        gap = self._gaps.get(instance)
        if gap is None:
            self._gaps[instance] = _Gap(count, now, now, reason)
        else:
            gap.missed += count
            gap.until = now
        if reason is not RESTARTED:
            self._shed_since_alert += count
            if time.monotonic() >= self._next_shed_alert:
                self._shed_alert(instance, reason)

    def _mark_gap(self, instance: Instance) -> None:
        gap = self._gaps.pop(instance, None)
        if gap is None:
            return
        body = encode_journal_gap(self._node, instance.value, gap.missed, gap.since, gap.until, gap.reason)
        self.buffer.append(Record(instance, GAP_TOPIC, body))
        self.buffer_bytes += len(GAP_TOPIC) + len(body) + RECORD_OVERHEAD
        self.counters.gaps += 1
        self._markers_buffered += 1

    @property
    def gaps_pending(self) -> bool:
        """Whether losses wait for their gap marker."""
        return bool(self._gaps)

    def mark_gaps(self) -> None:
        """Record every pending gap marker now (the buffer has drained: the hole is behind)."""
        for instance in list(self._gaps):
            self._mark_gap(instance)

    def _shed_alert(self, instance: Instance, reason: str) -> None:
        self._next_shed_alert = time.monotonic() + SHED_ALERT_INTERVAL
        count, self._shed_since_alert = self._shed_since_alert, 0
        total = sum(self.counters.dropped.values())
        message = (
            f"the journal is shedding: {count} message(s) of {instance.value} not journaled ({reason}; "
            f"{total} in all since start); replays mark the gap"
        )
        log.warning(message)
        self.counters.shed_alerts += 1
        self._alert(message, {"instance": instance.value, "dropped": count, "dropped_total": total})

    # -- committing ------------------------------------------------------------------------------

    def pop(self, limit: int) -> list[Record]:
        """The oldest ``limit`` buffered records, taken out of the buffer."""
        buffer = self.buffer
        if self._gaps and len(buffer) < limit:
            self.mark_gaps()  # everything read is in this batch: the hole is behind it
        records = [buffer.popleft() for _ in range(min(limit, len(buffer)))]
        self.buffer_bytes -= sum(len(r.topic) + len(r.body) + RECORD_OVERHEAD for r in records)
        if self._markers_buffered:
            self._markers_buffered -= sum(1 for r in records if r.topic is GAP_TOPIC)
        return records

    @property
    def backlog(self) -> int:
        """Live messages read and not yet committed."""
        return len(self.buffer) - self._markers_buffered

    def discard(self) -> None:
        """Forget what is buffered (the store cannot be opened: nothing will be journaled)."""
        self.buffer.clear()
        self.buffer_bytes = 0
        self._markers_buffered = 0

    def lose_buffer(self) -> int:
        """After a failed run: the buffered messages are lost (counted and marked); how many."""
        lost: Counter[Instance] = Counter()
        for record in self.buffer:
            if not record.durable and not record.topic.startswith(GAP_TOPIC):
                lost[record.instance] += 1
        self.buffer.clear()
        self.buffer_bytes = 0
        self._markers_buffered = 0
        for instance, count in lost.items():
            self.dropped(instance, count, RESTARTED)
        return sum(lost.values())
