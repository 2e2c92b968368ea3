"""Coupled verification end to end: for many seeds, whatever the drafters, the policy and the token trees do,
a cascade's answer equals target-only decoding's for the same seed, token for token (greedy and coupled
sampling); the sampled answers follow Hugging Face ``generate``'s distribution; the bundled demo cascade
replays ``--do-sample --seed`` runs through the API and the CLI.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from scipy.stats import chi2_contingency

from evcascade.decoding.drafters import Draft, DraftContext, Drafter
from evcascade.decoding.engine import CascadeDecoder, GenerationOptions
from evcascade.decoding.model_drafter import ModelDrafter
from evcascade.decoding.ngram import NGramDrafter
from evcascade.decoding.policy import AdaptivePolicy
from evcascade.decoding.verifier import CausalLMVerifier, VerifyRequest
from evcascade.models.tiny import tiny_llama

V = 24
PROMPT = torch.tensor([[1, 5, 9, 5, 9, 7]])


class AllBranches(AdaptivePolicy):
    """An adversarial policy: every candidate branch node joins every tree (the engine must stay exact)."""

    def tree_nodes(self, chain_levels, branches, drafting_seconds=0.0):
        return [(i, j) for i, branch in enumerate(branches) for j in range(branch.num_tokens)]


class RandomPolicy(AdaptivePolicy):
    """Random plans, random draft lengths and random subtrees of the candidates, from its own generator."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        self.rng = random.Random(seed)

    def plan(self, max_tokens):
        from evcascade.decoding.policy import DraftPlan, DraftSegment

        count = len(self.can_review)
        k = self.rng.randint(0, max_tokens)
        if k == 0 or count == 0:
            return DraftPlan()
        top = self.rng.randrange(count)
        helper = DraftSegment(self.rng.randrange(top), self.rng.randint(1, k)) if top and self.can_review[top] else None
        return DraftPlan((DraftSegment(top, k, helper),))

    def tree_nodes(self, chain_levels, branches, drafting_seconds=0.0):
        return [(i, j) for i, branch in enumerate(branches) for j in range(self.rng.randint(0, branch.num_tokens))]


class ScriptedDrafter(Drafter):
    """Proposes from a function of (answer so far, position); with made-up probabilities so trees get
    alternatives (``unsure``) or confident wrong ones."""

    vocab_size = V

    def __init__(self, name, token_at, unsure=True, seed=0, second_at=None):
        self.name, self.token_at, self.unsure, self.seed, self.second_at = name, token_at, unsure, seed, second_at

    def begin(self, context, *, sampling=None, generator=None):
        self.rng = torch.Generator().manual_seed(self.seed)

    def propose(self, generated, k):
        ids = [self.token_at(generated[0].tolist() + [None] * i, generated.shape[1] + i) for i in range(k)]
        ids = [t for t in ids if t is not None][:k]
        probs = torch.rand(1, len(ids), V, generator=self.rng) if self.unsure else torch.zeros(1, len(ids), V)
        for i, t in enumerate(ids):
            if self.second_at is not None:  # a near-tie whose runner-up is given
                probs[0, i, self.second_at(generated.shape[1] + i)] = probs[0, i].max() + 2.0
            probs[0, i, t] = probs[0, i].max() + (0.2 if self.unsure else 1.0)
        probs = probs / probs.sum(-1, keepdim=True)
        return Draft(torch.tensor([ids], dtype=torch.long).reshape(1, -1), probs)


@pytest.fixture(scope="module")
def target():
    return tiny_llama(V, seed=11)


def target_only(target, options):
    return CascadeDecoder(CausalLMVerifier(target), []).generate(VerifyRequest(PROMPT), DraftContext(PROMPT), options)


def drafter_sets(reference):
    """Adversarial levels: always wrong, always right, random, and model levels that disagree."""
    right = lambda seq, position: reference[position] if position < len(reference) else None
    return {
        "always-wrong": lambda: [ScriptedDrafter("wrong", lambda s, p: (reference[p] + 1) % V if p < len(reference) else 0, unsure=False)],
        "always-right": lambda: [ScriptedDrafter("right", right, unsure=False)],
        "wrong-right-second": lambda: [ScriptedDrafter("wrong2", lambda s, p: (reference[p] + 1) % V if p < len(reference) else 0,
                                                       second_at=lambda p: reference[p] if p < len(reference) else 0)],
        "random": lambda: [ScriptedDrafter("random", lambda s, p: random.Random(p * 31 + len(s)).randrange(V))],
        "ngram-right-wrong": lambda: [NGramDrafter(memory_size=0), ScriptedDrafter("wrong", lambda s, p: 3),
                                      ScriptedDrafter("right", right)],
        "disagreeing-lms": lambda: [NGramDrafter(memory_size=0),
                                    ModelDrafter(tiny_llama(V, seed=21, hidden_size=16, num_layers=1), name="L1"),
                                    ModelDrafter(tiny_llama(V, seed=11), name="L2-same")],
    }


SETTINGS = {
    "greedy": dict(),
    "coupled": dict(do_sample=True, temperature=0.3),
    "coupled-top-k-p": dict(do_sample=True, temperature=0.2, top_k=8, top_p=0.9),
}


@pytest.mark.parametrize("setting", list(SETTINGS))
def test_cascade_equals_target_only_for_every_seed(target, setting):
    trees = branch_kept = 0
    for seed in range(6):
        options = GenerationOptions(max_new_tokens=14, eos_token_ids=(), seed=seed, **SETTINGS[setting])
        reference = target_only(target, options).token_ids[0].tolist()
        for name, make_levels in drafter_sets(reference).items():
            for policy in (AllBranches(), RandomPolicy(seed), None):
                levels = make_levels()
                adaptive = policy is not None
                decoder = CascadeDecoder(CausalLMVerifier(target), levels, policy=policy)
                run = GenerationOptions(**{**options.__dict__, "adaptive": adaptive, "draft_k": 4, "trees": True})
                result = decoder.generate(VerifyRequest(PROMPT), DraftContext(PROMPT), run)
                assert result.token_ids[0].tolist() == reference, (setting, seed, name, type(policy).__name__)
                trees += result.stats.tree_steps
                branch_kept += result.stats.branch_accepted
                if name == "always-right" and adaptive:
                    assert result.stats.target_forwards < len(reference)  # the drafts really were accepted
    assert trees > 50 and branch_kept > 5  # token trees really ran, and branches really carried tokens


def test_seeded_sampling_replays_and_a_new_seed_differs(target):
    levels = lambda: [NGramDrafter(memory_size=0), ModelDrafter(tiny_llama(V, seed=21, hidden_size=16,
                                                                           num_layers=1), name="L1")]
    options = GenerationOptions(max_new_tokens=16, eos_token_ids=(), do_sample=True, temperature=0.5, seed=5)
    runs = [CascadeDecoder(CausalLMVerifier(target), levels()).generate(VerifyRequest(PROMPT), DraftContext(PROMPT),
                                                                         options) for _ in range(3)]
    assert all(r.token_ids.tolist() == runs[0].token_ids.tolist() for r in runs)
    assert runs[0].stats.sampling == "coupled" and runs[0].stats.seed == 5
    other = target_only(target, GenerationOptions(**{**options.__dict__, "seed": 6}))
    assert other.token_ids.tolist() != runs[0].token_ids.tolist()
    # no seed: one is drawn and reported, and passing it back replays the answer
    drawn = target_only(target, GenerationOptions(**{**options.__dict__, "seed": None}))
    again = target_only(target, GenerationOptions(**{**options.__dict__, "seed": drawn.stats.seed}))
    assert drawn.token_ids.tolist() == again.token_ids.tolist()
    # standard speculative sampling stays available (chains only) and says so
    speculative = CascadeDecoder(CausalLMVerifier(target), levels()).generate(
        VerifyRequest(PROMPT), DraftContext(PROMPT), GenerationOptions(**{**options.__dict__, "sampling": "speculative"}))
    assert speculative.stats.sampling == "speculative" and speculative.stats.tree_steps == 0
    with pytest.raises(Exception, match="sampling must be one of"):
        GenerationOptions(sampling="gumbel")


def test_coupled_cascade_samples_generates_distribution(target):
    """Two-sample chi-square: the first two tokens of HF ``generate(do_sample=True)`` vs the coupled cascade with
    token trees; the same cascade at a colder temperature is rejected (the test can fail)."""
    small = tiny_llama(6, seed=2)
    prompt = torch.tensor([[1, 3, 2]])
    runs, temperature = 700, 0.1  # this random model's logits are ~0.1 apart: sharpen them

    def hf_counts():
        counts = torch.zeros(36)
        torch.manual_seed(0)
        small.generation_config.eos_token_id = None  # as eos_token_ids=() below: every token may come out
        with torch.no_grad():
            out = small.generate(prompt, do_sample=True, temperature=temperature, top_k=0, max_new_tokens=2,
                                 num_return_sequences=runs, pad_token_id=0)
        for row in out[:, 3:].tolist():
            counts[row[0] * 6 + row[1]] += 1
        return counts

    def cascade_counts(temp):
        decoder = CascadeDecoder(CausalLMVerifier(small), [NGramDrafter(memory_size=0), ModelDrafter(
            tiny_llama(6, seed=4, hidden_size=16, num_layers=1), name="L1")], policy=AllBranches())
        counts = torch.zeros(36)
        for seed in range(runs):
            options = GenerationOptions(max_new_tokens=2, eos_token_ids=(), do_sample=True, temperature=temp,
                                        seed=seed, draft_k=2)
            row = decoder.generate(VerifyRequest(prompt), DraftContext(prompt), options).token_ids[0].tolist()
            counts[row[0] * 6 + row[1]] += 1
        return counts

    reference = hf_counts()

    def pvalue(counts):
        table = torch.stack([reference, counts])
        table = table[:, table.sum(0) > 0]
        return chi2_contingency(table.numpy()).pvalue

    assert pvalue(cascade_counts(temperature)) > 1e-4
    assert pvalue(cascade_counts(temperature * 3)) < 1e-4


BUNDLED = Path(__file__).resolve().parents[2] / "evcascade" / "assets"


def test_bundled_cascade_replays_seeded_sampling_api_and_cli(capsys):
    from evcascade import infer
    from evcascade.cascade import BUNDLED_DIR, Cascade

    if not (BUNDLED_DIR / "target" / "model.safetensors").exists():
        pytest.skip("no bundled demo cascade installed")
    sample = BUNDLED / "sample"
    clip = dict(events=str(sample / "events.h5"), video=str(sample / "video.mp4"))
    cascade = Cascade.from_pretrained()
    for seed in (5, 6):
        options = dict(do_sample=True, temperature=3.0, seed=seed)
        target = cascade.generate(**clip, prompt="describe the video .", mode="target", **options)
        answers = [cascade.generate(**clip, prompt="describe the video .", **options) for _ in range(3)]
        assert all(a.token_ids == target.token_ids for a in answers), seed
    argv = ["--events", clip["events"], "--video", clip["video"], "--prompt", "describe the video .",
            "--do-sample", "--temperature", "3", "--seed", "5", "--json"]
    outputs = []
    for extra in ([], ["--mode", "target"]):
        assert infer.main(argv + extra) == 0
        outputs.append(json.loads(capsys.readouterr().out))
    assert outputs[0]["token_ids"] == outputs[1]["token_ids"] and outputs[0]["stats"]["seed"] == 5
