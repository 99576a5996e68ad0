"""``/v1/stream``: the bus as Server-Sent Events, one event per message, its ``data`` the object
``exesdb tail --json`` prints.

Query: ``instance`` (repeatable; a name or alias: the whole instance) and ``topic`` (repeatable;
``<instance>/<sub-topic prefix or glob>``); neither: every instance.

A journaled instance is followed through the broker's journal, so that every event carries
its broker sequence number in the SSE ``id`` and a client that reconnects with
``Last-Event-ID`` resumes with no gap and no duplicate. A live subscription to it serves as
the doorbell: each wake-up fetches the next ``replay`` page from the stream's cursor (the
broker first records everything it has forwarded), so latency stays that of one control
round trip. Live-only instances are delivered as they arrive, at most once, with no ``id``.

Bounds: a stream delivers at most ``WebSettings.sse_max_rate`` events a second (or the fewer
its ``max_rate`` asks for); the stream's subscriber queues at most ``WebSettings.sse_queue``
messages (beyond that the broker drops for it: the client gets an ``event: gap``), a journal is read one page
at a time and only when the client has taken the previous one, the transport buffers at most
about 128 KiB, and a client whose writes stay blocked for ``WebSettings.sse_write_timeout``
seconds is cut off. See docs/http.md for the format.

The broker's restricted instances are read from the restricted class's backend, by a second
subscriber, and only for a token that may read them (``restricted_subscribers`` or ``admins``:
:func:`.auth.instance_refusal`); a stream of every instance leaves out what its token may not
read. When a reload of the tokens takes from a stream's token the right to one of its
instances, the stream ends with an ``event: error`` of code ``revoked`` (counted as
``sse_streams_revoked``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from aiohttp import web
from exesdb_sdk import AsyncControlClient, AsyncSubscriber, Instance, Message
from exesdb_sdk.errors import BrokerUnavailableError, ControlError, ExesdbError, ReceiveTimeoutError
from exesdb_sdk.follow import Follow, head_request, journaled_instances, take_page
from exesdb_sdk.jsonview import message_json
from exesdb_sdk.protocol import MAX_INT, MAX_SUBTOPIC_BYTES
from exesdb_sdk.subscriber import SubscriberCore

from . import auth
from .app import ACCESS, COUNTERS, SETTINGS

__all__ = [
    "MAX_SUBSCRIPTIONS",
    "Pace",
    "format_cursor",
    "install",
    "parse_cursor",
    "routes",
    "stream_rate",
    "stream_subscriptions",
]

log = logging.getLogger("exesdb.web.stream")

routes = web.RouteTableDef()

MAX_SUBSCRIPTIONS: Final = 64
"""``instance`` and ``topic`` parameters one stream may have."""
_POLL: Final = 1.0
"""How often an idle stream looks whether its client is still there (aiohttp does not cancel
a handler whose client went away; its next write would fail, but an idle stream writes none)."""
_BURST: Final = 256
"""Messages read from the subscriber before the journals and the client get their turn."""
_PAGES: Final = 8
"""Journal pages per instance and round before live messages get their turn again."""
_FLUSH_BYTES: Final = 16_384
"""Events are written in chunks of about this many bytes (one write per event costs more)."""
_CONTROL_TIMEOUT: Final = 5.0
"""A ``replay`` waits for the broker's journal to record what it forwarded (up to 3 s)."""
_LAST_EVENT_ID_CHARS: Final = 2048
_CURSOR_PART: Final = re.compile(r"([a-z_]{1,32}):([0-9]{1,19})(?:\.([0-9]{1,9}))?")
_PARAMS: Final = frozenset({"instance", "topic", "max_rate"})
_HEADERS: Final = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
_JSON: Final = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def stream_subscriptions(request: web.Request) -> list[tuple[Instance, str]]:
    """The (instance, sub-topic pattern) pairs a stream request asks for, every instance when
    it names none; raises :class:`~aiohttp.web.HTTPBadRequest` naming a bad one."""
    query = request.query
    unknown = sorted(set(query) - _PARAMS)
    if unknown:
        raise web.HTTPBadRequest(text=f"unknown query parameter {unknown[0]!r} (expected instance, topic, max_rate)")
    names, topics = query.getall("instance", []), query.getall("topic", [])
    if len(names) + len(topics) > MAX_SUBSCRIPTIONS:
        raise web.HTTPBadRequest(text=f"at most {MAX_SUBSCRIPTIONS} instance and topic parameters per stream")
    wanted: list[tuple[Instance, str]] = []
    try:
        for name in names:
            wanted.append((Instance.resolve(name), ""))
        for topic in topics:
            head, sep, rest = topic.partition("/")
            if not sep:
                raise ExesdbError(f"topic {topic!r} needs '<instance>/' before the sub-topic")
            if len(rest.encode()) > MAX_SUBTOPIC_BYTES:
                raise ExesdbError(f"topic {topic[:40]!r}...: sub-topic over {MAX_SUBTOPIC_BYTES} bytes")
            wanted.append((Instance.resolve(head), rest))
    except ExesdbError as exc:
        raise web.HTTPBadRequest(text=str(exc)) from None
    return wanted or [(instance, "") for instance in Instance]


def stream_rate(request: web.Request, ceiling: int) -> int:
    """The events a second the stream may deliver: ``max_rate`` if it asks for at most
    ``ceiling`` (0: none), else ``ceiling``; raises :class:`~aiohttp.web.HTTPBadRequest`."""
    asked = request.query.get("max_rate")
    if asked is None:
        return ceiling
    if not asked.isascii() or not asked.isdigit() or not 1 <= int(asked) <= 10**9:
        raise web.HTTPBadRequest(text=f"max_rate must be a whole number of events a second from 1, not {asked[:40]!r}")
    return int(asked) if ceiling == 0 else min(int(asked), ceiling)


class Pace:
    """At most ``rate`` events a second on average, in bursts of up to a second's worth
    (``rate`` 0: no limit)."""

    __slots__ = ("_at", "_tokens", "rate")

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self._tokens = float(rate)
        self._at = time.monotonic()

    def delay(self) -> float:
        """Seconds until the next event may go (0: now)."""
        if not self.rate:
            return 0.0
        now = time.monotonic()
        self._tokens = min(float(self.rate), self._tokens + (now - self._at) * self.rate)
        self._at = now
        return 0.0 if self._tokens >= 1 else (1 - self._tokens) / self.rate

    def spend(self, events: int = 1) -> None:
        """Count ``events`` delivered (a journal page may take the balance below zero)."""
        if self.rate:
            self._tokens -= events


Cursor = dict[Instance, tuple[int, int]]
"""Per journaled instance: a broker sequence number and how many envelopes of that record
were delivered (0: all of it; more only inside a batch)."""


def parse_cursor(text: str) -> Cursor:
    """A ``Last-Event-ID`` as this stream writes it: ``<instance>:<seq>[.<envelopes>]`` joined
    by commas; raises :class:`ValueError` with the reason."""
    if len(text) > _LAST_EVENT_ID_CHARS:
        raise ValueError(f"Last-Event-ID is over {_LAST_EVENT_ID_CHARS} characters")
    cursor: Cursor = {}
    for part in text.split(","):
        match = _CURSOR_PART.fullmatch(part.strip())
        if match is None:
            raise ValueError(f"Last-Event-ID part {part[:40]!r} is not <instance>:<broker seq>")
        try:
            instance = Instance.resolve(match[1])
        except ExesdbError as exc:
            raise ValueError(f"Last-Event-ID: {exc}") from None
        seq, within = int(match[2]), int(match[3] or 0)
        if seq > MAX_INT:
            raise ValueError(f"Last-Event-ID: {instance.value} sequence {seq} is over {MAX_INT}")
        if instance in cursor:
            raise ValueError(f"Last-Event-ID names {instance.value} twice")
        cursor[instance] = (seq, within)
    return cursor


def format_cursor(cursor: Mapping[Instance, tuple[int, int]]) -> str:
    """The SSE ``id`` for ``cursor`` (the inverse of :func:`parse_cursor`)."""
    return ",".join(
        f"{instance.value}:{seq}.{within}" if within else f"{instance.value}:{seq}"
        for instance, (seq, within) in cursor.items()
    )


class _CutOff(Exception):
    """The stream ends: the client went away, was cut off, or the stream was stopped."""


class _Inbox:
    """A stream's one or two subscribers (the public backend's, the restricted class's) read
    as one. With two, they take turns so that neither starves, and each has at most one
    receive waiting at a time: beyond its socket's queue (the RCVHWM), at most one message per
    subscriber is held here."""

    def __init__(self, subscribers: list[AsyncSubscriber]) -> None:
        self.subscribers = subscribers
        self._waiting: dict[int, asyncio.Task[Message]] = {}
        self._turn = 0

    async def recv(self, timeout: float) -> Message:
        """The next message of either subscriber; raises :class:`ReceiveTimeoutError` when
        none arrives within ``timeout`` seconds."""
        subscribers = self.subscribers
        if len(subscribers) == 1:
            return await subscribers[0].recv(timeout)
        self._turn = (self._turn + 1) % len(subscribers)
        order = list(range(self._turn, len(subscribers))) + list(range(self._turn))
        for index in order:
            task = self._waiting.get(index)
            if task is not None:
                if not task.done():
                    continue
                del self._waiting[index]
                if not isinstance(task.exception(), ReceiveTimeoutError):
                    return task.result()
            with contextlib.suppress(ReceiveTimeoutError):
                return await subscribers[index].recv(0)
        if timeout <= 0:
            raise ReceiveTimeoutError(timeout)
        for index in order:
            if index not in self._waiting:
                self._waiting[index] = asyncio.ensure_future(subscribers[index].recv(timeout))
        done, _ = await asyncio.wait(self._waiting.values(), timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        for index in order:
            task = self._waiting[index]
            if task in done:
                del self._waiting[index]
                if not isinstance(task.exception(), ReceiveTimeoutError):
                    return task.result()
        raise ReceiveTimeoutError(timeout)

    async def aclose(self) -> None:
        """Stop the waiting receives and close the subscribers."""
        waiting = list(self._waiting.values())
        self._waiting.clear()
        for task in waiting:
            task.cancel()
        for task in waiting:
            with contextlib.suppress(asyncio.CancelledError, ExesdbError):
                await task
        for subscriber in self.subscribers:
            await subscriber.aclose()


@dataclass(slots=True, eq=False)
class _Grant:
    """What a stream's token was allowed when it opened, to be checked again after a reload."""

    tokens: auth.Tokens
    token: str
    instances: frozenset[Instance]
    restricted: frozenset[Instance]
    generation: int

    def revoked(self) -> str | None:
        """Why the token may no longer read one of the stream's instances, else ``None``."""
        if self.generation == self.tokens.generation:
            return None
        self.generation = self.tokens.generation
        roles = self.tokens.roles_of(self.token)
        if not roles:
            return "the stream's token is no longer known"
        for instance in sorted(self.instances, key=list(Instance).index):
            refusal = auth.instance_refusal(roles, instance.value, instance in self.restricted, publish=False)
            if refusal is not None:
                return refusal
        return None


@dataclass(slots=True, eq=False)
class _Stream:
    request: web.Request
    response: web.StreamResponse
    counters: Counter[str]
    write_timeout: float
    keepalive: float
    follows: dict[Instance, Follow] = field(default_factory=dict)
    missed: Counter[Instance] = field(default_factory=Counter)
    """Live messages lost before the next live event, per instance (from sequence gaps)."""
    subscriber: _Inbox | None = None
    control: AsyncControlClient | None = None
    grant: _Grant | None = None
    out: list[bytes] = field(default_factory=list)
    out_bytes: int = 0
    last_write: float = field(default_factory=time.monotonic)
    journal: SubscriberCore = field(default_factory=lambda: SubscriberCore(None, None, typed=False))
    stopping: bool = False
    task: asyncio.Task[Any] | None = None
    pace: Pace = field(default_factory=lambda: Pace(0))

    def on_gap(self, message: Message, missed: int) -> None:
        """Messages the broker dropped for this stream's subscriber (or its publisher lost)."""
        if message.instance not in self.follows:  # a journaled instance's doorbell: the journal has them
            self.missed[message.instance] += missed

    def cursor_id(self) -> str:
        return format_cursor({f.instance: (f.seq, f.within) for f in self.follows.values()})

    def emit(self, data: str, *, event: str | None = None, event_id: str | None = None) -> None:
        head = (f"event: {event}\n" if event else "") + (f"id: {event_id}\n" if event_id is not None else "")
        chunk = f"{head}data: {data}\n\n".encode()
        self.out.append(chunk)
        self.out_bytes += len(chunk)

    def emit_gap(self, gap: Mapping[str, Any], event_id: str | None = None) -> None:
        self.counters["sse_gaps"] += 1
        self.counters["sse_missed"] += int(gap.get("missed", 0))
        self.emit(_JSON.encode(gap), event="gap", event_id=event_id)

    def emit_live(self, message: Message) -> None:
        if self.missed:
            for instance, missed in self.missed.items():
                self.emit_gap({"instance": instance.value, "missed": missed, "reason": "sequence"})
            self.missed.clear()
        self.counters["sse_events"] += 1
        self.pace.spend()
        self.emit(_JSON.encode(message_json(message)))

    async def flush(self) -> None:
        """Write what is queued; cut the client off when the write stays blocked too long."""
        if not self.out:
            return
        chunk = b"".join(self.out)
        self.out.clear()
        self.out_bytes = 0
        try:
            await asyncio.wait_for(self.response.write(chunk), self.write_timeout)
        except TimeoutError:
            self.counters["sse_cut_off"] += 1
            peer = self.request.remote
            log.warning("cut off stream client %s: its writes were blocked for %.1f s", peer, self.write_timeout)
            transport = self.request.transport
            if transport is not None:
                transport.abort()  # close() would wait to flush to a client that does not read
            raise _CutOff from None
        except ConnectionError:
            raise _CutOff from None
        self.last_write = time.monotonic()

    def gone(self) -> bool:
        transport = self.request.transport
        return transport is None or transport.is_closing()

    async def open_journals(self, wanted: list[tuple[Instance, str]], resume: Cursor | None) -> None:
        """Find which wanted instances the broker journals and where their journals stand; a
        resumed cursor must name exactly those and lie within them (else ``HTTPBadRequest``)."""
        assert self.control is not None
        stats = await self.control.request("stats", timeout=_CONTROL_TIMEOUT)
        journaled = journaled_instances(stats)
        patterns: dict[Instance, list[str]] = {}
        for instance, pattern in wanted:
            if instance.value in journaled:
                patterns.setdefault(instance, []).append(pattern)
        for instance in sorted(patterns, key=list(Instance).index):
            try:
                # from_seq past any record: an empty page whose "last" is the head, once the
                # journal has recorded everything forwarded before it (this stream's live
                # subscription was confirmed before: from here on the doorbell rings)
                reply = await self.control.request("replay", head_request(instance), timeout=_CONTROL_TIMEOUT)
            except ControlError as exc:
                log.info("stream: %s live only: %s", instance.value, exc.message)
                continue
            head = reply.get("last")
            if type(head) is not int:
                continue
            self.follows[instance] = Follow.create(instance, patterns[instance], head)
        if resume is None:
            return
        for instance, (seq, within) in resume.items():
            follow = self.follows.get(instance)
            if follow is None:
                followed = ", ".join(self.follows) or "none"
                raise web.HTTPBadRequest(
                    text=f"Last-Event-ID names {instance.value}, which this stream does not follow "
                    f"from the journal (journaled here: {followed})"
                )
            if seq > follow.head:
                raise web.HTTPBadRequest(
                    text=f"Last-Event-ID {instance.value}:{seq} is past the journal's head {follow.head}"
                )
            follow.seq, follow.within = seq, within

    async def follow(self, follow: Follow) -> bool:
        """Deliver what the journal holds past the cursor, at most :data:`_PAGES` pages;
        return whether more is left."""
        assert self.control is not None
        sync = True
        for _ in range(_PAGES):
            start, args = follow.page_request(sync)
            reply = await self.control.request("replay", args, timeout=_CONTROL_TIMEOUT)
            sync = False  # the first page waited for the journal to record what was forwarded
            self.take_page(follow, start, reply)
            await self.flush()
            if not reply.get("more"):
                return False
        return True

    def take_page(self, follow: Follow, start: int, reply: Mapping[str, Any]) -> None:
        items = take_page(follow, start, reply, self.journal)
        end = (follow.seq, follow.within)
        for item in items:
            follow.seq, follow.within = item.seq, item.within  # each event's id: the cursor after it
            if item.kind == "retention":
                assert item.gap is not None
                self.emit_gap(item.gap)
            elif item.kind == "gap":
                assert item.gap is not None
                self.emit_gap(item.gap, event_id=self.cursor_id())
            else:
                assert item.message is not None
                self.counters["sse_events"] += 1
                self.pace.spend()
                self.emit(_JSON.encode(message_json(item.message)), event_id=self.cursor_id())
        follow.seq, follow.within = end

    async def run(self) -> None:
        """Deliver until the client goes away or is cut off."""
        subscriber, follows = self.subscriber, self.follows
        assert subscriber is not None
        rung: set[Instance] = set(follows)  # at once: a resumed stream has catching up to do
        read = 0
        while True:
            if self.grant is not None and (why := self.grant.revoked()) is not None:
                self.counters["sse_streams_revoked"] += 1
                self.emit(_JSON.encode({"code": "revoked", "message": why}), event="error")
                await self.flush()
                log.info("stream of %s ended: %s", self.request.remote, why)
                return
            paused = self.pace.delay()
            if paused:
                # over the stream's rate: read nothing meanwhile, so the broker sheds for this
                # subscriber in C (counted: the client gets its gap) instead of this thread decoding
                await self.flush()
                await asyncio.sleep(min(paused, _POLL))
                if self.gone():
                    raise _CutOff from None
                continue
            try:
                # doorbells come in bursts: read what is there before asking the journal
                message = await subscriber.recv(0 if (rung or self.out) else min(_POLL, self.keepalive))
            except ReceiveTimeoutError:
                if rung:
                    await self.follow_rung(rung)
                elif self.out:
                    await self.flush()
                else:
                    if self.gone():
                        raise _CutOff from None
                    if time.monotonic() - self.last_write >= self.keepalive:
                        # a gap marker rings no doorbell (nor a record a narrow topic leaves out)
                        rung.update(follows)
                        self.out.append(b": keepalive\n\n")
                        await self.flush()
                read = 0
                continue
            read += 1
            if message.instance in follows:
                rung.add(message.instance)
            else:
                self.emit_live(message)
            if read >= _BURST:
                await self.follow_rung(rung)
                await self.flush()
                read = 0
            elif self.out_bytes >= _FLUSH_BYTES:
                await self.flush()

    async def follow_rung(self, rung: set[Instance]) -> None:
        for instance in sorted(rung, key=list(Instance).index):
            if not await self.follow(self.follows[instance]):
                rung.discard(instance)


_STREAMS: Final = web.AppKey("streams", set[_Stream])


def _permitted(request: web.Request, wanted: list[tuple[Instance, str]]) -> list[tuple[Instance, str]]:
    """What of ``wanted`` the request's token may read: a named instance it may not read is a
    403 (counted as ``auth_forbidden``); a stream of every instance leaves such ones out."""
    settings, access = request.app[SETTINGS], request.app[ACCESS]
    roles = auth.request_roles(request)
    named = "instance" in request.query or "topic" in request.query
    kept: list[tuple[Instance, str]] = []
    for instance, pattern in wanted:
        restricted = instance in settings.restricted
        refusal = auth.instance_refusal(roles, instance.value, restricted, publish=False)
        if refusal is None and restricted and not access.serves_restricted:
            refusal = f"{instance.value} is restricted and this HTTP surface does not know the class's endpoints"
        if refusal is None:
            kept.append((instance, pattern))
        elif named:
            request.app[COUNTERS]["auth_forbidden"] += 1
            raise web.HTTPForbidden(text=refusal)
    if not kept:
        request.app[COUNTERS]["auth_forbidden"] += 1
        raise web.HTTPForbidden(text="this token may stream no instance")
    return kept


def install(app: web.Application) -> None:
    """Add the stream route to ``app``, and end open streams when it shuts down."""
    app[_STREAMS] = set()
    app.add_routes(routes)
    app.on_shutdown.append(_end_streams)


async def _end_streams(app: web.Application) -> None:
    streams: set[_Stream] = app[_STREAMS]
    for stream in list(streams):
        stream.stopping = True
        if stream.task is not None:
            stream.task.cancel()


@routes.get("/v1/stream")
async def stream(request: web.Request) -> web.StreamResponse:
    """Messages as they arrive (journaled instances from the journal, with ids), until the
    client goes away."""
    wanted = _permitted(request, stream_subscriptions(request))
    restricted = request.app[SETTINGS].restricted
    rate = stream_rate(request, request.app[SETTINGS].sse_max_rate)
    resume: Cursor | None = None
    last_id = request.headers.get("Last-Event-ID")
    if last_id is not None and last_id.strip():
        try:
            resume = parse_cursor(last_id)
        except ValueError as exc:
            raise web.HTTPBadRequest(text=str(exc)) from None
    app = request.app
    settings, counters = app[SETTINGS], app[COUNTERS]
    response = web.StreamResponse(headers=_HEADERS)
    stream = _Stream(
        request,
        response,
        counters,
        settings.sse_write_timeout,
        settings.sse_keepalive,
        task=asyncio.current_task(),
        pace=Pace(rate),
    )
    subscribers = [
        app[ACCESS].subscriber(restricted=of_class, hwm=settings.sse_queue, typed=False, on_gap=stream.on_gap)
        for of_class in (False, True)
        if any((instance in restricted) == of_class for instance, _ in wanted)
    ]
    subscriber = stream.subscriber = _Inbox(subscribers)
    token = auth.request_token(request)
    if token is not None:
        tokens = settings.tokens
        instances = frozenset(instance for instance, _ in wanted)
        stream.grant = _Grant(tokens, token, instances, restricted, tokens.generation)
    streams = app[_STREAMS]
    try:
        for instance, pattern in wanted:
            await subscribers[0 if len(subscribers) == 1 or instance not in restricted else 1].subscribe(
                instance, pattern, wait=False
            )
        for one in subscribers:
            await one.wait_ready()
        stream.control = app[ACCESS].control_client(timeout=_CONTROL_TIMEOUT)
        await stream.open_journals(wanted, resume)
        await response.prepare(request)
        counters["sse_streams_opened"] += 1
        if resume is not None:
            counters["sse_resumed"] += 1
        streams.add(stream)
        stream.out.append(b": exesdb stream\n\n")
        if stream.follows:
            # an id-only block: the client's Last-Event-ID from the start, without an event
            stream.out.append(f"id: {stream.cursor_id()}\n\n".encode())
        try:
            await stream.flush()
            await stream.run()
        except _CutOff:
            pass
        except asyncio.CancelledError:
            if not stream.stopping or stream.task is None:
                raise
            stream.task.uncancel()  # the server is shutting down (_end_streams): end the stream cleanly
        except (ControlError, BrokerUnavailableError) as exc:
            # the journal or the broker stopped answering: say so; the client's reconnect resumes
            code = exc.code if isinstance(exc, ControlError) else "broker_unavailable"
            stream.out.clear()
            stream.emit(_JSON.encode({"code": code, "message": str(exc)}), event="error")
            with contextlib.suppress(_CutOff):
                await stream.flush()
        finally:
            counters["sse_streams_closed"] += 1
        return response
    finally:
        streams.discard(stream)
        await subscriber.aclose()
        if stream.control is not None:
            await stream.control.aclose()
