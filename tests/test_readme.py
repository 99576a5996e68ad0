"""The README's examples and set-up commands are the real ones."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import BrokerProcess

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
    assert commands == ["pip install '.[test]' && python -m pytest"]
    assert commands[0] in (ROOT / ".ci" / "run").read_text().splitlines()


def test_readme_broker_flags_match_the_broker() -> None:
    from exesdb_broker.config import BrokerConfig

    documented = set(re.findall(r"^\| `--([a-z-]+)", README, re.MULTILINE))
    fields = {name.replace("_", "-") for name in BrokerConfig.__dataclass_fields__}
    assert documented == fields | {"config"}
