"""``exesdb tail``: follow live messages."""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal

from exesdb_sdk import ControlClient, Instance, ReceiveTimeoutError, Subscriber
from exesdb_sdk.durable import JOURNAL_GAP_TYPE
from exesdb_sdk.errors import ExesdbError, ProtocolError
from exesdb_sdk.protocol import Message

from .render import make_console, pretty, to_json, to_raw

__all__ = ["EXIT_INTERRUPTED", "EXIT_TIMEOUT", "Output", "parse_since", "run_tail"]

EXIT_TIMEOUT: Final = 124
EXIT_INTERRUPTED: Final = 130
Output = Literal["pretty", "json", "raw"]


def _subscriptions(instances: Sequence[str], topics: Sequence[str]) -> list[tuple[Instance | None, str]]:
    """(instance, prefix) pairs: every instance (or all) times every topic prefix (or none).

    A topic given in full (``ex_esdb_health/store_health:``) names its own instance."""
    chosen = [Instance.resolve(name) for name in instances]
    pairs: list[tuple[Instance | None, str]] = []
    for topic in topics:
        head, sep, rest = topic.partition("/")
        if sep:
            try:
                pairs.append((Instance.resolve(head), rest))
                continue
            except ExesdbError:
                pass
        for instance in chosen or list(Instance):
            pairs.append((instance, topic))
    if not topics:
        pairs = [(instance, "") for instance in chosen] if chosen else [(None, "")]
    return pairs


_DURATION: Final = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)\s*$")
_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}


def parse_since(text: str) -> datetime | timedelta:
    """``1h``, ``30m``, ``90s``, ``2d``, ``1w`` ago, or an ISO-8601 time (UTC when no zone is given)."""
    match = _DURATION.match(text)
    if match:
        return timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2)])
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ExesdbError(
            f"--since {text!r} is neither a duration (90s, 30m, 1h, 2d, 1w) nor an ISO-8601 time"
        ) from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def _replay_from(replay: tuple[str, Any] | None) -> Any:
    if replay is None:
        return None
    kind, value = replay
    if kind == "since":
        return parse_since(value)
    if kind == "seq":
        return int(value)
    return "earliest"


def _excluded(topic: str, subtopic: str, excludes: Sequence[str]) -> bool:
    return any(subtopic.startswith(prefix) or topic.startswith(prefix) for prefix in excludes)


def run_tail(
    *,
    instances: Sequence[str],
    topics: Sequence[str],
    excludes: Sequence[str],
    count: int | None,
    timeout: float | None,
    output: Output,
    timestamps: bool,
    backend: str | None,
    secret: str | None,
    connect_timeout: float,
    client_key: str | None = None,
    server_key: str | None = None,
    replay: tuple[str, Any] | None = None,
    last: bool = False,
    control: str | None = None,
) -> int:
    """Follow messages until ``count`` (exit 0), ``timeout`` (exit 124) or Ctrl-C (exit 0; 130
    with a line saying how many arrived when ``count`` was not reached).

    ``timeout`` counts from the start and so also bounds the wait for the broker (at most
    ``connect_timeout``). With ``replay`` (``("since", "1h")``, ``("seq", 42)`` or
    ``("start", None)``) each instance catches up from the broker's journal first; with ``last``
    it starts with the last values."""
    started = time.monotonic()
    connect_timeout = min(connect_timeout, timeout) if timeout else connect_timeout
    pairs = _subscriptions(instances, topics)
    replay_from = _replay_from(replay)
    if replay_from is not None and any(instance is None for instance, _ in pairs):
        raise ExesdbError("name the instances to replay, e.g. exesdb tail audit --since 1h")
    if last:
        pairs = [(i, p) for instance, p in pairs for i in ([instance] if instance is not None else list(Instance))]
    console = make_console(force_colour=True) if output == "pretty" else None

    def on_gap(message: Message, missing: int) -> None:
        if message.type == JOURNAL_GAP_TYPE:  # the broker's marker, met in a replay
            where, why = message.data.get("instance", "?"), message.data.get("reason", "")
            line = f"{missing} message(s) of {where} not journaled ({why})"
        else:
            line = f"{missing} message(s) missing on {message.topic} (sequence gap)"
        print(f"exesdb tail: {line}", file=sys.stderr, flush=True)

    def on_error(error: ProtocolError, frames: Sequence[bytes]) -> None:
        topic = frames[0][:80].decode("utf-8", "replace") if frames else "?"
        print(f"exesdb tail: skipped a message on {topic}: {error}", file=sys.stderr, flush=True)

    if replay_from is not None or last:
        # The subscriber asks the control endpoint with its own 5 s timeout: check it answers in ours.
        with ControlClient(control, timeout=connect_timeout, client_key=client_key, server_key=server_key) as probe:
            probe.ping()
    with Subscriber(
        backend,
        subscribe_timeout=connect_timeout,
        secret=secret,
        on_gap=on_gap,
        on_error=on_error,
        client_key=client_key,
        server_key=server_key,
        control=control,
    ) as sub:
        if replay_from is None and not last:
            for instance, prefix in pairs:
                sub.subscribe(instance, prefix, wait=False)
            sub.wait_ready()
        else:
            for instance, prefix in pairs:
                sub.subscribe(instance, prefix, replay_from=replay_from, with_last=last)
        names = ", ".join(
            f"{i.value if i else 'all instances'}/{p}" if p else (i.value if i else "all instances") for i, p in pairs
        )
        print(f"exesdb tail: following {names} on {sub.backend}", file=sys.stderr, flush=True)
        seen = 0
        deadline = None if timeout is None else started + timeout
        previous = time.time()
        try:
            while count is None or seen < count:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return EXIT_TIMEOUT
                try:
                    message = sub.recv(remaining)
                except ReceiveTimeoutError:
                    return EXIT_TIMEOUT
                if excludes and _excluded(message.topic, message.subtopic, excludes):
                    continue
                seen += 1
                if output == "json":
                    print(to_json(message), flush=True)
                elif output == "raw":
                    print(to_raw(message), flush=True)
                else:
                    assert console is not None
                    now = time.time()
                    text, style = pretty(message, received=now if timestamps else None, delta=now - previous)
                    previous = now
                    console.print(text, style=style, markup=False)
        except KeyboardInterrupt:
            if count is None:  # the usual way to stop following
                return 0
            plural = "" if count == 1 else "s"
            print(f"exesdb tail: interrupted: received {seen} of {count} message{plural}", file=sys.stderr, flush=True)
            return EXIT_INTERRUPTED
    return 0
