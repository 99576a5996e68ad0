"""``ex_esdb_health``: health monitoring and status."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from ..instances import Instance
from .base import Payload
from .vocabulary import CheckResult, HealthStatus, SubscriptionStatus

__all__ = [
    "ClusterHealth",
    "ComponentHealth",
    "HealthCheck",
    "HealthSummary",
    "NodeHealth",
    "SubscriptionHealth",
]


class NodeHealth(Payload):
    """The health of one node. Usage figures are fractions from 0 to 1."""

    __instance__: ClassVar[Instance] = Instance.HEALTH
    __subtopic__: ClassVar[str] = "node_health:{node}"

    node: str
    status: HealthStatus
    checks: dict[str, Any] = {}
    load_avg: float | None = None
    memory_usage: float | None = None
    disk_usage: float | None = None


class ClusterHealth(Payload):
    """The health of the cluster as a whole."""

    __instance__: ClassVar[Instance] = Instance.HEALTH
    __subtopic__: ClassVar[str] = "cluster_health"

    status: HealthStatus
    healthy_nodes: int
    total_nodes: int
    degraded_nodes: list[str] = []
    unhealthy_nodes: list[str] = []
    quorum_status: Literal["available", "degraded", "lost"] = "available"


class ComponentHealth(Payload):
    """The health of one component: ``broadcast_health_update(component, status, details)``."""

    __instance__: ClassVar[Instance] = Instance.HEALTH
    __subtopic__: ClassVar[str] = "component_health:{component}"

    component: str
    status: HealthStatus
    node: str | None = None
    details: dict[str, Any] = {}
    last_check: int | None = None
    """When the component was last checked, UTC nanoseconds."""


class HealthCheck(Payload):
    """The outcome of one health check."""

    __instance__: ClassVar[Instance] = Instance.HEALTH
    __subtopic__: ClassVar[str] = "health_checks"

    check_name: str
    node: str
    result: CheckResult
    duration_ms: float
    details: dict[str, Any] = {}
    error: str | None = None


class SubscriptionHealth(Payload):
    """A subscription's status changed, and the event that changed it (the tracker's output)."""

    __instance__: ClassVar[Instance] = Instance.HEALTH
    __subtopic__: ClassVar[str] = "store_health:{store}"

    store: str
    subscription: str
    status: SubscriptionStatus
    event: str
    """What happened: ``registration_success``, ``event_delivery_failed``, ``circuit_breaker_opened``,
    ``event_gap`` (events the subscription missed; ``last_error`` says how many)..."""
    node: str | None = None
    event_count: int = 0
    error_count: int = 0
    last_error: str | None = None
    last_seen: int | None = None
    """When the subscription was last heard of, UTC nanoseconds."""
    metadata: dict[str, Any] = {}


class HealthSummary(Payload):
    """How many subscriptions of a store are in each status."""

    __instance__: ClassVar[Instance] = Instance.HEALTH
    __subtopic__: ClassVar[str] = "health_summary:{store}"

    store: str
    total: int
    healthy: int = 0
    degraded: int = 0
    failed: int = 0
    registering: int = 0
    stale: int = 0
    unknown: int = 0
