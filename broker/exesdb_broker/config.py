"""The broker's settings: flags > ``EXESDB_*`` environment > ``[broker]`` in a TOML file > defaults."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from exesdb_sdk.endpoints import (
    DEFAULT_BACKEND,
    DEFAULT_CONTROL,
    DEFAULT_FRONTEND,
    validate_endpoint,
)
from exesdb_sdk.protocol import DEFAULT_MAX_MESSAGE_SIZE, default_node
from exesdb_sdk.settings import load_settings, one_of, positive

__all__ = ["LOG_FORMATS", "LOG_LEVELS", "BrokerConfig", "load_config"]

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


def _level(value: Any) -> None:
    one_of(*LOG_LEVELS)(str(value).lower())


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
    allow_insecure: bool = False
    """Allow binding a non-loopback address without CURVE (logged as a warning)."""


def load_config(
    flags: Mapping[str, Any] | None = None,
    *,
    config_file: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
) -> BrokerConfig:
    """Build the configuration from flags, environment, the TOML file and defaults, in that order."""
    return load_settings(BrokerConfig, "broker", flags=flags, config_file=config_file, env=env)
