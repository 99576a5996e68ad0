"""What every far side (a peer) holds, as the connector tests compare it, and the few socket and
process helpers the peers and the tests that start servers share."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final


@dataclass(frozen=True)
class Received:
    id: str
    topic: str
    data: dict[str, Any]


def _ephemeral_low() -> int:
    """The lowest port the kernel gives to outgoing connections and to binds of port 0."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


_CHOSEN_FROM: Final = 10_000


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now, for a server started later.

    It is taken from below the kernel's ephemeral range: a port from that range, free now, may
    be the local port of a test's next outgoing connection (or a broker's bind of port 0) by
    the time the server binds it, and that server then fails with "Address already in use"."""
    low = _ephemeral_low()
    chooser = random.Random()
    for _ in range(200) if low > _CHOSEN_FROM + 1000 else ():
        port = chooser.randrange(_CHOSEN_FROM, low)
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as probe:  # no such range here: the kernel's choice
        probe.bind(("127.0.0.1", 0))
        chosen: int = probe.getsockname()[1]
        return chosen


def free_endpoint() -> str:
    """``tcp://127.0.0.1:<port>`` at a :func:`free_port`."""
    return f"tcp://127.0.0.1:{free_port()}"


def accepts(port: int, timeout: float = 0.5) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:``port`` now."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout):
            return True
    except OSError:
        return False


def stop_process(process: subprocess.Popen[Any] | None, timeout: float) -> None:
    """SIGTERM ``process``, wait up to ``timeout`` seconds, then SIGKILL and wait again
    (nothing if it is ``None`` or has ended)."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout)


def freeze(pid: int, timeout: float = 5.0) -> None:
    """SIGSTOP ``pid`` and return once every thread of it is stopped: a thread running on the
    other core can go on for a moment after the signal is sent."""
    os.kill(pid, signal.SIGSTOP)
    deadline = time.monotonic() + timeout
    tasks = Path(f"/proc/{pid}/task")
    while time.monotonic() < deadline:
        try:
            states = [(task / "stat").read_text().rsplit(")", 1)[1].split()[0] for task in tasks.iterdir()]
        except OSError:
            return  # gone
        if all(state in ("T", "t") for state in states):
            return
        time.sleep(0.005)
    raise AssertionError(f"process {pid} did not stop within {timeout:g} s")
