"""``python -m mailman``: the same as the ``mailman`` command."""

import sys

from mailman.cli import main

if __name__ == "__main__":  # not when a spawned process (the SQLite writer) imports it
    sys.exit(main())
