"""The exesdb CLI: CliRunner where it fits, subprocesses against a real broker where it matters."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from exesdb_cli.app import app
from exesdb_sdk import ControlClient, Publisher
from typer.testing import CliRunner

from .conftest import BrokerProcess, cli_env, default_sigint, instance_messages, wait_until
from .peers import free_port

EXESDB = str(Path(sys.executable).with_name("exesdb"))
runner = CliRunner()


class Tail:
    """An ``exesdb tail`` subprocess, ready once it said it is following."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [EXESDB, "tail", *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            # A shell without job control starts background jobs (a CI runner's, say) with SIGINT
            # ignored, and children inherit that; give the tail the terminal's default, as for a user.
            preexec_fn=default_sigint,
        )
        assert self.proc.stderr is not None
        line = self.proc.stderr.readline()  # blocks until it follows, or exits
        assert line.startswith("exesdb tail: following"), line + self.proc.stderr.read()

    def finish(self, timeout: float = 15) -> tuple[int, list[str], str]:
        out, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, out.splitlines(), err


def test_tail_count_exit_0_and_json_lines_parse(broker: BrokerProcess, clean_env: dict[str, str]) -> None:
    tail = Tail(["health", "--count", "2", "--timeout", "20"], cli_env(broker, clean_env))
    with Publisher(broker.frontend) as pub:
        pub.publish("metrics", "x", "T", {"no": "metrics"})
        pub.publish("health", "node_health:n1", "NodeHealth", {"node": "n1", "status": "healthy"}, corr="c-9")
        pub.publish("health", "blob", "Custom", {"bin": b"\x00\xff"})
    code, lines, _ = tail.finish()
    assert code == 0
    first, second = (json.loads(line) for line in lines)
    assert (first["topic"], first["instance"], first["type"], first["corr"]) == (
        "ex_esdb_health/node_health:n1", "ex_esdb_health", "NodeHealth", "c-9",
    )  # fmt: skip
    assert first["ts"].endswith("Z") and first["seq"] == 1 and first["data"]["status"] == "healthy"
    assert second["data"] == {"bin": "AP8="}  # binary values are base64


def test_tail_timeout_exits_124(broker: BrokerProcess, clean_env: dict[str, str]) -> None:
    started = time.monotonic()
    code, lines, _ = Tail(["alerts", "--count", "1", "--timeout", "0.5"], cli_env(broker, clean_env)).finish()
    assert (code, lines) == (124, [])
    assert time.monotonic() - started < 10


def test_tail_exclude_topic_and_raw(broker: BrokerProcess, clean_env: dict[str, str]) -> None:
    tail = Tail(
        ["metrics", "audit", "--exclude", "broker", "--exclude", "noise", "--raw", "--count", "2"],
        cli_env(broker, clean_env),
    )
    with Publisher(broker.frontend) as pub:
        pub.publish("metrics", "noise:1", "T", {"n": 0})
        pub.publish("metrics", "useful", "T", {"n": 1})
        pub.publish("health", "useful", "T", {"n": 9})
        pub.publish("audit", "access", "T", {"n": 2})
    code, lines, _ = tail.finish()
    assert code == 0 and [json.loads(line) for line in lines] == [{"n": 1}, {"n": 2}]

    tail = Tail(["--topic", "ex_esdb_alerts/crit", "--json", "--count", "1"], cli_env(broker, clean_env))
    with Publisher(broker.frontend) as pub:
        pub.publish("alerts", "warning", "T", {"n": 1})
        pub.publish("alerts", "critical", "T", {"n": 2})
    code, lines, _ = tail.finish()
    assert code == 0 and json.loads(lines[0])["topic"] == "ex_esdb_alerts/critical"


def test_a_one_shot_publish_reaches_a_running_tail(broker: BrokerProcess, clean_env: dict[str, str]) -> None:
    env = cli_env(broker, clean_env)
    tail = Tail(["security", "--count", "1", "--timeout", "20"], env)
    login = '{"principal": "alice", "event": "login", "success": true}'
    done = subprocess.run(
        [EXESDB, "publish", "security", "auth", login, "--type", "AuthEvent"],
        env=env, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == "exesdb publish: sent 1 message to ex_esdb_security/auth"
    code, lines, _ = tail.finish()
    assert code == 0 and json.loads(lines[0])["data"]["principal"] == "alice"


def test_publish_lines_sends_one_message_per_line(broker: BrokerProcess, clean_env: dict[str, str]) -> None:
    env = cli_env(broker, clean_env)
    tail = Tail(["logging", "--count", "3", "--timeout", "20"], env)
    stdin = '{"i": 1}\n\n{"i": 2}\n{"i": 3}\n'
    done = subprocess.run(
        [EXESDB, "publish", "logging", "app", "--lines"],
        input=stdin,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    code, lines, _ = tail.finish()
    assert code == 0 and [json.loads(line)["data"]["i"] for line in lines] == [1, 2, 3]
    assert [json.loads(line)["seq"] for line in lines] == [1, 2, 3]


@pytest.mark.parametrize(
    ("args", "stdin", "message"),
    [
        (["alerts", "x", "{not json"], None, "DATA is not valid JSON"),
        (["alerts", "x", "[1, 2]"], None, "DATA must be a JSON object"),
        (["alertz", "x", "{}"], None, "unknown instance 'alertz'"),
        (["alerts", "critical", '{"severity": "apocalyptic", "title": "t"}', "--type", "SystemAlert"], None,
         "SystemAlert.severity: Invalid enum value 'apocalyptic'"),
        (["alerts", "critical", '{"title": "t"}', "--type", "SystemAlert"], None,
         "SystemAlert.severity: Object missing required field"),
        (["alerts", "x", "--lines"], '{"ok": 1}\nnope\n', "stdin line 2 is not valid JSON"),
        (["alerts", "x"], "", "no DATA given and stdin is empty"),
        (["alerts", "", "{}"], None, "subtopic must not be empty"),
    ],
)  # fmt: skip
def test_publish_errors_are_one_line_exit_1_and_send_nothing(
    broker: BrokerProcess, clean_env: dict[str, str], args: list[str], stdin: str | None, message: str
) -> None:
    before = instance_messages(broker, "ex_esdb_alerts")
    done = subprocess.run(
        [EXESDB, "publish", *args],
        input=stdin or "",
        env=cli_env(broker, clean_env),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 1
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("exesdb: error: ") and message in lines[0], done.stderr
    assert instance_messages(broker, "ex_esdb_alerts") == before


def test_no_broker_is_a_clear_error_within_the_timeout(clean_env: dict[str, str]) -> None:
    port = free_port()
    env = {**clean_env, "EXESDB_FRONTEND": f"tcp://127.0.0.1:{port}", "EXESDB_CONTROL": f"tcp://127.0.0.1:{port}"}
    started = time.monotonic()
    done = subprocess.run(
        [EXESDB, "publish", "alerts", "x", "{}", "--connect-timeout", "0.5"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 1
    assert done.stderr == f"exesdb: error: no broker answered at tcp://127.0.0.1:{port} within 0.5 s\n"
    done = subprocess.run([EXESDB, "stats", "--timeout", "0.5"], env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 1 and "no broker control endpoint answered" in done.stderr
    assert time.monotonic() - started < 15


def diagnostics(broker: BrokerProcess) -> dict[str, Any]:
    with ControlClient(broker.control) as control:
        counts: dict[str, Any] = control.stats()["instances"]["ex_esdb_diagnostics"]
    return counts


def test_stats_json_counts_match_what_was_sent(broker: BrokerProcess, clean_env: dict[str, str]) -> None:
    done = subprocess.run(
        [EXESDB, "publish", "diagnostics", "load", '{"v": 1}', "--count", "250", "--rate", "5000"],
        env=cli_env(broker, clean_env), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    # envelopes: a paced publisher that falls behind catches up in a burst, which it coalesces
    assert wait_until(lambda: diagnostics(broker)["envelopes"] == 250, timeout=10)
    result = runner.invoke(app, ["stats", "--json", "--control", broker.control])
    assert result.exit_code == 0, result.output
    stats: dict[str, Any] = json.loads(result.stdout)
    assert stats["instances"]["ex_esdb_diagnostics"]["envelopes"] == 250
    assert stats["totals"]["envelopes"] >= 250
    table = runner.invoke(app, ["stats", "--control", broker.control])
    assert table.exit_code == 0 and "ex_esdb_diagnostics" in table.stdout and "250" in table.stdout


def test_instances_lists_aliases_subtopics_and_types() -> None:
    result = runner.invoke(app, ["instances", "--json"])
    assert result.exit_code == 0
    rows = json.loads(result.stdout)
    health = next(row for row in rows if row["alias"] == "health")
    assert health["types"]["SubscriptionHealth"] == "store_health:{store}"
    assert len(rows) == 10
    table = runner.invoke(app, ["instances"])
    assert table.exit_code == 0 and "ex_esdb_security" in table.stdout


def test_every_help_is_complete_with_examples() -> None:
    for command in ("tail", "publish", "stats", "instances", "demo"):
        result = runner.invoke(app, [command, "--help"])
        assert result.exit_code == 0
        assert "Example" in result.stdout, command
    assert "124" in runner.invoke(app, ["tail", "--help"]).stdout
    assert runner.invoke(app, ["--version"]).stdout.startswith("exesdb ")


def test_help_does_not_import_the_broker_or_zmq(clean_env: dict[str, str]) -> None:
    probe = (
        "import sys; from exesdb_cli.app import main; sys.argv = ['exesdb', '--help']\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('zmq', 'msgspec', 'exesdb_broker', 'exesdb_sdk')))"
    )
    done = subprocess.run([sys.executable, "-c", probe], env=clean_env, capture_output=True, text=True, timeout=30)
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_ctrl_c_stops_tail_cleanly(broker: BrokerProcess, clean_env: dict[str, str]) -> None:
    tail = Tail(["--pretty"], cli_env(broker, clean_env))
    tail.proc.send_signal(signal.SIGINT)
    code, _, err = tail.finish()
    assert code == 0 and "Traceback" not in err


@pytest.mark.timeout(60)
def test_demo_runs_and_exits_0(clean_env: dict[str, str]) -> None:
    done = subprocess.run(
        [EXESDB, "demo", "--duration", "3"], env=clean_env, capture_output=True, text=True, timeout=45
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    for instance in ("health", "metrics", "events", "audit", "security", "logging", "alerts", "diagnostics", "system"):
        assert f" {instance} " in out, instance
    assert "Traceback" not in done.stderr


def test_stats_warns_when_counts_are_approximate_or_threads_restarted() -> None:
    from exesdb_cli.stats import render_stats
    from rich.console import Console

    stats = {
        "instances": {"ex_esdb_health": {"messages": 1, "envelopes": 1, "bytes": 10, "rate": 0.0}},
        "totals": {"messages": 1, "envelopes": 1, "bytes": 10, "rate": 0.0},
        "subscribers": 0, "publishers": 0, "malformed": 0, "uptime": 1.0,
        "counting": {"exact": False, "missed_frames": 2_000, "paused": 3},
        "restarts": {"total": 1, "by_thread": {"tap": 1}},
        "fds": {"used": 250, "limit": 256, "paused": ["frontend"]},
        "journal": {"state": "ok", "heads": {"ex_esdb_alerts": 5}, "backlog": 0, "durable": 0, "dropped": 7},
    }  # fmt: skip
    console = Console(width=200, record=True)
    console.print(render_stats(stats))
    text = console.export_text()
    assert "counts are approximate: the counter missed at least 1,000 messages under load" in text
    assert "thread restarts: tap 1" in text
    assert "out of file descriptors: not accepting on frontend" in text
    assert "NOT JOURNALED 7 (marked in the journal)" in text
