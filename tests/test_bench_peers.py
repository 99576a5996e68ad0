"""The peers benchmark runs end to end in its quick mode, with or without the peers installed.

Every scenario must be either complete (numbers, ratios, and a target with a bool ``met``
where it has one) or skipped with a reason: CI has neither redis-server nor nats-server nor
their Python clients. Never asserts on speed.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_peers.py"
SCENARIOS = ("nats_vs_sdk", "nats_vs_sdk_batch", "redis_vs_sdk", "redis_plain_vs_sdk")
TARGETED = ("nats_vs_sdk", "redis_vs_sdk")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _run_quick(out: Path, env: dict[str, str] | None = None) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    done = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--json-out", str(out)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    report: dict[str, Any] = json.loads(out.read_text())
    return done, report


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
            assert all(_is_number(v) for v in run.values()), (name, side, run)
            assert 0 < run["delivered_fraction"] <= 1, (name, side, run)
        assert all(_is_number(v) for v in scenario["medians"][side].values()), (name, side)
    assert scenario["ratios"], name
    assert all(_is_number(v) for v in scenario["ratios"].values()), (name, scenario["ratios"])
    target = scenario["target"]
    if name in TARGETED:
        assert target is not None, name
    if target is not None:
        assert target["metric"] in scenario["ratios"], name
        assert _is_number(target["value"]), name
        assert isinstance(target["met"], bool), name


@pytest.mark.timeout(180)
def test_quick_peers_benchmark_reports_every_scenario(tmp_path: Path) -> None:
    done, report = _run_quick(tmp_path / "peers.json")
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
    _, report = _run_quick(tmp_path / "peers.json", env={"PATH": str(empty), "HOME": str(tmp_path)})
    assert set(SCENARIOS) <= set(report["scenarios"])
    for name, scenario in report["scenarios"].items():
        assert "server not found on PATH" in scenario.get("skipped", ""), (name, scenario)
        _check_scenario(name, scenario)
