"""``exesdb publish``: send messages. Everything is checked before anything is sent."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from typing import Any, Final

from exesdb_sdk import Instance, Publisher
from exesdb_sdk.errors import ExesdbError
from exesdb_sdk.messages import lookup
from exesdb_sdk.protocol import Encoder

__all__ = ["EXIT_INTERRUPTED", "parse_payloads", "run_publish"]

EXIT_INTERRUPTED: Final = 130
_PROGRESS_FROM: Final = 1000
_USAGE: Final = "usage: exesdb publish INSTANCE SUBTOPIC [DATA]"


def _parse(text: str, where: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ExesdbError(f"{where} is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})") from None
    if not isinstance(value, dict):
        raise ExesdbError(f"{where} must be a JSON object (the message's data), not {type(value).__name__}")
    return value


def parse_payloads(data: str | None, *, lines: bool, stdin: str | None) -> list[dict[str, Any]]:
    """The data maps to send: DATA, else stdin as one document, or one per line with ``lines``."""
    if data is not None:
        if lines:
            raise ExesdbError("--lines reads stdin: give no DATA argument with it")
        return [_parse(data, "DATA")]
    text = stdin if stdin is not None else ""
    if lines:
        payloads = [_parse(line, f"stdin line {n}") for n, line in enumerate(text.splitlines(), 1) if line.strip()]
        if not payloads:
            raise ExesdbError("stdin has no lines to publish")
        return payloads
    if not text.strip():
        raise ExesdbError("no DATA given and stdin is empty")
    return [_parse(text, "stdin")]


def _check_subtopic(subtopic: str, data: str | None) -> None:
    """A JSON object where the sub-topic goes means the sub-topic was left out (DATA took its place)."""
    if data is None and subtopic.lstrip().startswith("{"):
        shown = subtopic if len(subtopic) <= 40 else subtopic[:37] + "..."
        raise ExesdbError(f"missing SUBTOPIC: {shown!r} looks like DATA; {_USAGE}")


def _read_stdin(lines: bool) -> str:
    if sys.stdin.isatty():  # a terminal gives no sign that anything waits for it
        what = "DATA, one JSON object per line," if lines else "DATA"
        print(f"exesdb publish: reading {what} from stdin (Ctrl-D to end)...", file=sys.stderr, flush=True)
    return sys.stdin.read()


def _check(instance: str, subtopic: str, type_name: str, payloads: Sequence[dict[str, Any]], max_size: int) -> None:
    """Raise a one-line error unless every payload can be sent as given."""
    cls = lookup(type_name)
    encoder = Encoder(src="check", max_message_size=max_size)
    topic = encoder.topic(instance, subtopic)
    for payload in payloads:
        if cls is not None:
            cls.from_data(payload)
        encoder.encode(topic, type_name, payload)


def run_publish(
    *,
    instance: str,
    subtopic: str,
    data: str | None,
    lines: bool,
    type_name: str,
    corr: str | None,
    count: int,
    rate: float | None,
    frontend: str | None,
    secret: str | None,
    connect_timeout: float,
    client_key: str | None = None,
    server_key: str | None = None,
    max_message_size: int,
    durable: bool = False,
    control: str | None = None,
) -> int:
    """Publish; return the exit status. Raises ExesdbError with a one-line message on bad input.

    ``connect_timeout`` bounds every wait for the broker, its control endpoint's included. Ctrl-C
    stops it with status 130 and a line saying how many of the messages were published."""
    _check_subtopic(subtopic, data)
    stdin = None if data is not None else _read_stdin(lines)
    payloads = parse_payloads(data, lines=lines, stdin=stdin)
    _check(instance, subtopic, type_name, payloads, max_message_size)
    total = len(payloads) * count
    interval = 1.0 / rate if rate else 0.0
    progress = None
    if total >= _PROGRESS_FROM and sys.stderr.isatty():
        from rich.progress import Progress

        progress = Progress(transient=True)
    with Publisher(
        frontend,
        connect_timeout=connect_timeout,
        control_timeout=connect_timeout,
        secret=secret,
        max_message_size=max_message_size,
        client_key=client_key,
        server_key=server_key,
        control=control,
    ) as pub:
        started = time.monotonic()
        task = progress.add_task("publishing", total=total) if progress else None
        if progress:
            progress.start()
        sent, interrupted = 0, False
        try:
            for _ in range(count):
                for payload in payloads:
                    if interval:
                        delay = started + sent * interval - time.monotonic()
                        if delay > 0:
                            time.sleep(delay)  # the requested pace, not a wait for a socket
                    seq = pub.publish(instance, subtopic, type_name, payload, corr=corr, durable=durable)
                    if durable:
                        print(seq, flush=True)
                    sent += 1
                    if progress is not None and task is not None and sent % 100 == 0:
                        progress.update(task, completed=sent)
        except KeyboardInterrupt:
            interrupted = True  # what was published so far is still flushed as the publisher closes
        finally:
            if progress:
                progress.stop()
    plural = "" if total == 1 else "s"
    where = f"{Instance.resolve(instance)}/{subtopic}"
    if interrupted:
        what = "journaled" if durable else "published"
        print(f"exesdb publish: interrupted: {what} {sent} of {total} message{plural} to {where}", file=sys.stderr)
        return EXIT_INTERRUPTED
    what = "journaled" if durable else "sent"
    print(f"exesdb publish: {what} {total} message{plural} to {where}", file=sys.stderr)
    return 0
