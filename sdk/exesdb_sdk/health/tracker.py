"""``SubscriptionHealthTracker``: the health of every subscription of one store."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
import time
from collections import Counter
from collections.abc import Coroutine
from typing import Any

from .. import observe
from ..aio import AsyncSubscriber
from ..messages import HealthSummary, SubscriptionHealth
from ..messages.vocabulary import SUBSCRIPTION_STATUSES
from ._loop import BusService
from .config import HealthConfig
from .status import SubscriptionState, apply_event, health_report

__all__ = ["SubscriptionHealthTracker"]

log = logging.getLogger("exesdb.health")


class SubscriptionHealthTracker(BusService):
    """Tracks the subscriptions of ``store`` and publishes their health.

    Feed it with :meth:`record` (any thread) and, when ``listen`` is true, with the
    ``SubscriptionHealth`` reports other processes publish on
    ``ex_esdb_health/store_health:<store>`` (emitter workers report their breakers there). It
    applies the one event-to-status mapping of :mod:`exesdb_sdk.health.status`, counts
    consecutive failures against ``unhealthy_threshold``, marks a subscription ``stale`` when
    nothing is heard of it for three ``check_interval`` s, publishes a ``SubscriptionHealth``
    whenever a status changes and a ``HealthSummary`` on ``health_summary:<store>`` every
    ``check_interval``.

    Example::

        with SubscriptionHealthTracker("orders") as tracker:
            tracker.record("orders:$all", "registration_success")
            print(tracker.summary())
    """

    _name = "exesdb-tracker"

    def __init__(
        self,
        store: str,
        *,
        config: HealthConfig | None = None,
        frontend: str | None = None,
        backend: str | None = None,
        node: str | None = None,
        secret: str | bytes | None = None,
        listen: bool = True,
    ) -> None:
        super().__init__(frontend, backend, node, secret)
        self.store = store
        self.config = config if config is not None else HealthConfig()
        self._listen = listen
        self._lock = threading.Lock()
        self._states: dict[str, SubscriptionState] = {}

    # -- the query API ---------------------------------------------------------------------

    def subscription(self, name: str) -> SubscriptionState | None:
        """A copy of what is known of one subscription, or ``None``."""
        with self._lock:
            state = self._states.get(name)
            return dataclasses.replace(state) if state is not None else None

    def subscriptions(self) -> list[SubscriptionState]:
        """Copies of every tracked subscription, by name."""
        with self._lock:
            return [dataclasses.replace(self._states[name]) for name in sorted(self._states)]

    def summary(self) -> HealthSummary:
        """How many subscriptions are in each status."""
        with self._lock:
            counts: Counter[str] = Counter(state.status for state in self._states.values())
            return HealthSummary(
                store=self.store,
                total=len(self._states),
                **{status: counts.get(status, 0) for status in SUBSCRIPTION_STATUSES},
            )

    # -- feeding it ------------------------------------------------------------------------

    def record(self, subscription: str, event: str, *, error: str | None = None) -> None:
        """Apply a subscription event (``registration_success``, ``event_delivery_failed``,
        ``heartbeat``...). Thread-safe; a status change is published."""
        with self._lock:
            state = self._states.setdefault(subscription, SubscriptionState(subscription))
            changed = apply_event(state, event, self.config.unhealthy_threshold, error=error)
            report = self._report(state, self._pub_id) if changed else None
        if report is not None:
            self._publish_soon(report)

    def _adopt(self, report: SubscriptionHealth) -> None:
        """Take another process's report as the latest word on that subscription. It is not
        published again: everyone listening heard it already."""
        with self._lock:
            state = self._states.setdefault(report.subscription, SubscriptionState(report.subscription))
            state.status = report.status
            state.last_event = report.event
            state.last_seen = time.time_ns()
            state.event_count = max(state.event_count, report.event_count)
            state.error_count = max(state.error_count, report.error_count)
            state.last_error = report.last_error or state.last_error

    def _report(self, state: SubscriptionState, reporter: str) -> SubscriptionHealth:
        return health_report(state, store=self.store, node=self._node, reporter=reporter)

    def _mark_stale(self) -> list[SubscriptionHealth]:
        limit = time.time_ns() - 3 * self.config.check_interval * 1_000_000
        reports = []
        with self._lock:
            for state in self._states.values():
                if state.status not in ("stale", "unknown") and state.last_seen < limit:
                    state.status = "stale"
                    reports.append(self._report(state, self._pub_id))
        return reports

    # -- in the loop thread ----------------------------------------------------------------

    async def _setup(self, sub: AsyncSubscriber) -> None:
        if self._listen:
            await sub.subscribe("health", f"store_health:{self.store}")
            observe.emit(log, "success", f"🩺 TRACKING health of store: {self.store}", store=self.store)

    def _tasks(self, sub: AsyncSubscriber) -> list[Coroutine[Any, Any, None]]:
        return [self._check_loop(), self._listen_loop(sub)] if self._listen else [self._check_loop()]

    async def _check_loop(self) -> None:
        interval = self.config.check_interval / 1000
        while True:
            await asyncio.sleep(interval)  # the period itself, not a wait for a socket
            for report in self._mark_stale():
                self._publish(report)
            summary = self.summary()
            self._publish(summary)
            observe.emit(
                log,
                "health",
                f"📈 HEALTH SUMMARY: Store {self.store} - {summary.healthy}/{summary.total} healthy subscriptions",
                level=logging.DEBUG,  # emitter pools log the summaries they receive
                store=self.store,
                total=summary.total,
                healthy=summary.healthy,
            )

    async def _listen_loop(self, sub: AsyncSubscriber) -> None:
        async for message in sub:
            report = message.payload
            if isinstance(report, SubscriptionHealth) and message.pub != self._pub_id and report.store == self.store:
                self._adopt(report)

    def __repr__(self) -> str:
        return f"<SubscriptionHealthTracker store={self.store!r} {self.summary()}>"
