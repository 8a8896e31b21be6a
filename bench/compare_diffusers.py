"""Thin wrapper: `python bench/compare_diffusers.py [ARGS]` == `gentron bench [ARGS]` (see docs/benchmarks.md)."""

import sys

from gentron.bench import main

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
