"""The client of the broker's control endpoint: the requests, written once for both drivers,
and the synchronous client."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any, Final, Generic, TypeVar

import msgspec
import zmq
from zmq.backend import Socket as _Base

from ._flows import (
    Flow,
    Receive,
    ReceiveMany,
    Reconnect,
    Send,
    SendMany,
    Step,
    commit_many,
    control_failover,
    control_request,
    run,
)
from ._frames import recv_frames
from ._owner import Owner, S, SocketOwner
from .classes import PrivilegeClass, decode_classes
from .curve import KeyPath, resolve_client_keys
from .endpoints import DEFAULT_CONTROL, ENV_CONTROL, Endpoints, Rotation, resolve_endpoints
from .errors import ControlError, ProtocolError
from .protocol import decode_reply, encode_request

__all__ = ["DEFAULT_COMMIT_WINDOW", "DEFAULT_CONTROL_TIMEOUT", "MAX_COMMIT_WINDOW", "ControlBase", "ControlClient"]

DEFAULT_CONTROL_TIMEOUT: Final = 5.0
"""Seconds to wait for a control reply."""
_NOT_REPEATED: Final = frozenset({"publish", "publish_many"})
"""Ops not sent again to another broker when unanswered: the first may have done it."""
DEFAULT_COMMIT_WINDOW: Final = 1_024
"""Durable publishes :meth:`ControlBase.commit_many` keeps in flight by default (in ``publish_many``
chunks of half that: the broker commits more per group than at 256, about a third more per second)."""
MAX_COMMIT_WINDOW: Final = 10_000
"""The most it may keep in flight (the broker's queue for a client is bounded too)."""

_send: Final = _Base.send
_NOBLOCK: Final = int(zmq.NOBLOCK)
_SNDMORE_NOBLOCK: Final = int(zmq.SNDMORE | zmq.NOBLOCK)

D = TypeVar("D")
"""What a request returns: its reply map, or (asyncio) a coroutine of it."""
L = TypeVar("L")
"""What :meth:`ControlBase.instances` returns: a list, or (asyncio) a coroutine of it."""


def check_window(window: int) -> None:
    """Raise ``ValueError`` unless ``window`` is a pipelining window :meth:`ControlBase.commit_many` takes."""
    if isinstance(window, bool) or not isinstance(window, int) or not 1 <= window <= MAX_COMMIT_WINDOW:
        raise ValueError(f"window must be an integer from 1 to {MAX_COMMIT_WINDOW}, not {window!r}")


class ReplyMatcher:
    """Numbers requests and recognises the reply to the latest one (shared by both clients).

    A reply to an earlier request that timed out carries an older id and is skipped.
    """

    __slots__ = ("_ids",)

    def __init__(self) -> None:
        self._ids = itertools.count(1)

    def request(self, op: str, args: Mapping[str, Any] | None) -> tuple[int, list[bytes]]:
        request_id = next(self._ids)
        return request_id, [b"", encode_request(op, args, request_id)]

    def ids(self, count: int) -> range:
        """``count`` consecutive request ids, taken at once (for pipelined requests)."""
        first = next(self._ids)
        self._ids = itertools.count(first + count)
        return range(first, first + count)

    @staticmethod
    def answer(frames: list[bytes]) -> tuple[Any, dict[str, Any] | ControlError] | None:
        """The request id ``frames`` answer and the reply, or the :class:`ControlError` of an
        error reply; ``None`` for anything that is not a reply."""
        if not frames:
            return None
        try:
            reply = decode_reply(frames[-1])
        except ControlError as exc:
            # an error reply is a valid map (decode_reply checked it): read its id
            fields = msgspec.msgpack.decode(frames[-1])
            return fields.get("id"), exc
        except ProtocolError:
            return None
        return reply.get("id"), reply

    @classmethod
    def match(cls, frames: list[bytes], request_id: int) -> dict[str, Any] | None:
        """The decoded reply if ``frames`` answer ``request_id``, else ``None``.

        Raises :class:`~exesdb_sdk.errors.ControlError` for an error reply to this request.
        """
        answered = cls.answer(frames)
        if answered is None or answered[0] != request_id:
            return None
        if isinstance(answered[1], ControlError):
            raise answered[1]
        return answered[1]


class ControlBase(Owner[S], Generic[S, D, L]):
    """Sends control requests (``ping``, ``stats``, ``instances``...) and returns the replies.

    ``endpoint`` defaults to ``$EXESDB_CONTROL``, else ``tcp://127.0.0.1:7102``. A request
    that gets no reply within ``timeout`` seconds raises
    :class:`~exesdb_sdk.errors.BrokerUnavailableError`; an error reply raises
    :class:`~exesdb_sdk.errors.ControlError` (code ``forbidden`` when this client's key lacks
    the role for the op). ``client_key`` and ``server_key`` (or ``$EXESDB_CLIENT_KEY`` /
    ``$EXESDB_SERVER_KEY``) turn on CURVE; a refused key raises
    :class:`~exesdb_sdk.errors.AuthenticationError`. Every method is the same in
    :class:`ControlClient` and :class:`~exesdb_sdk.AsyncControlClient`, whose methods are awaited.

    Several endpoints (a list, or separated by commas) are tried in turn: a request the broker
    in use does not answer in time goes to the next (round robin), which stays in use; only when
    none answers does it raise (so a request may take ``timeout`` per broker). A durable
    ``publish`` is the exception: unanswered, it may have been committed, so it is not sent
    again (it raises; the next request goes to the next broker).
    """

    _what = "control client"

    def __init__(
        self,
        endpoint: Endpoints | None = None,
        *,
        timeout: float = DEFAULT_CONTROL_TIMEOUT,
        context: zmq.Context[S] | None = None,
        client_key: KeyPath | None = None,
        server_key: KeyPath | None = None,
    ) -> None:
        self._rotation = Rotation(resolve_endpoints(endpoint, ENV_CONTROL, DEFAULT_CONTROL, "control"))
        self.timeout = timeout
        self._matcher = ReplyMatcher()
        self._without_many: set[str] = set()
        """Endpoints whose broker answered ``publish_many`` with ``unknown_op`` (older brokers)."""
        super().__init__(zmq.DEALER, context, resolve_client_keys(client_key, server_key))
        socket = self._live()
        socket.setsockopt(zmq.LINGER, 0)
        socket.connect(self.endpoint)

    @property
    def endpoint(self) -> str:
        """The control endpoint in use."""
        return self._rotation.current

    @property
    def endpoints(self) -> tuple[str, ...]:
        """Every control endpoint it may use, in order."""
        return self._rotation.endpoints

    def _drive(self, flow: Flow[Any]) -> Any:
        """Run ``flow`` with this client's I/O (the result, or a coroutine of it)."""
        raise NotImplementedError

    def _request(self, op: str, args: Mapping[str, Any] | None, timeout: float | None) -> Flow[dict[str, Any]]:
        timeout = self.timeout if timeout is None else timeout
        if self._rotation.several:
            return control_failover(self._matcher, self._rotation, op, args, timeout, op not in _NOT_REPEATED)
        return control_request(self._matcher, op, args, timeout, self.endpoint)

    def request(self, op: str, args: Mapping[str, Any] | None = None, *, timeout: float | None = None) -> D:
        """Send ``{"op": op, **args}`` and return the reply map (``ok`` is true)."""
        result: D = self._drive(self._request(op, args, timeout))
        return result

    def ping(self) -> D:
        """Check the broker answers: version, protocol and node."""
        return self.request("ping")

    def stats(self) -> D:
        """The broker's counters (see ``docs/protocol.md`` for every field)."""
        return self.request("stats")

    def instances(self) -> L:
        """The instances the broker carries, with their aliases."""
        result: L = self._drive(_field(self._request("instances", None, None), "instances"))
        return result

    def classes(self) -> Any:
        """The broker's privilege classes (docs/protocol.md 12.1): a tuple of
        :class:`~exesdb_sdk.classes.PrivilegeClass`, empty without a class. Raises
        :class:`~exesdb_sdk.errors.ProtocolError` for a malformed table."""
        result = self._drive(_classes_of(self._request("instances", None, None), self.endpoint))
        return result

    def commit_many(
        self,
        messages: Sequence[tuple[bytes, bytes]],
        window: int = DEFAULT_COMMIT_WINDOW,
        *,
        timeout: float | None = None,
    ) -> Any:
        """Commit raw ``(topic, body)`` messages as durable publishes, ``window`` in flight at once;
        return, per message in order, the broker's sequence number or the error.

        Each body is sent unchanged (its envelope keeps its own ``pub`` and ``seq``), in
        ``publish_many`` requests of up to ``window // 2`` messages (at most 1,000 and about
        60 KiB each; docs/protocol.md 10.8). The broker commits what arrives together in one
        group commit, then forwards each message live. A broker that answers ``unknown_op`` to
        ``publish_many`` (an older one) gets one ``publish`` request per message instead, from
        then on (this client remembers it per endpoint). An
        entry is a :class:`~exesdb_sdk.errors.DurabilityError` (nothing recorded),
        another :class:`~exesdb_sdk.errors.ControlError` the broker answered with (e.g.
        ``too_large``, ``bad_request``), or, when the broker stops answering for ``timeout``
        seconds (default: the client's), ``ControlError("unanswered")`` for a message sent
        without a reply (its outcome is unknown) and ``ControlError("not_sent")`` for one never
        sent. Nothing is sent again; with several endpoints, the next call goes to the next one.
        Raises ``TypeError``/``ValueError`` (nothing sent) for messages that are not pairs of
        bytes or a ``window`` outside 1..10,000.
        """
        check_window(window)
        for index, message in enumerate(messages):
            if not (
                isinstance(message, tuple)
                and len(message) == 2
                and isinstance(message[0], bytes)
                and isinstance(message[1], bytes)
            ):
                raise TypeError(f"commit_many: message {index} must be a (topic, body) tuple of bytes")
        timeout = self.timeout if timeout is None else timeout
        rotation = self._rotation
        after = rotation.following()[0] if rotation.several else None
        flow = commit_many(self._matcher, messages, window, timeout, self.endpoint, after, self._without_many)
        return self._drive(flow)


def send_many(socket: zmq.Socket[Any], messages: list[list[bytes]]) -> int:
    """Send two-frame ``messages`` without waiting until the queue is full; how many were sent
    (the base class's calls: the same for a sync and an asyncio socket, and never awaited)."""
    for done, (head, request) in enumerate(messages):
        try:
            _send(socket, head, _SNDMORE_NOBLOCK)
        except zmq.Again:
            return done
        _send(socket, request, _NOBLOCK)  # the first frame went: the message is queued whole
    return len(messages)


def receive_held(socket: zmq.Socket[Any], limit: int) -> list[list[bytes]]:
    """Up to ``limit`` messages the socket holds now, without waiting."""
    received: list[list[bytes]] = []
    for _ in range(limit):
        try:
            received.append(recv_frames(socket, _NOBLOCK))
        except zmq.Again:
            break
    return received


def _field(flow: Flow[dict[str, Any]], key: str) -> Flow[Any]:
    reply = yield from flow
    return reply[key]


def _classes_of(flow: Flow[dict[str, Any]], near: str) -> Flow[tuple[PrivilegeClass, ...]]:
    reply = yield from flow
    return decode_classes(reply.get("classes", []), near)  # an older broker: no field, no class


class ControlClient(ControlBase[zmq.Socket[Any], dict[str, Any], list[dict[str, Any]]], SocketOwner):
    """The synchronous control client (see :class:`ControlBase` for everything it does).

    Example::

        with ControlClient() as control:
            print(control.stats()["instances"]["ex_esdb_health"]["messages"])
    """

    def _drive(self, flow: Flow[Any]) -> Any:
        return run(flow, self._perform)

    def commit_many(
        self,
        messages: Sequence[tuple[bytes, bytes]],
        window: int = DEFAULT_COMMIT_WINDOW,
        *,
        timeout: float | None = None,
    ) -> list[int | ControlError]:
        """See :meth:`ControlBase.commit_many`."""
        results: list[int | ControlError] = super().commit_many(messages, window, timeout=timeout)
        return results

    def _perform(self, step: Step) -> Any:
        socket = self._live()
        if isinstance(step, Send):
            return socket.send_multipart(step.frames, zmq.NOBLOCK)
        if isinstance(step, Receive):
            return socket.recv_multipart() if self._watch.wait(max(1, int(step.timeout * 1000))) else None
        if isinstance(step, SendMany):
            return send_many(socket, step.messages)
        if isinstance(step, ReceiveMany):
            received = receive_held(socket, step.limit)
            if not received and self._watch.wait(max(1, int(step.timeout * 1000))):
                received = receive_held(socket, step.limit)
            return received
        if isinstance(step, Reconnect):
            return self._switch(step.endpoint)
        return self._watch.settle()
