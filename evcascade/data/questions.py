"""Captions and question/answer pairs read off a synthetic-world `Scene`, as short fixed phrases.

Answers are templates over a vocabulary of a few dozen words (``world_vocabulary()``), so a tiny
LM can learn them and an n-gram drafter finds the repeats. Objects are named by shape alone in
questions (shapes are unique in a scene) so that an event-only model can answer motion questions;
colour is only ever in answers. Lists of objects follow the fixed order of ``SHAPES``.

``QA.needs`` says which input can answer a question:

- ``"frame"``: one RGB frame suffices and events do not (colour; counting, since a still camera
  sees no events from static objects);
- ``"time"``: motion over time is needed, from events or several frames, and one frame does not
  suffice (what moves, which way, which is faster, does the camera move);
- ``"frame+time"``: both (the caption).

**Phrasings: the paraphrase world.** Each answer also comes as ``QA.segments``, the same facts in other words
(``moves to the left`` / ``moves left`` / ``is moving to the left`` / ``is moving left``; ``there are two objects``
/ ``two objects`` / ``there are two``), all from the same vocabulary. The bundled demo target was trained on the
canonical phrasing (``QA.answer``) only, so it is near-certain on every token, like no real video-language model:
nothing a lossy acceptance rule could ever trade. A target trained on phrasings drawn uniformly
(``RecipeConfig(phrasing="uniform")``; ``demos/train_demo_drafters.py --variant paraphrase``) hesitates between
words that say the same thing and stays sure of the facts, which is what lossy rules are for; ``QA.is_correct``
scores an answer in any phrasing, so task accuracy stays a measure of the facts. The bundled target is trained on
``RecipeConfig(phrasing="skewed")``: each segment canonical with probability 0.6, another phrasing otherwise, so its
greedy answers are the canonical ones and its distributions still hold the other phrasings (like a real model's
preferred wording), which is what a lossy rule can trade on the long detailed captions.

**Windows.** ``qa_pairs(scene, window_us)`` asks about a window ``[start_us, end_us)`` of the clip: the motion facts
are what the window's frames show (``Scene.observed_motion``: an object travelling under ``MOTION_THRESHOLD_PX``
between the window's first and last frames does not move there). The detailed caption (``describe the video in
detail .``, kind ``detail``) says how many objects there are, each one's size, colour and shape, which way and how
far it moves in the window (``a little`` / ``far``, ``FAR_THRESHOLD_PX``), and the camera: 20-50 words.

>>> from evcascade.data.world import Background, Scene, SceneObject
>>> ball = SceneObject("circle", "red", "big", 10.0, 20.0, 30.0, direction="left", speed="fast")
>>> scene = Scene(64, 64, 1_500_000, (ball,), Background((50.0, 50.0, 50.0), (0.0, 0.0)))
>>> caption(scene)
'the big red circle moves to the left .'
>>> [qa.answer for qa in qa_pairs(scene) if qa.kind == "direction"]
['the circle moves to the left .']
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass, field

import numpy as np

from evcascade.data.world import COLOURS, DIRECTIONS, SHAPES, SIZES, Scene, SceneObject, WorldConfig, window_frame_times_us

_NUMBER_WORDS: tuple[str, ...] = ("zero", "one", "two", "three", "four")

QUESTION_KINDS: tuple[str, ...] = ("caption", "detail", "moving", "direction", "colour", "count", "faster", "camera")

Segments = tuple[tuple[str, ...], ...]
"""An answer as a sequence of segments, each a tuple of interchangeable phrasings (the canonical one first)."""


@dataclass(frozen=True)
class QA:
    """One question with its answer, its kind (one of ``QUESTION_KINDS``) and the input it needs.

    ``answer`` is the canonical phrasing (what the bundled demo target was trained on). ``segments`` spell the
    answer's other correct phrasings, same content in other words (``moves to the left`` / ``is moving left``):
    ``phrase`` draws one, ``is_correct`` accepts any of them. They make the paraphrase world, where a target
    trained on every phrasing hesitates between words but not between facts (see the module docstring).
    """

    question: str
    answer: str
    kind: str
    needs: str  # "frame" | "time" | "frame+time"
    segments: Segments = field(default=(), compare=False)
    """Not serialised by ``to_dict`` (and not compared): ``qa_pairs(scene)`` rebuilds them from the scene."""

    def __post_init__(self) -> None:
        if self.segments and canonical_text(self.segments) != self.answer:
            raise ValueError(f"the canonical phrasing of {self.segments!r} is not the answer {self.answer!r}")

    def to_dict(self) -> dict:
        return {"question": self.question, "answer": self.answer, "kind": self.kind, "needs": self.needs}

    @property
    def num_phrasings(self) -> int:
        """How many distinct phrasings the answer has (1 without segments)."""
        return math.prod(len(seg) for seg in self.segments) if self.segments else 1

    def phrase(self, rng: np.random.Generator, canonical_probability: float | None = None) -> str:
        """One phrasing, each segment's alternative drawn uniformly; with ``canonical_probability``, each segment is
        its canonical phrasing with that probability and one of the others (uniformly) otherwise, so the canonical
        answer stays the most likely one and the others keep real probability (the bundled target's recipe).

        >>> qa = QA("where does the star move ?", "the star moves up .", "direction", "time",
        ...         (("the star",), ("moves up", "is moving up"), (".",)))
        >>> rng = np.random.default_rng(0)
        >>> sorted({qa.phrase(rng, canonical_probability=0.6) for _ in range(50)})
        ['the star is moving up .', 'the star moves up .']
        """
        if not self.segments:
            return self.answer
        if canonical_probability is None:
            return " ".join(seg[int(rng.integers(len(seg)))] for seg in self.segments)
        words = []
        for seg in self.segments:
            canonical = len(seg) == 1 or rng.random() < canonical_probability
            words.append(seg[0] if canonical else seg[1 + int(rng.integers(len(seg) - 1))])
        return " ".join(words)

    def is_correct(self, text: str) -> bool:
        """Whether ``text`` (stripped) is one of the answer's phrasings: the task's accuracy, phrasing-blind.

        >>> qa = QA("where does the star move ?", "the star moves up .", "direction", "time",
        ...         (("the star",), ("moves up", "is moving up"), (".",)))
        >>> qa.is_correct("the star is moving up ."), qa.is_correct("the star is moving down .")
        (True, False)
        """
        text = " ".join(text.split())
        if text == self.answer:
            return True
        return bool(self.segments) and _pattern(self.segments).fullmatch(text) is not None


def canonical_text(segments: Segments) -> str:
    """The canonical phrasing: each segment's first alternative."""
    return " ".join(seg[0] for seg in segments)


@functools.lru_cache(maxsize=4096)
def _pattern(segments: Segments) -> re.Pattern:
    return re.compile(" ".join("(?:" + "|".join(re.escape(alt) for alt in seg) + ")" for seg in segments))


def _canonical(objects) -> list[SceneObject]:
    return sorted(objects, key=lambda o: SHAPES.index(o.shape))


def _motion_options(direction: str | None) -> tuple[str, ...]:
    if direction is None:
        return ("does not move", "is not moving")
    if direction in ("left", "right"):
        return (f"moves to the {direction}", f"moves {direction}", f"is moving to the {direction}",
                f"is moving {direction}")
    return (f"moves {direction}", f"is moving {direction}")


def _motion_phrase(direction: str | None) -> str:
    return _motion_options(direction)[0]


_DISTANCE_WORDS: dict[str, tuple[str, ...]] = {"little": ("a little", "slightly"), "far": ("far", "a long way")}


def _detail_motion_options(direction: str | None, distance: str | None) -> tuple[str, ...]:
    """How far and which way, in every phrasing: ``moves a little to the left`` / ``is moving far up`` / ..."""
    if direction is None:
        return ("does not move", "is not moving", "stays still")
    ways = (f"to the {direction}", direction) if direction in ("left", "right") else (direction,)
    return tuple(f"{verb} {how} {way}" for verb in ("moves", "is moving") for how in _DISTANCE_WORDS[distance]
                 for way in ways)


@dataclass(frozen=True)
class _View:
    """A scene as a window's frames show it: each object's (direction, distance) and the camera's."""

    scene: Scene
    frame_times_us: np.ndarray

    def motion(self, obj: SceneObject | None) -> tuple[str | None, str | None]:
        return self.scene.observed_motion(obj, self.frame_times_us)

    def moving(self) -> list[SceneObject]:
        return [o for o in _canonical(self.scene.objects) if self.motion(o)[0] is not None]


def _view(scene: Scene, window_us: tuple[int, int] | None, fps: float) -> _View:
    config = WorldConfig(width=scene.width, height=scene.height, duration_us=scene.duration_us, fps=fps)
    return _View(scene, window_frame_times_us(config, window_us))


def _caption_segments(view: _View) -> Segments:
    segments: list[tuple[str, ...]] = []
    for o in _canonical(view.scene.objects):
        segments += [(f"the {o.size} {o.colour} {o.shape}",), _motion_options(view.motion(o)[0]), (".",)]
    if view.motion(None)[0] is not None:
        segments += [("the camera",), _motion_options(view.motion(None)[0]), (".",)]
    return tuple(segments)


def _count_options(count: int) -> tuple[str, ...]:
    if count == 1:
        return ("there is one object", "one object")
    return (f"there are {_NUMBER_WORDS[count]} objects", f"{_NUMBER_WORDS[count]} objects",
            f"there are {_NUMBER_WORDS[count]}")


def _detail_segments(view: _View) -> Segments:
    """The detailed caption: how many objects; each one's size, colour, shape, which way and how far it moves in
    the window; the camera."""
    segments: list[tuple[str, ...]] = [_count_options(len(view.scene.objects)), (".",)]
    for o in _canonical(view.scene.objects):
        segments += [(f"the {o.size} {o.colour} {o.shape}",), _detail_motion_options(*view.motion(o)), (".",)]
    segments += [("the camera",), _detail_motion_options(*view.motion(None)), (".",)]
    return tuple(segments)


def caption(scene: Scene, window_us: tuple[int, int] | None = None, *, fps: float = 20.0) -> str:
    """One sentence per object (``the big red circle moves to the left .``), then the camera if it pans; motion
    as the frames of ``window_us`` show it (``Scene.observed_motion``; None: the whole clip)."""
    return canonical_text(_caption_segments(_view(scene, window_us, fps)))


def _moving_segments(view: _View) -> Segments:
    names = [f"the {o.shape}" for o in view.moving()]
    if not names:
        return (("no object",), ("is moving", "moves"), (".",))
    if len(names) == 1:
        return ((names[0],), ("is moving", "moves"), (".",))
    return ((f"{' , '.join(names[:-1])} and {names[-1]}",), ("are moving", "move"), (".",))


def _faster_pair(view: _View) -> tuple[SceneObject, SceneObject] | None:
    """(faster, slower) when exactly two objects move in the window, at different speeds, else None."""
    moving = view.moving()
    if len(moving) != 2 or moving[0].speed == moving[1].speed:
        return None
    return (moving[0], moving[1]) if moving[0].speed == "fast" else (moving[1], moving[0])


def _qa(question: str, segments: Segments, kind: str, needs: str) -> QA:
    return QA(question, canonical_text(segments), kind, needs, segments)


def qa_pairs(scene: Scene, window_us: tuple[int, int] | None = None, *, fps: float = 20.0) -> list[QA]:
    """All questions the scene answers unambiguously about the window ``window_us = (start_us, end_us)`` (None: the
    whole clip), in a fixed order: caption, detailed caption, moving, per object, count, ...

    Motion is what the window's frames at ``fps`` show (``Scene.observed_motion``): an object that travels less than
    ``MOTION_THRESHOLD_PX`` between the window's first and last frames "does not move" there.
    """
    view = _view(scene, window_us, fps)
    pairs = [
        _qa("describe the video .", _caption_segments(view), "caption", "frame+time"),
        _qa("describe the video in detail .", _detail_segments(view), "detail", "frame+time"),
        _qa("what is moving ?", _moving_segments(view), "moving", "time"),
    ]
    for obj in _canonical(scene.objects):
        pairs.append(_qa(f"where does the {obj.shape} move ?",
                         ((f"the {obj.shape}",), _motion_options(view.motion(obj)[0]), (".",)), "direction", "time"))
    for obj in _canonical(scene.objects):
        moving = view.motion(obj)[0] is not None
        subjects = (f"the moving {obj.shape}", f"the {obj.shape}") if moving else (f"the {obj.shape}",)
        pairs.append(_qa(f"what colour is {subjects[0]} ?", (subjects, (f"is {obj.colour} .",)), "colour", "frame"))
    pairs.append(_qa("how many objects are there ?", (_count_options(len(scene.objects)), (".",)), "count", "frame"))
    pair = _faster_pair(view)
    if pair is not None:
        fast, slow = pair
        pairs.append(_qa("which object is faster ?", ((f"the {fast.shape}",), ("is faster", "moves faster"),
                                                      (f"than the {slow.shape} .",)), "faster", "time"))
    camera_direction = view.motion(None)[0]
    camera = ((("no , the camera",), _motion_options(None), (".",)) if camera_direction is None
              else (("yes , the camera",), _motion_options(camera_direction), (".",)))
    pairs.append(_qa("does the camera move ?", camera, "camera", "time"))
    return pairs


def first_vocabulary() -> tuple[str, ...]:
    """The world's words before the detailed captions, sorted (the bundled target's first tokenizer)."""
    template_words = (
        "describe the video . what is moving ? no object and are , where does move moves to not up down left right "
        "colour how many objects there which faster than camera yes big small"
    ).split()
    return tuple(sorted({*template_words, *SHAPES, *COLOURS, *SIZES, *DIRECTIONS, *_NUMBER_WORDS[1:]}))


DETAIL_WORDS: tuple[str, ...] = ("in", "detail", "a", "little", "slightly", "far", "long", "way", "stays", "still")
"""Words the detailed captions added to the world (``describe the video in detail .``), after the first
vocabulary: a tokenizer of the first vocabulary extends to the world's by appending them, its ids unchanged."""


def world_vocabulary() -> tuple[str, ...]:
    """Every word (whitespace-separated token) that a question, answer or caption can contain: the first
    vocabulary (sorted), then ``DETAIL_WORDS``."""
    return first_vocabulary() + DETAIL_WORDS
