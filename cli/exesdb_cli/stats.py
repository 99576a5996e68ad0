"""``exesdb stats``: the broker's counters from its control endpoint."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import Any, NoReturn

from exesdb_sdk import BrokerUnavailableError, ControlClient
from rich.console import Group
from rich.table import Table
from rich.text import Text

__all__ = ["render_stats", "run_stats"]


def _size(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} GiB"


def _uptime(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s"


def render_stats(stats: dict[str, Any]) -> Group:
    """A table per instance, then the broker's totals."""
    table = Table(title=f"exesdb-broker {stats.get('version', '?')} on {stats.get('node', '?')}")
    table.add_column("instance")
    table.add_column("messages", justify="right")
    table.add_column("envelopes", justify="right")
    table.add_column("bytes", justify="right")
    table.add_column("msgs/s", justify="right")
    for name, figures in stats["instances"].items():
        table.add_row(
            name,
            f"{figures['messages']:,}",
            f"{figures['envelopes']:,}",
            _size(figures["bytes"]),
            f"{figures['rate']:,.1f}",
        )
    totals = stats["totals"]
    table.add_section()
    table.add_row(
        "total", f"{totals['messages']:,}", f"{totals['envelopes']:,}", _size(totals["bytes"]), f"{totals['rate']:,.1f}"
    )
    footer = Text(
        f"subscribers {stats['subscribers']}  publishers {stats['publishers']}  "
        f"malformed {stats['malformed']}  uptime {_uptime(stats['uptime'])}"
    )
    if "security" in stats:
        footer.append(f"  handshake failures {stats['security']['handshake_failures']}")
    lines: list[Table | Text] = [table, footer, *(Text(line, style="bold red") for line in _warnings(stats))]
    journal = stats.get("journal")
    if journal:
        lines.append(Text(_journal_line(journal)))
    federation = stats.get("federation")
    if isinstance(federation, dict) and federation.get("state", "off") != "off":
        lines += [Text(line, style=style) for line, style in _federation_lines(federation)]
    return Group(*lines)


def _federation_lines(federation: dict[str, Any]) -> list[tuple[str, str]]:
    """The federation: live through core NATS, then each journaled instance through JetStream."""
    dropped = sum(federation.get("dropped", {}).values())
    state = federation.get("state")
    live = (
        f"federation {federation.get('name', '?')} {state} via {federation.get('server') or 'no server'}  "
        f"exported {federation.get('exported', 0):,}  imported {federation.get('imported', 0):,}  "
        f"gaps {federation.get('gaps', 0):,}  dropped {dropped:,}  reconnects {federation.get('reconnects', 0):,}"
    )
    lines = [(live, "" if state == "connected" else "bold red")]
    if state != "connected" and federation.get("last_error"):
        lines.append((f"  {federation['last_error']}", "bold red"))
    jetstream = federation.get("jetstream") or {}
    if jetstream.get("state", "off") != "off":
        ok = jetstream.get("state") == "ok"
        lines.append((f"  jetstream {jetstream.get('state')}: {jetstream.get('last_error') or 'journaled instances'}",
                      "" if ok else "bold red"))  # fmt: skip
        for name, entry in (jetstream.get("instances") or {}).items():
            lost = entry.get("lost", 0)
            lines.append((
                f"  {name.removeprefix('ex_esdb_')}: exported {entry.get('exported', 0):,} "
                f"(lag {entry.get('export_lag', 0):,})  imported {entry.get('imported', 0):,} "
                f"(lag {entry.get('import_lag', 0):,})  lost {lost:,}  refused {entry.get('refused', 0):,}",
                "bold red" if lost else "",
            ))  # fmt: skip
    return lines


def _warnings(stats: dict[str, Any]) -> list[str]:
    """What an operator must not miss: approximate counts, restarted threads, descriptors."""
    warnings = []
    counting = stats.get("counting", {})
    if counting and not counting.get("exact", True):
        missed = counting.get("missed_frames", 0) // 2
        warnings.append(f"counts are approximate: the counter missed at least {missed:,} messages under load")
    restarts = stats.get("restarts", {})
    if restarts.get("total"):
        by_thread = ", ".join(f"{name} {n}" for name, n in restarts.get("by_thread", {}).items())
        warnings.append(f"thread restarts: {by_thread} (see the broker's log)")
    fds = stats.get("fds", {})
    if fds.get("paused"):
        warnings.append(f"out of file descriptors: not accepting on {', '.join(fds['paused'])}")
    elif fds.get("used") and fds.get("limit") and fds["used"] >= 0.8 * fds["limit"]:
        warnings.append(f"file descriptors: {fds['used']:,} of {fds['limit']:,} in use")
    return warnings


def _journal_line(journal: dict[str, Any]) -> str:
    """One line on the journal: its state, heads, backlog, durable publishes and last values."""
    if journal.get("state") != "ok":
        return f"journal {journal.get('state')}: {journal.get('reason') or 'no journaled instance'}"
    heads = ", ".join(f"{name.removeprefix('ex_esdb_')} {seq:,}" for name, seq in journal.get("heads", {}).items())
    line = (
        f"journal ok ({heads})  backlog {journal.get('backlog', 0):,}  durable {journal.get('durable', 0):,}  "
        f"last values {journal.get('last_values', 0):,}  {journal.get('data_dir', '')}"
    )
    if journal.get("dropped"):
        line += f"  NOT JOURNALED {journal['dropped']:,} (marked in the journal)"
    return line


def run_stats(
    *,
    control: str | None,
    watch: bool,
    as_json: bool,
    interval: float,
    timeout: float,
    client_key: str | None = None,
    server_key: str | None = None,
) -> int:
    """Print the broker's stats once, or every ``interval`` seconds with ``watch`` until Ctrl-C.

    A watch outlives the broker: while it does not answer (each try waits up to ``timeout``) it
    says so once on stderr and keeps asking. On a terminal the table is redrawn in place;
    otherwise each refresh is written and flushed (a JSON line with ``as_json``)."""
    from rich.console import Console

    console = Console()
    with ControlClient(control, timeout=timeout, client_key=client_key, server_key=server_key) as client:
        if not watch:
            stats = client.stats()
            if as_json:
                print(json.dumps(stats))
            else:
                console.print(render_stats(stats))
            return 0
        if as_json or not console.is_terminal:

            def write(stats: dict[str, Any]) -> None:
                if as_json:
                    print(json.dumps(stats), flush=True)
                else:
                    console.print(render_stats(stats))
                    console.file.flush()

            _watch(client, interval, write)
        from rich.live import Live

        with Live(console=console, refresh_per_second=4) as live:
            _watch(client, interval, lambda stats: live.update(render_stats(stats)))


def _watch(client: ControlClient, interval: float, show: Callable[[dict[str, Any]], None]) -> NoReturn:
    """Show the stats every ``interval`` seconds; while the broker is away, say so once and retry."""
    away = False
    while True:
        try:
            stats = client.stats()
        except BrokerUnavailableError:
            if not away:
                _notice(f"broker unavailable at {client.endpoint}, retrying...")
                away = True
        else:
            if away:
                _notice(f"broker at {client.endpoint} answering again")
                away = False
            show(stats)
        time.sleep(interval)  # the refresh period


def _notice(line: str) -> None:
    print(f"exesdb stats: {line}", file=sys.stderr, flush=True)
