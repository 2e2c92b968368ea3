"""The prefix-sharing benchmark, small: both paths' answers equal, the shared batch holds one prefix. No timing
assertions."""

import json

import pytest

from evcascade.bench import prefix as bench


def test_the_prefix_bench_compares_shared_and_copied_rows(tmp_path, capsys):
    from evcascade.cascade import resolve_model

    if resolve_model("bundled") is None:
        pytest.skip("the bundled demo cascade is not installed")
    assert bench.main(["--batch-sizes", "1,3", "--steps", "1", "--repeats", "1", "--twin-hidden", "64",
                       "--twin-layers", "1", "--long-prefixes", "50", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "prefix.json").read_text())
    assert report["outputs_identical"] and len(report["rows"]) == 8
    for row in report["rows"]:
        if row["B"] == 1:  # one row: nothing to share
            assert row["kv_mib_shared"] == row["kv_mib_copy"]
        else:  # three rows: the prefix once instead of three times
            assert row["kv_mib_shared"] < row["kv_mib_copy"]
    assert "verify_ms_shared" in capsys.readouterr().out
    assert bench.main(["--batch-sizes", "0"]) == 2
