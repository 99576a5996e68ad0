"""``/v1/stream``: the bus as Server-Sent Events, one event per message, its ``data`` the object
``exesdb tail --json`` prints.

Query: ``instance`` (repeatable; a name or alias: the whole instance) and ``topic`` (repeatable;
``<instance>/<sub-topic prefix or glob>``); neither: every instance.
"""

from __future__ import annotations

import json

from aiohttp import web
from exesdb_sdk import Instance
from exesdb_sdk.errors import ExesdbError, ReceiveTimeoutError
from exesdb_sdk.jsonview import message_json

from .app import ACCESS

__all__ = ["routes", "stream_subscriptions"]

routes = web.RouteTableDef()

_KEEPALIVE = 15.0
"""Seconds of silence after which a comment line keeps proxies and browsers from timing out."""


def stream_subscriptions(query: web.Request) -> list[tuple[Instance | None, str]]:
    """The (instance, sub-topic pattern) pairs a stream request asks for; raises
    :class:`~aiohttp.web.HTTPBadRequest` naming a bad one."""
    wanted: list[tuple[Instance | None, str]] = []
    try:
        for name in query.query.getall("instance", []):
            wanted.append((Instance.resolve(name), ""))
        for topic in query.query.getall("topic", []):
            head, sep, rest = topic.partition("/")
            if not sep:
                raise ExesdbError(f"topic {topic!r} needs '<instance>/' before the sub-topic")
            wanted.append((Instance.resolve(head), rest))
    except ExesdbError as exc:
        raise web.HTTPBadRequest(text=str(exc)) from None
    return wanted or [(None, "")]


@routes.get("/v1/stream")
async def stream(request: web.Request) -> web.StreamResponse:
    """Live messages as they arrive, until the client goes away."""
    wanted = stream_subscriptions(request)
    subscriber = request.app[ACCESS].subscriber()
    try:
        for instance, prefix in wanted:
            await subscriber.subscribe(instance, prefix)
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        )
        await response.prepare(request)
        await response.write(b": exesdb stream\n\n")
        while True:
            try:
                message = await subscriber.recv(_KEEPALIVE)
            except ReceiveTimeoutError:
                await response.write(b": keepalive\n\n")
                continue
            data = json.dumps(message_json(message), ensure_ascii=False, separators=(",", ":"))
            await response.write(f"data: {data}\n\n".encode())
    finally:
        await subscriber.aclose()
