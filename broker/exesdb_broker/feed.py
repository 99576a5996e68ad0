"""The journal's feeds: libzmq proxies that carry parts of the bus to the journal and shed in C.

The journal's input cannot be an unbounded socket pipe (a flood of alerts grew the broker
to 1.4 GB) nor a bounded one that drops silently. So each journaled instance, and the
last-value topics outside them, reach the journal through a :class:`Feed`: a SUB on the
backend (unbounded, but drained by ``zmq.proxy_steerable`` in C at the proxy's own speed)
into a PUB bound over inproc with ``SNDHWM`` :data:`FEED_HWM`, which the journal's SUB
reads. When the journal falls behind, the PUB drops, in C, at no cost to Python; the proxy's
exact frame counters (``STATISTICS`` on the feed's control socket) let the journal prove how
many it did not receive, per feed, and mark each gap (see :mod:`.journal`).

Every feed also carries the journal's sync markers (``_exesdb/journal/sync/<feed>/<n>``),
sent through the main proxy: what a feed delivers before its marker is everything the broker
forwarded on that feed before the marker was sent.

A feed owns only inproc sockets, but the journal's SUB is connected to its PUB; like the
main proxy it is not restarted (a libzmq proxy does not fail short of the context ending).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, Final

import zmq
from exesdb_sdk._frames import send_frames
from exesdb_sdk.instances import Instance

from .stats import ProxyTotals

__all__ = ["FEED_HWM", "SYNC_PREFIX", "Feed", "FeedLink"]

FEED_HWM: Final = 50_000
"""Messages a feed queues for the journal before it sheds (the bound on that memory: about
20 MB of 100-byte messages). It absorbs what arrives while the journal commits or answers."""
SYNC_PREFIX: Final = b"_exesdb/journal/sync/"
_REPLY_MS: Final = 200


class Feed:
    """One feed: a child of the broker's supervisor."""

    restartable = False

    def __init__(
        self,
        context: zmq.Context[Any],
        label: str,
        instance: Instance | None,
        prefixes: tuple[bytes, ...],
        *,
        backend: str,
        base: str,
    ) -> None:
        self.name = f"feed-{label}"
        self.label = label
        self.instance = instance
        """The journaled instance it carries, or ``None`` for the last-value topics."""
        self.prefixes = prefixes
        self.sync_prefix = SYNC_PREFIX + label.encode() + b"/"
        self.endpoint = f"{base}-feed-{label}"
        """The inproc endpoint of its PUB (the journal's SUB connects to it)."""
        self.control = f"{base}-feed-{label}-control"
        """The inproc endpoint of its control socket (``STATISTICS``, ``TERMINATE``)."""
        self.ready = threading.Event()
        self._context = context
        self._backend = backend

    def run(self) -> None:
        context = self._context
        sub, pub, control = context.socket(zmq.SUB), context.socket(zmq.PUB), context.socket(zmq.DEALER)
        try:
            sub.setsockopt(zmq.RCVHWM, 0)  # unbounded, and drained in C: the backend never drops here
            sub.setsockopt(zmq.LINGER, 0)
            for prefix in (*self.prefixes, self.sync_prefix):
                sub.setsockopt(zmq.SUBSCRIBE, prefix)
            pub.setsockopt(zmq.SNDHWM, FEED_HWM)
            pub.setsockopt(zmq.LINGER, 0)
            control.setsockopt(zmq.LINGER, 0)
            pub.bind(self.endpoint)
            control.bind(self.control)
            sub.connect(self._backend)
            self.ready.set()
            zmq.proxy_steerable(sub, pub, None, control)
        finally:
            for socket in (sub, pub, control):
                socket.close(linger=0)


class FeedLink:
    """The journal's end of its feeds, for one run of the journal thread: the SUB that reads
    them all and a DEALER to each feed's control socket. Created and closed by that thread."""

    def __init__(self, context: zmq.Context[Any], feeds: list[Feed]) -> None:
        self._feeds = feeds
        self.sub = context.socket(zmq.SUB)
        self.controls = {feed.label: context.socket(zmq.DEALER) for feed in feeds}
        self.sub.setsockopt(zmq.RCVHWM, 1)  # the feeds' SNDHWM bound the queue (0 would unbind it)
        self.sub.setsockopt(zmq.LINGER, 0)
        self.sub.setsockopt(zmq.SUBSCRIBE, b"")
        for feed in feeds:
            self.sub.connect(feed.endpoint)
            control = self.controls[feed.label]
            control.setsockopt(zmq.LINGER, 0)
            control.connect(feed.control)

    def sample(self, sampled: Callable[[str, int, float], None]) -> None:
        """Read every feed's count of frames sent: ``sampled(label, frames, monotonic time)``."""
        for label, control in self.controls.items():
            totals = ProxyTotals.ask(control, _REPLY_MS)
            if totals is not None:
                sampled(label, totals.frames_out, time.monotonic())

    def send_sync(self, pub: Callable[[Instance | None], zmq.Socket[Any]], number: int) -> None:
        """Send sync marker ``number`` through every feed, by way of the proxy (``pub(instance)``
        is a publisher into the frontend of the feed's instance). Raises ``zmq.ZMQError`` when it cannot."""
        for feed in self._feeds:
            send_frames(pub(feed.instance), feed.sync_prefix + str(number).encode(), b"")

    def terminate(self) -> None:
        """End every feed (at stop, once they are drained)."""
        for control in self.controls.values():
            control.send(b"TERMINATE")

    def close(self) -> None:
        for socket in (self.sub, *self.controls.values()):
            socket.close(linger=0)
