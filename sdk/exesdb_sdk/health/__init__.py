"""Health-gated emission: subscription health tracking, emitter workers, the circuit breaker.

See ``README.md`` ("Health gating") for the picture. Everything here talks to the broker
through the SDK's own publisher and subscriber; nothing needs the broker to know about it.
"""

from .breaker import BreakerState, CircuitBreaker
from .config import OVERFLOW_POLICIES, HealthConfig, load_health_config
from .emitter import (
    AckHook,
    BatchDelivery,
    EmitterPool,
    EmitterWorker,
    StoreEvent,
    SubscriberFunction,
    WorkerHost,
    WorkerStats,
)
from .status import REPORTER_KEY, SUBSCRIPTION_EVENTS, SubscriptionEvent, SubscriptionState, apply_event
from .tracker import SubscriptionHealthTracker

__all__ = [
    "OVERFLOW_POLICIES",
    "REPORTER_KEY",
    "SUBSCRIPTION_EVENTS",
    "AckHook",
    "BatchDelivery",
    "BreakerState",
    "CircuitBreaker",
    "EmitterPool",
    "EmitterWorker",
    "HealthConfig",
    "StoreEvent",
    "SubscriberFunction",
    "SubscriptionEvent",
    "SubscriptionHealthTracker",
    "SubscriptionState",
    "WorkerHost",
    "WorkerStats",
    "apply_event",
    "load_health_config",
]
