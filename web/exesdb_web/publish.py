"""``POST /v1/publish/{instance}/{subtopic}``: publish one message from a JSON body.

The body ``{"type": ..., "data": {...}, "corr": ..., "cause": ..., "trace": ...}`` is checked
as ``exesdb publish`` checks its input (a catalogue type's fields, the size limit) and the
message as a subscriber would check it, all before anything is sent: a refused request sends
nothing. ``?durable=true`` answers once the broker's journal has committed the message, with
its broker sequence number. Every request goes through one publisher, shared by the
application (connected on first use, one publish at a time, closed with the application); a
restricted instance through a second one, on the restricted class's frontend, and only for a
token of ``restricted_publishers`` or ``admins`` (403 naming the instance and the role else).
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any, Final

from aiohttp import web
from exesdb_sdk import AsyncPublisher, Instance
from exesdb_sdk.errors import (
    BrokerUnavailableError,
    ControlError,
    DurabilityError,
    ExesdbError,
    MessageTooLargeError,
    PublishTimeoutError,
    ValidationError,
)
from exesdb_sdk.protocol import Decoder, Encoder
from exesdb_sdk.publisher import checked_data

from . import auth
from .access import BusAccess
from .app import ACCESS, COUNTERS, SETTINGS, json_error

__all__ = ["BODY_KEYS", "SharedPublisher", "install", "routes"]

routes = web.RouteTableDef()

BODY_KEYS: Final = frozenset({"type", "data", "corr", "cause", "trace"})
"""The keys a publish body may have (``type`` is required)."""
_READ_CHUNK: Final = 65_536
_DURABLE: Final = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
_REFUSED_STATUS: Final = {
    "not_journaled": 400,
    "too_large": 413,
    "bad_request": 400,
    "journal_unavailable": 503,
    "commit_failed": 503,
}


class SharedPublisher:
    """The application's one :class:`AsyncPublisher`: connected on first use, one publish at a
    time (an asyncio lock), closed with the application."""

    def __init__(self, access: BusAccess, max_message_size: int, *, restricted: bool = False) -> None:
        self._access = access
        self._max_message_size = max_message_size
        self._restricted = restricted
        self._publisher: AsyncPublisher | None = None
        self._lock = asyncio.Lock()

    async def publish(
        self,
        instance: Instance,
        subtopic: str,
        type: str,
        data: dict[str, Any],
        *,
        corr: str | None,
        cause: str | None,
        trace: str | None,
        durable: bool,
    ) -> int:
        """Publish; return the publisher's sequence number on the topic, or with ``durable``
        the broker's. Raises as :meth:`AsyncPublisher.publish` and ``connect``."""
        async with self._lock:
            if self._publisher is None:
                publisher = self._access.publisher(restricted=self._restricted, max_message_size=self._max_message_size)
                await publisher.connect()  # closes itself when it fails: the next request tries afresh
                self._publisher = publisher
            return await self._publisher.publish(
                instance, subtopic, type, data, corr=corr, cause=cause, trace=trace, durable=durable
            )

    async def aclose(self) -> None:
        """Close the publisher, flushing what it queued (within its linger)."""
        async with self._lock:
            if self._publisher is not None:
                await self._publisher.aclose()
                self._publisher = None


PUBLISHER: Final = web.AppKey("publisher", SharedPublisher)
RESTRICTED_PUBLISHER: Final = web.AppKey("restricted_publisher", SharedPublisher)
"""The publisher of the restricted instances (connected on first use, to the class's frontend)."""


def install(app: web.Application) -> None:
    """Add the publish route to ``app``, with its shared publishers (closed on cleanup)."""
    app[PUBLISHER] = SharedPublisher(app[ACCESS], app[SETTINGS].max_message_size)
    app[RESTRICTED_PUBLISHER] = SharedPublisher(app[ACCESS], app[SETTINGS].max_message_size, restricted=True)
    app.add_routes(routes)
    app.cleanup_ctx.append(_lifetime)


async def _lifetime(app: web.Application) -> AsyncIterator[None]:
    yield
    # cleanup contexts end in reverse: this runs before the application's own closes the
    # context, whose termination would wait for the publisher's socket forever
    await app[PUBLISHER].aclose()
    await app[RESTRICTED_PUBLISHER].aclose()


class _Refused(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


async def _body(request: web.Request, limit: int) -> bytes:
    """The request body, at most ``limit`` bytes (else a 413 refusal)."""
    too_large = _Refused(413, "too_large", f"the body is over the broker's max message size of {limit} bytes")
    if request.content_length is not None and request.content_length > limit:
        raise too_large
    body = bytearray()
    while chunk := await request.content.read(_READ_CHUNK):
        body += chunk
        if len(body) > limit:
            raise too_large
    return bytes(body)


def _optional_str(fields: dict[str, Any], key: str) -> str | None:
    value = fields.get(key)
    if value is not None and not isinstance(value, str):
        raise _Refused(400, "bad_request", f"{key!r} must be a string or null, not {type(value).__name__}")
    return value


def _parse(raw: bytes) -> tuple[str, dict[str, Any], str | None, str | None, str | None]:
    """The type, data, corr, cause and trace of a publish body."""
    try:
        fields = json.loads(raw)
    except UnicodeDecodeError:
        raise _Refused(400, "bad_json", "the body is not UTF-8") from None
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno}, column {exc.colno}"
        raise _Refused(400, "bad_json", f"the body is not valid JSON: {exc.msg} ({where})") from None
    except RecursionError:
        raise _Refused(400, "bad_json", "the body nests too deep") from None
    if not isinstance(fields, dict):
        raise _Refused(400, "bad_request", f"the body must be a JSON object, not {type(fields).__name__}")
    unknown = sorted(set(fields) - BODY_KEYS)
    if unknown:
        raise _Refused(400, "bad_request", f"unknown key {unknown[0]!r} (expected {', '.join(sorted(BODY_KEYS))})")
    type_name = fields.get("type")
    if not isinstance(type_name, str) or not type_name:
        raise _Refused(400, "missing_type", 'the body needs "type": a message type such as "NodeHealth"')
    data = fields.get("data", {})
    if not isinstance(data, dict):
        raise _Refused(400, "bad_data", f'"data" must be a JSON object (a map), not {type(data).__name__}')
    corr, cause, trace = (_optional_str(fields, key) for key in ("corr", "cause", "trace"))
    return type_name, data, corr, cause, trace


def _check(instance: Instance, subtopic: str, type_name: str, data: dict[str, Any], limit: int, **ids: Any) -> None:
    """Refuse unless the message can be sent as given and a subscriber would accept it."""
    try:
        checked_data(type_name, data)
        encoder = Encoder(src="check", max_message_size=limit)
        topic = encoder.topic(instance, subtopic)
        body = encoder.encode(topic, type_name, data, **ids)
        Decoder().decode([topic, body])
    except ValidationError as exc:
        raise _Refused(400, "invalid_field", str(exc)) from None
    except MessageTooLargeError as exc:
        raise _Refused(413, "too_large", str(exc)) from None
    except ExesdbError as exc:
        raise _Refused(400, getattr(exc, "reason", "bad_request"), str(exc)) from None


@routes.post("/v1/publish/{instance}/{subtopic:.+}")
async def publish(request: web.Request) -> web.Response:
    """Publish the body's message on ``<instance>/<subtopic>``: 200 ``{"seq": n}`` (with
    ``?durable=true``: ``{"seq": <broker seq>, "durable": true}``), else a one-line JSON error."""
    counters: Counter[str] = request.app[COUNTERS]
    try:
        seq, durable = await _publish(request)
    except _Refused as refused:
        counters["http_publish_rejected"] += 1
        return json_error(refused.status, refused.code, refused.message)
    counters["http_publishes"] += 1
    return web.json_response({"seq": seq, "durable": True} if durable else {"seq": seq})


async def _publish(request: web.Request) -> tuple[int, bool]:
    unknown = sorted(set(request.query) - {"durable"})
    if unknown:
        raise _Refused(400, "bad_request", f"unknown query parameter {unknown[0]!r} (expected durable)")
    flag = request.query.get("durable", "false").lower()
    if flag not in _DURABLE:
        raise _Refused(400, "bad_request", f"durable must be true or false, not {flag[:20]!r}")
    durable = _DURABLE[flag]
    name = request.match_info["instance"]
    try:
        instance = Instance.resolve(name)
    except ExesdbError as exc:
        raise _Refused(404, "unknown_instance", str(exc)) from None
    restricted = instance in request.app[SETTINGS].restricted
    refusal = auth.instance_refusal(auth.request_roles(request), instance.value, restricted, publish=True)
    if refusal is None and restricted and not request.app[ACCESS].serves_restricted:
        refusal = f"{instance.value} is restricted and this HTTP surface does not know the class's endpoints"
    if refusal is not None:
        request.app[COUNTERS]["auth_forbidden"] += 1
        raise _Refused(403, "forbidden", refusal)
    subtopic = request.match_info["subtopic"]
    limit = request.app[SETTINGS].max_message_size
    type_name, data, corr, cause, trace = _parse(await _body(request, limit))
    _check(instance, subtopic, type_name, data, limit, corr=corr, cause=cause, trace=trace)
    try:
        publisher = request.app[RESTRICTED_PUBLISHER if restricted else PUBLISHER]
        seq = await publisher.publish(
            instance, subtopic, type_name, data, corr=corr, cause=cause, trace=trace, durable=durable
        )
    except DurabilityError as exc:
        raise _Refused(_REFUSED_STATUS.get(exc.code, 400), exc.code, exc.message) from None
    except ControlError as exc:  # the broker refused the durable publish: nothing was recorded or sent
        raise _Refused(_REFUSED_STATUS.get(exc.code, 502), exc.code, exc.message) from None
    except (BrokerUnavailableError, PublishTimeoutError) as exc:
        raise _Refused(503, "broker_unavailable", str(exc)) from None
    return seq, durable
