"""Representations against tonic (histogram, voxel grid, time surface) and EventGPT's drawing loop."""

import numpy as np
import pytest
import torch
import tonic.functional as tonic_f
from tonic.transforms import ToVoxelGrid

from evcascade.bench.events import eventgpt_images_loop
from evcascade.errors import InputError
from evcascade.events import Events, event_images, histogram, time_surface, voxel_grid

W, H = 32, 24


def random_events(n=3000, seed=0, t0_us=0, span_us=50_000, w=W, h=H) -> Events:
    rng = np.random.default_rng(seed)
    t_us = np.sort(rng.integers(t0_us, t0_us + span_us, n))
    return Events.from_arrays(rng.integers(0, w, n), rng.integers(0, h, n), t_us, rng.integers(0, 2, n), (w, h))


def snapshot(ev: Events) -> list[np.ndarray]:
    return [ev.x.copy(), ev.y.copy(), ev.t_us.copy(), ev.p.copy()]


def assert_unchanged(ev: Events, before: list[np.ndarray]) -> None:
    for now, then in zip((ev.x, ev.y, ev.t_us, ev.p), before):
        np.testing.assert_array_equal(now, then)


# ------------------------------------------------------------------ histogram
@pytest.mark.parametrize("seed", [0, 1])
def test_histogram_matches_tonic_to_frame(seed):
    ev = random_events(seed=seed)
    before = snapshot(ev)
    ours = histogram(ev)
    span_us = int(ev.t_us[-1] - ev.t_us[0]) + 1  # one tonic frame covering every event
    ref = tonic_f.to_frame_numpy(ev.to_structured(), (W, H, 2), time_window=span_us)
    assert ref.shape == (1, 2, H, W)
    assert ours.dtype == torch.float32 and ours.shape == (2, H, W)
    np.testing.assert_array_equal(ours.numpy(), ref[0].astype(np.float32))
    assert ours.sum().item() == len(ev)
    assert_unchanged(ev, before)


def test_histogram_hand_computed_and_empty():
    ev = Events.from_arrays([0, 0, 2, 2, 2], [1, 1, 0, 0, 0], [1, 2, 3, 4, 5], [1, 1, 0, 1, 0], (3, 2))
    out = histogram(ev)
    assert out[1, 1, 0] == 2 and out[0, 0, 2] == 2 and out[1, 0, 2] == 1 and out.sum() == 5
    empty = histogram(Events.empty((3, 2)))
    assert empty.shape == (2, 2, 3) and empty.abs().sum() == 0


# ------------------------------------------------------------------ voxel grid
@pytest.mark.parametrize("num_bins", [1, 3, 5])
@pytest.mark.parametrize("t0_us", [0, 1_700_000_000_000_000])  # relative and absolute (epoch) clocks
def test_voxel_grid_matches_tonic(num_bins, t0_us):
    ev = random_events(seed=num_bins, t0_us=t0_us)
    before = snapshot(ev)
    ours = voxel_grid(ev, num_bins)
    ref = ToVoxelGrid(sensor_size=(W, H, 2), n_time_bins=num_bins)(ev.to_structured())
    assert ref.shape == (num_bins, 1, H, W)
    assert ours.dtype == torch.float32 and ours.shape == (num_bins, H, W)
    np.testing.assert_allclose(ours.numpy(), ref[:, 0], atol=2e-5)
    assert_unchanged(ev, before)


def test_voxel_grid_hand_computed():
    # s = 4 * t / 100: t=0 -> bin 0; t=30 -> s=1.2 (0.8 to bin 1, 0.2 to bin 2); t=100 -> s=4, dropped
    ev = Events.from_arrays([0, 1, 2], [0, 0, 0], [0, 30, 100], [1, 0, 1], (3, 1))
    out = voxel_grid(ev, 4)[:, 0]
    expected = np.zeros((4, 3), np.float32)
    expected[0, 0] = 1.0
    expected[1, 1], expected[2, 1] = -0.8, -0.2
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-6)


def test_voxel_grid_degenerate_windows():
    assert voxel_grid(Events.empty((W, H)), 3).shape == (3, H, W)
    assert voxel_grid(Events.empty((W, H)), 3).abs().sum() == 0
    same_time = Events.from_arrays([0, 1, 1], [0, 0, 0], [7, 7, 7], [1, 0, 0], (2, 1))  # tonic divides by zero
    out = voxel_grid(same_time, 2)[:, 0]
    assert out.tolist() == [[1.0, -2.0], [0.0, 0.0]]
    with pytest.raises(InputError, match="num_bins"):
        voxel_grid(same_time, 0)


# ------------------------------------------------------------------ time surface
@pytest.mark.parametrize("tau_us", [2_000.0, 20_000.0])
def test_time_surface_matches_tonic(tau_us):
    ev = random_events(seed=3)
    before = snapshot(ev)
    end_us = int(ev.t_us[-1]) + 500
    ours = time_surface(ev, tau_us, end_us=end_us)
    dt = end_us - int(ev.t_us[0])  # one tonic slice [t_first, end_us), read at its end
    ref = tonic_f.to_timesurface_numpy(ev.to_structured(), (W, H, 2), dt=dt, tau=tau_us)
    assert ref.shape == (1, 2, H, W)
    assert ours.dtype == torch.float32 and ours.shape == (2, H, W)
    np.testing.assert_allclose(ours.numpy(), ref[0], rtol=1e-5, atol=1e-7)
    assert (ours > 0).sum() > 100  # the comparison is not between two all-zero surfaces
    assert_unchanged(ev, before)


def test_time_surface_window_end_and_empty():
    ev = Events.from_arrays([0, 0, 1], [0, 0, 0], [0, 100, 300], [1, 1, 0], (2, 1))
    out = time_surface(ev, 100.0, end_us=200)  # the event at t=300 is past the end: ignored
    assert out[1, 0, 0].item() == pytest.approx(np.exp(-1.0))
    assert out[0].abs().sum() == 0 and out[1, 0, 1] == 0
    default = time_surface(ev, 100.0)  # read at one past the newest event
    assert default[0, 0, 1].item() == pytest.approx(np.exp(-0.01))
    assert time_surface(ev, 100.0, end_us=0).abs().sum() == 0  # nothing before t=0
    assert time_surface(Events.empty((2, 1)), 100.0).shape == (2, 1, 2)
    for bad in (0, -5.0, float("nan")):
        with pytest.raises(InputError, match="tau_us"):
            time_surface(ev, bad)


# ------------------------------------------------------------------ event images
@pytest.mark.parametrize("n,num_images", [(3000, 5), (1234, 3), (4, 5), (1, 1)])
def test_event_images_match_eventgpt_loop(n, num_images):
    ev = random_events(n=n, seed=n, w=20, h=10)  # small sensor: many events per pixel, so order matters
    before = snapshot(ev)
    ours = event_images(ev, num_images)
    ref = eventgpt_images_loop(ev, num_images)
    assert ours.dtype == torch.uint8 and ours.shape == (num_images, 10, 20, 3)
    np.testing.assert_array_equal(ours.numpy(), ref)
    assert_unchanged(ev, before)


def test_event_images_latest_event_wins_and_colours():
    ev = Events.from_arrays([0, 0, 1, 1, 2], [0, 0, 0, 0, 0], [1, 2, 3, 4, 5], [1, 0, 0, 1, 1], (4, 1))
    img = event_images(ev, 1)[0, 0].tolist()
    assert img == [[0, 0, 255], [255, 0, 0], [255, 0, 0], [255, 255, 255]]
    white = event_images(Events.empty((4, 1)), 2)
    assert white.shape == (2, 1, 4, 3) and bool((white == 255).all())
    with pytest.raises(InputError, match="num_images"):
        event_images(ev, 0)


# ------------------------------------------------------------------ shared contract
def test_torch_events_input_gives_the_same_results():
    ev = random_events(seed=7)
    tev = ev.to_torch()
    before = [f.clone() for f in tev[:4]]
    torch.testing.assert_close(histogram(tev), histogram(ev))
    torch.testing.assert_close(voxel_grid(tev, 4), voxel_grid(ev, 4))
    torch.testing.assert_close(time_surface(tev, 5_000.0), time_surface(ev, 5_000.0))
    torch.testing.assert_close(time_surface(tev, 5_000.0, end_us=30_000), time_surface(ev, 5_000.0, end_us=30_000))
    torch.testing.assert_close(event_images(tev, 5), event_images(ev, 5))
    for now, then in zip(tev[:4], before):
        assert torch.equal(now, then)


def test_rejects_what_is_not_events():
    with pytest.raises(InputError, match="ndarray"):
        histogram(random_events().to_structured())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    ev = random_events(seed=11)
    for fn in (histogram, lambda e, **k: voxel_grid(e, 5, **k), lambda e, **k: time_surface(e, 5_000.0, **k)):
        torch.testing.assert_close(fn(ev, device="cuda").cpu(), fn(ev), atol=1e-5, rtol=1e-5)
    assert torch.equal(event_images(ev, 5, device="cuda").cpu(), event_images(ev, 5))
    assert torch.equal(histogram(ev.to_torch("cuda")).cpu(), histogram(ev))
