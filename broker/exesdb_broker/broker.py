"""The broker: libzmq's proxy between an XSUB frontend and an XPUB backend, with a tap and a
service thread beside it.

Threads, each owning its sockets:

- ``exesdb-proxy``: ``zmq.proxy_steerable`` in C with the GIL released. No Python runs per
  forwarded message.
- ``exesdb-tap``: a subscriber to everything over inproc, counting per instance at low
  CPU priority (see :mod:`.tap`).
- ``exesdb-service``: control requests, connection monitors, probe echoes, the broker's
  own lifecycle and metrics (see :mod:`.service`).
"""

from __future__ import annotations

import logging
import secrets
import threading
from types import TracebackType
from typing import Any, Final, Self

import zmq
from exesdb_sdk.errors import BindError, BrokerUnavailableError, ConfigError, ExesdbError
from exesdb_sdk.publisher import prepare_socket
from exesdb_sdk.settings import check_settings

from .config import BrokerConfig, journal_instances, last_value_prefixes
from .journal import JOURNAL_OPS, Journal, JournalSettings
from .security import HANDSHAKE_FAILURES, Security, SecurityMonitor
from .service import Service, ServiceSockets, stop_workers
from .stats import StatsBook
from .tap import Tap

__all__ = ["Broker"]

log = logging.getLogger("exesdb.broker")

_START_TIMEOUT: Final = 5.0
_CONTROL_MAX_MESSAGE: Final = 64 * 1024
_BACKEND_LINGER_MS: Final = 500
_MONITOR_EVENTS: Final = zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED | HANDSHAKE_FAILURES


class Broker:
    """An exesdb broker, run inside this process (the ``exesdb-broker`` daemon uses it too).

    :meth:`start` binds every endpoint and returns once the broker forwards; :meth:`stop`
    stops it within about two seconds. It is a context manager. The bound endpoints are in
    :attr:`frontend`, :attr:`backend` and :attr:`control` (with the real port when the
    configuration asked for ``*``).

    Example::

        config = BrokerConfig(frontend="tcp://127.0.0.1:*", backend="tcp://127.0.0.1:*",
                              control="tcp://127.0.0.1:*")
        with Broker(config) as broker:
            print(broker.frontend, broker.backend)
    """

    def __init__(self, config: BrokerConfig | None = None) -> None:
        self.config = config if config is not None else BrokerConfig()
        self.frontend = self.config.frontend
        self.backend = self.config.backend
        self.control = self.config.control
        self._context: zmq.Context[Any] | None = None
        self._lock = threading.Lock()
        self._started = False
        self._stopped = False

    @property
    def running(self) -> bool:
        """Whether the broker has started and its threads are all alive."""
        return self._started and not self._stopped and self._service.is_alive() and self._proxy_thread.is_alive()

    def start(self) -> Self:
        """Bind and start forwarding. Raises :class:`BindError` or :class:`ConfigError`."""
        with self._lock:
            if self._started:
                raise ExesdbError("broker already started")
            check_settings(self.config)
            self._security = Security(self.config)  # keys, allowlists, the loopback rule: before any bind
            self._context = zmq.Context()
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
        base = f"inproc://exesdb-broker-{secrets.token_hex(6)}"
        self._security.start(context)

        frontend = context.socket(zmq.XSUB)
        frontend.setsockopt(zmq.RCVHWM, config.hwm)
        frontend.setsockopt(zmq.MAXMSGSIZE, config.max_message_size)
        frontend.setsockopt(zmq.LINGER, 0)
        backend = context.socket(zmq.XPUB)
        backend.setsockopt(zmq.SNDHWM, config.hwm)
        backend.setsockopt(zmq.LINGER, _BACKEND_LINGER_MS)
        control = context.socket(zmq.ROUTER)
        # Room for a durable publish of the largest message (plus its request map).
        control.setsockopt(zmq.MAXMSGSIZE, max(_CONTROL_MAX_MESSAGE, config.max_message_size + 4096))
        control.setsockopt(zmq.LINGER, 0)
        self._frontend_socket, self._backend_socket = frontend, backend
        for socket, role in ((frontend, "frontend"), (backend, "backend"), (control, "control")):
            self._security.secure(socket, role)

        self.frontend = self._bind(frontend, "frontend", config.frontend)
        self.backend = self._bind(backend, "backend", config.backend)
        self.control = self._bind(control, "control", config.control)
        frontend.bind(base + "-frontend")
        backend.bind(base + "-backend")
        monitors = {
            "frontend": frontend.get_monitor_socket(_MONITOR_EVENTS),
            "backend": backend.get_monitor_socket(_MONITOR_EVENTS),
            "control": control.get_monitor_socket(HANDSHAKE_FAILURES),
        }

        proxy_side = context.socket(zmq.PAIR)
        proxy_side.bind(base + "-proxy")
        self._proxy_control = proxy_side
        service_sockets = ServiceSockets(
            control=control,
            publisher=context.socket(zmq.XPUB),
            proxy_control=context.socket(zmq.PAIR),
            tap_stop=context.socket(zmq.PAIR),
            stop=context.socket(zmq.PAIR),
            monitors=monitors,
            journal=context.socket(zmq.PAIR),
        )
        self._service_sockets = service_sockets
        service_sockets.proxy_control.connect(base + "-proxy")
        service_sockets.tap_stop.connect(base + "-tap-stop")
        service_sockets.stop.bind(base + "-stop")
        self._stop_endpoint = base + "-stop"

        self._tap = Tap(context, base + "-backend", base + "-tap-stop")
        self._tap.start(_START_TIMEOUT)
        self._journal = Journal(
            context,
            JournalSettings(
                data_dir=config.data_dir,
                instances=journal_instances(config.journal),
                last_values=last_value_prefixes(config.last_values),
                max_age=config.journal_max_age,
                max_records=config.journal_max_records,
                fsync=config.journal_fsync,
                max_message_size=config.max_message_size,
            ),
            backend=base + "-backend",
            frontend=base + "-frontend",
            endpoint=base + "-journal",
        )
        assert service_sockets.journal is not None
        for option in (zmq.SNDHWM, zmq.RCVHWM):  # requests and replies wait; their clients bound them
            service_sockets.journal.setsockopt(option, 0)
        service_sockets.journal.connect(base + "-journal")
        self._journal.start(_START_TIMEOUT)
        self._proxy_thread = threading.Thread(target=self._run_proxy, name="exesdb-proxy", daemon=True)
        self._proxy_thread.start()

        # The broker's own publisher is ready once the tap's subscription has come back up
        # through the proxy: from then on every publisher that connects is sent everything.
        publisher = service_sockets.publisher
        prepare_socket(publisher, hwm=config.hwm, send_timeout=0, linger=0)
        publisher.connect(base + "-frontend")
        if not publisher.poll(int(_START_TIMEOUT * 1000)):
            raise BrokerUnavailableError(base + "-frontend", _START_TIMEOUT, "proxy")
        self._journal.wait_ready(_START_TIMEOUT)

        self._book = StatsBook(self._tap.counters)
        self._service = Service(
            service_sockets,
            self._book,
            node=config.node,
            metrics_interval=config.metrics_interval,
            journal_stats=self._journal.snapshot,
            journal_ops=JOURNAL_OPS,
        )
        endpoints = {"frontend": self.frontend, "backend": self.backend, "control": self.control}
        self._service.security = SecurityMonitor(self._security, config.node, self._service.publish, endpoints)
        self._service.lifecycle("starting")
        self._service.lifecycle("started")
        self._service.start()

    def _abort(self, context: zmq.Context[Any]) -> None:
        """Undo a start that failed part way: stop what runs, then drop every socket."""
        if hasattr(self, "_proxy_thread"):
            stop_workers(self._service_sockets)
            self._proxy_thread.join(1.0)
        if hasattr(self, "_tap"):
            self._tap.join(1.0)
        if hasattr(self, "_journal"):
            self._journal.join(1.0)
        self._security.stop()
        context.destroy(linger=0)

    def _run_proxy(self) -> None:
        try:
            zmq.proxy_steerable(self._frontend_socket, self._backend_socket, None, self._proxy_control)
        except zmq.ContextTerminated:
            pass
        except zmq.ZMQError as exc:
            log.error("proxy stopped: %s", exc)
        finally:
            for socket in (self._frontend_socket, self._backend_socket, self._proxy_control):
                socket.close()

    def stop(self, timeout: float = 2.0) -> None:
        """Announce the stop, stop forwarding and release every socket. Idempotent."""
        with self._lock:
            if not self._started or self._stopped:
                return
            self._stopped = True
            context = self._context
            assert context is not None
            log.info("broker stopping")
            sender = context.socket(zmq.PAIR)
            sender.setsockopt(zmq.LINGER, 0)
            sender.connect(self._stop_endpoint)
            sender.send(b"STOP")
            sender.close()
            self._service.join(timeout * 0.5)
            self._proxy_thread.join(timeout * 0.1)
            self._tap.join(timeout * 0.1)
            self._journal.join(timeout * 0.3)
            self._security.stop()
            # Every thread closes its own sockets; term() wakes any still blocked (ETERM) and
            # waits at most the backend's linger for the last messages to reach subscribers.
            context.term()
            log.info("broker stopped")

    def reload(self) -> bool:
        """Re-read the key allowlists (SIGHUP in the daemon); connections already up stay up.
        Returns whether new lists are in force; a bad file keeps the old ones (logged)."""
        with self._lock:
            if not self._started or self._stopped:
                return False
        return self._security.reload()

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
