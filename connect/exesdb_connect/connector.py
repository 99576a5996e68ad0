"""Connectors at work: each one an :class:`~exesdb_sdk.health.EmitterWorker` (health-gated,
circuit breaker with backoff, bounded buffer) fed from the bus and delivering to its sink.

- **Journaled instances** (the broker's ``stats`` says its journal records them) are read from
  the journal, from the connector's cursor in ``connectors.db``, woken by a live subscription
  (the doorbell), as ``/v1/stream`` does (:mod:`exesdb_sdk.follow`). The cursor moves only
  after the sink acknowledged (or refused, parking it) a batch: at least once, no gap across a
  restart of the broker, the connector or the sink. The journal is read only while the
  worker's buffer has room for a page: back-pressure, never a drop. A first start begins at
  the journal's head (what is published from then on).
- **Live-only instances** go straight into the buffer: at most once; a full buffer drops by
  the overflow policy (``dropped``), sequence gaps are counted (``missed``).
- A sink that refuses the connector (:class:`~.sink.SinkRejected`) makes it ``failed``, with
  the reason in its health and in ``stats``; the other connectors and the broker run on.

Every connector publishes its health as ``SubscriptionHealth`` (subscription
``connector:<name>``, store ``connectors``) and its figures as ``EmitterMetrics``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any, Final

import zmq
import zmq.asyncio
from exesdb_sdk.aio import AsyncControlClient, AsyncPublisher, AsyncSubscriber
from exesdb_sdk.errors import BrokerUnavailableError, ConfigError, ControlError, ExesdbError, ReceiveTimeoutError
from exesdb_sdk.follow import Follow, head_request, journaled_instances, take_page
from exesdb_sdk.health import EmitterWorker, HealthConfig, SubscriptionState
from exesdb_sdk.health.status import health_report
from exesdb_sdk.instances import Instance
from exesdb_sdk.messages import MetricsSummary, Payload
from exesdb_sdk.protocol import Message
from exesdb_sdk.subscriber import SubscriberCore

from .config import ConnectorConfig
from .cursor import StateStore
from .sink import Sink, SinkRejected, SinkUnavailable
from .source import Item, item_of, parked_item

__all__ = ["HEALTH_STORE", "Connector", "ConnectorRunner"]

log = logging.getLogger("exesdb.connect")

HEALTH_STORE: Final = "connectors"
"""The ``store`` of every connector's ``SubscriptionHealth`` and ``EmitterMetrics``."""
_PAGE: Final = 500
_BURST: Final = 256
_IDLE: Final = 0.5
"""Seconds an idle connector waits for a doorbell before it looks for replays and room."""
_CONTROL_TIMEOUT: Final = 5.0
_RETRY: Final = 1.0
"""Seconds between tries while the broker's control endpoint does not answer."""
_REPLAY_EVERY: Final = 1.0
_START_TIMEOUT: Final = 4.0
_OUTBOX: Final = 1000
"""Health and metrics messages waiting to be published; past it they are counted, not kept."""


class Connector:
    """One configured connector, run by a :class:`ConnectorRunner` in its event loop."""

    def __init__(self, config: ConnectorConfig, runner: ConnectorRunner) -> None:
        self.config = config
        self.name = config.name
        self.state = "starting"
        self.reason: str | None = None
        self._runner = runner
        self._store = runner.store
        self._sink: Sink | None = None
        self._open = False
        self.worker = EmitterWorker(
            runner,
            HEALTH_STORE,
            config.name,
            None,
            f"connector:{config.name}",
            deliver=self._send,
            batch_size=config.batch_size,
            on_ack=self._acked,
            fatal=(SinkRejected,),
            config=config.health,
        )
        self.follows: dict[Instance, Follow] = {}
        self.committed: dict[str, tuple[int, int]] = self._store.cursors(config.name)
        self.heads: dict[str, int] = {}
        self.parked = self._store.parked_count(config.name)
        self.parked_dropped = self._store.count(config.name, "parked_dropped")
        self.journal_missed = 0
        self._room = asyncio.Event()
        self._in_flight = 0
        self.started = asyncio.Event()
        """Set once it is subscribed and knows its journals (or has failed): it misses nothing published after."""
        self._core = SubscriberCore(None, None, typed=False)

    # -- figures -------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """The connector in ``stats`` (``connectors`` map); safe to call from another thread."""
        figures = self.worker.stats
        state = self.state
        if state == "running" and figures.paused:
            state = "paused"
        cursor = {instance: seq for instance, (seq, _) in dict(self.committed).items()}
        return {
            "sink": self.config.sink,
            "state": state,
            "reason": self.reason,
            "delivered": figures.delivered,
            "parked": self.parked,
            "parked_dropped": self.parked_dropped,
            "missed": figures.missed,
            "dropped": figures.dropped,
            "failures": figures.failures,
            "buffered": figures.buffered,
            "breaker": figures.breaker,
            "cursor": cursor,
            "lag": {instance: max(0, head - cursor.get(instance, head)) for instance, head in dict(self.heads).items()},
        }

    # -- the sink side (the worker's delivery function and ack hook) ---------------------------

    async def _send(self, batch: list[Item]) -> Sequence[str | None]:
        sink = self._sink
        assert sink is not None
        self._in_flight = len(batch)  # a failed batch goes back into the buffer: keep its room
        try:
            if not self._open:
                await sink.open()
                self._open = True
            return await sink.send([item.delivery for item in batch])
        except (SinkUnavailable, SinkRejected):
            raise
        except ExesdbError as exc:
            raise SinkUnavailable(str(exc)) from None
        finally:
            self._in_flight = 0

    def _acked(self, batch: list[Item], answers: Sequence[str | None]) -> None:
        cursors: dict[str, tuple[int, int]] = {}
        parked: list[tuple[str, str, str, Mapping[str, Any], bytes, int | None, bool]] = []
        done: list[int] = []
        for item, answer in zip(batch, answers, strict=True):
            delivery = item.delivery
            if item.parked_row is not None:
                done.append(item.parked_row)
            elif delivery.broker_seq is not None:
                cursors[delivery.instance] = (delivery.broker_seq, item.within)
            if answer is not None:
                parked.append(
                    (
                        delivery.id,
                        delivery.topic,
                        answer[:500],
                        delivery.json,
                        delivery.body,
                        delivery.broker_seq,
                        delivery.last_value,
                    )
                )
                log.warning("connector %s: parked %s (%s): %s", self.name, delivery.id, delivery.topic, answer[:200])
        trimmed = self._store.commit(self.name, cursors, parked, done, self.config.parked_max)
        self.committed.update(cursors)
        self.parked += len(parked) - len(done) - trimmed
        self.parked_dropped += trimmed
        self._room.set()

    # -- the bus side --------------------------------------------------------------------------

    def room(self) -> int:
        """Items the buffer takes now, keeping room for the batch on its way (a failed batch
        goes back in: a journaled item must never be pushed out)."""
        return self.worker.room - self._in_flight

    def _take_live(self, items: list[Item]) -> None:
        room = max(0, self.room())
        if len(items) > room:
            self.worker.count_drops(len(items) - room)  # at most once: counted in dropped
            items = items[:room]
        if items:
            self.worker.take(items)

    def _on_gap(self, message: Message, missed: int) -> None:
        if message.instance not in self.follows:  # a doorbell's gap: the journal has them
            self.worker.on_gap(missed)

    async def run(self) -> None:
        """Deliver until cancelled, or until the sink refuses the connector (``failed``)."""
        try:
            self._sink = self.config.make_sink()
        except ConfigError as exc:
            self._fail(str(exc))
            self.started.set()
            return
        runner = self._runner
        subscriber = runner.subscriber(on_gap=self._on_gap)
        control = runner.control_client()
        self.worker.start()
        try:
            for instance, pattern in self.config.subscriptions:
                await subscriber.subscribe(instance, pattern, wait=False)
            await subscriber.wait_ready()
            await self._open_journals(control)
            self.state = "running"
            self.started.set()
            log.info(
                "connector %s (%s) running: %s from the journal, %s live",
                self.name,
                self.config.sink,
                ", ".join(i.value for i in self.follows) or "none",
                ", ".join(sorted({i.value for i, _ in self.config.subscriptions} - {i.value for i in self.follows}))
                or "none",
            )
            await self._loop(subscriber, control)
        finally:
            self.started.set()
            with contextlib.suppress(Exception):
                await self.worker.stop("shutdown" if self.state != "failed" else "failed")
            if self.state != "failed":
                self.state = "stopped"
            await subscriber.aclose()
            await control.aclose()
            if self._sink is not None:
                with contextlib.suppress(Exception):
                    await self._sink.close()

    def _fail(self, reason: str) -> None:
        self.state = "failed"
        self.reason = reason
        log.error("connector %s failed: %s", self.name, reason)

    async def _request(self, control: AsyncControlClient, op: str, args: Mapping[str, Any]) -> dict[str, Any]:
        """A control request, tried again while the broker does not answer (bounded by cancellation)."""
        for attempt in range(1_000_000):
            try:
                reply: dict[str, Any] = await control.request(op, args, timeout=_CONTROL_TIMEOUT)
                return reply
            except (BrokerUnavailableError, ControlError) as exc:
                if isinstance(exc, ControlError) and exc.code not in ("journal_unavailable", "internal"):
                    raise
                if attempt == 0:
                    log.warning("connector %s: %s: %s; trying again every %g s", self.name, op, exc, _RETRY)
                await asyncio.sleep(_RETRY)
        raise BrokerUnavailableError(control.endpoint, _CONTROL_TIMEOUT, op)

    async def _open_journals(self, control: AsyncControlClient) -> None:
        stats = await self._request(control, "stats", {})
        journaled = journaled_instances(stats)
        patterns: dict[Instance, list[str]] = {}
        for instance, pattern in self.config.subscriptions:
            if instance.value in journaled:
                patterns.setdefault(instance, []).append(pattern)
        fresh: dict[str, tuple[int, int]] = {}
        for instance, mine in patterns.items():
            try:
                reply = await self._request(control, "replay", head_request(instance))
            except ControlError as exc:
                log.info("connector %s: %s live only: %s", self.name, instance.value, exc.message)
                continue
            head = reply.get("last")
            if type(head) is not int:
                continue
            self.heads[instance.value] = head
            saved = self.committed.get(instance.value)
            if saved is not None and saved[0] > head:
                log.warning(
                    "connector %s: cursor %s:%d is past the journal's head %d (a new journal?): from the head",
                    self.name,
                    instance.value,
                    saved[0],
                    head,
                )
                saved = None
            follow = Follow.create(instance, mine, head, saved[0] if saved else None)
            follow.within = saved[1] if saved else 0
            self.follows[instance] = follow
            if saved is None:
                fresh[instance.value] = (head, 0)
        if fresh:  # a first start begins at the head, and a restart must not skip what came since
            self._store.commit(self.name, fresh)
            self.committed.update(fresh)

    async def _follow(self, control: AsyncControlClient, follow: Follow, sync: bool) -> bool:
        """Read one page into the buffer if it has room; return whether more is left."""
        room = self.room()
        if room <= 0:
            return True
        start, args = follow.page_request(sync, min(_PAGE, room))
        reply = await self._request(control, "replay", args)
        last = reply.get("last")
        if type(last) is int:
            self.heads[follow.instance.value] = max(last, self.heads.get(follow.instance.value, 0))
        items: list[Item] = []
        before = (follow.seq, follow.within)
        for taken in take_page(follow, start, reply, self._core):
            if taken.kind == "message" and taken.message is not None:
                items.append(item_of(taken.message, taken.seq, taken.within))
            elif taken.gap is not None:
                missed = int(taken.gap.get("missed", 0))
                self.journal_missed += missed
                self.worker.on_gap(missed)
        more = bool(reply.get("more"))
        room = self.room()
        if len(items) > room:
            # a record may hold a batch of many envelopes: take what fits, and read again from
            # just after the last envelope taken (never more than the buffer holds: no drop)
            items = items[: max(room, 0)]
            last = items[-1] if items else None
            if last is not None and last.delivery.broker_seq is not None:
                follow.seq, follow.within = last.delivery.broker_seq, last.within
            else:
                follow.seq, follow.within = before
            more = True
        if items:
            self.worker.take(items)
        return more

    async def _loop(self, subscriber: AsyncSubscriber, control: AsyncControlClient) -> None:
        rung: set[Instance] = set(self.follows)  # at once: a restart has catching up to do
        synced: set[Instance] = set()
        next_replay = 0.0
        for _ in range(10**12):
            if self.worker.failed is not None:
                self._fail(self.worker.failed)
                return
            for instance in sorted(rung, key=list(Instance).index):
                more = await self._follow(control, self.follows[instance], instance not in synced)
                synced.add(instance)
                if not more:
                    rung.discard(instance)
                    synced.discard(instance)
            if time.monotonic() >= next_replay:
                next_replay = time.monotonic() + _REPLAY_EVERY
                self._take_replays()
            blocked = bool(rung) and self.room() <= 0
            if blocked:
                self._room.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._room.wait(), _IDLE)
            live: list[Item] = []
            for read in range(_BURST):
                try:
                    timeout = 0.0 if (rung or read or blocked) else _IDLE
                    message = await subscriber.recv(timeout)
                except ReceiveTimeoutError:
                    break
                if message.instance in self.follows:
                    rung.add(message.instance)
                else:
                    live.append(item_of(message))
            if live:
                self._take_live(live)

    def _take_replays(self) -> None:
        room = self.room()
        if room <= 0:
            return
        replays = self._store.take_replays(self.name, min(room, _PAGE))
        if replays:
            log.info("connector %s: %d parked message(s) sent again", self.name, len(replays))
            self.worker.take([parked_item(p) for p in replays])


class ConnectorRunner:
    """Runs connectors in one event loop, beside a broker: one publisher for their health and
    metrics, a subscriber and a control client per connector. A :class:`~exesdb_sdk.health.WorkerHost`."""

    def __init__(
        self,
        configs: Sequence[ConnectorConfig],
        *,
        state_dir: str,
        frontend: str | None = None,
        backend: str | None = None,
        control: str | None = None,
        node: str | None = None,
        context: zmq.Context[Any] | None = None,
    ) -> None:
        self.configs = list(configs)
        self.config = HealthConfig()
        self.store = StateStore(state_dir)
        self.store.reset_in_flight()
        self._frontend, self._backend, self._control, self._node = frontend, backend, control, node
        self._context = context
        self._async: zmq.asyncio.Context | None = None
        self._publisher: AsyncPublisher | None = None
        self._outbox: asyncio.Queue[Payload] = asyncio.Queue(_OUTBOX)
        self.unpublished = 0
        """Health and metrics messages not published because the outbox was full."""
        self.connectors: dict[str, Connector] = {}

    def subscriber(self, **options: Any) -> AsyncSubscriber:
        return AsyncSubscriber(self._backend, typed=False, context=self._zmq(), **options)

    def control_client(self) -> AsyncControlClient:
        return AsyncControlClient(self._control, timeout=_CONTROL_TIMEOUT, context=self._zmq())

    def _zmq(self) -> zmq.asyncio.Context:
        if self._async is None:
            self._async = (
                zmq.asyncio.Context() if self._context is None else zmq.asyncio.Context.shadow(self._context.underlying)
            )
        return self._async

    def report(self, worker: EmitterWorker, state: SubscriptionState) -> None:
        """Publish a connector's health (the worker calls it on every change)."""
        if self._publisher is not None:
            self._queue(health_report(state, store=HEALTH_STORE, node=self._node, reporter=self._publisher.pub_id))

    def _queue(self, payload: Payload) -> None:
        try:
            self._outbox.put_nowait(payload)
        except asyncio.QueueFull:
            self.unpublished += 1

    async def _publish_loop(self, publisher: AsyncPublisher) -> None:
        for _ in range(10**12):
            payload = await self._outbox.get()
            try:
                await publisher.publish_message(payload)
            except ExesdbError as exc:
                self.unpublished += 1
                log.warning("connectors: a health or metrics message was not published: %s", exc)

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Every connector's figures (``stats.connectors``); safe from another thread."""
        return {name: connector.snapshot() for name, connector in list(self.connectors.items())}

    async def run(self, stop: asyncio.Event, ready: asyncio.Event | None = None) -> None:
        """Run every connector until ``stop`` is set."""
        publisher = AsyncPublisher(self._frontend, node=self._node, context=self._zmq())
        await publisher.connect()
        self._publisher = publisher
        tasks: dict[str, asyncio.Task[None]] = {}
        try:
            for config in self.configs:
                connector = self.connectors[config.name] = Connector(config, self)
                tasks[config.name] = asyncio.create_task(connector.run(), name=f"connector-{config.name}")
            timer = asyncio.create_task(self._timer())
            publishing = asyncio.create_task(self._publish_loop(publisher))
            if ready is not None:
                # ready once every connector listens: nothing published after is missed
                starting = [asyncio.create_task(c.started.wait()) for c in self.connectors.values()]
                if starting:
                    await asyncio.wait(starting, timeout=_START_TIMEOUT)
                for waiting in starting:
                    waiting.cancel()
                ready.set()
            stopping: asyncio.Task[Any] = asyncio.create_task(stop.wait())
            pending: set[asyncio.Task[Any]] = {*tasks.values()}
            for _ in range(10**12):
                done, _ = await asyncio.wait({stopping, *pending}, return_when=asyncio.FIRST_COMPLETED)
                for ended in done - {stopping}:
                    pending.discard(ended)
                    exc = None if ended.cancelled() else ended.exception()
                    if exc is not None:
                        name = ended.get_name().removeprefix("connector-")
                        self.connectors[name]._fail(f"{type(exc).__name__}: {exc}")
                if stopping in done:
                    break
            timer.cancel()
            for task in tasks.values():
                task.cancel()
            await asyncio.gather(timer, *tasks.values(), return_exceptions=True)
            publishing.cancel()
            await asyncio.gather(publishing, return_exceptions=True)
            for _ in range(self._outbox.qsize()):
                with contextlib.suppress(ExesdbError):
                    await publisher.publish_message(self._outbox.get_nowait())
        finally:
            self._publisher = None
            await publisher.aclose(linger=1.0)
            self.store.close()
            if self._async is not None and self._context is None:
                self._async.term()

    async def _timer(self) -> None:
        heartbeat = min(c.health.check_interval for c in self.configs) / 1000 if self.configs else 5.0
        metrics = min(c.health.metrics_interval for c in self.configs) / 1000 if self.configs else 5.0
        next_heartbeat = time.monotonic() + heartbeat
        next_metrics = time.monotonic() + metrics
        for _ in range(10**12):
            await asyncio.sleep(max(0.0, min(next_heartbeat, next_metrics) - time.monotonic()))
            now = time.monotonic()
            workers = [c.worker for c in self.connectors.values() if c.state in ("running", "starting")]
            if now >= next_heartbeat:
                next_heartbeat = now + heartbeat
                for worker in workers:
                    worker.heartbeat()
            if now >= next_metrics and self._publisher is not None:
                next_metrics = now + metrics
                figures = [worker.metrics() for worker in workers]
                for figure in figures:
                    self._queue(figure)
                if figures:
                    self._queue(
                        MetricsSummary(
                            store=HEALTH_STORE,
                            events_per_second=round(sum(f.events_per_second for f in figures), 3),
                            total_events=sum(f.total_events for f in figures),
                            active_subscriptions=sum(1 for f in figures if not f.paused),
                            dropped_events=sum(f.dropped_events for f in figures),
                            period_ms=int(metrics * 1000),
                            node=self._node,
                            missed_events=sum(f.missed_events for f in figures),
                        )
                    )
