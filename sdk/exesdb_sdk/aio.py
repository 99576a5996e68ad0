"""Asyncio twins of :class:`Publisher`, :class:`Subscriber` and :class:`ControlClient`.

Each is the synchronous class's base (its arguments, methods and flows, see :mod:`._flows`)
driven by an asyncio driver: only the waits are awaited. Create, use and close each one
inside one event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Coroutine, Iterable, Sequence
from typing import Any, Final, Self, TypeVar

import zmq
import zmq.asyncio

from ._flows import (
    CommitMany,
    Flow,
    InClass,
    Receive,
    ReceiveMany,
    Reconnect,
    Request,
    Send,
    SendMany,
    Step,
    WaitReady,
    arun,
    durable_publish,
    durable_publish_many,
    publisher_failover,
    receive,
)
from ._frames import recv_frames
from ._owner import AsyncSocketOwner
from .classes import PrivilegeClass
from .control import DEFAULT_COMMIT_WINDOW, ControlBase, receive_held, send_many
from .errors import AuthenticationError, ClosedError, ControlError, ReceiveTimeoutError
from .protocol import Message
from .publisher import DurableItem, PublisherBase, send_frames_nowait
from .subscriber import _MERGED_ROUNDS, _MERGED_WAIT, DEFAULT_BATCH, SubscriberBase

__all__ = ["AsyncControlClient", "AsyncPublisher", "AsyncSubscriber"]

T = TypeVar("T")
Awaited = Coroutine[Any, Any, T]

_PROBE_SLICE: Final = 0.02
_monotonic: Final = time.monotonic


class AsyncControlClient(
    ControlBase[zmq.asyncio.Socket, Awaited[dict[str, Any]], Awaited[list[dict[str, Any]]]], AsyncSocketOwner
):
    """The asyncio :class:`~exesdb_sdk.ControlClient`: the same arguments, awaited requests."""

    def _drive(self, flow: Flow[Any]) -> Any:
        return arun(flow, self._perform)

    async def commit_many(
        self,
        messages: Sequence[tuple[bytes, bytes]],
        window: int = DEFAULT_COMMIT_WINDOW,
        *,
        timeout: float | None = None,
    ) -> list[int | ControlError]:
        """See :meth:`~exesdb_sdk.control.ControlBase.commit_many`."""
        results: list[int | ControlError] = await super().commit_many(messages, window, timeout=timeout)
        return results

    async def _perform(self, step: Step) -> Any:
        socket = self._live()
        if isinstance(step, Send):
            return await socket.send_multipart(step.frames, zmq.NOBLOCK)
        if isinstance(step, Receive):
            ready = await self._watch.await_readable(socket, max(1, int(step.timeout * 1000)))
            return await socket.recv_multipart() if ready else None
        if isinstance(step, SendMany):
            return send_many(socket, step.messages)  # never waits: the asyncio socket's sync path
        if isinstance(step, ReceiveMany):
            received = receive_held(socket, step.limit)
            if not received and await self._watch.await_readable(socket, max(1, int(step.timeout * 1000))):
                received = receive_held(socket, step.limit)
            return received
        if isinstance(step, Reconnect):
            return self._switch(step.endpoint)
        return self._watch.settle()


class AsyncPublisher(PublisherBase[zmq.asyncio.Socket, AsyncControlClient, Awaited[int]], AsyncSocketOwner):
    """The asyncio :class:`~exesdb_sdk.Publisher`: the same arguments, awaited publishes.

    ``await connect()`` (or ``async with``) waits until the broker's subscription has
    arrived, so the first publish is never lost; it raises
    :class:`~exesdb_sdk.errors.BrokerUnavailableError` after ``connect_timeout`` seconds.

    Example::

        async with AsyncPublisher() as pub:
            await pub.publish("alerts", "critical", "SystemAlert", {"title": "disk full"})
    """

    _control_type = AsyncControlClient

    def _start(self) -> None:
        self._connected = False
        self._timer: asyncio.TimerHandle | None = None
        self._sending = 0

    async def connect(self) -> Self:
        """Connect (to the first of its brokers that answers) and wait for the broker's
        subscription. Returns ``self``."""
        self._live()
        if not self._connected:
            try:
                await arun(self._connect_flow(), self._perform)
            except BaseException:
                await self.aclose(0)
                raise
            self._connected = True
            self._drain()
        return self

    async def __aenter__(self) -> Self:
        return await self.connect()

    async def _deliver(self, topic: bytes, body: bytes, envelopes: int, durable: bool, batch: bool) -> int:
        if durable:
            if self._held:
                await self._send(*self._take_held())
            seq = await arun(durable_publish(self, topic, body, envelopes), self._perform)
            return envelopes if batch else seq
        seq = self._encoder.seq(topic)
        if batch or not self._coalesce:
            if self._held:
                await self._send(*self._take_held())
            await self._send(topic, body, envelopes)
        else:
            for message in self._coalesce_step(topic, body):
                await self._send(*message)
        return envelopes if batch else seq

    async def _send(self, topic: bytes, body: bytes, envelopes: int) -> None:
        socket = self._live()
        if not self._connected:
            raise ClosedError("publisher is not connected: await connect() first")
        if self._routes and (cls := self._routed(topic)) is not None:  # no call per send without a class
            inner = await self._in_class(cls, topic)
            try:
                await inner._live().send_multipart((topic, body))
            except zmq.Again:
                raise self._timed_out(topic) from None
            if self._count(topic, body, envelopes):
                inner._drain()
            return
        if self._several and _monotonic() >= self._check_at and self._broker_lost():
            await self._failover()
            socket = self._live()
        self._sending += 1  # the timer must not send past a message that is waiting for the queue
        try:
            try:
                await socket.send_multipart((topic, body))
            except zmq.Again:
                if not self._several:
                    raise self._timed_out(topic) from None
                await self._failover()  # the broker took nothing for send_timeout: the next one
                try:
                    await self._live().send_multipart((topic, body))
                except zmq.Again:
                    raise self._timed_out(topic) from None
        finally:
            self._sending -= 1
        if self._count(topic, body, envelopes):
            self._drain()

    async def _in_class(self, cls: PrivilegeClass, topic: bytes) -> AsyncPublisher:
        """The publisher connected to ``cls``'s frontend (see :meth:`Publisher._in_class`)."""
        inner = self._class_publishers.get(cls.name)
        if inner is None:
            self._still_refused(cls, topic)
            try:
                inner = await AsyncPublisher(cls.frontend, context=self._context, **self._options).connect()
            except AuthenticationError as exc:
                raise self._class_refusal(cls, exc, topic) from None
            self._class_publishers = {**self._class_publishers, cls.name: inner}
        return inner

    async def flush(self) -> None:
        """Send what coalescing holds now (waiting up to ``send_timeout``, as a publish does)."""
        if self._held:
            await self._send(*self._take_held())

    def _arm(self) -> None:
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._coalesce, self._on_timer)

    def _on_timer(self) -> None:
        """Send what is held once it is due, without waiting (a full queue, or a send waiting
        for it, leaves it held for another coalesce period, or the next publish, flush or close)."""
        self._timer = None
        due, socket = self._due(), self._socket
        if due is None or socket is None:
            return
        now = _monotonic()
        if now >= due and not self._sending:
            bodies, coalesced = self._held, self._coalesced
            topic, body, envelopes = self._take_held()
            routed = self._routed(topic)
            if routed is not None:  # its publisher exists: the held topic was sent through it before
                inner = self._class_publishers.get(routed.name)
                socket = inner._socket if inner is not None else None
            if socket is not None and send_frames_nowait(socket, topic, body):
                self._count(topic, body, envelopes)
                return
            self._held, self._held_bytes, self._coalesced = bodies, sum(map(len, bodies)), coalesced
            self._held_at = now
        self._timer = asyncio.get_running_loop().call_later(max(0.0, (self._due() or now) - now), self._on_timer)

    async def publish_durable_many(
        self, items: Iterable[DurableItem], *, window: int = DEFAULT_COMMIT_WINDOW
    ) -> list[int | ControlError]:
        """See :meth:`~exesdb_sdk.publisher.PublisherBase.publish_durable_many`."""
        encoded = self._encode_many(items, window)
        if self._held:  # what was published before goes first
            await self._send(*self._take_held())
        return await arun(durable_publish_many(self, encoded, window), self._perform)

    async def _failover(self) -> None:
        await arun(publisher_failover(self, self.connect_timeout), self._perform)
        self._drain()

    async def _perform(self, step: Step) -> Any:
        if isinstance(step, Request):
            return await self._control.get().request(step.op, step.args, timeout=step.timeout)
        if isinstance(step, CommitMany):
            return await self._control.get().commit_many(step.messages, step.window)
        if isinstance(step, Receive):
            socket = self._live()
            ready = await self._watch.await_readable(socket, max(1, int(step.timeout * 1000)))
            return self._note(await socket.recv_multipart()) if ready else None
        return self._step_io(step)

    async def aclose(self, linger: float | None = None) -> None:
        """Send what coalescing holds, then close, flushing unsent messages for at most
        ``linger`` seconds (default: the constructor's). Idempotent. If what was held cannot
        be sent within ``send_timeout`` it still closes, then raises
        :class:`~exesdb_sdk.errors.PublishTimeoutError`."""
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
        try:
            if not self.closed and self._connected:
                await self.flush()
        finally:
            control = self._control.take()
            if control is not None:
                await control.aclose()
            inners, self._class_publishers = self._class_publishers, {}
            for inner in inners.values():
                await inner.aclose(linger)
            await super().aclose(self._linger if linger is None else linger)


class AsyncSubscriber(
    SubscriberBase[zmq.asyncio.Socket, AsyncControlClient, Awaited[None], Awaited[Message]], AsyncSocketOwner
):
    """The asyncio :class:`~exesdb_sdk.Subscriber`: the same arguments, awaited methods.

    Example::

        async with AsyncSubscriber() as sub:
            await sub.subscribe("health")
            async for message in sub.iter(timeout=10):
                print(message.type, message.data)
    """

    _control_type = AsyncControlClient

    def _drive(self, flow: Flow[Any]) -> Any:
        return arun(flow, self._perform)

    async def _now(self, message: Message) -> Message:
        return message

    async def _perform(self, step: Step) -> Any:
        """Carry out one step of a flow (see :mod:`._flows`)."""
        if isinstance(step, WaitReady):
            return await self.wait_ready(step.timeout)
        if isinstance(step, Request):
            return await self._control.get().request(step.op, step.args, timeout=step.timeout)
        if isinstance(step, InClass):
            try:
                return await self._in_class(step)
            except AuthenticationError:  # the class refuses this key: no retrying handshake left behind
                await self._classes.pop(step.backend).aclose()
                raise
        if isinstance(step, Receive):
            # short polls: another task reading this subscriber may take what we wait for,
            # and it is noted in the shared core all the same
            socket, watch = self._live(), self._watch
            if step.watch or watch.armed:
                watch.check()
            if not await socket.poll(max(1, int(min(step.timeout, _PROBE_SLICE) * 1000))):
                return None
            with contextlib.suppress(zmq.Again):
                return recv_frames(socket, zmq.NOBLOCK)
            return None
        return self._step_now(step)

    async def recv(self, timeout: float | None = None) -> Message:
        """The next message; waits up to ``timeout`` seconds (``None``: forever) (see
        :meth:`~exesdb_sdk.Subscriber.recv`)."""
        pending = self._core.pending
        if self._classes and not pending:
            pending.extend(await self._merged(DEFAULT_BATCH, timeout))
        return await super().recv(timeout)

    async def recv_batch(self, max_messages: int = DEFAULT_BATCH, timeout: float | None = None) -> list[Message]:
        """Every message pending or queued now, up to ``max_messages``; when there is none, it
        waits up to ``timeout`` seconds for the first (see
        :meth:`~exesdb_sdk.Subscriber.recv_batch`)."""
        if self._classes and not self._core.pending:
            return await self._merged(max_messages, timeout)
        return await self._own_batch(max_messages, timeout)

    async def _merged(self, max_messages: int, timeout: float | None) -> list[Message]:
        """:meth:`recv_batch` over this subscriber and its class subscribers (see
        :meth:`~exesdb_sdk.Subscriber.recv_batch`)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for _ in range(_MERGED_ROUNDS):
            for reader in self._readers():
                try:
                    return await reader._own_batch(max_messages, 0)
                except ReceiveTimeoutError:
                    continue
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                break
            poller = zmq.asyncio.Poller()
            for socket in [self._live(), *(inner._live() for inner in self._classes.values())]:
                poller.register(socket, zmq.POLLIN)
            wait = _MERGED_WAIT if remaining is None else min(remaining, _MERGED_WAIT)
            await poller.poll(max(1, int(wait * 1000)))
        raise ReceiveTimeoutError(timeout or 0.0)

    async def _own_batch(self, max_messages: int, timeout: float | None) -> list[Message]:
        """:meth:`recv_batch` from this subscriber's own socket only."""
        batch = self._batch(max_messages)
        if batch:
            return batch
        first: Message = await self._drive(receive(self._core, timeout))
        return [first, *self._batch(max_messages - 1)] if max_messages > 1 else [first]

    async def iter(self, timeout: float | None = None) -> AsyncIterator[Message]:
        """Yield messages until none arrives for ``timeout`` seconds (``None``: forever).

        It reads in batches (:meth:`recv_batch`); what it has not yielded yet stays pending,
        so breaking out of the loop loses nothing."""
        pending = self._core.pending
        while True:
            if not pending:
                try:
                    pending.extend(await self.recv_batch(DEFAULT_BATCH, timeout))
                except ReceiveTimeoutError:
                    return
            yield pending.popleft()

    def __aiter__(self) -> AsyncIterator[Message]:
        return self.iter()

    async def aclose(self, linger: float | None = 0) -> None:
        """Close; messages not yet read are discarded. Idempotent."""
        control = self._control.take()
        if control is not None:
            await control.aclose()
        inners, self._classes = self._classes, {}
        for inner in inners.values():
            await inner.aclose(linger)
        await super().aclose(linger)
