"""Speculative decoding: drafters propose, a verifier (the target model) checks, the engine loops.

Names are imported lazily (module ``__getattr__``) so ``import evcascade.decoding`` is cheap and works
while some modules are still being written.

>>> from evcascade.decoding import LRUCache
>>> LRUCache(maxsize=1).stats()["maxsize"]
1
"""

from __future__ import annotations

from evcascade._lazy import lazy_getattr

from typing import TYPE_CHECKING

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    "Verifier": "evcascade.decoding.verifier",
    "VerifyRequest": "evcascade.decoding.verifier",
    "CausalLMVerifier": "evcascade.decoding.verifier",
    "VideoLlavaVerifier": "evcascade.decoding.verifier",
    "LRUCache": "evcascade.decoding.feature_cache",
    "content_key": "evcascade.decoding.feature_cache",
    "VideoLlavaPrompter": "evcascade.decoding.prompting",
    "Prompt": "evcascade.decoding.prompting",
    "check_prompt_fits": "evcascade.decoding.prompting",
    "Drafter": "evcascade.decoding.drafters",
    "Draft": "evcascade.decoding.drafters",
    "DraftContext": "evcascade.decoding.drafters",
    "NGramDrafter": "evcascade.decoding.drafters",
    "ModelDrafter": "evcascade.decoding.drafters",
    "CascadeDecoder": "evcascade.decoding.engine",
    "GenerationOptions": "evcascade.decoding.engine",
    "DecodeResult": "evcascade.decoding.engine",
    "DecodeStats": "evcascade.decoding.stats",
    "PositionNoise": "evcascade.decoding.coupling",
    "coupled_choice": "evcascade.decoding.coupling",
    "TokenTree": "evcascade.decoding.tree",
    "build_tree": "evcascade.decoding.tree",
}

__all__ = sorted(_EXPORTS)


__getattr__ = lazy_getattr(__name__, globals(), _EXPORTS)


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:  # pragma: no cover
    from evcascade.decoding.coupling import PositionNoise, coupled_choice
    from evcascade.decoding.drafters import Draft, DraftContext, Drafter, ModelDrafter, NGramDrafter
    from evcascade.decoding.engine import CascadeDecoder, DecodeResult, GenerationOptions
    from evcascade.decoding.feature_cache import LRUCache, content_key
    from evcascade.decoding.prompting import Prompt, VideoLlavaPrompter, check_prompt_fits
    from evcascade.decoding.stats import DecodeStats
    from evcascade.decoding.tree import TokenTree, build_tree
    from evcascade.decoding.verifier import CausalLMVerifier, VerifyRequest, Verifier, VideoLlavaVerifier
