"""The synthetic world in DSEC's own sequence layout: the training index and ``python -m evcascade.infer --events
<seq>/events/left/events.h5 --video <seq>/images/left`` take it as they take a downloaded DSEC sequence."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from evcascade.data.dsec import DEFAULT_T_OFFSET_US, write_dsec_sequence


@pytest.fixture(scope="module")
def sequence(tmp_path_factory):
    from evcascade.data.world import WorldConfig, make_world_sample

    sample = make_world_sample(11, WorldConfig())  # the bundled demo target's world: 64x64, 20 Hz, 1.5 s
    root = tmp_path_factory.mktemp("dsec_world") / "train"
    return sample, write_dsec_sequence(sample, root / "synth_00_a")


def test_the_files_are_dsecs_and_the_index_reads_them(sequence):
    from evcascade.events.io import read_events
    from evcascade.train.datasets import dsec_windows
    from evcascade.video import read_video

    sample, seq = sequence
    with h5py.File(seq / "events" / "left" / "events.h5") as handle:
        assert int(handle["t_offset"][()]) == DEFAULT_T_OFFSET_US > 2**32
        assert handle["events/t"].dtype == np.uint32 and "ms_to_idx" in handle
    stamps = np.loadtxt(seq / "images" / "timestamps.txt", dtype=np.int64)
    np.testing.assert_array_equal(stamps, sample.video.timestamps_us + DEFAULT_T_OFFSET_US)
    assert sorted(p.name for p in (seq / "images" / "left" / "rectified").iterdir())[:2] == ["000000.png", "000001.png"]

    windows = dsec_windows(seq.parent, stride_frames=2)
    assert windows and all(w.group == "synth_00_a" and w.end_us - 1 in set(stamps.tolist()) for w in windows)
    last = windows[-1]
    events = read_events(last.events_path, last.end_us - 50_000, last.end_us)
    expected = sample.events.shift_time(DEFAULT_T_OFFSET_US).window(last.end_us - 50_000, last.end_us)
    np.testing.assert_array_equal(events.t_us, expected.t_us)
    np.testing.assert_array_equal(events.x, expected.x)
    for folder in (seq, seq / "images", seq / "images" / "left"):  # the camera folder too, as the command has it
        video = read_video(folder, 2, last.start_us, last.end_us)
        assert video.timestamps_us[-1] == last.end_us - 1
        index = int(np.searchsorted(stamps, video.timestamps_us[-1]))
        np.testing.assert_array_equal(video.frames[-1], sample.video.frames[index])


def test_infer_answers_on_the_dsec_sequence_losslessly(sequence, capsys):
    from evcascade import infer

    _, seq = sequence
    stamps = np.loadtxt(seq / "images" / "timestamps.txt", dtype=np.int64)
    base = ["--events", str(seq / "events" / "left" / "events.h5"), "--video", str(seq / "images" / "left"),
            "--prompt", "what is moving ?", "--json"]
    answers = {}
    for mode in ("cascade", "target"):
        assert infer.main([*base, "--mode", mode]) == 0
        answers[mode] = json.loads(capsys.readouterr().out)
    assert answers["cascade"]["token_ids"] == answers["target"]["token_ids"] and answers["cascade"]["text"]
    start, end = answers["cascade"]["inputs"]["window_us"]  # on DSEC's image clock, inside the sequence
    assert stamps[0] - 50_000 <= start < end <= stamps[-1] + 50_000 and start > 2**32
