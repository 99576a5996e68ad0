"""The data plane: libzmq's proxy between the XSUB frontend and the XPUB backend.

``zmq.proxy_steerable`` runs in C with the GIL released; no Python runs per forwarded
message. Its control socket (a DEALER, so that a restarted service thread can connect a fresh
peer) takes ``STATISTICS`` (the exact frame and byte counters) and ``TERMINATE``. After
``TERMINATE`` the thread runs the commands queued for it, in the thread that owns the
sockets, and goes back to forwarding, or ends after :meth:`Proxy.stop`: queued messages wait
in the sockets meanwhile. The proxy owns the bound data endpoints, so it is not restarted:
if it fails, the supervisor gives up and the broker exits non-zero.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Any, Final

import zmq
from exesdb_sdk.instances import Instance

__all__ = ["Proxy", "ProxyCommand", "plane_of"]

log = logging.getLogger("exesdb.broker")

ProxyCommand = Callable[[zmq.Socket[Any], zmq.Socket[Any]], None]
"""Run by the proxy thread with ``(frontend, backend)`` between two forwarding runs."""

_STOP: Final = object()
_COMMANDS_PER_PAUSE: Final = 100
_REPLY_WAIT_MS: Final = 1000


class Proxy:
    """The proxy child of the broker's supervisor."""

    restartable = False

    def __init__(
        self,
        frontend: zmq.Socket[Any],
        backend: zmq.Socket[Any],
        control: zmq.Socket[Any],
        *,
        name: str = "proxy",
    ) -> None:
        self.name = name
        """``proxy`` for the public pair, ``proxy-restricted`` for the restricted class's."""
        self._frontend = frontend
        self._backend = backend
        self._control = control
        self._commands: queue.SimpleQueue[ProxyCommand | object] = queue.SimpleQueue()
        self.started = threading.Event()
        """Set once forwarding has begun (its control socket answers from then on)."""
        self.stopped = threading.Event()
        """Set once forwarding has ended for good."""

    def submit(self, command: ProxyCommand) -> None:
        """Queue ``command``; it runs after the next ``TERMINATE`` on the control socket."""
        self._commands.put(command)

    def stop(self) -> None:
        """Make the next ``TERMINATE`` final."""
        self._commands.put(_STOP)

    @staticmethod
    def interrupt(context: zmq.Context[Any], control: str) -> None:
        """Send ``TERMINATE`` to the proxy whose control socket is bound at inproc ``control``,
        and wait (at most a second) for its reply: libzmq 4.3.5 answers ``TERMINATE``, and its
        DEALER would block the proxy thread for good on a reply to a peer already gone."""
        tell = context.socket(zmq.DEALER)
        try:
            tell.connect(control)
            tell.send(b"TERMINATE")
            tell.poll(_REPLY_WAIT_MS)
        finally:
            tell.close(linger=0)

    def run(self) -> None:
        self.started.set()
        try:
            for _ in range(1_000_000):  # one lap per TERMINATE
                zmq.proxy_steerable(self._frontend, self._backend, None, self._control)
                if not self._run_commands():
                    return
        finally:
            self.stopped.set()
            for socket in (self._frontend, self._backend, self._control):
                socket.close()

    def _run_commands(self) -> bool:
        """Run the queued commands; return whether to forward again."""
        for _ in range(_COMMANDS_PER_PAUSE):
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return True
            if command is _STOP:
                return False
            try:
                command(self._frontend, self._backend)  # type: ignore[operator]
            except zmq.ZMQError as exc:
                log.error("proxy command failed: %s", exc)
        return True


def plane_of(instance: Instance | None, restricted: frozenset[Instance]) -> str:
    """The suffix of the inproc endpoints of ``instance``'s pair: ``-r`` for the restricted
    class, ``""`` for the public pair (``None``: topics of no one instance, public)."""
    return "-r" if instance is not None and instance in restricted else ""
