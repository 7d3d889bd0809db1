"""Topology comparison: the same towers, data and budget under each embedding geometry (issue 6).

Usage (from the repository root)::

    python benchmarks/topologies.py                    # full grid, digit-pairs on CPU, 2 jobs at a time
    python benchmarks/topologies.py --quick            # smoke run: 1 seed, 20 steps, 2 noise levels
    python benchmarks/topologies.py --dry-run          # print the plan and the commands only
    python benchmarks/topologies.py --report-only      # tables and plots from --output's results files
    python benchmarks/topologies.py --mode fast        # the fast mode: MLP towers on fixed inputs
    python benchmarks/topologies.py --mode fast --help # its flags

The benchmark is the package ``benchmarks/topology/`` (its layers are listed in its ``__init__``); this file
is its command line. Details and results: docs/benchmarks-topologies.md and docs/benchmarks.md.
"""

from __future__ import annotations

import sys

from topology.cli import main  # benchmarks/ is on sys.path: scripts run from there

if __name__ == "__main__":
    sys.exit(main())
