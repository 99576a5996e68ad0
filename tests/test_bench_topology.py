"""The topology benchmark runs end to end in its quick mode and writes complete JSON.

Never asserts on speed: this machine is shared and its numbers drift; only that every
scenario produced numeric medians, ratios where both sides measure the same thing, and a
boolean verdict where it has a target.
"""

from __future__ import annotations

from typing import Any

import pytest

from .conftest import is_number, run_quick_bench

SCENARIOS = (
    "fanout_1",
    "fanout_10",
    "fanout_50",
    "fanin_4",
    "slow_subscriber",
    "mixed_ten_instances",
    "emitter_pool",
    "broker_rss",
)
RATIO_METRICS = {
    "fanout_1": "deliveries_per_s",
    "fanout_10": "deliveries_per_s",
    "fanout_50": "deliveries_per_s",
    "fanin_4": "deliveries_per_s",
    "slow_subscriber": "readers_mean_msgs_per_s",
    "mixed_ten_instances": "msgs_per_s",
    "emitter_pool": "events_per_s",
    "broker_rss": "rss_mb",
}
TARGETED = ("fanout_10", "fanout_50", "fanin_4", "slow_subscriber", "broker_rss")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str]:
    out = tmp_path_factory.mktemp("topology") / "topology.json"
    done, report = run_quick_bench("bench_topology.py", out, timeout=150)
    return report, done.stdout


@pytest.mark.timeout(200)
def test_quick_topology_benchmark_reports_every_scenario(quick_run: tuple[dict[str, Any], str]) -> None:
    report, stdout = quick_run
    env = report["environment"]
    for key in ("date", "python", "pyzmq", "libzmq", "msgspec", "exesdb_sdk", "cpu_model", "kernel"):
        assert env[key], key
    assert report["config"]["quick"] is True
    assert report["config"]["reps"] == 1
    assert set(SCENARIOS) <= set(report["scenarios"])

    for name in SCENARIOS:
        scenario = report["scenarios"][name]
        left, right = scenario["sides"]
        for side in (left, right):
            assert scenario["runs"][side], (name, side)
            medians = scenario["medians"][side]
            assert medians, (name, side)
            assert all(is_number(v) for v in medians.values()), (name, side, medians)
        assert set(scenario["medians"][left]) == set(scenario["medians"][right]), name
        metric = RATIO_METRICS[name]
        assert is_number(scenario["ratios"][metric]), (name, scenario["ratios"])
        assert all(is_number(v) for v in scenario["ratios"].values()), (name, scenario["ratios"])
        target = scenario["target"]
        if name in TARGETED:
            assert target["metric"] == metric, name
            assert isinstance(target["met"], bool), name
            assert is_number(target["value"]), name
        else:
            assert target is None, name
    assert "ratio" in stdout and "topology benchmark" in stdout  # the table was printed


@pytest.mark.timeout(200)
def test_quick_topology_benchmark_delivers_and_measures(quick_run: tuple[dict[str, Any], str]) -> None:
    scenarios = quick_run[0]["scenarios"]
    for name in ("fanout_1", "fanout_10", "fanout_50", "fanin_4"):
        scenario = scenarios[name]
        for side in scenario["sides"]:
            for run in scenario["runs"][side]:
                assert 0 < run["lowest_delivered_fraction"] <= run["delivered_fraction"] <= 1, (name, run)
                assert run["deliveries"] > 0 and run["broker_cpu_s"] >= 0, (name, run)
    assert scenarios["fanout_10"]["subscribers"] < scenarios["fanout_50"]["subscribers"]
    for side in scenarios["slow_subscriber"]["sides"]:
        for run in scenarios["slow_subscriber"]["runs"][side]:
            assert 0 < run["readers_delivered_fraction"] <= 1, run
    stalled = scenarios["slow_subscriber"]["stalled_received_fraction"]
    assert list(stalled) == ["one stalled"] and 0 <= stalled["one stalled"] <= 1
    for name in ("mixed_ten_instances", "emitter_pool"):
        for side in scenarios[name]["sides"]:
            assert 0 < scenarios[name]["medians"][side]["delivered_fraction"] <= 1, name
    rss = scenarios["broker_rss"]
    assert rss["target"]["side"] == "idle" and rss["target"]["op"] == "<="
    assert all(v > 0 for side in rss["sides"] for v in rss["medians"][side].values())
