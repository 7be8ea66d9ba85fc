"""Subcommands of the ``spool`` command line, one module each."""
