"""The ``exesdb-broker`` command."""

from __future__ import annotations

import logging
import os
import signal
import sys
from pathlib import Path
from typing import Annotated, Final, NoReturn

import typer
from exesdb_connect.config import connectors_from
from exesdb_sdk import __version__
from exesdb_sdk.errors import ExesdbError
from exesdb_sdk.settings import ENV_CONFIG, read_toml

from .broker import Broker
from .config import LOG_FORMATS, LOG_LEVELS, load_config, load_federation
from .fds import raise_fd_limit
from .federation import federation_plan
from .logs import readiness_line, setup_logging
from .security import check_restricted

__all__ = ["main", "serve"]

log = logging.getLogger("exesdb.broker")

EXIT_FAILURE: Final = 1
EXIT_USAGE: Final = 2
EXIT_INTERRUPTED: Final = 130
_SIGNALS: Final = {signal.SIGTERM, signal.SIGINT}
_RELOAD: Final = signal.SIGHUP

HELP = (
    "Run the exesdb-pubsub broker.\n\n"
    "Publishers connect to the frontend, subscribers to the backend, tools to the control "
    "endpoint. Every setting also comes from an EXESDB_* environment variable (EXESDB_FRONTEND, "
    "EXESDB_LOG_LEVEL, ...) or the [broker] table of a TOML file; flags win over the environment, "
    "which wins over the file. Endpoints bind 127.0.0.1 by default; use tcp://127.0.0.1:* for a "
    "free port.\n\n"
    'Once bound it prints one line on stderr: "exesdb-broker ready frontend=... backend=... '
    'control=... http=http://127.0.0.1:7180" (http=none with --http none). SIGTERM or SIGINT '
    "stops it cleanly with status 0, after the journal has committed what it received (SIGINT "
    "before that line: status 130); SIGHUP re-reads the key allowlists and the HTTP token files. "
    "Every thread runs under a supervisor: a failed one is restarted, and past --max-restarts in "
    "--restart-period the broker exits 1.\n\n"
    "Federation: --federation-nats (or [federation] nats) joins brokers through NATS: live "
    "instances published here reach subscribers of the other brokers over core NATS, and theirs reach "
    "this one's; journaled ones go through JetStream streams into every broker's journal (see "
    "docs/protocol.md, section 13).\n\n"
    "Security: --broker-key (a secret key file from exesdb keygen) turns on CURVE on every "
    "endpoint; --allow-publishers, --allow-subscribers and --allow-admins name directories of "
    "allowed public key files; with it, every HTTP route but /healthz needs a bearer token from the "
    "--http-token-* files (at least one: the broker refuses to start without, unless --http none). "
    "--restricted security,audit puts those instances on a pair of endpoints of their own "
    "(--restricted-frontend, --restricted-backend) with their own key directories "
    "(--allow-restricted-publishers, --allow-restricted-subscribers). "
    "Without it only loopback addresses may be bound, the HTTP surface's included, unless "
    "--allow-insecure.\n\n"
    "Exit status: 0 clean stop, 1 runtime failure (e.g. an endpoint in use), 2 bad configuration "
    "or usage (one line on stderr), 130 Ctrl-C during start-up.\n\n"
    "Example: exesdb-broker --frontend tcp://127.0.0.1:7100 --log-format json"
)


def _version(value: bool) -> None:
    if value:
        print(f"exesdb-broker {__version__}")
        raise typer.Exit()


def serve(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
    frontend: Annotated[
        str | None,
        typer.Option(help="XSUB endpoint publishers connect to [default: tcp://127.0.0.1:7100]"),
    ] = None,
    backend: Annotated[
        str | None,
        typer.Option(help="XPUB endpoint subscribers connect to [default: tcp://127.0.0.1:7101]"),
    ] = None,
    control: Annotated[
        str | None,
        typer.Option(help="ROUTER endpoint for control requests [default: tcp://127.0.0.1:7102]"),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(help="TOML file with a [broker] table and [[connectors]] tables (or EXESDB_CONFIG)"),
    ] = None,
    log_level: Annotated[str | None, typer.Option(help=f"One of {', '.join(LOG_LEVELS)} [default: info]")] = None,
    log_format: Annotated[str | None, typer.Option(help=f"One of {', '.join(LOG_FORMATS)} [default: text]")] = None,
    max_message_size: Annotated[
        int | None, typer.Option(help="Largest accepted frame in bytes [default: 1048576]")
    ] = None,
    hwm: Annotated[int | None, typer.Option(help="Messages queued per connection [default: 10000]")] = None,
    metrics_interval: Annotated[float | None, typer.Option(help="Seconds between broker metrics [default: 5]")] = None,
    node: Annotated[
        str | None,
        typer.Option(help="Node name in the broker's own messages [default: host name]"),
    ] = None,
    broker_key: Annotated[
        str | None, typer.Option(help="The broker's secret key file; turns on CURVE [default: none]")
    ] = None,
    allow_publishers: Annotated[
        str | None, typer.Option(help="Directory of public key files allowed to publish")
    ] = None,
    allow_subscribers: Annotated[
        str | None, typer.Option(help="Directory of public key files allowed to subscribe")
    ] = None,
    allow_admins: Annotated[
        str | None, typer.Option(help="Directory of public key files allowed every control op")
    ] = None,
    restricted: Annotated[
        str | None,
        typer.Option(
            help="Instances of the restricted class, e.g. security,audit: own endpoints and keys [default: none]"
        ),
    ] = None,
    restricted_frontend: Annotated[
        str | None, typer.Option(help="Frontend of the restricted instances [default: tcp://127.0.0.1:7103]")
    ] = None,
    restricted_backend: Annotated[
        str | None, typer.Option(help="Backend of the restricted instances [default: tcp://127.0.0.1:7104]")
    ] = None,
    allow_restricted_publishers: Annotated[
        str | None, typer.Option(help="Directory of public key files allowed to publish restricted instances")
    ] = None,
    allow_restricted_subscribers: Annotated[
        str | None, typer.Option(help="Directory of public key files allowed to read restricted instances")
    ] = None,
    allow_insecure: Annotated[
        bool, typer.Option("--allow-insecure", help="Allow a non-loopback bind without CURVE (logs a warning)")
    ] = False,
    data_dir: Annotated[
        str | None,
        typer.Option(help="Journal directory [default: $XDG_STATE_HOME/exesdb or ~/.local/state/exesdb]"),
    ] = None,
    journal: Annotated[
        str | None,
        typer.Option(help="Instances to record, comma-separated, or none [default: ex_esdb_alerts,ex_esdb_audit]"),
    ] = None,
    journal_max_age: Annotated[
        float | None, typer.Option(help="Seconds a journal record is kept, 0 for no limit [default: 604800]")
    ] = None,
    journal_max_records: Annotated[
        int | None, typer.Option(help="Records kept per instance, 0 for no limit [default: 1000000]")
    ] = None,
    journal_fsync: Annotated[
        str | None,
        typer.Option(help="durable (fsync before a durable ack), always or never [default: durable]"),
    ] = None,
    last_values: Annotated[
        str | None,
        typer.Option(
            help="Topic prefixes whose last message per topic is kept, comma-separated, or none "
            "[default: the health summaries, node health and cluster health]"
        ),
    ] = None,
    journal_buffer: Annotated[
        int | None,
        typer.Option(help="Bytes of input the journal holds before it sheds, counted and marked [default: 67108864]"),
    ] = None,
    max_restarts: Annotated[
        int | None,
        typer.Option(help="Thread restarts allowed within --restart-period before exiting 1 [default: 5]"),
    ] = None,
    restart_period: Annotated[
        float | None, typer.Option(help="Seconds over which --max-restarts counts [default: 30]")
    ] = None,
    http: Annotated[
        str | None,
        typer.Option(
            help="HOST:PORT of the HTTP surface (dashboard, /healthz, /metrics, /v1/...); [::1]:PORT for IPv6, "
            "port 0 for a free one, none to turn it off [default: 127.0.0.1:7180]"
        ),
    ] = None,
    http_token_publishers: Annotated[
        str | None, typer.Option(help="File of HTTP bearer tokens (one a line) allowed POST /v1/publish")
    ] = None,
    http_token_subscribers: Annotated[
        str | None, typer.Option(help="File of HTTP bearer tokens allowed the dashboard, /v1/stream and /v1/stats")
    ] = None,
    http_token_admins: Annotated[
        str | None, typer.Option(help="File of HTTP bearer tokens allowed every route")
    ] = None,
    http_token_metrics: Annotated[str | None, typer.Option(help="File of HTTP bearer tokens allowed /metrics")] = None,
    http_token_restricted_publishers: Annotated[
        str | None, typer.Option(help="File of HTTP bearer tokens allowed POST /v1/publish of the restricted instances")
    ] = None,
    http_token_restricted_subscribers: Annotated[
        str | None, typer.Option(help="File of HTTP bearer tokens allowed /v1/stream of the restricted instances")
    ] = None,
    http_stream_rate: Annotated[
        int | None,
        typer.Option(help="Events a second one /v1/stream delivers at most; past it, shed and counted [default: 2000]"),
    ] = None,
    start_grace: Annotated[
        float | None,
        typer.Option(
            help="Seconds at most between binding and forwarding, so subscribers are back after a restart "
            "before publishers flush their queues; 0 turns it off [default: 1]"
        ),
    ] = None,
    federation_nats: Annotated[
        str | None,
        typer.Option(help="NATS servers of the federation, comma-separated nats://host:port [default: none: off]"),
    ] = None,
    federation_exports: Annotated[
        str | None,
        typer.Option(
            help="Instances published to the federation, comma-separated, all, live or none; journaled ones go "
            "through JetStream [default: all]"
        ),
    ] = None,
    federation_imports: Annotated[
        str | None,
        typer.Option(help="Instances taken from the federation, comma-separated, all, live or none [default: all]"),
    ] = None,
    federation_name: Annotated[
        str | None, typer.Option(help="This broker's name in the federation [default: --node]")
    ] = None,
    federation_user: Annotated[str | None, typer.Option(help="NATS user (with --federation-password-file)")] = None,
    federation_password_file: Annotated[str | None, typer.Option(help="File holding the NATS password")] = None,
    federation_token_file: Annotated[str | None, typer.Option(help="File holding a NATS token")] = None,
    federation_replicas: Annotated[
        int | None,
        typer.Option(
            help="Replicas of each JetStream stream it creates, 1-5 [default: 0: one per NATS URL, at most 3]"
        ),
    ] = None,
    federation_stream_max_bytes: Annotated[
        int | None, typer.Option(help="Bytes each JetStream stream keeps, the oldest going first [default: 1 GiB]")
    ] = None,
) -> None:
    flags = {
        "frontend": frontend,
        "backend": backend,
        "control": control,
        "log_level": log_level.lower() if log_level else None,
        "log_format": log_format,
        "max_message_size": max_message_size,
        "hwm": hwm,
        "metrics_interval": metrics_interval,
        "node": node,
        "broker_key": broker_key,
        "allow_publishers": allow_publishers,
        "allow_subscribers": allow_subscribers,
        "allow_admins": allow_admins,
        "restricted": restricted,
        "restricted_frontend": restricted_frontend,
        "restricted_backend": restricted_backend,
        "allow_restricted_publishers": allow_restricted_publishers,
        "allow_restricted_subscribers": allow_restricted_subscribers,
        "allow_insecure": True if allow_insecure else None,
        "data_dir": data_dir,
        "journal": journal,
        "journal_max_age": journal_max_age,
        "journal_max_records": journal_max_records,
        "journal_fsync": journal_fsync,
        "last_values": last_values,
        "journal_buffer": journal_buffer,
        "max_restarts": max_restarts,
        "restart_period": restart_period,
        "start_grace": start_grace,
        "http": http,
        "http_token_publishers": http_token_publishers,
        "http_token_subscribers": http_token_subscribers,
        "http_token_admins": http_token_admins,
        "http_token_metrics": http_token_metrics,
        "http_token_restricted_publishers": http_token_restricted_publishers,
        "http_token_restricted_subscribers": http_token_restricted_subscribers,
        "http_stream_rate": http_stream_rate,
    }
    try:
        # one read of the file for [broker] and [[connectors]] (it may be a pipe, or change meanwhile)
        path = config if config is not None else os.environ.get(ENV_CONFIG) or None
        document = read_toml(path) if path is not None else None
        settings = load_config(flags, config_file=path, document=document)
        connectors = connectors_from(document, f"config file {path}") if document is not None else []
        federation = load_federation(
            {
                "nats": federation_nats,
                "exports": federation_exports,
                "imports": federation_imports,
                "name": federation_name,
                "user": federation_user,
                "password_file": federation_password_file,
                "token_file": federation_token_file,
                "replicas": federation_replicas,
                "stream_max_bytes": federation_stream_max_bytes,
            },
            config_file=path,
            document=document,
        )
        federation_plan(federation, settings)  # every federation error here, in one line, before start-up
        check_restricted(settings, connectors)
    except ExesdbError as exc:
        _fail(str(exc), EXIT_USAGE)
    setup_logging(settings.log_level, settings.log_format)
    before, after = raise_fd_limit()
    # Signals go to sigwait below, never to a handler running in the middle of broker code.
    signal.pthread_sigmask(signal.SIG_BLOCK, {*_SIGNALS, _RELOAD})
    _stop_if_signalled()
    broker = Broker(settings, connectors, federation)
    try:
        broker.start()
    except ExesdbError as exc:
        _fail(str(exc), EXIT_USAGE if isinstance(exc, ValueError) else EXIT_FAILURE)
    try:
        _stop_if_signalled()
    except typer.Exit:
        broker.stop()
        raise
    log.info("file descriptors: limit %d%s", after, f" (raised from {before})" if after != before else "")
    # one write, line and newline together: print() writes them apart, and a broker thread's log
    # line may land between them (the federation's, reconnecting, did), breaking the line scripts read
    pair = (
        (broker.restricted_frontend, broker.restricted_backend)
        if broker.restricted_frontend is not None and broker.restricted_backend is not None
        else None
    )
    ready = readiness_line(settings.log_format, broker.frontend, broker.backend, broker.control, broker.http, pair)
    sys.stderr.write(ready + "\n")
    sys.stderr.flush()
    try:
        while broker.running:
            received = signal.sigtimedwait({*_SIGNALS, _RELOAD}, 0.5)
            if received is not None and received.si_signo == _RELOAD:
                broker.reload()
            elif received is not None:
                break
        failed = not broker.running
    finally:
        broker.stop()
    if failed:
        _fail(f"broker stopped unexpectedly: {broker.failure or 'see the log above'}", EXIT_FAILURE)


def _stop_if_signalled() -> None:
    """Before the ready line, a pending SIGINT or SIGTERM ends start-up: one line, and status 130
    for SIGINT (the shell's Ctrl-C), 0 for SIGTERM (a clean stop, as after the ready line)."""
    pending = signal.sigpending() & _SIGNALS
    if not pending:
        return
    received = signal.sigtimedwait(pending, 0)
    signo = received.si_signo if received is not None else next(iter(pending))
    name = signal.Signals(signo).name
    print(f"exesdb-broker: interrupted ({name}) before start-up finished", file=sys.stderr, flush=True)
    raise typer.Exit(EXIT_INTERRUPTED if signo == signal.SIGINT else 0)


def _fail(message: str, code: int) -> NoReturn:
    print(f"exesdb-broker: error: {message}", file=sys.stderr, flush=True)
    raise typer.Exit(code)


def _usage_line(exc: typer.TyperException) -> str:
    """A usage error as one line, like every other error: click's message, lower-cased."""
    message = " ".join(exc.format_message().split()).removesuffix(".")
    if message[:1].isupper() and not message[1:2].isupper():
        message = message[0].lower() + message[1:]
    return f"exesdb-broker: error: {message} (see exesdb-broker --help)"


def main() -> None:
    """Entry point of the ``exesdb-broker`` console script."""
    # From here on a signal waits for serve to take it, never a KeyboardInterrupt mid start-up.
    signal.pthread_sigmask(signal.SIG_BLOCK, {*_SIGNALS, _RELOAD})
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None)
    app.command(help=HELP)(serve)
    try:
        code = app(standalone_mode=False)
    except typer.TyperException as exc:
        print(_usage_line(exc), file=sys.stderr, flush=True)
        code = EXIT_USAGE
    sys.exit(code if isinstance(code, int) else 0)
