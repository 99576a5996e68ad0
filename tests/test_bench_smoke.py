"""The core benchmark runs end to end in its quick mode and writes complete JSON.

Never asserts on speed: this machine is shared and its numbers drift; only that every
scenario produced numbers and ratios.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .conftest import is_number, run_quick_bench

SCENARIOS = ("raw_throughput", "raw_latency", "sdk_throughput")


@pytest.mark.timeout(180)
def test_quick_benchmark_writes_every_scenario(tmp_path: Path) -> None:
    out = tmp_path / "x.json"
    done, report = run_quick_bench("bench_core.py", out, timeout=120)

    env = report["environment"]
    for key in ("date", "python", "pyzmq", "libzmq", "msgspec", "exesdb_sdk", "cpu_model", "kernel"):
        assert env[key], key
    assert is_number(env["cpu_count"])

    assert set(SCENARIOS) <= set(report["scenarios"])
    for name in SCENARIOS:
        scenario = report["scenarios"][name]
        left, right = scenario["sides"]
        for side in (left, right):
            runs = scenario["runs"][side]
            assert runs, (name, side)
            for run in runs:
                assert all(is_number(v) for v in run.values()), (name, side, run)
                assert 0 < run["delivered_fraction"] <= 1, (name, side, run)
            assert all(is_number(v) for v in scenario["medians"][side].values()), (name, side)
        assert scenario["ratios"], name
        assert all(is_number(v) for v in scenario["ratios"].values()), (name, scenario["ratios"])
        target = scenario["target"]
        assert target["metric"] in scenario["ratios"]
        assert isinstance(target["met"], bool)
    assert "ratio" in done.stdout  # the table was printed


@pytest.mark.timeout(120)
def test_quick_catalogue_benchmark_reports_a_ratio(tmp_path: Path) -> None:
    out = tmp_path / "c.json"
    _, report = run_quick_bench("bench_catalogue.py", out, timeout=90)
    assert is_number(report["ratio_typed_to_dict"]) and report["ratio_typed_to_dict"] > 0
    assert all(is_number(v) and v > 0 for v in report["us_per_message"].values())
    assert isinstance(report["met"], bool)


@pytest.mark.timeout(120)
def test_the_one_command_runs_a_suite_and_writes_one_report(tmp_path: Path) -> None:
    out = tmp_path / "all.json"
    done, report = run_quick_bench("bench.py", out, "--only", "core", timeout=90)
    assert set(report["scenarios"]) == {f"core.{name}" for name in SCENARIOS}
    assert report["config"]["suites"] == ["core"]
    assert "ratio" in done.stdout
