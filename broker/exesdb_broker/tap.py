"""The stats tap: a subscriber to everything, inside the broker, beside the data plane.

It connects to the backend over inproc and subscribes to every topic, which also makes
every publisher send everything to the broker even when no subscriber is connected. It
counts messages and bytes per instance and classifies malformed input. It runs only on
idle CPU time and drains its queue every 10 ms: when the machine is busy it falls behind
instead of slowing the forwarding, and the XPUB socket drops for it (never blocks) if it
falls too far.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Final

import zmq
from exesdb_sdk._frames import recv_frames
from exesdb_sdk.errors import ProtocolError
from exesdb_sdk.instances import Instance
from exesdb_sdk.protocol import Decoder, is_reserved

__all__ = ["Tap", "TapCounters"]

log = logging.getLogger("exesdb.broker.tap")

TAP_HWM: Final = 10_000
"""Messages the tap may fall behind (plus the backend's own ``hwm``) before the broker drops
for it, counted as ``tap_behind_frames``. This bounds the broker's memory under overload;
a 200,000 bound let a 1 KB flood grow the broker to 345 MB."""
_TICK_MS: Final = 10
_NOBLOCK: Final = int(zmq.NOBLOCK)
_INSTANCE_CACHE_LIMIT: Final = 4096


@dataclass(slots=True)
class TapCounters:
    """What the tap has seen. Written by the tap thread only; read under the GIL."""

    messages: Counter[Instance] = field(default_factory=Counter)
    envelopes: Counter[Instance] = field(default_factory=Counter)
    sizes: Counter[Instance] = field(default_factory=Counter)
    """Bytes of all frames, per instance."""
    malformed: Counter[str] = field(default_factory=Counter)
    internal: int = 0
    """Protocol messages (subscription probe acks), not counted as traffic."""
    last_internal: bytes = b""
    """The topic of the latest protocol message; the broker's stop waits on it."""
    internal_seen: threading.Event = field(default_factory=threading.Event)
    frames: int = 0
    """Every frame seen; compared with the proxy's own count to tell how far behind the tap is."""


class Tap:
    """Runs the tap in its own thread until :meth:`stop`."""

    def __init__(self, context: zmq.Context[Any], backend_inproc: str, stop_endpoint: str) -> None:
        self.counters = TapCounters()
        self._context = context
        self._backend = backend_inproc
        self._stop_endpoint = stop_endpoint
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="exesdb-tap", daemon=True)

    def start(self, timeout: float) -> None:
        """Start the thread; return once its subscription is in place."""
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError("the stats tap did not start")

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def _run(self) -> None:
        # Run only on CPU time nobody else wants (Linux SCHED_IDLE; nice 19 where that is
        # refused), so a busy machine slows the counting, not the forwarding. Measured: with
        # nice 19 alone the p99 latency of the forwarding path rose 1.8x; with SCHED_IDLE, 1.01x.
        native_id = threading.get_native_id()
        try:
            os.sched_setscheduler(native_id, os.SCHED_IDLE, os.sched_param(0))
        except (AttributeError, OSError):
            with contextlib.suppress(AttributeError, OSError):
                os.setpriority(os.PRIO_PROCESS, native_id, 19)
        sub = self._context.socket(zmq.SUB)
        stop = self._context.socket(zmq.PAIR)
        try:
            sub.setsockopt(zmq.RCVHWM, TAP_HWM)
            sub.setsockopt(zmq.LINGER, 0)
            sub.setsockopt(zmq.SUBSCRIBE, b"")
            sub.connect(self._backend)
            stop.setsockopt(zmq.LINGER, 0)
            stop.bind(self._stop_endpoint)
            self._ready.set()
            self._loop(sub, stop)
        except zmq.ContextTerminated:
            pass
        except Exception:  # the tap must never take the broker down; its counts stop, forwarding goes on
            log.exception("stats tap stopped unexpectedly")
        finally:
            sub.close(linger=0)
            stop.close(linger=0)

    def _loop(self, sub: zmq.Socket[Any], stop: zmq.Socket[Any]) -> None:
        # Wake on a timer, not per message: a reader woken for every message makes the proxy
        # signal its pipe for every message (p50 latency +15-20% measured on 2 cores); a
        # 10 ms drain costs nothing measurable. The queue (TAP_HWM) holds far more than that.
        counters = self.counters
        decoder = Decoder()
        instances: dict[bytes, Instance] = {}
        while not stop.poll(_TICK_MS):
            for _ in range(TAP_HWM):
                try:
                    frames = recv_frames(sub, _NOBLOCK)
                except zmq.Again:
                    break
                counters.frames += len(frames)
                topic = frames[0]
                if is_reserved(topic):
                    counters.internal += 1
                    counters.last_internal = topic
                    counters.internal_seen.set()
                    continue
                try:
                    text, envelopes = decoder.check(frames)
                except ProtocolError as exc:
                    counters.malformed[exc.reason] += 1
                    continue
                instance = instances.get(topic)
                if instance is None:
                    if len(instances) >= _INSTANCE_CACHE_LIMIT:
                        instances.clear()
                    instance = instances[topic] = Instance.resolve(text.partition("/")[0])
                counters.messages[instance] += 1
                counters.envelopes[instance] += envelopes
                counters.sizes[instance] += sum(map(len, frames))
