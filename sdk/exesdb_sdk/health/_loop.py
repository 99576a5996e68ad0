"""An asyncio event loop in a thread of its own, for components with a synchronous API."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable, Coroutine
from types import TracebackType
from typing import Any, Final, Self, TypeVar

from ..aio import AsyncPublisher, AsyncSubscriber
from ..messages import Payload
from ..protocol import Message

__all__ = ["BusService", "LoopThread"]

_START_TIMEOUT: Final = 10.0
_STOP_TIMEOUT: Final = 10.0

T = TypeVar("T")


class LoopThread:
    """Runs ``main()`` in a new event loop on a daemon thread until :meth:`stop`.

    ``main`` receives an ``asyncio.Event`` it must set once it is ready, and must return
    when the stop event (the second argument) is set.
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop: asyncio.Event | None = None
        self._failure: BaseException | None = None

    def start(self, main: Callable[[asyncio.Event, asyncio.Event], Coroutine[Any, Any, None]], timeout: float) -> None:
        """Start the thread; return once ``main`` is ready, or raise what it raised."""
        started = threading.Event()

        async def runner() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            ready = asyncio.Event()
            task = asyncio.create_task(main(ready, self._stop))
            waiter = asyncio.create_task(ready.wait())
            await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
            started.set()
            waiter.cancel()
            await task

        def run() -> None:
            try:
                asyncio.run(runner())
            except BaseException as exc:  # handed to start() or stop(), never lost
                self._failure = exc
            finally:
                started.set()

        self._thread = threading.Thread(target=run, name=self._name, daemon=True)
        self._thread.start()
        if not started.wait(timeout):
            raise TimeoutError(f"{self._name} did not start within {timeout:g} s")
        if self._failure is not None:
            raise self._failure

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def call(self, function: Callable[[], None]) -> None:
        """Run ``function`` in the loop thread soon (from any thread)."""
        if self._loop is not None and self.alive:
            self._loop.call_soon_threadsafe(function)

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float) -> T:
        """Run ``coroutine`` in the loop and wait for its result (from another thread)."""
        if self._loop is None or not self.alive:
            coroutine.close()
            raise RuntimeError(f"{self._name} is not running")
        future: concurrent.futures.Future[T] = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        return future.result(timeout)

    def stop(self, timeout: float) -> None:
        """Ask ``main`` to return and wait for the thread (bounded)."""
        if self._loop is not None and self._stop is not None and self.alive:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(timeout)


class BusService:
    """A component with a synchronous API whose bus I/O runs in a :class:`LoopThread`.

    It owns one asyncio publisher and one subscriber. Subclasses subscribe in :meth:`_setup`,
    return their long-running coroutines from :meth:`_tasks`, and hand messages to
    :meth:`_publish` (in the loop) or :meth:`_publish_soon` (from any thread); pending messages
    are published before it disconnects.
    """

    _name = "exesdb-bus-service"

    def __init__(self, frontend: str | None, backend: str | None, node: str | None, secret: str | bytes | None) -> None:
        self._frontend = frontend
        self._backend = backend
        self._node = node
        self._secret = secret
        self._loop = LoopThread(self._name)
        self._outbox: asyncio.Queue[Payload] | None = None
        self._pub_id = ""

    def start(self) -> Self:
        """Connect and start; raises ``BrokerUnavailableError`` when no broker answers."""
        self._loop.start(self._main, _START_TIMEOUT)
        return self

    def stop(self) -> None:
        """Publish what is pending and disconnect. Idempotent."""
        self._loop.stop(_STOP_TIMEOUT)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def _setup(self, sub: AsyncSubscriber) -> None:
        """Subscribe to what the component listens to (before it counts as started)."""

    def _tasks(self, sub: AsyncSubscriber) -> list[Coroutine[Any, Any, None]]:
        """The component's own loops, cancelled at stop."""
        return []

    async def _teardown(self) -> None:
        """Last words before the loops are cancelled and the outbox flushed."""

    def _on_gap(self, message: Message, missing: int) -> None:
        """The subscriber found ``missing`` messages lost before ``message`` (in the loop thread)."""

    def _publish(self, message: Payload) -> None:
        """Queue a message for publishing (in the loop thread)."""
        if self._outbox is not None:
            self._outbox.put_nowait(message)

    def _publish_soon(self, message: Payload) -> None:
        """Queue a message for publishing from any thread."""
        self._loop.call(lambda: self._publish(message))

    async def _main(self, ready: asyncio.Event, stop: asyncio.Event) -> None:
        outbox: asyncio.Queue[Payload] = asyncio.Queue()
        self._outbox = outbox
        async with (
            AsyncPublisher(self._frontend, node=self._node, secret=self._secret) as pub,
            AsyncSubscriber(self._backend, secret=self._secret, on_gap=self._on_gap) as sub,
        ):
            self._pub_id = pub.pub_id
            await self._setup(sub)

            async def publish_loop() -> None:
                while True:
                    await pub.publish_message(await outbox.get())

            tasks = [asyncio.create_task(publish_loop())] + [asyncio.create_task(t) for t in self._tasks(sub)]
            ready.set()
            await stop.wait()
            await self._teardown()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            while not outbox.empty():
                await pub.publish_message(outbox.get_nowait())
