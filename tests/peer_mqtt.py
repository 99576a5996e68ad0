"""The far side of the ``mqtt`` sink in tests: a real ``mosquitto`` on a free loopback port.

Its configuration (in the test's temp dir) keeps everything on disk across a restart
(``persistence``), limits a packet to :data:`MAX_PACKET_SIZE` bytes and has an ACL that denies
``exesdb/+/poison`` (so :meth:`MqttPeer.poison` is refused for good with a PUBACK ``Not
authorized``). A recorder, a paho client with a persistent MQTT 5 session subscribed to
``exesdb/#`` at QoS 1, sees every message the server accepts, also those it queued for the
recorder while it was reconnecting after a restart.

Clients other than the recorder reach mosquitto through a gate (:class:`_Gate`, a plain TCP
forwarder on :attr:`MqttPeer.port`) that opens only once the recorder is subscribed again:
mosquitto 2.0.11 acknowledges, and then never delivers, a QoS 1 message published after a
restart for a persistent session whose client has not reconnected yet. The recorder stands
for a durable subscriber; the gate keeps that far-side quirk out of what the tests measure.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from .peers import Received, accepts, free_port, freeze, stop_process

MOSQUITTO = shutil.which("mosquitto")
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd")
MAX_PACKET_SIZE = 16384
START_TIMEOUT = 10.0
PREFIX = "exesdb"
POISON = ("ex_esdb_alerts", "poison", {"poison": True})


class _Gate:
    """A TCP forwarder from ``port`` (listening only while open) to mosquitto's own port.

    The port stays reserved by a bound socket that never listens, from the start to
    :meth:`release`: no outgoing connection (the recorder's, say) is given it as its own port
    meanwhile, and a connection to it is refused while the gate is closed."""

    def __init__(self, upstream: int) -> None:
        self._reserved = socket.socket()
        self._reserved.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._reserved.bind(("127.0.0.1", 0))
        self.port: int = self._reserved.getsockname()[1]
        self.upstream = upstream
        self._listener: socket.socket | None = None
        self._open: list[socket.socket] = []
        self._lock = threading.Lock()

    def open(self) -> None:
        """Listen (again); nothing if listening already."""
        if self._listener is not None:
            return
        listener = socket.socket()
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(("127.0.0.1", self.port))
            listener.listen(64)
        except OSError:
            listener.close()
            raise
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def release(self) -> None:
        """Close, and give the port back."""
        self.close()
        self._reserved.close()

    def close(self) -> None:
        """Stop listening and cut every forwarded connection (the port closes)."""
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread (close alone does not)
            listener.close()
        with self._lock:
            sockets, self._open = self._open, []
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _accept(self, listener: socket.socket) -> None:
        for _ in range(100_000):  # bounded: a test makes a handful of connections
            try:
                client, _ = listener.accept()
            except OSError:
                return  # closed
            try:
                server = socket.create_connection(("127.0.0.1", self.upstream), timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            for sock in (client, server):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._open += [client, server]
            for source, target in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(source, target), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, target: socket.socket) -> None:
        for _ in range(10_000_000):  # bounded; ends when either side closes
            try:
                data = source.recv(65536)
                if not data:
                    break
                target.sendall(data)
            except OSError:
                break
        with contextlib.suppress(OSError):
            target.shutdown(socket.SHUT_WR)


@dataclass(frozen=True)
class Record:
    """One message as the recorder got it."""

    topic: str
    payload: bytes
    retain: bool
    qos: int
    user_properties: tuple[tuple[str, str], ...]
    content_type: str | None


class MqttPeer:
    """A mosquitto process, restartable on the same port, with a recorder."""

    kind = "mqtt"

    def __init__(self, tmp_path: Path, users: dict[str, str] | None = None) -> None:
        if MOSQUITTO is None:
            raise RuntimeError("mosquitto is not installed")
        self._inner = free_port()
        """mosquitto's own port (the recorder's)."""
        self._gate = _Gate(self._inner)
        self.port = self._gate.port
        """Where the sink connects: the gate."""
        self.dir = tmp_path / f"mosquitto-{self.port}"
        self.dir.mkdir(parents=True)
        self.users = dict(users or {})
        self.process: subprocess.Popen[bytes] | None = None
        self._records: list[Record] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self._recorder: paho.Client | None = None
        self._log = self.dir / "mosquitto.log"
        self._write_config()

    def _write_config(self) -> None:
        acl = self.dir / "acl"
        # Run as whoever runs the tests (as root, mosquitto would become "mosquitto", locked out of tmp_path).
        lines = [f"user {pwd.getpwuid(os.getuid()).pw_name}", f"listener {self._inner} 127.0.0.1"]
        lines += [f"max_packet_size {MAX_PACKET_SIZE}", "set_tcp_nodelay true"]
        lines += ["persistence true", f"persistence_location {self.dir}/", f"acl_file {acl}"]
        grant = "topic readwrite #\ntopic deny exesdb/+/poison\ntopic deny exesdb/+/poison/#\n"
        if self.users:
            if MOSQUITTO_PASSWD is None:
                raise RuntimeError("mosquitto_passwd is not installed")
            passwords = self.dir / "passwords"
            passwords.touch()
            for user, password in self.users.items():
                subprocess.run([MOSQUITTO_PASSWD, "-b", str(passwords), user, password], check=True, timeout=10)
            lines += ["allow_anonymous false", f"password_file {passwords}"]
            # The ACL's first lines are for anonymous clients; each user gets the same grants.
            acl.write_text("".join(f"user {user}\n{grant}" for user in self.users))
        else:
            lines.append("allow_anonymous true")
            acl.write_text(grant)
        (self.dir / "mosquitto.conf").write_text("\n".join(lines) + "\n")

    # -- the peer interface --------------------------------------------------------------

    def start(self) -> None:
        """Start mosquitto; return once it accepts connections and the recorder is subscribed."""
        if self.process is not None and self.process.poll() is None:
            return
        with self._log.open("ab") as log:
            self.process = subprocess.Popen(
                ["mosquitto", "-c", str(self.dir / "mosquitto.conf")], stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + START_TIMEOUT
        while not accepts(self._inner):
            if self.process.poll() is not None:
                raise RuntimeError(f"mosquitto exited {self.process.returncode}: {self.log()[-500:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"mosquitto does not accept connections on {self._inner}")
            time.sleep(0.02)
        if self._recorder is None:
            self._start_recorder()
        if not self._subscribed.wait(max(0.1, deadline - time.monotonic())):
            raise RuntimeError("the recorder did not subscribe to mosquitto in time")
        self._gate.open()

    def stop(self) -> None:
        """Stop mosquitto (SIGTERM, then SIGKILL): the port closes; its data stays on disk."""
        self._subscribed.clear()
        self._gate.close()
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGCONT)  # a frozen one cannot act on SIGTERM
        stop_process(process, 10)

    def close(self) -> None:
        """Stop the recorder and the server."""
        recorder, self._recorder = self._recorder, None
        if recorder is not None:
            recorder.disconnect()
            recorder.loop_stop()
        self.stop()
        self._gate.release()

    def sink_options(self) -> dict[str, Any]:
        """The ``mqtt`` sink's options for this peer (short timeouts: everything is local)."""
        options: dict[str, Any] = {
            "url": f"mqtt://127.0.0.1:{self.port}",
            "prefix": PREFIX,
            "connect_timeout": 2.0,
            "ack_timeout": 2.0,
        }
        if self.users:
            user, password = next(iter(self.users.items()))
            secret = self.dir / f"{user}.password"
            secret.write_text(password + "\n")
            options |= {"username": user, "password_file": str(secret)}
        return options

    def received(self) -> list[Received]:
        """What the server delivered to the recorder, in arrival order (per topic: publish order)."""
        out = []
        for record in self.records():
            body = json.loads(record.payload)
            out.append(Received(id=body["id"], topic=body["topic"], data=body["data"]))
        return out

    def poison(self) -> tuple[str, str, dict[str, Any]]:
        """A message the ACL refuses for good (PUBACK ``Not authorized``)."""
        instance, subtopic, data = POISON
        return instance, subtopic, dict(data)

    # -- beyond the interface ------------------------------------------------------------

    def records(self) -> list[Record]:
        """Every message the recorder got, raw."""
        with self._lock:
            return list(self._records)

    def freeze(self) -> None:
        """SIGSTOP the server: connections stay open, nothing is answered."""
        assert self.process is not None
        freeze(self.process.pid)

    def thaw(self) -> None:
        """SIGCONT a frozen server."""
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def log(self) -> str:
        """mosquitto's log so far."""
        return self._log.read_text(errors="replace") if self._log.exists() else ""

    def _start_recorder(self) -> None:
        recorder = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2, client_id="peer-recorder", protocol=paho.MQTTv5
        )
        if self.users:
            recorder.username_pw_set(*next(iter(self.users.items())))
        recorder.reconnect_delay_set(min_delay=1, max_delay=1)
        recorder.on_connect = self._on_connect
        recorder.on_subscribe = self._on_subscribe
        recorder.on_message = self._on_message
        connect = Properties(PacketTypes.CONNECT)
        connect.SessionExpiryInterval = 0xFFFFFFFF
        recorder.connect("127.0.0.1", self._inner, clean_start=False, properties=connect)
        recorder.loop_start()
        self._recorder = recorder

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, code: ReasonCode, props: Any) -> None:
        if code.is_failure:
            return
        if flags.session_present:
            self._subscribed.set()
        else:
            options = SubscribeOptions(qos=1, retainAsPublished=True)
            client.subscribe(f"{PREFIX}/#", options=options)

    def _on_subscribe(self, client: paho.Client, userdata: Any, mid: int, codes: Any, props: Any) -> None:
        self._subscribed.set()

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        props = getattr(message, "properties", None)
        record = Record(
            topic=message.topic,
            payload=message.payload,
            retain=bool(message.retain),
            qos=message.qos,
            user_properties=tuple(getattr(props, "UserProperty", ())),
            content_type=getattr(props, "ContentType", None),
        )
        with self._lock:
            self._records.append(record)


def make_peer(tmp_path: Path) -> MqttPeer:
    """The peer interface's entry point: a stopped mosquitto peer (``start()`` it)."""
    return MqttPeer(tmp_path)
