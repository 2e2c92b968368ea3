"""The main command on what users have: a DSEC-layout events.h5 (real t_offset, image clock) and an mp4 of the
same scene; unsorted recordings; hints that name the command's flags."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import hdf5plugin  # noqa: F401  (Blosc filter, to rewrite a DSEC time column)
import numpy as np
import pytest

from evcascade import cascade as cascade_module
from evcascade import infer
from evcascade.events.container import Events
from evcascade.events.io import read_events, write_events

SAMPLE = Path(__file__).resolve().parents[1] / "evcascade" / "assets" / "sample"
T_OFFSET_US = 49_599_300_529


@pytest.fixture(scope="module")
def dsec_pair(tmp_path_factory):
    """The bundled sample scene's events moved onto a DSEC image clock, next to the scene's own mp4."""
    folder = tmp_path_factory.mktemp("dsec_pair")
    events = read_events(SAMPLE / "events.h5")
    on_image_clock = Events.from_arrays(events.x, events.y, events.t_us + T_OFFSET_US, events.p, events.sensor_size)
    write_events(folder / "events.h5", on_image_clock, t_offset_us=T_OFFSET_US)
    return folder / "events.h5", SAMPLE / "video.mp4", int(on_image_clock.t_us[0])


def run_cli(argv, capsys):
    code = infer.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_dsec_h5_and_mp4_answer_with_no_flags_and_say_how_they_were_aligned(dsec_pair, capsys):
    events_path, video_path, first_us = dsec_pair
    note = f"aligned video t=0 to events t={first_us} us; pass --video-offset-us to override"
    code, out, err = run_cli(["--events", events_path, "--video", video_path], capsys)
    assert code == 0, err
    answer = out.splitlines()[0]
    assert answer.startswith("answer: ") and len(answer) > len("answer: ") + 3
    assert err.splitlines().count(note) == 1


@pytest.fixture
def data_layer_only(monkeypatch):
    """The CLI without a model (as when no demo cascade is installed): loads the clip and stops."""
    monkeypatch.setattr(cascade_module, "resolve_model", lambda name: None)


def test_json_records_the_alignment(dsec_pair, capsys, data_layer_only):
    events_path, video_path, first_us = dsec_pair
    code, out, err = run_cli(["--events", events_path, "--video", video_path, "--json"], capsys)
    assert code == 0, err
    inputs = json.loads(out)["inputs"]
    assert inputs["alignment"] == {"video_offset_us": first_us, "rule": "events_start", "video_start_us": 0,
                                   "events_start_us": first_us}
    assert inputs["window_us"][0] == first_us and inputs["video_offset_us"] == first_us
    assert err.count("aligned video t=0") == 1


def test_unsorted_recording_is_named_and_sort_events_reads_it(tmp_path, capsys, data_layer_only):
    events = read_events(SAMPLE / "events.h5")
    path = tmp_path / "reversed.h5"
    write_events(path, events)
    with h5py.File(path, "r+") as handle:
        handle["events/t"][:] = handle["events/t"][:][::-1]
    argv = ["--events", path, "--video", SAMPLE / "video.mp4", "--json"]
    code, out, err = run_cli(argv, capsys)
    assert code == 2 and "empty clip window" not in err
    assert "reversed.h5" in err and "timestamps are not sorted" in err and "pass --sort-events" in err
    assert "sort=True" not in err and len(err.splitlines()) == 1
    code, out, err = run_cli(argv + ["--sort-events"], capsys)
    assert code == 0, err
    assert json.loads(out)["inputs"]["num_events"] == len(events.window(2488, 1_450_001))


def _io_helpers():
    import importlib.util

    spec = importlib.util.spec_from_file_location("io_helpers", Path(__file__).parent / "events" / "io_helpers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sensor_size_flag_for_a_raw_file_without_geometry(tmp_path, capsys, data_layer_only):
    helpers = _io_helpers()
    x, y, t_us, p = helpers.random_events(500, sensor_size=(64, 48), duration_us=1_000_000)
    raw = tmp_path / "bare.raw"  # says its encoding, not its geometry
    raw.write_bytes(b"% evt 2.0\n% end\n" + helpers.encode_evt2(x, y, t_us, p).tobytes())
    argv = ["--events", raw, "--video", SAMPLE / "video.mp4", "--json"]
    code, _, err = run_cli(argv, capsys)
    assert code == 2 and "bare.raw" in err and "pass --sensor-size WxH" in err and "sensor_size=" not in err
    code, out, err = run_cli(argv + ["--sensor-size", "64x48"], capsys)
    assert code == 0, err
    assert json.loads(out)["inputs"]["num_events"] == len(t_us)  # the whole recording lies inside the video
    for bad in ("640", "0x480", "axb"):
        code, _, err = run_cli(argv + ["--sensor-size", bad], capsys)
        assert code == 2 and "WxH" in err and len(err.splitlines()) == 1


def test_a_given_offset_that_misses_is_named_with_the_flag(dsec_pair, capsys, data_layer_only):
    events_path, video_path, _ = dsec_pair
    code, out, err = run_cli(["--events", events_path, "--video", video_path, "--video-offset-us", "0"], capsys)
    assert code == 2 and "do not overlap in time" in err and "pass --video-offset-us" in err
    assert "video_offset_us" not in err.replace("--video-offset-us", "")  # worded for the command line


def test_cli_wording_maps_every_python_hint():
    for python_words, cli_words in infer.CLI_WORDING.items():
        assert infer.cli_wording(f"x; {python_words} to fix it") == f"x; {cli_words} to fix it"


def test_python_answer_records_the_alignment(dsec_pair):
    from evcascade.clip import ClockAlignmentWarning
    from evcascade.models.tiny import tiny_tokenizer, tiny_video_llava

    events_path, video_path, first_us = dsec_pair
    tok = tiny_tokenizer()
    target_only = cascade_module.Cascade.from_models(tiny_video_llava(tok, seed=1), tok)
    with pytest.warns(ClockAlignmentWarning, match=f"events t={first_us} us; pass video_offset_us to override"):
        answer = target_only.generate(events_path, video_path, "what is moving ?", max_new_tokens=2)
    assert answer.inputs["alignment"] == {"video_offset_us": first_us, "rule": "events_start", "video_start_us": 0,
                                          "events_start_us": first_us}
    given = target_only.generate(events_path, video_path, "what is moving ?", max_new_tokens=2,
                                 video_offset_us=first_us + 100_000)
    assert given.inputs["alignment"]["rule"] == "given" and given.inputs["window_us"][0] == first_us + 100_000
