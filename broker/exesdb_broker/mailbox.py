"""A queue between broker threads that wakes a ``zmq.Poller``.

Items go through a :class:`queue.SimpleQueue`; every ``put`` also bumps an eventfd (a pipe
where there is none) that the receiving thread registers in its poller. Unlike an inproc
socket pair, it belongs to no thread: either side may be restarted by the supervisor and the
other keeps working, and nothing on it needs a new file descriptor after start-up (a stop
must work when the process is out of descriptors).
"""

from __future__ import annotations

import contextlib
import os
import queue
from typing import Generic, TypeVar

__all__ = ["Mailbox"]

T = TypeVar("T")


class Mailbox(Generic[T]):
    """Many writers, one reader that polls :meth:`fileno`."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[T] = queue.SimpleQueue()
        if hasattr(os, "eventfd"):
            self._read_fd = self._write_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        else:  # pragma: no cover - non-Linux
            self._read_fd, self._write_fd = os.pipe()
            os.set_blocking(self._read_fd, False)
            os.set_blocking(self._write_fd, False)

    def fileno(self) -> int:
        """The descriptor to poll for ``POLLIN``."""
        return self._read_fd

    def put(self, item: T) -> None:
        """Queue ``item`` and wake the reader. Never blocks."""
        self._queue.put(item)
        self._signal()

    def _signal(self) -> None:
        with contextlib.suppress(BlockingIOError):  # already signalled enough
            os.write(self._write_fd, (1).to_bytes(8, "little"))

    def pending(self) -> bool:
        """Whether items wait (cheap: no system call)."""
        return not self._queue.empty()

    def take(self, limit: int) -> list[T]:
        """Up to ``limit`` queued items, oldest first (empty when there are none)."""
        with contextlib.suppress(BlockingIOError):
            os.read(self._read_fd, 8)
        items: list[T] = []
        for _ in range(limit):
            try:
                items.append(self._queue.get_nowait())
            except queue.Empty:
                return items
        if not self._queue.empty():
            self._signal()  # more than the reader took: it will come back for them
        return items

    def close(self) -> None:
        """Release the descriptors (after both threads are done with it)."""
        for fd in {self._read_fd, self._write_fd}:
            with contextlib.suppress(OSError):
                os.close(fd)
