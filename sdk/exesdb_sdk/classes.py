"""Privilege classes: which pair of broker endpoints carries which instance (docs/protocol.md 12.1).

A broker may put some instances (``security``, ``audit``...) in a class with its own frontend
and backend, behind their own allowlists. It tells its clients on the data plane, so that they
need no configuration:

- publishers see it as a subscription, ``CLASSES_PREFIX`` followed by the class table in
  MessagePack, which the broker's frontend sends every publisher when it connects;
- subscribers find the same table in the ``classes`` field of every ``ProbeAck`` (the echo of
  the probe a subscription waits for).

The SDK's publishers and subscribers then route a restricted instance to its class's
endpoints. An endpoint the broker bound on every interface (``tcp://0.0.0.0:7103``) is reached
at the host the client used for the public endpoint.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import msgspec

from .endpoints import validate_endpoint
from .errors import ExesdbError, ProtocolError
from .instances import Instance

__all__ = [
    "CLASSES_PREFIX",
    "MAX_CLASSES",
    "PrivilegeClass",
    "class_of",
    "classes_from_subscription",
    "decode_classes",
    "encode_classes",
]

CLASSES_PREFIX: Final = b"_exesdb/classes/"
"""A subscription starting with this announces the broker's privilege classes (not a topic)."""
MAX_CLASSES: Final = 8
"""More classes than this in an announcement is malformed (a broker has one today)."""
_WILDCARDS: Final = ("*", "0.0.0.0", "[::]", "::")


@dataclass(frozen=True, slots=True)
class PrivilegeClass:
    """One class: its name, its instances and the endpoints that carry them."""

    name: str
    instances: frozenset[Instance]
    frontend: str
    """Where its publishers connect (an XSUB socket)."""
    backend: str
    """Where its subscribers connect (an XPUB socket)."""

    def as_dict(self) -> dict[str, Any]:
        """The class as the ``instances`` reply and the announcements carry it."""
        return {
            "name": self.name,
            "instances": sorted(instance.value for instance in self.instances),
            "frontend": self.frontend,
            "backend": self.backend,
        }


def encode_classes(classes: Iterable[PrivilegeClass | Mapping[str, Any]]) -> bytes:
    """The MessagePack array of ``classes`` (class objects or their dicts)."""
    return msgspec.msgpack.encode([item.as_dict() if isinstance(item, PrivilegeClass) else item for item in classes])


def decode_classes(raw: Any, near: str | None = None) -> tuple[PrivilegeClass, ...]:
    """The classes of an announcement (MessagePack bytes) or of an ``instances`` reply's
    ``classes`` list. ``near``, the public endpoint the client uses, replaces a wildcard host.

    Raises :class:`~exesdb_sdk.errors.ProtocolError` (``bad_classes``) for anything malformed:
    an unknown instance, one instance in two classes, an endpoint that is not one.
    """
    if isinstance(raw, bytes | bytearray | memoryview):
        try:
            raw = msgspec.msgpack.decode(raw)
        except msgspec.DecodeError as exc:
            raise ProtocolError("bad_classes", f"the class table is not MessagePack: {exc}") from None
    if not isinstance(raw, list) or len(raw) > MAX_CLASSES:
        raise ProtocolError("bad_classes", f"the class table must be a list of at most {MAX_CLASSES} classes")
    found: list[PrivilegeClass] = []
    taken: set[Instance] = set()
    for item in raw:
        cls = _one(item, near)
        if cls.instances & taken:
            raise ProtocolError("bad_classes", f"class {cls.name!r} names an instance another class has")
        taken |= cls.instances
        found.append(cls)
    return tuple(found)


def _one(item: Any, near: str | None) -> PrivilegeClass:
    if not isinstance(item, dict):
        raise ProtocolError("bad_classes", "a class must be a map")
    name, names, frontend, backend = (item.get(key) for key in ("name", "instances", "frontend", "backend"))
    if not isinstance(name, str) or not isinstance(names, list) or not names:
        raise ProtocolError("bad_classes", "a class needs a name and a non-empty list of instances")
    if not isinstance(frontend, str) or not isinstance(backend, str):
        raise ProtocolError("bad_classes", f"class {name!r} needs a frontend and a backend endpoint")
    try:
        instances = frozenset(Instance.resolve(value) for value in names)
        ends = [_reachable(validate_endpoint(end, f"class {name}", bind=True), near) for end in (frontend, backend)]
    except ExesdbError as exc:  # an unknown instance, a bad endpoint
        raise ProtocolError("bad_classes", f"class {name!r}: {exc}") from None
    return PrivilegeClass(name, instances, ends[0], ends[1])


def _reachable(endpoint: str, near: str | None) -> str:
    """``endpoint`` with a wildcard host replaced by the host of ``near`` (both tcp)."""
    transport, _, address = endpoint.partition("://")
    host, _, port = address.rpartition(":")
    if transport != "tcp" or host not in _WILDCARDS:
        return endpoint
    if near is None or not near.startswith("tcp://"):
        return f"tcp://127.0.0.1:{port}"
    return f"tcp://{near[6:].rpartition(':')[0]}:{port}"


def classes_from_subscription(message: bytes, near: str | None = None) -> tuple[PrivilegeClass, ...] | None:
    """The classes a subscription message (``0x01`` + topic) announces, or ``None`` when it is
    no announcement. Raises :class:`~exesdb_sdk.errors.ProtocolError` for a malformed one."""
    if message[:1] != b"\x01" or not message.startswith(CLASSES_PREFIX, 1):
        return None
    return decode_classes(message[1 + len(CLASSES_PREFIX) :], near)


def class_of(classes: Sequence[PrivilegeClass], instance: Instance) -> PrivilegeClass | None:
    """The class carrying ``instance``, or ``None`` (the public pair)."""
    for cls in classes:
        if instance in cls.instances:
            return cls
    return None
