"""The nats sink against a real ``nats-server -js`` (tests/peer_nats.py): mapping, dedupe,
outage and recovery, refusals, rejections and configuration errors."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from exesdb_connect.sink import Delivery, SinkRejected, SinkUnavailable
from exesdb_connect.sinks import nats as nats_sink
from exesdb_connect.source import delivery_of
from exesdb_sdk.errors import ConfigError
from exesdb_sdk.protocol import Decoder, Encoder

from tests import peer_nats
from tests.peer_nats import NatsPeer
from tests.peers import freeze

pytestmark = pytest.mark.skipif(peer_nats.BINARY is None, reason=peer_nats.SKIP_REASON)


@pytest.fixture
def peer(tmp_path: Path) -> Iterator[NatsPeer]:
    server = peer_nats.make_peer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.close()


class Deliveries:
    """Deliveries built from real envelopes: encoded as a publisher does, decoded as the bus does."""

    def __init__(self, max_message_size: int = 1 << 20) -> None:
        self.encoder = Encoder(src="node-a", max_message_size=max_message_size)
        self.decoder = Decoder()

    def __call__(self, instance: str, subtopic: str, type: str, data: dict[str, Any]) -> Delivery:
        topic = self.encoder.topic(instance, subtopic)
        body = self.encoder.encode(topic, type, data)
        (message,) = self.decoder.decode([topic, body])
        return delivery_of(message, body=body)


def mixed(make: Deliveries) -> list[Delivery]:
    return [
        make("ex_esdb_health", "node_health:n1", "NodeHealth", {"node": "n1", "status": "healthy", "load": 0.25}),
        make("ex_esdb_alerts", "system_alert:store.eu-1", "SystemAlert", {"severity": "critical", "message": "x"}),
        make("ex_esdb_audit", "a/b c*>%", "Custom", {"nested": {"list": [1, 2, 3]}, "ü": "ß"}),
        make("ex_esdb_health", "node_health:n1", "NodeHealth", {"node": "n1", "status": "degraded", "load": 0.9}),
    ]


def sink(options: dict[str, Any], **changes: Any) -> nats_sink.NatsSink:
    made = nats_sink.create("c1", {**options, **changes})
    assert isinstance(made, nats_sink.NatsSink)
    return made


async def send(options: dict[str, Any], *batches: list[Delivery]) -> list[list[str | None]]:
    target = sink(options)
    await target.open()
    try:
        return [list(await target.send(batch)) for batch in batches]
    finally:
        await target.close()


def test_subject_mapping_and_escaping() -> None:
    assert nats_sink.subject("exesdb", "ex_esdb_health", "store_health:s1") == "exesdb.ex_esdb_health.store_health.s1"
    assert nats_sink.subject("a.b", "ex_esdb_audit", "x/y:z") == "a.b.ex_esdb_audit.x.y.z"
    # separators that would leave an empty token are escaped, not dropped
    assert nats_sink.subject("p", "i", "/a//b:") == "p.i.%2Fa.%2Fb%3A"
    assert nats_sink.subject("p", "i", "a.b*c >d%$") == "p.i.a%2Eb%2Ac%20%3Ed%25%24"
    assert nats_sink.subject("p", "i", "ü-_~=+@,") == "p.i.%C3%BC-_~=+@,"


def test_mixed_batch_delivered_with_mapping_and_fields(peer: NatsPeer) -> None:
    batch = mixed(Deliveries())
    assert asyncio.run(send(peer.sink_options(), batch)) == [[None] * 4]
    held = peer.received()
    assert [(r.id, r.topic, r.data) for r in held] == [(d.id, d.topic, d.json["data"]) for d in batch]
    headers = peer.headers()
    assert [subject for subject, _ in headers] == [
        "exesdb.ex_esdb_health.node_health.n1",
        "exesdb.ex_esdb_alerts.system_alert.store%2Eeu-1",
        "exesdb.ex_esdb_audit.a.b%20c%2A%3E%25",
        "exesdb.ex_esdb_health.node_health.n1",
    ]
    for (_, fields), delivery in zip(headers, batch, strict=True):
        assert fields["Nats-Msg-Id"] == delivery.id
        assert fields["Exesdb-Topic"] == delivery.topic
        assert fields["Exesdb-Type"] == delivery.type


def test_redelivered_ids_are_deduplicated_by_jetstream(peer: NatsPeer) -> None:
    batch = mixed(Deliveries())

    async def twice() -> nats_sink.NatsSinkStats:
        target = sink(peer.sink_options())
        try:
            assert await target.send(batch) == [None] * 4  # send connects by itself
            assert await target.send(batch[1:3]) == [None, None]
            return target.stats
        finally:
            await target.close()

    stats = asyncio.run(twice())
    assert stats.duplicates == 2 and stats.acknowledged == 6
    assert [r.id for r in peer.received()] == [d.id for d in batch]


@pytest.mark.timeout(30)
def test_server_down_is_unavailable_then_the_next_send_reconnects(peer: NatsPeer) -> None:
    make = Deliveries()
    first, second = mixed(make), mixed(make)

    async def scenario() -> list[str]:
        errors = []
        target = sink(peer.sink_options())
        await target.open()
        try:
            assert await target.send(first) == [None] * 4
            peer.stop()
            for _ in range(2):  # the connection lost, then the connection refused
                with pytest.raises(SinkUnavailable) as raised:
                    await target.send(second)
                errors.append(str(raised.value))
            peer.start()
            assert await target.send(second) == [None] * 4
            assert await target.send(second[:1]) == [None]  # the same connection again
            assert target.stats.connects == 3  # open, the refused attempt, the reconnection
        finally:
            await target.close()
        return errors

    errors = asyncio.run(scenario())
    assert all("\n" not in e and e.startswith("connector c1: nats nats://127.0.0.1:") for e in errors), errors
    assert "cannot connect" in errors[1]
    assert [r.id for r in peer.received()] == [d.id for d in first + second]


@pytest.mark.timeout(30)
def test_no_acknowledgement_in_time_is_unavailable(peer: NatsPeer) -> None:
    process = peer._process
    assert process is not None
    batch = mixed(Deliveries())

    async def scenario() -> None:
        target = sink(peer.sink_options(), ack_timeout=0.5)
        await target.open()
        try:
            freeze(process.pid)  # the server holds the connection but answers nothing
            try:
                with pytest.raises(SinkUnavailable, match=r"no acknowledgement in 0\.5 s"):
                    await target.send(batch)
            finally:
                os.kill(process.pid, signal.SIGCONT)
            assert await target.send(batch) == [None] * 4
        finally:
            await target.close()

    asyncio.run(scenario())
    assert [r.id for r in peer.received()] == [d.id for d in batch]  # the first try's stores were deduplicated


def test_poison_is_refused_alone_and_the_rest_acknowledged(peer: NatsPeer) -> None:
    make = Deliveries(max_message_size=4 << 20)
    instance, subtopic, data = peer.poison()
    poison = make(instance, subtopic, "SystemAlert", data)
    huge = make("ex_esdb_audit", "huge", "Custom", {"blob": "y" * (1100 * 1024)})  # over the server's max_payload
    good = mixed(make)
    (outcomes,) = asyncio.run(send(peer.sink_options(), [good[0], poison, good[1], huge, good[2]]))
    assert outcomes[0] is None and outcomes[2] is None and outcomes[4] is None
    assert outcomes[1] == "JetStream refused the message: message size exceeds maximum allowed (err_code 10054)"
    assert outcomes[3] is not None and "over the server's max_payload of 1048576" in outcomes[3]
    assert [r.id for r in peer.received()] == [good[0].id, good[1].id, good[2].id]


def test_bad_password_is_rejected(peer: NatsPeer, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-password\n")
    target = sink(peer.sink_options(), password_file=str(wrong))
    with pytest.raises(SinkRejected, match="login refused"):
        asyncio.run(target.open())
    with pytest.raises(SinkRejected, match="login refused"):
        asyncio.run(target.send(mixed(Deliveries())))


def test_missing_stream_is_rejected_unless_created(peer: NatsPeer) -> None:
    with pytest.raises(SinkRejected, match="stream 'NOPE' does not exist"):
        asyncio.run(send({**peer.sink_options(), "stream": "NOPE"}))
    batch = mixed(Deliveries())
    options = {**peer.sink_options(), "stream": "OTHER", "prefix": "other.bus", "create_stream": True}
    assert asyncio.run(send(options, batch)) == [[None] * 4]


def test_subject_outside_the_stream_is_rejected(peer: NatsPeer) -> None:
    options = {**peer.sink_options(), "prefix": "elsewhere"}
    with pytest.raises(SinkRejected, match=r"does not take subject 'elsewhere\.ex_esdb_health\.node_health\.n1'"):
        asyncio.run(send(options, mixed(Deliveries())))


def test_publish_permission_violation_is_rejected(peer: NatsPeer) -> None:
    options = {**peer.sink_options(), "user": peer_nats.READONLY_USER}
    with pytest.raises(SinkRejected, match=r"(?i)permissions violation for publish"):
        asyncio.run(send(options, mixed(Deliveries())))


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        ({"colour": "red"}, "colour"),
        ({"url": "http://127.0.0.1:4222"}, "url"),
        ({"url": "nats://127.0.0.1:99999"}, "url"),
        ({"url": "nats://:4222"}, "url"),
        ({"url": "nats://u:p@127.0.0.1:4222"}, "url"),
        ({"url": 4222}, "url"),
        ({"stream": "a.b"}, "stream"),
        ({"stream": ""}, "stream"),
        ({"prefix": "exesdb.*"}, "prefix"),
        ({"prefix": "a..b"}, "prefix"),
        ({"prefix": "$JS"}, "prefix"),
        ({"prefix": "has space"}, "prefix"),
        ({"create_stream": "yes"}, "create_stream"),
        ({"ack_timeout": 0}, "ack_timeout"),
        ({"connect_timeout": "1s"}, "connect_timeout"),
        ({"max_inflight": 0}, "max_inflight"),
        ({"max_inflight": True}, "max_inflight"),
        ({"password_file": "/nonexistent/password"}, "password_file"),
        ({"user": None}, "user"),
        ({"token_file": "/etc/hostname"}, "token_file"),
    ],
)
def test_config_errors_are_one_line_naming_the_key(changes: dict[str, Any], key: str) -> None:
    options: dict[str, Any] = {
        "url": "nats://127.0.0.1:4222",
        "stream": "S",
        "user": "u",
        "password_file": __file__,
        **changes,
    }
    options = {k: v for k, v in options.items() if v is not None}
    with pytest.raises(ConfigError) as raised:
        nats_sink.create("c1", options)
    message = str(raised.value)
    assert "\n" not in message and message.startswith("connector c1: ") and key in message, message


def test_a_missing_url_or_stream_is_required() -> None:
    with pytest.raises(ConfigError, match=r"^connector c1: url is required$"):
        nats_sink.create("c1", {"stream": "S"})
    with pytest.raises(ConfigError, match=r"^connector c1: stream is required$"):
        nats_sink.create("c1", {"url": "nats://127.0.0.1:4222"})
