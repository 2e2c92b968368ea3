"""load_clip: events and video on one clock — overlap, offsets, event windows, and errors naming both ranges."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import evcascade.events.io as events_io
from evcascade.clip import Alignment, ClockAlignmentWarning, Clip, clip_window, load_clip
from evcascade.errors import InputError
from evcascade.events.container import Events
from evcascade.events.io import read_events, write_events
from evcascade.video import Video, read_video, write_video

FPS, NUM, H, W = 20.0, 30, 48, 64  # video frames at 0, 50 ms, ..., 1.45 s


def make_events(start_us: int = 100_000, end_us: int = 1_300_000, n: int = 5000) -> Events:
    rng = np.random.default_rng(0)
    t_us = np.sort(rng.integers(start_us, end_us, n))
    t_us[0], t_us[-1] = start_us, end_us - 1  # the recording spans exactly [start_us, end_us)
    return Events.from_arrays(rng.integers(0, W, n), rng.integers(0, H, n), t_us, rng.integers(0, 2, n), (W, H))


def make_video() -> Video:
    frames = np.zeros((NUM, H, W, 3), np.uint8)
    frames[..., 0] = (8 * np.arange(NUM)).astype(np.uint8)[:, None, None]  # red level tells frames apart
    return Video(frames, np.arange(NUM) * 50_000)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clip")
    events, video = make_events(), make_video()
    write_events(folder / "events.h5", events)
    write_video(folder / "video.mp4", video, FPS)
    return folder / "events.h5", folder / "video.mp4", events, video


def test_default_window_is_the_overlap(files):
    events_path, video_path, events, _ = files
    clip = load_clip(events_path, video_path)
    assert (clip.start_us, clip.end_us) == (100_000, 1_300_000)  # events [100000, 1300000), video [0, 1450001)
    assert clip.events_start_us == 100_000
    np.testing.assert_array_equal(clip.events.t_us, events.t_us)
    # frames in the window are 2 .. 25 (t = 100 ms .. 1.25 s); 8 of them by linspace
    expected = 2 + np.linspace(0, 23, 8).astype(int)
    np.testing.assert_array_equal(clip.video.timestamps_us, expected * 50_000)
    assert (clip.events_path, clip.video_path) == (str(events_path), str(video_path))
    text = clip.describe()
    assert "clip [100000, 1300000) us" in text and f"events: {len(events)}" in text
    assert "key frame at 1250000 us" in text


def test_video_offset_moves_frames_onto_the_event_clock(files):
    events_path, video_path, events, _ = files
    clip = load_clip(events_path, video_path, video_offset_us=200_000, num_frames=4)
    assert (clip.start_us, clip.end_us) == (200_000, 1_300_000)
    # video frame i is at 200 ms + 50 i ms; the window holds frames 0 .. 21
    np.testing.assert_array_equal(clip.video.timestamps_us, 200_000 + np.linspace(0, 21, 4).astype(int) * 50_000)
    red = np.median(clip.video.frames[..., 0], axis=(1, 2))
    np.testing.assert_allclose(red, 8 * np.linspace(0, 21, 4).astype(int), atol=6)  # the right frames decoded
    np.testing.assert_array_equal(clip.events.t_us, events.window(200_000, 1_300_000).t_us)


def test_event_window_keeps_only_the_last_part_of_the_events(files, monkeypatch):
    events_path, video_path, events, _ = files
    calls = []
    original = events_io.read_events
    monkeypatch.setattr(events_io, "read_events", lambda *a, **k: calls.append(a[1:3]) or original(*a, **k))
    clip = load_clip(events_path, video_path, start_us=400_000, end_us=1_000_000, event_window_us=50_000)
    assert calls == [(950_000, 1_000_000)]  # only the event window is read from the file
    assert clip.events_start_us == 950_000
    np.testing.assert_array_equal(clip.events.t_us, events.window(950_000, 1_000_000).t_us)
    np.testing.assert_array_equal(clip.video.timestamps_us, (8 + np.linspace(0, 11, 8).astype(int)) * 50_000)
    with pytest.warns(UserWarning, match="2 frames in window"):
        longer = load_clip(events_path, video_path, start_us=400_000, end_us=500_000, event_window_us=10**9)
    assert longer.events_start_us == 400_000  # clamped to the window


def test_objects_give_the_same_clip_as_files(files):
    events_path, video_path, events, video = files
    from_files = load_clip(events_path, video_path, start_us=300_000, end_us=900_000, video_offset_us=-50_000)
    from_objects = load_clip(events, video, start_us=300_000, end_us=900_000, video_offset_us=-50_000)
    assert isinstance(from_objects, Clip) and from_objects.events_path is None
    np.testing.assert_array_equal(from_objects.events.t_us, from_files.events.t_us)
    np.testing.assert_array_equal(from_objects.video.timestamps_us, from_files.video.timestamps_us)
    assert np.abs(from_objects.video.frames.astype(int) - from_files.video.frames.astype(int)).mean() < 3


def test_window_outside_a_recording_names_both_ranges(files):
    events_path, video_path, _, _ = files
    both = r"events \[100000, 1300000\) us, video \[0, 1450001\) us"
    with pytest.raises(InputError, match=r"clip window \[50000, 600000\) us is not inside both recordings: " + both):
        load_clip(events_path, video_path, start_us=50_000, end_us=600_000)
    with pytest.raises(InputError, match=r"\[1000000, 1400000\).*" + both):
        load_clip(events_path, video_path, start_us=1_000_000, end_us=1_400_000)
    with pytest.raises(InputError, match=r"events \[100000, 1300000\) us, video \[10000000, 11450001\) us"):
        load_clip(events_path, video_path, video_offset_us=10_000_000)  # no overlap at all
    with pytest.raises(InputError, match=r"requested \[600000, 500000\).*start must be < end.*" + both):
        load_clip(events_path, video_path, start_us=600_000, end_us=500_000)
    with pytest.raises(InputError, match="event_window_us must be a positive"):
        load_clip(events_path, video_path, event_window_us=0)


def test_clip_window_rules():
    assert clip_window((0, 1000), (200, 1500)) == (200, 1000)
    assert clip_window((0, 1000), (200, 1500), end_us=800) == (200, 800)
    assert clip_window(None, (200, 1500), 300, 400) == (300, 400)  # an empty recording constrains nothing
    with pytest.raises(InputError, match="events hold nothing.*pass start_us and end_us"):
        clip_window(None, None)
    with pytest.raises(InputError, match="start_us must be an integer"):
        clip_window((0, 1000), (0, 1000), start_us=1.5)


def test_empty_events_object_with_explicit_window_is_valid(files):
    _, video_path, _, _ = files
    clip = load_clip(Events.empty((W, H)), video_path, start_us=0, end_us=500_000, num_frames=2)
    assert len(clip.events) == 0 and clip.events.sensor_size == (W, H)
    assert clip.video.timestamps_us.tolist() == [0, 450_000]
    reference = read_video(video_path, 2, 0, 500_000)
    np.testing.assert_array_equal(clip.video.frames, reference.frames)
    with pytest.raises(InputError, match="events must be a path or an Events"):
        load_clip(42, video_path)
    assert len(read_events(files[0], 0, 100_000)) == 0  # sanity: the file starts at 100 ms


# ---------------------------------------------------------------------------------------------- default alignment
T_OFFSET_US = 49_599_300_529  # a real DSEC recording's t_offset: events on the image clock, ~13.8 h in


@pytest.fixture(scope="module")
def dsec_and_mp4(tmp_path_factory):
    """A DSEC-layout events.h5 on the image clock and an mp4 of the same span (the mp4 counts from 0)."""
    folder = tmp_path_factory.mktemp("dsec_mp4")
    events = make_events(0, 1_400_000)
    on_image_clock = Events.from_arrays(events.x, events.y, events.t_us + T_OFFSET_US, events.p, events.sensor_size)
    write_events(folder / "events.h5", on_image_clock, t_offset_us=T_OFFSET_US)
    write_video(folder / "video.mp4", make_video(), FPS)
    return folder / "events.h5", folder / "video.mp4", on_image_clock


def test_clockless_video_missing_the_events_is_aligned_to_their_start_and_says_so(dsec_and_mp4):
    events_path, video_path, events = dsec_and_mp4
    with pytest.warns(ClockAlignmentWarning, match=rf"^aligned video t=0 to events t={T_OFFSET_US} us; "
                                                   r"pass video_offset_us to override$"):
        clip = load_clip(events_path, video_path, num_frames=4)
    assert clip.alignment == Alignment(T_OFFSET_US, "events_start", video_start_us=0, events_start_us=T_OFFSET_US)
    assert clip.alignment.automatic and clip.alignment.to_dict()["rule"] == "events_start"
    # video [0, 1.45 s] lands on [T0, T0 + 1.45 s]; the events end at T0 + 1.4 s
    assert (clip.start_us, clip.end_us) == (T_OFFSET_US, T_OFFSET_US + 1_400_000)
    expected = np.linspace(0, 27, 4).astype(int)  # frames 0 .. 27 (t = 0 .. 1.35 s) lie in the window
    np.testing.assert_array_equal(clip.video.timestamps_us, T_OFFSET_US + expected * 50_000)
    red = np.median(clip.video.frames[..., 0], axis=(1, 2))
    np.testing.assert_allclose(red, 8 * expected, atol=6)  # the right frames were decoded
    np.testing.assert_array_equal(clip.events.t_us, events.t_us)


def test_given_offset_overrides_and_a_miss_says_what_to_pass(dsec_and_mp4):
    events_path, video_path, _ = dsec_and_mp4
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an explicit offset is used silently
        clip = load_clip(events_path, video_path, video_offset_us=T_OFFSET_US + 200_000, num_frames=2)
    assert clip.alignment.rule == "given" and clip.start_us == T_OFFSET_US + 200_000
    with pytest.raises(InputError, match=r"do not overlap in time: events \[49599300529, .*video \[0, 1450001\) us; "
                                         r"pass video_offset_us"):
        load_clip(events_path, video_path, video_offset_us=0)


def test_videos_with_a_clock_are_used_as_they_are(dsec_and_mp4, tmp_path):
    events_path, video_path, events = dsec_and_mp4
    video = make_video()  # a Video made by the caller: its times are what the caller says
    with pytest.raises(InputError, match="do not overlap in time"):
        load_clip(events_path, video)
    clockless = Video(video.frames, video.timestamps_us, has_clock=False)  # e.g. read_video of an mp4
    with pytest.warns(ClockAlignmentWarning):
        assert load_clip(events_path, clockless).alignment.video_offset_us == T_OFFSET_US
    # a DSEC image folder carries the image clock (timestamps.txt): never moved
    from test_video import write_dsec_folder

    write_dsec_folder(tmp_path / "seq", video.frames[:10], np.arange(10) * 50_000)
    with pytest.raises(InputError, match="do not overlap in time"):
        load_clip(events_path, tmp_path / "seq")
    clip = load_clip(events_path, tmp_path / "seq", video_offset_us=T_OFFSET_US, num_frames=2)
    assert clip.alignment.rule == "given"
    near = load_clip(make_events(0, 400_000), tmp_path / "seq", num_frames=2)
    assert near.alignment.rule == "clock" and near.alignment.video_offset_us == 0


def test_clockless_video_already_meeting_the_events_is_left_alone(files):
    events_path, video_path, _, _ = files
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        clip = load_clip(events_path, video_path)
    assert clip.alignment == Alignment(0, "as_is", video_start_us=0, events_start_us=100_000)


def test_reversed_timestamps_are_named_and_sort_reads_them(tmp_path):
    events = make_events(0, 1_000_000)
    path = tmp_path / "reversed.h5"
    write_events(path, events, t_offset_us=0)
    import h5py
    import hdf5plugin  # noqa: F401  (Blosc filter for the rewrite)

    with h5py.File(path, "r+") as handle:  # a recording whose time column runs backwards
        t = handle["events/t"][:]
        handle["events/t"][:] = t[::-1]
    with pytest.raises(InputError, match=r"reversed\.h5.*timestamps are not sorted.*pass sort=True"):
        load_clip(path, make_video())
    clip = load_clip(path, make_video(), sort=True, num_frames=2)
    np.testing.assert_array_equal(clip.events.t_us, np.sort(events.t_us)[: len(clip.events)])
    assert clip.events_path == str(path)
