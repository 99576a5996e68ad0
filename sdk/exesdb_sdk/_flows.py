"""Client operations written once, apart from I/O, and the two drivers that run them.

A flow is a generator: it yields the step it needs (wait for the broker to confirm the
subscriptions, send a control request and get its reply, read what the socket holds) and is
sent the step's result, or thrown its exception. :func:`run` drives a flow with a blocking
``perform``, :func:`arun` with an awaitable one; the sync and asyncio clients supply only
``perform``. Cleanup lives in the flow (``except``/``finally``), so it happens whichever
driver runs it and whatever a step raised. (The shape of httpx's ``auth_flow``.)
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Generator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, TypeVar

from .durable import ReplayFrom, durability_error
from .errors import ControlError
from .instances import Instance

if TYPE_CHECKING:
    from .subscriber import SubscriberCore

__all__ = ["Flow", "ReadHeld", "Request", "Step", "WaitReady", "arun", "catch_up", "run", "subscribe_durable"]

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


Step = WaitReady | Request | ReadHeld
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
