"""Asyncio twins of :class:`Publisher`, :class:`Subscriber` and :class:`ControlClient`.

They share the protocol code and behaviour of the synchronous classes; only the I/O is
awaited. Create, use and close each one inside one event loop.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any, Self

import zmq
import zmq.asyncio

from ._flows import (
    Receive,
    Request,
    Send,
    Settle,
    Step,
    Subscribe,
    Unsubscribe,
    WaitReady,
    arun,
    catch_up,
    control_request,
    durable_publish,
    probe,
    subscribe_durable,
)
from ._owner import AsyncSocketOwner
from .control import DEFAULT_CONTROL_TIMEOUT, ReplyMatcher
from .curve import KeyPath, resolve_client_keys
from .durable import ReplayFrom
from .endpoints import (
    DEFAULT_BACKEND,
    DEFAULT_CONTROL,
    ENV_BACKEND,
    ENV_CONTROL,
    resolve_endpoint,
)
from .errors import BrokerUnavailableError, ClosedError, ReceiveTimeoutError
from .instances import Instance
from .messages.base import Payload
from .protocol import DEFAULT_MAX_MESSAGE_SIZE, Message
from .publisher import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_HWM,
    DEFAULT_LINGER,
    DEFAULT_SEND_TIMEOUT,
    PublisherCore,
    prepare_socket,
)
from .subscriber import (
    DEFAULT_RCVHWM,
    DEFAULT_SUBSCRIBE_TIMEOUT,
    ErrorCallback,
    GapCallback,
    SubscriberCore,
    SubscriberStats,
    literal_prefix,
    set_subscription,
    subscription_prefixes,
)

__all__ = ["AsyncControlClient", "AsyncPublisher", "AsyncSubscriber"]

_PROBE_SLICE = 0.02
_HOLD_READ = 100_000


class AsyncPublisher(AsyncSocketOwner, PublisherCore):
    """The asyncio :class:`~exesdb_sdk.Publisher`: the same arguments, awaited I/O.

    ``await connect()`` (or ``async with``) waits until the broker's subscription has
    arrived, so the first publish is never lost; it raises
    :class:`~exesdb_sdk.errors.BrokerUnavailableError` after ``connect_timeout`` seconds.

    Example::

        async with AsyncPublisher() as pub:
            await pub.publish("alerts", "critical", "SystemAlert", {"title": "disk full"})
    """

    _what = "publisher"

    def __init__(
        self,
        frontend: str | None = None,
        *,
        node: str | None = None,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        send_timeout: float | None = DEFAULT_SEND_TIMEOUT,
        linger: float = DEFAULT_LINGER,
        hwm: int = DEFAULT_HWM,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        secret: str | bytes | None = None,
        control: str | None = None,
        control_timeout: float = DEFAULT_CONTROL_TIMEOUT,
        context: zmq.asyncio.Context | None = None,
        client_key: KeyPath | None = None,
        server_key: KeyPath | None = None,
    ) -> None:
        PublisherCore.__init__(self, frontend, node, max_message_size, send_timeout, secret)
        AsyncSocketOwner.__init__(self, zmq.XPUB, context, resolve_client_keys(client_key, server_key))
        self._control_endpoint = control
        self._control_timeout = control_timeout
        self._control: AsyncControlClient | None = None
        self._key_paths = (client_key, server_key)
        self.connect_timeout = connect_timeout
        self._linger = linger
        self._connected = False
        prepare_socket(self._live(), hwm=hwm, send_timeout=send_timeout, linger=linger)

    async def connect(self) -> Self:
        """Connect and wait for the broker's subscription. Returns ``self``."""
        socket = self._live()
        if not self._connected:
            socket.connect(self.frontend)
            try:
                ready = await self._watch.await_readable(socket, int(self.connect_timeout * 1000))
            except BaseException:
                await self.aclose(0)
                raise
            if not ready:
                await self.aclose()
                raise BrokerUnavailableError(self.frontend, self.connect_timeout)
            self._watch.settle()
            self._connected = True
            await self._drain()
        return self

    async def __aenter__(self) -> Self:
        return await self.connect()

    async def publish(
        self,
        instance: Instance | str,
        subtopic: str,
        type: str,
        data: Mapping[str, Any],
        *,
        corr: str | None = None,
        cause: str | None = None,
        trace: str | None = None,
        durable: bool = False,
    ) -> int:
        """Publish one envelope; return its sequence number (see :meth:`Publisher.publish`;
        with ``durable``, the broker's sequence number once committed)."""
        topic, body, count = self._encode_one(instance, subtopic, type, data, corr, cause, trace)
        if durable:
            return await self._send_durable(topic, body, count)
        await self._send(topic, body, count)
        return self._encoder.seq(topic)

    async def publish_message(
        self,
        payload: Payload,
        subtopic: str | None = None,
        *,
        corr: str | None = None,
        cause: str | None = None,
        trace: str | None = None,
        durable: bool = False,
    ) -> int:
        """Publish a typed message; return its sequence number (see
        :meth:`Publisher.publish_message`)."""
        topic, body, count = self._encode_payload(payload, subtopic, corr, cause, trace)
        if durable:
            return await self._send_durable(topic, body, count)
        await self._send(topic, body, count)
        return self._encoder.seq(topic)

    async def publish_batch(
        self,
        instance: Instance | str,
        subtopic: str,
        type: str,
        batch: Iterable[Mapping[str, Any]],
        *,
        corr: str | None = None,
        cause: str | None = None,
        trace: str | None = None,
        durable: bool = False,
    ) -> int:
        """Publish a batch; return the envelope count (see :meth:`Publisher.publish_batch`)."""
        topic, body, count = self._encode_batch(instance, subtopic, type, batch, corr, cause, trace)
        if durable:  # one journal record for the whole batch
            await self._send_durable(topic, body, count)
            return count
        await self._send(topic, body, count)
        return count

    async def _send(self, topic: bytes, body: bytes, envelopes: int) -> None:
        socket = self._live()
        if not self._connected:
            raise ClosedError("publisher is not connected: await connect() first")
        try:
            await socket.send_multipart((topic, body))
        except zmq.Again:
            raise self._timed_out(topic) from None
        if self._count(topic, body, envelopes):
            await self._drain()

    async def _send_durable(self, topic: bytes, body: bytes, envelopes: int) -> int:
        if self._control is None:
            self._live()
            self._control = AsyncControlClient(
                self._control_endpoint,
                timeout=self._control_timeout,
                context=self._context,
                client_key=self._key_paths[0],
                server_key=self._key_paths[1],
            )
        control = self._control

        async def perform(step: Step) -> Any:
            assert isinstance(step, Request)
            return await control.request(step.op, step.args, timeout=step.timeout)

        return await arun(durable_publish(self, topic, body, envelopes), perform)

    async def _drain(self) -> None:
        socket = self._live()
        for _ in range(10_000):
            try:
                await socket.recv(zmq.NOBLOCK)
            except zmq.Again:
                return

    async def aclose(self, linger: float | None = None) -> None:
        """Close, flushing unsent messages for at most ``linger`` seconds (default: the
        constructor's). Idempotent."""
        if self._control is not None:
            await self._control.aclose()
            self._control = None
        await super().aclose(self._linger if linger is None else linger)


class AsyncSubscriber(AsyncSocketOwner):
    """The asyncio :class:`~exesdb_sdk.Subscriber`: the same arguments, awaited I/O.

    Example::

        async with AsyncSubscriber() as sub:
            await sub.subscribe("health")
            async for message in sub.iter(timeout=10):
                print(message.type, message.data)
    """

    _what = "subscriber"

    def __init__(
        self,
        backend: str | None = None,
        *,
        hwm: int = DEFAULT_RCVHWM,
        subscribe_timeout: float = DEFAULT_SUBSCRIBE_TIMEOUT,
        on_gap: GapCallback | None = None,
        on_error: ErrorCallback | None = None,
        secret: str | bytes | None = None,
        typed: bool = True,
        control: str | None = None,
        context: zmq.asyncio.Context | None = None,
        client_key: KeyPath | None = None,
        server_key: KeyPath | None = None,
    ) -> None:
        self.backend = resolve_endpoint(backend, ENV_BACKEND, DEFAULT_BACKEND, "backend")
        self.subscribe_timeout = subscribe_timeout
        self._core = SubscriberCore(on_gap, on_error, secret=secret, typed=typed)
        self._control_endpoint = control
        self._control: AsyncControlClient | None = None
        self._key_paths = (client_key, server_key)
        super().__init__(zmq.SUB, context, resolve_client_keys(client_key, server_key))
        socket = self._live()
        socket.setsockopt(zmq.RCVHWM, hwm)
        socket.setsockopt(zmq.LINGER, 0)
        socket.connect(self.backend)

    @property
    def stats(self) -> SubscriberStats:
        """Counters since this subscriber was created."""
        return self._core.stats()

    async def subscribe(
        self,
        instance: Instance | str | None = None,
        prefix: str = "",
        *,
        wait: bool = True,
        timeout: float | None = None,
        replay_from: ReplayFrom | None = None,
        with_last: bool = False,
    ) -> None:
        """Subscribe (see :meth:`Subscriber.subscribe`, also for ``replay_from`` and
        ``with_last``); with ``wait``, until the broker confirms."""
        socket = self._live()
        durable = replay_from is not None or with_last
        if durable and instance is None:
            raise ValueError("replay_from and with_last need an instance")
        for topic in subscription_prefixes(instance, prefix):
            socket.setsockopt(zmq.SUBSCRIBE, topic)
        self._core.topics.add(instance, prefix)
        if durable:
            flow = subscribe_durable(self._core, instance, literal_prefix(prefix), replay_from, with_last, timeout)
            await arun(flow, self._perform)
        elif wait:
            await self.wait_ready(timeout)

    def _control_client(self) -> AsyncControlClient:
        if self._control is None:
            self._control = AsyncControlClient(
                self._control_endpoint,
                context=self._context,
                client_key=self._key_paths[0],
                server_key=self._key_paths[1],
            )
        return self._control

    async def _perform(self, step: Step) -> Any:
        """Carry out one step of a flow (see :mod:`._flows`)."""
        if isinstance(step, WaitReady):
            return await self.wait_ready(step.timeout)
        if isinstance(step, Request):
            return await self._control_client().request(step.op, step.args, timeout=step.timeout)
        if isinstance(step, Receive):
            # short polls: another task reading this subscriber may take what we wait for,
            # and it is noted in the shared core all the same
            socket = self._live()
            self._watch.check()
            if not await socket.poll(max(1, int(min(step.timeout, _PROBE_SLICE) * 1000))):
                return None
            with contextlib.suppress(zmq.Again):
                return await socket.recv_multipart(zmq.NOBLOCK)
            return None
        if isinstance(step, Subscribe | Unsubscribe):
            return set_subscription(self._socket, step)
        if isinstance(step, Settle):
            return self._watch.settle()
        core, socket = self._core, self._live()
        for _ in range(_HOLD_READ):
            try:
                core.feed(await socket.recv_multipart(zmq.NOBLOCK))
            except zmq.Again:
                break
        return None

    async def unsubscribe(self, instance: Instance | str | None = None, prefix: str = "") -> None:
        """Undo a :meth:`subscribe` with the same arguments."""
        socket = self._live()
        for topic in subscription_prefixes(instance, prefix):
            socket.setsockopt(zmq.UNSUBSCRIBE, topic)
        self._core.topics.remove(instance, prefix)

    async def wait_ready(self, timeout: float | None = None) -> None:
        """Return once the broker has applied every subscription made so far."""
        self._live()
        timeout = self.subscribe_timeout if timeout is None else timeout
        await arun(probe(self._core, timeout, self.backend), self._perform)

    async def recv(self, timeout: float | None = None) -> Message:
        """The next message; waits up to ``timeout`` seconds (``None``: forever)."""
        pending = self._core.pending
        if not pending and self._core.catchups:
            await arun(catch_up(self._core), self._perform)
        if pending:
            return pending.popleft()
        take = self._core.take
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            socket = self._live()
            try:
                messages = take(await socket.recv_multipart(zmq.NOBLOCK))
            except zmq.Again:
                # Until a wait has settled the handshake watch, idle waits read its events too.
                armed = self._watch.armed
                if deadline is None:
                    await (self._watch.await_readable(socket, 1000) if armed else socket.poll(None))
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise ReceiveTimeoutError(timeout or 0.0) from None
                wait_ms = int(remaining * 1000) + 1
                if not await (self._watch.await_readable(socket, wait_ms) if armed else socket.poll(wait_ms)):
                    raise ReceiveTimeoutError(timeout or 0.0) from None
                continue
            if messages:
                if len(messages) > 1:
                    pending.extend(messages[1:])
                return messages[0]

    async def iter(self, timeout: float | None = None) -> AsyncIterator[Message]:
        """Yield messages until none arrives for ``timeout`` seconds (``None``: forever)."""
        while True:
            try:
                yield await self.recv(timeout)
            except ReceiveTimeoutError:
                return

    def __aiter__(self) -> AsyncIterator[Message]:
        return self.iter()

    async def aclose(self, linger: float | None = 0) -> None:
        """Close; messages not yet read are discarded. Idempotent."""
        if self._control is not None:
            await self._control.aclose()
            self._control = None
        await super().aclose(linger)


class AsyncControlClient(AsyncSocketOwner):
    """The asyncio :class:`~exesdb_sdk.ControlClient`: the same arguments, awaited I/O."""

    _what = "control client"

    def __init__(
        self,
        endpoint: str | None = None,
        *,
        timeout: float = DEFAULT_CONTROL_TIMEOUT,
        context: zmq.asyncio.Context | None = None,
        client_key: KeyPath | None = None,
        server_key: KeyPath | None = None,
    ) -> None:
        self.endpoint = resolve_endpoint(endpoint, ENV_CONTROL, DEFAULT_CONTROL, "control")
        self.timeout = timeout
        self._matcher = ReplyMatcher()
        super().__init__(zmq.DEALER, context, resolve_client_keys(client_key, server_key))
        socket = self._live()
        socket.setsockopt(zmq.LINGER, 0)
        socket.connect(self.endpoint)

    async def request(
        self, op: str, args: Mapping[str, Any] | None = None, *, timeout: float | None = None
    ) -> dict[str, Any]:
        """Send a control request and return the reply (see :meth:`ControlClient.request`)."""
        timeout = self.timeout if timeout is None else timeout
        return await arun(control_request(self._matcher, op, args, timeout, self.endpoint), self._perform)

    async def _perform(self, step: Step) -> Any:
        socket = self._live()
        if isinstance(step, Send):
            return await socket.send_multipart(step.frames, zmq.NOBLOCK)
        if isinstance(step, Receive):
            ready = await self._watch.await_readable(socket, max(1, int(step.timeout * 1000)))
            return await socket.recv_multipart() if ready else None
        return self._watch.settle()

    async def ping(self) -> dict[str, Any]:
        """Check the broker answers."""
        return await self.request("ping")

    async def stats(self) -> dict[str, Any]:
        """The broker's counters."""
        return await self.request("stats")

    async def instances(self) -> list[dict[str, Any]]:
        """The instances the broker carries."""
        instances: list[dict[str, Any]] = (await self.request("instances"))["instances"]
        return instances
