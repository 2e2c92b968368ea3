"""The facts an answer states (``data/facts.py``): phrasing-blind, and telling apart exactly what ``is_correct`` does."""

from __future__ import annotations

import numpy as np

from evcascade.data.facts import answer_facts, fact_agreement
from evcascade.data.questions import qa_pairs
from evcascade.data.world import WorldConfig, sample_scene, sample_window_us, scene_seeds


def world_qas(num_scenes: int = 40):
    """Every QA of scenes with panning cameras, about the whole clip and a random window of each."""
    config = WorldConfig(camera_motion_prob=0.5)
    rng = np.random.default_rng(0)
    for seed in scene_seeds(1, num_scenes):
        scene = sample_scene(seed, config)
        for window in (None, sample_window_us(rng, config)):
            yield from qa_pairs(scene, window)


def test_every_phrasing_states_the_canonical_answers_facts_and_every_sentence_is_read():
    rng = np.random.default_rng(1)
    kinds = set()
    for qa in world_qas():
        facts = answer_facts(qa.answer)
        assert facts and not any(subject == "sentence" for subject, _ in facts), (qa.answer, facts)
        for _ in range(4):
            phrasing = qa.phrase(rng)
            assert answer_facts(phrasing) == facts, (phrasing, qa.answer)
        kinds.add(qa.kind)
    assert kinds >= {"caption", "detail", "moving", "direction", "colour", "count", "camera"}


def test_two_answers_state_the_same_facts_exactly_when_one_is_a_correct_phrasing_of_the_other():
    by_question: dict[str, list] = {}
    for qa in world_qas():
        by_question.setdefault(qa.question, []).append(qa)
    differing = 0
    for qas in by_question.values():
        for a in qas[:25]:
            for b in qas[:25]:
                same = answer_facts(a.answer) == answer_facts(b.answer)
                assert a.is_correct(b.answer) == same, (a.answer, b.answer)
                differing += not same
    assert differing > 100  # the check above saw many answers that differ


def test_agreement_counts_the_verified_facts_stated_the_same_and_garbled_sentences_are_facts_of_their_own():
    verified = "there are two objects . the big red circle moves far to the left . the camera does not move ."
    same_facts = "two objects . the big red circle is moving a long way left . the camera stays still ."
    assert fact_agreement(same_facts, verified).recall == 1.0
    wrong_way = "there are two objects . the big red circle moves a little up . the camera does not move ."
    agreement = fact_agreement(wrong_way, verified)
    assert (agreement.verified, agreement.same) == (6, 4)  # count, size, colour, motion, distance, camera
    garbled = fact_agreement("there are two objects . the the circle red .", verified)
    assert garbled.same == 1 and garbled.provisional == 2 and garbled.precision == 0.5
    assert answer_facts("the circle , the square and the star are moving .") == {
        ("circle", "moving"): True, ("square", "moving"): True, ("star", "moving"): True}
    assert answer_facts("no object moves .") == {("nothing", "moving"): True}
    assert answer_facts("the star moves faster than the circle .") == {("faster", "pair"): ("star", "circle")}
    assert answer_facts("yes , the camera is moving down .") == {("camera", "motion"): "down"}
    assert fact_agreement("", "").recall == 1.0 and answer_facts("") == {}
