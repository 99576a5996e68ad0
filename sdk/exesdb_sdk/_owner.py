"""Socket ownership shared by every client class: one socket and, unless given one, its context."""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Any, Self

import zmq
import zmq.asyncio

from .curve import ClientKeys, HandshakeWatch
from .errors import ClosedError

__all__ = ["AsyncSocketOwner", "SocketOwner"]


class SocketOwner:
    """A synchronous client's socket; closing it terminates the context it created."""

    _what = "socket"

    def __init__(self, socket_type: int, context: zmq.Context[Any] | None, keys: ClientKeys | None = None) -> None:
        self._own_context = context is None
        self._context: zmq.Context[Any] = zmq.Context() if context is None else context
        self._socket: zmq.Socket[Any] | None = self._context.socket(socket_type)
        # CURVE keys (if any) and the handshake monitor go on before connect (see .curve).
        self._watch = HandshakeWatch(self._socket, keys)

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has been called."""
        return self._socket is None

    def _live(self) -> zmq.Socket[Any]:
        if self._socket is None:
            raise ClosedError(f"{self._what} is closed")
        return self._socket

    def _close(self, linger: float | None) -> None:
        socket, self._socket = self._socket, None
        if socket is None:
            return
        self._watch.close()
        socket.close(linger=None if linger is None else int(linger * 1000))
        if self._own_context:
            self._context.term()  # returns once flushed or the linger has run out

    def close(self) -> None:
        """Disconnect; messages not yet read are discarded. Idempotent."""
        self._close(0)

    def __del__(self) -> None:
        # Without this a client dropped unclosed hangs the program: pyzmq's Context.__del__
        # terminates the context, which waits for the handshake monitor (on a shadow context
        # it cannot see). Garbage is closed at once: what it had not sent is discarded.
        if getattr(self, "_socket", None) is not None:
            self._close(0)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class AsyncSocketOwner:
    """An asyncio client's socket; closing it terminates the context it created."""

    _what = "socket"

    def __init__(self, socket_type: int, context: zmq.asyncio.Context | None, keys: ClientKeys | None = None) -> None:
        self._own_context = context is None
        self._context = zmq.asyncio.Context() if context is None else context
        self._socket: zmq.asyncio.Socket | None = self._context.socket(socket_type)
        self._watch = HandshakeWatch(self._socket, keys)

    @property
    def closed(self) -> bool:
        """Whether :meth:`aclose` has been called."""
        return self._socket is None

    def _live(self) -> zmq.asyncio.Socket:
        if self._socket is None:
            raise ClosedError(f"{self._what} is closed")
        return self._socket

    async def aclose(self, linger: float | None = 0) -> None:
        """Close; with a linger, wait for unsent messages up to that many seconds. Idempotent."""
        socket, self._socket = self._socket, None
        if socket is None:
            return
        self._watch.close()
        socket.close(linger=None if linger is None else int(linger * 1000))
        if self._own_context:
            await asyncio.to_thread(self._context.term)

    def __del__(self) -> None:
        # As SocketOwner.__del__: close at once (there is no loop to await in here).
        socket = getattr(self, "_socket", None)
        if socket is None:
            return
        self._socket = None
        self._watch.close()
        socket.close(linger=0)
        if self._own_context:
            self._context.term()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
