"""The provisional bench on a tiny random cascade with a tiny cost twin: window-aware truth, the fact columns, every
verified answer unchanged by the provisional one. No timing assertions."""

import json

import pytest

from evcascade.bench import provisional as bench
from evcascade.data.questions import qa_pairs
from evcascade.data.world import WorldConfig, make_world_sample, scene_seeds


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    from test_cascade import build_tiny_cascade

    root = tmp_path_factory.mktemp("provisional")
    build_tiny_cascade(seed=5).save_pretrained(root / "cascade")
    code = bench.main(["--model", str(root / "cascade"), "--scenes", "1", "--seed", "3", "--questions", "2",
                       "--max-new-tokens", "5", "--draft-k", "3", "--duration-us", "600000", "--windows-ms", "50,600",
                       "--twin-hidden", "32", "--twin-layers", "1", "--out", str(root / "out")])
    return code, json.loads((root / "out" / "provisional.json").read_text()), root / "out" / "provisional.json"


def test_each_question_is_about_its_window_and_judged_by_that_windows_truth(report):
    code, payload, _ = report
    assert code == 0 and payload["all_lossless"] and payload["models"] == [payload["records"][0]["model"]]
    records = payload["records"]
    assert {r["regime"] for r in records} == {"cold", "warm"} and {r["window_ms"] for r in records} == {50, 600}
    (seed,) = scene_seeds(3, 1)
    scene = make_world_sample(seed, WorldConfig(duration_us=600_000)).scene
    for r in records:
        start_us, end_us = r["window_us"]
        assert end_us - start_us <= r["window_ms"] * 1000
        truth = {qa.question: qa for qa in qa_pairs(scene, (start_us, end_us))}
        qa = truth[r["question"]]
        assert r["truth"] == qa.answer and r["verified_correct"] == qa.is_correct(r["verified"])
        assert r["facts_same"] <= r["facts_verified"] and "twin_verified_ms" in r and "twin_alone_ms" in r
    short = [r for r in records if r["window_ms"] == 50]
    assert all(r["window_us"][1] - r["window_us"][0] == 50_000 for r in short)


def test_rows_pool_the_facts_and_the_report_can_be_summarised_again(report, capsys):
    _, payload, path = report
    overall = [row for row in payload["rows"] if row["kind"] == "all"]
    assert len(overall) == 4  # 2 regimes x 2 windows
    for row in overall:
        group = [r for r in payload["records"] if r["regime"] == row["regime"] and r["window_ms"] == row["window_ms"]]
        verified = sum(r["facts_verified"] for r in group)
        assert row["facts"] == pytest.approx(sum(r["facts_same"] for r in group) / verified if verified else 1.0)
        assert row["verified_cost"] == pytest.approx(row["verified_ms"] / row["verified_alone_ms"])
    assert {a["window_ms"] for a in payload["attributes"]} >= {50, 600, "all"}
    assert bench.main(["--report", str(path), "--out", str(path.parent / "again")]) == 0
    assert json.loads((path.parent / "again" / "provisional.json").read_text())["rows"] == payload["rows"]
    out = capsys.readouterr().out
    assert "facts by attribute" in out and "aim " in out
    assert bench.main(["--report", str(path.parent / "missing.json")]) == 2
    assert bench.main(["--windows-ms", "50,x", "--model", "bundled"]) == 2
