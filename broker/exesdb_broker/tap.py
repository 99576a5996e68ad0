"""The stats tap: a subscriber to everything, inside the broker, beside the data plane.

It connects to the backend over inproc and subscribes to every topic, which also makes
every publisher send everything to the broker even when no subscriber is connected. It
counts messages and bytes per instance and classifies malformed input.

It drains its queue on a 10 ms timer, never per message (a reader that empties its pipe
often makes the proxy signal it for every message: latency goes up).

**Its priority follows the load**, set by the service thread from the proxy's counters every
0.1 s (:meth:`Tap.adjust`):

- while the proxy forwards less than :data:`IDLE_RATE` messages a second and the tap keeps up,
  it runs on idle CPU time only (Linux ``SCHED_IDLE``): a tap at normal priority, draining a
  burst every 10 ms, raised the forwarding's p99 latency at 5,000 msg/s by 1.4-1.9x here; idle,
  by nothing measurable;
- once the rate is higher, or the tap falls behind, it runs at normal priority within a CPU
  budget: :data:`CPU_BUDGET` of a core up to :data:`EXACT_RATE` msg/s (about 4-5 us a
  message: enough to count every message), only :data:`FLOOD_BUDGET` above, so that a flood
  the broker cannot count costs the forwarding almost nothing. Idle time alone is not enough on
  a loaded machine (with a publisher spinning on one core and three SDK subscribers at 20,000
  msg/s an idle tap counted 53-90%), and an idle-class thread that holds the GIL when it is
  preempted stalls every other broker thread behind it (under a flood the journal read a
  third of what it could).

Over budget it sleeps until the next second. Past its queue the XPUB socket drops for the
tap (it never blocks); the service proves such drops from the proxy's exact frame counters
(see :class:`.stats.StatsBook`) and ``stats.counting`` says the counts are then approximate.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Final

import zmq
from exesdb_sdk._frames import recv_frames
from exesdb_sdk.classes import CLASSES_PREFIX
from exesdb_sdk.errors import ProtocolError
from exesdb_sdk.instances import Instance
from exesdb_sdk.protocol import Decoder, is_reserved

__all__ = [
    "BEHIND_FRAMES",
    "CPU_BUDGET",
    "EXACT_RATE",
    "FLOOD_BUDGET",
    "IDLE_RATE",
    "TAP_HWM",
    "TOPICS_KEPT",
    "Tap",
    "TapCounters",
]

log = logging.getLogger("exesdb.broker.tap")

TAP_HWM: Final = 10_000
"""Messages the tap may fall behind (plus the backend's own ``hwm``) before the broker drops
for it. This bounds the broker's memory under overload; a 200,000 bound let a 1 KB flood grow
the broker to 345 MB."""
CPU_BUDGET: Final = 0.35
"""Share of one core the tap may use per second while the forwarding rate is at most
:data:`EXACT_RATE`."""
FLOOD_BUDGET: Final = 0.05
"""Share of one core the tap may use per second above :data:`EXACT_RATE`."""
EXACT_RATE: Final = 70_000
"""Forwarding rate (messages/s) up to which the tap may spend :data:`CPU_BUDGET` to count
exactly (at about 4-5 us a message, that budget holds up to about this rate)."""
IDLE_RATE: Final = 10_000
"""Forwarding rate (messages/s) under which the tap runs on idle CPU time, while it keeps up."""
BEHIND_FRAMES: Final = 2_000
"""Frames the tap may lag (its queue holds 20,000 messages) before it is raised to normal priority."""
TOPICS_KEPT: Final = 4096
_TICK: Final = 0.010
_NOBLOCK: Final = int(zmq.NOBLOCK)


@dataclass(slots=True)
class TapCounters:
    """What the tap has seen. Written by the tap thread only; read under the GIL.

    Counts are kept per topic (``[instance, messages, envelopes, bytes]``, keyed by the topic
    bytes, which hash in C) and summed per instance when read; past
    :data:`TOPICS_KEPT` topics they are folded into per-instance totals.
    """

    by_topic: dict[bytes, list[Any]] = field(default_factory=dict)
    restricted_by_topic: dict[bytes, list[Any]] = field(default_factory=dict)
    """The same for the restricted class's pair (a topic is counted on the pair of its instance only)."""
    folded: dict[Instance, list[int]] = field(default_factory=dict)
    malformed: Counter[str] = field(default_factory=Counter)
    internal: int = 0
    """Protocol messages (subscription probe acks), not counted as traffic."""
    last_internal: bytes = b""
    """The topic of the latest protocol message; the broker's stop waits on it."""
    internal_seen: threading.Event = field(default_factory=threading.Event)
    frames: int = 0
    """Every frame seen; compared with the proxy's own count to prove drops."""
    caught_up: tuple[float, int] = (0.0, 0)
    """``(monotonic time, frames)`` when a drain last found the queue empty: every frame the
    proxy had forwarded before that time had been counted or dropped by then."""
    paused: int = 0
    """Times the tap stopped for the rest of a second, over its CPU budget."""
    raised: int = 0
    """Times the tap went from idle CPU time to normal priority."""
    forward_rate: float = 0.0
    """Messages per second the proxy forwards (set by the stats book); it sets the budget."""
    misrouted: Counter[str] = field(default_factory=Counter)
    """Per restricted instance, messages of it that came through the public pair (sent by a
    publisher of the public frontend): never forwarded to its class, journaled or counted as it."""
    restricted_frames: int = 0
    """Frames seen on the restricted class's pair (its proxy is not compared with the tap)."""

    def per_instance(self) -> dict[Instance, tuple[int, int, int]]:
        """``(messages, envelopes, bytes)`` per instance seen."""
        totals = {instance: list(values) for instance, values in self.folded.items()}
        for instance, messages, envelopes, size in [*self.by_topic.values(), *self.restricted_by_topic.values()]:
            entry = totals.setdefault(instance, [0, 0, 0])
            entry[0] += messages
            entry[1] += envelopes
            entry[2] += size
        return {instance: (m, e, b) for instance, (m, e, b) in totals.items()}

    def fold(self) -> None:
        """Move the per-topic counts into the per-instance totals (bounds the topic table)."""
        for instance, messages, envelopes, size in [*self.by_topic.values(), *self.restricted_by_topic.values()]:
            entry = self.folded.setdefault(instance, [0, 0, 0])
            entry[0] += messages
            entry[1] += envelopes
            entry[2] += size
        self.by_topic, self.restricted_by_topic = {}, {}


def _set_policy(thread: int, normal: bool) -> None:
    """Normal or idle-class scheduling for a thread (another thread may call it)."""
    policy = os.SCHED_OTHER if normal else os.SCHED_IDLE
    try:
        os.sched_setscheduler(thread, policy, os.sched_param(0))
    except (AttributeError, OSError):  # not Linux, or refused: nice 19 for idle at least
        with contextlib.suppress(AttributeError, OSError):
            os.setpriority(os.PRIO_PROCESS, thread, 0 if normal else 19)


class _Budget:
    """CPU time of the tap thread per one-second window."""

    def __init__(self) -> None:
        self._window = time.monotonic()
        self._cpu_at_window = time.thread_time()

    def pause(self, rate: float) -> float:
        """Seconds to sleep before the next drain: 0 within budget, else the rest of the window."""
        now = time.monotonic()
        if now - self._window >= 1.0:
            self._window, self._cpu_at_window = now, time.thread_time()
        budget = CPU_BUDGET if rate <= EXACT_RATE else FLOOD_BUDGET
        if time.thread_time() - self._cpu_at_window < budget:
            return 0.0
        return max(0.0, self._window + 1.0 - now)


class Tap:
    """The tap child of the broker's supervisor (see :mod:`.supervisor`)."""

    name = "tap"
    restartable = True

    def __init__(
        self,
        context: zmq.Context[Any],
        backend_inproc: str,
        restricted_inproc: str | None = None,
        restricted: frozenset[Instance] = frozenset(),
        announce: bytes = b"",
    ) -> None:
        self.counters = TapCounters()
        self._announce = announce
        """The class table to announce to publishers (a subscription on the public pair; see
        :mod:`exesdb_sdk.classes`), or nothing."""
        self._context = context
        self._backend = backend_inproc
        self._restricted_backend = restricted_inproc
        self._restricted = restricted
        self._stopping = threading.Event()
        self.ready = threading.Event()
        """Set once the tap's subscription is in place (before the proxy runs, nothing is missed)."""
        self._decoder = Decoder()
        self._thread: int | None = None
        self.normal = False
        """Whether the tap runs at normal priority now (else on idle CPU time)."""

    def stop(self) -> None:
        """Ask the tap to finish its current drain and end."""
        self._stopping.set()

    def adjust(self, rate: float, behind_frames: int) -> None:
        """Set the tap's priority for a forwarding ``rate`` (messages/s) and its lag (called by
        the service thread, about every 0.1 s)."""
        thread = self._thread
        if thread is None:
            return
        normal = rate >= IDLE_RATE or behind_frames >= BEHIND_FRAMES
        if normal != self.normal:
            _set_policy(thread, normal)
            self.normal = normal
            self.counters.raised += normal

    def run(self) -> None:
        self._thread = threading.get_native_id()
        _set_policy(self._thread, self.normal)
        budget = _Budget()
        sub = self._context.socket(zmq.SUB)
        rsub = self._context.socket(zmq.SUB) if self._restricted_backend is not None else None
        try:
            for socket, endpoint in ((sub, self._backend), (rsub, self._restricted_backend)):
                if socket is not None and endpoint is not None:
                    socket.setsockopt(zmq.RCVHWM, TAP_HWM)
                    socket.setsockopt(zmq.LINGER, 0)
                    socket.setsockopt(zmq.SUBSCRIBE, b"")
                    socket.connect(endpoint)
            if self._announce:
                sub.setsockopt(zmq.SUBSCRIBE, CLASSES_PREFIX + self._announce)
            self.ready.set()
            wait = _TICK
            # Wake on a timer, not per message: a reader woken for every message makes the proxy
            # signal its pipe for every message (p50 latency +15-20% measured on 2 cores).
            while not self._stopping.wait(wait):
                _, empty = self._drain(sub)
                if rsub is not None:
                    empty = self._drain(rsub, restricted=True)[1] and empty
                pause = budget.pause(self.counters.forward_rate)
                if pause:
                    self.counters.paused += 1
                wait = pause or (_TICK if empty else 0.0)
        finally:
            sub.close(linger=0)
            if rsub is not None:
                rsub.close(linger=0)

    def _drain(self, sub: zmq.Socket[Any], restricted: bool = False) -> tuple[int, bool]:
        """Count what is queued on one pair (the public one, or the ``restricted`` class's), up
        to :data:`TAP_HWM` messages; return how many were read and whether the queue was found
        empty."""
        counters = self.counters
        check = self._decoder.check
        by_topic = counters.restricted_by_topic if restricted else counters.by_topic
        # Caught up "as of" when this drain began: every frame the proxy had forwarded by then
        # was read by the empty receive below, or dropped. A clock read after that receive
        # could come after a proxy sample taken while this thread was preempted between the
        # two, and prove drops that never happened.
        started = time.monotonic()
        for read in range(TAP_HWM):
            try:
                frames = recv_frames(sub, _NOBLOCK)
            except zmq.Again:
                if not restricted:
                    counters.caught_up = (started, counters.frames)
                return read, True
            if restricted:
                counters.restricted_frames += len(frames)
            else:
                counters.frames += len(frames)
            topic = frames[0]
            if is_reserved(topic):
                counters.internal += 1
                counters.last_internal = topic
                counters.internal_seen.set()
                continue
            try:
                text, envelopes = check(frames)
            except ProtocolError as exc:
                counters.malformed[exc.reason] += 1
                continue
            entry = by_topic.get(topic)
            if entry is None:
                instance = Instance.resolve(text.partition("/")[0])
                if (instance in self._restricted) is not restricted:
                    # sent to the other pair's frontend: its instance's readers are not there
                    counters.misrouted[instance.value] += 1
                    continue
                if len(by_topic) >= TOPICS_KEPT:
                    counters.fold()
                    by_topic = counters.restricted_by_topic if restricted else counters.by_topic
                entry = by_topic[topic] = [instance, 0, 0, 0]
            entry[1] += 1
            entry[2] += envelopes
            entry[3] += sum(map(len, frames))
        return TAP_HWM, False
