"""Shared-secret signing of envelopes (HMAC-SHA256), as the original's ``secure_broadcast``.

The signature covers the topic and the exact bytes of the envelope without ``sig``; the
signer then appends ``sig`` as the envelope map's last entry. A verifier recovers the signed
bytes from the received ones without re-encoding anything, so any MessagePack library can
take part (docs/protocol.md, "Signing"):

    mac      = HMAC-SHA256(key = secret as UTF-8,
                           msg = len(topic) as 2 bytes big-endian + topic + unsigned)
    unsigned = the envelope map with N entries, as packed
    signed   = map header for N + 1 entries + unsigned's entries + a3 "sig" c4 20 + mac
"""

from __future__ import annotations

import hmac
import os
import struct
from hashlib import sha256
from typing import Final

__all__ = ["ENV_SECRET", "resolve_secret", "sign", "verify"]

ENV_SECRET: Final = "EXESDB_SECRET"
"""The environment variable holding the shared secret when none is given in code."""

_TRAILER: Final = b"\xa3sig\xc4\x20"  # fixstr "sig", then bin 8 of 32 bytes
_SIGNED_TAIL: Final = len(_TRAILER) + 32
_MAX_TOPIC: Final = 0xFFFF  # its length is signed as 2 bytes: a longer topic was never signed


def resolve_secret(secret: str | bytes | None) -> bytes | None:
    """The secret to use: ``secret``, else ``$EXESDB_SECRET``; ``""`` turns signing off."""
    if secret is None:
        secret = os.environ.get(ENV_SECRET) or None
    if not secret:
        return None
    return secret.encode("utf-8") if isinstance(secret, str) else secret


def _header(count: int) -> bytes:
    if count < 16:
        return bytes([0x80 | count])
    if count < 1 << 16:
        return b"\xde" + struct.pack(">H", count)
    return b"\xdf" + struct.pack(">I", count)


def _read_header(body: bytes) -> tuple[int, int] | None:
    """(entry count, header length) of a packed map, or None if ``body`` is not a map."""
    if not body:
        return None
    first = body[0]
    if 0x80 <= first <= 0x8F:
        return first & 0x0F, 1
    if first == 0xDE and len(body) >= 3:
        return struct.unpack(">H", body[1:3])[0], 3
    if first == 0xDF and len(body) >= 5:
        return struct.unpack(">I", body[1:5])[0], 5
    return None


def _mac(secret: bytes, topic: bytes, unsigned: bytes) -> bytes:
    return hmac.new(secret, struct.pack(">H", len(topic)) + topic + unsigned, sha256).digest()


def sign(secret: bytes, topic: bytes, unsigned: bytes) -> bytes:
    """The signed form of the packed envelope ``unsigned`` (a map without ``sig``)."""
    header = _read_header(unsigned)
    if header is None:
        raise ValueError("only a packed envelope map can be signed")
    count, length = header
    return _header(count + 1) + unsigned[length:] + _TRAILER + _mac(secret, topic, unsigned)


def verify(secret: bytes, topic: bytes, signed: bytes) -> bool:
    """Whether ``signed`` is an envelope map ending with a valid ``sig`` for ``topic``."""
    header = _read_header(signed)
    if header is None or len(signed) < header[1] + _SIGNED_TAIL or len(topic) > _MAX_TOPIC:
        return False
    count, length = header
    if count == 0 or signed[-_SIGNED_TAIL:-32] != _TRAILER:
        return False
    unsigned = _header(count - 1) + signed[length:-_SIGNED_TAIL]
    return hmac.compare_digest(signed[-32:], _mac(secret, topic, unsigned))
