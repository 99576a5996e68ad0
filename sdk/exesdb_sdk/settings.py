"""Layered settings: flags, then ``EXESDB_*`` environment variables, then a TOML file, then defaults.

A settings class is a frozen dataclass of ``str``, ``int``, ``float`` and ``bool`` fields. A
field may carry ``metadata={"check": fn}``, where ``fn(value)`` raises ``ValueError`` with a
short reason when the value is not acceptable. Errors are :class:`~exesdb_sdk.errors.ConfigError`
with one line that names the setting and where its value came from.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final, TypeVar

from .errors import ConfigError

__all__ = ["ENV_CONFIG", "check_settings", "load_settings", "one_of", "positive", "read_toml"]

ENV_CONFIG: Final = "EXESDB_CONFIG"
"""The environment variable naming the TOML file when no ``--config`` is given."""
ENV_PREFIX: Final = "EXESDB_"

T = TypeVar("T")

_TRUE: Final = frozenset({"1", "true", "yes", "on"})
_FALSE: Final = frozenset({"0", "false", "no", "off"})


def one_of(*choices: str) -> Callable[[Any], None]:
    """A check that the value is one of ``choices``."""

    def check(value: Any) -> None:
        if value not in choices:
            raise ValueError(f"{value!r} is not one of {', '.join(choices)}")

    return check


def positive(value: Any) -> None:
    """A check that a number is greater than zero."""
    if value <= 0:
        raise ValueError(f"{value!r} is not greater than zero")


def _coerce(kind: type, value: Any, where: str) -> Any:
    """Turn ``value`` (a TOML value, or a string from the environment) into ``kind``."""
    if isinstance(value, str) and kind is not str:
        text = value.strip()
        try:
            if kind is bool:
                if text.lower() in _TRUE:
                    return True
                if text.lower() in _FALSE:
                    return False
                raise ValueError
            return kind(text)
        except ValueError:
            raise ConfigError(f"{where}: {value!r} is not a valid {kind.__name__}") from None
    if kind is float and type(value) is int:
        return float(value)
    if type(value) is not kind:
        raise ConfigError(f"{where}: expected {kind.__name__}, got {type(value).__name__} {value!r}")
    return value


def _field_types(cls: type) -> dict[str, type]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def read_toml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The document of the TOML file at ``path``, read once (it may be a pipe); raises
    :class:`ConfigError` in one line naming the file."""
    path = Path(path)
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"config file {path}: not found") from None
    except OSError as exc:
        raise ConfigError(f"config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: invalid TOML: {exc}") from None
    except UnicodeDecodeError as exc:  # TOML is UTF-8; tomllib decodes before it parses
        raise ConfigError(
            f"config file {path}: invalid TOML: not UTF-8 (byte 0x{exc.object[exc.start]:02x} at offset {exc.start})"
        ) from None


def _table(document: Mapping[str, Any], path: Path, section: str) -> dict[str, Any]:
    table = document.get(section, {})
    if not isinstance(table, dict):
        raise ConfigError(f"config file {path}: [{section}] must be a table")
    return table


def _apply_check(cls: type, name: str, value: Any, where: str) -> None:
    check = next(f for f in dataclasses.fields(cls) if f.name == name).metadata.get("check")
    if check is not None:
        try:
            check(value)
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from None


def load_settings(
    cls: type[T],
    section: str,
    *,
    flags: Mapping[str, Any] | None = None,
    config_file: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    env_prefix: str = ENV_PREFIX,
    flag_prefix: str = "--",
    document: Mapping[str, Any] | None = None,
) -> T:
    """Build ``cls`` from flags > ``<env_prefix><NAME>`` variables > ``[section]`` of the TOML file
    > defaults. ``env_prefix`` is ``EXESDB_`` unless a component needs its own namespace, and
    ``flag_prefix`` (how errors name a flag) ``--`` unless its flags have a prefix of their own.

    ``flags`` maps field names to values; ``None`` values are ignored (not given). The file is
    ``config_file``, else ``$EXESDB_CONFIG``, else none; ``document``, when given, is that file
    already read (:func:`read_toml`), so that a caller reading other tables reads it only once.
    Unknown keys in the file are errors.
    """
    env = os.environ if env is None else env
    types = _field_types(cls)
    values: dict[str, Any] = {}

    path = config_file if config_file is not None else env.get(ENV_CONFIG) or None
    if path is not None:
        path = Path(path)
        table = _table(read_toml(path) if document is None else document, path, section)
        for key, value in table.items():
            where = f"config file {path}: [{section}] {key}"
            if key not in types:
                raise ConfigError(f"{where}: unknown setting (known: {', '.join(types)})")
            values[key] = (_coerce(types[key], value, where), where)

    for name, kind in types.items():
        var = env_prefix + name.upper()
        if env.get(var):
            values[name] = (_coerce(kind, env[var], var), var)

    for name, value in (flags or {}).items():
        if value is None:
            continue
        if name not in types:
            raise ConfigError(f"unknown setting {name!r}")
        where = flag_prefix + name.replace("_", "-")
        values[name] = (_coerce(types[name], value, where), where)

    for name, (value, where) in values.items():
        _apply_check(cls, name, value, where)
    return cls(**{name: value for name, (value, _) in values.items()})


def check_settings(settings: Any) -> None:
    """Run every field's check on a settings object built in code; raise :class:`ConfigError`."""
    cls = type(settings)
    for name, kind in _field_types(cls).items():
        value = getattr(settings, name)
        where = f"{cls.__name__}.{name}"
        if not (type(value) is kind or (kind is float and type(value) is int)):
            raise ConfigError(f"{where}: expected {kind.__name__}, got {type(value).__name__} {value!r}")
        _apply_check(cls, name, value, where)
