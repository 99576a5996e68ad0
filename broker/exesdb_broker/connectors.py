"""The broker's connectors (``[[connectors]]`` in its TOML file): one supervised child,
``connectors``, running every connector in one event loop over the broker's inproc endpoints
and its own ZeroMQ context (see :mod:`exesdb_connect`). A connector whose sink refuses it is
``failed`` and the broker runs on; a failure of the whole loop is restarted by the supervisor,
and every connector resumes from its cursor.

Control ops (answered in the service thread): ``connectors`` (the ``stats.connectors`` map),
``connector_parked`` (``name``, ``limit``: a connector's parked messages) and
``connector_replay`` (``name``: flag them to be sent again; the connector picks them up within
a second). All three need the admins role when security is on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Sequence
from typing import Any, Final

import zmq
from exesdb_connect.config import ConnectorConfig
from exesdb_connect.connector import ConnectorRunner
from exesdb_connect.cursor import StateStore
from exesdb_sdk.errors import ProtocolError

__all__ = ["CONNECTOR_OPS", "ConnectorsChild"]

log = logging.getLogger("exesdb.broker.connectors")

CONNECTOR_OPS: Final = ("connectors", "connector_parked", "connector_replay")
_MAX_LIST: Final = 1000


class ConnectorsChild:
    """The supervised ``connectors`` child."""

    name = "connectors"
    restartable = True

    def __init__(
        self,
        configs: Sequence[ConnectorConfig],
        context: zmq.Context[Any],
        base: str,
        data_dir: str,
        node: str,
    ) -> None:
        self.configs = list(configs)
        self._context, self._base, self._data_dir, self._node = context, base, data_dir, node
        self.ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._stopping = False
        self.runner: ConnectorRunner | None = None
        self._store: StateStore | None = None

    def run(self) -> None:
        if self._stopping:
            return
        self.runner = ConnectorRunner(
            self.configs,
            state_dir=self._data_dir,
            frontend=self._base + "-frontend",
            backend=self._base + "-backend",
            control=self._base + "-control",
            node=self._node,
            context=self._context,
        )

        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            if self._stopping:
                return
            ready = asyncio.Event()
            task = asyncio.create_task(self._run(ready))
            await ready.wait()
            self.ready.set()
            await task

        asyncio.run(main())

    async def _run(self, ready: asyncio.Event) -> None:
        assert self.runner is not None and self._stop is not None
        runner_ready = asyncio.Event()
        task = asyncio.create_task(self.runner.run(self._stop, runner_ready))
        waiter = asyncio.create_task(runner_ready.wait())
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        ready.set()
        waiter.cancel()
        await task

    def stop(self) -> None:
        """Ask the loop to stop (from any thread)."""
        self._stopping = True
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(stop.set)

    def snapshot(self) -> dict[str, Any]:
        """``stats.connectors``: every connector, ``starting`` until the loop runs it."""
        running = self.runner.snapshot() if self.runner is not None else {}
        return {c.name: running.get(c.name, {"sink": c.sink, "state": "starting"}) for c in self.configs}

    # -- control ops (service thread) ------------------------------------------------------------

    def _state(self) -> StateStore:
        if self._store is None:
            self._store = StateStore(self._data_dir)
        return self._store

    def _name(self, request: dict[str, Any]) -> str:
        name = request.get("name")
        if not isinstance(name, str) or name not in {c.name for c in self.configs}:
            known = ", ".join(c.name for c in self.configs) or "none"
            raise ProtocolError("bad_request", f"name: no connector {name!r} (configured: {known})")
        return name

    def op_connectors(self, request: dict[str, Any]) -> dict[str, Any]:
        return {"connectors": self.snapshot()}

    def op_parked(self, request: dict[str, Any]) -> dict[str, Any]:
        name = self._name(request)
        limit = request.get("limit", 100)
        if type(limit) is not int or not 1 <= limit <= _MAX_LIST:
            raise ProtocolError("bad_request", f"limit must be an integer from 1 to {_MAX_LIST}")
        store = self._state()
        return {
            "name": name,
            "total": store.parked_count(name),
            "parked": [p.summary() for p in store.parked(name, limit)],
        }

    def op_replay(self, request: dict[str, Any]) -> dict[str, Any]:
        name = self._name(request)
        return {"name": name, "requeued": self._state().request_replay(name)}

    def close(self) -> None:
        store, self._store = self._store, None
        if store is not None:
            store.close()
