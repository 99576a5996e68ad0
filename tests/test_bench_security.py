"""The security benchmark runs end to end in its quick mode and writes complete JSON.

Never asserts on speed (this machine is shared and its numbers drift): only that every side
delivered, that the ratios are numbers, and, for the restricted class, that the class's own
proxy pair shows in the idle broker's threads and sockets.
"""

from __future__ import annotations

import subprocess
from typing import Any

import pytest

from .conftest import is_number, run_quick_bench

pytestmark = pytest.mark.timeout(150)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """One quick run of the whole suite, shared by the tests of this module."""
    out = tmp_path_factory.mktemp("bench-security") / "security.json"
    return run_quick_bench("bench_security.py", out, timeout=120)


def _check_runs(scenario: dict[str, Any], sides: list[str]) -> None:
    assert scenario["sides"] == sides
    assert scenario["body_bytes"] == 100
    for side in sides:
        assert scenario["runs"][side], side
        for run in scenario["runs"][side]:
            assert all(is_number(v) for v in run.values()), (side, run)
            assert 0 < run["delivered_fraction"] <= 1, (side, run)
    ratio = scenario["ratios"]["msgs_per_s"]
    assert is_number(ratio) and ratio > 0


def test_quick_security_benchmark_reports_the_curve_ratio(
    quick_run: tuple[subprocess.CompletedProcess[str], dict[str, Any]],
) -> None:
    done, report = quick_run
    _check_runs(report["scenarios"]["curve_throughput"], ["plain", "curve"])
    assert "ratio" in done.stdout and "CURVE on vs off" in done.stdout


@pytest.mark.parametrize("name", ["restricted_class", "restricted_class_plain"])
def test_quick_security_benchmark_reports_the_cost_of_a_restricted_class(
    quick_run: tuple[subprocess.CompletedProcess[str], dict[str, Any]], name: str
) -> None:
    done, report = quick_run
    scenario = report["scenarios"][name]
    _check_runs(scenario, ["no_class", "with_class"])
    if name == "restricted_class":
        target = scenario["target"]
        assert {k: target[k] for k in ("metric", "op", "value")} == {"metric": "msgs_per_s", "op": ">=", "value": 0.95}
        assert isinstance(target["met"], bool)  # met or not: no timing assertion
    else:
        assert scenario["target"] is None
    cost = scenario["cost_per_class"]
    assert all(is_number(v) for v in cost.values()), cost
    # the class's proxy thread and its two bound endpoints, in the idle broker before any client connects
    assert cost["threads"] >= 1, cost
    assert cost["socket_fds"] >= 2, cost
    assert cost["eventfds"] >= 2 and cost["fds"] >= cost["socket_fds"] + cost["eventfds"], cost
    assert "cost per class" in done.stdout
