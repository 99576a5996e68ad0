"""The security benchmark runs end to end in its quick mode and writes complete JSON.

Never asserts on speed (this machine is shared and its numbers drift): only that both sides
delivered, and that the CURVE/plain ratio is a number.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_security.py"


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@pytest.mark.timeout(150)
def test_quick_security_benchmark_reports_the_curve_ratio(tmp_path: Path) -> None:
    out = tmp_path / "security.json"
    done = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--json-out", str(out)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(out.read_text())
    scenario = report["scenarios"]["curve_throughput"]
    assert scenario["sides"] == ["plain", "curve"]
    assert scenario["body_bytes"] == 100
    for side in ("plain", "curve"):
        for run in scenario["runs"][side]:
            assert all(_is_number(v) for v in run.values()), (side, run)
            assert 0 < run["delivered_fraction"] <= 1, (side, run)
    ratio = scenario["ratios"]["msgs_per_s"]
    assert _is_number(ratio) and ratio > 0
    assert "ratio" in done.stdout and "CURVE on vs off" in done.stdout
