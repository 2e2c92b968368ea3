"""``python -m evcascade.bench batch`` on the bundled windows cascade with a one-layer twin: structure and the
batch-1 equality check. No timing assertions (speed is measured by running the bench, not by tests)."""

import json

import pytest

from evcascade.bench import batch as bench


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("batch")
    code = bench.main(["--scenes", "1", "--questions", "3", "--batch-sizes", "1,2", "--twin-hidden", "64",
                       "--twin-layers", "1", "--max-new-tokens", "24", "--threads", "1", "--out", str(out)])
    return code, json.loads((out / "batch.json").read_text())


def test_every_row_at_every_batch_size_equals_its_batch1_answers(report):
    code, payload = report
    assert code == 0 and payload["outputs_identical"]
    names = {(r["row"], r["regime"], r["B"]) for r in payload["rows"]}
    for batch_size in (1, 2):
        assert ("twin: cascade replayed batched", "cold", batch_size) in names
        assert ("twin: cascade replayed, continuous", "warm", batch_size) in names
        assert ("HF generate batched", "cold", batch_size) in names


def test_forward_shapes_are_reported(report):
    _, payload = report
    ours = [r for r in payload["rows"] if not r["row"].startswith(("HF", "twin: HF"))]
    for row in ours:
        assert 1 <= row["rows_per_forward"] <= row["B"]
        assert 0 <= row["padding_share"] < 1
    assert all(r["padding_share"] == 0 for r in ours if r["B"] == 1)  # one row: nothing to pad
    assert all(r["tokens_per_row_forward"] >= 1 for r in ours)
    for row in (r for r in ours if r["row"].startswith("twin: cascade replayed")):  # both ceilings
        assert row["share_of_ceiling"] > 0 and row["work_share_of_ceiling"] > 0
    continuous = [r for r in ours if r["row"].endswith("continuous")]
    assert continuous and all(r["full_batch_tokens_per_s"] > 0 for r in continuous)  # 3 questions keep B <= 2 busy
    assert payload["config"]["mean_answer_tokens"] > 0


def test_an_empty_long_slice_is_a_clear_error(capsys):
    code = bench.main(["--scenes", "1", "--questions", "1", "--min-tokens", "1000", "--no-twin", "--batch-sizes", "1"])
    assert code == 2
    assert ">= 1000 tokens" in capsys.readouterr().err


def test_packing_off_pads_rows_to_the_widest_block(tmp_path):
    code = bench.main(["--scenes", "1", "--questions", "3", "--batch-sizes", "2", "--no-twin", "--packing", "off",
                       "--regimes", "cold", "--max-new-tokens", "24", "--out", str(tmp_path)])
    payload = json.loads((tmp_path / "batch.json").read_text())
    assert code == 0 and payload["config"]["pack"] is False
    cascade_row = next(r for r in payload["rows"] if r["row"] == "cascade batched")
    assert cascade_row["padding_share"] > 0  # a joining row's question widens its step
