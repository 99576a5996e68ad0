"""``/v1/stats``: the broker's control ``stats`` map as JSON."""

from __future__ import annotations

from aiohttp import web

from .app import BUS, COUNTERS

__all__ = ["routes"]

routes = web.RouteTableDef()


@routes.get("/v1/stats")
async def stats(request: web.Request) -> web.Response:
    """The control ``stats`` reply, without the protocol's ``ok`` and ``id``, and the HTTP
    surface's own counters under ``http``."""
    reply = await request.app[BUS].request("stats")
    reply.pop("ok", None)
    reply.pop("id", None)
    reply["http"] = dict(sorted(request.app[COUNTERS].items()))
    return web.json_response(reply)
