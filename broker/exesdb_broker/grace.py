"""The start grace: after a restart, wait for the subscribers before forwarding.

While a broker is down, its publishers' ZeroMQ sockets queue what they publish and flush it
the moment they reconnect. If they reconnect before the subscribers that were connected
before the crash, the new broker forwards the whole queue to nobody (measured on main: all
1,559 messages of a 2 s outage lost). So the broker remembers how many subscriber connections
its backend had (``subscribers-<hash of the backend endpoint>.json`` in the data directory,
rewritten when the number changes, at most once a second) and, when it starts again on the same backend endpoint, binds
everything but forwards nothing until as many subscribers are back, for at most
``start_grace`` seconds. A first start, or a start after a broker that had no subscribers,
waits for nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path

__all__ = ["expected_subscribers", "remember_subscribers", "state_file"]

log = logging.getLogger("exesdb.broker")


def state_file(data_dir: str, backend: str) -> Path:
    """Where the broker on ``backend`` remembers its subscriber count."""
    digest = hashlib.sha256(backend.encode()).hexdigest()[:16]
    return Path(data_dir).expanduser() / f"subscribers-{digest}.json"


def expected_subscribers(data_dir: str, backend: str) -> int:
    """Subscriber connections the previous broker on ``backend`` had (0 when unknown)."""
    try:
        state = json.loads(state_file(data_dir, backend).read_text())
    except (OSError, ValueError):
        return 0
    if not isinstance(state, dict) or state.get("backend") != backend:
        return 0
    count = state.get("subscribers")
    return count if type(count) is int and count > 0 else 0


def remember_subscribers(data_dir: str, backend: str, count: int) -> None:
    """Write the subscriber count for the next start (atomically; a failure only costs the grace)."""
    path = state_file(data_dir, backend)
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary.write_text(json.dumps({"backend": backend, "subscribers": count, "at": time.time()}))
        os.replace(temporary, path)
    except OSError as exc:
        log.debug("subscriber count not remembered in %s: %s", path, exc)
