"""The engine benchmark on tiny models: every row present, every output identical to HF generate, bounds sane.

No timing assertions: timings on a shared 2-core machine mean nothing at this size. What is checked is the
bookkeeping: the rows, the identical-output flags, the oracle's acceptance, the bounds' arithmetic.
"""

import json
import statistics

import pytest
import torch

from evcascade.bench import engine as bench
from evcascade.bench.oracle import OracleDrafter
from evcascade.decoding.drafters import DraftContext
from evcascade.decoding.policy import ewif
from evcascade.errors import InputError


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("engine")
    code = bench.main(["--target-size", "tiny", "--new-tokens", "12", "--repeats", "1", "--k-max", "4",
                       "--threads", "1", "--out", str(out)])
    return code, json.loads((out / "engine.json").read_text()), out


def test_main_writes_every_row_with_outputs_identical(report):
    code, payload, out = report
    assert code == 0
    names = [row["row"] for row in payload["rows"]]
    assert names[:4] == ["HF generate", "HF assisted (small model)", "HF prompt lookup", "ours, no drafter"]
    assert names.count("ours, oracle static k") == names.count("ours, oracle adaptive") == 3
    assert [row["a"] for row in payload["rows"] if row["row"] == "ours, oracle static k"] == [0.5, 0.7, 0.9]
    assert payload["outputs_identical"] is True and all(row["identical"] for row in payload["rows"])
    assert (out / "engine.png").stat().st_size > 0
    assert payload["config"]["target_size"] == "tiny" and "torch" in payload["environment"]
    ttft = payload["first_token"]
    assert ttft["second_answer_identical_to_cold"] is True and ttft["visual_tokens"] == 2 * 5


def test_report_bounds_follow_from_the_measured_costs(report):
    _, payload, _ = report
    costs = bench.Costs({int(n): v / 1e3 for n, v in payload["costs"]["verify_ms"].items()},
                        {int(k): v / 1e3 for k, v in payload["costs"]["draft_ms"].items()})
    assert sorted(costs.verify_s) == [1, 2, 3, 4, 5] and sorted(costs.draft_s) == [1, 2, 3, 4]
    rows = {(row["row"], row["a"]): row for row in payload["rows"]}
    hf_tps = statistics.median(rows[("HF generate", "")]["decode_tokens_per_s"])
    for row in payload["rows"]:
        if row["a"] == "":
            continue
        # the search includes k = 0 (do not draft): no bound is ever below plain decoding's 1
        expected = max(ewif(row["a"], k, costs.cost_ratio) for k in range(0, 5))
        assert row["EWIF bound"] == pytest.approx(expected) and row["EWIF bound"] >= 1.0
        k, bound_tps = costs.bound_tokens_per_s(row["a"])
        assert row["cost bound k"] == k and bound_tps >= 1 / costs.verify_s[1] - 1e-9
        assert row["cost bound"] == pytest.approx(bound_tps / hf_tps)
        # each run against its own round's bound (costs re-measured per round)
        assert len(row["bound_tokens_per_s_per_run"]) == len(row["decode_tokens_per_s"])
        percents = [100 * tps / bound for tps, bound in zip(row["decode_tokens_per_s"],
                                                            row["bound_tokens_per_s_per_run"])]
        assert row["% of cost bound per run"] == pytest.approx(percents)
        assert row["% of cost bound"] == pytest.approx(statistics.median(percents))
        spread = row["% of cost bound spread"]
        assert spread["min"] <= row["% of cost bound"] <= spread["max"]
        assert row["above bound"] == (min(percents) > 100)
        # plain decoding competes in neither bound, but a perfect drafter would: more tokens per step than 1
        assert row["tau"] >= 1.0
    environment = payload["environment"]
    assert len(environment["loadavg_before"]) == 3 and len(environment["loadavg_after"]) == 3


def test_decode_phase_counts_the_same_tokens_for_every_row(report):
    """Every row's first token is the prompt's alone (ours: draft_in_prefill off), so the decode phase is the
    new tokens after the first for all: decode tokens/s * decode seconds is the same count in every row."""
    _, payload, _ = report
    for row in payload["rows"]:
        assert len(row["decode_tokens_per_s"]) == len(row["wall_s"]) == payload["config"]["repeats"]
        assert all(tps > 0 for tps in row["decode_tokens_per_s"])
    assert bench.decode_tokens_per_s(bench.Run([1] * 12, 1.5, 0.4), 12) == pytest.approx(11 / 1.1)


def test_oracle_rows_draft_and_get_accepted(report):
    _, payload, _ = report
    static = {row["a"]: row for row in payload["rows"] if row["row"] == "ours, oracle static k"}
    assert static[0.9]["tau"] > 1.0 and 0.0 < static[0.9]["acceptance measured"] <= 1.0


@pytest.mark.parametrize("acceptance, k, expected_tau", [(1.0, 3, 4.0), (0.0, 3, 1.0)])
def test_oracle_in_the_engine_sets_tau_exactly_and_keeps_generates_answer(acceptance, k, expected_tau):
    """Greedy verification keeps every right guess and no wrong one: a = 1 gives k+1 tokens per target forward
    (after the prefill's), a = 0 gives plain decoding; the answer is HF generate's either way."""
    from evcascade.decoding.engine import CascadeDecoder, GenerationOptions
    from evcascade.decoding.model_drafter import ModelDrafter
    from evcascade.decoding.verifier import CausalLMVerifier, VerifyRequest
    from evcascade.models.tiny import tiny_llama

    target = tiny_llama(vocab_size=300, hidden_size=32, eos_token_id=None)
    target.generation_config.eos_token_id, target.generation_config.pad_token_id = None, 0
    prompt = torch.randint(4, 300, (1, 10), generator=torch.Generator().manual_seed(1))
    reference = target.generate(prompt, do_sample=False, max_new_tokens=17)[:, 10:]  # [1, 17]
    cost = ModelDrafter(tiny_llama(vocab_size=300, hidden_size=16, seed=1))
    oracle = OracleDrafter(reference, acceptance, vocab_size=300, cost_model=cost)
    decoder = CascadeDecoder(CausalLMVerifier(target, eos_token_ids=()), [oracle])
    options = GenerationOptions(max_new_tokens=17, eos_token_ids=(), draft_k=k, adaptive=False)
    result = decoder.generate(VerifyRequest(prompt), DraftContext(prompt), options)
    assert torch.equal(result.token_ids, reference)
    assert result.stats.steps == 16 / expected_tau  # 16 tokens after the first, k+1 (or 1) per step
    assert result.stats.levels[0].accepted == (16 - result.stats.steps if acceptance else 0)


def test_oracle_proposes_reference_or_a_different_token_at_the_asked_rate():
    reference = torch.arange(10, 2010).reshape(1, -1)  # [1, 2000]
    oracle = OracleDrafter(reference, acceptance=0.7, vocab_size=5000, seed=3)
    oracle.begin(DraftContext(torch.tensor([[1]])))
    proposed = oracle.propose(reference[:, :0], k=2000).token_ids[0]
    hits = proposed == reference[0]
    assert 0.65 < hits.float().mean() < 0.75
    assert torch.equal(proposed[~hits], (reference[0][~hits] + 1) % 5000)  # a miss is a different token
    oracle.begin(DraftContext(torch.tensor([[1]])))  # the stream restarts: repeats see the same pattern
    assert torch.equal(oracle.propose(reference[:, :0], k=2000).token_ids[0], proposed)


def test_oracle_draft_starts_at_the_answer_so_far():
    oracle = OracleDrafter(torch.tensor([[5, 6, 7, 8]]), acceptance=1.0, vocab_size=10)
    oracle.begin(DraftContext(torch.tensor([[1]])))
    assert oracle.propose(torch.tensor([[5, 6]]), k=2).token_ids.tolist() == [[7, 8]]
    assert OracleDrafter(torch.tensor([[5, 6]]), 0.0, vocab_size=10).propose(torch.tensor([[5]]), 1).token_ids.tolist() == [[7]]


def test_bad_settings_are_input_errors():
    with pytest.raises(InputError, match="target_size"):
        bench.EngineBenchConfig(target_size="huge")
    with pytest.raises(InputError, match="acceptance"):
        OracleDrafter(torch.tensor([[1]]), 1.5, vocab_size=10)
    assert bench.main(["--new-tokens", "1"]) == 2
