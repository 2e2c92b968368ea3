"""read_video / video_info / write_video on files the tests write.

mp4 round trips, sampling, windows, offsets, DSEC image folders, and every bad input.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest

from evcascade import video as video_module
from evcascade.errors import InputError, InputFileNotFoundError
from evcascade.video import Video, read_video, sample_frame_indices, video_info, write_video

ROOT = Path(__file__).resolve().parents[1]  # child processes import this checkout's evcascade
FPS = 20.0
NUM = 30  # frames: t_i = i * 50 ms, 0 .. 1.45 s
H, W = 48, 64


def make_frames(num: int = NUM) -> np.ndarray:
    """Frame i: red level 8 i everywhere (identifies the frame), a green ramp, a yellow block at x = 2 i."""
    frames = np.zeros((num, H, W, 3), np.uint8)
    for i in range(num):
        frames[i, :, :, 0] = 8 * i
        frames[i, :, :, 1] = np.linspace(0, 200, W).astype(np.uint8)[None, :]
        frames[i, :, :, 2] = 90
        frames[i, 16:32, 2 * i : 2 * i + 16] = (250, 250, 0)
    return frames


def frame_ids(frames: np.ndarray, originals: np.ndarray | None = None) -> list[int]:
    """Which original frame each decoded frame is: the nearest one in mean absolute difference."""
    originals = make_frames() if originals is None else originals
    distance = np.abs(frames[:, None].astype(np.int16) - originals[None].astype(np.int16)).mean(axis=(2, 3, 4))
    return distance.argmin(axis=1).tolist()  # [T] indices into originals


@pytest.fixture(scope="module")
def mp4(tmp_path_factory):
    path = tmp_path_factory.mktemp("video") / "clip.mp4"
    frames = make_frames()
    write_video(path, Video(frames, np.arange(NUM) * 50_000), FPS)
    return path, frames


def test_round_trip_all_frames_within_codec_tolerance(mp4):
    path, frames = mp4
    video = read_video(path, num_frames=NUM)
    assert video.frames.shape == (NUM, H, W, 3) and video.frames.dtype == np.uint8
    np.testing.assert_array_equal(video.timestamps_us, np.arange(NUM) * 50_000)
    error = np.abs(video.frames.astype(np.int16) - frames.astype(np.int16))
    assert error.mean() < 6.0, error.mean()  # mp4v is lossy; edges ring, flat areas match
    assert frame_ids(video.frames) == list(range(NUM))


def test_uniform_sampling_matches_linspace_rule_and_decodes_only_those(mp4, monkeypatch):
    import decord

    path, _ = mp4
    requested = []
    original = decord.VideoReader.get_batch

    def spy(self, indices):
        requested.append(list(indices))
        return original(self, indices)

    monkeypatch.setattr(decord.VideoReader, "get_batch", spy)
    video = read_video(path, num_frames=8)
    expected = [0, 4, 8, 12, 16, 20, 24, 29]  # np.linspace(0, 29, 8).astype(int)
    assert sample_frame_indices(NUM, 8).tolist() == expected
    assert requested == [expected]
    assert frame_ids(video.frames) == expected
    np.testing.assert_array_equal(video.timestamps_us, np.array(expected) * 50_000)
    assert frame_ids(video.key_frame[None])[0] == 29  # key frame = the latest frame


def test_window_and_offset(mp4):
    path, _ = mp4
    video = read_video(path, 8, 500_000, 1_000_000)  # frames 10 .. 19 (t = 1 s excluded: half-open)
    expected = [10 + i for i in [0, 1, 2, 3, 5, 6, 7, 9]]
    assert frame_ids(video.frames) == expected
    assert video.start_us == 500_000 and int(video.timestamps_us[-1]) == 950_000
    shifted = read_video(path, 8, 1_500_000, 2_000_000, video_offset_us=1_000_000)  # same frames, later clock
    assert frame_ids(shifted.frames) == expected
    np.testing.assert_array_equal(shifted.timestamps_us, video.timestamps_us + 1_000_000)


def test_short_window_repeats_frames_with_a_warning(mp4):
    path, _ = mp4
    with pytest.warns(UserWarning, match=r"3 frames in window \[0, 150000\) us, repeated to 8"):
        video = read_video(path, 8, 0, 150_000)
    assert frame_ids(video.frames) == [0, 0, 0, 0, 1, 1, 1, 2]
    assert video.timestamps_us.tolist() == [0, 0, 0, 0, 50_000, 50_000, 50_000, 100_000]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # enough frames: no warning
        read_video(path, 8)


def test_empty_window_names_path_and_window(mp4):
    path, _ = mp4
    with pytest.raises(InputError, match=r"clip\.mp4.*no frames in the window \[2000000, 3000000\) us.*\[0, 1450001\)"):
        read_video(path, 8, 2_000_000, 3_000_000)
    with pytest.raises(InputError, match="start_us must be < end_us"):
        read_video(path, 8, 500_000, 500_000)
    with pytest.raises(InputError, match="num_frames"):
        read_video(path, 0)


def test_video_info_is_cheap_and_right(mp4):
    path, _ = mp4
    info = video_info(path, video_offset_us=7)
    assert (info.num_frames, info.fps, info.width, info.height) == (NUM, FPS, W, H)
    assert (info.start_us, info.end_us) == (7, 1_450_000 + 7 + 1)


def test_opencv_fallback_reads_the_same_frames(mp4, monkeypatch):
    path, _ = mp4
    by_decord = read_video(path, 8, 200_000, None)

    def no_decord(*args, **kwargs):
        raise ImportError("decord")

    monkeypatch.setattr(video_module, "_open_decord", no_decord)
    by_opencv = read_video(path, 8, 200_000, None)
    np.testing.assert_array_equal(by_opencv.timestamps_us, by_decord.timestamps_us)
    assert frame_ids(by_opencv.frames) == frame_ids(by_decord.frames)
    assert np.abs(by_opencv.frames.astype(int) - by_decord.frames.astype(int)).mean() < 2.0
    assert video_info(path).num_frames == NUM


def test_decord_size_bug_falls_back_to_opencv(tmp_path):
    # decord 0.6 cannot copy out frames 48 px wide (nor 72); OpenCV decodes them
    frames = make_frames(6)[:, :32, :48]
    path = write_video(tmp_path / "narrow.mp4", Video(np.ascontiguousarray(frames), np.arange(6) * 50_000), FPS)
    video = read_video(path, 3)
    assert video.frames.shape == (3, 32, 48, 3)
    assert np.abs(video.frames.astype(int) - frames[[0, 2, 5]].astype(int)).mean() < 6.0
    assert video_info(path)[1:] == (6, FPS, 0, 250_001, 48, 32, False)  # a container: no clock of its own


@pytest.mark.timeout(60)
@pytest.mark.parametrize("damage", ["garbage", "empty", "truncated", "zeroed_middle"])
def test_corrupt_files_raise_input_error(mp4, tmp_path, damage):
    path, _ = mp4
    data = path.read_bytes()
    bad = tmp_path / f"{damage}.mp4"
    bad.write_bytes({
        "garbage": b"this is not a video" * 20,
        "empty": b"",
        "truncated": data[: len(data) // 2],  # mp4v from OpenCV writes its index (moov) last
        "zeroed_middle": data[:1500] + b"\x00" * 3000 + data[4500:],
    }[damage])
    with pytest.raises(InputError, match=f"{damage}.mp4"):
        read_video(bad, num_frames=NUM)


def test_missing_and_unknown_files(tmp_path):
    with pytest.raises(InputFileNotFoundError, match="nope.mp4"):
        read_video(tmp_path / "nope.mp4")
    other = tmp_path / "clip.txt"
    other.write_text("hello")
    with pytest.raises(InputError, match=r"clip\.txt.*unknown video suffix '\.txt'"):
        read_video(other)
    with pytest.raises(InputError, match="DSEC sequence"):
        read_video(tmp_path)  # a folder without images/left/rectified


# ---------------------------------------------------------------------------------------------- DSEC folders
def write_dsec_folder(root, frames: np.ndarray, stamps_us) -> None:
    png_dir = root / "images" / "left" / "rectified"
    png_dir.mkdir(parents=True)
    for i, frame in enumerate(frames):
        cv2.imwrite(str(png_dir / f"{i:06d}.png"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    (root / "images" / "timestamps.txt").write_text("".join(f"{t}\n" for t in stamps_us))


@pytest.fixture
def dsec(tmp_path):
    frames = make_frames(12)
    stamps = 10**12 + np.arange(12) * 50_000 + np.array([0, 3, 0, 7, 0, 0, 1, 0, 0, 0, 9, 0])  # jittered, like DSEC
    write_dsec_folder(tmp_path / "seq", frames, stamps)
    return tmp_path / "seq", frames, stamps


def test_dsec_folder_reads_only_sampled_pngs_exactly(dsec, monkeypatch):
    root, frames, stamps = dsec
    read = []
    original = cv2.imread
    monkeypatch.setattr(cv2, "imread", lambda path, *a: read.append(path) or original(path, *a))
    video = read_video(root, 4, int(stamps[2]), int(stamps[10]))  # frames 2 .. 9
    expected = [2, 4, 6, 9]  # 2 + linspace(0, 7, 4).astype(int)
    assert [int(p[-10:-4]) for p in read] == expected
    np.testing.assert_array_equal(video.frames, frames[expected])  # PNG is lossless
    np.testing.assert_array_equal(video.timestamps_us, stamps[expected])
    same = read_video(root / "images", 4, int(stamps[2]), int(stamps[10]))  # the images folder itself
    np.testing.assert_array_equal(same.frames, video.frames)
    info = video_info(root)
    assert (info.num_frames, info.width, info.height) == (12, W, H)
    assert (info.start_us, info.end_us) == (int(stamps[0]), int(stamps[-1]) + 1)
    assert info.fps == pytest.approx(20.0, rel=0.01)


def test_dsec_folder_errors(dsec):
    root, _, stamps = dsec
    stamps_path = root / "images" / "timestamps.txt"
    stamps_path.write_text("".join(f"{t}\n" for t in stamps[:-1]))
    with pytest.raises(InputError, match="lists 11 timestamps but .* holds 12 PNG images"):
        read_video(root)
    bad = stamps.copy()
    bad[5] = bad[4] - 1
    stamps_path.write_text("".join(f"{t}\n" for t in bad))
    with pytest.raises(InputError, match=f"timestamps must increase.*line 5: {bad[4]} then {bad[5]}"):
        read_video(root)
    stamps_path.write_text("".join(f"{t}\n" for t in stamps[:3]) + "12.5e3\n")
    with pytest.raises(InputError, match=r"timestamps\.txt.*line 4 is not an integer"):
        read_video(root)


# ---------------------------------------------------------------------------------------------- the Video contract
def test_video_contract_window_shift_sample():
    frames = make_frames(5)
    video = Video(frames, [0, 10, 20, 30, 40])
    assert (video.num_frames, video.start_us, video.end_us, video.height, video.width) == (5, 0, 41, H, W)
    assert video.window(10, 30).timestamps_us.tolist() == [10, 20]
    assert video.shift_time(5).timestamps_us.tolist() == [5, 15, 25, 35, 45]
    assert video.sample(3).timestamps_us.tolist() == [0, 20, 40]
    assert frame_ids(video.sample(3, 10, 41).frames) == [1, 2, 4]
    np.testing.assert_array_equal(video.key_frame, frames[-1])
    with pytest.raises(InputError, match=r"ascending.*t\[1\]=10 > t\[2\]=5"):
        Video(frames, [0, 10, 5, 30, 40])
    with pytest.raises(InputError, match="no frames in the window"):
        video.sample(3, 100, 200)


# ---------------------------------------------------------------------------------------------- container clocks
VFR_PTS_MS = [0, 105, 188, 259, 305, 355, 379, 406, 427, 464, 565, 649, 760, 830, 910, 1027, 1119, 1202, 1276, 1351]


@pytest.fixture(scope="module")
def vfr_mp4(tmp_path_factory):
    """A variable-frame-rate H.264 mp4 (B-frames, so packets come out of presentation order), per-frame PTS."""
    import fractions

    import av

    path = tmp_path_factory.mktemp("vfr") / "vfr.mp4"
    frames = make_frames(len(VFR_PTS_MS))
    time_base = fractions.Fraction(1, 1000)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=20, options={"crf": "10"})
        stream.width, stream.height, stream.pix_fmt, stream.time_base = W, H, "yuv420p", time_base
        stream.codec_context.time_base = time_base
        for frame_rgb, pts_ms in zip(frames, VFR_PTS_MS):
            frame = av.VideoFrame.from_ndarray(frame_rgb, format="rgb24")
            frame.pts, frame.time_base = pts_ms, time_base
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path, frames


@pytest.mark.parametrize("decoder", ["decord", "opencv"])
def test_variable_frame_rate_frames_keep_their_container_times(vfr_mp4, monkeypatch, decoder):
    path, frames = vfr_mp4
    if decoder == "opencv":
        monkeypatch.setattr(video_module, "_open_decord", lambda *a, **k: (_ for _ in ()).throw(ImportError("decord")))
    stamps_us = np.array(VFR_PTS_MS) * 1000
    every = read_video(path, num_frames=len(VFR_PTS_MS))
    np.testing.assert_array_equal(every.timestamps_us, stamps_us)  # not i / average fps (that drifts 100+ ms here)
    assert frame_ids(every.frames, frames) == list(range(len(VFR_PTS_MS)))
    window = read_video(path, 4, 400_000, 1_200_000, video_offset_us=5)  # frames 7 .. 16 by their own times
    expected = 7 + np.linspace(0, 9, 4).astype(int)
    np.testing.assert_array_equal(window.timestamps_us, stamps_us[expected] + 5)
    assert frame_ids(window.frames, frames) == expected.tolist()
    info = video_info(path)
    assert (info.num_frames, info.start_us, info.end_us, info.has_clock) == (20, 0, 1_351_001, False)
    assert not every.has_clock


def test_corrupt_video_is_one_clean_stderr_line(mp4, tmp_path):
    """Native decoders print to fd 2 directly (`moov atom not found`, `video_reader.cc:83: ERROR opening`):
    a child process's whole stderr must be our one line."""
    import subprocess
    import sys

    path, _ = mp4
    truncated = tmp_path / "cut.mp4"
    truncated.write_bytes(path.read_bytes()[:2000])
    script = (
        "import sys\nfrom evcascade.errors import InputError\nfrom evcascade import video\n"
        "for probe in (video.read_video, video.video_info):\n"
        "    try:\n        probe(sys.argv[1])\n"
        "    except InputError as exc:\n        print(f'error: {exc}', file=sys.stderr)\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(truncated)], capture_output=True, text=True, timeout=60,
                          cwd=ROOT)
    lines = done.stderr.splitlines()
    assert len(lines) == 2, done.stderr
    for line in lines:
        assert line.startswith("error: ") and "cut.mp4" in line and "not a readable video" in line, line
    # the fallbacks silence their own native output: decord and OpenCV opened on the file directly
    script = (
        "import sys, pathlib\nfrom evcascade import video\n"
        "c = video._Container(video.np.zeros(1, 'int64'), 0.0, 20.0, 64, 48)\n"
        "for opener in (video._open_decord, lambda p, c, o: video._open_opencv(p, c, o, 'x')):\n"
        "    try:\n        opener(pathlib.Path(sys.argv[1]), c, 0)\n"
        "    except Exception as exc:\n        print(f'error: {type(exc).__name__}', file=sys.stderr)\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(truncated)], capture_output=True, text=True, timeout=60,
                          cwd=ROOT)
    assert done.stderr.splitlines() == ["error: RuntimeError", "error: InputError"], done.stderr


def test_png_images_decode_after_an_mp4_was_read(tmp_path):
    """decord's bundled zlib, loaded before OpenCV, breaks OpenCV's PNG decoding (DSEC folders, bag images)."""
    import subprocess
    import sys

    code = (
        "import numpy as np\n"
        "from evcascade.cascade import ASSETS\n"
        "from evcascade.video import read_video\n"
        "read_video(ASSETS / 'sample' / 'video.mp4', 2)\n"
        "import cv2\n"
        "image = np.arange(24 * 32 * 3, dtype=np.uint8).reshape(24, 32, 3)\n"
        "ok, png = cv2.imencode('.png', image)\n"
        "decoded = cv2.imdecode(png, cv2.IMREAD_COLOR)\n"
        "assert decoded is not None and (decoded == image).all()\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
