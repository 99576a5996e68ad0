"""The SDK benchmark runs end to end in its quick mode and writes complete JSON.

Never asserts on speed: this machine is shared and its numbers drift; only that every
scenario produced numbers, ratios and, where it has a target, a verdict.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .conftest import is_number, run_quick_bench

SCENARIOS = {
    *(f"raw_sizes_{transport}_{size}" for transport in ("tcp", "ipc") for size in (100, 1024, 10240)),
    "sdk_typed",
    "sdk_batch",
    "sdk_asyncio",
    "coalesce_throughput",
    "coalesce_latency_1000",
    "coalesce_latency_5000",
}
UNTARGETED = {"sdk_asyncio", "coalesce_throughput"}


@pytest.mark.timeout(200)
def test_quick_sdk_benchmark_writes_every_scenario(tmp_path: Path) -> None:
    out = tmp_path / "sdk.json"
    done, report = run_quick_bench("bench_sdk.py", out, timeout=150)

    env = report["environment"]
    for key in ("date", "python", "pyzmq", "libzmq", "msgspec", "exesdb_sdk", "cpu_model", "kernel"):
        assert env[key], key
    assert report["config"]["quick"] is True

    assert set(report["scenarios"]) == SCENARIOS
    for name, scenario in report["scenarios"].items():
        left, right = scenario["sides"]
        for side in (left, right):
            runs = scenario["runs"][side]
            assert runs, (name, side)
            for run in runs:
                assert all(is_number(v) for v in run.values()), (name, side, run)
                assert 0 < run["delivered_fraction"] <= 1, (name, side, run)
            assert all(is_number(v) for v in scenario["medians"][side].values()), (name, side)
            assert 0 < scenario["min_delivered_fraction"][side] <= 1, (name, side)
        assert scenario["ratios"], name
        assert all(is_number(v) for v in scenario["ratios"].values()), (name, scenario["ratios"])
        target = scenario["target"]
        if name in UNTARGETED:
            assert target is None, name
        else:
            assert target["metric"] in scenario["ratios"], name
            assert is_number(target["value"]), name
            assert isinstance(target["met"], bool), name
    assert "ratio" in done.stdout  # the table was printed
    assert "SDK benchmark" in done.stdout
