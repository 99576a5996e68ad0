"""The public surface: curated ``__all__``, one exception tree, typed packages."""

from __future__ import annotations

import importlib
from pathlib import Path

import exesdb_sdk
import pytest
from exesdb_sdk import errors


@pytest.mark.parametrize("module", ["exesdb_sdk", "exesdb_broker", "exesdb_sdk.protocol", "exesdb_sdk.errors"])
def test_all_is_sorted_and_complete(module: str) -> None:
    mod = importlib.import_module(module)
    names = list(mod.__all__)
    # isort style: CONSTANTS, then Classes, then functions and dunders, each alphabetical
    assert names == sorted(names, key=lambda n: (0 if n.isupper() else 1 if n[:1].isupper() else 2, n))
    for name in names:
        assert hasattr(mod, name), f"{module}.{name} is in __all__ but missing"


def test_one_exception_tree() -> None:
    classes = [getattr(errors, name) for name in errors.__all__]
    for cls in classes:
        assert issubclass(cls, errors.ExesdbError)
        assert cls.__doc__, f"{cls.__name__} has no docstring"
    assert issubclass(errors.BrokerUnavailableError, TimeoutError)
    assert issubclass(errors.ConfigError, ValueError)
    from exesdb_broker import BindError

    assert issubclass(BindError, errors.ExesdbError) and issubclass(BindError, OSError)


def test_sdk_ships_py_typed_and_never_imports_broker_or_cli() -> None:
    package = Path(exesdb_sdk.__file__).parent
    assert (package / "py.typed").is_file()
    for source in package.rglob("*.py"):
        text = source.read_text()
        assert "exesdb_broker" not in text and "exesdb_cli" not in text, source
