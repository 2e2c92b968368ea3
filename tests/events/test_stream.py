"""LiveEventBuffer: ring contents against a reference, eviction, bounded memory, threads."""

import threading

import numpy as np
import pytest

from evcascade.errors import InputError
from evcascade.events import Events, LiveEventBuffer

SIZE = (64, 48)


def packet(t_us, seed=0) -> Events:
    rng = np.random.default_rng(seed)
    n = len(t_us)
    return Events.from_arrays(rng.integers(0, SIZE[0], n), rng.integers(0, SIZE[1], n), t_us, rng.integers(0, 2, n), SIZE)


def fields(ev: Events):
    return [ev.x, ev.y, ev.t_us, ev.p]


def assert_same(a: Events, b: Events):
    assert a.sensor_size == b.sensor_size
    for fa, fb in zip(fields(a), fields(b)):
        np.testing.assert_array_equal(fa, fb)


def test_contents_match_a_reference_through_many_wraps():
    max_duration_us, max_events = 5_000, 700
    buf = LiveEventBuffer(SIZE, max_duration_us=max_duration_us, max_events=max_events)
    nbytes = buf.nbytes
    assert nbytes == 13 * max_events
    rng = np.random.default_rng(0)
    pushed, t = [], 0
    for i in range(120):
        n = int(rng.integers(0, 300))  # some packets are empty, some bigger than what the time limit keeps
        t_us = t + np.sort(rng.integers(0, int(rng.integers(1, 400)), n))  # ties within and across packets
        t = int(t_us[-1]) if n else t
        pushed.append(packet(t_us, seed=i))
        assert buf.push(pushed[-1]) == n
        everything = Events.concatenate(pushed)
        newest = int(everything.t_us[-1]) if len(everything) else None
        if newest is None:
            continue
        expected = everything.window(newest + 1 - max_duration_us, None)
        expected = expected[max(0, len(expected) - max_events):]
        assert_same(buf.window(), expected)
        assert_same(buf.latest(1_000), expected.window(newest + 1 - 1_000, None))
        lo, hi = sorted(rng.integers(newest - 6_000, newest + 2, 2).tolist())
        if lo < hi:
            assert_same(buf.window(lo, hi), expected.window(lo, hi))
        stats = buf.stats
        assert stats.kept == len(expected) and stats.pushed == len(everything)
        assert stats.pushed == stats.dropped + stats.evicted + stats.kept
    assert buf.nbytes == nbytes  # bounded: nothing was allocated in the ring after construction


def test_reads_are_copies_and_inputs_are_untouched():
    buf = LiveEventBuffer(SIZE, max_duration_us=10_000, max_events=50)
    source = packet(np.arange(40) * 10)
    before = [f.copy() for f in fields(source)]
    buf.push(source)
    snapshot = buf.latest(10_000)
    buf.push(packet(np.arange(40) * 10 + 1_000, seed=1))  # overwrites part of the ring
    np.testing.assert_array_equal(snapshot.t_us, np.arange(40) * 10)
    for now, then in zip(fields(source), before):
        np.testing.assert_array_equal(now, then)


def test_time_limit_is_exactly_max_duration():
    buf = LiveEventBuffer(SIZE, max_duration_us=100, max_events=10)
    buf.push(packet([0, 100, 101, 200]))
    assert buf.window().t_us.tolist() == [101, 200]  # [newest + 1 - 100, newest + 1)
    assert buf.latest(100).t_us.tolist() == [101, 200] and buf.latest(99).t_us.tolist() == [200]
    assert buf.stats.evicted == 2 and buf.newest_us == 200


def test_packet_forms_and_capacity_limit():
    buf = LiveEventBuffer(SIZE, max_duration_us=1_000_000, max_events=5)
    buf.push((np.array([1, 2]), np.array([3, 4]), np.array([10, 20]), np.array([-1, 1])))
    buf.push({"x": [5], "y": [6], "t": [30], "p": [1]})
    buf.push(packet([40, 50]).to_structured())
    assert buf.window().t_us.tolist() == [10, 20, 30, 40, 50] and buf.window().p.tolist()[:2] == [0, 1]
    assert buf.push(packet(np.arange(60, 70))) == 10  # larger than the ring: its newest 5 stay
    assert buf.window().t_us.tolist() == [65, 66, 67, 68, 69]
    assert buf.stats.evicted == 10 and buf.stats.kept == 5


def test_out_of_order_raise_and_drop():
    strict = LiveEventBuffer(SIZE, max_duration_us=1_000, max_events=100)
    strict.push(packet([100, 200]))
    with pytest.raises(InputError, match="t=150"):
        strict.push(packet([150, 300]))
    assert strict.window().t_us.tolist() == [100, 200] and strict.stats.pushed == 2  # unchanged
    strict.push(packet([200, 210]))  # equal to the newest is in order
    lenient = LiveEventBuffer(SIZE, max_duration_us=1_000, max_events=100, out_of_order="drop")
    lenient.push(packet([100, 200]))
    assert lenient.push(packet([150, 199, 200, 300])) == 2
    assert lenient.window().t_us.tolist() == [100, 200, 200, 300]
    assert lenient.stats == type(lenient.stats)(pushed=6, dropped=2, evicted=0, kept=4)


def test_bad_arguments_are_input_errors():
    with pytest.raises(InputError, match="max_events"):
        LiveEventBuffer(SIZE, max_duration_us=10, max_events=0)
    with pytest.raises(InputError, match="out_of_order"):
        LiveEventBuffer(SIZE, max_duration_us=10, max_events=5, out_of_order="ignore")
    buf = LiveEventBuffer(SIZE, max_duration_us=10, max_events=5)
    with pytest.raises(InputError, match="sensor_size"):
        buf.push(Events.from_arrays([0], [0], [1], [1], (8, 8)))
    with pytest.raises(InputError, match="max x=99"):
        buf.push(([99], [0], [1], [1]))
    with pytest.raises(InputError, match="got str"):
        buf.push("events")
    with pytest.raises(InputError, match="duration_us"):
        buf.latest(0)
    assert len(buf.latest(5)) == 0 and buf.latest(5).sensor_size == SIZE  # empty buffer reads are empty


def test_producers_and_a_reader_in_threads():
    """Four producers push interleaved packets (drop mode); a reader checks every copy it gets is whole."""
    num_producers, packets_each, per_packet = 4, 150, 40
    max_duration_us, max_events = 20_000, 3_000
    buf = LiveEventBuffer(SIZE, max_duration_us=max_duration_us, max_events=max_events, out_of_order="drop")
    nbytes = buf.nbytes
    accepted: list[list[Events]] = [[] for _ in range(num_producers)]
    clock = iter(range(10**9))  # next() on an iterator is atomic under the GIL
    clock_lock = threading.Lock()
    stop = threading.Event()
    problems: list[str] = []

    def encode(t_us: np.ndarray) -> Events:
        # every field is a function of t, so a torn or mixed-up read shows up as a mismatch
        return Events(x=(t_us % SIZE[0]).astype(np.uint16), y=((t_us // 7) % SIZE[1]).astype(np.uint16),
                      t_us=t_us, p=((t_us // 3) % 2).astype(np.int8), sensor_size=SIZE)

    def produce(producer: int) -> None:
        for _ in range(packets_each):
            with clock_lock:
                base = next(clock) * 100
            # unique times per producer (t % num_producers == producer) so the accepted set is unambiguous
            t_us = base + np.arange(per_packet, dtype=np.int64) * num_producers + producer
            ev = encode(t_us)
            n = buf.push(ev)
            accepted[producer].append(ev[len(ev) - n:])

    def read() -> None:
        while not stop.is_set():
            for ev in (buf.latest(5_000), buf.window(None, None)):
                whole = all(np.array_equal(a, b) for a, b in zip(fields(ev), fields(encode(ev.t_us))))
                if len(ev) and not (whole and np.all(np.diff(ev.t_us) >= 0)):
                    problems.append("torn or unsorted read")
                if len(ev) > max_events or (len(ev) and ev.t_us[-1] - ev.t_us[0] >= max_duration_us):
                    problems.append(f"read exceeds the bounds: {len(ev)} events")

    reader = threading.Thread(target=read)
    producers = [threading.Thread(target=produce, args=(i,)) for i in range(num_producers)]
    reader.start()
    for th in producers:
        th.start()
    for th in producers:
        th.join()
    stop.set()
    reader.join()

    assert not problems, problems[:3]
    stats = buf.stats
    total = num_producers * packets_each * per_packet
    assert stats.pushed == total and stats.pushed == stats.dropped + stats.evicted + stats.kept
    kept = np.sort(np.concatenate([ev.t_us for parts in accepted for ev in parts]))
    newest = int(kept[-1])
    expected = kept[kept >= newest + 1 - max_duration_us][-max_events:]
    np.testing.assert_array_equal(buf.window().t_us, expected)
    assert total - stats.dropped == kept.size
    assert buf.nbytes == nbytes
