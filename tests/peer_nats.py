"""The NATS JetStream far side for connector tests: a real ``nats-server -js`` on a free
loopback port, with a temporary configuration (one user with a password) and data directory.

The stream ``EXESDB`` takes ``exesdb.>`` with a ``max_msg_size`` of :data:`MAX_MSG_SIZE`, so the
:meth:`NatsPeer.poison` message, larger than that, is refused for good. The stream lives in the
data directory, so what it holds survives :meth:`NatsPeer.stop` and :meth:`NatsPeer.start`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import secrets
import shutil
import subprocess
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import nats
import nats.js.errors
from nats.js.api import StreamConfig

from tests.peers import Received, free_port, stop_process

BINARY = shutil.which("nats-server")
SKIP_REASON = "nats-server is not installed (apt-get install nats-server)"
STREAM = "EXESDB"
PREFIX = "exesdb"
USER = "exesdb"
READONLY_USER = "reader"
"""Same password; may use the JetStream API and inboxes but publish nothing else."""
MAX_MSG_SIZE = 16384
START_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0
_T = TypeVar("_T")


def run(coro: Coroutine[Any, Any, _T], timeout: float = 20.0) -> _T:
    """Run ``coro`` in its own event loop on a worker thread (so that callers inside an event
    loop can use it too), within ``timeout``."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, asyncio.wait_for(coro, timeout)).result(timeout + 5)


class NatsPeer:
    """One nats-server process, restartable on the same port."""

    kind = "nats"

    def __init__(self, tmp_path: Path) -> None:
        self.dir = tmp_path / "nats-peer"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self.password = secrets.token_hex(12)
        self.password_file = self.dir / "password"
        self.password_file.write_text(self.password + "\n")
        self.log = self.dir / "server.log"
        self.config = self.dir / "server.conf"
        store = json.dumps(str(self.dir / "jetstream"))
        self.config.write_text(
            f"listen: 127.0.0.1:{self.port}\n"
            f"jetstream {{ store_dir: {store}, max_memory_store: 64MB, max_file_store: 1GB }}\n"
            "authorization { users: [\n"
            f"  {{ user: {USER}, password: {json.dumps(self.password)} }}\n"
            f"  {{ user: {READONLY_USER}, password: {json.dumps(self.password)},"
            ' permissions: { publish: { allow: ["$JS.API.>"] }, subscribe: { allow: ["_INBOX.>"] } } }\n'
            "] }\n"
        )
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the server; return once it is ready (JetStream up, stream there)."""
        if BINARY is None:
            raise RuntimeError(SKIP_REASON)
        if self._process is not None and self._process.poll() is None:
            return
        offset = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as log:
            self._process = subprocess.Popen(
                [BINARY, "-c", str(self.config)], stdin=subprocess.DEVNULL, stdout=log, stderr=log
            )
        deadline = time.monotonic() + START_TIMEOUT
        while b"Server is ready" not in self._log_since(offset):
            if self._process.poll() is not None:
                raise RuntimeError(f"nats-server exited {self._process.returncode}: {self._log_since(offset)[-400:]!r}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"nats-server not ready in {START_TIMEOUT:g} s")
            time.sleep(0.02)
        run(self._ensure_stream())

    def _log_since(self, offset: int) -> bytes:
        with self.log.open("rb") as log:
            log.seek(offset)
            return log.read()

    async def _client(self) -> nats.NATS:
        return await nats.connect(self.url, user=USER, password=self.password, allow_reconnect=False, connect_timeout=5)

    async def _ensure_stream(self) -> None:
        client = await self._client()
        try:
            js = client.jetstream()
            try:
                await js.stream_info(STREAM)
            except nats.js.errors.NotFoundError:
                await js.add_stream(StreamConfig(name=STREAM, subjects=[f"{PREFIX}.>"], max_msg_size=MAX_MSG_SIZE))
        finally:
            await client.close()

    def stop(self) -> None:
        """Stop the server (SIGTERM, wait, then kill): its port closes, its data stays."""
        process, self._process = self._process, None
        stop_process(process, STOP_TIMEOUT)

    def close(self) -> None:
        """Stop the server for good."""
        self.stop()

    def sink_options(self) -> dict[str, Any]:
        """The nats sink options that deliver to this server's stream."""
        return {
            "url": self.url,
            "stream": STREAM,
            "user": USER,
            "password_file": str(self.password_file),
            "connect_timeout": 1.0,
            "ack_timeout": 2.0,
        }

    def poison(self) -> tuple[str, str, dict[str, Any]]:
        """A message over the stream's ``max_msg_size``: JetStream refuses it for good."""
        return "ex_esdb_alerts", "poison:nats", {"blob": "x" * (2 * MAX_MSG_SIZE)}

    def received(self) -> list[Received]:
        """Every message the stream holds, in stream order, read with the real client."""
        return run(self._received())

    async def _received(self) -> list[Received]:
        client = await self._client()
        try:
            js = client.jetstream()
            info = await js.stream_info(STREAM)
            held: list[Received] = []
            if not info.state.messages:
                return held
            subscription = await js.subscribe(f"{PREFIX}.>", stream=STREAM, ordered_consumer=True)
            for _ in range(info.state.messages):
                msg = await subscription.next_msg(timeout=5)
                body = json.loads(msg.data)
                held.append(Received(id=(msg.headers or {})["Nats-Msg-Id"], topic=body["topic"], data=body["data"]))
            await subscription.unsubscribe()
            return held
        finally:
            await client.close()

    def headers(self) -> list[tuple[str, dict[str, str]]]:
        """The subject and headers of every message the stream holds, in stream order."""
        return run(self._headers())

    async def _headers(self) -> list[tuple[str, dict[str, str]]]:
        client = await self._client()
        try:
            js = client.jetstream()
            info = await js.stream_info(STREAM)
            out: list[tuple[str, dict[str, str]]] = []
            for seq in range(info.state.first_seq, info.state.last_seq + 1):
                msg = await js.get_msg(STREAM, seq)
                out.append((msg.subject, dict(msg.headers or {})))
            return out
        finally:
            await client.close()


def make_peer(tmp_path: Path) -> NatsPeer:
    """The peer interface's constructor (the server is not started yet)."""
    return NatsPeer(tmp_path)
