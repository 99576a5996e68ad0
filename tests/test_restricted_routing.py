"""The SDK routes the restricted class by itself: a ``Publisher`` and a ``Subscriber`` given only
the public endpoints learn the class's endpoints from the broker (its frontend's announcement,
its probe echo) and use them for the class's instances; a key the class refuses is told which
instance it may not use.

Every test runs a real CURVE ``exesdb-broker`` with ``--restricted security,audit`` on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shlex
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from exesdb_broker.security import ADMINS, PUBLISHERS, RESTRICTED_PUBLISHERS, RESTRICTED_SUBSCRIBERS, SUBSCRIBERS
from exesdb_sdk import (
    AsyncPublisher,
    AsyncSubscriber,
    AuthenticationError,
    Instance,
    Message,
    Publisher,
    ReceiveTimeoutError,
    Subscriber,
)
from exesdb_sdk.curve import write_key_pair

from .conftest import BrokerProcess, StartBroker, cli_env, wait_until
from .test_http_core import _dashboard
from .test_restricted import _args, _stats
from .test_security import TIMEOUT, Keys, _readme_env, _readme_setup, _run_all, _tail_one, keys

__all__ = ["keys"]
pytestmark = pytest.mark.timeout(60)

RESTRICTED = {Instance.SECURITY, Instance.AUDIT}


@pytest.fixture
def routed(start_broker: StartBroker, keys: Keys) -> BrokerProcess:
    """A class broker, with a key ``both`` allowed on both pairs for each direction, and ``dash``
    a reader of both and an admin."""
    keys.clients["both"] = write_key_pair(keys.root / "clients", "both")[1]
    args = _args(keys)
    for role in (PUBLISHERS, SUBSCRIBERS, RESTRICTED_PUBLISHERS, RESTRICTED_SUBSCRIBERS):
        keys.allow("both", role)
    keys.clients["dash"] = write_key_pair(keys.root / "clients", "dash")[1]  # a standalone dashboard's
    for role in (ADMINS, SUBSCRIBERS, RESTRICTED_SUBSCRIBERS):
        keys.allow("dash", role)
    return start_broker(*args)


TYPES = ("Metric", "TestViolation", "TestAction", "TestAlert")
"""The tests' own messages: a subscriber to every instance gets the broker's too (its metrics,
the refusals' AccessViolations)."""


def _ours(got: list[Message]) -> list[Message]:
    return [m for m in got if m.type in TYPES]


def _collect(sub: Subscriber, count: int) -> list[Message]:
    """Every message received until ``count`` of the tests' own have come (or the deadline)."""
    got: list[Message] = []
    deadline = time.monotonic() + TIMEOUT
    for _ in range(10_000):
        if len(_ours(got)) >= count or time.monotonic() > deadline:
            break
        try:
            got.extend(sub.recv_batch(timeout=0.5))
        except ReceiveTimeoutError:  # look at the deadline again
            continue
    return got


def test_one_publisher_and_one_subscriber_carry_public_and_restricted_instances(
    routed: BrokerProcess, keys: Keys
) -> None:
    with Subscriber(routed.backend, **keys.client("both")) as sub:
        sub.subscribe()  # every instance, the class's at its backend
        assert sub.skipped == []
        with Publisher(routed.frontend, coalesce=0, **keys.client("both")) as pub:
            for n in range(20):
                pub.publish("metrics", "m", "Metric", {"n": n})
                pub.publish("security", "access_violations", "TestViolation", {"n": n})
                pub.publish("audit", "admin_actions", "TestAction", {"n": n})
            got = _collect(sub, 60)
        ours = _ours(got)
        by_instance = {instance: [m.data["n"] for m in ours if m.instance == instance] for instance in RESTRICTED}
        assert by_instance == {Instance.SECURITY: list(range(20)), Instance.AUDIT: list(range(20))}
        assert [m.data["n"] for m in ours if m.instance is Instance.METRICS] == list(range(20))
        assert len(ours) == 60 and sub.stats.received == len(got) and sub.stats.gaps == 0
    security = _stats(routed, keys)["security"]
    assert security["misrouted"] == {}  # nothing of the class went to the public pair


def test_the_asyncio_clients_route_the_class_too(routed: BrokerProcess, keys: Keys) -> None:
    async def scenario() -> tuple[list[Message], list[Instance]]:
        async with (
            AsyncSubscriber(routed.backend, **keys.client("both")) as sub,
            AsyncSubscriber(routed.backend, **keys.client("sub")) as outsider,
        ):
            await sub.subscribe()
            await outsider.subscribe()
            with pytest.raises(AuthenticationError, match=r"may not subscribe to ex_esdb_audit"):
                await outsider.subscribe("audit", timeout=5)
            async with AsyncPublisher(routed.frontend, coalesce=0, **keys.client("both")) as pub:
                for n in range(10):
                    await pub.publish("audit", "admin_actions", "TestAction", {"n": n})
                    await pub.publish("alerts", "a", "TestAlert", {"n": n})
            got: list[Message] = []
            for _ in range(100):  # the broker's own messages come too (the refusals' AccessViolations)
                if len(_ours(got)) >= 20:
                    break
                with contextlib.suppress(ReceiveTimeoutError):
                    got.extend(await sub.recv_batch(timeout=0.5))
            assert sub.stats.received == len(got)
            return got, outsider.skipped

    got, skipped = asyncio.run(asyncio.wait_for(scenario(), 40))
    assert [m.data["n"] for m in got if m.instance is Instance.AUDIT] == list(range(10))
    assert [m.data["n"] for m in got if m.instance is Instance.ALERTS] == list(range(10))
    assert sorted(skipped) == sorted(RESTRICTED)


def test_a_subscriber_outside_the_class_is_told_and_every_instance_skips_it(routed: BrokerProcess, keys: Keys) -> None:
    with (
        Subscriber(routed.backend, **keys.client("sub")) as sub,
        pytest.raises(AuthenticationError, match=r"may not subscribe to ex_esdb_security"),
    ):
        sub.subscribe("security", timeout=5)
    with Subscriber(routed.backend, **keys.client("sub")) as sub:
        sub.subscribe()
        assert sorted(sub.skipped) == sorted(RESTRICTED)
        # the refusal is visible at the broker too (counted, and published as an AccessViolation)
        assert wait_until(  # the broker reads its monitor events in its own time
            lambda: (
                _stats(routed, keys)["security"]["handshake_failures_by_endpoint"].get("restricted_backend", 0) >= 1
            ),
            10,
        ), _stats(routed, keys)["security"]
        with Publisher(routed.frontend, coalesce=0, **keys.client("both")) as pub:
            pub.publish("security", "access_violations", "TestViolation", {"n": 0})
            pub.publish("metrics", "m", "Metric", {"n": 1})
            got = _collect(sub, 1)
    assert [m.instance for m in _ours(got)] == [Instance.METRICS]


def test_a_publisher_outside_the_class_is_told_which_instance_it_may_not_publish(
    routed: BrokerProcess, keys: Keys
) -> None:
    with Publisher(routed.frontend, coalesce=0, connect_timeout=5, **keys.client("pub")) as pub:
        pub.publish("metrics", "m", "Metric", {"n": 1})  # the public pair takes it
        with pytest.raises(AuthenticationError, match=r"may not publish to ex_esdb_security"):
            pub.publish("security", "access_violations", "TestViolation", {"n": 0})


def test_the_cli_says_in_one_line_which_instance_a_key_may_not_read(routed: BrokerProcess, keys: Keys) -> None:
    env = {
        **os.environ,
        "EXESDB_BACKEND": routed.backend,
        "EXESDB_CONTROL": routed.control,
        "EXESDB_CLIENT_KEY": str(keys.clients["sub"]),
        "EXESDB_SERVER_KEY": str(keys.server_public),
    }
    done = subprocess.run(
        ["exesdb", "tail", "security", "--count", "1", "--timeout", "5"],
        env=env,
        capture_output=True,
        text=True,
        timeout=40,
    )
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "may not subscribe to ex_esdb_security" in lines[0], done.stderr


@pytest.mark.timeout(150)
def test_the_readme_restricted_setup_works(
    tmp_path: Path, clean_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    first = _readme_setup()
    second = _readme_setup("<!-- restricted set-up: run by tests/test_restricted_routing.py -->")
    setup = [line for line in first if line.startswith(("exesdb keygen", "mkdir", "cp"))]
    broker_at = next(i for i, line in enumerate(second) if line.startswith("exesdb-broker "))
    setup += second[:broker_at]
    broker_cmd, tail_cmd, publish_cmd, refused_cmd = second[broker_at:]
    monkeypatch.chdir(tmp_path)  # the commands use paths relative to where they run
    env = _readme_env(clean_env, "RESTRICTED_FRONTEND", "RESTRICTED_BACKEND")
    _run_all(setup, env)
    program, *args = shlex.split(broker_cmd)
    assert program == "exesdb-broker"
    broker = BrokerProcess(args, env=env).wait_ready()
    try:
        assert broker.restricted_backend == env["EXESDB_RESTRICTED_BACKEND"]
        message = json.loads(_tail_one(tail_cmd, publish_cmd, env))
        assert (message["type"], message["data"]["principal"]) == ("AccessViolation", "sensor")
        done = subprocess.run(
            refused_cmd + " --timeout 10", shell=True, env=env, capture_output=True, text=True, timeout=40
        )
        assert done.returncode == 1
        assert done.stderr.startswith("exesdb: error: authentication failed at " + env["EXESDB_RESTRICTED_BACKEND"])
        assert "may not subscribe to ex_esdb_security" in done.stderr and done.stderr.count("\n") == 1
    finally:
        assert broker.stop() == 0


@pytest.mark.timeout(60)
def test_exesdb_dashboard_serves_the_class_as_the_broker_does(
    routed: BrokerProcess, keys: Keys, clean_env: dict[str, str]
) -> None:
    env = {
        **cli_env(routed, clean_env),
        "EXESDB_CLIENT_KEY": str(keys.clients["dash"]),
        "EXESDB_SERVER_KEY": str(keys.server_public),
    }
    with _dashboard(env) as (_, _, _, url):
        refused = httpx.get(url + "/v1/stream", params={"instance": "security"}, timeout=10)
        assert refused.status_code == 403 and "ex_esdb_security is restricted" in refused.text
        with httpx.stream("GET", url + "/v1/stream", timeout=20) as stream:
            assert stream.status_code == 200, stream.read()
            with Publisher(routed.frontend, coalesce=0, **keys.client("both")) as pub:
                pub.publish("security", "access_violations", "TestViolation", {"n": 0})
                pub.publish("alerts", "a", "TestAlert", {"n": 1})
            seen: list[str] = []
            for line in stream.iter_lines():
                if line.startswith("data: "):
                    seen.append(json.loads(line[6:])["instance"])
                    if "ex_esdb_alerts" in seen or len(seen) > 100:
                        break
    assert "ex_esdb_security" not in seen and "ex_esdb_alerts" in seen
