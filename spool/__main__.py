"""``python -m spool``: the ``spool`` command."""

import sys

from spool.cli import main

sys.exit(main())
