"""The synchronous publisher, and what it shares with the asyncio one (:mod:`.aio`)."""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Final, Generic, TypeAlias, TypeVar

import msgspec
import zmq
from zmq.backend import Socket as _Base

from ._flows import (
    CommitMany,
    Receive,
    Reconnect,
    Request,
    Settle,
    Step,
    connect_any,
    durable_publish,
    durable_publish_many,
    publisher_failover,
    run,
)
from ._frames import recv_frames, send_frames
from ._owner import ControlLink, Owner, S, SocketOwner
from .classes import PrivilegeClass, classes_from_subscription
from .control import DEFAULT_COMMIT_WINDOW, DEFAULT_CONTROL_TIMEOUT, ControlClient, check_window
from .curve import KeyPath, resolve_client_keys
from .endpoints import DEFAULT_FRONTEND, ENV_FRONTEND, Endpoints, Rotation, resolve_endpoints
from .errors import AuthenticationError, ConfigError, ControlError, ProtocolError, PublishTimeoutError, ValidationError
from .instances import Instance
from .messages.base import Payload, registry
from .protocol import DEFAULT_MAX_MESSAGE_SIZE, Encoder, default_node, join_bodies
from .signing import resolve_secret

__all__ = [
    "COALESCE_MAX_BYTES",
    "COALESCE_MAX_COUNT",
    "DEFAULT_COALESCE",
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_HWM",
    "DEFAULT_LINGER",
    "ENV_COALESCE",
    "Publisher",
    "PublisherBase",
    "PublisherStats",
]

DEFAULT_CONNECT_TIMEOUT: Final = 5.0
"""Seconds to wait for the broker's subscription before giving up."""
DEFAULT_SEND_TIMEOUT: Final = 5.0
"""Seconds a publish may wait while the broker's queue for this publisher is full."""
DEFAULT_LINGER: Final = 1.0
"""Seconds ``close()`` waits to flush messages not yet sent."""
DEFAULT_HWM: Final = 10_000
"""Messages queued per connection before a publish waits (or a subscriber's backlog drops)."""

DEFAULT_COALESCE: Final = 0.001
"""Seconds a publish may be held to travel with the next ones of its topic (see
:class:`PublisherBase`); 0 sends every publish on its own."""
ENV_COALESCE: Final = "EXESDB_COALESCE"
COALESCE_MAX_BYTES: Final = 64 * 1024
"""Bytes of bodies held at most (also never more than ``max_message_size``): then they go."""
COALESCE_MAX_COUNT: Final = 1024
"""Envelopes held at most: then they go."""
REFUSAL_HOLD: Final = 5.0
"""Seconds a privilege class's refusal of a publisher's key is given again without a new handshake."""

_DRAIN_EVERY: Final = 4096
_NOBLOCK: Final = int(zmq.NOBLOCK)
_CHECK_EVERY: Final = 0.01
"""Seconds between two looks at the disconnect monitor (several brokers only): a clock read
per publish, not a system call."""
_monotonic: Final = time.monotonic

DurableItem: TypeAlias = "Payload | tuple[Instance | str, str, str, Mapping[str, Any]]"
"""One message of :meth:`PublisherBase.publish_durable_many`: a typed payload (on its default
sub-topic), or ``(instance, subtopic, type, data)`` as for :meth:`PublisherBase.publish`."""

C = TypeVar("C")
"""The control client type: :class:`~exesdb_sdk.ControlClient`, or the asyncio one."""
R = TypeVar("R")
"""What a publish returns: an ``int``, or (asyncio) a coroutine of one."""


@dataclass(frozen=True, slots=True)
class PublisherStats:
    """A snapshot of a publisher's counters."""

    messages: int
    """Data messages sent (a batch counts once)."""
    envelopes: int
    """Envelopes sent (each item of a batch counts)."""
    bytes: int
    """Bytes of topic and body sent."""
    coalesced: int = 0
    """Envelopes that left together with others of their topic in one coalesced message."""
    held: int = 0
    """Envelopes held for coalescing right now (not yet sent)."""
    failovers: int = 0
    """Times the broker went away and the publisher moved to the next one (several brokers)."""
    possibly_lost: int = 0
    """Messages sent to brokers that then went away after the last look found them connected:
    they may not have reached the broker (the subscribers' gap counters tell exactly)."""


_send: Final = _Base.send
_NOBLOCK_MORE: Final = int(zmq.SNDMORE | zmq.NOBLOCK)


def send_frames_nowait(socket: zmq.Socket[Any], topic: bytes, body: bytes) -> bool:
    """Send ``[topic, body]`` if the queue takes it now; whether it did (on an asyncio socket
    too: the base class's call never returns a future)."""
    try:
        _send(socket, topic, _NOBLOCK_MORE)
    except zmq.Again:
        return False
    _send(socket, body, _NOBLOCK)  # the first frame was taken: the message is queued whole
    return True


def resolve_coalesce(coalesce: float | None) -> float:
    """The coalescing delay: ``coalesce``, else ``$EXESDB_COALESCE``, else
    :data:`DEFAULT_COALESCE`; seconds from 0 to 1. Raises :class:`~exesdb_sdk.errors.ConfigError`."""
    where = "coalesce"
    value: Any = coalesce
    if coalesce is None:
        raw = os.environ.get(ENV_COALESCE, "").strip()
        if not raw:
            return DEFAULT_COALESCE
        where = ENV_COALESCE
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(f"{where}={raw!r}: not a number of seconds") from None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise ConfigError(f"{where}: {value!r} is not a number of seconds from 0 to 1")
    return float(value)


def prepare_socket(socket: zmq.Socket[Any], *, hwm: int, send_timeout: float | None, linger: float) -> None:
    """Set the options every publisher socket uses: an XPUB that waits (never drops) when full."""
    socket.setsockopt(zmq.XPUB_NODROP, 1)
    socket.setsockopt(zmq.SNDHWM, hwm)
    socket.setsockopt(zmq.SNDTIMEO, -1 if send_timeout is None else int(send_timeout * 1000))
    socket.setsockopt(zmq.LINGER, int(linger * 1000))


def checked_data(type: str, data: Mapping[str, Any]) -> Mapping[str, Any]:
    """``data`` if it can be sent as an envelope of ``type``: a map, and for a catalogue type
    one that type accepts (as ``publish_message`` would). Raises
    :class:`~exesdb_sdk.errors.ValidationError` naming the field; a subscriber could not read it."""
    if data.__class__ is not dict:  # the common case first: an isinstance on an ABC costs more
        if isinstance(data, msgspec.Struct):  # a typed payload validated itself when it was built
            return data
        if not isinstance(data, Mapping):
            raise ValidationError(type, "data", f"must be a map, not {_type_name(data)}")
    cls = _REGISTRY.get(type)
    if cls is not None:
        cls.from_data(data)
    return data


_REGISTRY: Final = registry()


def _type_name(value: object) -> str:
    return "a list" if isinstance(value, list) else "None" if value is None else f"a {value.__class__.__name__}"


class PublisherCore:
    """What the synchronous and asyncio publishers share: the encoder and the counters."""

    _what = "publisher"

    def __init__(
        self,
        frontend: Endpoints | None,
        node: str | None,
        max_message_size: int,
        send_timeout: float | None,
        secret: str | bytes | None,
        coalesce: float | None = 0.0,
    ) -> None:
        self._coalesce = resolve_coalesce(coalesce)
        self._held_topic = b""
        self._held: list[bytes] = []
        self._held_bytes = 0
        self._held_at = 0.0
        self._called_at = -math.inf
        self._burst_gap = self._coalesce / 20
        self._max_held_bytes = min(COALESCE_MAX_BYTES, max_message_size)
        self._coalesced = 0
        self._rotation = Rotation(resolve_endpoints(frontend, ENV_FRONTEND, DEFAULT_FRONTEND, "frontend"))
        self._several = self._rotation.several
        self._check_at = 0.0
        self._checked = 0
        self._failovers = 0
        self._possibly_lost = 0
        self._encoder = Encoder(
            src=node or default_node(),
            max_message_size=max_message_size,
            secret=resolve_secret(secret),
        )
        self._send_timeout = send_timeout
        self._messages = 0
        self._envelopes = 0
        self._bytes = 0
        self._routes: dict[bytes, PrivilegeClass] = {}
        """Instance names (topic heads) of the broker's privilege classes, learned from its
        announcement (see :mod:`.classes`); empty: everything goes to the public frontend."""

    def _note(self, frames: list[bytes] | None) -> list[bytes] | None:
        """Learn the broker's privilege classes from a subscription message that announces
        them (the first announcement that names classes only: see :mod:`.classes`)."""
        if frames and not self._routes:
            try:
                found = classes_from_subscription(frames[0], self.frontend)
            except ProtocolError:
                found = None
            for cls in found or ():
                self._routes |= {instance.value.encode(): cls for instance in cls.instances}
        return frames

    @property
    def frontend(self) -> str:
        """The broker frontend this publisher is connected to now."""
        return self._rotation.current

    @property
    def frontends(self) -> tuple[str, ...]:
        """Every broker frontend it may use, in failover order."""
        return self._rotation.endpoints

    @property
    def rotation(self) -> Rotation:
        """The brokers and the one in use (the failover flow moves it on)."""
        return self._rotation

    def _lost_at_failover(self) -> int:
        """Count a failover and what was sent since the broker was last seen connected."""
        lost = self._messages - self._checked
        self._failovers += 1
        self._possibly_lost += lost
        self._checked = self._messages
        return lost

    @property
    def node(self) -> str:
        """The ``src`` of this publisher's envelopes."""
        return self._encoder.src

    @property
    def pub_id(self) -> str:
        """This publisher's random instance id (the envelopes' ``pub``)."""
        return self._encoder.pub

    @property
    def stats(self) -> PublisherStats:
        """Counters since this publisher connected."""
        return PublisherStats(
            self._messages,
            self._envelopes,
            self._bytes,
            self._coalesced,
            len(self._held),
            self._failovers,
            self._possibly_lost,
        )

    @property
    def coalesce(self) -> float:
        """Seconds a publish may be held to travel with the next ones of its topic (0: never)."""
        return self._coalesce

    def _coalesce_step(self, topic: bytes, body: bytes) -> list[tuple[bytes, bytes, int]]:
        """Take one encoded single-envelope publish: what must be sent now, in order (what was
        held, the publish itself, or nothing: it is held).

        Only a burst is held: a publish that comes within a twentieth of ``coalesce`` of the
        previous call (50 us by default; a loop of publishes is 2-5 us apart). One that comes
        later goes at once, with what is held of its topic, so a paced stream (5,000 msg/s is
        200 us apart) waits for nothing. What is held goes when the topic changes, a bound is
        reached, ``coalesce`` seconds after the first was held (here or by the timer), or with
        the next publish that ends the burst."""
        now = _monotonic()
        burst = now - self._called_at < self._burst_gap
        self._called_at = now
        held = self._held
        out: list[tuple[bytes, bytes, int]] = []
        if held:
            if topic != self._held_topic or self._held_bytes + len(body) > self._max_held_bytes:
                out.append(self._take_held())
            else:
                held.append(body)
                self._held_bytes += len(body)
                if not burst or len(held) >= COALESCE_MAX_COUNT or now - self._held_at >= self._coalesce:
                    out.append(self._take_held())
                return out
        if not burst:
            out.append((topic, body, 1))
            return out
        self._held_topic = topic
        self._held.append(body)  # a new list if the old one was just taken
        self._held_bytes = len(body)
        self._held_at = now
        self._arm()
        return out

    def _take_held(self) -> tuple[bytes, bytes, int]:
        """What is held, as one message (a batch of two or more), no longer held."""
        held = self._held
        count = len(held)
        if count > 1:
            self._coalesced += count
        message = (self._held_topic, join_bodies(held), count)
        self._held = []
        self._held_bytes = 0
        return message

    def _due(self) -> float | None:
        """When what is held must go (monotonic seconds), or ``None``: nothing is held."""
        return self._held_at + self._coalesce if self._held else None

    def _arm(self) -> None:
        """Something is held now: see that it goes within ``coalesce`` seconds (the driver's timer)."""
        raise NotImplementedError

    def _encode_one(
        self,
        instance: Instance | str,
        subtopic: str,
        type: str,
        data: Mapping[str, Any],
        corr: str | None,
        cause: str | None,
        trace: str | None,
    ) -> tuple[bytes, bytes, int]:
        """The topic, the body and the envelope count of one publish."""
        encoder = self._encoder
        topic = encoder.topic(instance, subtopic)
        if data.__class__ is not dict or type in _REGISTRY:  # the plain dict of a custom type: nothing to check
            checked_data(type, data)
        return topic, encoder.encode(topic, type, data, corr, cause, trace), 1

    def _encode_payload(
        self,
        payload: Payload,
        subtopic: str | None,
        corr: str | None,
        cause: str | None,
        trace: str | None,
    ) -> tuple[bytes, bytes, int]:
        encoder = self._encoder
        topic = encoder.topic(payload.__instance__, subtopic or payload.default_subtopic())
        # msgspec encodes the struct itself as the data map: no dict is built
        body = encoder.encode(topic, type(payload).__name__, payload, corr, cause, trace)
        return topic, body, 1

    def _encode_batch(
        self,
        instance: Instance | str,
        subtopic: str,
        type: str,
        batch: Iterable[Mapping[str, Any]],
        corr: str | None,
        cause: str | None,
        trace: str | None,
    ) -> tuple[bytes, bytes, int]:
        encoder = self._encoder
        topic = encoder.topic(instance, subtopic)
        before = encoder.seq(topic)
        body = encoder.encode_batch(topic, type, (checked_data(type, data) for data in batch), corr, cause, trace)
        return topic, body, encoder.seq(topic) - before

    def _encode_many(self, items: Iterable[DurableItem], window: int) -> list[tuple[bytes, bytes, int]]:
        """Encode every item of a pipelined durable publish; one that cannot be sent raises
        (naming its index) and no sequence number is taken."""
        check_window(window)
        encoder = self._encoder
        taken = dict(encoder._seqs)
        encoded: list[tuple[bytes, bytes, int]] = []
        try:
            for index, item in enumerate(items):
                if isinstance(item, Payload):
                    encoded.append(self._encode_payload(item, None, None, None, None))
                elif isinstance(item, tuple) and len(item) == 4:
                    encoded.append(self._encode_one(*item, None, None, None))
                else:
                    raise TypeError(
                        f"publish_durable_many: item {index} must be a typed payload or an "
                        f"(instance, subtopic, type, data) tuple, not {_type_name(item)}"
                    )
        except BaseException:
            encoder._seqs.clear()
            encoder._seqs.update(taken)
            raise
        return encoded

    def _refused(self, topic: bytes, seq: int, envelopes: int) -> None:
        """A durable publish the broker refused was not sent: give its sequence numbers back."""
        encoder = self._encoder
        if encoder.seq(topic) == seq:
            encoder._seqs[topic] = seq - envelopes

    def _timed_out(self, topic: bytes) -> PublishTimeoutError:
        return PublishTimeoutError(topic.decode(), self._send_timeout or 0.0)

    def _count(self, topic: bytes, body: bytes, envelopes: int) -> bool:
        """Count a sent message; true when it is time to drain subscription messages."""
        self._messages += 1
        self._envelopes += envelopes
        self._bytes += len(topic) + len(body)
        return self._messages % _DRAIN_EVERY == 0


class PublisherBase(Owner[S], PublisherCore, Generic[S, C, R]):
    """Publishes envelopes to the broker's frontend.

    Connecting (the constructor, or the asyncio publisher's ``await connect()``) returns once
    the broker's subscription has reached this publisher, so a publish right after it is never
    lost to the slow-joiner effect. If no broker answers within ``connect_timeout`` seconds it raises
    :class:`~exesdb_sdk.errors.BrokerUnavailableError` naming the endpoint.

    ``frontend`` defaults to ``$EXESDB_FRONTEND``, else ``tcp://127.0.0.1:7100``; several
    brokers (a list, or endpoints separated by commas, in the argument or the variable) make it
    carry on without a single point of failure: it connects to the first that answers, to one
    broker at a time (ZeroMQ would otherwise copy every message to each), and when that broker
    goes away (its socket monitor reports the lost connection, looked at every 10 ms of
    publishing, or a send stays blocked for ``send_timeout``) it moves to the next (round robin),
    waits for its subscription as connecting does, logs a warning and counts it in
    ``stats.failovers``; what was sent since the last look is counted in ``stats.possibly_lost``
    (a publish may then wait up to ``connect_timeout`` per broker tried; if none answers it raises
    :class:`~exesdb_sdk.errors.BrokerUnavailableError`, as connecting does). ``node`` is
    the ``src`` of every envelope (``$EXESDB_NODE``, else the host name). When the broker
    cannot keep up, a publish waits up to ``send_timeout`` seconds (``None``: forever) and then
    raises :class:`~exesdb_sdk.errors.PublishTimeoutError`; nothing is dropped silently.
    ``close()`` flushes for at most ``linger`` seconds. With a ``secret`` (or ``$EXESDB_SECRET``)
    every envelope is signed with HMAC-SHA256. ``client_key`` (this client's ``.key_secret``
    file, else ``$EXESDB_CLIENT_KEY``) and ``server_key`` (the broker's public ``.key`` file,
    else ``$EXESDB_SERVER_KEY``) turn on CURVE; a key the broker refuses raises
    :class:`~exesdb_sdk.errors.AuthenticationError`. ``publish(..., durable=True)`` goes through
    the broker's control endpoint ``control`` (``$EXESDB_CONTROL``, else ``tcp://127.0.0.1:7102``),
    with the same keys, and waits up to ``control_timeout`` seconds for the broker's commit. Use
    from one thread only.

    **Coalescing.** A burst of publishes of one topic (each within a twentieth of ``coalesce``
    of the previous call: 50 us by default, where a loop of publishes is 2-5 us apart) travels
    as one batch message (wire protocol batches: subscribers receive the envelopes one by one,
    each with its own sequence number, signature and gap accounting). ``coalesce`` (default
    1 ms, ``$EXESDB_COALESCE``; 0 turns it off) bounds the added latency: what is held goes
    within it (a timer), or sooner: with the publish that ends the burst, when the topic
    changes, at 1,024 envelopes or 64 KiB held, on :meth:`flush`, on close, and before a durable
    publish or a batch (which keep their order). A paced publisher (5,000 msg/s is 200 us
    apart) waits for nothing. What is held is counted
    in ``stats.held``; it is never dropped (a full broker queue makes a publish wait, as without
    coalescing). ``stats.coalesced`` counts envelopes that left with others.

    **Privilege classes.** A broker with a restricted class (docs/protocol.md 12.1) announces it
    to every publisher that connects; messages of the class's instances then go to the class's
    frontend, through a second connection made at the first of them, transparently (their
    sequence numbers and counters are this publisher's). A key the class refuses raises
    :class:`~exesdb_sdk.errors.AuthenticationError` ("key ... may not publish to
    ex_esdb_security"), again without a new handshake for :data:`REFUSAL_HOLD` seconds. With
    several brokers, the class's endpoints are those of the broker that announced them first.

    Every method is the same in :class:`Publisher` and :class:`~exesdb_sdk.AsyncPublisher`,
    whose publishes are awaited (``R`` is their result: a sequence number, or a coroutine of one).
    """

    _control_type: ClassVar[type[Any]]

    def __init__(
        self,
        frontend: Endpoints | None = None,
        *,
        node: str | None = None,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        send_timeout: float | None = DEFAULT_SEND_TIMEOUT,
        linger: float = DEFAULT_LINGER,
        hwm: int = DEFAULT_HWM,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        secret: str | bytes | None = None,
        control: str | None = None,
        control_timeout: float = DEFAULT_CONTROL_TIMEOUT,
        context: zmq.Context[S] | None = None,
        client_key: KeyPath | None = None,
        server_key: KeyPath | None = None,
        coalesce: float | None = None,
    ) -> None:
        PublisherCore.__init__(self, frontend, node, max_message_size, send_timeout, secret, coalesce)
        Owner.__init__(self, zmq.XPUB, context, resolve_client_keys(client_key, server_key))
        self.connect_timeout = connect_timeout
        self._linger = linger
        keys = (client_key, server_key)
        self._control: ControlLink[C] = ControlLink(self._control_type, control, control_timeout, self._context, keys)
        self._options: dict[str, Any] = {
            "node": self._encoder.src,
            "connect_timeout": connect_timeout,
            "send_timeout": send_timeout,
            "linger": linger,
            "hwm": hwm,
            "max_message_size": max_message_size,
            "client_key": client_key,
            "server_key": server_key,
            "coalesce": 0,
        }
        """What the publisher at a privilege class's frontend is made with (its sends are this one's)."""
        self._class_publishers: dict[str, Any] = {}
        self._refusals: dict[str, tuple[float, str, str]] = {}
        """Per class: until when its refusal of this key stands, and what it said."""
        try:
            prepare_socket(self._live(), hwm=hwm, send_timeout=send_timeout, linger=linger)
            self._start()
        except BaseException:
            if self._release(0):
                self._context.term()
            raise

    def _tracks_disconnects(self) -> bool:
        return self._several

    def _start(self) -> None:
        """Connect now, or leave it to an awaited ``connect()``."""
        raise NotImplementedError

    def _connect_flow(self) -> Any:
        """The first connection: the brokers in order, until one answers."""
        return connect_any(self._rotation, list(self._rotation.endpoints), self.connect_timeout)

    def _broker_lost(self) -> bool:
        """Whether the disconnect monitor says the broker went away (called every
        ``_CHECK_EVERY`` seconds of publishing, with several brokers only)."""
        self._check_at = _monotonic() + _CHECK_EVERY
        if self._watch.lost():
            return True
        self._checked = self._messages
        return False

    def _step_io(self, step: Step) -> Any:
        """Carry out a step that never waits (the same for both drivers)."""
        if isinstance(step, Reconnect):
            # what the old broker sent (a late subscription) must not pass for the new one's
            self._drain()
            return self._switch(step.endpoint)
        assert isinstance(step, Settle)
        return self._watch.settle()

    def _deliver(self, topic: bytes, body: bytes, envelopes: int, durable: bool, batch: bool) -> R:
        """Send one encoded message (or commit it, with ``durable``); the result of a publish."""
        raise NotImplementedError

    def publish(
        self,
        instance: Instance | str,
        subtopic: str,
        type: str,
        data: Mapping[str, Any],
        *,
        corr: str | None = None,
        cause: str | None = None,
        trace: str | None = None,
        durable: bool = False,
    ) -> R:
        """Publish one envelope on ``<instance>/<subtopic>``; return its sequence number.

        ``corr``, ``cause`` and ``trace`` set the correlation id, causation id and W3C
        traceparent. Raises :class:`~exesdb_sdk.errors.MessageTooLargeError` (nothing sent) for a
        body over the size limit, and :class:`~exesdb_sdk.errors.PublishTimeoutError`.

        With ``durable``, the message goes through the broker's control endpoint (``control``,
        default ``$EXESDB_CONTROL``): it returns once the broker has committed it to its
        journal, and returns the **broker's** sequence number in the instance's journal. The
        broker then forwards it live. If it cannot commit, it raises
        :class:`~exesdb_sdk.errors.DurabilityError` and nothing was sent; with no reply in time,
        :class:`~exesdb_sdk.errors.BrokerUnavailableError` (the outcome is then unknown).
        """
        topic, body, count = self._encode_one(instance, subtopic, type, data, corr, cause, trace)
        return self._deliver(topic, body, count, durable, False)

    def publish_message(
        self,
        payload: Payload,
        subtopic: str | None = None,
        *,
        corr: str | None = None,
        cause: str | None = None,
        trace: str | None = None,
        durable: bool = False,
    ) -> R:
        """Publish a typed message (see :mod:`exesdb_sdk.messages`) on its instance, under
        ``subtopic`` or its documented default sub-topic; return its sequence number (with
        ``durable``, the broker's, as for :meth:`publish`)."""
        topic, body, count = self._encode_payload(payload, subtopic, corr, cause, trace)
        return self._deliver(topic, body, count, durable, False)

    def publish_batch(
        self,
        instance: Instance | str,
        subtopic: str,
        type: str,
        batch: Iterable[Mapping[str, Any]],
        *,
        corr: str | None = None,
        cause: str | None = None,
        trace: str | None = None,
        durable: bool = False,
    ) -> R:
        """Publish one message carrying an envelope per item of ``batch``; return the count.

        The envelopes take consecutive sequence numbers; subscribers receive them one by one.
        With ``durable``, it returns once the broker has committed the batch (one journal
        record), as for :meth:`publish`.
        """
        topic, body, count = self._encode_batch(instance, subtopic, type, batch, corr, cause, trace)
        return self._deliver(topic, body, count, durable, True)  # durable: one journal record for all

    def publish_durable_many(self, items: Iterable[DurableItem], *, window: int = DEFAULT_COMMIT_WINDOW) -> Any:
        """Durable publishes of many messages, ``window`` in flight at once, sent in
        ``publish_many`` requests (one ``publish`` per message to a broker without that op; see
        :meth:`~exesdb_sdk.control.ControlBase.commit_many`) and sharing the broker's group
        commits; return, per item in order, the broker's sequence number (as
        :meth:`publish` with ``durable`` returns) or the error that refused it.

        Each item is confirmed or refused on its own: an entry is a
        :class:`~exesdb_sdk.errors.DurabilityError` (nothing recorded or forwarded), another
        :class:`~exesdb_sdk.errors.ControlError` the broker answered with, or, when the broker
        stops answering for ``control_timeout``, ``ControlError("unanswered")`` (outcome unknown)
        or ``ControlError("not_sent")``. An item that cannot be encoded raises before anything is
        sent (:class:`~exesdb_sdk.errors.ValidationError`, ``TypeError``...). Refused messages at
        the end of a topic give their envelope sequence numbers back, as :meth:`publish` does.
        """
        raise NotImplementedError

    def flush(self) -> Any:
        """Send what coalescing holds now (waiting up to ``send_timeout``, as a publish does)."""
        raise NotImplementedError

    def _routed(self, topic: bytes) -> PrivilegeClass | None:
        """The privilege class ``topic`` travels in, or ``None`` for the public pair."""
        return self._routes.get(topic.partition(b"/")[0]) if self._routes else None

    def _class_refusal(self, cls: PrivilegeClass, exc: AuthenticationError, topic: bytes) -> AuthenticationError:
        """The error for a class frontend that refused this client's key, remembered for
        :data:`REFUSAL_HOLD` seconds (each new try is a handshake the broker reports)."""
        self._refusals[cls.name] = (_monotonic() + REFUSAL_HOLD, exc.endpoint, exc.detail)
        return self._refusal_error(exc.endpoint, exc.detail, topic)

    def _still_refused(self, cls: PrivilegeClass, topic: bytes) -> None:
        """Raise the class's refusal again while it is remembered."""
        held = self._refusals.get(cls.name)
        if held is not None:
            until, endpoint, detail = held
            if _monotonic() < until:
                raise self._refusal_error(endpoint, detail, topic)
            del self._refusals[cls.name]

    def _refusal_error(self, endpoint: str, detail: str, topic: bytes) -> AuthenticationError:
        instance = topic.partition(b"/")[0].decode()
        return AuthenticationError(endpoint, f"{self._key} may not publish to {instance} ({detail})")

    def _drain(self) -> None:
        """Read the subscription messages the broker sends, so they never pile up."""
        socket = self._live()
        for _ in range(10_000):
            try:
                self._note(recv_frames(socket, _NOBLOCK))
            except zmq.Again:
                return

    def __repr__(self) -> str:
        state = "closed" if self.closed else "connected"
        return f"<{type(self).__name__} {self.frontend} pub={self.pub_id} {state}>"


class Publisher(PublisherBase[zmq.Socket[Any], ControlClient, int], SocketOwner):
    """The synchronous publisher (see :class:`PublisherBase` for its arguments and methods): the
    constructor connects.

    Example::

        with Publisher() as pub:
            pub.publish("health", "store_health:main", "NodeHealth",
                        {"node": "n1", "status": "healthy"})
    """

    _control_type = ControlClient

    def _start(self) -> None:
        # a zmq socket is not thread-safe: the coalescing timer's thread and the caller's use
        # it only while holding this lock
        self._lock = threading.Lock()
        self._timer: threading.Thread | None = None
        self._wake = threading.Event()
        self._stopping = False
        run(self._connect_flow(), self._perform)
        self._drain()

    def _deliver(self, topic: bytes, body: bytes, envelopes: int, durable: bool, batch: bool) -> int:
        with self._lock:
            if durable:
                if self._held:
                    self._send(*self._take_held())
                seq = run(durable_publish(self, topic, body, envelopes), self._perform)
            elif batch or not self._coalesce:
                if self._held:
                    self._send(*self._take_held())
                self._send(topic, body, envelopes)
                seq = self._encoder.seq(topic)
            else:
                seq = self._encoder.seq(topic)
                for message in self._coalesce_step(topic, body):
                    self._send(*message)
        return envelopes if batch else seq

    def _send(self, topic: bytes, body: bytes, envelopes: int) -> None:
        """Send one message now, waiting up to ``send_timeout`` (the lock is held)."""
        if self._routes and (cls := self._routed(topic)) is not None:  # no call per send without a class
            inner = self._in_class(cls, topic)
            try:
                send_frames(inner._live(), topic, body)
            except zmq.Again:
                raise self._timed_out(topic) from None
            if self._count(topic, body, envelopes):
                inner._drain()
            return
        if self._several and _monotonic() >= self._check_at and self._broker_lost():
            self._failover()
        try:
            send_frames(self._live(), topic, body)
        except zmq.Again:
            if not self._several:
                raise self._timed_out(topic) from None
            self._failover()  # the broker took nothing for send_timeout: the next one
            try:
                send_frames(self._live(), topic, body)
            except zmq.Again:
                raise self._timed_out(topic) from None
        if self._count(topic, body, envelopes):
            self._drain()

    @property
    def stats(self) -> PublisherStats:
        """Counters since this publisher connected (taken while the timer thread is not sending)."""
        with self._lock:
            return PublisherCore.stats.fget(self)  # type: ignore[attr-defined,no-any-return]

    def flush(self) -> None:
        """Send what coalescing holds now (waiting up to ``send_timeout``, as a publish does)."""
        with self._lock:
            if self._held:
                self._send(*self._take_held())

    def _arm(self) -> None:
        if self._timer is None:
            self._timer = threading.Thread(target=self._flusher, name=f"exesdb-coalesce-{self.pub_id}", daemon=True)
            self._timer.start()
        self._wake.set()

    def _flusher(self) -> None:
        """The timer thread: sends what is held once it is due, never waiting on the socket
        (a full queue leaves it held for the next publish, flush or close, which wait)."""
        wake, lock = self._wake, self._lock
        while not self._stopping:
            wake.wait()
            with lock:
                due = self._due()
                socket = self._socket
                if due is None or socket is None or self._stopping:
                    wake.clear()
                    continue
                now = _monotonic()
                if now >= due:
                    bodies, coalesced = self._held, self._coalesced
                    topic, body, envelopes = self._take_held()
                    routed = self._routed(topic)
                    if routed is not None:  # the class's publisher exists: the held topic was sent before
                        inner = self._class_publishers.get(routed.name)
                        socket = inner._socket if inner is not None else None
                    if socket is not None and send_frames_nowait(socket, topic, body):
                        self._count(topic, body, envelopes)  # a drain waits for the caller's next send
                    else:  # still held: another try one coalesce period later
                        self._held, self._held_bytes, self._coalesced = bodies, sum(map(len, bodies)), coalesced
                        self._held_at = now
                    continue
            time.sleep(due - now)  # the delay coalescing promises, not a wait for the socket

    def publish_durable_many(
        self, items: Iterable[DurableItem], *, window: int = DEFAULT_COMMIT_WINDOW
    ) -> list[int | ControlError]:
        """See :meth:`PublisherBase.publish_durable_many`."""
        encoded = self._encode_many(items, window)
        with self._lock:
            if self._held:  # what was published before goes first
                self._send(*self._take_held())
            return run(durable_publish_many(self, encoded, window), self._perform)

    def _failover(self) -> None:
        run(publisher_failover(self, self.connect_timeout), self._perform)
        self._drain()

    def _perform(self, step: Step) -> Any:
        if isinstance(step, Request):
            return self._control.get().request(step.op, step.args, timeout=step.timeout)
        if isinstance(step, CommitMany):
            return self._control.get().commit_many(step.messages, step.window)
        if isinstance(step, Receive):
            socket = self._live()
            return self._note(recv_frames(socket)) if self._watch.wait(max(1, int(step.timeout * 1000))) else None
        return self._step_io(step)

    def _in_class(self, cls: PrivilegeClass, topic: bytes) -> Publisher:
        """The publisher connected to ``cls``'s frontend (made on first use; a key the class
        refuses raises :class:`~exesdb_sdk.errors.AuthenticationError` naming it)."""
        inner = self._class_publishers.get(cls.name)
        if inner is None:
            self._still_refused(cls, topic)
            try:
                inner = Publisher(cls.frontend, context=self._context, **self._options)
            except AuthenticationError as exc:
                raise self._class_refusal(cls, exc, topic) from None
            self._class_publishers = {**self._class_publishers, cls.name: inner}
        return inner

    def close(self, linger: float | None = None) -> None:
        """Send what coalescing holds, then close the connection, flushing unsent messages for
        at most ``linger`` seconds (default: the constructor's). Idempotent. If what was held
        cannot be sent within ``send_timeout`` it still closes, then raises
        :class:`~exesdb_sdk.errors.PublishTimeoutError`."""
        timer, self._timer = self._timer, None
        self._stopping = True
        self._wake.set()
        if timer is not None:
            timer.join(timeout=5)  # it never waits on the socket: it ends within one coalesce period
        try:
            if not self.closed:
                self.flush()
        finally:
            control = self._control.take()
            if control is not None:
                control.close()
            inners, self._class_publishers = self._class_publishers, {}
            for inner in inners.values():
                inner.close(linger)
            self._close(self._linger if linger is None else linger)
