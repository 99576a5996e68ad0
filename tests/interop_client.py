"""A raw exesdb-pubsub client written only from ``docs/protocol.md`` (protocol version 1).

It is an independence check of the document: it uses ``zmq``, ``msgpack`` (not the SDK's
msgspec) and the standard library, and never imports ``exesdb_sdk``. Section numbers (§) refer
to ``docs/protocol.md``. Every wait has a timeout and every loop is bounded.
"""

from __future__ import annotations

import secrets
import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import msgpack
import zmq

# §3: the ten instances (full names are required on the wire).
INSTANCES: tuple[str, ...] = (
    "ex_esdb_events",
    "ex_esdb_system",
    "ex_esdb_health",
    "ex_esdb_metrics",
    "ex_esdb_lifecycle",
    "ex_esdb_alerts",
    "ex_esdb_audit",
    "ex_esdb_diagnostics",
    "ex_esdb_security",
    "ex_esdb_logging",
)
RESERVED_PREFIX = "_exesdb/"  # §3
PROBE_PREFIX = "_exesdb/probe/"  # §8.2
MAX_MESSAGE_SIZE = 1_048_576  # §2: the broker's default max_message_size
MAX_SUBTOPIC_BYTES = 1024  # §3
MAX_DEPTH = 64  # §4 Limits: arrays and maps nest at most this deep, every level counted
# §4 Limits: the range of each integer key of an envelope.
_RANGES: dict[str, tuple[int, int]] = {"v": (1, 65535), "ts": (0, 2**63 - 1), "seq": (0, 2**63 - 1)}
LINGER_MS = 1000  # §7.5: bounded linger
DEFAULT_TIMEOUT = 5.0

# §4: key -> accepted Python types after msgpack decoding (``type`` is checked separately).
_INT = (int,)
_STR = (str,)
_ENVELOPE_TYPES: dict[str, tuple[type, ...]] = {
    "v": _INT,
    "ts": _INT,
    "src": _STR,
    "pub": _STR,
    "seq": _INT,
    "id": _STR,
    "corr": _STR,
    "cause": _STR,
    "trace": _STR,
    "sig": (bytes,),
    "data": (dict,),
}
# §4 lists nil as the default of these MAY keys; the doc does not say whether an explicit nil
# value is allowed or is "the wrong MessagePack type". We accept nil for them (see report).
_NIL_OK = frozenset({"corr", "cause", "trace", "sig"})


class BrokerUnavailable(TimeoutError):
    """No subscription (§7), probe reply (§8.2) or control reply (§10) within the timeout."""


class Malformed(ValueError):
    """A data message that §4, §5 or §8.1 says to skip and count."""


@dataclass(frozen=True)
class Envelope:
    """One decoded envelope (§4) with the defaults for missing keys applied."""

    topic: str
    type: str
    data: dict[str, Any]
    v: int = 1
    ts: int = 0
    src: str = ""
    pub: str = ""
    seq: int = 0
    id: str = ""
    corr: str | None = None
    cause: str | None = None
    trace: str | None = None
    sig: bytes | None = None
    batch_index: int | None = None  # position in its batch (§5); None when sent alone


# ---------------------------------------------------------------------------------------------
# Encoding and decoding (§3, §4, §5)


def validate_topic(topic: str) -> None:
    """Raise ``ValueError`` unless ``topic`` matches the §3 grammar and is not reserved."""
    instance, slash, subtopic = topic.partition("/")
    if not slash or instance not in INSTANCES:
        raise ValueError(f"topic {topic!r} does not start with a full instance name and '/'")
    size = len(subtopic.encode("utf-8"))
    if not 1 <= size <= MAX_SUBTOPIC_BYTES:
        raise ValueError(f"subtopic of {size} bytes (must be 1..{MAX_SUBTOPIC_BYTES})")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in subtopic):
        raise ValueError("subtopic contains a control character")


def make_envelope(
    type_: str,
    data: Mapping[str, Any],
    *,
    pub: str,
    seq: int,
    src: str = "",
    ts: int | None = None,
    corr: str | None = None,
) -> dict[str, Any]:
    """An envelope map (§4); optional MAY keys are omitted rather than sent as nil."""
    if not isinstance(type_, str) or not type_:
        raise ValueError("type must be a non-empty string")
    envelope: dict[str, Any] = {
        "v": 1,
        "type": type_,
        "ts": time.time_ns() if ts is None else ts,
        "src": src,
        "pub": pub,
        "seq": seq,
        "data": dict(data),
    }
    if corr is not None:
        envelope["corr"] = corr
    return envelope


def pack(value: Any) -> bytes:
    """MessagePack with str as str and bytes as bin (the msgpack 1.x defaults)."""
    return msgpack.packb(value, use_bin_type=True)  # type: ignore[no-any-return]


def unpack(body: bytes) -> Any:
    """Decode one MessagePack object; ``Malformed`` if it is not exactly one valid object."""
    try:
        # strict_map_key=False: maps inside ``data`` may have any keys (§4 last rule).
        return msgpack.unpackb(body, raw=False, strict_map_key=False)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise Malformed(f"body is not MessagePack: {exc}") from exc


def nesting(value: Any) -> int:
    """§4 Limits: how many levels of arrays and maps ``value`` nests (keys count; a scalar is 0).
    Iterative, so a hostile body cannot exhaust this client's stack either."""
    deepest, pending = 0, [(value, 1)]
    while pending:
        item, level = pending.pop()
        if type(item) in (list, tuple, dict):
            deepest = max(deepest, level)
            children = [c for pair in item.items() for c in pair] if isinstance(item, dict) else item
            pending.extend((child, level + 1) for child in children)
    return deepest


def decode_envelope(topic: str, value: Any, batch_index: int | None = None) -> Envelope:
    """Check one envelope against §4 and apply the defaults."""
    if not isinstance(value, dict):
        raise Malformed("envelope is not a map")
    type_ = value.get("type")
    if not isinstance(type_, str) or not type_:
        raise Malformed("envelope has no non-empty string 'type'")
    fields: dict[str, Any] = {}
    for key, accepted in _ENVELOPE_TYPES.items():
        if key not in value:
            continue
        item = value[key]
        if item is None and key in _NIL_OK:
            continue
        # bool is an int subclass in Python but a distinct MessagePack type.
        if isinstance(item, bool) or not isinstance(item, accepted):
            raise Malformed(f"envelope key {key!r} has the wrong type {type(item).__name__}")
        if key in _RANGES and not _RANGES[key][0] <= item <= _RANGES[key][1]:
            raise Malformed(f"envelope key {key!r} is {item}, outside {_RANGES[key][0]} to {_RANGES[key][1]}")
        fields[key] = item
    data = fields.pop("data", {})
    if not all(isinstance(k, str) for k in data):
        raise Malformed("envelope 'data' has a non-string key")
    envelope = Envelope(topic=topic, type=type_, data=data, batch_index=batch_index, **fields)
    if not envelope.id:  # §4: derived id
        envelope = replace(envelope, id=f"{envelope.pub}:{topic}:{envelope.seq}")
    return envelope


def decode_message(frames: list[bytes]) -> tuple[str, list[Envelope]]:
    """Decode a data message (§2, §8.1): its topic and its envelopes in delivery order.

    Reserved topics (§3) are returned with no envelopes decoded; the caller decides.
    """
    if len(frames) < 2:
        raise Malformed("data message with fewer than two frames")
    try:
        topic = frames[0].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Malformed("topic is not UTF-8") from exc
    if topic.startswith(RESERVED_PREFIX):
        return topic, []
    instance, slash, _ = topic.partition("/")
    if not slash or instance not in INSTANCES:
        raise Malformed(f"topic {topic!r} names no instance")
    body = unpack(frames[1])  # frames 2... are reserved: ignored (§2)
    if nesting(body) > MAX_DEPTH:
        raise Malformed(f"body nests more than {MAX_DEPTH} levels deep")
    if isinstance(body, dict):
        return topic, [decode_envelope(topic, body)]
    if isinstance(body, list):
        if not body:
            raise Malformed("empty batch")
        # §5 does not say whether one bad envelope spoils the whole batch; we reject the batch.
        return topic, [decode_envelope(topic, item, i) for i, item in enumerate(body)]
    raise Malformed(f"body is a {type(body).__name__}, not an envelope or batch")


@dataclass
class GapTracker:
    """§6: highest seq per (pub, topic); ``gaps`` counts gap events, ``lost`` the missing messages."""

    last: dict[tuple[str, str], int] = field(default_factory=dict)
    gaps: int = 0
    lost: int = 0
    duplicates: int = 0

    def observe(self, envelope: Envelope) -> None:
        if envelope.seq == 0 or not envelope.pub:
            return  # not sequenced
        key = (envelope.pub, envelope.topic)
        last = self.last.get(key)
        if last is None:
            self.last[key] = envelope.seq  # baseline only
        elif envelope.seq > last + 1:
            self.gaps += 1
            self.lost += envelope.seq - last - 1
            self.last[key] = envelope.seq
        elif envelope.seq == last + 1:
            self.last[key] = envelope.seq
        else:
            self.duplicates += 1  # duplicate or reordering: the highest value stays


def _socket(ctx: zmq.Context[zmq.Socket[bytes]], kind: int) -> zmq.Socket[bytes]:
    sock = ctx.socket(kind)
    sock.setsockopt(zmq.LINGER, LINGER_MS)
    return sock


def _remaining(deadline: float) -> int:
    """Milliseconds until ``deadline`` (at least 0) for ``poll``."""
    return max(0, int((deadline - time.monotonic()) * 1000))


# ---------------------------------------------------------------------------------------------
# Publisher (§7)


class RawPublisher:
    """An XPUB connected to the frontend; one ``pub`` id and one seq counter per topic (§6)."""

    def __init__(
        self,
        endpoint: str,
        *,
        src: str = "interop",
        pub_id: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.pub_id = pub_id or secrets.token_hex(8)
        self.src = src
        self.sent_messages = 0
        self.sent_bytes = 0  # all frames, as the broker counts them (§10.3)
        self._seq: dict[str, int] = {}
        self._ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self._sock = _socket(self._ctx, zmq.XPUB)
        self._sock.setsockopt(zmq.XPUB_NODROP, 1)
        self._sock.setsockopt(zmq.SNDTIMEO, int(timeout * 1000))
        self._sock.connect(endpoint)
        try:
            self._wait_for_broker(timeout)
        except BaseException:
            self.close()
            raise

    def _wait_for_broker(self, timeout: float) -> None:
        """§7.2: wait for the broker's subscription to everything (the single byte 0x01)."""
        deadline = time.monotonic() + timeout
        while self._sock.poll(_remaining(deadline), zmq.POLLIN):
            frame = self._sock.recv()
            if frame == b"\x01":
                return
            if time.monotonic() >= deadline:  # any other subscription: keep waiting, within bounds
                break
        raise BrokerUnavailable(f"no subscription from the broker within {timeout} s")

    def drain_subscriptions(self) -> int:
        """§7.3: read and ignore pending subscription messages; return how many."""
        count = 0
        while count < 10_000 and self._sock.poll(0, zmq.POLLIN):
            self._sock.recv()
            count += 1
        return count

    def next_seq(self, topic: str) -> int:
        self._seq[topic] = self._seq.get(topic, 0) + 1
        return self._seq[topic]

    def skip(self, topic: str, count: int) -> None:
        """Burn ``count`` sequence numbers on ``topic`` (to provoke a gap in tests)."""
        self._seq[topic] = self._seq.get(topic, 0) + count

    def publish(
        self,
        topic: str,
        type_: str,
        data: Mapping[str, Any],
        *,
        corr: str | None = None,
        ts: int | None = None,
        seq: int | None = None,
    ) -> int:
        """Send one envelope; return its seq. ``seq`` overrides the counter (tests only)."""
        validate_topic(topic)
        number = self.next_seq(topic) if seq is None else seq
        envelope = make_envelope(type_, data, pub=self.pub_id, seq=number, src=self.src, ts=ts, corr=corr)
        self.send_raw([topic.encode("utf-8"), pack(envelope)])
        return number

    def publish_batch(self, topic: str, type_: str, items: Iterable[Mapping[str, Any]]) -> list[int]:
        """Send a batch (§5): one array of envelopes with consecutive seqs."""
        validate_topic(topic)
        envelopes = [
            make_envelope(type_, data, pub=self.pub_id, seq=self.next_seq(topic), src=self.src) for data in items
        ]
        if not envelopes:
            raise ValueError("a batch must not be empty")
        self.send_raw([topic.encode("utf-8"), pack(envelopes)])
        return [e["seq"] for e in envelopes]

    def send_raw(self, frames: list[bytes]) -> None:
        """Send frames as they are (no validation beyond the size limit)."""
        for frame in frames:
            if len(frame) > MAX_MESSAGE_SIZE:
                raise ValueError(f"frame of {len(frame)} bytes exceeds {MAX_MESSAGE_SIZE}")
        self.drain_subscriptions()
        self._sock.send_multipart(frames)
        self.sent_messages += 1
        self.sent_bytes += sum(len(frame) for frame in frames)

    def close(self) -> None:
        self._sock.close()
        self._ctx.term()

    def __enter__(self) -> RawPublisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------------------------------------
# Subscriber (§8)


@dataclass
class SubscriberStats:
    received: int = 0
    malformed: int = 0
    reserved_ignored: int = 0
    gaps: GapTracker = field(default_factory=GapTracker)


class RawSubscriber:
    """A SUB connected to the backend; decodes envelopes and batches, skips malformed messages."""

    def __init__(self, endpoint: str) -> None:
        self._ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self._sock = _socket(self._ctx, zmq.SUB)
        self._sock.connect(endpoint)
        self._pending: deque[Envelope] = deque()
        self.stats = SubscriberStats()

    @staticmethod
    def prefix_for(name: str) -> str:
        """§8.1: ``"<instance>/"`` for an instance (full name or alias), else the prefix as given."""
        if name in INSTANCES:
            return name + "/"
        if "ex_esdb_" + name in INSTANCES:
            return "ex_esdb_" + name + "/"
        return name

    def add_prefixes(self, *names: str) -> None:
        """Subscribe without confirming (the subscriptions travel asynchronously)."""
        for name in names:
            self._sock.setsockopt(zmq.SUBSCRIBE, self.prefix_for(name).encode("utf-8"))

    def subscribe(self, *names: str, timeout: float = DEFAULT_TIMEOUT) -> Envelope:
        """Subscribe to prefixes and confirm them with a probe (§8.2); return the ProbeAck."""
        self.add_prefixes(*names)
        return self.probe(timeout)

    def probe(self, timeout: float = DEFAULT_TIMEOUT, token: str | None = None) -> Envelope:
        """Confirm every earlier subscription on this socket (§8.2); return the ProbeAck."""
        token = token or secrets.token_hex(8)
        topic = PROBE_PREFIX + token
        self._sock.setsockopt(zmq.SUBSCRIBE, topic.encode("utf-8"))
        try:
            deadline = time.monotonic() + timeout
            while self._sock.poll(_remaining(deadline), zmq.POLLIN):
                frames = self._sock.recv_multipart()
                if frames[0] == topic.encode("utf-8") and len(frames) >= 2:
                    ack = decode_envelope(topic, unpack(frames[1]))
                    if ack.type == "ProbeAck" and ack.data.get("token") == token:
                        return ack
                    raise Malformed(f"unexpected reply on the probe topic: {ack}")
                self._accept(frames)  # ordinary messages that arrive meanwhile are kept
                if time.monotonic() >= deadline:
                    break
            raise BrokerUnavailable(f"no probe reply within {timeout} s")
        finally:
            self._sock.setsockopt(zmq.UNSUBSCRIBE, topic.encode("utf-8"))

    def _accept(self, frames: list[bytes]) -> None:
        try:
            topic, envelopes = decode_message(frames)
        except Malformed:
            self.stats.malformed += 1
            return
        if topic.startswith(RESERVED_PREFIX):
            self.stats.reserved_ignored += 1
            return
        for envelope in envelopes:
            self.stats.gaps.observe(envelope)
            self.stats.received += 1
            self._pending.append(envelope)

    def recv(self, timeout: float = DEFAULT_TIMEOUT) -> Envelope | None:
        """The next envelope, or ``None`` when none arrives within ``timeout``."""
        deadline = time.monotonic() + timeout
        while not self._pending:
            if not self._sock.poll(_remaining(deadline), zmq.POLLIN):
                return None
            self._accept(self._sock.recv_multipart())
            if not self._pending and time.monotonic() >= deadline:
                return None  # only malformed or reserved messages until the deadline
        return self._pending.popleft()

    def recv_n(self, count: int, timeout: float = DEFAULT_TIMEOUT) -> list[Envelope]:
        """Up to ``count`` envelopes, all within one overall ``timeout``."""
        deadline = time.monotonic() + timeout
        result: list[Envelope] = []
        while len(result) < count:
            envelope = self.recv(max(0.0, deadline - time.monotonic()))
            if envelope is None:
                break
            result.append(envelope)
        return result

    def close(self) -> None:
        self._sock.close()
        self._ctx.term()

    def __enter__(self) -> RawSubscriber:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------------------------------------
# Control (§10)


class ControlClient:
    """A DEALER on the control endpoint; sends ``["", request]`` and matches replies by ``id``."""

    def __init__(self, endpoint: str) -> None:
        self._ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self._sock = _socket(self._ctx, zmq.DEALER)
        self._sock.connect(endpoint)
        self.last_id = 0
        self.dropped: list[dict[str, Any]] = []  # late replies to requests given up on

    def send(self, op: str, **args: Any) -> int:
        """Send a request without waiting; return its id."""
        self.last_id += 1
        self._sock.send_multipart([b"", pack({"op": op, "id": self.last_id, **args})])
        return self.last_id

    def send_frames(self, frames: list[bytes]) -> None:
        """Send arbitrary frames (for malformed-request tests)."""
        self._sock.send_multipart(frames)

    def recv_frames(self, timeout: float = DEFAULT_TIMEOUT) -> list[bytes]:
        if not self._sock.poll(int(timeout * 1000), zmq.POLLIN):
            raise BrokerUnavailable(f"no control reply within {timeout} s")
        return self._sock.recv_multipart()

    def wait_reply(self, request_id: int, timeout: float = DEFAULT_TIMEOUT) -> dict[str, Any]:
        """The reply whose ``id`` is ``request_id``; other replies are dropped."""
        deadline = time.monotonic() + timeout
        for _ in range(10_000):
            frames = self.recv_frames(max(0.0, deadline - time.monotonic()))
            if len(frames) != 2 or frames[0] != b"":
                raise Malformed(f"reply framing is not ['', reply]: {frames!r}")
            reply = unpack(frames[1])
            if not isinstance(reply, dict):
                raise Malformed(f"reply is not a map: {reply!r}")
            if reply.get("id") == request_id:
                return reply
            self.dropped.append(reply)
        raise BrokerUnavailable("too many unmatched replies")

    def request(self, op: str, timeout: float = DEFAULT_TIMEOUT, **args: Any) -> dict[str, Any]:
        return self.wait_reply(self.send(op, **args), timeout)

    def ping(self) -> dict[str, Any]:
        return self.request("ping")

    def stats(self) -> dict[str, Any]:
        return self.request("stats")

    def instances(self) -> list[dict[str, Any]]:
        reply = self.request("instances")
        if reply.get("ok") is not True:
            raise RuntimeError(f"instances failed: {reply}")
        return list(reply["instances"])

    def close(self) -> None:
        self._sock.close()
        self._ctx.term()

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
