"""Nothing is sent that no one can read: ``publish`` refuses data that is not a map and
catalogue types with bad fields (as ``publish_message`` does), sync, batch and asyncio."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from exesdb_sdk import AsyncPublisher, ControlClient, Publisher, Subscriber
from exesdb_sdk.errors import ValidationError

from .conftest import BrokerProcess

BAD: list[tuple[str, Any, str]] = [
    ("Custom", [1, 2], "Custom.data: must be a map, not a list"),
    ("Custom", "text", "Custom.data: must be a map, not a str"),
    ("NodeHealth", {"node": "n1", "status": "fine"}, "NodeHealth.status"),
    ("NodeHealth", {"status": "healthy"}, "NodeHealth.node"),
]


@pytest.mark.timeout(30)
def test_publish_refuses_what_no_subscriber_could_read(broker: BrokerProcess) -> None:
    with Subscriber(broker.backend) as sub, Publisher(broker.frontend) as pub:
        sub.subscribe("health")
        for type_, data, named in BAD:
            with pytest.raises(ValidationError, match=named.replace(".", r"\.")):
                pub.publish("health", "x", type_, data)
            with pytest.raises(ValidationError, match=named.replace(".", r"\.")):
                pub.publish_batch("health", "x", type_, [{"node": "n1", "status": "healthy"}, data])
        assert pub.publish("health", "x", "NodeHealth", {"node": "n1", "status": "healthy"}) == 1  # none used
        assert sub.recv(timeout=5).seq == 1
        assert pub.stats.messages == 1
    with ControlClient(broker.control) as control:
        assert control.stats()["malformed"] == 0


@pytest.mark.timeout(30)
def test_the_asyncio_publisher_refuses_them_too(broker: BrokerProcess) -> None:
    async def scenario() -> None:
        async with AsyncPublisher(broker.frontend) as pub:
            for type_, data, named in BAD:
                with pytest.raises(ValidationError, match=named.replace(".", r"\.")):
                    await pub.publish("health", "x", type_, data)

    asyncio.run(scenario())
