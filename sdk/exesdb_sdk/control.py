"""The client of the broker's control endpoint: the requests, written once for both drivers,
and the synchronous client."""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any, Final, Generic, TypeVar

import zmq

from ._flows import Flow, Receive, Reconnect, Send, Step, control_failover, control_request, run
from ._owner import Owner, S, SocketOwner
from .curve import KeyPath, resolve_client_keys
from .endpoints import DEFAULT_CONTROL, ENV_CONTROL, Endpoints, Rotation, resolve_endpoints
from .errors import ProtocolError
from .protocol import decode_reply, encode_request

__all__ = ["DEFAULT_CONTROL_TIMEOUT", "ControlBase", "ControlClient"]

DEFAULT_CONTROL_TIMEOUT: Final = 5.0
"""Seconds to wait for a control reply."""
_NOT_REPEATED: Final = frozenset({"publish"})
"""Ops not sent again to another broker when unanswered: the first may have done it."""

D = TypeVar("D")
"""What a request returns: its reply map, or (asyncio) a coroutine of it."""
L = TypeVar("L")
"""What :meth:`ControlBase.instances` returns: a list, or (asyncio) a coroutine of it."""


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

    @staticmethod
    def match(frames: list[bytes], request_id: int) -> dict[str, Any] | None:
        """The decoded reply if ``frames`` answer ``request_id``, else ``None``.

        Raises :class:`~exesdb_sdk.errors.ControlError` for an error reply to this request.
        """
        if not frames:
            return None
        try:
            reply = decode_reply(frames[-1])
        except ProtocolError:
            return None
        return reply if reply.get("id") == request_id else None


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


def _field(flow: Flow[dict[str, Any]], key: str) -> Flow[Any]:
    reply = yield from flow
    return reply[key]


class ControlClient(ControlBase[zmq.Socket[Any], dict[str, Any], list[dict[str, Any]]], SocketOwner):
    """The synchronous control client (see :class:`ControlBase` for everything it does).

    Example::

        with ControlClient() as control:
            print(control.stats()["instances"]["ex_esdb_health"]["messages"])
    """

    def _drive(self, flow: Flow[Any]) -> Any:
        return run(flow, self._perform)

    def _perform(self, step: Step) -> Any:
        socket = self._live()
        if isinstance(step, Send):
            return socket.send_multipart(step.frames, zmq.NOBLOCK)
        if isinstance(step, Receive):
            return socket.recv_multipart() if self._watch.wait(max(1, int(step.timeout * 1000))) else None
        if isinstance(step, Reconnect):
            return self._switch(step.endpoint)
        return self._watch.settle()
