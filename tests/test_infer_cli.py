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
    (["--model", "/no/such/folder"], "'/no/such/folder' is not 'bundled', 'bundled-windows', a preset"),
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


@pytest.fixture
def empty_hf_cache(monkeypatch, tmp_path):
    """A Hugging Face cache with nothing in it, whatever this machine's own cache holds; loading from the hub
    fails the test (a missing preset must be reported from the disk, not after the hub client's retries)."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))

    def no_hub(*args, **kwargs):
        raise AssertionError("reached for the hub although the weights are known to be missing")

    monkeypatch.setattr("evcascade.decoding.verifier.VideoLlavaVerifier.from_pretrained", no_hub)
    return tmp_path / "hub"


def test_missing_preset_weights_are_all_named_at_once(capsys, empty_hf_cache):
    code, out, err = run_cli(BASE + ["--model", "video-llava-7b"], capsys)
    assert code == 2 and out == ""
    lines = [line for line in err.splitlines() if line.startswith("evcascade: error")]
    assert len(lines) == 1 and "bundled default" in lines[0]
    assert "hf download LanguageBind/Video-LLaVA-7B-hf" in lines[0] and "hf download JackFram/llama-68m" in lines[0]
    code, _, err = run_cli(BASE + ["--model", "eventgpt-video-llava-7b"], capsys)
    assert code == 2
    for needed in ("LanguageBind/Video-LLaVA-7B-hf", "EventGPT-7b", "openai/clip-vit-large-patch14-336"):
        assert needed in err


def test_weights_in_the_local_cache_are_not_reported_missing(empty_hf_cache):
    from evcascade.cascade import CASCADE_PRESET_DIR, missing_weights

    snapshot = empty_hf_cache / "models--JackFram--llama-68m" / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0123abcd")
    spec = json.loads((CASCADE_PRESET_DIR / "video-llava-7b.json").read_text())
    assert [ref for _, ref, _ in missing_weights(spec, CASCADE_PRESET_DIR)] == ["LanguageBind/Video-LLaVA-7B-hf"]


def test_no_stray_answer_prefix_before_an_error(capsys):
    code, out, err = run_cli(BASE + ["--max-new-tokens", "100000"], capsys)
    assert code == 2 and out == "" and "max_new_tokens (100000)" in err
    code, out, err = run_cli(BASE + ["--prompt", "what is moving ? " * 200], capsys)
    assert code == 2 and out == "" and "max_position_embeddings" in err


def test_ignored_sampling_flags_say_so_in_one_line(capsys):
    code, out, err = run_cli(BASE + ["--temperature", "0.7"], capsys)
    assert code == 0 and out.startswith("answer: ")
    warned = [line for line in err.splitlines() if "warning" in line]
    assert warned == ["evcascade: warning: temperature=0.7 ignored: decoding is greedy (set do_sample=True, "
                      "--do-sample on the command line, to sample)"]
    code, _, err = run_cli(BASE + ["--temperature", "0.7", "--do-sample", "--seed", "0"], capsys)
    assert code == 0 and "warning" not in err


def test_verbosity_flags_and_environment(capsys, monkeypatch):
    code, _, quiet = run_cli(BASE, capsys)
    code_v, _, verbose = run_cli(BASE + ["-v"], capsys)
    assert code == code_v == 0 and "loaded the clip" in verbose and "loaded the clip" not in quiet
    monkeypatch.setenv("EVCASCADE_LOG", "info")
    assert "loaded the clip" in run_cli(BASE, capsys)[2]
    monkeypatch.setenv("EVCASCADE_LOG", "loud")
    code, _, err = run_cli(BASE, capsys)
    assert code == 2 and err.strip() == "evcascade: error: EVCASCADE_LOG='loud': expected one of warning, info, debug"


def test_default_run_is_quiet():
    """The issue's bar: stderr holds at most 2 lines besides the answer (one progress line today)."""
    command = [sys.executable, "-m", "evcascade.infer", *BASE]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=SAMPLE.parents[2])
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("answer: the circle and the square are moving .\n")
    assert len(done.stderr.splitlines()) <= 2, done.stderr
    assert not any(word in done.stderr for word in ("Warning", "Loading weights", "deprecated", "%|")), done.stderr


def test_a_closed_stdout_ends_the_run_quietly(monkeypatch, capsys):
    """``| head -1``: the reader has gone before the answer is written; exit 0, no traceback."""
    import io
    import os

    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone: writes raise BrokenPipeError (Python ignores SIGPIPE)
    closed = io.TextIOWrapper(io.FileIO(write_end, "w"), line_buffering=True)
    monkeypatch.setattr(sys, "stdout", closed)
    code = infer.main(BASE)
    monkeypatch.undo()
    closed.write("after: the interpreter's last flush must not raise either\n")
    closed.flush()  # goes to devnull now
    closed.close()
    err = capsys.readouterr().err
    assert code == 0 and "Traceback" not in err and "Error" not in err and "error" not in err, err


def test_internal_errors_exit_1(capsys, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("simulated bug")

    monkeypatch.setattr("evcascade.clip.load_clip", boom)
    code, _, err = run_cli(BASE, capsys)
    assert code == 1 and "internal error" in err and "simulated bug" in err


def test_help_names_the_command_as_it_was_started(capsys):
    from evcascade.__main__ import main as console_main

    with pytest.raises(SystemExit) as exit_info:
        console_main(["infer", "--help"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.startswith("usage: evcascade infer ")
    with pytest.raises(SystemExit):
        infer.main(["--help"])
    assert capsys.readouterr().out.startswith("usage: python -m evcascade.infer ")


def test_console_entry_point_dispatches_infer_and_bench():
    base = [sys.executable, "-m", "evcascade"]
    done = subprocess.run(base + ["infer", *BASE, "--json"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["text"] == "the circle and the square are moving ."
    done = subprocess.run(base + ["bench", "nonsense"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "unknown benchmark 'nonsense'" in done.stderr
    done = subprocess.run(base + ["frobnicate"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
