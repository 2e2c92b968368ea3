"""Batched verification: one target forward verifies the drafts of several requests (B > 1), continuously.

``BatchDecoder`` holds any number of requests ("rows"); each keeps its own answer so far, stop state, drafter
(a per-request copy of the cascade's top model level) and KV-cache row. A video request joins with its clip's
visual prefix only (the verifier's per-clip video features and prefix KV, computed once per clip and reused by
every question about it); its question tokens and its first draft block are fed in its first batched step, so
joining costs no forward of its own once the clip is cached. (A text-only request is prefilled whole at batch 1,
judging its first draft block there, as the engine's ``draft_in_prefill`` does.) Then it rides along in
``step()``:

    draft   row b: its level proposes k_b tokens after its answer so far      (k_b <= draft_k, ragged); rows
            whose levels are copies of one model draft together, one forward per position (``batch_draft.py``)
    verify  ONE forward over [pending_b, drafts_b] for every row               [B, N, V], N = max(1 + k_b);
            left-padded cache + 2-D attention mask, positions per row          short rows right-padded, masked
    accept  row b: longest prefix of drafts equal to the target's choices      greedy argmax or the coupled choice
            (``coupling.coupled_choice`` with the row's own (seed, position) noise), then the target's token
    commit  row b's cache keeps pending + accepted drafts: the rejected and padded tail is cut off (rows that cut
            more are shifted right, their front masked), so the cache never grows with rejected tokens; stops
            cut the new tokens exactly as ``StopChecker`` does for batch 1; finished rows leave

Requests may be added between any two steps (continuous batching: a new question does not wait for a long
answer). Each row's answer is its own batch-1 answer: greedy and coupled sampling choose each token from the
target's logits at that position and (seed, position) alone, whatever the drafts and the other rows. The one
caveat is floating point: a padded batched forward adds in another order than a batch-1 forward (differences of
~1e-6 in the logits), so an exact tie between two tokens could in principle break the other way, as it can
between HF ``generate`` at batch 1 and batched; the tests check equality on many mixes.

``decoding/scheduler.py`` runs a ``BatchDecoder`` on a worker thread behind a queue of futures, for any number of
callers (``LiveSession`` objects, threads). The visual prefix of a clip is computed once (the verifier's
prefix cache) and copied into each row of the batch: rows are not shared in memory (that needs a paged KV cache,
which serving engines such as vLLM provide; see the README's scale-out plan).
"""

from __future__ import annotations

import copy
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from evcascade.decoding.batch_draft import propose_together
from evcascade.decoding.coupling import PositionNoise, coupled_choice
from evcascade.decoding.drafters import DraftContext, Drafter
from evcascade.decoding.engine import GenerationOptions
from evcascade.decoding.stats import DecodeStats
from evcascade.decoding.stopping import StopChecker
from evcascade.decoding.verifier import Verifier, VerifyRequest
from evcascade.errors import InputError


@dataclass
class BatchRequest:
    """One request for the batch: the target's request, the drafters' context, its options and a caller's tag."""

    request: VerifyRequest
    context: DraftContext
    options: GenerationOptions = field(default_factory=GenerationOptions)
    tag: Any = None
    inputs: dict = field(default_factory=dict)
    """What the caller keeps about the request (e.g. its window), untouched by the decoder."""
    drafter: Drafter | None = None
    """This request's own drafter (used as is, not copied); None: a copy of the decoder's top model level."""


@dataclass
class BatchResult:
    """One finished request: its answer ``token_ids`` (list), text, stats (``target_forwards`` counts the batched
    forwards it took part in) and tag."""

    token_ids: list[int]
    text: str | None
    stats: DecodeStats
    tag: Any = None


@dataclass
class _Row:
    """A request in the batch."""

    item: BatchRequest
    level: Drafter | None
    stopper: StopChecker
    noise: PositionNoise | None
    stats: DecodeStats
    started_s: float
    prompt_ids: torch.LongTensor  # [1, L] the target's prompt
    generated: torch.LongTensor  # [1, n] the answer so far; the last token is pending (not in the cache)
    cached: int = 0  # real positions of this row in the batch cache (prompt + generated[:-1])
    stop: tuple[int, str] | None = None
    unfed: list[int] = field(default_factory=list)
    """Prompt tokens not yet in the cache, fed in the row's first batched step (a request that joined with only
    its clip's shared visual prefix cached: its question is prefilled inside the batch). The last one is the
    row's pending token until the answer has one."""
    first_token_pending: bool = False


class KVBatch:
    """Keys/values of several requests, left-padded to one width: ``layers[l] = (keys, values)`` ``[B, H, S, D]``
    and ``mask [B, S]`` (True where a position is real). Rows are added, dropped and trimmed between forwards."""

    def __init__(self) -> None:
        self.layers: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.mask: torch.Tensor | None = None  # [B, S] bool

    @property
    def batch_size(self) -> int:
        return 0 if self.mask is None else int(self.mask.shape[0])

    @property
    def width(self) -> int:
        return 0 if self.mask is None else int(self.mask.shape[1])

    def add_row(self, layers: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Append one request's cache (``[1, H, S_r, D]`` per layer, all positions real), copied."""
        length = int(layers[0][0].shape[-2])
        row_mask = torch.ones(1, length, dtype=torch.bool, device=layers[0][0].device)
        if self.mask is None:
            self.layers = [(k.clone(), v.clone()) for k, v in layers]
            self.mask = row_mask
            return
        width = max(self.width, length)
        pad_batch, pad_row = width - self.width, width - length
        self.layers = [(torch.cat([_pad_left(k, pad_batch), _pad_left(nk, pad_row)]),
                        torch.cat([_pad_left(v, pad_batch), _pad_left(nv, pad_row)]))
                       for (k, v), (nk, nv) in zip(self.layers, layers)]
        self.mask = torch.cat([_pad_left(self.mask, pad_batch), _pad_left(row_mask, pad_row)])

    def keep_rows(self, rows: Sequence[int]) -> None:
        """Keep only ``rows`` (in that order); an empty list empties the batch."""
        if not rows:
            self.layers, self.mask = [], None
            return
        index = torch.tensor(list(rows), device=self.mask.device)
        self.layers = [(k[index], v[index]) for k, v in self.layers]
        self.mask = self.mask[index]
        self._trim()

    def cut_tails(self, drops: Sequence[int]) -> None:
        """Drop the last ``drops[b]`` positions of row b (its rejected and padded tail): all rows lose the
        smallest drop; a row that loses more is shifted right by the difference, its front masked."""
        common = min(drops)
        if common:
            self.layers = [(k[..., : -common, :], v[..., : -common, :]) for k, v in self.layers]
            self.mask = self.mask[:, : -common]
        for b, drop in enumerate(drops):
            extra = drop - common
            if extra:
                for k, v in self.layers:  # our own tensors (the forward's concatenation): shift in place
                    k[b] = torch.roll(k[b], extra, dims=-2)
                    v[b] = torch.roll(v[b], extra, dims=-2)
                self.mask[b] = torch.roll(self.mask[b], extra)
                self.mask[b, :extra] = False
        self._trim()

    def _trim(self) -> None:
        """Drop leading columns that are padding in every row."""
        real = self.mask.any(dim=0).nonzero()
        start = int(real[0]) if real.numel() else self.width
        if start:
            self.layers = [(k[..., start:, :], v[..., start:, :]) for k, v in self.layers]
            self.mask = self.mask[:, start:]


def _pad_left(tensor: torch.Tensor, amount: int) -> torch.Tensor:
    """``tensor`` with ``amount`` zero (False) positions before its sequence axis (-2 for KV, -1 for a mask)."""
    if amount == 0:
        return tensor
    dim = -2 if tensor.ndim == 4 else -1
    shape = list(tensor.shape)
    shape[dim] = amount
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)


def drafting_copy(levels: Sequence[Drafter]) -> Drafter | None:
    """A per-request copy of the top model level (the one that drafts each row), or None when the cascade has
    none: the copy shares the weights and the per-clip feature memo, not the request state."""
    models = [level for level in levels if level.can_review]
    return copy.copy(models[-1]) if models else None


class BatchDecoder:
    """Several requests verified together by ``verifier``; each row drafts with its own copy of the top model
    level of ``levels`` (none: target-only batched decoding). ``lock`` guards the verifier's own batch-1 state
    (its prefill) when other threads use it too.

    >>> from evcascade.decoding.verifier import CausalLMVerifier
    >>> from evcascade.models.tiny import tiny_llama
    >>> decoder = BatchDecoder(CausalLMVerifier(tiny_llama(vocab_size=50)), [])
    >>> items = [BatchRequest(VerifyRequest(torch.tensor([p])), DraftContext(torch.tensor([p])),
    ...                       GenerationOptions(max_new_tokens=n, eos_token_ids=())) for p, n in (([1, 4], 3), ([2], 5))]
    >>> [len(result.token_ids) for result in decoder.run(items)]
    [3, 5]
    """

    def __init__(self, verifier: Verifier, levels: Sequence[Drafter] = (), *, lock: threading.Lock | None = None,
                 pad_token_id: int = 0) -> None:
        self.verifier, self.levels = verifier, list(levels)
        self.lock = lock if lock is not None else threading.Lock()
        self.pad_token_id = int(pad_token_id)
        self.rows: list[_Row] = []
        self.kv = KVBatch()
        self.forwards = 0
        """Batched verify forwards so far (prefills not counted)."""
        self.timings = {"verify": 0.0, "draft": 0.0, "prefill": 0.0}
        """Seconds in batched verify forwards, in drafting (every row's) and in batch-1 prefills, so far."""

    # -- joining and leaving -----------------------------------------------------------------------------------

    def add(self, item: BatchRequest) -> BatchResult | None:
        """Prefill ``item`` (judging its first draft block) and let it join; its result if it already finished."""
        if not isinstance(item, BatchRequest):
            raise InputError(f"add() takes a BatchRequest, got {type(item).__name__}")
        options = item.options
        if options.do_sample and options.sampling != "coupled" or options.acceptance != "lossless":
            raise InputError("batched decoding supports greedy and coupled sampling with the lossless rule, got "
                             f"sampling={options.sampling!r}, acceptance={options.acceptance!r}")
        started = time.perf_counter()
        prompt_ids = item.request.prompt_ids
        if not isinstance(prompt_ids, torch.Tensor) or prompt_ids.ndim != 2 or prompt_ids.shape[0] != 1 \
                or prompt_ids.shape[1] == 0:
            raise InputError(f"each request's prompt_ids must be [1, L >= 1], got {getattr(prompt_ids, 'shape', prompt_ids)}")
        level = None
        if options.draft_k:
            level = item.drafter if item.drafter is not None else drafting_copy(self.levels)
        params = options.sampling_params()
        seed = options.seed if options.seed is not None else torch.Generator().seed()
        noise = PositionNoise(seed, self.verifier.vocab_size) if params.do_sample else None
        stats = DecodeStats.for_levels([level.name] if level is not None else [])
        stats.sampling = "coupled" if params.do_sample else "greedy"
        stats.seed = seed if params.do_sample else None
        eos = options.eos_token_ids if options.eos_token_ids is not None else self.verifier.eos_token_ids
        stopper = StopChecker(eos_token_ids=eos, max_new_tokens=options.max_new_tokens,
                              stop_strings=options.stop_strings, tokenizer=options.tokenizer)
        row = _Row(item, level, stopper, noise, stats, started, prompt_ids, prompt_ids[:, :0])
        if level is not None:
            level.begin(item.context if noise is None else _with_noise(item.context, noise), sampling=params)
        prefix_length = self._shared_prefix_length(item.request)
        if prefix_length is not None:  # the question joins the batch: only the clip's visual prefix is prefilled
            prefix = VerifyRequest(prompt_ids[:, :prefix_length], item.request.pixel_values_videos,
                                   item.request.clip_key)
            with self.lock:
                misses, prefill_started = self.verifier.prefix_cache.misses, time.perf_counter()
                self.verifier.prefill(prefix)  # from the verifier's prefix cache when the clip was seen
                self.timings["prefill"] += time.perf_counter() - prefill_started
                stats.target_forwards += self.verifier.prefix_cache.misses - misses  # a prefix forward ran
                layers = [(k.clone(), v.clone()) for k, v in self.verifier.cache_tensors()]
            stats.vision_s, stats.prefill_s = self.verifier.timings["vision"], self.verifier.timings["prefill"]
            row.cached, row.unfed, row.first_token_pending = prefix_length, prompt_ids[0, prefix_length:].tolist(), True
            self.rows.append(row)
            self.kv.add_row(layers)
            return None
        drafts = prompt_ids.new_zeros(1, 0)
        if level is not None:
            room = min(options.draft_k, options.max_new_tokens - 1)
            if room > 0 and self.verifier.drafts_in_prefill:
                drafts = self._propose(row, room)
        with self.lock:  # the verifier's batch-1 state: its prefill, then a copy of the request's cache
            prefill_started = time.perf_counter()
            logits = self.verifier.prefill_with_draft(item.request, drafts) if drafts.shape[1] else \
                self.verifier.prefill(item.request)[:, None]  # [1, k+1, V]
            accepted, next_token = self._accept(row, drafts[0].tolist(), logits[0], 0)
            self.verifier.rollback(drafts.shape[1] - accepted)
            layers = [(k.clone(), v.clone()) for k, v in self.verifier.cache_tensors()]
            self.timings["prefill"] += time.perf_counter() - prefill_started
        stats.target_forwards += 1
        stats.vision_s, stats.prefill_s = self.verifier.timings["vision"], self.verifier.timings["prefill"]
        row.cached = prompt_ids.shape[1] + accepted
        self._commit(row, drafts[0, :accepted].tolist(), next_token, len(drafts[0]))
        stats.time_to_first_token_s = time.perf_counter() - started
        if row.stop is not None:
            return self._finish(row)
        self.rows.append(row)
        self.kv.add_row(layers)
        return None

    def _shared_prefix_length(self, request: VerifyRequest) -> int | None:
        """Where a video request's shared visual prefix ends (after its last ``<video>`` token), when a question
        follows it; None for requests prefilled whole at batch 1 (text-only verifiers, prompts ending at the video)."""
        video_token_id = getattr(self.verifier, "video_token_id", None)
        if video_token_id is None or request.pixel_values_videos is None:
            return None
        is_video = (request.prompt_ids[0] == video_token_id).nonzero().flatten()
        if not is_video.numel() or int(is_video[-1]) + 1 >= request.prompt_ids.shape[1]:
            return None
        return int(is_video[-1]) + 1

    def _finish(self, row: _Row) -> BatchResult:
        if row.level is not None:
            row.level.end(row.generated)
        stats = row.stats
        stats.stop_reason = row.stop[1] if row.stop else ""
        stats.num_tokens = row.generated.shape[1]
        stats.total_s = time.perf_counter() - row.started_s
        tokenizer = row.item.options.tokenizer
        ids = row.generated[0].tolist()
        text = tokenizer.decode(ids, skip_special_tokens=True) if tokenizer is not None else None
        return BatchResult(ids, text, stats, row.item.tag)

    # -- one step for every row ----------------------------------------------------------------------------

    def step(self) -> list[BatchResult]:
        """One draft -> verify -> accept -> commit step for every row; the requests that finished."""
        if not self.rows:
            return []
        device = self.verifier.device
        rooms = [min(row.item.options.draft_k, row.item.options.max_new_tokens - row.generated.shape[1] - 1)
                 for row in self.rows]
        drafting = [b for b, row in enumerate(self.rows) if row.level is not None and rooms[b] > 0]
        drafts_of = dict(zip(drafting, self._propose_rows([self.rows[b] for b in drafting],
                                                          [rooms[b] for b in drafting])))
        blocks = []  # per row: [pending] + drafts
        for b, row in enumerate(self.rows):
            head = row.unfed if row.unfed else [int(row.generated[0, -1])]  # the question, or the pending token
            blocks.append(head + drafts_of.get(b, []))
        width = max(len(block) for block in blocks)
        input_ids = torch.full((len(blocks), width), self.pad_token_id, dtype=torch.long, device=device)  # [B, N]
        new_mask = torch.zeros(len(blocks), width, dtype=torch.bool, device=device)  # [B, N]
        for b, block in enumerate(blocks):
            input_ids[b, : len(block)] = torch.tensor(block, device=device)
            new_mask[b, : len(block)] = True
        cached = torch.tensor([row.cached for row in self.rows], device=device)  # [B]
        position_ids = cached[:, None] + torch.arange(width, device=device)  # [B, N]
        attention_mask = torch.cat([self.kv.mask, new_mask], dim=1).long()  # [B, S+N]
        started = time.perf_counter()
        logits, layers = self._forward(input_ids, attention_mask, position_ids)  # [B, N, V]
        verify_s = time.perf_counter() - started
        self.forwards += 1
        self.timings["verify"] += verify_s
        self.kv.layers, self.kv.mask = layers, torch.cat([self.kv.mask, new_mask], dim=1)
        drops, finished, keep = [], [], []
        for b, (row, block) in enumerate(zip(self.rows, blocks)):
            head = max(1, len(row.unfed))  # row head - 1 judges the first draft
            drafts = block[head:]
            accepted, next_token = self._accept(row, drafts, logits[b, head - 1: len(block)], row.generated.shape[1])
            drops.append(width - head - accepted)
            row.cached += head + accepted
            row.unfed = []
            row.stats.target_forwards += 1
            row.stats.steps += 1
            row.stats.verify_s += verify_s
            self._commit(row, drafts[:accepted], next_token, len(drafts))
            if row.first_token_pending:
                row.first_token_pending = False
                row.stats.time_to_first_token_s = time.perf_counter() - row.started_s
            (finished if row.stop is not None else keep).append(b)
        self.kv.cut_tails(drops)
        results = [self._finish(self.rows[b]) for b in finished]
        if finished:
            self.rows = [self.rows[b] for b in keep]
            self.kv.keep_rows(keep)
        return results

    def run(self, items: Sequence[BatchRequest]) -> list[BatchResult]:
        """All ``items`` together to the end; results in the items' order."""
        results: dict[int, BatchResult] = {}
        for index, item in enumerate(items):
            tagged = BatchRequest(item.request, item.context, item.options, index, item.inputs, item.drafter)
            done = self.add(tagged)
            if done is not None:
                results[index] = done
        while self.rows:
            for result in self.step():
                results[result.tag] = result
        return [BatchResult(r.token_ids, r.text, r.stats, items[i].tag) for i, r in sorted(results.items())]

    # -- helpers ---------------------------------------------------------------------------------------------

    def _propose(self, row: _Row, k: int) -> torch.LongTensor:
        return torch.tensor([self._propose_rows([row], [k])[0]], dtype=torch.long, device=self.verifier.device)

    def _propose_rows(self, rows: Sequence[_Row], ks: Sequence[int]) -> list[list[int]]:
        """Each row's drafts (at most ``ks[i]``): rows whose levels are copies of one model draft together
        (``batch_draft.propose_together``), each as its own ``propose`` would; the time is shared out evenly."""
        if not rows:
            return []
        started = time.perf_counter()
        drafts = propose_together([row.level for row in rows], [row.generated for row in rows], ks)
        draft_s = time.perf_counter() - started
        self.timings["draft"] += draft_s
        proposals = []
        for row, draft, k in zip(rows, drafts, ks):
            row.stats.levels[0].draft_s += draft_s / len(rows)
            row.stats.levels[0].calls += 1
            ids = draft.token_ids.to(torch.long)  # [1, <= k]
            if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.verifier.vocab_size):
                raise ValueError(f"drafter {row.level.name!r} proposed ids outside [0, {self.verifier.vocab_size})")
            proposals.append(ids[0, :k].tolist())
        return proposals

    def _accept(self, row: _Row, drafts: list[int], logits: torch.Tensor, first_position: int) -> tuple[int, int]:
        """How many of ``drafts`` the target keeps and its token after them, from ``logits [1 + k, V]`` (row i:
        after the pending token and i drafts, i.e. answer position ``first_position + i``)."""
        params = row.item.options.sampling_params()
        noise = row.noise.rows(first_position, logits.shape[0]) if row.noise is not None else None
        choices = coupled_choice(logits, params, noise).tolist()  # [1 + k]
        accepted = 0
        while accepted < len(drafts) and drafts[accepted] == choices[accepted]:
            accepted += 1
        return accepted, int(choices[accepted])

    def _commit(self, row: _Row, kept: list[int], next_token: int, drafted: int) -> None:
        """Append the kept drafts and the target's token, cut at the row's first stop; tell the level."""
        if row.level is not None:
            if drafted:
                row.stats.levels[0].record(0, drafted, len(kept))
            row.level.accepted(len(kept), torch.tensor([next_token]))
        new_ids = torch.tensor([kept + [next_token]], device=row.generated.device)  # [1, m]
        num_generated = row.generated.shape[1]
        row.stop = row.stopper.first_stop(torch.cat([row.prompt_ids, row.generated], dim=1), num_generated, new_ids)
        if row.stop is not None:
            new_ids = new_ids[:, : row.stop[0]]
        row.generated = torch.cat([row.generated, new_ids], dim=1)

    def _forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor):
        """The target's forward over the batch: logits ``[B, N, V]`` (float32) and the grown keys/values."""
        from transformers import DynamicCache

        cache = DynamicCache(ddp_cache_data=self.kv.layers)
        with torch.no_grad():
            out = self.verifier.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                      past_key_values=cache, use_cache=True)
        layers = [(layer.keys, layer.values) for layer in out.past_key_values.layers]
        return out.logits.float(), layers


def _with_noise(context: DraftContext, noise: PositionNoise) -> DraftContext:
    from dataclasses import replace

    return replace(context, noise=noise)
