"""The far side of the ``redis`` sink in tests: a real ``redis-server`` on a free loopback port.

Its configuration and data (an append-only file, so what it holds survives a restart) live in
the test's temporary directory; it asks for a password (given to the sink by ``password_file``)
and knows a second user, ``limited``, who may write only keys under ``other:``. The poison: a
topic whose stream key the peer holds as a plain string, so ``XADD`` to it fails ``WRONGTYPE``.
"""

from __future__ import annotations

import json
import secrets
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Final

import pytest
import redis

from .peers import Received, free_port, freeze, stop_process

BINARY: Final = "redis-server"
START_TIMEOUT: Final = 10.0
STREAM: Final = "exesdb:{instance}:{subtopic}"
POISON: Final = ("ex_esdb_alerts", "poison", {"poison": True})
POISON_KEY: Final = "exesdb:ex_esdb_alerts:poison"
LIMITED_USER: Final = "limited"


class RedisPeer:
    """A ``redis-server`` process the test starts, stops and restarts on one port."""

    kind = "redis"

    def __init__(self, tmp_path: Path) -> None:
        binary = shutil.which(BINARY)
        if binary is None:
            pytest.skip(f"{BINARY} is not installed")
        self.binary = binary
        self.dir = tmp_path / "redis-peer"
        self.data = self.dir / "data"
        self.data.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.password = secrets.token_hex(12)
        self.limited_password = secrets.token_hex(12)
        self.password_file = self.dir / "password"
        self.password_file.write_text(self.password + "\n")
        self.config = self.dir / "redis.conf"
        self.config.write_text(
            "\n".join(
                [
                    f"port {self.port}",
                    "bind 127.0.0.1",
                    "daemonize no",
                    f"dir {self.data}",
                    'save ""',
                    "appendonly yes",
                    "appendfsync always",
                    f"requirepass {self.password}",
                    f"user {LIMITED_USER} on >{self.limited_password} ~other:* +@all",
                    "",
                ]
            )
        )
        self.log = self.dir / "redis.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._client: redis.Redis | None = None

    @property
    def url(self) -> str:
        """The server's URL, without credentials."""
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        """A (sync) client of the server, as the test's own reader."""
        if self._client is None:
            self._client = redis.Redis(
                host="127.0.0.1", port=self.port, password=self.password, socket_timeout=5, socket_connect_timeout=5
            )
        return self._client

    def start(self) -> None:
        """Start the server; return once it answers ``PING`` (raise past the deadline)."""
        if self.proc is not None and self.proc.poll() is None:
            return
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [self.binary, str(self.config)], stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        probe = redis.Redis(
            host="127.0.0.1", port=self.port, password=self.password, socket_timeout=1, socket_connect_timeout=1
        )
        deadline = time.monotonic() + START_TIMEOUT
        try:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"redis-server exited {self.proc.returncode}: {self.log.read_text()[-2000:]}")
                try:
                    if probe.ping():
                        break
                except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"redis-server not ready within {START_TIMEOUT} s: {self.log.read_text()[-2000:]}"
                    )
                time.sleep(0.02)
            probe.set(POISON_KEY, "not a stream")
        finally:
            probe.close()

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL past 5 s): its port closes, its data stays."""
        if self._client is not None:
            self._client.close()
            self._client = None
        proc, self.proc = self.proc, None
        stop_process(proc, 5)

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): connections stay open, nothing is answered."""
        assert self.proc is not None
        freeze(self.proc.pid)

    def resume(self) -> None:
        """Let a paused server run on (SIGCONT)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def close(self) -> None:
        """Stop the server for good."""
        if self.proc is not None and self.proc.poll() is None:
            self.resume()  # a stopped process would not act on SIGTERM
        self.stop()

    def sink_options(self) -> dict[str, Any]:
        """The ``redis`` sink's options for this server: a stream per topic, the password from a file."""
        return {
            "url": self.url,
            "password_file": str(self.password_file),
            "stream": STREAM,
            "timeout": 2.0,
            "connect_timeout": 2.0,
        }

    def entries(self, key: str) -> list[tuple[str, dict[str, str]]]:
        """The entries of the stream ``key``: (entry id, fields), oldest first."""
        raw: Any = self.client().xrange(key)
        return [
            (entry_id.decode(), {field.decode(): value.decode() for field, value in fields.items()})
            for entry_id, fields in raw
        ]

    def received(self) -> list[Received]:
        """Every entry of every ``exesdb:*`` stream, ordered by entry id: arrival order per topic
        (entries of several streams in one millisecond have no order between them)."""
        found: list[tuple[tuple[int, int, str], Received]] = []
        keys: Any = self.client().scan_iter(match="exesdb:*", count=1000, _type="stream")
        for key in [key.decode() for key in keys]:
            for entry_id, fields in self.entries(key):
                millis, _, seq = entry_id.partition("-")
                received = Received(id=fields["id"], topic=fields["topic"], data=json.loads(fields["data"]))
                found.append(((int(millis), int(seq), key), received))
        found.sort(key=lambda pair: pair[0])
        return [received for _, received in found]

    def poison(self) -> tuple[str, str, dict[str, Any]]:
        """An instance, sub-topic and data whose stream key is a plain string: ``WRONGTYPE``."""
        instance, subtopic, data = POISON
        return instance, subtopic, dict(data)


def make_peer(tmp_path: Path) -> RedisPeer:
    """A redis peer in ``tmp_path`` (not started); skips the test when redis-server is missing."""
    return RedisPeer(tmp_path)
