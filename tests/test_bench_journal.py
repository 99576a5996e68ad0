"""The journal benchmark runs end to end in its quick mode and writes both figures.

Never asserts on speed: only that every scenario produced numbers and a ratio.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .conftest import is_number, run_quick_bench


@pytest.mark.timeout(150)
def test_quick_journal_benchmark_reports_both_figures(tmp_path: Path) -> None:
    out = tmp_path / "j.json"
    done, report = run_quick_bench("bench_journal.py", out, timeout=120)
    scenarios = report["scenarios"]
    live = scenarios["live_journal_on_off"]
    assert live["sides"] == ["journal_off", "journal_on"]
    assert is_number(live["ratios"]["msgs_per_s"]) and isinstance(live["target"]["met"], bool)
    durable = scenarios["durable_publish"]
    for side in durable["sides"]:
        assert is_number(durable["medians"][side]["acked_per_s"]) and durable["medians"][side]["acked_per_s"] > 0
    assert is_number(durable["ratios"]["acked_per_s"])
    pipelined = scenarios["durable_pipelined"]
    assert pipelined["sides"] == ["one_by_one", "pipelined"] and pipelined["also"] == ["per_message"]
    assert all(pipelined["medians"][side]["acked_per_s"] > 0 for side in ["one_by_one", "per_message", "pipelined"])
    assert is_number(pipelined["ratios"]["acked_per_s"]) and isinstance(pipelined["target"]["met"], bool)
    assert is_number(pipelined["ratios_vs_per_message"]["acked_per_s"])
    ingest = scenarios["journal_ingest"]
    assert all(is_number(ingest["medians"][side]["records_per_s"]) for side in ingest["sides"])
    assert all(0 <= ingest["medians"][side]["shed_fraction"] <= 1 for side in ingest["sides"])
    assert "ratio" in done.stdout
