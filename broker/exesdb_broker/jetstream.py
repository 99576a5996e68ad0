"""Journaled instances across brokers: JetStream, beside the live federation (:mod:`.federation`).

Each journaled instance a broker federates has one stream, ``EXESDB_<instance>`` (subjects
``exesdb.<instance>.>`` and ``exesdb.<instance>``, file storage, :attr:`JetStreamPlan.replicas`
replicas, bounded by ``stream_max_bytes`` and ``stream_max_age``, the oldest discarded first),
created by whichever broker needs it first.

- **export**: the broker follows its own journal from a cursor kept in ``federation.db`` in its
  data directory, woken by a live subscription (the doorbell) and every second, and publishes
  each record (body unchanged, headers ``Nats-Msg-Id``, ``Exesdb-Topic``, ``Exesdb-Origin``) to
  the stream, up to :data:`EXPORT_WINDOW` awaiting their acknowledgement. The cursor moves once
  a page is acknowledged: a broker killed meanwhile exports the page again when it returns, and
  the stream drops what it already has by ``Nats-Msg-Id`` (``<pub>:<topic>:<seq>``, the message's
  own identity) within its duplicate window. A first start begins at the journal's head.
- **import**: a durable pull consumer per stream and broker (``exesdb-<name>``, explicit acks,
  at most :data:`MAX_ACK_PENDING` unacknowledged); each fetched batch from other brokers is
  committed to this broker's journal as durable publishes (the control op ``publish`` over
  inproc, pipelined: one group commit for many, :meth:`~exesdb_sdk.AsyncControlClient.commit_many`),
  in stream order; then the import cursor (the last stream seq committed, in ``federation.db``)
  moves and the batch is acknowledged. The cursor, not the consumer, says what is committed: a
  delivery lost on the way (a gap in the stream seqs), a commit that failed, a restart or a
  broker that was down all start the consumer again from the cursor, so the journal takes the
  stream in its order with nothing skipped. Nothing is committed twice either: before a commit
  the journal's head is kept as a mark, dropped once the cursor covers the commit; a broker
  killed in between (or a commit whose outcome is unknown) reads its journal back from the mark
  and knows those messages when they are delivered again. What this broker imported is never exported again
  (it keeps the bodies it committed until its exporter passes them, :data:`IMPORTED_LIMIT` at
  most; past that, or across a restart, the stream's duplicate window catches a second copy).

Counted in ``stats.federation.jetstream``: per instance exported, imported, ``lag`` (records of
its journal not yet exported; messages of the stream not yet imported), and what was lost or
refused: ``lost`` (discarded by the stream's limits before this broker read them, or trimmed
from its journal before it exported them), ``refused`` (a message this journal will not take),
``duplicates``, ``echo``, and ``reordered`` (exported messages that reached the stream after
later ones: a NATS connection dropped with a page in flight).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import sqlite3
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import nats.errors
import nats.js.errors
import zmq
import zmq.asyncio
from exesdb_sdk.aio import AsyncControlClient
from exesdb_sdk.durable import JOURNAL_GAP_TOPIC
from exesdb_sdk.errors import BrokerUnavailableError, ControlError, ProtocolError
from exesdb_sdk.follow import head_request
from exesdb_sdk.instances import Instance
from exesdb_sdk.protocol import Decoder
from exesdb_sdk.subjects import ORIGIN_HEADER, TOPIC_HEADER, escape_token, topic_header, topic_of_header
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    ConsumerInfo,
    DeliverPolicy,
    DiscardPolicy,
    StorageType,
    StreamConfig,
)

__all__ = ["DB_NAME", "JetStreamBridge", "JetStreamPlan", "one_line", "stream_name"]

log = logging.getLogger("exesdb.broker.federation")

DB_NAME: Final = "federation.db"
EXPORT: Final = "export"
IMPORT: Final = "import"
PENDING: Final = "import_pending"
"""The journal's head before the oldest commit the import cursor does not cover yet."""
HIGH: Final = "import_high"
"""The highest stream seq committed (or tried) since :data:`PENDING` was set."""
EXPORT_WINDOW: Final = 256
"""Publishes awaiting their acknowledgement, per exporting instance."""
MAX_ACK_PENDING: Final = 1024
"""Messages a broker's consumer may hold unacknowledged (JetStream stops delivering past it)."""
FETCH: Final = 256
"""Messages per pull, at most."""
IMPORTED_LIMIT: Final = 100_000
DUPLICATE_WINDOW: Final = 600.0
"""Seconds the stream remembers a ``Nats-Msg-Id``."""
ACK_TIMEOUT: Final = 5.0
"""Seconds an export waits for the stream's acknowledgements before it tries the page again."""
ACK_WAIT: Final = 30.0
"""Seconds JetStream waits for this broker's acknowledgement before it delivers a message again."""
_PAGE: Final = EXPORT_WINDOW
"""Records per ``replay`` page: a page is published at once, then its acknowledgements awaited."""
_POLL: Final = 1.0
_RETRY: Final = 1.0
_LAG_EVERY: Final = 2.0
_CONTROL_TIMEOUT: Final = 10.0
_COMMIT_RETRY: Final = 1.0
"""Seconds before an import the journal could not commit is tried again."""
_SEEN_LIMIT: Final = 100_000
_RECOVER_LIMIT: Final = 65_536
"""Records of the journal read back, at most, to find a batch committed before its cursor moved."""
_REFUSED_CODES: Final = frozenset({"bad_request", "invalid_message", "malformed", "too_large", "not_journaled"})
"""Refusals of a durable publish that no retry changes: the message is terminated, counted."""
_NO_ROOM: Final = 10005  # no peers for placement: the servers' storage or count
MSG_ID_HEADER: Final = "Nats-Msg-Id"


def stream_name(instance: Instance) -> str:
    """The JetStream stream of a journaled instance."""
    return f"EXESDB_{instance.value}"


def stream_subjects(prefix: str, instance: Instance) -> list[str]:
    """The subjects of :func:`stream_name` (every sub-topic, and the empty one)."""
    token = escape_token(instance.value)
    return [f"{prefix}.{token}.>", f"{prefix}.{token}"]


@dataclass(frozen=True, slots=True)
class JetStreamPlan:
    """The journaled part of a federation."""

    exports: tuple[Instance, ...]
    imports: tuple[Instance, ...]
    data_dir: str
    replicas: int
    max_bytes: int
    max_age: float


@dataclass(slots=True)
class _Counts:
    exported: int = 0
    imported: int = 0
    duplicates: int = 0
    echo: int = 0
    skipped_imports: int = 0
    lost: int = 0
    refused: int = 0
    journal_gaps: int = 0
    reordered: int = 0
    export_lag: int = 0
    import_lag: int = 0
    cursor: int = 0


@dataclass(slots=True)
class _State:
    waiting: set[str] = field(default_factory=set)
    """Tasks not yet set up once (streams made, export cursors read, import consumers created)."""
    faults: dict[str, str] = field(default_factory=dict)
    """What is wrong now, per task (``streams``, ``export <instance>``, ``import <instance>``)."""
    counts: dict[str, _Counts] = field(default_factory=dict)
    refused_by: Counter[str] = field(default_factory=Counter)

    @property
    def state(self) -> str:
        return "degraded" if self.faults else "starting" if self.waiting else "ok"


_PASSING: Final = (ControlError, BrokerUnavailableError, nats.errors.Error, OSError, sqlite3.Error, TimeoutError)
"""What a task waits out and tries again (a fault of the moment, shown in its state)."""


async def _page(
    control: AsyncControlClient, instance: Instance, after: int, *, sync: bool = False
) -> tuple[list[list[Any]], int, dict[str, Any]]:
    """One ``replay`` page of ``instance`` after journal seq ``after``: its well-formed records
    (``[seq, ts, topic, body]``), the seq to ask from next, and the whole reply."""
    args = {"instance": instance.value, "from_seq": after + 1, "limit": _PAGE, "sync": sync}
    reply = await control.request("replay", args)
    records, following = reply.get("records"), reply.get("next")
    if not isinstance(records, list) or type(following) is not int:
        raise ControlError("bad_reply", "replay reply without 'records' and 'next'")
    kept = [r for r in records if isinstance(r, list) and len(r) >= 4 and type(r[0]) is int]
    return kept, following, reply


async def _head(control: AsyncControlClient, instance: Instance) -> int:
    """The journal's last seq of ``instance``."""
    last = (await control.request("replay", head_request(instance))).get("last")
    if type(last) is not int:
        raise ControlError("bad_reply", "replay reply without 'last'")
    return last


def _digest(body: bytes) -> bytes:
    return hashlib.blake2b(body, digest_size=16).digest()


def _backoff(attempt: int) -> float:
    return min(_RETRY * 2.0 ** min(attempt, 3), 5.0)


def one_line(exc: BaseException) -> str:
    """``exc`` in one line for a log or a ``last_error`` (a JetStream API error by its description)."""
    text = " ".join(str(exc).split())
    if isinstance(exc, nats.js.errors.APIError) and exc.description:
        text = f"{exc.description} (err_code {exc.err_code})"
    return text or type(exc).__name__


class Cursors:
    """``federation.db``: per journaled instance, the export cursor (the last broker seq exported)
    and the import cursor (the last stream seq committed to the journal)."""

    def __init__(self, data_dir: str) -> None:
        path = Path(data_dir) / DB_NAME
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, timeout=5.0, isolation_level=None, check_same_thread=False)
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS cursor (kind TEXT NOT NULL, instance TEXT NOT NULL, seq INTEGER NOT NULL,"
            " PRIMARY KEY (kind, instance))"
        )

    def get(self, instance: Instance, kind: str = EXPORT) -> int | None:
        """The ``kind`` cursor of ``instance``, or ``None`` before its first use."""
        query = "SELECT seq FROM cursor WHERE kind = ? AND instance = ?"
        row = self._db.execute(query, (kind, instance.value)).fetchone()
        return None if row is None else int(row[0])

    def set(self, instance: Instance, seq: int, kind: str = EXPORT) -> None:
        """Move the ``kind`` cursor of ``instance`` (one small transaction)."""
        self._db.execute("INSERT OR REPLACE INTO cursor VALUES (?, ?, ?)", (kind, instance.value, seq))

    def mark(self, instance: Instance, head: int, high: int) -> None:
        """Before a commit to the journal: keep the journal's ``head`` if no mark is kept yet
        (the oldest uncovered commit stays covered), and raise the highest stream seq being
        committed to ``high``; one transaction."""
        self._transaction(
            ("INSERT OR IGNORE INTO cursor VALUES (?, ?, ?)", (PENDING, instance.value, head)),
            ("INSERT OR IGNORE INTO cursor VALUES (?, ?, ?)", (HIGH, instance.value, high)),
            ("UPDATE cursor SET seq = max(seq, ?) WHERE kind = ? AND instance = ?", (high, HIGH, instance.value)),
        )

    def settle(self, instance: Instance, seq: int) -> bool:
        """Move the import cursor of ``instance`` to ``seq``, and drop its mark once the cursor
        covers every commit made since it was set (one transaction). True if it was dropped."""
        high = self.get(instance, HIGH)
        move = ("INSERT OR REPLACE INTO cursor VALUES (?, ?, ?)", (IMPORT, instance.value, seq))
        if high is None or seq < high:
            self._transaction(move)
            return high is None
        drop = "DELETE FROM cursor WHERE kind IN (?, ?) AND instance = ?"
        self._transaction(move, (drop, (PENDING, HIGH, instance.value)))
        return True

    def _transaction(self, *statements: tuple[str, tuple[Any, ...]]) -> None:
        self._db.execute("BEGIN")
        try:
            for sql, args in statements:
                self._db.execute(sql, args)
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def close(self) -> None:
        self._db.close()


class JetStreamBridge:
    """The exporters and importers of the journaled instances, tasks of the federation's loop."""

    def __init__(
        self,
        plan: JetStreamPlan,
        *,
        name: str,
        prefix: str,
        subject: Callable[[bytes], str | None],
        context: zmq.Context[Any],
        base: str,
        max_size: int,
    ) -> None:
        self.plan = plan
        self._name, self._prefix, self._subject = name, prefix, subject
        self._context, self._base, self._max_size = context, base, max_size
        self._state = _State(
            counts={i.value: _Counts() for i in {*plan.exports, *plan.imports}},
            waiting={
                "streams",
                *(f"export {i.value}" for i in plan.exports),
                *(f"import {i.value}" for i in plan.imports),
            },
        )
        self._imported: OrderedDict[bytes, None] = OrderedDict()
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._decoder = Decoder()
        self._bells: dict[Instance, asyncio.Event] = {}
        self._gaps: dict[Instance, tuple[int, int]] = {}
        """Per imported instance, the last gap in the deliveries (expected, delivered)."""
        self._recovered: dict[Instance, set[bytes]] = {}
        """Per imported instance, digests of the bodies journaled since its mark (:meth:`_recover`)."""

    def snapshot(self) -> dict[str, Any]:
        """``stats.federation.jetstream``."""
        state = self._state
        instances = {
            name: {
                "exported": c.exported,
                "imported": c.imported,
                "export_lag": c.export_lag,
                "import_lag": c.import_lag,
                "cursor": c.cursor,
                "duplicates": c.duplicates,
                "echo": c.echo,
                "skipped_imports": c.skipped_imports,
                "lost": c.lost,
                "refused": c.refused,
                "journal_gaps": c.journal_gaps,
                "reordered": c.reordered,
            }
            for name, c in state.counts.items()
        }
        return {
            "state": state.state,  # a bridge exists only with a journaled instance to federate
            "last_error": next(iter(state.faults.values()), None),
            "faults": dict(state.faults),
            "exports": [i.value for i in self.plan.exports],
            "imports": [i.value for i in self.plan.imports],
            "replicas": self.plan.replicas,
            "exported": sum(c.exported for c in state.counts.values()),
            "imported": sum(c.imported for c in state.counts.values()),
            "lag": sum(c.import_lag + c.export_lag for c in state.counts.values()),
            "lost": sum(c.lost for c in state.counts.values()),
            "refused": dict(state.refused_by),
            "instances": instances,
        }

    def _fault(self, task: str, text: str) -> None:
        """``task`` is failing (logged when its reason changes); cleared by :meth:`_fine`."""
        if self._state.faults.get(task) != text:
            log.warning("federation: jetstream: %s: %s", task, text)
        self._state.faults[task] = text

    def _fine(self, task: str) -> None:
        self._state.waiting.discard(task)
        if self._state.faults.pop(task, None) is not None:
            log.info("federation: jetstream: %s works again", task)

    # -- the tasks -------------------------------------------------------------------------

    async def run(self, client: Client) -> None:
        """Set up the streams, then export and import until cancelled."""
        js = client.jetstream(timeout=ACK_TIMEOUT)
        actx = zmq.asyncio.Context.shadow(self._context.underlying)
        # one control client per task: a client has one request in flight at a time
        controls = [
            AsyncControlClient(self._base + "-control", context=actx, timeout=_CONTROL_TIMEOUT)
            for _ in range(len(self.plan.exports) + len(self.plan.imports))
        ]
        cursors = await self._cursors()
        bell = actx.socket(zmq.SUB)
        tasks: list[asyncio.Task[None]] = []
        try:
            bell.setsockopt(zmq.RCVHWM, 1000)  # a doorbell: a message dropped here is found by the next poll
            bell.setsockopt(zmq.LINGER, 0)
            for instance in self.plan.exports:
                bell.setsockopt(zmq.SUBSCRIBE, instance.prefix.encode())
                self._bells[instance] = asyncio.Event()
            bell.connect(self._base + "-backend")
            await self._streams(js)
            tasks.append(asyncio.create_task(self._ring(bell)))
            exports = zip(self.plan.exports, controls, strict=False)
            imports = zip(self.plan.imports, controls[len(self.plan.exports) :], strict=True)
            tasks += [asyncio.create_task(self._export(js, control, cursors, i)) for i, control in exports]
            tasks += [asyncio.create_task(self._import(js, control, cursors, i)) for i, control in imports]
            tasks.append(asyncio.create_task(self._measure(js)))
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            bell.close(linger=0)
            for control in controls:
                await control.aclose()
            cursors.close()

    async def _cursors(self) -> Cursors:
        for attempt in range(1_000_000):
            try:
                cursors = Cursors(self.plan.data_dir)
            except (OSError, sqlite3.Error) as exc:
                self._fault("cursors", f"cannot open {Path(self.plan.data_dir) / DB_NAME}: {exc}")
                await asyncio.sleep(_backoff(attempt))
            else:
                self._fine("cursors")
                return cursors
        raise AssertionError("unreachable")

    async def _streams(self, js: JetStreamContext) -> None:
        """Find or create every stream (retried until JetStream answers: a cluster electing its
        leader, or a server without JetStream, is a degraded state, not a failure)."""
        plan = self.plan
        pending = list(dict.fromkeys([*plan.exports, *plan.imports]))
        for attempt in range(1_000_000):
            try:
                while pending:
                    await self._stream(js, pending[0])
                    pending.pop(0)
                self._fine("streams")
                return
            except (nats.errors.Error, OSError, TimeoutError) as exc:
                if isinstance(
                    exc,
                    nats.errors.NoRespondersError
                    | nats.js.errors.NoStreamResponseError
                    | nats.js.errors.ServiceUnavailableError,
                ):
                    self._fault(
                        "streams", "JetStream is not enabled on the NATS server: journaled instances are not federated"
                    )
                elif isinstance(exc, nats.js.errors.APIError) and exc.err_code == _NO_ROOM:
                    self._fault(
                        "streams",
                        f"stream {stream_name(pending[0])}: {one_line(exc)}: lower stream_max_bytes "
                        f"({self.plan.max_bytes}) or replicas ({self.plan.replicas}), or give the servers more "
                        "max_file_store",
                    )
                else:
                    self._fault("streams", f"stream {stream_name(pending[0])}: {one_line(exc)}")
                # a JetStream just started answers "unavailable" for a moment: ask again soon
                await asyncio.sleep(min(0.2 * 2 ** min(attempt, 5), 5.0))

    async def _stream(self, js: JetStreamContext, instance: Instance) -> None:
        name = stream_name(instance)
        try:
            await js.stream_info(name)
            return
        except nats.js.errors.NotFoundError:
            pass
        config = StreamConfig(
            name=name,
            subjects=stream_subjects(self._prefix, instance),
            storage=StorageType.FILE,
            num_replicas=self.plan.replicas,
            max_bytes=self.plan.max_bytes,
            max_age=self.plan.max_age or None,
            discard=DiscardPolicy.OLD,
            duplicate_window=DUPLICATE_WINDOW,
        )
        await js.add_stream(config)
        log.info("federation: created stream %s (%d replica(s))", name, self.plan.replicas)

    async def _ring(self, bell: zmq.asyncio.Socket) -> None:
        bells = [(instance.prefix.encode(), event) for instance, event in self._bells.items()]
        for _ in iter(int, 1):  # until cancelled
            frames = await bell.recv_multipart()
            for prefix, event in bells:
                if frames[0].startswith(prefix):
                    event.set()

    async def _measure(self, js: JetStreamContext) -> None:
        """Every :data:`_LAG_EVERY` seconds: each consumer's lag (messages not yet acknowledged)."""
        for _ in iter(int, 1):
            await asyncio.sleep(_LAG_EVERY)
            for instance in self.plan.imports:
                with contextlib.suppress(nats.errors.Error, OSError, TimeoutError):
                    info = await js.consumer_info(stream_name(instance), self._durable)
                    self._state.counts[instance.value].import_lag = (info.num_pending or 0) + (
                        info.num_ack_pending or 0
                    )

    @property
    def _durable(self) -> str:
        return f"exesdb-{escape_token(self._name).replace('.', '_')}"

    # -- export ----------------------------------------------------------------------------

    async def _export(
        self, js: JetStreamContext, control: AsyncControlClient, cursors: Cursors, instance: Instance
    ) -> None:
        counts = self._state.counts[instance.value]
        bell = self._bells[instance]
        cursor: int | None = None
        for attempt in range(1_000_000_000):
            try:
                if cursor is None:
                    cursor = cursors.get(instance)
                    if cursor is None:  # a first start: what is journaled from now on
                        cursor = await _head(control, instance)
                        cursors.set(instance, cursor)
                    counts.cursor = cursor
                cursor = await self._export_pages(js, control, cursors, instance, cursor)
                self._fine(f"export {instance.value}")
                attempt = 0
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(bell.wait(), _POLL)
                bell.clear()
            except _PASSING as exc:
                self._fault(f"export {instance.value}", one_line(exc))
                await asyncio.sleep(_backoff(attempt))

    async def _export_pages(
        self, js: JetStreamContext, control: AsyncControlClient, cursors: Cursors, instance: Instance, cursor: int
    ) -> int:
        counts = self._state.counts[instance.value]
        sync = True
        for _ in range(1_000_000):
            records, following, reply = await _page(control, instance, cursor, sync=sync)
            sync = False
            first = reply.get("first")
            if type(first) is int and first > cursor + 1:
                counts.lost += first - cursor - 1  # trimmed by retention before it was exported
            futures: list[asyncio.Future[Any]] = []
            for record in records:
                future = await self._publish(js, instance, counts, record[0], record[2], record[3])
                if future is not None:
                    futures.append(future)
            if futures:
                await self._acknowledged(futures, counts)
            cursor = max(cursor, following - 1)
            cursors.set(instance, cursor)
            counts.cursor = cursor
            last = reply.get("last")
            counts.export_lag = max(0, last - cursor) if type(last) is int else 0
            if not reply.get("more"):
                return cursor
        return cursor

    async def _publish(
        self, js: JetStreamContext, instance: Instance, counts: _Counts, seq: int, topic: Any, body: Any
    ) -> asyncio.Future[Any] | None:
        if not isinstance(topic, str) or not isinstance(body, bytes):
            return None
        if topic == JOURNAL_GAP_TOPIC:
            counts.journal_gaps += 1  # messages this broker's journal never recorded: not there to export
            return None
        if body in self._imported:
            del self._imported[body]
            counts.skipped_imports += 1  # taken from the federation: exported by the broker it came from
            return None
        raw = topic.encode()
        target = self._subject(raw)
        if target is None:
            return None
        try:
            _, pub, first, _ = self._decoder.inspect([raw, body])
        except ProtocolError:
            pub, first = "", 0
        msg_id = f"{pub}:{topic}:{first}" if pub and first > 0 else f"{self._name}:{instance.value}:{seq}"
        headers = {
            MSG_ID_HEADER: msg_id,
            TOPIC_HEADER: topic_header(topic),
            ORIGIN_HEADER: self._name,
        }
        return await js.publish_async(
            target, body, wait_stall=ACK_TIMEOUT, stream=stream_name(instance), headers=headers
        )

    async def _acknowledged(self, futures: list[asyncio.Future[Any]], counts: _Counts) -> None:
        """Wait for every acknowledgement of a page; a refusal or a timeout raises (the page is
        exported again: the stream drops what it has by ``Nats-Msg-Id``)."""
        done, pending = await asyncio.wait(futures, timeout=ACK_TIMEOUT)
        for future in pending:
            future.cancel()  # gives its slot back to nats-py's window
        self._note_reordered(futures, counts)
        if pending:
            raise TimeoutError(f"no acknowledgement from JetStream in {ACK_TIMEOUT:g} s ({len(pending)} outstanding)")
        for future in done:
            error = future.exception()
            if error is not None:
                raise error
            if future.result().duplicate:
                counts.duplicates += 1
            else:
                counts.exported += 1

    @staticmethod
    def _note_reordered(futures: list[asyncio.Future[Any]], counts: _Counts) -> None:
        """Count the messages of a page that will reach the stream after later ones of it.

        nats-py keeps what it had not yet written when a connection drops and sends it on the
        next one, while what was on the wire is lost: when a NATS server dies mid-page, a later
        message can be stored and an earlier one not. The page is published again, in order,
        and the stream drops what it has, so nothing is lost or doubled, but the earlier ones
        land after it: counted (``reordered``) and logged, as no publisher can take a message
        out of a stream again. One stored whose acknowledgement was lost counts too: the count
        is an upper bound."""
        stored = [f.done() and not f.cancelled() and f.exception() is None for f in futures]
        last = max((i for i, ok in enumerate(stored) if ok), default=0)
        behind = stored[:last].count(False)
        if behind:
            counts.reordered += behind
            log.warning(
                "federation: %d journaled message(s) reach JetStream after later ones of their page "
                "(a NATS connection dropped mid-page); none lost",
                behind,
            )

    # -- import ----------------------------------------------------------------------------

    async def _import(
        self, js: JetStreamContext, control: AsyncControlClient, cursors: Cursors, instance: Instance
    ) -> None:
        counts = self._state.counts[instance.value]
        stream, durable = stream_name(instance), self._durable
        for attempt in range(1_000_000_000):
            try:
                expected = await self._start(js, cursors, instance, counts)
                await self._recover(control, cursors, instance)
                subscription = await js.pull_subscribe_bind(durable=durable, stream=stream)
                self._fine(f"import {instance.value}")
                attempt = 0
                for _ in iter(int, 1):
                    try:
                        messages = await subscription.fetch(FETCH, timeout=_POLL)
                    except TimeoutError:  # nats-py's own, or asyncio's when the deadline runs out first
                        continue
                    expected, in_order = await self._take(control, cursors, instance, counts, messages, expected)
                    if not in_order:
                        break  # start again from the cursor
            except _PASSING as exc:
                self._fault(f"import {instance.value}", one_line(exc))
                await asyncio.sleep(_backoff(attempt))

    async def _start(self, js: JetStreamContext, cursors: Cursors, instance: Instance, counts: _Counts) -> int:
        """(Re)create this broker's consumer so that it delivers from the import cursor on, and
        return the stream sequence number expected next. The cursor (``federation.db``), not the
        consumer's acknowledgements, says what is committed: a delivery lost on the way (a NATS
        server dying under it) or a commit that failed starts the consumer again there, so the
        journal takes the stream in its order, with nothing skipped."""
        stream, durable = stream_name(instance), self._durable
        cursor = cursors.get(instance, IMPORT)
        info: ConsumerInfo | None = None
        with contextlib.suppress(nats.js.errors.NotFoundError):
            info = await js.consumer_info(stream, durable)
        if cursor is None and info is None:  # a first start: what is published from now on
            info = await js.add_consumer(stream, self._consumer_config(DeliverPolicy.NEW))
            start = (info.delivered.stream_seq if info.delivered is not None else 0) + 1
            cursors.set(instance, start - 1, IMPORT)
            return start
        if cursor is None:  # a consumer from before the cursor was kept: what it acknowledged
            assert info is not None
            cursor = info.ack_floor.stream_seq if info.ack_floor is not None else 0
        start = cursor + 1
        first = (await js.stream_info(stream)).state.first_seq
        if first > start:
            counts.lost += first - start  # discarded by the stream's limits before this broker read them
            start = first
        if info is not None:
            await js.delete_consumer(stream, durable)
        await js.add_consumer(stream, self._consumer_config(DeliverPolicy.BY_START_SEQUENCE, start))
        return start

    async def _recover(self, control: AsyncControlClient, cursors: Cursors, instance: Instance) -> None:
        """With a mark kept (a broker killed between a commit and its cursor, or a commit whose
        outcome is unknown), read back what the journal took since the mark: a message among
        those, delivered again, is known and not committed twice."""
        after = cursors.get(instance, PENDING)
        if after is None:
            self._recovered.pop(instance, None)
            return
        found: set[bytes] = set()
        for _ in range(_RECOVER_LIMIT // _PAGE):
            records, following, reply = await _page(control, instance, after)
            found.update(_digest(record[3]) for record in records if isinstance(record[3], bytes))
            after = max(after, following - 1)
            if not reply.get("more"):
                break
        else:
            log.warning(
                "federation: jetstream: import %s: more than %d records to read back", instance.value, _RECOVER_LIMIT
            )
        self._recovered[instance] = found

    def _consumer_config(self, policy: DeliverPolicy, start: int | None = None) -> ConsumerConfig:
        return ConsumerConfig(
            durable_name=self._durable,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=policy,
            opt_start_seq=start,
            max_ack_pending=MAX_ACK_PENDING,
            ack_wait=ACK_WAIT,
        )

    async def _take(
        self,
        control: AsyncControlClient,
        cursors: Cursors,
        instance: Instance,
        counts: _Counts,
        messages: list[Msg],
        expected: int,
    ) -> tuple[int, bool]:
        """Commit a fetched batch to the journal in stream order, pipelined (one group commit for
        many), then move the import cursor and acknowledge. Returns the sequence number expected
        next and whether the batch was taken in order (false: a gap in the deliveries, or a
        commit that failed; the caller starts the consumer again from the cursor)."""
        screened: list[tuple[Msg, str, bytes | None]] = []  # (message, verdict, topic to commit)
        in_order = True
        for msg in messages:
            seq = msg.metadata.sequence.stream
            if seq < expected:  # delivered again, taken already
                counts.duplicates += 1
                screened.append((msg, "done", None))
                continue
            if seq > expected:
                if self._gaps.get(instance) != (expected, seq):  # delivered and lost on the way: again
                    self._gaps[instance] = (expected, seq)
                    in_order = False
                    break
                counts.lost += seq - expected  # twice from the same place: not in the stream any more
                expected = seq
            self._gaps.pop(instance, None)
            screened.append((msg, *self._screen(instance, counts, msg)))
            expected += 1
        wanted = [(topic, msg.data) for msg, verdict, topic in screened if topic is not None]
        for _, body in wanted:
            self._remember(self._imported, body, IMPORTED_LIMIT)
        if wanted:  # a kill -9 from here until the cursor moves leaves the mark: see _recover
            high = max(msg.metadata.sequence.stream for msg, _, topic in screened if topic is not None)
            cursors.mark(instance, await _head(control, instance), high)
        outcomes = iter(await control.commit_many(wanted, window=FETCH) if wanted else [])
        verdicts: list[tuple[Msg, str]] = []
        for msg, verdict, topic in screened:
            if topic is not None:
                verdict = self._outcome(instance, counts, msg, next(outcomes))
            if verdict == "retry" and in_order:
                in_order = False
                expected = msg.metadata.sequence.stream  # from here again, once the journal commits
            verdicts.append((msg, verdict))
        if cursors.settle(instance, expected - 1):
            self._recovered.pop(instance, None)
        for msg, verdict in verdicts:
            with contextlib.suppress(nats.errors.Error):  # the cursor holds; the consumer starts from it
                if verdict == "refused":
                    await msg.term()
                elif verdict != "retry":
                    await msg.ack()
        if in_order:
            self._fine(f"import {instance.value}")
        elif any(verdict == "retry" for _, verdict in verdicts):
            await asyncio.sleep(_COMMIT_RETRY)
        return expected, in_order

    def _screen(self, instance: Instance, counts: _Counts, msg: Msg) -> tuple[str, bytes | None]:
        """What to do with a message before any commit: ``("commit", topic)``, or a verdict."""
        headers = msg.headers or {}
        if headers.get(ORIGIN_HEADER) == self._name:
            counts.echo += 1
            return "done", None
        msg_id = headers.get(MSG_ID_HEADER, "")
        recovered = self._recovered.get(instance)
        if (msg_id and msg_id in self._seen) or (recovered and _digest(msg.data) in recovered):
            counts.duplicates += 1
            return "done", None
        try:
            topic = topic_of_header(headers.get(TOPIC_HEADER, ""))
            text, _, _, _ = self._decoder.inspect([topic, msg.data])
            if Instance.resolve(text.partition("/")[0]) is not instance or len(msg.data) > self._max_size:
                raise ProtocolError("wrong_instance", "not a message of this stream's instance")
        except (UnicodeError, ProtocolError, ValueError):
            return self._refused(counts, "bad_message"), None
        return "commit", topic

    def _outcome(self, instance: Instance, counts: _Counts, msg: Msg, result: int | ControlError) -> str:
        """The verdict for a message from its commit's result (a message committed after one
        that failed is kept: delivered again, it is known by its id)."""
        if isinstance(result, int):
            counts.imported += 1
            msg_id = (msg.headers or {}).get(MSG_ID_HEADER, "")
            if msg_id:
                self._remember(self._seen, msg_id, _SEEN_LIMIT)
            return "done"
        self._imported.pop(msg.data, None)
        if result.code in _REFUSED_CODES:
            return self._refused(counts, result.code)
        # journal_unavailable, commit_failed, or unanswered (then it may be committed: a second copy)
        self._fault(f"import {instance.value}", f"the journal cannot commit: {result}")
        return "retry"

    def _refused(self, counts: _Counts, reason: str) -> str:
        counts.refused += 1
        self._state.refused_by[reason] += 1
        return "refused"

    @staticmethod
    def _remember(kept: OrderedDict[Any, None], key: Any, limit: int) -> None:
        kept[key] = None
        if len(kept) > limit:
            kept.popitem(last=False)
