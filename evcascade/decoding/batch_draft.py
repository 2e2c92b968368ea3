"""Batched drafting: the rows of a batch whose drafters are copies of one model draft together.

In batched verification (``decoding/batch.py``) every row drafts with its own copy of the cascade's top model
level (a ``ModelDrafter``: shared weights, its own prompt, visual prefix, KV cache and coupled-sampling noise).
Drafting them one after another costs B x k small forwards per step; on a tiny target that is most of the step.
``propose_together`` runs one forward per draft position for all rows of one model instead (k per step):

    merge   each row's cache, left-padded to one width ``[B, H, S, D]``, a 2-D mask ``[B, S]`` (True: real)
    catch   one forward over what each row's cache lacks of [visual prefix] + prompt + answer so far (usually the
            last verify's 1-2 accepted tokens; a row's whole prefill on its first proposal, so joining rows
            prefill together too), as embeddings right-padded to ``[B, c, D]``, positions per row
    draft   position i: each row picks its own token (greedy argmax or its coupled choice at its own answer
            position, ``ModelDrafter.pick``); one forward feeds them all ``[B, 1]`` (a row that has its k_b
            tokens is fed its last one, masked)
    split   each row's real positions go back into its own cache (old cache + catch-up + drafts but the last),
            what its own ``propose`` would have left there

A row's draft is its batch-1 ``propose`` token for token: every row attends to its own real positions only, at
its own RoPE positions (a 4-D additive mask built here, which transformers takes as is). The one caveat is the
batch.py one: a padded batched forward adds in another order than a batch-1 forward (~1e-6 in the logits), so
an exact tie between two tokens could in principle break the other way. The caches are merged and split at every
step rather than kept merged across steps: on the bundled cascade at B = 7, k = 8 the merge and split take ~1 ms
of a ~15 ms batched proposal (against ~50-65 ms row by row), and rows can join, leave or skip a step freely.

Drafters that are not plain ``ModelDrafter`` copies take part through ``LevelCall``: a drafter with a
``level_call(generated, k)`` method names the model level that drafts for it and how to turn that level's draft
into its own (``bench/replay.py``'s ``ReplayDrafter`` does: its real level drafts batched, the replay stays
exact). Every other drafter (n-gram, a user's) proposes alone, as before.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from evcascade.decoding.drafters import Draft, Drafter
from evcascade.decoding.model_drafter import ModelDrafter


def _same(draft: Draft) -> Draft:
    return draft


@dataclass
class LevelCall:
    """What a row asks of a model level: ``level`` proposes ``k`` tokens after ``generated [1, n]``; ``finish``
    turns that draft into the row's own (identity for a ``ModelDrafter`` drafting for itself)."""

    level: Drafter
    generated: torch.LongTensor
    k: int
    finish: Callable[[Draft], Draft] = _same


def level_call(drafter: Drafter, generated: torch.LongTensor, k: int) -> LevelCall | None:
    """How ``drafter`` drafts ``k`` tokens after ``generated`` through a model level, or None (it proposes alone)."""
    if isinstance(drafter, ModelDrafter) and type(drafter).propose is ModelDrafter.propose:
        return LevelCall(drafter, generated, k)
    plan = getattr(drafter, "level_call", None)
    return plan(generated, k) if callable(plan) else None


def _batchable(call: LevelCall | None) -> bool:
    return (call is not None and call.k > 0 and isinstance(call.level, ModelDrafter)
            and type(call.level).propose is ModelDrafter.propose and call.generated.shape[0] == 1)


def propose_together(drafters: Sequence[Drafter], generated: Sequence[torch.LongTensor],
                     ks: Sequence[int]) -> list[Draft]:
    """Each drafter's proposal of ``ks[i]`` tokens after ``generated[i] [1, n_i]``, as its own ``propose`` gives
    it; the rows whose model levels share one model draft together (one forward per draft position).

    >>> from evcascade.decoding.drafters import DraftContext
    >>> from evcascade.models.tiny import tiny_llama
    >>> level = ModelDrafter(tiny_llama(vocab_size=40))
    >>> rows = []
    >>> for prompt in ([1, 7, 9], [2, 5]):
    ...     row = ModelDrafter(level.model)
    ...     row.begin(DraftContext(prompt_ids=torch.tensor([prompt])))
    ...     rows.append(row)
    >>> [d.token_ids.shape for d in propose_together(rows, [torch.tensor([[5]]), torch.tensor([[6, 8]])], [3, 2])]
    [torch.Size([1, 3]), torch.Size([1, 2])]
    """
    if not len(drafters) == len(generated) == len(ks):
        raise ValueError(f"one answer and one k per drafter, got {len(drafters)} drafters, {len(generated)} "
                         f"answers and {len(ks)} ks")
    calls = [level_call(drafter, answer, k) for drafter, answer, k in zip(drafters, generated, ks)]
    groups: dict[tuple, list[int]] = {}
    seen: set[int] = set()
    for i, call in enumerate(calls):
        if _batchable(call) and id(call.level) not in seen:  # one level object drafts one row of a forward
            seen.add(id(call.level))
            level = call.level
            groups.setdefault((id(level.model), level.vocab_size, level.unknown_id), []).append(i)
    drafts: list[Draft | None] = [None] * len(calls)
    for members in groups.values():
        if len(members) > 1:
            for i, draft in zip(members, _draft_group([calls[i] for i in members])):
                drafts[i] = calls[i].finish(draft)
    for i, call in enumerate(calls):
        if drafts[i] is None:
            drafts[i] = drafters[i].propose(generated[i], ks[i]) if call is None else \
                call.finish(call.level.propose(call.generated, call.k))
    return drafts


def _draft_group(calls: list[LevelCall]) -> list[Draft]:
    """The drafts of ``calls`` whose levels share one model, one forward per draft position (module docstring)."""
    starts = [call.level.start_batched(call.generated) for call in calls]  # (prefix | None, ids [1, c]) each
    together = [i for i, start in enumerate(starts) if start is not None]
    drafts: list[Draft | None] = [None] * len(calls)
    if len(together) > 1:
        merged = _draft_merged([calls[i] for i in together], [starts[i] for i in together])
        for i, draft in zip(together, merged):
            drafts[i] = draft
    for i, call in enumerate(calls):  # nothing to feed, or alone in the group: its own propose
        if drafts[i] is None:
            drafts[i] = call.level.propose(call.generated, call.k)
    return drafts


@torch.no_grad()
def _draft_merged(calls: list[LevelCall], starts: list[tuple[torch.Tensor | None, torch.LongTensor]]) -> list[Draft]:
    levels = [call.level for call in calls]
    model, device, vocab_size = levels[0].model, levels[0].device, levels[0].vocab_size
    rows, ks = range(len(calls)), [call.k for call in calls]
    layers, mask, lengths = _merge_caches([level.cache_layers() for level in levels], device)
    # catch-up: each row's missing [prefix][ids] as embeddings, right-padded; its last real row gives draft 1
    embed = model.get_input_embeddings()
    blocks = [torch.cat(([prefix[0]] if prefix is not None else []) + [embed(level.safe_ids(ids[0].to(device)))])
              for level, (prefix, ids) in zip(levels, starts)]  # [c_b, D] each
    catch = [int(block.shape[0]) for block in blocks]
    inputs_embeds = blocks[0].new_zeros(len(calls), max(catch), blocks[0].shape[-1])  # [B, c, D]
    new_mask = torch.zeros(len(calls), max(catch), dtype=torch.bool, device=device)  # [B, c]
    for b, block in enumerate(blocks):
        inputs_embeds[b, : catch[b]] = block
        new_mask[b, : catch[b]] = True
    positions = torch.tensor(lengths, device=device)[:, None] + torch.arange(max(catch), device=device)  # [B, c]
    logits, layers, mask = _forward(model, {"inputs_embeds": inputs_embeds}, mask, new_mask, positions, layers,
                                    vocab_size)
    last = logits[torch.arange(len(calls), device=device), torch.tensor(catch, device=device) - 1]  # [B, V]
    ids: list[list[torch.Tensor]] = [[] for _ in rows]
    dists: list[list[torch.Tensor]] = [[] for _ in rows]
    for i in range(max(ks)):
        for b in rows:
            if i < ks[b]:
                token, dist = levels[b].pick(last[b: b + 1], calls[b].generated.shape[1] + i)  # [1], [1, V]
                ids[b].append(token)
                dists[b].append(dist)
        feeding = [i < k - 1 for k in ks]  # the last draft of a row is not fed (as in propose)
        if not any(feeding):
            break
        # the group shares one model and unknown_id; a row not fed repeats its last token, masked
        step_ids = levels[0].safe_ids(torch.cat([row_ids[-1] for row_ids in ids]).to(device))[:, None]  # [B, 1]
        step_mask = torch.tensor(feeding, device=device)[:, None]  # [B, 1]
        step_positions = torch.tensor([lengths[b] + catch[b] + i for b in rows], device=device)[:, None]  # [B, 1]
        logits, layers, mask = _forward(model, {"input_ids": step_ids}, mask, step_mask, step_positions, layers,
                                        vocab_size)
        last = logits[:, -1]  # [B, V]
    drafts = []
    for b, (level, (_, fed)) in enumerate(zip(levels, starts)):
        real = mask[b].nonzero().flatten()  # this row's positions: old cache, catch-up, drafts fed
        if ks[b] > 1:
            fed = torch.cat([fed, torch.stack(ids[b][: ks[b] - 1], dim=1).to(fed)], dim=1)  # [1, c + k_b - 1]
        level.adopt_batched([(keys[b: b + 1, :, real], values[b: b + 1, :, real]) for keys, values in layers], fed)
        drafts.append(Draft(torch.stack(ids[b], dim=1), torch.stack(dists[b], dim=1)))  # [1, k_b], [1, k_b, V]
    return drafts


def _merge_caches(per_row: list[list[tuple[torch.Tensor, torch.Tensor]]], device: torch.device):
    """Rows' caches (``[1, H, S_b, D]`` per layer; [] for a row with none yet) left-padded to one width: the
    layers ``[B, H, S, D]`` ([] if no row has a cache), the mask ``[B, S]`` and each row's length S_b."""
    lengths = [int(row[0][0].shape[-2]) if row else 0 for row in per_row]
    width = max(lengths)
    mask = torch.arange(width, device=device)[None] >= torch.tensor([width - n for n in lengths], device=device)[:, None]
    template = next((row for row in per_row if row), None)
    if template is None:
        return [], mask, lengths
    layers = []
    for layer, (keys, values) in enumerate(template):
        parts = []
        for which, like in ((0, keys), (1, values)):
            shape = (1, like.shape[1], width, like.shape[-1])
            parts.append(torch.cat([_pad_left(row[layer][which], width - n) if row else like.new_zeros(shape)
                                    for row, n in zip(per_row, lengths)]))  # [B, H, S, D]
        layers.append(tuple(parts))
    return layers, mask, lengths


def _forward(model, inputs: dict, mask: torch.Tensor, new_mask: torch.Tensor, positions: torch.Tensor,
             layers: list[tuple[torch.Tensor, torch.Tensor]], vocab_size: int):
    """One forward of the shared model over ``inputs`` (``input_ids [B, n]`` or ``inputs_embeds [B, n, D]``) after
    the merged cache ``layers`` (mask ``[B, S]``): logits ``[B, n, V]`` (float32), the grown layers and mask."""
    from transformers import DynamicCache

    full_mask = torch.cat([mask, new_mask], dim=1)  # [B, S+n]
    width, n = full_mask.shape[1], new_mask.shape[1]
    # the additive 4-D mask, built here: transformers takes it as is (a 2-D one costs a mask build per forward,
    # a third of a tiny drafter's forward); a query sees the real keys of its row up to itself
    causal = torch.ones(n, width, dtype=torch.bool, device=full_mask.device).tril(diagonal=width - n)  # [n, S+n]
    allowed = full_mask[:, None, None, :] & causal  # [B, 1, n, S+n]
    dtype = model.get_input_embeddings().weight.dtype
    additive = torch.zeros(allowed.shape, dtype=dtype, device=full_mask.device).masked_fill(
        ~allowed, torch.finfo(dtype).min)
    with torch.no_grad():
        out = model(**inputs, attention_mask=additive, position_ids=positions, use_cache=True,
                    cache=DynamicCache(ddp_cache_data=layers) if layers else None)
    grown = [(layer.keys, layer.values) for layer in out.cache.layers]
    return out.logits[..., :vocab_size].float(), grown, full_mask


def _pad_left(tensor: torch.Tensor, amount: int) -> torch.Tensor:
    """Keys or values ``[1, H, S, D]`` with ``amount`` zero positions before them."""
    if amount == 0:
        return tensor
    shape = list(tensor.shape)
    shape[-2] = amount
    return torch.cat([tensor.new_zeros(shape), tensor], dim=-2)
