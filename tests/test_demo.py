"""``exesdb demo`` tells the whole health story, pretty lines carry their numbers, ``--pretty`` is coloured.

The demo runs as a real subprocess (an embedded broker on free ports) with stdout piped; the
pretty lines are rendered from real messages, encoded and decoded by the real protocol.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from exesdb_cli.render import STYLES, pretty
from exesdb_sdk import ControlClient, Publisher
from exesdb_sdk.messages import (
    AuthEvent,
    BrokerMetrics,
    ClusterHealth,
    EmitterMetrics,
    Events,
    HealthCheck,
    HealthSummary,
    LatencyMetric,
    LogSummary,
    MetricAlert,
    MetricsSummary,
    NodeHealth,
    Payload,
    PerformanceMetric,
    ResourceUsage,
    SubscriptionHealth,
    SystemConfig,
    SystemState,
    ThroughputMetric,
)
from exesdb_sdk.protocol import Decoder, Encoder, Message

from .conftest import BrokerProcess, StartBroker, wait_until

EXESDB = str(Path(sys.executable).with_name("exesdb"))
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _message(payload: Payload | None = None, *, type: str = "", topic: bytes = b"", data: Any = None) -> Message:
    """``payload`` (or raw ``type``/``data`` on ``topic``) through the real encoder and decoder."""
    encoder = Encoder(src="node1")
    if payload is not None:
        topic = encoder.topic(payload.__instance__, payload.default_subtopic())
        type, data = type or payload.__class__.__name__, payload
    [message] = Decoder().decode([topic, encoder.encode(topic, type, data)])
    return message


RENDERED: list[tuple[Payload, list[str]]] = [
    (HealthSummary(store="orders", total=4, healthy=3, failed=1), ["store=orders", "3/4 healthy", "1 failed"]),
    (
        ThroughputMetric(component="persistence", count=4500, duration_ms=1000, error_count=3),
        ["component=persistence", "4500 ops/s", "(4500 in 1000 ms)", "errors=3"],
    ),
    (
        MetricsSummary(store="orders", events_per_second=2.5, total_events=120, active_subscriptions=1),
        ["store=orders", "2.5 events/s", "120 delivered", "1 active subscriptions", "0 dropped"],
    ),
    (
        BrokerMetrics(
            node="vm",
            uptime=75,
            messages=1234,
            envelopes=1300,
            bytes=456789,
            rate=350.2,
            malformed=2,
            subscribers=3,
            publishers=2,
        ),
        [
            "node=vm",
            "350.2 msg/s",
            "1234 messages",
            "3 subscribers",
            "2 publishers",
            "2 malformed",
            "446.1 KiB",
            "up 1m15s",
        ],
    ),
    (
        EmitterMetrics(
            store="orders",
            subscription="orders:projection",
            events_per_second=0.0,
            total_events=40,
            buffered=4,
            paused=True,
            breaker="open",
            failures=5,
        ),
        [
            "subscription=orders:projection",
            "0 events/s",
            "40 delivered",
            "4 buffered",
            "breaker=open",
            "paused=true",
            "5 failures",
        ],
    ),
    (
        NodeHealth(node="node1", status="degraded", load_avg=3.2, memory_usage=0.45),
        ["status=degraded", "node=node1", "load=3.2", "mem=45%"],
    ),
    (
        ClusterHealth(status="degraded", healthy_nodes=2, total_nodes=3, degraded_nodes=["node3"]),
        ["2/3 nodes healthy", "degraded=node3"],
    ),
    (
        SubscriptionHealth(
            store="orders",
            subscription="orders:projection",
            status="failed",
            event="circuit_breaker_opened",
            error_count=3,
            last_error="ConnectionError: down",
        ),
        ["status=failed", "event=circuit_breaker_opened", "errors=3", "last_error=ConnectionError: down"],
    ),
    (HealthCheck(check_name="disk", node="node1", result="fail", duration_ms=12.5), ["check=disk", "12.5 ms"]),
    (PerformanceMetric(metric_name="query", value=12.5, unit="ms"), ["query=12.5 ms"]),
    (
        LatencyMetric(component="api", operation="append", p50_ms=1.2, p99_ms=9.9, samples=1000),
        ["p50=1.2 ms", "p99=9.9 ms", "samples=1000"],
    ),
    (
        ResourceUsage(node="node1", cpu_percent=42.0, memory_bytes=512 * 1024 * 1024, memory_percent=30.0),
        ["cpu=42%", "mem=512.0 MiB (30%)"],
    ),
    (MetricAlert(metric_name="cpu", value=97.0, threshold=90.0), ["cpu=97 above 90"]),
    (SystemState(node="node1", uptime_s=3700, memory_bytes=10**9), ["up 1h01m", "mem=953.7 MiB"]),
    (LogSummary(period_s=60, total=1200, counts={"error": 10}), ["1200 lines in 1m00s", "error=10"]),
    (
        Events(
            store="orders", selector="$all", events=[{"event_type": "OrderPlaced", "stream_id": "o-7", "version": 7}]
        ),
        ["store=orders", "1 event (OrderPlaced o-7 v7)"],
    ),
    (SystemConfig(component="orders", key="retention", value="7d", previous="3d"), ["key=retention", "3d -> 7d"]),
]


@pytest.mark.parametrize(("payload", "expected"), RENDERED, ids=[type(p).__name__ for p, _ in RENDERED])
def test_pretty_lines_carry_the_numbers_that_matter(payload: Payload, expected: list[str]) -> None:
    text, _ = pretty(_message(payload))
    for fragment in expected:
        assert fragment in text, (fragment, text)


@pytest.mark.parametrize(
    ("payload", "style"),
    [
        (AuthEvent(event="login_failed", principal="mallory", success=False), "failure"),
        (HealthCheck(check_name="disk", node="node1", result="timeout", duration_ms=5000), "failure"),
        (
            EmitterMetrics(store="o", subscription="o:p", events_per_second=0, total_events=0, paused=True),
            "failure",
        ),
    ],
    ids=["refused-login", "timed-out-check", "paused-emitter"],
)
def test_trouble_is_coloured_as_a_failure(payload: Payload, style: str) -> None:
    assert pretty(_message(payload))[1] == STYLES[style]


def test_data_that_does_not_fit_its_type_is_shown_as_it_is() -> None:
    odd = _message(type="ThroughputMetric", topic=b"ex_esdb_metrics/throughput", data={"component": "c", "count": "x"})
    assert pretty(odd)[0].endswith("ThroughputMetric component=c")
    custom = _message(type="Custom", topic=b"ex_esdb_health/custom", data={"status": "fine", "n": 1})
    assert pretty(custom)[0].endswith("Custom status=fine")


def _colour_env(clean_env: dict[str, str], **extra: str) -> dict[str, str]:
    """No colour switches of its own; a terminal type that has colours."""
    env = {k: v for k, v in clean_env.items() if k not in ("FORCE_COLOR", "NO_COLOR", "TTY_COMPATIBLE", "COLUMNS")}
    return {**env, "TERM": "xterm-256color", **extra}


@pytest.mark.parametrize(("force", "coloured"), [(True, True), (False, False)])
def test_make_console_forces_colour_into_a_pipe(clean_env: dict[str, str], force: bool, coloured: bool) -> None:
    probe = f"from exesdb_cli.render import make_console; make_console(force_colour={force}).print('x', style='red')"
    done = subprocess.run(
        [sys.executable, "-c", probe], env=_colour_env(clean_env), capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    assert bool(ANSI.search(done.stdout)) is coloured, repr(done.stdout)


def _demo(env: dict[str, str], seconds: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([EXESDB, "demo", "--duration", seconds], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done


def _in_order(out: str, markers: list[str]) -> None:
    where = 0
    for marker in markers:
        found = out.find(marker, where)
        assert found >= 0, f"{marker!r} missing after offset {where}:\n{out}"
        where = found + len(marker)


@pytest.mark.timeout(90)
def test_demo_tells_the_whole_health_story_in_order(clean_env: dict[str, str]) -> None:
    done = _demo(_colour_env(clean_env), "4")
    out = done.stdout
    # The workers' own lines, in the order they happen.
    _in_order(
        out,
        [
            "EMITTER WORKER ACTIVATION",
            "[failure] ✖ DELIVERY FAILED: orders:projection",
            "(circuit_breaker_opened) - Emission PAUSED",
            "HALF-OPEN: the breaker of orders:projection",
            "(circuit_breaker_closed) - Emission RESUMED",
            "HELD EVENTS DELIVERED",
            "delivered in order",
            "EMITTER WORKER TERMINATION",
            "exesdb demo: what happened",
            "breaker     orders:projection: closed -> open -> half-open",
        ],
    )
    # The health reports come by the bus, later than the line logged as each was sent (by how
    # much depends on the load): they are in order among themselves and after that line, not at
    # a fixed place among the later ones. The demo waits for the closed report before it says
    # the held events are delivered.
    _in_order(
        out,
        [
            "(circuit_breaker_opened) - Emission PAUSED",
            "event=circuit_breaker_opened",
            "event=circuit_breaker_half_open",
            "event=circuit_breaker_closed",
            "HELD EVENTS DELIVERED",
        ],
    )
    # Summaries with their numbers, from the bus.
    assert re.search(r"HealthSummary store=orders \d/2 healthy", out)
    assert re.search(r"MetricsSummary store=orders [\d.]+ events/s \d+ delivered", out)
    assert re.search(r"BrokerMetrics node=\S+ [\d.]+ msg/s \d+ messages \d+ subscribers", out)
    assert re.search(r"ThroughputMetric component=persistence \d+ ops/s", out)
    # The end: every held event delivered, nothing left behind.
    held = re.search(r"(\d+) event\(s\) held while paused, (\d+) delivered after it, in order", out)
    assert held and held.group(1) == held.group(2) and int(held.group(1)) >= 1, out
    assert re.search(r"orders:projection\s+(\d+) of \1 store events .* 0 dropped, 0 left undelivered", out), out
    # Every line of the emitter came through the SDK's handler: a time, a level, a category.
    for line in out.splitlines():
        if "DELIVERY FAILED" in line or "Emission" in line:
            assert re.match(r"\d\d:\d\d:\d\d (INFO|WARNING) \[(failure|success)\] ", line), line
    assert ANSI.search(out) is None  # piped: plain
    assert done.stderr == ""  # no traceback, no logging error, nothing from Python's last-resort handler


@pytest.mark.timeout(90)
def test_demo_is_coloured_when_forced(clean_env: dict[str, str]) -> None:
    out = _demo(_colour_env(clean_env, FORCE_COLOR="1"), "3").stdout
    lines = out.splitlines()
    for marker in ("Emission PAUSED", "Emission RESUMED", "EMITTER WORKER ACTIVATION", " HealthSummary "):
        line = next((line for line in lines if marker in line), None)
        assert line is not None and ANSI.search(line), (marker, line)


@pytest.mark.timeout(60)
def test_tail_pretty_is_coloured_when_piped(broker: BrokerProcess, clean_env: dict[str, str]) -> None:
    env = {**_colour_env(clean_env), "EXESDB_BACKEND": broker.backend}
    tail = subprocess.Popen(
        [EXESDB, "tail", "health", "--pretty", "--count", "1", "--timeout", "20"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        assert tail.stderr is not None
        assert "following" in tail.stderr.readline()  # subscribed, confirmed by the broker
        with Publisher(broker.frontend) as pub:
            pub.publish_message(NodeHealth(node="node1", status="degraded"))
        out, _ = tail.communicate(timeout=30)
    finally:
        if tail.poll() is None:
            tail.kill()
            tail.wait(10)
    assert "NodeHealth status=degraded" in out
    assert ANSI.search(out), repr(out)


@pytest.mark.timeout(60)
def test_demo_attached_runs_on_the_running_broker_and_says_where_its_dashboard_is(
    start_broker: StartBroker, clean_env: dict[str, str]
) -> None:
    broker = start_broker(http=True)
    before = _instance_counts(broker)
    endpoints = ["--frontend", broker.frontend, "--backend", broker.backend, "--control", broker.control]
    done = subprocess.run(
        [EXESDB, "demo", "--duration", "2", *endpoints],
        env=clean_env,
        capture_output=True,
        text=True,
        timeout=45,
    )
    assert done.returncode == 0, done.stderr
    assert f"exesdb demo: broker frontend={broker.frontend} backend={broker.backend}" in done.stdout
    assert f"watch it live: {broker.http}/" in done.stdout
    instances = ("ex_esdb_health", "ex_esdb_events", "ex_esdb_alerts")  # the demo's traffic went through it
    # the tap counts at idle priority: the demo's last alert may not be counted yet at its exit
    assert wait_until(lambda: all(_instance_counts(broker)[i] > before[i] for i in instances), 10), (
        before,
        _instance_counts(broker),
    )


def test_demo_attached_to_no_broker_is_one_line(clean_env: dict[str, str]) -> None:
    done = subprocess.run(
        [EXESDB, "demo", "--control", "tcp://127.0.0.1:1", "--duration", "1"],
        env=clean_env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "exesdb: error: no broker control endpoint answered at tcp://127.0.0.1:1 within 5 s"
    ]


def _instance_counts(broker: BrokerProcess) -> dict[str, int]:
    with ControlClient(broker.control) as control:
        return {name: int(entry["messages"]) for name, entry in control.stats()["instances"].items()}
