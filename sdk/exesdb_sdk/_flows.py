"""Client operations written once, apart from I/O, and the two drivers that run them.

A flow is a generator: it yields the step it needs (wait for the broker to confirm the
subscriptions, send a control request and get its reply, read what the socket holds) and is
sent the step's result, or thrown its exception. :func:`run` drives a flow with a blocking
``perform``, :func:`arun` with an awaitable one; the sync and asyncio clients supply only
``perform``. Cleanup lives in the flow (``except``/``finally``), so it happens whichever
driver runs it and whatever a step raised. (The shape of httpx's ``auth_flow``.)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Generator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, TypeVar

import zmq

from .curve import BrokerGone
from .durable import ReplayFrom, durability_error, durable_request, durable_seq
from .endpoints import Rotation
from .errors import BrokerUnavailableError, ControlError, ProtocolError, ReceiveTimeoutError
from .instances import Instance
from .protocol import MAX_INT, Message, encode_request

if TYPE_CHECKING:
    from .control import ReplyMatcher
    from .publisher import PublisherCore
    from .subscriber import SubscriberCore

__all__ = [
    "CommitMany",
    "Flow",
    "InClass",
    "ReadHeld",
    "Receive",
    "ReceiveMany",
    "Reconnect",
    "Request",
    "Send",
    "SendMany",
    "Settle",
    "Step",
    "Subscribe",
    "Unsubscribe",
    "WaitReady",
    "arun",
    "catch_up",
    "commit_chunked",
    "commit_many",
    "commit_pipelined",
    "connect_any",
    "control_failover",
    "control_request",
    "done",
    "durable_publish",
    "durable_publish_many",
    "probe",
    "probe_any",
    "publisher_failover",
    "receive",
    "run",
    "subscribe_durable",
    "subscriber_failover",
]

_log: Final = logging.getLogger("exesdb_sdk")

_STEPS: Final = 10_000_000
"""Steps a flow may take: far more than any does (a replay page is three)."""

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class WaitReady:
    """Return once the broker has applied the subscriptions made so far."""

    timeout: float | None


@dataclass(frozen=True, slots=True)
class Request:
    """Send this control request; the result is the reply map."""

    op: str
    args: Mapping[str, Any]
    timeout: float | None = None
    """Seconds to wait for the reply (``None``: the control client's own timeout)."""


@dataclass(frozen=True, slots=True)
class ReadHeld:
    """Read what the socket holds now, without waiting, into the subscriber's core."""


@dataclass(frozen=True, slots=True)
class Send:
    """Send these frames without waiting; a full queue raises ``zmq.Again``."""

    frames: list[bytes]


@dataclass(frozen=True, slots=True)
class Receive:
    """Receive one message within ``timeout`` seconds; the result is its frames, or ``None``
    (nothing yet: a driver may return sooner than ``timeout``, the flow then asks again). A
    failed handshake raises :class:`~exesdb_sdk.errors.AuthenticationError` meanwhile; with
    ``watch`` false, only while the handshakes are still watched (an idle subscriber's waits
    do not start a new watch each time)."""

    timeout: float
    watch: bool = True


@dataclass(frozen=True, slots=True)
class Subscribe:
    """Subscribe the socket to this topic prefix."""

    topic: bytes


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    """Undo a :class:`Subscribe` (the socket may have been closed meanwhile: then nothing)."""

    topic: bytes


@dataclass(frozen=True, slots=True)
class InClass:
    """Subscribe (or, with ``unsubscribe``, undo it) at a privilege class's backend, through
    the subscriber the driver keeps there (see :mod:`.classes`)."""

    backend: str
    instance: Instance
    prefix: str = ""
    wait: bool = True
    timeout: float | None = None
    replay_from: ReplayFrom | None = None
    with_last: bool = False
    unsubscribe: bool = False


@dataclass(frozen=True, slots=True)
class Settle:
    """The peer has answered: stop watching the handshakes (see :class:`~.curve.HandshakeWatch`)."""


@dataclass(frozen=True, slots=True)
class Reconnect:
    """Leave the broker in use (if connected) and connect to ``endpoint``, one of the client's
    :class:`~.endpoints.Rotation`, instead."""

    endpoint: str


@dataclass(frozen=True, slots=True)
class SendMany:
    """Send these messages without waiting, in order, until the queue is full; the result is
    how many were sent."""

    messages: list[list[bytes]]


@dataclass(frozen=True, slots=True)
class ReceiveMany:
    """What the socket holds now, up to ``limit`` messages; if it holds nothing, wait up to
    ``timeout`` seconds for the first. The result is a list (empty: nothing yet)."""

    timeout: float
    limit: int


@dataclass(frozen=True, slots=True)
class CommitMany:
    """Commit these ``(topic, body)`` pairs through the control client, ``window`` in flight;
    the result is :meth:`~exesdb_sdk.control.ControlBase.commit_many`'s list."""

    messages: list[tuple[bytes, bytes]]
    window: int


Step = (
    WaitReady
    | InClass
    | Request
    | ReadHeld
    | Send
    | Receive
    | Settle
    | Subscribe
    | Unsubscribe
    | Reconnect
    | CommitMany
    | SendMany
    | ReceiveMany
)
Flow = Generator[Step, Any, T]


def run(flow: Flow[T], perform: Callable[[Step], Any]) -> T:
    """Drive ``flow`` to its end with a blocking ``perform``; return its value."""
    send: Callable[[Any], Step] = flow.send
    value: Any = None
    for _ in range(_STEPS):
        try:
            step = send(value)
        except StopIteration as stop:
            result: T = stop.value
            return result
        try:
            value, send = perform(step), flow.send
        except BaseException as exc:  # the flow decides: it cleans up and (usually) re-raises
            value, send = exc, flow.throw
    raise AssertionError("a client flow did not end")  # pragma: no cover (bounded by design)


async def arun(flow: Flow[T], perform: Callable[[Step], Awaitable[Any]]) -> T:
    """Drive ``flow`` to its end with an awaitable ``perform``; return its value."""
    send: Callable[[Any], Step] = flow.send
    value: Any = None
    for _ in range(_STEPS):
        try:
            step = send(value)
        except StopIteration as stop:
            result: T = stop.value
            return result
        try:
            value, send = await perform(step), flow.send
        except BaseException as exc:
            value, send = exc, flow.throw
    raise AssertionError("a client flow did not end")  # pragma: no cover (bounded by design)


def subscribe_durable(
    core: SubscriberCore,
    instance: Instance | str | None,
    prefix: str,
    replay_from: ReplayFrom | None,
    with_last: bool,
    timeout: float | None,
) -> Flow[None]:
    """A subscription with last values and/or a replay (the subscriptions are set already):
    wait for the broker, fetch the last values and the first page. Whatever fails, the
    subscriber stops holding live messages back for it, so live messages keep flowing."""
    catchup = core.hold(instance, prefix, replay_from)
    assert instance is not None  # hold() refuses None
    try:
        yield WaitReady(timeout)
        if with_last:
            core.take_last((yield Request("last", {"prefix": Instance.resolve(instance).prefix + prefix}, timeout)))
        if catchup is not None:
            core.catchups.append(catchup)
            yield from _page(core, timeout)
    except ControlError as exc:
        core.abandon(catchup)
        raise durability_error(exc) from None
    except BaseException:
        core.abandon(catchup)
        raise
    core.settle()


def catch_up(core: SubscriberCore) -> Flow[None]:
    """Fetch replay pages until a message is pending or no catch-up is left. A page that
    fails ends its catch-up (the error is raised once; live messages flow on)."""
    for _ in range(_STEPS):  # each page moves the cursor on
        if core.pending or not core.catchups:
            return
        catchup = core.catchups[0]
        try:
            yield from _page(core)
        except ControlError as exc:
            core.abandon(catchup)
            raise durability_error(exc) from None
        except BaseException:
            core.abandon(catchup)
            raise


def _page(core: SubscriberCore, timeout: float | None = None) -> Flow[None]:
    yield ReadHeld()  # what arrived live meanwhile is held, not left to pile up in the socket
    catchup = core.catchups[0]
    core.take_page(catchup, (yield Request("replay", catchup.request(), timeout)))


def done() -> Flow[None]:
    """A flow with nothing to do (driven by the asyncio driver, it is still awaited)."""
    return
    yield  # a generator all the same


def receive(core: SubscriberCore, timeout: float | None) -> Flow[Message]:
    """The next message, once nothing is pending or readable now (the subscriber's fast path
    takes those itself): fetch replay pages first, then wait for the socket, up to ``timeout``
    seconds (``None``: forever)."""
    if core.catchups and not core.pending:
        yield from catch_up(core)
    pending = core.pending
    deadline = None if timeout is None else time.monotonic() + timeout
    for _ in range(_STEPS):
        if pending:
            return pending.popleft()
        remaining = 1.0 if deadline is None else deadline - time.monotonic()
        if remaining <= 0:
            break
        try:
            frames = yield Receive(remaining, watch=False)
        except BrokerGone:
            if core.rotation is None:
                raise
            yield from subscriber_failover(core, core.rotation, core.failover_timeout)
            continue
        if frames is not None:
            messages = core.take(frames)
            if messages:
                pending.extend(messages[1:])
                return messages[0]
    raise ReceiveTimeoutError(timeout or 0.0)


def control_request(
    matcher: ReplyMatcher, op: str, args: Mapping[str, Any] | None, timeout: float, endpoint: str
) -> Flow[dict[str, Any]]:
    """One control request: send it, then read until the reply to it (a late reply to an
    earlier request is skipped) or the deadline."""
    request_id, frames = matcher.request(op, args)
    deadline = time.monotonic() + timeout
    try:
        yield Send(frames)
    except zmq.Again:  # the queue to the broker is full: it is not taking requests
        raise BrokerUnavailableError(endpoint, timeout, "broker control endpoint") from None
    for _ in range(_STEPS):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        received = yield Receive(remaining)
        reply = None if received is None else matcher.match(received, request_id)
        if reply is not None:
            yield Settle()
            return reply
    raise BrokerUnavailableError(endpoint, timeout, "broker control endpoint")


def probe(core: SubscriberCore, timeout: float, endpoint: str) -> Flow[None]:
    """Wait until the broker has applied every subscription made so far: subscribe to a
    one-off probe topic, which the broker echoes (subscriptions travel in order, so the echo
    proves the earlier ones arrived). What arrives meanwhile is kept for ``recv``."""
    token, topic = core.new_probe()
    yield Subscribe(topic)
    try:
        deadline = time.monotonic() + timeout
        for _ in range(_STEPS):
            if token in core.acked:  # another task reading this subscriber may have seen it
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BrokerUnavailableError(endpoint, timeout)
            received = yield Receive(remaining)
            if received is not None:
                core.feed(received)
        yield Settle()
    except GeneratorExit:  # the flow was dropped: nothing can be done through it any more
        core.acked.discard(token)
        raise
    except BaseException:
        core.acked.discard(token)
        yield Unsubscribe(topic)
        raise
    core.acked.discard(token)
    yield Unsubscribe(topic)


def durable_publish(publisher: PublisherCore, topic: bytes, body: bytes, envelopes: int) -> Flow[int]:
    """A durable publish: the broker commits it, then forwards it. Refused, its sequence
    numbers are given back (nothing was sent); the result is the broker's sequence number."""
    seq = publisher._encoder.seq(topic)
    try:
        reply = yield Request("publish", durable_request(topic, body))
    except ControlError as exc:
        publisher._refused(topic, seq, envelopes)
        raise durability_error(exc) from None
    publisher._count(topic, body, envelopes)
    return durable_seq(reply)


def durable_publish_many(
    publisher: PublisherCore, encoded: list[tuple[bytes, bytes, int]], window: int
) -> Flow[list[int | ControlError]]:
    """Durable publishes of encoded messages, pipelined: per message the broker's sequence
    number or the error. Refused messages at the end of a topic's run give their sequence
    numbers back (a refusal followed by a commit on the same topic leaves a gap, as a lost
    message would)."""
    results: list[int | ControlError] = yield CommitMany([(topic, body) for topic, body, _ in encoded], window)
    refused_tail: dict[bytes, bool] = {}
    for (topic, body, envelopes), result in zip(reversed(encoded), reversed(results), strict=True):
        if isinstance(result, int):
            refused_tail[topic] = False
            publisher._count(topic, body, envelopes)
        elif refused_tail.setdefault(topic, True) and result.code not in ("unanswered",):
            publisher._refused(topic, publisher._encoder.seq(topic), envelopes)
        else:
            refused_tail[topic] = False  # may have been committed: its seqs stay used
    return [durability_error(r) if isinstance(r, ControlError) else r for r in results]


def commit_pipelined(
    matcher: ReplyMatcher,
    messages: Sequence[tuple[bytes, bytes]],
    window: int,
    timeout: float,
    endpoint: str,
    after: str | None = None,
) -> Flow[list[int | ControlError]]:
    """Durable ``publish`` requests for raw ``(topic, body)`` pairs, up to ``window`` unanswered
    at once; per message, the broker's sequence number or the error (see
    :meth:`~exesdb_sdk.control.ControlBase.commit_many`). Replies are matched by request id, so
    their order does not matter; a reply to anything else is skipped. When nothing is answered
    for ``timeout`` seconds the rest is given up (and, with ``after``, the client moves there)."""
    count = len(messages)
    results: list[int | ControlError | None] = [None] * count
    first = matcher.ids(count).start
    sent = unanswered = 0
    deadline = time.monotonic() + timeout
    for _ in range(_STEPS):
        if sent < count and unanswered < window:
            batch: list[list[bytes]] = []
            indexes: list[int] = []
            while sent < count and unanswered + len(batch) < window:
                topic, body = messages[sent]
                try:
                    request = encode_request("publish", {"topic": topic.decode(), "body": body}, first + sent)
                except UnicodeDecodeError:
                    results[sent] = ControlError("bad_request", "topic is not UTF-8")
                else:
                    batch.append([b"", request])
                    indexes.append(sent)
                sent += 1
            done = (yield SendMany(batch)) if batch else 0
            unanswered += done
            if done < len(batch):  # the queue to the broker is full: the rest waits for replies
                sent = indexes[done]
        if not unanswered and sent == count:
            break
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        received = yield ReceiveMany(remaining, window)
        for frames in received:
            answered = matcher.answer(frames)
            if answered is None:
                continue
            request_id, reply = answered
            index = request_id - first if type(request_id) is int else -1
            if not 0 <= index < sent or results[index] is not None:
                continue  # a late reply to an earlier request, or a repeat
            if isinstance(reply, ControlError):
                results[index] = durability_error(reply)
            else:
                try:
                    results[index] = durable_seq(reply)
                except ProtocolError as exc:
                    results[index] = ControlError(exc.reason, exc.detail)
            unanswered -= 1
            deadline = time.monotonic() + timeout
    else:  # pragma: no cover (bounded by design)
        raise AssertionError("a client flow did not end")
    if unanswered and after is not None:
        yield Reconnect(after)
    elif sent:
        yield Settle()
    unknown = ControlError("unanswered", f"no reply from {endpoint} within {timeout:g} s: outcome unknown")
    never = ControlError("not_sent", f"not sent: {endpoint} stopped answering")
    return [(unknown if index < sent else never) if result is None else result for index, result in enumerate(results)]


MANY_MESSAGES: Final = 1_000
"""Messages per ``publish_many`` request at most (the broker's bound)."""
MANY_BYTES: Final = 60 << 10
"""Bytes of topics and bodies per ``publish_many`` request, about: under the 64 KiB every
broker's control endpoint takes (a larger message goes alone, as it would in a ``publish``)."""
_FALLBACK: Final = ControlError("unknown_op", "publish_many unknown to the broker")
"""The placeholder result of a message whose ``publish_many`` the broker does not know."""


def commit_many(
    matcher: ReplyMatcher,
    messages: Sequence[tuple[bytes, bytes]],
    window: int,
    timeout: float,
    endpoint: str,
    after: str | None,
    without_many: set[str],
) -> Flow[list[int | ControlError]]:
    """Commit ``messages`` as :meth:`~exesdb_sdk.control.ControlBase.commit_many` says: in
    ``publish_many`` chunks (:func:`commit_chunked`), or, where the broker answered that op
    with ``unknown_op`` (an older broker; remembered in ``without_many``), one ``publish``
    request per message (:func:`commit_pipelined`)."""
    if endpoint in without_many:
        return (yield from commit_pipelined(matcher, messages, window, timeout, endpoint, after))
    results = yield from commit_chunked(matcher, messages, window, timeout, endpoint, after)
    rest = [index for index, result in enumerate(results) if result is _FALLBACK]
    if not rest:
        return results
    without_many.add(endpoint)
    again = yield from commit_pipelined(matcher, [messages[i] for i in rest], window, timeout, endpoint, after)
    for index, result in zip(rest, again, strict=True):
        results[index] = result
    return results


def _chunks(
    messages: Sequence[tuple[bytes, bytes]], size: int, results: list[int | ControlError | None]
) -> list[tuple[list[int], list[tuple[str, bytes]]]]:
    """The message indexes and ``[topic, body]`` pairs of consecutive ``publish_many`` chunks
    of at most ``size`` messages and about :data:`MANY_BYTES`; a topic that is not UTF-8 gets
    its ``bad_request`` in ``results`` and is not sent."""
    chunks: list[tuple[list[int], list[tuple[str, bytes]]]] = []
    indexes: list[int] = []
    pairs: list[tuple[str, bytes]] = []
    used = 0
    for index, (topic, body) in enumerate(messages):
        try:
            text = topic.decode()
        except UnicodeDecodeError:
            results[index] = ControlError("bad_request", "topic is not UTF-8")
            continue
        cost = len(topic) + len(body) + 10  # the MessagePack array, str and bin headers, at most
        if indexes and (len(indexes) >= size or used + cost > MANY_BYTES):
            chunks.append((indexes, pairs))
            indexes, pairs, used = [], [], 0
        indexes.append(index)
        pairs.append((text, body))
        used += cost
    if indexes:
        chunks.append((indexes, pairs))
    return chunks


def _many_results(reply: dict[str, Any] | ControlError, count: int) -> list[int | ControlError]:
    """Per message, the outcome a ``publish_many`` reply gives (the error of a refused request for each)."""
    if isinstance(reply, ControlError):
        return [_FALLBACK if reply.code == "unknown_op" else durability_error(reply)] * count
    results = reply.get("results")
    if type(results) is not list or len(results) != count:
        error = ControlError("bad_reply", f"publish_many reply without {count} 'results'")
        return [error] * count
    outcomes: list[int | ControlError] = []
    for result in results:
        if type(result) is int and 0 <= result <= MAX_INT:
            outcomes.append(result)
        elif type(result) is dict:
            code, message = result.get("code"), result.get("message")
            outcomes.append(durability_error(ControlError(str(code or "error"), str(message or ""))))
        else:
            outcomes.append(
                ControlError("bad_reply", f"publish_many result neither a seq nor an error: {result!r:.60}")
            )
    return outcomes


def commit_chunked(
    matcher: ReplyMatcher,
    messages: Sequence[tuple[bytes, bytes]],
    window: int,
    timeout: float,
    endpoint: str,
    after: str | None = None,
) -> Flow[list[int | ControlError]]:
    """:func:`commit_pipelined` with ``publish_many`` requests: chunks of at most ``window // 2``
    messages (so two or more requests are in flight: the broker commits one while the client
    reads the other's reply and sends the next; at most :data:`MANY_MESSAGES` and about
    :data:`MANY_BYTES` each), no more than ``window`` messages unanswered (or one chunk). A
    chunk the broker answers with ``unknown_op`` gets :data:`_FALLBACK` per message and no more
    chunks are sent (those get it too), unless the broker stopped answering: then the ones
    not committed are ``not_sent``."""
    count = len(messages)
    results: list[int | ControlError | None] = [None] * count
    chunks = _chunks(messages, max(1, min(MANY_MESSAGES, window // 2)), results)
    first = matcher.ids(len(chunks)).start
    sent = unanswered = 0  # chunks sent; messages unanswered
    pending: set[int] = set()
    unknown = False
    deadline = time.monotonic() + timeout
    for _ in range(_STEPS):
        if sent < len(chunks) and not unknown:
            batch: list[list[bytes]] = []
            flying = unanswered
            for at in range(sent, len(chunks)):
                indexes, pairs = chunks[at]
                if flying and flying + len(indexes) > window:
                    break
                batch.append([b"", encode_request("publish_many", {"messages": pairs}, first + at)])
                flying += len(indexes)
            done = (yield SendMany(batch)) if batch else 0
            for at in range(sent, sent + done):
                pending.add(at)
                unanswered += len(chunks[at][0])
            sent += done
        if not pending and (sent == len(chunks) or unknown):
            break
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        received = yield ReceiveMany(remaining, max(1, len(pending)))
        for frames in received:
            answered = matcher.answer(frames)
            if answered is None:
                continue
            request_id, reply = answered
            at = request_id - first if type(request_id) is int else -1
            if at not in pending:
                continue  # a late reply to an earlier request, or a repeat
            pending.discard(at)
            indexes = chunks[at][0]
            for index, outcome in zip(indexes, _many_results(reply, len(indexes)), strict=True):
                results[index] = outcome
            unknown = unknown or (isinstance(reply, ControlError) and reply.code == "unknown_op")
            unanswered -= len(indexes)
            deadline = time.monotonic() + timeout
    else:  # pragma: no cover (bounded by design)
        raise AssertionError("a client flow did not end")
    if pending and after is not None:
        yield Reconnect(after)
    elif sent:
        yield Settle()
    gone = ControlError("unanswered", f"no reply from {endpoint} within {timeout:g} s: outcome unknown")
    never = ControlError("not_sent", f"not sent: {endpoint} stopped answering")
    fallback = _FALLBACK if unknown and not pending else never
    for at in pending:
        for index in chunks[at][0]:
            results[index] = gone
    return [fallback if result is None or result is _FALLBACK else result for result in results]


def connect_any(rotation: Rotation, order: list[str], timeout: float) -> Flow[None]:
    """A publisher's connection: connect to each endpoint of ``order`` in turn until one's
    subscription arrives within ``timeout`` seconds (what the broker's XSUB sends first)."""
    for endpoint in order:
        yield Reconnect(endpoint)
        deadline = time.monotonic() + timeout
        try:
            for _ in range(_STEPS):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                frames = yield Receive(remaining)
                # a subscription (0x01), not the unsubscription XPUB queues when a lost broker's
                # connection is closed: with that, the new broker would not be listening yet
                if frames is not None and frames[0][:1] == b"\x01":
                    yield Settle()
                    return
        except BrokerGone:  # it went away while we waited: the next one
            continue
    where = rotation.describe() if len(order) > 1 else order[0]
    raise BrokerUnavailableError(where, timeout)


def publisher_failover(publisher: PublisherCore, timeout: float) -> Flow[None]:
    """The publisher's broker went away: count what it may have lost, then connect to the
    next broker that answers (round robin)."""
    rotation = publisher.rotation
    gone = rotation.current
    lost = publisher._lost_at_failover()
    yield from connect_any(rotation, rotation.following(), timeout)
    _log.warning(
        "exesdb publisher %s: broker %s went away (up to %d messages possibly lost); now publishing to %s",
        publisher.pub_id,
        gone,
        lost,
        rotation.current,
    )


def subscriber_failover(core: SubscriberCore, rotation: Rotation, timeout: float) -> Flow[None]:
    """The subscriber's broker went away: keep what it had delivered, then subscribe at the next
    broker that confirms (round robin); from there on live messages at or below the last
    ``seq`` seen per (pub, topic) are duplicates, skipped and counted."""
    gone = rotation.current
    yield ReadHeld()  # what the lost broker delivered before it went is still ours to read
    core.bridge()
    for endpoint in rotation.following():
        yield Reconnect(endpoint)
        try:
            yield from probe(core, timeout, endpoint)
        except BrokerUnavailableError:  # BrokerGone included: the next one
            continue
        core.failovers += 1
        _log.warning("exesdb subscriber: broker %s went away; now subscribed at %s", gone, endpoint)
        return
    raise BrokerUnavailableError(rotation.describe(), timeout)


def probe_any(core: SubscriberCore, rotation: Rotation, timeout: float) -> Flow[None]:
    """:func:`probe`, at the next broker that confirms when the one in use does not."""
    try:
        yield from probe(core, timeout, rotation.current)
    except BrokerUnavailableError:  # a wrong key (AuthenticationError) is no reason to move on
        yield from subscriber_failover(core, rotation, timeout)


def control_failover(
    matcher: ReplyMatcher,
    rotation: Rotation,
    op: str,
    args: Mapping[str, Any] | None,
    timeout: float,
    retry: bool,
) -> Flow[dict[str, Any]]:
    """A control request to the first of the brokers that answers, starting with the one in
    use. With ``retry`` false (a durable publish: the broker may have committed it), an
    unanswered request is not sent again; the next request goes to the next broker."""
    order = rotation.following()
    for attempt, endpoint in enumerate([rotation.current, *order[:-1]]):
        if attempt:
            yield Reconnect(endpoint)
        try:
            reply = yield from control_request(matcher, op, args, timeout, endpoint)
        except BrokerUnavailableError:
            if not retry:
                yield Reconnect(order[0])
                raise
            continue
        return reply
    raise BrokerUnavailableError(rotation.describe(), timeout, "broker control endpoint")
