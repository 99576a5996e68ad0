"""The CLI's rough edges (issue 13, defect 7): usage errors, stdin, Ctrl-C, timeouts, closed pipes,
bad config files, an early Ctrl-C of the broker, --version and ``stats --watch``."""

from __future__ import annotations

import errno
import json
import os
import pty
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from exesdb_sdk import Publisher
from exesdb_sdk.endpoints import validate_endpoint
from exesdb_sdk.errors import ConfigError

from .conftest import FREE, BrokerProcess, Lines, broker_command, cli_env, default_sigint, instance_messages, wait_until
from .peers import free_endpoint

EXESDB = str(Path(sys.executable).with_name("exesdb"))


def _exesdb(*args: str, env: dict[str, str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [EXESDB, *args], env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout
    )


def _one_error(done: subprocess.CompletedProcess[str], prog: str = "exesdb") -> str:
    """The single ``<prog>: error: ...`` line on stderr (and nothing else)."""
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), done.stderr
    return lines[0]


class Child:
    """A CLI or broker subprocess with its stdout and stderr read line by line."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None, stdin: int | None = None) -> None:
        self.proc = subprocess.Popen(
            args,
            env=env,
            stdin=subprocess.DEVNULL if stdin is None else stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=default_sigint,
        )
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self.out = Lines(self.proc.stdout)
        self.err = Lines(self.proc.stderr)

    def interrupt(self) -> None:
        self.proc.send_signal(signal.SIGINT)

    def wait(self, timeout: float = 15) -> int:
        code = self.proc.wait(timeout)
        self.out.join()
        self.err.join()
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.wait()


@pytest.fixture
def children() -> Iterator[list[Child]]:
    """Children a test starts; any still running at the end is killed."""
    started: list[Child] = []
    yield started
    for child in started:
        child.kill()


# 1. A forgotten sub-topic


def test_a_forgotten_subtopic_is_named_not_blamed_on_stdin(clean_env: dict[str, str]) -> None:
    data = '{"node": "n1", "status": "healthy"}'
    done = _exesdb("publish", "health", data, "--type", "NodeHealth", "--frontend", free_endpoint(), env=clean_env)
    assert done.returncode == 1
    line = _one_error(done)
    assert "missing SUBTOPIC" in line and "looks like DATA" in line, line
    assert "usage: exesdb publish INSTANCE SUBTOPIC [DATA]" in line


# 2. Waiting on a terminal


@pytest.mark.timeout(30)
def test_publish_on_a_terminal_says_it_reads_stdin(clean_env: dict[str, str], children: list[Child]) -> None:
    controller, terminal = pty.openpty()
    try:
        child = Child([EXESDB, "publish", "alerts", "x", "--frontend", free_endpoint()], clean_env, stdin=terminal)
        children.append(child)
        os.close(terminal)
        hint = child.err.wait("stdin", timeout=15)
        assert hint is not None and "reading DATA from stdin" in hint and "Ctrl-D" in hint, child.err.lines
        os.write(controller, b"\x04")  # Ctrl-D on an empty line: end of input
        assert child.wait() == 1
        assert child.err.lines[-1] == "exesdb: error: no DATA given and stdin is empty"
    finally:
        os.close(controller)


# 3. Ctrl-C


@pytest.mark.timeout(30)
def test_ctrl_c_on_publish_says_how_many_and_exits_130(
    broker: BrokerProcess, clean_env: dict[str, str], children: list[Child]
) -> None:
    child = Child(
        [EXESDB, "publish", "diagnostics", "load", '{"v": 1}', "--count", "100000", "--rate", "100"],
        cli_env(broker, clean_env),
    )
    children.append(child)
    assert wait_until(lambda: instance_messages(broker, "ex_esdb_diagnostics") >= 3, timeout=15)
    child.interrupt()
    assert child.wait() == 130
    match = re.fullmatch(r"exesdb publish: interrupted: published (\d+) of 100000 messages to \S+", child.err.join())
    assert match is not None, child.err.lines
    published = int(match.group(1))
    assert 3 <= published < 100000
    # Every message it says it published reached the broker.
    assert wait_until(lambda: instance_messages(broker, "ex_esdb_diagnostics") == published, timeout=10)


@pytest.mark.timeout(30)
def test_ctrl_c_before_tail_count_is_reached_exits_130(
    broker: BrokerProcess, clean_env: dict[str, str], children: list[Child]
) -> None:
    child = Child([EXESDB, "tail", "alerts", "--count", "5", "--json"], cli_env(broker, clean_env))
    children.append(child)
    assert child.err.wait("following") is not None, child.err.lines
    with Publisher(broker.frontend) as pub:
        pub.publish("alerts", "info", "T", {"n": 1})
    assert child.out.wait("info") is not None
    child.interrupt()
    assert child.wait() == 130
    assert child.err.lines[-1] == "exesdb tail: interrupted: received 1 of 5 messages"


# 4. Usage errors


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--bogus"], "exesdb: error: no such option: --bogus (see exesdb --help)"),
        (["nosuch"], "exesdb: error: no such command 'nosuch' (see exesdb --help)"),
        (["publish"], "exesdb: error: missing argument 'instance' (see exesdb publish --help)"),
        (["publish", "alerts"], "exesdb: error: missing argument 'subtopic' (see exesdb publish --help)"),
        (["tail", "--bogus"], "exesdb: error: no such option: --bogus (see exesdb tail --help)"),
        (["stats", "--interval", "0"], "exesdb: error: invalid value for '--interval'"),
        (["publish", "alerts", "x", "{}", "--count", "many"], "exesdb: error: invalid value for '--count'"),
    ],
)
def test_usage_errors_are_one_line_and_exit_1(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from exesdb_cli.app import main

    monkeypatch.setattr(sys, "argv", ["exesdb", *args])
    with pytest.raises(SystemExit) as exited:
        main()
    captured = capsys.readouterr()
    assert exited.value.code == 1, captured.err
    assert captured.out == ""
    assert len(captured.err.splitlines()) == 1 and captured.err.startswith(message), captured.err


def test_usage_errors_of_both_commands_are_one_line_and_help_still_works(clean_env: dict[str, str]) -> None:
    done = _exesdb("tail", "--bogus", env=clean_env)
    assert (done.returncode, done.stdout) == (1, "")
    assert _one_error(done) == "exesdb: error: no such option: --bogus (see exesdb tail --help)"
    broker = subprocess.run(
        [*broker_command(), "--hwm", "lots"], env=clean_env, capture_output=True, text=True, timeout=30
    )
    assert broker.returncode == 2  # the README: 2 for bad settings
    assert _one_error(broker, "exesdb-broker").startswith("exesdb-broker: error: invalid value for '--hwm'")
    helped = _exesdb("publish", "--help", env=clean_env)
    assert helped.returncode == 0 and helped.stdout.startswith("Usage: exesdb publish") and helped.stderr == ""
    bare = _exesdb(env=clean_env)
    assert bare.returncode == 0 and "Commands" in bare.stdout


# 5. --timeout bounds the connect wait


@pytest.mark.timeout(60)
def test_timeout_bounds_the_connect_wait(broker: BrokerProcess, clean_env: dict[str, str]) -> None:
    dead = free_endpoint()
    # A tail that must end within 0.3 s does not wait its 30 s connect timeout for a dead broker.
    done = _exesdb("tail", "--backend", dead, "--timeout", "0.3", "--connect-timeout", "30", env=clean_env, timeout=15)
    assert done.returncode == 1
    assert _one_error(done) == f"exesdb: error: no broker answered at {dead} within 0.3 s"
    # Nor for a dead control endpoint when it replays (the backend answers).
    done = _exesdb(
        "tail", "audit", "--since", "1h", "--backend", broker.backend, "--control", dead, "--timeout", "0.3",
        env=clean_env,
    )  # fmt: skip
    assert done.returncode == 1
    assert _one_error(done) == f"exesdb: error: no broker control endpoint answered at {dead} within 0.3 s"
    # A durable publish waits --connect-timeout for the control endpoint too, not 5 s.
    done = _exesdb(
        "publish", "audit", "x", "{}", "--durable", "--frontend", broker.frontend, "--control", dead,
        "--connect-timeout", "0.3", env=clean_env,
    )  # fmt: skip
    assert done.returncode == 1
    assert _one_error(done) == f"exesdb: error: no broker control endpoint answered at {dead} within 0.3 s"
    done = _exesdb("stats", "--control", dead, "--timeout", "0.3", env=clean_env)
    assert _one_error(done) == f"exesdb: error: no broker control endpoint answered at {dead} within 0.3 s"


# 6. A host name that does not resolve


def test_a_host_that_does_not_resolve_is_named(clean_env: dict[str, str]) -> None:
    for bind in (False, True):
        with pytest.raises(ConfigError, match=r"cannot resolve host 'nope\.invalid' in 'tcp://nope\.invalid:7100'"):
            validate_endpoint("tcp://nope.invalid:7100", "frontend", bind=bind)
    assert validate_endpoint("tcp://localhost:7100") == "tcp://localhost:7100"
    assert validate_endpoint("tcp://[::1]:7100", bind=True) == "tcp://[::1]:7100"
    done = _exesdb("stats", "--control", "tcp://nope.invalid:7102", env=clean_env)
    assert done.returncode == 1
    assert _one_error(done) == (
        "exesdb: error: control: cannot resolve host 'nope.invalid' in 'tcp://nope.invalid:7102'"
    )


# 7. A config file that is not UTF-8


def test_a_config_file_that_is_not_utf8_is_one_line(tmp_path: Path, clean_env: dict[str, str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_bytes(b"\xff\xfe[broker]\nhwm = 5\n")
    for args, env in (
        (["--config", str(bad)], clean_env),
        ([], {**clean_env, "EXESDB_CONFIG": str(bad)}),
    ):
        done = subprocess.run([*broker_command(), *args], env=env, capture_output=True, text=True, timeout=30)
        assert done.returncode == 2, done.stderr
        line = _one_error(done, "exesdb-broker")
        assert str(bad) in line and "not UTF-8" in line, line


# 8. Ctrl-C while the broker starts


def _open_writer(fifo: Path) -> int | None:
    """The write end of ``fifo`` once a reader has it open, else ``None``."""
    try:
        return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno == errno.ENXIO:  # no reader yet
            return None
        raise


@pytest.mark.timeout(60)
def test_ctrl_c_while_the_broker_starts_is_one_line_and_130(tmp_path: Path) -> None:
    # The broker reads its config from a FIFO, so it is held in start-up until the test writes it:
    # a Ctrl-C then lands before the ready line, every time.
    fifo = tmp_path / "broker.toml"
    os.mkfifo(fifo)
    broker = BrokerProcess(["--config", str(fifo), "--frontend", FREE, "--backend", FREE, "--control", FREE],
                           preexec=default_sigint)  # fmt: skip
    writer: list[int] = []

    def reading() -> bool:
        fd = _open_writer(fifo)
        if fd is not None:
            writer.append(fd)
        return bool(writer)

    try:
        assert wait_until(reading, timeout=20), broker.stderr
        broker.terminate(signal.SIGINT)
        os.write(writer[0], b"[broker]\nhwm = 100\n")
        os.close(writer.pop())
        assert broker.wait_exit(20) == 130
    finally:
        for fd in writer:
            os.close(fd)
        broker.stop()
    assert "Traceback" not in broker.stderr
    assert broker.lines == ["exesdb-broker: interrupted (SIGINT) before start-up finished"], broker.stderr


# 9. --version


def test_version_of_both_commands(clean_env: dict[str, str]) -> None:
    from exesdb_sdk import __version__

    broker = subprocess.run([*broker_command(), "--version"], env=clean_env, capture_output=True, text=True, timeout=30)
    assert (broker.returncode, broker.stdout, broker.stderr) == (0, f"exesdb-broker {__version__}\n", "")
    cli = _exesdb("--version", env=clean_env)
    assert (cli.returncode, cli.stdout) == (0, f"exesdb {__version__}\n")


# 10. stats --watch


@pytest.mark.timeout(30)
def test_stats_watch_writes_each_refresh_when_piped(
    broker: BrokerProcess, clean_env: dict[str, str], children: list[Child]
) -> None:
    child = Child([EXESDB, "stats", "--watch", "--interval", "0.2", "--control", broker.control], clean_env)
    children.append(child)
    assert child.out.wait("exesdb-broker .* on ") is not None, child.err.lines
    assert child.out.wait("exesdb-broker .* on ") is not None, "a second refresh"
    child.interrupt()
    assert child.wait() == 0
    assert child.err.lines == []


@pytest.mark.timeout(60)
def test_stats_watch_retries_while_the_broker_is_away(clean_env: dict[str, str], children: list[Child]) -> None:
    control = free_endpoint()
    args = ["--frontend", FREE, "--backend", FREE, "--control", control]
    first = BrokerProcess(args).wait_ready()
    try:
        child = Child([EXESDB, "stats", "--watch", "--json", "--interval", "0.2", "--timeout", "0.5",
                       "--control", control], clean_env)  # fmt: skip
        children.append(child)
        seen = child.out.wait("uptime")
        assert seen is not None, child.err.lines
    finally:
        first.stop()
    notice = child.err.wait("unavailable")
    assert notice == f"exesdb stats: broker unavailable at {control}, retrying...", child.err.lines
    assert child.proc.poll() is None, "it keeps watching"
    second = BrokerProcess(args).wait_ready()
    try:
        assert child.err.wait("answering again") is not None, child.err.lines
        latest = None
        for _ in range(50):  # the lines the first broker answered, then the second's
            line = child.out.wait("uptime")
            assert line is not None, child.err.lines
            latest = json.loads(line)
            if latest["started_at"] != json.loads(seen)["started_at"]:
                break
        assert latest is not None and latest["started_at"] != json.loads(seen)["started_at"]
        child.interrupt()  # while the broker answers: its stop would be a second outage
        assert child.wait() == 0
    finally:
        second.stop()
    assert child.err.lines.count(notice) == 1  # once per outage, however many retries


# 11. A closed stdout pipe


@pytest.mark.timeout(30)
def test_a_closed_pipe_ends_a_pretty_tail_quietly(broker: BrokerProcess, clean_env: dict[str, str]) -> None:
    proc = subprocess.Popen(
        [EXESDB, "tail", "--pretty"], env=cli_env(broker, clean_env), stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    err = Lines(proc.stderr)
    try:
        assert err.wait("following") is not None, err.lines
        with Publisher(broker.frontend) as pub:
            pub.publish("logging", "app", "T", {"n": 0})
            assert proc.stdout.readline()
            proc.stdout.close()  # like head -n 1
            for n in range(1, 2000):  # until a write meets the closed pipe
                pub.publish("logging", "app", "T", {"n": n})
                if wait_until(lambda: proc.poll() is not None, timeout=0.02):
                    break
        code = proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert code == 0, err.join()
    assert err.join().splitlines() == [err.lines[0]], "nothing but the following line"


@pytest.mark.timeout(60)
def test_a_closed_pipe_ends_the_demo_quietly(clean_env: dict[str, str]) -> None:
    proc = subprocess.Popen(
        [EXESDB, "demo", "--duration", "30"], env=clean_env, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    err = Lines(proc.stderr)
    try:
        for _ in range(3):  # exesdb demo | head -n 3
            assert proc.stdout.readline()
        proc.stdout.close()
        code = proc.wait(25)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert code == 0, err.join()
    assert "Traceback" not in err.join()


def _holds_sigint(pid: int) -> bool:
    status = Path(f"/proc/{pid}/status").read_text()
    blocked = int(status.split("SigBlk:")[1].split()[0], 16)
    return bool(blocked & (1 << (signal.SIGINT - 1)))


@pytest.mark.timeout(90)
def test_ctrl_c_at_any_moment_of_start_up_gives_no_traceback() -> None:
    # during the imports (about 0.4 s) as much as after them: the entry point holds the signals
    # first (what comes before it is Python's own start, which no program can handle)
    broker = str(Path(sys.executable).with_name("exesdb-broker"))
    free = "tcp://127.0.0.1:*"
    for delay in (0.0, 0.05, 0.1, 0.2, 0.3, 0.5):
        proc = subprocess.Popen(
            [broker, "--frontend", free, "--backend", free, "--control", free, "--http", "none"],
            stderr=subprocess.PIPE,
            text=True,
        )
        assert wait_until(lambda: proc.poll() is not None or _holds_sigint(proc.pid), timeout=10)  # noqa: B023
        time.sleep(delay)  # the moment of the Ctrl-C is what is tested, not a wait for a socket
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
        assert "Traceback" not in err, f"Ctrl-C {delay} s into start-up:\n{err}"
        assert proc.returncode in (0, 130), (delay, proc.returncode, err)
