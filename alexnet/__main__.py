"""``python -m alexnet``: the same as the ``alexnet`` command."""

import sys

from alexnet.cli import main

sys.exit(main())
