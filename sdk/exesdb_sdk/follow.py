"""Following a broker's journal from a cursor, sans I/O: what to ask (``replay`` pages) and what
a reply means (messages, each with the cursor after it, and gaps), for any reader that keeps a
cursor of its own: the HTTP stream (``/v1/stream``) and the connectors.

A follower first learns which instances the broker journals (:func:`journaled_instances`, from
``stats``) and where each journal's head stands (:func:`head_request`: a page past any record,
whose ``last`` is the head once the journal has recorded everything forwarded before it). Then,
each time a live subscription rings (a message of that instance arrived), it asks for
:meth:`Follow.page_request` pages and hands each reply to :func:`take_page` until a reply says
no ``more``.

The cursor is ``(seq, within)``: the broker sequence number of the last record taken and how
many envelopes of it were taken (0: all of it; more only inside a batch), so a reader resumes
after the last envelope it delivered, not the last record.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from .durable import DEFAULT_PAGE, JOURNAL_GAP_TOPIC, journal_gap
from .errors import ControlError
from .instances import Instance
from .protocol import MAX_INT, Message
from .subscriber import SubscriberCore, literal_prefix

__all__ = [
    "Follow",
    "Followed",
    "common_prefix",
    "head_request",
    "journaled_instances",
    "matcher",
    "take_page",
]


def matcher(instance: Instance, patterns: Iterable[str]) -> re.Pattern[str]:
    """Topics of ``instance`` that one of ``patterns`` wants: a plain prefix, or a glob
    (``*``, ``?``, ``[..]``) matching the whole sub-topic, as the SDK's subscribe does."""
    parts = [
        re.escape(instance.prefix) + (fnmatch.translate(p) if literal_prefix(p) != p else re.escape(p))
        for p in patterns
    ]
    return re.compile("|".join(f"(?:{part})" for part in parts), re.DOTALL)


def common_prefix(patterns: Iterable[str]) -> str:
    """The longest literal sub-topic prefix every pattern starts with (the ``replay`` prefix)."""
    literal = [literal_prefix(p) for p in patterns]
    shortest = min(literal, key=len)
    for index, char in enumerate(shortest):
        if any(other[index] != char for other in literal):
            return shortest[:index]
    return shortest


def journaled_instances(stats: Mapping[str, Any]) -> set[str]:
    """The full names of the instances a ``stats`` reply says the broker journals (none unless
    its journal is ``ok``)."""
    journal = stats.get("journal")
    if isinstance(journal, dict) and journal.get("state") == "ok" and isinstance(journal.get("instances"), list):
        return {name for name in journal["instances"] if isinstance(name, str)}
    return set()


def head_request(instance: Instance) -> dict[str, Any]:
    """``replay`` arguments whose reply's ``last`` is the journal's head (an empty page)."""
    return {"instance": instance.value, "from_seq": MAX_INT, "limit": 1}


@dataclass(slots=True)
class Follow:
    """One journaled instance a reader follows: its cursor and what it wants of the journal."""

    instance: Instance
    prefix: str
    wants: re.Pattern[str]
    seq: int = 0
    within: int = 0
    head: int = 0
    """The journal's head when the reader opened: records up to it count as ``replayed``."""

    @classmethod
    def create(cls, instance: Instance, patterns: list[str], head: int, seq: int | None = None) -> Follow:
        """Follow ``patterns`` of ``instance`` from ``seq`` (default: the ``head``, i.e. only new records)."""
        start = head if seq is None else seq
        return cls(instance, common_prefix(patterns), matcher(instance, patterns), start, 0, head)

    def page_request(self, sync: bool, limit: int = DEFAULT_PAGE) -> tuple[int, dict[str, Any]]:
        """The first sequence number wanted and the ``replay`` arguments of the next page;
        ``sync`` makes the broker first record everything forwarded before it."""
        start = self.seq if self.within else self.seq + 1
        args = {"instance": self.instance.value, "prefix": self.prefix, "from_seq": start}
        args.update(limit=limit, sync=sync)
        return start, args


@dataclass(frozen=True, slots=True)
class Followed:
    """One thing a page holds for the reader, with the cursor just after it."""

    kind: Literal["message", "gap", "retention"]
    """``message``; ``gap``: a gap marker the journal wrote (messages it never recorded);
    ``retention``: records removed by retention before the reader had them."""
    seq: int
    within: int
    message: Message | None = None
    gap: Mapping[str, Any] | None = None


def take_page(follow: Follow, start: int, reply: Mapping[str, Any], core: SubscriberCore) -> list[Followed]:
    """What a ``replay`` reply holds past ``follow``'s cursor, in order; moves the cursor to the
    end of the page. Raises :class:`ControlError` ``bad_reply`` for a reply without records."""
    records, following, first = reply.get("records"), reply.get("next"), reply.get("first")
    if not isinstance(records, list) or type(following) is not int:
        raise ControlError("bad_reply", "replay reply without 'records' and 'next'")
    out: list[Followed] = []
    if type(first) is int and first > start:
        follow.seq, follow.within = first - 1, 0
        gap = {"instance": follow.instance.value, "missed": first - start, "reason": "retention"}
        out.append(Followed("retention", follow.seq, 0, gap=gap))
    for record in records:
        if not isinstance(record, list) or len(record) < 4 or type(record[0]) is not int:
            continue
        seq, topic, body = record[0], record[2], record[3]
        if not isinstance(topic, str) or not isinstance(body, bytes):
            continue
        if seq < follow.seq or (seq == follow.seq and not follow.within):
            continue  # taken already
        if topic == JOURNAL_GAP_TOPIC:
            follow.seq, follow.within = seq, 0
            marker = journal_gap(body)
            if marker is not None:
                out.append(Followed("gap", seq, 0, gap=marker))
            continue
        skip = follow.within if seq == follow.seq else 0
        wanted = follow.wants.match(topic) is not None
        messages = core.take([topic.encode(), body], replayed=seq <= follow.head) if wanted else []
        follow.seq, follow.within = seq, 0
        for index in range(skip, len(messages)):
            # inside a batch: a reader resumes after this envelope
            within = index + 1 if index < len(messages) - 1 else 0
            out.append(Followed("message", seq, within, message=messages[index]))
        if messages and len(messages) > skip:
            follow.within = out[-1].within
    if not follow.within and following - 1 > follow.seq:
        follow.seq = following - 1  # records the prefix left out: nothing to resend
    return out
