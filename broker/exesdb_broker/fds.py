"""File descriptors: the limit raised at start, usage watched, a warning once per episode.

Every connection costs the broker one descriptor. At ``RLIMIT_NOFILE`` libzmq can no longer
accept (``EMFILE``): new clients fail and the broker's I/O thread retries the listening socket
in a tight loop. The daemon raises its soft limit to the hard limit at start, ``stats`` reports
``fds`` (used, limit, peak), and past :data:`WARN_FRACTION` of the limit the broker logs a
warning and publishes a ``SystemAlert`` once, until usage falls below :data:`CLEAR_FRACTION`.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import resource
import time
from collections.abc import Callable
from typing import Any, Final

import zmq

__all__ = [
    "CLEAR_FRACTION",
    "RESERVE",
    "RESUME_FRACTION",
    "WARN_FRACTION",
    "AcceptGuard",
    "FdWatch",
    "fd_limit",
    "raise_fd_limit",
]

log = logging.getLogger("exesdb.broker")

WARN_FRACTION: Final = 0.8
CLEAR_FRACTION: Final = 0.7
_FD_DIR: Final = "/proc/self/fd"
_OUT_OF_DESCRIPTORS: Final = frozenset({errno.EMFILE, errno.ENFILE})


def fd_limit() -> int:
    """The soft ``RLIMIT_NOFILE`` (0 when unlimited or unknown)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return 0 if soft == resource.RLIM_INFINITY else int(soft)


def raise_fd_limit() -> tuple[int, int]:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard limit; return ``(before, after)``."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as exc:
            log.warning("file descriptor limit stays at %d (cannot raise it to %d: %s)", soft, hard, exc)
            return int(soft), int(soft)
    return int(soft), int(hard)


def _used() -> int | None:
    """Descriptors open in this process, or ``None`` where that cannot be read."""
    try:
        # listdir opens one descriptor of its own, which it lists too
        return len(os.listdir(_FD_DIR)) - 1
    except OSError as exc:
        if exc.errno in _OUT_OF_DESCRIPTORS:  # the table is full
            return fd_limit() or None
        return None


class FdWatch:
    """Samples descriptor usage (from the service thread, about once a second)."""

    def __init__(self) -> None:
        self.limit = fd_limit()
        self.used: int | None = _used()
        self.peak = self.used or 0
        self.warnings = 0
        self._warned = False

    def sample(self) -> str | None:
        """Read usage; return a warning to publish when this sample starts an episode."""
        self.limit = fd_limit()
        self.used = used = _used()
        if used is None or not self.limit:
            return None
        self.peak = max(self.peak, used)
        if not self._warned and used >= WARN_FRACTION * self.limit:
            self._warned = True
            self.warnings += 1
            message = (
                f"file descriptors: {used} of {self.limit} in use ({used / self.limit:.0%}); at the limit the "
                "broker cannot accept new connections (raise the hard limit, e.g. LimitNOFILE=)"
            )
            log.warning(message)
            return message
        if self._warned and used < CLEAR_FRACTION * self.limit:
            self._warned = False
            log.info("file descriptors: back to %d of %d in use", used, self.limit)
        return None

    def snapshot(self) -> dict[str, Any]:
        """The ``fds`` map of the ``stats`` reply."""
        return {"used": self.used, "limit": self.limit, "peak": self.peak, "warnings": self.warnings}


RESERVE: Final = 4
"""Descriptors held back from start, released while accepting is paused (room for control)."""
RESUME_FRACTION: Final = 0.9
"""Usage under which a paused endpoint accepts again."""


class AcceptGuard:
    """Stops accepting on an endpoint that is out of descriptors, and resumes later.

    At the limit, libzmq retries ``accept()`` on a listening socket in a tight loop (a core at
    100%, and an ``EVENT_ACCEPT_FAILED`` per try). On the first such failure the guard unbinds
    that endpoint (connections already made stay up; new clients are refused and retry, as
    ZeroMQ clients do) and releases :data:`RESERVE` descriptors it held since start, so that
    the control endpoint can still accept an operator; once usage is under
    :data:`RESUME_FRACTION` of the limit it binds the endpoints again.
    """

    def __init__(self, unbind: Callable[[str], None], rebind: Callable[[str], None]) -> None:
        self._unbind = unbind
        self._rebind = rebind
        self.paused: dict[str, float] = {}
        """Endpoint role -> monotonic time it stopped accepting."""
        self.pauses = 0
        self._reserve = [_reserve_fd() for _ in range(RESERVE)]

    def on_accept_failed(self, role: str, error: int) -> None:
        """A monitor's ``EVENT_ACCEPT_FAILED`` on ``role`` with ``errno`` ``error``."""
        if error not in _OUT_OF_DESCRIPTORS or role in self.paused:
            return
        self.paused[role] = time.monotonic()
        self.pauses += 1
        log.error("%s: out of file descriptors; not accepting new connections until some are free", role)
        self._unbind(role)
        for fd in self._reserve:
            os.close(fd)
        self._reserve = []

    def tick(self, used: int | None, limit: int) -> None:
        """Resume the paused endpoints once usage is low enough (about once a second)."""
        if not self.paused or used is None or (limit and used >= RESUME_FRACTION * limit):
            return
        for role in list(self.paused):
            try:
                self._rebind(role)
            except zmq.ZMQError as exc:
                log.error("%s: cannot bind again yet: %s", role, exc)
                continue
            del self.paused[role]
            log.info("%s: accepting connections again (%s of %d descriptors in use)", role, used, limit)
        if not self.paused:
            with contextlib.suppress(OSError):
                self._reserve = [_reserve_fd() for _ in range(RESERVE)]

    def snapshot(self) -> dict[str, Any]:
        return {"paused": sorted(self.paused), "pauses": self.pauses}


def _reserve_fd() -> int:
    return os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
