"""``ex_esdb_metrics``: performance metrics."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from ..instances import Instance
from .base import Payload
from .vocabulary import Severity

__all__ = [
    "BrokerMetrics",
    "EmitterMetrics",
    "LatencyMetric",
    "MetricAlert",
    "MetricsSummary",
    "PerformanceMetric",
    "ResourceUsage",
    "ThroughputMetric",
]


class PerformanceMetric(Payload):
    """One named measurement."""

    __instance__: ClassVar[Instance] = Instance.METRICS
    __subtopic__: ClassVar[str] = "performance"

    metric_name: str
    value: float
    unit: str = ""
    component: str | None = None
    node: str | None = None
    tags: dict[str, str] = {}


class ThroughputMetric(Payload):
    """Operations over a period: ``broadcast_metrics(component, metrics)``.

    ``rate_per_sec`` is computed from ``count`` and ``duration_ms`` when not given.
    """

    __instance__: ClassVar[Instance] = Instance.METRICS
    __subtopic__: ClassVar[str] = "throughput"

    component: str
    count: int
    duration_ms: float
    success_count: int | None = None
    error_count: int | None = None
    rate_per_sec: float | None = None
    node: str | None = None
    metadata: dict[str, Any] = {}

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.rate_per_sec is None:
            self.rate_per_sec = self.count * 1000.0 / self.duration_ms if self.duration_ms > 0 else 0.0


class LatencyMetric(Payload):
    """Latency percentiles of one operation, in milliseconds."""

    __instance__: ClassVar[Instance] = Instance.METRICS
    __subtopic__: ClassVar[str] = "latency"

    component: str
    operation: str
    p50_ms: float
    p95_ms: float | None = None
    p99_ms: float | None = None
    max_ms: float | None = None
    samples: int = 0
    node: str | None = None


class ResourceUsage(Payload):
    """CPU, memory and disk use of a node. Percentages are from 0 to 100."""

    __instance__: ClassVar[Instance] = Instance.METRICS
    __subtopic__: ClassVar[str] = "resources:{node}"

    node: str
    cpu_percent: float
    memory_bytes: int
    memory_percent: float | None = None
    disk_percent: float | None = None
    open_files: int | None = None


class MetricAlert(Payload):
    """A metric crossed a threshold."""

    __instance__: ClassVar[Instance] = Instance.METRICS
    __subtopic__: ClassVar[str] = "metric_alerts"

    metric_name: str
    value: float
    threshold: float
    comparison: Literal["above", "below"] = "above"
    severity: Severity = "warning"
    component: str | None = None
    node: str | None = None


class MetricsSummary(Payload):
    """A store's delivery figures over the last reporting period."""

    __instance__: ClassVar[Instance] = Instance.METRICS
    __subtopic__: ClassVar[str] = "metrics_summary:{store}"

    store: str
    events_per_second: float
    total_events: int
    active_subscriptions: int
    dropped_events: int = 0
    period_ms: float | None = None
    node: str | None = None
    missed_events: int = 0
    """Messages of events the store's workers never received (see ``EmitterMetrics.missed_events``)."""


class EmitterMetrics(Payload):
    """One emitter worker's figures, published every ``metrics_interval``."""

    __instance__: ClassVar[Instance] = Instance.METRICS
    __subtopic__: ClassVar[str] = "store_metrics:{store}"

    store: str
    subscription: str
    events_per_second: float
    total_events: int
    dropped_events: int = 0
    buffered: int = 0
    paused: bool = False
    breaker: Literal["closed", "open", "half_open"] = "closed"
    failures: int = 0
    missed_events: int = 0
    """Messages of events the worker's subscription never received, by the publishers' sequence
    numbers (a broker restart, a subscriber queue overflow): counted, not recovered."""


class BrokerMetrics(Payload):
    """The broker's own figures, published every ``metrics_interval`` seconds."""

    __instance__: ClassVar[Instance] = Instance.METRICS
    __subtopic__: ClassVar[str] = "broker"

    node: str
    uptime: float
    messages: int
    envelopes: int
    bytes: int
    rate: float
    malformed: int
    subscribers: int
    publishers: int
