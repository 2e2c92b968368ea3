"""load_clip: events and video on one clock — overlap, offsets, event windows, and errors naming both ranges."""

from __future__ import annotations

import numpy as np
import pytest

import evcascade.events.io as events_io
from evcascade.clip import Clip, clip_window, load_clip
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
