"""The service thread: everything of the broker that is not forwarding.

It answers control requests, follows connections through socket monitors, echoes
subscription probes, asks the proxy for its counters, and publishes the broker's own
lifecycle and metrics. It never touches the forwarding path except through the proxy's
control socket.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Final

import zmq
from exesdb_sdk import __version__
from exesdb_sdk.messages import BrokerMetrics, Payload, SystemEvent, SystemLifecycle
from exesdb_sdk.protocol import PROBE_PREFIX, Encoder, decode_request, encode_error_reply
from zmq.utils.monitor import recv_monitor_message

from .control import ControlHandler
from .security import SecurityMonitor
from .stats import ProxyTotals, StatsBook

__all__ = ["Service", "ServiceSockets", "stop_workers"]

log = logging.getLogger("exesdb.broker")

SYSTEM_NAME: Final = "exesdb_broker"
_PROBE: Final = b"\x01" + PROBE_PREFIX.encode()
_RATE_WINDOW: Final = 1.0
_PROXY_REPLY_TIMEOUT_MS: Final = 1000
_FLUSH: Final = b"_exesdb/flush/"
_FLUSH_TIMEOUT: Final = 0.5


def stop_workers(sockets: ServiceSockets) -> None:
    """Tell the proxy, the tap and the journal to stop (from the thread that owns these sockets)."""
    commands = [(sockets.proxy_control, b"TERMINATE"), (sockets.tap_stop, b"STOP")]
    if sockets.journal is not None:
        commands.append((sockets.journal, b"STOP"))
    for socket, command in commands:
        try:
            socket.send(command, zmq.NOBLOCK)
        except zmq.ZMQError as exc:
            log.debug("stop command %r not sent: %s", command, exc)


class ServiceSockets:
    """The sockets the service thread owns, created by the broker before the thread starts."""

    def __init__(
        self,
        control: zmq.Socket[Any],
        publisher: zmq.Socket[Any],
        proxy_control: zmq.Socket[Any],
        tap_stop: zmq.Socket[Any],
        stop: zmq.Socket[Any],
        monitors: dict[str, zmq.Socket[Any]],
        journal: zmq.Socket[Any] | None = None,
    ) -> None:
        self.control = control
        self.journal = journal
        """PAIR to the journal thread: requests out, replies in."""
        self.publisher = publisher
        self.proxy_control = proxy_control
        self.tap_stop = tap_stop
        self.stop = stop
        self.monitors = monitors

    def close(self) -> None:
        for socket in (self.control, self.publisher, self.proxy_control, self.tap_stop, self.stop):
            socket.close(linger=0)
        for monitor in self.monitors.values():
            monitor.close(linger=0)
        if self.journal is not None:
            self.journal.close(linger=0)


class Service:
    """Runs the service loop in its own thread until a stop message arrives."""

    def __init__(
        self,
        sockets: ServiceSockets,
        book: StatsBook,
        *,
        node: str,
        metrics_interval: float,
        journal_stats: Callable[[], dict[str, Any]] | None = None,
        journal_ops: tuple[str, ...] = (),
    ) -> None:
        self._sockets = sockets
        self._journal_stats = journal_stats
        self._book = book
        self._node = node
        self._metrics_interval = metrics_interval
        self._encoder = Encoder(src=node)
        self._handler = ControlHandler(node, self._stats, authorize=self._authorize)
        if sockets.journal is not None:
            self._handler.forward(journal_ops, self._to_journal)
        self.security: SecurityMonitor | None = None
        """Set by the broker before :meth:`start`: handshake failures, op roles, violations."""
        self._last_metrics = (time.monotonic(), 0)
        self._thread = threading.Thread(target=self._run, name="exesdb-service", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    # -- publishing the broker's own messages --------------------------------------------

    def publish(self, payload: Payload) -> None:
        """Publish one of the broker's own typed messages on its default sub-topic."""
        topic = self._encoder.topic(payload.__instance__, payload.default_subtopic())
        body = self._encoder.encode(topic, type(payload).__name__, payload)
        try:
            self._sockets.publisher.send_multipart((topic, body), zmq.NOBLOCK)
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

    def _proxy_totals(self) -> ProxyTotals | None:
        socket = self._sockets.proxy_control
        socket.send(b"STATISTICS")
        if not socket.poll(_PROXY_REPLY_TIMEOUT_MS):
            return None
        return ProxyTotals.from_reply(socket.recv_multipart())

    def _stats(self) -> dict[str, Any]:
        reply = self._book.snapshot(self._proxy_totals())
        if self._journal_stats is not None:
            reply["journal"] = self._journal_stats()
        if self.security is not None:
            reply["security"] = self.security.snapshot()
        return reply

    def _authorize(self, op: str, user_id: str | None) -> str | None:
        return None if self.security is None else self.security.authorize(op, user_id)

    def _to_journal(self, frames: list[bytes]) -> None:
        assert self._sockets.journal is not None
        journal = self._journal_stats() if self._journal_stats is not None else {}
        if journal.get("state") == "failed":  # nobody would answer: say so now
            request_id = decode_request(frames[-1]).get("id")
            reason = f"the journal stopped: {journal.get('reason')}"
            reply = encode_error_reply("journal_unavailable", reason, request_id)
            self._sockets.control.send_multipart([*frames[:-1], reply], zmq.NOBLOCK)
            return
        try:
            self._sockets.journal.send_multipart(frames, zmq.NOBLOCK)
        except zmq.ZMQError as exc:
            log.warning("control request not handed to the journal: %s", exc)

    def _from_journal(self) -> None:
        journal, control = self._sockets.journal, self._sockets.control
        assert journal is not None
        for _ in range(1000):
            try:
                reply = journal.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                control.send_multipart(reply, zmq.NOBLOCK)
            except zmq.ZMQError as exc:  # the client went away: nothing to answer
                log.debug("control reply not sent: %s", exc)

    def _on_monitor(self, role: str, socket: zmq.Socket[Any]) -> None:
        message = recv_monitor_message(socket)
        event = message["event"]
        if self.security is not None:
            self.security.on_monitor_event(role, event, message["value"])
        if role == "control":
            return
        delta = 1 if event == zmq.EVENT_ACCEPTED else -1 if event == zmq.EVENT_DISCONNECTED else 0
        if role == "backend":
            self._book.subscribers = max(0, self._book.subscribers + delta)
        else:
            self._book.publishers = max(0, self._book.publishers + delta)

    def _on_subscription(self, message: bytes) -> None:
        if message.startswith(_PROBE):
            topic = message[1:]
            body = self._encoder.encode(topic, "ProbeAck", {"token": topic[len(_PROBE) - 1 :].decode(errors="replace")})
            try:
                self._sockets.publisher.send_multipart((topic, body), zmq.NOBLOCK)
            except zmq.Again:
                log.warning("probe ack dropped: frontend queue full")

    def _run(self) -> None:
        sockets = self._sockets
        poller = zmq.Poller()
        for socket in (
            sockets.control,
            sockets.publisher,
            sockets.stop,
            *sockets.monitors.values(),
            *([sockets.journal] if sockets.journal is not None else []),
        ):
            poller.register(socket, zmq.POLLIN)
        roles = {socket: role for role, socket in sockets.monitors.items()}
        next_rate = time.monotonic() + _RATE_WINDOW
        next_metrics = time.monotonic() + self._metrics_interval
        try:
            while True:
                now = time.monotonic()
                if now >= next_rate:
                    self._book.sample()
                    next_rate = now + _RATE_WINDOW
                    if self.security is not None:
                        self.security.tick()
                if now >= next_metrics:
                    self._publish_metrics()
                    next_metrics = now + self._metrics_interval
                wait_ms = max(0, int((min(next_rate, next_metrics) - now) * 1000)) + 1
                ready = dict(poller.poll(wait_ms))
                if sockets.stop in ready:
                    self._shut_down()
                    return
                if sockets.control in ready:
                    self._serve_control()
                if sockets.publisher in ready:
                    self._drain_subscriptions()
                if sockets.journal is not None and sockets.journal in ready:
                    self._from_journal()
                for socket in ready:
                    role = roles.get(socket)
                    if role is not None:
                        self._on_monitor(role, socket)
        except zmq.ContextTerminated:
            pass
        except Exception:
            log.exception("broker service loop failed")
            stop_workers(sockets)
        finally:
            sockets.close()

    def _shut_down(self) -> None:
        """Announce the stop, let those messages through, then stop the proxy and the tap."""
        self.lifecycle("stopping")
        self.lifecycle("stopped")
        marker = _FLUSH + self._encoder.pub.encode()
        self._sockets.publisher.send_multipart((marker, b""), zmq.NOBLOCK)
        deadline = time.monotonic() + _FLUSH_TIMEOUT
        counters = self._book.counters
        while counters.last_internal != marker:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                log.warning("stop: the tap did not see the final messages within %.1f s", _FLUSH_TIMEOUT)
                break
            counters.internal_seen.wait(remaining)
            counters.internal_seen.clear()
        stop_workers(self._sockets)

    def _serve_control(self) -> None:
        control = self._sockets.control
        for _ in range(100):
            try:
                received = control.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            reply = self._handler.handle([frame.bytes for frame in received], _user_id(received[-1]))
            if reply is not None:
                try:
                    control.send_multipart(reply, zmq.NOBLOCK)
                except zmq.ZMQError as exc:  # the client went away: nothing to answer
                    log.debug("control reply not sent: %s", exc)

    def _drain_subscriptions(self) -> None:
        publisher = self._sockets.publisher
        for _ in range(1000):
            try:
                self._on_subscription(publisher.recv(zmq.NOBLOCK))
            except zmq.Again:
                return


def _user_id(frame: zmq.Frame) -> str | None:
    """The ZAP User-Id of a received frame (the client's roles under CURVE), or ``None``."""
    try:
        user = frame.get("User-Id")
    except zmq.ZMQError:  # no such property: a connection without ZAP (security off, inproc)
        return None
    return user if isinstance(user, str) else None
