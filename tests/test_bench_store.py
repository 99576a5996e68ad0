"""The store micro-benchmark runs end to end in its quick mode and writes every figure.

Never asserts on speed: only that every scenario produced numbers, a ratio and, where it has
one, a target verdict.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .conftest import is_number, run_quick_bench


@pytest.mark.timeout(150)
def test_quick_store_benchmark_reports_every_figure(tmp_path: Path) -> None:
    done, report = run_quick_bench("micro/bench_store.py", tmp_path / "s.json", timeout=120)
    scenarios = report["scenarios"]
    assert set(scenarios) == {"write_never", "write_normal", "page", "page_narrow", "migrate"}
    for name, scenario in scenarios.items():
        (metric,) = scenario["ratios"]
        assert all(is_number(scenario["medians"][side][metric]) for side in scenario["sides"]), name
        assert scenario["medians"][scenario["sides"][1]][metric] > 0 and is_number(scenario["ratios"][metric])
        if name != "migrate":
            assert scenario["sides"] == ["per_row", "chunks"] and isinstance(scenario["target"]["met"], bool)
    assert "ratio" in done.stdout
