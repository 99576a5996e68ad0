"""The receive-path micro-benchmark runs end to end in its quick mode and reports every mode.

Never asserts on speed: only that every mode produced a positive figure per run (the script
itself fails when a payload is not a ``NodeHealth`` or a message is lost).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .conftest import is_number, run_quick_bench


@pytest.mark.timeout(90)
def test_quick_recv_benchmark_reports_every_mode(tmp_path: Path) -> None:
    done, report = run_quick_bench("micro/bench_recv.py", tmp_path / "r.json", timeout=60)
    assert set(report["modes"]) == {"recv+payload", "recv", "recv_batch+payload"}
    for mode, figures in report["modes"].items():
        assert is_number(figures["us_per_msg"]) and figures["us_per_msg"] > 0, mode
        assert len(figures["runs"]) == report["reps"] == 1, mode
    assert "recv_batch+payload" in done.stdout
