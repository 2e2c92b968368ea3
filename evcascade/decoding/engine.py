"""``CascadeDecoder``: lossless speculative decoding with a cascade of drafters and one verifier.

One step (``CascadeDecoder._step``), after the prefill has chosen the first token (the "pending" token, not yet
in the target's cache):

    draft   chain = the plan's levels draft k tokens      horizontal segments; vertical: a level reviews the drafts
                                                          of the level below with its own check (policy.py)
            tree  = chain + branches that pay              drafters' second choices, a lower level's rejected drafts
                                                          (tree.py; the policy weighs them against T_v(n))
    verify  logits = target([pending] + tree nodes)       ONE forward, [B, n, V] (tree mask + depth positions)
    accept  path, next = longest path of drafts equal     greedy argmax, or the coupled choice
                         to the target's own choices      argmax(warp(logits) + g_pos) (coupling.py)
    commit  cache keeps root + path; stats, policy and drafters hear what was kept; the caller cuts the new
            tokens (path + next) at the first stop        EOS / max_new_tokens / stop strings, as generate does

Greedy and coupled sampling pick the target's token at every position by a rule that depends only on the
target's logits there and on (seed, position): the answer equals target-only decoding's (``CascadeDecoder``
with no levels) token for token, whatever the drafters, the policy and the tree do. Standard speculative
sampling (``GenerationOptions.sampling="speculative"``) and the opt-in lossy rules verify chains with their
rule from ``acceptance.py`` / ``lossy.py``.

The prefill judges a first block too (``GenerationOptions.draft_in_prefill``, on by default; the adaptive policy
sizes it with ``plan_prefill``, where block length costs drafting time only): the levels draft
after the prompt before the target has seen it, and the prefill's one forward over ``prompt + draft`` returns the
rows that judge it (``Verifier.prefill_with_draft``). A short answer drafted right in one block then costs one
target forward, not two (for the ~8-token answers of the demo world, tau can reach 8 instead of 4).

The target's verification is lossless by default, so the answer equals the target's own ``generate``
(greedy: token for token; sampling: in distribution), whatever the drafters do. ``GenerationOptions.acceptance``
opts into a lossy rule (``decoding/lossy.py``, ``decoding/modality.py``) for this final verification only;
``stats.acceptance`` records which rule ran. Only B == 1 is supported;
every tensor keeps its batch dimension so B > 1 can come later.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Callable, Sequence

import torch

from evcascade.decoding.acceptance import AcceptanceRule, accept, coupled_accept
from evcascade.decoding.coupling import PositionNoise, coupled_choice
from evcascade.decoding.drafters import Draft, DraftContext, Drafter, check_vocabulary
from evcascade.decoding.lossy import NEEDS_DRAFT_PROBS, check_rule, make_rule
from evcascade.decoding.policy import AdaptivePolicy, Branch, DraftPlan, DraftSegment, branch_gains, static_plan
from evcascade.decoding.sampling import SamplingParams, probabilities
from evcascade.decoding.tree import TokenTree, accept_path, build_tree
from evcascade.decoding.stats import DecodeStats
from evcascade.decoding.stopping import StopChecker
from evcascade.decoding.verifier import Verifier, VerifyRequest
from evcascade.errors import InputError


SAMPLING_MODES = ("coupled", "speculative")


@dataclass(frozen=True)
class GenerationOptions:
    """How to decode one answer.

    >>> GenerationOptions(max_new_tokens=16, draft_k=4).sampling_params().do_sample
    False
    >>> GenerationOptions(max_new_tokens=0)
    Traceback (most recent call last):
    ...
    evcascade.errors.InputError: max_new_tokens must be an int >= 1, got 0
    """

    max_new_tokens: int = 64
    """Most answer tokens (EOS and the stop-string token included); >= 1."""
    do_sample: bool = False
    """False: greedy (equals ``generate(do_sample=False)`` token for token); True: sampling (equal in distribution)."""
    temperature: float = 1.0
    """Sampling temperature (> 0); ignored when greedy."""
    top_k: int | None = None
    """Sampling top-k; None or 0 keeps all ids (``generate`` defaults to 50: pass it to compare)."""
    top_p: float = 1.0
    """Sampling nucleus mass in (0, 1]; 1.0 keeps all ids."""
    seed: int | None = None
    """Sampling's seed: it keys the coupled noise of every answer position (and seeds the generator speculative
    sampling draws from); None draws one, reported in ``stats.seed`` so that passing it back replays the answer."""
    stop_strings: tuple[str, ...] = ()
    """Strings that end the answer once generated (needs ``tokenizer``); the completing token is kept."""
    eos_token_ids: tuple[int, ...] | None = None
    """Ids that end the answer (kept in it); None uses the verifier's."""
    draft_k: int = 5
    """Most draft tokens per target forward; 0 is plain decoding."""
    adaptive: bool = True
    """True: the policy picks levels and draft length each step; False: the static cascade with ``draft_k``."""
    tokenizer: object | None = None
    """Tokenizer for stop strings and for ``DecodeResult.text``."""
    acceptance: str = "lossless"
    """The target's rule: "lossless" (default, exact), or an opt-in lossy one from ``lossy.RULES`` ("lossy_sps",
    "token_v1/v2/v3", "typical", "fuzzy", "modality": needs ``DraftContext.extras[modality.AGREEMENT_KEY]``)."""
    lenience: float = 0.0
    """The lossy rule's lenience in [0, 1]; 0 is the lossless rule for every rule."""
    sampling: str = "coupled"
    """How a sampled answer is drawn (``do_sample`` only). "coupled" (default): every answer position's token is
    ``argmax(warp(logits) + g_pos)`` with Gumbel noise keyed by (seed, position) (``decoding/coupling.py``), so a
    seed replays its answer and the cascade's answer equals the target alone's for that seed, token for token;
    drafts may form token trees. "speculative": standard speculative sampling (Leviathan et al.), chains only;
    its answer depends on how many draws the (timing-driven) plan used. Both sample ``generate``'s distribution;
    neither reproduces ``generate``'s own sample for a seed (that one draws from torch's global generator)."""
    trees: bool | None = None
    """Verify token trees (the chain plus branches: drafters' second choices where unsure, a lower level's
    rejected drafts) in one forward where the verifier supports it; greedy and coupled only. None (default):
    the adaptive policy adds a branch where its measured costs say it pays, the static cascade stays a chain.
    True: also the static cascade, with every candidate branch (up to ``AdaptivePolicy.max_branch_nodes``).
    False: one chain per step."""
    draft_in_prefill: bool = True
    """Draft the first block before the target's prefill and judge it in the prefill's own forward (verifiers
    with ``drafts_in_prefill``): one target forward less per answer, which for short answers is a large share
    of them; the first token then arrives with the block, after the drafting time."""

    def __post_init__(self) -> None:
        def is_int(value) -> bool:
            return isinstance(value, int) and not isinstance(value, bool)

        if not is_int(self.max_new_tokens) or self.max_new_tokens < 1:
            raise InputError(f"max_new_tokens must be an int >= 1, got {self.max_new_tokens!r}")
        if not is_int(self.draft_k) or self.draft_k < 0:
            raise InputError(f"draft_k must be an int >= 0, got {self.draft_k!r}")
        if self.seed is not None and not is_int(self.seed):
            raise InputError(f"seed must be None or an int, got {self.seed!r}")
        stop_strings = (self.stop_strings,) if isinstance(self.stop_strings, str) else tuple(self.stop_strings)
        if not all(isinstance(s, str) and s for s in stop_strings):
            raise InputError(f"stop_strings must be non-empty strings, got {self.stop_strings!r}")
        if stop_strings and self.tokenizer is None:
            raise InputError(f"stop_strings {list(stop_strings)!r} need a tokenizer: pass tokenizer=")
        object.__setattr__(self, "stop_strings", stop_strings)
        if self.eos_token_ids is not None:
            eos = (self.eos_token_ids,) if is_int(self.eos_token_ids) else tuple(self.eos_token_ids)
            if not all(is_int(e) and e >= 0 for e in eos):
                raise InputError(f"eos_token_ids must be ints >= 0, got {self.eos_token_ids!r}")
            object.__setattr__(self, "eos_token_ids", eos)
        self.sampling_params()  # temperature / top_k / top_p checks
        if self.trees not in (None, True, False):
            raise InputError(f"trees must be None, True or False, got {self.trees!r}")
        if self.sampling not in SAMPLING_MODES:
            raise InputError(f"sampling must be one of {list(SAMPLING_MODES)}, got {self.sampling!r}")
        check_rule(self.acceptance, self.lenience)

    def sampling_params(self) -> SamplingParams:
        return SamplingParams(do_sample=bool(self.do_sample), temperature=self.temperature, top_k=self.top_k,
                              top_p=self.top_p)


@dataclass
class DecodeResult:
    """An answer: ``token_ids [1, n]`` (answer only, no prompt), its stats, and its text given a tokenizer."""

    token_ids: torch.LongTensor
    stats: DecodeStats
    text: str | None = None
    token_sources: list[str] = field(default_factory=list)
    """Per answer token, who proposed it: a level's name (a draft the target accepted) or "target" (the
    target's own choice: the first token, each correction and each bonus token)."""


@dataclass
class _Segment:
    """Where a plan segment's drafts landed in the block (for stats, the policy and ``accepted``)."""

    level: int
    start: int
    requested: int
    proposed: int


@dataclass
class _Request:
    """One request's state, so the step's helpers need not pass a dozen arguments."""

    params: SamplingParams
    generator: torch.Generator
    stats: DecodeStats
    noise: PositionNoise | None = None
    """Coupled sampling: the request's Gumbel noise per answer position (None: greedy or speculative)."""
    exact: bool = True
    """The target's token at every position is its own (coupled) choice: greedy or coupled sampling with the
    lossless rule. Then the accepted path is found by ``accept_path`` and token trees are allowed."""
    trees: bool = False
    """Branches may join a step's chain (exact, ``GenerationOptions.trees`` and a verifier with trees)."""
    adaptive: bool = True
    """The policy chooses the tree's shape; False (the static cascade): every candidate branch node joins, up
    to the policy's ``max_branch_nodes``."""
    rule: AcceptanceRule = accept
    """The rule of a non-exact request (speculative sampling, or an opt-in lossy rule): chains only."""
    keep_draft_probs: bool = False
    """Hand the drafters' distributions on even when greedy (lossy rules that need them; tree alternatives)."""
    prepared: set[int] = field(default_factory=set)
    """Levels whose ``prepare`` ran in this request."""
    segments: list[_Segment] = field(default_factory=list)
    """The current block's chain segments."""
    spares: list[tuple[list[int], int]] = field(default_factory=list)
    """The current block's free branches: (answer-relative path after the root, level) of drafts a reviewing
    level rejected in a vertical round (the lower level's disagreeing continuation)."""


class CascadeDecoder:
    """Speculative decoding with ``levels`` (cheapest first) drafting for ``verifier``.

    ``policy`` (default: an ``AdaptivePolicy``, kept across requests) chooses plans and tree shapes when
    ``GenerationOptions.adaptive``; otherwise the static cascade runs (the last level drafts ``draft_k`` tokens,
    sped up by the levels below it) as a chain. ``inner_rule`` is the hook for lenient reviews between levels
    (default: the lossless rule); the target's verification never uses it. Under sampling a lenient inner
    review hands its tokens on as point masses, which keeps the answer exactly distributed as the target's.

    >>> from evcascade.decoding.ngram import NGramDrafter
    >>> from evcascade.decoding.verifier import CausalLMVerifier
    >>> from evcascade.models.tiny import tiny_llama
    >>> decoder = CascadeDecoder(CausalLMVerifier(tiny_llama(vocab_size=50)), [NGramDrafter()])
    >>> prompt = torch.tensor([[1, 5, 7]])
    >>> options = GenerationOptions(max_new_tokens=8, eos_token_ids=())
    >>> result = decoder.generate(VerifyRequest(prompt), DraftContext(prompt), options)
    >>> result.token_ids.shape, result.stats.num_tokens
    (torch.Size([1, 8]), 8)
    """

    def __init__(self, verifier: Verifier, levels: Sequence[Drafter], *, policy: AdaptivePolicy | None = None,
                 inner_rule: AcceptanceRule | None = None) -> None:
        self.verifier, self.levels = verifier, list(levels)
        names = [level.name for level in self.levels]
        if len(set(names)) != len(names):
            raise InputError(f"level names must be distinct (stats are keyed by them), got {names}")
        for level in self.levels:
            if not isinstance(level, Drafter):
                raise InputError(f"levels must be Drafter instances, got {type(level).__name__}")
            check_vocabulary(level, verifier.text_vocab_size, verifier.vocab_size)
            if level.device is not None and level.device != verifier.device:
                raise InputError(f"drafter {level.name!r} is on {level.device} but the verifier is on "
                                 f"{verifier.device}: move both to one device")
        self.policy = policy if policy is not None else AdaptivePolicy()
        self.policy.bind([level.can_review for level in self.levels],
                         [level.prior_acceptance for level in self.levels])
        self.inner_rule = inner_rule

    # -- the loop --------------------------------------------------------------------------------------------

    def generate(self, request: VerifyRequest, context: DraftContext, options: GenerationOptions | None = None, *,
                 on_tokens: Callable[[torch.LongTensor], None] | None = None) -> DecodeResult:
        """Decode one answer; ``on_tokens(new_ids [1, m])`` is called as tokens are accepted (streaming)."""
        options = options if options is not None else GenerationOptions()
        if not isinstance(options, GenerationOptions):
            raise InputError(f"options must be a GenerationOptions, got {type(options).__name__}")
        prompt_ids = self._check_request(request, context)
        req = self._start(options, context)
        eos = options.eos_token_ids if options.eos_token_ids is not None else self.verifier.eos_token_ids
        stopper = StopChecker(eos_token_ids=eos, max_new_tokens=options.max_new_tokens,
                              stop_strings=options.stop_strings, tokenizer=options.tokenizer)
        stats = req.stats
        start = time.perf_counter()

        for index, level in enumerate(self.levels):
            self._timed(index, req, level.begin, replace(context, noise=req.noise), sampling=req.params,
                        generator=req.generator)
        generated, sources = self._first_block(request, prompt_ids, options, req)  # [B, m], the last one pending
        stats.time_to_first_token_s = time.perf_counter() - start
        stop = stopper.first_stop(prompt_ids, 0, generated)
        if stop is not None:
            generated, sources = generated[:, : stop[0]], sources[: stop[0]]
        if on_tokens is not None:
            on_tokens(generated.clone())

        while stop is None:
            room = self._room(options, generated.shape[1])
            if room < 0:
                stop = (0, "context_full")
                break
            new_ids, new_sources = self._step(self._plan(options, room), room, generated, req)  # [B, m]
            stop = stopper.first_stop(torch.cat([prompt_ids, generated], dim=1), generated.shape[1], new_ids)
            if stop is not None:
                new_ids = new_ids[:, : stop[0]]
            generated = torch.cat([generated, new_ids], dim=1)  # [B, n]
            sources += new_sources[: new_ids.shape[1]]
            if on_tokens is not None:
                on_tokens(new_ids.clone())

        for level in self.levels:
            level.end(generated)
        stats.stop_reason = stop[1]
        stats.num_tokens = generated.shape[1]
        stats.total_s = time.perf_counter() - start
        timings = self.verifier.timings
        stats.vision_s, stats.prefill_s, stats.verify_s = timings["vision"], timings["prefill"], timings["verify"]
        text = options.tokenizer.decode(generated[0].tolist(), skip_special_tokens=True) if options.tokenizer else None
        return DecodeResult(generated, stats, text, sources)

    def _start(self, options: GenerationOptions, context: DraftContext) -> _Request:
        """The request's state: its generator and seed, its noise under coupled sampling, its rule."""
        params = options.sampling_params()
        generator = torch.Generator(device=self.verifier.device)
        seed = options.seed if options.seed is not None else generator.seed()  # a drawn seed is reported: replayable
        generator.manual_seed(seed)
        rule = make_rule(options.acceptance, options.lenience, context.extras)
        exact = rule is accept and (not params.do_sample or options.sampling == "coupled")
        stats = DecodeStats.for_levels([level.name for level in self.levels])
        stats.acceptance = "lossless" if rule is accept else getattr(rule, "__name__", options.acceptance)
        stats.sampling = "greedy" if not params.do_sample else ("coupled" if exact else "speculative")
        stats.seed = seed if params.do_sample else None
        wants_trees = options.trees if options.trees is not None else options.adaptive
        trees = exact and wants_trees and self.verifier.supports_trees and bool(self.levels)
        noise = PositionNoise(seed, self.verifier.vocab_size) if exact and params.do_sample else None
        return _Request(params, generator, stats, noise=noise, exact=exact, trees=trees, adaptive=options.adaptive,
                        rule=rule,
                        keep_draft_probs=options.acceptance in NEEDS_DRAFT_PROBS or trees)

    def _plan(self, options: GenerationOptions, room: int) -> DraftPlan:
        if options.adaptive:
            return self.policy.plan(room)
        return static_plan([level.can_review for level in self.levels], min(options.draft_k, room))

    def _step(self, plan: DraftPlan, room: int, generated: torch.LongTensor,
              req: _Request) -> tuple[torch.LongTensor, list[str]]:
        """One speculative step: draft -> verify -> accept -> commit. Returns the new tokens ``[B, n+1]`` (the
        accepted drafts and the target's token after them, before any stop cut) and who proposed each."""
        # draft: the plan's chain (horizontal segments, vertical reviews), then the branches that pay for themselves
        chain = self._draft_plan(plan, generated, req)  # Draft [B, k]
        tree = self._tree(int(generated[0, -1]), chain, room, generated.shape[1], req,  # root: the pending token
                          cached=self.verifier.cache_length)
        # verify: ONE target forward over the pending token and every node
        started = time.perf_counter()
        if tree.is_chain:
            target_logits = self.verifier.verify(tree.token_ids[None])  # [B, n, V], row i judges node i + 1
        else:
            target_logits = self.verifier.verify_tree(tree.token_ids[None], tree.parents)  # [B, n, V]
        self.policy.observe_verify(tree.num_nodes, time.perf_counter() - started, tree=not tree.is_chain)
        req.stats.target_forwards += 1
        req.stats.steps += 1
        # accept: the longest path whose every token is the target's own choice, and the target's token after it
        path, next_token = self._accept(tree, chain, target_logits, generated.shape[1], req)
        # commit: the target's cache keeps the root and that path; stats, policy and drafters hear what was kept
        if tree.is_chain:
            self.verifier.rollback(tree.num_nodes - 1 - len(path))
        else:
            self.verifier.keep_tree_path(path)
        return self._commit(tree, chain.num_tokens, path, next_token, req)

    def _first_block(self, request: VerifyRequest, prompt_ids: torch.LongTensor, options: GenerationOptions,
                     req: _Request) -> tuple[torch.LongTensor, list[str]]:
        """The prefill: the first token ``[B, 1]``, or, drafting in the prefill, the accepted first drafts and
        the target's next token ``[B, n+1]``; with who proposed each. The block (chain or tree) is rooted at the
        prompt's last token, judged by the prefill's own forward; accept and commit are the step's own."""
        room = self._room(options, 0, cached=prompt_ids.shape[1])
        req.segments, req.spares = [], []
        chain = Draft(prompt_ids[:, :0])
        if options.draft_in_prefill and self.levels and room > 0 and self.verifier.drafts_in_prefill:
            plan = self.policy.plan_prefill(room) if options.adaptive else self._plan(options, room)
            chain = self._draft_plan(plan, prompt_ids[:, :0], req)
        tree = self._tree(int(prompt_ids[0, -1]), chain, room, 0, req, cached=prompt_ids.shape[1] - 1)
        if not tree.is_chain:
            target_logits = self.verifier.prefill_with_tree(request, tree.token_ids[None], tree.parents)  # [B, n, V]
        elif chain.num_tokens:
            target_logits = self.verifier.prefill_with_draft(request, chain.token_ids)  # [B, k+1, V]
        else:
            target_logits = self.verifier.prefill(request)[:, None]  # [B, 1, V]
        req.stats.target_forwards += 1  # the prefill (stats.steps counts the verifies after it)
        path, next_token = self._accept(tree, chain, target_logits, 0, req)
        if tree.is_chain:
            self.verifier.rollback(chain.num_tokens - len(path))
        else:
            self.verifier.keep_tree_path(path)
        return self._commit(tree, chain.num_tokens, path, next_token, req)

    def _accept(self, tree: TokenTree, chain: Draft, target_logits: torch.Tensor, first_position: int,
                req: _Request) -> tuple[list[int], int]:
        """The accepted path (node indices, root excluded) and the target's token after it, from
        ``target_logits [B, n, V]`` (row i: after node i, whose next token sits at answer position
        ``first_position + depth(i)``)."""
        if req.exact:
            noise = None
            if req.noise is not None:
                noise = req.noise.at([first_position + depth for depth in tree.depths()])  # [n, V]
            return accept_path(tree, coupled_choice(target_logits[0], req.params, noise))  # choices [n]
        result = req.rule(chain.token_ids, chain.probs, target_logits, req.params, req.generator)  # a chain
        num_accepted = int(result.num_accepted[0])
        return list(range(1, num_accepted + 1)), int(result.next_token[0])

    def _commit(self, tree: TokenTree, chain_length: int, path: list[int], next_token: int,
                req: _Request) -> tuple[torch.LongTensor, list[str]]:
        """Record what the target kept (stats, policy, drafters); the new tokens ``[B, n+1]`` and their sources."""
        new_ids = torch.tensor([[*tree.token_ids[path].tolist(), next_token]], device=self.verifier.device)
        on_chain = sum(1 for node in path if node <= chain_length)  # chain nodes are 1..k, in order
        for segment in req.segments:
            kept = max(0, min(on_chain - segment.start, segment.proposed))
            req.stats.levels[segment.level].record(segment.start, segment.proposed, kept)
            if on_chain >= segment.start:  # the target judged this segment
                self.policy.observe_target(segment.level, kept, kept + (kept < segment.requested))
                self.policy.observe_positions(segment.level, segment.start, segment.proposed, kept)
            self.levels[segment.level].accepted(kept, new_ids[:, min(segment.start + kept, on_chain)])
        if tree.num_nodes > chain_length + 1:  # branches joined: which were reached, which were kept
            on_path = {0, *path}
            reached = [n for n in range(chain_length + 1, tree.num_nodes) if tree.parents[n] in on_path]
            kept_branch = [n for n in reached if n in on_path]
            for kind in {tree.sources[n].split(":")[0] for n in reached}:
                of_kind = [n for n in reached if tree.sources[n].split(":")[0] == kind]
                self.policy.observe_branch(kind, sum(n in on_path for n in of_kind), len(of_kind))
            req.stats.tree_steps += 1
            req.stats.branch_nodes += tree.num_nodes - chain_length - 1
            req.stats.branch_accepted += len(kept_branch)
            # a branch node is its level's draft at its block position: every answer token is then either an
            # accepted draft of some level or the target's own, as with chains
            index_of = {level.name: i for i, level in enumerate(self.levels)}
            depths = tree.depths()
            for node in range(chain_length + 1, tree.num_nodes):
                level = index_of.get(tree.sources[node].split(":")[-1])
                if level is not None:
                    req.stats.levels[level].record(depths[node] - 1, 1, int(node in on_path))
        sources = [tree.sources[node].split(":")[-1] for node in path] + ["target"]
        return new_ids, sources

    # -- token trees -----------------------------------------------------------------------------------------

    def _tree(self, root: int, chain: Draft, room: int, first_position: int, req: _Request, *,
              cached: int) -> TokenTree:
        """The block after ``root``: the chain, plus the candidate branches the policy finds worth their verify
        cost (the chain's first draft sits at answer position ``first_position``; ``cached`` positions precede
        the root in the target's cache). Branch node sources read
        "kind:level" (kinds: "alt", a drafter's second choice where it was unsure; "spare", a lower level's
        drafts its reviewer rejected)."""
        chain_ids = chain.token_ids[0].tolist()
        chain_names = self._chain_sources(req, chain)
        if not req.trees or not chain_ids:
            return build_tree(root, [chain_ids], [chain_names])
        candidates = self._alternatives(chain, first_position, req) + [
            (path, f"spare:{self.levels[level].name}") for path, level in req.spares]
        branches, paths = [], []
        for path, source in candidates:
            path = path[:room]
            shared = next((i for i, (a, b) in enumerate(zip(path, chain_ids)) if a != b), min(len(path), len(chain_ids)))
            if shared < len(path):
                branches.append(Branch(shared + 1, len(path) - shared, source.split(":")[0]))
                paths.append((path, source))
        chain_levels = [segment.level for segment in req.segments for _ in range(segment.proposed)]
        if req.adaptive:
            chosen = self.policy.tree_nodes(chain_levels, branches)
        else:  # the static cascade's tree: every candidate, best first, as many as the policy allows
            gains = branch_gains([1.0] * len(chain_levels), branches, {b.kind: 0.5 for b in branches})
            chosen = sorted((i, j) for _, i, j in gains[: self.policy.max_branch_nodes])
        depth_of: dict[int, int] = {}
        for index, j in chosen:
            depth_of[index] = max(depth_of.get(index, -1), j)
        extra = [paths[i][0][: branches[i].depth + j] for i, j in sorted(depth_of.items())]
        tree = build_tree(root, [chain_ids, *extra], [chain_names, *(paths[i][1] for i in sorted(depth_of))])
        max_positions = getattr(self.verifier, "max_positions", None)
        if max_positions is not None and cached + tree.num_nodes > max_positions:
            return build_tree(root, [chain_ids], [chain_names])  # near the context's end: the cache must hold them
        return tree

    def _alternatives(self, chain: Draft, first_position: int, req: _Request) -> list[tuple[list[int], str]]:
        """Second choices of the drafters that were unsure (top probability below 0.9): per such chain position
        i, the path ``chain[:i] + [second]``; under coupled sampling the ranking is the drafter's perturbed one."""
        if chain.probs is None:
            return []
        ids = chain.token_ids[0].tolist()
        names = self._chain_sources(req, chain)
        probs = chain.probs[0]  # [k, V]
        scores = probs.clamp_min(1e-30).log().masked_fill(probs <= 0, float("-inf"))  # [k, V]
        if req.noise is not None:
            scores = scores + req.noise.rows(first_position, len(ids))[:, : scores.shape[-1]]
        top2 = scores.topk(2, dim=-1).indices.tolist()  # [k, 2]
        out = []
        for i, (first, second) in enumerate(top2):
            other = second if first == ids[i] else first
            if float(probs[i].max()) < 0.9 and bool(probs[i, other] > 0) and other != ids[i]:
                # the chain's own tail continues the substitution: a drafter's slip is often one word (a colour,
                # a direction) with the rest of the answer right after it
                out.append((ids[:i] + [other] + ids[i + 1:], f"alt:{names[i]}"))
        return out

    def _chain_sources(self, req: _Request, chain: Draft) -> list[str]:
        names = ["draft"] * chain.num_tokens
        for segment in req.segments:
            for position in range(segment.start, segment.start + segment.proposed):
                names[position] = self.levels[segment.level].name
        return names

    # -- drafting --------------------------------------------------------------------------------------------

    def _draft_plan(self, plan: DraftPlan, generated: torch.LongTensor, req: _Request) -> Draft:
        """All segments of ``plan``, each continuing the sequence drafted so far; probs over the target's V."""
        req.segments, req.spares = [], []
        ids, probs = [generated.new_zeros(generated.shape[0], 0)], []
        for segment in plan.segments:
            prefix = torch.cat([generated, *ids], dim=1)
            draft = self._draft_segment(segment, prefix, generated.shape[1], req)
            req.segments.append(_Segment(segment.level, sum(t.shape[1] for t in ids), segment.num_tokens,
                                         draft.num_tokens))
            ids.append(draft.token_ids)
            probs.append(draft.probs)
        token_ids = torch.cat(ids, dim=1)  # [B, k]
        if not (req.params.do_sample or req.keep_draft_probs) or all(p is None for p in probs):
            return Draft(token_ids, None)
        # a mix of model and n-gram segments: the n-gram's point masses written out as one-hot rows
        vocab = self.verifier.vocab_size
        rows = [p if p is not None else torch.nn.functional.one_hot(t, vocab).float()
                for p, t in zip(probs, ids[1:])]
        return Draft(token_ids, torch.cat(rows, dim=1))  # [B, k], [B, k, V]

    def _draft_segment(self, segment: DraftSegment, prefix: torch.LongTensor, block_start: int,
                       req: _Request) -> Draft:
        """``segment.num_tokens`` (or fewer) drafts of one level after ``prefix``; probs padded to the target's V."""
        level = self.levels[segment.level]
        self._prepare(segment.level, req)
        if segment.helper is None or not level.can_review:
            started = time.perf_counter()
            draft = self._timed(segment.level, req, level.propose, prefix, segment.num_tokens)
            self.policy.observe_draft(segment.level, segment.num_tokens, time.perf_counter() - started)
            return self._checked(draft, segment, level, prefix)
        return self._draft_vertical(segment, prefix, block_start, req)

    def _draft_vertical(self, segment: DraftSegment, prefix: torch.LongTensor, block_start: int,
                        req: _Request) -> Draft:
        """The level reviews its helper's drafts round by round, keeping what its own check accepts plus its token
        (exact requests: its own coupled choice; the rejected rest is kept as a spare branch for the tree)."""
        level, helper = self.levels[segment.level], segment.helper
        # with a lenient rule the kept tokens no longer follow the level's distribution: hand them on as points
        keep_probs = (req.params.do_sample or req.keep_draft_probs) and self.inner_rule is None
        ids, probs = [prefix.new_zeros(prefix.shape[0], 0)], []
        made = 0
        while made < segment.num_tokens:
            sequence = torch.cat([prefix, *ids], dim=1)
            helper_tokens = min(helper.num_tokens, segment.num_tokens - made - 1)
            candidates = Draft(sequence.new_zeros(sequence.shape[0], 0))
            if helper_tokens > 0:
                candidates = self._draft_segment(replace(helper, num_tokens=helper_tokens), sequence, block_start, req)
            started = time.perf_counter()
            logits = self._timed(segment.level, req, level.review, sequence, candidates.token_ids)  # [B, m+1, V']
            self.policy.observe_review(segment.level, candidates.num_tokens, time.perf_counter() - started)
            logits = self._pad_logits(logits)  # [B, m+1, V]
            if self.inner_rule is None and req.exact:  # the reviewer's own (coupled) choices, like the target's
                noise = req.noise.rows(sequence.shape[1], candidates.num_tokens + 1) if req.noise is not None else None
                result = coupled_accept(candidates.token_ids, logits, req.params, noise)
            else:
                result = (self.inner_rule or accept)(candidates.token_ids, candidates.probs, logits, req.params,
                                                     req.generator)
            kept = int(result.num_accepted[0])
            if helper_tokens > 0:
                req.stats.levels[helper.level].record(0, candidates.num_tokens, kept, inner=True)
                self.policy.observe_inner(helper.level, segment.level, kept, kept + (kept < helper_tokens))
                self.levels[helper.level].accepted(kept, result.next_token)
                if kept < candidates.num_tokens:  # the helper disagreed: its continuation is a free branch
                    path = sequence[0, block_start:].tolist() + candidates.token_ids[0, kept:].tolist()
                    req.spares.append((path, helper.level))
            ids.append(torch.cat([candidates.token_ids[:, :kept], result.next_token[:, None]], dim=1))
            if keep_probs:
                probs.append(probabilities(logits[:, : kept + 1], req.params))  # [B, kept+1, V]
            made += kept + 1
        token_ids = torch.cat(ids, dim=1)  # [B, num_tokens]
        return Draft(token_ids, torch.cat(probs, dim=1) if keep_probs else None)

    # -- helpers ---------------------------------------------------------------------------------------------

    def _prepare(self, index: int, req: _Request) -> None:
        """The level's up-front work, once per request, before its first draft: charged to its stats, not to the
        policy's per-call cost estimates."""
        if index not in req.prepared:
            req.prepared.add(index)
            self._timed(index, req, self.levels[index].prepare)

    def _timed(self, index: int, req: _Request, call, *args, **kwargs):
        started = time.perf_counter()
        out = call(*args, **kwargs)
        record = req.stats.levels[index]
        record.draft_s += time.perf_counter() - started
        record.calls += call.__name__ in ("propose", "review")
        return out

    def _checked(self, draft: Draft, segment: DraftSegment, level: Drafter, prefix: torch.LongTensor) -> Draft:
        """A level's draft validated (shape, ids) with its probabilities padded to the target's vocabulary."""
        ids = draft.token_ids
        batch = prefix.shape[0]
        if ids.ndim != 2 or ids.shape[0] != batch or ids.shape[1] > segment.num_tokens:
            raise ValueError(f"drafter {level.name!r} returned token_ids of shape {tuple(ids.shape)}; expected "
                             f"[{batch}, <= {segment.num_tokens}]")
        ids = ids.to(prefix.device, torch.long)
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.verifier.vocab_size):
            raise ValueError(f"drafter {level.name!r} proposed ids outside [0, {self.verifier.vocab_size})")
        probs = draft.probs
        if probs is not None:
            if probs.shape[:2] != ids.shape:
                raise ValueError(f"drafter {level.name!r} returned probs {tuple(probs.shape)} for ids {tuple(ids.shape)}")
            probs = self._pad_probs(probs.float())
        return Draft(ids, probs)

    def _pad_probs(self, probs: torch.Tensor) -> torch.Tensor:
        missing = self.verifier.vocab_size - probs.shape[-1]
        return torch.nn.functional.pad(probs, (0, missing)) if missing > 0 else probs  # [B, k, V]

    def _pad_logits(self, logits: torch.Tensor) -> torch.Tensor:
        missing = self.verifier.vocab_size - logits.shape[-1]
        return torch.nn.functional.pad(logits.float(), (0, missing), value=float("-inf")) if missing > 0 else logits

    def _room(self, options: GenerationOptions, num_generated: int, cached: int | None = None) -> int:
        """Most draft tokens this step: within max_new_tokens (the target adds one) and the target's context
        (``cached`` positions, default the verifier's; the pending token is verified too); -1 when not even the
        pending token fits."""
        room = min(options.draft_k, options.max_new_tokens - num_generated - 1)
        max_positions = getattr(self.verifier, "max_positions", None)
        if max_positions is not None:
            room = min(room, max_positions - (self.verifier.cache_length if cached is None else cached) - 1)
        return room

    def _check_request(self, request: VerifyRequest, context: DraftContext) -> torch.LongTensor:
        if not isinstance(request, VerifyRequest):
            raise InputError(f"request must be a VerifyRequest, got {type(request).__name__}")
        if not isinstance(context, DraftContext):
            raise InputError(f"context must be a DraftContext, got {type(context).__name__}")
        prompt_ids = request.prompt_ids
        if not isinstance(prompt_ids, torch.Tensor) or prompt_ids.ndim != 2:
            raise InputError(f"request.prompt_ids must be a LongTensor [B, L], got {getattr(prompt_ids, 'shape', prompt_ids)!r}")
        if prompt_ids.shape[0] != 1:
            raise InputError(f"only batch size 1 is supported, request.prompt_ids has B={prompt_ids.shape[0]}")
        if prompt_ids.shape[1] == 0:
            raise InputError("request.prompt_ids is empty: a prompt needs at least one token (e.g. BOS)")
        if prompt_ids.device != self.verifier.device:
            raise InputError(f"request.prompt_ids is on {prompt_ids.device} but the verifier is on {self.verifier.device}")
        draft_prompt = context.prompt_ids
        if not isinstance(draft_prompt, torch.Tensor) or draft_prompt.ndim != 2 or draft_prompt.shape[0] != 1:
            raise InputError(f"context.prompt_ids must be a LongTensor [1, L], got {getattr(draft_prompt, 'shape', draft_prompt)!r}")
        max_positions = getattr(self.verifier, "max_positions", None)
        if max_positions is not None and prompt_ids.shape[1] >= max_positions:
            raise InputError(f"the prompt has {prompt_ids.shape[1]} tokens but the target's context holds "
                             f"{max_positions}: no room for an answer")
        return prompt_ids
