"""Batched verification: one target forward verifies the drafts of several requests (B > 1), continuously.

``BatchDecoder`` holds any number of requests ("rows"); each keeps its own answer so far, stop state, drafter
(a per-request copy of the cascade's top model level) and KV-cache row. A video request joins with its clip's
visual prefix only (the verifier's per-clip video features and prefix KV, computed once per clip and shared by
every question about it, see below); its question tokens and its first draft block are fed in its first batched
step, so joining costs no forward of its own once the clip is cached. (A text-only request is prefilled whole at
batch 1, judging its first draft block there, as the engine's ``draft_in_prefill`` does.) Then it rides along in
``step()``:

    draft   row b: its level proposes k_b tokens after its answer so far      (k_b <= draft_k, ragged); rows
            whose levels are copies of one model draft together, one forward per position (``batch_draft.py``)
    verify  ONE forward over [pending_b, drafts_b] for every row, packed:      [1, T], T = sum(1 + k_b) real tokens;
            the projections and MLPs compute the T real tokens only;           attention and the cache work in the
            left-padded cache, a 4-D block mask, positions per row             padded block [B, N], N = max(1 + k_b)
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

Packing (``pack=True``, the default): the rows' blocks are ragged (a joining row feeds its whole question, a row
near its end drafts less), and padding them to one width made every row pay for the widest: on CPU, where a forward
costs about what its tokens cost, padding cost the continuous twin row of ``bench batch`` at B = 8 a sixth of its
throughput (155.7 against 188.9 tokens/s; 31% of the padded slots were padding). The forward's input is the
blocks one after another (``shared_prefix.PackedLayout``); the installed attention function unpacks the queries
into the padded block, and a cache that unpacks the new keys/values (``shared_prefix.packed_cache``), so attention
and the cache are exactly as in the padded forward while everything else computes real tokens only (logits equal
within 1e-5, tested). ``pack=False`` (or a target whose attention is neither eager nor sdpa) pads.

Prefix sharing (``share_prefix=True``, the default): the visual prefix of a clip is computed once (the verifier's
prefix cache) and *referenced*, not copied: ``KVBatch`` keeps each distinct prefix once (the prefix-cache entry's
own tensors, ``[1, H, P, D]`` per layer) and per row only its own positions (question + answer so far) and which
prefix it continues; the batched forward runs the target's own layers with the shared-prefix attention function of
``decoding/shared_prefix.py`` (one matmul per clip group over its prefix, the rows' own keys per row, merged by
log-sum-exp), so 8 questions on one clip hold and read one prefix, not 8. Rows without a shared prefix (text-only
requests, prompts prefilled whole) keep everything in their own positions; ``share_prefix=False`` (or a target
whose attention is neither eager nor sdpa) copies the prefix into each row, as before. The logits of both paths
agree to float rounding (tests: within 1e-5 on the tiny Video-LLaVA, eager and sdpa).

``decoding/scheduler.py`` runs a ``BatchDecoder`` on a worker thread behind a queue of futures, for any number of
callers (``LiveSession`` objects, threads).
"""

from __future__ import annotations

import copy
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from evcascade.decoding import shared_prefix
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


@dataclass
class _Prefix:
    """A shared prefix held by the batch: the verifier's own tensors (referenced, never written: their version
    counters, taken when it joined, are checked before every forward)."""

    layers: list[tuple[torch.Tensor, torch.Tensor]]  # [1, H, P, D] per layer
    versions: list[tuple[int | None, int | None]]

    @property
    def length(self) -> int:
        return int(self.layers[0][0].shape[-2])


class KVBatch:
    """Keys/values of several requests. Each row's own positions are left-padded to one width: ``layers[l] =
    (keys, values)`` ``[B, H, S, D]`` and ``mask [B, S]`` (True where a position is real). A row may continue a
    shared prefix (``row_prefix[b]``, a key of ``prefixes``: one ``[1, H, P, D]`` tensor per layer for all its
    rows, attended by ``shared_prefix.py``); its real positions are then the prefix's P and its own. Rows are added,
    dropped and trimmed between forwards."""

    def __init__(self) -> None:
        self.layers: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.mask: torch.Tensor | None = None  # [B, S] bool
        self.prefixes: dict[tuple, _Prefix] = {}
        self.row_prefix: list[tuple | None] = []  # [B] the prefix each row continues, None for none

    @property
    def batch_size(self) -> int:
        return 0 if self.mask is None else int(self.mask.shape[0])

    @property
    def width(self) -> int:
        """Positions per row held in ``layers`` (shared prefixes not counted)."""
        return 0 if self.mask is None else int(self.mask.shape[1])

    def lengths(self) -> list[int]:
        """Real positions per row: its shared prefix's and its own."""
        own = self.mask.sum(dim=1).tolist() if self.mask is not None else []
        return [n + (self.prefixes[key].length if key is not None else 0) for n, key in zip(own, self.row_prefix)]

    def nbytes(self) -> int:
        """Bytes of the keys and values the rows attend over: their own (padded) positions and each shared prefix
        once. (The storages underneath may hold a few positions more: a cut tail, the question that a clip's
        prefix-cache entry was first computed with.)"""
        tensors = [t for layer in self.layers for t in layer]
        tensors += [t for prefix in self.prefixes.values() for layer in prefix.layers for t in layer]
        return sum(t.numel() * t.element_size() for t in tensors)

    def add_row(self, layers: Sequence[tuple[torch.Tensor, torch.Tensor]], *,
                prefix_key: tuple | None = None) -> None:
        """Append one request's cache (``[1, H, S_r, D]`` per layer, all positions real): copied into its row, or,
        with a ``prefix_key``, referenced as the shared prefix the row continues: one prefix per key, the first
        one given (rows joining later with an equal key reuse it)."""
        self.row_prefix.append(prefix_key)
        if prefix_key is not None:
            if prefix_key not in self.prefixes:
                self.prefixes[prefix_key] = _Prefix(list(layers), _versions(layers))
            layers = [(k[..., :0, :], v[..., :0, :]) for k, v in layers]  # its own positions: none yet
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

    def shared_prefixes(self):
        """The groups for ``shared_prefix_attention`` (None when no row continues a shared prefix), after checking
        that no prefix tensor was written in place since it joined (the verifier crops and concatenates, never
        writes; a change would silently alter every row of the group)."""
        from evcascade.decoding.shared_prefix import PrefixGroup, SharedPrefixes

        if not self.prefixes:
            return None
        groups = []
        for key, prefix in self.prefixes.items():
            if _versions(prefix.layers) != prefix.versions:
                raise RuntimeError("a shared prefix's keys/values were modified in place while rows continue it")
            rows = [b for b, row_key in enumerate(self.row_prefix) if row_key == key]
            groups.append(PrefixGroup(prefix.layers, torch.tensor(rows, device=self.mask.device)))
        return SharedPrefixes(groups)

    def keep_rows(self, rows: Sequence[int]) -> None:
        """Keep only ``rows`` (in that order); an empty list empties the batch. A prefix no row continues is let go."""
        self.row_prefix = [self.row_prefix[b] for b in rows]
        for key in set(self.prefixes) - set(self.row_prefix):
            del self.prefixes[key]
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


def _versions(layers: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> list[tuple[int | None, int | None]]:
    """The in-place-write counters of keys/values (None for tensors made under ``torch.inference_mode``, which
    keep none)."""
    return [tuple(None if t.is_inference() else t._version for t in layer) for layer in layers]


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
                 pad_token_id: int = 0, share_prefix: bool = True, pack: bool = True) -> None:
        self.verifier, self.levels = verifier, list(levels)
        self.pack = bool(pack) and shared_prefix.install(verifier.model)
        """The rows' new tokens go through the target packed (``[1, T]``, no padding: projections and MLPs compute
        the real tokens only; attention works in the padded block): asked for and possible (eager or sdpa text
        attention, as for ``share_prefix``)."""
        self.share_prefix = bool(share_prefix) and getattr(verifier, "video_token_id", None) is not None \
            and shared_prefix.install(verifier.model)
        """Rows on one clip reference its visual prefix (``shared_prefix.py``) rather than copy it: asked for and
        possible (a video verifier whose text attention is eager or sdpa; others copy, as with False). It points
        the verifier's text attention at the shared-prefix function, which runs the model's own attention
        unchanged in every forward that passes no shared prefixes (batch-1 ones, HF ``generate``)."""
        self.lock = lock if lock is not None else threading.Lock()
        self.pad_token_id = int(pad_token_id)
        self.rows: list[_Row] = []
        self.kv = KVBatch()
        self.forwards = 0
        """Batched verify forwards so far (prefills not counted)."""
        self.timings = {"verify": 0.0, "draft": 0.0, "prefill": 0.0}
        """Seconds in batched verify forwards, in drafting (every row's) and in batch-1 prefills, so far."""
        self.fed = {"rows": 0, "tokens": 0, "slots": 0}
        """Over the batched forwards so far: rows, real tokens fed, and the token slots the projections and MLPs
        computed (padding included: the tokens themselves when packed)."""

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
                # the prefix-cache entry's own tensors: later batch-1 use crops and concatenates onto them, never
                # writes into them (KVBatch checks), so sharing rows reference them; copying rows clone them
                layers = self.verifier.cache_tensors() if self.share_prefix else \
                    [(k.clone(), v.clone()) for k, v in self.verifier.cache_tensors()]
            stats.vision_s, stats.prefill_s = self.verifier.timings["vision"], self.verifier.timings["prefill"]
            row.cached, row.unfed, row.first_token_pending = prefix_length, prompt_ids[0, prefix_length:].tolist(), True
            self.rows.append(row)
            self.kv.add_row(layers, prefix_key=self._prefix_key(prefix) if self.share_prefix else None)
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

    @staticmethod
    def _prefix_key(prefix: VerifyRequest) -> tuple:
        """Rows whose requests name one clip (``clip_key``, else the pixels' contents) and one prefix of prompt ids
        continue one shared prefix: equal keys, equal keys/values (up to float rounding when the verifier had to
        compute them again, e.g. after its prefix cache evicted the clip, or in one forward with a question)."""
        from evcascade.decoding.feature_cache import content_key

        clip = prefix.clip_key if prefix.clip_key is not None else content_key(prefix.pixel_values_videos)
        return clip, tuple(prefix.prompt_ids[0].tolist())

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
        lengths = [len(block) for block in blocks]
        width = max(lengths)
        self.fed["rows"] += len(blocks)
        self.fed["tokens"] += sum(lengths)
        self.fed["slots"] += sum(lengths) if self.pack else len(blocks) * width  # what the projections/MLPs compute
        new_mask = torch.arange(width, device=device)[None] < torch.tensor(lengths, device=device)[:, None]  # [B, N]
        cached = torch.tensor([row.cached for row in self.rows], device=device)  # [B] shared prefix + own
        layout = shared_prefix.PackedLayout.of(lengths, device) if self.pack else None
        if layout is not None:  # [1, T]: the blocks one after another
            input_ids = torch.tensor([[token for block in blocks for token in block]], device=device)
            position_ids = (cached[layout.rows] + layout.cols)[None]
            attention_mask = self._block_mask(new_mask)  # [B, 1, N, S+N]
        else:  # [B, N]: right-padded blocks
            input_ids = torch.full((len(blocks), width), self.pad_token_id, dtype=torch.long, device=device)
            for b, block in enumerate(blocks):
                input_ids[b, : len(block)] = torch.tensor(block, device=device)
            position_ids = cached[:, None] + torch.arange(width, device=device)  # [B, N]
            attention_mask = torch.cat([self.kv.mask, new_mask], dim=1).long()  # [B, S+N] the rows' own positions
        started = time.perf_counter()
        logits, layers = self._forward(input_ids, attention_mask, position_ids, layout)  # [B, N, V]
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

    def _block_mask(self, new_mask: torch.Tensor) -> torch.Tensor:
        """The additive attention mask ``[B, 1, N, S+N]`` of the padded block: row b's new token i sees the row's
        own cached positions and its new tokens up to i (a packed forward passes it whole: transformers keeps 4-D
        masks as they are)."""
        width = new_mask.shape[1]
        causal = torch.ones(width, width, dtype=torch.bool, device=new_mask.device).tril()  # [N, N]
        seen = torch.cat([self.kv.mask[:, None, :].expand(-1, width, -1), causal & new_mask[:, None, :]], dim=2)
        dtype = self.verifier.model.dtype
        mask = torch.zeros(seen.shape, dtype=dtype, device=seen.device).masked_fill(~seen, torch.finfo(dtype).min)
        return mask[:, None]

    def _forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                 layout: "shared_prefix.PackedLayout | None" = None):
        """The target's forward over the batch: logits ``[B, N, V]`` (float32) and the rows' grown keys/values.
        The cache holds the rows' own positions; rows continuing a shared prefix attend to it through
        ``shared_prefixes`` (the attention function installed by ``shared_prefix.install``). With ``layout`` the
        input is packed ``[1, T]`` and the attention function and cache unpack it into the padded block."""
        from transformers import DynamicCache

        extra = {}
        prefixes = self.kv.shared_prefixes()
        if prefixes is not None:
            extra["shared_prefixes"] = prefixes
        if layout is not None:
            extra["pack_layout"] = layout
            cache = shared_prefix.packed_cache(self.kv.layers, layout)
        else:
            cache = DynamicCache(ddp_cache_data=self.kv.layers)
        with torch.no_grad():
            out = self.verifier.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                      cache=cache, use_cache=True, **extra)
        layers = [(layer.keys, layer.values) for layer in out.cache.layers]
        logits = out.logits.float()
        return (layout.unpack_tokens(logits) if layout is not None else logits), layers


def _with_noise(context: DraftContext, noise: PositionNoise) -> DraftContext:
    from dataclasses import replace

    return replace(context, noise=noise)
