"""``python -m mailman``: the same as the ``mailman`` command."""

import sys

from mailman.cli import main

if __name__ == "__main__":  # only when run (`python -m mailman`), not when imported
    sys.exit(main())
