"""The enumerated values shared by the catalogue: one vocabulary per idea, used everywhere."""

from __future__ import annotations

from typing import Literal, get_args

__all__ = [
    "HEALTH_STATUSES",
    "SEVERITIES",
    "SUBSCRIPTION_STATUSES",
    "AlertCategory",
    "CheckResult",
    "HealthStatus",
    "LogLevel",
    "Severity",
    "SubscriptionStatus",
    "SystemEvent",
]

HealthStatus = Literal["healthy", "degraded", "unhealthy", "unknown"]
"""Health of a node, a component or the cluster."""

SubscriptionStatus = Literal["healthy", "degraded", "failed", "registering", "stale", "unknown"]
"""Health of a subscription: ``registering`` until it is set up, ``degraded`` after a failure
short of the threshold or after events it missed (``event_gap``), ``failed`` at the threshold,
``stale`` when nothing has been heard for three check intervals."""

Severity = Literal["info", "warning", "error", "critical"]
AlertCategory = Literal["system", "performance", "security", "data", "network"]
CheckResult = Literal["pass", "fail", "timeout"]
SystemEvent = Literal["starting", "started", "stopping", "stopped"]
LogLevel = Literal["debug", "info", "warning", "error", "critical"]

HEALTH_STATUSES: tuple[str, ...] = get_args(HealthStatus)
SUBSCRIPTION_STATUSES: tuple[str, ...] = get_args(SubscriptionStatus)
SEVERITIES: tuple[str, ...] = get_args(Severity)
