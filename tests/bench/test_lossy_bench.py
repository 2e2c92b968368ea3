"""The lossy-acceptance benchmark on a tiny random cascade (n-gram + event drafter): structure and fidelity
bookkeeping. No timing assertions; lenience 0 must reproduce the target's answers exactly for every rule."""

import json

import pytest
import torch

from evcascade.bench import lossy as bench
from evcascade.cascade import Cascade
from evcascade.data.questions import world_vocabulary
from evcascade.decoding.model_drafter import ModelDrafter
from evcascade.decoding.ngram import NGramDrafter
from evcascade.models.pipeline import build_event_drafter_prefix
from evcascade.models.tiny import tiny_event_drafter_parts, tiny_tokenizer, tiny_video_llava

RULES = ("token_v1", "token_v3", "typical", "modality")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("lossy")
    tok = tiny_tokenizer(extra_words=world_vocabulary())
    target = tiny_video_llava(tok, num_frames=4)
    encoder, alignment, _, draft_lm = tiny_event_drafter_parts(target.config, tok, refiner=False)
    prefix = build_event_drafter_prefix(encoder, draft_lm, alignment=alignment, target_config=target.config)
    levels = [NGramDrafter(name="ngram"), ModelDrafter(draft_lm, prefix_fn=prefix, name="events")]
    Cascade.from_models(target, tok, levels).save_pretrained(root / "cascade")
    code = bench.main(["--model", str(root / "cascade"), "--scenes", "2", "--seed", "3", "--questions", "2",
                       "--rules", ",".join(RULES), "--lenience", "0,1", "--max-new-tokens", "6",
                       "--static", "--draft-k", "3", "--duration-us", "400000", "--out", str(root / "out")])
    return code, json.loads((root / "out" / "lossy.json").read_text()), root / "out"


def test_writes_every_row_and_the_curve(report):
    code, payload, out = report
    assert code == 0
    assert [(r["rule"], r["lenience"]) for r in payload["rows"]] == [
        ("target", 0.0), ("lossless", 0.0), *[(rule, v) for rule in RULES for v in (0.0, 1.0)]]
    for row in payload["rows"]:
        assert set(bench.COLUMNS) <= set(row) and row["answers"] == 4
        assert 0.0 <= row["exact_match"] <= 1.0 and 0.0 <= row["token_agreement"] <= 1.0
    assert payload["lossless"]["tokens_per_s"] > 0 and payload["target"]["tau"] == 1.0
    assert len(payload["clip_agreement"]["per_clip"]) == 2 and payload["skipped"] == {}
    assert "torch" in payload["environment"] and (out / "lossy.png").stat().st_size > 0


def test_lenience_zero_reproduces_the_target(report):
    _, payload, _ = report
    for row in payload["rows"]:
        if row["lenience"] == 0.0:
            assert row["exact_match"] == 1.0 and row["token_agreement"] == 1.0, row["rule"]
            assert row["accuracy"] == payload["target"]["accuracy"]


def test_full_lenience_token_v3_drafts_everything(report):
    """TokenV3 at alpha 1 keeps every draft: more tokens per target forward than the lossless cascade."""
    _, payload, _ = report
    rows = {(r["rule"], r["lenience"]): r for r in payload["rows"]}
    assert rows[("token_v3", 1.0)]["tau"] > rows[("lossless", 0.0)]["tau"]
    assert rows[("token_v3", 1.0)]["speedup"] == pytest.approx(
        rows[("token_v3", 1.0)]["tokens_per_s"] / rows[("lossless", 0.0)]["tokens_per_s"])


def test_bad_arguments_are_usage_errors(tmp_path, capsys):
    assert bench.main(["--model", str(tmp_path), "--rules", "bogus", "--out", str(tmp_path)]) == 2
    assert "unknown lossy rule(s) ['bogus']" in capsys.readouterr().err
    assert bench.main(["--model", str(tmp_path), "--out", str(tmp_path)]) == 2
    assert "has no cascade.json" in capsys.readouterr().err
    assert bench.main(["--lenience", "x", "--out", str(tmp_path)]) == 2


def test_levels_pick_the_drafting_levels_and_unknown_names_exit_2(report, capsys):
    _, _, out = report
    model = out.parent / "cascade"
    args = ["--model", str(model), "--scenes", "1", "--questions", "1", "--rules", "token_v3", "--lenience", "0",
            "--max-new-tokens", "4", "--static", "--duration-us", "400000", "--out", str(out.parent / "one")]
    assert bench.main([*args, "--levels", "events"]) == 0
    payload = json.loads((out.parent / "one" / "lossy.json").read_text())
    assert payload["config"]["levels"] == ["events"] and payload["rows"][1]["exact_match"] == 1.0
    assert bench.main([*args, "--levels", "nope"]) == 2
    assert "'nope'" in capsys.readouterr().err
