"""Live federation: brokers share their live instances through core NATS (``[federation]``).

One supervised child, ``federation``, runs an event loop beside the data plane:

- **export**: a subscriber on the broker's backend (inproc) to every exported instance; each
  message it sees, unless it carries the :data:`IMPORTED` marker frame, is published on the
  subject ``exesdb.<instance>.<subtopic>`` (:func:`exesdb_sdk.subjects.subject`), body
  unchanged, with the headers ``Exesdb-Topic`` (the topic, percent-encoded) and
  ``Exesdb-Origin`` (this broker's name);
- **import**: NATS subscriptions to ``exesdb.<instance>.>`` (and ``exesdb.<instance>``, an empty
  subtopic) for every imported instance; each message from another broker is published on this
  broker's frontend (inproc) as ``[topic, body, IMPORTED]``, so it reaches local subscribers
  and is never exported again. Messages whose origin is this broker are dropped (``echo``).

The instances this broker journals (alerts and audit by default) go through JetStream instead,
with nothing lost (:mod:`.jetstream`). Live losses are counted in ``stats.federation``:
``dropped`` by reason, and ``gaps``, the ``seq`` gaps seen on import (messages lost between the
exporting broker and this one, e.g. when a NATS server dies).

Bounds, each way: the export subscriber's receive HWM is the broker's ``hwm`` (past it the
broker's backend drops for it, seen as gaps at the importers); nats-py holds at most
:data:`PENDING_BYTES` while it reconnects (past it: ``reconnect_buffer_full``); each NATS
subscription holds at most :data:`SUB_PENDING_MSGS` messages and :data:`SUB_PENDING_BYTES`
(past it: ``slow_consumer``); the inject socket holds the broker's ``hwm`` messages and never
blocks (past it: ``frontend_full``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import nats.errors
import zmq
import zmq.asyncio
from exesdb_sdk.errors import ConfigError, ExesdbError, ProtocolError
from exesdb_sdk.instances import Instance
from exesdb_sdk.protocol import MAX_SEQ_JUMP, Decoder
from exesdb_sdk.subjects import ORIGIN_HEADER, TOPIC_HEADER, escape_token, subject, topic_header, topic_of_header
from nats.aio.client import Client
from nats.aio.msg import Msg

from .config import FEDERATION_ALL, FEDERATION_LIVE, BrokerConfig, FederationConfig, journal_instances, nats_urls
from .jetstream import JetStreamBridge, JetStreamPlan, one_line

__all__ = ["IMPORTED", "PREFIX", "FederationChild", "FederationPlan", "federation_plan"]

log = logging.getLogger("exesdb.broker.federation")

PREFIX: Final = "exesdb"
IMPORTED: Final = b"\x00exesdb-imported"
"""The reserved third frame of a message a broker took from the federation: never exported."""
PENDING_BYTES: Final = 8 * 1024 * 1024
SUB_PENDING_MSGS: Final = 65_536
SUB_PENDING_BYTES: Final = 64 * 1024 * 1024
_CONNECT_TIMEOUT: Final = 2
_RECONNECT_WAIT: Final = 0.5
_READY_TIMEOUT: Final = 5.0
_SUBJECT_CACHE_LIMIT: Final = 4096
_GAP_KEYS_LIMIT: Final = 100_000


@dataclass(frozen=True, slots=True)
class FederationPlan:
    """A ``[federation]`` checked against the broker's own configuration."""

    urls: tuple[str, ...]
    exports: tuple[Instance, ...]
    """Live instances exported through core NATS."""
    imports: tuple[Instance, ...]
    name: str
    jetstream: JetStreamPlan | None = None
    """The journaled instances federated through JetStream (``None``: none)."""
    user: str | None = None
    password: str | None = None
    token: str | None = None

    def __repr__(self) -> str:  # never print a secret
        return f"FederationPlan(urls={self.urls!r}, name={self.name!r})"


def _secret(key: str, value: str) -> str:
    path = Path(value).expanduser()
    try:
        text = path.read_text("utf-8").splitlines()[0].strip() if path.stat().st_size else ""
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(f"federation {key}: cannot read {str(path)!r}: {reason}") from None
    if not text:
        raise ConfigError(f"federation {key}: {str(path)!r} is empty")
    return text


def _instances(
    key: str, value: str, journaled: tuple[Instance, ...], restricted: tuple[Instance, ...]
) -> tuple[Instance, ...]:
    """The instances an ``exports`` or ``imports`` setting names; ``all`` and ``live`` leave out
    the restricted class, which NATS would carry to keys outside it, and naming one is an error."""
    word = value.strip().lower()
    if word == FEDERATION_ALL:
        return tuple(instance for instance in Instance if instance not in restricted)
    if word == FEDERATION_LIVE:
        return tuple(instance for instance in Instance if instance not in journaled and instance not in restricted)
    try:
        named = journal_instances(value)
    except ValueError as exc:
        raise ConfigError(f"federation {key}: {exc}") from None
    for instance in named:
        if instance in restricted:
            raise ConfigError(
                f"federation {key}: {instance.value} is restricted: it is not federated "
                "(NATS would carry it to keys outside its class)"
            )
    return named


def federation_plan(federation: FederationConfig, broker: BrokerConfig) -> FederationPlan | None:
    """The federation to run, or ``None`` when ``nats`` is empty. Raises :class:`ConfigError`."""
    try:
        urls = nats_urls(federation.nats)
    except ValueError as exc:
        raise ConfigError(f"federation nats: {exc}") from None
    if not urls:
        return None
    journaled = journal_instances(broker.journal)
    if bool(federation.user) != bool(federation.password_file):
        raise ConfigError("federation: user and password_file go together")
    if federation.user and federation.token_file:
        raise ConfigError("federation: use either user and password_file, or token_file")
    restricted = journal_instances(broker.restricted)
    exports = _instances("exports", federation.exports, journaled, restricted)
    imports = _instances("imports", federation.imports, journaled, restricted)
    jetstream = JetStreamPlan(
        exports=tuple(i for i in exports if i in journaled),
        imports=tuple(i for i in imports if i in journaled),
        data_dir=broker.data_dir,
        replicas=federation.replicas or min(3, len(urls)),
        max_bytes=federation.stream_max_bytes,
        max_age=broker.journal_max_age,
    )
    return FederationPlan(
        urls=urls,
        exports=tuple(i for i in exports if i not in journaled),
        imports=tuple(i for i in imports if i not in journaled),
        jetstream=jetstream if jetstream.exports or jetstream.imports else None,
        name=federation.name or broker.node,
        user=federation.user or None,
        password=_secret("password_file", federation.password_file) if federation.password_file else None,
        token=_secret("token_file", federation.token_file) if federation.token_file else None,
    )


class FederationChild:
    """The supervised ``federation`` child (see the module's documentation)."""

    name = "federation"
    restartable = True

    def __init__(self, plan: FederationPlan, context: zmq.Context[Any], base: str, config: BrokerConfig) -> None:
        self.plan = plan
        self._context, self._base = context, base
        self._hwm, self._max_size = config.hwm, config.max_message_size
        self.ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._stopping = False
        self.state = "reconnecting"
        self.server: str | None = None
        self.last_error: str | None = None
        self.exported = 0
        self.imported = 0
        self.gaps = 0
        self.reconnects = 0
        self.dropped: Counter[str] = Counter()
        self._subjects: dict[bytes, str] = {}
        self._last_seq: dict[tuple[str, str], int] = {}
        self._decoder = Decoder()
        self._client: Client | None = None
        self._bridge: JetStreamBridge | None = None
        if plan.jetstream is not None:
            self._bridge = JetStreamBridge(
                plan.jetstream,
                name=plan.name,
                prefix=PREFIX,
                subject=self._subject,
                context=context,
                base=base,
                max_size=config.max_message_size,
            )

    def snapshot(self) -> dict[str, Any]:
        """``stats.federation``."""
        return {
            "state": self.state,
            "name": self.plan.name,
            "server": self.server,
            "servers": list(self.plan.urls),
            "exports": [i.value for i in self.plan.exports],
            "imports": [i.value for i in self.plan.imports],
            "exported": self.exported,
            "imported": self.imported,
            "gaps": self.gaps,
            "dropped": dict(self.dropped),
            "reconnects": self.reconnects,
            "last_error": self.last_error,
            "jetstream": self._bridge.snapshot() if self._bridge is not None else {"state": "off"},
        }

    def run(self) -> None:
        if self._stopping:
            return
        asyncio.run(self._main())

    def stop(self) -> None:
        """Ask the loop to stop (from any thread)."""
        self._stopping = True
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(stop.set)

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        if self._stopping:
            return
        context = zmq.asyncio.Context.shadow(self._context.underlying)
        source = context.socket(zmq.SUB)
        # A plain socket: an asyncio one queues a send that would block (unbounded, and a
        # message can sit there until the next event), where this one raises at once.
        inject: zmq.Socket[bytes] = self._context.socket(zmq.XPUB)
        try:
            source.setsockopt(zmq.RCVHWM, self._hwm)
            source.setsockopt(zmq.LINGER, 0)
            for instance in self.plan.exports:
                source.setsockopt(zmq.SUBSCRIBE, instance.prefix.encode())
            source.connect(self._base + "-backend")
            inject.setsockopt(zmq.SNDHWM, self._hwm)
            inject.setsockopt(zmq.XPUB_NODROP, 1)  # a full queue raises EAGAIN: counted, never silent
            inject.setsockopt(zmq.LINGER, 0)
            inject.connect(self._base + "-frontend")
            # the frontend's subscription to everything: until it is here, a send would be lost
            if not inject.poll(int(_READY_TIMEOUT * 1000)):  # nothing else runs in this loop yet
                raise ExesdbError("federation: no subscription from the broker's frontend")
            inject.recv()
            self.ready.set()
            await self._serve(source, inject)
        finally:
            source.close(linger=0)
            inject.close(linger=0)

    async def _serve(self, source: zmq.asyncio.Socket, inject: zmq.Socket[bytes]) -> None:
        assert self._stop is not None
        connecting = asyncio.create_task(self._connect(inject))
        exporting = asyncio.create_task(self._export(source))
        stopping = asyncio.create_task(self._stop.wait())
        tasks = [connecting, exporting, stopping]
        try:
            waiting = set(tasks)
            while waiting:
                done, waiting = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                if stopping in done:
                    break
                for task in done:
                    task.result()  # a failure of any loop: raise, the supervisor restarts
                if connecting in done and self._bridge is not None and self._client is not None:
                    bridging = asyncio.create_task(self._bridge.run(self._client))  # once connected
                    tasks.append(bridging)
                    waiting.add(bridging)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            client, self._client = self._client, None
            if client is not None and not client.is_closed:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(client.close(), 2.0)
            self.state = "stopped"

    async def _connect(self, inject: zmq.Socket[bytes]) -> None:
        """Connect and subscribe; a failure past nats-py's own retries (a subscription the
        server refuses, a flush that times out) is retried here, never a restart of the child."""
        for attempt in range(1_000_000):
            try:
                await self._connect_once(inject)
                return
            except (nats.errors.Error, OSError, TimeoutError) as exc:
                self.last_error = one_line(exc)
                log.warning("federation: cannot join through NATS (%s); trying again", self.last_error)
                client, self._client = self._client, None
                if client is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(client.close(), _CONNECT_TIMEOUT)
                self.state = "reconnecting"
                await asyncio.sleep(min(_RECONNECT_WAIT * 2 ** min(attempt, 4), 5.0))

    async def _connect_once(self, inject: zmq.Socket[bytes]) -> None:
        plan = self.plan
        client = Client()
        self._client = client
        self.state, self.server = "reconnecting", None

        async def on_error(exc: Exception) -> None:
            if isinstance(exc, nats.errors.SlowConsumerError):
                self.dropped["slow_consumer"] += 1
                return
            text = one_line(exc)
            if text != self.last_error:
                log.warning("federation: nats: %s", text)
            self.last_error = text

        async def on_disconnected() -> None:
            if self.state == "connected":
                log.warning("federation: lost NATS server %s; reconnecting", self.server)
                self.state = "reconnecting"

        async def on_reconnected() -> None:
            self.reconnects += 1
            self.server = str(client.connected_url.geturl()) if client.connected_url else None
            self.state = "connected"
            log.info("federation: reconnected to %s", self.server)

        await client.connect(
            servers=list(plan.urls),
            name=f"exesdb-broker-{plan.name}",
            allow_reconnect=True,
            max_reconnect_attempts=-1,  # a broker keeps trying; its state says so meanwhile
            reconnect_time_wait=_RECONNECT_WAIT,  # type: ignore[arg-type]  # annotated int, used as a float
            connect_timeout=_CONNECT_TIMEOUT,
            no_echo=True,
            pending_size=PENDING_BYTES,
            error_cb=on_error,
            disconnected_cb=on_disconnected,
            reconnected_cb=on_reconnected,
            user=plan.user,
            password=plan.password,
            token=plan.token,
        )

        async def on_message(msg: Msg) -> None:
            self._import(msg, inject)

        for instance in plan.imports:
            for pattern in (f"{PREFIX}.{escape_token(instance.value)}.>", f"{PREFIX}.{escape_token(instance.value)}"):
                await client.subscribe(
                    pattern,
                    cb=on_message,
                    pending_msgs_limit=SUB_PENDING_MSGS,
                    pending_bytes_limit=SUB_PENDING_BYTES,
                )
        await client.flush(timeout=_CONNECT_TIMEOUT)  # the server has our subscriptions before we say connected
        self.server = str(client.connected_url.geturl()) if client.connected_url else None
        self.state = "connected"
        self.last_error = None
        log.info("federation %s connected to %s", plan.name, self.server)

    def _subject(self, topic: bytes) -> str | None:
        cached = self._subjects.get(topic)
        if cached is None:
            try:
                text = topic.decode("utf-8")
            except UnicodeDecodeError:
                return None
            instance, sep, subtopic = text.partition("/")
            if not sep:
                return None
            cached = subject(PREFIX, instance, subtopic) if subtopic else f"{PREFIX}.{escape_token(instance)}"
            if len(self._subjects) >= _SUBJECT_CACHE_LIMIT:
                self._subjects.clear()
            self._subjects[topic] = cached
        return cached

    async def _export(self, source: zmq.asyncio.Socket) -> None:
        headers_origin = self.plan.name
        for _ in iter(int, 1):  # until cancelled
            frames = await source.recv_multipart(copy=True)
            if len(frames) > 2 and frames[2] == IMPORTED:
                continue  # taken from the federation: exported by the broker its publisher uses
            if len(frames) < 2:
                self.dropped["bad_message"] += 1
                continue
            topic, body = frames[0], frames[1]
            target = self._subject(topic)
            if target is None:
                self.dropped["bad_topic"] += 1
                continue
            client = self._client
            if client is None or self.state == "stopped" or not (client.is_connected or client.is_reconnecting):
                self.dropped["not_connected"] += 1
                continue
            headers = {TOPIC_HEADER: topic_header(topic), ORIGIN_HEADER: headers_origin}
            try:
                await client.publish(target, body, headers=headers)
            except nats.errors.OutboundBufferLimitError:
                self.dropped["reconnect_buffer_full"] += 1
            except nats.errors.MaxPayloadError:
                self.dropped["too_large"] += 1
            except nats.errors.Error as exc:
                self.dropped["nats_error"] += 1
                self.last_error = one_line(exc)
            else:
                self.exported += 1

    def _import(self, msg: Msg, inject: zmq.Socket[bytes]) -> None:
        headers = msg.headers or {}
        if headers.get(ORIGIN_HEADER) == self.plan.name:
            self.dropped["echo"] += 1
            return
        encoded = headers.get(TOPIC_HEADER)
        if not encoded:
            self.dropped["bad_message"] += 1
            return
        try:
            topic = topic_of_header(encoded)
        except UnicodeError:
            self.dropped["bad_message"] += 1
            return
        body = msg.data
        if len(body) > self._max_size or len(topic) > self._max_size:
            self.dropped["too_large"] += 1
            return
        try:
            text, pub, seq, count = self._decoder.inspect([topic, body])
        except ProtocolError:
            self.dropped["bad_message"] += 1
            return
        if Instance.resolve(text.partition("/")[0]) not in self.plan.imports:
            self.dropped["not_imported"] += 1
            return
        try:
            inject.send_multipart([topic, body, IMPORTED], flags=zmq.NOBLOCK)
        except zmq.Again:
            self.dropped["frontend_full"] += 1
            return
        self.imported += 1
        if pub and seq > 0:
            self._observe(pub, text, seq, count)

    def _observe(self, pub: str, topic: str, seq: int, count: int) -> None:
        """Count the ``seq`` gaps of what arrives, per (publisher, topic), as a subscriber does."""
        key = (pub, topic)
        last = self._last_seq.get(key)
        if last is not None and last + 1 < seq <= last + MAX_SEQ_JUMP:
            self.gaps += seq - last - 1
        if last is None and len(self._last_seq) >= _GAP_KEYS_LIMIT:
            self._last_seq.clear()
        if last is None or seq > last:
            self._last_seq[key] = seq + count - 1
