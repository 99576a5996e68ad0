"""exesdb_sdk.observe: colour-coded observability lines, banners, filtering, plain and JSON output."""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from typing import Any, get_args

import pytest
from exesdb_sdk.errors import ConfigError
from exesdb_sdk.observe import (
    CATEGORIES,
    Category,
    ObservabilityHandler,
    banner,
    emit,
    setup_observability,
    teardown_observability,
)

LOGGER = "exesdb_test_observe"
ANSI = re.compile(r"\x1b\[[0-9;]*m")
PLAIN_LINE = re.compile(r"^\d\d:\d\d:\d\d (DEBUG|INFO|WARNING|ERROR|CRITICAL) ")

ACTIVATION = {
    "topic": '"my_store:stream_name"',
    "store": "my_store",
    "scheduler": 2,
    "thread": "emitter-3",
    "pid": "#PID<0.511.0>",
    "subscriber": "#PID<0.312.0>",
}
TERMINATION = {
    "reason": ":shutdown",
    "store": "my_store",
    "selector": "stream_name",
    "subscriber": "#PID<0.312.0>",
    "pid": "#PID<0.511.0>",
    "thread": "emitter-3",
}
ROWS = {
    "activation": [
        ("Topic:      ", '"my_store:stream_name"'),
        ("Store:      ", "my_store"),
        ("Scheduler:  ", "2"),
        ("Thread:     ", "emitter-3"),
        ("PID:        ", "#PID<0.511.0>"),
        ("Subscriber: ", "#PID<0.312.0>"),
    ],
    "termination": [
        ("Reason:     ", ":shutdown"),
        ("Store:      ", "my_store"),
        ("Selector:   ", "stream_name"),
        ("Subscriber: ", "#PID<0.312.0>"),
        ("PID:        ", "#PID<0.511.0>"),
        ("Thread:     ", "emitter-3"),
    ],
}
LINES: dict[str, str] = {
    "success": "🩺 SUBSCRIBED to health events for store: my_store",
    "failure": "🏥 HEALTH IMPACT: my_store:x is UNHEALTHY (registration_failed)",
    "action": "📈 METRICS EVENT: my_store -> events_per_second=1250 @2025-07-27T11:30:00Z",
    "health": "📡 HEALTH EVENT: my_store:x -> registration_success (node=n1)",
}
# The SGR codes each category's style must produce on a truecolor terminal: white text on
# green, red, dark orange (256-colour 208, amber) and cyan.
SGR = {"success": "37;42", "failure": "37;41", "action": "37;48;5;208", "health": "37;46"}


class TtyStringIO(io.StringIO):
    """A StringIO that says it is a terminal."""

    def isatty(self) -> bool:
        return True


class ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No observe variables, a truecolor terminal description, and no leftover handlers."""
    for name in (
        "EXESDB_OBSERVE_CATEGORIES",
        "EXESDB_OBSERVE_OUTPUT",
        "NO_COLOR",
        "FORCE_COLOR",
        "TTY_COMPATIBLE",
        "TTY_INTERACTIVE",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TERM", "xterm-256color")
    monkeypatch.setenv("COLORTERM", "truecolor")
    yield
    teardown_observability(LOGGER)


@pytest.fixture
def log() -> logging.Logger:
    return logging.getLogger(LOGGER + ".emitter")


def attach(**kwargs: Any) -> tuple[io.StringIO, ObservabilityHandler]:
    stream: io.StringIO = kwargs.pop("stream", None) or io.StringIO()
    return stream, setup_observability(stream=stream, logger=LOGGER, **kwargs)


def test_categories_match_the_literal() -> None:
    assert get_args(Category) == CATEGORIES == ("success", "failure", "action", "health")


# --------------------------------------------------------------------------- rich


def test_rich_styles_each_category(log: logging.Logger) -> None:
    from exesdb_sdk.observe import _STYLES
    from rich.color import ColorSystem
    from rich.style import Style

    seen = {}
    for category, text in LINES.items():
        stream, handler = attach(output="rich")
        assert handler.output == "rich"
        emit(log, category, text)  # type: ignore[arg-type]
        out = stream.getvalue()
        # Exactly what rich renders for the category's style around the padded text...
        assert Style.parse(_STYLES[category]).render(f" {text} ", color_system=ColorSystem.TRUECOLOR) in out
        # ...and that style really is white on the design document's colour.
        assert f"\x1b[{SGR[category]}m {text} \x1b[0m" in out
        assert ANSI.sub("", out).rstrip("\n").endswith(f" {text} ")
        assert re.match(r"^\d\d:\d\d:\d\d ", ANSI.sub("", out))  # the time prefix
        seen[category] = re.findall(r"\x1b\[([0-9;]*)m " + re.escape(text), out)
    assert len({tuple(codes) for codes in seen.values()}) == len(CATEGORIES)


def test_rich_action_is_amber_on_16_colour_terminals(log: logging.Logger, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TERM", "xterm")
    monkeypatch.delenv("COLORTERM")
    stream, _ = attach(output="rich")
    emit(log, "action", "broadcasting")
    emit(log, "failure", "terminated")
    out = stream.getvalue()
    assert "\x1b[37;43m broadcasting " in out  # yellow, not rich's bright-red stand-in for 208
    assert "\x1b[37;41m terminated " in out


def test_auto_is_rich_on_a_tty_and_plain_otherwise(log: logging.Logger) -> None:
    tty, handler = attach(stream=TtyStringIO())
    assert handler.output == "rich"
    emit(log, "health", "status changed")
    assert f"\x1b[{SGR['health']}m status changed " in tty.getvalue()

    pipe, handler = attach(stream=io.StringIO())
    assert handler.output == "plain"
    emit(log, "health", "status changed")
    assert "\x1b" not in pipe.getvalue()
    assert "status changed" in pipe.getvalue()


def test_rich_shows_non_info_levels_and_uncategorised_records(log: logging.Logger) -> None:
    stream, _ = attach(output="rich")
    emit(log, "failure", "store down", level=logging.ERROR)
    log.info("no category here")
    text = ANSI.sub("", stream.getvalue())
    assert re.search(r"^\d\d:\d\d:\d\d ERROR  store down $", text, re.M)
    assert re.search(r"^\d\d:\d\d:\d\d no category here$", text, re.M)


def test_rich_banner_stays_aligned_after_a_level_name(log: logging.Logger) -> None:
    stream, _ = attach(output="rich")
    banner(log, "termination", TERMINATION, level=logging.WARNING)
    lines = ANSI.sub("", stream.getvalue()).splitlines()
    assert re.match(r"^\d\d:\d\d:\d\d WARNING ╔", lines[0])
    column = lines[0].index("╔")
    assert all(line[:column].strip() == "" for line in lines[1:])
    assert [line[column] for line in lines[1:]] == ["💀", "╠", "R", "S", "S", "S", "P", "T", "╚"]


# --------------------------------------------------------------------------- filtering


@pytest.mark.parametrize("output", ["plain", "rich", "json"])
def test_switched_off_categories_print_nothing(log: logging.Logger, output: str) -> None:
    stream, handler = attach(output=output, categories=["health", "success"])
    assert handler.categories == frozenset({"health", "success"})
    emit(log, "failure", "FAILURE-LINE")
    emit(log, "action", "ACTION-LINE")
    banner(log, "termination", TERMINATION)
    assert stream.getvalue() == ""
    emit(log, "health", "HEALTH-LINE")
    banner(log, "activation", ACTIVATION)
    log.warning("UNCATEGORISED-LINE")
    out = stream.getvalue()
    assert "HEALTH-LINE" in out
    assert "EMITTER WORKER ACTIVATION" in out
    assert "UNCATEGORISED-LINE" in out
    assert "FAILURE-LINE" not in out and "ACTION-LINE" not in out and "TERMINATION" not in out


def test_no_categories_shows_only_uncategorised(log: logging.Logger) -> None:
    stream, handler = attach(output="plain", categories=[])
    assert handler.shows(None) and not any(handler.shows(c) for c in CATEGORIES)
    for category, text in LINES.items():
        emit(log, category, text)  # type: ignore[arg-type]
    log.info("still here")
    assert stream.getvalue().splitlines()[0].endswith("INFO still here")
    assert len(stream.getvalue().splitlines()) == 1


# --------------------------------------------------------------------------- plain


def test_plain_lines(log: logging.Logger) -> None:
    stream, _ = attach(output="plain")
    for category, text in LINES.items():
        emit(log, category, text)  # type: ignore[arg-type]
    emit(log, "failure", "100% down", level=logging.WARNING)  # not %-formatted again
    log.info("uncategorised %s", "record")
    out = stream.getvalue()
    assert "\x1b" not in out
    lines = out.splitlines()
    assert len(lines) == 6
    for line, (category, text) in zip(lines, LINES.items(), strict=False):
        assert re.fullmatch(rf"\d\d:\d\d:\d\d INFO \[{category}\] {re.escape(text)}", line)
    assert re.fullmatch(r"\d\d:\d\d:\d\d WARNING \[failure\] 100% down", lines[4])
    assert re.fullmatch(r"\d\d:\d\d:\d\d INFO uncategorised record", lines[5])


def test_plain_includes_tracebacks(log: logging.Logger) -> None:
    stream, _ = attach(output="plain")
    try:
        raise KeyError("lost-key")
    except KeyError:
        log.exception("worker crashed")
    out = stream.getvalue()
    assert re.search(r"^\d\d:\d\d:\d\d ERROR worker crashed\nTraceback", out, re.M)
    assert "KeyError: 'lost-key'" in out


def test_plain_falls_back_to_ascii_on_legacy_encodings(log: logging.Logger) -> None:
    raw = io.BytesIO()
    stream = io.TextIOWrapper(raw, encoding="ascii", newline="\n")
    setup_observability(stream=stream, output="plain", logger=LOGGER)
    emit(log, "health", "🩺 SUBSCRIBED")
    banner(log, "termination", TERMINATION)
    stream.flush()
    out = raw.getvalue().decode("ascii")
    assert "\\U0001fa7a SUBSCRIBED" in out
    assert "+" + "=" * 70 + "+" in out
    assert "EMITTER WORKER TERMINATION" in out and "Reason:     :shutdown" in out


# --------------------------------------------------------------------------- json


def test_json_lines(log: logging.Logger) -> None:
    stream, _ = attach(output="json")
    before = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    emit(
        log,
        "health",
        LINES["health"],
        store="my_store",
        subscription="my_store:x",
        status="healthy",
        count=5,
        ratio=0.5,
        nan=float("nan"),
        tags={"a"},
        nested={"deep": [1, ("t", None)], 3: b"x"},
        obj=ObservabilityHandler,
    )
    banner(log, "termination", TERMINATION, level=logging.WARNING)
    log.info("plain record")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert len(lines) == 3
    event, term, plain = lines

    assert event["category"] == "health"
    assert event["msg"] == LINES["health"]
    assert event["level"] == "info"
    assert event["logger"] == LOGGER + ".emitter"
    assert "banner" not in event
    assert event["fields"] == {
        "store": "my_store",
        "subscription": "my_store:x",
        "status": "healthy",
        "count": 5,
        "ratio": 0.5,
        "nan": "nan",
        "tags": ["a"],
        "nested": {"deep": [1, ["t", None]], "3": "b'x'"},
        "obj": str(ObservabilityHandler),
    }
    assert event["ts"].endswith("Z")
    ts = dt.datetime.fromisoformat(event["ts"].replace("Z", "+00:00"))
    assert ts.utcoffset() == dt.timedelta(0)
    assert before <= ts <= dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1)

    assert term["banner"] == "termination"
    assert term["category"] == "failure"
    assert term["level"] == "warning"
    assert term["fields"] == TERMINATION
    assert term["msg"].startswith("EMITTER WORKER TERMINATION reason=:shutdown store=my_store")

    assert plain["category"] is None and plain["fields"] == {} and "banner" not in plain


# --------------------------------------------------------------------------- banners


@pytest.mark.parametrize("output", ["plain", "rich"])
@pytest.mark.parametrize("kind", ["activation", "termination"])
def test_banners_render_every_field(log: logging.Logger, output: str, kind: str) -> None:
    fields = ACTIVATION if kind == "activation" else TERMINATION
    stream, _ = attach(output=output)
    banner(log, kind, fields)  # type: ignore[arg-type]
    raw = stream.getvalue()
    if output == "plain":
        assert "\x1b" not in raw
        assert all(PLAIN_LINE.match(line) for line in raw.splitlines())
        category = "success" if kind == "activation" else "failure"
        body = [line.split(f"INFO [{category}] ", 1)[1] for line in raw.splitlines()]
    else:
        border = "\x1b[32m┌" if kind == "activation" else "\x1b[31m╔"  # green / red boxes
        assert border in raw
        body = [line[9:] for line in ANSI.sub("", raw).splitlines()]  # past "HH:MM:SS " / indent
    corners = ("┌┐", "├┤", "└┘") if kind == "activation" else ("╔╗", "╠╣", "╚╝")
    title = "★ EMITTER WORKER ACTIVATION ★" if kind == "activation" else "💀 EMITTER WORKER TERMINATION 💀"
    fill = "─" if kind == "activation" else "═"
    assert body[0] == corners[0][0] + fill * 70 + corners[0][1]
    assert body[1] == title
    assert body[2] == corners[1][0] + fill * 70 + corners[1][1]
    assert body[3:-1] == [label + value for label, value in ROWS[kind]]
    assert body[-1] == corners[2][0] + fill * 70 + corners[2][1]


def test_banner_record_for_other_handlers(log: logging.Logger) -> None:
    catcher = ListHandler()
    log.addHandler(catcher)
    log.setLevel(logging.INFO)
    try:
        banner(log, "activation", {"topic": "s:x", "store": "my store", "pid": "#PID<0.1.0>"})
    finally:
        log.removeHandler(catcher)
        log.setLevel(logging.NOTSET)
    (record,) = catcher.records
    assert record.getMessage() == 'EMITTER WORKER ACTIVATION topic=s:x store="my store" pid=#PID<0.1.0>'
    assert record.category == "success"  # type: ignore[attr-defined]
    assert record.banner == "activation"  # type: ignore[attr-defined]
    assert record.fields == {"topic": "s:x", "store": "my store", "pid": "#PID<0.1.0>"}  # type: ignore[attr-defined]
    assert record.funcName == "test_banner_record_for_other_handlers"


def test_emit_record_carries_category_and_fields(log: logging.Logger) -> None:
    catcher = ListHandler()
    log.addHandler(catcher)
    log.setLevel(logging.DEBUG)
    try:
        emit(log, "health", "📈 HEALTH SUMMARY: 5/7 at 100%", level=logging.DEBUG, store="s", healthy=5)
    finally:
        log.removeHandler(catcher)
        log.setLevel(logging.NOTSET)
    (record,) = catcher.records
    assert record.getMessage() == "📈 HEALTH SUMMARY: 5/7 at 100%"
    assert record.levelno == logging.DEBUG
    assert record.category == "health"  # type: ignore[attr-defined]
    assert record.fields == {"store": "s", "healthy": 5}  # type: ignore[attr-defined]
    assert record.funcName == "test_emit_record_carries_category_and_fields"


def test_bad_category_or_banner_kind(log: logging.Logger) -> None:
    with pytest.raises(ConfigError, match="category: 'warning' is not one of"):
        emit(log, "warning", "x")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="banner kind: 'restart'"):
        banner(log, "restart", {})  # type: ignore[arg-type]


# --------------------------------------------------------------------------- setup


def test_setup_twice_does_not_duplicate(log: logging.Logger) -> None:
    target = logging.getLogger(LOGGER)
    target.setLevel(logging.ERROR)
    try:
        first, h1 = attach(output="plain")
        second, h2 = attach(output="plain", level=logging.DEBUG)
        assert h1 is not h2
        assert [h for h in target.handlers if isinstance(h, ObservabilityHandler)] == [h2]
        assert target.level == logging.DEBUG
        emit(log, "success", "once", level=logging.DEBUG)
        assert first.getvalue() == ""
        assert len(second.getvalue().splitlines()) == 1

        teardown_observability(LOGGER)
        assert not [h for h in target.handlers if isinstance(h, ObservabilityHandler)]
        assert target.level == logging.ERROR  # the level from before the first setup
        teardown_observability(LOGGER)  # nothing attached: no error
    finally:
        target.setLevel(logging.NOTSET)


def test_setup_leaves_handlers_it_did_not_attach(log: logging.Logger) -> None:
    target = logging.getLogger(LOGGER)
    mine = ObservabilityHandler(io.StringIO(), output="plain")
    target.addHandler(mine)
    try:
        attach(output="plain")
        attach(output="plain")
        teardown_observability(LOGGER)
        assert [h for h in target.handlers if isinstance(h, ObservabilityHandler)] == [mine]
    finally:
        target.removeHandler(mine)


def test_env_variables(log: logging.Logger, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EXESDB_OBSERVE_CATEGORIES", " Health, failure ,")
    monkeypatch.setenv("EXESDB_OBSERVE_OUTPUT", "json")
    stream, handler = attach()
    assert handler.output == "json"
    assert handler.categories == frozenset({"health", "failure"})
    emit(log, "action", "hidden")
    emit(log, "failure", "shown")
    (line,) = stream.getvalue().splitlines()
    assert json.loads(line)["msg"] == "shown"

    # Arguments win over the environment.
    stream, handler = attach(categories=["action"], output="plain")
    assert handler.output == "plain" and handler.categories == frozenset({"action"})
    emit(log, "action", "now shown")
    assert stream.getvalue().endswith("INFO [action] now shown\n")

    monkeypatch.setenv("EXESDB_OBSERVE_CATEGORIES", "")
    monkeypatch.setenv("EXESDB_OBSERVE_OUTPUT", "rich")
    _, handler = attach()
    assert handler.categories is None and handler.output == "rich"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("EXESDB_OBSERVE_CATEGORIES", "health,metrics"),
        ("EXESDB_OBSERVE_CATEGORIES", "health;failure"),
        ("EXESDB_OBSERVE_OUTPUT", "yaml"),
        ("EXESDB_OBSERVE_OUTPUT", "json\nplain"),
    ],
)
def test_bad_env_variables(log: logging.Logger, monkeypatch: pytest.MonkeyPatch, variable: str, value: str) -> None:
    _, before = attach(output="plain", categories=None)
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as caught:
        setup_observability(stream=io.StringIO(), logger=LOGGER)
    message = str(caught.value)
    assert message.startswith(variable + ": ")
    assert "\n" not in message
    assert before in logging.getLogger(LOGGER).handlers  # a failed setup keeps the old handler


def test_bad_arguments() -> None:
    with pytest.raises(ConfigError, match=r"^output: 'html' is not one of auto, rich, plain, json$"):
        setup_observability(stream=io.StringIO(), output="html", logger=LOGGER)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"^categories: 'metrics' is not one of"):
        ObservabilityHandler(io.StringIO(), categories=["health", "metrics"])
    handler = ObservabilityHandler(io.StringIO(), categories="health,action")  # a str is a comma list
    assert handler.categories == frozenset({"health", "action"})


# --------------------------------------------------------------------------- robustness


class BrokenStream(io.StringIO):
    def write(self, s: str) -> int:
        raise OSError("disk full")


@pytest.mark.parametrize("output", ["plain", "rich", "json"])
def test_emit_never_raises(log: logging.Logger, output: str) -> None:
    failed: list[logging.LogRecord] = []

    class Recording(ObservabilityHandler):
        def handleError(self, record: logging.LogRecord) -> None:
            failed.append(record)

    handler = Recording(BrokenStream(), output=output)  # type: ignore[arg-type]
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        emit(log, "failure", "cannot be written")
        banner(log, "activation", ACTIVATION)
    finally:
        log.removeHandler(handler)
        log.setLevel(logging.NOTSET)
    assert [r.getMessage() for r in failed] == ["cannot be written", failed[1].getMessage()]
    assert failed[1].banner == "activation"  # type: ignore[attr-defined]


def test_unprintable_field_values(log: logging.Logger) -> None:
    class Unprintable:
        def __str__(self) -> str:
            raise RuntimeError("no")

    stream, _ = attach(output="json")
    emit(log, "action", "forwarding", target=Unprintable())
    banner(log, "activation", {"pid": Unprintable()})
    events = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert events[0]["fields"] == {"target": "<unprintable Unprintable>"}
    assert events[1]["msg"] == 'EMITTER WORKER ACTIVATION pid="<unprintable Unprintable>"'


def test_import_does_not_import_rich() -> None:
    script = textwrap.dedent(
        """
        import io, logging, sys
        import exesdb_sdk.observe as observe
        assert "rich" not in sys.modules, "import"
        log = logging.getLogger("exesdb")
        for output in ("plain", "json"):
            observe.setup_observability(stream=io.StringIO(), output=output)
            observe.emit(log, "health", "x")
            observe.banner(log, "activation", {"pid": 1})
            assert "rich" not in sys.modules, output
        observe.setup_observability(stream=io.StringIO(), output="rich")
        print("rich" in sys.modules)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "True"  # and the check does see rich once a rich handler exists
