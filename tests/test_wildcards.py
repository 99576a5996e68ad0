"""Sub-topic wildcards, as NATS and MQTT users reach for: a glob is subscribed by its literal
start and matched in the client, in the SDK and in ``exesdb tail``."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest
from exesdb_sdk import AsyncSubscriber, Publisher, Subscriber

from .conftest import BrokerProcess, wait_until

EXESDB = str(Path(sys.executable).with_name("exesdb"))
TOPICS = ["node_health:n1", "node_healthy", "store_health:eu", "node_health:n2:eu", "cluster_health"]


def _publish_all(broker: BrokerProcess) -> None:
    with Publisher(broker.frontend) as pub:
        for n, subtopic in enumerate(TOPICS):
            pub.publish("health", subtopic, "Custom", {"n": n})


@pytest.mark.timeout(30)
def test_a_glob_matches_sub_topics_and_the_rest_is_filtered_and_counted(broker: BrokerProcess) -> None:
    with Subscriber(broker.backend) as sub:
        sub.subscribe("health", "node_health:*")
        sub.subscribe("health", "*:eu")
        _publish_all(broker)
        got = [message.topic for message in sub.iter(timeout=1)]
        assert got == [
            "ex_esdb_health/node_health:n1",
            "ex_esdb_health/store_health:eu",
            "ex_esdb_health/node_health:n2:eu",
        ]
        assert sub.stats.filtered == 2  # node_healthy and cluster_health came (literal start ''), unwanted
        sub.unsubscribe("health", "*:eu")
        _publish_all(broker)
        got = [message.topic for message in sub.iter(timeout=1)]
        assert got == ["ex_esdb_health/node_health:n1", "ex_esdb_health/node_health:n2:eu"]


@pytest.mark.timeout(30)
def test_the_asyncio_subscriber_takes_globs_too(broker: BrokerProcess) -> None:
    async def scenario() -> list[str]:
        async with AsyncSubscriber(broker.backend) as sub:
            await sub.subscribe("health", "node_health:n?")
            _publish_all(broker)
            return [(await sub.recv(timeout=5)).topic]

    assert asyncio.run(scenario()) == ["ex_esdb_health/node_health:n1"]


@pytest.mark.timeout(30)
def test_tail_takes_a_glob_topic(broker: BrokerProcess) -> None:
    tail = subprocess.Popen(
        [
            EXESDB,
            "tail",
            "health",
            "--topic",
            "node_health:*",
            "--count",
            "2",
            "--json",
            "--timeout",
            "20",
            "--backend",
            broker.backend,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # tail subscribes before it reads: publish until it has its two, bounded
        assert wait_until(lambda: (_publish_all(broker), tail.poll() is not None)[1], timeout=20, interval=0.3)
        out, err = tail.communicate(timeout=10)
    finally:
        tail.kill()
    assert tail.returncode == 0, err
    topics = [json.loads(line)["topic"] for line in out.splitlines()]
    assert len(topics) == 2 and all(topic.startswith("ex_esdb_health/node_health:") for topic in topics)
