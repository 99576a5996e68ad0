"""The base of every typed message: validation, the registry, default sub-topics.

A payload class is a ``msgspec.Struct`` (slots, keyword-only fields) that is the ``data``
of an envelope. It belongs to one instance and has a default sub-topic, a template that may
name its own fields (``"store_health:{store}"``). Constructing one checks every field's type
and enumerated values and raises :class:`~exesdb_sdk.errors.ValidationError` naming the
message type and the field. Rebuilding one from received data ignores unknown keys and gives
missing optional keys their defaults.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Final, Literal, TypeVar

import msgspec

from ..errors import ValidationError
from ..instances import Instance

__all__ = ["Payload", "lookup", "payload_types", "registry"]

P = TypeVar("P", bound="Payload")

Check = Callable[[Any], str | None]
"""Returns why a value is not acceptable, or None."""

_REGISTRY: dict[str, type[Payload]] = {}
_CHECKS: dict[type[Payload], tuple[tuple[str, Check], ...]] = {}
_NONE: Final = type(None)


def _type_name(kind: Any) -> str:
    return getattr(kind, "__name__", str(kind))


def _compile(annotation: Any) -> Check:
    """A check for the field types the catalogue uses: scalars, Literal, dict, list, unions."""
    origin = typing.get_origin(annotation)
    if annotation is Any:
        return lambda value: None
    if origin is Literal:
        choices = typing.get_args(annotation)
        listed = ", ".join(str(c) for c in choices)
        return lambda value: None if value in choices else f"{value!r} is not one of {listed}"
    if origin in (types.UnionType, typing.Union):
        checks = [_compile(arg) for arg in typing.get_args(annotation)]

        def union(value: Any) -> str | None:
            reasons = [check(value) for check in checks]
            return None if None in reasons else " or ".join(r for r in reasons if r)

        return union
    if annotation is _NONE or annotation is None:
        return lambda value: None if value is None else f"expected None, got {type(value).__name__}"
    kind = origin or annotation
    args = typing.get_args(annotation)
    if kind is list and args and args[0] is not Any:
        item = _compile(args[0])

        def items(value: Any) -> str | None:
            if not isinstance(value, list):
                return f"expected list, got {type(value).__name__}"
            for index, element in enumerate(value):
                reason = item(element)
                if reason is not None:
                    return f"item {index}: {reason}"
            return None

        return items
    if kind is dict and args and args != (str, Any):
        key, val = _compile(args[0]), _compile(args[1])

        def entries(value: Any) -> str | None:
            if not isinstance(value, dict):
                return f"expected dict, got {type(value).__name__}"
            for k, v in value.items():
                reason = key(k) or val(v)
                if reason is not None:
                    return f"entry {k!r}: {reason}"
            return None

        return entries
    if kind is dict:  # dict[str, Any]: keys must be strings, values anything
        return lambda value: (
            None
            if isinstance(value, dict) and all(type(k) is str for k in value)
            else f"expected a dict with string keys, got {type(value).__name__}"
        )
    if kind is float:
        accepted: tuple[type, ...] = (float, int)
    else:
        accepted = (kind,)
    name = _type_name(kind)

    def scalar(value: Any) -> str | None:
        if isinstance(value, accepted) and not (isinstance(value, bool) and kind is not bool):
            return None
        return f"expected {name}, got {type(value).__name__} {value!r}"[:200]

    return scalar


class Payload(msgspec.Struct, kw_only=True, gc=False, repr_omit_defaults=True):
    """Base class of the typed messages. Subclasses set ``__instance__`` and ``__subtopic__``."""

    __instance__: ClassVar[Instance]
    __subtopic__: ClassVar[str]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "__subtopic__" in vars(cls):  # a concrete message type: envelopes name it by class name
            _REGISTRY[cls.__name__] = cls

    def __post_init__(self) -> None:
        cls = type(self)
        checks = _CHECKS.get(cls)
        if checks is None:  # compiled on first use: the fields exist only once the class is built
            hints = typing.get_type_hints(cls)
            checks = _CHECKS[cls] = tuple((n, _compile(hints[n])) for n in cls.__struct_fields__)
        for name, check in checks:
            reason = check(getattr(self, name))
            if reason is not None:
                raise ValidationError(type(self).__name__, name, reason)

    @classmethod
    def type_name(cls) -> str:
        """The envelope ``type`` of this class: its name."""
        return cls.__name__

    def default_subtopic(self) -> str:
        """The documented sub-topic, filled in from this message's fields."""
        return self.__subtopic__.format_map({n: getattr(self, n) for n in self.__struct_fields__})

    def to_data(self) -> dict[str, Any]:
        """The envelope's ``data``: every field as builtins."""
        data: dict[str, Any] = msgspec.to_builtins(self)
        return data

    @classmethod
    def from_data(cls: type[P], data: Mapping[str, Any]) -> P:
        """Rebuild from an envelope's ``data``; unknown keys are ignored, missing optional
        keys take their defaults. Raises :class:`~exesdb_sdk.errors.ValidationError`."""
        try:
            return msgspec.convert(data, cls)
        except ValidationError:
            raise
        except msgspec.ValidationError as exc:
            raise ValidationError.from_msgspec(cls.__name__, exc) from None


def lookup(type_name: str) -> type[Payload] | None:
    """The registered class for an envelope ``type``, or ``None`` for custom types."""
    return _REGISTRY.get(type_name)


def registry() -> Mapping[str, type[Payload]]:
    """The live registry (read-only view): subscribers look types up in it per message."""
    return types.MappingProxyType(_REGISTRY)


def payload_types() -> dict[str, type[Payload]]:
    """Every registered type, by name."""
    return dict(_REGISTRY)
