"""``OracleDrafter``: a drafter whose acceptance is set by hand, for measuring the engine against the EWIF bound.

It knows the target's greedy answer (``reference_ids``, from Hugging Face ``generate``) and at every draft
position proposes the reference token with probability ``acceptance``, else a different token. Under greedy
verification a draft is then kept with probability exactly ``acceptance`` given the drafts before it were kept,
which is the i.i.d. model behind EWIF (Leviathan et al. 2023). Its *cost* is real: a small ``ModelDrafter``
drafts the same number of tokens alongside (one forward per drafted token, KV cache and all) and its tokens
are thrown away, so the draft/target cost ratio is a measured one, not an assumption.

The random stream restarts at every ``begin`` (seeded), so repeated requests see the same accept/reject
pattern and their timings are comparable.
"""

from __future__ import annotations

import numpy as np
import torch

from evcascade.decoding.drafters import Draft, DraftContext, Drafter
from evcascade.decoding.model_drafter import ModelDrafter
from evcascade.decoding.sampling import GREEDY, SamplingParams
from evcascade.errors import InputError


class OracleDrafter(Drafter):
    """Proposes the target's own next token with probability ``acceptance`` (else a wrong one), paying a real
    small model's drafting cost when ``cost_model`` is given.

    >>> oracle = OracleDrafter(torch.tensor([[5, 6, 7, 8]]), acceptance=1.0, vocab_size=10)
    >>> oracle.begin(DraftContext(torch.tensor([[1, 2]])))
    >>> oracle.propose(torch.tensor([[5]]), k=3).token_ids
    tensor([[6, 7, 8]])
    """

    def __init__(self, reference_ids: torch.LongTensor, acceptance: float, *, vocab_size: int,
                 cost_model: ModelDrafter | None = None, seed: int = 0, name: str = "oracle") -> None:
        if not isinstance(reference_ids, torch.Tensor) or reference_ids.ndim != 2 or reference_ids.shape[0] != 1:
            raise InputError(f"reference_ids must be a LongTensor [1, n], got {getattr(reference_ids, 'shape', reference_ids)!r}")
        if not 0.0 <= float(acceptance) <= 1.0:
            raise InputError(f"acceptance must be in [0, 1], got {acceptance!r}")
        if vocab_size < 2:
            raise InputError(f"vocab_size must be >= 2 (a wrong token must exist), got {vocab_size!r}")
        self.reference = reference_ids[0].tolist()
        self.acceptance, self.vocab_size, self.cost_model = float(acceptance), int(vocab_size), cost_model
        self.seed, self.name = seed, name
        self._rng = np.random.default_rng(seed)

    @property
    def device(self) -> torch.device | None:
        return self.cost_model.device if self.cost_model is not None else None

    def begin(self, context: DraftContext, *, sampling: SamplingParams = GREEDY,
              generator: torch.Generator | None = None) -> None:
        self._rng = np.random.default_rng(self.seed)
        if self.cost_model is not None:
            self.cost_model.begin(context, sampling=sampling, generator=generator)

    def prepare(self) -> None:
        if self.cost_model is not None:
            self.cost_model.prepare()

    def propose(self, generated: torch.LongTensor, k: int) -> Draft:
        if self.cost_model is not None:
            self.cost_model.propose(generated, k)  # the real cost of drafting k tokens; its tokens are discarded
        hits = [self._rng.random() < self.acceptance for _ in range(k)]
        return self._block(generated, hits)

    def _block(self, generated: torch.LongTensor, hits: list[bool]) -> Draft:
        """The draft after ``generated``: per position the reference token where ``hits`` says so, else a wrong
        one (the next id); ``[1, len(hits)]``."""
        start = generated.shape[1]
        ids = []
        for position, hit in enumerate(hits, start):
            right = self.reference[position] if position < len(self.reference) else 0
            ids.append(right if hit else (right + 1) % self.vocab_size)
        return Draft(torch.tensor([ids], dtype=torch.long, device=generated.device).view(1, -1), None)  # [1, k]

    def accepted(self, num_accepted: int, next_token: torch.LongTensor) -> None:
        if self.cost_model is not None:
            self.cost_model.accepted(num_accepted, next_token)
