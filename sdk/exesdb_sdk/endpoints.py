"""Broker endpoints: defaults, environment variables and validation.

The same ``EXESDB_FRONTEND`` / ``EXESDB_BACKEND`` / ``EXESDB_CONTROL`` variables tell the
broker where to bind and the clients where to connect, as ``NATS_URL`` does for NATS.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Sequence
from typing import Final

from .errors import ConfigError

__all__ = [
    "DEFAULT_BACKEND",
    "DEFAULT_CONTROL",
    "DEFAULT_FRONTEND",
    "DEFAULT_RESTRICTED_BACKEND",
    "DEFAULT_RESTRICTED_FRONTEND",
    "ENV_BACKEND",
    "ENV_CONTROL",
    "ENV_FRONTEND",
    "Endpoints",
    "Rotation",
    "is_loopback",
    "resolve_endpoint",
    "resolve_endpoints",
    "validate_endpoint",
]

DEFAULT_FRONTEND: Final = "tcp://127.0.0.1:7100"
"""Where publishers connect (the broker's XSUB socket)."""
DEFAULT_BACKEND: Final = "tcp://127.0.0.1:7101"
"""Where subscribers connect (the broker's XPUB socket)."""
DEFAULT_CONTROL: Final = "tcp://127.0.0.1:7102"
"""Where control clients connect (the broker's ROUTER socket)."""
DEFAULT_RESTRICTED_FRONTEND: Final = "tcp://127.0.0.1:7103"
"""Where publishers of the restricted instances connect (their class's XSUB socket)."""
DEFAULT_RESTRICTED_BACKEND: Final = "tcp://127.0.0.1:7104"
"""Where subscribers of the restricted instances connect (their class's XPUB socket)."""

ENV_FRONTEND: Final = "EXESDB_FRONTEND"
ENV_BACKEND: Final = "EXESDB_BACKEND"
ENV_CONTROL: Final = "EXESDB_CONTROL"

_TRANSPORTS: Final = ("tcp", "ipc", "inproc")

Endpoints = str | Sequence[str]
"""One endpoint, several separated by commas, or a sequence of them (a client's brokers)."""


def validate_endpoint(url: str, what: str = "endpoint", *, bind: bool = False) -> str:
    """Check that ``url`` is a ZeroMQ endpoint this project supports; return it unchanged.

    Supported: ``tcp://HOST:PORT`` (HOST an IP literal, ``[IPv6]`` or ``localhost``;
    when binding, PORT may be ``*`` or ``0`` for an ephemeral port), ``ipc://PATH`` and
    ``inproc://NAME``. Raises :class:`~exesdb_sdk.errors.ConfigError` naming ``what``; for a
    host name it says whether the name resolves at all.
    """
    if not isinstance(url, str) or "://" not in url:
        raise ConfigError(f"{what}: {url!r} is not an endpoint URL (e.g. tcp://127.0.0.1:7100)")
    transport, _, address = url.partition("://")
    if transport not in _TRANSPORTS:
        raise ConfigError(f"{what}: transport {transport!r} in {url!r} is not one of tcp, ipc, inproc")
    if not address:
        raise ConfigError(f"{what}: {url!r} has no address")
    if transport != "tcp":
        return url
    host, sep, port = address.rpartition(":")
    if not sep or not host:
        raise ConfigError(f"{what}: {url!r} needs HOST:PORT")
    if bind and port in ("*", "0"):
        pass
    elif not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{what}: port {port!r} in {url!r} is not a number from 1 to 65535")
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if bare == "localhost" or (bind and bare == "*"):
        return url
    try:
        ipaddress.ip_address(bare)
    except ValueError:
        if not _resolves(bare):
            raise ConfigError(f"{what}: cannot resolve host {bare!r} in {url!r}") from None
        raise ConfigError(f"{what}: host {host!r} in {url!r} is not an IP address") from None
    return url


def _resolves(host: str) -> bool:
    """Whether ``host`` is a name the resolver knows (only asked when validation fails anyway)."""
    try:
        socket.getaddrinfo(host, None)
    except (OSError, UnicodeError):  # socket.gaierror is an OSError; an unencodable name a UnicodeError
        return False
    return True


def resolve_endpoint(explicit: str | None, env_var: str, default: str, what: str) -> str:
    """The endpoint to use: ``explicit``, else the environment variable, else ``default``; validated."""
    if explicit is not None:
        return validate_endpoint(explicit, what)
    from_env = os.environ.get(env_var)
    if from_env:
        return validate_endpoint(from_env, f"{what} (from {env_var})")
    return default


def resolve_endpoints(explicit: Endpoints | None, env_var: str, default: str, what: str) -> tuple[str, ...]:
    """The brokers a client may use, in order: ``explicit`` (a comma-separated string or a
    sequence), else the environment variable (comma-separated), else ``default``.

    Each is validated as by :func:`validate_endpoint`; an empty item or one given twice is a
    :class:`~exesdb_sdk.errors.ConfigError` naming ``what``.
    """
    if explicit is not None:
        source, items = what, _split(explicit, what)
    else:
        from_env = os.environ.get(env_var)
        if not from_env:
            return (default,)
        source = f"{what} (from {env_var})"
        items = _split(from_env, source)
    seen: set[str] = set()
    for index, item in enumerate(items, 1):
        if not item:
            raise ConfigError(f"{source}: endpoint {index} of {len(items)} is empty (a stray comma?)")
        validate_endpoint(item, source)
        if item in seen:
            raise ConfigError(f"{source}: {item!r} is given twice")
        seen.add(item)
    return tuple(items)


def _split(value: Endpoints, what: str) -> list[str]:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",")]
    if not isinstance(value, Sequence) or not all(isinstance(item, str) for item in value):
        raise ConfigError(f"{what}: {value!r} is neither an endpoint URL nor a list of them")
    items = [item.strip() for item in value]
    if not items:
        raise ConfigError(f"{what}: the list of endpoints is empty")
    return items


class Rotation:
    """A client's brokers, in order, and the one it is connected to now (one at a time)."""

    __slots__ = ("endpoints", "index")

    def __init__(self, endpoints: tuple[str, ...]) -> None:
        self.endpoints = endpoints
        self.index = 0

    @property
    def current(self) -> str:
        """The endpoint in use."""
        return self.endpoints[self.index]

    @property
    def several(self) -> bool:
        """Whether there is another broker to move to."""
        return len(self.endpoints) > 1

    def following(self) -> list[str]:
        """Every endpoint in the order a failover tries them: the next first (round robin),
        the current one last (it may have come back)."""
        count = len(self.endpoints)
        return [self.endpoints[(self.index + step) % count] for step in range(1, count + 1)]

    def describe(self) -> str:
        """The endpoints for an error message."""
        return " or ".join(self.endpoints)


def is_loopback(url: str) -> bool:
    """Whether ``url`` stays on this machine: loopback tcp, ipc or inproc."""
    transport, _, address = url.partition("://")
    if transport != "tcp":
        return True
    host = address.rpartition(":")[0]
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if bare == "localhost":
        return True
    try:
        return ipaddress.ip_address(bare).is_loopback
    except ValueError:
        return False
