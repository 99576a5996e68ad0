"""The base of every typed message: validation, the registry, default sub-topics.

A payload class is a ``msgspec.Struct`` (slots, keyword-only fields) that is the ``data``
of an envelope. It belongs to one instance and has a default sub-topic, a template that may
name its own fields (``"store_health:{store}"``). Constructing one checks every field's type
and enumerated values and raises :class:`~exesdb_sdk.errors.ValidationError` naming the
message type and the field. Rebuilding one from received data ignores unknown keys and gives
missing optional keys their defaults.

On the wire a payload omits every field that holds its default (msgspec ``omit_defaults``): a
``NodeHealth`` with only ``node`` and ``status`` set is their two keys, not six. A reader fills
the missing keys in (:meth:`Payload.from_data`, which a subscriber runs for ``message.payload``);
a body that spells every default out, as older publishers sent, decodes to the same payload.
"""

from __future__ import annotations

import string
import threading
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
_VALIDATORS: dict[type[Payload], Callable[[Payload], None]] = {}
_SUBTOPICS: dict[type[Payload], Callable[[Payload], str]] = {}


class _Decoding(threading.local):
    """Set while ``from_data`` converts in this thread: the fields are checked already."""

    active = False


_DECODING: Final = _Decoding()
_NONE: Final = type(None)


def _type_name(kind: Any) -> str:
    return getattr(kind, "__name__", str(kind))


def _compile(annotation: Any) -> Check:
    """A check for the field types the catalogue uses: scalars, Literal, dict, list, unions.

    Each returns None at once for the common, valid case (on the publish path, for every
    field of every message); only a failing value builds a reason.
    """
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any:
        return lambda value: None
    if origin is Literal:
        listed = ", ".join(str(c) for c in args)
        return lambda value: None if value in args else f"{value!r} is not one of {listed}"
    if origin in (types.UnionType, typing.Union):
        options = [a for a in args if a is not _NONE]
        if len(options) == 1 and len(args) == 2:  # X | None, the usual optional field
            inner = _compile(options[0])
            return lambda value: None if value is None else inner(value)
        checks = [_compile(arg) for arg in args]

        def union(value: Any) -> str | None:
            reasons = [check(value) for check in checks]
            return None if None in reasons else " or ".join(r for r in reasons if r)

        return union
    if annotation is _NONE or annotation is None:
        return lambda value: None if value is None else f"expected None, got {type(value).__name__}"
    kind = origin or annotation
    if kind is list and args and args[0] is not Any:
        item = _compile(args[0])

        def items(value: Any) -> str | None:
            if type(value) is not list:
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
            if type(value) is not dict:
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
            if type(value) is dict and (not value or all(type(k) is str for k in value))
            else f"expected a dict with string keys, got {type(value).__name__}"
        )
    exact = frozenset({float, int} if kind is float else {kind})
    name = _type_name(kind)

    def scalar(value: Any) -> str | None:
        if type(value) in exact:
            return None
        if isinstance(value, kind) and not isinstance(value, bool):  # a subclass, e.g. a StrEnum
            return None
        return f"expected {name}, got {type(value).__name__} {value!r}"[:200]

    return scalar


def _fast_test(annotation: Any, index: int, env: dict[str, Any]) -> str | None:
    """A Python expression over ``v`` that is true for the common valid values, or None."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any:
        return "True"
    if origin is Literal:
        env[f"l{index}"] = args
        return f"v in l{index}"
    if origin in (types.UnionType, typing.Union):
        options = [a for a in args if a is not _NONE]
        inner = _fast_test(options[0], index, env) if len(options) == 1 else None
        return f"v is None or ({inner})" if inner else None
    kind = origin or annotation
    if kind in (dict, list):
        return f"type(v) is {kind.__name__} and not v"  # empty; otherwise the full check
    if kind in (str, int, float, bool):
        env[f"t{index}"] = frozenset({float, int} if kind is float else {kind})
        return f"type(v) in t{index}"
    return None


def _build_validator(cls: type[Payload]) -> Callable[[Payload], None]:
    """One function checking every field of ``cls``, generated like ``dataclasses`` generates
    ``__init__``: a per-field loop of closures cost 2.2 us per ``NodeHealth``, which made a
    typed publish 1.7x a dict publish; straight-line type tests first, with the full check
    only when one fails, cost a fraction of that."""
    hints = typing.get_type_hints(cls)

    def fail(field: str, reason: str) -> None:
        raise ValidationError(cls.__name__, field, reason)

    env: dict[str, Any] = {"fail": fail}
    lines = ["def validate(self):"]
    for index, name in enumerate(cls.__struct_fields__):
        env[f"c{index}"] = _compile(hints[name])
        fast = _fast_test(hints[name], index, env)
        lines.append(f"    v = self.{name}")
        indent = "    "
        if fast is not None:
            lines.append(f"    if not ({fast}):")
            indent = "        "
        lines.append(f"{indent}r = c{index}(v)")
        lines.append(f"{indent}if r is not None: fail({name!r}, r)")
    lines.append("    return None")
    exec("\n".join(lines), env)
    validate: Callable[[Payload], None] = env["validate"]
    return validate


def _build_subtopic(cls: type[Payload]) -> Callable[[Payload], str]:
    """A function filling ``cls.__subtopic__`` from a message, generated as the validators are:
    ``str.format`` with a dict of fields cost 0.7 us a message, a concatenation 0.1 us."""
    parts: list[str] = []
    for literal, name, spec, conversion in string.Formatter().parse(cls.__subtopic__):
        if literal:
            parts.append(repr(literal))
        if name is not None:
            if spec or conversion or name not in cls.__struct_fields__:
                raise TypeError(f"{cls.__name__}.__subtopic__: only plain {{field}} placeholders are supported")
            parts.append(f"str(m.{name})")
    source = f"lambda m: {' + '.join(parts) or repr('')}"
    fill: Callable[[Payload], str] = eval(source)
    return fill


class Payload(msgspec.Struct, kw_only=True, gc=False, repr_omit_defaults=True, omit_defaults=True):
    """Base class of the typed messages. Subclasses set ``__instance__`` and ``__subtopic__``."""

    __instance__: ClassVar[Instance]
    __subtopic__: ClassVar[str]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "__subtopic__" in vars(cls):  # a concrete message type: envelopes name it by class name
            _REGISTRY[cls.__name__] = cls

    def __post_init__(self) -> None:
        if _DECODING.active:  # msgspec.convert has already checked every field, in C
            return
        cls = type(self)
        validate = _VALIDATORS.get(cls)
        if validate is None:  # built on first use: the fields exist only once the class is built
            validate = _VALIDATORS[cls] = _build_validator(cls)
        validate(self)

    @classmethod
    def type_name(cls) -> str:
        """The envelope ``type`` of this class: its name."""
        return cls.__name__

    def default_subtopic(self) -> str:
        """The documented sub-topic, filled in from this message's fields."""
        cls = type(self)
        fill = _SUBTOPICS.get(cls)
        if fill is None:
            fill = _SUBTOPICS[cls] = _build_subtopic(cls)
        return fill(self)

    def to_data(self) -> dict[str, Any]:
        """Every field as builtins, defaults included (the wire form omits them)."""
        data: dict[str, Any] = msgspec.to_builtins({name: getattr(self, name) for name in self.__struct_fields__})
        return data

    @classmethod
    def from_data(cls: type[P], data: Mapping[str, Any]) -> P:
        """Rebuild from an envelope's ``data``; unknown keys are ignored, missing optional
        keys take their defaults. Raises :class:`~exesdb_sdk.errors.ValidationError`."""
        _DECODING.active = True
        try:
            return msgspec.convert(data, cls)
        except ValidationError:
            raise
        except msgspec.ValidationError as exc:
            raise ValidationError.from_msgspec(cls.__name__, exc) from None
        finally:
            _DECODING.active = False


def lookup(type_name: str) -> type[Payload] | None:
    """The registered class for an envelope ``type``, or ``None`` for custom types."""
    return _REGISTRY.get(type_name)


def registry() -> Mapping[str, type[Payload]]:
    """The live registry (read-only view): subscribers look types up in it per message."""
    return types.MappingProxyType(_REGISTRY)


def payload_types() -> dict[str, type[Payload]]:
    """Every registered type, by name."""
    return dict(_REGISTRY)
