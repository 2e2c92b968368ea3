"""Data: the synthetic world (scenes, rendering, questions, DSEC-like folders on disk).

>>> from evcascade.data import sample_scene, qa_pairs
>>> [qa.kind for qa in qa_pairs(sample_scene(seed=0))][:3]
['caption', 'detail', 'moving']
"""

from __future__ import annotations

from evcascade._lazy import lazy_getattr


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


__getattr__ = lazy_getattr(__name__, globals(), _EXPORTS)


def __dir__() -> list[str]:
    return __all__
