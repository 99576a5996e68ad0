"""The journal: records the journaled instances, keeps last values, and answers ``publish``
(durable), ``publish_many`` (many durable publishes in one request, each checked, sequenced,
committed, forwarded and answered as a ``publish`` is, in one group), ``replay`` and ``last``.
It is a child of the broker's supervisor.

Sockets, created and closed by every :meth:`Journal.run`:

- a SUB connected to the feeds (:mod:`.feed`): one per journaled instance and one for the
  last-value topics outside them, each a libzmq proxy that sheds in C, countably, when the
  journal reads too slowly (:mod:`.intake` counts it and marks the gap);
- a DEALER to each feed's control socket (its frame counters; ``TERMINATE`` at stop);
- an XPUB into the frontend (inproc) that forwards durable publishes once committed, sends
  the sync markers and the ``SystemAlert`` that says the journal is shedding.

Requests come from the service thread through a :class:`~.mailbox.Mailbox`; replies go back
through the service's.

**A round** reads up to :data:`READ_ROUND` messages from the feeds into the bounded buffer
(stopping early for a request), then commits: durable publishes first, with at most
:data:`DURABLE_ROUND` of the oldest buffered records, so a durable publish waits for a slice
of reading and one small transaction, never for the backlog; then a transaction of up to
:data:`COMMIT_ROUND` buffered records, every round once that many wait, else every 10 ms.
While the buffer is full the journal reads nothing more (see :mod:`.intake`).

**The seam.** A ``replay`` or ``last`` sends a sync marker through every feed and is answered
once each has come back and everything read before is committed: everything the broker
forwarded before the request is in the answer, so a catch-up-then-live subscription has no
gap, and a flood cannot keep the answer waiting for more than what was queued (the buffer and
the feeds). The later pages of a catch-up (``"sync": false``) are answered at once.

**Stop.** On ``stop`` (the proxy has stopped by then) it reads what the feeds still hold,
commits everything, writes the last values, stops the feeds and logs what it drained.

**Last values** live in memory (:mod:`.lastvalues`) and are written to SQLite at most once
per topic per second, and at stop.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import zmq
from exesdb_sdk._frames import send_frames
from exesdb_sdk.errors import ProtocolError
from exesdb_sdk.instances import Instance
from exesdb_sdk.messages import SystemAlert
from exesdb_sdk.protocol import Decoder, Encoder, decode_request, encode_error_reply, encode_reply
from exesdb_sdk.publisher import prepare_socket

from .feed import Feed, FeedLink
from .intake import GAP_TOPIC, LAST_FEED, Intake
from .lastvalues import LAST_FLUSH, LastValues
from .mailbox import Mailbox
from .queries import Refused, answer, durable_record
from .store import JournalStore, Record, StoreError, open_store

__all__ = [
    "COMMIT_ROUND",
    "DEFAULT_JOURNAL_BUFFER",
    "DURABLE_ROUND",
    "JOURNAL_OPS",
    "MAX_PUBLISH_MANY",
    "READ_ROUND",
    "Journal",
    "JournalSettings",
    "journal_feeds",
]

log = logging.getLogger("exesdb.broker.journal")

JOURNAL_OPS: Final = ("publish", "publish_many", "replay", "last")
"""Control operations the service hands to the journal thread."""
DEFAULT_JOURNAL_BUFFER: Final = 64 << 20
"""Bytes of input the journal holds before it sheds (``journal_buffer``)."""
READ_ROUND: Final = 10_000
"""Messages read per round, at most (reading stops early for a waiting request)."""
COMMIT_ROUND: Final = 20_000
"""Buffered records per transaction."""
DURABLE_ROUND: Final = 2_000
"""Buffered records committed with durable publishes (they wait for no more than that)."""
INJECTED_LIMIT: Final = 100_000
MAX_PUBLISH_MANY: Final = 1_000
"""Messages one ``publish_many`` request may carry (its bytes are bounded by the control endpoint's size)."""
_COALESCE: Final = 0.010
"""Seconds the loop waits, after reading some, before it looks at the SUB again."""
_COMMIT_EVERY: Final = 0.010
"""Seconds at most a buffered record waits for its commit while the buffer is small."""
_SAMPLE_EVERY: Final = 0.1
"""Seconds between reads of the feeds' frame counters."""
_MAINTENANCE: Final = 1.0
_DRAIN_ROUNDS: Final = 10_000
_STOP_DRAIN: Final = 5.0
"""Seconds at most for the final drain at stop (the feeds are bounded: far less is needed)."""
_SYNC_TIMEOUT: Final = 3.0
"""Seconds a query waits for its sync marker before it is answered from what is committed
(a flood the journal sheds can shed the markers too; the gap markers then say what is missing)."""
_SYNC_RESEND: Final = 0.1
_SYNC_POLL: Final = 0.005
_SLICE: Final = 1_000


@dataclass(frozen=True, slots=True)
class JournalSettings:
    """What the journal needs from the broker's configuration."""

    data_dir: str
    instances: tuple[Instance, ...]
    last_values: tuple[bytes, ...]
    max_age: float
    max_records: int
    fsync: str
    max_message_size: int
    buffer_bytes: int = DEFAULT_JOURNAL_BUFFER
    node: str = ""


def journal_feeds(settings: JournalSettings) -> list[tuple[str, Instance | None, tuple[bytes, ...]]]:
    """``(label, instance, subscription prefixes)`` of the feeds the journal needs: one per
    journaled instance, and one for the last-value prefixes outside those instances."""
    feeds: list[tuple[str, Instance | None, tuple[bytes, ...]]] = [
        (instance.alias, instance, (instance.prefix.encode(),)) for instance in settings.instances
    ]
    journaled = tuple(i.prefix.encode() for i in settings.instances)
    outside = tuple(p for p in settings.last_values if not p.startswith(journaled))
    if outside:
        feeds.append((LAST_FEED, None, outside))
    return feeds


@dataclass(slots=True)
class JournalCounters:
    """Written by the journal thread only; read under the GIL by ``stats``."""

    committed: int = 0
    """Records committed (live, durable and gap markers)."""
    live: int = 0
    """Live messages committed."""
    durable: int = 0
    """Durable publishes committed and acknowledged."""
    refused: int = 0
    """Durable publishes answered with an error (and ``publish_many`` requests refused whole)."""
    publish_many: int = 0
    """``publish_many`` requests taken (each message of one also counts in ``durable`` or ``refused``)."""
    failed: int = 0
    """Live messages a failed commit lost from the journal (they were forwarded)."""
    malformed: int = 0
    """Durable publishes refused because they do not follow the protocol."""
    trimmed: int = 0
    drained_at_stop: int = 0
    last_error: str = ""
    heads: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class _Query:
    sync: int
    """The sync marker it waits for."""
    since: float
    head: list[bytes]
    request_id: Any
    request: dict[str, Any]


@dataclass(slots=True)
class _Durable:
    """A durable ``publish`` (one record, ``results`` ``None``) or a ``publish_many``: its good
    records in order, and per message of the request its error map, or ``None`` where one of
    ``records`` waits for its sequence number."""

    head: list[bytes]
    request_id: Any
    records: list[Record]
    results: list[Any] | None = None


class Journal:
    """The journal child of the broker's supervisor."""

    name = "journal"
    restartable = True

    def __init__(
        self,
        context: zmq.Context[Any],
        settings: JournalSettings,
        *,
        feeds: Sequence[Feed],
        frontend: str,
        reply: Callable[[list[bytes]], None],
        restricted_frontend: str | None = None,
        restricted: frozenset[Instance] = frozenset(),
    ) -> None:
        self.settings = settings
        self.counters = JournalCounters()
        self.state = "disabled" if not (settings.instances or settings.last_values) else "starting"
        self.reason = ""
        self.inbox: Mailbox[tuple[str, Any]] = Mailbox()
        self.subscribed = threading.Event()
        """Set once the journal's SUB is connected to the feeds."""
        self.synced = threading.Event()
        """Set once a first sync marker has come back through every feed: from then on the
        journal receives everything the proxy forwards on them."""
        self.ready = threading.Event()
        """Set once the journal's publisher is connected through the running proxy."""
        self.opened = threading.Event()
        """Set once the journal has opened its store (or found it unusable, or is disabled)."""
        self.stopped = threading.Event()
        self._context = context
        self._feeds = list(feeds)
        self._frontend = frontend
        self._restricted_frontend = restricted_frontend
        self._restricted = restricted
        """Instances of the restricted class: forwarded (and synced) through its own frontend."""
        self._reply = reply
        self._store: JournalStore | None = None
        self._journaled = frozenset(settings.instances)
        self.last = LastValues()
        self._in_flight: list[_Durable] = []
        self._deferred: list[tuple[str, Any]] = []
        self._syncs = 0
        self._first_sync = 0
        self._decoder = Decoder()
        self._encoder = Encoder(src=settings.node or "exesdb-broker")
        self._pub: zmq.Socket[Any] | None = None
        self._rpub: zmq.Socket[Any] | None = None
        """The publisher into the restricted class's frontend (``None``: no class)."""
        self._subscribed: set[zmq.Socket[Any]] = set()
        self._view: dict[str, Any] = {}
        self.intake = Intake(
            [(feed.label, feed.instance) for feed in self._feeds],
            journaled=self._journaled,
            last_values=settings.last_values,
            buffer_bytes=settings.buffer_bytes,
            node=self._encoder.src,
            keep_last=self.last.keep,
            alert=self._shed_alert,
        )
        self._take_view()

    # -- the service's handle --------------------------------------------------------------

    def submit(self, frames: list[bytes]) -> None:
        """Hand over ``[*routing head, request frame]``; the reply goes to ``reply``."""
        self.inbox.put(("request", frames))

    def stop(self) -> None:
        """Drain, commit everything and end (after the proxy has stopped)."""
        self.inbox.put(("stop", None))

    @property
    def backlog(self) -> int:
        """Live messages received and not yet committed."""
        return self.intake.backlog

    def snapshot(self) -> dict[str, Any]:
        """The ``journal`` map of the ``stats`` reply: the view the journal thread took at the
        end of its latest round, so its counts agree with each other exactly (``received`` =
        ``committed_live`` + ``backlog`` + what a restart lost)."""
        last_error = self.counters.last_error or self.last.error
        return {**self._view, "state": self.state, "reason": self.reason, "last_error": last_error}

    def _take_view(self) -> None:
        """Rebuild the stats view (in the journal thread, between rounds)."""
        c, intake = self.counters, self.intake
        i = intake.counters
        self._view = {
            "data_dir": self.settings.data_dir,
            "instances": [instance.value for instance in self.settings.instances],
            "fsync": self.settings.fsync,
            "received": i.received,
            "committed": c.committed,
            "committed_live": c.live,
            "durable": c.durable,
            "refused": c.refused,
            "publish_many": c.publish_many,
            "failed": c.failed,
            "dropped": sum(i.dropped.values()),
            "dropped_by_instance": dict(i.dropped),
            "dropped_by_reason": dict(i.dropped_by_reason),
            "last_values_dropped": i.last_dropped,
            "gaps": i.gaps,
            "shed_alerts": i.shed_alerts,
            "malformed": c.malformed + self.last.malformed,
            "trimmed": c.trimmed,
            "backlog": intake.backlog,
            "in_feeds": intake.unaccounted() // 2,
            "buffer_bytes": intake.buffer_bytes,
            "buffer_limit": self.settings.buffer_bytes,
            "heads": dict(c.heads),
            "last_values": self.last.topics,
            "last_value_writes": self.last.writes,
            "drained_at_stop": c.drained_at_stop,
        }

    # -- life ------------------------------------------------------------------------------

    def _open(self) -> None:
        settings = self.settings
        if self.state == "disabled":
            return
        try:
            self._store = open_store(settings.data_dir, settings.fsync)
        except StoreError as exc:
            self.state, self.reason = "unavailable", str(exc)
            self.intake.recording = False
            self.intake.discard()
            log.warning("journal disabled: %s; durable publishes and replay will fail", exc)
            return
        self.state, self.reason = "ok", ""
        self.intake.recording = True
        self.last.load(self._store)
        self.counters.heads = {i.value: self._store.heads[i] for i in settings.instances}
        log.info("journal %s: recording %s", self._store.path, ", ".join(i.value for i in settings.instances) or "none")

    def run(self) -> None:
        self.ready.clear()  # until this run's publisher has the frontend's subscription
        self._recover()
        link = FeedLink(self._context, self._feeds)
        pub = self._context.socket(zmq.XPUB)
        self._pub = pub
        rpub = self._rpub = self._context.socket(zmq.XPUB) if self._restricted_frontend is not None else None
        self._subscribed = set()
        try:
            prepare_socket(pub, hwm=0, send_timeout=0, linger=0)
            pub.connect(self._frontend)
            if rpub is not None and self._restricted_frontend is not None:
                prepare_socket(rpub, hwm=0, send_timeout=0, linger=0)
                rpub.connect(self._restricted_frontend)
            self.subscribed.set()
            self._loop(link, pub)
        finally:
            self._pub = self._rpub = None
            if rpub is not None:
                rpub.close(linger=0)
            if self._store is not None:
                self._store.close()
                self._store = None
            link.close()
            pub.close(linger=0)

    def _recover(self) -> None:
        """After a failed run: what was buffered is lost (counted and marked), and durable
        publishes that were being committed get an error reply (their outcome is unknown)."""
        for item in self._in_flight:
            self._refuse_all(
                item,
                "journal_unavailable",
                "the journal restarted while committing this publish: it may or may not be recorded",
            )
        self._in_flight = []
        lost = self.intake.lose_buffer()
        if lost:
            log.error("journal restarted: %d buffered message(s) lost, marked as a gap in the journal", lost)

    # -- the loop ----------------------------------------------------------------------------

    def _loop(self, link: FeedLink, pub: zmq.Socket[Any]) -> None:
        sub = link.sub
        # Two pollers: with the SUB while idle, so data wakes the loop at once (a feed's queue
        # is bounded); without it for a moment after a read, so that moderate traffic is read
        # in batches rather than with a wake-up per message.
        idle, coalescing = zmq.Poller(), zmq.Poller()
        for poller in (idle, coalescing):
            poller.register(self.inbox.fileno(), zmq.POLLIN)
            poller.register(pub, zmq.POLLIN)
            if self._rpub is not None:
                poller.register(self._rpub, zmq.POLLIN)
        idle.register(sub, zmq.POLLIN)
        intake = self.intake
        opened = False
        next_maintenance = next_flush = time.monotonic() + _MAINTENANCE
        next_sample = last_commit = last_sync = 0.0
        waiting: list[_Query] = []
        poller, wait = idle, 0.0
        for _ in range(2**62):  # bounded in name; it ends on stop
            ready = dict(poller.poll(int(wait * 1000)))
            if pub in ready:
                self._drain_subscriptions(pub)
            if self._rpub is not None and self._rpub in ready:
                self._drain_subscriptions(self._rpub)
            if not opened:
                opened = self._start_up(link, pub)
            stop, durable, queries = self._requests(
                self.inbox.take(1000) if self.inbox.fileno() in ready else [], opened
            )
            now = time.monotonic()
            if queries:
                waiting.extend(self._queries(queries, link, pub))
            if waiting and now - last_sync >= _SYNC_RESEND:  # a feed may have shed the marker
                self._send_sync(link, pub)
                last_sync = now
            now = time.monotonic()
            if now >= next_sample:
                link.sample(intake.sampled)
                next_sample = now + _SAMPLE_EVERY
            before = intake.taken
            # a durable publish waits for a slice of reading, not a round; a query waits for its
            # sync marker, which may be queued behind a full buffer: it reads past the bound
            # (by at most what the feeds hold) until the marker is in
            empty = intake.ingest(sub, _SLICE if durable else READ_ROUND, self.inbox.pending)
            read = intake.taken - before
            now = time.monotonic()
            if empty:
                intake.found_empty(now)
            if durable:
                self._in_flight = durable
                self._commit(durable, DURABLE_ROUND)
                self._in_flight = []
            if len(intake.buffer) >= COMMIT_ROUND or (intake.buffer and now - last_commit >= _COMMIT_EVERY):
                self._commit([], COMMIT_ROUND)
                last_commit = now
            if stop:
                self._drain_at_stop(link)
            if waiting:
                waiting = self._answer_synced(waiting, empty or stop)
            if stop:
                self.last.flush(self._store)
                link.terminate()
                self._take_view()
                self._stop_report()
                return
            if now >= next_maintenance:
                self._maintain()
                next_maintenance = now + _MAINTENANCE
            if now >= next_flush:
                self.last.flush(self._store)
                next_flush = now + LAST_FLUSH
            self._take_view()
            with_sub, wait = self._next_wait(empty, read, bool(waiting), next_maintenance, last_commit, now)
            poller = idle if with_sub else coalescing

    def _start_up(self, link: FeedLink, pub: zmq.Socket[Any]) -> bool:
        """Until the journal is open: sync the feeds once the publisher is connected, then open
        the store (after the feeds are wired: converting an old journal may take seconds).
        Returns whether it is open."""
        if self.ready.is_set() and not self._first_sync:
            self._first_sync = self._send_sync(link, pub)
        if not self.synced.is_set() and self._first_sync and self.intake.synced(self._first_sync):
            self.synced.set()
        if not self.synced.is_set():
            return False
        self._open()
        self._take_view()
        self.opened.set()
        return True

    def _requests(
        self, items: list[tuple[str, Any]], opened: bool
    ) -> tuple[bool, list[_Durable], list[tuple[list[bytes], Any, dict[str, Any]]]]:
        """Sort the inbox: whether to stop, the durable publishes, the queries. Requests wait
        (deferred) until the journal is open."""
        if not opened:
            self._deferred.extend(item for item in items if item[0] == "request")
            items = [item for item in items if item[0] != "request"]
        elif self._deferred:
            items, self._deferred = [*self._deferred, *items], []
        durable: list[_Durable] = []
        queries: list[tuple[list[bytes], Any, dict[str, Any]]] = []
        for kind, frames in items:
            if kind == "request" and len(frames) >= 2:
                self._take_request(frames[:-1], frames[-1], durable, queries)
        return any(kind == "stop" for kind, _ in items), durable, queries

    def _queries(
        self, queries: list[tuple[list[bytes], Any, dict[str, Any]]], link: FeedLink, pub: zmq.Socket[Any]
    ) -> list[_Query]:
        """Answer the later pages of a catch-up at once; the rest wait for a sync marker."""
        waiting = []
        for head, request_id, request in queries:
            if request.get("sync", True) is False:
                self._answer(head, request_id, request)
            else:
                waiting.append((head, request_id, request))
        if not waiting:
            return []
        sync = self._send_sync(link, pub)
        self.intake.allow_overdraw()
        return [_Query(sync, time.monotonic(), *query) for query in waiting]

    def _next_wait(
        self, empty: bool, read: int, waiting: bool, next_maintenance: float, last_commit: float, now: float
    ) -> tuple[bool, float]:
        """Whether the next poll watches the SUB, and how long it may wait."""
        if not empty:
            return False, 0.0
        if waiting or not self.synced.is_set():
            return False, _SYNC_POLL
        deadline = next_maintenance
        if self.intake.buffer:
            deadline = min(deadline, last_commit + _COMMIT_EVERY)
        wait = max(0.0, deadline - now)
        return (False, min(wait, _COALESCE)) if read else (True, wait)

    def _send_sync(self, link: FeedLink, pub: zmq.Socket[Any]) -> int:
        """Send a sync marker through every feed; return its number."""
        self._syncs += 1
        try:
            link.send_sync(lambda instance: self._publisher_of(instance, pub), self._syncs)
        except zmq.ZMQError as exc:  # not forwarding (stopping): the drain at stop answers
            log.debug("journal sync marker not sent: %s", exc)
        else:
            self.intake.expect_markers()
        return self._syncs

    def _answer_synced(self, waiting: list[_Query], empty: bool) -> list[_Query]:
        """Answer the queries whose sync marker has come back through every feed (or that
        waited too long while the feeds are empty), after committing everything read."""
        now = time.monotonic()
        synced = self.intake.synced
        ready = [q for q in waiting if synced(q.sync) or now - q.since > _SYNC_TIMEOUT]
        if not ready:
            return waiting
        for _ in range(_DRAIN_ROUNDS):  # the answer must include the whole buffer
            if not self.intake.buffer:
                break
            self._commit([], COMMIT_ROUND)
        self.last.flush(self._store)
        for query in ready:
            self._answer(query.head, query.request_id, query.request)
        rest = [q for q in waiting if q not in ready]
        if not rest:
            self.intake.overdraw = 0
        return rest

    def _drain_at_stop(self, link: FeedLink) -> None:
        """Read and commit what the feeds still hold (the proxy has stopped: they are finite),
        until every frame they sent is read or proven dropped."""
        before = self.counters.committed
        deadline = time.monotonic() + _STOP_DRAIN
        for _ in range(_DRAIN_ROUNDS):
            link.sample(self.intake.sampled)
            empty = self.intake.ingest(link.sub, READ_ROUND, lambda: False)
            if empty:
                self.intake.found_empty(time.monotonic())
            self._commit([], COMMIT_ROUND)
            settled = empty and not self.intake.buffer and self.intake.unaccounted() == 0
            if settled or time.monotonic() >= deadline:
                break
        self.counters.drained_at_stop = self.counters.committed - before

    def _stop_report(self) -> None:
        intake = self.intake
        log.info(
            "journal stopped: drained and committed %d record(s) at stop, %d left; %d live message(s) "
            "not journaled since start (%s), marked by %d gap marker(s)",
            self.counters.drained_at_stop,
            intake.backlog,
            sum(intake.counters.dropped.values()),
            ", ".join(f"{reason}: {n}" for reason, n in intake.counters.dropped_by_reason.items()) or "none",
            intake.counters.gaps,
        )
        self.stopped.set()

    # -- alerts ------------------------------------------------------------------------------

    def _shed_alert(self, message: str, metadata: dict[str, Any]) -> None:
        self._publish(
            SystemAlert(
                severity="error",
                title="journal shedding",
                category="data",
                description=message,
                source="exesdb_broker",
                node=self._encoder.src,
                metadata=metadata,
            )
        )

    def _publish(self, payload: SystemAlert) -> None:
        pub = self._pub
        if pub is None:
            return
        topic = self._encoder.topic(payload.__instance__, payload.default_subtopic())
        try:
            send_frames(pub, topic, self._encoder.encode(topic, type(payload).__name__, payload))
        except zmq.ZMQError as exc:
            log.warning("journal alert not sent: %s", exc)

    def _publisher_of(self, instance: Instance | None, pub: zmq.Socket[Any]) -> zmq.Socket[Any]:
        """The publisher into the frontend of ``instance``'s class (``pub``: the public one)."""
        return self._rpub if self._rpub is not None and instance in self._restricted else pub

    def _drain_subscriptions(self, pub: zmq.Socket[Any]) -> None:
        for _ in range(10_000):
            try:
                pub.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            # the frontend's subscription: what it sends now is forwarded (on every plane)
            self._subscribed.add(pub)
            if len(self._subscribed) == (1 if self._rpub is None else 2):
                self.ready.set()

    # -- committing --------------------------------------------------------------------------

    def _commit(self, durable: Sequence[_Durable], limit: int) -> None:
        """Commit the durable publishes with up to ``limit`` of the oldest buffered records in
        one transaction, then acknowledge and forward them."""
        store, counters = self._store, self.counters
        if store is None:  # not open yet (or unavailable: then nothing is buffered)
            return
        if not durable and not self.intake.buffer and not self.intake.gaps_pending:
            return
        live = self.intake.pop(limit)
        records = live + [record for item in durable for record in item.records]
        try:
            store.write(records)
        except sqlite3.Error as exc:
            counters.last_error = f"commit failed: {exc}"
            log.error("journal commit failed (%d records): %s", len(records), exc)
            counters.failed += len(live)
            for item in durable:
                self._refuse_all(item, "commit_failed", f"journal commit failed: {exc}")
            return
        counters.committed += len(records)
        counters.live += sum(1 for record in live if record.topic is not GAP_TOPIC)
        counters.heads = {i.value: store.heads[i] for i in self.settings.instances}
        for item in durable:
            self._forward(item)

    def _forward(self, item: _Durable) -> None:
        """Forward the committed records of ``item`` to live subscribers, then acknowledge it."""
        for record in item.records:
            self._forward_record(record)
        self.counters.durable += len(item.records)
        if item.results is None:
            record = item.records[0]
            reply = encode_reply({"seq": record.seq, "instance": record.instance.value}, item.request_id)
        else:
            seqs = iter(item.records)
            results = [next(seqs).seq if result is None else result for result in item.results]
            reply = encode_reply({"results": results}, item.request_id)
        self._reply([*item.head, reply])

    def _forward_record(self, record: Record) -> None:
        injected = self.intake.injected
        if len(injected) >= INJECTED_LIMIT:
            injected.clear()
        injected[record.body] = None
        if record.topic.startswith(self.settings.last_values):
            self.last.keep(record.topic, record.body, checked=True)
        pub = self._pub
        try:
            if pub is None:
                raise zmq.Again()
            send_frames(self._publisher_of(record.instance, pub), record.topic, record.body)
        except zmq.Again:  # unbounded HWM: only while stopping
            log.warning("durable message on %s committed but not forwarded", record.topic.decode())
        else:
            self.intake.expect_echo(record.instance)

    def _refuse_all(self, item: _Durable, code: str, message: str) -> None:
        """Answer every record of ``item`` still waiting with the error ``code`` (nothing recorded)."""
        if item.results is None:
            self._refuse(item.head, item.request_id, code, message)
            return
        self.counters.refused += len(item.records)
        error = {"code": code, "message": message}
        results = [error if result is None else result for result in item.results]
        self._reply([*item.head, encode_reply({"results": results}, item.request_id)])

    def _refuse(self, head: list[bytes], request_id: Any, code: str, message: str) -> None:
        self.counters.refused += 1
        self._reply([*head, encode_error_reply(code, message, request_id)])

    # -- requests ----------------------------------------------------------------------------

    def _take_request(
        self,
        head: list[bytes],
        frame: bytes,
        durable: list[_Durable],
        queries: list[tuple[list[bytes], Any, dict[str, Any]]],
    ) -> None:
        try:
            request = decode_request(frame)
        except ProtocolError as exc:
            self._reply([*head, encode_error_reply("bad_request", exc.detail)])
            return
        request_id = request.get("id")
        op = request["op"]
        if op == "publish_many":
            self._take_many(head, request_id, request, durable)
            return
        if op != "publish":
            queries.append((head, request_id, request))
            return
        try:
            durable.append(_Durable(head, request_id, [self._durable(request)]))
        except Refused as exc:
            self._refuse(head, request_id, exc.code, exc.message)

    def _take_many(self, head: list[bytes], request_id: Any, request: dict[str, Any], durable: list[_Durable]) -> None:
        """A ``publish_many``: each message checked as a ``publish`` is; a bad one is refused
        alone, in its place among the results; a request malformed as a whole gets one error."""
        messages = request.get("messages")
        if not isinstance(messages, list) or len(messages) > MAX_PUBLISH_MANY:
            problem = "not an array" if not isinstance(messages, list) else f"{len(messages)} messages"
            self._refuse(
                head,
                request_id,
                "bad_request",
                f"publish_many needs 'messages', an array of at most {MAX_PUBLISH_MANY} [topic, body] pairs "
                f"({problem})",
            )
            return
        self.counters.publish_many += 1
        records: list[Record] = []
        results: list[Any] = []
        for message in messages:
            try:
                if not (isinstance(message, list) and len(message) == 2):
                    raise Refused("bad_request", "each message of publish_many must be a [topic, body] pair")
                records.append(self._durable({"topic": message[0], "body": message[1]}))
            except Refused as exc:
                self.counters.refused += 1
                results.append({"code": exc.code, "message": exc.message})
            else:
                results.append(None)
        if records:
            durable.append(_Durable(head, request_id, records, results))
        else:  # nothing to commit: answered at once
            self._reply([*head, encode_reply({"results": results}, request_id)])

    def _durable(self, request: dict[str, Any]) -> Record:
        try:
            record = durable_record(request, self.settings.max_message_size, self._journaled, self._decoder)
        except Refused as exc:
            self.counters.malformed += exc.malformed
            raise
        if self._store is None:
            raise Refused("journal_unavailable", f"journal unavailable: {self.reason or self.state}")
        return record

    def _answer(self, head: list[bytes], request_id: Any, request: dict[str, Any]) -> None:
        try:
            settings = self.settings
            reason = self.reason or self.state
            fields = answer(request, self._store, settings.instances, settings.last_values, reason, self.last.kept)
        except Refused as exc:
            self._reply([*head, encode_error_reply(exc.code, exc.message, request_id)])
            return
        except sqlite3.Error as exc:
            self._reply([*head, encode_error_reply("journal_unavailable", f"journal read failed: {exc}", request_id)])
            return
        self._reply([*head, encode_reply(fields, request_id)])

    def _maintain(self) -> None:
        store, settings = self._store, self.settings
        if store is None or not (settings.max_age or settings.max_records):
            return
        try:
            self.counters.trimmed += store.trim(settings.instances, settings.max_age, settings.max_records)
        except sqlite3.Error as exc:
            self.counters.last_error = f"retention failed: {exc}"
            log.error("journal retention failed: %s", exc)
