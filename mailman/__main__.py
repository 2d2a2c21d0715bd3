"""``python -m mailman``: the same as the ``mailman`` command."""

import sys

from mailman.cli import main

sys.exit(main())
