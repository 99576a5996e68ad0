"""The synchronous client of the broker's control endpoint."""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any, Final

import zmq

from ._flows import Receive, Send, Step, control_request, run
from ._owner import SocketOwner
from .curve import KeyPath, resolve_client_keys
from .endpoints import DEFAULT_CONTROL, ENV_CONTROL, resolve_endpoint
from .errors import ProtocolError
from .protocol import decode_reply, encode_request

__all__ = ["DEFAULT_CONTROL_TIMEOUT", "ControlClient"]

DEFAULT_CONTROL_TIMEOUT: Final = 5.0
"""Seconds to wait for a control reply."""


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


class ControlClient(SocketOwner):
    """Sends control requests (``ping``, ``stats``, ``instances``...) and returns the replies.

    ``endpoint`` defaults to ``$EXESDB_CONTROL``, else ``tcp://127.0.0.1:7102``. A request
    that gets no reply within ``timeout`` seconds raises
    :class:`~exesdb_sdk.errors.BrokerUnavailableError`; an error reply raises
    :class:`~exesdb_sdk.errors.ControlError` (code ``forbidden`` when this client's key lacks
    the role for the op). ``client_key`` and ``server_key`` (or ``$EXESDB_CLIENT_KEY`` /
    ``$EXESDB_SERVER_KEY``) turn on CURVE; a refused key raises
    :class:`~exesdb_sdk.errors.AuthenticationError`.

    Example::

        with ControlClient() as control:
            print(control.stats()["instances"]["ex_esdb_health"]["messages"])
    """

    _what = "control client"

    def __init__(
        self,
        endpoint: str | None = None,
        *,
        timeout: float = DEFAULT_CONTROL_TIMEOUT,
        context: zmq.Context[Any] | None = None,
        client_key: KeyPath | None = None,
        server_key: KeyPath | None = None,
    ) -> None:
        self.endpoint = resolve_endpoint(endpoint, ENV_CONTROL, DEFAULT_CONTROL, "control")
        self.timeout = timeout
        self._matcher = ReplyMatcher()
        super().__init__(zmq.DEALER, context, resolve_client_keys(client_key, server_key))
        socket = self._live()
        socket.setsockopt(zmq.LINGER, 0)
        socket.connect(self.endpoint)

    def request(
        self, op: str, args: Mapping[str, Any] | None = None, *, timeout: float | None = None
    ) -> dict[str, Any]:
        """Send ``{"op": op, **args}`` and return the reply map (``ok`` is true)."""
        timeout = self.timeout if timeout is None else timeout
        return run(control_request(self._matcher, op, args, timeout, self.endpoint), self._perform)

    def _perform(self, step: Step) -> Any:
        socket = self._live()
        if isinstance(step, Send):
            return socket.send_multipart(step.frames, zmq.NOBLOCK)
        if isinstance(step, Receive):
            return socket.recv_multipart() if self._watch.wait(max(1, int(step.timeout * 1000))) else None
        return self._watch.settle()

    def ping(self) -> dict[str, Any]:
        """Check the broker answers: version, protocol and node."""
        return self.request("ping")

    def stats(self) -> dict[str, Any]:
        """The broker's counters (see ``docs/protocol.md`` for every field)."""
        return self.request("stats")

    def instances(self) -> list[dict[str, Any]]:
        """The instances the broker carries, with their aliases."""
        instances: list[dict[str, Any]] = self.request("instances")["instances"]
        return instances
