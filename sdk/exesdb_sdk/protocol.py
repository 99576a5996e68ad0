"""Wire protocol v1: topics, envelopes, batches and control messages.

This module is the one implementation of the protocol; the publisher, the subscriber,
the control client and the broker all use it. ``docs/protocol.md`` is its normative
description for clients in other languages.

A data message is ZeroMQ frames ``[topic, body, *reserved]``. ``topic`` is UTF-8
``"<instance>/<subtopic>"``; ``body`` is MessagePack, either one envelope (a map) or a
batch (an array of envelopes, all for that topic).
"""

from __future__ import annotations

import os
import secrets
import socket
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Annotated, Any, Final

import msgspec

from ._nesting import HEADER_TABLE, SHORT_BODY, nests_deeper
from .errors import ControlError, MessageTooLargeError, ProtocolError, UnknownInstanceError, ValidationError
from .instances import Instance
from .signing import sign, verify

__all__ = [
    "DEFAULT_MAX_MESSAGE_SIZE",
    "MAX_DEPTH",
    "MAX_INT",
    "MAX_SEQ_JUMP",
    "PROBE_PREFIX",
    "PROTOCOL_VERSION",
    "REORDER_WINDOW",
    "RESERVED_PREFIX",
    "TOPIC_CACHE_LIMIT",
    "Decoder",
    "Encoder",
    "GapTracker",
    "Message",
    "build_topic",
    "decode_reply",
    "decode_request",
    "default_node",
    "encode_error_reply",
    "encode_reply",
    "encode_request",
    "is_reserved",
    "join_bodies",
    "new_publisher_id",
    "parse_topic",
]

PROTOCOL_VERSION: Final = 1
DEFAULT_MAX_MESSAGE_SIZE: Final = 1 << 20
"""Default limit, in bytes, for any one frame (1 MiB)."""
MAX_DEPTH: Final = 64
"""How deeply arrays and maps may nest in a body or a control frame, counting every level: a
batch's array, the envelope map and ``data`` are three. Deeper is malformed (``too_deep``)."""
MAX_INT: Final = (1 << 63) - 1
"""The largest ``seq``, ``ts`` and control integer argument (a signed 64-bit integer)."""
MAX_VERSION: Final = 0xFFFF
"""The largest envelope version ``v`` (the smallest is 1)."""

SEPARATOR: Final = "/"
MAX_SUBTOPIC_BYTES: Final = 1024
RESERVED_PREFIX: Final = "_exesdb/"
"""Topics starting with this are the protocol's own (subscription probes); not user data."""
PROBE_PREFIX: Final = "_exesdb/probe/"
"""A subscriber subscribes to ``PROBE_PREFIX + token``; the broker echoes a ``ProbeAck`` there."""

_RESERVED_BYTES: Final = RESERVED_PREFIX.encode()
TOPIC_CACHE_LIMIT: Final = 4096
"""Distinct topics a :class:`Decoder` keeps parsed (past it, it forgets them all and parses again)."""
_GAP_TRACKER_LIMIT: Final = 100_000
_TOO_DEEP: Final = f"nests arrays and maps more than {MAX_DEPTH} deep"

# msgspec checks these ranges as it decodes (costing next to nothing); outside: ``out_of_range``.
_Count = Annotated[int, msgspec.Meta(ge=0, le=MAX_INT)]
_Version = Annotated[int, msgspec.Meta(ge=PROTOCOL_VERSION, le=MAX_VERSION)]


def new_publisher_id() -> str:
    """A random publisher instance id: 16 hex characters."""
    return secrets.token_hex(8)


def is_reserved(topic: bytes) -> bool:
    """Whether ``topic`` is one of the protocol's own topics (``_exesdb/...``)."""
    return topic.startswith(_RESERVED_BYTES)


def _check_subtopic(subtopic: str) -> None:
    if not isinstance(subtopic, str):
        raise ProtocolError("bad_topic", f"subtopic must be a string, not {type(subtopic).__name__}")
    size = len(subtopic.encode("utf-8", "surrogatepass"))
    if size == 0:
        raise ProtocolError("bad_topic", "subtopic must not be empty")
    if size > MAX_SUBTOPIC_BYTES:
        raise ProtocolError("bad_topic", f"subtopic is {size} bytes, over {MAX_SUBTOPIC_BYTES}")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in subtopic):
        raise ProtocolError("bad_topic", f"subtopic {subtopic!r} contains a control character")
    try:
        subtopic.encode("utf-8")
    except UnicodeEncodeError:
        raise ProtocolError("bad_topic", f"subtopic {subtopic!r} is not valid UTF-8") from None


def build_topic(instance: Instance | str, subtopic: str) -> str:
    """Return the topic ``"<instance>/<subtopic>"``, validating both parts.

    ``instance`` is an :class:`Instance`, a full name or an alias. The subtopic is
    non-empty UTF-8 of at most 1024 bytes without control characters.
    """
    resolved = Instance.resolve(instance)
    _check_subtopic(subtopic)
    return resolved.value + SEPARATOR + subtopic


def parse_topic(topic: bytes | str) -> tuple[Instance, str]:
    """Split a topic into its instance and subtopic.

    Raises :class:`ProtocolError` with reason ``bad_topic`` (not UTF-8, no ``/``) or
    ``unknown_instance``.
    """
    if isinstance(topic, bytes):
        try:
            text = topic.decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError("bad_topic", f"topic {topic[:64]!r} is not UTF-8") from None
    else:
        text = topic
    name, sep, subtopic = text.partition(SEPARATOR)
    if not sep:
        raise ProtocolError("bad_topic", f"topic {text[:64]!r} has no '/'")
    try:
        instance = Instance.resolve(name)
    except UnknownInstanceError:
        raise ProtocolError("unknown_instance", f"topic {text[:64]!r} names no instance") from None
    if instance.value != name:  # aliases are for people; the wire uses full names
        raise ProtocolError("unknown_instance", f"topic {text[:64]!r} names no instance")
    return instance, subtopic


class Message(msgspec.Struct, gc=False, repr_omit_defaults=True):
    """One envelope, as a subscriber receives it: ``topic`` plus the envelope's keys.

    ``data`` is the payload map; ``seq`` is the per (publisher, topic) sequence (0 when the
    publisher sent none). Keys the envelope does not have take the defaults below; keys
    this version does not know are ignored. Treat instances as read-only. A subscriber's
    ``payload`` is built on first read; ``msgspec.structs`` functions read the field as it is
    stored, so read ``payload`` before handing a message to them.
    """

    type: Annotated[str, msgspec.Meta(min_length=1)]
    data: dict[str, Any] = {}
    v: _Version = PROTOCOL_VERSION
    ts: _Count = 0
    src: str = ""
    pub: str = ""
    seq: _Count = 0
    id: str | None = None
    corr: str | None = None
    cause: str | None = None
    trace: str | None = None
    sig: bytes | None = None
    # Not envelope keys: the decoder sets the topic from the topic frame, and a subscriber
    # the typed payload. The odd wire names keep any envelope key from landing here.
    topic: str = msgspec.field(default="", name="~topic")
    payload: Any = msgspec.field(default=None, name="~payload")
    """The typed message (e.g. ``NodeHealth``) when ``type`` is in the catalogue, else None (also
    when ``data`` does not fit the type). A subscriber builds it from ``data`` on first read."""
    replayed: bool = msgspec.field(default=False, name="~replayed")
    """True when the message came from the broker's journal or last values, not live."""

    @property
    def instance(self) -> Instance:
        """The instance the topic belongs to."""
        return Instance.resolve(self.topic.partition(SEPARATOR)[0])

    @property
    def subtopic(self) -> str:
        """The part of the topic after ``<instance>/``."""
        return self.topic.partition(SEPARATOR)[2]

    @property
    def message_id(self) -> str:
        """The envelope's ``id``, else ``"<pub>:<topic>:<seq>"`` (unique per publisher object)."""
        if self.id is not None:
            return self.id
        return f"{self.pub}:{self.topic}:{self.seq}"

    @property
    def time(self) -> datetime:
        """``ts`` as an aware UTC datetime (microsecond precision)."""
        return datetime.fromtimestamp(self.ts / 1e9, UTC)

    # Equality, repr and pickling read the fields in C, past the payload property below: the
    # payload is converted first, so they see what they saw when it was converted on receipt.
    def __eq__(self, other: object) -> bool:
        if type(other) is not Message:
            return NotImplemented
        _payload(self)
        _payload(other)
        equal: bool = msgspec.Struct.__eq__(self, other)
        return equal

    def __repr__(self) -> str:
        _payload(self)
        return msgspec.Struct.__repr__(self)

    def __reduce__(self) -> Any:
        _payload(self)
        return msgspec.Struct.__reduce__(self)


class PayloadCounter:
    """Where lazily typed messages report data that did not fit their type (a subscriber's
    ``stats.invalid_payloads``)."""

    __slots__ = ("invalid",)

    def __init__(self) -> None:
        self.invalid = 0


class Unconverted:
    """The payload slot of a received :class:`Message` until its payload is first read: the
    type to build from ``data`` and the counter to tell when ``data`` does not fit it. One per
    (subscriber, type), shared by its messages."""

    __slots__ = ("counter", "from_data")

    def __init__(self, cls: Any, counter: PayloadCounter) -> None:
        self.from_data: Callable[[Mapping[str, Any]], Any] = cls.from_data
        self.counter = counter


# Message.payload is a msgspec field (so constructing, msgspec.structs.replace and the field
# list are as before); reading it goes through this property, which converts an Unconverted.
_PAYLOAD_SLOT: Final = Message.__dict__["payload"]
_get_payload: Final = _PAYLOAD_SLOT.__get__
_set_payload: Final = _PAYLOAD_SLOT.__set__


def _payload(message: Message) -> Any:
    value = _get_payload(message, Message)
    if type(value) is not Unconverted:
        return value
    try:
        payload = value.from_data(message.data)
    except ValidationError:  # still delivered, as a generic message: never lost
        value.counter.invalid += 1
        payload = None
    _set_payload(message, payload)
    return payload


setattr(Message, "payload", property(_payload, _set_payload, doc="The typed message, built on first read."))  # noqa: B010


set_unconverted: Final[Callable[[Message, Unconverted], None]] = _set_payload
"""``set_unconverted(message, pending)`` puts ``pending`` in ``message``'s payload slot: the
payload is built when first read."""


class Encoder:
    """Builds data-message frames for one publisher.

    It caches topic bytes, keeps the per-topic sequence numbers and reuses one
    MessagePack packer. ``src`` is the origin node name, ``pub`` the publisher id. With a
    ``secret``, every envelope is signed (see :mod:`exesdb_sdk.signing`).
    """

    __slots__ = ("_pack", "_seqs", "_topics", "max_message_size", "pub", "secret", "src")

    def __init__(
        self,
        *,
        src: str,
        pub: str | None = None,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        secret: bytes | None = None,
    ) -> None:
        self.src = src
        self.pub = pub if pub is not None else new_publisher_id()
        self.max_message_size = max_message_size
        self.secret = secret
        self._pack = msgspec.msgpack.Encoder().encode
        self._seqs: dict[bytes, int] = {}
        self._topics: dict[tuple[str, str], bytes] = {}

    def topic(self, instance: Instance | str, subtopic: str) -> bytes:
        """The topic bytes for ``instance`` and ``subtopic`` (validated once, then cached)."""
        key = (instance, subtopic)
        cached = self._topics.get(key)
        if cached is None:
            cached = build_topic(instance, subtopic).encode("utf-8")
            if len(self._topics) >= TOPIC_CACHE_LIMIT:
                self._topics.clear()
            self._topics[key] = cached
        return cached

    def seq(self, topic: bytes) -> int:
        """The last sequence number taken on ``topic`` (0 before the first)."""
        return self._seqs.get(topic, 0)

    def envelope(
        self,
        seq: int,
        type: str,
        data: Mapping[str, Any] | msgspec.Struct,
        corr: str | None = None,
        cause: str | None = None,
        trace: str | None = None,
    ) -> dict[str, Any]:
        """An envelope with sequence number ``seq``, stamped now."""
        env = {
            "v": PROTOCOL_VERSION,
            "type": type,
            "ts": time.time_ns(),
            "src": self.src,
            "pub": self.pub,
            "seq": seq,
            "data": data,
        }
        if corr is not None:
            env["corr"] = corr
        if cause is not None:
            env["cause"] = cause
        if trace is not None:
            env["trace"] = trace
        return env

    def _packed(self, value: Any) -> bytes:
        try:
            body: bytes = self._pack(value)
        except (TypeError, ValueError, OverflowError, msgspec.EncodeError) as exc:
            raise ProtocolError("bad_data", f"data cannot be packed as MessagePack: {exc}") from None
        return body

    def _checked(self, topic: bytes, body: bytes) -> bytes:
        if len(body) > self.max_message_size:
            raise MessageTooLargeError(topic.decode(), len(body), self.max_message_size)
        return body

    def _envelope_bytes(self, topic: bytes, envelope: dict[str, Any]) -> bytes:
        body = self._packed(envelope)
        return body if self.secret is None else sign(self.secret, topic, body)

    def encode(
        self,
        topic: bytes,
        type: str,
        data: Mapping[str, Any] | msgspec.Struct,
        corr: str | None = None,
        cause: str | None = None,
        trace: str | None = None,
    ) -> bytes:
        """The body of a single-envelope message; takes the topic's next sequence number
        only once the body is built, so a refused message leaves no gap."""
        seq = self._seqs.get(topic, 0) + 1
        envelope = self.envelope(seq, type, data, corr, cause, trace)
        body = self._checked(topic, self._envelope_bytes(topic, envelope))
        self._seqs[topic] = seq
        return body

    def encode_batch(
        self,
        topic: bytes,
        type: str,
        batch: Iterable[Mapping[str, Any] | msgspec.Struct],
        corr: str | None = None,
        cause: str | None = None,
        trace: str | None = None,
    ) -> bytes:
        """The body of a batch: one envelope per item of ``batch``, consecutive sequence numbers."""
        start = self._seqs.get(topic, 0)
        envelopes = [self.envelope(seq, type, data, corr, cause, trace) for seq, data in enumerate(batch, start + 1)]
        if not envelopes:
            raise ProtocolError("bad_data", "a batch needs at least one item")
        if self.secret is None:
            body = self._packed(envelopes)
        else:  # each envelope signed on its own, so each can be verified on its own
            body = _array_header(len(envelopes)) + b"".join(
                self._envelope_bytes(topic, envelope) for envelope in envelopes
            )
        self._checked(topic, body)
        self._seqs[topic] = start + len(envelopes)
        return body


def join_bodies(bodies: Sequence[bytes]) -> bytes:
    """The body of a batch made of single-envelope bodies of one topic (each signed already,
    if signing is on): the same bytes :meth:`Encoder.encode_batch` builds for those envelopes.
    One body stays as it is."""
    if len(bodies) == 1:
        return bodies[0]
    return _array_header(len(bodies)) + b"".join(bodies)


def _array_header(count: int) -> bytes:
    if count < 16:
        return bytes([0x90 | count])
    if count < 1 << 16:
        return b"\xdc" + count.to_bytes(2, "big")
    return b"\xdd" + count.to_bytes(4, "big")


_ARRAY_MARKERS: Final = frozenset(range(0x90, 0xA0)) | {0xDC, 0xDD}


class _AnyMap(msgspec.Struct, frozen=True):
    """A map with string keys whose values are skipped, not decoded: ``data`` as a check sees it."""


_EMPTY_MAP: Final = _AnyMap()


class _Header(msgspec.Struct, gc=False):
    """An envelope with its ``data`` left undecoded: enough to check a message cheaply.

    Every field of :class:`Message` is here with the same type (``data`` and ``~payload``
    skipped, not decoded), so a check rejects what decoding rejects, for the same reason.
    """

    type: Annotated[str, msgspec.Meta(min_length=1)]
    data: _AnyMap = _EMPTY_MAP
    v: _Version = PROTOCOL_VERSION
    ts: _Count = 0
    src: str = ""
    pub: str = ""
    seq: _Count = 0
    id: str | None = None
    corr: str | None = None
    cause: str | None = None
    trace: str | None = None
    sig: bytes | None = None
    topic: str = msgspec.field(default="", name="~topic")
    payload: msgspec.Raw = msgspec.field(default=msgspec.Raw(b"\xc0"), name="~payload")
    replayed: bool = msgspec.field(default=False, name="~replayed")


def _invalid(exc: msgspec.ValidationError) -> ProtocolError:
    """The reason for an envelope msgspec refused: a range of :data:`MAX_INT` or ``v``, or a type."""
    text = str(exc)
    if text.startswith(("Expected `int` >=", "Expected `int` <=")):
        return ProtocolError("out_of_range", text)
    return ProtocolError("bad_envelope", text)


class Decoder:
    """Turns received frames into :class:`Message` objects, or raises :class:`ProtocolError`.

    It takes any frames: whatever they hold, it returns messages or raises
    :class:`ProtocolError` with one of these reasons, looked for in this order:

    - ``single_frame``: no body frame;
    - ``reserved_topic``, ``bad_topic`` (not UTF-8, no ``/``), ``unknown_instance``;
    - ``too_deep``: arrays and maps nested more than :data:`MAX_DEPTH` deep;
    - with a ``secret``, ``bad_signature``;
    - then, for the first problem met while decoding the body: ``bad_body`` (not one
      MessagePack value, or a string that is not UTF-8), ``bad_envelope`` (MessagePack, but
      not an envelope or a non-empty batch of envelopes; a key of the wrong type) or
      ``out_of_range`` (``seq`` or ``ts`` outside 0 to :data:`MAX_INT`, ``v`` outside 1 to
      :data:`MAX_VERSION`).

    Topics are parsed and validated once per distinct topic bytes, then looked up: at most
    :data:`TOPIC_CACHE_LIMIT` are kept; past that the cache is emptied and topics are parsed
    again as they come (``topics_forgotten`` counts those times).
    """

    __slots__ = ("_batch", "_header", "_headers", "_raws", "_secret", "_single", "_topics", "topics_forgotten")

    def __init__(self, secret: bytes | None = None) -> None:
        self._topics: dict[bytes, str] = {}  # valid topics seen, bounded
        self.topics_forgotten = 0
        self._single = msgspec.msgpack.Decoder(Message)
        self._batch = msgspec.msgpack.Decoder(list[Message])
        self._header = msgspec.msgpack.Decoder(_Header)
        self._headers = msgspec.msgpack.Decoder(list[_Header])
        self._raws = msgspec.msgpack.Decoder(list[msgspec.Raw])
        self._secret = secret

    def _verify(self, topic: bytes, body: bytes) -> None:
        """Raise ``bad_signature`` unless every envelope of ``body`` is signed with the secret."""
        assert self._secret is not None
        if body and body[0] in _ARRAY_MARKERS:
            try:
                envelopes = [bytes(raw) for raw in self._raws.decode(body)]
            except msgspec.DecodeError as exc:
                raise ProtocolError("bad_body", f"body is not MessagePack: {exc}") from None
            except RecursionError:
                raise ProtocolError("too_deep", f"body {_TOO_DEEP}") from None
        else:
            envelopes = [body]
        for envelope in envelopes:
            if not verify(self._secret, topic, envelope):
                raise ProtocolError("bad_signature", "unsigned, or signed with another secret, or altered")

    def _learn(self, topic: bytes) -> str:
        if topic.startswith(_RESERVED_BYTES):
            raise ProtocolError("reserved_topic", f"{topic[:64]!r} is a protocol topic")
        parse_topic(topic)
        text = topic.decode("utf-8")
        if len(self._topics) >= TOPIC_CACHE_LIMIT:
            self._topics.clear()
            self.topics_forgotten += 1
        self._topics[topic] = text
        return text

    def _topic(self, frames: Sequence[bytes]) -> str:
        """The topic of a data message whose body may be decoded: checked for nesting and, with
        a secret, for signatures."""
        if len(frames) < 2:
            raise ProtocolError("single_frame", "a data message needs [topic, body] frames")
        topic = self._topics.get(frames[0]) or self._learn(frames[0])
        body = frames[1]
        size = len(body)
        # nests_deeper's first test, inlined for the common small body: saves a call per message.
        if (
            size > MAX_DEPTH
            and (size >= SHORT_BODY or body.translate(HEADER_TABLE).count(1) > MAX_DEPTH)
            and nests_deeper(body, MAX_DEPTH)
        ):
            raise ProtocolError("too_deep", f"body {_TOO_DEEP}")
        if self._secret is not None:
            self._verify(frames[0], frames[1])
        return topic

    @staticmethod
    def _envelopes(single: msgspec.msgpack.Decoder[Any], batch: msgspec.msgpack.Decoder[Any], body: bytes) -> list[Any]:
        try:
            if body and body[0] in _ARRAY_MARKERS:
                envelopes: list[Any] = batch.decode(body)
                if not envelopes:
                    raise ProtocolError("bad_envelope", "a batch must not be empty")
                return envelopes
            return [single.decode(body)]
        except msgspec.ValidationError as exc:
            raise _invalid(exc) from None
        except msgspec.DecodeError as exc:
            raise ProtocolError("bad_body", f"body is not MessagePack: {exc}") from None
        except UnicodeDecodeError as exc:  # msgspec lets invalid UTF-8 in a str through as this
            raise ProtocolError("bad_body", f"a string in the body is not UTF-8: {exc.reason}") from None
        except RecursionError:  # the nesting check ran first; this is only a backstop
            raise ProtocolError("too_deep", f"body {_TOO_DEEP}") from None

    def decode_run(self, received: Sequence[Sequence[bytes]], start: int, out: list[Message]) -> int:
        """Decode ``received[start:]`` into ``out`` for as long as each is what most are: one small
        envelope of a topic seen before (and no secret) that decodes; return the index of the
        first that is not (``len(received)`` when none), for :meth:`decode` to take.

        What it decodes, :meth:`decode` would decode the same; whatever it declines is
        left untouched: malformed messages are for :meth:`decode` to classify."""
        if self._secret is not None:
            return start
        topics, single, append = self._topics.get, self._single.decode, out.append
        for index in range(start, len(received)):
            frames = received[index]
            if len(frames) < 2:
                return index
            topic = topics(frames[0])
            body = frames[1]
            size = len(body)
            if topic is None or not 0 < size < SHORT_BODY or body[0] in _ARRAY_MARKERS:
                return index
            # _topic's nesting check for a short body (one that may nest too deep is declined)
            if size > MAX_DEPTH and body.translate(HEADER_TABLE).count(1) > MAX_DEPTH:
                return index
            try:
                message: Message = single(body)
            except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
                return index
            message.topic = topic
            append(message)
        return len(received)

    def decode(self, frames: Sequence[bytes]) -> list[Message]:
        """Decode one data message (a single envelope or a batch) into messages."""
        topic = self._topic(frames)
        try:
            messages: list[Message] = self._envelopes(self._single, self._batch, frames[1])
        except ProtocolError as exc:
            if exc.reason != "bad_body":
                raise
            error = exc
        else:
            for message in messages:
                message.topic = topic
            return messages
        # A body wrong in its envelope and inside its data is classified by the envelope, as
        # check() (the broker's count) classifies it: the two agree on every reason.
        self._envelopes(self._header, self._headers, frames[1])
        raise error

    def check(self, frames: Sequence[bytes]) -> tuple[str, int]:
        """Check one data message as :meth:`decode` would, without building the payloads;
        return its topic and envelope count.

        What is inside ``data`` (and ``~payload``) is skipped rather than decoded, so strings
        there are not checked for UTF-8, nor timestamps and map keys inside them for validity:
        :meth:`decode` may refuse a message that passes this check, never the other way round,
        and where both refuse they give the same reason.
        """
        topic = self._topic(frames)
        return topic, len(self._envelopes(self._header, self._headers, frames[1]))

    def inspect(self, frames: Sequence[bytes]) -> tuple[str, str, int, int]:
        """Check one data message as :meth:`check` does; return its topic, the first envelope's
        ``pub`` and ``seq``, and the envelope count."""
        topic = self._topic(frames)
        headers: list[_Header] = self._envelopes(self._header, self._headers, frames[1])
        return topic, headers[0].pub, headers[0].seq, len(headers)


MAX_SEQ_JUMP: Final = 100_000_000
"""The largest forward ``seq`` jump counted as a gap (100 million: over 15 minutes of the
fastest single publisher on one topic); a larger one is a reset."""


REORDER_WINDOW: Final = 1_000
"""How far below the highest ``seq`` a live envelope is a late duplicate (skipped) rather
than a reset."""


class GapTracker:
    """Counts sequence gaps per (publisher, topic).

    The first message seen from a (publisher, topic) sets the baseline; after that a
    jump from ``n`` to ``n + k`` counts ``k - 1`` missing messages; a ``seq`` at most
    :data:`REORDER_WINDOW` below the highest is a late duplicate, skipped. A live ``seq``
    further back, or one that jumps further than :data:`MAX_SEQ_JUMP`, is no gap but a
    publisher that started over or a forgery: it is counted in :attr:`resets` and becomes the
    new baseline, so one message can never switch gap counting off (a replayed one that goes
    back is an overlap of two catch-ups, and is skipped). Bounded: past 100,000 tracked pairs
    it forgets them all and starts new baselines.
    """

    __slots__ = ("_last", "gaps", "resets")

    def __init__(self) -> None:
        self._last: dict[tuple[str, str], int] = {}
        self.gaps = 0
        self.resets = 0

    def observe_all(self, messages: list[Message], on_gap: Callable[[Message, int], None] | None) -> None:
        """:meth:`observe` each message, calling ``on_gap(message, missing)`` after a gap."""
        last_seen = self._last
        for message in messages:
            seq = message.seq
            if seq <= 0 or not message.pub:
                continue
            key = (message.pub, message.topic)
            last = last_seen.get(key)
            if last is None:
                if len(last_seen) >= _GAP_TRACKER_LIMIT:
                    last_seen.clear()
                last_seen[key] = seq
            elif seq == last + 1:
                last_seen[key] = seq
            elif seq > last + MAX_SEQ_JUMP or (seq < last - REORDER_WINDOW and not message.replayed):
                self.resets += 1
                last_seen[key] = seq
            elif seq > last:
                last_seen[key] = seq
                self.gaps += seq - last - 1
                if on_gap is not None:
                    on_gap(message, seq - last - 1)

    def observe(self, message: Message) -> int:
        """Record ``message``; return how many messages are missing just before it."""
        before = self.gaps
        self.observe_all([message], None)
        return self.gaps - before


# -- control messages ------------------------------------------------------------------------

_encode: Final = msgspec.msgpack.Encoder().encode


def encode_request(op: str, args: Mapping[str, Any] | None = None, request_id: int | None = None) -> bytes:
    """A control request frame: ``{"op": op, **args}``, with ``id`` when given."""
    request: dict[str, Any] = {"op": op}
    if args:
        request.update(args)
    if request_id is not None:
        request["id"] = request_id
    return _encode(request)


def _decode_frame(frame: bytes, what: str, reason: str) -> Any:
    """The MessagePack value of a control frame, or :class:`ProtocolError` (``too_deep`` or ``reason``)."""
    if nests_deeper(frame, MAX_DEPTH):
        raise ProtocolError("too_deep", f"{what} {_TOO_DEEP}")
    try:
        return msgspec.msgpack.decode(frame)
    except msgspec.DecodeError as exc:
        raise ProtocolError(reason, f"{what} is not MessagePack: {exc}") from None
    except UnicodeDecodeError as exc:  # msgspec lets invalid UTF-8 in a str through as this
        raise ProtocolError(reason, f"a string in the {what} is not UTF-8: {exc.reason}") from None
    except RecursionError:  # the nesting check ran first; this is only a backstop
        raise ProtocolError("too_deep", f"{what} {_TOO_DEEP}") from None


def decode_request(frame: bytes) -> dict[str, Any]:
    """Decode a control request from any bytes; raises :class:`ProtocolError` (reason
    ``bad_request``, or ``too_deep`` past :data:`MAX_DEPTH`) for anything else."""
    request = _decode_frame(frame, "request", "bad_request")
    if type(request) is not dict:
        raise ProtocolError("bad_request", "request must be a map")
    if type(request.get("op")) is not str:
        raise ProtocolError("bad_request", "request needs an 'op' string")
    return request


def encode_reply(fields: Mapping[str, Any], request_id: Any = None) -> bytes:
    """A success reply: ``{"ok": true, **fields}``, echoing the request's ``id``."""
    reply: dict[str, Any] = {"ok": True}
    reply.update(fields)
    if request_id is not None:
        reply["id"] = request_id
    return _encode(reply)


def encode_error_reply(code: str, message: str, request_id: Any = None) -> bytes:
    """An error reply: ``{"ok": false, "error": {"code": code, "message": message}}``."""
    reply: dict[str, Any] = {"ok": False, "error": {"code": code, "message": message}}
    if request_id is not None:
        reply["id"] = request_id
    return _encode(reply)


def decode_reply(frame: bytes) -> dict[str, Any]:
    """Decode a control reply from any bytes; raises :class:`ControlError` for an error reply
    and :class:`ProtocolError` (reason ``bad_reply``, or ``too_deep`` past :data:`MAX_DEPTH`)
    for anything that is not a reply."""
    reply = _decode_frame(frame, "reply", "bad_reply")
    if type(reply) is not dict or type(reply.get("ok")) is not bool:
        raise ProtocolError("bad_reply", "reply must be a map with a boolean 'ok'")
    if not reply["ok"]:
        error = reply.get("error")
        if type(error) is not dict:
            raise ProtocolError("bad_reply", "error reply without an 'error' map")
        raise ControlError(str(error.get("code", "error")), str(error.get("message", "")))
    return reply


def default_node() -> str:
    """The node name put in ``src``: ``EXESDB_NODE``, else the host name."""
    return os.environ.get("EXESDB_NODE") or socket.gethostname()
