"""Colour-coded observability lines for emitter workers, on top of :mod:`logging`.

ExESDB's emitter workers log four kinds of line, each with its own colour:

=========  ==================  ====================================================
category   rich style          used for
=========  ==================  ====================================================
success    white on green      service activation, health subscriptions, successes
failure    white on red        termination events, errors, unhealthy states
action     white on amber      broadcasting, forwarding, worker creation, metrics
health     white on cyan       health event processing, status changes
=========  ==================  ====================================================

:func:`emit` and :func:`banner` log ordinary :class:`logging.LogRecord` objects that carry the
category (and structured ``fields``) as record attributes, so any handler can take them.
:class:`ObservabilityHandler` renders them: coloured with rich on a terminal, as plain text
lines in files and pipes, or as one JSON object per line::

    import logging
    from exesdb_sdk.observe import banner, emit, setup_observability

    setup_observability(categories=["health", "failure"])  # or EXESDB_OBSERVE_CATEGORIES
    log = logging.getLogger("exesdb.emitter")
    emit(log, "health", "🩺 SUBSCRIBED to health events for store: my_store", store="my_store")
    banner(log, "activation", {"topic": "my_store:stream_name", "store": "my_store"})

rich is imported only when a handler renders with it: importing this module does not import it.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import math
import os
import sys
import threading
import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Final, Literal, TextIO, cast, get_args

from .errors import ConfigError

if TYPE_CHECKING:
    from rich.console import Console
    from rich.text import Text

__all__ = [
    "CATEGORIES",
    "Category",
    "ObservabilityHandler",
    "banner",
    "emit",
    "setup_observability",
    "teardown_observability",
]

Category = Literal["success", "failure", "action", "health"]
"""The four kinds of observability line."""

CATEGORIES: Final[tuple[str, ...]] = ("success", "failure", "action", "health")
"""Every :data:`Category`, in documentation order."""

_Output = Literal["auto", "rich", "plain", "json"]
_OUTPUTS: Final[tuple[str, ...]] = get_args(_Output)
_BannerKind = Literal["activation", "termination"]
_BANNER_KINDS: Final[tuple[str, ...]] = get_args(_BannerKind)

ENV_CATEGORIES: Final = "EXESDB_OBSERVE_CATEGORIES"
ENV_OUTPUT: Final = "EXESDB_OBSERVE_OUTPUT"

_STYLES: Final[Mapping[str, str]] = {
    "success": "white on green",
    "failure": "white on red",
    "action": "white on dark_orange",  # amber
    "health": "white on cyan",
}
_AMBER_16: Final = "white on yellow"
"""The action style on 16-colour terminals, where rich maps dark_orange to bright red."""
_FEW: Final = frozenset({"standard", "windows"})
_LEVEL_STYLES: Final[Mapping[str, str]] = {
    "DEBUG": "dim",
    "WARNING": "yellow",
    "ERROR": "bold red",
    "CRITICAL": "bold white on red",
}

_WIDTH: Final = 72
"""Width of a banner box, borders included."""
_LABEL_WIDTH: Final = 12
"""``"Subscriber: "``: the column where banner values start."""
_ACRONYMS: Final = frozenset({"pid", "id", "ip", "os", "url", "uri", "utc"})
_MAX_DEPTH: Final = 8
"""Nesting depth of field values kept as JSON structure; deeper values are stringified."""


class _Box:
    """The characters of one banner box style."""

    def __init__(self, top: str, mid: str, bottom: str, fill: str, title: str) -> None:
        self.top, self.mid, self.bottom, self.fill, self.title = top, mid, bottom, fill, title

    def rule(self, ends: str) -> str:
        return ends[0] + self.fill * (_WIDTH - 2) + ends[1]


# (box, title) for each banner kind, in Unicode and in an ASCII fallback for legacy encodings.
_BOXES: Final[Mapping[tuple[str, bool], _Box]] = {
    ("activation", False): _Box("┌┐", "├┤", "└┘", "─", "★ EMITTER WORKER ACTIVATION ★"),
    ("termination", False): _Box("╔╗", "╠╣", "╚╝", "═", "💀 EMITTER WORKER TERMINATION 💀"),
    ("activation", True): _Box("++", "++", "++", "-", "* EMITTER WORKER ACTIVATION *"),
    ("termination", True): _Box("++", "++", "++", "=", "x EMITTER WORKER TERMINATION x"),
}
_TITLES: Final[Mapping[str, str]] = {
    "activation": "EMITTER WORKER ACTIVATION",
    "termination": "EMITTER WORKER TERMINATION",
}


# --------------------------------------------------------------------------- logging side


def emit(
    logger: logging.Logger,
    category: Category,
    text: str,
    *,
    level: int = logging.INFO,
    **fields: Any,
) -> None:
    """Log ``text`` as an observability line of ``category``.

    ``text`` is the finished line (it may start with an emoji); it is not %-formatted again.
    ``fields`` are structured values for JSON output (``store="s"``, ``status="healthy"``...).
    The record carries ``extra={"category": category, "fields": fields}``.

    Raises :class:`~exesdb_sdk.errors.ConfigError` when ``category`` is not one of
    :data:`CATEGORIES`.
    """
    if category not in CATEGORIES:
        raise ConfigError(f"category: {category!r} is not one of {', '.join(CATEGORIES)}")
    if logger.isEnabledFor(level):
        logger.log(level, text, extra={"category": category, "fields": fields}, stacklevel=2)


def banner(
    logger: logging.Logger,
    kind: Literal["activation", "termination"],
    fields: Mapping[str, Any],
    *,
    level: int = logging.INFO,
) -> None:
    """Log an emitter worker activation or termination banner.

    ``fields`` are the banner's rows in order (``topic``, ``store``, ``scheduler``, ``pid``,
    ``subscriber``... or ``reason``, ``selector``...); keys become labels (``pid`` → ``PID:``,
    ``subscriber_pid`` → ``Subscriber PID:``). The record's message is a one-line summary
    (``EMITTER WORKER ACTIVATION topic=... store=...``) for handlers that do not draw boxes; it
    carries ``extra={"category": "success"|"failure", "banner": kind, "fields": dict(fields)}``.

    Raises :class:`~exesdb_sdk.errors.ConfigError` when ``kind`` is not ``activation`` or
    ``termination``.
    """
    if kind not in _BANNER_KINDS:
        raise ConfigError(f"banner kind: {kind!r} is not one of {', '.join(_BANNER_KINDS)}")
    if not logger.isEnabledFor(level):
        return
    values = dict(fields)
    summary = " ".join([_TITLES[kind], *(f"{key}={_summary_value(v)}" for key, v in values.items())])
    category = "success" if kind == "activation" else "failure"
    logger.log(level, summary, extra={"category": category, "banner": kind, "fields": values}, stacklevel=2)


def _summary_value(value: Any) -> str:
    text = _str(value)
    if not text or any(c.isspace() or c in "\"'=" for c in text):
        return json.dumps(text, ensure_ascii=False)
    return text


# --------------------------------------------------------------------------- the handler


class ObservabilityHandler(logging.Handler):
    """Render observability records: rich on a terminal, plain lines or JSON lines elsewhere.

    ``stream`` defaults to :data:`sys.stderr`. ``categories`` keeps only records of those
    categories (``None``: all; a string is read as a comma list); records without a category
    are always shown. ``output``: ``"rich"`` (colours and boxes, rich is imported then),
    ``"plain"`` (``HH:MM:SS LEVEL [category] text``, no escape codes), ``"json"`` (one object a
    line) or ``"auto"`` (rich when ``stream.isatty()``, else plain).

    The handler renders records itself; a formatter set with :meth:`setFormatter` is not used.
    Like the stdlib handlers it never raises from :meth:`emit`: failures go to
    :meth:`handleError`.

    Raises :class:`~exesdb_sdk.errors.ConfigError` for an unknown category or output.
    """

    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        categories: Iterable[str] | None = None,
        output: Literal["auto", "rich", "plain", "json"] = "auto",
    ) -> None:
        super().__init__()
        self._stream: TextIO = sys.stderr if stream is None else stream
        self._categories = _parse_categories(categories, "categories")
        self._output = _resolve_output(_check_output(output, "output"), self._stream)
        self._console: Console | None = None
        self._ascii = _needs_ascii(self._stream)
        self._saved_level: int | None = None  # set by setup_observability: the level to restore
        if self._output == "rich":
            from rich.console import Console

            self._console = Console(
                file=self._stream,
                force_terminal=True,
                highlight=False,
                markup=False,
                emoji=False,
                soft_wrap=True,
            )

    @property
    def output(self) -> Literal["rich", "plain", "json"]:
        """How this handler renders: ``"auto"`` resolved when the handler was made."""
        return self._output

    @property
    def categories(self) -> frozenset[str] | None:
        """The categories shown, or ``None`` for all."""
        return self._categories

    @property
    def stream(self) -> TextIO:
        """The stream written to."""
        return self._stream

    def shows(self, category: str | None) -> bool:
        """Whether a record of ``category`` (``None``: uncategorised) would be shown."""
        return category is None or self._categories is None or category in self._categories

    def emit(self, record: logging.LogRecord) -> None:
        """Render ``record`` on the stream, unless its category is switched off."""
        try:
            raw = getattr(record, "category", None)
            category = None if raw is None else str(raw)
            if not self.shows(category):
                return
            kind = getattr(record, "banner", None)
            kind = kind if kind in _BANNER_KINDS else None
            raw_fields = getattr(record, "fields", None)
            fields: dict[str, Any] = dict(raw_fields) if isinstance(raw_fields, Mapping) else {}
            if self._output == "json":
                self._write(self._json(record, category, kind, fields))
            elif self._console is not None:
                self._console.print(self._rich(record, category, kind, fields))
            else:
                self._write(self._plain(record, category, kind, fields))
        except RecursionError:  # like logging.StreamHandler: do not hide a runaway recursion
            raise
        except Exception:
            self.handleError(record)

    def flush(self) -> None:
        """Flush the stream."""
        self.acquire()
        try:
            flush = getattr(self._stream, "flush", None)
            if flush is not None and not getattr(self._stream, "closed", False):
                flush()
        finally:
            self.release()

    def close(self) -> None:
        """Flush and detach; the stream itself is left open (it is usually stderr)."""
        try:
            self.flush()
        finally:
            super().close()

    def __repr__(self) -> str:
        shown = "all" if self._categories is None else ",".join(sorted(self._categories)) or "none"
        return f"<ObservabilityHandler output={self._output} categories={shown}>"

    # ---- rendering

    def _write(self, text: str) -> None:
        encoding = getattr(self._stream, "encoding", None)
        if self._ascii and encoding:
            text = text.encode(encoding, "backslashreplace").decode(encoding)
        self._stream.write(text + "\n")
        self._stream.flush()

    def _plain(self, record: logging.LogRecord, category: str | None, kind: str | None, fields: dict[str, Any]) -> str:
        prefix = f"{_hms(record)} {record.levelname}" + (f" [{category}]" if category else "")
        if kind is not None:
            lines = [f"{prefix} {''.join(part for part, _ in line)}" for line in self._box(kind, fields)]
            text = "\n".join(lines)
        else:
            text = f"{prefix} {record.getMessage()}"
        return text + _exception_text(record)

    def _rich(self, record: logging.LogRecord, category: str | None, kind: str | None, fields: dict[str, Any]) -> Text:
        from rich.text import Text

        text = Text()
        prefix = _hms(record) + " "
        text.append(prefix, style="dim")
        if record.levelno != logging.INFO:
            text.append(record.levelname + " ", style=_LEVEL_STYLES.get(record.levelname, "bold"))
        if kind is not None:
            indent = " " * text.cell_len  # under the box, past the time (and level)
            for i, line in enumerate(self._box(kind, fields)):
                if i:
                    text.append("\n" + indent)
                for part, role in line:
                    text.append(part, style=_banner_style(kind, role))
        else:
            message = record.getMessage()
            style = _STYLES.get(category or "")
            if category == "action" and self._console is not None and self._console.color_system in _FEW:
                style = _AMBER_16  # dark_orange would come out as bright red next to failure's red
            text.append(f" {message} " if style else message, style=style or "")
        exc = _exception_text(record)
        if exc:
            text.append(exc)
        return text

    def _json(self, record: logging.LogRecord, category: str | None, kind: str | None, fields: dict[str, Any]) -> str:
        ts = _dt.datetime.fromtimestamp(record.created, tz=_dt.UTC)
        obj: dict[str, Any] = {
            "ts": ts.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "category": category,
            "msg": record.getMessage(),
        }
        if kind is not None:
            obj["banner"] = kind
        obj["fields"] = _jsonable(fields, 0)
        exc = _exception_text(record)
        if exc:
            obj["exc"] = exc.lstrip("\n")
        return json.dumps(obj, ensure_ascii=self._ascii)

    def _box(self, kind: str, fields: Mapping[str, Any]) -> list[list[tuple[str, str]]]:
        """The banner's lines, each a list of ``(text, role)`` parts."""
        box = _BOXES[(kind, self._ascii)]
        width = max([_LABEL_WIDTH, *(len(_label(str(key))) + 2 for key in fields)])
        lines: list[list[tuple[str, str]]] = [[(box.rule(box.top), "border")], [(box.title, "title")]]
        lines.append([(box.rule(box.mid), "border")])
        for key, value in fields.items():
            label = (_label(str(key)) + ":").ljust(width)
            for i, part in enumerate(_str(value).splitlines() or [""]):
                lines.append([(label if i == 0 else " " * width, "label"), (part, "value")])
        lines.append([(box.rule(box.bottom), "border")])
        return lines


def _banner_style(kind: str, role: str) -> str:
    colour = "green" if kind == "activation" else "red"
    return {
        "border": colour,
        "title": f"bold white on {colour}",
        "label": "bold",
        "value": "",
    }[role]


def _hms(record: logging.LogRecord) -> str:
    return time.strftime("%H:%M:%S", time.localtime(record.created))


_FORMATTER: Final = logging.Formatter()


def _exception_text(record: logging.LogRecord) -> str:
    """The record's traceback and stack, each on lines of its own (``""`` when none)."""
    parts: list[str] = []
    if record.exc_info and not record.exc_text:
        record.exc_text = _FORMATTER.formatException(record.exc_info)
    if record.exc_text:
        parts.append(record.exc_text)
    if record.stack_info:
        parts.append(_FORMATTER.formatStack(record.stack_info))
    return "".join("\n" + part.rstrip("\n") for part in parts)


def _label(key: str) -> str:
    """``pid`` → ``PID``, ``subscriber_pid`` → ``Subscriber PID``; labels with capitals stay."""
    if key != key.lower():
        return key
    words = [w.upper() if w in _ACRONYMS else w for w in key.replace("_", " ").split()]
    if words and words[0] not in {w.upper() for w in _ACRONYMS}:
        words[0] = words[0][:1].upper() + words[0][1:]
    return " ".join(words) or key


def _str(value: Any) -> str:
    try:
        return value if isinstance(value, str) else str(value)
    except Exception:
        return f"<unprintable {type(value).__name__}>"


def _jsonable(value: Any, depth: int) -> Any:
    """``value`` made of JSON types only; anything else (or too deep) becomes its ``str()``."""
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else _str(value)
    if depth < _MAX_DEPTH:
        if isinstance(value, Mapping):
            return {_str(k): _jsonable(v, depth + 1) for k, v in value.items()}
        if isinstance(value, list | tuple | set | frozenset):
            return [_jsonable(v, depth + 1) for v in value]
    return _str(value)


def _needs_ascii(stream: TextIO) -> bool:
    """True when ``stream`` encodes text with a codec that cannot write the box characters."""
    encoding = getattr(stream, "encoding", None)
    if not encoding:
        return False  # io.StringIO and friends hold str
    try:
        "┌─═★💀🩺".encode(encoding)
    except (UnicodeError, LookupError):
        return True
    return False


# --------------------------------------------------------------------------- settings


def _parse_categories(value: Iterable[str] | str | None, where: str) -> frozenset[str] | None:
    if value is None:
        return None
    items = value.split(",") if isinstance(value, str) else list(value)
    chosen: set[str] = set()
    for item in items:
        if not isinstance(item, str):
            raise ConfigError(f"{where}: {item!r} is not a category name")
        name = item.strip().lower()
        if not name and isinstance(value, str):
            continue
        if name not in CATEGORIES:
            raise ConfigError(f"{where}: {item!r} is not one of {', '.join(CATEGORIES)}")
        chosen.add(name)
    return frozenset(chosen)


def _check_output(value: object, where: str) -> _Output:
    if not isinstance(value, str) or value not in _OUTPUTS:
        raise ConfigError(f"{where}: {value!r} is not one of {', '.join(_OUTPUTS)}")
    return cast(_Output, value)


def _resolve_output(output: _Output, stream: TextIO) -> Literal["rich", "plain", "json"]:
    if output != "auto":
        return output
    try:
        return "rich" if stream.isatty() else "plain"
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return "plain"


def _env_categories() -> frozenset[str] | None:
    raw = os.environ.get(ENV_CATEGORIES, "")
    return _parse_categories(raw, ENV_CATEGORIES) if raw.strip() else None


def _env_output() -> _Output:
    raw = os.environ.get(ENV_OUTPUT, "").strip().lower()
    return _check_output(raw, ENV_OUTPUT) if raw else "auto"


_setup_lock = threading.Lock()


def _ours(target: logging.Logger) -> list[ObservabilityHandler]:
    return [h for h in target.handlers if isinstance(h, ObservabilityHandler) and h._saved_level is not None]


def setup_observability(
    *,
    stream: TextIO | None = None,
    categories: Iterable[str] | None = None,
    output: Literal["auto", "rich", "plain", "json"] = "auto",
    level: int = logging.INFO,
    logger: str = "exesdb",
) -> ObservabilityHandler:
    """Attach one :class:`ObservabilityHandler` to ``logger`` and set the logger's level.

    A handler this function attached before to the same logger is removed and closed first, so
    calling it again reconfigures instead of duplicating output. When ``categories`` is ``None``
    the ``EXESDB_OBSERVE_CATEGORIES`` variable (a comma list such as ``health,failure``) is used;
    when ``output`` is ``"auto"``, ``EXESDB_OBSERVE_OUTPUT`` (``auto``, ``rich``, ``plain`` or
    ``json``). The logger's ``propagate`` flag is left alone.

    Raises :class:`~exesdb_sdk.errors.ConfigError` (naming the argument or variable) for an
    unknown category or output; the previous handler then stays in place.
    """
    chosen_output = _check_output(output, "output")
    if chosen_output == "auto":
        chosen_output = _env_output()
    chosen_categories = _parse_categories(categories, "categories") if categories is not None else None
    if categories is None:
        chosen_categories = _env_categories()
    handler = ObservabilityHandler(stream, categories=chosen_categories, output=chosen_output)
    target = logging.getLogger(logger)
    with _setup_lock:
        previous = _ours(target)
        saved = previous[0]._saved_level if previous else target.level
        for old in previous:
            target.removeHandler(old)
            old.close()
        handler._saved_level = saved
        target.addHandler(handler)
        target.setLevel(level)
    return handler


def teardown_observability(logger: str = "exesdb") -> None:
    """Remove and close the handler :func:`setup_observability` attached to ``logger``.

    The logger's level goes back to what it was before the first setup. Does nothing when no
    such handler is attached.
    """
    target = logging.getLogger(logger)
    with _setup_lock:
        previous = _ours(target)
        for old in previous:
            target.removeHandler(old)
            old.close()
        if previous and previous[0]._saved_level is not None:
            target.setLevel(previous[0]._saved_level)
