"""An asyncio event loop in a thread of its own, for components with a synchronous API."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

__all__ = ["LoopThread"]

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
