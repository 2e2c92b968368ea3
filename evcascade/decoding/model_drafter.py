"""``ModelDrafter``: a small causal LM as a cascade level, with its own KV cache and an optional visual prefix.

The drafter keeps the ids whose keys/values sit in its cache. Every call compares them with the sequence it
is asked about and crops the cache back to the longest common prefix before feeding the rest, so a rejected
draft (or a draft that another level wrote into the sequence) is rolled back without any bookkeeping from the
caller; ``accepted`` crops eagerly so the cache never holds rejected tokens between steps.

Cache layout: ``[visual prefix (Np embeddings)][text prompt][answer so far][draft]``.
"""

from __future__ import annotations

from typing import Callable

import torch

from evcascade.decoding.coupling import coupled_choice
from evcascade.decoding.drafters import Draft, DraftContext, Drafter
from evcascade.decoding.sampling import GREEDY, SamplingParams, probabilities, sample
from evcascade.errors import InputError

PrefixFn = Callable[[DraftContext], "torch.Tensor | None"]


class ModelDrafter(Drafter):
    """Any Hugging Face causal LM sharing the target tokenizer, drafting autoregressively or reviewing drafts.

    ``prefix_fn(context)`` may return embeddings ``[B, Np, D]`` fed before the text prompt (e.g. event-derived
    visual tokens). ``vocab_size`` is the meaningful vocabulary when the output layer is padded (default: the
    output layer's width); logits above it are dropped. Ids the model cannot embed (a target-only id such as
    ``<video>`` in the answer) are fed as ``unknown_id``: drafts get worse there, the output does not change.

    >>> from evcascade.models.tiny import tiny_llama
    >>> drafter = ModelDrafter(tiny_llama(vocab_size=40))
    >>> drafter.begin(DraftContext(prompt_ids=torch.tensor([[1, 7, 9]])))
    >>> drafter.propose(torch.tensor([[5]]), k=3).probs.shape
    torch.Size([1, 3, 40])
    """

    can_review = True

    def __init__(self, model, *, prefix_fn: PrefixFn | None = None, name: str = "draft",
                 vocab_size: int | None = None, unknown_id: int = 0) -> None:
        self.model = model.eval()
        self.prefix_fn, self.name, self.unknown_id = prefix_fn, name, unknown_id
        self._embed_rows = int(model.get_input_embeddings().weight.shape[0])
        logits_width = int(model.get_output_embeddings().weight.shape[0])
        if vocab_size is not None and not 0 < vocab_size <= logits_width:
            raise InputError(f"vocab_size must be in [1, {logits_width}] (the drafter's logits), got {vocab_size!r}")
        self.vocab_size = int(vocab_size or logits_width)
        self._sampling, self._generator, self._noise = GREEDY, None, None
        self._prompt: torch.LongTensor | None = None  # [B, L]
        self._prefix: torch.Tensor | None = None  # [B, Np, D]
        self._unprepared: DraftContext | None = None  # the request whose prefix and prefill are still to do
        self._cache = None
        self._ids: torch.LongTensor | None = None  # [B, m] text ids whose keys/values are cached (after the prefix)
        self._proposal_start = 0  # len(prompt + generated) at the last propose/review

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def begin(self, context: DraftContext, *, sampling: SamplingParams = GREEDY,
              generator: torch.Generator | None = None) -> None:
        self._sampling, self._generator = sampling, generator
        self._noise = context.noise if sampling.do_sample else None  # coupled sampling: the target's own noise
        self._prompt = context.prompt_ids.to(self.device, torch.long)
        self._cache, self._ids, self._proposal_start, self._prefix = None, None, 0, None
        self._unprepared = context  # the visual prefix and the prefill wait for prepare(): unused, they cost nothing

    def prepare(self) -> None:
        """Compute the visual prefix and prefill prompt + prefix (once per request; so that per-step costs
        measure drafting only)."""
        context, self._unprepared = self._unprepared, None
        if context is None:
            return
        self._prefix = self._prefix_of(context)
        # a prefix before an empty prompt waits for the first proposal's ids: prefilled alone, it would leave
        # nothing to feed then (and a proposal after nothing failed)
        if self._prompt.shape[1]:
            self._logits_after(self._prompt)

    def propose(self, generated: torch.LongTensor, k: int) -> Draft:
        self.prepare()
        sequence = self._sequence(generated)
        if k <= 0:
            return Draft(sequence.new_zeros(sequence.shape[0], 0), None)
        logits = self._logits_after(sequence)  # [B, V]
        ids, dists = [], []
        for i in range(k):
            token, dist = self.pick(logits, generated.shape[1] + i)  # [B], [B, V]
            ids.append(token)
            dists.append(dist)
            if i < k - 1:
                logits = self._feed(token[:, None])[:, -1]
        return Draft(torch.stack(ids, dim=1), torch.stack(dists, dim=1))  # [B, k], [B, k, V]

    def pick(self, logits: torch.Tensor, position: int) -> tuple[torch.LongTensor, torch.Tensor]:
        """The drafted token ``[B]`` at answer ``position`` after next-token ``logits [B, V]`` and the processed
        distribution ``[B, V]`` it comes from (``propose``'s rule, also used by batched drafting)."""
        dist = probabilities(logits, self._sampling)  # [B, V]
        return self._choose(logits, dist, position), dist

    def _choose(self, logits: torch.Tensor, dist: torch.Tensor, position: int) -> torch.LongTensor:
        """The drafted token ``[B]`` at answer ``position``: greedy argmax, the coupled choice with the target's
        noise there, or a draw from ``dist`` (standard speculative sampling)."""
        if not self._sampling.do_sample:
            return logits.argmax(dim=-1)
        if self._noise is not None:
            return coupled_choice(logits, self._sampling, self._noise(position))
        return sample(dist, self._generator)

    def review(self, generated: torch.LongTensor, candidate_ids: torch.LongTensor) -> torch.Tensor:
        self.prepare()
        sequence = self._sequence(generated)
        num_candidates = candidate_ids.shape[1]
        kept = self._crop_to_common_prefix(sequence)
        logits = self._feed(torch.cat([sequence[:, kept:], candidate_ids.to(sequence)], dim=1))  # [B, n, V]
        return logits[:, -(num_candidates + 1):]  # [B, m+1, V]

    def accepted(self, num_accepted: int, next_token: torch.LongTensor) -> None:
        if self._ids is not None:
            self._crop(min(self._ids.shape[1], self._proposal_start + num_accepted))

    # -- batched drafting (decoding/batch_draft.py drafts several requests' copies of one model together) ----

    def start_batched(self, generated: torch.LongTensor) -> tuple[torch.Tensor | None, torch.LongTensor] | None:
        """Begin a proposal after ``generated`` whose forwards someone else runs: ``(prefix, ids)``, what the
        cache lacks of ``visual prefix + prompt + generated``: the prefix embeddings ``[1, Np, D]`` (a request not
        yet prepared, whose prefill joins the batch) or None, then the ids ``[1, c]`` (their last one's logits
        give the first draft; the cache is cropped to what it shares with the sequence). None: nothing to feed
        (an empty request) or a batch of several sequences: the request proposes alone."""
        sequence = self._sequence(generated)
        if sequence.shape[0] != 1:
            return None
        if self._unprepared is not None:  # prepare() without its forward: the prefill is fed in the batch
            context, self._unprepared = self._unprepared, None
            self._prefix = self._prefix_of(context)
        if self._cache is None:
            return (self._prefix, sequence) if sequence.shape[1] else None
        return None, sequence[:, self._crop_to_common_prefix(sequence):]

    def cache_layers(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The cached keys/values, ``(keys, values)`` ``[1, H, S, D]`` per layer (all S positions real); [] if none."""
        return [] if self._cache is None else [(layer.keys, layer.values) for layer in self._cache.layers]

    def adopt_batched(self, layers: list[tuple[torch.Tensor, torch.Tensor]], fed_ids: torch.LongTensor) -> None:
        """End a batched proposal: the cache becomes ``layers`` (this request's positions only, ``[1, H, S', D]``),
        which hold the old cache plus what ``start_batched`` returned and the drafts fed after it; ``fed_ids
        [1, m]``: the text ids among them."""
        from transformers import DynamicCache

        self._cache = DynamicCache(ddp_cache_data=layers)
        fed_ids = fed_ids.to(self._prompt.device, torch.long)  # (not self.device: a parameter walk per call)
        self._ids = fed_ids if self._ids is None else torch.cat([self._ids, fed_ids], dim=1)

    def safe_ids(self, ids: torch.LongTensor) -> torch.LongTensor:
        """``ids`` with those the model cannot embed replaced by ``unknown_id``."""
        return ids.masked_fill(ids >= self._embed_rows, self.unknown_id)

    # -- cache management ------------------------------------------------------------------------------------

    def _sequence(self, generated: torch.LongTensor) -> torch.LongTensor:
        if self._prompt is None:
            raise InputError(f"drafter {self.name!r}: propose() called before begin()")
        sequence = torch.cat([self._prompt, generated.to(self.device, torch.long)], dim=1)  # [B, L+n]
        self._proposal_start = sequence.shape[1]
        return sequence

    def _logits_after(self, sequence: torch.LongTensor) -> torch.Tensor:
        """Next-token logits ``[B, V]`` after ``sequence``, reusing the cached common prefix."""
        kept = self._crop_to_common_prefix(sequence)
        return self._feed(sequence[:, kept:])[:, -1]  # an empty feed on the first call runs the visual prefix alone

    def _crop_to_common_prefix(self, sequence: torch.LongTensor) -> int:
        """Crop the cache to the longest cached prefix of ``sequence`` that leaves >= 1 id to feed; its length."""
        if self._ids is None:
            return 0
        width = max(0, min(self._ids.shape[1], sequence.shape[1] - 1))
        same = (self._ids[:, :width] == sequence[:, :width]).all(dim=0).long()  # [width]
        kept = int(same.cumprod(dim=0).sum())
        self._crop(kept)
        return kept

    def _crop(self, length: int) -> None:
        drop = self._ids.shape[1] - length
        if drop > 0:
            self._cache.crop(-drop)  # DynamicCache.crop takes the count to drop as a negative number (5.x)
            self._ids = self._ids[:, :length]

    def _feed(self, ids: torch.LongTensor) -> torch.Tensor:
        """Append ``ids [B, n]`` (and the visual prefix on the first call) to the cache; logits ``[B, n', V]``."""
        safe_ids = self.safe_ids(ids)
        inputs: dict = {"input_ids": safe_ids}
        if self._cache is None and self._prefix is not None:
            embeds = self.model.get_input_embeddings()(safe_ids)  # [B, n, D]
            inputs = {"inputs_embeds": torch.cat([self._prefix, embeds], dim=1)}  # [B, Np+n, D]
        with torch.no_grad():
            out = self.model(cache=self._cache, use_cache=True, **inputs)
        self._cache = out.cache
        self._ids = ids if self._ids is None else torch.cat([self._ids, ids], dim=1)
        return out.logits[..., : self.vocab_size].float()  # [B, n', V]

    def _prefix_of(self, context: DraftContext) -> torch.Tensor | None:
        if self.prefix_fn is None:
            return None
        prefix = self.prefix_fn(context)
        if prefix is None:
            return None
        hidden = int(self.model.get_input_embeddings().weight.shape[1])
        batch = context.prompt_ids.shape[0]
        if not isinstance(prefix, torch.Tensor) or prefix.ndim != 3 or prefix.shape[0] != batch or prefix.shape[2] != hidden:
            raise InputError(f"drafter {self.name!r}: prefix_fn must return embeddings [B={batch}, Np, D={hidden}] or "
                             f"None, got {tuple(prefix.shape) if isinstance(prefix, torch.Tensor) else type(prefix).__name__}")
        return prefix.to(self.device, next(self.model.parameters()).dtype)
