"""`python -m reconciler.cli`: the `stella` command, for when the console script is not installed."""

import sys

from . import main

sys.exit(main())
