"""The broker: libzmq's proxy between an XSUB frontend and an XPUB backend, with a tap, a
journal and a service thread beside it, all under one supervisor.

Threads (children of :class:`~.supervisor.Supervisor`), each owning the sockets it creates:

- ``exesdb-proxy``: ``zmq.proxy_steerable`` in C with the GIL released (see :mod:`.proxy`);
- ``exesdb-tap``: a subscriber to everything over inproc, counting per instance (:mod:`.tap`);
- ``exesdb-journal``: records the journaled instances, keeps last values (:mod:`.journal`);
- ``exesdb-service``: control requests, connection monitors, probe echoes, the broker's own
  lifecycle and metrics (:mod:`.service`).

Starting, in order: bind the backend and the control endpoints; start the tap, the journal's
feeds and the journal, whose subscriptions must be in place before anything is forwarded;
start the service (the control endpoint answers from here on) and the proxy; once the
journal's first sync marker has come back through every feed (and after the start grace),
bind the frontend. **The start grace**: after a
restart, publishers hold what they queued during the outage and flush it the moment they
reconnect, before the subscribers that were connected have come back, and the broker would
forward it to nobody. So the broker binds its frontend only once as many subscribers as the
previous run had are back (at most ``start_grace``): their subscriptions are then in place
when the queued messages arrive (see :mod:`.grace`).

Stopping needs no new file descriptor: the service is told through its mailbox, announces the
stop, stops the proxy, then the tap and the journal (which drains and commits), and the
context terminates.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Sequence
from types import TracebackType
from typing import Any, Final, Self

import zmq
from exesdb_connect.config import ConnectorConfig
from exesdb_sdk.classes import encode_classes
from exesdb_sdk.errors import BindError, BrokerUnavailableError, ConfigError, ExesdbError
from exesdb_sdk.settings import check_settings
from exesdb_web import WebServer

from .config import BrokerConfig, FederationConfig, journal_instances, last_value_prefixes
from .connectors import CONNECTOR_OPS, ConnectorsChild
from .federation import FederationChild, federation_plan
from .feed import Feed
from .grace import expected_subscribers, remember_subscribers
from .journal import JOURNAL_OPS, Journal, JournalSettings, journal_feeds
from .mailbox import Mailbox
from .proxy import Proxy, plane_of
from .security import HANDSHAKE_FAILURES, Security, SecurityMonitor, check_restricted
from .service import STOP, InboxItem, Service, ServiceWiring
from .stats import StatsBook
from .supervisor import Supervisor
from .tap import Tap
from .web import HttpSurface

__all__ = ["Broker"]

log = logging.getLogger("exesdb.broker")

GRACE_POLL: Final = 0.01
"""Seconds between looks at the subscriber count during the start grace."""
_START_TIMEOUT: Final = 5.0
_CONTROL_MAX_MESSAGE: Final = 64 * 1024
_BACKEND_LINGER_MS: Final = 500
_MONITOR_EVENTS: Final = (
    zmq.EVENT_ACCEPTED
    | zmq.EVENT_DISCONNECTED
    | zmq.EVENT_ACCEPT_FAILED
    | zmq.EVENT_HANDSHAKE_SUCCEEDED
    | zmq.EVENT_CLOSED
    | HANDSHAKE_FAILURES
)
_STOP_SERVICE_TIMEOUT: Final = 2.0
_OPEN_TIMEOUT: Final = 600.0
_HTTP_STOP_TIMEOUT: Final = 5.0
"""Upper bound on the HTTP surface's stop (its own shutdown timeout closes open streams sooner)."""
_DRAIN_TIMEOUT: Final = 120.0
"""Upper bound on the journal's drain at stop (the buffer bound keeps it far shorter)."""


class Broker:
    """An exesdb broker, run inside this process (the ``exesdb-broker`` daemon uses it too).

    :meth:`start` binds every endpoint and returns once the broker forwards; :meth:`stop`
    stops it (within about two seconds, plus the journal's drain). It is a context manager.
    The bound endpoints are in :attr:`frontend`, :attr:`backend` and :attr:`control` (with
    the real port when the configuration asked for ``*``). :attr:`running` turns false if a
    thread fails past the restart intensity; :attr:`failure` then says why.

    Example::

        config = BrokerConfig(frontend="tcp://127.0.0.1:*", backend="tcp://127.0.0.1:*",
                              control="tcp://127.0.0.1:*")
        with Broker(config) as broker:
            print(broker.frontend, broker.backend)
    """

    def __init__(
        self,
        config: BrokerConfig | None = None,
        connectors: Sequence[ConnectorConfig] = (),
        federation: FederationConfig | None = None,
    ) -> None:
        self.config = config if config is not None else BrokerConfig()
        self.connector_configs = list(connectors)
        """The ``[[connectors]]`` of its TOML file, run by the ``connectors`` child."""
        self._connectors: ConnectorsChild | None = None
        self.federation_config = federation if federation is not None else FederationConfig()
        """The ``[federation]`` of its TOML file, run by the ``federation`` child (off without NATS URLs)."""
        self._federation: FederationChild | None = None
        self.frontend = self.config.frontend
        self.backend = self.config.backend
        self.control = self.config.control
        self.restricted_frontend: str | None = None
        """The restricted class's frontend as bound (``None``: no class)."""
        self.restricted_backend: str | None = None
        """The restricted class's backend as bound (``None``: no class)."""
        self._restricted_proxy: Proxy | None = None
        self._context: zmq.Context[Any] | None = None
        self._lock = threading.Lock()
        self._started = False
        self._stopped = False
        self._supervisor = Supervisor(max_restarts=self.config.max_restarts, period=self.config.restart_period)
        self._inbox: Mailbox[InboxItem] = Mailbox()
        self._web: WebServer | None = None
        self._base = f"inproc://exesdb-broker-{secrets.token_hex(6)}"

    @property
    def running(self) -> bool:
        """Whether the broker has started, is not stopped, and every thread is alive."""
        return self._started and not self._stopped and self._supervisor.healthy()

    @property
    def failure(self) -> str | None:
        """Why the broker gave up on a thread (it then no longer runs), or ``None``."""
        return self._supervisor.failure

    @property
    def restarts(self) -> dict[str, int]:
        """Thread restarts so far, by thread."""
        return dict(self._supervisor.restarts)

    def start(self) -> Self:
        """Bind and start forwarding. Raises :class:`BindError` or :class:`ConfigError`."""
        with self._lock:
            if self._started:
                raise ExesdbError("broker already started")
            check_settings(self.config)
            check_settings(self.federation_config)
            plan = federation_plan(self.federation_config, self.config)
            check_restricted(self.config, self.connector_configs)
            self._security = Security(self.config)  # keys, allowlists, the loopback rule: before any bind
            self._http = HttpSurface(self.config, self._security.enabled)  # its tokens, before any bind
            self._context = zmq.Context()
            if plan is not None:
                self._federation = FederationChild(plan, self._context, self._base, self.config)
            try:
                self._start(self._context)
            except BaseException:
                self._abort(self._context)
                raise
            self._started = True
        log.info(
            "broker started frontend=%s backend=%s control=%s",
            self.frontend,
            self.backend,
            self.control,
        )
        return self

    def _bind(self, socket: zmq.Socket[Any], role: str, endpoint: str) -> str:
        try:
            socket.bind(endpoint)
        except zmq.ZMQError as exc:
            reason = zmq.strerror(exc.errno or 0)
            if exc.errno in (zmq.EINVAL, zmq.EPROTONOSUPPORT):
                raise ConfigError(f"{role}: {endpoint!r} is not a valid endpoint: {reason}") from None
            raise BindError(role, endpoint, reason) from None
        bound: str = socket.getsockopt_string(zmq.LAST_ENDPOINT)
        return bound

    def _start(self, context: zmq.Context[Any]) -> None:
        config = self.config
        base = self._base
        self._security.start(context)

        frontend, backend, proxy_control = self._pair(context)
        control = context.socket(zmq.ROUTER)
        # Room for a durable publish of the largest message (plus its request map).
        control.setsockopt(zmq.MAXMSGSIZE, max(_CONTROL_MAX_MESSAGE, config.max_message_size + 4096))
        control.setsockopt(zmq.LINGER, 0)
        self._sockets = [frontend, backend, control, proxy_control]
        for socket, role in ((frontend, "frontend"), (backend, "backend"), (control, "control")):
            self._security.secure(socket, role)
        restricted = self._security.restricted
        monitors: dict[str, zmq.Socket[Any]] = {}
        if restricted:
            self._restricted_proxy = self._restricted_pair(context, monitors)

        self.backend = self._bind(backend, "backend", config.backend)
        expected = expected_subscribers(config.data_dir, self.backend) if config.start_grace > 0 else 0
        self.control = self._bind(control, "control", config.control)
        if self._http.address is not None or self.connector_configs or self._federation is not None:
            # the HTTP surface's, the connectors' and the federation's way in (trusted: see security.py)
            control.bind(base + "-control")
        if self._http.address is not None:
            self._http.bind()
        frontend.bind(base + "-frontend")
        backend.bind(base + "-backend")
        proxy_control.bind(base + "-proxy")
        monitors |= {
            "frontend": frontend.get_monitor_socket(_MONITOR_EVENTS),
            "backend": backend.get_monitor_socket(_MONITOR_EVENTS),
            "control": control.get_monitor_socket(HANDSHAKE_FAILURES | zmq.EVENT_ACCEPT_FAILED),
        }
        self._sockets.extend(monitors.values())

        announce = encode_classes(self._classes()) if restricted else b""
        self._tap = Tap(context, base + "-backend", base + "-r-backend" if restricted else None, restricted, announce)
        journal_settings = JournalSettings(
            data_dir=config.data_dir,
            instances=journal_instances(config.journal),
            last_values=last_value_prefixes(config.last_values),
            max_age=config.journal_max_age,
            max_records=config.journal_max_records,
            fsync=config.journal_fsync,
            max_message_size=config.max_message_size,
            buffer_bytes=config.journal_buffer,
            node=config.node,
        )
        self._feeds = [
            Feed(
                context,
                label,
                instance,
                prefixes,
                backend=base + plane_of(instance, restricted) + "-backend",
                base=base,
            )
            for label, instance, prefixes in journal_feeds(journal_settings)
        ]
        self._journal = Journal(
            context,
            journal_settings,
            feeds=self._feeds,
            frontend=base + "-frontend",
            reply=lambda frames: self._inbox.put(("reply", frames)),
            restricted_frontend=base + "-r-frontend" if restricted else None,
            restricted=restricted,
        )
        self._proxy = Proxy(frontend, backend, proxy_control)
        self._sockets = [socket for socket in self._sockets if socket not in (frontend, backend, proxy_control)]
        self._book = StatsBook(self._tap.counters)
        endpoints = {"frontend": self.frontend, "backend": self.backend, "control": self.control}
        if self.restricted_frontend is not None and self.restricted_backend is not None:
            endpoints |= {
                "restricted_frontend": self.restricted_frontend,
                "restricted_backend": self.restricted_backend,
            }
        self._service = Service(
            ServiceWiring(
                context,
                control,
                monitors,
                base + "-frontend",
                base + "-proxy",
                self._inbox,
                endpoints,  # shared with the security monitor: the frontend may be bound later
                restricted_frontend=base + "-r-frontend" if restricted else None,
                restricted=restricted,
                restricted_proxy=self._restricted_proxy,
                restricted_proxy_control=base + "-r-proxy" if restricted else None,
            ),
            self._book,
            self._proxy,
            node=config.node,
            metrics_interval=config.metrics_interval,
            on_stop=self._stop_after_proxy,
            remember=lambda count: remember_subscribers(config.data_dir, self.backend, count),
            adjust_tap=self._tap.adjust,
            watch_zap=self._watch_zap,
            extra_stats=self._extra_stats,
            ping_extra=lambda: {"http": self.http},
            journal_ops=JOURNAL_OPS,
            to_journal=self._journal.submit,
            classes=self._classes,
        )
        self._service.security = SecurityMonitor(self._security, config.node, self._service.publish, endpoints)
        self._service.security.misrouted = self._tap.counters.misrouted
        if self.connector_configs:
            self._connectors = ConnectorsChild(self.connector_configs, context, base, config.data_dir, config.node)
            for op, operation in zip(
                CONNECTOR_OPS,
                (self._connectors.op_connectors, self._connectors.op_parked, self._connectors.op_replay),
                strict=True,
            ):
                self._service.register_op(op, operation)

        supervisor = self._supervisor
        first: list[tuple[Tap | Feed, threading.Event]] = [(self._tap, self._tap.ready)]
        for child, event in first + [(feed, feed.ready) for feed in self._feeds]:
            supervisor.start(child)
            if not event.wait(_START_TIMEOUT):
                raise BrokerUnavailableError(base + "-backend", _START_TIMEOUT, child.name)
        supervisor.start(self._journal)
        if not self._journal.subscribed.wait(_START_TIMEOUT):
            raise BrokerUnavailableError(base + "-backend", _START_TIMEOUT, "journal")
        supervisor.start(self._service)
        supervisor.start(self._proxy)
        if self._restricted_proxy is not None:
            supervisor.start(self._restricted_proxy)
        # The broker's own publisher is ready once the tap's subscription has come back up
        # through the proxy, and the journal once its sync marker has come back through every
        # feed: only then is the frontend bound, so nothing a publisher sends is missed.
        waits = [("proxy", self._service.ready), ("restricted proxy", self._service.restricted_ready)]
        for name, event in (*waits, ("journal feeds", self._journal.synced)):
            if not event.wait(_START_TIMEOUT):
                raise BrokerUnavailableError(base + "-frontend", _START_TIMEOUT, name)
        # Opening the journal may convert an older one (seconds per million records): the
        # broker is ready, and accepts publishers, once it knows whether its journal works.
        if not self._journal.opened.wait(_OPEN_TIMEOUT):
            raise BrokerUnavailableError(config.data_dir, _OPEN_TIMEOUT, "journal store")
        self._web = self._http.child(context, base, base + "-control", self._health)
        if self._web is not None:
            supervisor.start(self._web)
            if not self._web.ready.wait(_START_TIMEOUT):
                raise BrokerUnavailableError(self._http.config.http, _START_TIMEOUT, "http")
            if self._web.error is not None:
                raise self._web.error
        if self._connectors is not None:
            supervisor.start(self._connectors)
            if not self._connectors.ready.wait(_START_TIMEOUT):
                raise BrokerUnavailableError(base + "-control", _START_TIMEOUT, "connectors")
        if self._federation is not None:
            supervisor.start(self._federation)
            if not self._federation.ready.wait(_START_TIMEOUT):
                raise BrokerUnavailableError(base + "-frontend", _START_TIMEOUT, "federation")
        if expected:
            self._grace(expected)
        self.frontend = self._service.bind_frontend(config.frontend)

    def _pair(self, context: zmq.Context[Any]) -> tuple[zmq.Socket[Any], zmq.Socket[Any], zmq.Socket[Any]]:
        """A proxy pair's sockets, not yet bound: the XSUB frontend, the XPUB backend and the
        DEALER its proxy is steered by."""
        frontend = context.socket(zmq.XSUB)
        frontend.setsockopt(zmq.RCVHWM, self.config.hwm)
        frontend.setsockopt(zmq.MAXMSGSIZE, self.config.max_message_size)
        frontend.setsockopt(zmq.LINGER, 0)
        # The broker's own subscription to everything, held by the socket that never restarts:
        # publishers send it all even while the tap (which also subscribes to all) restarts.
        frontend.send(b"\x01")
        backend = context.socket(zmq.XPUB)
        backend.setsockopt(zmq.SNDHWM, self.config.hwm)
        backend.setsockopt(zmq.LINGER, _BACKEND_LINGER_MS)
        steer = context.socket(zmq.DEALER)
        steer.setsockopt(zmq.LINGER, 0)
        return frontend, backend, steer

    def _restricted_pair(self, context: zmq.Context[Any], monitors: dict[str, zmq.Socket[Any]]) -> Proxy:
        """The restricted class's proxy pair: an XSUB frontend and an XPUB backend of their own,
        each a CURVE server of its own ZAP domain, and inproc binds for the broker's threads.
        Both are bound now: unlike the public frontend, its frontend does not wait for the
        journal's feeds (a restricted publisher connected in the broker's first moments may lose
        a message to the journal, never to a subscriber that was there)."""
        config, base = self.config, self._base
        frontend, backend, control = self._pair(context)
        self._security.secure(frontend, "restricted_frontend")
        self._security.secure(backend, "restricted_backend")
        try:
            self.restricted_backend = self._bind(backend, "restricted_backend", config.restricted_backend)
            self.restricted_frontend = self._bind(frontend, "restricted_frontend", config.restricted_frontend)
            frontend.bind(base + "-r-frontend")
            backend.bind(base + "-r-backend")
            control.bind(base + "-r-proxy")
        except BaseException:
            for socket in (frontend, backend, control):
                socket.close(linger=0)
            raise
        monitors["restricted_frontend"] = frontend.get_monitor_socket(_MONITOR_EVENTS)
        monitors["restricted_backend"] = backend.get_monitor_socket(_MONITOR_EVENTS)
        return Proxy(frontend, backend, control, name="proxy-restricted")

    def _classes(self) -> list[dict[str, Any]]:
        """The privilege classes of the ``instances`` reply: the restricted one, if any."""
        if self._restricted_proxy is None:
            return []
        return [
            {
                "name": "restricted",
                "instances": sorted(instance.value for instance in self._security.restricted),
                "frontend": self.restricted_frontend or self.config.restricted_frontend,
                "backend": self.restricted_backend,
            }
        ]

    def _grace(self, expected: int) -> None:
        """Wait until ``expected`` subscribers have completed their handshake (their
        subscriptions follow it at once and the running proxy applies them), at most
        ``start_grace`` seconds; the frontend is bound after it (see :mod:`.grace`)."""
        started = time.monotonic()
        deadline = started + self.config.start_grace
        waited = threading.Event()
        for _ in range(1_000_000):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._book.subscribers_back >= expected:
                break
            waited.wait(min(remaining, GRACE_POLL))
        log.info(
            "start grace: %d of %d subscriber connection(s) back after %.2f s; accepting publishers",
            self._book.subscribers_back,
            expected,
            time.monotonic() - started,
        )

    @property
    def http(self) -> str | None:
        """The HTTP surface's URL (``http://127.0.0.1:7180``) once started, or ``None`` when off."""
        return self._http.url if hasattr(self, "_http") else None

    def _health(self) -> str | None:
        """``None`` while the broker serves (the proxy forwards, every thread is alive, the
        journal works or is disabled on purpose), else why not: the HTTP surface's ``/healthz``."""
        if self._stopped:
            return "the broker is stopping"
        supervisor = self._supervisor
        if supervisor.failure is not None:
            return supervisor.failure
        dead = supervisor.dead()
        if dead:
            return f"the {', '.join(dead)} thread(s) stopped"
        if not self._proxy.started.is_set() or self._proxy.stopped.is_set():
            return "the proxy is not forwarding"
        if self._journal.state not in ("ok", "disabled"):
            return f"journal {self._journal.state}: {self._journal.reason or 'no reason given'}"
        monitor = self._service.security
        if monitor is not None and monitor.unbound:
            return "not bound again after a reload's cut: " + ", ".join(sorted(monitor.unbound))
        return None

    def _watch_zap(self) -> None:
        """Once a second (from the service thread): restart a dead ZAP handler, as the
        supervisor restarts its own children."""
        if self._stopped or self._security.zap_alive():
            return
        if not self._supervisor.watched_failed("zap", "the ZAP handler thread stopped"):
            self._security.restart_zap()

    def _extra_stats(self) -> dict[str, Any]:
        extra = {"journal": self._journal.snapshot(), "restarts": self._supervisor.snapshot()}
        if self._connectors is not None:
            extra["connectors"] = self._connectors.snapshot()
        extra["federation"] = self._federation.snapshot() if self._federation is not None else {"state": "off"}
        return extra

    def _stop_after_proxy(self) -> None:
        """Run by the service once the proxy has stopped: the restricted proxy stops, the tap
        ends, the journal drains."""
        if self._restricted_proxy is not None and self._context is not None:
            self._restricted_proxy.stop()
            Proxy.interrupt(self._context, self._base + "-r-proxy")
        self._tap.stop()
        self._journal.stop()

    def _abort(self, context: zmq.Context[Any]) -> None:
        """Undo a start that failed part way (the frontend is bound last, with every thread
        running): stop what runs in :meth:`stop`'s order and wait for it, then drop every
        socket. A thread whose sockets the context closed under it would fail, and the
        supervisor would report that failure instead of the start's."""
        supervisor = self._supervisor
        for child in ("_federation", "_connectors", "_web"):
            if getattr(self, child, None) is not None:
                getattr(self, child).stop()
        for name in ("federation", "connectors", "http"):
            supervisor.join(name, _HTTP_STOP_TIMEOUT)
        self._http.close()
        if supervisor.alive("service"):  # it stops the proxies, then the tap and the journal
            self._inbox.put(STOP)
            supervisor.join("service", _STOP_SERVICE_TIMEOUT)
        service = getattr(self, "_service", None)
        if service is None or not service.stopped.is_set():  # no service, or it did not get that far
            for child in ("_tap", "_journal"):
                if getattr(self, child, None) is not None:
                    getattr(self, child).stop()
        feeds = [feed.name for feed in getattr(self, "_feeds", [])]
        for name in ("proxy", "proxy-restricted", "tap", "journal", *feeds):
            supervisor.join(name, _STOP_SERVICE_TIMEOUT)
        for socket in getattr(self, "_sockets", []):
            socket.close(linger=0)
        self._security.stop()
        context.destroy(linger=0)

    def stop(self, timeout: float = 2.0) -> None:
        """Announce the stop, stop forwarding, drain the journal and release every socket.
        Idempotent."""
        with self._lock:
            if not self._started or self._stopped:
                return
            self._stopped = True
            context = self._context
            assert context is not None
            backlog = self._journal.snapshot()
            log.info(
                "broker stopping (the journal holds %s message(s) not yet committed, %s more in its feeds)",
                backlog.get("backlog", 0),
                backlog.get("in_feeds", 0),
            )
            supervisor = self._supervisor
            if self._federation is not None:  # first: it reads and writes through the proxy
                self._federation.stop()
                if not supervisor.join("federation", _HTTP_STOP_TIMEOUT):
                    log.error("the federation thread did not stop within %.0f s", _HTTP_STOP_TIMEOUT)
            if self._connectors is not None:  # first: they read through the proxy and the control endpoint
                self._connectors.stop()
                if not supervisor.join("connectors", _HTTP_STOP_TIMEOUT):
                    log.error("the connectors thread did not stop within %.0f s", _HTTP_STOP_TIMEOUT)
                self._connectors.close()
            if self._web is not None:  # first: its clients' sockets must close before the context goes
                self._web.stop()
                if not supervisor.join("http", _HTTP_STOP_TIMEOUT):
                    log.error("the http thread did not stop within %.0f s", _HTTP_STOP_TIMEOUT)
            if supervisor.alive("service"):
                self._inbox.put(STOP)
                supervisor.join("service", max(timeout, _STOP_SERVICE_TIMEOUT))
            if not self._service.stopped.is_set():  # no service to run the sequence: stop what we can
                log.warning("stopping without the service thread: the proxy stops with the context")
                self._stop_after_proxy()
            supervisor.join("tap", timeout * 0.25)
            if not supervisor.join("journal", _DRAIN_TIMEOUT):
                log.error("the journal did not finish its drain within %.0f s", _DRAIN_TIMEOUT)
            for feed in self._feeds:
                supervisor.join(feed.name, timeout * 0.25)
            self._security.stop()
            if (
                supervisor.alive("service")
                or supervisor.alive("http")
                or supervisor.alive("connectors")
                or supervisor.alive("federation")
            ):  # stuck: close what is left, it is over
                log.error("a thread did not stop; closing its sockets from the outside")
                context.destroy(linger=0)
            else:
                # The service's control socket and monitors outlive its runs; every other thread
                # closes its own. term() wakes any still blocked (ETERM) and waits at most the
                # backend's linger for the last messages to reach subscribers.
                for socket in self._sockets:
                    socket.close(linger=0)
                context.term()
            supervisor.join("proxy", timeout * 0.25)
            supervisor.join("proxy-restricted", timeout * 0.25)
            self._inbox.close()
            self._journal.inbox.close()
            log.info("broker stopped")

    def reload(self) -> bool:
        """Re-read the key allowlists and the HTTP token files (SIGHUP in the daemon). Returns
        whether new lists or tokens are in force; a bad file keeps the old ones (logged).

        The endpoints that lost a key get their open connections cut (by the service thread,
        after this returns; ``stats.security.cuts`` counts them): every peer of such an
        endpoint reconnects, and the removed keys are refused. Added keys cut nothing."""
        with self._lock:
            if not self._started or self._stopped:
                return False
        lost = self._security.reload()
        if lost:
            self._service.cut(lost)
        tokens = self._http.reload()
        return lost is not None or tokens

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
        state = "running" if self.running else ("stopped" if self._stopped else "new")
        return f"<Broker frontend={self.frontend} backend={self.backend} control={self.control} {state}>"
