"""The ``mqtt`` sink: QoS 1 publishes to an MQTT 5 server (Mosquitto, EMQX, HiveMQ...) with aiomqtt.

Each :class:`~exesdb_connect.sink.Delivery` becomes one PUBLISH:

- topic ``<prefix>/<instance>/<subtopic>`` (``prefix`` defaults to ``exesdb``), where ``%``, ``+``
  and ``#`` in the instance and the subtopic are percent-encoded (``%25``, ``%2B``, ``%23``):
  MQTT forbids the wildcards in a topic name, and escaping ``%`` too keeps the mapping
  reversible. ``/`` stays, so the bus's sub-topic levels become MQTT topic levels;
- payload: the ``exesdb tail --json`` object plus ``"id"`` (UTF-8 JSON), with the MQTT 5
  properties payload-format UTF-8, content type ``application/json`` and the user property
  ``exesdb-id`` (the same id, for subscribers that dedupe without parsing);
- QoS 1, retained when the bus keeps the topic's last value (:attr:`Delivery.last_value`).

A batch is written through an inflight window (``inflight``, capped by the server's Receive
Maximum) and the PUBACKs are awaited together. A PUBACK whose MQTT 5 reason code is an error
(e.g. ``Not authorized`` from an ACL) refuses that message for good; so does a message larger
than the server's Maximum Packet Size (refused here, before it is sent: a server disconnects a
client that sends one). A lost connection, a refused connect or no PUBACK in ``ack_timeout``
seconds is :class:`~exesdb_connect.sink.SinkUnavailable`; the next ``send`` reconnects. A
CONNACK refusing the client (bad credentials, not authorized, banned...) is
:class:`~exesdb_connect.sink.SinkRejected`.

aiomqtt runs the connection on the event loop but drops PUBACK reason codes and CONNACK
properties, so :class:`_Client` extends its paho callbacks to keep them and publishes through
its paho client (one future per batch instead of one per message).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import aiomqtt
import msgspec
import paho.mqtt.client as paho
from aiomqtt.exceptions import MqttConnectError
from exesdb_sdk.errors import ConfigError
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from ..sink import Delivery, Sink, SinkRejected, SinkUnavailable, option, unknown_options

__all__ = ["DEFAULT_ACK_TIMEOUT", "DEFAULT_CONNECT_TIMEOUT", "DEFAULT_INFLIGHT", "MqttSink", "create", "mqtt_topic"]

DEFAULT_PREFIX: Final = "exesdb"
DEFAULT_PORT: Final = 1883
DEFAULT_INFLIGHT: Final = 100
"""Unacknowledged publishes at most (the server's Receive Maximum lowers it)."""
DEFAULT_CONNECT_TIMEOUT: Final = 5.0
DEFAULT_ACK_TIMEOUT: Final = 10.0
"""Seconds a batch may wait with no PUBACK arriving before it counts as unavailable."""
MAX_INFLIGHT: Final = 65535
MAX_STRING_BYTES: Final = 65535
ID_PROPERTY: Final = "exesdb-id"
KNOWN: Final = ("url", "prefix", "username", "password_file", "client_id", "inflight", "connect_timeout", "ack_timeout")

_ESCAPES: Final = str.maketrans({"%": "%25", "+": "%2B", "#": "%23"})
_TOPIC_CACHE_LIMIT: Final = 4096
# A refusal a retry can cure: the whole batch is tried again later.
_TRANSIENT_ACKS: Final = frozenset({0x91, 0x97})  # packet identifier in use, quota exceeded
# CONNACK codes of a server that is there but cannot take us now; the others refuse us.
_TRANSIENT_CONNACKS: Final = frozenset({0x88, 0x89, 0x97, 0x9C, 0x9D, 0x9F})


def _escape(level: str) -> str:
    return level.translate(_ESCAPES)


def mqtt_topic(prefix: str, instance: str, subtopic: str) -> str:
    """The MQTT topic name of a bus topic: ``<prefix>/<instance>/<subtopic>``, ``%``, ``+`` and
    ``#`` percent-encoded, ``/`` kept (no prefix: ``<instance>/<subtopic>``)."""
    tail = _escape(instance) + "/" + _escape(subtopic)
    return prefix + "/" + tail if prefix else tail


def _reason(code: ReasonCode | int) -> str:
    if isinstance(code, ReasonCode):
        return f"{code.getName()} (0x{code.value:02X})"
    return paho.error_string(code)


class _Batch:
    """The acknowledgements one ``send`` waits for: PUBACK outcomes by message id."""

    __slots__ = ("acked", "lost", "pending", "refused", "threshold", "waiter")

    def __init__(self) -> None:
        self.pending: dict[int, int] = {}
        """paho message id -> the item's index in the batch."""
        self.refused: dict[int, str] = {}
        self.acked = 0
        self.lost: str | None = None
        self.threshold = 0
        self.waiter: asyncio.Future[None] | None = None

    def wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def ack(self, mid: int, code: ReasonCode) -> None:
        index = self.pending.pop(mid, None)
        if index is None:
            return
        self.acked += 1
        if code.is_failure:
            if code.value in _TRANSIENT_ACKS:
                self.lost = f"the server answered {_reason(code)}"
            else:
                self.refused[index] = f"refused by the mqtt server: {_reason(code)}"
        if len(self.pending) <= self.threshold or self.lost is not None:
            self.wake()


class _Client(aiomqtt.Client):
    """aiomqtt's client, keeping what its callbacks drop: the CONNACK's Receive Maximum and
    Maximum Packet Size, each PUBACK's reason code, the loss of the connection."""

    receive_maximum: int = MAX_INFLIGHT
    max_packet_size: int | None = None
    batch: _Batch | None = None

    def _on_connect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None = None,
    ) -> None:
        if properties is not None:
            self.receive_maximum = int(getattr(properties, "ReceiveMaximum", MAX_INFLIGHT))
            size = getattr(properties, "MaximumPacketSize", None)
            self.max_packet_size = int(size) if size is not None else None
        super()._on_connect(client, userdata, flags, reason_code, properties)

    def _on_publish(
        self, client: paho.Client, userdata: Any, mid: int, reason_code: ReasonCode, properties: Properties
    ) -> None:
        if self.batch is not None:
            self.batch.ack(mid, reason_code)

    def watch(self) -> None:
        """Fail the batch in flight as soon as the connection is lost."""
        self._disconnected.add_done_callback(self._lost)

    def _lost(self, future: asyncio.Future[None]) -> None:
        problem = None if future.cancelled() else future.exception()  # also marks it retrieved
        if self.batch is not None:
            self.batch.lost = f"connection lost ({problem or 'closed'})"
            self.batch.wake()

    def set_connect_timeout(self, seconds: float) -> None:
        """Bound paho's TCP connect (aiomqtt's ``timeout`` bounds the wait for the CONNACK)."""
        self._client.connect_timeout = seconds

    def abandon(self) -> None:
        """Close the socket of a connect that failed half-way (no CONNACK in time)."""
        with contextlib.suppress(Exception):
            self._client.disconnect()

    @property
    def connected(self) -> bool:
        return self._connected.done() and not self._disconnected.done()

    def publish_nowait(self, topic: str, payload: bytes, retain: bool, properties: Properties) -> int:
        """Hand one QoS 1 PUBLISH to paho; its message id (the PUBACK will carry it)."""
        info = self._client.publish(topic, payload, 1, retain, properties)
        if info.rc != paho.MQTT_ERR_SUCCESS:
            raise SinkUnavailable(f"mqtt publish failed: {paho.error_string(info.rc)}")
        return info.mid


def _utf8(text: str) -> bytes:
    raw = text.encode("utf-8")
    return len(raw).to_bytes(2, "big") + raw


# The PUBLISH properties but the id: payload format UTF-8 (0x01), content type (0x03), the
# user property's key (0x26, a string pair whose value, the id, follows).
_PROPERTIES_HEAD: Final = b"\x01\x01" + b"\x03" + _utf8("application/json") + b"\x26" + _utf8(ID_PROPERTY)


class _PublishProperties(Properties):
    """PUBLISH properties the sink packs itself: paho's own packing walks its whole property
    table per message, the sink's largest cost per message."""

    def __init__(self, body: bytes) -> None:
        size = len(body)
        length = bytearray()
        while True:
            byte, size = size & 0x7F, size >> 7
            length.append(byte | 0x80 if size else byte)
            if not size:
                break
        object.__setattr__(self, "packed", bytes(length) + body)

    packed: bytes

    def pack(self) -> bytes:
        return self.packed

    def __str__(self) -> str:
        return f"[packed: {len(self.packed)} bytes]"

    __repr__ = __str__


def _varint_size(value: int) -> int:
    size = 1
    while value >= 0x80:
        value >>= 7
        size += 1
    return size


class MqttSink:
    """The ``mqtt`` sink (see the module docstring). Build it with :func:`create`."""

    kind = "mqtt"

    def __init__(
        self,
        name: str,
        *,
        host: str,
        port: int,
        prefix: str = DEFAULT_PREFIX,
        username: str | None = None,
        password: str | None = None,
        client_id: str | None = None,
        inflight: int = DEFAULT_INFLIGHT,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        ack_timeout: float = DEFAULT_ACK_TIMEOUT,
    ) -> None:
        self.name = name
        self.host = host
        self.port = port
        self.prefix = prefix
        self.username = username
        self._password = password
        self.client_id = client_id if client_id is not None else f"exesdb-connector-{name}"
        self.inflight = inflight
        self.connect_timeout = connect_timeout
        self.ack_timeout = ack_timeout
        self._client: _Client | None = None
        self._topics: dict[str, str] = {}
        self._json = msgspec.json.Encoder()
        self.connects = 0
        """Connections made (the first and every reconnect)."""

    @property
    def url(self) -> str:
        """Where the sink publishes (no credentials)."""
        return f"mqtt://{self.host}:{self.port}"

    def __repr__(self) -> str:
        return f"MqttSink({self.name!r}, {self.url!r}, prefix={self.prefix!r})"

    async def open(self) -> None:
        """Connect (MQTT 5, clean start). Raises SinkUnavailable or SinkRejected."""
        await self._connection()

    async def _connection(self) -> _Client:
        if self._client is not None and self._client.connected:
            return self._client
        await self._drop()
        client = _Client(
            self.host,
            self.port,
            username=self.username,
            password=self._password,
            identifier=self.client_id,
            protocol=aiomqtt.ProtocolVersion.V5,
            timeout=self.connect_timeout,
            max_inflight_messages=self.inflight,
            # Without it, Nagle holds each small PUBLISH until the last one is ACKed (40 ms stalls).
            socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
        )
        client.set_connect_timeout(self.connect_timeout)
        try:
            try:
                await asyncio.wait_for(client.__aenter__(), self.connect_timeout * 2)
            except BaseException:
                client.abandon()
                raise
        except MqttConnectError as exc:
            code = exc.rc if exc.rc is not None else paho.MQTT_ERR_UNKNOWN
            if isinstance(code, ReasonCode) and code.value not in _TRANSIENT_CONNACKS:
                raise SinkRejected(f"{self.url} refuses the connection: {_reason(code)}") from None
            raise SinkUnavailable(f"{self.url} cannot take the connection now: {_reason(code)}") from None
        except (aiomqtt.MqttError, OSError, TimeoutError) as exc:
            raise SinkUnavailable(f"cannot connect to {self.url}: {exc or 'timed out'}") from None
        client.watch()
        self._client = client
        self.connects += 1
        return client

    def _topic(self, delivery: Delivery) -> str:
        topic = self._topics.get(delivery.topic)
        if topic is None:
            topic = mqtt_topic(self.prefix, delivery.instance, delivery.subtopic)
            if len(self._topics) >= _TOPIC_CACHE_LIMIT:
                self._topics.clear()
            self._topics[delivery.topic] = topic
        return topic

    def _prepare(self, delivery: Delivery, limit: int | None) -> tuple[str, bytes, Properties] | str:
        """What to publish for ``delivery``, or why it cannot be sent."""
        topic = self._topic(delivery)
        try:
            payload = self._json.encode({"id": delivery.id, **delivery.json})
        except (TypeError, ValueError, msgspec.EncodeError) as exc:
            return f"the message is not JSON-ready: {exc}"
        ident = delivery.id.encode("utf-8", "surrogatepass")
        if len(ident) > MAX_STRING_BYTES:
            return f"its id is {len(ident)} bytes, over the {MAX_STRING_BYTES} of an MQTT user property"
        properties = _PublishProperties(_PROPERTIES_HEAD + len(ident).to_bytes(2, "big") + ident)
        if limit is not None:
            topic_bytes = len(topic.encode("utf-8"))
            remaining = 2 + topic_bytes + 2 + len(properties.packed) + len(payload)
            size = 1 + _varint_size(remaining) + remaining
            if size > limit:
                return f"the message is {size} bytes, over the mqtt server's maximum packet size ({limit})"
        return topic, payload, properties

    async def send(self, batch: Sequence[Delivery]) -> Sequence[str | None]:
        """Publish ``batch`` at QoS 1 through the inflight window; per item ``None`` once its
        PUBACK succeeded, else the reason it is refused."""
        results: list[str | None] = [None] * len(batch)
        if not batch:
            return results
        client = await self._connection()
        window = max(1, min(self.inflight, client.receive_maximum))
        state = _Batch()
        client.batch = state
        try:
            for index, delivery in enumerate(batch):
                prepared = self._prepare(delivery, client.max_packet_size)
                if isinstance(prepared, str):
                    results[index] = prepared
                    continue
                if len(state.pending) >= window:
                    await self._wait(state, window // 2)
                if state.lost is not None:
                    break
                try:
                    mid = client.publish_nowait(*prepared[:2], delivery.last_value, prepared[2])
                except ValueError as exc:  # paho's own checks (topic, payload size)
                    results[index] = f"the mqtt client refuses the message: {exc}"
                    continue
                state.pending[mid] = index
            await self._wait(state, 0)
        except BaseException:
            await self._drop()
            raise
        finally:
            client.batch = None
        if state.lost is not None:
            await self._drop()
            raise SinkUnavailable(f"{self.url}: {state.lost}; the batch is not delivered")
        for index, reason in state.refused.items():
            results[index] = reason
        return results

    async def _wait(self, state: _Batch, threshold: int) -> None:
        """Until at most ``threshold`` publishes of ``state`` await their PUBACK (or the
        connection is lost); SinkUnavailable when no PUBACK comes in ``ack_timeout``."""
        state.threshold = threshold
        while len(state.pending) > threshold and state.lost is None:
            acked = state.acked
            state.waiter = asyncio.get_running_loop().create_future()
            try:
                await asyncio.wait_for(state.waiter, self.ack_timeout)
            except TimeoutError:
                if state.acked == acked:
                    state.lost = f"no acknowledgement in {self.ack_timeout:g} s"
            finally:
                state.waiter = None

    async def _drop(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        client.batch = None
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.__aexit__(None, None, None), self.connect_timeout)

    async def close(self) -> None:
        """Disconnect; idempotent, never raises."""
        await self._drop()


def _check_prefix(prefix: str) -> str | None:
    if any(c in prefix for c in "+#\0"):
        return f"{prefix!r} contains +, # or NUL (MQTT wildcards cannot be in a topic name)"
    if prefix.startswith("$"):
        return f"{prefix!r} starts with $ (topics starting with $ belong to the server)"
    if prefix.startswith("/") or prefix.endswith("/"):
        return f"{prefix!r} starts or ends with / (the levels are joined with /)"
    if len(prefix.encode("utf-8", "surrogatepass")) > 1024:
        return "is over 1024 bytes"
    return None


def _check_client_id(client_id: str) -> str | None:
    if not client_id or "\0" in client_id or len(client_id.encode("utf-8", "surrogatepass")) > MAX_STRING_BYTES:
        return "must be 1 to 65535 bytes of UTF-8 without NUL"
    return None


def _positive(value: float) -> str | None:
    return None if value > 0 and value != float("inf") else f"must be a positive number of seconds, not {value!r}"


def _parse_url(name: str, url: str) -> tuple[str, int]:
    def bad(problem: str) -> ConfigError:
        return ConfigError(f"connector {name}: url: {problem}")

    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise bad(f"{url!r} is not a URL ({exc})") from None
    if parts.scheme != "mqtt":
        raise bad(f"{url!r} must be mqtt://host[:port] (scheme {parts.scheme or 'missing'!r})")
    if parts.username is not None or parts.password is not None:
        raise bad("put the credentials in username and password_file, not in the URL")
    if not parts.hostname:
        raise bad(f"{url!r} names no host")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise bad(f"{url!r} must be mqtt://host[:port] with no path or query")
    if port == 0:
        raise bad(f"{url!r}: port 0 is not a port")
    return parts.hostname, port if port is not None else DEFAULT_PORT


def _read_password(name: str, path: str) -> str:
    try:
        text = Path(path).expanduser().read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"connector {name}: password_file: cannot read {path!r}: {exc}") from None
    password = text.rstrip("\r\n")
    if not password:
        raise ConfigError(f"connector {name}: password_file: {path!r} is empty")
    return password


def create(name: str, options: Mapping[str, Any]) -> Sink:
    """An :class:`MqttSink` from the connector's sink options (see docs/connectors.md, ``## mqtt``);
    :class:`~exesdb_sdk.errors.ConfigError` in one line naming the connector and the key."""
    unknown_options(name, options, KNOWN)
    host, port = _parse_url(name, option(name, options, "url", str))
    username = option(name, options, "username", str, None, _check_client_id)
    password_file = option(name, options, "password_file", str, None)
    if password_file is not None and username is None:
        raise ConfigError(f"connector {name}: password_file: needs username too")
    return MqttSink(
        name,
        host=host,
        port=port,
        prefix=option(name, options, "prefix", str, DEFAULT_PREFIX, _check_prefix),
        username=username,
        password=_read_password(name, password_file) if password_file is not None else None,
        client_id=option(name, options, "client_id", str, None, _check_client_id),
        inflight=option(
            name,
            options,
            "inflight",
            int,
            DEFAULT_INFLIGHT,
            lambda n: None if 1 <= n <= MAX_INFLIGHT else f"must be 1 to {MAX_INFLIGHT}, not {n}",
        ),
        connect_timeout=option(name, options, "connect_timeout", float, DEFAULT_CONNECT_TIMEOUT, _positive),
        ack_timeout=option(name, options, "ack_timeout", float, DEFAULT_ACK_TIMEOUT, _positive),
    )
