"""A catch-up that fails (control endpoint unreachable) raises once and leaves the subscriber
working: live messages keep flowing, for that subscription and the others, sync and asyncio."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from exesdb_sdk import AsyncSubscriber, Publisher, Subscriber
from exesdb_sdk.errors import BrokerUnavailableError

from .conftest import BrokerProcess, StartBroker

NOWHERE = "tcp://127.0.0.1:1"


@pytest.fixture
def journaled(start_broker: StartBroker, tmp_path: Path) -> BrokerProcess:
    return start_broker("--data-dir", str(tmp_path / "data"))


@pytest.mark.timeout(30)
@pytest.mark.parametrize("how", [{"replay_from": "earliest"}, {"with_last": True}])
def test_a_failed_catch_up_does_not_poison_the_subscriber(journaled: BrokerProcess, how: dict[str, object]) -> None:
    with Subscriber(journaled.backend, control=NOWHERE) as sub:
        sub.subscribe("logging")
        with pytest.raises(BrokerUnavailableError):
            sub.subscribe("audit", timeout=0.5, **how)  # type: ignore[arg-type]
        with Publisher(journaled.frontend) as pub:
            pub.publish("logging", "app", "AppLog", {"n": 1})
            pub.publish("audit", "access", "Custom", {"n": 2})
        assert {sub.recv(timeout=5).data["n"] for _ in range(2)} == {1, 2}


@pytest.mark.timeout(30)
def test_a_failed_catch_up_does_not_poison_the_asyncio_subscriber(journaled: BrokerProcess) -> None:
    async def scenario() -> set[int]:
        async with AsyncSubscriber(journaled.backend, control=NOWHERE) as sub:
            await sub.subscribe("logging")
            with pytest.raises(BrokerUnavailableError):
                await sub.subscribe("audit", timeout=0.5, replay_from="earliest")
            with Publisher(journaled.frontend) as pub:
                pub.publish("logging", "app", "AppLog", {"n": 1})
                pub.publish("audit", "access", "Custom", {"n": 2})
            return {(await sub.recv(timeout=5)).data["n"] for _ in range(2)}

    assert asyncio.run(scenario()) == {1, 2}


@pytest.mark.timeout(30)
def test_the_subscribers_control_timeout_bounds_its_catch_up_requests(journaled: BrokerProcess) -> None:
    with (
        Subscriber(journaled.backend, control=NOWHERE, control_timeout=0.3) as sub,
        pytest.raises(BrokerUnavailableError, match=r"within 0\.3 s"),
    ):
        sub.subscribe("audit", replay_from="earliest")
