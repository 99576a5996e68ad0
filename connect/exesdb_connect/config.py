"""The ``[[connectors]]`` tables of the broker's TOML file (the file of ``[broker]``).

Each table is one connector: the keys every connector has (:data:`COMMON_KEYS`) and its sink's
own options, which the sink's factory checks. Every mistake is a :class:`ConfigError` in one
line naming the connector and the key.
"""

from __future__ import annotations

import importlib
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Final

from exesdb_sdk.errors import ConfigError, ExesdbError
from exesdb_sdk.health import OVERFLOW_POLICIES, HealthConfig
from exesdb_sdk.instances import Instance
from exesdb_sdk.protocol import MAX_SUBTOPIC_BYTES
from exesdb_sdk.settings import read_toml

from .sink import Sink, SinkFactory, option

__all__ = [
    "COMMON_KEYS",
    "SINK_KINDS",
    "ConnectorConfig",
    "connectors_from",
    "load_connectors",
    "sink_factory",
]

SINK_KINDS: Final = ("webhook", "redis", "mqtt", "nats")
_EXTRAS: Final = {"redis": "redis", "mqtt": "mqtt", "nats": "nats", "webhook": "web"}
_NAME: Final = re.compile(r"[a-z0-9_-]{1,64}")
_HEALTH_KEYS: Final = (
    "unhealthy_threshold",
    "circuit_breaker_enabled",
    "overflow_policy",
    "delivery_timeout",
    "backoff_initial",
    "backoff_max",
    "check_interval",
    "metrics_interval",
)
COMMON_KEYS: Final = ("name", "sink", "instances", "topics", "buffer_size", "batch_size", "parked_max", *_HEALTH_KEYS)
"""Keys every connector has; every other key of its table goes to its sink."""
DEFAULT_BATCH: Final = 100
DEFAULT_PARKED_MAX: Final = 10_000


@dataclass(frozen=True, slots=True)
class ConnectorConfig:
    """One connector as configured."""

    name: str
    sink: str
    """The sink's kind: ``webhook``, ``redis``, ``mqtt``, ``nats``."""
    subscriptions: tuple[tuple[Instance, str], ...]
    """(instance, sub-topic prefix or glob) pairs; ``""`` is the whole instance."""
    batch_size: int = DEFAULT_BATCH
    parked_max: int = DEFAULT_PARKED_MAX
    """Parked messages kept for this connector; past it the oldest go (counted)."""
    health: HealthConfig = field(default_factory=HealthConfig)
    options: Mapping[str, Any] = field(default_factory=dict)
    """The sink's own options."""

    def make_sink(self) -> Sink:
        """A new sink from the options (checked again: a secret file may have changed)."""
        return sink_factory(self.name, self.sink)(self.name, self.options)


def sink_factory(connector: str, kind: str) -> SinkFactory:
    """``exesdb_connect.sinks.<kind>.create``, imported now; a missing client library is a
    one-line :class:`ConfigError` naming the extra to install."""
    if kind not in SINK_KINDS:
        raise ConfigError(f"connector {connector}: sink: unknown sink {kind!r} (expected {', '.join(SINK_KINDS)})")
    module_name = f"exesdb_connect.sinks.{kind}"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            raise ConfigError(f"connector {connector}: sink: the {kind} sink is not available in this build") from None
        raise ConfigError(
            f"connector {connector}: sink: the {kind} sink needs {exc.name}, which is not installed: "
            f"pip install 'exesdb-pubsub[{_EXTRAS[kind]}]'"
        ) from None
    create: SinkFactory = module.create
    return create


def _positive(value: Any) -> str | None:
    return None if value > 0 else "must be positive"


def _subscriptions(name: str, table: Mapping[str, Any]) -> tuple[tuple[Instance, str], ...]:
    instances = option(name, table, "instances", list, [])
    topics = option(name, table, "topics", list, [])
    wanted: list[tuple[Instance, str]] = []
    for item in instances:
        if not isinstance(item, str):
            raise ConfigError(f"connector {name}: instances: {item!r} is not an instance name")
        try:
            wanted.append((Instance.resolve(item), ""))
        except ExesdbError as exc:
            raise ConfigError(f"connector {name}: instances: {exc}") from None
    for item in topics:
        if not isinstance(item, str):
            raise ConfigError(f"connector {name}: topics: {item!r} is not a topic pattern")
        head, sep, rest = item.partition("/")
        if not sep or not head:
            raise ConfigError(f"connector {name}: topics: {item!r} needs '<instance>/' before the sub-topic")
        if len(rest.encode()) > MAX_SUBTOPIC_BYTES:
            raise ConfigError(f"connector {name}: topics: {item[:40]!r}...: sub-topic over {MAX_SUBTOPIC_BYTES} bytes")
        if rest.count("[") != rest.count("]"):
            raise ConfigError(f"connector {name}: topics: {item!r}: unbalanced [ ] in the glob")
        try:
            wanted.append((Instance.resolve(head), rest))
        except ExesdbError as exc:
            raise ConfigError(f"connector {name}: topics: {exc}") from None
    if not wanted:
        raise ConfigError(f"connector {name}: instances: give instances or topics (the connector would carry nothing)")
    return tuple(dict.fromkeys(wanted))


def _health(name: str, table: Mapping[str, Any]) -> HealthConfig:
    base = HealthConfig()
    values: dict[str, Any] = {}
    for key in _HEALTH_KEYS:
        if key in table:
            kind = type(getattr(base, key))
            if key == "overflow_policy":
                check = None if table[key] in OVERFLOW_POLICIES else (lambda v: f"expected one of {OVERFLOW_POLICIES}")
                values[key] = option(name, table, key, str, check=check)
            elif kind is bool:
                values[key] = option(name, table, key, bool)
            else:
                values[key] = option(name, table, key, int, check=_positive)
    values["buffer_size"] = option(name, table, "buffer_size", int, base.buffer_size, _positive)
    return replace(base, **values)


def connectors_from(document: Mapping[str, Any], where: str = "config file") -> list[ConnectorConfig]:
    """The connectors of a parsed TOML document (none without ``[[connectors]]``)."""
    tables = document.get("connectors", [])
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise ConfigError(f"{where}: connectors must be an array of tables ([[connectors]])")
    found: list[ConnectorConfig] = []
    names: set[str] = set()
    for index, table in enumerate(tables):
        name = table.get("name")
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ConfigError(
                f"connector #{index + 1}: name: expected 1 to 64 of [a-z0-9_-], not {name!r}"
                if name is not None
                else f"connector #{index + 1}: name is required"
            )
        if name in names:
            raise ConfigError(f"connector {name}: name: a connector of that name is configured already")
        names.add(name)
        kind = option(name, table, "sink", str)
        subscriptions = _subscriptions(name, table)
        batch = option(name, table, "batch_size", int, DEFAULT_BATCH, _positive)
        parked = option(name, table, "parked_max", int, DEFAULT_PARKED_MAX, _positive)
        health = _health(name, table)
        options = {key: value for key, value in table.items() if key not in COMMON_KEYS}
        config = ConnectorConfig(name, kind, subscriptions, batch, parked, health, options)
        factory = sink_factory(name, kind)
        factory(name, options)  # its own checks, at start: a bad URL is one line now, not a failure later
        found.append(config)
    return found


def load_connectors(path: str | os.PathLike[str] | None) -> list[ConnectorConfig]:
    """The connectors of the TOML file at ``path`` (none for ``None``)."""
    if path is None:
        return []
    return connectors_from(read_toml(path), f"config file {path}")


def names(configs: Sequence[ConnectorConfig]) -> list[str]:
    """The connectors' names, in order."""
    return [config.name for config in configs]
