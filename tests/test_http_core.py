"""The HTTP surface's core against real brokers: its settings, its place in the broker (the
readiness line, ``ping``, a clean stop, a port in use), bearer tokens on a CURVE broker,
``/healthz``, ``/metrics`` against ``exesdb stats``, and ``exesdb dashboard``."""

from __future__ import annotations

import contextlib
import json
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from exesdb_broker import Broker, BrokerConfig, load_config
from exesdb_broker.tap import Tap
from exesdb_sdk import ControlClient, Publisher
from exesdb_sdk.curve import write_key_pair
from exesdb_sdk.errors import ConfigError
from exesdb_sdk.messages import NodeHealth
from exesdb_web import BusAccess, WebServer
from exesdb_web.metrics import render
from exesdb_web.server import parse_listen
from prometheus_client.parser import text_string_to_metric_families

from .conftest import FREE, BrokerProcess, Lines, StartBroker, broker_command, cli_env, wait_until

QUIET = ("--metrics-interval", "3600")
"""No BrokerMetrics while a test counts messages."""
EXESDB = str(Path(sys.executable).with_name("exesdb"))
TOKENS = {role: f"{role}-token-0123456789abcdef" for role in ("admins", "subscribers", "publishers", "metrics")}


def _metrics(url: str, **headers: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``/metrics`` parsed by prometheus-client's own parser: (sample name, labels) -> value."""
    response = httpx.get(url + "/metrics", headers=headers, timeout=5)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def _publish_health(frontend: str, control: str, count: int) -> None:
    with Publisher(frontend, control=control) as pub:
        for n in range(count):
            pub.publish_message(NodeHealth(node=f"n{n}", status="healthy"))


# -- settings ------------------------------------------------------------------------------------


def test_the_http_setting_parses_and_bad_values_are_one_line(clean_env: dict[str, str]) -> None:
    assert parse_listen("127.0.0.1:7180") == ("127.0.0.1", 7180)
    assert parse_listen("[::1]:0") == ("::1", 0)
    assert parse_listen("none") is None and parse_listen("NONE") is None
    assert load_config({}, env={}).http == "127.0.0.1:7180"
    assert load_config({}, env={"EXESDB_HTTP": "[::1]:9"}).http == "[::1]:9"
    for bad, why in (
        ("7180", "is not HOST:PORT"),
        ("http://127.0.0.1:7180", "without a scheme"),
        ("::1:7180", "in brackets"),
        ("127.0.0.1:99999", "from 0 to 65535"),
        ("127.0.0.1:http", "from 0 to 65535"),
    ):
        with pytest.raises(ConfigError, match=why):
            load_config({"http": bad}, env={})
    done = subprocess.run(
        [*broker_command(), "--http", "localhost"], env=clean_env, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "exesdb-broker: error: --http: 'localhost' is not HOST:PORT (e.g. 127.0.0.1:7180, [::1]:7180), or none"
    ]


def test_non_loopback_http_without_security_and_security_without_tokens_are_refused(
    clean_env: dict[str, str], tmp_path: Path
) -> None:
    keys = tmp_path / "keys"
    write_key_pair(keys, "broker")
    tokens = tmp_path / "admins.tokens"
    tokens.write_text("# comment\n\nshort\n")
    free = ["--frontend", FREE, "--backend", FREE, "--control", FREE]
    for args, expected in (
        (["--http", "0.0.0.0:0"], "http 0.0.0.0:0 is not a loopback address and security is off"),
        (["--broker-key", str(keys / "broker.key_secret"), "--http", "127.0.0.1:0"], "no HTTP token file is set"),
        (["--http", "127.0.0.1:0", "--http-token-admins", str(tokens)], "line 3: a token needs at least 16"),
    ):
        done = subprocess.run(
            [*broker_command(), *free, *args], env=clean_env, capture_output=True, text=True, timeout=30
        )
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and len(lines) == 1 and expected in lines[0], done.stderr
        assert "short" not in lines[0]  # a token is never shown


# -- in the broker -------------------------------------------------------------------------------


def test_readiness_line_ping_healthz_and_v1_stats(start_broker: StartBroker) -> None:
    broker = start_broker(*QUIET, http=True)
    assert broker.http is not None and broker.http.startswith("http://127.0.0.1:")
    assert f" http={broker.http}" in broker.stderr
    with ControlClient(broker.control) as control:
        assert control.request("ping")["http"] == broker.http
    health = httpx.get(broker.http + "/healthz", timeout=5)
    assert health.status_code == 200
    assert health.json() | {"uptime": 0} == {
        "status": "ok", "node": health.json()["node"], "version": health.json()["version"],
        "uptime": 0, "journal": "ok", "restarts": 0,
    }  # fmt: skip
    stats = httpx.get(broker.http + "/v1/stats", timeout=5).json()
    assert set(stats["instances"]) >= {"ex_esdb_health", "ex_esdb_alerts"} and "ok" not in stats
    off = start_broker()  # the fixtures' default
    assert off.http is None and " http=none" in off.stderr
    with ControlClient(off.control) as control:
        assert control.request("ping")["http"] is None


def test_json_readiness_line_names_the_url(start_broker: StartBroker) -> None:
    broker = start_broker("--log-format", "json", http=True)
    ready = json.loads(next(line for line in broker.lines if '"event": "ready"' in line))
    assert ready["http"] == broker.http and httpx.get(ready["http"] + "/healthz", timeout=5).status_code == 200


def test_a_port_in_use_is_one_line_and_exit_1(clean_env: dict[str, str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [
                *broker_command(),
                "--frontend",
                FREE,
                "--backend",
                FREE,
                "--control",
                FREE,
                "--http",
                f"127.0.0.1:{port}",
            ],
            env=clean_env,
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        f"exesdb-broker: error: cannot bind http to 127.0.0.1:{port}: Address already in use"
    )
    assert "Traceback" not in done.stderr


@pytest.mark.timeout(30)
def test_open_streams_end_cleanly_when_the_broker_stops(start_broker: StartBroker) -> None:
    broker = start_broker(http=True)
    assert broker.http is not None
    ended = threading.Event()
    opened = threading.Event()

    def read() -> None:
        try:
            with httpx.stream("GET", f"{broker.http}/v1/stream", timeout=httpx.Timeout(20)) as response:
                assert response.status_code == 200
                opened.set()
                for _ in response.iter_raw():
                    pass
        except httpx.RemoteProtocolError:
            pass  # the server closed the stream: what an EventSource sees, and reconnects after
        ended.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert opened.wait(10)
    assert broker.stop() == 0
    assert ended.wait(10), "the stream did not end when the broker stopped"
    assert "Traceback" not in broker.stderr and "ERROR" not in broker.stderr, broker.stderr


# -- /metrics --------------------------------------------------------------------------------------


def test_metrics_equal_exesdb_stats(start_broker: StartBroker, clean_env: dict[str, str]) -> None:
    broker = start_broker(*QUIET, http=True)
    assert broker.http is not None
    _publish_health(broker.frontend, broker.control, 7)
    assert wait_until(
        lambda: _metrics(broker.http or "")[("exesdb_messages_total", (("channel", "ex_esdb_health"),))] == 7
    )
    done = subprocess.run(
        [EXESDB, "stats", "--json"],
        env=cli_env(broker, clean_env),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    stats = json.loads(done.stdout)
    metrics = _metrics(broker.http)
    for name, figures in stats["instances"].items():
        label = (("channel", name),)
        assert metrics[("exesdb_messages_total", label)] == figures["messages"], name
        assert metrics[("exesdb_bytes_total", label)] == figures["bytes"], name
        assert metrics[("exesdb_envelopes_total", label)] == figures["envelopes"], name
    assert metrics[("exesdb_subscribers", ())] == stats["subscribers"]
    assert metrics[("exesdb_publishers", ())] == stats["publishers"]
    journal = stats["journal"]
    assert metrics[("exesdb_journal_state", (("state", "ok"),))] == 1
    assert metrics[("exesdb_journal_committed_total", ())] == journal["committed"]
    assert metrics[("exesdb_journal_durable_acks_total", ())] == journal["durable"]
    assert metrics[("exesdb_journal_backlog", ())] == journal["backlog"]
    for kind, count in stats["security"]["handshake_failures_by_kind"].items():
        assert metrics[("exesdb_handshake_failures_total", (("kind", kind),))] == count
    assert metrics[("exesdb_forbidden_ops_total", ())] == stats["security"]["forbidden_ops"]
    assert metrics[("exesdb_broker_up", ())] == 1
    assert metrics[("exesdb_http_metrics_scrapes_total", ())] >= 2
    assert ("process_resident_memory_bytes", ()) in metrics  # the process collector: the broker's own process
    assert metrics[("process_open_fds", ())] > 0
    assert not any(labels and labels[0][0] == "instance" for _, labels in metrics)  # reserved by Prometheus


def test_metric_families_from_a_stats_reply_with_restarts_and_malformed() -> None:
    stats = {
        "uptime": 1.5,
        "instances": {"ex_esdb_health": {"messages": 3, "envelopes": 3, "bytes": 30}},
        "malformed_by_reason": {"bad envelope": 2},
        "restarts": {"total": 1, "by_thread": {"tap": 1}},
        "journal": {"state": "unavailable", "dropped_by_instance": {"ex_esdb_audit": 4}},
    }
    text = render(stats, {"sse_events": 9}).decode()
    assert 'exesdb_malformed_total{reason="bad envelope"} 2.0' in text
    assert 'exesdb_thread_restarts_total{thread="tap"} 1.0' in text
    assert 'exesdb_journal_dropped_total{channel="ex_esdb_audit"} 4.0' in text
    assert 'exesdb_journal_state{state="unavailable"} 1.0' in text
    assert "exesdb_http_sse_events_total 9.0" in text
    down = render(None, {}).decode()
    assert "exesdb_broker_up 0.0" in down and "exesdb_messages_total" not in down


# -- tokens on a CURVE broker ------------------------------------------------------------------------


@pytest.fixture
def secure_broker(start_broker: StartBroker, tmp_path: Path) -> BrokerProcess:
    keys = tmp_path / "keys"
    write_key_pair(keys, "broker")
    args = ["--broker-key", str(keys / "broker.key_secret")]
    for role, token in TOKENS.items():
        (tmp_path / f"{role}.tokens").write_text(f"# {role}\n{token}\n\n")
        args += [f"--http-token-{role}", str(tmp_path / f"{role}.tokens")]
    return start_broker(*args, http=True)


def test_tokens_guard_every_route_but_healthz_on_a_curve_broker(secure_broker: BrokerProcess) -> None:
    url = secure_broker.http
    assert url is not None

    def get(path: str, token: str | None = None, **extra: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.get(url + path, headers=headers, timeout=5, **extra)

    assert get("/healthz").status_code == 200
    missing = get("/v1/stats")
    assert missing.status_code == 401 and missing.headers["www-authenticate"].startswith("Bearer")
    assert missing.json()["error"]["code"] == "unauthorized" and missing.text.count("\n") == 1
    assert get("/v1/stats", "x" * 20).status_code == 401
    assert httpx.get(url + "/v1/stats", headers={"Authorization": "Basic abc"}, timeout=5).status_code == 401
    assert get("/v1/stats", TOKENS["metrics"]).status_code == 403
    assert get("/metrics", TOKENS["subscribers"]).status_code == 403
    assert get("/nowhere").status_code == 401  # no token: nothing learned of what exists
    # the in-process client is trusted on the CURVE control endpoint: stats and metrics work
    for role in ("subscribers", "admins"):
        stats = get("/v1/stats", TOKENS[role])
        assert stats.status_code == 200 and stats.json()["security"]["enabled"] is True
    assert _metrics(url, Authorization=f"Bearer {TOKENS['metrics']}")[("exesdb_security_enabled", ())] == 1
    assert get("/v1/stats", TOKENS["subscribers"]).json()["http"]["auth_forbidden"] == 2
    # a browser: ?token= becomes an HttpOnly SameSite=Strict cookie, then the bare cookie is enough
    login = get("/", params={"token": TOKENS["subscribers"]})
    assert login.status_code == 303 and login.headers["location"] == "/"
    cookie = login.headers["set-cookie"]
    assert "exesdb_token=" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert get("/v1/stats", cookies={"exesdb_token": TOKENS["subscribers"]}).status_code == 200
    assert get("/", params={"token": "wrong-token-wrong-token"}).status_code == 401
    assert all(token not in secure_broker.stderr for token in TOKENS.values())


def test_sighup_rereads_the_token_files(secure_broker: BrokerProcess, tmp_path: Path) -> None:
    url = secure_broker.http
    assert url is not None
    fresh = "fresh-subscriber-token-0123456789"

    def status(token: str) -> int:
        return httpx.get(url + "/v1/stats", headers={"Authorization": f"Bearer {token}"}, timeout=5).status_code

    assert status(fresh) == 401
    (tmp_path / "subscribers.tokens").write_text(fresh + "\n")
    secure_broker.terminate(signal.SIGHUP)
    assert wait_until(lambda: status(fresh) == 200, 10)
    assert status(TOKENS["subscribers"]) == 401
    (tmp_path / "subscribers.tokens").write_text("bad token with spaces\n")
    secure_broker.terminate(signal.SIGHUP)
    assert secure_broker.wait_line(re.compile("http tokens not reloaded"), 10) is not None
    assert status(fresh) == 200  # a bad file keeps the tokens in force


# -- /healthz when it is not healthy -------------------------------------------------------------------


@pytest.fixture
def standalone(broker: BrokerProcess) -> Iterator[WebServer]:
    server = WebServer(BusAccess(broker.frontend, broker.backend, broker.control), "127.0.0.1", 0)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    assert server.ready.wait(10) and server.error is None
    yield server
    server.stop()
    thread.join(10)


@pytest.mark.timeout(30)
def test_healthz_is_503_with_a_reason_when_the_broker_behind_a_standalone_app_is_gone(
    broker: BrokerProcess, standalone: WebServer
) -> None:
    assert httpx.get(standalone.url + "/healthz", timeout=5).status_code == 200
    assert broker.stop() == 0
    gone = httpx.get(standalone.url + "/healthz", timeout=10)
    assert gone.status_code == 503
    assert gone.json() == {
        "status": "unavailable",
        "reason": f"the broker's control endpoint {broker.control} does not answer",
    }


@pytest.mark.timeout(30)
def test_healthz_is_503_in_the_broker_when_a_thread_died_for_good(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def broken(self: Tap, sub: Any) -> None:
        raise RuntimeError("injected Tap fault")

    monkeypatch.setattr(Tap, "_drain", broken)  # as tests/test_supervisor.py: fails at every restart
    config = BrokerConfig(
        frontend=FREE, backend=FREE, control=FREE, data_dir=str(tmp_path), http="127.0.0.1:0", max_restarts=1
    )
    with Broker(config) as broker:
        url = broker.http
        assert url is not None
        assert wait_until(lambda: not broker.running, 10)
        body = httpx.get(url + "/healthz", timeout=5)
        assert body.status_code == 503
        assert body.json() == {
            "status": "unavailable",
            "reason": "the tap thread failed (RuntimeError: injected Tap fault) and 2 failures in 30 s",
        }


# -- exesdb dashboard ---------------------------------------------------------------------------------


@contextlib.contextmanager
def _dashboard(env: dict[str, str]) -> Iterator[tuple[subprocess.Popen[str], Lines, str, str]]:
    """``exesdb dashboard`` on a free port: the process, its stderr, its serving line and URL."""
    proc = subprocess.Popen(
        [EXESDB, "dashboard", "--http", "127.0.0.1:0"],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert proc.stderr is not None
    err = Lines(proc.stderr)
    try:
        line = err.wait(r"^exesdb dashboard: serving ", 15)
        assert line is not None, err.join(1)
        yield proc, err, line, line.split()[3].rstrip("/")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


@pytest.mark.timeout(30)
def test_exesdb_dashboard_serves_a_remote_broker_and_ctrl_c_exits_0(
    broker: BrokerProcess, clean_env: dict[str, str]
) -> None:
    with _dashboard(cli_env(broker, clean_env)) as (proc, err, line, url):
        assert line == f"exesdb dashboard: serving {url}/ for the broker at {broker.control}"
        assert httpx.get(url + "/healthz", timeout=5).json()["status"] == "ok"
        _publish_health(broker.frontend, broker.control, 3)
        assert wait_until(lambda: _metrics(url)[("exesdb_messages_total", (("channel", "ex_esdb_health"),))] == 3)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(15) == 0
        assert err.join(5).strip() == line  # quiet: nothing but the one line


@pytest.mark.timeout(40)
def test_exesdb_dashboard_given_two_brokers_carries_on_with_the_second_when_the_first_dies(
    start_broker: StartBroker, clean_env: dict[str, str], tmp_path: Path
) -> None:
    a, b = (start_broker("--data-dir", str(tmp_path / name)) for name in "ab")
    env = dict(clean_env)
    for name in ("frontend", "backend", "control"):
        env[f"EXESDB_{name.upper()}"] = f"{getattr(a, name)},{getattr(b, name)}"
    with _dashboard(env) as (_, _, line, url):
        assert line.endswith(f"for the broker at {a.control},{b.control}"), line
        _publish_health(b.frontend, b.control, 2)  # only b has these
        a.proc.kill()
        a.wait_exit(10)

        def from_b() -> bool:
            reply = httpx.get(url + "/v1/stats", timeout=15)
            return reply.status_code == 200 and reply.json()["instances"]["ex_esdb_health"]["messages"] == 2

        assert wait_until(from_b, 20, interval=0.2)
        health = httpx.get(url + "/healthz", timeout=15).json()
        assert health["status"] == "ok", health


def test_exesdb_dashboard_bad_settings_are_one_line_exit_1(clean_env: dict[str, str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for args, expected in (
            (["--http", f"127.0.0.1:{port}"], f"cannot bind http to 127.0.0.1:{port}: Address already in use"),
            (["--http", "0.0.0.0:0"], "is not a loopback address: give --token-file-admins"),
            (["--http", "nope"], "--http 'nope' is not HOST:PORT"),
        ):
            done = subprocess.run(
                [EXESDB, "dashboard", *args],
                env=clean_env,
                capture_output=True,
                text=True,
                timeout=30,
            )
            lines = done.stderr.strip().splitlines()
            assert done.returncode == 1 and len(lines) == 1 and expected in lines[0], done.stderr
