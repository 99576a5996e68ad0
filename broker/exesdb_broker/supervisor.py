"""One supervisor for every broker thread, in the spirit of an OTP ``one_for_one`` supervisor.

Each child runs in a thread of its own for the broker's whole life. When the child's ``run``
raises, the supervisor logs the traceback once, counts the restart (``stats.restarts``) and
calls ``run`` again in the same thread, where the child makes fresh sockets for everything it
connects. Past ``max_restarts`` restarts within ``period`` seconds (the restart intensity), or
when a child that cannot be restarted (the proxy, which owns the bound data endpoints) fails,
it gives up: :attr:`Supervisor.failure` says why, :meth:`Supervisor.healthy` turns false, and
the ``exesdb-broker`` daemon exits non-zero so that a service manager starts a fresh one.
Never a dead thread behind a live process.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from typing import Any, Final, Protocol

import zmq

__all__ = ["DEFAULT_MAX_RESTARTS", "DEFAULT_RESTART_PERIOD", "Child", "Supervisor"]

log = logging.getLogger("exesdb.broker.supervisor")

DEFAULT_MAX_RESTARTS: Final = 5
DEFAULT_RESTART_PERIOD: Final = 30.0


class Child(Protocol):
    """A supervised broker thread."""

    name: str
    """Short name, as in ``stats.restarts`` (the thread is ``exesdb-<name>``)."""
    restartable: bool
    """Whether a failed ``run`` may be called again; if not, a failure is fatal at once."""

    def run(self) -> None:
        """Create the sockets, serve until asked to stop, close them. Raises on failure."""


class Supervisor:
    """Runs :class:`Child` objects in threads and restarts them when they fail."""

    def __init__(
        self,
        *,
        max_restarts: int = DEFAULT_MAX_RESTARTS,
        period: float = DEFAULT_RESTART_PERIOD,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_restarts = max_restarts
        self.period = period
        self.restarts: Counter[str] = Counter()
        """Restarts per child since the broker started."""
        self.failure: str | None = None
        """Why the supervisor gave up, or ``None``."""
        self._clock = clock
        self._recent: deque[float] = deque()
        self._threads: dict[str, threading.Thread] = {}
        self._lock = threading.Lock()

    def start(self, child: Child) -> None:
        """Start ``child`` in a daemon thread ``exesdb-<name>``."""
        thread = threading.Thread(target=self._supervise, args=(child,), name=f"exesdb-{child.name}", daemon=True)
        self._threads[child.name] = thread
        thread.start()

    def join(self, name: str, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for child ``name`` to end; return whether it has."""
        thread = self._threads.get(name)
        if thread is None:
            return True
        thread.join(max(0.0, timeout))
        return not thread.is_alive()

    def alive(self, name: str) -> bool:
        """Whether child ``name`` is running (or restarting)."""
        thread = self._threads.get(name)
        return thread is not None and thread.is_alive()

    def dead(self) -> list[str]:
        """The children whose thread has ended (for good: a restart runs in the same thread)."""
        return sorted(name for name, thread in self._threads.items() if not thread.is_alive())

    def healthy(self) -> bool:
        """No failure given up on, and every child's thread alive."""
        return self.failure is None and all(thread.is_alive() for thread in self._threads.values())

    def snapshot(self) -> dict[str, Any]:
        """The ``restarts`` map of the ``stats`` reply."""
        return {
            "total": sum(self.restarts.values()),
            "by_thread": dict(self.restarts),
            "max_restarts": self.max_restarts,
            "period": self.period,
        }

    def _supervise(self, child: Child) -> None:
        _name_native_thread(f"exesdb-{child.name}")
        # Bounded: past the intensity the loop gives up, and every lap costs a failure.
        for _ in range(1_000_000):
            try:
                child.run()
            except zmq.ContextTerminated:
                return  # the context was terminated under it: the broker is stopping
            except Exception as exc:
                if self._give_up(child, exc):
                    return
                continue
            return

    def watched_failed(self, name: str, reason: str) -> bool:
        """A thread the supervisor does not run itself (pyzmq's ZAP handler) was found dead:
        count it as a failure of ``name``, to be restarted by its owner; return whether the
        supervisor gives up instead."""
        return self._give_up(_Watched(name), RuntimeError(reason))

    def _give_up(self, child: Child, exc: Exception) -> bool:
        """Count a failure of ``child``; return whether the supervisor gives up."""
        with self._lock:
            now = self._clock()
            self._recent.append(now)
            while self._recent and self._recent[0] < now - self.period:
                self._recent.popleft()
            count = len(self._recent)
            if child.restartable and count <= self.max_restarts:
                self.restarts[child.name] += 1
                log.error(
                    "the %s thread failed (%s: %s); restarting it (%d restart(s) in the last %g s, at most %d)",
                    child.name,
                    type(exc).__name__,
                    exc,
                    count,
                    self.period,
                    self.max_restarts,
                    exc_info=exc,
                )
                return False
            why = "cannot be restarted" if not child.restartable else f"{count} failures in {self.period:g} s"
            self.failure = f"the {child.name} thread failed ({type(exc).__name__}: {exc}) and {why}"
            log.critical("giving up: %s", self.failure, exc_info=exc)
            return True


class _Watched:
    """A thread run by someone else, counted by the supervisor."""

    restartable = True

    def __init__(self, name: str) -> None:
        self.name = name

    def run(self) -> None:  # pragma: no cover - never run: its owner restarts it
        raise NotImplementedError


def _name_native_thread(name: str) -> None:
    """Give the OS thread the child's name (``top -H``, ``ps -L`` show it); Linux, best effort."""
    try:
        with open(f"/proc/self/task/{threading.get_native_id()}/comm", "w") as comm:
            comm.write(name[:15])
    except OSError:
        pass
