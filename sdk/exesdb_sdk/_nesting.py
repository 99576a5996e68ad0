"""How deeply MessagePack arrays and maps nest, checked before anything recurses into them.

msgspec decodes nested arrays and maps by recursing in C, bounded only by Python's recursion
limit: a 1 KB body nesting 1000 deep raises ``RecursionError`` (and on a thread with a small
stack could crash outright). The protocol therefore bounds nesting (``MAX_DEPTH`` in
:mod:`exesdb_sdk.protocol`), and the decoder checks the bound here first.

A scalar nests 0 deep, ``[]`` and ``{}`` 1, ``[[1]]`` 2. Every array or map starts with one of
36 header bytes (``0x80``-``0x9f``, ``0xdc``-``0xdf``), so a value holding at most ``limit`` such
bytes cannot nest deeper than ``limit``: one pass of ``bytes.translate`` settles nearly every
body. Only a value with more of them is split into its children (by msgspec, skipping rather
than decoding them) and each group of children counted again, one level further down, until
every group fits its remaining budget or a container turns up where none is allowed. Nothing
here recurses: the work list is explicit.
"""

from __future__ import annotations

from typing import Any, Final

import msgspec

__all__ = ["HEADER_TABLE", "SHORT_BODY", "nests_deeper"]

_HEADER_BYTES: Final = bytes([*range(0x80, 0xA0), 0xDC, 0xDD, 0xDE, 0xDF])
_OTHER_BYTES: Final = bytes(sorted(set(range(256)).difference(_HEADER_BYTES)))
HEADER_TABLE: Final = bytes(1 if byte in _HEADER_BYTES else 0 for byte in range(256))
"""``value.translate(HEADER_TABLE).count(1)``: how many bytes of ``value`` could start an array or a map."""
SHORT_BODY: Final = 256
"""Below this many bytes, mapping to 0/1 and counting beats deleting (which sets up a table per call)."""
_CHUNK_BYTES: Final = 16
"""Bytes per level of budget of the first part of a big group, counted to learn how dense header
bytes are in it (about 1 in 30 in typical bodies)."""
_BIG_ARRAYS: Final = (0xDC, 0xDD)
_UNCOUNTED: Final = -1
_OVER: Final = 1 << 62
_SPLIT: Final = msgspec.msgpack.Decoder(list[msgspec.Raw])
_STR_MAP: Final = msgspec.msgpack.Decoder(dict[str, msgspec.Raw])
_WALK_BODY: Final = 8192
"""From this many bytes on, walking the containers of a body (a few microseconds, whatever its
size) beats counting its header bytes (0.8 ns a byte: 8 us for 10 KB)."""
_WALK_LIMIT: Final = 256
"""Values a walk visits at most before counting takes over."""


class _Unreadable(Exception):
    """The bytes are not well-formed MessagePack: the decoder will say so."""


def _header_bytes(value: bytes) -> int:
    """How many bytes of ``value`` could start an array or a map (so, at least how deep it nests)."""
    if len(value) < SHORT_BODY:
        return value.translate(HEADER_TABLE).count(1)
    return len(value.translate(None, _OTHER_BYTES))


def _children(value: bytes) -> tuple[list[Any], int]:
    """The elements of the array, or the keys and values of the map, that ``value`` starts
    with (as ``msgspec.Raw`` views); and how many header bytes the container's own header holds."""
    first = value[0]
    if first <= 0x9F:  # fixmap 0x80-0x8f, fixarray 0x90-0x9f
        is_map, count, size = first <= 0x8F, first & 0x0F, 1
    else:  # 0xdc array 16, 0xdd array 32, 0xde map 16, 0xdf map 32
        is_map, size = first >= 0xDE, 3 if first in (0xDC, 0xDE) else 5
        count = int.from_bytes(value[1:size], "big")
    own = _header_bytes(value[:size])
    if not is_map:
        return _SPLIT.decode(value), own
    if 2 * count > len(value):  # every entry takes two bytes at least: a lying header
        raise _Unreadable
    # A map of n entries is laid out like an array of its 2n keys and values.
    header = bytes([0x90 | 2 * count]) if count < 8 else b"\xdd" + (2 * count).to_bytes(4, "big")
    return _SPLIT.decode(header + value[size:]), own


def _fits(value: bytes, budget: int, count: int) -> bool:
    """Whether the MessagePack value ``value``, holding ``count`` header bytes (``_OVER``: not
    counted, known to be more than ``budget``), nests at most ``budget`` deep."""
    # Work items: sibling values, each allowed ``budget`` more levels, holding ``count`` header
    # bytes together (or ``_UNCOUNTED``, or ``_OVER``) in ``size`` bytes (0: small enough to count).
    pending: list[tuple[list[Any], int, int, int]] = [([value], budget, count, len(value))]
    while pending:
        group, budget, count, size = pending.pop()
        if len(group) == 1:
            item = bytes(group[0])
            if item[0] not in _HEADER_BYTES:
                continue  # a scalar, perhaps a string or bin whose bytes look like headers
            if count == _UNCOUNTED:
                count = _header_bytes(item)
            if count <= budget:  # _OVER is above every budget
                continue
            if budget == 0:
                return False
            children, own = _children(item)
            budget -= 1
            if len(item) < len(children) * budget:
                # Mostly small children: those too short to hold more than the budget can go.
                children = [child for child in children if len(child) > budget]
                count = _UNCOUNTED
            else:
                count = count - own if count != _OVER else _UNCOUNTED
            if children:
                pending.append((children, budget, count, len(item)))
            continue
        if count == _UNCOUNTED:
            if size > 2 * _CHUNK_BYTES * (budget + 1):
                # Too big to pass whole: rather than count it all and then in parts, count a
                # first part, and cut the rest into parts expected to hold 3/4 of the budget each.
                first = max(1, len(group) * _CHUNK_BYTES * (budget + 1) // size)
                count = _header_bytes(b"".join(group[:first]))
                step = max(1, first * budget * 3 // (4 * count)) if count else first
                if count > budget:
                    pending.append((group[:first], budget, count, 0))
                pending.extend((group[at : at + step], budget, _UNCOUNTED, 0) for at in range(first, len(group), step))
                continue
            count = _header_bytes(b"".join(group))
        if count > budget:
            # Chunks expected to hold about half the budget each: most pass at the first count.
            step = max(1, len(group) * budget // (2 * count))
            pending.extend((group[at : at + step], budget, _UNCOUNTED, 0) for at in range(0, len(group), step))
    return True


def _walked(body: bytes, limit: int) -> bool | None:
    """Whether the well-formed ``body`` nests more than ``limit`` deep, found by walking its
    arrays and string-keyed maps (a value that is no container is passed over by its first
    byte, however long it is); ``None`` when that is not possible (malformed bytes, another kind
    of map key) or would visit more than :data:`_WALK_LIMIT` values: counting then decides."""
    pending: list[tuple[Any, int]] = [(body, limit)]
    visited = 0
    try:
        while pending:
            item, budget = pending.pop()
            if budget == 0:
                return True  # a container one level below the limit, empty or not
            first = item[0]
            if first <= 0x8F or first >= 0xDE:  # a map
                children: Any = _STR_MAP.decode(item).values()
            else:
                children = _SPLIT.decode(item)
            visited += len(children)
            if visited > _WALK_LIMIT:
                return None
            budget -= 1
            for child in children:
                view = memoryview(child)
                if view[0] in _HEADER_BYTES:
                    pending.append((view, budget))
    except (msgspec.DecodeError, RecursionError, IndexError):
        return None
    return False


def nests_deeper(body: bytes, limit: int) -> bool:
    """Whether the MessagePack value ``body`` nests arrays and maps more than ``limit`` deep.

    Bytes that are not one well-formed MessagePack value give ``False`` when their nesting
    cannot be told: decoding them then fails and says why.
    """
    size = len(body)
    if size <= limit:
        return False
    if size >= _WALK_BODY and body[0] in _HEADER_BYTES:
        walked = _walked(body, limit)  # a big body is mostly long strings in a few containers
        if walked is not None:
            return walked
    count = _OVER
    if body[0] not in _BIG_ARRAYS or int.from_bytes(body[1:3], "big") <= limit:
        # Not a big batch, whose envelopes hold one header byte each at least: counting the
        # whole of one would only repeat the counting of its parts. (_header_bytes, inlined:
        # this is the common path, taken by every body.)
        count = body.translate(HEADER_TABLE).count(1) if size < SHORT_BODY else len(body.translate(None, _OTHER_BYTES))
        if count <= limit:
            return False
    try:
        return not _fits(body, limit, count)
    except RecursionError:  # msgspec skipped ~1000 levels deep before giving up: far too deep
        return True
    except (msgspec.DecodeError, _Unreadable):
        return False
