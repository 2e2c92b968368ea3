"""The bundled demo cascade's pieces: the world tokenizer, the scene pool and the demo target's training recipe.

No pretrained weights can be downloaded, so evcascade trains its own small Video-LLaVA on the synthetic
world (``demos/train_demo_target.py``) and ships it in ``evcascade/assets/demo_cascade/target``.

>>> from evcascade.demo import world_tokenizer
>>> world_tokenizer().convert_ids_to_tokens([0, 1, 2, 3])
['<unk>', '<s>', '</s>', '<pad>']
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> module that defines it (imported on first use: the recipe pulls in torch and transformers)
_EXPORTS: dict[str, str] = {
    "world_tokenizer": "evcascade.demo.tokenizer",
    "world_tokens": "evcascade.demo.tokenizer",
    "ScenePool": "evcascade.demo.scenes",
    "render_pool": "evcascade.demo.scenes",
    "load_or_render_pool": "evcascade.demo.scenes",
    "sampled_frame_times_us": "evcascade.demo.scenes",
    "DemoTargetConfig": "evcascade.demo.target",
    "RecipeConfig": "evcascade.demo.target",
    "demo_target_config": "evcascade.demo.target",
    "build_demo_target": "evcascade.demo.target",
    "save_demo_target": "evcascade.demo.target",
    "mp4_pool": "evcascade.demo.scenes",
    "jpeg_roundtrip": "evcascade.demo.augment",
    "SceneGraphHeads": "evcascade.demo.supervision",
    "SceneLabels": "evcascade.demo.supervision",
    "scene_labels": "evcascade.demo.supervision",
    "ExampleEncoder": "evcascade.demo.target",
    "recipe_losses": "evcascade.demo.target",
    "train_target": "evcascade.demo.target",
    "evaluate_target": "evcascade.demo.evaluation",
}

__all__ = ["DemoTargetConfig", "ExampleEncoder", "RecipeConfig", "SceneGraphHeads", "SceneLabels", "ScenePool",
           "build_demo_target", "demo_target_config", "evaluate_target", "jpeg_roundtrip", "load_or_render_pool",
           "mp4_pool", "recipe_losses", "render_pool", "sampled_frame_times_us", "save_demo_target", "scene_labels",
           "train_target", "world_tokenizer", "world_tokens"]
assert sorted(__all__) == sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'evcascade.demo' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
