"""The broker's settings: flags > ``EXESDB_*`` environment > ``[broker]`` in a TOML file > defaults."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from exesdb_sdk.endpoints import (
    DEFAULT_BACKEND,
    DEFAULT_CONTROL,
    DEFAULT_FRONTEND,
    DEFAULT_RESTRICTED_BACKEND,
    DEFAULT_RESTRICTED_FRONTEND,
    validate_endpoint,
)
from exesdb_sdk.errors import ExesdbError
from exesdb_sdk.instances import Instance
from exesdb_sdk.protocol import DEFAULT_MAX_MESSAGE_SIZE, default_node
from exesdb_sdk.settings import load_settings, one_of, positive
from exesdb_web.server import parse_listen

from .journal import DEFAULT_JOURNAL_BUFFER
from .store import FSYNC_POLICIES
from .supervisor import DEFAULT_MAX_RESTARTS, DEFAULT_RESTART_PERIOD

__all__ = [
    "DEFAULT_HTTP",
    "DEFAULT_JOURNAL",
    "DEFAULT_LAST_VALUES",
    "LOG_FORMATS",
    "LOG_LEVELS",
    "BrokerConfig",
    "FederationConfig",
    "default_data_dir",
    "http_address",
    "journal_instances",
    "last_value_prefixes",
    "load_config",
    "load_federation",
    "nats_urls",
]

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
LOG_FORMATS = ("text", "json")


def _bind_url(value: Any) -> None:
    try:
        validate_endpoint(value, "endpoint", bind=True)
    except ValueError as exc:
        raise ValueError(str(exc).removeprefix("endpoint: ")) from None


def _file(value: Any) -> None:
    if value and not Path(value).is_file():
        raise ValueError(f"{value}: no such file")


def _directory(value: Any) -> None:
    if value and not Path(value).is_dir():
        raise ValueError(f"{value}: no such directory")


def _http(value: Any) -> None:
    parse_listen(str(value))


def _level(value: Any) -> None:
    one_of(*LOG_LEVELS)(str(value).lower())


DEFAULT_JOURNAL = "ex_esdb_alerts,ex_esdb_audit"
DEFAULT_LAST_VALUES = "ex_esdb_health/health_summary:,ex_esdb_health/node_health:,ex_esdb_health/cluster_health"
_NONE = ("", "none")
DEFAULT_HTTP = "127.0.0.1:7180"


def default_data_dir() -> str:
    """``$XDG_STATE_HOME/exesdb``, else ``~/.local/state/exesdb``."""
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(state, "exesdb")


def _items(value: str) -> list[str]:
    return [] if value.strip().lower() in _NONE else [item.strip() for item in value.split(",") if item.strip()]


def http_address(config: BrokerConfig) -> tuple[str, int] | None:
    """The (host, port) the HTTP surface binds, or ``None`` when it is off."""
    return parse_listen(config.http)


def journal_instances(value: str) -> tuple[Instance, ...]:
    """The instances named in a ``journal`` setting (comma-separated names or aliases; ``none``)."""
    found: list[Instance] = []
    for item in _items(value):
        try:
            instance = Instance.resolve(item)
        except ExesdbError as exc:
            raise ValueError(str(exc)) from None
        if instance not in found:
            found.append(instance)
    return tuple(found)


def last_value_prefixes(value: str) -> tuple[bytes, ...]:
    """The topic prefixes of a ``last_values`` setting (``<instance>/<subtopic prefix>``, comma-separated)."""
    found: list[bytes] = []
    for item in _items(value):
        head, sep, rest = item.partition("/")
        try:
            instance = Instance.resolve(head)
        except ExesdbError:
            raise ValueError(f"{item!r} does not start with an instance and '/'") from None
        if not sep:
            raise ValueError(f"{item!r} needs '/' after the instance")
        found.append((instance.prefix + rest).encode())
    return tuple(found)


def _not_negative(value: Any) -> None:
    if value < 0:
        raise ValueError(f"{value!r} is below zero")


def _data_dir(value: Any) -> None:
    if not str(value).strip():
        raise ValueError("must not be empty")


@dataclass(frozen=True, slots=True)
class BrokerConfig:
    """Everything an ``exesdb-broker`` needs. Each field is also a flag (``--max-message-size``),
    an environment variable (``EXESDB_MAX_MESSAGE_SIZE``) and a key of ``[broker]`` in the file."""

    frontend: str = field(default=DEFAULT_FRONTEND, metadata={"check": _bind_url})
    """XSUB endpoint publishers connect to. ``tcp://127.0.0.1:*`` picks a free port."""
    backend: str = field(default=DEFAULT_BACKEND, metadata={"check": _bind_url})
    """XPUB endpoint subscribers connect to."""
    control: str = field(default=DEFAULT_CONTROL, metadata={"check": _bind_url})
    """ROUTER endpoint for control requests."""
    log_level: str = field(default="info", metadata={"check": _level})
    log_format: str = field(default="text", metadata={"check": one_of(*LOG_FORMATS)})
    max_message_size: int = field(default=DEFAULT_MAX_MESSAGE_SIZE, metadata={"check": positive})
    """Largest accepted frame in bytes; a publisher that sends more is disconnected."""
    hwm: int = field(default=10_000, metadata={"check": positive})
    """Messages queued per connection (publisher inbound, subscriber outbound)."""
    metrics_interval: float = field(default=5.0, metadata={"check": positive})
    """Seconds between the broker's own metrics on ``ex_esdb_metrics/broker``."""
    node: str = field(default_factory=default_node)
    """The ``src`` of the broker's own messages."""
    broker_key: str = field(default="", metadata={"check": _file})
    """The broker's secret key file (``exesdb keygen``); setting it turns security (CURVE) on."""
    allow_publishers: str = field(default="", metadata={"check": _directory})
    """Directory of public key files (``*.key``) allowed to publish (the frontend)."""
    allow_subscribers: str = field(default="", metadata={"check": _directory})
    """Directory of public key files allowed to subscribe (the backend)."""
    allow_admins: str = field(default="", metadata={"check": _directory})
    """Directory of public key files allowed every control op."""
    restricted: str = field(default="", metadata={"check": journal_instances})
    """Instances of the restricted class (comma-separated names or aliases, e.g. ``security,audit``;
    empty or ``none``: no class). They travel only through the class's own endpoints."""
    restricted_frontend: str = field(default=DEFAULT_RESTRICTED_FRONTEND, metadata={"check": _bind_url})
    """XSUB endpoint publishers of the restricted instances connect to."""
    restricted_backend: str = field(default=DEFAULT_RESTRICTED_BACKEND, metadata={"check": _bind_url})
    """XPUB endpoint subscribers of the restricted instances connect to."""
    allow_restricted_publishers: str = field(default="", metadata={"check": _directory})
    """Directory of public key files allowed to publish restricted instances (their frontend)."""
    allow_restricted_subscribers: str = field(default="", metadata={"check": _directory})
    """Directory of public key files allowed to read restricted instances (their backend, replay, last)."""
    allow_insecure: bool = False
    """Allow binding a non-loopback address without CURVE (logged as a warning)."""
    data_dir: str = field(default_factory=default_data_dir, metadata={"check": _data_dir})
    """Directory of the journal (``journal.db``); created when missing. One broker per directory."""
    journal: str = field(default=DEFAULT_JOURNAL, metadata={"check": journal_instances})
    """Instances whose every message is recorded (comma-separated; ``none`` for none)."""
    journal_max_age: float = field(default=7 * 86_400.0, metadata={"check": _not_negative})
    """Seconds a journal record is kept (0: no age limit)."""
    journal_max_records: int = field(default=1_000_000, metadata={"check": _not_negative})
    """Records kept per journaled instance (0: no count limit)."""
    journal_fsync: str = field(default="durable", metadata={"check": one_of(*FSYNC_POLICIES)})
    """``durable``: fsync before acknowledging a durable publish; ``always``: every commit; ``never``."""
    last_values: str = field(default=DEFAULT_LAST_VALUES, metadata={"check": last_value_prefixes})
    """Topic prefixes whose last message per topic the broker keeps (comma-separated; ``none``)."""
    journal_buffer: int = field(default=DEFAULT_JOURNAL_BUFFER, metadata={"check": positive})
    """Bytes of input the journal holds before it sheds (counted, and marked in the journal)."""
    max_restarts: int = field(default=DEFAULT_MAX_RESTARTS, metadata={"check": _not_negative})
    """Thread restarts allowed within ``restart_period`` before the broker gives up and exits 1."""
    restart_period: float = field(default=DEFAULT_RESTART_PERIOD, metadata={"check": positive})
    """Seconds over which ``max_restarts`` counts."""
    http: str = field(default=DEFAULT_HTTP, metadata={"check": _http})
    """``HOST:PORT`` of the HTTP surface (health, metrics, stats, stream, publish, dashboard);
    IPv6 as ``[::1]:7180``, port 0 picks a free one, ``none`` turns it off."""
    http_token_publishers: str = field(default="", metadata={"check": _file})
    """File of bearer tokens (one a line) allowed to ``POST /v1/publish``."""
    http_token_subscribers: str = field(default="", metadata={"check": _file})
    """File of bearer tokens allowed the dashboard, ``/v1/stream`` and ``/v1/stats``."""
    http_token_admins: str = field(default="", metadata={"check": _file})
    """File of bearer tokens allowed every HTTP route."""
    http_token_metrics: str = field(default="", metadata={"check": _file})
    """File of bearer tokens allowed ``/metrics`` (a scraper's)."""
    http_token_restricted_publishers: str = field(default="", metadata={"check": _file})
    """File of bearer tokens allowed ``POST /v1/publish`` of the restricted instances (needs ``restricted``)."""
    http_token_restricted_subscribers: str = field(default="", metadata={"check": _file})
    """File of bearer tokens allowed ``/v1/stream`` of the restricted instances (needs ``restricted``)."""
    http_stream_rate: int = field(default=2000, metadata={"check": _not_negative})
    """Events a second one ``/v1/stream`` delivers at most (past it the broker sheds for that
    stream, counted as its gaps; 0: no limit)."""
    start_grace: float = field(default=1.0, metadata={"check": _not_negative})
    """Seconds at most between binding and forwarding, so that subscribers are back after a restart
    before publishers flush what they queued (ends early once connections are quiet; 0: off)."""


def load_config(
    flags: Mapping[str, Any] | None = None,
    *,
    config_file: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    document: Mapping[str, Any] | None = None,
) -> BrokerConfig:
    """Build the configuration from flags, environment, the TOML file and defaults, in that order
    (``document``: the file already read, see :func:`exesdb_sdk.settings.load_settings`)."""
    return load_settings(BrokerConfig, "broker", flags=flags, config_file=config_file, env=env, document=document)


def nats_urls(value: str) -> tuple[str, ...]:
    """The ``nats://host:port`` URLs of a ``nats`` setting (comma-separated; empty: none)."""
    urls: list[str] = []
    for item in _items(value):
        try:
            parts = urlsplit(item)
            port = parts.port
        except ValueError as exc:
            raise ValueError(f"{item!r} is not a URL ({exc})") from None
        if parts.scheme != "nats" or not parts.hostname:
            raise ValueError(f"{item!r} must be nats://host:port")
        if parts.username is not None or parts.password is not None:
            raise ValueError("credentials do not belong in the URL: use user and password_file, or token_file")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ValueError(f"{item!r} must be nats://host:port, with no path or query")
        if port == 0:
            raise ValueError(f"{item!r}: port 0 is not a port to connect to")
        urls.append(item)
    return tuple(urls)


def _replicas(value: Any) -> None:
    if not 0 <= int(value) <= 5:
        raise ValueError(f"must be 0 (one per NATS URL, at most 3) to 5, not {value!r}")


def _federation_instances(value: Any) -> None:
    if str(value).strip().lower() not in (FEDERATION_ALL, FEDERATION_LIVE):
        journal_instances(str(value))


FEDERATION_ALL = "all"
"""The default of ``exports`` and ``imports``: every instance (journaled ones through JetStream)."""
FEDERATION_LIVE = "live"
"""Every instance the broker does not journal (core NATS only)."""


@dataclass(frozen=True, slots=True)
class FederationConfig:
    """``[federation]``: the broker's bridge to other brokers through core NATS (see
    :mod:`.federation`). Each field is also a flag (``--federation-nats``), an environment
    variable (``EXESDB_FEDERATION_NATS``) and a key of ``[federation]`` in the file."""

    nats: str = field(default="", metadata={"check": nats_urls})
    """NATS servers, comma-separated ``nats://host:port``; empty turns the federation off."""
    exports: str = field(default=FEDERATION_ALL, metadata={"check": _federation_instances})
    """Instances published to NATS (comma-separated; ``all``; ``live``: every instance not journaled; ``none``).
    The instances this broker journals go through JetStream, the others through core NATS."""
    imports: str = field(default=FEDERATION_ALL, metadata={"check": _federation_instances})
    """Instances taken from NATS into this broker (same forms as ``exports``)."""
    name: str = ""
    """This broker's name in the federation (the origin of what it exports) [default: its node]."""
    user: str = ""
    """NATS user (with ``password_file``)."""
    password_file: str = field(default="", metadata={"check": _file})
    """File holding the NATS password (first line)."""
    token_file: str = field(default="", metadata={"check": _file})
    """File holding a NATS token (instead of user and password)."""
    replicas: int = field(default=0, metadata={"check": _replicas})
    """Replicas of each JetStream stream it creates (1 to 5; 0: one per NATS URL given, at most 3)."""
    stream_max_bytes: int = field(default=1 << 30, metadata={"check": positive})
    """Bytes each JetStream stream keeps at most (the oldest messages go first)."""


def load_federation(
    flags: Mapping[str, Any] | None = None,
    *,
    config_file: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    document: Mapping[str, Any] | None = None,
) -> FederationConfig:
    """``[federation]`` from flags, ``EXESDB_FEDERATION_*`` variables, the TOML file and defaults."""
    return load_settings(
        FederationConfig,
        "federation",
        flags=flags,
        config_file=config_file,
        env=env,
        env_prefix="EXESDB_FEDERATION_",
        flag_prefix="--federation-",
        document=document,
    )
