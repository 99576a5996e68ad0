"""``SubscriptionHealthTracker``: the health of every subscription of one store."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
import time
from collections import Counter
from types import TracebackType
from typing import Final, Self

from .. import observe
from ..aio import AsyncPublisher, AsyncSubscriber
from ..messages import HealthSummary, SubscriptionHealth
from ..messages.vocabulary import SUBSCRIPTION_STATUSES
from ._loop import LoopThread
from .config import HealthConfig
from .status import SubscriptionState, apply_event

__all__ = ["REPORTER_KEY", "SubscriptionHealthTracker"]

log = logging.getLogger("exesdb.health")

REPORTER_KEY: Final = "reporter"
"""``SubscriptionHealth.metadata`` key naming the publisher whose observation a report carries."""
_START_TIMEOUT: Final = 10.0


class SubscriptionHealthTracker:
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
        self.store = store
        self.config = config if config is not None else HealthConfig()
        self._frontend = frontend
        self._backend = backend
        self._node = node
        self._secret = secret
        self._listen = listen
        self._lock = threading.Lock()
        self._states: dict[str, SubscriptionState] = {}
        self._loop = LoopThread(f"exesdb-tracker-{store}")
        self._outbox: asyncio.Queue[SubscriptionHealth | HealthSummary] | None = None
        self._pub_id = ""

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
            self._send(report)

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
        return SubscriptionHealth(
            store=self.store,
            subscription=state.name,
            status=state.status,
            event=state.last_event or "heartbeat",
            node=self._node,
            event_count=state.event_count,
            error_count=state.error_count,
            last_error=state.last_error,
            last_seen=state.last_seen,
            metadata={REPORTER_KEY: reporter},
        )

    def _mark_stale(self) -> list[SubscriptionHealth]:
        limit = time.time_ns() - 3 * self.config.check_interval * 1_000_000
        reports = []
        with self._lock:
            for state in self._states.values():
                if state.status not in ("stale", "unknown") and state.last_seen < limit:
                    state.status = "stale"
                    reports.append(self._report(state, self._pub_id))
        return reports

    def _send(self, message: SubscriptionHealth | HealthSummary) -> None:
        outbox = self._outbox
        if outbox is not None:
            self._loop.call(lambda: outbox.put_nowait(message))

    # -- the loop thread -------------------------------------------------------------------

    def start(self) -> Self:
        """Connect to the broker and start publishing. Raises ``BrokerUnavailableError``."""
        self._loop.start(self._main, _START_TIMEOUT)
        return self

    async def _main(self, ready: asyncio.Event, stop: asyncio.Event) -> None:
        self._outbox = asyncio.Queue()
        async with AsyncPublisher(self._frontend, node=self._node, secret=self._secret) as pub:
            self._pub_id = pub.pub_id
            async with AsyncSubscriber(self._backend, secret=self._secret) as sub:
                if self._listen:
                    await sub.subscribe("health", f"store_health:{self.store}")
                    observe.emit(log, "success", f"🩺 TRACKING health of store: {self.store}", store=self.store)
                ready.set()
                tasks = [
                    asyncio.create_task(self._publish_loop(pub)),
                    asyncio.create_task(self._check_loop()),
                ]
                if self._listen:
                    tasks.append(asyncio.create_task(self._listen_loop(sub, pub.pub_id)))
                await stop.wait()
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                await self._flush(pub)

    async def _publish_loop(self, pub: AsyncPublisher) -> None:
        assert self._outbox is not None
        while True:
            await pub.publish_message(await self._outbox.get())

    async def _flush(self, pub: AsyncPublisher) -> None:
        assert self._outbox is not None
        while not self._outbox.empty():
            await pub.publish_message(self._outbox.get_nowait())

    async def _check_loop(self) -> None:
        interval = self.config.check_interval / 1000
        while True:
            await asyncio.sleep(interval)  # the period itself, not a wait for a socket
            for report in self._mark_stale():
                self._send(report)
            summary = self.summary()
            self._send(summary)
            observe.emit(
                log,
                "health",
                f"📈 HEALTH SUMMARY: Store {self.store} - {summary.healthy}/{summary.total} healthy subscriptions",
                level=logging.DEBUG,  # emitter pools log the summaries they receive
                store=self.store,
                total=summary.total,
                healthy=summary.healthy,
            )

    async def _listen_loop(self, sub: AsyncSubscriber, own: str) -> None:
        async for message in sub:
            report = message.payload
            if isinstance(report, SubscriptionHealth) and message.pub != own and report.store == self.store:
                self._adopt(report)

    def stop(self) -> None:
        """Publish what is pending and disconnect. Idempotent."""
        self._loop.stop(5.0)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<SubscriptionHealthTracker store={self.store!r} {self.summary()}>"
