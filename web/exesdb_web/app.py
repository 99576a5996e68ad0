"""The aiohttp application: its routes, one-line JSON errors, and the shared control client."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from aiohttp import web
from exesdb_sdk import AsyncControlClient
from exesdb_sdk.errors import BrokerUnavailableError, ControlError, ExesdbError
from exesdb_sdk.instances import Instance
from exesdb_sdk.protocol import DEFAULT_MAX_MESSAGE_SIZE

from . import auth
from .access import BusAccess

__all__ = ["ACCESS", "BUS", "COUNTERS", "SETTINGS", "Bus", "WebSettings", "create_app", "json_error"]


@dataclass(frozen=True, slots=True)
class WebSettings:
    """What the HTTP application needs besides the way to the broker."""

    tokens: auth.Tokens = field(default_factory=auth.Tokens)
    """Bearer tokens accepted per role (``publishers``, ``subscribers``, ``admins``, ``metrics``,
    ``restricted_publishers``, ``restricted_subscribers``);
    none: no authentication (security off). Replaced in place on reload (see :mod:`.auth`)."""
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    """The broker's limit: a ``POST /v1/publish`` body or message over it is refused (413)."""
    sse_queue: int = 1000
    """Messages a ``/v1/stream`` subscriber queues (its RCVHWM); beyond, the broker drops for it."""
    sse_max_rate: int = 2000
    """Events a second one stream delivers at most, on average (``?max_rate=`` may ask for fewer;
    0: no limit). Past it the stream stops reading and the broker sheds for it in C (the client
    gets ``event: gap``): a fast bus costs the HTTP thread, and the broker's cores, no more."""
    sse_write_timeout: float = 10.0
    """Seconds a stream's write may stay blocked (the client stopped reading) before it is cut off."""
    sse_keepalive: float = 15.0
    """Seconds of silence after which a stream sends a comment (and looks for journal gap markers)."""
    restricted: frozenset[Instance] = frozenset()
    """The broker's restricted instances: streamed only for ``restricted_subscribers`` (or
    ``admins``) from the restricted backend, published only by ``restricted_publishers`` (or
    ``admins``) to the restricted frontend (see :func:`.auth.instance_refusal`); refused (403)
    when the :class:`BusAccess` has no restricted endpoints."""


class Bus:
    """The application's one control client, shared by every request (one request at a time:
    a DEALER socket matches replies to the latest request only)."""

    def __init__(self, access: BusAccess) -> None:
        self.access = access
        self._control: AsyncControlClient | None = None
        self._lock = asyncio.Lock()

    async def request(self, op: str, args: Mapping[str, Any] | None = None, timeout: float = 2.0) -> dict[str, Any]:
        """A control request's reply; raises as :meth:`AsyncControlClient.request`."""
        async with self._lock:
            if self._control is None:
                self._control = self.access.control_client(timeout=timeout)
            try:
                return await self._control.request(op, args, timeout=timeout)
            except BrokerUnavailableError:
                # a late reply must not be read as the next request's: start afresh
                await self._control.aclose()
                self._control = None
                raise

    async def aclose(self) -> None:
        if self._control is not None:
            await self._control.aclose()
            self._control = None


ACCESS: Final = web.AppKey("access", BusAccess)
SETTINGS: Final = web.AppKey("settings", WebSettings)
BUS: Final = web.AppKey("bus", Bus)
COUNTERS: Final = web.AppKey("counters", Counter[str])
"""The application's own counters (``sse_events``, ``sse_gaps``...): in ``/v1/stats`` under
``http`` and in ``/metrics`` as ``exesdb_http_<name>``."""


def json_error(status: int, code: str, message: str) -> web.Response:
    """The one error shape of every route: ``{"error": {"code": ..., "message": ...}}`` on one line."""
    body = json.dumps({"error": {"code": code, "message": message}}, ensure_ascii=False)
    return web.Response(status=status, text=body + "\n", content_type="application/json")


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure as a one-line JSON error: never a traceback page."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return json_error(exc.status, exc.reason.lower().replace(" ", "_"), exc.text or exc.reason)
    except BrokerUnavailableError as exc:
        return json_error(503, "broker_unavailable", str(exc))
    except ControlError as exc:
        return json_error(502, exc.code, exc.message)
    except ExesdbError as exc:
        return json_error(400, "bad_request", str(exc))


def create_app(access: BusAccess, settings: WebSettings | None = None) -> web.Application:
    """The application for one broker."""
    from . import api, dashboard, health, metrics, publish, stream  # the route modules, each one concern

    settings = settings if settings is not None else WebSettings()
    counters: Counter[str] = Counter()
    app = web.Application(middlewares=[_errors, auth.middleware(settings.tokens, json_error, counters)])
    app[ACCESS] = access
    app[SETTINGS] = settings
    app[BUS] = Bus(access)
    app[COUNTERS] = counters
    app.cleanup_ctx.append(_lifetime)
    app.add_routes(health.routes)
    app.add_routes(metrics.routes)
    app.add_routes(api.routes)
    stream.install(app)
    publish.install(app)
    app.add_routes(dashboard.routes)
    return app


async def _lifetime(app: web.Application) -> AsyncIterator[None]:
    yield
    await app[BUS].aclose()
    app[ACCESS].close()
