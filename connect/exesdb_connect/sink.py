"""What a sink is: the far side of a connector (a webhook, a Redis stream, an MQTT broker, NATS
JetStream), seen through one small interface.

A connector hands its sink batches of :class:`Delivery` in bus order. For each batch the sink
either acknowledges every item, refuses some (the connector parks them: counted, visible,
replayable) or raises :class:`SinkUnavailable` (nothing in the batch counts as delivered: the
connector's circuit breaker counts a failure and the whole batch is tried again later, so a
sink may see an item twice, always with the same :attr:`Delivery.id`). A sink that refuses
the connector itself (bad credentials, a stream that does not exist) raises
:class:`SinkRejected`: the connector is ``failed`` with that reason and the broker runs on.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from exesdb_sdk.errors import ConfigError, ExesdbError

__all__ = [
    "Delivery",
    "Sink",
    "SinkFactory",
    "SinkRejected",
    "SinkUnavailable",
    "option",
    "unknown_options",
]


@dataclass(frozen=True, slots=True)
class Delivery:
    """One bus message on its way to a sink."""

    id: str
    """Stable across redeliveries: the envelope's ``id``, else ``<pub>:<topic>:<seq>`` (for a
    message without a publisher sequence, ``<instance>:<broker seq>``). Sinks dedupe by it."""
    topic: str
    """``<instance>/<subtopic>``, as on the bus."""
    instance: str
    """The full instance name, e.g. ``ex_esdb_alerts``."""
    subtopic: str
    type: str
    json: Mapping[str, Any]
    """The object ``exesdb tail --json`` prints for the message (JSON-ready)."""
    body: bytes
    """The message's MessagePack body as it travelled on the bus (one envelope)."""
    broker_seq: int | None = None
    """The broker's journal sequence number on a journaled instance, else ``None``."""
    last_value: bool = False
    """Whether the broker keeps the last value of this topic (an MQTT sink retains those)."""


class SinkUnavailable(ExesdbError, ConnectionError):
    """The sink cannot take the batch now (connection refused, timeout, a 5xx, no
    acknowledgement): try it again later. The message says why, in one line."""


class SinkRejected(ExesdbError, PermissionError):
    """The sink refuses this connector as configured (authentication, a missing stream...):
    retrying will not help until the configuration or the far side changes."""


class Sink(Protocol):
    """The far side of one connector. Created from its configuration, then used by one
    connector task in one event loop: ``open`` once, ``send`` many times, ``close`` once
    (``open`` again after a :class:`SinkUnavailable` from ``send`` is the sink's own affair:
    ``send`` reconnects as it needs)."""

    kind: str
    """``webhook``, ``redis``, ``mqtt``, ``nats``."""

    async def open(self) -> None:
        """Connect. Raises :class:`SinkUnavailable` (try later) or :class:`SinkRejected`."""
        ...

    async def send(self, batch: Sequence[Delivery]) -> Sequence[str | None]:
        """Deliver ``batch`` (in order); return, per item, ``None`` once the sink acknowledged
        it or the reason it refuses that item for good (it is then parked). Raises
        :class:`SinkUnavailable` when it cannot tell (nothing counts as delivered) and
        :class:`SinkRejected` when it refuses the connector."""
        ...

    async def close(self) -> None:
        """Disconnect; idempotent, never raises."""
        ...


SinkFactory = Callable[[str, Mapping[str, Any]], Sink]
"""Builds a sink from the connector's name and its sink options (the connector's table in the
TOML file without the keys every connector has); raises :class:`ConfigError` in one line
naming the connector and the key."""


def option(
    connector: str,
    options: Mapping[str, Any],
    key: str,
    kind: type,
    default: Any = ...,
    check: Callable[[Any], str | None] | None = None,
) -> Any:
    """``options[key]`` checked to be a ``kind`` (``default`` when missing; required when no
    default is given) and, with ``check``, to pass it (``check`` returns what is wrong, or
    ``None``). Raises :class:`ConfigError` ``connector <name>: <key>: <what is wrong>``."""
    if key not in options:
        if default is ...:
            raise ConfigError(f"connector {connector}: {key} is required")
        return default
    value = options[key]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(f"connector {connector}: {key} must be a {kind.__name__}, not {value!r}")
    if check is not None:
        problem = check(value)
        if problem is not None:
            raise ConfigError(f"connector {connector}: {key}: {problem}")
    return value


def unknown_options(connector: str, options: Mapping[str, Any], known: Sequence[str]) -> None:
    """Refuse a key the sink does not know (a typo must not be ignored)."""
    for key in options:
        if key not in known:
            raise ConfigError(
                f"connector {connector}: unknown key {key!r} (this sink knows: {', '.join(sorted(known))})"
            )
