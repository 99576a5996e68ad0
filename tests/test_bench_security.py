"""The security benchmark runs end to end in its quick mode and writes complete JSON.

Never asserts on speed (this machine is shared and its numbers drift): only that both sides
delivered, and that the CURVE/plain ratio is a number.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .conftest import is_number, run_quick_bench


@pytest.mark.timeout(150)
def test_quick_security_benchmark_reports_the_curve_ratio(tmp_path: Path) -> None:
    out = tmp_path / "security.json"
    done, report = run_quick_bench("bench_security.py", out, timeout=120)
    scenario = report["scenarios"]["curve_throughput"]
    assert scenario["sides"] == ["plain", "curve"]
    assert scenario["body_bytes"] == 100
    for side in ("plain", "curve"):
        for run in scenario["runs"][side]:
            assert all(is_number(v) for v in run.values()), (side, run)
            assert 0 < run["delivered_fraction"] <= 1, (side, run)
    ratio = scenario["ratios"]["msgs_per_s"]
    assert is_number(ratio) and ratio > 0
    assert "ratio" in done.stdout and "CURVE on vs off" in done.stdout
