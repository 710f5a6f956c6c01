"""``python -m prvr``: the same command line as the ``prvr`` script."""

import sys

from prvr.cli import main

sys.exit(main())
