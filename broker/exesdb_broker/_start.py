"""The ``exesdb-broker`` console script's first step: hold SIGINT, SIGTERM and SIGHUP before the
heavy imports (the SDK, typer, libzmq take about 0.4 s), so that a Ctrl-C during start-up
waits for the daemon to take it as a stop, instead of a ``KeyboardInterrupt`` traceback from
the middle of an import."""

from __future__ import annotations

import signal


def main() -> None:
    """Entry point of the ``exesdb-broker`` console script (and ``python -m exesdb_broker``)."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM, signal.SIGHUP})
    from .cli import main as run

    run()
