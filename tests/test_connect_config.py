"""Bad ``[[connectors]]`` configuration: one line naming the connector and the key, at start;
the broker exits 2 and ``exesdb connect`` 1, never a traceback."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from exesdb_connect.config import connectors_from

from .conftest import FREE, BrokerProcess

ROOT = Path(__file__).resolve().parent.parent

GOOD = 'name = "hook"\nsink = "webhook"\ntopics = ["alerts/critical"]\nurl = "http://127.0.0.1:9/hook"\n'

CASES = {
    "unknown sink": ('name = "a"\nsink = "kafka"\ninstances = ["alerts"]\n', "connector a: sink: unknown sink 'kafka'"),
    "bad url": (GOOD.replace("http://127.0.0.1:9/hook", "ftp://x/"), "connector hook: url: 'ftp://x/' must be an http"),
    "url without host": (
        GOOD.replace("http://127.0.0.1:9/hook", "http:///x"),
        "connector hook: url: 'http:///x' names no host",
    ),
    "missing secret file": (
        GOOD + 'secret_file = "/nonexistent/secret"\n',
        "connector hook: secret_file: /nonexistent/secret",
    ),
    "unknown instance": (GOOD.replace("alerts/critical", "nosuch/x"), "connector hook: topics: "),
    "bad pattern": (GOOD.replace("alerts/critical", "alerts"), "connector hook: topics: 'alerts' needs '<instance>/'"),
    "unbalanced glob": (
        GOOD.replace("alerts/critical", "alerts/[ab"),
        "connector hook: topics: 'alerts/[ab': unbalanced",
    ),
    "unknown key": (GOOD + "retries = 3\n", "connector hook: unknown key 'retries'"),
    "bad name": (GOOD.replace('"hook"', '"Hook!"'), "connector #1: name: expected 1 to 64 of [a-z0-9_-]"),
    "bad buffer": (GOOD + "buffer_size = 0\n", "connector hook: buffer_size: must be positive"),
}


def _write(tmp_path: Path, tables: list[str]) -> Path:
    path = tmp_path / "broker.toml"
    path.write_text("".join(f"[[connectors]]\n{table}\n" for table in tables))
    return path


@pytest.mark.parametrize("case", sorted(CASES))
def test_broker_refuses_a_bad_connector_in_one_line(case: str, tmp_path: Path) -> None:
    table, expected = CASES[case]
    config = _write(tmp_path, [table])
    broker = BrokerProcess(["--frontend", FREE, "--backend", FREE, "--control", FREE, "--config", str(config)])
    assert broker.wait_exit(15) == 2
    lines = [line for line in broker.lines if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith("exesdb-broker: error: " + expected), lines[0]


def test_duplicate_names_are_refused(tmp_path: Path) -> None:
    config = _write(tmp_path, [GOOD, GOOD])
    broker = BrokerProcess(["--frontend", FREE, "--backend", FREE, "--control", FREE, "--config", str(config)])
    assert broker.wait_exit(15) == 2
    assert broker.lines == [
        "exesdb-broker: error: connector hook: name: a connector of that name is configured already"
    ]


def test_exesdb_connect_refuses_a_bad_file_in_one_line(tmp_path: Path) -> None:
    config = _write(tmp_path, [CASES["bad url"][0]])
    done = subprocess.run(
        [sys.executable, "-c", "from exesdb_cli.app import main; main()", "connect", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "EXESDB_CONTROL": "tcp://127.0.0.1:9"},
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "exesdb: error: connector hook: url: 'ftp://x/' must be an http:// or https:// URL"
    ]


def _toml_blocks(text: str) -> list[str]:
    return re.findall(r"```toml\n(.*?)```", text, re.DOTALL)


@pytest.mark.parametrize("where", ["README.md", "docs/connectors.md"])
def test_every_connector_example_in_the_docs_is_a_valid_configuration(where: str, tmp_path: Path) -> None:
    text = (ROOT / where).read_text()
    if where == "README.md":
        text = text[text.index("## Connectors") : text.index("\n## ", text.index("## Connectors") + 5)]
    blocks = [block for block in _toml_blocks(text) if "[[connectors]]" in block]
    assert blocks, f"no [[connectors]] example in {where}"
    kinds: set[str] = set()
    for block in blocks:
        # the files an example names (secrets, passwords) exist on the reader's machine: here, in tmp
        for path in set(re.findall(r'"(/etc/exesdb/[^"]+)"', block)):
            local = tmp_path / Path(path).name
            local.write_text("example-secret-of-32-characters!\n")
            block = block.replace(path, str(local))
        configs = connectors_from(tomllib.loads(block), where)
        kinds.update(config.sink for config in configs)
    assert kinds == {"webhook", "redis", "mqtt", "nats"}, f"{where}: examples for {sorted(kinds)} only"
