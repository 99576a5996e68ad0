"""No client hangs the program: dropped without ``close``/``with``, or left open at exit,
whether the broker is down (a request to nowhere) or up. Each case runs in a child process
with a deadline."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from .conftest import BrokerProcess

NOWHERE = "tcp://127.0.0.1:1"

CASES = {
    "control client dropped after a failed request": """
        from exesdb_sdk import ControlClient
        from exesdb_sdk.errors import ExesdbError
        def healthy():
            try:
                ControlClient(NOWHERE, timeout=0.3).ping()
                return True
            except ExesdbError:
                return False
        print(healthy())
    """,
    "control client left open at exit": """
        from exesdb_sdk import ControlClient
        from exesdb_sdk.errors import ExesdbError
        client = ControlClient(NOWHERE, timeout=0.3)
        try:
            client.ping()
        except ExesdbError:
            pass
    """,
    "publisher and subscriber left open at exit, broker up": """
        from exesdb_sdk import Publisher, Subscriber
        sub = Subscriber(BACKEND)
        sub.subscribe("health")
        pub = Publisher(FRONTEND)
        pub.publish("health", "x", "Custom", {"n": 1})
    """,
    "asyncio clients dropped without aclose": """
        import asyncio
        from exesdb_sdk import AsyncControlClient, AsyncSubscriber
        from exesdb_sdk.errors import ExesdbError
        async def main():
            sub = AsyncSubscriber(BACKEND)
            await sub.subscribe("health")
            try:
                await AsyncControlClient(NOWHERE, timeout=0.3).ping()
            except ExesdbError:
                pass
        asyncio.run(main())
    """,
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", list(CASES))
def test_no_client_hangs_the_program(case: str, broker: BrokerProcess) -> None:
    prologue = f"NOWHERE = {NOWHERE!r}; FRONTEND = {broker.frontend!r}; BACKEND = {broker.backend!r}\n"
    script = prologue + textwrap.dedent(CASES[case])
    try:
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=15)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{case}: the program did not exit within 15 s")
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
