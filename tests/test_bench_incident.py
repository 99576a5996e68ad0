"""The incident benchmark runs end to end in its quick mode and reports every figure.

Never asserts on speed or memory: only that every scenario produced numbers, and that the
flood's accounting and the broker's exit after it are what they must be.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from .conftest import is_number, run_quick_bench


@pytest.mark.timeout(150)
def test_quick_incident_benchmark_reports_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "incident.json"
    done, report = run_quick_bench("bench_incident.py", out, timeout=120)
    flood = report["scenarios"]["journal_flood"]
    assert flood["sides"] == ["quiet", "flood"]
    during = flood["medians"]["flood"]
    for figure in ("durable_ack_p50_ms", "durable_ack_p99_ms", "replay_p50_ms", "rss_peak_mb", "stop_seconds"):
        assert is_number(during[figure]) and during[figure] > 0, figure
    assert during["exit_status"] == 0 and 0 <= during["shed_fraction"] <= 1
    assert isinstance(flood["target"]["met"], bool) and isinstance(flood["rss_target_met"], bool)
    accuracy = report["scenarios"]["stats_accuracy"]
    for side in accuracy["sides"]:
        figures = accuracy["medians"][side]
        assert 0 < figures["counted_fraction"] <= 1 and not math.isnan(figures["exact_flag"])
    assert "counted_fraction" in done.stdout
