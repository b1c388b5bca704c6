"""``python -m lvs_operator``: the ``lvs-operator`` command."""

import sys

from lvs_operator.cli import main

if __name__ == "__main__":
    sys.exit(main())
