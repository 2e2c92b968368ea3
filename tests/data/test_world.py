"""The synthetic world: determinism, answers read off hand-built scenes, pixels and events that agree with the
scene graph, and the DSEC-like layout round-tripping through read_events / read_video / load_clip."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from evcascade.data.questions import DETAIL_WORDS, QA, caption, first_vocabulary, qa_pairs, world_vocabulary
from evcascade.data.render import COLOUR_RGB, render_frames
from evcascade.data.world import (
    FAR_THRESHOLD_PX, MOTION_THRESHOLD_PX, Background, Scene, SceneObject, WorldConfig, make_world_sample,
    render_sample, sample_scene, sample_window_us, scene_seeds, window_frame_times_us,
)
from evcascade.errors import InputError

SMALL = WorldConfig(duration_us=600_000, fps=20.0, event_fps=150.0)  # 12 frames, 90 simulator frames
PLAIN = Background(base_rgb=(55.0, 55.0, 55.0), gradient_per_px=(0.1, -0.05), waves=((0.5, 0.2, 1.0, 5.0),))


def hand_scene(*objects: SceneObject, camera: str | None = None) -> Scene:
    return Scene(64, 64, 600_000, objects, PLAIN, camera_direction=camera)


RED_CIRCLE = SceneObject("circle", "red", "big", 10.0, 14.0, 16.0, direction="right", speed="fast")
BLUE_SQUARE = SceneObject("square", "blue", "small", 6.4, 48.0, 50.0, direction="up", speed="slow")
GREEN_TRIANGLE = SceneObject("triangle", "green", "small", 6.4, 14.0, 48.0)


def answers(scene: Scene) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for qa in qa_pairs(scene):
        out.setdefault(qa.kind, []).append(qa.answer)
    return out


# ---------------------------------------------------------------------------------------------- questions
def test_answers_of_a_three_object_scene():
    scene = hand_scene(GREEN_TRIANGLE, BLUE_SQUARE, RED_CIRCLE)  # listing order must not matter
    got = answers(scene)
    assert got["moving"] == ["the circle and the square are moving ."]
    assert got["direction"] == [
        "the circle moves to the right .", "the square moves up .", "the triangle does not move .",
    ]
    assert got["colour"] == ["the moving circle is red .", "the moving square is blue .", "the triangle is green ."]
    assert got["count"] == ["there are three objects ."]
    assert got["faster"] == ["the circle is faster than the square ."]
    assert got["camera"] == ["no , the camera does not move ."]
    assert caption(scene) == ("the big red circle moves to the right . the small blue square moves up . "
                              "the small green triangle does not move .")
    questions = {qa.kind: qa.question for qa in qa_pairs(scene)}
    assert questions["faster"] == "which object is faster ?" and questions["count"] == "how many objects are there ?"


def test_answers_without_a_clear_faster_object_and_with_camera_motion():
    slow_circle = SceneObject("circle", "red", "big", 10.0, 14.0, 16.0, direction="left", speed="slow")
    scene = hand_scene(slow_circle, BLUE_SQUARE, camera="down")  # both slow: no "faster" question
    got = answers(scene)
    assert "faster" not in got
    assert got["direction"][0] == "the circle moves to the left ."
    assert got["camera"] == ["yes , the camera moves down ."]
    assert caption(scene).endswith("the camera moves down .")
    lone = answers(hand_scene(GREEN_TRIANGLE))
    assert lone["count"] == ["there is one object ."] and lone["moving"] == ["no object is moving ."]


def test_phrasings_say_the_same_thing_in_other_words():
    scene = hand_scene(GREEN_TRIANGLE, BLUE_SQUARE, RED_CIRCLE, camera="left")
    by_kind = {qa.kind: qa for qa in qa_pairs(scene) if qa.kind != "direction"}
    direction = [qa for qa in qa_pairs(scene) if qa.kind == "direction"]
    assert direction[0].is_correct("the circle is moving right .")
    assert direction[0].is_correct("the circle  moves to the right . ")  # whitespace is not a phrasing
    assert not direction[0].is_correct("the circle is moving left .")
    assert direction[2].is_correct("the triangle is not moving .") and not direction[2].is_correct("the triangle moves .")
    assert by_kind["moving"].is_correct("the circle and the square move .")
    assert not by_kind["moving"].is_correct("the circle move .")
    assert by_kind["count"].is_correct("three objects .") and by_kind["count"].is_correct("there are three .")
    assert not by_kind["count"].is_correct("there are two .")
    assert by_kind["faster"].is_correct("the circle moves faster than the square .")
    assert by_kind["camera"].is_correct("yes , the camera is moving left .")
    colour = [qa for qa in qa_pairs(scene) if qa.kind == "colour"]
    assert colour[0].is_correct("the circle is red .") and not colour[0].is_correct("the circle is blue .")
    assert colour[2].num_phrasings == 1  # a static object has one name
    # caption: 4 x 2 x 2 x 4 phrasings (circle right, square up, triangle static, camera left)
    assert by_kind["caption"].num_phrasings == 64
    assert by_kind["caption"].is_correct("the big red circle is moving right . the small blue square moves up . "
                                         "the small green triangle is not moving . the camera moves left .")


def test_every_drawn_phrasing_is_correct_in_the_vocabulary_and_no_other_answer():
    vocabulary, rng = set(world_vocabulary()), np.random.default_rng(0)
    drawn = 0
    for seed in range(60):
        pairs = qa_pairs(sample_scene(seed))
        for qa in pairs:
            for _ in range(4):
                text = qa.phrase(rng)
                drawn += text != qa.answer
                assert qa.is_correct(text) and set(text.split()) <= vocabulary, text
                assert not any(other.is_correct(text) for other in pairs if other.answer != qa.answer), text
    assert drawn > 300  # the draws leave the canonical phrasing often
    with pytest.raises(ValueError, match="canonical phrasing"):
        QA("q ?", "the star moves up .", "direction", "time", (("the star",), ("is moving up",), (".",)))


def test_question_modalities():
    needs = {qa.kind: qa.needs for qa in qa_pairs(hand_scene(RED_CIRCLE, BLUE_SQUARE))}
    assert needs == {"caption": "frame+time", "detail": "frame+time", "moving": "time", "direction": "time",
                     "colour": "frame", "count": "frame", "faster": "time", "camera": "time"}
    # questions name objects by shape only, so motion questions never leak colour
    for qa in qa_pairs(hand_scene(RED_CIRCLE, BLUE_SQUARE)):
        assert not set(qa.question.split()) & set(COLOUR_RGB), qa.question


def test_detailed_caption_names_every_object_how_far_it_moves_and_the_camera():
    scene = hand_scene(GREEN_TRIANGLE, BLUE_SQUARE, RED_CIRCLE)  # 600 ms: frames 0 .. 550 ms
    detail = next(qa for qa in qa_pairs(scene) if qa.kind == "detail")
    assert detail.question == "describe the video in detail ."
    # over 550 ms the fast circle travels 10.6 px and the slow square 4.2 px: both "a little" (< 16 px)
    assert detail.answer == ("there are three objects . the big red circle moves a little to the right . "
                             "the small blue square moves a little up . the small green triangle does not move . "
                             "the camera does not move .")
    assert 30 <= len(detail.answer.split()) <= 80
    assert detail.is_correct("three objects . the big red circle is moving slightly right . the small blue square "
                             "moves a little up . the small green triangle stays still . the camera is not moving .")
    assert not detail.is_correct(detail.answer.replace("a little up", "far up"))
    assert not detail.is_correct(detail.answer.replace("the small green triangle", "the big green triangle"))
    long_scene = Scene(64, 64, 1_500_000, (RED_CIRCLE, BLUE_SQUARE), PLAIN)  # frames 0 .. 1.45 s
    long_detail = next(qa for qa in qa_pairs(long_scene) if qa.kind == "detail").answer
    assert "circle moves far to the right" in long_detail and "square moves a little up" in long_detail


def test_windows_answer_what_their_frames_show():
    """An object moves in a window only where it travels >= MOTION_THRESHOLD_PX between the window's first and
    last frames (the frames Video.sample keeps); the bundled sample's square moves in [100, 600) ms."""
    sample_path = Path(__file__).resolve().parents[2] / "evcascade" / "assets" / "sample" / "annotations.json"
    sample = Scene.from_dict(json.loads(sample_path.read_text())["scene"])
    by_kind = lambda window: {qa.kind: qa.answer for qa in qa_pairs(sample, window) if qa.kind != "direction"}
    half = by_kind((100_000, 600_000))  # frames 100 .. 550 ms: circle 8.6 px, square 3.5 px
    assert half["caption"] == ("the big red circle moves to the right . the small blue square moves up . "
                               "the small yellow triangle does not move .")
    assert half["moving"] == "the circle and the square are moving ."
    assert "the small blue square moves a little up" in half["detail"]
    tiny = by_kind((100_000, 100_100))  # one frame: nothing can be seen to move
    assert tiny["moving"] == "no object is moving ." and "faster" not in tiny
    assert tiny["caption"].count("does not move") == 3 and "colour" in tiny
    short = by_kind((0, 150_000))  # frames 0, 50, 100 ms: the fast circle 1.9 px, under the threshold
    assert short["moving"] == "no object is moving ."
    assert by_kind((0, 200_000))["moving"] == "the circle is moving ."  # 150 ms: 2.9 px
    assert by_kind((0, 350_000))["moving"] == "the circle is moving ."  # frames 300 ms apart: the square 2.3 px
    assert by_kind((0, 400_000))["moving"] == "the circle and the square are moving ."  # 350 ms: the square 2.7 px
    assert by_kind(None) == by_kind((0, 1_500_000))
    circle = sample.objects[0]
    for t_us in (150_000, 350_000, 900_000, 1_450_000):  # the rule, at the threshold's both sides
        direction, distance = sample.observed_motion(circle, np.array([0, t_us]))
        travelled = 0.30 * 64 * t_us / 1e6
        assert (direction is not None) == (travelled >= MOTION_THRESHOLD_PX)
        assert direction is None or (distance == "far") == (travelled >= FAR_THRESHOLD_PX)


def test_window_frames_and_sampled_windows():
    config = WorldConfig()
    assert window_frame_times_us(config, (100_000, 250_000)).tolist() == [100_000, 150_000, 200_000]
    assert window_frame_times_us(config, None).tolist() == config.frame_times_us().tolist()
    with pytest.raises(InputError, match="holds no frame"):
        window_frame_times_us(config, (110_000, 140_000))
    with pytest.raises(InputError, match="start_us < end_us"):
        window_frame_times_us(config, (500_000, 500_000))
    rng = np.random.default_rng(0)
    windows = np.array([sample_window_us(rng, config, full_probability=0.25) for _ in range(400)])
    lengths = windows[:, 1] - windows[:, 0]
    assert windows.min() >= 0 and windows[:, 1].max() <= config.duration_us and lengths.min() >= 50_000
    assert 0.15 < np.mean(lengths == config.duration_us) < 0.35  # whole clips
    assert 0.1 < np.mean(lengths < 100_000) < 0.3 and 0.1 < np.mean((lengths >= 750_000) & (lengths < 1_500_000))


def test_vocabulary_covers_every_phrase_and_the_tiny_tokenizer():
    from evcascade.models.tiny import tiny_tokenizer

    vocabulary = set(world_vocabulary())
    config = WorldConfig(max_objects=4, camera_motion_prob=0.5, min_moving=0)
    seen = set()
    for seed in range(60):
        for qa in qa_pairs(sample_scene(seed, config)):
            seen |= set(qa.question.split()) | set(qa.answer.split())
    assert seen <= vocabulary, seen - vocabulary
    assert len(seen) >= 0.9 * len(vocabulary)  # the list is not padded with words nothing uses
    # the tiny tokenizer (evcascade.models.tiny) covers the world's first vocabulary; the detailed captions' words
    # (DETAIL_WORDS) came later and are the world tokenizer's (tests/demo)
    tokenizer = tiny_tokenizer()
    ids = tokenizer.convert_tokens_to_ids(sorted(first_vocabulary()))
    assert tokenizer.unk_token_id not in ids
    assert world_vocabulary() == first_vocabulary() + DETAIL_WORDS and not set(DETAIL_WORDS) & set(first_vocabulary())


# ---------------------------------------------------------------------------------------------- scenes
def test_same_seed_same_scene_and_sample_different_seed_different():
    assert sample_scene(11) == sample_scene(11) and sample_scene(11) != sample_scene(12)
    a, b = make_world_sample(7, SMALL), make_world_sample(7, SMALL)
    np.testing.assert_array_equal(a.video.frames, b.video.frames)
    for name in ("x", "y", "t_us", "p"):
        np.testing.assert_array_equal(getattr(a.events, name), getattr(b.events, name))
    assert a.qa == b.qa and a.caption == b.caption
    assert scene_seeds(0, 3) == scene_seeds(0, 5)[:3]  # a scene's seed does not depend on the set size


def test_sampled_scenes_keep_objects_in_view_and_apart():
    config = WorldConfig(max_objects=4, camera_motion_prob=0.5)
    times_us = np.linspace(0, config.duration_us, 31)
    for seed in range(40):
        scene = sample_scene(seed, config)
        assert config.min_objects <= len(scene.objects) <= 4 and len(scene.moving_objects) >= 1
        tracks = [scene.image_positions_px(o, times_us) for o in scene.objects]
        for obj, (xs, ys) in zip(scene.objects, tracks):
            assert xs.min() >= obj.radius_px and xs.max() <= 64 - obj.radius_px, (seed, obj)
            assert ys.min() >= obj.radius_px and ys.max() <= 64 - obj.radius_px, (seed, obj)
        for i in range(len(tracks)):
            for j in range(i):
                gap = np.hypot(tracks[i][0] - tracks[j][0], tracks[i][1] - tracks[j][1]).min()
                assert gap > scene.objects[i].radius_px + scene.objects[j].radius_px, seed
    assert Scene.from_dict(json.loads(json.dumps(sample_scene(3, config).to_dict()))) == sample_scene(3, config)


def test_bad_configs_and_scenes_raise():
    with pytest.raises(InputError, match="max_objects"):
        WorldConfig(max_objects=5)
    with pytest.raises(InputError, match="unknown"):
        WorldConfig(colours=("red", "pink"))
    with pytest.raises(InputError, match="shapes must be unique"):
        hand_scene(RED_CIRCLE, RED_CIRCLE)
    with pytest.raises(InputError, match="moves .* or is static"):
        SceneObject("circle", "red", "big", 10.0, 1.0, 1.0, direction="left", speed="static")


# ---------------------------------------------------------------------------------------------- pixels and events
def colour_centroid(frame: np.ndarray, colour: str) -> tuple[float, float]:
    mask = np.abs(frame.astype(int) - np.array(COLOUR_RGB[colour])).sum(-1) < 30  # [H, W]
    ys, xs = np.nonzero(mask)
    return xs.mean() + 0.5, ys.mean() + 0.5  # pixel centres


def test_rendered_pixels_follow_the_scene_graph():
    scene = hand_scene(RED_CIRCLE, BLUE_SQUARE, GREEN_TRIANGLE)
    frames = render_frames(scene, np.array([0, 500_000]))
    (x0, y0), (x1, y1) = colour_centroid(frames[0], "red"), colour_centroid(frames[1], "red")
    assert (x0, y0) == pytest.approx((14.0, 16.0), abs=0.3)
    assert (x1 - x0, y1 - y0) == pytest.approx((0.30 * 64 * 0.5, 0.0), abs=0.3)  # fast = 0.30 frame/s, right
    (_, sy0), (_, sy1) = colour_centroid(frames[0], "blue"), colour_centroid(frames[1], "blue")
    assert sy1 - sy0 == pytest.approx(-0.12 * 64 * 0.5, abs=0.3)  # slow, up (y grows downwards)
    assert colour_centroid(frames[0], "green") == pytest.approx(colour_centroid(frames[1], "green"))
    assert frames[0][16, 14].tolist() == list(COLOUR_RGB["red"])  # colour only lives in the frames


def test_events_where_objects_move_and_nowhere_else():
    scene = hand_scene(RED_CIRCLE, GREEN_TRIANGLE)
    sample = render_sample(scene, SMALL, seed=0)
    events, r = sample.events, RED_CIRCLE.radius_px
    assert events.sensor_size == (64, 64) and len(events) > 200
    x, y = events.x.astype(float) + 0.5, events.y.astype(float) + 0.5
    x_end = 14.0 + 0.30 * 64 * 0.6
    swept = (x > 14.0 - r - 2) & (x < x_end + r + 2) & (np.abs(y - 16.0) < r + 2)
    assert swept.all(), f"{(~swept).sum()} events off the moving circle's path"  # static triangle, background: none
    on, off = events.p == 1, events.p == 0
    assert on.sum() > 50 and off.sum() > 50
    assert x[on].mean() > x[off].mean() + 5  # bright object moving right: ON at its leading edge, OFF behind
    assert events.t_us.min() >= 0 and events.t_us.max() < SMALL.duration_us


def test_static_scene_has_no_events_and_a_panning_camera_makes_them():
    still = render_sample(hand_scene(GREEN_TRIANGLE), SMALL, seed=0)
    assert len(still.events) == 0  # a frame alone is needed to count static objects
    textured = Background((55.0, 55.0, 55.0), (0.0, 0.0), waves=((0.8, 0.0, 0.0, 15.0), (0.0, 0.7, 1.0, 15.0)))
    panning = render_sample(Scene(64, 64, 600_000, (GREEN_TRIANGLE,), textured, "left"), SMALL, seed=0)
    x = panning.events.x.astype(float)
    assert len(panning.events) > 100 and (np.abs(x - 14) > 10).sum() > 20  # background texture moves too


# ---------------------------------------------------------------------------------------------- files
def test_layout_round_trips_through_the_readers(tmp_path):
    from evcascade.clip import load_clip
    from evcascade.data.layout import read_manifest, write_world
    from evcascade.events.io import read_events
    from evcascade.video import read_video

    manifest_path = write_world(tmp_path / "world", num_scenes=2, seed=5, config=SMALL)
    manifest = read_manifest(manifest_path)
    assert [s["id"] for s in manifest["scenes"]] == ["scene_00000", "scene_00001"]
    for entry, seed in zip(manifest["scenes"], scene_seeds(5, 2)):
        sample = make_world_sample(seed, SMALL)  # regenerate from the recorded seed
        assert entry["seed"] == seed
        assert entry["prompts"] == [qa.question for qa in sample.qa]
        assert entry["answers"] == [qa.answer for qa in sample.qa]
        events = read_events(entry["events"])
        for name in ("x", "y", "t_us", "p"):
            np.testing.assert_array_equal(getattr(events, name), getattr(sample.events, name))
        video = read_video(entry["video"], num_frames=len(sample.video), video_offset_us=entry["t0_us"])
        np.testing.assert_array_equal(video.timestamps_us, sample.video.timestamps_us)
        assert np.abs(video.frames.astype(int) - sample.video.frames.astype(int)).mean() < 6.0  # mp4v is lossy
        notes = json.loads(open(entry["annotations"]).read())
        assert Scene.from_dict(notes["scene"]) == sample.scene
        assert [QA(**qa) for qa in notes["qa"]] == list(sample.qa)
        assert notes["video"]["fps"] == SMALL.fps and notes["video"]["t0_us"] == 0
        clip = load_clip(entry["events"], entry["video"], num_frames=4, event_window_us=100_000)
        assert clip.end_us == min(sample.events.end_us, sample.video.end_us)
        assert len(clip.events) == len(sample.events.window(clip.end_us - 100_000, clip.end_us))


def test_layout_writes_window_entries_and_reuses_written_scenes(tmp_path):
    from evcascade.data.layout import read_manifest, write_world
    from evcascade.train.datasets import manifest_windows

    path = write_world(tmp_path / "world", num_scenes=1, seed=5, config=SMALL, windows_per_scene=2)
    entries = read_manifest(path)["scenes"]
    assert [e["id"] for e in entries] == ["scene_00000", "scene_00000_w0", "scene_00000_w1"]
    scene = sample_scene(entries[0]["seed"], SMALL)
    for entry in entries[1:]:
        window = (entry["start_us"], entry["end_us"])
        assert len(window_frame_times_us(SMALL, window)) >= 1 and window[1] <= SMALL.duration_us
        assert entry["answers"] == [qa.answer for qa in qa_pairs(scene, window)]
        assert entry["events"] == entries[0]["events"] and "start_us" not in entries[0]
    windows = manifest_windows(path)  # the training stages read each window as its own clip
    assert [(w.start_us, w.end_us) for w in windows[1:]] == [(e["start_us"], e["end_us"]) for e in entries[1:]]
    events_file = tmp_path / "world" / "scene_00000" / "events.h5"
    written = events_file.stat().st_mtime_ns
    notes_file = tmp_path / "world" / "scene_00000" / "annotations.json"
    notes_file.write_text(notes_file.read_text().replace("describe the video in detail .", "stale"))
    assert write_world(tmp_path / "world", num_scenes=1, seed=5, config=SMALL, windows_per_scene=2) == path
    assert events_file.stat().st_mtime_ns == written  # kept, not rendered again
    assert "stale" not in notes_file.read_text() and read_manifest(path)["scenes"] == entries
    with pytest.raises(InputError, match="windows_per_scene"):
        write_world(tmp_path / "other", num_scenes=1, windows_per_scene=-1)


# ---------------------------------------------------------------------------------------------- scripts
def run_script(name: str, argv: list[str]) -> int:
    import runpy
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "data" / name
    return runpy.run_path(str(script), run_name="not_main")["main"](argv)


def test_bundled_sample_is_what_make_sample_writes(tmp_path):
    from pathlib import Path

    from evcascade.events.io import read_events

    bundled = Path(__file__).resolve().parents[2] / "evcascade" / "assets" / "sample"
    assert run_script("make_sample.py", ["--out", str(tmp_path)]) == 0
    fresh_notes = json.loads((tmp_path / "annotations.json").read_text())
    assert fresh_notes == json.loads((bundled / "annotations.json").read_text())
    fresh, shipped = read_events(tmp_path / "events.h5"), read_events(bundled / "events.h5")
    for name in ("x", "y", "t_us", "p"):
        np.testing.assert_array_equal(getattr(fresh, name), getattr(shipped, name))
    assert sum(p.stat().st_size for p in bundled.iterdir()) < 1.5 * 2**20
    notes = json.loads((bundled / "annotations.json").read_text())
    assert len(Scene.from_dict(notes["scene"]).moving_objects) == 2


def test_make_world_script(tmp_path, capsys):
    from evcascade.data.layout import read_manifest

    argv = ["--out", str(tmp_path / "w"), "--num-scenes", "1", "--seed", "4", "--duration-us", "300000",
            "--windows-per-scene", "1", "--no-progress"]
    assert run_script("make_world.py", argv) == 0
    manifest = read_manifest(tmp_path / "w" / "manifest.json")
    assert [e["id"] for e in manifest["scenes"]] == ["scene_00000", "scene_00000_w0"]
    assert manifest["config"]["duration_us"] == 300_000 and manifest["scenes"][0]["seed"] == scene_seeds(4, 1)[0]
    assert run_script("make_world.py", ["--out", str(tmp_path / "x"), "--num-scenes", "1", "--max-objects", "9"]) == 2
    assert "max_objects" in capsys.readouterr().err
