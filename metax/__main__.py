"""`python -m metax ...` is the `metax` command."""

import sys

from metax.experiment.cli import main

if __name__ == "__main__":
    sys.exit(main())
