"""The broker's HTTP surface: :class:`exesdb_web.WebServer` as a supervised child, over the
broker's inproc endpoints and its own ZeroMQ context, with the bearer tokens of the
``http_token_*`` files. With a restricted class the surface reaches the class's pair over
its inproc binds too (``<base>-r-frontend``, ``<base>-r-backend``), and the tokens of
``http_token_restricted_*`` may use its instances.

With security on (``broker_key``) the surface needs tokens: a broker with security on, the
HTTP surface on and no token file refuses to start (one line naming ``http_token_admins`` and
``--http none``). Token files without security turn tokens on as well.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from typing import Any

import zmq
from exesdb_sdk.errors import ConfigError
from exesdb_web import BusAccess, WebServer, WebSettings
from exesdb_web.auth import RESTRICTED_ROLES, ROLES, Tokens, load_token_file
from exesdb_web.server import bind_socket

from .config import BrokerConfig, http_address, journal_instances

__all__ = ["HttpSurface", "load_tokens"]

log = logging.getLogger("exesdb.broker.http")


def _token_files(config: BrokerConfig) -> dict[str, str]:
    return {role: getattr(config, f"http_token_{role}") for role in ROLES}


def load_tokens(config: BrokerConfig) -> dict[str, frozenset[str]]:
    """The tokens of every ``http_token_*`` file given. Raises :class:`ConfigError` (one line)."""
    return {role: load_token_file(path, role) for role, path in _token_files(config).items() if path}


class HttpSurface:
    """Builds the ``http`` child from the configuration, and reloads its tokens."""

    def __init__(self, config: BrokerConfig, secure: bool) -> None:
        self.config = config
        self.address = http_address(config)
        files = _token_files(config)
        if self.address is not None and secure and not any(files.values()):
            raise ConfigError(
                "security is on (broker_key) but no HTTP token file is set: set http_token_admins (and "
                "http_token_subscribers, http_token_publishers, http_token_metrics as needed), or pass --http none"
            )
        self.restricted = frozenset(journal_instances(config.restricted))
        for role in RESTRICTED_ROLES:
            if files[role] and not self.restricted:
                raise ConfigError(f"http_token_{role} given without restricted: name the restricted instances")
        self.tokens = Tokens(load_tokens(config), required=secure or any(files.values()))
        self.server: WebServer | None = None
        self._sock: socket.socket | None = None

    def bind(self) -> None:
        """Bind the HTTP port now, before any thread starts (raises :class:`BindError`)."""
        if self.address is not None:
            self._sock = bind_socket(*self.address)

    def child(
        self, context: zmq.Context[Any], base: str, control: str, health: Callable[[], str | None]
    ) -> WebServer | None:
        """The supervised child serving the surface (``None`` when ``http`` is ``none``)."""
        if self.address is None:
            return None
        restricted = bool(self.restricted)
        access = BusAccess(
            frontend=base + "-frontend",
            backend=base + "-backend",
            control=control,
            context=context,
            health=health,
            restricted_frontend=base + "-r-frontend" if restricted else None,
            restricted_backend=base + "-r-backend" if restricted else None,
        )
        host, port = self.address
        sock, self._sock = self._sock, None
        self.server = WebServer(
            access,
            host,
            port,
            WebSettings(
                tokens=self.tokens,
                max_message_size=self.config.max_message_size,
                sse_max_rate=self.config.http_stream_rate,
                restricted=self.restricted,
            ),
            sock=sock,
        )
        if self.tokens.required:
            counts = " ".join(f"{role}={n}" for role, n in self.tokens.counts().items())
            log.info("http: bearer tokens required; tokens %s", counts)
        return self.server

    def close(self) -> None:
        """Release a port bound but never served (a start that failed part way)."""
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    @property
    def url(self) -> str | None:
        """The surface's URL once bound, or ``None`` when it is off."""
        return self.server.url if self.server is not None and self.server.ready.is_set() else None

    def reload(self) -> bool:
        """Re-read the token files; keep the old tokens on any error. Logs either way (counts
        only, never a token)."""
        if not self.tokens.required:
            return False
        try:
            fresh = load_tokens(self.config)
        except ConfigError as exc:
            log.error("http tokens not reloaded, the previous ones stay in force: %s", exc)
            return False
        before = self.tokens.counts()
        self.tokens.replace(fresh)
        after = self.tokens.counts()
        log.info("http tokens reloaded: %s", " ".join(f"{role}={after[role]} (was {before[role]})" for role in ROLES))
        return True
