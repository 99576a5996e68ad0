"""The synchronous subscriber, and the decoding core it shares with the asyncio one."""

from __future__ import annotations

import fnmatch
import logging
import re
import secrets
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Final, Generic, Self, TypeVar

import msgspec
import zmq

from ._flows import (
    Flow,
    InClass,
    ReadHeld,
    Receive,
    Reconnect,
    Request,
    Settle,
    Step,
    Subscribe,
    Unsubscribe,
    WaitReady,
    probe,
    probe_any,
    receive,
    run,
    subscribe_durable,
)
from ._frames import frame_recv, recv_frames, recv_rest
from ._owner import ControlLink, Owner, S, SocketOwner
from .classes import PrivilegeClass, class_of, decode_classes
from .control import DEFAULT_CONTROL_TIMEOUT, ControlClient
from .curve import KeyPath, resolve_client_keys
from .durable import (
    JOURNAL_GAP_TOPIC,
    JOURNAL_GAP_TYPE,
    CatchUp,
    ReplayFrom,
    journal_gap,
    last_frames,
)
from .endpoints import DEFAULT_BACKEND, ENV_BACKEND, Endpoints, Rotation, resolve_endpoints
from .errors import AuthenticationError, ProtocolError, ReceiveTimeoutError
from .instances import Instance
from .messages import registry
from .protocol import (
    PROBE_PREFIX,
    RESERVED_PREFIX,
    Decoder,
    GapTracker,
    Message,
    PayloadCounter,
    Unconverted,
    set_unconverted,
)
from .signing import resolve_secret

__all__ = [
    "DEFAULT_BATCH",
    "DEFAULT_SUBSCRIBE_TIMEOUT",
    "ErrorCallback",
    "GapCallback",
    "Subscriber",
    "SubscriberBase",
    "SubscriberStats",
]

DEFAULT_SUBSCRIBE_TIMEOUT: Final = 5.0
"""Seconds ``subscribe()`` waits for the broker to confirm the subscription."""
DEFAULT_RCVHWM: Final = 100_000
"""Messages queued for a subscriber before the broker drops for it (seen as gaps)."""

GapCallback = Callable[[Message, int], None]
"""Called with the message after a gap and how many messages are missing before it. For messages
the broker could not journal, met during a replay, the message is the journal's gap marker
(``type`` ``JournalGap``, ``data`` with ``instance``, ``missed``, ``since``, ``until``)."""
ErrorCallback = Callable[[ProtocolError, Sequence[bytes]], None]
"""Called with the error and the frames of a message that could not be decoded."""

_PROBE_BYTES: Final = PROBE_PREFIX.encode()
_JOURNAL_GAP: Final = JOURNAL_GAP_TOPIC.encode()
_RESERVED: Final = RESERVED_PREFIX.encode()
_NOBLOCK: Final = int(zmq.NOBLOCK)
_HORIZON_LIMIT: Final = 100_000
_HOLD_READ: Final = 100_000
_FAST_READS: Final = 1000
"""Messages ``recv`` reads without waiting before it falls back to its flow (probe echoes
and filtered messages give nothing to return)."""
_RECV_DRAIN: Final = 64
"""ZeroMQ messages ``recv`` reads and decodes together when nothing is pending: enough to
amortise the per-call work, few enough that the first one is not held back long."""
DEFAULT_BATCH: Final = 1000
"""Messages :meth:`Subscriber.recv_batch` returns at most, by default."""

C = TypeVar("C")
"""The control client type: :class:`ControlClient`, or the asyncio one."""
N = TypeVar("N")
"""What :meth:`SubscriberBase.subscribe` returns: ``None``, or (asyncio) a coroutine of it."""
M = TypeVar("M")
"""What :meth:`SubscriberBase.recv` returns: a message, or (asyncio) a coroutine of one."""
_GLOB_CHARS: Final = "*?["


@dataclass(frozen=True, slots=True)
class SubscriberStats:
    """A snapshot of a subscriber's counters."""

    received: int
    """Envelopes decoded (each item of a batch counts)."""
    gaps: int
    """Messages missing according to per (publisher, topic) sequence numbers."""
    decode_errors: int
    """Messages skipped because they did not follow the protocol."""
    pending: int
    """Decoded envelopes waiting to be read."""
    rejected: int = 0
    """Messages skipped because their signature was missing or wrong (with a secret only)."""
    invalid_payloads: int = 0
    """Envelopes of a catalogue type whose data did not fit it: delivered with ``payload`` None.
    Counted when the payload is read (it is built from ``data`` then), not on receipt."""
    duplicates: int = 0
    """Live envelopes skipped because a replay had delivered them already (the catch-up seam)."""
    replayed: int = 0
    """Envelopes delivered from the broker's journal or last values (included in ``received``)."""
    journal_gaps: int = 0
    """Messages the broker's journal could not record, met during a replay (its gap markers).
    Those from a sequenced publisher also show in ``gaps``, at the next replayed message."""
    resets: int = 0
    """Times a publisher's ``seq`` went back or jumped implausibly far on a topic (it started
    over, or the message is forged): counted here, not as gaps, and tracking goes on from it."""
    filtered: int = 0
    """Messages dropped because only a glob subscription's literal start matched their topic
    (see :class:`TopicFilter`): the cost of a wildcard."""
    failovers: int = 0
    """Times the broker went away and the subscriber subscribed at the next one (several
    brokers). Live messages the new broker sends again are skipped, counted in ``duplicates``."""


_STATS_FIELDS: Final = tuple(field.name for field in fields(SubscriberStats))
_MERGED_WAIT: Final = 1.0
"""Seconds a read over several sockets (a privilege class's too) waits at most per round."""
_MERGED_ROUNDS: Final = 1_000_000
_log: Final = logging.getLogger("exesdb_sdk")


def subscription_prefixes(instance: Instance | str | None, prefix: str) -> list[bytes]:
    """The ZeroMQ subscriptions for ``instance`` (``None``: all ten) narrowed by ``prefix``
    (a glob is subscribed by its literal start: see :class:`TopicFilter`)."""
    if instance is None:
        if prefix:
            raise ValueError("a prefix needs an instance")
        return [i.prefix.encode() for i in Instance]
    return [(Instance.resolve(instance).prefix + literal_prefix(prefix)).encode()]


def set_subscription(socket: zmq.Socket[Any] | None, step: Subscribe | Unsubscribe) -> None:
    """Carry out a flow's :class:`~._flows.Subscribe` or :class:`~._flows.Unsubscribe` (the
    same call on a sync and an asyncio socket); nothing once the socket is closed."""
    if socket is not None:
        socket.setsockopt(zmq.SUBSCRIBE if isinstance(step, Subscribe) else zmq.UNSUBSCRIBE, step.topic)


def literal_prefix(prefix: str) -> str:
    """The start of ``prefix`` before its first glob character (``*``, ``?``, ``[``)."""
    cut = min((i for i in (prefix.find(c) for c in _GLOB_CHARS) if i >= 0), default=len(prefix))
    return prefix[:cut]


class TopicFilter:
    """The topics a subscriber's subscriptions want, once one of them is a glob.

    ZeroMQ filters by prefix only, so a sub-topic glob (``node_health:*``, ``store_*:eu``,
    shell-style: ``*`` any characters, ``/`` included, ``?`` one, ``[...]`` a set) is
    subscribed by its literal start and the rest is matched here, on the topic bytes before
    decoding: what the broker sends that no subscription wants is dropped, counted in
    ``stats.filtered``. Without globs nothing is matched here.
    """

    __slots__ = ("_globs", "_plain", "_wanted", "active")

    def __init__(self) -> None:
        self._plain: Counter[bytes] = Counter()
        self._globs: Counter[tuple[bytes, str]] = Counter()
        self._wanted: re.Pattern[bytes] | None = None
        self.active = False
        """Whether a glob subscription is in place (messages are then matched)."""

    def add(self, instance: Instance | str | None, prefix: str) -> None:
        self._change(instance, prefix, 1)

    def remove(self, instance: Instance | str | None, prefix: str) -> None:
        self._change(instance, prefix, -1)

    def wants(self, topic: bytes) -> bool:
        """Whether some subscription wants ``topic`` (only meaningful while :attr:`active`)."""
        wanted = self._wanted
        return wanted is None or wanted.match(topic) is not None

    def _change(self, instance: Instance | str | None, prefix: str, by: int) -> None:
        glob = literal_prefix(prefix) != prefix
        for topic in subscription_prefixes(instance, "" if glob else prefix):
            if glob:
                self._globs[(topic, prefix)] += by
            else:
                self._plain[topic] += by
        self._plain = +self._plain  # drops what fell to zero
        self._globs = +self._globs
        self.active = bool(self._globs)
        if not self._globs:
            self._wanted = None
            return
        parts = [re.escape(topic) for topic in self._plain]
        parts += [re.escape(topic) + fnmatch.translate(glob).encode() for topic, glob in self._globs]
        self._wanted = re.compile(b"|".join(b"(?:" + part + b")" for part in parts), re.DOTALL)


class SubscriberCore:
    """Decoding, gap counting and probe handling, independent of how frames are received."""

    __slots__ = (
        "_decoder",
        "_gaps",
        "_payloads",
        "_types",
        "_unconverted",
        "acked",
        "catchups",
        "classes",
        "decode_errors",
        "duplicates",
        "failover_timeout",
        "failovers",
        "filtered",
        "held",
        "held_keys",
        "held_scanned",
        "horizon",
        "journal_gaps",
        "near",
        "on_error",
        "on_gap",
        "pending",
        "received",
        "rejected",
        "replayed",
        "rotation",
        "topics",
    )

    def __init__(
        self,
        on_gap: GapCallback | None,
        on_error: ErrorCallback | None,
        *,
        secret: str | bytes | None = None,
        typed: bool = True,
    ) -> None:
        self._decoder = Decoder(resolve_secret(secret))
        self._gaps = GapTracker()
        self._types = registry() if typed else {}
        self._payloads = PayloadCounter()
        self._unconverted: dict[str, Unconverted] = {}
        """One per catalogue type met (so bounded by the catalogue): put in messages' payload slots."""
        self.pending: deque[Message] = deque()
        self.acked: set[str] = set()
        self.received = 0
        self.decode_errors = 0
        self.rejected = 0
        self.on_gap = on_gap
        self.on_error = on_error
        self.held: deque[Sequence[bytes]] | None = None
        """Live messages held back while a catch-up runs (``None``: not holding)."""
        self.held_keys: set[tuple[str, str, int]] = set()
        self.held_scanned = 0
        self.catchups: list[CatchUp] = []
        self.horizon: dict[tuple[str, str], int] = {}
        """Highest replayed ``seq`` per (pub, topic): live messages at or below it are duplicates."""
        self.duplicates = 0
        self.replayed = 0
        self.journal_gaps = 0
        self.topics = TopicFilter()
        self.filtered = 0
        self.rotation: Rotation | None = None
        """The brokers to fail over to (``None``: one broker only)."""
        self.failover_timeout = DEFAULT_SUBSCRIBE_TIMEOUT
        """Seconds each broker tried at a failover has to confirm the subscriptions."""
        self.failovers = 0
        self.near = ""
        """The backend in use, for a class endpoint bound on every interface (see :mod:`.classes`)."""
        self.classes: tuple[PrivilegeClass, ...] | None = None
        """The broker's privilege classes, learned from a ``ProbeAck`` (``None``: none seen yet).
        A class once learned is kept: a later echo cannot take it away (see :meth:`learn`)."""

    def learn(self, body: bytes, near: str) -> None:
        """Note the classes a ``ProbeAck`` body names (``near``: the backend it came from).

        Only an echo that names classes teaches anything, and only the first: an echo any
        publisher could forge (it sees probe subscriptions) cannot remove a class or move it."""
        if self.classes:
            return
        try:
            envelope = msgspec.msgpack.decode(body)
            data = envelope.get("data") if isinstance(envelope, dict) else None
            raw = data.get("classes", []) if isinstance(data, dict) else []
            self.classes = decode_classes(raw, near)
        except (msgspec.DecodeError, ProtocolError):
            self.decode_errors += 1

    def bridge(self) -> None:
        """Before subscribing at another broker: what it sends at or below the last ``seq`` seen
        per (pub, topic) was delivered already (the catch-up's horizon, reused), so it is skipped
        as a duplicate; past it, gaps count as before."""
        horizon = self.horizon
        seen = self._gaps._last  # the tracker's baseline per (pub, topic): the last seq delivered
        for key, seq in list(seen.items())[-_HORIZON_LIMIT:]:
            if seq > horizon.get(key, 0):
                if len(horizon) >= _HORIZON_LIMIT and key not in horizon:
                    del horizon[next(iter(horizon))]
                horizon[key] = seq

    @staticmethod
    def new_probe() -> tuple[str, bytes]:
        """A fresh probe token and the topic to subscribe to for it."""
        token = secrets.token_hex(8)
        return token, _PROBE_BYTES + token.encode()

    def take(self, frames: Sequence[bytes], replayed: bool = False) -> list[Message]:
        """Decode one received ZeroMQ message into its envelopes (marked ``replayed`` when
        they come from the journal), counting gaps on the way.

        Probe acks are noted in :attr:`acked`; malformed messages are counted and reported
        to ``on_error``. Both give an empty list.
        """
        messages = self._decode(frames)
        return self._finish(messages, replayed) if messages else messages

    def take_many(self, received: Sequence[Sequence[bytes]]) -> list[Message]:
        """:meth:`take` for several received messages at once: each is decoded (or skipped, as
        :meth:`take` skips it), then the envelopes of all are typed, admitted and counted for
        gaps in one pass, in order."""
        count = len(received)
        run = self._decoder.decode_run if not self.topics.active else None
        messages: list[Message] = []
        index = 0
        for _ in range(count):  # each pass takes at least one message
            if run is not None:  # the common ones in one call; the first it declines, here
                index = run(received, index, messages)
            if index >= count:
                break
            messages += self._decode(received[index])
            index += 1
        return self._finish(messages, False) if messages else messages

    def _decode(self, frames: Sequence[bytes]) -> list[Message]:
        """The envelopes of one received message, not yet typed nor counted; probe acks,
        filtered and malformed messages are noted and give an empty list."""
        if frames[0].startswith(_RESERVED):
            if frames[0].startswith(_PROBE_BYTES):
                self.acked.add(frames[0][len(_PROBE_BYTES) :].decode("ascii", "replace"))
                if len(frames) > 1 and not self.classes:
                    self.learn(frames[1], self.rotation.current if self.rotation is not None else self.near)
            return []
        if self.topics.active and not self.topics.wants(frames[0]):
            self.filtered += 1
            return []
        try:
            return self._decoder.decode(frames)
        except ProtocolError as exc:
            if exc.reason == "bad_signature":
                self.rejected += 1
            else:
                self.decode_errors += 1
            if self.on_error is not None:
                self.on_error(exc, frames)
            return []

    def _finish(self, messages: list[Message], replayed: bool) -> list[Message]:
        """Type, admit (the catch-up seam) and count decoded envelopes."""
        if replayed:
            for message in messages:
                message.replayed = True
        if self._types:  # each payload is built from data on first read (Message.payload)
            get, unconverted = self._unconverted.get, self._unconverted_for
            for message in messages:
                pending = get(message.type) or unconverted(message.type)
                if pending is not None:
                    set_unconverted(message, pending)
        if self.horizon:
            messages = self._admit(messages)
        self._gaps.observe_all(messages, self.on_gap)
        self.received += len(messages)
        return messages

    def _unconverted_for(self, type_name: str) -> Unconverted | None:
        """The payload slot's marker for a catalogue type (``None`` for any other type)."""
        cls = self._types.get(type_name)
        if cls is None:
            return None
        pending = self._unconverted[type_name] = Unconverted(cls, self._payloads)
        return pending

    @property
    def invalid_payloads(self) -> int:
        """Catalogue-type envelopes whose data did not fit their type, found as the payload was read."""
        return self._payloads.invalid

    def _admit(self, messages: list[Message]) -> list[Message]:
        """Drop live messages a replay delivered already; forget a key once live passes it."""
        horizon = self.horizon
        admitted = []
        for message in messages:
            key = (message.pub, message.topic)
            top = horizon.get(key)
            if top is not None and message.seq > 0:
                if message.seq <= top:
                    self.duplicates += 1
                    continue
                del horizon[key]
            admitted.append(message)
        return admitted

    def feed(self, frames: Sequence[bytes]) -> None:
        """Queue the envelopes of one received message for later reading (or hold them back
        while a catch-up runs)."""
        if self.held is not None and not frames[0].startswith(_RESERVED):
            self.held.append(frames)
            return
        self.pending.extend(self.take(frames))

    def take_replayed(self, frames: Sequence[bytes]) -> list[Message]:
        """Queue the envelopes of a journal record (or last value), marked ``replayed``. A gap
        marker (messages the broker could not journal) counts as a gap, reported to ``on_gap``."""
        if frames[0] == _JOURNAL_GAP:
            self._journal_gap(frames[1])
            return []
        messages = self.take(frames, replayed=True)
        horizon = self.horizon
        for message in messages:
            if message.seq > 0 and message.pub:
                key = (message.pub, message.topic)
                if message.seq > horizon.get(key, 0):
                    if len(horizon) >= _HORIZON_LIMIT and key not in horizon:
                        del horizon[next(iter(horizon))]
                    horizon[key] = message.seq
        self.replayed += len(messages)
        self.pending.extend(messages)
        return messages

    def _journal_gap(self, body: bytes) -> None:
        data = journal_gap(body)
        if data is None:
            self.decode_errors += 1
            return
        missed: int = data["missed"]
        self.journal_gaps += missed
        if self.on_gap is not None:
            marker = Message(type=JOURNAL_GAP_TYPE, data=data, topic=JOURNAL_GAP_TOPIC, replayed=True)
            self.on_gap(marker, missed)

    def overlaps(self, replayed: Sequence[Message]) -> bool:
        """Whether a replayed message (recorded as it came in live, not a durable publish) was
        also received live (and is held). From there on the live stream has every later record
        too, so the catch-up can stop paging: without this, a catch-up would never end while
        live traffic outpaces it."""
        held = self.held
        if not held or not replayed:
            return False
        keys = self.held_keys
        for index in range(self.held_scanned, len(held)):
            try:
                topic, pub, seq, _ = self._decoder.inspect(held[index])
            except ProtocolError:
                continue
            if pub and seq > 0:
                keys.add((pub, topic, seq))
        self.held_scanned = len(held)
        return any((m.pub, m.topic, m.seq) in keys for m in replayed)

    def hold(self, instance: Instance | str | None, prefix: str, replay_from: ReplayFrom | None) -> CatchUp | None:
        """Start a subscription with replay or last values: hold live messages back from now
        on; return the replay's cursor (``None`` for last values only)."""
        if instance is None:
            raise ValueError("replay_from and with_last need an instance")
        catchup = CatchUp(instance, prefix, replay_from) if replay_from is not None else None
        if self.held is None:
            self.held = deque()
        return catchup

    def take_last(self, reply: Mapping[str, Any]) -> None:
        """Queue the records of a ``last`` reply, marked ``replayed``."""
        for frames in last_frames(reply):
            self.take_replayed(frames)

    def take_page(self, catchup: CatchUp, reply: Mapping[str, Any]) -> None:
        """Queue one ``replay`` page of ``catchup`` (the first pending one); end that catch-up
        when it is done or has reached the live stream."""
        # Only a record that came in live can end the catch-up early: a durable one is recorded
        # before it is forwarded, so a record after it may have gone out before we subscribed.
        live_recorded: list[Message] = []
        for frames, durable in catchup.advance(reply):
            messages = self.take_replayed(frames)
            if not durable:
                live_recorded.extend(messages)
        if catchup.done or self.overlaps(live_recorded):
            self.catchups.pop(0)
            self.settle()

    def abandon(self, catchup: CatchUp | None) -> None:
        """A subscription's replay or last values failed: forget its catch-up."""
        if catchup is not None and catchup in self.catchups:
            self.catchups.remove(catchup)
        self.settle()

    def settle(self) -> None:
        """Release the held live messages once no catch-up is left."""
        if not self.catchups:
            self.release()

    def release(self) -> None:
        """End holding: the held live messages follow, without those already replayed."""
        held, self.held = self.held, None
        self.held_keys = set()
        self.held_scanned = 0
        for frames in held or ():
            self.pending.extend(self.take(frames))

    def stats(self) -> SubscriberStats:
        return SubscriberStats(
            self.received,
            self._gaps.gaps,
            self.decode_errors,
            len(self.pending),
            self.rejected,
            self.invalid_payloads,
            self.duplicates,
            self.replayed,
            self.journal_gaps,
            self._gaps.resets,
            self.filtered,
            self.failovers,
        )


class SubscriberBase(Owner[S], Generic[S, C, N, M]):
    """Receives envelopes from the broker's backend.

    ``backend`` defaults to ``$EXESDB_BACKEND``, else ``tcp://127.0.0.1:7101``; several brokers
    (a list, or endpoints separated by commas) make it subscribe at one at a time, the first
    first: when that broker goes away (the socket monitor reports the lost connection, seen while
    :meth:`recv` waits) it subscribes at the next (round robin; each has ``subscribe_timeout``
    to confirm, so a ``recv`` may wait that long per broker tried), logs a warning and counts
    it in ``stats.failovers`` (if none confirms, :meth:`recv` raises
    :class:`~exesdb_sdk.errors.BrokerUnavailableError` and stays with the first broker, which
    ZeroMQ keeps reconnecting to). From then on live messages at or below the last ``seq`` it
    delivered per (pub, topic) are skipped (``stats.duplicates``); what was lost shows in
    ``stats.gaps``. Subscribe to
    whole instances or to topic prefixes within one, then :meth:`recv` or iterate. Messages
    that do not follow the protocol are skipped and counted, never raised. ``on_gap`` and
    ``on_error`` are optional callbacks for sequence gaps and undecodable messages.
    ``subscribe(..., replay_from=..., with_last=...)`` asks the broker's control endpoint
    ``control`` (``$EXESDB_CONTROL``, else ``tcp://127.0.0.1:7102``) for its journal and last
    values, waiting up to ``control_timeout`` seconds for each reply. ``client_key`` and
    ``server_key`` (or ``$EXESDB_CLIENT_KEY`` / ``$EXESDB_SERVER_KEY``) turn on CURVE for both,
    as for :class:`~exesdb_sdk.Publisher`. Use from one thread only.

    Every method is the same in :class:`Subscriber` and :class:`~exesdb_sdk.AsyncSubscriber`,
    whose methods are awaited (``N`` and ``M`` are their results: ``None`` and a message, or
    coroutines of them).
    """

    _what = "subscriber"
    _control_type: ClassVar[type[Any]]

    def __init__(
        self,
        backend: Endpoints | None = None,
        *,
        hwm: int = DEFAULT_RCVHWM,
        subscribe_timeout: float = DEFAULT_SUBSCRIBE_TIMEOUT,
        on_gap: GapCallback | None = None,
        on_error: ErrorCallback | None = None,
        secret: str | bytes | None = None,
        typed: bool = True,
        control: str | None = None,
        control_timeout: float = DEFAULT_CONTROL_TIMEOUT,
        context: zmq.Context[S] | None = None,
        client_key: KeyPath | None = None,
        server_key: KeyPath | None = None,
    ) -> None:
        self._rotation = Rotation(resolve_endpoints(backend, ENV_BACKEND, DEFAULT_BACKEND, "backend"))
        self.subscribe_timeout = subscribe_timeout
        self._core = SubscriberCore(on_gap, on_error, secret=secret, typed=typed)
        if self._rotation.several:
            self._core.rotation = self._rotation
            self._core.failover_timeout = subscribe_timeout
        super().__init__(zmq.SUB, context, resolve_client_keys(client_key, server_key))
        keys = (client_key, server_key)
        self._control: ControlLink[C] = ControlLink(self._control_type, control, control_timeout, self._context, keys)
        self._core.near = self.backend
        self._options: dict[str, Any] = {
            "hwm": hwm,
            "subscribe_timeout": subscribe_timeout,
            "on_gap": on_gap,
            "on_error": on_error,
            "secret": secret,
            "typed": typed,
            "control": control,
            "control_timeout": control_timeout,
            "client_key": client_key,
            "server_key": server_key,
        }
        """What a subscriber at a privilege class's backend is made with (see :mod:`.classes`)."""
        self.skipped: list[Instance] = []
        """Instances a subscription to every instance left out: their class refused this key."""
        self._unrouted: list[tuple[Instance | str | None, str]] = []
        """Subscriptions made before the broker named its classes (moved by :meth:`wait_ready`)."""
        self._classes: dict[str, Self] = {}
        """The subscriber kept at each privilege class's backend subscribed to."""
        self._turn = 0
        socket = self._live()
        socket.setsockopt(zmq.RCVHWM, hwm)
        socket.setsockopt(zmq.LINGER, 0)
        socket.connect(self.backend)

    @property
    def backend(self) -> str:
        """The broker backend this subscriber is connected to now."""
        return self._rotation.current

    @property
    def backends(self) -> tuple[str, ...]:
        """Every broker backend it may use, in failover order."""
        return self._rotation.endpoints

    def _tracks_disconnects(self) -> bool:
        return self._rotation.several

    def _drive(self, flow: Flow[Any]) -> Any:
        """Run ``flow`` with this subscriber's I/O (the result, or a coroutine of it)."""
        raise NotImplementedError

    def _now(self, message: Message) -> M:
        """``message`` as :meth:`recv` returns it."""
        raise NotImplementedError

    @property
    def stats(self) -> SubscriberStats:
        """Counters since this subscriber was created (its class subscribers' included)."""
        mine = self._core.stats()
        if not self._classes:
            return mine
        parts = [mine, *(inner.stats for inner in self._classes.values())]
        return SubscriberStats(**{name: sum(getattr(part, name) for part in parts) for name in _STATS_FIELDS})

    def subscribe(
        self,
        instance: Instance | str | None = None,
        prefix: str = "",
        *,
        wait: bool = True,
        timeout: float | None = None,
        replay_from: ReplayFrom | None = None,
        with_last: bool = False,
    ) -> N:
        """Subscribe to ``instance`` (``None``: all ten), narrowed to sub-topics starting with ``prefix``.

        With ``wait`` (the default) it returns once the broker has confirmed the
        subscription, so a message published after that reaches this subscriber; if the
        broker does not confirm within ``timeout`` (default ``subscribe_timeout``) it raises
        :class:`~exesdb_sdk.errors.BrokerUnavailableError`, or
        :class:`~exesdb_sdk.errors.AuthenticationError` when the broker refused this client.

        ``replay_from`` (a broker sequence number, an aware ``datetime``, a ``timedelta`` ago,
        or ``"earliest"``) catches up from the broker's journal first: it subscribes live,
        then :meth:`recv` yields the journal's records from there up to now, then the live
        messages, with no gap and no duplicate at the seam (live messages a replay delivered
        already are skipped by (pub, topic, seq), counted in ``stats.duplicates``). The first
        page is fetched here, so a journal error raises
        :class:`~exesdb_sdk.errors.DurabilityError` now. ``with_last`` first yields the
        broker's last message of each last-value topic under the prefix (e.g. the latest
        ``HealthSummary`` per store). Such messages have ``replayed`` set.

        A restricted instance (docs/protocol.md 12.1) is subscribed to at its class's backend,
        which the broker names in its probe echo (the first subscription that waits asks
        first). A key the class refuses raises :class:`~exesdb_sdk.errors.AuthenticationError`
        ("key ... may not subscribe to ex_esdb_security"); a subscription to every instance
        leaves such instances out instead, logs a warning and lists them in :attr:`skipped`.
        """
        self._live()
        result: N = self._drive(self._subscribe_flow(instance, prefix, wait, timeout, replay_from, with_last))
        return result

    def _subscribe_flow(
        self,
        instance: Instance | str | None,
        prefix: str,
        wait: bool,
        timeout: float | None,
        replay_from: ReplayFrom | None,
        with_last: bool,
    ) -> Flow[None]:
        """:meth:`subscribe`, routed: a restricted instance at its class's backend (see
        :mod:`.classes`), whose classes the first subscription that waits asks for first."""
        if (replay_from is not None or with_last) and instance is None:
            raise ValueError("replay_from and with_last need an instance")
        core = self._core
        if wait and core.classes is None:
            yield from self._probe(timeout)
        if core.classes is None:  # put right by the next wait_ready, once the broker has told
            self._unrouted.append((instance, prefix))
        classes = core.classes or ()
        target = None if instance is None else Instance.resolve(instance)
        if not classes or (target is not None and class_of(classes, target) is None):
            yield from self._subscribe_here(instance, prefix, wait, timeout, replay_from, with_last)
            return
        if prefix and target is None:
            raise ValueError("a prefix needs an instance")
        refusing: set[str] = set()
        for each in [target] if target is not None else list(Instance):
            cls = class_of(classes, each)
            if cls is None:
                yield from self._subscribe_here(each, "", False, timeout, None, False)
                continue
            try:
                if cls.backend in refusing:  # one handshake per class tells: the key is not in its list
                    raise AuthenticationError(cls.backend, "refused")
                yield InClass(cls.backend, each, prefix, wait, timeout, replay_from, with_last)
            except AuthenticationError as exc:
                refusing.add(cls.backend)
                refused = AuthenticationError(exc.endpoint, f"{self._key} may not subscribe to {each.value}")
                if target is not None:
                    raise refused from None
                self.skipped.append(each)
                _log.warning("exesdb subscriber: %s; subscribed to every other instance", refused)
        if target is None and wait:
            yield from self._probe(timeout)

    def _subscribe_here(
        self,
        instance: Instance | str | None,
        prefix: str,
        wait: bool,
        timeout: float | None,
        replay_from: ReplayFrom | None,
        with_last: bool,
    ) -> Flow[None]:
        """A subscription at this subscriber's own backend."""
        for topic in subscription_prefixes(instance, prefix):
            yield Subscribe(topic)
        self._core.topics.add(instance, prefix)
        if replay_from is not None or with_last:
            yield from subscribe_durable(self._core, instance, literal_prefix(prefix), replay_from, with_last, timeout)
        elif wait:
            yield from self._probe(timeout)

    def unsubscribe(self, instance: Instance | str | None = None, prefix: str = "") -> N:
        """Undo a :meth:`subscribe` with the same arguments."""
        self._live()
        result: N = self._drive(self._unsubscribe_flow(instance, prefix))
        return result

    def _unsubscribe_flow(self, instance: Instance | str | None, prefix: str) -> Flow[None]:
        classes = self._core.classes or ()
        if not classes:
            yield from self._unsubscribe_here(instance, prefix)
            return
        for each in [Instance.resolve(instance)] if instance is not None else list(Instance):
            cls = class_of(classes, each)
            if cls is None:
                yield from self._unsubscribe_here(each, prefix if instance is not None else "")
            elif each not in self.skipped:
                yield InClass(cls.backend, each, prefix, unsubscribe=True)

    def _unsubscribe_here(self, instance: Instance | str | None, prefix: str) -> Flow[None]:
        for topic in subscription_prefixes(instance, prefix):
            yield Unsubscribe(topic)
        self._core.topics.remove(instance, prefix)

    def wait_ready(self, timeout: float | None = None) -> N:
        """Return once the broker has applied every subscription made so far.

        It subscribes to a one-off probe topic, which the broker echoes; subscriptions
        travel in order, so the echo proves the earlier ones arrived. Messages received
        meanwhile are kept for :meth:`recv`. When the echo is the first to name the broker's
        privilege classes, the subscriptions made before without waiting move to them.
        """
        self._live()
        result: N = self._drive(self._ready_flow(timeout))
        return result

    def _ready_flow(self, timeout: float | None) -> Flow[None]:
        yield from self._probe(timeout)
        unrouted, self._unrouted = self._unrouted, []
        classes = self._core.classes
        for instance, prefix in unrouted if classes else ():
            if instance is None or class_of(classes or (), Instance.resolve(instance)) is not None:
                yield from self._unsubscribe_here(instance, prefix)
                yield from self._subscribe_flow(instance, prefix, True, timeout, None, False)

    def _in_class(self, step: InClass) -> N:
        """Carry out :class:`~._flows.InClass` with the subscriber kept at its backend."""
        inner = self._class_subscriber(step.backend)
        if step.unsubscribe:
            return inner.unsubscribe(step.instance, step.prefix)
        return inner.subscribe(
            step.instance,
            step.prefix,
            wait=step.wait,
            timeout=step.timeout,
            replay_from=step.replay_from,
            with_last=step.with_last,
        )

    def _class_subscriber(self, backend: str) -> Self:
        """The subscriber this one keeps at a class's ``backend`` (made on first use)."""
        inner = self._classes.get(backend)
        if inner is None:
            inner = self._classes[backend] = type(self)(backend, context=self._context, **self._options)
            inner._core.classes = ()  # it is at the class's backend already: no class to route to
        return inner

    def _readers(self) -> list[Self]:
        """This subscriber and those at class backends, the next to read first (fairness)."""
        readers = [self, *self._classes.values()]
        self._turn = (self._turn + 1) % len(readers)
        return readers[self._turn :] + readers[: self._turn]

    def _probe(self, timeout: float | None) -> Flow[None]:
        wait = self.subscribe_timeout if timeout is None else timeout
        if self._core.rotation is not None:
            return probe_any(self._core, self._core.rotation, wait)
        return probe(self._core, wait, self.backend)

    def recv(self, timeout: float | None = None) -> M:
        """The next message; waits up to ``timeout`` seconds (``None``: forever).

        Raises :class:`~exesdb_sdk.errors.ReceiveTimeoutError` when none arrives in time.
        """
        core = self._core
        pending = core.pending
        if not pending and not core.catchups:  # the fast path: what is queued already, without a flow
            self._drain(_RECV_DRAIN)
        if pending:
            return self._now(pending.popleft())
        result: M = self._drive(receive(core, timeout))
        return result

    def _drain(self, limit: int) -> None:
        """Read what the socket holds now into ``pending``: up to ``limit`` ZeroMQ messages at a
        time, decoded together, until one of them gives an envelope or the socket is empty (at
        most :data:`_FAST_READS` messages: probe echoes and filtered messages give nothing)."""
        core = self._core
        socket, take_many, pending, recv = self._live(), core.take_many, core.pending, frame_recv
        for _ in range(max(1, _FAST_READS // max(1, limit))):
            received: list[list[bytes]] = []
            for _ in range(limit):  # recv_frames inlined for [topic, body]: one call less a message
                try:
                    first = recv(socket, _NOBLOCK, False)
                except zmq.Again:
                    break
                if first.more:
                    second = recv(socket, 0, False)
                    frames = [first.bytes, second.bytes]
                    received.append(recv_rest(socket, frames) if second.more else frames)
                else:
                    received.append([first.bytes])
            if received:
                pending.extend(take_many(received))
            if pending or len(received) < limit:
                return

    def _batch(self, max_messages: int) -> list[Message]:
        """Up to ``max_messages`` of what is pending, or readable without waiting."""
        if max_messages < 1:
            raise ValueError(f"max_messages must be at least 1, not {max_messages!r}")
        core = self._core
        pending = core.pending
        if len(pending) < max_messages and not core.catchups:
            self._drain(min(max_messages, _FAST_READS))
        if len(pending) <= max_messages:
            batch = list(pending)
            pending.clear()
            return batch
        return [pending.popleft() for _ in range(max_messages)]

    def _read_held(self) -> None:
        """Carry out :class:`~._flows.ReadHeld`: what the socket holds now, into the core."""
        core, socket = self._core, self._live()
        for _ in range(_HOLD_READ):
            try:
                core.feed(recv_frames(socket, _NOBLOCK))
            except zmq.Again:
                break

    def _step_now(self, step: Step) -> Any:
        """Carry out a step that never waits (the same for both drivers)."""
        if isinstance(step, Subscribe | Unsubscribe):
            return set_subscription(self._socket, step)
        if isinstance(step, Reconnect):
            return self._switch(step.endpoint)
        if isinstance(step, Settle):
            return self._watch.settle()
        assert isinstance(step, ReadHeld)
        return self._read_held()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "connected"
        return f"<{type(self).__name__} {self.backend} {state}>"


class Subscriber(SubscriberBase[zmq.Socket[Any], ControlClient, None, Message], SocketOwner):
    """The synchronous subscriber (see :class:`SubscriberBase` for its arguments and methods).

    Example::

        with Subscriber() as sub:
            sub.subscribe("health")                      # all of ex_esdb_health
            sub.subscribe("metrics", "store_metrics:")   # a prefix within ex_esdb_metrics
            for message in sub.iter(timeout=10):
                print(message.topic, message.type, message.data)
    """

    _control_type = ControlClient

    def _drive(self, flow: Flow[Any]) -> Any:
        return run(flow, self._perform)

    def _merged(self, max_messages: int, timeout: float | None) -> list[Message]:
        """:meth:`recv_batch` over this subscriber and its class subscribers: what one of them
        has now, else a wait on all their sockets until one has something or ``timeout``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for _ in range(_MERGED_ROUNDS):
            for reader in self._readers():
                try:
                    return reader._own_batch(max_messages, 0)
                except ReceiveTimeoutError:
                    continue
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                break
            poller = zmq.Poller()
            for socket in [self._live(), *(inner._live() for inner in self._classes.values())]:
                poller.register(socket, zmq.POLLIN)
            wait = _MERGED_WAIT if remaining is None else min(remaining, _MERGED_WAIT)
            poller.poll(max(1, int(wait * 1000)))
        raise ReceiveTimeoutError(timeout or 0.0)

    def _now(self, message: Message) -> Message:
        return message

    def _perform(self, step: Step) -> Any:
        """Carry out one step of a flow (see :mod:`._flows`)."""
        if isinstance(step, WaitReady):
            return self.wait_ready(step.timeout)
        if isinstance(step, Request):
            return self._control.get().request(step.op, step.args, timeout=step.timeout)
        if isinstance(step, InClass):
            try:
                return self._in_class(step)
            except AuthenticationError:  # the class refuses this key: no retrying handshake left behind
                self._classes.pop(step.backend).close()
                raise
        if isinstance(step, Receive):
            socket, watch, wait_ms = self._live(), self._watch, max(1, int(step.timeout * 1000))
            ready = watch.wait(wait_ms) if step.watch or watch.armed else socket.poll(wait_ms)
            return recv_frames(socket) if ready else None
        return self._step_now(step)

    def recv(self, timeout: float | None = None) -> Message:
        """The next message; waits up to ``timeout`` seconds (``None``: forever).

        Raises :class:`~exesdb_sdk.errors.ReceiveTimeoutError` when none arrives in time.
        """
        pending = self._core.pending
        if pending:  # what SubscriberBase.recv does first for a pending message, without its calls
            return pending.popleft()
        if self._classes:
            first, *rest = self._merged(DEFAULT_BATCH, timeout)
            pending.extend(rest)  # kept in order for the next recv
            return first
        return super().recv(timeout)

    def recv_batch(self, max_messages: int = DEFAULT_BATCH, timeout: float | None = None) -> list[Message]:
        """Every message pending or queued at the socket now, up to ``max_messages``, in order,
        received and decoded together; when there is none, it waits up to ``timeout`` seconds
        (``None``: forever) for the first and returns it with whatever came with it.

        The messages are those :meth:`recv` would return one by one (typed payloads, gaps,
        the catch-up seam, wildcards and failover alike); what is left over stays pending.
        Raises :class:`~exesdb_sdk.errors.ReceiveTimeoutError` when none arrives in time.
        """
        if self._classes and not self._core.pending:
            return self._merged(max_messages, timeout)
        return self._own_batch(max_messages, timeout)

    def _own_batch(self, max_messages: int, timeout: float | None) -> list[Message]:
        """:meth:`recv_batch` from this subscriber's own socket only."""
        batch = self._batch(max_messages)
        if batch:
            return batch
        first: Message = self._drive(receive(self._core, timeout))
        return [first, *self._batch(max_messages - 1)] if max_messages > 1 else [first]

    def iter(self, timeout: float | None = None) -> Iterator[Message]:
        """Yield messages until none arrives for ``timeout`` seconds (``None``: forever).

        It reads in batches (:meth:`recv_batch`); what it has not yielded yet stays pending,
        so breaking out of the loop loses nothing."""
        pending = self._core.pending
        while True:
            if not pending:
                try:
                    pending.extend(self.recv_batch(DEFAULT_BATCH, timeout))
                except ReceiveTimeoutError:
                    return
            yield pending.popleft()

    def __iter__(self) -> Iterator[Message]:
        return self.iter()

    def _close(self, linger: float | None) -> None:
        control = self._control.take()
        if control is not None:
            control.close()
        inners, self._classes = self._classes, {}
        for inner in inners.values():
            inner.close()
        super()._close(linger)
