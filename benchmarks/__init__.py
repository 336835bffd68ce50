"""htcgrid's benchmark suite: figures of the client and the embedded grid, each next to its
baseline measured in the same run, and next to its target.

Run it with ``python benchmarks/run.py`` (``--quick`` for a smoke run); see
``docs/benchmarks.md``.
"""
