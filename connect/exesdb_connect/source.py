"""What a connector reads: bus messages turned into :class:`~.sink.Delivery` items, each with
the cursor position it stands for."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import msgspec
from exesdb_sdk.jsonview import message_json
from exesdb_sdk.protocol import Message

from .cursor import Parked
from .sink import Delivery

__all__ = ["LAST_VALUE_PREFIXES", "Item", "delivery_id", "item_of", "parked_item"]

LAST_VALUE_PREFIXES: Final = (
    "ex_esdb_health/health_summary:",
    "ex_esdb_health/node_health:",
    "ex_esdb_health/cluster_health",
)
"""The topics whose last value the broker keeps by default (an MQTT sink retains them)."""

_ENCODE: Final = msgspec.msgpack.Encoder().encode
_ENVELOPE_KEYS: Final = ("v", "type", "ts", "src", "pub", "seq", "id", "corr", "cause", "trace", "sig")


@dataclass(frozen=True, slots=True)
class Item:
    """One delivery in a connector's buffer."""

    delivery: Delivery
    within: int = 0
    """With a broker seq: envelopes of that record taken once this one is (0: all)."""
    parked_row: int | None = None
    """A parked message on its way again: its row in ``connectors.db``."""


def delivery_id(message: Message, broker_seq: int | None, within: int) -> str:
    """The envelope's ``id``, else ``<pub>:<topic>:<seq>``, else ``<instance>:<broker seq>[.<n>]``."""
    if message.id:
        return message.id
    if message.pub and message.seq:
        return f"{message.pub}:{message.topic}:{message.seq}"
    if broker_seq is not None:
        return f"{message.instance.value}:{broker_seq}" + (f".{within}" if within else "")
    return f"{message.src}:{message.topic}:{message.ts}"


def _body(message: Message) -> bytes:
    envelope: dict[str, Any] = {key: getattr(message, key) for key in _ENVELOPE_KEYS}
    envelope = {key: value for key, value in envelope.items() if value is not None}
    envelope["data"] = message.data
    return _ENCODE(envelope)


def delivery_of(
    message: Message, broker_seq: int | None = None, within: int = 0, body: bytes | None = None
) -> Delivery:
    """What a sink receives for a message (live: no broker seq); ``body``: its bytes as they
    travelled, when known (else the envelope encoded again)."""
    topic = message.topic
    _, _, subtopic = topic.partition("/")
    return Delivery(
        id=delivery_id(message, broker_seq, within),
        topic=topic,
        instance=message.instance.value,
        subtopic=subtopic,
        type=message.type,
        json=message_json(message),
        body=_body(message) if body is None else body,
        broker_seq=broker_seq,
        last_value=topic.startswith(LAST_VALUE_PREFIXES),
    )


def item_of(message: Message, broker_seq: int | None = None, within: int = 0) -> Item:
    """The item for a message (live: no broker seq)."""
    return Item(delivery_of(message, broker_seq, within), within)


def parked_item(parked: Parked) -> Item:
    """A parked message, sent again."""
    instance, _, subtopic = parked.topic.partition("/")
    delivery = Delivery(
        id=parked.id,
        topic=parked.topic,
        instance=instance,
        subtopic=subtopic,
        type=str(parked.message.get("type", "")),
        json=parked.message,
        body=parked.body,
        broker_seq=parked.broker_seq,
        last_value=parked.last_value,
    )
    return Item(delivery, 0, parked.row)
