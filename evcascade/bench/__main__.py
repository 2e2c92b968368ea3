"""``python -m evcascade.bench <what> [options]``: one entry point for every benchmark.

Each benchmark module defines ``main(argv) -> int``; ``<what> --help`` lists its options.
"""

from __future__ import annotations

import importlib
import sys

# what -> module with main(argv)
BENCHMARKS: dict[str, str] = {
    "events": "evcascade.bench.events",
    "engine": "evcascade.bench.engine",
    "lossy": "evcascade.bench.lossy",
    "demo": "evcascade.bench.demo",
    "trees": "evcascade.bench.trees",
    "gpu": "evcascade.bench.gpu",
    "provisional": "evcascade.bench.provisional",
    "batch": "evcascade.bench.batch",
    "prefix": "evcascade.bench.prefix",
    "soak": "evcascade.bench.soak",
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        print("\nbenchmarks: " + ", ".join(sorted(BENCHMARKS)))
        return 0 if argv else 2
    what, rest = argv[0], argv[1:]
    if what not in BENCHMARKS:
        print(f"evcascade.bench: unknown benchmark {what!r}; choose one of {', '.join(sorted(BENCHMARKS))}", file=sys.stderr)
        return 2
    return int(importlib.import_module(BENCHMARKS[what]).main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
