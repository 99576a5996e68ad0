"""``python -m exesdb_broker`` runs the daemon."""

from ._start import main

main()
