"""The ``exesdb`` command. Each command imports what it needs when it runs, so ``--help`` is fast."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Annotated, Final, NoReturn

import typer

__all__ = ["app", "main"]

EXIT_ERROR: Final = 1
EXIT_TIMEOUT: Final = 124
EXIT_INTERRUPTED: Final = 130
"""128 + SIGINT, what a shell reports for a command stopped by Ctrl-C."""
_STDOUT: Final = 1

app = typer.Typer(
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _fail(message: str, code: int = EXIT_ERROR) -> NoReturn:
    print(f"exesdb: error: {message}", file=sys.stderr, flush=True)
    raise typer.Exit(code)


def _run(action: Callable[[], int], *, on_interrupt: int = EXIT_INTERRUPTED) -> None:
    """Run a command: exit with its status; an ExesdbError is one line and status 1.

    Ctrl-C exits ``on_interrupt``: 0 for commands that run until stopped (tail, stats --watch,
    demo), else 130 with a line saying so. A reader that went away (``exesdb demo | head``)
    ends the command quietly with status 0, as it ends ``cat``."""
    from exesdb_sdk.errors import ExesdbError

    was_devnull = _is_devnull(_STDOUT)
    try:
        code = action()
    except ExesdbError as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        if on_interrupt:
            print("exesdb: interrupted", file=sys.stderr, flush=True)
        code = on_interrupt
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing left to flush at exit
        code = 0
    except SystemExit as exc:
        # rich's Console meets a closed pipe by pointing stdout at /dev/null and exiting 1.
        if exc.code != EXIT_ERROR or was_devnull or not _is_devnull(_STDOUT):
            raise
        code = 0
    raise typer.Exit(code)


def _is_devnull(fd: int) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.stat(os.devnull))
    except OSError:
        return False


def _version(value: bool) -> None:
    if value:
        from exesdb_sdk._version import __version__

        print(f"exesdb {__version__}")
        raise typer.Exit()


@app.callback(invoke_without_command=True)
def _root(
    ctx: typer.Context,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """exesdb: follow, publish and inspect the exesdb-pubsub bus.

    Endpoints come from --frontend/--backend/--control, else EXESDB_FRONTEND, EXESDB_BACKEND,
    EXESDB_CONTROL, else 127.0.0.1 ports 7100/7101/7102. Errors, usage errors included, are one
    line on stderr with exit status 1; Ctrl-C stops publish (or tail before --count) with 130.
    """
    if ctx.invoked_subcommand is None:  # a bare `exesdb` shows the help

        def show_help() -> int:
            print(ctx.get_help(), flush=True)
            return 0

        _run(show_help)


Backend = Annotated[
    str | None,
    typer.Option(
        "--backend",
        envvar="EXESDB_BACKEND",
        help="Broker backend; several, comma-separated, to fail over [default: tcp://127.0.0.1:7101]",
    ),
]
Frontend = Annotated[
    str | None,
    typer.Option(
        "--frontend",
        envvar="EXESDB_FRONTEND",
        help="Broker frontend; several, comma-separated, to fail over [default: tcp://127.0.0.1:7100]",
    ),
]
Control = Annotated[
    str | None,
    typer.Option(
        "--control",
        envvar="EXESDB_CONTROL",
        help="Broker control endpoint; several, comma-separated [default: tcp://127.0.0.1:7102]",
    ),
]
Secret = Annotated[
    str | None, typer.Option("--secret", envvar="EXESDB_SECRET", help="Shared secret for signed messages")
]
ConnectTimeout = Annotated[float, typer.Option("--connect-timeout", help="Seconds to wait for the broker")]
ClientKey = Annotated[
    str | None,
    typer.Option(
        "--client-key", envvar="EXESDB_CLIENT_KEY", help="This client's secret key file (CURVE; exesdb keygen)"
    ),
]
ServerKey = Annotated[
    str | None,
    typer.Option("--server-key", envvar="EXESDB_SERVER_KEY", help="The broker's public key file (CURVE)"),
]

TAIL_HELP = """Follow live messages.

INSTANCE is a short or full instance name (health or ex_esdb_health); with none, all ten.
Output is pretty, coloured lines on a terminal and JSON lines otherwise. Sequence gaps and
undecodable messages are reported on stderr and never stop the tail. Once subscribed, a line
"exesdb tail: following ..." goes to stderr.

--timeout counts from the start, so it also bounds the wait for the broker (--connect-timeout).

Exit status: 0 after --count messages (or Ctrl-C), 124 when --timeout passes first, 1 on
error, 130 on Ctrl-C before --count messages arrived.

Examples:

  exesdb tail health metrics

  exesdb tail alerts --topic critical --count 1 --timeout 30

  exesdb tail --exclude broker --json | jq .type

Catch up from the broker's journal first, then follow live with no gap and no duplicate
(journaled instances only, alerts and audit by default): --since 1h (or 30m, 2d, 90s, or an
ISO-8601 time), --from-start, --from-seq N (a broker sequence number). --last starts with the
broker's last value of each last-value topic (the health summaries, node and cluster health):

  exesdb tail audit --since 1h

  exesdb tail health --last --count 3
"""


@app.command(help=TAIL_HELP)
def tail(
    instances: Annotated[list[str] | None, typer.Argument(help="Instances to follow (default: all)")] = None,
    topic: Annotated[
        list[str] | None, typer.Option("--topic", "-t", help="Sub-topic prefix to follow (repeatable)")
    ] = None,
    exclude: Annotated[
        list[str] | None, typer.Option("--exclude", "-x", help="Sub-topic prefix to hide (repeatable)")
    ] = None,
    count: Annotated[int | None, typer.Option("--count", "-n", min=1, help="Exit 0 after this many messages")] = None,
    timeout: Annotated[
        float | None, typer.Option("--timeout", min=0, help="Exit 124 if --count is not reached in this many seconds")
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="One JSON object per line")] = False,
    raw: Annotated[bool, typer.Option("--raw", help="The data only, one JSON object per line")] = False,
    pretty: Annotated[bool, typer.Option("--pretty", help="Coloured lines even when not on a terminal")] = False,
    timestamps: Annotated[
        bool, typer.Option("--timestamps", help="Start pretty lines with receive time and delta")
    ] = False,
    since: Annotated[
        str | None, typer.Option("--since", help="Replay the journal from this long ago (1h, 30m) or time (ISO-8601)")
    ] = None,
    from_start: Annotated[bool, typer.Option("--from-start", help="Replay the whole journal first")] = False,
    from_seq: Annotated[
        int | None, typer.Option("--from-seq", min=0, help="Replay the journal from this broker sequence number")
    ] = None,
    last: Annotated[bool, typer.Option("--last", help="Start with the broker's last value of each topic")] = False,
    backend: Backend = None,
    control: Control = None,
    secret: Secret = None,
    connect_timeout: ConnectTimeout = 5.0,
    client_key: ClientKey = None,
    server_key: ServerKey = None,
) -> None:
    if sum((json_output, raw, pretty)) > 1:
        _fail("choose one of --json, --raw and --pretty")
    if sum((since is not None, from_start, from_seq is not None)) > 1:
        _fail("choose one of --since, --from-start and --from-seq")
    output = "json" if json_output else "raw" if raw else "pretty" if pretty or sys.stdout.isatty() else "json"

    def action() -> int:
        from .tail import run_tail

        return run_tail(
            instances=instances or [],
            topics=topic or [],
            excludes=exclude or [],
            count=count,
            timeout=timeout,
            output=output,  # type: ignore[arg-type]
            timestamps=timestamps,
            backend=backend,
            secret=secret,
            connect_timeout=connect_timeout,
            client_key=client_key,
            server_key=server_key,
            replay=("since", since)
            if since is not None
            else ("seq", from_seq)
            if from_seq is not None
            else (("start", None) if from_start else None),
            last=last,
            control=control,
        )

    _run(action, on_interrupt=0)


PUBLISH_HELP = """Publish messages.

DATA is a JSON object, the message's data; with no DATA it is read from stdin, or one per line
with --lines. With --type naming a catalogue type (exesdb instances lists them) the data is
validated first. Everything is checked before anything is sent: bad JSON, an unknown instance
or a field that fails validation is one line on stderr, exit status 1, nothing sent. So is a
broker that does not answer within --connect-timeout (its control endpoint's, with --durable,
included). Ctrl-C stops it with status 130 and says how many were published.

Examples:

  exesdb publish alerts critical '{"severity": "critical", "title": "disk full"}' --type SystemAlert

  echo '{"msg": "hi"}' | exesdb publish logging app

  exesdb publish metrics load '{"v": 1}' --count 10000 --rate 2000

With --durable, each message goes through the broker's control endpoint and is committed to
its journal before the command goes on; the broker's sequence number of each is printed on
stdout. Only journaled instances (alerts and audit by default) take durable publishes:

  exesdb publish audit admin_actions '{"action": "drop_table"}' --durable
"""


@app.command(help=PUBLISH_HELP)
def publish(
    instance: Annotated[str, typer.Argument(help="Instance, short or full name")],
    subtopic: Annotated[str, typer.Argument(help="Sub-topic, e.g. store_health:orders")],
    data: Annotated[str | None, typer.Argument(help="JSON object (default: read stdin)")] = None,
    type_name: Annotated[str, typer.Option("--type", help="Message type; catalogue types are validated")] = "Custom",
    lines: Annotated[bool, typer.Option("--lines", help="One message per stdin line")] = False,
    corr: Annotated[str | None, typer.Option("--corr", help="Correlation id")] = None,
    count: Annotated[int, typer.Option("--count", min=1, help="Send each message this many times")] = 1,
    rate: Annotated[
        float | None, typer.Option("--rate", min=0.001, help="Messages per second (default: as fast as possible)")
    ] = None,
    durable: Annotated[
        bool, typer.Option("--durable", help="Wait until the broker has journaled each message; print its seq")
    ] = False,
    frontend: Frontend = None,
    control: Control = None,
    secret: Secret = None,
    connect_timeout: ConnectTimeout = 5.0,
    max_message_size: Annotated[
        int, typer.Option("--max-message-size", min=1, help="Refuse bodies larger than this")
    ] = 1 << 20,
    client_key: ClientKey = None,
    server_key: ServerKey = None,
) -> None:
    def action() -> int:
        from .publish import run_publish

        return run_publish(
            instance=instance,
            subtopic=subtopic,
            data=data,
            lines=lines,
            type_name=type_name,
            corr=corr,
            count=count,
            rate=rate,
            frontend=frontend,
            secret=secret,
            connect_timeout=connect_timeout,
            max_message_size=max_message_size,
            client_key=client_key,
            server_key=server_key,
            durable=durable,
            control=control,
        )

    _run(action)


STATS_HELP = """Show the broker's counters: per-instance messages, bytes and rate, subscribers, publishers,
malformed messages and uptime.

--watch refreshes until Ctrl-C (status 0): in place on a terminal, else one block (or JSON
line) per refresh. While the broker does not answer it says so once on stderr and retries.

Examples:

  exesdb stats

  exesdb stats --watch

  exesdb stats --json | jq .totals
"""


@app.command(help=STATS_HELP)
def stats(
    watch: Annotated[bool, typer.Option("--watch", "-w", help="Refresh until Ctrl-C")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="The raw stats reply as JSON")] = False,
    interval: Annotated[float, typer.Option("--interval", min=0.1, help="Seconds between refreshes")] = 1.0,
    control: Control = None,
    timeout: Annotated[float, typer.Option("--timeout", min=0.1, help="Seconds to wait for the broker")] = 5.0,
    client_key: ClientKey = None,
    server_key: ServerKey = None,
) -> None:
    def action() -> int:
        from .stats import run_stats

        return run_stats(
            control=control,
            watch=watch,
            as_json=as_json,
            interval=interval,
            timeout=timeout,
            client_key=client_key,
            server_key=server_key,
        )

    _run(action, on_interrupt=0)


INSTANCES_HELP = """List the ten instances with their aliases, default sub-topics and message types.

Examples:

  exesdb instances

  exesdb instances --json
"""


@app.command(help=INSTANCES_HELP)
def instances(as_json: Annotated[bool, typer.Option("--json", help="As JSON")] = False) -> None:
    def action() -> int:
        import json

        from exesdb_sdk import Instance
        from exesdb_sdk.messages import payload_types

        types = {
            instance: {n: c.__subtopic__ for n, c in payload_types().items() if c.__instance__ is instance}
            for instance in Instance
        }
        if as_json:
            rows = [
                {"name": i.value, "alias": i.alias, "description": i.description, "types": types[i]} for i in Instance
            ]
            print(json.dumps(rows))
            return 0
        from rich.console import Console
        from rich.table import Table

        table = Table(title="exesdb instances")
        for column in ("instance", "alias", "default sub-topic: message type", "carries"):
            table.add_column(column)
        for instance in Instance:
            listed = "\n".join(f"{subtopic}: {name}" for name, subtopic in types[instance].items())
            table.add_row(instance.value, instance.alias, listed, instance.description)
        Console().print(table)
        return 0

    _run(action)


DEMO_HELP = """A first look: an embedded broker, realistic traffic on every instance (health changes,
metrics, alerts, lifecycle, audit, security, logs, and store events through a health-gated
emitter pool with a flaky subscriber), tailed live in colour until Ctrl-C or --duration.

With --attach the traffic goes through the broker already running at the usual endpoints
(EXESDB_FRONTEND/BACKEND/CONTROL, else 127.0.0.1:7100-7102, or --frontend/--backend/--control),
so that its dashboard shows it live.

Examples:

  exesdb demo --duration 20

  exesdb demo --attach        # beside `exesdb-broker`; watch http://127.0.0.1:7180/
"""


@app.command(help=DEMO_HELP)
def demo(
    duration: Annotated[float | None, typer.Option("--duration", min=0.1, help="Stop after this many seconds")] = None,
    pace: Annotated[float, typer.Option("--pace", min=0.001, help="Seconds between synthetic events")] = 0.15,
    attach: Annotated[
        bool, typer.Option("--attach", help="Run on the running broker (its dashboard shows it), not an embedded one")
    ] = False,
    frontend: Annotated[str | None, typer.Option(help="The running broker's frontend (implies --attach)")] = None,
    backend: Annotated[str | None, typer.Option(help="The running broker's backend (implies --attach)")] = None,
    control: Annotated[str | None, typer.Option(help="The running broker's control (implies --attach)")] = None,
) -> None:
    # Only an explicit choice runs the demo's synthetic traffic through a real broker: the
    # EXESDB_* endpoint variables apply with --attach, they never imply it.
    attach = attach or any(endpoint is not None for endpoint in (frontend, backend, control))

    def action() -> int:
        from .demo import run_demo

        return run_demo(duration=duration, pace=pace, attach=(frontend, backend, control) if attach else None)

    _run(action, on_interrupt=0)


DASHBOARD_HELP = """Serve the broker's HTTP surface from here, for a broker elsewhere: the live dashboard
at /, /healthz, /metrics (Prometheus), /v1/stats, /v1/stream and POST /v1/publish, the same
application the broker serves itself (see docs/http.md). Runs in the foreground until Ctrl-C
(status 0). Once listening it prints one line on stderr: "exesdb dashboard: serving URL/ for
the broker at ...".

A non-loopback --http needs token files (one bearer token a line): then every route but
/healthz wants "Authorization: Bearer <token>" of a role allowed for it.

At start it asks the broker's control endpoint for its restricted class (5 s at most; no answer
is an error): the class's instances are then served only to tokens of the
--token-file-restricted-* roles, over the class's endpoints, as the broker's own surface does.

Examples:

  exesdb dashboard --control tcp://10.0.0.5:7102 --backend tcp://10.0.0.5:7101 --frontend tcp://10.0.0.5:7100

  exesdb dashboard --http 127.0.0.1:8080 --client-key me.key_secret --server-key broker.key
"""

TokenFile = Annotated[str | None, typer.Option(help="File of bearer tokens (one a line) for this role")]


@app.command(help=DASHBOARD_HELP)
def dashboard(
    frontend: Frontend = None,
    backend: Backend = None,
    control: Control = None,
    http: Annotated[
        str, typer.Option("--http", help="HOST:PORT to serve on ([::1]:PORT for IPv6, port 0 for a free one)")
    ] = "127.0.0.1:7180",
    client_key: ClientKey = None,
    server_key: ServerKey = None,
    token_file_admins: TokenFile = None,
    token_file_subscribers: TokenFile = None,
    token_file_publishers: TokenFile = None,
    token_file_metrics: TokenFile = None,
    token_file_restricted_subscribers: TokenFile = None,
    token_file_restricted_publishers: TokenFile = None,
) -> None:
    def action() -> int:
        from .dashboard import run_dashboard

        return run_dashboard(
            frontend=frontend,
            backend=backend,
            control=control,
            http=http,
            client_key=client_key,
            server_key=server_key,
            token_files={
                "admins": token_file_admins,
                "subscribers": token_file_subscribers,
                "publishers": token_file_publishers,
                "metrics": token_file_metrics,
                "restricted_subscribers": token_file_restricted_subscribers,
                "restricted_publishers": token_file_restricted_publishers,
            },
        )

    _run(action, on_interrupt=0)


KEYGEN_HELP = """Create a CURVE key pair for the broker or a client: NAME.key (the public key, to hand
out: an allowlist directory or the clients' --server-key) and NAME.key_secret (both keys, mode
0600, to keep private). An existing key is never overwritten.

Examples:

  exesdb keygen broker --dir keys

  exesdb keygen sensor-7 --dir keys/publishers
"""


@app.command(help=KEYGEN_HELP)
def keygen(
    name: Annotated[str, typer.Argument(help="Key name: the files are NAME.key and NAME.key_secret")],
    directory: Annotated[str, typer.Option("--dir", help="Where to write the files (created if missing)")] = ".",
) -> None:
    def action() -> int:
        from exesdb_sdk.curve import write_key_pair

        public, secret = write_key_pair(directory, name)
        print(f"public key: {public}")
        print(f"secret key: {secret} (mode 0600: keep it private)")
        return 0

    _run(action)


CONNECT_HELP = """Run the connectors of a TOML file ([[connectors]] tables, as in the broker's file)
beside a remote broker, in the foreground, until Ctrl-C (status 0).

Cursors and parked messages are kept in STATE_DIR/connectors.db. Bad configuration is one line
and status 1.

Example:

  exesdb connect connectors.toml --state-dir ./connect-state
"""


@app.command(help=CONNECT_HELP)
def connect(
    config: Annotated[str, typer.Argument(help="TOML file with [[connectors]] tables")],
    frontend: Frontend = None,
    backend: Backend = None,
    control: Control = None,
    state_dir: Annotated[
        str, typer.Option("--state-dir", help="Directory of connectors.db (cursors, parked messages)")
    ] = "./exesdb-connect",
) -> None:
    def action() -> int:
        from .connect import run_connect

        return run_connect(config, frontend=frontend, backend=backend, control=control, state_dir=state_dir)

    _run(action, on_interrupt=0)


CONNECTORS_HELP = """List the broker's connectors, one line each: sink, state, delivered, parked,
missed, dropped, cursor per journaled instance and lag. --parked NAME lists a connector's parked
messages (refused by its sink), --replay NAME sends them again. With --state-dir, --parked and
--replay work on a standalone exesdb connect's state instead of the broker's.

Examples:

  exesdb connectors

  exesdb connectors --parked hook --json

  exesdb connectors --replay hook
"""


@app.command(help=CONNECTORS_HELP)
def connectors(
    as_json: Annotated[bool, typer.Option("--json", help="The reply as JSON")] = False,
    parked: Annotated[str | None, typer.Option("--parked", help="List this connector's parked messages")] = None,
    replay: Annotated[str | None, typer.Option("--replay", help="Send this connector's parked messages again")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=1000, help="Parked messages listed at most")] = 100,
    state_dir: Annotated[
        str | None, typer.Option("--state-dir", help="A standalone exesdb connect's state directory")
    ] = None,
    control: Control = None,
    timeout: Annotated[float, typer.Option("--timeout", min=0.1, help="Seconds to wait for the broker")] = 5.0,
) -> None:
    def action() -> int:
        from .connect import list_connectors

        return list_connectors(
            control=control,
            timeout=timeout,
            as_json=as_json,
            parked=parked,
            replay=replay,
            state_dir=state_dir,
            limit=limit,
        )

    _run(action)


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    add_help_option=False,
)
def broker(ctx: typer.Context) -> None:
    """Run the broker; the same as exesdb-broker (see exesdb broker --help)."""
    from exesdb_broker.cli import main as broker_main

    sys.argv = ["exesdb broker", *ctx.args]
    broker_main()


def _usage_line(prog: str, exc: typer.TyperException) -> str:
    """One line for a usage error (bad option, missing argument, bad value): click's message,
    lower-cased like our own, and where to look (``exesdb publish --help``)."""
    message = " ".join(exc.format_message().split()).removesuffix(".")
    if message[:1].isupper() and not message[1:2].isupper():
        message = message[0].lower() + message[1:]
    ctx = getattr(exc, "ctx", None)
    where = f" (see {ctx.command_path} --help)" if ctx is not None else ""
    return f"{prog}: error: {message}{where}"


def main() -> None:
    """Entry point of the ``exesdb`` console script."""
    try:
        code = app(prog_name="exesdb", standalone_mode=False)
    except typer.TyperException as exc:
        print(_usage_line("exesdb", exc), file=sys.stderr, flush=True)
        code = EXIT_ERROR
    sys.exit(code if isinstance(code, int) else 0)
