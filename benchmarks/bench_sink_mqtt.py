"""MQTT sink benchmark: messages/s of ``MqttSink.send`` against the same messages published by
aiomqtt directly (QoS 1, every PUBACK awaited: the batch's publishes gathered).

Run it (some seconds; ``--quick`` is a smoke run)::

    python benchmarks/bench_sink_mqtt.py [--reps 5] [--count 20000] [--batch 500] [--quick] [--json-out PATH]

Method: a fresh ``mosquitto`` on a free loopback port (no persistence, no subscriber: the
client's and the sink's cost, not the fan-out's), ``count`` typed ``NodeHealth`` messages
(~100 B bodies) encoded and decoded by the SDK and turned into connector deliveries once, before
timing. The left side publishes each batch with ``asyncio.gather`` of aiomqtt ``publish`` calls
(QoS 1, the same topic, JSON payload and ``exesdb-id`` user property, built inline, the same
inflight window of 100); the right side is ``await sink.send(batch)``. Both count that every
message was acknowledged. Runs alternate sides; the table shows the medians and the ratio
right / left. Only the ratio means much on a small shared machine.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import aiomqtt
import msgspec
from exesdb_connect.sink import Delivery
from exesdb_connect.sinks.mqtt import DEFAULT_INFLIGHT, ID_PROPERTY, MqttSink, create, mqtt_topic
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from sink_bench import sink_main

START_TIMEOUT: Final = 10.0


def start_server(directory: Path) -> tuple[subprocess.Popen[bytes], int]:
    """A ``mosquitto`` on a free 127.0.0.1 port, accepting connections (with a deadline)."""
    binary = shutil.which("mosquitto")
    if binary is None:
        raise SystemExit("bench_sink_mqtt: mosquitto is not installed")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    config = directory / "mosquitto.conf"
    user = pwd.getpwuid(os.getuid()).pw_name
    # set_tcp_nodelay: without it mosquitto's Nagle holds its PUBACKs (both sides: ~600 msgs/s).
    lines = [f"user {user}", f"listener {port} 127.0.0.1", "allow_anonymous true", "persistence false"]
    config.write_text("\n".join([*lines, "log_dest none", "set_tcp_nodelay true", ""]))
    proc = subprocess.Popen([binary, "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        with socket.socket() as sock:
            sock.settimeout(0.5)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return proc, port
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise SystemExit("bench_sink_mqtt: mosquitto did not start")
        time.sleep(0.02)


async def direct(port: int, batches: Sequence[Sequence[Delivery]]) -> int:
    """What a user would write by hand with aiomqtt: gather each batch's QoS 1 publishes."""
    encode = msgspec.json.Encoder().encode
    acked = 0
    async with aiomqtt.Client(
        "127.0.0.1", port, protocol=aiomqtt.ProtocolVersion.V5, max_inflight_messages=DEFAULT_INFLIGHT
    ) as client:
        client.pending_calls_threshold = 1 << 30  # else aiomqtt logs a warning per publish past 10
        for batch in batches:
            calls = []
            for d in batch:
                properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
                properties.PayloadFormatIndicator = 1
                properties.ContentType = "application/json"
                properties.UserProperty = [(ID_PROPERTY, d.id)]
                topic = mqtt_topic("exesdb", d.instance, d.subtopic)
                payload = encode({"id": d.id, **d.json})
                calls.append(client.publish(topic, payload, qos=1, retain=d.last_value, properties=properties))
            await asyncio.gather(*calls)
            acked += len(calls)
    return acked


async def through_sink(port: int, batches: Sequence[Sequence[Delivery]]) -> int:
    sink = create("bench", {"url": f"mqtt://127.0.0.1:{port}"})
    assert isinstance(sink, MqttSink)
    acked = 0
    try:
        await sink.open()
        for batch in batches:
            outcomes = await sink.send(batch)
            if any(outcome is not None for outcome in outcomes):
                raise SystemExit(f"bench_sink_mqtt: the sink refused items: {outcomes[:3]}")
            acked += len(outcomes)
    finally:
        await sink.close()
    return acked


def run(port: int, side: str, batches: Sequence[Sequence[Delivery]], count: int) -> float:
    """Messages/s of one run of ``side``, checking that every message was acknowledged."""
    started = time.perf_counter()
    acked = asyncio.run(direct(port, batches) if side == "direct" else through_sink(port, batches))
    seconds = time.perf_counter() - started
    if acked != count:
        raise SystemExit(f"bench_sink_mqtt: {acked} acknowledged of {count}")
    return count / seconds


def main(argv: list[str] | None = None) -> int:
    return sink_main(
        argv,
        kind="mqtt",
        doc=__doc__,
        description="NodeHealth to mosquitto at QoS 1: aiomqtt gathered publishes (left) vs MqttSink.send",
        start_server=start_server,
        run=run,
        warm=("direct", "sink"),
    )


if __name__ == "__main__":
    sys.exit(main())
