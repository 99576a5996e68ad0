"""The journal: records the journaled instances, keeps last values, and answers ``publish``
(durable), ``replay`` and ``last``. It runs in its own thread beside the data plane.

Sockets, all created and closed in the journal thread:

- a SUB on the backend (inproc) subscribed to the journaled instances and the last-value
  prefixes, with ``RCVHWM`` 0: libzmq makes the pipe unbounded when either end's HWM is 0, so
  the backend never drops for the journal, and since XPUB never blocks, a journal that falls
  behind never slows the forwarding; the pipe grows instead (see ``backlog`` in ``stats``);
- a PAIR the service thread hands control requests to and takes replies from;
- an XPUB into the frontend (inproc) that forwards durable publishes once committed, and
  sends the markers that measure the backlog: when a round finds more queued than it reads,
  a marker goes through the proxy, and the messages read before it comes back were queued
  ahead of the journal. (libzmq has no queue-length query.)

Every round reads what is queued, writes it in one SQLite transaction (see :mod:`.store`),
then replies. Before answering ``replay`` or ``last`` it first reads its SUB until empty, so
everything the broker forwarded before the request is in the answer: the seam of a
catch-up-then-live subscription has no gap.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import zmq
from exesdb_sdk._frames import recv_frames, send_frames
from exesdb_sdk.errors import ExesdbError, ProtocolError
from exesdb_sdk.instances import Instance
from exesdb_sdk.protocol import Decoder, decode_request, encode_error_reply, encode_reply, is_reserved
from exesdb_sdk.publisher import prepare_socket

from .queries import Refused, last_reply, not_journaled, replay_reply
from .store import JournalStore, Record, StoreError, open_store

__all__ = ["JOURNAL_OPS", "Journal", "JournalSettings"]

log = logging.getLogger("exesdb.broker.journal")

JOURNAL_OPS: Final = ("publish", "replay", "last")
"""Control operations the service hands to the journal thread."""
ROUND: Final = 10_000
"""Messages read from the SUB per round (one transaction)."""
DRAIN_LIMIT: Final = 1_000_000
"""Bound on the read-until-empty before a ``replay`` or ``last`` answer."""
LAST_TOPICS: Final = 10_000
"""Last-value topics kept; past this the least recently updated is forgotten."""
INJECTED_LIMIT: Final = 100_000
BACKLOG_WARNING: Final = 100_000
"""Messages behind at which the journal logs a warning (it never drops; the pipe holds them)."""
MARKER_PREFIX: Final = b"_exesdb/journal/"
"""Reserved topic of the journal's own markers, sent through the proxy to measure its backlog."""
_MAINTENANCE: Final = 1.0
_STOP: Final = b"STOP"
_NOBLOCK: Final = int(zmq.NOBLOCK)
_START_TIMEOUT_MS: Final = 5000


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


@dataclass(slots=True)
class JournalCounters:
    """Written by the journal thread only; read under the GIL by ``stats``."""

    received: int = 0
    """Messages of journaled instances read from the backend (live)."""
    committed: int = 0
    """Records committed (live and durable)."""
    durable: int = 0
    """Durable publishes committed and acknowledged."""
    refused: int = 0
    """Durable publishes answered with an error."""
    failed: int = 0
    """Live messages a commit failed for (not in the journal; they were forwarded)."""
    malformed: int = 0
    trimmed: int = 0
    pending: int = 0
    """Read but not yet committed."""
    behind: int = 0
    """Messages that were queued ahead of the journal at the last measurement (0 once drained)."""
    last_error: str = ""
    heads: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class _Durable:
    head: list[bytes]
    request_id: Any
    topic: bytes
    body: bytes
    row: Record


class Journal:
    """Runs the journal in its own thread until the service sends ``STOP``."""

    def __init__(
        self,
        context: zmq.Context[Any],
        settings: JournalSettings,
        *,
        backend: str,
        frontend: str,
        endpoint: str,
    ) -> None:
        self.settings = settings
        self.counters = JournalCounters()
        self.state = "disabled" if not (settings.instances or settings.last_values) else "starting"
        self.reason = ""
        self._context = context
        self._backend = backend
        self._frontend = frontend
        self._endpoint = endpoint
        self._subscribed = threading.Event()
        self._ready = threading.Event()
        self._failed: BaseException | None = None
        self._store: JournalStore | None = None
        self._journaled = frozenset(settings.instances)
        self._last: dict[bytes, tuple[int, bytes]] = {}
        self._injected: dict[bytes, None] = {}
        self._topics: dict[bytes, tuple[Instance | None, bool]] = {}
        self._decoder = Decoder()
        self._read_total = 0
        self._markers = 0
        self._marker: tuple[bytes, int] | None = None
        self._warned = False
        self._thread = threading.Thread(target=self._run, name="exesdb-journal", daemon=True)

    # -- life ------------------------------------------------------------------------------

    def start(self, timeout: float) -> None:
        """Open the store and subscribe (before the proxy runs, so nothing is missed)."""
        self._thread.start()
        if not self._subscribed.wait(timeout):
            raise RuntimeError("the journal did not start")
        if self._failed is not None:
            raise RuntimeError(f"the journal did not start: {self._failed}")

    def wait_ready(self, timeout: float) -> None:
        """Return once the journal's publisher is connected through the running proxy."""
        if not self._ready.wait(timeout):
            raise RuntimeError("the journal's publisher did not connect")

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

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
            "malformed": c.malformed,
            "trimmed": c.trimmed,
            "backlog": c.pending + c.behind,
            "heads": dict(c.heads),
            "last_values": len(self._last),
            "last_error": c.last_error,
        }

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
        self.state = "ok"
        last = sorted(self._store.last_values().items(), key=lambda item: item[1][0])[-LAST_TOPICS:]
        self._last = dict(last)
        self.counters.heads = {i.value: self._store.heads[i] for i in settings.instances}
        log.info("journal %s: recording %s", self._store.path, ", ".join(i.value for i in settings.instances) or "none")

    def _run(self) -> None:
        sub = self._context.socket(zmq.SUB)
        pipe = self._context.socket(zmq.PAIR)
        pub = self._context.socket(zmq.XPUB)
        try:
            self._open()
            sub.setsockopt(zmq.RCVHWM, 0)  # unbounded: the backend never drops for the journal
            sub.setsockopt(zmq.LINGER, 0)
            for instance in self.settings.instances:
                sub.setsockopt(zmq.SUBSCRIBE, instance.prefix.encode())
            for prefix in self.settings.last_values:
                sub.setsockopt(zmq.SUBSCRIBE, prefix)
            sub.setsockopt(zmq.SUBSCRIBE, MARKER_PREFIX)
            sub.connect(self._backend)
            pipe.setsockopt(zmq.LINGER, 0)
            pipe.setsockopt(zmq.SNDHWM, 0)
            pipe.setsockopt(zmq.RCVHWM, 0)
            pipe.bind(self._endpoint)
            prepare_socket(pub, hwm=0, send_timeout=0, linger=0)
            pub.connect(self._frontend)
            self._subscribed.set()
            if not pub.poll(_START_TIMEOUT_MS):
                raise RuntimeError("no subscription from the frontend")
            self._drain_subscriptions(pub)
            self._ready.set()
            self._loop(sub, pipe, pub)
        except zmq.ContextTerminated:
            pass
        except Exception as exc:  # the journal must never take the forwarding down
            self._failed = exc
            self.state, self.reason = "failed", f"{type(exc).__name__}: {exc}"
            log.exception("journal stopped unexpectedly")
        finally:
            self._subscribed.set()
            if self._store is not None:
                self._store.close()
            for socket in (sub, pipe, pub):
                socket.close(linger=0)

    # -- the loop ----------------------------------------------------------------------------

    def _loop(self, sub: zmq.Socket[Any], pipe: zmq.Socket[Any], pub: zmq.Socket[Any]) -> None:
        poller = zmq.Poller()
        poller.register(sub, zmq.POLLIN)
        poller.register(pipe, zmq.POLLIN)
        poller.register(pub, zmq.POLLIN)
        next_maintenance = time.monotonic() + _MAINTENANCE
        while True:
            wait = max(0.0, next_maintenance - time.monotonic())
            ready = dict(poller.poll(int(wait * 1000) + 1))
            if pub in ready:
                self._drain_subscriptions(pub)
            live = _read(sub, ROUND) if sub in ready else []
            if sub not in ready:
                self.counters.behind = 0  # nothing was queued
            requests = _read(pipe, 1000) if pipe in ready else []
            stop = any(len(frames) == 1 and frames[0] == _STOP for frames in requests)
            durable: list[_Durable] = []
            queries: list[tuple[list[bytes], Any, dict[str, Any]]] = []
            for frames in requests:
                if len(frames) < 2:
                    continue
                head, frame = frames[:-1], frames[-1]
                self._take_request(pipe, head, frame, durable, queries)
            if queries or stop:
                live.extend(_read(sub, DRAIN_LIMIT))
            self._measure(live, pub)
            self._write(live, durable, pipe, pub)
            for head, request_id, request in queries:
                self._answer(pipe, head, request_id, request)
            if stop:
                return
            if time.monotonic() >= next_maintenance:
                self._maintain()
                next_maintenance = time.monotonic() + _MAINTENANCE

    def _measure(self, live: list[list[bytes]], pub: zmq.Socket[Any]) -> None:
        """Keep ``behind`` up to date. When a round finds more than it reads, a marker goes
        through the proxy; the messages read before it comes back were queued ahead of it."""
        counters, base = self.counters, self._read_total
        self._read_total += len(live)
        if self._marker is not None:
            topic, sent_at = self._marker
            for index, frames in enumerate(live):
                if frames[0] == topic:
                    counters.behind = max(0, base + index - sent_at)
                    self._marker = None
                    break
        if len(live) < ROUND:  # read until empty: nothing is queued ahead any more
            counters.behind = 0
        elif self._marker is None:
            self._markers += 1
            topic = MARKER_PREFIX + str(self._markers).encode()
            with contextlib.suppress(zmq.Again):
                send_frames(pub, topic, b"")
                self._marker = (topic, self._read_total)
        if counters.behind > BACKLOG_WARNING and not self._warned:
            log.warning("journal is %d messages behind (it drops nothing; they wait in memory)", counters.behind)
            self._warned = True
        elif counters.behind == 0:
            self._warned = False

    @staticmethod
    def _drain_subscriptions(pub: zmq.Socket[Any]) -> None:
        for _ in range(10_000):
            try:
                pub.recv(_NOBLOCK)
            except zmq.Again:
                return

    def _classify(self, topic: bytes) -> tuple[Instance | None, bool]:
        """(the instance when journaled, whether the topic keeps a last value)."""
        known = self._topics.get(topic)
        if known is None:
            instance: Instance | None = None
            with contextlib.suppress(ExesdbError, UnicodeDecodeError):
                resolved = Instance.resolve(topic.decode().partition("/")[0])
                instance = resolved if resolved in self._journaled else None
            last = any(topic.startswith(prefix) for prefix in self.settings.last_values)
            if len(self._topics) >= 4096:
                self._topics.clear()
            known = self._topics[topic] = (instance, last)
        return known

    def _row(self, frames: Sequence[bytes], instance: Instance, durable: bool) -> Record:
        self._decoder.inspect(frames)  # only well-formed messages are recorded
        return Record(instance, frames[0], frames[1], durable)

    def _write(
        self, live: list[list[bytes]], durable: list[_Durable], pipe: zmq.Socket[Any], pub: zmq.Socket[Any]
    ) -> None:
        counters = self.counters
        rows: list[Record] = []
        last: dict[bytes, tuple[int, bytes]] = {}
        rt = time.time_ns()
        injected = self._injected
        for frames in live:
            if len(frames) < 2 or is_reserved(frames[0]):
                continue
            if injected and frames[1] in injected:
                del injected[frames[1]]  # a durable publish coming back around: recorded already
                continue
            instance, keeps_last = self._classify(frames[0])
            if instance is None and not keeps_last:
                continue
            try:
                row = self._row(frames, instance or Instance.EVENTS, False)
            except ProtocolError:
                counters.malformed += 1
                continue
            if keeps_last:
                last[frames[0]] = (rt, frames[1])
            if instance is not None:
                counters.received += 1
                rows.append(row)
        for item in durable:
            rows.append(item.row)
            if self._classify(item.topic)[1]:
                last[item.topic] = (rt, item.body)
        counters.pending = len(rows)
        self._remember_last(last)
        if self._store is not None and (rows or last):
            try:
                self._store.write(rows)
            except sqlite3.Error as exc:
                counters.last_error = f"commit failed: {exc}"
                log.error("journal commit failed (%d records): %s", len(rows), exc)
                counters.failed += len(rows) - len(durable)
                counters.pending = 0
                for item in durable:
                    self._refuse(pipe, item.head, item.request_id, "commit_failed", f"journal commit failed: {exc}")
                return
            counters.committed += len(rows)
            counters.heads = {i.value: self._store.heads[i] for i in self.settings.instances}
            try:
                self._store.write_last(last)
            except sqlite3.Error as exc:
                counters.last_error = f"last values not kept: {exc}"
                log.error("journal could not keep %d last values: %s", len(last), exc)
        counters.pending = 0
        for item in durable:
            if len(injected) >= INJECTED_LIMIT:
                injected.clear()
            injected[item.body] = None
            try:
                send_frames(pub, item.topic, item.body)
            except zmq.Again:  # unbounded HWM: only while stopping
                log.warning("durable message on %s committed but not forwarded", item.topic.decode())
            counters.durable += 1
            reply = encode_reply({"seq": item.row.seq, "instance": item.row.instance.value}, item.request_id)
            _send(pipe, [*item.head, reply])

    def _remember_last(self, last: dict[bytes, tuple[int, bytes]]) -> None:
        kept = self._last
        for topic, value in last.items():
            kept.pop(topic, None)
            kept[topic] = value
        while len(kept) > LAST_TOPICS:
            del kept[next(iter(kept))]

    def _refuse(self, pipe: zmq.Socket[Any], head: list[bytes], request_id: Any, code: str, message: str) -> None:
        self.counters.refused += 1
        _send(pipe, [*head, encode_error_reply(code, message, request_id)])

    # -- requests ----------------------------------------------------------------------------

    def _take_request(
        self,
        pipe: zmq.Socket[Any],
        head: list[bytes],
        frame: bytes,
        durable: list[_Durable],
        queries: list[tuple[list[bytes], Any, dict[str, Any]]],
    ) -> None:
        try:
            request = decode_request(frame)
        except ProtocolError as exc:
            _send(pipe, [*head, encode_error_reply("bad_request", exc.detail)])
            return
        request_id = request.get("id")
        if request["op"] != "publish":
            queries.append((head, request_id, request))
            return
        try:
            durable.append(self._durable(head, request_id, request))
        except Refused as exc:
            self._refuse(pipe, head, request_id, exc.code, exc.message)

    def _durable(self, head: list[bytes], request_id: Any, request: dict[str, Any]) -> _Durable:
        topic, body = request.get("topic"), request.get("body")
        if isinstance(topic, str):
            topic = topic.encode()
        if not isinstance(topic, bytes) or not isinstance(body, bytes):
            raise Refused("bad_request", "publish needs 'topic' (str) and 'body' (bin)")
        if len(body) > self.settings.max_message_size:
            raise Refused("too_large", f"body is {len(body)} bytes, over {self.settings.max_message_size}")
        try:
            text, _, _, _ = self._decoder.inspect([topic, body])
        except ProtocolError as exc:
            raise Refused("bad_request", f"not a valid message: {exc}") from None
        instance = Instance.resolve(text.partition("/")[0])
        if instance not in self._journaled:
            raise not_journaled(instance, self.settings.instances)
        if self._store is None:
            raise Refused("journal_unavailable", f"journal unavailable: {self.reason or self.state}")
        row = Record(instance, topic, body, True)
        return _Durable(head, request_id, topic, body, row)

    def _answer(self, pipe: zmq.Socket[Any], head: list[bytes], request_id: Any, request: dict[str, Any]) -> None:
        op = request["op"]
        try:
            if op == "replay":
                fields = replay_reply(self._store, self.settings.instances, self.reason or self.state, request)
            elif op == "last":
                fields = last_reply(self._last, self.settings.last_values, request)
            else:
                raise Refused("unknown_op", f"unknown op {op!r}")
        except Refused as exc:
            _send(pipe, [*head, encode_error_reply(exc.code, exc.message, request_id)])
            return
        except sqlite3.Error as exc:
            _send(pipe, [*head, encode_error_reply("journal_unavailable", f"journal read failed: {exc}", request_id)])
            return
        _send(pipe, [*head, encode_reply(fields, request_id)])

    def _maintain(self) -> None:
        store, settings = self._store, self.settings
        if store is None or not (settings.max_age or settings.max_records):
            return
        try:
            self.counters.trimmed += store.trim(settings.instances, settings.max_age, settings.max_records)
        except sqlite3.Error as exc:
            self.counters.last_error = f"retention failed: {exc}"
            log.error("journal retention failed: %s", exc)


def _read(socket: zmq.Socket[Any], limit: int) -> list[list[bytes]]:
    messages: list[list[bytes]] = []
    for _ in range(limit):
        try:
            messages.append(recv_frames(socket, _NOBLOCK))
        except zmq.Again:
            break
    return messages


def _send(pipe: zmq.Socket[Any], frames: list[bytes]) -> None:
    try:
        pipe.send_multipart(frames, _NOBLOCK)
    except zmq.ZMQError as exc:  # the service is gone (stopping): nothing to answer
        log.debug("journal reply not sent: %s", exc)
