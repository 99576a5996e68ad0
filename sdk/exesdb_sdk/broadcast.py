"""One-line broadcast helpers, mirroring the original ``ExESDB.PubSubIntegration``.

Each helper builds the typed message and publishes it on its instance's documented default
sub-topic, through ``publisher=`` or, when none is given, through a module-level default
publisher configured from the environment (``EXESDB_FRONTEND``, ``EXESDB_NODE``,
``EXESDB_SECRET``) and created on first use. The default publisher is shared by every thread,
behind a lock. Every helper takes ``correlation_id`` and ``causation_id`` and returns the
message's sequence number::

    from exesdb_sdk.broadcast import broadcast_alert, broadcast_system_lifecycle

    broadcast_system_lifecycle("started", "ex_esdb", "0.8.0")
    broadcast_alert("node_failure", "critical", "Node down", {"node": "node1"})
"""

from __future__ import annotations

import atexit
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from .messages import (
    AdminAction,
    AuthEvent,
    ComponentHealth,
    DebugTrace,
    Events,
    LogEntry,
    Payload,
    ProcessLifecycle,
    SystemAlert,
    SystemLifecycle,
    ThroughputMetric,
)
from .publisher import Publisher

__all__ = [
    "broadcast",
    "broadcast_alert",
    "broadcast_audit",
    "broadcast_diagnostics",
    "broadcast_health_update",
    "broadcast_lifecycle_event",
    "broadcast_log",
    "broadcast_metrics",
    "broadcast_security_event",
    "broadcast_store_events",
    "broadcast_system_lifecycle",
    "close_default_publisher",
    "default_publisher",
]

_lock = threading.Lock()
_default: Publisher | None = None


def default_publisher() -> Publisher:
    """The shared publisher the helpers use when given none; created on first use."""
    global _default
    with _lock:
        if _default is None or _default.closed:
            _default = Publisher()
        return _default


def close_default_publisher() -> None:
    """Close the shared publisher (flushing what it holds); the next helper call makes a new one."""
    global _default
    with _lock:
        if _default is not None:
            _default.close()
            _default = None


atexit.register(close_default_publisher)


def broadcast(
    payload: Payload,
    subtopic: str | None = None,
    *,
    publisher: Publisher | None = None,
    correlation_id: str | None = None,
    causation_id: str | None = None,
) -> int:
    """Publish any typed message on its instance (its default sub-topic unless ``subtopic``)."""
    if publisher is not None:
        return publisher.publish_message(payload, subtopic, corr=correlation_id, cause=causation_id)
    shared = default_publisher()
    with _lock:
        return shared.publish_message(payload, subtopic, corr=correlation_id, cause=causation_id)


def broadcast_system_lifecycle(
    event: str,
    system: str,
    version: str,
    *,
    node: str | None = None,
    publisher: Publisher | None = None,
    correlation_id: str | None = None,
    causation_id: str | None = None,
) -> int:
    """``SystemLifecycle`` on ``ex_esdb_system/lifecycle``; ``event`` is starting, started,
    stopping or stopped."""
    message = SystemLifecycle(event=event, system=system, version=version, node=node)  # type: ignore[arg-type]
    return broadcast(message, publisher=publisher, correlation_id=correlation_id, causation_id=causation_id)


def broadcast_health_update(
    component: str,
    status: str,
    details: Mapping[str, Any] | None = None,
    *,
    node: str | None = None,
    publisher: Publisher | None = None,
    correlation_id: str | None = None,
    causation_id: str | None = None,
) -> int:
    """``ComponentHealth`` on ``ex_esdb_health/component_health:<component>``; ``status`` is
    healthy, degraded, unhealthy or unknown."""
    message = ComponentHealth(component=component, status=status, details=dict(details or {}), node=node)  # type: ignore[arg-type]
    return broadcast(message, publisher=publisher, correlation_id=correlation_id, causation_id=causation_id)


def broadcast_metrics(
    component: str,
    metrics: Mapping[str, Any],
    *,
    node: str | None = None,
    publisher: Publisher | None = None,
    correlation_id: str | None = None,
    causation_id: str | None = None,
) -> int:
    """``ThroughputMetric`` on ``ex_esdb_metrics/throughput``, from the original's metrics map.

    ``operations_count`` (or ``count``), ``duration_ms``, ``success_count`` and
    ``error_count`` become fields; ``rate_per_sec`` is computed; other keys go to ``metadata``.
    """
    known = {"operations_count", "count", "duration_ms", "success_count", "error_count"}
    message = ThroughputMetric(
        component=component,
        count=metrics.get("operations_count", metrics.get("count", 0)),
        duration_ms=metrics.get("duration_ms", 0),
        success_count=metrics.get("success_count"),
        error_count=metrics.get("error_count"),
        node=node,
        metadata={k: v for k, v in metrics.items() if k not in known},
    )
    return broadcast(message, publisher=publisher, correlation_id=correlation_id, causation_id=causation_id)


def broadcast_alert(
    alert_type: str,
    severity: str,
    message: str,
    metadata: Mapping[str, Any] | None = None,
    *,
    category: str = "system",
    node: str | None = None,
    publisher: Publisher | None = None,
    correlation_id: str | None = None,
    causation_id: str | None = None,
) -> int:
    """``SystemAlert`` on ``ex_esdb_alerts/<severity>``: ``alert_type`` is its title,
    ``message`` its description."""
    alert = SystemAlert(
        severity=severity,  # type: ignore[arg-type]
        title=alert_type,
        description=message,
        category=category,  # type: ignore[arg-type]
        node=node,
        metadata=dict(metadata or {}),
    )
    return broadcast(alert, publisher=publisher, correlation_id=correlation_id, causation_id=causation_id)


def broadcast_lifecycle_event(
    process: str,
    event: str,
    *,
    node: str | None = None,
    reason: str | None = None,
    metadata: Mapping[str, Any] | None = None,
    publisher: Publisher | None = None,
    correlation_id: str | None = None,
    causation_id: str | None = None,
) -> int:
    """``ProcessLifecycle`` on ``ex_esdb_lifecycle/processes``; ``event`` is started, stopped,
    restarted or crashed."""
    message = ProcessLifecycle(
        process=process,
        event=event,  # type: ignore[arg-type]
        node=node,
        reason=reason,
        metadata=dict(metadata or {}),
    )
    return broadcast(message, publisher=publisher, correlation_id=correlation_id, causation_id=causation_id)


def broadcast_audit(
    action: str,
    actor: str,
    target: str | None = None,
    details: Mapping[str, Any] | None = None,
    *,
    result: str = "success",
    node: str | None = None,
    publisher: Publisher | None = None,
    correlation_id: str | None = None,
    causation_id: str | None = None,
) -> int:
    """``AdminAction`` on ``ex_esdb_audit/admin_actions``; ``result`` is success or failure."""
    message = AdminAction(
        action=action,
        actor=actor,
        target=target,
        parameters=dict(details or {}),
        result=result,  # type: ignore[arg-type]
        node=node,
    )
    return broadcast(message, publisher=publisher, correlation_id=correlation_id, causation_id=causation_id)


def broadcast_security_event(
    event: str,
    principal: str,
    *,
    success: bool,
    method: str | None = None,
    source_ip: str | None = None,
    reason: str | None = None,
    node: str | None = None,
    publisher: Publisher | None = None,
    correlation_id: str | None = None,
    causation_id: str | None = None,
) -> int:
    """``AuthEvent`` on ``ex_esdb_security/auth``; ``event`` is login, logout, login_failed,
    token_issued or token_revoked."""
    message = AuthEvent(
        event=event,  # type: ignore[arg-type]
        principal=principal,
        success=success,
        method=method,
        source_ip=source_ip,
        reason=reason,
        node=node,
    )
    return broadcast(message, publisher=publisher, correlation_id=correlation_id, causation_id=causation_id)


def broadcast_diagnostics(
    component: str,
    message: str,
    data: Mapping[str, Any] | None = None,
    *,
    span_id: str | None = None,
    node: str | None = None,
    publisher: Publisher | None = None,
    correlation_id: str | None = None,
    causation_id: str | None = None,
) -> int:
    """``DebugTrace`` on ``ex_esdb_diagnostics/traces:<component>``."""
    trace = DebugTrace(component=component, message=message, data=dict(data or {}), span_id=span_id, node=node)
    return broadcast(trace, publisher=publisher, correlation_id=correlation_id, causation_id=causation_id)


def broadcast_log(
    level: str,
    message: str,
    logger: str = "root",
    metadata: Mapping[str, Any] | None = None,
    *,
    node: str | None = None,
    publisher: Publisher | None = None,
    correlation_id: str | None = None,
    causation_id: str | None = None,
) -> int:
    """``LogEntry`` on ``ex_esdb_logging/<logger>``; ``level`` is debug, info, warning, error
    or critical."""
    entry = LogEntry(
        level=level,  # type: ignore[arg-type]
        message=message,
        logger=logger,
        node=node,
        metadata=dict(metadata or {}),
    )
    return broadcast(entry, publisher=publisher, correlation_id=correlation_id, causation_id=causation_id)


def broadcast_store_events(
    store: str,
    selector: str,
    events: Sequence[Mapping[str, Any]],
    *,
    publisher: Publisher | None = None,
    correlation_id: str | None = None,
    causation_id: str | None = None,
) -> int:
    """``Events`` on ``ex_esdb_events/<store>:<selector>``: store events for emitter workers."""
    message = Events(store=store, selector=selector, events=[dict(event) for event in events])
    return broadcast(message, publisher=publisher, correlation_id=correlation_id, causation_id=causation_id)
