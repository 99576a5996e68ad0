"""The core benchmark runs end to end in its quick mode and writes complete JSON.

Never asserts on speed: this machine is shared and its numbers drift; only that every
scenario produced numbers and ratios.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_core.py"
SCENARIOS = ("raw_throughput", "raw_latency", "sdk_throughput")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@pytest.mark.timeout(180)
def test_quick_benchmark_writes_every_scenario(tmp_path: Path) -> None:
    out = tmp_path / "x.json"
    done = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--json-out", str(out)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(out.read_text())

    env = report["environment"]
    for key in ("date", "python", "pyzmq", "libzmq", "msgspec", "exesdb_sdk", "cpu_model", "kernel"):
        assert env[key], key
    assert _is_number(env["cpu_count"])

    assert set(SCENARIOS) <= set(report["scenarios"])
    for name in SCENARIOS:
        scenario = report["scenarios"][name]
        left, right = scenario["sides"]
        for side in (left, right):
            runs = scenario["runs"][side]
            assert runs, (name, side)
            for run in runs:
                assert all(_is_number(v) for v in run.values()), (name, side, run)
                assert 0 < run["delivered_fraction"] <= 1, (name, side, run)
            assert all(_is_number(v) for v in scenario["medians"][side].values()), (name, side)
        assert scenario["ratios"], name
        assert all(_is_number(v) for v in scenario["ratios"].values()), (name, scenario["ratios"])
        target = scenario["target"]
        assert target["metric"] in scenario["ratios"]
        assert isinstance(target["met"], bool)
    assert "ratio" in done.stdout  # the table was printed


@pytest.mark.timeout(120)
def test_quick_catalogue_benchmark_reports_a_ratio(tmp_path: Path) -> None:
    out = tmp_path / "c.json"
    script = BENCH.with_name("bench_catalogue.py")
    done = subprocess.run(
        [sys.executable, str(script), "--quick", "--json-out", str(out)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(out.read_text())
    assert _is_number(report["ratio_typed_to_dict"]) and report["ratio_typed_to_dict"] > 0
    assert all(_is_number(v) and v > 0 for v in report["us_per_message"].values())
    assert isinstance(report["met"], bool)


@pytest.mark.timeout(120)
def test_the_one_command_runs_a_suite_and_writes_one_report(tmp_path: Path) -> None:
    out = tmp_path / "all.json"
    script = BENCH.with_name("bench.py")
    done = subprocess.run(
        [sys.executable, str(script), "--quick", "--only", "core", "--json-out", str(out)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(out.read_text())
    assert set(report["scenarios"]) == {f"core.{name}" for name in SCENARIOS}
    assert report["config"]["suites"] == ["core"]
    assert "ratio" in done.stdout
