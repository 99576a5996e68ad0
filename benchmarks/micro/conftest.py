"""Registers the ``micro`` marker of the codec micro-benchmarks (see ``test_micro_codec.py``)."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "micro: in-process codec micro-benchmark (pytest-benchmark); not part of the test suite"
    )
