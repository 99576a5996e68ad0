"""The peers benchmark runs end to end in its quick mode, with or without the peers installed.

Every scenario must be either complete (numbers, ratios, and a target with a bool ``met``
where it has one) or skipped with a reason: CI has neither redis-server nor nats-server nor
their Python clients. Never asserts on speed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from .conftest import is_number, run_quick_bench

SCENARIOS = ("nats_vs_sdk", "nats_vs_sdk_batch", "nats_msgpack_vs_sdk", "redis_vs_sdk", "redis_plain_vs_sdk")
TARGETED = ("nats_vs_sdk", "redis_vs_sdk")


def _check_scenario(name: str, scenario: dict[str, Any]) -> None:
    assert scenario["title"], name
    assert len(scenario["sides"]) == 2, name
    if "skipped" in scenario:
        assert isinstance(scenario["skipped"], str) and scenario["skipped"], name
        return
    for side in scenario["sides"]:
        runs = scenario["runs"][side]
        assert runs, (name, side)
        for run in runs:
            assert all(is_number(v) for v in run.values()), (name, side, run)
            assert 0 < run["delivered_fraction"] <= 1, (name, side, run)
        assert all(is_number(v) for v in scenario["medians"][side].values()), (name, side)
    assert scenario["ratios"], name
    assert all(is_number(v) for v in scenario["ratios"].values()), (name, scenario["ratios"])
    target = scenario["target"]
    if name in TARGETED:
        assert target is not None, name
    if target is not None:
        assert target["metric"] in scenario["ratios"], name
        assert is_number(target["value"]), name
        assert isinstance(target["met"], bool), name


@pytest.mark.timeout(180)
def test_quick_peers_benchmark_reports_every_scenario(tmp_path: Path) -> None:
    done, report = run_quick_bench("bench_peers.py", tmp_path / "peers.json")
    env = report["environment"]
    for key in ("date", "python", "pyzmq", "libzmq", "msgspec", "exesdb_sdk", "cpu_model", "kernel"):
        assert env[key], key
    assert set(report["peers"]) >= {"redis_server", "nats_server", "redis_py", "nats_py"}
    assert set(SCENARIOS) <= set(report["scenarios"])
    for name, scenario in report["scenarios"].items():
        _check_scenario(name, scenario)
    assert "ratio" in done.stdout  # the table was printed


@pytest.mark.timeout(180)
def test_quick_peers_benchmark_skips_missing_servers(tmp_path: Path) -> None:
    """With no server binary on PATH (as in CI), every peer scenario is skipped, not failed."""
    empty = tmp_path / "bin"
    empty.mkdir()
    _, report = run_quick_bench(
        "bench_peers.py", tmp_path / "peers.json", env={"PATH": str(empty), "HOME": str(tmp_path)}
    )
    assert set(SCENARIOS) <= set(report["scenarios"])
    for name, scenario in report["scenarios"].items():
        assert "server not found on PATH" in scenario.get("skipped", ""), (name, scenario)
        _check_scenario(name, scenario)
