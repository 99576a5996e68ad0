"""Independence check of docs/protocol.md: a raw client built from the doc alone
(tests/interop_client.py: zmq + msgpack, no exesdb_sdk) against the real broker and the SDK.

Section numbers (§) refer to docs/protocol.md.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
from exesdb_sdk import Message, Publisher, Subscriber

from .conftest import BrokerProcess, wait_until
from .interop_client import (
    INSTANCES,
    PROBE_PREFIX,
    ControlClient,
    Envelope,
    GapTracker,
    RawPublisher,
    RawSubscriber,
    decode_message,
    pack,
)

DOC = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"
TIMEOUT = 5.0


# ---------------------------------------------------------------------------------------------
# Reading the document


def doc_text() -> str:
    return DOC.read_text(encoding="utf-8")


def doc_section(number: str) -> str:
    """The text of ``### <number>`` up to the next heading."""
    match = re.search(rf"^### {re.escape(number)} .*?(?=^#{{2,3}} |\Z)", doc_text(), re.S | re.M)
    assert match, f"section {number} not found in {DOC}"
    return match.group(0)


def code_blocks(text: str) -> list[str]:
    return re.findall(r"^```\w*\n(.*?)^```", text, re.S | re.M)


HEX_BYTE = re.compile(r"[0-9a-f]{2}")


def hex_bytes(block: str) -> bytes:
    """The bytes of the hex column of a doc code block: the leading two-digit hex tokens of
    each line (the comment that follows starts with a non-hex token such as ``"v"``)."""
    out = bytearray()
    for line in block.splitlines():
        for token in line.split():
            if not HEX_BYTE.fullmatch(token):
                break
            out.append(int(token, 16))
    return bytes(out)


def doc_instance_table() -> dict[str, str]:
    """§3: full instance name -> alias, from the table in the doc."""
    rows = re.findall(r"^\| `(ex_esdb_\w+)` \| `(\w+)` \|", doc_text(), re.M)
    return dict(rows)


# ---------------------------------------------------------------------------------------------
# Helpers


def recv_until(sub: RawSubscriber, predicate: Callable[[Envelope], bool], timeout: float = TIMEOUT) -> list[Envelope]:
    """Envelopes received until one satisfies ``predicate`` (included), within ``timeout``."""
    deadline = time.monotonic() + timeout
    got: list[Envelope] = []
    while (remaining := deadline - time.monotonic()) > 0:
        envelope = sub.recv(remaining)
        if envelope is None:
            break
        got.append(envelope)
        if predicate(envelope):
            return got
    raise AssertionError(f"no matching envelope within {timeout} s; got {got}")


def sdk_recv_until_type(sub: Subscriber, type_: str, timeout: float = TIMEOUT) -> list[Message]:
    """SDK messages received until one of type ``type_`` (included), within ``timeout``."""
    deadline = time.monotonic() + timeout
    got: list[Message] = []
    while (remaining := deadline - time.monotonic()) > 0:
        message = sub.recv(timeout=remaining)
        assert message is not None, f"SDK subscriber: nothing within {timeout} s; got {got}"
        got.append(message)
        if message.type == type_:
            return got
    raise AssertionError(f"no {type_} within {timeout} s; got {got}")


def wait_stats(
    control: ControlClient, predicate: Callable[[dict[str, Any]], bool], timeout: float = TIMEOUT
) -> dict[str, Any]:
    """Poll ``stats`` until ``predicate(stats)`` holds; return the last reply."""
    last: dict[str, Any] = {}

    def check() -> bool:
        nonlocal last
        last = control.stats()
        return bool(predicate(last))

    assert wait_until(check, timeout=timeout, interval=0.05), f"stats never matched: {last}"
    return last


# ---------------------------------------------------------------------------------------------
# Data path


def test_raw_publisher_to_sdk_subscriber(broker: BrokerProcess) -> None:
    data = {"node": "node1", "status": "healthy", "nested": {"n": [1, 2.5, None]}, "blob": b"\x00\xff"}
    with Subscriber(broker.backend) as sub, RawPublisher(broker.frontend, src="rawnode") as pub:
        sub.subscribe("health")
        topic = "ex_esdb_health/store_health:main"
        ts = 1_764_201_600_000_000_000
        first = pub.publish(topic, "NodeHealth", data, ts=ts, corr="corr-1")
        second = pub.publish(topic, "NodeHealth", {"status": "degraded"})
        message = sub.recv(timeout=TIMEOUT)
        following = sub.recv(timeout=TIMEOUT)

    assert message is not None and following is not None
    assert message.topic == topic
    assert message.type == "NodeHealth"
    assert message.data == data
    assert message.ts == ts
    assert message.src == "rawnode"
    assert message.pub == pub.pub_id and len(pub.pub_id) == 16
    assert (first, message.seq) == (1, 1)
    assert message.corr == "corr-1"
    assert message.message_id == f"{pub.pub_id}:{topic}:1"  # §4 derived id
    assert (second, following.seq, following.corr) == (2, 2, None)
    assert following.data == {"status": "degraded"}
    assert abs(following.ts - time.time_ns()) < 60 * 10**9
    assert sub.stats.gaps == 0 and sub.stats.decode_errors == 0


def test_sdk_publisher_to_raw_subscriber(broker: BrokerProcess) -> None:
    # coalescing off: this checks that single publishes are single messages on the wire
    with RawSubscriber(broker.backend) as sub, Publisher(broker.frontend, coalesce=0) as pub:
        sub.subscribe("audit")
        seqs = [pub.publish("audit", "orders:eu", "AuditEntry", {"n": i}) for i in range(3)]
        seqs.append(pub.publish("audit", "orders:eu", "AuditEntry", {"n": 3}, corr="c-3"))
        pub.publish_batch("audit", "orders:eu", "AuditBatch", [{"n": 4}, {"n": 5, "b": b"\x01"}, {"n": 6}])
        envelopes = sub.recv_n(7, timeout=TIMEOUT)
        pub_id = pub.pub_id

    assert [e.data["n"] for e in envelopes] == list(range(7))
    assert seqs == [1, 2, 3, 4]
    assert [e.seq for e in envelopes] == [1, 2, 3, 4, 5, 6, 7]  # consecutive across the batch
    assert {e.topic for e in envelopes} == {"ex_esdb_audit/orders:eu"}
    assert {e.pub for e in envelopes} == {pub_id}
    assert [e.type for e in envelopes] == ["AuditEntry"] * 4 + ["AuditBatch"] * 3
    assert [e.batch_index for e in envelopes] == [None] * 4 + [0, 1, 2]  # the batch was an array
    assert envelopes[5].data["b"] == b"\x01"
    assert [e.corr for e in envelopes[:4]] == [None, None, None, "c-3"]
    assert all(e.v == 1 and abs(e.ts - time.time_ns()) < 60 * 10**9 for e in envelopes)
    assert all(isinstance(e.src, str) for e in envelopes)
    assert sub.stats.malformed == 0
    assert sub.stats.gaps.gaps == 0 and sub.stats.gaps.last == {(pub_id, "ex_esdb_audit/orders:eu"): 7}


def test_raw_probe_is_answered_and_next_message_arrives(broker: BrokerProcess) -> None:
    with RawPublisher(broker.frontend) as pub, RawSubscriber(broker.backend) as sub:
        token = "0123456789abcdef"
        sub.add_prefixes("ex_esdb_lifecycle/")
        ack = sub.probe(timeout=TIMEOUT, token=token)
        pub.publish("ex_esdb_lifecycle/node:n1", "NodeUp", {"node": "n1"})
        message = sub.recv(TIMEOUT)
        # A second confirmation on the same socket, via the normal API, with a random token.
        second = sub.subscribe("ex_esdb_alerts")
        pub.publish("ex_esdb_alerts/disk", "DiskAlert", {"free": 3})
        alert = sub.recv(TIMEOUT)
        stray = sub.recv(0.2)  # the probe replies are not delivered as data

    assert ack.topic == PROBE_PREFIX + token
    assert ack.type == "ProbeAck" and ack.data == {"token": token}
    assert ack.pub and ack.pub != pub.pub_id  # published by the broker itself
    assert second.type == "ProbeAck" and second.topic == PROBE_PREFIX + second.data["token"]
    assert second.data["token"] != token
    assert message is not None and (message.type, message.data, message.seq) == ("NodeUp", {"node": "n1"}, 1)
    assert alert is not None and (alert.topic, alert.data) == ("ex_esdb_alerts/disk", {"free": 3})
    assert stray is None
    assert sub.stats.malformed == 0 and sub.stats.received == 2


def test_probe_frame_matches_doc_11_3() -> None:
    """§11.3: the subscription frame for a probe is 0x01 followed by the topic."""
    section = doc_section("11.3")
    frame = re.search(r"`(01(?: [0-9a-f]{2})+)`", section)
    assert frame is not None
    token = "9a8b7c6d5e4f3a2b"
    assert bytes.fromhex(frame.group(1)) == b"\x01" + (PROBE_PREFIX + token).encode()


def test_raw_publisher_gap_counted_by_sdk_subscriber(broker: BrokerProcess) -> None:
    topic = "ex_esdb_health/store_health:gap"
    with Subscriber(broker.backend) as sub, RawSubscriber(broker.backend) as raw:
        sub.subscribe("health")
        raw.subscribe("health")
        with RawPublisher(broker.frontend) as pub:
            pub.publish(topic, "NodeHealth", {"i": 1})  # seq 1: baseline
            pub.skip(topic, 2)  # seqs 2 and 3 never sent
            assert pub.publish(topic, "NodeHealth", {"i": 4}) == 4  # gap: 2 lost
            pub.publish(topic, "NodeHealth", {"i": 3}, seq=3)  # reordering: not a gap
            pub.publish(topic, "NodeHealth", {"i": 4}, seq=4)  # duplicate: not a gap
            pub.publish(topic, "NodeHealth", {"i": 0}, seq=0)  # not sequenced
            assert pub.publish(topic, "NodeHealth", {"i": 5}) == 5  # consecutive after the highest
            pub.publish(topic, "Marker", {}, seq=0)
        with RawPublisher(broker.frontend) as late:  # new pub: its first seq is only a baseline
            late.publish(topic, "NodeHealth", {"i": 10}, seq=10)
            late.publish(topic, "Marker", {}, seq=0)
        first = sdk_recv_until_type(sub, "Marker")
        second = sdk_recv_until_type(sub, "Marker")
        raw_got = recv_until(raw, lambda e: e.type == "Marker")
        raw_got += recv_until(raw, lambda e: e.type == "Marker")

    assert [m.seq for m in first] == [1, 4, 3, 4, 0, 5, 0]
    assert [m.seq for m in second] == [10, 0]
    # §6 / §11.1 ("counts a gap of 2"): the SDK's ``gaps`` is the number of lost messages.
    assert sub.stats.gaps == 2
    assert sub.stats.decode_errors == 0
    assert [e.seq for e in raw_got] == [1, 4, 3, 4, 0, 5, 0, 10, 0]
    assert (raw.stats.gaps.gaps, raw.stats.gaps.lost, raw.stats.gaps.duplicates) == (1, 2, 2)


def nest(levels: int) -> Any:
    """0 inside ``levels`` arrays."""
    value: Any = 0
    for _ in range(levels):
        value = [value]
    return value


BAD_MESSAGES: dict[str, list[bytes]] = {
    "single frame": [b"ex_esdb_health/bad"],
    "not MessagePack": [b"ex_esdb_health/bad", b"\xc1"],
    "trailing bytes": [b"ex_esdb_health/bad", pack({"type": "T"}) + b"\x00"],
    "not a map or array": [b"ex_esdb_health/bad", pack("text")],
    "empty batch": [b"ex_esdb_health/bad", pack([])],
    "no type": [b"ex_esdb_health/bad", pack({"v": 1, "data": {}})],
    "empty type": [b"ex_esdb_health/bad", pack({"type": ""})],
    "seq is a string": [b"ex_esdb_health/bad", pack({"type": "T", "seq": "1"})],
    "data is a list": [b"ex_esdb_health/bad", pack({"type": "T", "data": [1]})],
    "batch with a bad envelope": [b"ex_esdb_health/bad", pack([{"type": "T"}, {"type": 5}])],
    # §4 Limits
    "65 levels deep": [b"ex_esdb_health/bad", pack([{"type": "T", "data": {"x": nest(62)}}])],
    "1000 levels deep": [b"ex_esdb_health/bad", pack({"type": "T", "data": {"x": nest(1000)}})],
    "negative seq": [b"ex_esdb_health/bad", pack({"type": "T", "seq": -1})],
    "seq past 2**63 - 1": [b"ex_esdb_health/bad", pack({"type": "T", "seq": 2**63})],
    "version 0": [b"ex_esdb_health/bad", pack({"type": "T", "v": 0})],
}


def test_malformed_messages_are_skipped_and_counted(broker: BrokerProcess) -> None:
    with (
        Subscriber(broker.backend) as sub,
        RawSubscriber(broker.backend) as raw,
        ControlClient(broker.control) as control,
    ):
        sub.subscribe("health")
        raw.subscribe("health")
        with RawPublisher(broker.frontend) as pub:
            for frames in BAD_MESSAGES.values():
                pub.send_raw(frames)
            # Accepted: unknown keys, frames after the body (§2, §4), values of any type in data,
            # 64 levels of nesting, integers at the ends of their ranges (§4 Limits).
            pub.send_raw(
                [
                    b"ex_esdb_health/good",
                    pack({"type": "T", "future": 1, "data": {"m": {1: "x"}}}),
                    b"reserved frame",
                ]
            )
            pub.send_raw([b"ex_esdb_health/good", pack([{"type": "L", "v": 65535, "ts": 0, "data": {"x": nest(61)}}])])
            pub.send_raw([b"ex_esdb_health/good", pack({"type": "L", "seq": 2**63 - 1, "ts": 2**63 - 1})])
            pub.publish("ex_esdb_health/good", "Marker", {})
        sdk_got = sdk_recv_until_type(sub, "Marker")
        raw_got = recv_until(raw, lambda e: e.type == "Marker")
        stats = wait_stats(control, lambda s: s["malformed"] >= len(BAD_MESSAGES))

    assert [m.type for m in sdk_got] == ["T", "L", "L", "Marker"]
    assert sdk_got[0].data == {"m": {1: "x"}}
    assert sub.stats.decode_errors == len(BAD_MESSAGES)
    assert [e.type for e in raw_got] == ["T", "L", "L", "Marker"]
    assert raw_got[0].data == {"m": {1: "x"}} and raw_got[0].seq == 0 and raw_got[0].pub == ""
    assert raw.stats.malformed == len(BAD_MESSAGES)
    assert stats["malformed"] == len(BAD_MESSAGES)
    reasons = stats["malformed_by_reason"]
    assert sum(reasons.values()) == len(BAD_MESSAGES)
    assert reasons["single_frame"] == 1
    assert set(reasons) <= {
        "single_frame",
        "bad_topic",
        "unknown_instance",
        "bad_body",
        "bad_envelope",
        "too_deep",
        "out_of_range",
    }


def test_sdk_subscriber_skips_invalid_utf8_string(broker: BrokerProcess) -> None:
    body = pack({"type": "T", "src": "@"}).replace(b"\xa1@", b"\xa1\xff")  # "src": invalid UTF-8
    with Subscriber(broker.backend) as sub, RawSubscriber(broker.backend) as raw:
        sub.subscribe("health")
        raw.subscribe("health")
        with RawPublisher(broker.frontend) as pub:
            pub.send_raw([b"ex_esdb_health/bad", body])
            pub.publish("ex_esdb_health/good", "Marker", {})
        raw_got = recv_until(raw, lambda e: e.type == "Marker")
        assert [e.type for e in raw_got] == ["Marker"] and raw.stats.malformed == 1
        sdk_got = sdk_recv_until_type(sub, "Marker")
    assert [m.type for m in sdk_got] == ["Marker"]
    assert sub.stats.decode_errors == 1


# ---------------------------------------------------------------------------------------------
# Control


def test_control_ping(broker: BrokerProcess) -> None:
    with ControlClient(broker.control) as control:
        reply = control.ping()
        request_id = control.last_id
    assert reply["ok"] is True and reply["pong"] is True
    assert reply["protocol"] == 1
    assert isinstance(reply["version"], str) and reply["version"]
    assert isinstance(reply["node"], str) and reply["node"]
    assert reply["id"] == request_id == 1


def test_control_stats_counts_raw_publisher(broker: BrokerProcess) -> None:
    topic = "ex_esdb_audit/interop"
    with ControlClient(broker.control) as control, RawPublisher(broker.frontend) as pub:
        for i in range(5):
            pub.publish(topic, "AuditEntry", {"i": i})
        pub.publish_batch(topic, "AuditEntry", [{"i": 5}, {"i": 6}, {"i": 7}])

        def counted(stats: dict[str, Any]) -> bool:
            return bool(stats["instances"]["ex_esdb_audit"]["messages"] >= 6 and stats["publishers"] >= 1)

        stats = wait_stats(control, counted)
        sent_bytes = pub.sent_bytes

    assert stats["ok"] is True and stats["protocol"] == 1
    audit = stats["instances"]["ex_esdb_audit"]
    assert audit["messages"] == 6
    assert audit["envelopes"] == 8  # a batch counts each envelope
    assert audit["bytes"] == sent_bytes
    assert isinstance(audit["rate"], float)
    assert set(stats["instances"]) == set(INSTANCES)
    assert stats["publishers"] == 1
    totals = stats["totals"]
    assert totals["messages"] >= 6 and totals["envelopes"] >= 8 and totals["bytes"] >= sent_bytes
    assert totals["messages"] == sum(i["messages"] for i in stats["instances"].values())
    assert stats["malformed"] == 0 and stats["malformed_by_reason"] == {}
    assert isinstance(stats["uptime"], float) and stats["uptime"] >= 0
    assert abs(stats["started_at"] - time.time_ns()) < 60 * 10**9
    assert set(stats["forwarded"]) == {"frames_in", "bytes_in", "frames_out", "bytes_out"}
    assert stats["forwarded"]["frames_in"] >= 12
    assert isinstance(stats["tap_behind_frames"], int)


def test_control_instances_match_doc_table(broker: BrokerProcess) -> None:
    with ControlClient(broker.control) as control:
        instances = control.instances()
    table = doc_instance_table()
    assert list(table) == list(INSTANCES)
    assert [i["name"] for i in instances] == list(INSTANCES)
    for item in instances:
        assert item["alias"] == table[item["name"]]
        assert item["prefix"] == item["name"] + "/"
        assert isinstance(item["description"], str) and item["description"]
    example = re.search(r'\{"name": "ex_esdb_events".*?\}', doc_section("11.6"))
    assert example is not None
    assert instances[0] == json.loads(example.group(0))


def test_control_unknown_op_and_bad_request(broker: BrokerProcess) -> None:
    documented = json.loads(code_blocks(doc_section("11.5"))[0])
    with ControlClient(broker.control) as control:
        reply = control.request("explode")
        control.send_frames([b"", b"\xc1"])
        bad = control.recv_frames(TIMEOUT)
        after = control.ping()  # the broker carries on
    assert reply["ok"] is False
    assert reply["error"]["code"] == "unknown_op"
    assert reply["error"]["message"] == documented["error"]["message"]
    assert reply["id"] == 1
    assert bad[0] == b""
    bad_reply = msgpack.unpackb(bad[1])
    assert bad_reply["ok"] is False and bad_reply["error"]["code"] == "bad_request"
    assert after["ok"] is True and after["pong"] is True


def test_control_ids_match_replies_and_late_reply_is_dropped(broker: BrokerProcess) -> None:
    with ControlClient(broker.control) as control:
        given_up = control.send("ping", id_note="late")  # extra arguments are allowed (§10.1)
        stats = control.request("stats")
        dropped = list(control.dropped)
        second_id = control.last_id
    assert stats["ok"] is True and stats["id"] == second_id == given_up + 1
    assert "instances" in stats
    assert len(dropped) == 1 and dropped[0]["id"] == given_up and dropped[0]["pong"] is True


def test_control_dealer_without_delimiter_gets_bare_reply(broker: BrokerProcess) -> None:
    """§10.1: 'a DEALER that sent no delimiter gets [reply]'."""
    with ControlClient(broker.control) as control:
        control.send_frames([pack({"op": "ping", "id": "x"})])
        frames = control.recv_frames(TIMEOUT)
    assert len(frames) == 1
    reply = msgpack.unpackb(frames[0])
    assert reply["ok"] is True and reply["pong"] is True and reply["id"] == "x"


# ---------------------------------------------------------------------------------------------
# The worked examples of §11 (these check the document itself)


def test_doc_11_1_data_message_bytes() -> None:
    section = doc_section("11.1")
    json_block, hex_block = code_blocks(section)
    envelope = {
        "v": 1,
        "type": "NodeHealth",
        "ts": 1764201600000000000,
        "src": "node1",
        "pub": "3f2a9c0d1e4b5a67",
        "seq": 42,
        "data": {"node": "node1", "status": "healthy"},
    }
    assert json.loads(json_block) == envelope
    body = pack(envelope)
    assert hex_bytes(hex_block) == body
    topic = b"ex_esdb_health/store_health:main"
    sizes = re.search(r"Frame 0 is the (\d+) bytes.*?Frame 1\s+\((\d+) bytes\)", section, re.S)
    assert sizes is not None
    assert (len(topic), len(body)) == (int(sizes.group(1)), int(sizes.group(2)))
    # The raw decoder reads the documented bytes, and the documented gap (39 -> 42) is 2 lost.
    decoded_topic, (decoded,) = decode_message([topic, hex_bytes(hex_block)])
    assert decoded_topic == topic.decode() and decoded.seq == 42 and decoded.data["status"] == "healthy"
    tracker = GapTracker(last={("3f2a9c0d1e4b5a67", decoded_topic): 39})
    tracker.observe(decoded)
    assert (tracker.gaps, tracker.lost) == (1, 2)


def test_doc_11_2_batch_prefix() -> None:
    section = doc_section("11.2")
    entry = {"v": 1, "type": "LogEntry", "ts": 1, "src": "n", "pub": "p", "seq": 7, "data": {}}
    body = pack([entry, {**entry, "seq": 8}])
    assert "starts `92`" in section and "`87 a1 76 01 ...`" in section
    assert body[:1] == b"\x92" and body[1:5] == bytes.fromhex("87 a1 76 01")
    _, envelopes = decode_message([b"ex_esdb_logging/app", body])
    assert [e.seq for e in envelopes] == [7, 8]


def test_doc_11_4_ping_bytes() -> None:
    request_block, reply_block = code_blocks(doc_section("11.4"))
    assert hex_bytes(request_block) == pack({"op": "ping", "id": 1})
    reply_json = next(line for line in reply_block.splitlines() if line.strip().startswith("{"))
    reply = json.loads(reply_json)
    assert reply == {"ok": True, "pong": True, "version": "0.1.0", "protocol": 1, "node": "broker1", "id": 1}
    assert hex_bytes(reply_block) == pack(reply)
    assert msgpack.unpackb(hex_bytes(reply_block)) == reply
