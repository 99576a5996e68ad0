"""Client side of the broker's journal: durable publish results, replay cursors, last values.

Shared by the synchronous and asyncio publishers and subscribers; no I/O happens here. The
broker side and the wire format are in ``docs/protocol.md`` (``publish``, ``replay``, ``last``).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Annotated, Any, Final, Literal, TypeAlias

import msgspec

from .errors import ControlError, DurabilityError, ProtocolError
from .instances import Instance
from .protocol import MAX_INT

__all__ = [
    "DEFAULT_PAGE",
    "JOURNAL_GAP_TOPIC",
    "JOURNAL_GAP_TYPE",
    "CatchUp",
    "ReplayFrom",
    "durability_error",
    "durable_request",
    "durable_seq",
    "encode_journal_gap",
    "journal_gap",
    "last_frames",
    "replay_args",
]

JOURNAL_GAP_TOPIC: Final = "_exesdb/journal/gap"
"""Topic of a journal record that stands for messages the broker could not journal."""
JOURNAL_GAP_TYPE: Final = "JournalGap"

DEFAULT_PAGE: Final = 1000
"""Records asked for per ``replay`` page (the broker also bounds a page to about 1 MiB)."""

ReplayFrom: TypeAlias = int | datetime | timedelta | Literal["earliest"]
"""Where a replay starts: a broker sequence number, a time (aware datetime, or how long ago),
or ``"earliest"`` (the oldest record the broker keeps)."""


def replay_args(start: ReplayFrom) -> dict[str, Any]:
    """The ``replay`` request arguments for ``start`` (see :data:`ReplayFrom`)."""
    if isinstance(start, bool):
        raise ValueError("replay_from must be a sequence number, a datetime, a timedelta or 'earliest'")
    if isinstance(start, int):
        if not 0 <= start <= MAX_INT:
            raise ValueError(f"replay_from sequence number must be from 0 to {MAX_INT}, not {start}")
        return {"from_seq": start}
    if isinstance(start, timedelta):
        return {"since": time.time_ns() - int(start.total_seconds() * 1e9)}
    if isinstance(start, datetime):
        if start.tzinfo is None:
            raise ValueError("replay_from datetime must be timezone-aware (e.g. datetime.now(UTC))")
        return {"since": int(start.timestamp() * 1e9)}
    if start == "earliest":
        return {}
    raise ValueError(f"replay_from must be a sequence number, a datetime, a timedelta or 'earliest', not {start!r}")


def durability_error(exc: ControlError) -> ControlError:
    """``exc`` as a :class:`DurabilityError` when its code is one of the journal's."""
    if exc.code in DurabilityError.CODES:
        return DurabilityError(exc.code, exc.message)
    return exc


def durable_request(topic: bytes, body: bytes) -> dict[str, Any]:
    """The arguments of a ``publish`` control request."""
    return {"topic": topic.decode(), "body": body}


def durable_seq(reply: Mapping[str, Any]) -> int:
    """The broker sequence number of an acknowledged durable publish."""
    seq = reply.get("seq")
    if type(seq) is not int or not 0 <= seq <= MAX_INT:
        raise ProtocolError("bad_reply", f"publish reply without an integer 'seq' from 0 to {MAX_INT}")
    return seq


def _frames(topic: Any, body: Any) -> list[bytes]:
    if not isinstance(topic, str) or not isinstance(body, bytes):
        raise ProtocolError("bad_reply", "a journal record needs a str topic and a bin body")
    return [topic.encode(), body]


def last_frames(reply: Mapping[str, Any]) -> list[list[bytes]]:
    """The ``[topic, body]`` of each record of a ``last`` reply."""
    records = reply.get("records")
    if not isinstance(records, list):
        raise ProtocolError("bad_reply", "last reply without 'records'")
    return [_frames(record[0], record[2]) for record in records if isinstance(record, list) and len(record) >= 3]


class CatchUp:
    """Pages through the journal of one instance (and sub-topic prefix) from ``start`` to now."""

    __slots__ = ("_start", "done", "instance", "next", "prefix", "records")

    def __init__(self, instance: Instance | str, prefix: str, start: ReplayFrom) -> None:
        self.instance = Instance.resolve(instance)
        self.prefix = prefix
        self._start = replay_args(start)
        self.next: int | None = None
        self.done = False
        self.records = 0

    def request(self, limit: int = DEFAULT_PAGE) -> dict[str, Any]:
        """The arguments of the next ``replay`` request."""
        args: dict[str, Any] = {"instance": self.instance.value, "prefix": self.prefix, "limit": limit}
        if self.next is None:
            args.update(self._start)
        else:
            # a later page: the first one already waited for the broker to record everything it
            # had forwarded (the seam), so this one needs no wait
            args["from_seq"] = self.next
            args["sync"] = False
        return args

    def advance(self, reply: Mapping[str, Any]) -> list[tuple[list[bytes], bool]]:
        """Take a ``replay`` reply: the ``[topic, body]`` of its records, in order, each with
        whether it was a durable publish (a record the broker committed before forwarding)."""
        records, following = reply.get("records"), reply.get("next")
        if not isinstance(records, list) or type(following) is not int or not 0 <= following <= MAX_INT:
            raise ProtocolError("bad_reply", f"replay reply without 'records' and a 'next' from 0 to {MAX_INT}")
        frames = [
            (_frames(record[2], record[3]), len(record) < 5 or record[4] is not False)
            for record in records
            if isinstance(record, list) and len(record) >= 4
        ]
        self.records += len(frames)
        if self.next is not None and following <= self.next and reply.get("more"):
            raise ProtocolError("bad_reply", "replay cursor did not advance")
        self.next = following
        self.done = not reply.get("more")
        return frames


class _GapData(msgspec.Struct, frozen=True):
    missed: Annotated[int, msgspec.Meta(ge=1, le=2**63 - 1)]
    instance: str = ""
    since: int = 0
    until: int = 0
    reason: str = ""


class _GapMarker(msgspec.Struct, frozen=True):
    type: str
    data: _GapData


_gap_decoder: Final = msgspec.msgpack.Decoder(_GapMarker)


def encode_journal_gap(src: str, instance: str, missed: int, since: int, until: int, reason: str) -> bytes:
    """The body of a gap marker: an envelope of type ``JournalGap`` whose data says how many
    messages of ``instance`` were not journaled between ``since`` and ``until`` (UTC ns)."""
    data = {"instance": instance, "missed": missed, "since": since, "until": until, "reason": reason}
    return msgspec.msgpack.encode({"v": 1, "type": JOURNAL_GAP_TYPE, "ts": time.time_ns(), "src": src, "data": data})


def journal_gap(body: bytes) -> dict[str, Any] | None:
    """The data of a gap marker's body (``missed`` >= 1, ``instance``, ``since``, ``until``,
    ``reason``), or ``None`` when ``body`` is not one."""
    try:
        marker = _gap_decoder.decode(body)
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError):
        return None
    if marker.type != JOURNAL_GAP_TYPE:
        return None
    return msgspec.structs.asdict(marker.data)
