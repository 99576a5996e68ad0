"""Bearer tokens: who may use which route of the HTTP surface.

With tokens configured (the broker's security on, or token files given to ``exesdb
dashboard``), every route but ``/healthz`` needs ``Authorization: Bearer <token>`` of a role
allowed for it (:func:`route_roles`): 401 with ``WWW-Authenticate`` when the token is missing
or unknown, 403 when its role does not fit. Browsers cannot send headers with
``EventSource``, so ``GET /?token=T`` with a valid token sets the HttpOnly, SameSite=Strict
cookie ``exesdb_token`` and redirects to ``/``; the cookie then counts as the bearer token.

The broker's restricted instances (``restricted``) have roles of their own: a restricted
instance is read by ``restricted_subscribers`` or ``admins`` and published by
``restricted_publishers`` or ``admins`` (:func:`read_roles`, :func:`write_roles`); the routes
check that per instance, once the middleware has let the request in and noted its roles
(:data:`REQUEST_ROLES`).

The policy (:class:`Tokens`, :func:`route_roles`, :func:`load_token_file`) knows nothing of
aiohttp; :func:`middleware` applies it to requests. Tokens are compared with
:func:`hmac.compare_digest` and never logged.
"""

from __future__ import annotations

import hmac
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from typing import Final

from aiohttp import web
from aiohttp.typedefs import Middleware
from exesdb_sdk.errors import ConfigError

__all__ = [
    "ADMINS",
    "COOKIE",
    "METRICS",
    "PUBLISHERS",
    "REQUEST_ROLES",
    "REQUEST_TOKEN",
    "RESTRICTED_PUBLISHERS",
    "RESTRICTED_ROLES",
    "RESTRICTED_SUBSCRIBERS",
    "ROLES",
    "SUBSCRIBERS",
    "Tokens",
    "instance_refusal",
    "load_token_file",
    "middleware",
    "read_roles",
    "request_roles",
    "request_token",
    "route_roles",
    "write_roles",
]

PUBLISHERS: Final = "publishers"
SUBSCRIBERS: Final = "subscribers"
ADMINS: Final = "admins"
METRICS: Final = "metrics"
RESTRICTED_PUBLISHERS: Final = "restricted_publishers"
RESTRICTED_SUBSCRIBERS: Final = "restricted_subscribers"
ROLES: Final = (PUBLISHERS, SUBSCRIBERS, ADMINS, METRICS, RESTRICTED_PUBLISHERS, RESTRICTED_SUBSCRIBERS)
RESTRICTED_ROLES: Final = (RESTRICTED_PUBLISHERS, RESTRICTED_SUBSCRIBERS)
"""The roles of the restricted class: meaningful only when the broker has one."""
COOKIE: Final = "exesdb_token"
MIN_TOKEN_LENGTH: Final = 16
"""Shorter tokens are refused when a file is read: a guessable token is no protection."""
_MAX_TOKEN_FILE: Final = 1024 * 1024

_READERS: Final = frozenset({SUBSCRIBERS, ADMINS})
_PUBLISHING: Final = frozenset({PUBLISHERS, ADMINS})
_RESTRICTED_READERS: Final = frozenset({RESTRICTED_SUBSCRIBERS, ADMINS})
_RESTRICTED_PUBLISHING: Final = frozenset({RESTRICTED_PUBLISHERS, ADMINS})
_STREAMING: Final = _READERS | _RESTRICTED_READERS
_ANY_PUBLISHING: Final = _PUBLISHING | _RESTRICTED_PUBLISHING
_SCRAPERS: Final = frozenset({METRICS, ADMINS})
_ADMINS_ONLY: Final = frozenset({ADMINS})


def route_roles(method: str, path: str) -> frozenset[str] | None:
    """The roles allowed for a request, or ``None`` for a route open to all (``/healthz``).

    Paths the application does not serve need ``admins``, so that probing without a token
    learns nothing of what exists (401, not 404). ``/v1/stream`` and ``/v1/publish`` let the
    restricted class's roles in too: the route then checks each instance (:func:`read_roles`).
    """
    if path == "/healthz":
        return None
    if path.startswith("/v1/publish/"):
        return _ANY_PUBLISHING
    if path == "/metrics":
        return _SCRAPERS
    if path == "/v1/stream":
        return _STREAMING
    if path in ("/", "/v1/stats") or path.startswith("/static/"):
        return _READERS
    return _ADMINS_ONLY


def read_roles(restricted: bool) -> frozenset[str]:
    """The roles that may stream an instance (``restricted``: of the restricted class)."""
    return _RESTRICTED_READERS if restricted else _READERS


def write_roles(restricted: bool) -> frozenset[str]:
    """The roles that may publish an instance (``restricted``: of the restricted class)."""
    return _RESTRICTED_PUBLISHING if restricted else _PUBLISHING


def instance_refusal(roles: frozenset[str] | None, instance: str, restricted: bool, *, publish: bool) -> str | None:
    """Why a token of ``roles`` may not stream (or ``publish``) ``instance``, else ``None``.

    ``roles`` ``None`` (no token required) may use every public instance and no restricted one:
    without tokens nobody holds the class's roles.
    """
    allowed = write_roles(restricted) if publish else read_roles(restricted)
    if roles is not None and roles & allowed:
        return None
    if roles is None and not restricted:
        return None
    what = "publishing" if publish else "streaming"
    head = f"{instance} is restricted" if restricted else instance
    needs = " or ".join(sorted(allowed))
    tail = ", and this HTTP surface has no tokens" if roles is None else ""
    return f"{head}: {what} it needs a token of the role {needs}{tail}"


REQUEST_ROLES: Final = "exesdb_roles"
"""The request key under which the middleware notes the roles of the request's token (absent
while tokens are not required: then nobody holds a restricted role)."""


REQUEST_TOKEN: Final = "exesdb_token"
"""The request key under which the middleware notes the request's token (to check it again
when the tokens are reloaded during a long request)."""


def request_roles(request: web.Request) -> frozenset[str] | None:
    """The roles of the request's token, or ``None`` when the surface requires no token."""
    roles: frozenset[str] | None = request.get(REQUEST_ROLES)
    return roles


def request_token(request: web.Request) -> str | None:
    """The request's token, or ``None`` when the surface requires no token."""
    token: str | None = request.get(REQUEST_TOKEN)
    return token


def load_token_file(path: str | Path, role: str) -> frozenset[str]:
    """The tokens of one file: one a line, blank lines and ``#`` comments ignored.

    Raises :class:`ConfigError` (one line, naming ``http_token_<role>`` and the line number,
    never the token) for a missing or unreadable file, or a token that is too short or holds
    whitespace or non-ASCII characters (it could not travel in a header).
    """
    what = f"http_token_{role} {path}"
    try:
        with open(path, "rb") as file:
            raw = file.read(_MAX_TOKEN_FILE + 1)
    except OSError as exc:
        raise ConfigError(f"{what}: {exc.strerror or exc}") from None
    if len(raw) > _MAX_TOKEN_FILE:
        raise ConfigError(f"{what}: larger than {_MAX_TOKEN_FILE} bytes: not a token file")
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise ConfigError(f"{what}: not ASCII text (tokens are printable ASCII, one a line)") from None
    found: set[str] = set()
    for number, line in enumerate(text.splitlines(), 1):
        token = line.strip()
        if not token or token.startswith("#"):
            continue
        if any(not char.isprintable() or char.isspace() for char in token):
            raise ConfigError(f"{what}: line {number}: a token must be one word of printable ASCII")
        if len(token) < MIN_TOKEN_LENGTH:
            raise ConfigError(f"{what}: line {number}: a token needs at least {MIN_TOKEN_LENGTH} characters")
        found.add(token)
    return frozenset(found)


class Tokens:
    """The bearer tokens accepted, per role. :meth:`replace` swaps them whole (one reference
    assignment, atomic under the GIL), so a request always sees one consistent set.

    ``required`` (default: whether any role has a token) turns authentication on: it stays
    on when a reload empties every file, so that an empty file locks out rather than opens.
    ``generation`` counts the replacements: a holder of a long-lived request (an SSE stream)
    compares it to see when to check its token again.
    """

    def __init__(self, by_role: Mapping[str, Iterable[str]] | None = None, *, required: bool | None = None) -> None:
        self._by_role = _frozen(by_role or {})
        self.required = any(self._by_role.values()) if required is None else required
        self.generation = 0

    def replace(self, by_role: Mapping[str, Iterable[str]]) -> None:
        """Put a fresh set of tokens in force (the broker's SIGHUP)."""
        self._by_role = _frozen(by_role)
        self.generation += 1

    def roles_of(self, token: str) -> frozenset[str]:
        """The roles of ``token`` (empty: unknown). Every known token is compared, in constant
        time each, so the time taken does not tell how much of a token was right."""
        given = token.encode("utf-8", "surrogateescape")
        roles = set()
        for role, tokens in self._by_role.items():
            for known in tokens:
                if hmac.compare_digest(given, known.encode()):
                    roles.add(role)
        return frozenset(roles)

    def counts(self) -> dict[str, int]:
        """Tokens per role (for the log and ``/v1/stats``; never the tokens themselves)."""
        return {role: len(self._by_role.get(role, ())) for role in ROLES}

    def __repr__(self) -> str:
        counts = " ".join(f"{role}={n}" for role, n in self.counts().items())
        return f"<Tokens required={self.required} {counts}>"


def _frozen(by_role: Mapping[str, Iterable[str]]) -> dict[str, frozenset[str]]:
    unknown = set(by_role) - set(ROLES)
    if unknown:
        raise ValueError(f"unknown HTTP role(s): {', '.join(sorted(unknown))} (known: {', '.join(ROLES)})")
    return {role: frozenset(by_role.get(role, ())) for role in ROLES}


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
ErrorResponse = Callable[[int, str, str], web.Response]


def middleware(tokens: Tokens, error: ErrorResponse, counters: Counter[str]) -> Middleware:
    """The aiohttp middleware enforcing ``tokens`` (a no-op while they are not required).

    ``error`` builds the application's one-line JSON error; refusals are counted in
    ``counters`` as ``auth_unauthorized`` and ``auth_forbidden``.
    """

    @web.middleware
    async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not tokens.required:
            return await handler(request)
        allowed = route_roles(request.method, request.path)
        if allowed is None:
            return await handler(request)
        if request.path == "/" and "token" in request.query:
            return _login(request.query["token"], tokens, error, counters)
        token, problem = _bearer(request)
        if token is None:
            return _unauthorized(error, counters, problem)
        roles = tokens.roles_of(token)
        if not roles:
            return _unauthorized(error, counters, "unknown token")
        if not roles & allowed:
            counters["auth_forbidden"] += 1
            needs = " or ".join(sorted(allowed))
            return error(403, "forbidden", f"{request.path} needs a token of the role {needs}")
        request[REQUEST_ROLES] = roles
        request[REQUEST_TOKEN] = token
        return await handler(request)

    return authenticate


def _bearer(request: web.Request) -> tuple[str | None, str]:
    """The request's token (Authorization header first, else the cookie) or why there is none."""
    header = request.headers.get("Authorization")
    if header is not None:
        scheme, _, token = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None, "the Authorization header must be 'Bearer <token>'"
        return token.strip(), ""
    cookie = request.cookies.get(COOKIE)
    if cookie:
        return cookie, ""
    return None, "this route needs 'Authorization: Bearer <token>' (or open /?token=<token> in a browser)"


def _unauthorized(error: ErrorResponse, counters: Counter[str], message: str) -> web.Response:
    counters["auth_unauthorized"] += 1
    response = error(401, "unauthorized", message)
    response.headers["WWW-Authenticate"] = 'Bearer realm="exesdb"'
    return response


def _login(token: str, tokens: Tokens, error: ErrorResponse, counters: Counter[str]) -> web.Response:
    """``/?token=T``: a valid token becomes the cookie, and the browser goes to ``/`` without it
    in the address (nor in its history)."""
    if not tokens.roles_of(token):
        return _unauthorized(error, counters, "unknown token")
    redirect = web.HTTPSeeOther(location="/")
    redirect.set_cookie(COOKIE, token, httponly=True, samesite="Strict", path="/")
    raise redirect
