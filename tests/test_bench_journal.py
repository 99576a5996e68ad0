"""The journal benchmark runs end to end in its quick mode and writes both figures.

Never asserts on speed: only that every scenario produced numbers and a ratio.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_journal.py"


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@pytest.mark.timeout(150)
def test_quick_journal_benchmark_reports_both_figures(tmp_path: Path) -> None:
    out = tmp_path / "j.json"
    done = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--json-out", str(out)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    scenarios = json.loads(out.read_text())["scenarios"]
    live = scenarios["live_journal_on_off"]
    assert live["sides"] == ["journal_off", "journal_on"]
    assert _is_number(live["ratios"]["msgs_per_s"]) and isinstance(live["target"]["met"], bool)
    durable = scenarios["durable_publish"]
    for side in durable["sides"]:
        assert _is_number(durable["medians"][side]["acked_per_s"]) and durable["medians"][side]["acked_per_s"] > 0
    assert _is_number(durable["ratios"]["acked_per_s"])
    ingest = scenarios["journal_ingest"]
    assert all(_is_number(ingest["medians"][side]["records_per_s"]) for side in ingest["sides"])
    assert "ratio" in done.stdout
