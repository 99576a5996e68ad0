"""A :mod:`logging` handler that publishes an application's log records on the bus.

Each record becomes a :class:`~exesdb_sdk.messages.LogEntry` on ``ex_esdb_logging/<logger>``.
The handler never blocks or raises into the application: records go into a bounded queue and a
background thread publishes them; when the queue is full or the broker is away, records are
dropped and counted (see :attr:`BusLogHandler.stats`).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, Final

from .endpoints import DEFAULT_FRONTEND, ENV_FRONTEND, resolve_endpoint
from .errors import BrokerUnavailableError, ExesdbError
from .messages.logs import LogEntry
from .messages.vocabulary import LogLevel
from .protocol import MAX_SUBTOPIC_BYTES, default_node
from .publisher import Publisher

__all__ = ["BusLogHandler", "LogBridgeStats"]

_SEND_TIMEOUT: Final = 1.0
"""Seconds one publish may wait for a stuck broker before the record is dropped."""
_LINGER: Final = 1.0
"""Seconds the publisher may spend flushing when the handler closes."""
_BACKOFF_MIN: Final = 0.5
_BACKOFF_MAX: Final = 10.0
_CLOSE_FLUSH: Final = 1.0
_MAX_DEPTH: Final = 8
"""Nesting depth of ``extra`` values kept as structure; deeper values are stringified."""

# The attributes every LogRecord has; anything else on a record came from ``extra``.
_RECORD_ATTRS: Final = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}
_SCALARS: Final = (str, float, bool, type(None))
_INT_MIN: Final = -(1 << 63)
_INT_MAX: Final = (1 << 64) - 1  # MessagePack's integer range

# Set in the worker thread for its whole life and around emit(): a record logged from either
# place (a library logging while we publish, a __str__ that logs) must not come back to us.
_busy = threading.local()


@dataclass(frozen=True, slots=True)
class LogBridgeStats:
    """A snapshot of a :class:`BusLogHandler`'s counters."""

    sent: int
    """Records published to the broker."""
    dropped: int
    """Records lost: the queue was full, the broker was away, or publishing failed."""
    pending: int
    """Records accepted but neither sent nor dropped yet (queued or being published)."""


def _level(levelno: int) -> LogLevel:
    if levelno <= logging.DEBUG:
        return "debug"
    if levelno <= logging.INFO:
        return "info"
    if levelno <= logging.WARNING:
        return "warning"
    if levelno <= logging.ERROR:
        return "error"
    return "critical"


@functools.lru_cache(maxsize=1024)
def _subtopic(name: str) -> str:
    """``name`` made into a valid sub-topic: non-empty, no control characters, UTF-8, bounded."""
    cleaned = "".join("?" if ord(c) < 0x20 or ord(c) == 0x7F else c for c in name)
    encoded = cleaned.encode("utf-8", "replace")[:MAX_SUBTOPIC_BYTES]
    return encoded.decode("utf-8", "ignore") or "root"


def _text(value: object) -> str:
    try:
        return str(value)
    except Exception:
        return f"<unprintable {type(value).__name__}>"


def _plain(value: object, depth: int = 0) -> Any:
    """``value`` as MessagePack-safe builtins; whatever is not plain data is stringified."""
    # Exact types only: subclasses (enums, custom str/int) may not pack, or pack surprisingly.
    if type(value) in _SCALARS:
        return value
    if type(value) is int:
        return value if _INT_MIN <= value <= _INT_MAX else str(value)
    if depth < _MAX_DEPTH:
        if type(value) is dict:
            return {_text(k): _plain(v, depth + 1) for k, v in value.items()}
        if type(value) is list or type(value) is tuple:
            return [_plain(v, depth + 1) for v in value]
    return _text(value)


def _ignored(name: str) -> bool:
    """The SDK's and the broker's own loggers: publishing them could feed back into itself."""
    return name == "exesdb" or name.startswith("exesdb.")


class BusLogHandler(logging.Handler):
    """A logging handler that publishes every record as a ``LogEntry`` on ``ex_esdb_logging``.

    The sub-topic is the logger name (``root`` for the root logger). ``message`` is the
    formatted record (set a formatter to change it) with any exception text; ``metadata`` holds
    the thread, the process and the record's ``extra`` fields (values that are not plain data
    are stringified). Records from the ``exesdb`` loggers are ignored, so the SDK's own logs
    never feed back.

    Logging never blocks or raises: :meth:`emit` only puts the record into a queue of
    ``queue_size`` records, and a background thread publishes them. When the queue is full,
    the broker does not answer within ``connect_timeout`` seconds, or the broker does not take
    a record within a second, records are dropped and counted in :attr:`stats`; the thread
    reconnects with a backoff of 0.5 s doubling to 10 s. Records logged during an outage are
    lost by design: the queue is the only buffer.

    ``frontend`` defaults to ``$EXESDB_FRONTEND``, else ``tcp://127.0.0.1:7100``; ``node`` is
    the envelopes' ``src`` and the entries' ``node`` (``$EXESDB_NODE``, else the host name).
    ``secret`` (else ``$EXESDB_SECRET``) signs the envelopes when this SDK's publisher supports
    signing.

    Example::

        import logging
        from exesdb_sdk.logbridge import BusLogHandler

        logging.getLogger().addHandler(BusLogHandler())
        logging.getLogger("app.orders").warning("disk %s", "full", extra={"disk": "/dev/sda"})
        # -> LogEntry on ex_esdb_logging/app.orders
    """

    def __init__(
        self,
        frontend: str | None = None,
        *,
        level: int | str = logging.NOTSET,
        node: str | None = None,
        queue_size: int = 10_000,
        connect_timeout: float = 2.0,
        secret: str | None = None,
    ) -> None:
        super().__init__(level)
        if queue_size < 1:
            raise ValueError(f"queue_size must be at least 1, not {queue_size}")
        self.frontend = resolve_endpoint(frontend, ENV_FRONTEND, DEFAULT_FRONTEND, "frontend")
        self.node = node or default_node()
        self.connect_timeout = connect_timeout
        self.secret = secret
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue(maxsize=queue_size)
        # Each counter has one writer: the emit side (serialised by the handler's lock) or the
        # worker thread, so plain integers suffice.
        self._accepted = 0
        self._dropped_emit = 0
        self._sent = 0
        self._dropped_worker = 0
        self._waiting = False  # the worker is backing off: nothing drains until it retries
        self._idle = threading.Condition()
        self._stop = threading.Event()
        self._close_lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="exesdb-logbridge", daemon=True)
        self._thread.start()

    @property
    def stats(self) -> LogBridgeStats:
        """Counters since this handler was created."""
        sent, dropped_worker = self._sent, self._dropped_worker
        pending = max(0, self._accepted - sent - dropped_worker)
        return LogBridgeStats(sent, self._dropped_emit + dropped_worker, pending)

    def emit(self, record: logging.LogRecord) -> None:
        """Queue ``record`` for publishing; drop it (counted) when the queue is full."""
        if getattr(_busy, "active", False) or _ignored(record.name):
            return
        _busy.active = True
        try:
            if self._stop.is_set():
                self._dropped_emit += 1
                return
            try:
                item = self._prepare(record)
            except Exception:
                self._dropped_emit += 1
                self.handleError(record)
                return
            # Counted before the put so the worker can never see more done than accepted.
            self._accepted += 1
            try:
                self._queue.put_nowait(item)
            except queue.Full:
                self._accepted -= 1
                self._dropped_emit += 1
        finally:
            _busy.active = False

    def _prepare(self, record: logging.LogRecord) -> dict[str, Any]:
        """The ``LogEntry`` fields of ``record``, computed now: later its values may change."""
        metadata: dict[str, Any] = {"thread": record.threadName, "process": record.process}
        for key, value in record.__dict__.items():
            if key not in _RECORD_ATTRS and not key.startswith("_"):
                metadata[key] = _plain(value)
        return {
            "level": _level(record.levelno),
            "message": self.format(record),
            "logger": _subtopic(record.name),
            "node": self.node,
            "module": record.module,
            "function": record.funcName,
            "line": record.lineno,
            "metadata": metadata,
        }

    def flush(self, timeout: float = 2.0) -> None:
        """Wait up to ``timeout`` seconds until every queued record is sent or dropped.

        Returns early while the broker is unreachable and the thread is waiting to retry,
        since nothing can drain until then.
        """
        deadline = time.monotonic() + timeout
        with self._idle:
            while self.stats.pending and not self._waiting and self._thread.is_alive():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                # Short slices: a notification racing the check costs at most one slice.
                self._idle.wait(min(remaining, 0.05))

    def close(self) -> None:
        """Flush briefly, stop the thread and close the connection; idempotent. Records still
        queued after that are dropped (counted)."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        try:
            self.flush(_CLOSE_FLUSH)
            self._stop.set()
            with contextlib.suppress(queue.Full):  # a full queue wakes the thread anyway
                self._queue.put_nowait(None)
            self._thread.join(self.connect_timeout + _SEND_TIMEOUT + _LINGER + 1.0)
        finally:
            super().close()

    # -- the worker thread -------------------------------------------------------------------

    def _run(self) -> None:
        _busy.active = True
        publisher: Publisher | None = None
        backoff = _BACKOFF_MIN
        try:
            while not self._stop.is_set():
                item = self._queue.get()
                if item is None:
                    continue
                if publisher is None:
                    publisher = self._connect()
                    if publisher is None:
                        self._dropped_worker += 1
                        self._wait(backoff)
                        backoff = min(backoff * 2, _BACKOFF_MAX)
                        continue
                    backoff = _BACKOFF_MIN
                publisher = self._publish(publisher, item)
                if self._queue.empty():
                    self._notify()
        finally:
            if publisher is not None:
                publisher.close(_LINGER)
            self._discard_queued()
            self._notify()

    def _connect(self) -> Publisher | None:
        options: dict[str, Any] = {}
        if self.secret is not None and "secret" in inspect.signature(Publisher).parameters:
            options["secret"] = self.secret
        try:
            return Publisher(
                self.frontend,
                node=self.node,
                connect_timeout=self.connect_timeout,
                send_timeout=_SEND_TIMEOUT,
                linger=_LINGER,
                **options,
            )
        except BrokerUnavailableError:
            return None
        except Exception:  # the thread must survive anything: retry as for an absent broker
            return None

    def _publish(self, publisher: Publisher, item: dict[str, Any]) -> Publisher | None:
        """Publish one record; returns the publisher to keep using (``None``: reconnect)."""
        try:
            publisher.publish_message(LogEntry(**item))
        except ExesdbError:  # timed out, too large, invalid: this record only
            self._dropped_worker += 1
        except Exception:  # the socket itself failed: start over with a new connection
            self._dropped_worker += 1
            with contextlib.suppress(Exception):
                publisher.close(0)
            return None
        else:
            self._sent += 1
        return publisher

    def _wait(self, seconds: float) -> None:
        """Back off before reconnecting; ``close()`` cuts the wait short."""
        self._waiting = True
        self._notify()
        try:
            self._stop.wait(seconds)
        finally:
            self._waiting = False

    def _notify(self) -> None:
        with self._idle:
            self._idle.notify_all()

    def _discard_queued(self) -> None:
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is not None:
                self._dropped_worker += 1

    def __repr__(self) -> str:
        level = logging.getLevelName(self.level)
        return f"<BusLogHandler {self.frontend} ({level})>"
