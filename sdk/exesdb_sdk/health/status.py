"""Subscription events and the one mapping from events to statuses.

The tracker and the emitter workers both use :func:`apply_event`, so a subscription means the
same thing wherever its health is judged.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Final, Literal, get_args

from ..messages import SubscriptionHealth
from ..messages.vocabulary import SubscriptionStatus

__all__ = [
    "REPORTER_KEY",
    "SUBSCRIPTION_EVENTS",
    "SubscriptionEvent",
    "SubscriptionState",
    "apply_event",
    "health_report",
]

REPORTER_KEY: Final = "reporter"
"""``SubscriptionHealth.metadata`` key naming the publisher whose observation a report carries."""

SubscriptionEvent = Literal[
    "registration_started",
    "registration_success",
    "registration_failed",
    "proxy_started",
    "proxy_stopped",
    "proxy_crashed",
    "circuit_breaker_opened",
    "circuit_breaker_half_open",
    "circuit_breaker_closed",
    "event_delivery_success",
    "event_delivery_failed",
    "event_gap",
    "heartbeat",
]
SUBSCRIPTION_EVENTS: Final[tuple[str, ...]] = get_args(SubscriptionEvent)

# Events that set a status outright, whatever came before.
_FIXED: Final[dict[str, SubscriptionStatus]] = {
    "registration_started": "registering",
    "registration_success": "healthy",
    "registration_failed": "failed",
    "proxy_started": "healthy",
    "proxy_stopped": "unknown",
    "proxy_crashed": "failed",
    "circuit_breaker_opened": "failed",
    "circuit_breaker_half_open": "degraded",
    "circuit_breaker_closed": "healthy",
    "event_delivery_success": "healthy",
}


@dataclass(slots=True)
class SubscriptionState:
    """What is known of one subscription."""

    name: str
    status: SubscriptionStatus = "unknown"
    last_event: str | None = None
    last_seen: int = 0
    """UTC nanoseconds of the last event heard."""
    event_count: int = 0
    error_count: int = 0
    consecutive_failures: int = 0
    last_error: str | None = None


def apply_event(
    state: SubscriptionState,
    event: str,
    threshold: int,
    *,
    error: str | None = None,
    now_ns: int | None = None,
) -> bool:
    """Apply ``event`` to ``state``; return whether the status changed.

    Delivery failures count as consecutive failures: below ``threshold`` the subscription is
    ``degraded``, at it ``failed``; any success resets the count. A heartbeat keeps the status,
    except that it revives a ``stale`` or ``unknown`` subscription as ``healthy``. An
    ``event_gap`` (events the subscription missed) is an error that makes it ``degraded``, unless
    it is ``failed`` already; the next delivered event makes it ``healthy`` again.
    """
    if event not in SUBSCRIPTION_EVENTS:
        raise ValueError(f"unknown subscription event {event!r}")
    before = state.status
    state.last_event = event
    state.last_seen = time.time_ns() if now_ns is None else now_ns
    state.event_count += 1
    if event == "event_delivery_failed":
        state.error_count += 1
        state.consecutive_failures += 1
        state.last_error = error if error is not None else state.last_error
        state.status = "failed" if state.consecutive_failures >= threshold else "degraded"
    elif event == "event_gap":
        state.error_count += 1
        state.last_error = error if error is not None else state.last_error
        if state.status != "failed":
            state.status = "degraded"
    elif event == "heartbeat":
        if state.status in ("stale", "unknown"):
            state.status = "healthy"
    else:
        if event in ("event_delivery_success", "circuit_breaker_closed", "registration_success"):
            state.consecutive_failures = 0
        if event in ("registration_failed", "proxy_crashed"):
            state.error_count += 1
            state.last_error = error if error is not None else state.last_error
        state.status = _FIXED[event]
    return state.status != before


def health_report(state: SubscriptionState, *, store: str, node: str | None, reporter: str) -> SubscriptionHealth:
    """The ``SubscriptionHealth`` message that tells others what ``state`` says."""
    return SubscriptionHealth(
        store=store,
        subscription=state.name,
        status=state.status,
        event=state.last_event or "heartbeat",
        node=node,
        event_count=state.event_count,
        error_count=state.error_count,
        last_error=state.last_error,
        last_seen=state.last_seen,
        metadata={REPORTER_KEY: reporter},
    )
