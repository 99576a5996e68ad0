"""``python -m exesdb_broker`` runs the daemon."""

from .cli import main

main()
