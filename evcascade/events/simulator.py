"""`simulate`: turn a video into the events an event camera would have seen (ESIM-style).

The model (Rebecq, Gehrig, Scaramuzza, "ESIM: an open event camera simulator", CoRL 2018; Gehrig
et al., "Video to events", CVPR 2020): every pixel tracks its log intensity ``L = log(I + log_eps)``
(I in [0, 1]) and a reference level ``L_ref``. Whenever ``L - L_ref`` reaches ``+C_on`` the pixel
emits an ON event and ``L_ref`` moves up by ``C_on`` (likewise OFF with ``-C_off``), so a large
change emits several events. Between samples ``L`` is linear in time, so each crossing gets its
own interpolated timestamp. Thresholds differ per pixel (normal spread ``threshold_sigma``),
fixed for the whole video, as real sensors' do.

Choices worth knowing:
- The reference always advances by every crossing; the refractory period only suppresses the
  *output* of a crossing less than ``refractory_period_us`` after that pixel's previous emitted
  event, so a pixel never lags the scene after a burst.
- ``substeps > 1`` makes intensity (not log intensity) linear between frames, approximated by
  that many log-linear pieces; ``substeps=1`` is log-linear between frames.
- Background noise is independent of the scene: a Poisson number of events at uniform times in
  ``[first, last frame)``, uniform pixels and random polarity; it does not touch ``L_ref``.
- Frames are grey via BT.601 luma ``(299 R + 587 G + 114 B) / 1000``, exact for grey RGB.

>>> frames = np.zeros((2, 1, 2), np.uint8); frames[1, 0, 1] = 255  # pixel (x=1, y=0) turns white
>>> ev = simulate(frames, [0, 1000], threshold_sigma=0.0, refractory_period_us=0)
>>> len(ev), set(ev.x.tolist()), set(ev.p.tolist()), ev.sensor_size
(34, {1}, {1}, (2, 1))
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Real

import numpy as np

from evcascade.errors import InputError
from evcascade.events.container import Events

_LUMA_WEIGHTS = np.array([299, 587, 114], dtype=np.int64)  # BT.601, per mille
_MIN_THRESHOLD = 0.01  # per-pixel thresholds drawn below this are clipped up (a 0 threshold never settles)


def simulate(
    frames,
    timestamps_us,
    *,
    contrast_threshold_pos: float = 0.2,
    contrast_threshold_neg: float = 0.2,
    threshold_sigma: float = 0.03,
    refractory_period_us: int = 100,
    substeps: int = 1,
    noise_rate_hz_per_pixel: float = 0.0,
    seed: int | None = None,
    log_eps: float = 1e-3,
) -> Events:
    """Events for ``frames`` (uint8 ``[T, H, W, 3]`` RGB or ``[T, H, W]`` grey) at ``timestamps_us`` (``[T]``, increasing).

    Returns a sorted `Events` with ``sensor_size = (W, H)``; events lie in
    ``(timestamps_us[0], timestamps_us[-1]]`` (noise in ``[timestamps_us[0], timestamps_us[-1])``).
    The same ``seed`` gives the same events; a static video gives none (without noise).
    """
    frames = _check_frames(frames)
    times_us = _check_timestamps(timestamps_us, frames.shape[0])
    _check_options(contrast_threshold_pos, contrast_threshold_neg, threshold_sigma, refractory_period_us,
                   substeps, noise_rate_hz_per_pixel, log_eps)
    num_frames, height, width = frames.shape[:3]
    rng = np.random.default_rng(seed)
    threshold_on = _draw_thresholds(rng, contrast_threshold_pos, threshold_sigma, (height, width))  # [H, W]
    threshold_off = _draw_thresholds(rng, contrast_threshold_neg, threshold_sigma, (height, width))  # [H, W]

    parts: list[tuple[np.ndarray, ...]] = []
    if num_frames:
        intensity = _luma(frames[0])  # [H, W] in [0, 1]
        state = _PixelState(
            reference=np.log(intensity + log_eps).ravel(),
            last_emit_us=np.full(height * width, -np.inf),
            threshold_on=threshold_on.ravel(),
            threshold_off=threshold_off.ravel(),
        )
        log_prev, t_prev = state.reference.copy(), float(times_us[0])
        for k in range(1, num_frames):  # a loop over frames, vectorised over pixels
            next_intensity = _luma(frames[k])
            for step in range(1, substeps + 1):
                fraction = step / substeps
                sample = (1.0 - fraction) * intensity + fraction * next_intensity  # [H, W] linear in intensity
                log_next = np.log(sample + log_eps).ravel()  # [H*W]
                t_next = times_us[k - 1] + fraction * (times_us[k] - times_us[k - 1])
                parts.append(_crossings(state, log_prev, log_next, t_prev, float(t_next), refractory_period_us, width))
                log_prev, t_prev = log_next, float(t_next)
            intensity = next_intensity
    if noise_rate_hz_per_pixel > 0 and num_frames > 1:
        parts.append(_noise(rng, noise_rate_hz_per_pixel, int(times_us[0]), int(times_us[-1]), width, height))
    return _assemble(parts, (width, height))


@dataclass
class _PixelState:
    """What each pixel remembers between samples (updated in place as the video plays)."""

    reference: np.ndarray  # [H*W] log intensity level of the last crossing
    last_emit_us: np.ndarray  # [H*W] float time of the last emitted event, -inf before the first
    threshold_on: np.ndarray  # [H*W]
    threshold_off: np.ndarray  # [H*W]


def _crossings(state: _PixelState, log_a, log_b, t_a: float, t_b: float, refractory_us: int, width: int):
    """Events for one sample interval where log intensity goes linearly from ``log_a`` to ``log_b``."""
    change = log_b - state.reference  # [H*W]
    n_on = np.floor(change / state.threshold_on)  # [H*W], >= 1 where ON crossings happen
    n_off = np.floor(-change / state.threshold_off)
    count = np.where(n_on > 0, n_on, np.where(n_off > 0, n_off, 0)).astype(np.int64)  # [H*W]
    count[log_b == log_a] = 0  # a still pixel cannot cross; guards float drift of the reference
    moving = np.flatnonzero(count)  # pixels that cross at least once
    if moving.size == 0:
        return None
    is_on = n_on[moving] > 0  # [M]: L is monotone within the interval, so one polarity per pixel
    step = np.where(is_on, state.threshold_on[moving], -state.threshold_off[moving])  # [M] signed
    start_level = state.reference[moving]
    slope_us = (t_b - t_a) / (log_b[moving] - log_a[moving])  # [M] us per unit of log intensity
    from_a = log_a[moving]
    xs, ys, ts, ps = [], [], [], []
    for rank in range(1, int(count[moving].max()) + 1):  # a loop over crossings per pixel, not events
        live = count[moving] >= rank
        pix = moving[live]
        level = start_level[live] + rank * step[live]  # [m] the rank-th level crossed
        t_cross = np.clip(t_a + (level - from_a[live]) * slope_us[live], t_a, t_b)  # float rounding stays inside
        t_us = np.rint(t_cross)
        emit = t_us - state.last_emit_us[pix] >= refractory_us
        pix, t_us = pix[emit], t_us[emit]
        state.last_emit_us[pix] = t_us
        xs.append(pix % width)
        ys.append(pix // width)
        ts.append(t_us.astype(np.int64))
        ps.append(is_on[live][emit])
    state.reference[moving] = start_level + count[moving] * step  # every crossing moves the reference
    x, y, t_us, p = (np.concatenate(a) for a in (xs, ys, ts, ps))
    order = np.argsort(t_us, kind="stable")
    return x[order], y[order], t_us[order], p[order]


def _noise(rng: np.random.Generator, rate_hz: float, start_us: int, end_us: int, width: int, height: int):
    """Uniform background activity: Poisson count, uniform times in [start_us, end_us), pixels, polarities."""
    expected = rate_hz * width * height * (end_us - start_us) * 1e-6
    n = int(rng.poisson(expected))
    t_us = np.sort(rng.integers(start_us, end_us, n))
    return rng.integers(0, width, n), rng.integers(0, height, n), t_us, rng.integers(0, 2, n).astype(bool)


def _assemble(parts, sensor_size: tuple[int, int]) -> Events:
    parts = [p for p in parts if p is not None]
    if not parts:
        return Events.empty(sensor_size)
    x, y, t_us, p = (np.concatenate([part[i] for part in parts]) for i in range(4))
    order = np.argsort(t_us, kind="stable")  # signal parts are already in order; noise is merged here
    return Events(
        x=x[order].astype(np.uint16), y=y[order].astype(np.uint16), t_us=t_us[order].astype(np.int64),
        p=p[order].astype(np.int8), sensor_size=sensor_size,
    )


def _luma(frame: np.ndarray) -> np.ndarray:
    """Intensity in [0, 1], float64 ``[H, W]``, from one grey ``[H, W]`` or RGB ``[H, W, 3]`` frame."""
    if frame.ndim == 2:
        return frame / 255.0
    return (frame @ _LUMA_WEIGHTS) / 255_000.0  # integer sum first: exactly the grey value for R = G = B


def _draw_thresholds(rng: np.random.Generator, mean: float, sigma: float, shape) -> np.ndarray:
    if sigma == 0:
        return np.full(shape, float(mean))
    return np.maximum(rng.normal(mean, sigma, shape), _MIN_THRESHOLD)


def _check_frames(frames) -> np.ndarray:
    arr = np.asarray(frames)
    if arr.dtype != np.uint8:
        raise InputError(f"frames must be uint8, got dtype {arr.dtype}")
    if not (arr.ndim == 3 or (arr.ndim == 4 and arr.shape[-1] == 3)):
        raise InputError(f"frames must be [T, H, W, 3] RGB or [T, H, W] grey, got shape {arr.shape}")
    if arr.shape[1] == 0 or arr.shape[2] == 0:
        raise InputError(f"frames must have a non-empty H and W, got shape {arr.shape}")
    return arr


def _check_timestamps(timestamps_us, num_frames: int) -> np.ndarray:
    ts = np.asarray(timestamps_us)
    if ts.ndim != 1 or ts.shape[0] != num_frames:
        raise InputError(f"timestamps_us must be 1-D with one entry per frame ({num_frames}), got shape {ts.shape}")
    if ts.size and not np.issubdtype(ts.dtype, np.integer):
        if not np.issubdtype(ts.dtype, np.floating) or not np.all(np.isfinite(ts)) or np.any(ts != np.rint(ts)):
            raise InputError(f"timestamps_us must be whole microseconds, got dtype {ts.dtype}")
    ts = ts.astype(np.int64)
    if ts.size > 1 and np.any(np.diff(ts) <= 0):
        bad = int(np.argmax(np.diff(ts) <= 0))
        raise InputError(
            f"timestamps_us must be strictly increasing, got t[{bad}]={ts[bad]} then t[{bad + 1}]={ts[bad + 1]}"
        )
    return ts


def _check_options(c_on, c_off, sigma, refractory_us, substeps, noise_hz, log_eps) -> None:
    for name, value in (("contrast_threshold_pos", c_on), ("contrast_threshold_neg", c_off), ("log_eps", log_eps)):
        if isinstance(value, bool) or not (isinstance(value, Real) and math.isfinite(value) and value > 0):
            raise InputError(f"{name} must be a positive number, got {value!r}")
    for name, value in (("threshold_sigma", sigma), ("refractory_period_us", refractory_us),
                        ("noise_rate_hz_per_pixel", noise_hz)):
        if isinstance(value, bool) or not (isinstance(value, Real) and math.isfinite(value) and value >= 0):
            raise InputError(f"{name} must be a number >= 0, got {value!r}")
    if isinstance(substeps, bool) or not isinstance(substeps, (int, np.integer)) or substeps < 1:
        raise InputError(f"substeps must be an integer >= 1, got {substeps!r}")
