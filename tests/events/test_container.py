import numpy as np
import pytest

from evcascade import Events, InputError


def make(n=100, w=32, h=24, seed=0):
    rng = np.random.default_rng(seed)
    t = np.sort(rng.integers(0, 10_000, n))
    return Events.from_arrays(rng.integers(0, w, n), rng.integers(0, h, n), t, rng.integers(0, 2, n), (w, h))


def test_window_is_half_open_and_views():
    ev = Events.from_arrays([0, 1, 2, 3], [0, 0, 0, 0], [10, 20, 20, 30], [0, 1, 1, 0], (4, 1))
    assert ev.window(20, 30).t_us.tolist() == [20, 20]
    assert ev.window(None, 20).t_us.tolist() == [10]
    assert len(ev.window(31, 40)) == 0
    assert ev.window(0, 100).sensor_size == (4, 1)
    with pytest.raises(InputError, match="start_us=30"):
        ev.window(30, 30)


def test_polarity_forms_and_dtypes():
    ev = Events.from_arrays([0, 1], [0, 0], [1.0, 2.0], [-1, 1], (2, 1))
    assert ev.p.tolist() == [0, 1] and ev.p.dtype == np.int8
    assert ev.x.dtype == np.uint16 and ev.t_us.dtype == np.int64
    with pytest.raises(InputError, match="polarity"):
        Events.from_arrays([0], [0], [1], [3], (2, 1))


def test_bad_input_names_the_value():
    with pytest.raises(InputError, match="not sorted"):
        Events.from_arrays([0, 0], [0, 0], [5, 1], [0, 1], (1, 1))
    assert Events.from_arrays([0, 0], [0, 0], [5, 1], [0, 1], (1, 1), sort=True).t_us.tolist() == [1, 5]
    with pytest.raises(InputError, match="max x=9"):
        Events.from_arrays([9], [0], [1], [0], (4, 4))
    with pytest.raises(InputError, match="uint16"):
        Events(x=np.zeros(1, np.int32), y=np.zeros(1, np.uint16), t_us=np.zeros(1, np.int64), p=np.zeros(1, np.int8), sensor_size=(1, 1))


def test_concatenate_and_structured_round_trip():
    ev = make()
    a, b = ev.window(None, 5000), ev.window(5000, None)
    joined = a + b
    assert np.array_equal(joined.t_us, ev.t_us) and np.array_equal(joined.x, ev.x)
    with pytest.raises(InputError, match="before the previous"):
        b + a
    back = Events.from_structured(ev.to_structured(), ev.sensor_size)
    assert np.array_equal(back.p, ev.p) and np.array_equal(back.y, ev.y)


def test_to_torch_and_empty():
    ev = make()
    te = ev.to_torch()
    assert te.x.dtype.is_floating_point is False and te.t_us.shape[0] == len(ev)
    empty = Events.empty((8, 8))
    assert len(empty) == 0 and empty.start_us is None and len(empty.to_torch().x) == 0
