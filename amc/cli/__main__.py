"""``python -m amc.cli``: the ``amc`` command line."""

import sys

from amc.cli import main

sys.exit(main())
