"""``/healthz``: whether the broker serves, for liveness and readiness probes (no authentication).

200 ``{"status": "ok", ...}`` when it does; 503 ``{"status": "unavailable", "reason": ...}``
otherwise. A broker in a federation (``stats.federation``) that has no NATS server stays 200,
with ``"federation": "reconnecting"`` and a ``degraded`` reason. In the broker's process,
:attr:`BusAccess.health` says what only the process can see (the proxy forwarding, every
supervised thread alive, the journal usable or disabled on purpose); everywhere, the control
endpoint must answer, and its ``stats`` (when this client may read them) must show a usable
journal.
"""

from __future__ import annotations

from typing import Any, Final

from aiohttp import web
from exesdb_sdk.errors import BrokerUnavailableError, ControlError

from .app import ACCESS, BUS

__all__ = ["JOURNAL_SERVING", "health_reason", "routes"]

routes = web.RouteTableDef()

JOURNAL_SERVING: Final = frozenset({"ok", "disabled"})
"""Journal states in which the broker serves: working, or turned off by its configuration."""
_TIMEOUT: Final = 2.0


def health_reason(stats: dict[str, Any]) -> str | None:
    """Why a ``stats`` reply says the broker does not serve, or ``None``."""
    journal = stats.get("journal")
    if isinstance(journal, dict) and journal.get("state") not in JOURNAL_SERVING:
        why = journal.get("reason") or journal.get("last_error") or "no reason given"
        return f"journal {journal.get('state')}: {why}"
    return None


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    """200 when the broker serves, else 503 with the reason."""
    access, bus = request.app[ACCESS], request.app[BUS]
    reason = access.health() if access.health is not None else None
    if reason is not None:
        return _unavailable(reason)
    try:
        try:
            reply = await bus.request("stats", timeout=_TIMEOUT)
        except ControlError as exc:
            if exc.code != "forbidden":
                raise
            reply = await bus.request("ping", timeout=_TIMEOUT)  # this key may not read stats: alive is all we learn
    except BrokerUnavailableError:
        return _unavailable(f"the broker's control endpoint {access.control} does not answer")
    except ControlError as exc:
        return _unavailable(f"the broker's control endpoint answers {exc.code}: {exc.message}")
    reason = health_reason(reply)
    if reason is not None:
        return _unavailable(reason)
    body: dict[str, Any] = {"status": "ok", "node": reply.get("node"), "version": reply.get("version")}
    if "uptime" in reply:
        body["uptime"] = reply["uptime"]
        body["journal"] = reply.get("journal", {}).get("state")
        body["restarts"] = reply.get("restarts", {}).get("total", 0)
    federation = reply.get("federation")
    if isinstance(federation, dict) and federation.get("state") not in (None, "off"):
        # the broker serves its own clients whatever NATS does: degraded, not unavailable
        body["federation"] = federation["state"]
        jetstream = federation.get("jetstream")
        if federation["state"] != "connected":
            body["degraded"] = (
                f"federation {federation['state']}: {federation.get('last_error') or 'no NATS server yet'}"
            )
        elif isinstance(jetstream, dict) and jetstream.get("state") not in (None, "off", "ok"):
            body["degraded"] = f"federation jetstream {jetstream['state']}: {jetstream.get('last_error') or 'starting'}"
    return web.json_response(body)


def _unavailable(reason: str) -> web.Response:
    return web.json_response({"status": "unavailable", "reason": reason}, status=503)
