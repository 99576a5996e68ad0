"""The ``exesdb`` command."""

from __future__ import annotations

import typer

__all__ = ["app", "main"]

app = typer.Typer(
    add_completion=False,
    pretty_exceptions_enable=False,
    no_args_is_help=True,
    rich_markup_mode=None,
)


@app.callback()
def _root() -> None:
    """exesdb: follow, publish and inspect the exesdb-pubsub bus."""


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    add_help_option=False,
)
def broker(ctx: typer.Context) -> None:
    """Run the broker; the same as exesdb-broker (see exesdb broker --help)."""
    import sys

    from exesdb_broker.cli import main as broker_main

    sys.argv = ["exesdb broker", *ctx.args]
    broker_main()


def main() -> None:
    """Entry point of the ``exesdb`` console script."""
    app()
