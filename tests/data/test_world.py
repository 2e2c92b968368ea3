"""The synthetic world: determinism, answers read off hand-built scenes, pixels and events that agree with the
scene graph, and the DSEC-like layout round-tripping through read_events / read_video / load_clip."""

from __future__ import annotations

import json

import numpy as np
import pytest

from evcascade.data.questions import QA, caption, qa_pairs, world_vocabulary
from evcascade.data.render import COLOUR_RGB, render_frames
from evcascade.data.world import (
    Background, Scene, SceneObject, WorldConfig, make_world_sample, render_sample, sample_scene, scene_seeds,
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
    assert needs == {"caption": "frame+time", "moving": "time", "direction": "time", "colour": "frame",
                     "count": "frame", "faster": "time", "camera": "time"}
    # questions name objects by shape only, so motion questions never leak colour
    for qa in qa_pairs(hand_scene(RED_CIRCLE, BLUE_SQUARE)):
        assert not set(qa.question.split()) & set(COLOUR_RGB), qa.question


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
    tokenizer = tiny_tokenizer()
    ids = tokenizer.convert_tokens_to_ids(sorted(vocabulary))
    assert tokenizer.unk_token_id not in ids


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
            "--no-progress"]
    assert run_script("make_world.py", argv) == 0
    manifest = read_manifest(tmp_path / "w" / "manifest.json")
    assert manifest["config"]["duration_us"] == 300_000 and manifest["scenes"][0]["seed"] == scene_seeds(4, 1)[0]
    assert run_script("make_world.py", ["--out", str(tmp_path / "x"), "--num-scenes", "1", "--max-objects", "9"]) == 2
    assert "max_objects" in capsys.readouterr().err
