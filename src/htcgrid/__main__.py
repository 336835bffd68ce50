"""Allows ``python -m htcgrid``."""

import sys

from .cli import main

sys.exit(main())
