"""What every benchmark shares: the environment record, table printing and JSON output."""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Any, Sequence


def environment_info(device: str = "cpu", load_before: tuple[float, ...] | None = None) -> dict[str, Any]:
    """Device, library versions, machine facts, the commit and the machine's load (``os.getloadavg()`` when the
    run started, ``load_before``, and now), recorded next to every figure: the machine may be shared."""
    import os

    import numpy as np
    import torch

    info: dict[str, Any] = {
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "numpy": np.__version__,
        "device": device,
        "cpu_count": os.cpu_count(),
        "loadavg_before": list(load_before) if load_before is not None else None,
        "loadavg_after": list(os.getloadavg()),
        "git_commit": COMMIT_AT_START,
    }
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:  # pragma: no cover - transformers is a hard dependency
        pass
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """A plain fixed-width table (also valid Markdown) of ``rows``; floats get 3 significant decimals."""
    if not rows:
        return "(no rows)"
    columns = list(columns or rows[0].keys())

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
        return str(value)

    body = [[cell(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(line[i]) for line in body)) for i, c in enumerate(columns)]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(columns, widths)) + " |"]
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    lines += ["| " + " | ".join(v.ljust(w) for v, w in zip(line, widths)) + " |" for line in body]
    return "\n".join(lines)


def write_json(out_dir: str | Path, name: str, payload: dict[str, Any]) -> Path:
    """Write ``payload`` as ``out_dir/name.json`` (creating the folder) and return the path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2, default=_jsonable))
    return path


def _jsonable(value: Any) -> Any:
    try:
        import numpy as np

        if isinstance(value, np.generic):
            return value.item()
        if isinstance(value, np.ndarray):
            return value.tolist()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def add_held_out_world_args(parser, name: str, *, max_new_tokens: int, draft_k: int) -> None:
    """The options of a benchmark that answers every question of held-out synthetic-world scenes with a cascade
    (``demo``, ``lossy``): which cascade, which scenes, decoding length, machine, and where ``<name>.json`` /
    ``<name>.png`` go."""
    parser.add_argument("--model", default="bundled", help="cascade folder, preset or 'bundled'")
    parser.add_argument("--scenes", type=int, default=20, help="held-out scenes")
    parser.add_argument("--seed", type=int, default=9000, help="seed of the held-out scene seeds")
    parser.add_argument("--questions", type=int, help="first N questions per scene (default: all)")
    parser.add_argument("--max-new-tokens", type=int, default=max_new_tokens)
    parser.add_argument("--draft-k", type=int, default=draft_k, help="most draft tokens per target forward")
    parser.add_argument("--duration-us", type=int, help="scene length (default: the world's 1.5 s)")
    add_machine_args(parser, f"{name}.json and {name}.png")


def add_machine_args(parser, writes: str) -> None:
    """Where a benchmark runs (``--device``, ``--threads``) and the folder ``--out`` for what it ``writes``."""
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--out", default="bench_out", help=f"folder for {writes}")


def add_twin_args(parser) -> None:
    """The cost twin's size (``bench/demo.py``'s ``build_twin``), or no twin rows."""
    parser.add_argument("--twin-hidden", type=int, default=1024, help="cost twin's text hidden size")
    parser.add_argument("--twin-layers", type=int, default=8, help="cost twin's text layers")
    parser.add_argument("--no-twin", action="store_true", help="skip the cost-twin rows")


def fresh_levels(levels):
    """A cascade's levels with a new n-gram memory each (model levels keep no state across requests), so one
    configuration never drafts from another's answers to the same questions."""
    from evcascade.decoding.ngram import NGramDrafter

    def fresh(level):
        if not isinstance(level, NGramDrafter):
            return level
        new = NGramDrafter(name=level.name, max_ngram=level.max_ngram, min_ngram=level.min_ngram)
        new.prior_acceptance = level.prior_acceptance
        return new

    return [fresh(level) for level in levels]


def save_report(out_dir: str | Path, name: str, report: dict[str, Any], plot) -> Path:
    """``<out_dir>/<name>.json`` and, drawn by ``plot(report, path)``, ``<name>.png``; says where; the JSON path."""
    path = write_json(out_dir, name, report)
    plot(report, path.with_suffix(".png"))
    print(f"wrote {path} and {path.with_suffix('.png')}")
    return path


def report_main(name: str, out_dir: str | Path, build, text, ok: str = "outputs_identical") -> int:
    """A bench's ``main`` tail: ``build()`` the report (a ``ValueError``: its message on stderr, exit 2), print
    ``text(report)``, write ``<out_dir>/<name>.json``; exit 0, or 1 when ``report[ok]`` is false (by default: an
    output differed from its reference)."""
    import sys

    try:
        report = build()
    except ValueError as error:
        print(f"evcascade.bench {name}: {error}", file=sys.stderr)
        return 2
    print(text(report))
    print(f"wrote {write_json(out_dir, name, report)}")
    return 0 if report[ok] else 1


def mismatch_exit_code(report: dict[str, Any], reference: str) -> int:
    """1 (and a line on stderr naming the rows) when a row's output differs from ``reference``'s, else 0."""
    import sys

    if report["outputs_identical"]:
        return 0
    bad = [r["row"] for r in report["rows"] if not r["identical"]]
    print(f"OUTPUT MISMATCH: {bad} differ from {reference}", file=sys.stderr)
    return 1


def git_commit() -> str | None:
    """The checkout's commit (with "+dirty" when files differ from it), recorded next to every figure; None outside git."""
    import subprocess

    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (commit + ("+dirty" if dirty else "")) or None


COMMIT_AT_START = git_commit()
"""The checkout's commit when this module was imported (a bench imports it as it starts): the code that ran, even
when commits land while a long bench runs (read at the end, it named a later commit)."""
