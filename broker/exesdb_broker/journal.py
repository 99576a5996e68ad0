"""The journal: records the journaled instances, keeps last values, and answers ``publish``
(durable), ``replay`` and ``last``. It is a child of the broker's supervisor.

Sockets, created and closed by every :meth:`Journal.run`:

- a SUB on the backend (inproc) subscribed to the journaled instances and the last-value
  prefixes, with ``RCVHWM`` 0: libzmq makes the pipe unbounded when either end's HWM is 0, so
  the backend never drops for the journal and, since XPUB never blocks, the journal never
  slows the forwarding;
- an XPUB into the frontend (inproc) that forwards durable publishes once committed, and the
  ``SystemAlert`` that says the journal is shedding.

Requests come from the service thread through a :class:`~.mailbox.Mailbox` and replies go
back through the service's.

**Bounded input.** Every round the journal first reads what is queued on its SUB (reading
costs far less than committing, so the ZeroMQ pipe stays short), into an input buffer bounded
in bytes (``journal_buffer``, default 64 MiB, counted as topic + body + :data:`RECORD_OVERHEAD`
per message). Past the bound a message is not journaled: it is counted
(``stats.journal.dropped``), and before the next record of that instance the journal records a
gap marker (topic ``_exesdb/journal/gap``, see docs/protocol.md) so a replay says how many
messages are missing there; a ``SystemAlert`` says so too, at most every
:data:`SHED_ALERT_INTERVAL`. Then it commits: durable publishes first, in a transaction of
their own that also takes the oldest buffered records (so a durable publish waits for one
round, never for the backlog), then the buffer in transactions of :data:`COMMIT_ROUND`.

**The seam.** Before answering ``replay`` or ``last`` it reads its SUB until empty and
commits the whole buffer, so everything the broker forwarded before the request is in the
answer: a catch-up-then-live subscription has no gap.

**Stop.** On ``stop`` it reads what is left (the proxy has stopped by then), commits
everything, writes the last values, and logs what it drained and what it could not.

**Last values** live in memory and are written to SQLite at most once per topic per
:data:`LAST_FLUSH` seconds, and at stop.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import zmq
from exesdb_sdk._frames import recv_frames, send_frames
from exesdb_sdk.durable import JOURNAL_GAP_TOPIC, encode_journal_gap
from exesdb_sdk.errors import ExesdbError, ProtocolError
from exesdb_sdk.instances import Instance
from exesdb_sdk.messages import SystemAlert
from exesdb_sdk.protocol import Decoder, Encoder, decode_request, encode_error_reply, encode_reply, is_reserved
from exesdb_sdk.publisher import prepare_socket

from .mailbox import Mailbox
from .queries import Refused, last_reply, not_journaled, replay_reply
from .store import JournalStore, Record, StoreError, open_store

__all__ = [
    "COMMIT_ROUND",
    "DEFAULT_JOURNAL_BUFFER",
    "JOURNAL_OPS",
    "LAST_FLUSH",
    "READ_ROUND",
    "RECORD_OVERHEAD",
    "Journal",
    "JournalSettings",
]

log = logging.getLogger("exesdb.broker.journal")

JOURNAL_OPS: Final = ("publish", "replay", "last")
"""Control operations the service hands to the journal thread."""
DEFAULT_JOURNAL_BUFFER: Final = 64 << 20
"""Bytes of input the journal holds before it sheds (``journal_buffer``)."""
RECORD_OVERHEAD: Final = 128
"""Bytes counted per buffered message on top of its topic and body (the Python objects)."""
READ_ROUND: Final = 5_000
"""Messages read from the SUB per round before the round commits and serves requests."""
COMMIT_ROUND: Final = 20_000
"""Buffered records per transaction."""
LAST_TOPICS: Final = 10_000
"""Last-value topics kept; past this the least recently updated is forgotten."""
LAST_FLUSH: Final = 1.0
"""Seconds between writes of changed last values to SQLite."""
SHED_ALERT_INTERVAL: Final = 10.0
"""Seconds between ``SystemAlert`` messages while the journal sheds."""
INJECTED_LIMIT: Final = 100_000
_TICK: Final = 0.050
"""Seconds between reads of the SUB while nothing is queued (requests wake the loop at once)."""
_MAINTENANCE: Final = 1.0
_DRAIN_ROUNDS: Final = 10_000
"""Bound on the rounds of a read-until-empty (each reads up to READ_ROUND messages)."""
_NOBLOCK: Final = int(zmq.NOBLOCK)
_START_TIMEOUT_MS: Final = 5000
_GAP_TOPIC: Final = JOURNAL_GAP_TOPIC.encode()
_SHED: Final = "journal input buffer full"
_RESTARTED: Final = "journal thread restarted"


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


@dataclass(slots=True)
class JournalCounters:
    """Written by the journal thread only; read under the GIL by ``stats``."""

    received: int = 0
    """Live messages of journaled instances read from the backend."""
    committed: int = 0
    """Records committed (live, durable and gap markers)."""
    durable: int = 0
    """Durable publishes committed and acknowledged."""
    refused: int = 0
    """Durable publishes answered with an error."""
    failed: int = 0
    """Live messages a failed commit lost from the journal (they were forwarded)."""
    dropped: Counter[str] = field(default_factory=Counter)
    """Live messages not journaled because the input buffer was full (or lost with it), per instance."""
    gaps: int = 0
    """Gap markers recorded."""
    shed_alerts: int = 0
    malformed: int = 0
    """Messages not recorded because they do not follow the protocol (durable, last values)."""
    trimmed: int = 0
    drained_at_stop: int = 0
    last_error: str = ""
    heads: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class _Gap:
    missed: int
    since: int
    until: int
    reason: str


@dataclass(slots=True)
class _Durable:
    head: list[bytes]
    request_id: Any
    record: Record


class Journal:
    """The journal child of the broker's supervisor."""

    name = "journal"
    restartable = True

    def __init__(
        self,
        context: zmq.Context[Any],
        settings: JournalSettings,
        *,
        backend: str,
        frontend: str,
        reply: Callable[[list[bytes]], None],
    ) -> None:
        self.settings = settings
        self.counters = JournalCounters()
        self.state = "disabled" if not (settings.instances or settings.last_values) else "starting"
        self.reason = ""
        self.inbox: Mailbox[tuple[str, Any]] = Mailbox()
        self.subscribed = threading.Event()
        """Set once the SUB is connected (the broker starts the proxy after it)."""
        self.ready = threading.Event()
        """Set once the journal's publisher is connected through the running proxy."""
        self.stopped = threading.Event()
        self._context = context
        self._backend = backend
        self._frontend = frontend
        self._reply = reply
        self._store: JournalStore | None = None
        self._journaled = frozenset(settings.instances)
        self._buffer: deque[Record] = deque()
        self._buffer_bytes = 0
        self._gaps: dict[Instance, _Gap] = {}
        self._shed_since_alert = 0
        self._next_shed_alert = 0.0
        self._last: dict[bytes, tuple[int, bytes]] = {}
        self._dirty: dict[bytes, tuple[int, bytes]] = {}
        self._injected: dict[bytes, None] = {}
        self._topics: dict[bytes, tuple[Instance | None, bool]] = {}
        self._in_flight: list[_Durable] = []
        self._deferred: list[tuple[str, Any]] = []
        self._decoder = Decoder()
        self._encoder = Encoder(src=settings.node or "exesdb-broker")
        self._pub: zmq.Socket[Any] | None = None
        self._loaded = False

    # -- the service's handle --------------------------------------------------------------

    def submit(self, frames: list[bytes]) -> None:
        """Hand over ``[*routing head, request frame]``; the reply goes to ``reply``."""
        self.inbox.put(("request", frames))

    def stop(self) -> None:
        """Drain, commit everything and end (after the proxy has stopped)."""
        self.inbox.put(("stop", None))

    @property
    def backlog(self) -> int:
        """Messages received and not yet committed."""
        return len(self._buffer)

    def snapshot(self) -> dict[str, Any]:
        """The ``journal`` map of the ``stats`` reply."""
        c = self.counters
        return {
            "state": self.state,
            "reason": self.reason,
            "data_dir": self.settings.data_dir,
            "instances": [i.value for i in self.settings.instances],
            "fsync": self.settings.fsync,
            "received": c.received,
            "committed": c.committed,
            "durable": c.durable,
            "refused": c.refused,
            "failed": c.failed,
            "dropped": sum(c.dropped.values()),
            "dropped_by_instance": dict(c.dropped),
            "gaps": c.gaps,
            "shed_alerts": c.shed_alerts,
            "malformed": c.malformed,
            "trimmed": c.trimmed,
            "backlog": len(self._buffer),
            "buffer_bytes": self._buffer_bytes,
            "buffer_limit": self.settings.buffer_bytes,
            "heads": dict(c.heads),
            "last_values": len(self._last),
            "last_error": c.last_error,
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
            log.warning("journal disabled: %s; durable publishes and replay will fail", exc)
            return
        self.state, self.reason = "ok", ""
        if not self._loaded:  # a restart keeps the last values it has in memory
            last = sorted(self._store.last_values().items(), key=lambda item: item[1][0])[-LAST_TOPICS:]
            self._last = dict(last)
            self._loaded = True
        self.counters.heads = {i.value: self._store.heads[i] for i in settings.instances}
        log.info("journal %s: recording %s", self._store.path, ", ".join(i.value for i in settings.instances) or "none")

    def run(self) -> None:
        self.ready.clear()  # until this run's publisher has the frontend's subscription
        self._recover()
        sub = self._context.socket(zmq.SUB)
        pub = self._context.socket(zmq.XPUB)
        self._pub = pub
        try:
            sub.setsockopt(zmq.RCVHWM, 0)  # unbounded: the backend never drops for the journal
            sub.setsockopt(zmq.LINGER, 0)
            for instance in self.settings.instances:
                sub.setsockopt(zmq.SUBSCRIBE, instance.prefix.encode())
            for prefix in self.settings.last_values:
                sub.setsockopt(zmq.SUBSCRIBE, prefix)
            sub.connect(self._backend)
            prepare_socket(pub, hwm=0, send_timeout=0, linger=0)
            pub.connect(self._frontend)
            self.subscribed.set()
            # After subscribing: opening may take seconds (converting an older journal), and
            # what arrives meanwhile waits in the SUB.
            self._open()
            self._loop(sub, pub)
        finally:
            self._pub = None
            if self._store is not None:
                self._store.close()
                self._store = None
            for socket in (sub, pub):
                socket.close(linger=0)

    def _recover(self) -> None:
        """After a failed run: what was buffered is lost (counted and marked), and durable
        publishes that were being committed get an error reply (their outcome is unknown)."""
        for item in self._in_flight:
            self._refuse(
                item.head,
                item.request_id,
                "journal_unavailable",
                "the journal restarted while committing this publish: it may or may not be recorded",
            )
        self._in_flight = []
        now, lost = time.time_ns(), 0
        while self._buffer:
            record = self._buffer.popleft()
            if not record.durable and not record.topic.startswith(_GAP_TOPIC):
                self._dropped(record.instance, now, _RESTARTED)
                lost += 1
        self._buffer_bytes = 0
        if lost:
            log.error("journal restarted: %d buffered message(s) lost, marked as a gap in the journal", lost)

    # -- the loop ----------------------------------------------------------------------------

    def _loop(self, sub: zmq.Socket[Any], pub: zmq.Socket[Any]) -> None:
        poller = zmq.Poller()
        poller.register(self.inbox.fileno(), zmq.POLLIN)
        poller.register(pub, zmq.POLLIN)
        next_maintenance = time.monotonic() + _MAINTENANCE
        wait = 0.0
        for _ in range(2**62):  # bounded in name; it ends on stop
            ready = dict(poller.poll(int(wait * 1000)))
            if pub in ready:
                self._drain_subscriptions(pub)
            requests = self.inbox.take(1000) if self.inbox.fileno() in ready else []
            if not self.ready.is_set():  # durable publishes wait until they can be forwarded
                self._deferred.extend(item for item in requests if item[0] == "request")
                requests = [item for item in requests if item[0] != "request"]
            elif self._deferred:
                requests, self._deferred = [*self._deferred, *requests], []
            stop = any(kind == "stop" for kind, _ in requests)
            durable: list[_Durable] = []
            queries: list[tuple[list[bytes], Any, dict[str, Any]]] = []
            for kind, frames in requests:
                if kind == "request" and len(frames) >= 2:
                    self._take_request(frames[:-1], frames[-1], durable, queries)
            empty = self._ingest(sub, READ_ROUND)
            self._in_flight = durable
            self._commit(durable, COMMIT_ROUND)
            self._in_flight = []
            if queries or stop:
                before = self.counters.committed
                self._drain(sub)
                self._flush_last()
                if stop:
                    self.counters.drained_at_stop = self.counters.committed - before
            for head, request_id, request in queries:
                self._answer(head, request_id, request)
            if stop:
                self._stop_report()
                return
            now = time.monotonic()
            if now >= next_maintenance:
                self._maintain()
                self._flush_last()
                next_maintenance = now + _MAINTENANCE
            # Read on a timer while idle, as the tap does: a wake-up per message costs more
            # than the message. Requests wake the loop at once through the inbox.
            wait = 0.0 if (self._buffer or not empty) else min(_TICK, max(0.0, next_maintenance - now))

    def _drain(self, sub: zmq.Socket[Any]) -> None:
        """Read the SUB until empty and commit everything buffered (bounded by the buffer)."""
        for _ in range(_DRAIN_ROUNDS):
            empty = self._ingest(sub, READ_ROUND)
            self._commit([], COMMIT_ROUND)
            if empty and not self._buffer:
                return
        log.warning("journal: still %d messages to commit after a full drain", len(self._buffer))

    def _stop_report(self) -> None:
        counters = self.counters
        dropped = sum(counters.dropped.values())
        log.info(
            "journal stopped: drained and committed %d record(s) at stop; %d live message(s) not journaled "
            "(input buffer full) since start; %d left uncommitted",
            counters.drained_at_stop,
            dropped,
            len(self._buffer),
        )
        self.stopped.set()

    # -- input -------------------------------------------------------------------------------

    def _classify(self, topic: bytes) -> tuple[Instance | None, bool]:
        """(the instance when journaled, whether the topic keeps a last value)."""
        known = self._topics.get(topic)
        if known is None:
            instance: Instance | None = None
            try:
                resolved = Instance.resolve(topic.decode().partition("/")[0])
                instance = resolved if resolved in self._journaled else None
            except (ExesdbError, UnicodeDecodeError):
                instance = None
            last = any(topic.startswith(prefix) for prefix in self.settings.last_values)
            if len(self._topics) >= 4096:
                self._topics.clear()
            known = self._topics[topic] = (instance, last)
        return known

    def _ingest(self, sub: zmq.Socket[Any], limit: int) -> bool:
        """Read up to ``limit`` live messages into the buffer (shedding past its bound);
        return whether the SUB was found empty."""
        counters = self.counters
        injected = self._injected
        bound = self.settings.buffer_bytes
        buffer = self._buffer
        for _ in range(limit):
            try:
                frames = recv_frames(sub, _NOBLOCK)
            except zmq.Again:
                return True
            if len(frames) < 2 or is_reserved(frames[0]):
                continue
            topic, body = frames[0], frames[1]
            if injected and body in injected:
                del injected[body]  # a durable publish coming back around: recorded already
                continue
            instance, keeps_last = self._classify(topic)
            if instance is None and not keeps_last:
                continue
            try:
                self._decoder.check(frames)
            except ProtocolError:
                counters.malformed += 1
                continue
            if keeps_last:
                self._keep_last(topic, body)
            if instance is None:
                continue
            counters.received += 1
            if self._store is None:
                continue  # unavailable: forwarded, not journaled (stats say why)
            size = len(topic) + len(body) + RECORD_OVERHEAD
            if self._buffer_bytes + size > bound:
                self._dropped(instance, time.time_ns(), _SHED)
                continue
            if self._gaps:
                self._mark_gap(instance)
            buffer.append(Record(instance, topic, body))
            self._buffer_bytes += size
        return False

    def _keep_last(self, topic: bytes, body: bytes) -> None:
        value = (time.time_ns(), body)
        kept = self._last
        kept.pop(topic, None)
        kept[topic] = value
        self._dirty[topic] = value
        if len(kept) > LAST_TOPICS:
            del kept[next(iter(kept))]

    def _dropped(self, instance: Instance, now: int, reason: str) -> None:
        self.counters.dropped[instance.value] += 1
        gap = self._gaps.get(instance)
        if gap is None:
            self._gaps[instance] = _Gap(1, now, now, reason)
        else:
            gap.missed += 1
            gap.until = now
        if reason is _SHED:
            self._shed_since_alert += 1
            if time.monotonic() >= self._next_shed_alert:
                self._shed_alert(instance)

    def _mark_gap(self, instance: Instance) -> None:
        """Record the pending gap marker of ``instance`` ahead of its next record."""
        gap = self._gaps.pop(instance, None)
        if gap is None:
            return
        body = encode_journal_gap(self._encoder.src, instance.value, gap.missed, gap.since, gap.until, gap.reason)
        self._buffer.append(Record(instance, _GAP_TOPIC, body))
        self._buffer_bytes += len(_GAP_TOPIC) + len(body) + RECORD_OVERHEAD
        self.counters.gaps += 1

    def _shed_alert(self, instance: Instance) -> None:
        self._next_shed_alert = time.monotonic() + SHED_ALERT_INTERVAL
        count, self._shed_since_alert = self._shed_since_alert, 0
        total = sum(self.counters.dropped.values())
        message = (
            f"the journal is shedding: {count} message(s) of {instance.value} not journaled (input buffer of "
            f"{self.settings.buffer_bytes} bytes full; {total} in all); replays mark the gap"
        )
        log.warning(message)
        self._publish(
            SystemAlert(
                severity="error",
                title="journal shedding",
                category="data",
                description=message,
                source="exesdb_broker",
                node=self._encoder.src,
                metadata={"instance": instance.value, "dropped": count, "dropped_total": total},
            )
        )
        self.counters.shed_alerts += 1

    def _publish(self, payload: SystemAlert) -> None:
        pub = self._pub
        if pub is None:
            return
        topic = self._encoder.topic(payload.__instance__, payload.default_subtopic())
        try:
            send_frames(pub, topic, self._encoder.encode(topic, type(payload).__name__, payload))
        except zmq.ZMQError as exc:
            log.warning("journal alert not sent: %s", exc)

    def _drain_subscriptions(self, pub: zmq.Socket[Any]) -> None:
        for _ in range(10_000):
            try:
                pub.recv(_NOBLOCK)
            except zmq.Again:
                return
            self.ready.set()  # the frontend's subscription: what it sends now is forwarded

    # -- committing --------------------------------------------------------------------------

    def _commit(self, durable: Sequence[_Durable], limit: int) -> None:
        """Commit the durable publishes with up to ``limit`` of the oldest buffered records in
        one transaction, then acknowledge and forward them."""
        store, counters = self._store, self.counters
        if not durable and not self._buffer:
            return
        if self._gaps and not self._buffer:
            for instance in list(self._gaps):
                self._mark_gap(instance)
        buffer = self._buffer
        live = [buffer.popleft() for _ in range(min(limit, len(buffer)))]
        self._buffer_bytes -= sum(len(r.topic) + len(r.body) + RECORD_OVERHEAD for r in live)
        records = live + [item.record for item in durable]
        if store is None:  # only while it cannot be opened: nothing is buffered then
            return
        try:
            store.write(records)
        except sqlite3.Error as exc:
            counters.last_error = f"commit failed: {exc}"
            log.error("journal commit failed (%d records): %s", len(records), exc)
            counters.failed += len(live)
            for item in durable:
                self._refuse(item.head, item.request_id, "commit_failed", f"journal commit failed: {exc}")
            return
        counters.committed += len(records)
        counters.heads = {i.value: store.heads[i] for i in self.settings.instances}
        for item in durable:
            self._forward(item)

    def _forward(self, item: _Durable) -> None:
        record = item.record
        if len(self._injected) >= INJECTED_LIMIT:
            self._injected.clear()
        self._injected[record.body] = None
        if self._classify(record.topic)[1]:
            self._keep_last(record.topic, record.body)
        pub = self._pub
        try:
            if pub is None:
                raise zmq.Again()
            send_frames(pub, record.topic, record.body)
        except zmq.Again:  # unbounded HWM: only while stopping
            log.warning("durable message on %s committed but not forwarded", record.topic.decode())
        self.counters.durable += 1
        reply = encode_reply({"seq": record.seq, "instance": record.instance.value}, item.request_id)
        self._reply([*item.head, reply])

    def _flush_last(self) -> None:
        if not self._dirty or self._store is None:
            return
        dirty, self._dirty = self._dirty, {}
        try:
            self._store.write_last(dirty)
        except sqlite3.Error as exc:
            self.counters.last_error = f"last values not written: {exc}"
            log.error("journal: last values not written: %s", exc)

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
        if request["op"] != "publish":
            queries.append((head, request_id, request))
            return
        try:
            durable.append(_Durable(head, request_id, self._durable(request)))
        except Refused as exc:
            self._refuse(head, request_id, exc.code, exc.message)

    def _durable(self, request: dict[str, Any]) -> Record:
        topic, body = request.get("topic"), request.get("body")
        if isinstance(topic, str):
            topic = topic.encode()
        if not isinstance(topic, bytes) or not isinstance(body, bytes):
            raise Refused("bad_request", "publish needs 'topic' (str) and 'body' (bin)")
        if len(body) > self.settings.max_message_size:
            raise Refused("too_large", f"body is {len(body)} bytes, over {self.settings.max_message_size}")
        try:
            text, _ = self._decoder.check([topic, body])
        except ProtocolError as exc:
            self.counters.malformed += 1
            raise Refused("bad_request", f"not a valid message: {exc}") from None
        instance = Instance.resolve(text.partition("/")[0])
        if instance not in self._journaled:
            raise not_journaled(instance, self.settings.instances)
        if self._store is None:
            raise Refused("journal_unavailable", f"journal unavailable: {self.reason or self.state}")
        return Record(instance, topic, body, durable=True)

    def _answer(self, head: list[bytes], request_id: Any, request: dict[str, Any]) -> None:
        op = request["op"]
        try:
            if op == "replay":
                fields = replay_reply(self._store, self.settings.instances, self.reason or self.state, request)
            elif op == "last":
                fields = last_reply(self._last, self.settings.last_values, request)
            else:
                raise Refused("unknown_op", f"unknown op {op!r}")
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
