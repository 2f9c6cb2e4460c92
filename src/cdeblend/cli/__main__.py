"""``python -m cdeblend.cli``: the ``cdeblend`` command."""

import sys

from . import main

sys.exit(main())
