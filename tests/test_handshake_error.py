"""Something that is not a ZeroMQ broker (a TCP service that accepts and hangs up) is named
as such, not as a broker that requires CURVE: in the SDK and in the CLI."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from exesdb_sdk import Subscriber
from exesdb_sdk.errors import HandshakeError

EXESDB = str(Path(sys.executable).with_name("exesdb"))


@pytest.fixture
def hang_up_service() -> Iterator[str]:
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        for _ in range(100_000):  # bounded; ends on stop
            if stop.is_set():
                return
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            connection.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"tcp://127.0.0.1:{listener.getsockname()[1]}"
    stop.set()
    thread.join(5)
    listener.close()


@pytest.mark.timeout(30)
def test_a_peer_that_hangs_up_is_not_called_a_curve_broker(hang_up_service: str) -> None:
    with Subscriber(hang_up_service) as sub, pytest.raises(HandshakeError, match="is it an exesdb broker"):
        sub.subscribe("health", timeout=3)

    done = subprocess.run(
        [EXESDB, "tail", "health", "--backend", hang_up_service, "--timeout", "3"],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert done.returncode != 0
    assert "is it an exesdb broker" in done.stderr and "CURVE" not in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
