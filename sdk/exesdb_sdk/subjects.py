"""The NATS subject of a bus topic, shared by the nats sink (``exesdb_connect``) and the
broker's federation: ``<prefix>.<instance>.<subtopic>``, escaped so that a subject is never a
wildcard and never has an empty token (the mapping is stated in ``docs/protocol.md``)."""

from __future__ import annotations

import string
from typing import Final
from urllib.parse import quote, unquote

__all__ = ["ORIGIN_HEADER", "TOPIC_HEADER", "escape_token", "subject", "topic_header", "topic_of_header"]

TOPIC_HEADER: Final = "Exesdb-Topic"
"""The header of a federated message that carries its exact topic (the subject cannot)."""
ORIGIN_HEADER: Final = "Exesdb-Origin"
"""The header of a federated message that names the broker that exported it."""
_TOPIC_SAFE: Final = "/:@,=+~-_"

_SAFE: Final = frozenset(string.ascii_letters + string.digits + "-_~=+@,")
_SEPARATORS: Final = "/:"


def escape_token(text: str) -> str:
    """``text`` as subject tokens: ``/`` and ``:`` become ``.`` where that leaves no empty
    token, safe characters stay, every other UTF-8 byte is percent-encoded."""
    out: list[str] = []
    after_separator = True  # a separator at the start would make an empty token
    last = len(text) - 1
    for index, char in enumerate(text):
        if char in _SEPARATORS and not after_separator and index != last:
            out.append(".")
            after_separator = True
            continue
        after_separator = False
        if char in _SAFE:
            out.append(char)
        else:
            out.extend(f"%{byte:02X}" for byte in char.encode("utf-8", "surrogatepass"))
    return "".join(out)


def subject(prefix: str, instance: str, subtopic: str) -> str:
    """The subject of a message: ``<prefix>.<instance>.<subtopic>``.

    In the subtopic, ``/`` and ``:`` become ``.`` (subject tokens, so ``store_health:s1`` is
    ``...store_health.s1`` and ``*``/``>`` subscriptions work on its parts), except where that
    would leave an empty token (at the start or the end, or right after another separator):
    there they are percent-encoded. ASCII letters, digits and ``- _ ~ = + @ ,`` stay as they
    are; every other byte of the UTF-8 text (``.``, ``*``, ``>``, ``%``, ``$``, spaces,
    non-ASCII) is percent-encoded (``%2E``, ``%2A``...), so a subject is never a wildcard.
    """
    return f"{prefix}.{escape_token(instance)}.{escape_token(subtopic)}"


def topic_header(topic: str | bytes) -> str:
    """The :data:`TOPIC_HEADER` value of ``topic``: percent-encoded UTF-8 (RFC 3986), with
    ``/ : @ , = + ~ - _`` left as they are."""
    return quote(topic, safe=_TOPIC_SAFE)


def topic_of_header(value: str) -> bytes:
    """The topic a :data:`TOPIC_HEADER` value carries; raises :class:`UnicodeError` when it is
    not percent-encoded UTF-8."""
    return unquote(value, errors="strict").encode("utf-8")
