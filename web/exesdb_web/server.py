"""Serving the application from a thread of its own, with its own event loop: a supervised
child of the broker (``run`` until ``stop``), or the foreground of ``exesdb dashboard``."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
from typing import Final

from aiohttp import web
from exesdb_sdk.errors import BindError

from .access import BusAccess
from .app import WebSettings, create_app

__all__ = ["WebServer", "bind_socket", "http_url", "parse_listen"]

_SHUTDOWN_TIMEOUT: Final = 2.0
_OFF: Final = frozenset({"", "none"})


def http_url(host: str, port: int) -> str:
    """``http://host:port``, an IPv6 host in brackets."""
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: a free one), to hand to
    :class:`WebServer` so that a port in use is found before anything else starts. Raises
    :class:`BindError`."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
        return socket.create_server((host, port), family=family, backlog=128)
    except socket.gaierror as exc:
        raise BindError("http", f"{host}:{port}", exc.strerror or str(exc)) from None
    except OSError as exc:
        raise BindError("http", f"{host}:{port}", os.strerror(exc.errno) if exc.errno else str(exc)) from None


def parse_listen(value: str) -> tuple[str, int] | None:
    """``HOST:PORT`` as (host, port), IPv6 in brackets (``[::1]:7180``), port 0 for a free
    one; ``None`` for ``none`` (no HTTP surface). Raises :class:`ValueError` with a one-line
    reason."""
    text = value.strip()
    if text.lower() in _OFF:
        return None
    if "://" in text:
        raise ValueError(f"{value!r}: give HOST:PORT without a scheme (e.g. 127.0.0.1:7180), or none")
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f"{value!r} is not HOST:PORT (e.g. 127.0.0.1:7180, [::1]:7180), or none")
    if host.startswith("["):
        if not host.endswith("]") or len(host) < 3:
            raise ValueError(f"{value!r}: an IPv6 host goes in brackets, e.g. [::1]:7180")
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"{value!r}: an IPv6 host goes in brackets, e.g. [::1]:7180")
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{value!r}: the port must be a number from 0 to 65535")
    return host, int(port)


class WebServer:
    """Serves :func:`create_app` on ``host:port`` (port 0 picks a free one).

    :meth:`run` blocks, serving, until :meth:`stop`; :attr:`ready` is set once the port is
    bound (:attr:`url` then names it) or binding failed (:attr:`error`). With ``sock`` (from
    :func:`bind_socket`) the first run serves on it. :meth:`run` may be called again after it
    raised: it binds the same port afresh (and raises :class:`BindError` if it cannot).
    """

    name = "http"
    restartable = True

    def __init__(
        self,
        access: BusAccess,
        host: str,
        port: int,
        settings: WebSettings | None = None,
        *,
        sock: socket.socket | None = None,
    ) -> None:
        self.access = access
        self.host = host
        self.port = int(sock.getsockname()[1]) if sock is not None else port
        self._sock = sock
        self.settings = settings if settings is not None else WebSettings()
        self.ready = threading.Event()
        self.error: BindError | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._stop_requested = False

    @property
    def url(self) -> str:
        """``http://host:port`` as bound (IPv6 hosts in brackets)."""
        return http_url(self.host, self.port)

    def run(self) -> None:
        """Bind and serve until :meth:`stop`."""
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        if self._stop_requested:
            return
        runner = web.AppRunner(
            create_app(self.access, self.settings), handle_signals=False, shutdown_timeout=_SHUTDOWN_TIMEOUT
        )
        await runner.setup()
        try:
            sock, self._sock = self._sock, None
            site: web.BaseSite
            if sock is not None:
                site = web.SockSite(runner, sock)
            else:
                site = web.TCPSite(runner, self.host, self.port, reuse_address=True)
            try:
                await site.start()
            except OSError as exc:
                reason = os.strerror(exc.errno) if exc.errno else str(exc)
                error = BindError("http", f"{self.host}:{self.port}", reason)
                if self.ready.is_set():
                    raise error from None  # a restart: the supervisor counts it and tries again
                self.error = error
                self.ready.set()
                return
            server = site._server
            assert isinstance(server, asyncio.base_events.Server)
            bound = server.sockets[0].getsockname() if server.sockets else (self.host, self.port)
            self.port = int(bound[1])
            self.ready.set()
            await self._stopping.wait()
        finally:
            await runner.cleanup()

    def stop(self) -> None:
        """Stop serving (from any thread); open streams are closed. Idempotent."""
        self._stop_requested = True
        sock, self._sock = self._sock, None
        if sock is not None:  # never served: nobody else will close it
            sock.close()
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nothing left to stop
                loop.call_soon_threadsafe(stopping.set)
