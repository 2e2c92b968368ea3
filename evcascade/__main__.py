"""The ``evcascade`` console script: ``evcascade infer ...`` and ``evcascade bench <what> ...``."""

from __future__ import annotations

import sys

USAGE = """usage: evcascade {infer,bench,train} [options]

  infer   answer a question about an event recording + video (evcascade infer --help)
  bench   run a benchmark and write its table/JSON (python -m evcascade.bench --help)
  train   cache / align / distill / export (evcascade train --help)"""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "infer":
        from evcascade.infer import main as infer_main

        return infer_main(rest, prog="evcascade infer")
    if command == "bench":
        from evcascade.bench.__main__ import main as bench_main

        return bench_main(rest)
    if command == "train":
        from evcascade.train.cli import main as train_main

        return int(train_main(rest, prog="evcascade train") or 0)
    print(f"evcascade: unknown command {command!r}; choose infer, bench or train", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
