"""The README's examples and set-up commands are the real ones."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import BrokerProcess
from .peers import free_endpoint

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, re.DOTALL)


MARKER = "This example is run by tests/test_readme.py"
MARKERS = [m.start() for m in re.finditer(re.escape(MARKER), README)]


@pytest.mark.parametrize("marker", MARKERS)
def test_sdk_examples_run_and_print_what_the_readme_says(
    broker: BrokerProcess, clean_env: dict[str, str], marker: int
) -> None:
    example = re.search(r"```python\n(.*?)```", README[marker:], re.DOTALL)
    expected = re.search(r"It prints:\n\n```\n(.*?)```", README[marker:], re.DOTALL)
    assert example and expected
    env = {
        **clean_env,
        "EXESDB_FRONTEND": broker.frontend,
        "EXESDB_BACKEND": broker.backend,
        "EXESDB_CONTROL": broker.control,
    }
    done = subprocess.run([sys.executable, "-c", example.group(1)], env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout == expected.group(1)


def test_ci_runs_the_readme_test_command() -> None:
    commands = [line for block in _blocks("sh") for line in block.splitlines() if "pytest" in line]
    assert commands == ["pip install '.[test]' && python -m pytest -n 2"]
    assert commands[0] in (ROOT / ".ci" / "run").read_text().splitlines()


def test_readme_broker_flags_match_the_broker() -> None:
    from exesdb_broker.config import BrokerConfig

    documented = set(re.findall(r"^\| `--([a-z-]+)", README, re.MULTILINE))
    fields = {name.replace("_", "-") for name in BrokerConfig.__dataclass_fields__}
    assert documented == fields | {"config"}


def _section_commands(marker: str) -> list[str]:
    start = README.index(marker)
    block = re.search(r"```sh\n(.*?)```", README[start:], re.DOTALL)
    assert block
    return [line for line in block.group(1).splitlines() if line.strip()]


def _env_with_ports(clean_env: dict[str, str]) -> dict[str, str]:
    bin_dir = str(Path(sys.executable).parent)
    env = {**clean_env, "PATH": bin_dir + ":" + clean_env.get("PATH", "")}
    for name in ("FRONTEND", "BACKEND", "CONTROL"):
        env[f"EXESDB_{name}"] = free_endpoint()
    return env


@pytest.mark.timeout(90)
def test_quick_start_commands_work_together(clean_env: dict[str, str]) -> None:
    broker_cmd, tail_cmd, publish_cmd = _section_commands("quick start: run by tests/test_readme.py")
    env = _env_with_ports(clean_env)
    program, *args = shlex.split(broker_cmd)
    assert program == "exesdb-broker"
    broker = BrokerProcess(args, env=env).wait_ready()  # the same script, with its stderr read
    try:
        tail = subprocess.Popen(
            tail_cmd + " --count 1 --timeout 20",
            shell=True,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert tail.stderr is not None and tail.stderr.readline().startswith("exesdb tail: following")
        done = subprocess.run(publish_cmd, shell=True, env=env, capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        out, _ = tail.communicate(timeout=30)
        assert tail.returncode == 0
        message = json.loads(out)
        assert (message["topic"], message["type"], message["data"]["status"]) == (
            "ex_esdb_health/node_health:node1", "NodeHealth", "degraded",
        )  # fmt: skip
    finally:
        code = broker.stop()
    assert code == 0


@pytest.mark.timeout(120)
def test_every_command_example_runs(clean_env: dict[str, str]) -> None:
    commands = _section_commands("commands: each line is run by tests/test_readme.py")
    env = _env_with_ports(clean_env)
    broker = BrokerProcess([], env=env).wait_ready()
    try:
        feeder = subprocess.Popen(  # something for the tails to see, published while they run
            [sys.executable, "-c", FEEDER], env=env, stdin=subprocess.PIPE, text=True
        )
        try:
            for command in commands:
                done = subprocess.run(command, shell=True, env=env, capture_output=True, text=True, timeout=60)
                assert done.returncode == 0, f"{command}: {done.stderr}"
                assert "Traceback" not in done.stderr, command
        finally:
            feeder.communicate("stop\n", timeout=20)
    finally:
        broker.stop()


FEEDER = """
import sys, threading
from exesdb_sdk import Publisher
stop = threading.Event()
threading.Thread(target=lambda: (sys.stdin.readline(), stop.set()), daemon=True).start()
with Publisher() as pub:
    while not stop.wait(0.05):
        pub.publish("alerts", "critical", "SystemAlert", {"severity": "critical", "title": "feeder"})
        pub.publish("audit", "feeder", "Custom", {"n": 1})
"""
