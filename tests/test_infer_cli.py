"""``python -m evcascade.infer`` end to end: human and --json output, every exit code, each bad argument."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from evcascade import infer

SAMPLE = Path(__file__).resolve().parents[1] / "evcascade" / "assets" / "sample"
BASE = ["--events", str(SAMPLE / "events.h5"), "--video", str(SAMPLE / "video.mp4")]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    from test_cascade import build_tiny_cascade

    folder = tmp_path_factory.mktemp("cli_cascade")
    build_tiny_cascade().save_pretrained(folder)
    return str(folder)


def run_cli(argv, capsys):
    code = infer.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_default_answers_with_the_bundled_demo_cascade(capsys):
    annotations = json.loads((SAMPLE / "annotations.json").read_text())
    truth = {qa["question"]: qa["answer"] for qa in annotations["qa"]}
    code, out, err = run_cli(BASE, capsys)
    assert code == 0, err
    assert f"answer: {truth['what is moving ?']}" in out
    for question in ("where does the square move ?", "what colour is the moving circle ?"):
        code, out, err = run_cli(BASE + ["--prompt", question, "--json"], capsys)
        cascade = json.loads(out)
        assert code == 0 and cascade["text"] == truth[question]
        code, out, _ = run_cli(BASE + ["--prompt", question, "--json", "--mode", "target"], capsys)
        assert json.loads(out)["token_ids"] == cascade["token_ids"]
    code, _, err = run_cli(BASE + ["--num-frames", "8"], capsys)
    assert code == 2 and "takes 2 frames" in err


def test_lossy_acceptance_is_opt_in_and_says_so(capsys):
    code, out, err = run_cli(BASE + ["--prompt", "describe the video .", "--json"], capsys)
    lossless = json.loads(out)
    assert code == 0 and lossless["stats"]["acceptance"] == "lossless"
    for rule in ("token_v3", "modality"):
        code, out, err = run_cli(BASE + ["--prompt", "describe the video .", "--acceptance", rule, "--json"], capsys)
        lossy = json.loads(out)
        assert code == 0, err
        assert lossy["stats"]["acceptance"].startswith(f"{rule if rule == 'modality' else 'token_v3'}(0.3")
        assert lossy["text"] == lossless["text"]  # the bundled target is near-certain: nothing to trade here
    code, out, _ = run_cli(BASE + ["--acceptance", "typical", "--lenience", "0.5"], capsys)
    assert code == 0 and "acceptance: typical" in out and "opt-in lossy" in out


def test_without_a_bundled_cascade_the_data_layer_runs_and_says_so(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr("evcascade.cascade.BUNDLED_DIR", tmp_path)
    code, out, err = run_cli(BASE, capsys)
    assert code == 0, err
    assert "data layer only" in out
    code, out, _ = run_cli(BASE + ["--json"], capsys)
    result = json.loads(out)
    assert code == 0 and result["inputs"]["num_frames"] == 8 and result["inputs"]["num_events"] > 1000


def test_model_folder_answers_streamed_and_as_json(tiny_model, capsys):
    code, out, err = run_cli(BASE + ["--model", tiny_model, "--max-new-tokens", "6", "--stats"], capsys)
    assert code == 0, err
    assert out.startswith("answer: ") and "tau" in out
    code, out, err = run_cli(BASE + ["--model", tiny_model, "--max-new-tokens", "6", "--json"], capsys)
    assert code == 0, err
    cascade = json.loads(out)
    assert set(cascade) >= {"text", "token_ids", "stats", "model", "inputs"}
    assert len(cascade["token_ids"]) == 6 or cascade["stats"]["stop_reason"] != "max_new_tokens"
    code, out, _ = run_cli(BASE + ["--model", tiny_model, "--max-new-tokens", "6", "--json", "--mode", "target"], capsys)
    assert code == 0 and json.loads(out)["token_ids"] == cascade["token_ids"]


@pytest.mark.parametrize("extra, needle", [
    (["--max-new-tokens", "0"], "--max-new-tokens must be >= 1, got 0"),
    (["--temperature", "-1"], "--temperature must be > 0, got -1"),
    (["--top-p", "1.5"], "--top-p must be in (0, 1], got 1.5"),
    (["--start-us", "100", "--end-us", "50"], "--start-us must be < --end-us"),
    (["--device", "tpu"], "--device must be cpu, cuda or cuda:N, got 'tpu'"),
    (["--dtype", "int8"], "invalid choice: 'int8'"),
    (["--mode", "fast"], "invalid choice: 'fast'"),
    (["--prompt", "  "], "--prompt is empty"),
    (["--model", "/no/such/folder"], "'/no/such/folder' is not 'bundled', a preset"),
    (["--start-us", "50000000000", "--end-us", "50000001000"], "50000000000"),
    (["--num-frames", "x"], "invalid int value: 'x'"),
    (["--lenience", "0.5"], "--lenience 0.5 needs a lossy --acceptance rule"),
    (["--acceptance", "token_v3", "--lenience", "1.5"], "--lenience must be in [0, 1] (0 = lossless), got 1.5"),
    (["--acceptance", "token_v3", "--mode", "target"], "--mode target has none"),
    (["--acceptance", "sloppy"], "invalid choice: 'sloppy'"),
])
def test_bad_arguments_exit_2_with_one_line_naming_the_value(extra, needle, capsys):
    code, out, err = run_cli(BASE + extra, capsys)
    assert code == 2
    lines = [line for line in err.splitlines() if line.startswith("evcascade: error")]
    assert len(lines) == 1 and needle in lines[0], err
    assert "Traceback" not in err


def test_missing_files_exit_2(capsys, tmp_path):
    code, _, err = run_cli(["--events", str(tmp_path / "nope.h5"), "--video", str(SAMPLE / "video.mp4")], capsys)
    assert code == 2 and "nope.h5" in err
    bad = tmp_path / "broken.h5"
    bad.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 64)
    code, _, err = run_cli(["--events", str(bad), "--video", str(SAMPLE / "video.mp4")], capsys)
    assert code == 2 and "broken.h5" in err and "Traceback" not in err
    code, _, err = run_cli(["--video", str(SAMPLE / "video.mp4")], capsys)
    assert code == 2 and "--events" in err


def test_missing_preset_weights_say_where_they_come_from(capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, _, err = run_cli(BASE + ["--model", "video-llava-7b"], capsys)
    assert code == 2 and "LanguageBind/Video-LLaVA-7B-hf" in err and "bundled default" in err


def test_internal_errors_exit_1(capsys, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("simulated bug")

    monkeypatch.setattr("evcascade.clip.load_clip", boom)
    code, _, err = run_cli(BASE, capsys)
    assert code == 1 and "internal error" in err and "simulated bug" in err


def test_console_entry_point_dispatches_infer_and_bench():
    base = [sys.executable, "-m", "evcascade"]
    done = subprocess.run(base + ["infer", *BASE, "--json"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["text"] == "the circle and the square are moving ."
    done = subprocess.run(base + ["bench", "nonsense"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "unknown benchmark 'nonsense'" in done.stderr
    done = subprocess.run(base + ["frobnicate"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
