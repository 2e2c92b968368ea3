"""LiveSession under concurrent producers: answers about the newest window, bounded memory, no blocking."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from evcascade import Events, InputError
from evcascade.cascade import Cascade
from evcascade.clip import Clip
from evcascade.live import LiveSession
from evcascade.models.tiny import tiny_tokenizer, tiny_video_llava

SENSOR = (32, 24)


@pytest.fixture(scope="module")
def cascade():
    tok = tiny_tokenizer()
    return Cascade.from_models(tiny_video_llava(tok, seed=3), tok)


def event_packet(t0_us: int, n: int, rng) -> Events:
    t = np.sort(rng.integers(t0_us, t0_us + 1000, n))
    return Events.from_arrays(rng.integers(0, SENSOR[0], n), rng.integers(0, SENSOR[1], n), t, rng.integers(0, 2, n), SENSOR)


def test_concurrent_producers_bounded_memory_and_exact_answers(cascade):
    session = LiveSession(cascade, SENSOR, event_window_us=20_000, video_window_us=200_000, max_events=5_000,
                          max_frames=12)
    stop = threading.Event()
    pushed = {"events": 0, "frames": 0}
    clock = {"t_us": 0}
    lock = threading.Lock()

    def event_producer(seed):
        rng = np.random.default_rng(seed)
        while not stop.is_set():
            with lock:  # one camera: packets leave the driver in time order
                t0 = clock["t_us"]
                clock["t_us"] += 1000
                session.push_events(event_packet(t0, 200, rng))
                pushed["events"] += 200
            time.sleep(0.0005)

    def frame_producer():
        i, last = 0, -1
        while not stop.is_set():
            with lock:
                t = clock["t_us"]
            if t > last:
                session.push_frame(np.full((SENSOR[1], SENSOR[0], 3), (7 * i) % 256, np.uint8), t)
                pushed["frames"] += 1
                last, i = t, i + 1
            time.sleep(0.002)

    threads = [threading.Thread(target=event_producer, args=(s,)) for s in (1, 2)]
    threads.append(threading.Thread(target=frame_producer))
    for thread in threads:
        thread.start()
    try:
        while pushed["frames"] < 20:
            time.sleep(0.01)
        sizes = []
        for _ in range(3):
            before = dict(pushed)
            answer = session.ask("what is moving ?", max_new_tokens=4)
            assert len(answer.token_ids) >= 1
            sizes.append(session.memory_bytes())
            assert session.events.stats.kept <= 5_000
            # producers were not blocked while the question was being answered
            assert pushed["events"] > before["events"]
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert pushed["events"] > 5_000 and pushed["frames"] > 12  # more than the rings hold: memory stayed bounded
    assert max(sizes) <= 5_000 * (2 + 2 + 8 + 1) + 12 * SENSOR[0] * SENSOR[1] * 3

    # with the producers stopped, the live answer is exactly the target's answer on the same snapshot
    snap = session.snapshot()
    assert snap.video.timestamps_us[-1] == snap.end_us - 1 and len(snap.video) == cascade.num_frames
    assert len(snap.events) == 0 or snap.events.t_us[0] >= snap.end_us - 20_000
    live = session.ask("how many objects are there ?", max_new_tokens=6)
    clip = Clip(snap.events, snap.video, snap.start_us, snap.end_us, snap.end_us - 20_000)
    reference = cascade.generate(prompt="how many objects are there ?", clip=clip, mode="target", max_new_tokens=6)
    assert live.token_ids == reference.token_ids


def test_bad_pushes_are_refused_with_the_value(cascade):
    session = LiveSession(cascade, SENSOR)
    with pytest.raises(InputError, match="no frames pushed yet"):
        session.ask("what is moving ?")
    with pytest.raises(InputError, match="uint8"):
        session.push_frame(np.zeros((24, 32, 3), np.float32), 0)
    session.push_frame(np.zeros((24, 32, 3), np.uint8), 10)
    with pytest.raises(InputError, match="must increase: got 5 us after 10 us"):
        session.push_frame(np.zeros((24, 32, 3), np.uint8), 5)
    with pytest.raises(InputError, match="shape changed"):
        session.push_frame(np.zeros((10, 10, 3), np.uint8), 20)
    with pytest.raises(InputError, match="max_frames"):
        LiveSession(cascade, SENSOR, max_frames=0)
