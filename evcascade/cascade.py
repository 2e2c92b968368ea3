"""`Cascade`: the user-facing assembly of drafters and the Video-LLaVA verifier (floor 4).

This module resolves a ``--model`` argument (the bundled demo cascade, a preset name, or a local
folder) and builds the decoding stack from it.
"""

from __future__ import annotations

from pathlib import Path

from evcascade.errors import InputError

BUNDLED = "bundled"
BUNDLED_DIR = Path(__file__).resolve().parent / "assets" / "demo_cascade"


def resolve_model(name: str) -> Path | None:
    """Where the weights for ``name`` live; None when the bundled demo cascade is not installed.

    ``name`` is ``"bundled"`` (the demo cascade shipped in the package) or a local folder.
    """
    if name == BUNDLED:
        return BUNDLED_DIR if (BUNDLED_DIR / "cascade.json").is_file() else None
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    raise InputError(
        f"--model {name!r} is neither 'bundled' nor an existing folder; "
        "use the bundled default (omit --model) or a folder written by save_pretrained"
    )
