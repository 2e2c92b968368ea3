"""The video-to-event simulator: hand-computed crossings, polarity, scaling, determinism, validity."""

import numpy as np
import pytest

from evcascade.errors import InputError
from evcascade.events import Events, simulate

EPS = 1e-3  # simulate's default log_eps


def ramp_video(values, shape=(4, 5)):
    """Grey frames where pixel (x=2, y=1) takes ``values`` and every other pixel stays at 100."""
    frames = np.full((len(values), *shape), 100, np.uint8)
    frames[:, 1, 2] = values
    return frames


def assert_valid(ev: Events, sensor_size):
    assert ev.sensor_size == sensor_size
    assert ev.x.dtype == np.uint16 and ev.t_us.dtype == np.int64 and ev.p.dtype == np.int8
    assert np.all(np.diff(ev.t_us) >= 0)
    assert np.all(ev.x < sensor_size[0]) and np.all(ev.y < sensor_size[1]) and set(np.unique(ev.p)) <= {0, 1}


def test_static_video_gives_no_events():
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (16, 20, 3), dtype=np.uint8)
    ev = simulate(np.stack([frame] * 6), np.arange(6) * 10_000, seed=0)
    assert len(ev) == 0 and ev.sensor_size == (20, 16)


def test_brightening_pixel_gives_hand_computed_on_events():
    ev = simulate(ramp_video([50, 200]), [1_000, 11_000], threshold_sigma=0.0, refractory_period_us=0)
    delta = np.log(200 / 255 + EPS) - np.log(50 / 255 + EPS)
    expected_n = int(np.floor(delta / 0.2))
    assert len(ev) == expected_n >= 6
    assert set(ev.x.tolist()) == {2} and set(ev.y.tolist()) == {1} and set(ev.p.tolist()) == {1}
    # k-th crossing at the fraction k * C / delta of the way between the frames
    expected_t = np.rint(1_000 + np.arange(1, expected_n + 1) * 0.2 / delta * 10_000)
    np.testing.assert_array_equal(ev.t_us, expected_t.astype(np.int64))
    assert_valid(ev, (5, 4))


def test_darkening_pixel_gives_off_events_and_rgb_equals_grey():
    grey = ramp_video([220, 120, 30])
    ev = simulate(grey, [0, 5_000, 10_000], threshold_sigma=0.0, refractory_period_us=0)
    expected_n = int(np.floor((np.log(220 / 255 + EPS) - np.log(30 / 255 + EPS)) / 0.2))
    assert len(ev) == expected_n and set(ev.p.tolist()) == {0}
    rgb = simulate(np.repeat(grey[..., None], 3, axis=-1), [0, 5_000, 10_000], threshold_sigma=0.0, refractory_period_us=0)
    np.testing.assert_array_equal(rgb.t_us, ev.t_us)
    np.testing.assert_array_equal(rgb.p, ev.p)


def test_counts_scale_with_contrast_and_threshold():
    def count(values, threshold):
        return len(simulate(ramp_video(values), [0, 10_000], contrast_threshold_pos=threshold,
                            contrast_threshold_neg=threshold, threshold_sigma=0.0, refractory_period_us=0))

    assert count([40, 80], 0.2) < count([40, 160], 0.2) < count([40, 250], 0.2)
    small, large = count([40, 250], 0.1), count([40, 250], 0.4)
    assert abs(small - 4 * large) <= 4  # floor(d/C): quartering C quadruples the count, up to rounding
    # asymmetric thresholds: ON uses the positive one only
    ev = simulate(ramp_video([40, 250]), [0, 10_000], contrast_threshold_pos=0.5, contrast_threshold_neg=0.05,
                  threshold_sigma=0.0, refractory_period_us=0)
    assert len(ev) == int(np.floor((np.log(250 / 255 + EPS) - np.log(40 / 255 + EPS)) / 0.5))


def test_substeps_move_timestamps_but_not_counts():
    log_linear = simulate(ramp_video([20, 240]), [0, 10_000], threshold_sigma=0.0, refractory_period_us=0)
    intensity_linear = simulate(ramp_video([20, 240]), [0, 10_000], threshold_sigma=0.0, refractory_period_us=0,
                                substeps=8)
    assert len(intensity_linear) == len(log_linear)  # crossings depend only on the end points of a monotone ramp
    # intensity rising linearly makes log intensity rise fastest early: the crossings come earlier
    assert intensity_linear.t_us.mean() < log_linear.t_us.mean()
    assert np.all(np.diff(intensity_linear.t_us) >= 0)


def test_refractory_period_limits_the_rate_per_pixel():
    values = [10, 250, 10, 250]
    free = simulate(ramp_video(values), [0, 1_000, 2_000, 3_000], threshold_sigma=0.0, refractory_period_us=0)
    limited = simulate(ramp_video(values), [0, 1_000, 2_000, 3_000], threshold_sigma=0.0, refractory_period_us=300)
    assert len(limited) < len(free)
    assert np.all(np.diff(limited.t_us) >= 300)  # one moving pixel, so consecutive events are its own
    # the reference still follows the scene: every burst has events, all of its own polarity
    for lo, hi, polarity in ((0, 1_000, 1), (1_000, 2_000, 0), (2_000, 3_000, 1)):
        burst = limited.window(lo + 1, hi + 1)
        assert len(burst) >= 2 and set(burst.p.tolist()) == {polarity}


def test_seeded_runs_are_deterministic_and_noise_has_the_right_rate():
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 256, (4, 12, 16, 3), dtype=np.uint8)
    kwargs = dict(threshold_sigma=0.05, noise_rate_hz_per_pixel=50.0)
    a = simulate(frames, [0, 20_000, 40_000, 60_000], seed=3, **kwargs)
    b = simulate(frames, [0, 20_000, 40_000, 60_000], seed=3, **kwargs)
    c = simulate(frames, [0, 20_000, 40_000, 60_000], seed=4, **kwargs)
    for field in ("x", "y", "t_us", "p"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert len(a) != len(c) or not np.array_equal(a.t_us, c.t_us)
    assert_valid(a, (16, 12))
    static = np.repeat(frames[:1], 4, axis=0)
    noise = simulate(static, [0, 20_000, 40_000, 60_000], seed=0, noise_rate_hz_per_pixel=200.0)
    expected = 200.0 * 16 * 12 * 0.06  # 2304
    assert abs(len(noise) - expected) < 5 * np.sqrt(expected)
    assert 0.4 < noise.p.mean() < 0.6 and noise.t_us.min() >= 0 and noise.t_us.max() < 60_000
    assert_valid(noise, (16, 12))


def test_moving_edge_gives_both_polarities_in_time_order():
    frames = np.zeros((5, 8, 32), np.uint8)
    for k in range(5):
        frames[k, :, 4 * k: 4 * k + 8] = 255  # a white bar moving right
    ev = simulate(frames, np.arange(5) * 1_000, seed=0)
    assert_valid(ev, (32, 8))
    on_x, off_x = ev.x[ev.p == 1], ev.x[ev.p == 0]
    assert on_x.size and off_x.size
    assert on_x.mean() > off_x.mean()  # the leading edge brightens, the trailing edge darkens
    assert ev.t_us.min() > 0 and ev.t_us.max() <= 4_000


def test_bad_input_is_an_input_error():
    frames = ramp_video([10, 20, 30])
    with pytest.raises(InputError, match="strictly increasing"):
        simulate(frames, [0, 10, 10])
    with pytest.raises(InputError, match="one entry per frame"):
        simulate(frames, [0, 10])
    with pytest.raises(InputError, match="uint8"):
        simulate(frames.astype(np.float32), [0, 10, 20])
    with pytest.raises(InputError, match=r"\[T, H, W, 3\]"):
        simulate(np.zeros((2, 4, 4, 4), np.uint8), [0, 10])
    with pytest.raises(InputError, match="contrast_threshold_pos"):
        simulate(frames, [0, 10, 20], contrast_threshold_pos=0)
    with pytest.raises(InputError, match="substeps"):
        simulate(frames, [0, 10, 20], substeps=0)
    assert len(simulate(frames[:1], [5])) == 0
