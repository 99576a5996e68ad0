"""A message as a JSON object: what ``exesdb tail --json`` prints and the HTTP stream sends."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Any

from .protocol import Message

__all__ = ["iso_time", "json_ready", "message_json"]


def json_ready(value: Any) -> Any:
    """JSON-ready: bytes as base64, datetimes as ISO-8601, containers recursively."""
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_ready(v) for v in value]
    return value


def iso_time(ts_ns: int) -> str:
    """UTC nanoseconds since the epoch as ISO-8601 with microseconds and ``Z``."""
    return datetime.fromtimestamp(ts_ns / 1e9, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def message_json(message: Message) -> dict[str, Any]:
    """One JSON-ready object: topic, instance, type, ts (ISO-8601), src, seq, corr and data; plus
    ``"replayed": true`` for a message from the broker's journal or last values."""
    entry = {
        "topic": message.topic,
        "instance": message.instance.value,
        "type": message.type,
        "ts": iso_time(message.ts),
        "src": message.src,
        "seq": message.seq,
        "corr": message.corr,
        "data": json_ready(message.data),
    }
    if message.replayed:
        entry["replayed"] = True
    return entry
