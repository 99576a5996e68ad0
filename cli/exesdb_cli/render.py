"""How ``exesdb tail`` shows a message: pretty (coloured), JSON lines, or data only."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from typing import Any, Final

from exesdb_sdk import Message

__all__ = ["STYLES", "category", "key_fields", "pretty", "to_json", "to_raw"]

# The seed's colours: success white on green, failure white on red, action white on amber,
# health white on cyan; alerts by severity.
STYLES: Final[dict[str, str]] = {
    "success": "white on green",
    "failure": "white on red",
    "action": "white on dark_orange",
    "health": "white on cyan",
    "info": "white on blue",
    "warning": "black on yellow",
    "error": "white on red",
    "critical": "bold white on red",
}
_BAD: Final = frozenset({"unhealthy", "failed", "degraded", "down", "crashed", "error", "critical", "denied"})
_GOOD: Final = frozenset({"healthy", "started", "success", "pass", "allowed", "up", "joined", "closed"})
_KEYS: Final[tuple[str, ...]] = (
    "status",
    "event",
    "severity",
    "title",
    "node",
    "component",
    "store",
    "subscription",
    "metric_name",
    "value",
    "level",
    "message",
    "principal",
    "action",
    "result",
)
_MAX_FIELDS: Final = 5


def category(message: Message) -> str | None:
    """The colour category of a message, as the seed colours its log lines."""
    data = message.data
    if message.instance.alias == "alerts" and data.get("severity") in STYLES:
        return str(data["severity"])
    words = {str(data.get(key)).lower() for key in ("status", "event", "result", "level")}
    if words & _BAD or message.type in ("AccessViolation", "SecurityAlert", "ErrorAnalysis"):
        return "failure"
    if words & _GOOD:
        return "success"
    if message.instance.alias in ("health", "lifecycle"):
        return "health"
    if message.instance.alias in ("metrics", "events"):
        return "action"
    return None


def key_fields(message: Message) -> str:
    """The few fields that say what happened, ``key=value`` separated by spaces."""
    data = message.data
    chosen = [key for key in _KEYS if data.get(key) is not None][:_MAX_FIELDS]
    if not chosen:
        chosen = [key for key, value in data.items() if value is not None][:_MAX_FIELDS]
    parts = []
    for key in chosen:
        value = data[key]
        text = value if isinstance(value, str) else json.dumps(_plain(value), separators=(",", ":"))
        parts.append(f"{key}={text if len(text) <= 60 else text[:57] + '...'}")
    if message.type == "Events":
        parts.append(f"events={len(data.get('events', []))}")
    return " ".join(parts)


def _plain(value: Any) -> Any:
    """JSON-ready: bytes as base64, datetimes as ISO-8601, containers recursively."""
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _iso(ts_ns: int) -> str:
    return datetime.fromtimestamp(ts_ns / 1e9, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def to_json(message: Message) -> str:
    """One JSON object: topic, instance, type, ts (ISO-8601), src, seq, corr and data; plus
    ``"replayed": true`` for a message from the broker's journal or last values."""
    entry = {
        "topic": message.topic,
        "instance": message.instance.value,
        "type": message.type,
        "ts": _iso(message.ts),
        "src": message.src,
        "seq": message.seq,
        "corr": message.corr,
        "data": _plain(message.data),
    }
    if message.replayed:
        entry["replayed"] = True
    return json.dumps(entry, ensure_ascii=False)


def to_raw(message: Message) -> str:
    """The data only, as JSON."""
    return json.dumps(_plain(message.data), ensure_ascii=False)


def pretty(message: Message, *, received: float | None = None, delta: float | None = None) -> tuple[str, str | None]:
    """The text of a pretty line and its style. With ``received`` (a ``time.time()``), the
    line starts with the receive time and ``delta`` seconds since the previous line."""
    sent = datetime.fromtimestamp(message.ts / 1e9, UTC).strftime("%H:%M:%S.%f")[:-3] if message.ts else "--:--:--.---"
    prefix = ""
    if received is not None:
        stamp = datetime.fromtimestamp(received, UTC).strftime("%H:%M:%S.%f")[:-3]
        prefix = f"{stamp} +{(delta or 0.0):.3f}s "
    text = f"{prefix}{sent} {message.instance.alias:<11} {message.subtopic} {message.type} {key_fields(message)}"
    style = category(message)
    return text, STYLES.get(style) if style else None
