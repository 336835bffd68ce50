"""Run htcgrid's benchmarks: ``python benchmarks/run.py [--quick] [--only NAME] [--json PATH]``.

A launcher for :mod:`benchmarks.suite`, usable from a checkout without installing anything
beyond htcgrid itself (``pip install '.[bench]'`` adds dask for one context figure).
"""

import sys
from pathlib import Path

if __name__ == "__main__":
    # Run as a script, this folder is on sys.path but the folder holding the package is not.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from benchmarks.suite import main

    sys.exit(main())
