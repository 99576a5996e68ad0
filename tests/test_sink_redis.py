"""The ``redis`` sink against a real ``redis-server`` (tests/peer_redis.py): the entries it
writes, its failures mapped to the sink contract, and its configuration errors."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import msgspec
import pytest
from exesdb_connect.sink import Delivery, SinkFactory, SinkRejected, SinkUnavailable
from exesdb_connect.sinks import redis as redis_sink
from exesdb_connect.source import delivery_of
from exesdb_sdk.errors import ConfigError
from exesdb_sdk.jsonview import json_ready
from exesdb_sdk.messages import NodeHealth, SystemAlert
from exesdb_sdk.protocol import Decoder, Encoder

from .peer_redis import RedisPeer, make_peer

pytestmark = pytest.mark.timeout(30)

ENTRY_FIELDS = {"id", "topic", "type", "ts", "src", "seq", "data"}


class Bus:
    """Deliveries built as a connector builds them: from real envelopes, encoded then decoded."""

    def __init__(self) -> None:
        self.encoder = Encoder(src="node1")
        self.decoder = Decoder()

    def delivery(
        self,
        instance: str,
        subtopic: str,
        data: dict[str, Any] | msgspec.Struct,
        *,
        type: str = "Custom",
        corr: str | None = None,
        broker_seq: int | None = None,
    ) -> Delivery:
        topic = self.encoder.topic(instance, subtopic)
        body = self.encoder.encode(topic, type, data, corr=corr)
        (message,) = self.decoder.decode([topic, body])
        return delivery_of(message, broker_seq, body=body)

    def typed(self, payload: NodeHealth | SystemAlert, **kwargs: Any) -> Delivery:
        return self.delivery(
            payload.__instance__.value,
            payload.__subtopic__.format(**msgspec.structs.asdict(payload)),
            payload,
            type=type(payload).__name__,
            **kwargs,
        )


@pytest.fixture
def peer(tmp_path: Path) -> Iterator[RedisPeer]:
    server = make_peer(tmp_path)
    server.start()
    yield server
    server.close()


@pytest.fixture
def bus() -> Bus:
    return Bus()


def run_send(options: dict[str, Any], *batches: Sequence[Delivery]) -> list[Sequence[str | None]]:
    """Open a sink with ``options``, send each batch, close; the outcomes per batch."""

    async def scenario() -> list[Sequence[str | None]]:
        sink = redis_sink.create("c1", options)
        try:
            await sink.open()
            return [await sink.send(batch) for batch in batches]
        finally:
            await sink.close()

    return asyncio.run(scenario())


def entries(peer: RedisPeer, key: str) -> list[dict[str, str]]:
    return [fields for _, fields in peer.entries(key)]


def test_mixed_batch_lands_one_stream_per_instance_with_the_envelope_fields(peer: RedisPeer, bus: Bus) -> None:
    options = {key: value for key, value in peer.sink_options().items() if key != "stream"}  # the default mapping
    batch = [
        bus.typed(SystemAlert(severity="critical", title="disk full"), corr="req-7", broker_seq=41),
        bus.typed(NodeHealth(node="n1", status="healthy", load_avg=0.5)),
        bus.delivery("ex_esdb_diagnostics", "trace:x", {"blob": b"\x00\xff", "nested": {"list": [1, 2.5, None]}}),
        bus.typed(SystemAlert(severity="critical", title="disk fine"), broker_seq=42),
    ]
    assert run_send(options, batch) == [[None] * 4]

    alerts = entries(peer, "exesdb:ex_esdb_alerts")
    health = entries(peer, "exesdb:ex_esdb_health")
    diagnostics = entries(peer, "exesdb:ex_esdb_diagnostics")
    assert (len(alerts), len(health), len(diagnostics)) == (2, 1, 1)
    for entry, delivery in zip([alerts[0], health[0], diagnostics[0], alerts[1]], batch, strict=True):
        view = delivery.json
        expected = {
            "id": delivery.id,
            "topic": delivery.topic,
            "type": delivery.type,
            "ts": view["ts"],
            "src": "node1",
            "seq": str(view["seq"]),
        }
        assert {key: entry[key] for key in expected} == expected
        assert json.loads(entry["data"]) == view["data"]
        assert set(entry) == ENTRY_FIELDS | ({"corr"} if view["corr"] else set()) | (
            {"broker_seq"} if delivery.broker_seq is not None else set()
        )
    assert alerts[0]["corr"] == "req-7" and alerts[0]["broker_seq"] == "41" and alerts[1]["broker_seq"] == "42"
    assert json.loads(diagnostics[0]["data"])["blob"] == json_ready(b"\x00\xff")
    assert alerts[0]["topic"] == "ex_esdb_alerts/critical" and health[0]["topic"] == "ex_esdb_health/node_health:n1"


def test_a_redelivered_batch_keeps_its_ids_and_maxlen_bounds_each_stream(peer: RedisPeer, bus: Bus) -> None:
    options = {**peer.sink_options(), "stream": "t:{{x}}:{instance}/{subtopic}", "maxlen": 10}
    first = [bus.delivery("ex_esdb_alerts", "a:b", {"n": n}) for n in range(3)]
    run_send(options, first, first)  # a retry after an unknown outcome: the same ids again
    ids = [entry["id"] for entry in entries(peer, "t:{x}:ex_esdb_alerts/a:b")]
    assert ids == [d.id for d in first] * 2 and len(set(ids)) == 3

    many = [bus.delivery("ex_esdb_alerts", "a:b", {"n": n}) for n in range(1000)]
    outcomes = run_send(options, *(many[i : i + 250] for i in range(0, 1000, 250)))
    assert all(outcome is None for batch in outcomes for outcome in batch)
    length = peer.client().xlen("t:{x}:ex_esdb_alerts/a:b")
    assert 10 <= length <= 10 + 100  # MAXLEN ~ trims whole nodes (stream-node-max-entries 100)
    assert entries(peer, "t:{x}:ex_esdb_alerts/a:b")[-1]["id"] == many[-1].id


def test_poison_and_unencodable_items_are_refused_while_the_rest_is_acknowledged(peer: RedisPeer, bus: Bus) -> None:
    instance, subtopic, data = peer.poison()
    batch = [
        bus.delivery("ex_esdb_alerts", "before", {"n": 1}),
        bus.delivery(instance, subtopic, data),
        bus.delivery("ex_esdb_alerts", "nan", {"value": float("nan")}),
        bus.delivery("ex_esdb_alerts", "after", {"n": 2}),
    ]
    ((ok1, poison, nan, ok2),) = run_send(peer.sink_options(), batch)
    assert ok1 is None and ok2 is None
    assert poison is not None and "WRONGTYPE" in poison and "exesdb:ex_esdb_alerts:poison" in poison
    assert nan is not None and nan.startswith("data is not JSON")
    assert sorted((r.topic, r.data["n"]) for r in peer.received()) == [
        ("ex_esdb_alerts/after", 2),
        ("ex_esdb_alerts/before", 1),
    ]


def test_server_stopped_is_unavailable_then_the_next_send_reconnects(peer: RedisPeer, bus: Bus) -> None:
    async def scenario() -> list[str]:
        sink = redis_sink.create("c1", peer.sink_options())
        failures = []
        try:
            await sink.open()
            assert await sink.send([bus.delivery("ex_esdb_alerts", "x", {"n": 1})]) == [None]
            peer.stop()
            for n in (2, 3):  # the broken connection, then a refused connect
                with pytest.raises(SinkUnavailable) as failed:
                    await sink.send([bus.delivery("ex_esdb_alerts", "x", {"n": n})])
                failures.append(str(failed.value))
            with pytest.raises(SinkUnavailable) as failed:
                await sink.open()
            failures.append(str(failed.value))
            peer.start()
            assert await sink.send([bus.delivery("ex_esdb_alerts", "x", {"n": 4})]) == [None]
        finally:
            await sink.close()
        return failures

    failures = asyncio.run(scenario())
    assert all("\n" not in text and f"127.0.0.1:{peer.port}" in text for text in failures), failures
    assert [r.data["n"] for r in peer.received()] == [1, 4]  # kept across the restart


def test_a_server_that_does_not_answer_is_unavailable_within_the_timeout(peer: RedisPeer, bus: Bus) -> None:
    async def scenario() -> str:
        sink = redis_sink.create("c1", {**peer.sink_options(), "timeout": 0.5, "connect_timeout": 0.5})
        try:
            await sink.open()
            peer.pause()
            try:
                with pytest.raises(SinkUnavailable) as failed:
                    await sink.send([bus.delivery("ex_esdb_alerts", "x", {"n": 1})])
            finally:
                peer.resume()
            assert await sink.send([bus.delivery("ex_esdb_alerts", "x", {"n": 2})]) == [None]
            return str(failed.value)
        finally:
            await sink.close()

    assert "Timeout" in asyncio.run(scenario())
    # the unanswered item may have been appended after all: a duplicate the connector resends, same id
    assert [r.data["n"] for r in peer.received()][-1] == 2


def test_garbage_from_the_far_side_is_unavailable(bus: Bus) -> None:
    async def scenario() -> str:
        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(answer, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        sink = redis_sink.create("c1", {"url": f"redis://127.0.0.1:{port}", "timeout": 1.0})
        try:
            with pytest.raises(SinkUnavailable) as failed:
                await sink.send([bus.delivery("ex_esdb_alerts", "x", {"n": 1})])
            return str(failed.value)
        finally:
            await sink.close()
            server.close()
            await server.wait_closed()

    text = asyncio.run(scenario())
    assert "\n" not in text and text.startswith("redis 127.0.0.1:")


def rejection(options: dict[str, Any], batch: Sequence[Delivery], *, open_first: bool) -> str:
    async def scenario() -> str:
        sink = redis_sink.create("c1", options)
        try:
            with pytest.raises(SinkRejected) as refused:
                if open_first:
                    await sink.open()
                await sink.send(batch)
            return str(refused.value)
        finally:
            await sink.close()

    return asyncio.run(scenario())


def test_refused_credentials_permissions_and_missing_streams_reject_the_connector(
    peer: RedisPeer, bus: Bus, tmp_path: Path
) -> None:
    batch = [bus.delivery("ex_esdb_alerts", "x", {"n": 1})]
    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-password\n")
    base = peer.sink_options()
    for options, open_first, expected in [
        ({**base, "password_file": str(wrong)}, True, "credentials"),
        ({**base, "password_file": str(wrong)}, False, "credentials"),
        ({key: value for key, value in base.items() if key != "password_file"}, False, "refused the credentials"),
        (
            {**base, "password_file": None, "url": f"redis://limited:{peer.limited_password}@127.0.0.1:{peer.port}"},
            True,
            "permissions",
        ),
        ({**base, "create": False}, True, "does not exist"),
    ]:
        options = {key: value for key, value in options.items() if value is not None}
        text = rejection(options, batch, open_first=open_first)
        assert expected in text and "\n" not in text, (options, text)
    assert peer.received() == []

    peer.client().xgroup_create("exesdb:ex_esdb_alerts:x", "readers", mkstream=True)  # an empty stream
    # once the stream exists, create = false appends to it
    assert run_send({**base, "create": False}, batch) == [[None]]
    assert [r.id for r in peer.received()] == [batch[0].id]


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"url": "redis://127.0.0.1:6379", "stram": "x"}, "'stram'"),
        ({}, "url is required"),
        ({"url": 6379}, "url must be a str"),
        ({"url": "http://127.0.0.1:6379"}, "url:"),
        ({"url": "redis://"}, "url:"),
        ({"url": "redis://127.0.0.1:99999"}, "url:"),
        ({"url": "redis://u:s3cret@127.0.0.1:99999"}, "'redis://u:***@127.0.0.1:99999' has a bad port"),
        ({"url": "redis://127.0.0.1:6379/zero"}, "url:"),
        ({"url": "redis://127.0.0.1:6379/0?db=1"}, "url:"),
        ({"url": "redis://:pw@127.0.0.1", "password_file": "/etc/hostname"}, "password_file:"),
        ({"url": "redis://127.0.0.1", "password_file": "/nonexistent/pw"}, "password_file:"),
        ({"url": "redis://127.0.0.1", "password_file": ["pw"]}, "password_file must be a str"),
        ({"url": "redis://127.0.0.1", "maxlen": "100"}, "maxlen must be a int"),
        ({"url": "redis://127.0.0.1", "maxlen": 0}, "maxlen:"),
        ({"url": "redis://127.0.0.1", "maxlen": True}, "maxlen must be a int"),
        ({"url": "redis://127.0.0.1", "timeout": -1}, "timeout:"),
        ({"url": "redis://127.0.0.1", "connect_timeout": "5s"}, "connect_timeout must be a float"),
        ({"url": "redis://127.0.0.1", "create": "yes"}, "create must be a bool"),
        ({"url": "redis://127.0.0.1", "stream": ""}, "stream:"),
        ({"url": "redis://127.0.0.1", "stream": "exesdb:{topic}"}, "unknown placeholder {topic}"),
        ({"url": "redis://127.0.0.1", "stream": "exesdb:{instance"}, "stream:"),
        ({"url": "redis://127.0.0.1", "stream": "exesdb:}"}, "stream:"),
        ({"url": "redis://127.0.0.1", "stream": "exesdb:{instance!r}"}, "stream:"),
        ({"url": "redis://127.0.0.1", "stream": "exesdb:{}"}, "stream:"),
    ],
)
def test_every_configuration_error_is_one_line_naming_connector_and_key(options: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as failed:
        redis_sink.create("c1", options)
    text = str(failed.value)
    assert text.startswith("connector c1: ") and key in text and "\n" not in text, text


def test_empty_password_file_is_a_configuration_error(tmp_path: Path) -> None:
    empty = tmp_path / "pw"
    empty.write_text("\n")
    with pytest.raises(ConfigError, match=r"^connector c1: password_file: .* is empty$"):
        redis_sink.create("c1", {"url": "redis://127.0.0.1", "password_file": str(empty)})


def test_a_good_configuration_builds_the_sink_it_says() -> None:
    factory: SinkFactory = redis_sink.create  # mypy: the module is a sink factory, its sink a Sink
    assert isinstance(factory("c0", {"url": "redis://127.0.0.1"}).kind, str)
    sink = redis_sink.create(
        "c1", {"url": "redis://u:p%40ss@[::1]:7000/3", "stream": "s:{subtopic}", "maxlen": 5, "timeout": 1}
    )
    assert sink.kind == "redis" and sink.maxlen == 5 and sink.timeout == 1.0 and sink.create is True
    target = sink.target
    assert (target.host, target.port, target.db, target.username, target.password) == ("::1", 7000, 3, "u", "p@ss")
    assert "p@ss" not in repr(sink) and target.address == "[::1]:7000"
