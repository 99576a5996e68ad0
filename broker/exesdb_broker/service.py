"""The service thread: everything of the broker that is not forwarding.

It answers control requests, follows connections through socket monitors, echoes
subscription probes, samples the proxy's counters and the descriptor usage, and publishes
the broker's own lifecycle and metrics. It never touches the forwarding path except through
the proxy's control socket. It is a child of the broker's supervisor: the control socket and
the monitors, bound or created at start, survive a restart; its publisher and its connection
to the proxy's control socket are made fresh by every :meth:`Service.run`.
"""

from __future__ import annotations

import functools
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import zmq
from exesdb_sdk import __version__
from exesdb_sdk.errors import BindError
from exesdb_sdk.instances import Instance
from exesdb_sdk.messages import BrokerMetrics, Payload, SystemAlert, SystemEvent, SystemLifecycle
from exesdb_sdk.protocol import PROBE_PREFIX, Encoder
from exesdb_sdk.publisher import prepare_socket
from zmq.utils.monitor import recv_monitor_message

from .control import ControlHandler
from .fds import AcceptGuard, FdWatch
from .mailbox import Mailbox
from .proxy import Proxy, ProxyCommand
from .security import SecurityMonitor
from .stats import ProxyTotals, StatsBook

__all__ = ["STOP", "Service", "ServiceWiring"]

log = logging.getLogger("exesdb.broker")

SYSTEM_NAME: Final = "exesdb_broker"
STOP: Final = ("stop", None)
"""The inbox item that makes the service shut the broker down."""
_GUARDED: Final = ("frontend", "backend", "control")
"""The endpoints the accept guard may pause (not yet the restricted class's)."""
_PROBE: Final = b"\x01" + PROBE_PREFIX.encode()
_SAMPLE_INTERVAL: Final = 1.0
_TAP_CHECK_INTERVAL: Final = 0.1

_PROXY_REPLY_TIMEOUT_MS: Final = 1000
_FLUSH: Final = b"_exesdb/flush/"
_FLUSH_TIMEOUT: Final = 0.5
_PROXY_STOP_TIMEOUT: Final = 1.0
_READ_BURST: Final = 1000
_REBIND_WAIT: Final = 1.0
"""Seconds a cut endpoint's owner retries its bind at once: libzmq closes the listening
descriptor in its I/O thread, a moment after the unbind (EADDRINUSE until then)."""
_REBIND_STEP: Final = 0.005
_REBIND_TRIES: Final = 60
"""Further binds of an endpoint left unbound after a cut, once a second each, before giving up (logged)."""

InboxItem = tuple[str, Any]
"""``("stop", None)``; ``("reply", frames)``: a control reply another thread produced;
``("proxy", command)``: a :data:`~.proxy.ProxyCommand` to run in the proxy thread;
``("cut", {endpoint: why})``: cut the connections of those endpoints (a reload removed keys)."""


@dataclass(slots=True)
class ServiceWiring:
    """What the service thread works with, made by the broker at start."""

    context: zmq.Context[Any]
    control: zmq.Socket[Any]
    """The bound ROUTER of the control endpoint (kept across restarts)."""
    monitors: dict[str, zmq.Socket[Any]]
    """Socket monitors of the frontend, backend and control sockets (kept across restarts)."""
    frontend: str
    """The inproc frontend endpoint the broker's own publisher connects to."""
    proxy_control: str
    """The inproc endpoint of the proxy's control socket."""
    inbox: Mailbox[InboxItem]
    endpoints: dict[str, str]
    """The bound endpoint of each role (frontend, backend, control), to unbind and bind again."""
    restricted_frontend: str | None = None
    """The inproc frontend of the restricted class (``None``: no class)."""
    restricted: frozenset[Instance] = frozenset()
    """Its instances: the broker's own messages of these go to its frontend."""
    restricted_proxy: Proxy | None = None
    """The restricted class's proxy, which owns its data sockets (``None``: no class)."""
    restricted_proxy_control: str | None = None
    """The inproc endpoint of that proxy's control socket."""


class Service:
    """The service child of the broker's supervisor."""

    name = "service"
    restartable = True

    def __init__(
        self,
        wiring: ServiceWiring,
        book: StatsBook,
        proxy: Proxy,
        *,
        node: str,
        metrics_interval: float,
        on_stop: Callable[[], None],
        remember: Callable[[int], None] | None = None,
        adjust_tap: Callable[[float, int], None] | None = None,
        watch_zap: Callable[[], None] | None = None,
        extra_stats: Callable[[], dict[str, Any]],
        journal_ops: tuple[str, ...] = (),
        to_journal: Callable[[list[bytes]], None] | None = None,
        ping_extra: Callable[[], dict[str, Any]] | None = None,
        classes: Callable[[], list[dict[str, Any]]] | None = None,
    ) -> None:
        self._wiring = wiring
        self._book = book
        self._proxy_child = proxy
        self._node = node
        self._metrics_interval = metrics_interval
        self._on_stop = on_stop
        """Stops what comes after the proxy (tap, journal), once the proxy has stopped."""
        self._extra_stats = extra_stats
        self._remember = remember
        self._adjust_tap = adjust_tap
        self._watch_zap = watch_zap
        """Writes the subscriber count for the start grace of the next run."""
        self._remembered = 0
        self._to_journal = to_journal
        self._encoder = Encoder(src=node)
        self._classes = classes() if classes is not None else []
        """The privilege classes, told to every subscriber in its ``ProbeAck`` (protocol 12.1)."""
        self._handler = ControlHandler(
            node, self._stats, authorize=self._authorize, ping_extra=ping_extra, classes=classes
        )
        if to_journal is not None:
            self._handler.forward(journal_ops, self._hand_to_journal)
        self.security: SecurityMonitor | None = None
        """Set by the broker before the first run: handshake failures, op roles, violations."""
        self.fds = FdWatch()
        self.accepting = AcceptGuard(self._unbind, self._rebind)
        self.ready = threading.Event()
        """Set once the broker's own publisher is connected through the running proxy."""
        self.stopped = threading.Event()
        """Set once the shutdown sequence has run."""
        self._publisher: zmq.Socket[Any] | None = None
        self._restricted_publisher: zmq.Socket[Any] | None = None
        """The broker's own publisher of the restricted instances (their class's frontend)."""
        self.restricted_ready = threading.Event()
        """Set once that publisher is connected through the restricted proxy (or there is no class)."""
        self._proxy: zmq.Socket[Any] | None = None
        self._restricted_proxy: zmq.Socket[Any] | None = None
        """This run's DEALER to the restricted proxy's control socket (a peer for its replies)."""
        self._announced = False
        self._last_metrics = (time.monotonic(), 0)
        self.accept_failures: dict[str, int] = {}
        self._connections: dict[str, int] = {}
        """Per data endpoint, its accepted connections (from its monitor's events)."""
        self._rebind_tries: dict[str, int] = {}

    def register_op(self, op: str, operation: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
        """Answer control op ``op`` in this thread (before the first run)."""
        self._handler.register(op, operation)

    # -- publishing the broker's own messages --------------------------------------------

    def publish(self, payload: Payload) -> None:
        """Publish one of the broker's own typed messages on its default sub-topic."""
        restricted = payload.__instance__ in self._wiring.restricted
        publisher = self._restricted_publisher if restricted else self._publisher
        topic = self._encoder.topic(payload.__instance__, payload.default_subtopic())
        if publisher is None or not (self.restricted_ready if restricted else self.ready).is_set():
            log.warning("own message on %s dropped: the broker's publisher is not connected", topic.decode())
            return
        body = self._encoder.encode(topic, type(payload).__name__, payload)
        try:
            publisher.send_multipart((topic, body), zmq.NOBLOCK)
        except zmq.Again:
            log.warning("own message on %s dropped: frontend queue full", topic.decode())

    def lifecycle(self, event: SystemEvent) -> None:
        """Publish ``SystemLifecycle`` on ``ex_esdb_system/lifecycle``."""
        self.publish(SystemLifecycle(event=event, system=SYSTEM_NAME, version=__version__, node=self._node))

    def _publish_metrics(self) -> None:
        now = time.monotonic()
        snapshot = self._book.snapshot(None)
        totals = snapshot["totals"]
        last_time, last_messages = self._last_metrics
        elapsed = max(now - last_time, 1e-9)
        self._last_metrics = (now, totals["messages"])
        self.publish(
            BrokerMetrics(
                node=self._node,
                uptime=snapshot["uptime"],
                messages=totals["messages"],
                envelopes=totals["envelopes"],
                bytes=totals["bytes"],
                rate=round((totals["messages"] - last_messages) / elapsed, 3),
                malformed=snapshot["malformed"],
                subscribers=snapshot["subscribers"],
                publishers=snapshot["publishers"],
            )
        )

    # -- the loop --------------------------------------------------------------------------

    def run(self) -> None:
        wiring = self._wiring
        publisher = wiring.context.socket(zmq.XPUB)
        proxy = wiring.context.socket(zmq.DEALER)
        restricted = wiring.context.socket(zmq.XPUB) if wiring.restricted_frontend is not None else None
        steer = wiring.context.socket(zmq.DEALER) if wiring.restricted_proxy_control is not None else None
        self._publisher, self._proxy, self._restricted_publisher = publisher, proxy, restricted
        self._restricted_proxy = steer
        self.ready.clear()  # until this run's publisher has its subscription
        self.restricted_ready.clear()
        try:
            prepare_socket(publisher, hwm=10_000, send_timeout=0, linger=0)
            publisher.connect(wiring.frontend)
            if restricted is not None and wiring.restricted_frontend is not None:
                prepare_socket(restricted, hwm=10_000, send_timeout=0, linger=0)
                restricted.connect(wiring.restricted_frontend)
            else:
                self.restricted_ready.set()
            proxy.setsockopt(zmq.LINGER, 0)
            proxy.connect(wiring.proxy_control)
            if steer is not None and wiring.restricted_proxy_control is not None:
                steer.setsockopt(zmq.LINGER, 0)
                steer.connect(wiring.restricted_proxy_control)
            self._loop(publisher)
        finally:
            self._publisher = self._proxy = self._restricted_publisher = self._restricted_proxy = None
            publisher.close(linger=0)
            proxy.close(linger=0)
            if steer is not None:
                steer.close(linger=0)
            if restricted is not None:
                restricted.close(linger=0)

    def _loop(self, publisher: zmq.Socket[Any]) -> None:
        wiring = self._wiring
        poller = zmq.Poller()
        restricted = self._restricted_publisher
        for socket in (wiring.control, publisher, *wiring.monitors.values()):
            poller.register(socket, zmq.POLLIN)
        if restricted is not None:
            poller.register(restricted, zmq.POLLIN)
        poller.register(wiring.inbox.fileno(), zmq.POLLIN)
        roles = {socket: role for role, socket in wiring.monitors.items()}
        next_sample = next_tap_check = time.monotonic()
        next_metrics = time.monotonic() + self._metrics_interval
        while True:
            now = time.monotonic()
            if now >= next_sample:
                self._sample()
                next_sample = now + _SAMPLE_INTERVAL
            elif now >= next_tap_check:
                self._check_tap()
            if now >= next_tap_check:
                next_tap_check = now + _TAP_CHECK_INTERVAL
            if now >= next_metrics:
                self._publish_metrics()
                next_metrics = now + self._metrics_interval
            wait_ms = max(0, int((min(next_sample, next_tap_check, next_metrics) - now) * 1000)) + 1
            ready = dict(poller.poll(wait_ms))
            if publisher in ready:
                self._drain_subscriptions(publisher)
            if restricted is not None and restricted in ready:
                self._drain_subscriptions(restricted)
            if wiring.control in ready:
                self._serve_control()
            for socket in ready:
                role = roles.get(socket)
                if role is not None:
                    self._on_monitor(role, socket)
            if wiring.inbox.fileno() in ready and self._take_inbox():
                return

    def _take_inbox(self) -> bool:
        """Handle the inbox; return whether the service has shut the broker down."""
        for kind, value in self._wiring.inbox.take(_READ_BURST):
            if kind == "reply":
                self._send_control(value)
            elif kind == "proxy":
                self._proxy_child.submit(value)
                if self._proxy is not None:
                    self._proxy.send(b"TERMINATE")
            elif kind == "cut":
                self._cut(value)
            elif kind == "stop":
                self._shut_down()
                return True
        return False

    def _sample(self) -> None:
        """Once a second: rates, the proxy's counters (to prove tap drops), descriptors."""
        self._book.sample()
        self._check_tap()
        self._sample_fds()
        if self.security is not None:
            self.security.tick()
            if self._watch_zap is not None:
                self._watch_zap()
            for role, url in list(self.security.unbound.items()):
                if self._rebind_tries.get(role, 0) < _REBIND_TRIES:
                    self._in_owner(role, functools.partial(self._bind_again, role, url))

    def _sample_fds(self) -> None:
        warning = self.fds.sample()
        self.accepting.tick(self.fds.used, self.fds.limit)
        if warning is not None:
            self.publish(
                SystemAlert(
                    severity="warning",
                    title="broker near its file descriptor limit",
                    description=warning,
                    source=SYSTEM_NAME,
                    node=self._node,
                    metadata={"used": self.fds.used, "limit": self.fds.limit},
                )
            )

    def _check_tap(self) -> None:
        """Every 0.1 s: remember the subscriber count (for the next start's grace), sample the
        proxy's counters (the forwarding rate, the proof of tap drops), set the tap's priority."""
        if self._remember is not None and self._book.subscribers != self._remembered:
            self._remembered = self._book.subscribers
            self._remember(self._remembered)
        totals = self._proxy_totals()
        if totals is None:
            return
        self._book.observe_proxy(totals, time.monotonic())
        if self._adjust_tap is not None:
            self._adjust_tap(self._book.counters.forward_rate, self._book.tap_behind(totals))

    def _proxy_totals(self) -> ProxyTotals | None:
        proxy = self._proxy
        if proxy is None or not self._proxy_child.started.is_set() or self._proxy_child.stopped.is_set():
            return None  # not forwarding (yet, or any more): nobody would answer
        return ProxyTotals.ask(proxy, _PROXY_REPLY_TIMEOUT_MS)

    def _stats(self) -> dict[str, Any]:
        totals = self._proxy_totals()
        if totals is not None:
            self._book.observe_proxy(totals, time.monotonic())
        reply = self._book.snapshot(totals)
        reply.update(self._extra_stats())
        if self.security is not None:
            reply["security"] = self.security.snapshot()
        reply["fds"] = {
            **self.fds.snapshot(),
            **self.accepting.snapshot(),
            "accept_failures": dict(self.accept_failures),
        }
        return reply

    def bind_frontend(self, url: str) -> str:
        """Bind the frontend's endpoint now (after the start grace; from any thread) and
        return it as bound, with the real port for ``:*``."""
        done: queue.SimpleQueue[str | BaseException] = queue.SimpleQueue()

        def bind(frontend: zmq.Socket[Any], backend: zmq.Socket[Any]) -> None:
            try:
                frontend.bind(url)
            except zmq.ZMQError as exc:
                done.put(BindError("frontend", url, zmq.strerror(exc.errno or 0)))
                return
            done.put(frontend.getsockopt_string(zmq.LAST_ENDPOINT))

        self._wiring.inbox.put(("proxy", bind))
        try:
            outcome = done.get(timeout=_PROXY_STOP_TIMEOUT * 5)
        except queue.Empty:
            raise BindError("frontend", url, "the proxy did not bind it in time") from None
        if isinstance(outcome, BaseException):
            raise outcome
        self._wiring.endpoints["frontend"] = outcome
        return outcome

    def _unbind(self, role: str) -> None:
        self._listen(role, False)

    def _rebind(self, role: str) -> None:
        self._listen(role, True)

    def _listen(self, role: str, on: bool) -> None:
        """Bind (``on``) or unbind the endpoint of ``role``, in the thread owning its socket."""
        url = self._wiring.endpoints[role]

        def switch(socket: zmq.Socket[Any]) -> None:
            if on:
                socket.bind(url)
            else:
                socket.unbind(url)

        if role == "control":
            switch(self._wiring.control)
        else:
            self._in_proxy(lambda frontend, backend: switch(frontend if role == "frontend" else backend))

    def _in_proxy(self, command: ProxyCommand) -> None:
        """Run ``command`` in the proxy thread (which owns the data sockets) and wait for it."""
        done: queue.SimpleQueue[BaseException | None] = queue.SimpleQueue()

        def run(frontend: zmq.Socket[Any], backend: zmq.Socket[Any]) -> None:
            try:
                command(frontend, backend)
            except zmq.ZMQError as exc:
                done.put(exc)
                return
            done.put(None)

        self._proxy_child.submit(run)
        if self._proxy is not None:
            self._proxy.send(b"TERMINATE")
        try:
            outcome = done.get(timeout=_PROXY_STOP_TIMEOUT)
        except queue.Empty:
            raise zmq.ZMQError(zmq.EAGAIN, "the proxy did not run the command in time") from None
        if outcome is not None:
            raise outcome

    def cut(self, lost: dict[str, str]) -> None:
        """Cut the open connections of the endpoints in ``lost`` (endpoint -> why), from any
        thread: ZAP runs only at a handshake, so this is how a key removed by a reload is
        refused at once. Each is unbound and bound again, which ends every session accepted
        on it; its peers reconnect by themselves and ZAP refuses the removed keys."""
        self._wiring.inbox.put(("cut", lost))

    def _cut(self, lost: dict[str, str]) -> None:
        for role, why in lost.items():
            url = self._wiring.endpoints.get(role)
            unbound = self.security is not None and role in self.security.unbound
            if url is None or unbound or role in self.accepting.paused:
                continue  # no such endpoint (no restricted class), or unbound already: nothing to cut
            self._in_owner(role, functools.partial(self._cut_one, role, url, why))

    def _in_owner(self, role: str, action: Callable[[zmq.Socket[Any]], None]) -> None:
        """Run ``action`` on the socket of ``role`` in the thread owning it, without waiting:
        the control ROUTER here, a data socket in its proxy's thread between two forwarding runs."""
        wiring = self._wiring
        if role == "control":
            action(wiring.control)
        elif role in ("frontend", "backend"):
            self._proxy_child.submit(lambda frontend, backend: action(frontend if role == "frontend" else backend))
            if self._proxy is not None:
                self._proxy.send(b"TERMINATE")
        elif wiring.restricted_proxy is not None and self._restricted_proxy is not None:
            wiring.restricted_proxy.submit(
                lambda frontend, backend: action(frontend if role == "restricted_frontend" else backend)
            )
            steer = self._restricted_proxy
            for _ in range(_READ_BURST):  # the proxy's replies to earlier commands (libzmq 4.3.5 answers each)
                if not steer.poll(0):
                    break
                steer.recv_multipart()
            steer.send(b"TERMINATE")

    def _cut_one(self, role: str, url: str, why: str, socket: zmq.Socket[Any]) -> None:
        """Unbind ``url`` (its accepted sessions end with the listener) and bind it again."""
        try:
            socket.unbind(url)
        except zmq.ZMQError as exc:
            log.error("reload: %s: connections to %s %s not cut: %s", why, role, url, exc)
            return
        if self.security is not None:
            self.security.cuts[role] = self.security.cuts.get(role, 0) + 1
        log.warning("reload: %s: connections to %s %s cut; peers reconnect", why, role, url)
        self._bind_again(role, url, socket, first=True)

    def _bind_again(self, role: str, url: str, socket: zmq.Socket[Any], *, first: bool = False) -> None:
        """Bind a cut endpoint again (in the thread owning its socket), retrying for
        :data:`_REBIND_WAIT`; a failure is logged, counted and retried once a second."""
        security = self.security
        if security is None or (not first and role not in security.unbound):
            return  # bound by an earlier retry meanwhile
        error = ""
        for _ in range(int(_REBIND_WAIT / _REBIND_STEP)):
            try:
                socket.bind(url)
            except zmq.ZMQError as exc:
                error = zmq.strerror(exc.errno or 0)
                time.sleep(_REBIND_STEP)  # the I/O thread closes the old listener meanwhile
                continue
            if security.unbound.pop(role, None) is not None:
                log.warning("%s %s bound again after %d failed tries", role, url, self._rebind_tries.get(role, 0))
            self._rebind_tries.pop(role, None)
            return
        security.unbound[role] = url
        security.rebind_failures[role] = security.rebind_failures.get(role, 0) + 1
        tries = self._rebind_tries[role] = self._rebind_tries.get(role, 0) + (0 if first else 1)
        if tries >= _REBIND_TRIES:
            log.error(
                "%s %s is NOT BOUND: %d binds after the cut failed (%s); giving up: restart the broker",
                role,
                url,
                tries,
                error,
            )
        else:
            log.error("%s %s not bound again after the cut: %s; retrying once a second", role, url, error)

    def _authorize(self, op: str, user_id: str | None, request: dict[str, Any]) -> str | None:
        return None if self.security is None else self.security.authorize(op, user_id, request)

    def _hand_to_journal(self, frames: list[bytes]) -> None:
        assert self._to_journal is not None
        self._to_journal(frames)

    def _send_control(self, frames: list[bytes]) -> None:
        try:
            self._wiring.control.send_multipart(frames, zmq.NOBLOCK)
        except zmq.ZMQError as exc:  # the client went away: nothing to answer
            log.debug("control reply not sent: %s", exc)

    def _on_monitor(self, role: str, socket: zmq.Socket[Any]) -> None:
        try:
            message = recv_monitor_message(socket, zmq.NOBLOCK)
        except (zmq.Again, ValueError, IndexError):  # nothing, or a torn event from a failed run
            return
        event = message["event"]
        log.debug("%s: %s", role, zmq.Event(event).name)
        if event == zmq.EVENT_ACCEPT_FAILED:
            failures = self.accept_failures[role] = self.accept_failures.get(role, 0) + 1
            if failures == 1:
                log.error("%s: cannot accept a connection: %s", role, zmq.strerror(message["value"]))
            if role not in self.accepting.paused and role in _GUARDED:
                self._sample_fds()  # usage now, at the limit, before the guard frees any
                self.accepting.on_accept_failed(role, message["value"])
            return
        if self.security is not None:
            self.security.on_monitor_event(role, event, message["value"])
        if role == "control":
            return
        if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            if role == "backend":
                self._book.subscribers_back += 1
            return
        delta = 1 if event == zmq.EVENT_ACCEPTED else -1 if event == zmq.EVENT_DISCONNECTED else 0
        if event == zmq.EVENT_CLOSED:
            # The listener closed (an unbind: a cut, the accept guard): libzmq ends the sessions
            # it accepted without a DISCONNECTED event each.
            delta = -self._connections.get(role, 0)
        self._connections[role] = max(0, self._connections.get(role, 0) + delta)
        if role in ("backend", "restricted_backend"):
            self._book.subscribers = max(0, self._book.subscribers + delta)
        else:
            self._book.publishers = max(0, self._book.publishers + delta)

    def _on_subscription(self, message: bytes, publisher: zmq.Socket[Any]) -> None:
        if publisher is self._restricted_publisher:
            self.restricted_ready.set()
        elif not self.ready.is_set():
            self.ready.set()  # the first subscription through the proxy: the publisher is connected
            if not self._announced:
                self._announced = True
                self.lifecycle("starting")
                self.lifecycle("started")
        if message.startswith(_PROBE):
            topic = message[1:]
            ack: dict[str, Any] = {"token": topic[len(_PROBE) - 1 :].decode(errors="replace")}
            if self._classes and publisher is self._publisher:
                ack["classes"] = self._classes
            body = self._encoder.encode(topic, "ProbeAck", ack)
            try:
                publisher.send_multipart((topic, body), zmq.NOBLOCK)  # on the plane it came from
            except zmq.Again:
                log.warning("probe ack dropped: frontend queue full")

    def _shut_down(self) -> None:
        """Announce the stop, let those messages through, stop the proxy, then the rest."""
        self.lifecycle("stopping")
        self.lifecycle("stopped")
        publisher = self._publisher
        if publisher is not None and self.ready.is_set():
            marker = _FLUSH + self._encoder.pub.encode()
            publisher.send_multipart((marker, b""), zmq.NOBLOCK)
            deadline = time.monotonic() + _FLUSH_TIMEOUT
            counters = self._book.counters
            while counters.last_internal != marker:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    log.warning("stop: the tap did not see the final messages within %.1f s", _FLUSH_TIMEOUT)
                    break
                counters.internal_seen.wait(remaining)
                counters.internal_seen.clear()
        self._proxy_child.stop()
        if self._proxy is not None:
            self._proxy.send(b"TERMINATE")
        if not self._proxy_child.stopped.wait(_PROXY_STOP_TIMEOUT):
            log.warning("stop: the proxy did not stop within %.1f s", _PROXY_STOP_TIMEOUT)
        self._on_stop()
        self.stopped.set()

    def _serve_control(self) -> None:
        control = self._wiring.control
        for _ in range(100):
            try:
                received = control.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            reply = self._handler.handle([frame.bytes for frame in received], _user_id(received[-1]))
            if reply is not None:
                self._send_control(reply)

    def _drain_subscriptions(self, publisher: zmq.Socket[Any]) -> None:
        for _ in range(_READ_BURST):
            try:
                self._on_subscription(publisher.recv(zmq.NOBLOCK), publisher)
            except zmq.Again:
                return


def _user_id(frame: zmq.Frame) -> str | None:
    """The ZAP User-Id of a received frame (the client's roles under CURVE), or ``None``."""
    try:
        user = frame.get("User-Id")
    except zmq.ZMQError:  # no such property: a connection without ZAP (security off, inproc)
        return None
    return user if isinstance(user, str) else None
