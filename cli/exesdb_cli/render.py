"""How ``exesdb tail`` shows a message: pretty (coloured), JSON lines, or data only."""

from __future__ import annotations

import functools
import json
import math
import string
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

from exesdb_sdk import Message, ValidationError
from exesdb_sdk.jsonview import json_ready, message_json
from exesdb_sdk.messages.base import lookup

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["STYLES", "category", "key_fields", "make_console", "pretty", "to_json", "to_raw"]

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
_BAD: Final = frozenset(
    {
        "unhealthy",
        "failed",
        "degraded",
        "down",
        "crashed",
        "error",
        "critical",
        "denied",
        "fail",
        "timeout",
        "stale",
        "login_failed",
        "non_compliant",
        "max_restarts_reached",
        "partitioned",
    }
)
_GOOD: Final = frozenset(
    {"healthy", "started", "success", "pass", "allowed", "up", "joined", "closed", "compliant", "healed", "delivered"}
)
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
    data: Mapping[str, Any] = message.data
    if message.instance.alias == "alerts" and data.get("severity") in STYLES:
        return str(data["severity"])
    words = {str(data.get(key)).lower() for key in ("status", "event", "result", "level")}
    if words & _BAD or message.type in ("AccessViolation", "SecurityAlert", "ErrorAnalysis"):
        return "failure"
    if data.get("success") is False or data.get("paused") is True:  # a refused login, a held emitter
        return "failure"
    if words & _GOOD:
        return "success"
    if message.instance.alias in ("health", "lifecycle"):
        return "health"
    if message.instance.alias in ("metrics", "events"):
        return "action"
    return None


def key_fields(message: Message) -> str:
    """What happened, with its numbers: for catalogue types the fields and figures that matter
    (``3/4 healthy``, ``4500 ops/s``, ``350.2 msg/s 3 subscribers``), ``key=value`` or a short
    phrase each, separated by spaces; for other types the first few fields, ``key=value``."""
    data: Mapping[str, Any] = message.data
    layout = _LAYOUTS.get(message.type)
    if layout is not None:
        data = _whole(message)
        try:
            return " ".join(part for part in (_part(entry, data) for entry in layout) if part)
        except (TypeError, ValueError, OverflowError):  # data that does not fit its type: shown as it is
            pass
    chosen = [key for key in _KEYS if data.get(key) is not None][:_MAX_FIELDS]
    if not chosen:
        chosen = [key for key, value in data.items() if value is not None][:_MAX_FIELDS]
    return " ".join(f"{key}={_value(data[key])}" for key in chosen)


def _whole(message: Message) -> Mapping[str, Any]:
    """A catalogue message's data with the defaults its body leaves out filled in (its typed
    payload's fields); the data as it is when it does not fit its type."""
    payload = message.payload
    if payload is None:
        cls = lookup(message.type)
        if cls is None:
            return message.data
        try:
            payload = cls.from_data(message.data)
        except ValidationError:
            return message.data
    whole: dict[str, Any] = payload.to_data()
    return whole


# --------------------------------------------------------------------------- per-type layouts
#
# A layout entry is a template or a function of the data. A template names fields in braces,
# with an optional format (below); it is shown only when every field it names is present and
# not None, and, when it starts with "?", only when each is also non-zero (non-empty, true).
# A bare field name is short for "name={name}". Formats: n (a number), pct (a 0..1 fraction as
# a percentage), size (bytes), dur (seconds), list (items joined by commas).

Entry = str | Callable[[Mapping[str, Any]], str | None]
Layout = tuple[Entry, ...]
_FORMATTER: Final = string.Formatter()
_MAX_TEXT: Final = 60


def _value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(json_ready(value), separators=(",", ":"))
    return text if len(text) <= _MAX_TEXT else text[: _MAX_TEXT - 3] + "..."


def _number(value: Any) -> int | float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"not a number: {value!r}")
    return value


def _num(value: Any) -> str:
    """``4500``, ``2.5``, ``0.33``: integers as they are, other numbers to two decimals at most."""
    number = _number(value)
    if isinstance(number, int) or not math.isfinite(number):
        return str(number)
    if number.is_integer() and abs(number) < 1e15:
        return str(int(number))
    return f"{number:.2f}".rstrip("0").rstrip(".")


def _size(value: Any) -> str:
    """Bytes: ``512 B``, ``446.1 KiB``, ``10.0 MiB``."""
    number = float(_number(value))
    if abs(number) < 1024:
        return f"{_num(value)} B"
    for unit in ("KiB", "MiB", "GiB"):
        number /= 1024
        if abs(number) < 1024:
            return f"{number:.1f} {unit}"
    return f"{number / 1024:.1f} TiB"


def _duration(value: Any) -> str:
    seconds = float(_number(value))
    if seconds < 60:
        return f"{_num(round(seconds, 1))}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"


def _percent(value: Any) -> str:
    return f"{_number(value) * 100:.0f}%"


def _items(value: Any) -> str:
    if not isinstance(value, list | tuple):
        raise TypeError(f"not a list: {value!r}")
    return _value(",".join(str(item) for item in value))


_FORMATS: Final[Mapping[str, Callable[[Any], str]]] = {
    "": _value,
    "n": _num,
    "pct": _percent,
    "size": _size,
    "dur": _duration,
    "list": _items,
}


@functools.lru_cache(maxsize=256)
def _compiled(template: str) -> tuple[bool, tuple[tuple[str, str | None, str], ...]]:
    """(whether each field must be non-zero, the (literal, field, format) pieces) of a template."""
    truthy = template.startswith("?")
    body = template[1:] if truthy else template
    if body.isidentifier():
        body = f"{body}={{{body}}}"
    pieces = tuple((literal, name, spec or "") for literal, name, spec, _ in _FORMATTER.parse(body))
    return truthy, pieces


def _part(entry: Entry, data: Mapping[str, Any]) -> str | None:
    if not isinstance(entry, str):
        return entry(data)
    truthy, pieces = _compiled(entry)
    out = []
    for literal, name, spec in pieces:
        out.append(literal)
        if name is None:
            continue
        value = data.get(name)
        if value is None or (truthy and not value):
            return None
        out.append(_FORMATS[spec](value))
    return "".join(out)


def _throughput(data: Mapping[str, Any]) -> str | None:
    rate = data.get("rate_per_sec")
    if rate is None:  # sent without it: worked out as ThroughputMetric does
        count, duration = data.get("count"), data.get("duration_ms")
        if count is None or duration is None:
            return None
        rate = _number(count) * 1000.0 / _number(duration) if _number(duration) > 0 else 0.0
    return f"{_num(rate)} ops/s"


def _events(data: Mapping[str, Any]) -> str:
    """``1 event (OrderPlaced order-7 v7)``, ``3 events (first OrderPlaced ...)``."""
    events = data.get("events") or []
    if not isinstance(events, list):
        raise TypeError("events is not a list")
    count = f"{len(events)} event{'' if len(events) == 1 else 's'}"
    first = events[0] if events and isinstance(events[0], Mapping) else {}
    what = [str(first[key]) for key in ("event_type", "stream_id") if first.get(key) is not None]
    if first.get("version") is not None:
        what.append(f"v{first['version']}")
    if not what:
        return count
    return f"{count} ({'first ' if len(events) > 1 else ''}{' '.join(what)})"


def _memory(data: Mapping[str, Any]) -> str | None:
    used, share = data.get("memory_bytes"), data.get("memory_percent")
    if used is None:
        return None
    return f"mem={_size(used)}" + (f" ({_num(share)}%)" if share is not None else "")


def _log_counts(data: Mapping[str, Any]) -> str | None:
    counts = data.get("counts")
    if not isinstance(counts, Mapping) or not counts:
        return None
    return " ".join(f"{level}={_num(n)}" for level, n in counts.items())


def _config_change(data: Mapping[str, Any]) -> str | None:
    if "value" not in data:
        return None
    value = _value(data["value"])
    previous = data.get("previous")
    return f"{_value(previous)} -> {value}" if previous is not None else f"value={value}"


def _if_status(statuses: frozenset[str], template: str) -> Callable[[Mapping[str, Any]], str | None]:
    """``template``, only while the message's status is one of ``statuses``."""
    return lambda data: _part(template, data) if data.get("status") in statuses else None


_TROUBLE: Final = frozenset({"failed", "degraded"})

_LAYOUTS: Final[Mapping[str, Layout]] = {
    # health
    "NodeHealth": ("status", "node", "load={load_avg:n}", "mem={memory_usage:pct}", "disk={disk_usage:pct}"),
    "ClusterHealth": (
        "status",
        "{healthy_nodes}/{total_nodes} nodes healthy",
        "?degraded={degraded_nodes:list}",
        "?unhealthy={unhealthy_nodes:list}",
        lambda data: None if data.get("quorum_status") in (None, "available") else _part("quorum_status", data),
    ),
    "ComponentHealth": ("status", "component", "node"),
    "HealthCheck": ("check={check_name}", "result", "node", "{duration_ms:n} ms", "error"),
    "SubscriptionHealth": (
        "status",
        "event",
        "store",
        "subscription",
        "?errors={error_count}",
        _if_status(_TROUBLE, "last_error"),
    ),
    "HealthSummary": (
        "store",
        "{healthy}/{total} healthy",
        "?{degraded} degraded",
        "?{failed} failed",
        "?{registering} registering",
        "?{stale} stale",
        "?{unknown} unknown",
    ),
    # metrics
    "PerformanceMetric": ("{metric_name}={value:n}", "?{unit}", "component", "node"),
    "ThroughputMetric": ("component", _throughput, "({count} in {duration_ms:n} ms)", "errors={error_count}", "node"),
    "LatencyMetric": (
        "component",
        "operation",
        "p50={p50_ms:n} ms",
        "p95={p95_ms:n} ms",
        "p99={p99_ms:n} ms",
        "max={max_ms:n} ms",
        "?samples={samples}",
    ),
    "ResourceUsage": ("node", "cpu={cpu_percent:n}%", _memory, "disk={disk_percent:n}%", "files={open_files}"),
    "MetricAlert": ("severity", "{metric_name}={value:n}", "{comparison} {threshold:n}", "component", "node"),
    "MetricsSummary": (
        "store",
        "{events_per_second:n} events/s",
        "{total_events} delivered",
        "{active_subscriptions} active subscriptions",
        "{dropped_events} dropped",
        "node",
    ),
    "EmitterMetrics": (
        "subscription",
        "{events_per_second:n} events/s",
        "{total_events} delivered",
        "?{buffered} buffered",
        "breaker={breaker}",
        "?paused={paused}",
        "?{failures} failures",
        "?{dropped_events} dropped",
    ),
    "BrokerMetrics": (
        "node",
        "{rate:n} msg/s",
        "{messages} messages",
        "{subscribers} subscribers",
        "{publishers} publishers",
        "{malformed} malformed",
        "{bytes:size}",
        "up {uptime:dur}",
    ),
    # alerts
    "SystemAlert": ("severity", "title", "source", "node"),
    "AlertAck": ("alert_id", "acknowledged_by", "note"),
    "AlertEscalation": ("severity", "alert_id", "level", "escalated_to", "reason"),
    "NotificationStatus": ("status", "channel", "recipient", "alert_id", "error"),
    # audit
    "DataChange": ("operation", "store", "stream", "version", "changed_by"),
    "AdminAction": ("action", "actor", "target", "result"),
    "AccessLog": ("principal", "action", "resource", "result", "source_ip"),
    "ComplianceEvent": ("status", "regulation", "requirement"),
    # diagnostics
    "DebugTrace": ("component", "message", "span_id"),
    "PerformanceAnalysis": ("component", "operation", "{duration_ms:n} ms", "bottleneck"),
    "SystemState": ("node", "up {uptime_s:dur}", "processes", "mem={memory_bytes:size}"),
    "ErrorAnalysis": ("component", "error_type", "count", "message"),
    # events
    "Events": ("store", _events),
    # lifecycle
    "NodeLifecycle": ("event", "node", "reason"),
    "ProcessLifecycle": ("event", "process", "pid", "node", "reason"),
    "SupervisionEvent": ("event", "supervisor", "child", "reason"),
    "ClusterMembership": ("event", "node", "{cluster_size} members"),
    # logging
    "LogEntry": ("level", "message", "node"),
    "LogSummary": ("{total} lines in {period_s:dur}", _log_counts, "node"),
    "LogFilter": ("filter_id", "pattern", "action", "level", "enabled"),
    "LogRotation": ("log_file", "{size_bytes:size}", "rotated_to", "reason"),
    # security
    "AuthEvent": ("event", "principal", "success", "method", "source_ip", "reason"),
    "AccessViolation": ("severity", "principal", "action", "resource", "reason"),
    "SecurityAlert": ("severity", "threat_type", "description", "source_ip"),
    "SessionEvent": ("event", "principal", "session_id"),
    # system
    "SystemLifecycle": ("event", "system", "version", "reason"),
    "SystemConfig": ("component", "key", _config_change, "changed_by"),
    "FeatureToggle": ("feature", "enabled", "scope", "changed_by"),
}


def to_json(message: Message) -> str:
    """One JSON object (see :func:`exesdb_sdk.jsonview.message_json`)."""
    return json.dumps(message_json(message), ensure_ascii=False)


def to_raw(message: Message) -> str:
    """The data only, as JSON."""
    return json.dumps(json_ready(message.data), ensure_ascii=False)


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


def make_console(*, force_colour: bool) -> Console:
    """The rich console pretty lines are printed with: coloured on a terminal and, with
    ``force_colour`` (``--pretty`` asked for explicitly), in pipes and files too. ``NO_COLOR``
    still turns colour off; ``FORCE_COLOR`` turns it on without ``force_colour``."""
    from rich.console import Console

    return Console(highlight=False, soft_wrap=True, force_terminal=True if force_colour else None)
