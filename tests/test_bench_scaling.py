"""The scaling benchmark runs end to end in its quick mode and writes every figure.

Never asserts on speed (this machine is shared): only that each cost, rate and check figure is
a finite positive number and that every subscriber of the check is accounted for.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from tests.nats_cluster import BINARY, SKIP_REASON

from .conftest import run_quick_bench

pytestmark = pytest.mark.skipif(BINARY is None, reason=SKIP_REASON)

LIVE_COSTS = (
    "c_local_us",
    "c_delivery_us",
    "c_export_us",
    "c_import_us",
    "c_import_bare_us",
    "c_nats_us",
    "c_export_bridge_us",
    "c_import_bridge_us",
)
JOURNAL_COSTS = ("c_journal_export_us", "c_journal_import_us", "c_journal_nats_us")
RATES = ("durable_publish_per_s", "durable_e2e_per_s")


def _positive(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value > 0


@pytest.mark.timeout(150)  # about 15 s alone; its subscriber processes wait their turn on a loaded machine
def test_quick_scaling_benchmark_reports_every_figure(tmp_path: Path) -> None:
    done, report = run_quick_bench("bench_scaling.py", tmp_path / "scaling.json", timeout=140)
    assert report["config"]["quick"] is True
    result = report["scenarios"]["scaling"]
    for point in ("high", "low"):
        for name in LIVE_COSTS:
            assert _positive(result["costs"][point][name]), (point, name, result["costs"][point])
    for name in JOURNAL_COSTS:
        assert _positive(result["journal_costs"][name]), (name, result["journal_costs"])
    for name in RATES:
        assert _positive(result["rates"][name]), (name, result["rates"])

    check = result["check"]
    assert (check["n"], check["m"]) == (3, 2)
    assert len(check["received"]) == len(check["gaps"]) == check["n"] * check["m"]
    for got, gaps in zip(check["received"], check["gaps"], strict=True):
        assert 0 < got <= check["expected_per_subscriber"] and gaps >= 0, check
    for row in [*check["brokers"].values(), check["nats"]]:
        for key in ("measured_cpu_s", "predicted_cpu_s_high", "predicted_cpu_s_low"):
            assert _positive(row[key]), (key, row)
        assert math.isfinite(row["error_high"]) and math.isfinite(row["error_low"]), row
    for row in check["brokers"].values():
        for key in ("bridge_measured_cpu_s", "bridge_predicted_cpu_s_high", "bridge_predicted_cpu_s_low"):
            assert _positive(row[key]), (key, row)
    assert set(check["brokers"]) == {"a", "b", "c"}
    assert "mean |error| over brokers" in done.stdout, done.stdout[-2000:]
