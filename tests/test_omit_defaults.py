"""Typed bodies leave their default fields out; readers fill them in. Through a real broker: a
raw subscriber sees only the fields set, the SDK subscriber's payload has every field, and a
body that spells every default out (what older publishers sent) reads the same."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
import zmq
from exesdb_sdk import Publisher, Subscriber
from exesdb_sdk.messages import ClusterHealth, NodeHealth, SubscriptionHealth
from exesdb_sdk.messages.base import payload_types
from exesdb_sdk.protocol import Encoder

from .conftest import BrokerProcess, raw_publisher

pytestmark = pytest.mark.timeout(30)


def raw_subscriber(broker: BrokerProcess, prefix: bytes) -> zmq.Socket[bytes]:
    """A bare SUB on the backend, confirmed by a message the test sends (bounded wait)."""
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.RCVTIMEO, 5000)
    sub.subscribe(prefix)
    sub.connect(broker.backend)
    return sub


def test_every_catalogue_type_omits_defaults() -> None:
    types = payload_types()
    assert len(types) > 30
    assert all(cls.__struct_config__.omit_defaults for cls in types.values())
    health = SubscriptionHealth(store="s", subscription="x", status="healthy", event="e", event_count=5)
    wire = msgspec.msgpack.decode(msgspec.msgpack.encode(health))
    assert wire == {"store": "s", "subscription": "x", "status": "healthy", "event": "e", "event_count": 5}
    assert SubscriptionHealth.from_data(wire) == health  # read back with every default
    assert health.to_data()["metadata"] == {} and health.to_data()["error_count"] == 0  # to_data is whole


def test_a_typed_publish_sends_only_what_is_set_and_reads_back_whole(broker: BrokerProcess) -> None:
    sent = NodeHealth(node="n1", status="healthy", load_avg=0.5)
    with (
        Subscriber(broker.backend) as sub,
        Publisher(broker.frontend, node="n1") as pub,
    ):
        sub.subscribe("health")
        raw = raw_subscriber(broker, b"ex_esdb_health/")
        try:
            pub.publish_message(sent)
            message = sub.recv(timeout=5)
            for _ in range(100):  # the raw SUB may join after the first message: resend until seen
                try:
                    topic, body = raw.recv_multipart(zmq.NOBLOCK)
                    break
                except zmq.Again:
                    if raw.poll(50):
                        continue
                    pub.publish_message(sent)
            else:
                raise AssertionError("the raw subscriber saw nothing")
        finally:
            raw.close()
        dict_body = Encoder(src="n1", pub=pub.pub_id).encode(topic, "NodeHealth", sent.to_data())
    assert message.data == {"node": "n1", "status": "healthy", "load_avg": 0.5}  # as on the wire
    assert message.payload == sent  # every field, defaults filled in
    assert message.payload.checks == {} and message.payload.memory_usage is None
    data: dict[str, Any] = msgspec.msgpack.decode(body)["data"]
    assert data == {"node": "n1", "status": "healthy", "load_avg": 0.5}
    assert len(body) < len(dict_body) - 30  # three defaults left out


def test_old_bodies_with_every_default_spelled_out_still_decode(broker: BrokerProcess) -> None:
    old = Encoder(src="old", pub="00000000000000aa")
    topic = old.topic("health", "cluster_health")
    full = ClusterHealth(status="degraded", healthy_nodes=2, total_nodes=3).to_data()
    assert full["quorum_status"] == "available" and full["degraded_nodes"] == []
    with Subscriber(broker.backend) as sub:
        sub.subscribe("health", "cluster_health")
        raw = raw_publisher(broker.frontend)
        try:
            raw.send_multipart([topic, old.encode(topic, "ClusterHealth", full)])
            message = sub.recv(timeout=5)
        finally:
            raw.close()
    assert message.data == full
    assert message.payload == ClusterHealth(status="degraded", healthy_nodes=2, total_nodes=3)
    assert sub.stats.invalid_payloads == 0
