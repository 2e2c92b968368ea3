"""The facts an answer of the synthetic world states, phrasing-blind: what "agreeing on an answer's facts" counts.

Two answers can say the same thing in other words (``the star moves to the left`` / ``the star is moving left``)
or share most words and differ on the one that matters (``... moves far up`` / ``... moves a little up``). Word-for-
word matching calls the first a disagreement, and on a 40-word detailed caption one wrong word sinks the whole
answer. ``answer_facts`` reads an answer (any phrasing of ``evcascade.data.questions``) into a mapping
``{(subject, attribute): value}``, one entry per fact it states:

- ``("count", "objects")``: the number of objects (``there are two objects`` / ``two objects`` / ``there are two``);
- ``(shape, "size")`` / ``(shape, "colour")``: what an object looks like (captions, colour answers);
- ``(shape, "motion")`` / ``("camera", "motion")``: which way it moves in the window, ``"none"`` when it does not;
- ``(shape, "distance")`` / ``("camera", "distance")``: how far (``little`` / ``far``; detailed captions);
- ``(shape, "moving")``: named among the moving objects (``what is moving ?``); ``("nothing", "moving")`` for
  ``no object is moving``;
- ``("faster", "pair")``: (faster shape, slower shape);
- ``("sentence", i)``: a sentence that is none of these (a garbled draft), kept verbatim so it counts as a fact
  of its own that no correct answer states.

``fact_agreement(provisional, verified)`` counts the verified answer's facts that the provisional one states with
the same value (recall: the share of the verified answer's facts the provisional gets right) and the provisional
answer's facts that the verified one states the same (precision: a provisional answer inventing facts pays there).

>>> answer_facts("there are two objects . the big red circle moves far to the left . the camera does not move .")
{('count', 'objects'): 2, ('circle', 'size'): 'big', ('circle', 'colour'): 'red', ('circle', 'motion'): 'left', \
('circle', 'distance'): 'far', ('camera', 'motion'): 'none'}
>>> answer_facts("the star is moving left .") == answer_facts("the star moves to the left .")
True
>>> fact_agreement("two objects . the circle moves up .", "there are two objects . the circle moves down .")
FactAgreement(verified=2, provisional=2, same=1)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from evcascade.data.world import COLOURS, DIRECTIONS, SHAPES, SIZES

Facts = dict[tuple[str, Any], Any]

_NUMBERS = {"one": 1, "two": 2, "three": 3, "four": 4}
_DISTANCES = {"a little": "little", "slightly": "little", "far": "far", "a long way": "far"}

_SHAPE = "|".join(SHAPES)
_SUBJECT = rf"the (?:moving )?(?:(?P<size>{'|'.join(SIZES)}) )?(?:(?P<colour>{'|'.join(COLOURS)}) )?(?P<shape>{_SHAPE})"
_MOTION = (rf"(?:(?:moves|is moving)(?: (?P<distance>{'|'.join(_DISTANCES)}))?(?: to the)? "
           rf"(?P<direction>{'|'.join(DIRECTIONS)})|(?P<still>does not move|is not moving|stays still))")
_COUNT = re.compile(rf"(?:there (?:is|are) )?(?P<n>{'|'.join(_NUMBERS)}) objects?|there are (?P<m>{'|'.join(_NUMBERS)})")
_CAMERA = re.compile(rf"(?:(?:yes|no) , )?the camera {_MOTION}")
_FASTER = re.compile(rf"the (?P<fast>{_SHAPE}) (?:is|moves) faster than the (?P<slow>{_SHAPE})")
_OBJECT_MOTION = re.compile(rf"{_SUBJECT} {_MOTION}")
_OBJECT_COLOUR = re.compile(rf"{_SUBJECT} is (?P<is_colour>{'|'.join(COLOURS)})")
_MOVING = re.compile(rf"(?P<names>no object|the (?:{_SHAPE})(?:(?: ,| and) the (?:{_SHAPE}))*) "
                     rf"(?:is moving|moves|are moving|move)")


def _motion_facts(subject: str, match: re.Match) -> Facts:
    if match["still"]:
        return {(subject, "motion"): "none"}
    facts: Facts = {(subject, "motion"): match["direction"]}
    if match["distance"]:
        facts[(subject, "distance")] = _DISTANCES[match["distance"]]
    return facts


def _looks(match: re.Match) -> Facts:
    shape = match["shape"]
    return {(shape, key): match[key] for key in ("size", "colour") if match[key]}


def sentence_facts(sentence: str) -> Facts | None:
    """The facts of one sentence (without its full stop), or None when it is none of the world's sentences."""
    if m := _COUNT.fullmatch(sentence):
        return {("count", "objects"): _NUMBERS[m["n"] or m["m"]]}
    if m := _CAMERA.fullmatch(sentence):
        return _motion_facts("camera", m)
    if m := _FASTER.fullmatch(sentence):
        return {("faster", "pair"): (m["fast"], m["slow"])}
    if m := _MOVING.fullmatch(sentence):
        if m["names"] == "no object":
            return {("nothing", "moving"): True}
        return {(shape, "moving"): True for shape in re.findall(_SHAPE, m["names"])}
    if m := _OBJECT_MOTION.fullmatch(sentence):
        return {**_looks(m), **_motion_facts(m["shape"], m)}
    if m := _OBJECT_COLOUR.fullmatch(sentence):
        return {**_looks(m), (m["shape"], "colour"): m["is_colour"]}
    return None


def answer_facts(text: str) -> Facts:
    """``{(subject, attribute): value}`` for every fact ``text`` states (module docstring); a sentence that is none
    of the world's becomes ``("sentence", i): text``. A later sentence restating a fact overrides it."""
    facts: Facts = {}
    sentences = [" ".join(s.split()) for s in text.split(".")]
    for index, sentence in enumerate(s for s in sentences if s):
        found = sentence_facts(sentence)
        facts.update(found if found is not None else {("sentence", index): sentence})
    return facts


@dataclass(frozen=True)
class FactAgreement:
    """How many facts the verified answer states, how many the provisional one states, and how many of the
    verified answer's facts the provisional one states with the same value."""

    verified: int
    provisional: int
    same: int

    @property
    def recall(self) -> float:
        """Share of the verified answer's facts the provisional answer states the same (1.0 when it states none)."""
        return self.same / self.verified if self.verified else 1.0

    @property
    def precision(self) -> float:
        """Share of the provisional answer's facts the verified answer states the same (1.0 when it states none)."""
        return self.same / self.provisional if self.provisional else 1.0


def fact_agreement(provisional_text: str, verified_text: str) -> FactAgreement:
    """Facts of ``verified_text`` that ``provisional_text`` states with the same value (``answer_facts``)."""
    provisional, verified = answer_facts(provisional_text), answer_facts(verified_text)
    same = sum(1 for key, value in verified.items() if key in provisional and provisional[key] == value)
    return FactAgreement(len(verified), len(provisional), same)
