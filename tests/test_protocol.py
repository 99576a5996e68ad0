"""Wire protocol v1 in isolation, and a property test of envelopes through a real broker."""

from __future__ import annotations

import string
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
from exesdb_sdk import Instance, Message, Publisher, Subscriber, UnknownInstanceError
from exesdb_sdk.durable import CatchUp, durable_seq
from exesdb_sdk.errors import ControlError, ProtocolError
from exesdb_sdk.protocol import (
    MAX_DEPTH,
    MAX_INT,
    TOPIC_CACHE_LIMIT,
    Decoder,
    Encoder,
    GapTracker,
    build_topic,
    decode_reply,
    decode_request,
    encode_error_reply,
    encode_reply,
    encode_request,
    parse_topic,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from .conftest import FREE, BrokerProcess

# MessagePack values a payload may hold: what comes back must equal what went in.
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=50)
    | st.binary(max_size=50)
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=20,
)
payloads = st.dictionaries(st.text(max_size=20), values, max_size=8)
subtopics = st.text(alphabet=st.characters(blacklist_categories=["Cc", "Cs"]), min_size=1, max_size=40)
optional_ids = st.none() | st.text(alphabet=string.printable, max_size=30)


@given(
    instance=st.sampled_from(list(Instance)),
    subtopic=subtopics,
    msg_type=st.text(min_size=1, max_size=30),
    data=payloads,
    corr=optional_ids,
    cause=optional_ids,
)
def test_envelopes_round_trip(
    instance: Instance,
    subtopic: str,
    msg_type: str,
    data: dict[str, Any],
    corr: str | None,
    cause: str | None,
) -> None:
    encoder = Encoder(src="node")
    topic = encoder.topic(instance, subtopic)
    body = encoder.encode(topic, msg_type, data, corr, cause)
    (message,) = Decoder().decode([topic, body])
    assert message.topic == f"{instance.value}/{subtopic}"
    assert message.instance is instance
    assert message.subtopic == subtopic
    assert (message.type, message.data, message.corr, message.cause) == (msg_type, data, corr, cause)
    assert (message.src, message.pub, message.seq, message.v) == ("node", encoder.pub, 1, 1)


@given(batch=st.lists(payloads, min_size=1, max_size=10))
def test_batches_round_trip_with_consecutive_sequences(batch: list[dict[str, Any]]) -> None:
    encoder = Encoder(src="n")
    topic = encoder.topic("events", "store:s")
    encoder.encode(topic, "Events", {})
    body = encoder.encode_batch(topic, "Events", batch)
    messages = Decoder().decode([topic, body])
    assert [m.data for m in messages] == batch
    assert [m.seq for m in messages] == list(range(2, 2 + len(batch)))


@given(junk=st.binary(max_size=64))
def test_arbitrary_bodies_decode_or_raise_protocol_error(junk: bytes) -> None:
    try:
        messages = Decoder().decode([b"ex_esdb_health/x", junk])
    except ProtocolError as exc:
        assert exc.reason in {"bad_body", "bad_envelope", "out_of_range"}
    else:
        assert all(isinstance(m, Message) for m in messages)


def test_unknown_keys_are_ignored_and_missing_optional_keys_default() -> None:
    body = msgspec.msgpack.encode({"type": "T", "future_key": [1, 2], "v": 2})
    (message,) = Decoder().decode([b"ex_esdb_health/x", body, b"extra frame"])
    assert (message.type, message.v, message.data, message.ts, message.seq, message.pub) == (
        "T",
        2,
        {},
        0,
        0,
        "",
    )
    # an envelope cannot set the topic: it always comes from the topic frame
    body = msgspec.msgpack.encode({"type": "T", "~topic": "ex_esdb_audit/forged", "topic": "x"})
    assert Decoder().decode([b"ex_esdb_health/real", body])[0].topic == "ex_esdb_health/real"


def test_topic_grammar() -> None:
    assert build_topic("health", "store_health:s") == "ex_esdb_health/store_health:s"
    assert build_topic(":ex_esdb_health", "a/b") == "ex_esdb_health/a/b"
    assert parse_topic(b"ex_esdb_metrics/x/y") == (Instance.METRICS, "x/y")
    for bad in ("", "tab\there", "x" * 1025, "\ud800"):
        with pytest.raises(ProtocolError):
            build_topic("health", bad)
    with pytest.raises(UnknownInstanceError):
        build_topic("ex_esdb_nope", "x")
    for topic, reason in [
        (b"\xff/x", "bad_topic"),
        (b"ex_esdb_health", "bad_topic"),
        (b"health/x", "unknown_instance"),
    ]:
        with pytest.raises(ProtocolError) as caught:
            parse_topic(topic)
        assert caught.value.reason == reason


def test_the_decoders_topic_cache_is_bounded_and_forgets_every_topic_past_it() -> None:
    decoder = Decoder()
    body = msgspec.msgpack.encode({"type": "T", "data": {}})
    for n in range(TOPIC_CACHE_LIMIT + 10):
        assert decoder.decode([f"ex_esdb_health/t{n}".encode(), body])[0].topic == f"ex_esdb_health/t{n}"
    assert decoder.topics_forgotten == 1
    assert decoder.decode([b"ex_esdb_health/t0", body])[0].topic == "ex_esdb_health/t0"  # parsed again
    with pytest.raises(ProtocolError) as caught:
        decoder.decode([b"ex_esdb_nowhere/t0", body])
    assert caught.value.reason == "unknown_instance"


def test_gap_tracker() -> None:
    tracker = GapTracker()

    def msg(pub: str, seq: int, topic: str = "ex_esdb_health/x") -> Message:
        return Message(type="T", pub=pub, seq=seq, topic=topic)

    observed = [tracker.observe(m) for m in (msg("a", 3), msg("a", 4), msg("a", 7), msg("a", 5), msg("b", 9))]
    assert observed == [0, 0, 2, 0, 0]
    assert tracker.observe(msg("a", 8)) == 0, "a late duplicate does not move the high-water mark back"
    assert tracker.observe(msg("a", 9, "ex_esdb_health/y")) == 0
    assert tracker.gaps == 2


def test_control_codec() -> None:
    request = decode_request(encode_request("replay", {"instance": "audit"}, 7))
    assert request == {"op": "replay", "instance": "audit", "id": 7}
    assert decode_reply(encode_reply({"pong": True}, 7)) == {"ok": True, "pong": True, "id": 7}
    with pytest.raises(ControlError) as caught:
        decode_reply(encode_error_reply("unknown_op", "no such op", 7))
    assert (caught.value.code, caught.value.message) == ("unknown_op", "no such op")
    for bad in (b"\xc1", msgspec.msgpack.encode([1]), msgspec.msgpack.encode({"op": None})):
        with pytest.raises(ProtocolError):
            decode_request(bad)
    with pytest.raises(ProtocolError):
        decode_reply(msgspec.msgpack.encode({"pong": True}))


HEALTH = b"ex_esdb_health/x"
# The body of the defect report: 1000 nested arrays inside ``data`` (1 KB).
DEEP_BODY = b"\x82\xa4type\xa4Fuzz\xa4data\x81\xa1x" + b"\x91" * 1000 + b"\xc0"


def nested(depth: int, inner: Any = 1) -> Any:
    """``inner`` inside ``depth`` arrays (``depth`` levels deep when ``inner`` is a scalar)."""
    for _ in range(depth):
        inner = [inner]
    return inner


def tupled(depth: int) -> Any:
    """1 inside ``depth`` tuples: a map key ``depth`` levels deep (MessagePack arrays)."""
    key: Any = 1
    for _ in range(depth):
        key = (key,)
    return key


def outcomes(decoder: Decoder, frames: list[bytes]) -> list[tuple[str, int]]:
    """What decode, check and inspect make of ``frames``: ("ok", envelopes) or (reason, 0) each."""
    results = []
    for call in (decoder.decode, decoder.check, decoder.inspect):
        try:
            result = call(frames)
        except ProtocolError as exc:
            results.append((exc.reason, 0))
        else:
            results.append(("ok", len(result) if isinstance(result, list) else result[-1]))
    return results


def test_deep_nesting_is_too_deep_not_a_recursion_error() -> None:
    assert outcomes(Decoder(), [HEALTH, DEEP_BODY]) == [("too_deep", 0)] * 3
    assert outcomes(Decoder(b"secret"), [HEALTH, DEEP_BODY]) == [("too_deep", 0)] * 3
    batch = b"\xdc\x00\x02" + msgspec.msgpack.encode({"type": "T"}) + DEEP_BODY
    assert outcomes(Decoder(b"secret"), [HEALTH, batch]) == [("too_deep", 0)] * 3
    for frame in (DEEP_BODY, b"\x82\xa2op\xa4ping\xa2id" + b"\x91" * 1000 + b"\xc0"):
        for decode in (decode_request, decode_reply):
            with pytest.raises(ProtocolError) as caught:
                decode(frame)
            assert caught.value.reason == "too_deep"


@pytest.mark.parametrize("batched", [False, True])
def test_nesting_is_allowed_up_to_max_depth_counting_every_level(batched: bool) -> None:
    assert MAX_DEPTH == 64
    left = MAX_DEPTH - 1 - batched  # levels left below the envelope map (and the batch array)
    for extra in (0, 1):
        envelopes = [
            {"type": "T", "data": {"x": nested(left - 1 + extra)}},
            {"type": "T", "future": nested(left + extra)},  # an unknown key: skipped, still counted
            {"type": "T", "data": {"m": {tupled(left - 2 + extra): 1}}},  # keys count too
        ]
        for envelope in envelopes:
            body = msgspec.msgpack.encode([envelope] if batched else envelope)
            expected = ("too_deep", 0) if extra else ("ok", 1)
            assert outcomes(Decoder(), [HEALTH, body]) == [expected] * 3, (extra, envelope)
    assert decode_request(msgspec.msgpack.encode({"op": "ping", "id": nested(MAX_DEPTH - 1)}))["op"] == "ping"
    with pytest.raises(ProtocolError, match="too_deep"):
        decode_request(msgspec.msgpack.encode({"op": "ping", "id": nested(MAX_DEPTH)}))


@pytest.mark.parametrize(
    ("key", "bad", "good"),
    [
        ("seq", -1, 0),
        ("seq", MAX_INT + 1, MAX_INT),
        ("seq", 2**64 - 1, MAX_INT),
        ("ts", -1, 0),
        ("ts", MAX_INT + 1, MAX_INT),
        ("v", 0, 1),
        ("v", 65536, 65535),
    ],
)
def test_integer_ranges_are_out_of_range(key: str, bad: int, good: int) -> None:
    decoder = Decoder()
    for value, expected in [(bad, ("out_of_range", 0)), (good, ("ok", 1))]:
        body = msgspec.msgpack.encode({"type": "T", key: value})
        assert outcomes(decoder, [HEALTH, body]) == [expected] * 3
        batch = msgspec.msgpack.encode([{"type": "T"}, {"type": "T", key: value}])
        assert outcomes(decoder, [HEALTH, batch]) == [(expected[0], 2 * expected[1])] * 3
    # a wrong type stays a bad envelope; an empty type too, though its message says ">= 1"
    for envelope in ({"type": "T", key: "1"}, {"type": "T", key: True}, {"type": "", key: good}):
        assert outcomes(decoder, [HEALTH, msgspec.msgpack.encode(envelope)]) == [("bad_envelope", 0)] * 3


def test_check_rejects_what_decode_rejects_about_data() -> None:
    decoder = Decoder()
    for data, reason in [(5, "bad_envelope"), ([1], "bad_envelope"), ({1: 2}, "bad_envelope")]:
        body = msgspec.msgpack.encode({"type": "T", "data": data, "seq": -1})
        assert outcomes(decoder, [HEALTH, body]) == [(reason, 0)] * 3, data
    body = msgspec.msgpack.encode({"type": "T", "~replayed": "yes"})
    assert outcomes(decoder, [HEALTH, body]) == [("bad_envelope", 0)] * 3


def test_a_topic_too_long_to_sign_is_a_bad_signature() -> None:
    encoder = Encoder(src="n", secret=b"secret")
    body = encoder.encode(encoder.topic("health", "x"), "T", {})
    with pytest.raises(ProtocolError, match="bad_signature"):
        Decoder(b"secret").decode([b"ex_esdb_health/" + b"x" * 0x10000, body])


def test_control_frames_never_raise_anything_but_protocol_errors() -> None:
    not_utf8 = msgspec.msgpack.encode({"op": "ping", "x": "@"}).replace(b"\xa1@", b"\xa1\xff")
    with pytest.raises(ProtocolError, match="bad_request"):
        decode_request(not_utf8)
    with pytest.raises(ProtocolError, match="bad_reply"):
        decode_reply(not_utf8.replace(b"\xa2op\xa4ping", b"\xa2ok\xc3\xa0"))
    for reply in ({"ok": True, "seq": MAX_INT + 1}, {"ok": True, "seq": -1}, {"ok": True, "seq": True}):
        with pytest.raises(ProtocolError, match="bad_reply"):
            durable_seq(reply)
    assert durable_seq({"ok": True, "seq": MAX_INT}) == MAX_INT
    with pytest.raises(ProtocolError, match="bad_reply"):
        CatchUp("audit", "", 0).advance({"records": [], "next": MAX_INT + 1, "more": False})
    with pytest.raises(ValueError, match="replay_from"):
        CatchUp("audit", "", MAX_INT + 1)


@pytest.fixture(scope="module")
def shared_broker() -> Iterator[BrokerProcess]:
    broker = BrokerProcess(["--frontend", FREE, "--backend", FREE, "--control", FREE]).wait_ready()
    yield broker
    broker.stop()


@pytest.fixture(scope="module")
def pair(shared_broker: BrokerProcess) -> Iterator[tuple[Publisher, Subscriber]]:
    with Publisher(shared_broker.frontend) as pub, Subscriber(shared_broker.backend) as sub:
        sub.subscribe()
        yield pub, sub


@settings(max_examples=60, deadline=None)
@given(instance=st.sampled_from(list(Instance)), subtopic=subtopics, data=payloads, corr=optional_ids)
def test_envelopes_round_trip_through_a_real_broker(
    pair: tuple[Publisher, Subscriber],
    instance: Instance,
    subtopic: str,
    data: dict[str, Any],
    corr: str | None,
) -> None:
    pub, sub = pair
    seq = pub.publish(instance, subtopic, "Prop", data, corr=corr)
    message = sub.recv(timeout=5)
    assert (message.instance, message.subtopic, message.seq) == (instance, subtopic, seq)
    assert (message.type, message.data, message.corr) == ("Prop", data, corr)
