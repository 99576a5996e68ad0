"""Control requests: routing envelopes and the operations ``ping``, ``stats`` and ``instances``."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

from exesdb_sdk import __version__
from exesdb_sdk.errors import ProtocolError
from exesdb_sdk.instances import Instance
from exesdb_sdk.protocol import PROTOCOL_VERSION, decode_request, encode_error_reply, encode_reply

__all__ = ["ControlHandler", "instance_table"]

log = logging.getLogger("exesdb.broker.control")

Operation = Callable[[dict[str, Any]], dict[str, Any]]
Forward = Callable[[list[bytes]], None]
"""Takes ``[*routing head, request frame]`` of a request another thread answers later."""


def instance_table() -> list[dict[str, Any]]:
    """The ``instances`` reply: every instance with its alias, prefix and description."""
    return [
        {
            "name": instance.value,
            "alias": instance.alias,
            "prefix": instance.prefix,
            "description": instance.description,
        }
        for instance in Instance
    ]


class ControlHandler:
    """Answers control requests. Never raises: every failure becomes an error reply."""

    def __init__(
        self,
        node: str,
        stats: Callable[[], dict[str, Any]],
        *,
        authorize: Callable[[str, str | None, dict[str, Any]], str | None] | None = None,
        ping_extra: Callable[[], dict[str, Any]] | None = None,
        classes: Callable[[], list[dict[str, Any]]] | None = None,
    ) -> None:
        self._node = node
        self._ping_extra = ping_extra
        """More fields of the ``ping`` reply (the HTTP surface's URL)."""
        self._stats = stats
        self._authorize = authorize
        """``authorize(op, user_id, request)``: ``None`` to allow, else why not (a ``forbidden`` reply)."""
        self._classes = classes
        """The privilege classes for the ``instances`` reply (their endpoints as bound)."""
        self._ops: dict[str, Operation] = {
            "ping": self._ping,
            "stats": self._stats_op,
            "instances": self._instances,
        }
        self._forwards: dict[str, Forward] = {}

    def register(self, op: str, operation: Operation) -> None:
        """Add an operation answered in the service thread."""
        self._ops[op] = operation

    def forward(self, ops: Iterable[str], send: Forward) -> None:
        """Hand requests for ``ops`` to ``send`` (the journal thread answers them later)."""
        for op in ops:
            self._forwards[op] = send

    def handle(self, frames: list[bytes], user_id: str | None = None) -> list[bytes] | None:
        """Reply frames for the ROUTER frames of one request, or ``None`` to send nothing.

        REQ clients send ``[identity, b"", request]``; DEALER clients may omit the empty
        delimiter. The reply mirrors whichever envelope arrived. ``user_id`` is the ZAP
        User-Id of the connection (its roles when security is on).
        """
        if len(frames) < 2:
            return None  # no identity and request: nothing we could address a reply to
        identity, rest = frames[0], frames[1:]
        head = [identity, b""] if rest[0] == b"" else [identity]
        body = rest[len(head) - 1 :]
        if len(body) != 1:
            return [*head, encode_error_reply("bad_request", "expected exactly one request frame")]
        reply = self._reply(head, body[0], user_id)
        return None if reply is None else [*head, reply]

    def _reply(self, head: list[bytes], frame: bytes, user_id: str | None) -> bytes | None:
        """The reply to one request, or ``None`` when another thread answers it."""
        try:
            request = decode_request(frame)
        except ProtocolError as exc:
            return encode_error_reply("bad_request", exc.detail)
        request_id = request.get("id")
        operation = self._ops.get(request["op"])
        send = self._forwards.get(request["op"])
        if operation is None and send is None:
            known = ", ".join(sorted({*self._ops, *self._forwards}))
            return encode_error_reply("unknown_op", f"unknown op {request['op']!r} (known: {known})", request_id)
        if self._authorize is not None and (refusal := self._authorize(request["op"], user_id, request)) is not None:
            return encode_error_reply("forbidden", refusal, request_id)
        if send is not None:
            send([*head, frame])
            return None
        assert operation is not None
        try:
            return encode_reply(operation(request), request_id)
        except ProtocolError as exc:
            return encode_error_reply("bad_request", exc.detail, request_id)
        except Exception as exc:  # an operation's bug must not take the control endpoint down
            log.exception("control op %r failed", request["op"])
            return encode_error_reply("internal", f"{type(exc).__name__}: {exc}", request_id)

    def _ping(self, request: dict[str, Any]) -> dict[str, Any]:
        return {
            "pong": True,
            "version": __version__,
            "protocol": PROTOCOL_VERSION,
            "node": self._node,
            **(self._ping_extra() if self._ping_extra is not None else {}),
        }

    def _stats_op(self, request: dict[str, Any]) -> dict[str, Any]:
        return {
            "version": __version__,
            "protocol": PROTOCOL_VERSION,
            "node": self._node,
            **self._stats(),
        }

    def _instances(self, request: dict[str, Any]) -> dict[str, Any]:
        return {"instances": instance_table(), "classes": self._classes() if self._classes is not None else []}
