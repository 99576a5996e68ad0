"""Shared fixtures: a real ``exesdb-broker`` process on free 127.0.0.1 ports.

The broker binds ``tcp://127.0.0.1:*``; the fixture reads the real ports from its readiness
line on stderr (waiting with a deadline, never a fixed sleep) and stops it in teardown:
SIGTERM, wait, then kill. Its HTTP surface is off (``EXESDB_HTTP=none``, so that brokers never
fight over port 7180) unless a test asks for it: ``start_broker(http=True)`` serves it on a
free port, named by :attr:`BrokerProcess.http`.
"""

from __future__ import annotations

import json
import math
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import pytest
import zmq
from exesdb_sdk import ControlClient

from tests.nats_cluster import NatsCluster

READY = re.compile(
    r"exesdb-broker ready frontend=(?P<f1>\S+) backend=(?P<b1>\S+) control=(?P<c1>\S+)(?: http=(?P<h1>\S+))?"  # text
    r"(?: restricted_frontend=(?P<rf1>\S+) restricted_backend=(?P<rb1>\S+))?"
    r'|"event": "ready", "frontend": "(?P<f2>[^"]+)", "backend": "(?P<b2>[^"]+)", "control": "(?P<c2>[^"]+)"'  # json
    r'(?:, "http": (?:"(?P<h2>[^"]+)"|null))?'
    r'(?:, "restricted_frontend": "(?P<rf2>[^"]+)", "restricted_backend": "(?P<rb2>[^"]+)")?'
)
FREE = "tcp://127.0.0.1:*"
HTTP_FREE = "127.0.0.1:0"
START_TIMEOUT = 15.0


def broker_command() -> list[str]:
    """The installed ``exesdb-broker`` script next to this Python, else ``python -m exesdb_broker``."""
    script = Path(sys.executable).with_name("exesdb-broker")
    return [str(script)] if script.exists() else [sys.executable, "-m", "exesdb_broker"]


class Lines:
    """The lines a child writes to one pipe, read by a thread, waited for with a deadline."""

    def __init__(self, pipe: IO[str]) -> None:
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._read, args=(pipe,), daemon=True)
        self._thread.start()

    def _read(self, pipe: IO[str]) -> None:
        with pipe:
            for raw in pipe:
                line = raw.rstrip("\n")
                self.lines.append(line)
                self._queue.put(line)
        self._queue.put(None)

    def wait(self, pattern: str | re.Pattern[str], timeout: float = 15) -> str | None:
        """The next line matching ``pattern`` within ``timeout``; ``None`` at EOF or timeout."""
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                line = self._queue.get(timeout=remaining)
            except queue.Empty:
                return None
            if line is None:
                return None
            if re.search(pattern, line):
                return line
        return None

    def join(self, timeout: float = 10) -> str:
        self._thread.join(timeout)
        return "\n".join(self.lines)


class BrokerProcess:
    """A running ``exesdb-broker`` subprocess and what it printed on stderr."""

    def __init__(
        self, args: list[str], env: dict[str, str] | None = None, preexec: Callable[[], None] | None = None
    ) -> None:
        base = dict(os.environ if env is None else env)
        base.setdefault("EXESDB_HTTP", "none")  # a test's own --http (or EXESDB_HTTP) wins
        self.proc = subprocess.Popen(
            [*broker_command(), *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=base,
            preexec_fn=preexec,
        )
        assert self.proc.stderr is not None
        self._err = Lines(self.proc.stderr)
        self.lines = self._err.lines
        self.frontend = self.backend = self.control = ""
        self.http: str | None = None
        """The HTTP surface's URL from the readiness line (``None``: off)."""
        self.restricted_frontend: str | None = None
        self.restricted_backend: str | None = None
        """The restricted class's endpoints from the readiness line (``None``: no class)."""

    def wait_line(self, pattern: re.Pattern[str], timeout: float) -> re.Match[str] | None:
        """The first new stderr line matching ``pattern`` within ``timeout``; ``None`` at EOF or timeout."""
        line = self._err.wait(pattern, timeout)
        return None if line is None else pattern.search(line)

    def wait_ready(self, timeout: float = START_TIMEOUT) -> BrokerProcess:
        match = self.wait_line(READY, timeout)
        if match is None:
            self.stop()
            raise RuntimeError("broker did not become ready:\n" + "\n".join(self.lines))
        fields = {name: value for name, value in match.groupdict().items() if value}
        self.frontend = fields.get("f1") or fields["f2"]
        self.backend = fields.get("b1") or fields["b2"]
        self.control = fields.get("c1") or fields["c2"]
        self.restricted_frontend = fields.get("rf1") or fields.get("rf2")
        self.restricted_backend = fields.get("rb1") or fields.get("rb2")
        http = fields.get("h1") or fields.get("h2")
        self.http = None if http in (None, "none") else http
        return self

    def wait_exit(self, timeout: float) -> int:
        code = self.proc.wait(timeout)
        self._err.join(timeout)
        return code

    @property
    def stderr(self) -> str:
        return "\n".join(self.lines)

    def terminate(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL (if still running) and reap, at once."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> int:
        """SIGTERM, wait up to 5 s, then kill. Returns the exit status."""
        self.terminate()
        try:
            return self.wait_exit(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.wait_exit(5)


StartBroker = Callable[..., BrokerProcess]


def cli_env(broker: BrokerProcess, clean_env: dict[str, str]) -> dict[str, str]:
    """``clean_env`` with the ``EXESDB_*`` endpoints of ``broker``: the CLI's defaults."""
    return {
        **clean_env,
        "EXESDB_FRONTEND": broker.frontend,
        "EXESDB_BACKEND": broker.backend,
        "EXESDB_CONTROL": broker.control,
    }


def instance_messages(broker: BrokerProcess, instance: str) -> int:
    """The broker's message count of ``instance`` (its full name)."""
    with ControlClient(broker.control) as control:
        messages: int = control.stats()["instances"][instance]["messages"]
        return messages


def default_sigint() -> None:
    """A child's ``preexec_fn``: SIGINT as a user's terminal gives it (a shell without job
    control starts its children with SIGINT ignored)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture(autouse=True, scope="session")
def _session_state_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Brokers journal under a temporary ``$XDG_STATE_HOME``, never the user's (this covers
    brokers of module-scoped fixtures, which start before any function-scoped fixture)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_STATE_HOME", str(tmp_path_factory.mktemp("state")))
        yield


@pytest.fixture(autouse=True)
def _state_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Brokers a test starts journal under a fresh ``$XDG_STATE_HOME`` of their own."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path_factory.mktemp("state")))


@pytest.fixture
def start_broker() -> Iterator[StartBroker]:
    """Start brokers with extra flags: ``start_broker("--metrics-interval", "0.2")``; with
    ``http=True`` the broker serves its HTTP surface on a free port (``broker.http``)."""
    started: list[BrokerProcess] = []

    def start(*extra: str, env: dict[str, str] | None = None, ready: bool = True, http: bool = False) -> BrokerProcess:
        args = [
            "--frontend",
            FREE,
            "--backend",
            FREE,
            "--control",
            FREE,
            *(["--http", HTTP_FREE] if http else []),
            *extra,
        ]
        broker = BrokerProcess(args, env=env)
        started.append(broker)
        return broker.wait_ready() if ready else broker

    yield start
    try:
        for broker in started:
            broker.stop()
    finally:  # a test's timeout may strike in the middle: no broker is left running unreaped
        for broker in started:
            broker.kill()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    """A started three-node ``nats-server`` cluster with JetStream (:class:`NatsCluster`)."""
    nats = NatsCluster(tmp_path)
    try:
        nats.start()
        yield nats
    finally:
        nats.close()


@pytest.fixture
def broker(start_broker: StartBroker) -> BrokerProcess:
    """A fresh broker for one test."""
    return start_broker()


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """An environment without EXESDB_* variables, for subprocesses and settings tests."""
    for name in list(os.environ):
        if name.startswith("EXESDB_"):
            monkeypatch.delenv(name)
    return dict(os.environ)


def raw_publisher(frontend: str) -> zmq.Socket[bytes]:
    """A bare pyzmq XPUB connected to the broker, ready (the broker's subscription arrived)."""
    raw = zmq.Context.instance().socket(zmq.XPUB)
    raw.setsockopt(zmq.LINGER, 1000)
    raw.setsockopt(zmq.XPUB_NODROP, 1)  # wait rather than drop when the queue is full
    raw.setsockopt(zmq.SNDTIMEO, 5000)
    raw.connect(frontend)
    assert raw.poll(5000), "no subscription from the broker"
    raw.recv()
    return raw


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0, interval: float = 0.01) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` passes; return its last value."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def is_number(value: Any) -> bool:
    """A real, finite int or float (not a bool): what every benchmark figure must be."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def run_quick_bench(
    script: str, out: Path, *extra: str, timeout: float = 120, env: dict[str, str] | None = None
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """Run ``benchmarks/<script> --quick [extra] --json-out <out>``; check it exited 0 and
    return it with the JSON report it wrote."""
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), "--quick", *extra, "--json-out", str(out)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    report: dict[str, Any] = json.loads(out.read_text())
    return done, report
