"""``python -m aligngym`` is the ``aligngym`` command."""

import sys

from .cli import main

sys.exit(main())
