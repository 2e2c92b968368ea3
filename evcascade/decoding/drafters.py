"""The drafter interface: what every level of a cascade implements, and what it may know about a request.

A drafter proposes ``k`` tokens after ``prompt + generated`` (its processed probabilities too, when it has
them) and then hears how many were accepted. Implementations:

- ``NGramDrafter`` (``decoding/ngram.py``): Max-Gram / prompt lookup, no model, no probabilities;
- ``ModelDrafter`` (``decoding/model_drafter.py``): any causal LM sharing the target's tokenizer, optionally
  conditioned on a visual prefix of embeddings; it can also *review* a lower level's drafts (vertical cascade).

Vocabulary rule (checked by ``check_vocabulary`` when a ``CascadeDecoder`` is built): a drafter's meaningful
vocabulary ``vocab_size`` must cover every text id of the target and name no id the target lacks,
``verifier.text_vocab_size <= drafter.vocab_size <= verifier.vocab_size``. So a 32000-id Llama drafter fits
Video-LLaVA-7B-hf (32000 text ids, 32064 logits); a drafter whose output layer is padded declares its
meaningful size with ``ModelDrafter(..., vocab_size=...)``; a GPT-2 (50257) drafter is refused.
"""

from __future__ import annotations

import abc
import importlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from evcascade.decoding.sampling import GREEDY, SamplingParams
from evcascade.errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    from evcascade.decoding.coupling import PositionNoise
    from evcascade.decoding.model_drafter import ModelDrafter
    from evcascade.decoding.ngram import NGramDrafter
    from evcascade.events.container import Events
    from evcascade.video import Video

# re-exported implementations, imported on first use (they import this module)
_IMPLEMENTATIONS: dict[str, str] = {
    "NGramDrafter": "evcascade.decoding.ngram",
    "ModelDrafter": "evcascade.decoding.model_drafter",
}


def __getattr__(name: str) -> Any:
    module = _IMPLEMENTATIONS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


@dataclass
class DraftContext:
    """What a drafter may know about a request besides the answer so far."""

    prompt_ids: torch.LongTensor
    """``[B, L]`` the TEXT prompt ids (visual placeholder tokens removed); L may be 0."""
    events: "Events | None" = None
    video: "Video | None" = None
    extras: dict = field(default_factory=dict)
    """Anything else a ``prefix_fn`` needs (e.g. precomputed draft visual features)."""
    noise: "PositionNoise | None" = None
    """Set by the engine under coupled sampling: the request's per-position Gumbel noise (``decoding/coupling.py``).
    A sampling drafter that draws its token at answer position p as ``coupled_choice(logits, sampling, noise(p))``
    proposes the target's own token whenever the two perturbed argmaxes agree."""


@dataclass
class Draft:
    """A proposal: ``token_ids [B, k]`` (k may be smaller than asked, even 0) and the drafter's processed
    distributions ``probs [B, k, V]`` they were drawn from, or None for a drafter without probabilities."""

    token_ids: torch.LongTensor
    probs: torch.Tensor | None = None

    @property
    def num_tokens(self) -> int:
        return int(self.token_ids.shape[1])


class Drafter(abc.ABC):
    """One level of a cascade: proposes tokens for a reviewer (the target, or a bigger drafter above it)."""

    name: str = "drafter"
    vocab_size: int | None = None
    """Meaningful vocabulary (see the module docstring); None for drafters that only copy seen ids."""
    can_review: bool = False
    """True if ``review`` scores another level's drafts (only such a level can be sped up vertically)."""
    prior_acceptance: float | None = None
    """The adaptive policy's starting estimate of this level's per-token acceptance (e.g. the offline estimate
    its training measured); None uses the policy's default. Observations replace it within a few steps."""

    @property
    def device(self) -> torch.device | None:
        """Where the drafter computes (None: anywhere, e.g. plain Python)."""
        return None

    @abc.abstractmethod
    def begin(self, context: DraftContext, *, sampling: SamplingParams = GREEDY,
              generator: torch.Generator | None = None) -> None:
        """Start a request; ``sampling`` and ``generator`` are the ones the target uses for this request."""

    def prepare(self) -> None:
        """The request's up-front work (e.g. a model level's prefill of its prompt and visual prefix). The engine
        calls it just before the level's first ``propose`` or ``review`` of a request, so a level the policy
        leaves out of a request costs nothing; a level must also prepare itself if called without it."""

    @abc.abstractmethod
    def propose(self, generated: torch.LongTensor, k: int) -> Draft:
        """Up to ``k`` tokens following ``prompt + generated`` (``generated [B, n]``: the answer so far)."""

    def accepted(self, num_accepted: int, next_token: torch.LongTensor) -> None:
        """The reviewer kept ``num_accepted`` of the last proposal and appended ``next_token [B]`` after them."""

    def review(self, generated: torch.LongTensor, candidate_ids: torch.LongTensor) -> torch.Tensor:
        """This level's logits ``[B, m+1, V]`` over ``candidate_ids [B, m]`` drafted after ``prompt + generated``
        (row i: the token after ``candidate_ids[:, :i]``), in one forward. Only for ``can_review`` levels."""
        raise NotImplementedError(f"drafter {self.name!r} cannot review drafts")

    def end(self, generated: torch.LongTensor) -> None:
        """The request finished with answer ``generated [B, n]`` (e.g. to remember it for later requests)."""


def check_vocabulary(drafter: Drafter, text_vocab_size: int, vocab_size: int) -> None:
    """Raise ``InputError`` unless ``text_vocab_size <= drafter.vocab_size <= vocab_size`` (or it is None).

    >>> class Copier(Drafter):
    ...     vocab_size = 50257
    ...     def begin(self, context, **kw): pass
    ...     def propose(self, generated, k): pass
    >>> check_vocabulary(Copier(), 32000, 32064)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    evcascade.errors.InputError: drafter 'drafter' has a vocabulary of 50257 ids but the target's text vocabulary has 32000 ...
    """
    if drafter.vocab_size is None:
        return
    if not text_vocab_size <= drafter.vocab_size <= vocab_size:
        raise InputError(
            f"drafter {drafter.name!r} has a vocabulary of {drafter.vocab_size} ids but the target's text vocabulary "
            f"has {text_vocab_size} (logits: {vocab_size}); a drafter must share the target's tokenizer "
            f"(its meaningful vocabulary in [{text_vocab_size}, {vocab_size}])"
        )
