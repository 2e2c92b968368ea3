"""The demo benchmark on a tiny random cascade (n-gram + L1 events + L2 events/key frame) with a tiny cost twin:
every row present and identical to its reference, consistent acceptance bookkeeping, and the replay machinery
(teacher-forced hit bits, ReplayDrafter) checked against hand computations. No timing assertions."""

import json

import pytest
import torch

from evcascade.bench import demo as bench
from evcascade.bench.replay import ReplayDrafter, teacher_forced_hits
from evcascade.cascade import Cascade
from evcascade.data.questions import world_vocabulary
from evcascade.decoding.acceptance import accept
from evcascade.decoding.drafters import DraftContext
from evcascade.decoding.engine import CascadeDecoder, GenerationOptions
from evcascade.decoding.model_drafter import ModelDrafter
from evcascade.decoding.ngram import NGramDrafter
from evcascade.decoding.sampling import GREEDY
from evcascade.decoding.verifier import CausalLMVerifier, VerifyRequest
from evcascade.models.pipeline import KeyFrameEncoder, build_event_drafter_prefix
from evcascade.models.tiny import tiny_event_drafter_parts, tiny_llama, tiny_tokenizer, tiny_video_llava

REAL_ROWS = ["HF generate", "HF assisted (L1 LM, text only)", "HF prompt lookup", "ours, no drafter", "ours: n-gram",
             "ours: n-gram + L1", "ours: full cascade", "ours: full cascade (static k)"]
TWIN_ROWS = ["twin: HF generate", "twin: ours, no drafter", "twin: full cascade replayed",
             "twin: full cascade replayed (static k)", "twin: n-gram + L1 replayed"]


def rows_of(payload, regime="cold", part="all"):
    return {r["row"]: r for r in payload["rows"] if r["regime"] == regime and r["slice"] == part}


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    tok = tiny_tokenizer(extra_words=world_vocabulary())
    target = tiny_video_llava(tok, num_frames=4)
    encoder, alignment, _, lm_l1 = tiny_event_drafter_parts(target.config, tok, refiner=False, seed=1)
    encoder2, alignment2, refiner, lm_l2 = tiny_event_drafter_parts(target.config, tok, refiner=True, seed=2)
    l1 = build_event_drafter_prefix(encoder, lm_l1, alignment=alignment, target_config=target.config)
    l2 = build_event_drafter_prefix(encoder2, lm_l2, alignment=alignment2, refiner=refiner,
                                    key_frame_encoder=KeyFrameEncoder.from_video_llava(target),
                                    target_config=target.config)
    for lm in (lm_l1, lm_l2):  # drafters that often agree with the target: its own text weights under a new prefix
        lm.language_model.model.load_state_dict(target.model.language_model.state_dict())
        lm.language_model.lm_head.load_state_dict(target.lm_head.state_dict())
    levels = [NGramDrafter(name="ngram"), ModelDrafter(lm_l1, prefix_fn=l1, name="events"),
              ModelDrafter(lm_l2, prefix_fn=l2, name="events_frame")]
    Cascade.from_models(target, tok, levels).save_pretrained(root / "cascade")
    code = bench.main(["--model", str(root / "cascade"), "--scenes", "2", "--seed", "3", "--questions", "2",
                       "--max-new-tokens", "6", "--draft-k", "3", "--duration-us", "400000",
                       "--twin-hidden", "32", "--twin-layers", "1", "--long-tokens", "6", "--out", str(root / "out")])
    return code, json.loads((root / "out" / "demo.json").read_text()), root / "out"


def test_every_row_is_present_in_both_regimes_labelled_and_identical(report):
    code, payload, out = report
    assert code == 0 and set(payload["skipped"]) == {"warm | HF assisted (L1 LM, text only)", "warm | HF prompt lookup"}
    for regime in ("cold", "warm"):
        rows = rows_of(payload, regime)
        hf_speculative = REAL_ROWS[1:3] if regime == "cold" else []
        assert list(rows) == REAL_ROWS[:1] + hf_speculative + REAL_ROWS[3:] + TWIN_ROWS
        assert all(rows[n]["kind"] == "real" for n in REAL_ROWS if n in rows)
        assert [rows[n]["kind"] for n in TWIN_ROWS] == ["cost-twin"] * len(TWIN_ROWS)
        for row in rows.values():
            assert row["identical"], (regime, row["row"], row["mismatches"])
            assert row["answers"] == 4 and row["tokens_per_s"] > 0
        # the twin answers with exactly as many tokens as the real target, which is why its rows compare
        assert rows["twin: HF generate"]["tokens"] == rows["HF generate"]["tokens"]
    assert payload["outputs_identical"] and payload["levels"] == {"ngram": "ngram", "l1": "events", "l2": "events_frame"}
    assert payload["params"]["twin"] != payload["params"]["target"] and payload["twin_costs"]["cost_ratio_c"] > 0
    env = payload["environment"]
    assert len(env["loadavg_before"]) == 3 and len(env["loadavg_after"]) == 3 and "git_commit" in env
    assert set(payload["regimes"]) == {"cold", "warm"}
    assert (out / "demo.png").stat().st_size > 0


def test_cold_rows_pay_vision_and_prefill_on_every_answer_warm_rows_never(report):
    """The regimes are what they say: every cold answer of ours runs the vision tower, no warm one does."""
    _, payload, _ = report
    for name in ("ours, no drafter", "ours: full cascade", "twin: ours, no drafter"):
        assert rows_of(payload, "cold")[name]["profile_ms"]["vision_ms"] > 0
        assert rows_of(payload, "warm")[name]["profile_ms"]["vision_ms"] == 0.0


def test_long_answer_slice_and_decomposition(report):
    """The slice holds the answers whose reference reaches --long-tokens; the decomposition's ratios are the rows'."""
    _, payload, _ = report
    long_answers = [a for a in payload["answers"] if a["long"]]
    assert long_answers and all(a["target_tokens"] >= 6 for a in long_answers)
    assert all(not a["long"] for a in payload["answers"] if a["target_tokens"] < 6)
    for regime in ("cold", "warm"):
        rows, long_rows = rows_of(payload, regime), rows_of(payload, regime, "long")
        assert long_rows["HF generate"]["answers"] == len(long_answers)
        entry = next(d for d in payload["decomposition"]
                     if (d["kind"], d["slice"], d["regime"]) == ("real", "all", regime))
        full, plain, hf = rows["ours: full cascade"], rows["ours, no drafter"], rows["HF generate"]
        assert entry["speculation alone"] == pytest.approx(full["tokens_per_s"] / plain["tokens_per_s"])
        assert entry["caching / loop alone"] == pytest.approx(plain["tokens_per_s"] / hf["tokens_per_s"])
        assert entry["end to end"] == pytest.approx(full["tokens_per_s"] / hf["tokens_per_s"])
    assert {(t["kind"], t["slice"], t["regime"]) for t in payload["aim"]["speculation_targets"]} == \
        {("real", "long", "cold"), ("real", "long", "warm"), ("cost-twin", "all", "cold")}


def test_hf_prompt_lookup_with_a_prompt_cache_is_not_lossless_here():
    """Why the warm regime has no HF speculative rows: with a prompt cache, plain generate reproduces the cold
    answer, prompt lookup does not (transformers 5.24). If this starts failing, HF fixed it: add the rows back."""
    from evcascade.bench.engine import hf_run
    from evcascade.decoding.prompting import VideoLlavaPrompter

    tok = tiny_tokenizer(extra_words=world_vocabulary())
    target = tiny_video_llava(tok, num_frames=4)
    ids = VideoLlavaPrompter(tok, target.config)("what colour is it ?").target_ids
    size = target.config.vision_config.image_size
    pixels = torch.randn(1, 4, 3, size, size, generator=torch.Generator().manual_seed(0))
    reference = hf_run(target, ids, 6, pixel_values_videos=pixels).token_ids
    cache = bench.hf_prompt_cache(target, ids, pixels)
    assert bench.hf_answer(target, ids, pixels, 6, cache).token_ids == reference
    assert bench.hf_answer(target, ids, pixels, 6, cache, prompt_lookup_num_tokens=3).token_ids != reference


def test_plain_rows_have_tau_one_and_speedups_are_ratios(report):
    _, payload, _ = report
    rows = rows_of(payload)
    for name in ("HF generate", "ours, no drafter", "twin: HF generate", "twin: ours, no drafter"):
        assert rows[name]["tau"] == 1.0 and rows[name]["target_forwards"] == rows[name]["tokens"]
    assert rows["HF prompt lookup"]["tau"] is None  # HF does not report its forwards
    assert rows["HF generate"]["speedup"] == 1.0 and rows["twin: HF generate"]["speedup"] == 1.0
    full = rows["ours: full cascade"]
    assert full["speedup"] == pytest.approx(full["tokens_per_s"] / rows["HF generate"]["tokens_per_s"])
    assert full["tau"] == pytest.approx(full["tokens"] / full["target_forwards"])


def test_level_bookkeeping_is_consistent(report):
    _, payload, _ = report
    rows = rows_of(payload)
    assert set(rows["ours: full cascade"]["levels"]) == {"ngram", "events", "events_frame"}
    assert set(rows["ours: n-gram + L1"]["levels"]) == {"ngram", "events"}
    for row in payload["rows"]:
        for level in row["levels"].values():
            drafted, accepted = level["drafted_by_position"], level["accepted_by_position"]
            assert len(drafted) == len(accepted) and all(0 <= a <= d for a, d in zip(accepted, drafted))
            assert level["drafted"] == sum(drafted) and 0.0 <= level["conditional_acceptance"] <= 1.0
        # accepted drafts plus the target's own tokens make the answer: at most one target token per forward
        if row["target_forwards"] and row["levels"]:
            kept = sum(level["accepted"] for level in row["levels"].values())
            assert row["tokens"] - kept <= row["target_forwards"]
    by_kind = rows["ours: full cascade"]["by_kind"]
    assert sum(v["drafted"] for kind in by_kind.values() for name, v in kind.items() if name == "events") == \
        rows["ours: full cascade"]["levels"]["events"]["drafted"]


def test_the_twin_replays_the_real_acceptance_exactly(report):
    """A static plan depends only on acceptance, so the replayed static row must repeat the real one's counts."""
    _, payload, _ = report
    for regime in ("cold", "warm"):
        rows = rows_of(payload, regime)
        real, twin = rows["ours: full cascade (static k)"], rows["twin: full cascade replayed (static k)"]
        assert real["tokens"] == 4 * 6  # every answer ran to max_new_tokens: no EOS cut that the twin lacks
        assert real["levels"]["events_frame"]["accepted"] > 0  # the fixture's drafters do agree with the target
        for name in ("ngram", "events", "events_frame"):
            for key in ("drafted_by_position", "accepted_by_position"):
                assert twin["levels"][name][key] == real["levels"][name][key], (regime, name, key)
        assert twin["target_forwards"] == real["target_forwards"]
    forced = payload["teacher_forced_acceptance"]
    assert set(forced) == {"ngram", "events", "events_frame"} and forced["events"]["positions"] == 4 * 5


def test_bad_arguments_are_usage_errors(tmp_path, capsys):
    assert bench.main(["--scenes", "0", "--out", str(tmp_path)]) == 2
    assert "--scenes must be >= 1, got 0" in capsys.readouterr().err
    assert bench.main(["--model", "no-such-cascade", "--out", str(tmp_path)]) == 2
    assert "'no-such-cascade'" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ the replay machinery


def test_replay_keeps_drafts_up_to_the_first_recorded_miss():
    """hits [1, 1, 0, 1], k=4 from position 0: the greedy rule keeps exactly 2 drafts."""
    reference = torch.tensor([[5, 6, 7, 8]])
    replay = ReplayDrafter([True, True, False, True], reference, vocab_size=10)
    replay.begin(DraftContext(torch.tensor([[1]])))
    draft = replay.propose(reference[:, :0], k=4)
    assert draft.token_ids.tolist() == [[5, 6, 8, 8]]
    target_logits = torch.nn.functional.one_hot(torch.tensor([[5, 6, 7, 8, 9]]), 10).float()  # [1, k+1, V]
    result = accept(draft.token_ids, None, target_logits, GREEDY, torch.Generator())
    assert int(result.num_accepted[0]) == 2 and int(result.next_token[0]) == 7


def test_replay_through_the_engine_reproduces_the_pattern():
    """Static k=3 on a tiny Llama: acceptance by position follows the hit bits step by step, answer unchanged
    (the prefill decodes the first token alone here, as the hand count below assumes)."""
    model = tiny_llama(vocab_size=30)
    prompt = torch.tensor([[1, 4, 9]])
    options = GenerationOptions(max_new_tokens=8, draft_k=3, adaptive=False, eos_token_ids=(), draft_in_prefill=False)
    verifier = CausalLMVerifier(model)
    plain = CascadeDecoder(verifier, []).generate(VerifyRequest(prompt), DraftContext(prompt), options)
    reference = plain.token_ids  # [1, 8]
    hits = [True, True, False, True, True, True, True, False]
    replay = ReplayDrafter(hits, reference, vocab_size=30, level=NGramDrafter(), name="replay")
    result = CascadeDecoder(verifier, [replay]).generate(VerifyRequest(prompt), DraftContext(prompt), options)
    assert result.token_ids.tolist() == reference.tolist()
    # step 1 drafts answer positions 1-3 (hit, miss, hit): keeps 1, the target writes position 2; step 2 drafts
    # 3-5 (hits): keeps 3 and the target adds 6; step 3 has no room left (8 tokens): the target writes 7 alone
    level = result.stats.levels[0]
    assert level.drafted_by_position == [2, 2, 2]
    assert level.accepted_by_position == [2, 1, 1]
    assert result.stats.target_forwards == 4


def test_live_replay_of_an_ngram_repeats_its_real_blocks():
    """The n-gram continues its match and may propose nothing: live replay on another target still repeats the
    real run's acceptance by position exactly (static k)."""
    prompt = torch.tensor([[1, 4, 9, 4, 9]])
    options = GenerationOptions(max_new_tokens=16, draft_k=3, adaptive=False, eos_token_ids=())
    real_verifier, twin_verifier = CausalLMVerifier(tiny_llama(vocab_size=30)), CausalLMVerifier(tiny_llama(30, seed=5))
    real = CascadeDecoder(real_verifier, [NGramDrafter()]).generate(VerifyRequest(prompt), DraftContext(prompt), options)
    twin_answer = CascadeDecoder(twin_verifier, []).generate(VerifyRequest(prompt), DraftContext(prompt), options).token_ids
    replay = ReplayDrafter(None, twin_answer, vocab_size=30, level=NGramDrafter(),
                           level_answer=real.token_ids[0].tolist(), name="ngram")
    twin = CascadeDecoder(twin_verifier, [replay]).generate(VerifyRequest(prompt), DraftContext(prompt), options)
    assert twin.token_ids.tolist() == twin_answer.tolist()
    assert real.stats.levels[0].accepted > 0  # the tiny target repeats itself: the n-gram has hits to replay
    assert twin.stats.levels[0].drafted_by_position == real.stats.levels[0].drafted_by_position
    assert twin.stats.levels[0].accepted_by_position == real.stats.levels[0].accepted_by_position
    assert twin.stats.target_forwards == real.stats.target_forwards


def test_teacher_forced_hits_of_an_ngram_by_hand():
    """Prompt 3 4 5 3 4: after it the n-gram proposes 5 (then 3 4 5 ... by the repeat); answer 5 3 4 6."""
    context = DraftContext(torch.tensor([[3, 4, 5, 3, 4]]))
    assert teacher_forced_hits(NGramDrafter(), context, [5, 3, 4, 6]) == [True, True, True, False]
    assert teacher_forced_hits(NGramDrafter(), context, []) == []


def test_teacher_forced_hits_of_a_model_match_its_own_greedy_drafts():
    """A ModelDrafter's bits from one forward equal proposing one token per position."""
    drafter = ModelDrafter(tiny_llama(vocab_size=30, seed=3))
    context = DraftContext(torch.tensor([[1, 7, 2]]))
    drafter.begin(context)
    greedy = drafter.propose(torch.zeros(1, 0, dtype=torch.long), k=4).token_ids[0].tolist()
    answer = greedy[:2] + [(greedy[2] + 1) % 30]  # two hits, then a miss by construction
    bits = teacher_forced_hits(drafter, context, answer)
    assert bits[:3] == [True, True, False]
    one_by_one = []
    for position, token in enumerate(answer):
        drafter.begin(context)
        one_by_one.append(int(drafter.propose(torch.tensor([answer[:position]], dtype=torch.long), 1).token_ids[0, 0]) == token)
    assert bits == one_by_one


def test_clear_clip_caches_makes_the_next_request_cold():
    """The cold regime's precondition: after ``clear_clip_caches`` the verifier pays the vision tower again and
    the drafters' memos are gone (what ``VideoLlavaVerifier.clear_caches`` and ``EventDrafterPrefix.clear`` do)."""
    from evcascade.decoding.prompting import VideoLlavaPrompter
    from evcascade.decoding.verifier import VideoLlavaVerifier

    tok = tiny_tokenizer(extra_words=world_vocabulary())
    target = tiny_video_llava(tok, num_frames=4)
    encoder, alignment, _, lm = tiny_event_drafter_parts(target.config, tok, refiner=False, seed=1)
    prefix = build_event_drafter_prefix(encoder, lm, alignment=alignment, target_config=target.config)
    level = ModelDrafter(lm, prefix_fn=prefix, name="events")
    verifier = VideoLlavaVerifier(target)
    size = target.config.vision_config.image_size
    request = VerifyRequest(VideoLlavaPrompter(tok, target.config)("what colour is it ?").target_ids,
                            torch.rand(1, 4, 3, size, size, generator=torch.Generator().manual_seed(0)))
    verifier.prefill(request)
    verifier.prefill(request)
    assert verifier.cache_stats()["prefix"]["hits"] == 1
    for memo in (prefix._memo, prefix._features_memo, prefix._prefix_memo):
        memo.put(("filled",), torch.zeros(1))
    bench.clear_clip_caches(verifier, [NGramDrafter(), level])
    assert len(verifier.feature_cache) == len(verifier.prefix_cache) == 0
    assert len(prefix._features_memo) == len(prefix._prefix_memo) == len(prefix._memo) == 0
    verifier.prefill(request)
    assert verifier.cache_stats()["features"]["misses"] == 2  # the vision tower ran again
