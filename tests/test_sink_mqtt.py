"""The ``mqtt`` sink against a real mosquitto (tests/peer_mqtt.py) on a free loopback port."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Coroutine, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import paho.mqtt.client as paho
import pytest
from exesdb_connect.sink import Delivery, SinkRejected, SinkUnavailable
from exesdb_connect.sinks import mqtt
from exesdb_connect.source import delivery_of
from exesdb_sdk.errors import ConfigError
from exesdb_sdk.messages import NodeHealth, SystemAlert
from exesdb_sdk.protocol import Decoder, Encoder
from paho.mqtt.enums import CallbackAPIVersion

from .conftest import wait_until
from .peer_mqtt import MAX_PACKET_SIZE, MOSQUITTO, MqttPeer

pytestmark = pytest.mark.skipif(MOSQUITTO is None, reason="mosquitto is not installed")

T = TypeVar("T")
ENCODER = Encoder(src="node-1")
DECODER = Decoder()


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def delivery(instance: str, subtopic: str, type: str, data: Any, last_value: bool = False) -> Delivery:
    """A Delivery the way a connector builds one: from an encoded and decoded envelope."""
    topic = ENCODER.topic(instance, subtopic)
    body = ENCODER.encode(topic, type, data)
    [message] = DECODER.decode([topic, body])
    return replace(delivery_of(message, body=body), last_value=last_value)


def mixed() -> list[Delivery]:
    return [
        delivery("health", "node_health:n1", "NodeHealth", NodeHealth(node="n1", status="healthy"), last_value=True),
        delivery("alerts", "critical", "SystemAlert", SystemAlert(severity="critical", title="disk full")),
        delivery("metrics", "a+b/c#d%e", "Custom", {"n": 1, "tags": ["x"]}),
        delivery("audit", "zürich/ünïcode", "Custom", {"text": "grüße"}),
    ]


@pytest.fixture
def peer(tmp_path: Path) -> Iterator[MqttPeer]:
    server = MqttPeer(tmp_path)
    try:
        server.start()
        yield server
    finally:
        server.close()


def sink_for(peer: MqttPeer, **extra: Any) -> mqtt.MqttSink:
    sink = mqtt.create("c1", peer.sink_options() | extra)
    assert isinstance(sink, mqtt.MqttSink)
    return sink


def ids_seen(peer: MqttPeer) -> list[str]:
    return [item.id for item in peer.received()]


def test_topic_mapping_escapes_wildcards_and_percent_and_keeps_levels() -> None:
    assert mqtt.mqtt_topic("exesdb", "ex_esdb_health", "node_health:n1") == "exesdb/ex_esdb_health/node_health:n1"
    assert mqtt.mqtt_topic("exesdb", "ex_esdb_metrics", "a+b/c#d%e") == "exesdb/ex_esdb_metrics/a%2Bb/c%23d%25e"
    assert mqtt.mqtt_topic("site/1", "ex_esdb_alerts", "%2B") == "site/1/ex_esdb_alerts/%252B"
    assert mqtt.mqtt_topic("", "ex_esdb_alerts", "critical") == "ex_esdb_alerts/critical"


def test_a_mixed_batch_arrives_mapped_with_ids_json_and_retain(peer: MqttPeer) -> None:
    batch = mixed()

    async def scenario() -> list[str | None]:
        sink = sink_for(peer)
        try:
            await sink.open()
            return list(await sink.send(batch))
        finally:
            await sink.close()

    assert run(scenario()) == [None] * len(batch)
    assert wait_until(lambda: len(peer.records()) == len(batch), timeout=5)
    expected_topics = [
        "exesdb/ex_esdb_health/node_health:n1",
        "exesdb/ex_esdb_alerts/critical",
        "exesdb/ex_esdb_metrics/a%2Bb/c%23d%25e",
        "exesdb/ex_esdb_audit/zürich/ünïcode",
    ]
    records = sorted(peer.records(), key=lambda r: expected_topics.index(r.topic))
    for item, record, topic in zip(batch, records, expected_topics, strict=True):
        assert record.topic == topic
        assert json.loads(record.payload.decode("utf-8")) == {"id": item.id, **item.json}
        assert (mqtt.ID_PROPERTY, item.id) in record.user_properties
        assert record.content_type == "application/json"
        assert record.qos == 1
        assert record.retain is item.last_value
    assert {(r.id, r.topic) for r in peer.received()} == {(d.id, d.topic) for d in batch}
    assert [r.data for r in peer.received() if r.topic == batch[1].topic] == [batch[1].json["data"]]
    # The server holds the last-value message: a subscriber arriving now gets it, retained.
    assert retained(peer, expected_topics[0]) == json.loads(json.dumps({"id": batch[0].id, **batch[0].json}))


def retained(peer: MqttPeer, topic: str) -> Any:
    """The retained message a new subscriber to ``topic`` receives."""
    got: list[paho.MQTTMessage] = []
    ready = threading.Event()
    client = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
    client.on_message = lambda c, u, message: (got.append(message), ready.set())
    client.connect("127.0.0.1", peer.port)
    client.loop_start()
    try:
        assert ready.wait(5), "no retained message"
    finally:
        client.disconnect()
        client.loop_stop()
    assert got[0].retain
    return json.loads(got[0].payload)


def test_a_redelivered_batch_carries_the_same_ids(peer: MqttPeer) -> None:
    batch = mixed()

    async def scenario() -> None:
        sink = sink_for(peer)
        try:
            assert await sink.send(batch) == [None] * len(batch)
            assert await sink.send(batch) == [None] * len(batch)
        finally:
            await sink.close()

    run(scenario())
    assert wait_until(lambda: len(peer.records()) == 2 * len(batch), timeout=5)
    assert len({d.id for d in batch}) == len(batch)
    seen = ids_seen(peer)
    assert sorted(seen) == sorted([d.id for d in batch] * 2)
    by_id: dict[str, set[bytes]] = {}
    for record in peer.records():
        by_id.setdefault(json.loads(record.payload)["id"], set()).add(record.payload)
    assert all(len(payloads) == 1 for payloads in by_id.values())  # the copies are byte-identical


@pytest.mark.timeout(30)
def test_server_stopped_is_unavailable_and_a_restart_needs_no_reopen(peer: MqttPeer) -> None:
    first, second, third = mixed()[:1], mixed()[1:2], mixed()[2:3]

    async def scenario() -> None:
        sink = sink_for(peer)
        try:
            await sink.open()
            assert await sink.send(first) == [None]
            peer.stop()
            with pytest.raises(SinkUnavailable) as down:
                await sink.send(second)
            assert "\n" not in str(down.value)
            with pytest.raises(SinkUnavailable, match="cannot connect"):
                await sink.send(second)
            peer.start()
            assert await sink.send(second + third) == [None, None]
            assert sink.connects == 2
        finally:
            await sink.close()

    run(scenario())
    want = [d.id for d in first + second + third]
    assert wait_until(lambda: set(want) <= set(ids_seen(peer)), timeout=5)


@pytest.mark.timeout(30)
def test_a_connection_lost_mid_batch_is_unavailable(peer: MqttPeer) -> None:
    batch = mixed() * 200  # many inflight windows: it cannot complete without the server

    async def scenario() -> None:
        sink = sink_for(peer)
        try:
            await sink.open()
            sending = asyncio.create_task(sink.send(batch))
            await asyncio.sleep(0)  # the first window goes out
            assert peer.process is not None
            peer.process.kill()
            with pytest.raises(SinkUnavailable, match=r"connection lost.*the batch is not delivered"):
                await sending
            peer.stop()
            peer.start()
            assert await sink.send(batch[:4]) == [None] * 4
        finally:
            await sink.close()

    run(scenario())


@pytest.mark.timeout(30)
def test_no_acknowledgement_in_time_is_unavailable_then_recovers(peer: MqttPeer) -> None:
    stalled, later = mixed()[:2], mixed()[2:]

    async def scenario() -> None:
        sink = sink_for(peer, ack_timeout=0.5, connect_timeout=0.5)
        try:
            await sink.open()
            peer.freeze()
            try:
                with pytest.raises(SinkUnavailable, match=r"no acknowledgement in 0\.5 s"):
                    await sink.send(stalled)
                with pytest.raises(SinkUnavailable, match="cannot connect"):
                    await sink.send(later)
            finally:
                peer.thaw()
            assert await sink.send(later) == [None, None]
        finally:
            await sink.close()

    run(scenario())
    assert wait_until(lambda: {d.id for d in later} <= set(ids_seen(peer)), timeout=5)


def test_the_refused_items_are_reasons_and_the_rest_is_acknowledged(peer: MqttPeer) -> None:
    instance, subtopic, data = peer.poison()
    ok = mixed()
    batch = [
        ok[0],
        delivery(instance, subtopic, "Custom", data),
        ok[1],
        delivery("metrics", "big", "Custom", {"blob": "x" * MAX_PACKET_SIZE}),
        ok[2],
    ]

    async def scenario() -> list[str | None]:
        sink = sink_for(peer)
        try:
            return list(await sink.send(batch))
        finally:
            await sink.close()

    results = run(scenario())
    assert results[0] is None and results[2] is None and results[4] is None
    assert results[1] == "refused by the mqtt server: Not authorized (0x87)"
    assert results[3] is not None and f"over the mqtt server's maximum packet size ({MAX_PACKET_SIZE})" in results[3]
    # In order on one connection: once the last one is in, the refused ones would be too.
    assert wait_until(lambda: batch[4].id in ids_seen(peer), timeout=5)
    assert ids_seen(peer) == [batch[0].id, batch[2].id, batch[4].id]


@pytest.mark.timeout(30)
def test_bad_or_missing_credentials_are_rejected(tmp_path: Path) -> None:
    server = MqttPeer(tmp_path, users={"alice": "s3cret"})
    server.start()
    try:
        wrong = tmp_path / "wrong"
        wrong.write_text("guess\n")
        good = server.sink_options()

        async def scenario() -> None:
            sink = mqtt.create("c1", good | {"password_file": str(wrong)})
            # mosquitto 2.0 answers a wrong password with Not authorized, as it answers no password.
            with pytest.raises(SinkRejected, match=r"refuses the connection: Not authorized \(0x87\)$"):
                await sink.open()
            with pytest.raises(SinkRejected, match="Not authorized"):
                await sink.send(mixed()[:1])
            await sink.close()
            anonymous = mqtt.create("c1", {"url": good["url"]})
            with pytest.raises(SinkRejected, match=r"Not authorized \(0x87\)"):
                await anonymous.send(mixed()[:1])
            await anonymous.close()
            sink = mqtt.create("c1", good)
            try:
                assert await sink.send(mixed()[:1]) == [None]
            finally:
                await sink.close()

        run(scenario())
    finally:
        server.close()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({}, "connector c1: url is required"),
        ({"url": "mqtt://127.0.0.1", "qos": 2}, "connector c1: unknown key 'qos' (this sink knows: ack_timeout,"),
        ({"url": 1883}, "connector c1: url must be a str, not 1883"),
        ({"url": "http://127.0.0.1:1883"}, "connector c1: url: 'http://127.0.0.1:1883' must be mqtt://host[:port]"),
        ({"url": "mqtt://"}, "connector c1: url: 'mqtt://' names no host"),
        ({"url": "mqtt://127.0.0.1:99999"}, "connector c1: url: 'mqtt://127.0.0.1:99999' is not a URL"),
        ({"url": "mqtt://127.0.0.1:0"}, "connector c1: url: 'mqtt://127.0.0.1:0': port 0 is not a port"),
        ({"url": "mqtt://u:p@127.0.0.1"}, "connector c1: url: put the credentials in username and password_file"),
        ({"url": "mqtt://127.0.0.1/topic"}, "connector c1: url: 'mqtt://127.0.0.1/topic' must be mqtt://host[:port]"),
        ({"url": "mqtt://127.0.0.1", "prefix": "a/+"}, "connector c1: prefix: 'a/+' contains +, # or NUL"),
        ({"url": "mqtt://127.0.0.1", "prefix": "$SYS"}, "connector c1: prefix: '$SYS' starts with $"),
        ({"url": "mqtt://127.0.0.1", "prefix": "a/"}, "connector c1: prefix: 'a/' starts or ends with /"),
        ({"url": "mqtt://127.0.0.1", "prefix": 7}, "connector c1: prefix must be a str, not 7"),
        ({"url": "mqtt://127.0.0.1", "inflight": 0}, "connector c1: inflight: must be 1 to 65535, not 0"),
        ({"url": "mqtt://127.0.0.1", "inflight": True}, "connector c1: inflight must be a int, not True"),
        ({"url": "mqtt://127.0.0.1", "ack_timeout": -1}, "connector c1: ack_timeout: must be a positive number"),
        ({"url": "mqtt://127.0.0.1", "connect_timeout": "5"}, "connector c1: connect_timeout must be a float"),
        ({"url": "mqtt://127.0.0.1", "client_id": ""}, "connector c1: client_id: must be 1 to 65535 bytes"),
        ({"url": "mqtt://127.0.0.1", "password_file": "/x"}, "connector c1: password_file: needs username too"),
        (
            {"url": "mqtt://127.0.0.1", "username": "u", "password_file": "/nonexistent/pw"},
            "connector c1: password_file: cannot read '/nonexistent/pw'",
        ),
    ],
)
def test_every_config_error_is_one_line_naming_the_key(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as error:
        mqtt.create("c1", options)
    text = str(error.value)
    assert text.startswith(message), text
    assert "\n" not in text


def test_defaults() -> None:
    sink = mqtt.create("c1", {"url": "mqtt://localhost"})
    assert isinstance(sink, mqtt.MqttSink)
    assert (sink.kind, sink.host, sink.port, sink.prefix) == ("mqtt", "localhost", 1883, "exesdb")
    assert sink.client_id == "exesdb-connector-c1"
    assert run(sink.send([])) == []
