"""The examples in examples/ run and show what they promise."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.mark.timeout(90)
def test_health_loop_pauses_resumes_and_loses_nothing(clean_env: dict[str, str]) -> None:
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "health_loop.py")],
        env={**clean_env, "EXESDB_OBSERVE_OUTPUT": "plain"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    log = done.stderr
    assert "EMITTER WORKER ACTIVATION" in log and "EMITTER WORKER TERMINATION" in log
    assert "circuit_breaker_opened) - Emission PAUSED" in log
    assert "circuit_breaker_closed) - Emission RESUMED" in log
    assert log.index("Emission PAUSED") < log.index("Emission RESUMED")
    assert "HEALTH SUMMARY: Store orders - 1/1 healthy subscriptions" in log
    assert "METRICS SUMMARY: Store orders" in log
    assert "delivered 20/20 events, in order: True" in done.stdout
    assert "tracker: orders:projection is healthy" in done.stdout
