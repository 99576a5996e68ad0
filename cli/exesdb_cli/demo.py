"""``exesdb demo``: an embedded broker, realistic traffic on every instance, tailed in colour, and
the whole health story of an emitter pool whose subscriber fails for a while.

The story, in order: the workers' activation banners; the projection's database goes away and
its deliveries fail; the circuit breaker opens and emission is PAUSED; a half-open try fails and
the breaker opens again (the backoff doubled); the next half-open try succeeds, emission is
RESUMED and the events held meanwhile are delivered, in order; health and metrics summaries with
their numbers throughout; the termination banners; and a summary of what happened.

The emitter's own lines come through :mod:`exesdb_sdk.observe` (coloured on a terminal, or with
``FORCE_COLOR``), on stdout with the tailed messages, so the story reads in order.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import logging
import random
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Final

from exesdb_broker import Broker, BrokerConfig
from exesdb_sdk import ControlClient, Message, Publisher, ReceiveTimeoutError, Subscriber
from exesdb_sdk import broadcast as bus
from exesdb_sdk.endpoints import (
    DEFAULT_BACKEND,
    DEFAULT_CONTROL,
    DEFAULT_FRONTEND,
    ENV_BACKEND,
    ENV_CONTROL,
    ENV_FRONTEND,
    resolve_endpoint,
)
from exesdb_sdk.health import EmitterPool, EmitterWorker, HealthConfig, SubscriptionHealthTracker
from exesdb_sdk.messages import ClusterHealth, NodeHealth
from exesdb_sdk.observe import ObservabilityHandler, emit

from .render import make_console, pretty

__all__ = ["run_demo"]

FREE: Final = "tcp://127.0.0.1:*"
ATTACH_TIMEOUT: Final = 5.0
"""Seconds ``--attach`` waits for the broker to answer."""
Endpoints = tuple[str | None, str | None, str | None]
NODES: Final = ("node1", "node2", "node3")
STORE: Final = "orders"
FLAKY: Final = f"{STORE}:projection"
"""The subscription whose database goes away now and then."""
STEADY: Final = f"{STORE}:audit-trail"
"""A subscription on the same events that never fails: it is never paused."""

FIRST_OUTAGE: Final = 1.0
"""Seconds after the start when the projection's database first goes away."""
OUTAGE_EVERY: Final = 20.0
"""Seconds from the end of one outage to the next."""
FAILED_TRIES: Final = 4
"""Deliveries an outage fails: three open the breaker, the fourth is its first half-open try."""
GRACE: Final = 10.0
"""At most this long past ``--duration`` to let an outage under way end."""
DRAIN: Final = 2.0
"""At most this long, once the traffic stops, for the workers to deliver what was sent."""
CONFIG: Final = HealthConfig(check_interval=1000, metrics_interval=1000, backoff_initial=500, unhealthy_threshold=3)
BREAKER_EVENTS: Final = {
    "circuit_breaker_opened": "open",
    "circuit_breaker_half_open": "half-open",
    "circuit_breaker_closed": "closed",
}

log = logging.getLogger("exesdb.demo")


class _Traffic:
    """Publishes a varied stream until stopped: a store event every other tick, and in between
    one kind after another of every instance."""

    def __init__(self, pub: Publisher, pace: float) -> None:
        self.pub = pub
        self.pace = pace
        self.published = 0
        self.store_events = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="exesdb-demo-traffic")

    def _run(self) -> None:
        pub, rng, version = self.pub, random.Random(), itertools.count(1)
        bus.broadcast_system_lifecycle("started", "ex_esdb", "0.8.0", publisher=pub)
        bus.broadcast_lifecycle_event("emitter_pool", "started", node="node1", publisher=pub)
        self.published += 2
        steps: list[Callable[[], Any]] = [
            lambda: pub.publish_message(
                NodeHealth(
                    node=rng.choice(NODES),
                    status=rng.choices(("healthy", "degraded", "unhealthy"), (8, 2, 1))[0],
                    load_avg=round(rng.uniform(0.1, 4.0), 2),
                    memory_usage=round(rng.uniform(0.2, 0.9), 2),
                )
            ),
            lambda: bus.broadcast_metrics(
                "persistence", {"operations_count": rng.randint(500, 5000), "duration_ms": 1000}, publisher=pub
            ),
            lambda: bus.broadcast_audit("update_config", "alice", "orders", {"key": "retention"}, publisher=pub),
            lambda: bus.broadcast_security_event(
                rng.choice(["login", "login_failed"]), rng.choice(["alice", "mallory"]), success=rng.random() > 0.3,
                source_ip="127.0.0.1", publisher=pub,
            ),
            lambda: bus.broadcast_log(
                rng.choice(["info", "warning", "error"]), "compaction finished", "storage", publisher=pub
            ),
            lambda: bus.broadcast_alert(
                "disk_usage", rng.choice(["info", "warning", "error", "critical"]), "Disk filling up", {"disk": "/"},
                publisher=pub,
            ),
            lambda: bus.broadcast_diagnostics("projector", "slow batch", {"ms": rng.randint(100, 900)}, publisher=pub),
            lambda: pub.publish_message(ClusterHealth(status="healthy", healthy_nodes=3, total_nodes=3)),
        ]  # fmt: skip
        others = itertools.cycle(steps)
        for tick in itertools.count():
            if self.stop.wait(self.pace):
                return
            if tick % 2 == 0:
                n = next(version)
                event = {"event_type": "OrderPlaced", "stream_id": f"order-{n}", "version": n}
                bus.broadcast_store_events(STORE, "$all", [event], publisher=pub)
                self.store_events += 1
            else:
                next(others)()
            self.published += 1


class _Projection:
    """The projection's database, which goes away now and then for ``FAILED_TRIES`` deliveries,
    and what the demo saw of the emitter's answer: breaker transitions, events held and delivered.

    :meth:`project` runs in the worker's delivery thread; the rest in the demo's main thread."""

    def __init__(self) -> None:
        self.worker: EmitterWorker | None = None
        self._lock = threading.Lock()
        self._phase = "up"  # up, down (deliveries fail), recovering (the held events are delivered)
        self._next_at = time.monotonic() + FIRST_OUTAGE
        self._fails_left = 0
        self._held = 0
        self._versions: list[Any] = []
        self._closed_seen = False
        self.outages = 0
        self.failed_tries = 0
        self.held = 0
        self.delivered_after = 0
        self.in_order = True
        self.transitions = ["closed"]

    @property
    def under_way(self) -> bool:
        """Whether an outage began and its held events are not all delivered yet."""
        with self._lock:
            return self._phase != "up"

    def project(self, event: dict[str, Any]) -> None:
        """The flaky subscriber: raises while the database is away."""
        began = fail = False
        # The emitter publishes its half-open report but logs no line of it: the demo says it here,
        # in the delivery the breaker lets through, so it reads in order with the lines around it.
        trial = self.worker is not None and self.worker.stats.breaker == "half_open"
        with self._lock:
            if self._phase == "up" and time.monotonic() >= self._next_at:
                self._phase, self._fails_left, began = "down", FAILED_TRIES, True
                self.outages += 1
            if self._phase == "down" and self._fails_left > 0:
                self._fails_left -= 1
                self.failed_tries += 1
                fail = True
            elif self._phase == "down":  # the first try that goes through: the breaker closes with it
                self._phase, self._closed_seen, self._versions = "recovering", False, []
                self._held = 1 + (self.worker.stats.buffered if self.worker is not None else 0)
            if self._phase == "recovering" and len(self._versions) < self._held:
                self._versions.append(event.get("version"))
        if began:
            emit(
                log,
                "failure",
                f"⚡ OUTAGE: the database of {FLAKY} goes away; its next {FAILED_TRIES} deliveries fail",
                level=logging.WARNING,
                subscription=FLAKY,
            )
        if trial:
            emit(
                log,
                "health",
                f"🔌 HALF-OPEN: the breaker of {FLAKY} lets one delivery through "
                f"({'the database is still away' if fail else 'the database is back'})",
                subscription=FLAKY,
            )
        if fail:
            raise ConnectionError("projection database unavailable")

    def saw(self, event: str) -> None:
        """A health report about the projection went by on the bus."""
        state = BREAKER_EVENTS.get(event)
        if state is None:
            return
        with self._lock:
            self.transitions.append(state)
            if state == "closed" and self._phase == "recovering":
                self._closed_seen = True

    def poll(self) -> None:
        """Once emission has resumed (its report went by, after the RESUMED line) and every held
        event is delivered, say so."""
        with self._lock:
            if self._phase != "recovering" or not self._closed_seen or len(self._versions) < self._held:
                return
            held, versions = self._held, self._versions
            self._phase, self._next_at = "up", time.monotonic() + OUTAGE_EVERY
            self.held += held
            self.delivered_after += len(versions)
        numbers = [v for v in versions if isinstance(v, int)]
        ordered = len(numbers) == len(versions) and numbers == list(range(numbers[0], numbers[0] + len(numbers)))
        self.in_order = self.in_order and ordered
        span = f"order-{numbers[0]} .. order-{numbers[-1]}" if numbers else "?"
        emit(
            log,
            "success" if ordered else "failure",
            f"📬 HELD EVENTS DELIVERED: {held} event(s) held while {FLAKY} was paused, "
            f"delivered {'in order' if ordered else 'OUT OF ORDER'} ({span})",
            subscription=FLAKY,
            held=held,
        )


def _audit_trail(event: dict[str, Any]) -> None:
    """The steady subscriber: it keeps up whatever happens to the projection."""


class _Handler(ObservabilityHandler):
    """The SDK's observability handler, on stdout. A reader that went away (``exesdb demo |
    head``) is noted, to end the demo, instead of a logging error for every line after."""

    reader_gone = False

    def handleError(self, record: logging.LogRecord) -> None:
        """Note a closed pipe; anything else is reported as logging does."""
        if isinstance(sys.exc_info()[1], BrokenPipeError):
            self.reader_gone = True
            return
        super().handleError(record)


class _Screen:
    """stdout, shared by the tail's lines and the observability lines: one line at a time."""

    def __init__(self) -> None:
        self.console = make_console(force_colour=False)  # coloured on a terminal, or with FORCE_COLOR
        self.handler = _Handler(sys.stdout, output="rich" if self.console.is_terminal else "plain")
        self.handler.addFilter(_not_heard)

    def say(self, text: str, style: str | None = None) -> None:
        """Print a line, never in the middle of an observability line."""
        if self.handler.reader_gone:
            raise BrokenPipeError(errno.EPIPE, "stdout was closed")
        self.handler.acquire()  # the lock the handler writes under
        try:
            self.console.print(text, style=style, markup=False)
        finally:
            self.handler.release()


def _not_heard(record: logging.LogRecord) -> bool:
    """False for the SDK's lines about the health and metrics messages it received: the tail
    shows those messages themselves, with their numbers."""
    heard = record.name in ("exesdb.emitter", "exesdb.health")
    return not (heard and getattr(record, "category", None) in ("health", "action"))


def run_demo(*, duration: float | None, pace: float, attach: Endpoints | None = None) -> int:
    """Run until ``duration`` seconds pass (or Ctrl-C), then print what happened; return 0.

    With ``attach`` (frontend, backend, control; ``None`` each for the usual default), the
    traffic goes through that running broker (and shows on its dashboard) instead of an
    embedded one."""
    screen = _Screen()
    # On the root logger, for the SDK's lines and any other: none ends up with Python's
    # last-resort handler (plain text on stderr, INFO lines lost).
    root, broker_log = logging.getLogger(), logging.getLogger("exesdb.broker")
    levels = root.level, broker_log.level
    root.addHandler(screen.handler)
    root.setLevel(logging.INFO)
    broker_log.setLevel(logging.WARNING)  # its start and stop lines are not the story; its warnings are
    try:
        return _run(screen, duration, pace, attach)
    finally:
        root.removeHandler(screen.handler)
        screen.handler.close()
        root.setLevel(levels[0])
        broker_log.setLevel(levels[1])


def _run(screen: _Screen, duration: float | None, pace: float, attach: Endpoints | None) -> int:
    projection = _Projection()
    received = heartbeats = 0

    def show(message: Message) -> None:
        nonlocal received, heartbeats
        received += 1
        if message.type == "SubscriptionHealth":
            if message.data.get("event") == "heartbeat":  # every second, from each worker: not news
                heartbeats += 1
                return
            if message.data.get("subscription") == FLAKY:
                projection.saw(str(message.data.get("event")))
        text, style = pretty(message)
        screen.say(text, style)

    def follow(sub: Subscriber, seconds: float) -> None:
        if screen.handler.reader_gone:
            raise BrokenPipeError(errno.EPIPE, "stdout was closed")
        with contextlib.suppress(ReceiveTimeoutError):
            show(sub.recv(seconds))
        projection.poll()

    with _bus(attach) as (frontend, backend, control, ping):
        screen.say(f"exesdb demo: broker frontend={frontend} backend={backend} control={control}", "bold")
        where = watch_line(ping)
        if where is not None:
            screen.say(where, "bold")
        started = time.monotonic()
        with (
            Subscriber(backend) as sub,
            SubscriptionHealthTracker(STORE, config=CONFIG, frontend=frontend, backend=backend),
            EmitterPool(config=CONFIG, frontend=frontend, backend=backend) as pool,
            Publisher(frontend) as pub,
        ):
            sub.subscribe()
            projection.worker = pool.add(STORE, "$all", projection.project, subscription=FLAKY)
            steady = pool.add(STORE, "$all", _audit_trail, subscription=STEADY)
            traffic = _Traffic(pub, pace)
            traffic.thread.start()
            deadline = None if duration is None else started + duration
            try:
                _follow_until(deadline, projection, screen, lambda: follow(sub, 0.1))
            except KeyboardInterrupt:
                screen.say("exesdb demo: interrupted", "bold")
            finally:
                traffic.stop.set()
                traffic.thread.join(5)
            # Let the workers deliver what was sent (bounded), still tailing, before they stop.
            drained_by = time.monotonic() + DRAIN
            workers = (projection.worker, steady)
            while time.monotonic() < drained_by and any(
                w.stats.delivered + w.stats.dropped < traffic.store_events for w in workers
            ):
                follow(sub, 0.05)
        # The pool has stopped: its termination banners are out, the figures are final.
        elapsed = time.monotonic() - started
    _summary(screen, elapsed, traffic, received, heartbeats, projection, workers)
    return 0


@contextlib.contextmanager
def _bus(attach: Endpoints | None) -> Iterator[tuple[str, str, str, Mapping[str, Any]]]:
    """The endpoints of the broker the demo runs on and its ``ping`` reply (or what it would
    say): ``attach``'s, checked to answer, or an embedded broker's with a journal of its own
    (the demo's traffic never lands in a real broker's journal) and its HTTP surface on a free
    port (it runs beside any broker)."""
    if attach is not None:
        frontend = resolve_endpoint(attach[0], ENV_FRONTEND, DEFAULT_FRONTEND, "frontend")
        backend = resolve_endpoint(attach[1], ENV_BACKEND, DEFAULT_BACKEND, "backend")
        control = resolve_endpoint(attach[2], ENV_CONTROL, DEFAULT_CONTROL, "control")
        with ControlClient(control, timeout=ATTACH_TIMEOUT) as client:
            ping = client.ping()  # no broker there: one line, before any traffic starts
        yield frontend, backend, control, ping
        return
    with (
        tempfile.TemporaryDirectory(prefix="exesdb-demo-") as data_dir,
        Broker(
            BrokerConfig(
                frontend=FREE, backend=FREE, control=FREE, metrics_interval=2.0, data_dir=data_dir, http="127.0.0.1:0"
            )
        ) as broker,
    ):
        # its own URL, not asked for: a ping of a broker just started could miss its deadline
        yield broker.frontend, broker.backend, broker.control, {"http": broker.http}


def watch_line(ping: Mapping[str, Any]) -> str | None:
    """The line that says where the dashboard is, from the broker's ``ping`` reply; ``None``
    when the broker serves no HTTP (``"http"`` absent or null)."""
    url = ping.get("http")
    return f"watch it live: {url.rstrip('/')}/" if isinstance(url, str) and url else None


def _follow_until(deadline: float | None, projection: _Projection, screen: _Screen, follow: Callable[[], None]) -> None:
    """Tail until ``deadline``; an outage under way then gets up to ``GRACE`` more to end."""
    grace_until = None
    while True:
        now = time.monotonic()
        if deadline is not None and now >= deadline:
            if not projection.under_way or (grace_until is not None and now >= grace_until):
                return
            if grace_until is None:
                grace_until = now + GRACE
                screen.say(f"exesdb demo: time is up; letting the outage end first (at most {GRACE:g} s)", "bold")
        follow()


def _summary(
    screen: _Screen,
    elapsed: float,
    traffic: _Traffic,
    received: int,
    heartbeats: int,
    projection: _Projection,
    workers: tuple[EmitterWorker, EmitterWorker],
) -> None:
    """One screen: what was published, received, held and delivered, and the breaker's path."""
    opened = projection.transitions.count("open")
    held = (
        f"{projection.held} event(s) held while paused, {projection.delivered_after} delivered after it"
        f"{', in order' if projection.in_order else ', NOT in order'}"
        if projection.held
        else "no event held"
    )
    if projection.under_way:
        held += "; the last outage was still under way at the stop"
    width = max(len(w.subscription) for w in workers)
    lines = [
        f"published   {traffic.published} messages by the traffic generator, {traffic.store_events} of them"
        f" store events on ex_esdb_events/{STORE}:$all",
        f"received    {received} messages on this tail ({heartbeats} heartbeat reports not shown)",
        f"outages     {projection.outages} (the database of {FLAKY}): {projection.failed_tries} deliveries"
        f" failed, {held}",
        f"breaker     {FLAKY}: {' -> '.join(projection.transitions)} (opened {opened} time(s))",
    ]
    for i, worker in enumerate(workers):
        stats = worker.stats
        lines.append(
            f"{'delivered' if i == 0 else '':<11} {worker.subscription:<{width}}  {stats.delivered} of"
            f" {traffic.store_events} store events ({stats.failures} failed tries, {stats.dropped} dropped,"
            f" {stats.buffered} left undelivered)"
        )
    screen.say(f"exesdb demo: what happened in {elapsed:.1f} s", "bold")
    for line in lines:
        screen.say(f"  {line}")
