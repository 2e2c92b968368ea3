"""Data: the synthetic world (scenes, rendering, questions, DSEC-like folders on disk).

>>> from evcascade.data import sample_scene, qa_pairs
>>> [qa.kind for qa in qa_pairs(sample_scene(seed=0))][:2]
['caption', 'moving']
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> module that defines it (imported on first use: rendering pulls in the simulator)
_EXPORTS: dict[str, str] = {
    "WorldConfig": "evcascade.data.world",
    "Scene": "evcascade.data.world",
    "SceneObject": "evcascade.data.world",
    "Background": "evcascade.data.world",
    "WorldSample": "evcascade.data.world",
    "sample_scene": "evcascade.data.world",
    "render_sample": "evcascade.data.world",
    "make_world_sample": "evcascade.data.world",
    "scene_seeds": "evcascade.data.world",
    "render_frames": "evcascade.data.render",
    "QA": "evcascade.data.questions",
    "caption": "evcascade.data.questions",
    "qa_pairs": "evcascade.data.questions",
    "world_vocabulary": "evcascade.data.questions",
    "write_scene": "evcascade.data.layout",
    "write_world": "evcascade.data.layout",
    "read_manifest": "evcascade.data.layout",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'evcascade.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
