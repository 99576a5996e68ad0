"""Live federation: real ``exesdb-broker`` processes joined through a real three-node NATS
cluster (``tests/nats_cluster.py``)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import msgspec
import nats
import pytest
from exesdb_sdk import ControlClient, Publisher, Subscriber
from exesdb_sdk.protocol import Message

from tests.conftest import BrokerProcess, StartBroker, wait_until
from tests.nats_cluster import BINARY, SKIP_REASON, NatsCluster
from tests.peer_nats import USER, NatsPeer
from tests.peers import accepts, free_endpoint, free_port

pytestmark = pytest.mark.skipif(BINARY is None, reason=SKIP_REASON)

TOPIC = "s1:federated"


def _federation(broker: BrokerProcess) -> dict[str, Any]:
    with ControlClient(broker.control) as control:
        stats: dict[str, Any] = control.stats()["federation"]
        return stats


def _connected(broker: BrokerProcess) -> bool:
    return bool(_federation(broker)["state"] == "connected")


def _member(start_broker: StartBroker, name: str, *urls: str, http: bool = False) -> BrokerProcess:
    # no BrokerMetrics of their own meanwhile (they would cross the federation too): counts stay exact
    args = ["--federation-nats", ",".join(urls), "--federation-name", name, "--node", name]
    broker = start_broker(*args, "--metrics-interval", "3600", http=http)
    assert wait_until(lambda: _federation(broker)["state"] == "connected", 10), _federation(broker)
    return broker


def _subscriber(broker: BrokerProcess) -> Subscriber:
    sub = Subscriber(broker.backend)
    sub.subscribe("events", TOPIC)
    sub.subscribe("diagnostics", "probe")
    sub.wait_ready(5)
    return sub


def _until_federated(origin: BrokerProcess, subs: list[Subscriber]) -> None:
    """Probe from ``origin`` until every subscriber has one: NATS interest has spread over the
    routes (asynchronously) and each broker's imports arrive."""
    seen = [False] * len(subs)
    with Publisher(origin.frontend) as probe:
        for _ in range(200):
            probe.publish("diagnostics", "probe", "Probe", {})
            for index, sub in enumerate(subs):
                while not seen[index]:
                    try:
                        seen[index] = sub.recv(timeout=0.05).topic == "ex_esdb_diagnostics/probe"
                    except TimeoutError:
                        break
            if all(seen):
                break
    assert all(seen), seen
    for sub in subs:  # later probes may still be on their way
        while True:
            try:
                assert sub.recv(timeout=0.2).topic == "ex_esdb_diagnostics/probe"
            except TimeoutError:
                break


def _events(sub: Subscriber, count: int, timeout: float = 10) -> list[Message]:
    got: list[Message] = []
    for _ in range(count + 1000):  # late probes too
        try:
            message = sub.recv(timeout=timeout)
        except TimeoutError:
            break
        if message.topic.endswith("/probe"):
            continue
        got.append(message)
        if message.seq == count:
            break
    return got


@pytest.mark.timeout(40)
def test_a_publisher_on_a_reaches_b_and_c_exactly_once_in_order(
    cluster: NatsCluster, start_broker: StartBroker
) -> None:
    a = _member(start_broker, "a", cluster.urls[0], http=True)
    b = _member(start_broker, "b", cluster.urls[1])
    c = _member(start_broker, "c", cluster.urls[2])
    subs = [_subscriber(broker) for broker in (a, b, c)]
    try:
        _until_federated(a, subs[1:])
        _until_federated(a, subs[:1])
        count = 500
        # one message per envelope: the federation counters below count messages (a coalesced
        # batch is one export); delivery of coalesced batches is what the subscribers check
        with Publisher(a.frontend, coalesce=0) as publisher:
            for n in range(1, count + 1):
                publisher.publish("events", TOPIC, "Counted", {"n": n})
            pub = publisher.pub_id
        for name, sub in zip("abc", subs, strict=True):
            got = _events(sub, count)
            assert [(m.pub, m.seq, m.data["n"]) for m in got] == [(pub, n, n) for n in range(1, count + 1)], name
            assert sub.stats.gaps == 0, name
        # a message from B, published after A's, reaches A: nothing of A's came back before it
        with Publisher(b.frontend, node="publisher-at-b") as other:
            other.publish("events", TOPIC, "Counted", {"n": 0})
        last = subs[0].recv(timeout=10)
        assert (last.data, last.src) == ({"n": 0}, "publisher-at-b")
        # a broker counts an import once it has handed it on: a subscriber may see it first
        assert wait_until(
            lambda: _federation(a)["imported"] >= 1 and all(_federation(x)["imported"] >= count for x in (b, c)), 10
        )
        fa, fb, fc = (_federation(broker) for broker in (a, b, c))
        assert fa["exported"] >= count and fa["imported"] == 1 and fa["dropped"] == {}, fa
        assert fb["imported"] >= count and fc["imported"] >= count and fb["gaps"] == fc["gaps"] == 0
        assert fb["server"] == cluster.urls[1]
        # /metrics shows the same counts (the broker's own metrics keep being exported meanwhile)
        assert a.http is not None
        with urllib.request.urlopen(a.http + "/metrics", timeout=10) as reply:
            text = reply.read().decode()
        after = _federation(a)
        exported = float(re.search(r"^exesdb_federation_exported_total (\S+)$", text, re.M)[1])  # type: ignore[index]
        assert fa["exported"] <= exported <= after["exported"], (fa, exported, after)
        assert re.search(r"^exesdb_federation_up 1\.0$", text, re.M), text[-2000:]
        imported = float(re.search(r"^exesdb_federation_imported_total (\S+)$", text, re.M)[1])  # type: ignore[index]
        assert fa["imported"] <= imported <= after["imported"], (fa, imported, after)
    finally:
        for sub in subs:
            sub.close()


@pytest.mark.timeout(45)
def test_killing_the_nats_node_of_the_publishers_broker_mid_stream(
    cluster: NatsCluster, start_broker: StartBroker
) -> None:
    a = _member(start_broker, "a", *cluster.urls)
    b = _member(start_broker, "b", *[url for url in cluster.urls if url != _federation(a)["server"]])
    victim = cluster.urls.index(_federation(a)["server"])
    sub = _subscriber(b)
    try:
        _until_federated(a, [sub])
        received: list[Message] = []
        sent = 0
        failed: list[BaseException] = []
        stop = threading.Event()

        def publish() -> None:
            nonlocal sent
            try:
                with Publisher(a.frontend) as publisher:
                    for n in range(1, 20_001):
                        if stop.is_set():
                            break
                        publisher.publish("events", TOPIC, "Counted", {"n": n})
                        sent = n
                        stop.wait(0.001)  # a steady stream, not one burst before the kill
            except BaseException as exc:
                failed.append(exc)

        thread = threading.Thread(target=publish, daemon=True)
        thread.start()

        def take_until(predicate: Callable[[], bool]) -> bool:
            for _ in range(100_000):
                if predicate():
                    return True
                try:
                    message = sub.recv(timeout=0.1)
                except TimeoutError:
                    if not thread.is_alive() and predicate():
                        return True
                    continue
                if not message.topic.endswith("/probe"):
                    received.append(message)
            return predicate()

        assert take_until(lambda: len(received) >= 300)
        cluster.kill(victim)
        assert take_until(lambda: _federation(a)["reconnects"] >= 1 and _federation(a)["state"] == "connected")
        resumed = sent
        assert take_until(lambda: bool(received) and received[-1].seq > resumed + 300)
        stop.set()
        thread.join(10)
        assert not failed, failed
        assert take_until(lambda: received[-1].seq == sent)

        seqs = [m.seq for m in received]
        assert seqs == sorted(set(seqs)), "a duplicate or a reordering"
        lost = sent - len(received)
        assert sub.stats.gaps == lost, (sub.stats, sent, len(received))
        fa, fb = _federation(a), _federation(b)
        assert fb["gaps"] + fb["dropped"].get("frontend_full", 0) == lost, fb
        assert fa["server"] != cluster.urls[victim] and fa["reconnects"] >= 1, fa
        print(f"sent {sent}, lost {lost} (counted as gaps), A reconnected to {fa['server']}")
    finally:
        sub.close()


@pytest.mark.timeout(30)
def test_unreachable_nats_at_start_serves_locally_and_joins_later(tmp_path: Path, start_broker: StartBroker) -> None:
    later = NatsCluster(tmp_path, size=1)
    broker = start_broker("--federation-nats", later.urls[0], http=True)
    try:
        state = _federation(broker)
        assert state["state"] == "reconnecting" and state["server"] is None, state
        with Subscriber(broker.backend) as sub, Publisher(broker.frontend) as publisher:
            sub.subscribe("events", TOPIC)
            sub.wait_ready(5)
            publisher.publish("events", TOPIC, "Local", {})
            assert sub.recv(timeout=5).type == "Local"
        assert broker.http is not None
        with urllib.request.urlopen(broker.http + "/healthz", timeout=5) as reply:
            health = json.load(reply)
        assert reply.status == 200 and health["status"] == "ok", health
        assert health["federation"] == "reconnecting" and "degraded" in health, health
        assert wait_until(lambda: _federation(broker)["dropped"].get("not_connected", 0) >= 1, 5)
        later.start()

        def joined() -> bool:  # connected, and the journaled instances' streams set up (until then: degraded)
            federation = _federation(broker)
            return bool(federation["state"] == "connected" and federation["jetstream"]["state"] == "ok")

        assert wait_until(joined, 10), _federation(broker)
        with urllib.request.urlopen(broker.http + "/healthz", timeout=5) as reply:
            health = json.load(reply)
        assert health["federation"] == "connected" and "degraded" not in health, health
    finally:
        later.close()


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--federation-nats", "http://127.0.0.1:4222"], "must be nats://host:port"),
        (["--federation-nats", "nats://u:p@127.0.0.1:4222"], "credentials do not belong in the URL"),
        (["--federation-nats", "nats://127.0.0.1:4222", "--federation-exports", "nope"], "nope"),
        (["--federation-nats", "nats://127.0.0.1:4222", "--federation-replicas", "9"], "must be 0"),
        (
            ["--federation-nats", "nats://127.0.0.1:4222", "--federation-stream-max-bytes", "0"],
            "--federation-stream-max-bytes",
        ),
        (["--federation-nats", "nats://127.0.0.1:4222", "--federation-user", "x"], "user and password_file"),
    ],
)
def test_bad_federation_config_is_one_line_and_exit_2(
    start_broker: StartBroker, args: list[str], expected: str
) -> None:
    broker = start_broker(*args, ready=False)
    assert broker.wait_exit(15) == 2
    lines = broker.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("exesdb-broker: error: ") and expected in lines[0], lines


@pytest.mark.timeout(30)
def test_federation_from_the_config_file_and_environment(tmp_path: Path, start_broker: StartBroker) -> None:
    config = tmp_path / "broker.toml"
    config.write_text('[federation]\nnats = "nats://127.0.0.1:1"\nexports = "events,metrics"\nname = "from-file"\n')
    broker = start_broker("--config", str(config), env={**os.environ, "EXESDB_FEDERATION_IMPORTS": "none"})
    state = _federation(broker)
    assert (state["name"], state["exports"], state["imports"]) == (
        "from-file",
        ["ex_esdb_events", "ex_esdb_metrics"],
        [],
    )
    assert state["state"] == "reconnecting"
    assert broker.stop() == 0  # a clean stop while it still looks for a NATS server
    assert "did not stop" not in broker.stderr, broker.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text('[federation]\nnats = "nats://127.0.0.1:1"\nexport = "events"\n')
    failed = start_broker("--config", str(bad), ready=False)
    assert failed.wait_exit(15) == 2
    assert "[federation] export: unknown setting" in failed.stderr, failed.stderr


@pytest.mark.timeout(20)
def test_no_federation_says_off(broker: BrokerProcess) -> None:
    assert _federation(broker) == {"state": "off"}


README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def _readme_block(marker: str, nth: int) -> list[str]:
    blocks = re.findall(r"```sh\n(.*?)```", README[README.index(marker) :], re.DOTALL)
    return [line for line in blocks[nth].splitlines() if line.strip()]


@pytest.mark.timeout(40)
def test_readme_several_machines_example(tmp_path: Path, clean_env: dict[str, str]) -> None:
    marker = "several machines: run by tests/test_federation.py"
    server_cmd, broker_a_cmd, broker_b_cmd = _readme_block(marker, 0)
    tail_cmd, publish_cmd = _readme_block(marker, 1)
    durable_cmd, replay_cmd = _readme_block(marker, 2)
    ports = {old: str(free_port()) for old in ("4222", "7200", "7201", "7202")}

    def local(command: str) -> str:  # free ports and temporary directories for the README's
        for old, new in ports.items():
            command = re.sub(rf"(?<=[: ]){old}\b", new, command)
        return command.replace("/tmp/", f"{tmp_path}/")

    env = {**clean_env, "PATH": str(Path(sys.executable).parent) + ":" + clean_env.get("PATH", "")}
    for name in ("FRONTEND", "BACKEND", "CONTROL"):  # broker a's defaults
        env[f"EXESDB_{name}"] = free_endpoint()
    program, *args = shlex.split(local(server_cmd))
    assert program == "nats-server" and BINARY is not None
    server = subprocess.Popen([BINARY, *args], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)  # fmt: skip
    brokers: list[BrokerProcess] = []
    try:
        assert wait_until(lambda: accepts(int(ports["4222"])), 10)
        for command in (broker_a_cmd, broker_b_cmd):
            program, *args = shlex.split(local(command))
            assert program == "exesdb-broker"
            brokers.append(BrokerProcess(args, env=env).wait_ready())
        for broker in brokers:
            assert wait_until(partial(_connected, broker), 10), _federation(broker)
        tail = subprocess.Popen(local(tail_cmd) + " --count 1 --timeout 20", shell=True, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
        assert tail.stderr is not None and tail.stderr.readline().startswith("exesdb tail: following")
        done = subprocess.run(publish_cmd, shell=True, env=env, capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        out, _ = tail.communicate(timeout=30)
        assert tail.returncode == 0, out
        message = json.loads(out)
        assert (message["topic"], message["data"]["status"]) == ("ex_esdb_health/node_health:node1", "healthy")
        assert wait_until(lambda: _federation(brokers[1])["imported"] >= 1, 10)  # counted once handed on
        # the journaled part: a durable alert at a, replayed from b's journal
        assert wait_until(lambda: all(_federation(b)["jetstream"]["state"] == "ok" for b in brokers), 20), [
            _federation(broker)["jetstream"] for broker in brokers
        ]
        done = subprocess.run(durable_cmd, shell=True, env=env, capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        replayed = subprocess.run(
            local(replay_cmd) + " --timeout 20 --json", shell=True, env=env, capture_output=True, text=True, timeout=30
        )
        assert replayed.returncode == 0, replayed.stderr
        alert = json.loads(replayed.stdout)
        assert (alert["topic"], alert["data"]["message"]) == ("ex_esdb_alerts/disk", "disk 91% full"), alert
    finally:
        for broker in brokers:
            broker.stop()
        server.terminate()
        server.wait(10)


@pytest.mark.timeout(30)
def test_foreign_nats_messages_are_counted_and_the_bridge_carries_on(tmp_path: Path, start_broker: StartBroker) -> None:
    server = NatsCluster(tmp_path, size=1)
    server.start()
    try:
        broker = _member(start_broker, "b", server.urls[0])
        envelope = msgspec.msgpack.encode({"v": 1, "type": "T", "ts": 1, "src": "n", "pub": "p1", "seq": 1, "data": {}})

        async def send() -> None:
            client = await nats.connect(server.urls[0], allow_reconnect=False, connect_timeout=5)
            try:
                topic = "ex_esdb_events/s1%3Afederated"  # percent-encoded, as a broker sends it
                await client.publish("exesdb.ex_esdb_events.x", envelope)  # no topic header
                await client.publish("exesdb.ex_esdb_events.x", b"\xc1", headers={"Exesdb-Topic": topic})
                await client.publish("exesdb.ex_esdb_events.x", envelope, headers={"Exesdb-Topic": "nowhere/x"})
                await client.publish(
                    "exesdb.ex_esdb_events.x", envelope, headers={"Exesdb-Topic": "ex_esdb_logging/x"}
                )  # a real topic, but of another subject than its instance's: taken for what its header says
                await client.publish("exesdb.ex_esdb_events.x", envelope, headers={"Exesdb-Topic": topic})
                await client.flush()
            finally:
                await client.close()

        with Subscriber(broker.backend) as sub:
            sub.subscribe("events", TOPIC)
            sub.wait_ready(5)
            asyncio.run(asyncio.wait_for(send(), 10))
            message = sub.recv(timeout=10)
            assert (message.topic, message.pub, message.seq) == ("ex_esdb_events/" + TOPIC, "p1", 1)
        assert wait_until(lambda: _federation(broker)["imported"] >= 2, 10)  # counted once handed on
        state = _federation(broker)
        assert state["dropped"] == {"bad_message": 3}, state
        assert state["imported"] == 2 and state["state"] == "connected", state
    finally:
        server.close()


@pytest.mark.timeout(30)
def test_credentials_log_in_and_a_refused_login_says_why(tmp_path: Path, start_broker: StartBroker) -> None:
    peer = NatsPeer(tmp_path)
    peer.start()
    try:
        login = ("--federation-nats", peer.url, "--federation-user", USER)
        good = start_broker(*login, "--federation-password-file", str(peer.password_file))
        assert wait_until(partial(_connected, good), 10), _federation(good)
        wrong = tmp_path / "wrong"
        wrong.write_text("not-the-password\n")
        refused = start_broker(*login, "--federation-password-file", str(wrong))
        assert wait_until(lambda: "authorization" in (_federation(refused)["last_error"] or "").lower(), 10)
        assert _federation(refused)["state"] == "reconnecting"
    finally:
        peer.close()
