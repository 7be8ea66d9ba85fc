"""The demos behind ``spool demo``: library code, so they run from Python too."""
