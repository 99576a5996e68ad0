"""The journal's answers: ``replay`` pages, ``last`` values, and the checks of requests.

Pure functions over a :class:`~.store.JournalStore` and the last-value map; the journal
thread calls them (it owns the store) and turns :class:`Refused` into an error reply.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

from exesdb_sdk.errors import ExesdbError, ProtocolError
from exesdb_sdk.instances import Instance
from exesdb_sdk.protocol import MAX_INT, Decoder

from .store import JournalStore, Record

__all__ = [
    "PAGE_BYTES",
    "PAGE_RECORDS",
    "Refused",
    "answer",
    "durable_record",
    "int_arg",
    "last_reply",
    "not_journaled",
    "replay_reply",
]

PAGE_RECORDS: Final = 1000
"""Records per ``replay`` page at most."""
PAGE_BYTES: Final = 1 << 20
"""Bytes of bodies per ``replay`` page, about (a page always holds at least one record)."""


class Refused(Exception):
    """A request the journal answers with an error reply ``code`` (``malformed``: because the
    message it carries does not follow the protocol)."""

    def __init__(self, code: str, message: str, *, malformed: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.malformed = malformed


def int_arg(request: Mapping[str, Any], key: str, default: int, minimum: int) -> int:
    """The integer argument ``key`` of a request, from ``minimum`` to ``MAX_INT`` (what SQLite
    stores: a larger one would raise ``OverflowError`` there), else :class:`Refused`."""
    value = request.get(key, default)
    if type(value) is not int or not minimum <= value <= MAX_INT:
        raise Refused("bad_request", f"{key!r} must be an integer from {minimum} to {MAX_INT}, not {value!r:.60}")
    return value


def not_journaled(instance: Instance, journaled: Sequence[Instance]) -> Refused:
    names = ", ".join(i.value for i in journaled) or "none"
    return Refused("not_journaled", f"{instance.value} is not journaled (journaled: {names})")


def replay_reply(
    store: JournalStore | None, journaled: Sequence[Instance], unavailable: str, request: Mapping[str, Any]
) -> dict[str, Any]:
    """One page of a ``replay`` (see docs/protocol.md, section 10.6)."""
    name = request.get("instance")
    try:
        instance = Instance.resolve(name) if isinstance(name, str) else None
    except ExesdbError:
        instance = None
    if instance is None:
        raise Refused("bad_request", f"replay needs 'instance', one of the ten instances (got {name!r})")
    if instance not in journaled:
        raise not_journaled(instance, journaled)
    if store is None:
        raise Refused("journal_unavailable", f"journal unavailable: {unavailable}")
    limit = int_arg(request, "limit", PAGE_RECORDS, 1)
    prefix = request.get("prefix", "")
    if not isinstance(prefix, str):
        raise Refused("bad_request", "'prefix' must be a string")
    first = store.first_seq(instance)
    if "from_seq" in request:
        start = int_arg(request, "from_seq", 0, 0)
    elif "since" in request:
        start = store.seq_at(instance, int_arg(request, "since", 0, 0))
    else:
        start = first
    records, following, more = store.page(
        instance, max(start, first), (instance.prefix + prefix).encode(), min(limit, PAGE_RECORDS), PAGE_BYTES
    )
    return {
        "instance": instance.value,
        "records": [[seq, rt, topic.decode(), body, bool(durable)] for seq, rt, topic, body, durable in records],
        "next": following,
        "more": more,
        "first": first,
        "last": store.heads[instance],
    }


def last_reply(
    last: Mapping[bytes, tuple[int, bytes]], prefixes: Sequence[bytes], request: Mapping[str, Any]
) -> dict[str, Any]:
    """The ``last`` values under the request's topic prefix (docs/protocol.md, section 10.7)."""
    prefix = request.get("prefix", "")
    if not isinstance(prefix, str):
        raise Refused("bad_request", "'prefix' must be a string")
    wanted = prefix.encode()
    records = [[topic.decode(), rt, body] for topic, (rt, body) in sorted(last.items()) if topic.startswith(wanted)]
    return {"records": records, "topics": [p.decode() for p in prefixes]}


def durable_record(
    request: Mapping[str, Any], max_message_size: int, journaled: frozenset[Instance], decoder: Decoder
) -> Record:
    """The record a durable ``publish`` asks for (docs/protocol.md, section 10.5), checked as a
    subscriber would check the message; else :class:`Refused`."""
    topic, body = request.get("topic"), request.get("body")
    if isinstance(topic, str):
        topic = topic.encode()
    if not isinstance(topic, bytes) or not isinstance(body, bytes):
        raise Refused("bad_request", "publish needs 'topic' (str) and 'body' (bin)")
    if len(body) > max_message_size:
        raise Refused("too_large", f"body is {len(body)} bytes, over {max_message_size}")
    try:
        text, _ = decoder.check([topic, body])
    except ProtocolError as exc:
        raise Refused("bad_request", f"not a valid message: {exc}", malformed=True) from None
    instance = Instance.resolve(text.partition("/")[0])
    if instance not in journaled:
        raise not_journaled(instance, sorted(journaled, key=list(Instance).index))
    return Record(instance, topic, body, durable=True)


def answer(
    request: Mapping[str, Any],
    store: JournalStore | None,
    journaled: Sequence[Instance],
    last_values: Sequence[bytes],
    unavailable: str,
    last: Mapping[bytes, tuple[int, bytes]],
) -> dict[str, Any]:
    """The reply fields of a ``replay`` or ``last`` request; else :class:`Refused`."""
    op = request["op"]
    if op == "replay":
        return replay_reply(store, journaled, unavailable, request)
    if op == "last":
        return last_reply(last, last_values, request)
    raise Refused("unknown_op", f"unknown op {op!r}")
