"""The live dashboard: ``/`` (one page) and ``/static/{name}`` (its script, style sheet and icon).

The page has no build step and loads nothing from elsewhere: its assets ship in this package and
are read once, at the first request. It is live over ``/v1/stream`` and polls ``/v1/stats``.
"""

from __future__ import annotations

import functools
import re
from importlib import resources
from typing import Final

from aiohttp import web

__all__ = ["ASSETS", "routes"]

routes = web.RouteTableDef()

_TYPES: Final = {
    ".html": "text/html",
    ".js": "text/javascript",
    ".css": "text/css",
    ".svg": "image/svg+xml",
}
ASSETS: Final = frozenset({"dashboard.js", "dashboard.css", "favicon.svg"})
"""The files ``/static/{name}`` serves: these and nothing else (no path is ever joined from a request)."""
_NAME: Final = re.compile(r"[a-z0-9_-]{1,64}\.[a-z]{1,8}")

# The page takes nothing from the bus as markup (the script sets textContent only); this policy
# is the second line: no inline script, no foreign origin, no frames.
_HEADERS: Final = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


@functools.cache
def _asset(name: str) -> bytes:
    return resources.files(__package__).joinpath("static", name).read_bytes()


def _serve(name: str) -> web.Response:
    suffix = name[name.rfind(".") :]
    return web.Response(body=_asset(name), content_type=_TYPES[suffix], charset="utf-8", headers=_HEADERS)


@routes.get("/")
async def page(request: web.Request) -> web.Response:
    """The dashboard page."""
    return _serve("index.html")


@routes.get("/static/{name}")
async def static(request: web.Request) -> web.Response:
    """One of :data:`ASSETS`; 404 for any other name."""
    name = request.match_info["name"]
    if name not in ASSETS:
        shown = name if _NAME.fullmatch(name) else "that name"
        raise web.HTTPNotFound(text=f"no static file {shown}: the dashboard has {', '.join(sorted(ASSETS))}")
    return _serve(name)
