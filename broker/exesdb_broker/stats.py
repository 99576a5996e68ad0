"""The broker's statistics: counts from the tap and the proxy, rates, and the ``stats`` reply."""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass
from typing import Any

import zmq
from exesdb_sdk.instances import Instance

from .tap import TapCounters

__all__ = ["ProxyTotals", "StatsBook"]


@dataclass(frozen=True, slots=True)
class ProxyTotals:
    """The libzmq proxy's own counters (frames and bytes, exact, counted in C)."""

    frames_in: int = 0
    bytes_in: int = 0
    frames_out: int = 0
    bytes_out: int = 0

    @classmethod
    def from_reply(cls, frames: list[bytes]) -> ProxyTotals:
        """Parse the 8-frame reply to the proxy's ``STATISTICS`` command (native uint64s).

        The order is frontend (recv n, recv bytes, send n, send bytes), then backend; the
        data flows frontend recv -> backend send.
        """
        if len(frames) != 8 or any(len(frame) != 8 for frame in frames):
            raise ValueError(f"not a STATISTICS reply: {len(frames)} frame(s)")
        values = [struct.unpack("=Q", frame)[0] for frame in frames]
        return cls(values[0], values[1], values[6], values[7])

    @classmethod
    def ask(cls, control: zmq.Socket[Any], timeout_ms: int) -> ProxyTotals | None:
        """Send ``STATISTICS`` on a proxy's control socket and return the reply, or ``None``
        when none comes within ``timeout_ms``. Late replies to earlier requests, and other
        replies the proxy sends (libzmq 4.3.5 answers its other commands too), are skipped."""
        while control.poll(0):
            control.recv_multipart()
        control.send(b"STATISTICS")
        deadline = time.monotonic() + timeout_ms / 1000
        for _ in range(100):  # bounded: each turn reads one reply
            remaining = int((deadline - time.monotonic()) * 1000)
            if remaining <= 0 or not control.poll(remaining):
                return None
            try:
                return cls.from_reply(control.recv_multipart())
            except ValueError:
                continue
        return None


class StatsBook:
    """Derives the figures the broker reports from the raw counters.

    Rates are messages per second over the last sampling window, updated by :meth:`sample`.
    """

    def __init__(self, counters: TapCounters) -> None:
        self.counters = counters
        self.started_ns = time.time_ns()
        self._started = time.monotonic()
        self.subscribers = 0
        self.publishers = 0
        self.subscribers_back = 0
        """Subscriber connections whose handshake completed (the start grace counts them)."""
        self.missed_frames = 0
        """Frames the tap is proven to have missed (the counts are approximate when non-zero)."""
        self._proxy_sample: tuple[float, int] | None = None
        self._last_sample = time.monotonic()
        self._last_messages: dict[Instance, int] = {}
        self.rates: dict[Instance, float] = {}

    @property
    def uptime(self) -> float:
        return time.monotonic() - self._started

    def sample(self) -> None:
        """Update the per-instance rates from the counts since the previous sample."""
        now = time.monotonic()
        elapsed = now - self._last_sample
        if elapsed <= 0:
            return
        messages = {instance: values[0] for instance, values in self.counters.per_instance().items()}
        self.rates = {
            instance: (count - self._last_messages.get(instance, 0)) / elapsed for instance, count in messages.items()
        }
        self._last_messages = messages
        self._last_sample = now

    def observe_proxy(self, totals: ProxyTotals, at: float) -> None:
        """Take the proxy's counters, read at monotonic time ``at``, and prove tap drops.

        Every frame the proxy had forwarded by an earlier sample was, by the time the tap next
        found its queue empty, either counted or dropped for the tap: so the sample's
        ``frames_out`` less the tap's frame count at that moment is a lower bound of the drops,
        exact once traffic stops.
        """
        previous = self._proxy_sample
        caught_up_at, frames = self.counters.caught_up
        if previous is not None and previous[0] < caught_up_at:
            self.missed_frames = max(self.missed_frames, previous[1] - frames)
        if previous is not None and at > previous[0]:
            # two frames a message, as the protocol has it: the tap's budget needs no more precision
            self.counters.forward_rate = (totals.frames_out - previous[1]) / 2 / (at - previous[0])
        self._proxy_sample = (at, totals.frames_out)

    def tap_behind(self, totals: ProxyTotals) -> int:
        """Frames the proxy has forwarded that the tap has neither read nor been proven to miss."""
        return max(0, totals.frames_out - self.counters.frames - self.missed_frames)

    def counting(self) -> dict[str, Any]:
        """The ``counting`` map of the ``stats`` reply."""
        return {
            "exact": self.missed_frames == 0,
            "missed_frames": self.missed_frames,
            "paused": self.counters.paused,
            "raised": self.counters.raised,
        }

    def snapshot(self, proxy: ProxyTotals | None) -> dict[str, Any]:
        """The ``stats`` reply fields (see docs/protocol.md)."""
        counters = self.counters
        totals = counters.per_instance()
        messages = {instance: values[0] for instance, values in totals.items()}
        envelopes = {instance: values[1] for instance, values in totals.items()}
        sizes = {instance: values[2] for instance, values in totals.items()}
        malformed = {reason: n for reason, n in dict(counters.malformed).items() if n}
        instances = {
            instance.value: {
                "messages": messages.get(instance, 0),
                "envelopes": envelopes.get(instance, 0),
                "bytes": sizes.get(instance, 0),
                "rate": round(self.rates.get(instance, 0.0), 3),
            }
            for instance in Instance
        }
        reply: dict[str, Any] = {
            "uptime": round(self.uptime, 3),
            "started_at": self.started_ns,
            "totals": {
                "messages": sum(messages.values()),
                "envelopes": sum(envelopes.values()),
                "bytes": sum(sizes.values()),
                "rate": round(sum(self.rates.values()), 3),
            },
            "instances": instances,
            "malformed": sum(malformed.values()),
            "malformed_by_reason": malformed,
            "subscribers": self.subscribers,
            "publishers": self.publishers,
            "counting": self.counting(),
        }
        if proxy is not None:
            reply["forwarded"] = {
                "frames_in": proxy.frames_in,
                "bytes_in": proxy.bytes_in,
                "frames_out": proxy.frames_out,
                "bytes_out": proxy.bytes_out,
            }
            reply["tap_behind_frames"] = max(0, proxy.frames_out - counters.frames)
        return reply
