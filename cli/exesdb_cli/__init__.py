"""exesdb_cli: the ``exesdb`` command-line tool."""
