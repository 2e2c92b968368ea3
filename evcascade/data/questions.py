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

>>> from evcascade.data.world import Background, Scene, SceneObject
>>> ball = SceneObject("circle", "red", "big", 10.0, 20.0, 30.0, direction="left", speed="fast")
>>> scene = Scene(64, 64, 1_500_000, (ball,), Background((50.0, 50.0, 50.0), (0.0, 0.0)))
>>> caption(scene)
'the big red circle moves to the left .'
>>> [qa.answer for qa in qa_pairs(scene) if qa.kind == "direction"]
['the circle moves to the left .']
"""

from __future__ import annotations

from dataclasses import dataclass

from evcascade.data.world import COLOURS, DIRECTIONS, SHAPES, SIZES, Scene, SceneObject

_NUMBER_WORDS: tuple[str, ...] = ("zero", "one", "two", "three", "four")

QUESTION_KINDS: tuple[str, ...] = ("caption", "moving", "direction", "colour", "count", "faster", "camera")


@dataclass(frozen=True)
class QA:
    """One question with its answer, its kind (one of ``QUESTION_KINDS``) and the input it needs."""

    question: str
    answer: str
    kind: str
    needs: str  # "frame" | "time" | "frame+time"

    def to_dict(self) -> dict:
        return {"question": self.question, "answer": self.answer, "kind": self.kind, "needs": self.needs}


def _canonical(objects) -> list[SceneObject]:
    return sorted(objects, key=lambda o: SHAPES.index(o.shape))


def _motion_phrase(direction: str | None) -> str:
    if direction is None:
        return "does not move"
    return f"moves to the {direction}" if direction in ("left", "right") else f"moves {direction}"


def caption(scene: Scene) -> str:
    """One sentence per object (``the big red circle moves to the left .``), then the camera if it pans."""
    sentences = [
        f"the {o.size} {o.colour} {o.shape} {_motion_phrase(o.direction)} ." for o in _canonical(scene.objects)
    ]
    if scene.camera_direction is not None:
        sentences.append(f"the camera {_motion_phrase(scene.camera_direction)} .")
    return " ".join(sentences)


def _moving_answer(scene: Scene) -> str:
    names = [f"the {o.shape}" for o in _canonical(scene.moving_objects)]
    if not names:
        return "no object is moving ."
    if len(names) == 1:
        return f"{names[0]} is moving ."
    return f"{' , '.join(names[:-1])} and {names[-1]} are moving ."


def _faster_pair(scene: Scene) -> tuple[SceneObject, SceneObject] | None:
    """(faster, slower) when exactly two objects move at different speeds, else None (no clear answer)."""
    moving = scene.moving_objects
    if len(moving) != 2 or moving[0].speed == moving[1].speed:
        return None
    return (moving[0], moving[1]) if moving[0].speed == "fast" else (moving[1], moving[0])


def qa_pairs(scene: Scene) -> list[QA]:
    """All questions the scene answers unambiguously, in a fixed order: caption, moving, per object, count, ..."""
    pairs = [
        QA("describe the video .", caption(scene), "caption", "frame+time"),
        QA("what is moving ?", _moving_answer(scene), "moving", "time"),
    ]
    for obj in _canonical(scene.objects):
        pairs.append(QA(f"where does the {obj.shape} move ?", f"the {obj.shape} {_motion_phrase(obj.direction)} .",
                        "direction", "time"))
    for obj in _canonical(scene.objects):
        subject = f"the moving {obj.shape}" if obj.moving else f"the {obj.shape}"
        pairs.append(QA(f"what colour is {subject} ?", f"{subject} is {obj.colour} .", "colour", "frame"))
    count = len(scene.objects)
    count_answer = "there is one object ." if count == 1 else f"there are {_NUMBER_WORDS[count]} objects ."
    pairs.append(QA("how many objects are there ?", count_answer, "count", "frame"))
    pair = _faster_pair(scene)
    if pair is not None:
        fast, slow = pair
        answer = f"the {fast.shape} is faster than the {slow.shape} ."
        pairs.append(QA("which object is faster ?", answer, "faster", "time"))
    camera_answer = ("no , the camera does not move ." if scene.camera_direction is None
                     else f"yes , the camera {_motion_phrase(scene.camera_direction)} .")
    pairs.append(QA("does the camera move ?", camera_answer, "camera", "time"))
    return pairs


def world_vocabulary() -> tuple[str, ...]:
    """Every word (whitespace-separated token) that a question, answer or caption can contain, sorted."""
    template_words = (
        "describe the video . what is moving ? no object and are , where does move moves to not up down left right "
        "colour how many objects there which faster than camera yes big small"
    ).split()
    words = {*template_words, *SHAPES, *COLOURS, *SIZES, *DIRECTIONS, *_NUMBER_WORDS[1:]}
    return tuple(sorted(words))
