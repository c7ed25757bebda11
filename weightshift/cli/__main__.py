"""``python -m weightshift.cli``: the ``weightshift`` command."""

import sys

from weightshift.cli import main

sys.exit(main())
