"""Socket ownership shared by every client class: one socket and, unless given one, its context;
and the control client a publisher or subscriber makes when it first needs one."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from types import TracebackType
from typing import Any, ClassVar, Final, Generic, Self, TypeVar

import zmq
import zmq.asyncio

from .curve import ClientKeys, HandshakeWatch, KeyPath
from .endpoints import Endpoints, Rotation
from .errors import ClosedError

__all__ = ["HEARTBEAT_MS", "HEARTBEAT_TIMEOUT_MS", "AsyncSocketOwner", "ControlLink", "Owner", "SocketOwner"]

HEARTBEAT_MS: Final = 1000
"""With several brokers, ZMTP heartbeats every second: a broker that stops answering (its
machine gone, no TCP reset) is dropped after ``HEARTBEAT_TIMEOUT_MS``, and the client fails over."""
HEARTBEAT_TIMEOUT_MS: Final = 3000

S = TypeVar("S", bound="zmq.Socket[Any]")
K = TypeVar("K")


class Owner(Generic[S]):
    """One socket of type ``S`` (sync or asyncio) on a context it made, unless given one."""

    _what = "socket"
    _context_type: ClassVar[type[zmq.Context[Any]]] = zmq.Context
    _rotation: Rotation
    """The brokers this client may use and the one it uses (set before ``Owner.__init__``)."""

    def __init__(self, socket_type: int, context: zmq.Context[S] | None, keys: ClientKeys | None = None) -> None:
        self._own_context = context is None
        made: zmq.Context[Any] = self._context_type() if context is None else context
        self._context: zmq.Context[S] = made
        self._socket: S | None = self._context.socket(socket_type)
        # CURVE keys (if any) and the handshake monitor go on before connect (see .curve); with
        # several brokers the monitor goes on watching for a lost connection.
        several = self._tracks_disconnects()
        if several:
            self._socket.setsockopt(zmq.HEARTBEAT_IVL, HEARTBEAT_MS)
            self._socket.setsockopt(zmq.HEARTBEAT_TIMEOUT, HEARTBEAT_TIMEOUT_MS)
        self._watch = HandshakeWatch(self._socket, keys, disconnects=several)
        self._watch.follow(self._rotation.current)
        self._key = f"key {keys.client.public.decode()}" if keys is not None else "this client (no CURVE key)"
        """Who this client is, for an error that names it (a privilege class's refusal)."""

    def _tracks_disconnects(self) -> bool:
        """Whether a lost connection is news (a publisher or subscriber with several brokers)."""
        return False

    def _switch(self, endpoint: str) -> None:
        """Carry out :class:`~._flows.Reconnect`: one broker at a time, so leave the current one."""
        socket = self._live()
        with contextlib.suppress(zmq.ZMQError):  # not connected yet (a first connect)
            socket.disconnect(self._rotation.current)
        self._rotation.index = self._rotation.endpoints.index(endpoint)
        self._watch.follow(endpoint)
        socket.connect(endpoint)

    @property
    def closed(self) -> bool:
        """Whether the client has been closed."""
        return self._socket is None

    def _live(self) -> S:
        if self._socket is None:
            raise ClosedError(f"{self._what} is closed")
        return self._socket

    def _release(self, linger: float | None) -> bool:
        """Close the socket (waiting up to ``linger`` seconds to flush, ``None``: forever);
        return whether the context is ours to terminate now."""
        socket, self._socket = self._socket, None
        if socket is None:
            return False
        self._watch.close()
        socket.close(linger=None if linger is None else int(linger * 1000))
        return self._own_context

    def __del__(self) -> None:
        # Without this a client dropped unclosed hangs the program: pyzmq's Context.__del__
        # terminates the context, which waits for the handshake monitor (on a shadow context
        # it cannot see). Garbage is closed at once: what it had not sent is discarded.
        if getattr(self, "_socket", None) is not None and self._release(0):
            self._context.term()


class SocketOwner(Owner[zmq.Socket[Any]]):
    """A synchronous client's socket; closing it terminates the context it created."""

    def _close(self, linger: float | None) -> None:
        if self._release(linger):
            self._context.term()  # returns once flushed or the linger has run out

    def close(self) -> None:
        """Disconnect; messages not yet read are discarded. Idempotent."""
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


class AsyncSocketOwner(Owner[zmq.asyncio.Socket]):
    """An asyncio client's socket; closing it terminates the context it created."""

    _context_type = zmq.asyncio.Context

    async def aclose(self, linger: float | None = 0) -> None:
        """Close; with a linger, wait for unsent messages up to that many seconds. Idempotent."""
        if self._release(linger):
            await asyncio.to_thread(self._context.term)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


class ControlLink(Generic[K]):
    """The control client (``K``, sync or asyncio) of a publisher or subscriber, made on first
    use with the owner's context and keys."""

    __slots__ = ("_client", "_context", "_endpoint", "_factory", "_keys", "_timeout")

    def __init__(
        self,
        factory: Callable[..., K],
        endpoint: Endpoints | None,
        timeout: float | None,
        context: zmq.Context[Any],
        keys: tuple[KeyPath | None, KeyPath | None],
    ) -> None:
        self._factory = factory
        self._endpoint = endpoint
        self._timeout = timeout
        self._context = context
        self._keys = keys
        self._client: K | None = None

    def get(self) -> K:
        """The control client, made now if it does not exist yet."""
        if self._client is None:
            options: dict[str, Any] = {} if self._timeout is None else {"timeout": self._timeout}
            self._client = self._factory(
                self._endpoint, context=self._context, client_key=self._keys[0], server_key=self._keys[1], **options
            )
        return self._client

    def take(self) -> K | None:
        """The control client if one was made (to close it), forgotten from now on."""
        client, self._client = self._client, None
        return client
