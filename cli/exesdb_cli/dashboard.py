"""``exesdb dashboard``: the broker's HTTP surface, served from here for a remote broker.

The same application as inside the broker, a client of the bus over the broker's public
endpoints (with this client's CURVE keys when the broker wants them), in the foreground
until Ctrl-C.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Mapping
from typing import Final

from exesdb_sdk import ControlClient
from exesdb_sdk.classes import PrivilegeClass
from exesdb_sdk.curve import resolve_client_keys
from exesdb_sdk.endpoints import (
    DEFAULT_BACKEND,
    DEFAULT_CONTROL,
    DEFAULT_FRONTEND,
    ENV_BACKEND,
    ENV_CONTROL,
    ENV_FRONTEND,
    is_loopback,
    resolve_endpoints,
)
from exesdb_sdk.errors import BrokerUnavailableError, ConfigError, ExesdbError
from exesdb_web import BusAccess, WebServer, WebSettings
from exesdb_web.auth import Tokens, load_token_file
from exesdb_web.server import bind_socket, http_url, parse_listen

__all__ = ["run_dashboard"]

_BIND_TIMEOUT: Final = 10.0
_CLASSES_TIMEOUT: Final = 5.0
_STOP_TIMEOUT: Final = 5.0
_WAKE: Final = 0.5
"""Seconds between looks at the server thread while serving (Ctrl-C interrupts the wait)."""


def _classes(access: BusAccess) -> tuple[PrivilegeClass, ...]:
    """The broker's privilege classes, which the surface must serve as the broker does."""
    with ControlClient(
        access.control, client_key=access.client_key, server_key=access.server_key, timeout=_CLASSES_TIMEOUT
    ) as control:
        try:
            found: tuple[PrivilegeClass, ...] = control.classes()
        except BrokerUnavailableError:
            raise BrokerUnavailableError(
                access.control, _CLASSES_TIMEOUT, "broker control endpoint (asked for its privilege classes)"
            ) from None
    if len(found) > 1:
        raise ConfigError(f"the broker has {len(found)} privilege classes: the dashboard serves one at most")
    return found


def run_dashboard(
    *,
    frontend: str | None,
    backend: str | None,
    control: str | None,
    http: str,
    client_key: str | None,
    server_key: str | None,
    token_files: Mapping[str, str | None],
) -> int:
    """Serve until Ctrl-C (status 0); a bad setting or a port in use raises one line."""
    try:
        address = parse_listen(http)
    except ValueError as exc:
        raise ConfigError(f"--http {exc}") from None
    if address is None:
        raise ConfigError("--http none: there would be nothing to serve; give HOST:PORT")
    access = BusAccess(  # several brokers, comma-separated: each client fails over among them
        frontend=",".join(resolve_endpoints(frontend, ENV_FRONTEND, DEFAULT_FRONTEND, "frontend")),
        backend=",".join(resolve_endpoints(backend, ENV_BACKEND, DEFAULT_BACKEND, "backend")),
        control=",".join(resolve_endpoints(control, ENV_CONTROL, DEFAULT_CONTROL, "control")),
        client_key=client_key,
        server_key=server_key,
    )
    resolve_client_keys(client_key, server_key)  # a bad or half-given key: one line now, not per request
    tokens = {role: load_token_file(path, role) for role, path in token_files.items() if path}
    host, port = address
    if tokens == {} and not is_loopback(http_url(host, port).replace("http://", "tcp://")):
        raise ConfigError(
            f"--http {http} is not a loopback address: give --token-file-admins (and the other --token-file-* "
            "options as needed) so that only token holders can read the bus"
        )
    sock = bind_socket(host, port)  # a port in use is the first thing to say
    try:
        classes = _classes(access)
    except BaseException:
        sock.close()
        raise
    restricted = frozenset(instance for cls in classes for instance in cls.instances)
    if classes:
        access.restricted_frontend, access.restricted_backend = classes[0].frontend, classes[0].backend
    server = WebServer(access, host, port, WebSettings(tokens=Tokens(tokens), restricted=restricted), sock=sock)
    thread = threading.Thread(target=server.run, name="exesdb-dashboard", daemon=True)
    thread.start()
    if not server.ready.wait(_BIND_TIMEOUT):
        server.stop()
        raise ConfigError(f"--http {http}: the server did not start within {_BIND_TIMEOUT:g} s")
    if server.error is not None:
        raise server.error
    print(f"exesdb dashboard: serving {server.url}/ for the broker at {access.control}", file=sys.stderr, flush=True)
    interrupted = False
    try:
        while thread.is_alive():
            thread.join(_WAKE)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        server.stop()
        thread.join(_STOP_TIMEOUT)
    if not interrupted:
        raise ExesdbError(f"the HTTP server at {server.url} stopped unexpectedly")
    return 0
