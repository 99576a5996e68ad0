"""Emitter workers: deliver a store's events to a subscriber, gated by that subscription's health.

An :class:`EmitterPool` owns one thread with an event loop, one subscriber socket and one
publisher socket, shared by its :class:`EmitterWorker` s. A worker receives ``Events`` from
``ex_esdb_events/<store>:<selector>`` and delivers each event, in order, to its subscriber (a
callable or an async callable):

- it pauses while its circuit breaker is open, and while another process reports its
  subscription ``failed`` on ``ex_esdb_health/store_health:<store>``; a report of
  ``healthy`` resumes it. Reports about other subscriptions are ignored;
- while paused (or behind) it holds events in order, up to ``buffer_size``; beyond that the
  overflow policy drops events, every one counted and warned about;
- a delivery that raises or exceeds ``delivery_timeout`` is a failure and is retried (it
  stays first in line): after ``unhealthy_threshold`` consecutive failures the breaker opens;
  after a backoff (doubling up to ``backoff_max``) one try goes through (half-open); success
  closes the breaker and the held events follow in order. Every transition is published as a
  ``SubscriptionHealth``. Without the breaker, an event that fails ``unhealthy_threshold``
  times in a row is dropped, counted;
- a message of events its subscription never received (a jump in the publisher's sequence
  numbers: a broker restart, the subscriber's queue overflowing) is counted in ``missed``,
  warned about and published as a ``SubscriptionHealth`` ``event_gap``, which makes the
  subscription ``degraded`` until the next delivery. Missed events are not recovered;
- it publishes its figures on ``ex_esdb_metrics/store_metrics:<store>`` and the pool a
  ``MetricsSummary`` per store on ``metrics_summary:<store>``, every ``metrics_interval``.

The same worker serves other hosts than the pool (the connectors of ``exesdb_connect``): items
of any kind, handed over in batches of up to ``batch_size`` to a :data:`BatchDelivery` that
answers per item (``None``: delivered; a string: refused for good, handed to the ``on_ack``
hook with the rest), and a tuple of ``fatal`` exception types that end the worker (``failed``)
instead of being retried. A failed batch is retried whole, in order.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import inspect
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

from .. import observe
from ..aio import AsyncSubscriber
from ..messages import EmitterMetrics, Events, HealthSummary, MetricsSummary, SubscriptionHealth
from ..protocol import Message
from ._loop import BusService
from .breaker import CircuitBreaker
from .config import HealthConfig
from .status import SubscriptionState, apply_event, health_report

__all__ = [
    "AckHook",
    "BatchDelivery",
    "EmitterPool",
    "EmitterWorker",
    "StoreEvent",
    "SubscriberFunction",
    "WorkerHost",
    "WorkerStats",
]

log = logging.getLogger("exesdb.emitter")

StoreEvent = dict[str, Any]
SubscriberFunction = Callable[[StoreEvent], None] | Callable[[StoreEvent], Awaitable[None]]
BatchDelivery = Callable[[list[Any]], Awaitable[Sequence[str | None]]]
"""Delivers a batch in order; per item ``None`` (acknowledged) or why it is refused for good."""
AckHook = Callable[[list[Any], Sequence[str | None]], None]
"""Called with a batch once it has been answered (before the next batch is taken)."""


class WorkerHost(Protocol):
    """What a worker needs of whoever runs it: its settings and a way to publish its health."""

    config: HealthConfig

    def report(self, worker: EmitterWorker, state: SubscriptionState) -> None:
        """Publish ``worker``'s status (called in the loop)."""
        ...


_START_TIMEOUT: Final = 10.0
_CALL_BATCH: Final = 1024
"""Events a worker with a subscriber function takes from its buffer per pass (one thread hop,
one status update): each is still delivered, counted and gated one by one."""
_CANCEL_TRIES: Final = 50
_CANCEL_WAIT: Final = 0.1


class _Progress:
    """How far the delivery of a pass has come, shared with the thread that delivers it."""

    __slots__ = ("done", "started", "stop")

    def __init__(self) -> None:
        self.done = 0
        """Events delivered so far."""
        self.started = time.monotonic()
        """When the current event's delivery began (or the pass was handed over)."""
        self.stop = False
        """Set by the loop: deliver no more (timed out, or the worker stops)."""


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()  # a delivery given up on: its late outcome is not logged as lost


@dataclass(frozen=True, slots=True)
class WorkerStats:
    """A snapshot of one worker."""

    delivered: int
    failures: int
    dropped: int
    buffered: int
    paused: bool
    breaker: str
    status: str
    missed: int = 0
    """Messages of events the worker's subscription never received (each carries one or more
    events), from the sequence gaps its subscriber saw."""


class EmitterWorker:
    """Delivers the events of ``store``/``selector`` to ``subscriber``; created by
    :meth:`EmitterPool.add`, run by the pool's loop."""

    def __init__(
        self,
        pool: WorkerHost,
        store: str,
        selector: str,
        subscriber: SubscriberFunction | None,
        subscription: str,
        *,
        deliver: BatchDelivery | None = None,
        batch_size: int = 1,
        on_ack: AckHook | None = None,
        fatal: tuple[type[BaseException], ...] = (),
        config: HealthConfig | None = None,
    ) -> None:
        config = config if config is not None else pool.config
        if (subscriber is None) == (deliver is None):
            raise ValueError("give a worker exactly one of subscriber and deliver")
        self.store = store
        self.selector = selector
        self.subscription = subscription
        self.topic = f"ex_esdb_events/{store}:{selector}"
        self._subscriber = subscriber
        self._batch_deliver = deliver
        self._batch_size = max(1, batch_size)
        self._on_ack = on_ack
        self._fatal = fatal
        self.failed: str | None = None
        """Why a ``fatal`` exception ended the worker, or ``None``."""
        self._is_async = subscriber is None or inspect.iscoroutinefunction(subscriber)
        self._pool = pool
        self._config = config
        self._buffer: deque[Any] = deque()
        self._state = SubscriptionState(subscription)
        self._breaker = CircuitBreaker(
            config.unhealthy_threshold, config.backoff_initial / 1000, config.backoff_max / 1000
        )
        self._remote_failed = False
        self._gated = False
        """Whether another process's report holds emission (with health gating on): read per event."""
        self._changed: asyncio.Event | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._task: asyncio.Task[None] | None = None
        self.delivered = 0
        self.failures = 0
        self.dropped = 0
        self.missed = 0
        self._overflowing = False
        self._window = (time.monotonic(), 0)

    @property
    def paused(self) -> bool:
        """Whether emission is held: the breaker is open, or another process reports failure."""
        if self._breaker.state == "open":
            return True
        return self._gated

    @property
    def room(self) -> int:
        """Items the buffer takes before its bound (a source with back-pressure reads no more)."""
        return max(0, self._config.buffer_size - len(self._buffer))

    @property
    def stats(self) -> WorkerStats:
        return WorkerStats(
            self.delivered,
            self.failures,
            self.dropped,
            len(self._buffer),
            self.paused,
            self._breaker.state,
            self._state.status,
            self.missed,
        )

    # -- in the pool's loop ----------------------------------------------------------------

    def start(self) -> None:
        self._changed = asyncio.Event()
        if not self._is_async:  # one thread per worker keeps its deliveries in order
            self._executor = concurrent.futures.ThreadPoolExecutor(1, f"exesdb-deliver-{self.subscription}")
        self._task = asyncio.create_task(self._run())
        self._note("registration_success")
        observe.banner(
            log,
            "activation",
            {
                "Topic": f'"{self.store}:{self.selector}"',
                "Store": self.store,
                "Selector": self.selector,
                "Subscriber": self._subscriber_name(),
                "PID": os.getpid(),
                "Thread": threading.get_ident(),
            },
        )

    def _subscriber_name(self) -> str:
        target = self._subscriber if self._subscriber is not None else self._batch_deliver
        return getattr(target, "__qualname__", repr(target))

    async def stop(self, reason: str) -> None:
        task = self._task
        # Python 3.11's wait_for can swallow a cancel that lands as the awaited delivery
        # completes, so cancel again until the task has really ended (bounded).
        for _ in range(_CANCEL_TRIES):
            if task is None or task.done():
                break
            task.cancel()
            await asyncio.wait({task}, timeout=_CANCEL_WAIT)
        if task is not None and task.done() and not task.cancelled():
            task.exception()  # retrieve it, so asyncio does not log it as never retrieved
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
        self._note("proxy_stopped")
        observe.banner(
            log,
            "termination",
            {
                "Reason": reason,
                "Store": self.store,
                "Selector": self.selector,
                "Subscriber": self._subscriber_name(),
                "PID": os.getpid(),
                "Thread": threading.get_ident(),
                "Undelivered": len(self._buffer),
            },
        )

    def take(self, events: Sequence[Any]) -> None:
        """Queue received events, applying the overflow policy at the bound."""
        bound = self._config.buffer_size
        drop_newest = self._config.overflow_policy == "drop_newest"
        dropped = 0
        for event in events:
            if len(self._buffer) >= bound:
                dropped += 1
                if drop_newest:
                    continue
                self._buffer.popleft()
            self._buffer.append(event)
        if dropped:
            self.count_drops(dropped)
        self._wake()

    def count_drops(self, dropped: int) -> None:
        """Count ``dropped`` items its source could not give it (a full buffer), warning once
        per overflow episode."""
        self.dropped += dropped
        if not self._overflowing:  # one warning per overflow episode; the count keeps growing
            self._overflowing = True
            observe.emit(
                log,
                "failure",
                f"⚠ BUFFER FULL: {self.subscription} dropping events "
                f"({self._config.overflow_policy}, bound {self._config.buffer_size}); {self.dropped} dropped so far",
                level=logging.WARNING,
                subscription=self.subscription,
                dropped=self.dropped,
            )

    def on_gap(self, missing: int) -> None:
        """``missing`` messages of this worker's topic never arrived: count, warn, report."""
        self.missed += missing
        error = f"{missing} message(s) of events missed ({self.missed} so far)"
        observe.emit(
            log,
            "failure",
            f"⚠ EVENTS MISSED: {self.subscription}: {error}",
            level=logging.WARNING,
            subscription=self.subscription,
            missed=self.missed,
        )
        self._note("event_gap", error, force=True)  # every gap is reported, even when already degraded

    def on_health(self, report: SubscriptionHealth) -> None:
        """A report about this worker's subscription from another publisher."""
        was = self.paused
        if report.status == "failed":
            self._remote_failed = True
        elif report.status == "healthy":
            self._remote_failed = False
        self._gated = self._config.enabled and self._remote_failed
        if self.paused != was:
            self._impact(report.status, report.event)
            self._wake()

    def _impact(self, status: str, cause: str) -> None:
        word = "PAUSED" if self.paused else "RESUMED"
        observe.emit(
            log,
            "failure" if self.paused else "success",
            f"🏥 HEALTH IMPACT: {self.subscription} is {status.upper()} ({cause}) - Emission {word}",
            level=logging.WARNING if self.paused else logging.INFO,
            subscription=self.subscription,
            status=status,
            paused=self.paused,
        )

    def _wake(self) -> None:
        if self._changed is not None:
            self._changed.set()

    async def _wait(self, timeout: float | None) -> None:
        assert self._changed is not None
        self._changed.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), timeout)

    def _note(self, event: str, error: str | None = None, force: bool = False) -> None:
        """Apply ``event`` with the shared mapping; publish when the status changes."""
        changed = apply_event(self._state, event, self._config.unhealthy_threshold, error=error)
        if changed or force:
            self._pool.report(self, self._state)

    async def _run(self) -> None:
        breaker = self._breaker
        while True:
            if not self._buffer or self._gated:
                await self._wait(None)
                continue
            if breaker.state == "open":
                delay = breaker.seconds_until_retry()
                if delay > 0:
                    await self._wait(delay)
                    continue
            if self._config.circuit_breaker_enabled and breaker.before_try() == "half_open":
                self._note("circuit_breaker_half_open")
            if self._subscriber is not None:
                try:
                    await self._call_batch(1 if breaker.state == "half_open" else _CALL_BATCH)
                except self._fatal as exc:
                    self._stop_fatal(exc)  # the pass's undelivered events are back in the buffer
                    return
                continue
            batch = [self._buffer.popleft() for _ in range(min(self._batch_size, len(self._buffer)))]
            try:
                error, answers = await self._deliver(batch)
            except self._fatal as exc:
                self._buffer.extendleft(reversed(batch))
                self._stop_fatal(exc)
                return
            if error is None:
                self._delivered(sum(1 for answer in answers if answer is None))
                if self._on_ack is not None:
                    self._on_ack(batch, answers)
            else:
                self._failed(batch, error)

    def _stop_fatal(self, exc: BaseException) -> None:
        self.failed = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        self._note("proxy_crashed", str(exc) or self.failed, force=True)
        observe.emit(
            log,
            "failure",
            f"✖ DELIVERY STOPPED: {self.subscription}: {self.failed}",
            level=logging.ERROR,
            subscription=self.subscription,
            error=self.failed,
        )

    async def _call_batch(self, limit: int) -> None:
        """One pass of a subscriber function: up to ``limit`` buffered events, delivered in order
        (in one hop to the delivery thread for a plain function) until one fails, the gate
        closes or the pass is done; one status update for the delivered ones, the failed one
        handled as before, the rest back in front of the buffer."""
        buffer = self._buffer
        batch = [buffer.popleft() for _ in range(min(limit, len(buffer)))]
        progress = _Progress()
        try:
            if self._is_async:
                error = await self._call_async(batch, progress)
            else:
                error = await self._call_sync(batch, progress)
        except BaseException:  # stopping, or a fatal error: what was not delivered goes back
            progress.stop = True
            buffer.extendleft(reversed(batch[progress.done :]))
            raise
        done = progress.done
        if done:
            self._delivered(done)
        if error is None:
            self._put_back(batch[done:])  # the gate closed during the pass
            return
        self._put_back(batch[done + 1 :])
        self._failed(batch[done : done + 1], error)

    def _put_back(self, items: list[Any]) -> None:
        """Return undelivered items to the front of the buffer, applying the overflow policy to
        what no longer fits."""
        if not items:
            return
        self._buffer.extendleft(reversed(items))
        excess = len(self._buffer) - self._config.buffer_size
        if excess > 0:
            for _ in range(excess):
                self._buffer.pop() if self._config.overflow_policy == "drop_newest" else self._buffer.popleft()
            self.count_drops(excess)

    def _call_each(self, batch: list[Any], progress: _Progress) -> None:
        """In the delivery thread: call the subscriber function for each event, in order."""
        subscriber = self._subscriber
        assert subscriber is not None
        clock = time.monotonic
        for event in batch:
            if progress.stop or self._gated:
                return
            progress.started = clock()
            subscriber(event)
            progress.done += 1

    async def _call_sync(self, batch: list[Any], progress: _Progress) -> str | None:
        timeout = self._config.delivery_timeout / 1000
        future = asyncio.get_running_loop().run_in_executor(self._executor, self._call_each, batch, progress)
        # Each round waits until the current event's deadline; it ends the pass or sees the
        # thread move on to a later event, so len(batch) + 1 rounds always suffice.
        for _ in range(len(batch) + 2):
            remaining = progress.started + timeout - time.monotonic()
            if remaining <= 0:
                break
            finished, _ = await asyncio.wait({future}, timeout=remaining)
            if finished:
                exc = future.exception()
                if exc is None:
                    return None
                if isinstance(exc, self._fatal):
                    raise exc
                return f"{type(exc).__name__}: {exc}"
        progress.stop = True
        future.add_done_callback(_retrieve)
        return f"delivery took longer than {timeout:g} s"

    async def _call_async(self, batch: list[Any], progress: _Progress) -> str | None:
        timeout = self._config.delivery_timeout / 1000
        subscriber = self._subscriber
        assert subscriber is not None
        for event in batch:
            if self._gated:
                return None
            try:
                async with asyncio.timeout(timeout):
                    result = subscriber(event)
                    assert inspect.isawaitable(result)
                    await result
            except TimeoutError:
                return f"delivery took longer than {timeout:g} s"
            except self._fatal:
                raise
            except Exception as exc:  # the subscriber's own failure: counted and retried
                return f"{type(exc).__name__}: {exc}"
            progress.done += 1
        return None

    async def _deliver(self, batch: list[Any]) -> tuple[str | None, Sequence[str | None]]:
        timeout = self._config.delivery_timeout / 1000
        answers: Sequence[str | None] = [None] * len(batch)
        try:
            assert self._batch_deliver is not None  # a subscriber function takes _call_batch
            answers = await asyncio.wait_for(self._batch_deliver(batch), timeout)
            if len(answers) != len(batch):
                return f"{len(answers)} answer(s) for a batch of {len(batch)}", answers
        except TimeoutError:
            return f"delivery took longer than {timeout:g} s", answers
        except asyncio.CancelledError:
            self._buffer.extendleft(reversed(batch))  # stopping: the batch was not delivered
            raise
        except self._fatal:
            raise
        except Exception as exc:  # the subscriber's own failure: counted and retried
            return f"{type(exc).__name__}: {exc}", answers
        return None, answers

    def _delivered(self, count: int = 1) -> None:
        self.delivered += count
        if len(self._buffer) < self._config.buffer_size:
            self._overflowing = False
        if self._config.circuit_breaker_enabled and self._breaker.record_success() == "closed":
            # the line first, then the report: a reader of both sees them in the order they happen
            self._impact("healthy", "circuit_breaker_closed")
            self._note("circuit_breaker_closed")
        else:
            self._note("event_delivery_success")

    def _failed(self, batch: list[Any], error: str) -> None:
        self.failures += 1
        observe.emit(
            log,
            "failure",
            f"✖ DELIVERY FAILED: {self.subscription}: {error}",
            level=logging.WARNING,
            subscription=self.subscription,
            error=error,
        )
        changed = apply_event(self._state, "event_delivery_failed", self._config.unhealthy_threshold, error=error)
        if (
            not self._config.circuit_breaker_enabled
            and self._state.consecutive_failures >= self._config.unhealthy_threshold
        ):
            self.count_drops(len(batch))  # given up on after the threshold: counted, never silent
            self._state.consecutive_failures = 0
        else:
            self._put_back(batch)  # retried: nothing is lost to a failing subscriber
        if self._config.circuit_breaker_enabled and self._breaker.record_failure() == "open":
            self._impact("failed", "circuit_breaker_opened")
            self._note("circuit_breaker_opened", error, force=True)
        elif changed:
            self._pool.report(self, self._state)

    def heartbeat(self) -> None:
        """Report this worker alive, with its current status (every ``check_interval``)."""
        apply_event(self._state, "heartbeat", self._config.unhealthy_threshold)
        self._pool.report(self, self._state)

    def metrics(self) -> EmitterMetrics:
        now = time.monotonic()
        started, delivered_then = self._window
        rate = (self.delivered - delivered_then) / max(now - started, 1e-9)
        self._window = (now, self.delivered)
        return EmitterMetrics(
            store=self.store,
            subscription=self.subscription,
            events_per_second=round(rate, 3),
            total_events=self.delivered,
            dropped_events=self.dropped,
            buffered=len(self._buffer),
            paused=self.paused,
            breaker=self._breaker.state,
            failures=self.failures,
            missed_events=self.missed,
        )


class EmitterPool(BusService):
    """Runs emitter workers over one subscriber and one publisher socket.

    ``stop()`` stops every worker (with its termination banner), publishes what is pending and
    disconnects.

    Example::

        def project(event): ...

        with EmitterPool(config=HealthConfig(check_interval=1000)) as pool:
            pool.add("orders", "$all", project)
            ...
    """

    _name = "exesdb-emitter-pool"

    def __init__(
        self,
        *,
        config: HealthConfig | None = None,
        frontend: str | None = None,
        backend: str | None = None,
        node: str | None = None,
        secret: str | bytes | None = None,
    ) -> None:
        super().__init__(frontend, backend, node, secret)
        self.config = config if config is not None else HealthConfig()
        self._workers: dict[str, EmitterWorker] = {}
        self._by_topic: dict[str, list[EmitterWorker]] = {}
        self._stores: set[str] = set()
        self._sub: AsyncSubscriber | None = None

    @property
    def workers(self) -> list[EmitterWorker]:
        return list(self._workers.values())

    def add(
        self, store: str, selector: str, subscriber: SubscriberFunction, *, subscription: str | None = None
    ) -> EmitterWorker:
        """Start a worker delivering ``store``/``selector`` events to ``subscriber``.

        ``subscription`` names its subscription in health reports (default
        ``"<store>:<selector>"``). Returns once its subscriptions are confirmed by the broker.
        """
        return self._loop.run(self._add(store, selector, subscriber, subscription), _START_TIMEOUT)

    async def _add(
        self, store: str, selector: str, subscriber: SubscriberFunction, subscription: str | None
    ) -> EmitterWorker:
        assert self._sub is not None
        name = subscription or f"{store}:{selector}"
        if name in self._workers:
            raise ValueError(f"a worker for subscription {name!r} already runs in this pool")
        worker = EmitterWorker(self, store, selector, subscriber, name)
        self._workers[name] = worker
        self._by_topic.setdefault(worker.topic, []).append(worker)
        await self._sub.subscribe("events", f"{store}:{selector}", wait=False)
        if store not in self._stores:
            self._stores.add(store)
            for instance, prefix in (
                ("health", f"store_health:{store}"),
                ("health", f"health_summary:{store}"),
                ("metrics", f"store_metrics:{store}"),
                ("metrics", f"metrics_summary:{store}"),
            ):
                await self._sub.subscribe(instance, prefix, wait=False)
            observe.emit(log, "success", f"🩺 SUBSCRIBED to health events for store: {store}", store=store)
            observe.emit(log, "success", f"📈 SUBSCRIBED to metrics events for store: {store}", store=store)
        await self._sub.wait_ready()
        worker.start()
        return worker

    def report(self, worker: EmitterWorker, state: SubscriptionState) -> None:
        """Publish a worker's status (called in the loop)."""
        if not self.config.enabled:
            return
        self._publish(health_report(state, store=worker.store, node=self._node, reporter=self._pub_id))

    async def _setup(self, sub: AsyncSubscriber) -> None:
        self._sub = sub

    def _tasks(self, sub: AsyncSubscriber) -> list[Coroutine[Any, Any, None]]:
        return [self._receive_loop(sub), self._timer_loop()]

    async def _teardown(self) -> None:
        for worker in list(self._workers.values()):
            await worker.stop("shutdown")

    def _on_gap(self, message: Message, missing: int) -> None:
        # Called while the subscriber decodes the message after the gap, before it is
        # dispatched: the report goes out ahead of the events that follow the gap.
        for worker in self._by_topic.get(message.topic, ()):
            worker.on_gap(missing)

    async def _receive_loop(self, sub: AsyncSubscriber) -> None:
        dispatch = self._dispatch
        while True:  # one loop pass per batch of what the socket holds
            for message in await sub.recv_batch():
                dispatch(message)
            # recv_batch does not suspend while messages are queued: let the workers start
            # their passes (in their threads) before the next batch is read and decoded
            await asyncio.sleep(0)

    def _dispatch(self, message: Message) -> None:
        payload = message.payload
        if type(payload) is Events:
            for receiver in self._by_topic.get(message.topic, ()):
                receiver.take(payload.events)
        elif isinstance(payload, SubscriptionHealth):
            observe.emit(
                log,
                "health",
                f"📡 HEALTH EVENT: {payload.subscription} -> {payload.event} ({payload.status})",
                level=logging.DEBUG if payload.event == "heartbeat" else logging.INFO,
                store=payload.store,
                subscription=payload.subscription,
                status=payload.status,
            )
            worker = self._workers.get(payload.subscription)
            if worker is not None and payload.store == worker.store and message.pub != self._pub_id:
                worker.on_health(payload)
        elif isinstance(payload, HealthSummary):
            observe.emit(
                log,
                "health",
                f"📈 HEALTH SUMMARY: Store {payload.store} - {payload.healthy}/{payload.total} healthy subscriptions",
                store=payload.store,
                healthy=payload.healthy,
                total=payload.total,
            )
        elif isinstance(payload, EmitterMetrics):
            stamp = message.time.isoformat(timespec="seconds").replace("+00:00", "Z")
            observe.emit(
                log,
                "action",
                f"📈 METRICS EVENT: {payload.store} -> events_per_second={payload.events_per_second:g} @{stamp}",
                store=payload.store,
                subscription=payload.subscription,
            )
        elif isinstance(payload, MetricsSummary):
            observe.emit(
                log,
                "action",
                f"📉 METRICS SUMMARY: Store {payload.store} - {payload.events_per_second:g} eps, "
                f"{payload.total_events} total, {payload.active_subscriptions} active subs",
                store=payload.store,
            )

    async def _timer_loop(self) -> None:
        heartbeat = self.config.check_interval / 1000
        metrics = self.config.metrics_interval / 1000
        next_heartbeat = time.monotonic() + heartbeat
        next_metrics = time.monotonic() + metrics
        while True:
            await asyncio.sleep(max(0.0, min(next_heartbeat, next_metrics) - time.monotonic()))
            now = time.monotonic()
            if now >= next_heartbeat:
                next_heartbeat = now + heartbeat
                for worker in self._workers.values():
                    worker.heartbeat()
            if now >= next_metrics:
                next_metrics = now + metrics
                self._publish_metrics()

    def _publish_metrics(self) -> None:
        by_store: dict[str, list[EmitterMetrics]] = {}
        for worker in self._workers.values():
            own = worker.metrics()
            by_store.setdefault(worker.store, []).append(own)
            self._publish(own)
        for store, figures in by_store.items():
            self._publish(
                MetricsSummary(
                    store=store,
                    events_per_second=round(sum(f.events_per_second for f in figures), 3),
                    total_events=sum(f.total_events for f in figures),
                    active_subscriptions=sum(1 for f in figures if not f.paused),
                    dropped_events=sum(f.dropped_events for f in figures),
                    period_ms=self.config.metrics_interval,
                    node=self._node,
                    missed_events=sum(f.missed_events for f in figures),
                )
            )
