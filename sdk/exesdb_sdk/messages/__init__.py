"""The message catalogue: a typed class for every kind of event on each instance.

Each class is the ``data`` of an envelope whose ``type`` is the class name, belongs to one
instance and has a documented default sub-topic::

    from exesdb_sdk.messages import NodeHealth
    health = NodeHealth(node="node1", status="healthy", load_avg=0.4)
    pub.publish_message(health)            # on ex_esdb_health/node_health:node1
"""

from .alerts import AlertAck, AlertEscalation, NotificationStatus, SystemAlert
from .audit import AccessLog, AdminAction, ComplianceEvent, DataChange
from .base import Payload, lookup, payload_types, registry
from .diagnostics import DebugTrace, ErrorAnalysis, PerformanceAnalysis, SystemState
from .events import Events
from .health import (
    ClusterHealth,
    ComponentHealth,
    HealthCheck,
    HealthSummary,
    NodeHealth,
    SubscriptionHealth,
)
from .lifecycle import ClusterMembership, NodeLifecycle, ProcessLifecycle, SupervisionEvent
from .logs import LogEntry, LogFilter, LogRotation, LogSummary
from .metrics import (
    BrokerMetrics,
    EmitterMetrics,
    LatencyMetric,
    MetricAlert,
    MetricsSummary,
    PerformanceMetric,
    ResourceUsage,
    ThroughputMetric,
)
from .security import AccessViolation, AuthEvent, SecurityAlert, SessionEvent
from .system import FeatureToggle, SystemConfig, SystemLifecycle
from .vocabulary import (
    HEALTH_STATUSES,
    SEVERITIES,
    SUBSCRIPTION_STATUSES,
    AlertCategory,
    CheckResult,
    HealthStatus,
    LogLevel,
    Severity,
    SubscriptionStatus,
    SystemEvent,
)

__all__ = [
    "HEALTH_STATUSES",
    "SEVERITIES",
    "SUBSCRIPTION_STATUSES",
    "AccessLog",
    "AccessViolation",
    "AdminAction",
    "AlertAck",
    "AlertCategory",
    "AlertEscalation",
    "AuthEvent",
    "BrokerMetrics",
    "CheckResult",
    "ClusterHealth",
    "ClusterMembership",
    "ComplianceEvent",
    "ComponentHealth",
    "DataChange",
    "DebugTrace",
    "EmitterMetrics",
    "ErrorAnalysis",
    "Events",
    "FeatureToggle",
    "HealthCheck",
    "HealthStatus",
    "HealthSummary",
    "LatencyMetric",
    "LogEntry",
    "LogFilter",
    "LogLevel",
    "LogRotation",
    "LogSummary",
    "MetricAlert",
    "MetricsSummary",
    "NodeHealth",
    "NodeLifecycle",
    "NotificationStatus",
    "Payload",
    "PerformanceAnalysis",
    "PerformanceMetric",
    "ProcessLifecycle",
    "ResourceUsage",
    "SecurityAlert",
    "SessionEvent",
    "Severity",
    "SubscriptionHealth",
    "SubscriptionStatus",
    "SupervisionEvent",
    "SystemAlert",
    "SystemConfig",
    "SystemEvent",
    "SystemLifecycle",
    "SystemState",
    "ThroughputMetric",
    "lookup",
    "payload_types",
    "registry",
]
