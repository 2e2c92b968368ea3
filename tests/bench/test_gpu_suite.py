"""``python -m evcascade.bench gpu --size tiny``: the GPU suite's code on the CPU with tiny shapes, every part
present, exact rows identical, float32 on one CPU with no near-tie flips. No timing assertions."""

import json

import pytest

from evcascade.bench import gpu


def test_gpu_suite_tiny_runs_every_part_on_cpu(tmp_path, capsys):
    assert gpu.main(["--size", "tiny", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "gpu.json").read_text())
    parts = [row["part"] for row in report["rows"]]
    assert parts[:2] == ["i lossless", "i lossless"] and "ii engine" in parts and "iii twin" in parts
    check = report["lossless"]
    assert check["prompts"] >= 20 and check["identical"] == check["prompts"]  # float32, one device: exact
    assert check["positions"] == 20 * 12 and check["argmax_flips"] == 0
    engine_rows = [row for row in report["rows"] if row["part"] == "ii engine"]
    assert [row["row"] for row in engine_rows] == ["ours, no drafter"] + ["ours, oracle static k",
                                                                          "ours, oracle adaptive"] * 2
    assert [row["setting"][:5] for row in engine_rows[1:]] == ["a 0.7", "a 0.7", "a 0.9", "a 0.9"]
    twin = [row for row in report["rows"] if row["part"] == "iii twin"]
    assert {row["setting"] for row in twin} == {"cold", "warm"} and all(row["identical"] for row in twin)
    assert report["outputs_identical"] and "GPU suite, size tiny" in capsys.readouterr().out


def test_bad_size_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_:
        gpu.main(["--size", "huge"])
    assert exit_.value.code == 2 and "huge" in capsys.readouterr().err
