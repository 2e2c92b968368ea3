"""Render a synthetic-world `Scene` to RGB frames: antialiased flat shapes over a smooth texture.

Each pixel is the mean of ``supersample``² sub-pixel samples, so a shape moving a fraction of a
pixel still changes pixel values: the event simulator then sees slow motion as a steady trickle
of events instead of bursts at whole-pixel steps. The background is a function of world
coordinates, so a still camera gives a still background (no events) and a panning one moves it.

>>> from evcascade.data.world import sample_scene
>>> frames = render_frames(sample_scene(seed=0), np.array([0, 50_000]))
>>> frames.shape, frames.dtype
((2, 64, 64, 3), dtype('uint8'))
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # world imports this module, so the scene types are for annotations only
    from evcascade.data.world import Background, Scene

# Saturated and bright, so that every colour is well above the dark background in luminance
# (events see brightness, not colour) and the colours are easy to tell apart in a frame.
COLOUR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (255, 70, 70),
    "green": (60, 205, 75),
    "blue": (90, 140, 255),
    "yellow": (240, 225, 60),
    "purple": (185, 85, 235),
    "orange": (250, 150, 40),
}


def shape_mask(shape: str, dx: np.ndarray, dy: np.ndarray, radius_px: float) -> np.ndarray:
    """Which offsets ``(dx, dy)`` from an object's centre lie inside the shape (bool, same shape as dx)."""
    if shape == "circle":
        return dx * dx + dy * dy <= radius_px * radius_px
    if shape == "square":  # same area as the circle would look too small; 0.85 r keeps corners in view
        half = 0.85 * radius_px
        return (np.abs(dx) <= half) & (np.abs(dy) <= half)
    if shape == "triangle":  # upright, apex at the top (y down), base at 0.5 r below the centre
        inside_base = dy <= 0.5 * radius_px
        inside_sides = np.sqrt(3.0) * np.abs(dx) <= dy + radius_px
        return inside_base & inside_sides
    if shape == "star":  # five points, one pointing up: radius swings between 0.45 r and r
        angle = np.arctan2(dy, dx) + np.pi / 2
        swing = np.abs(((angle * 5 / (2 * np.pi)) % 1.0) - 0.5) * 2  # 1 at a point, 0 between points
        return np.hypot(dx, dy) <= radius_px * (0.45 + 0.55 * swing)
    raise ValueError(f"unknown shape {shape!r}")


def background_rgb(background: "Background", world_x: np.ndarray, world_y: np.ndarray) -> np.ndarray:
    """The texture at world coordinates, float ``[..., 3]`` in grey levels."""
    grey = background.gradient_per_px[0] * world_x + background.gradient_per_px[1] * world_y
    for kx, ky, phase, amplitude in background.waves:
        grey = grey + amplitude * np.sin(kx * world_x + ky * world_y + phase)
    return np.asarray(background.base_rgb)[None, None, :] + grey[..., None]  # [h, w, 3]


def _pool(canvas: np.ndarray, s: int) -> np.ndarray:
    """Mean over each pixel's s x s sub-pixel samples: ``[h*s, w*s, 3]`` float -> ``[h, w, 3]`` uint8."""
    h, w = canvas.shape[0] // s, canvas.shape[1] // s
    pooled = canvas.reshape(h, s, w, s, 3).mean(axis=(1, 3))  # [h, w, 3]
    return np.clip(np.rint(pooled), 0, 255).astype(np.uint8)


def render_frames(scene: "Scene", times_us: np.ndarray, supersample: int = 4) -> np.ndarray:
    """The scene at each time in ``times_us``: ``uint8 [T, H, W, 3]`` RGB, objects drawn in order.

    With a still camera only the pixels around objects are re-rendered per frame (the rest is the
    pooled background), which gives the same pixels as a full render several times faster.
    """
    times_us = np.asarray(times_us, dtype=np.int64)
    s = int(supersample)
    sub = (np.arange(s) + 0.5) / s
    # sub-pixel sample coordinates of the image, [H*s] and [W*s]
    ys = (np.arange(scene.height)[:, None] + sub[None, :]).reshape(-1)
    xs = (np.arange(scene.width)[:, None] + sub[None, :]).reshape(-1)
    cam_x, cam_y = scene.camera_offset_px(times_us)  # [T]
    positions = [scene.image_positions_px(obj, times_us) for obj in scene.objects]  # per object ([T], [T])
    colours = [np.asarray(COLOUR_RGB[obj.colour], dtype=np.float64) for obj in scene.objects]
    still = scene.camera_direction is None
    if still:  # a still camera sees the same texture in every frame
        background_super = background_rgb(scene.background, xs[None, :], ys[:, None])  # [H*s, W*s, 3]
        background = _pool(background_super, s)  # [H, W, 3]

    frames = np.empty((len(times_us), scene.height, scene.width, 3), dtype=np.uint8)
    for i in range(len(times_us)):
        if still:
            frames[i] = background
            regions = [_pixel_box(x[i], y[i], obj.radius_px, scene) for obj, (x, y) in zip(scene.objects, positions)]
        else:
            background_super = background_rgb(scene.background, xs[None, :] + cam_x[i], ys[:, None] + cam_y[i])
            regions = [(0, scene.height, 0, scene.width)]
        for y0, y1, x0, x1 in regions:  # overlapping regions are rendered twice, identically
            region_xs, region_ys = xs[x0 * s : x1 * s], ys[y0 * s : y1 * s]
            canvas = background_super[y0 * s : y1 * s, x0 * s : x1 * s].copy()  # [h*s, w*s, 3]
            for obj, (obj_x, obj_y), colour in zip(scene.objects, positions, colours):
                # only the sub-pixel rows/columns within the object's radius can be inside it
                lo_x, hi_x = np.searchsorted(region_xs, [obj_x[i] - obj.radius_px, obj_x[i] + obj.radius_px])
                lo_y, hi_y = np.searchsorted(region_ys, [obj_y[i] - obj.radius_px, obj_y[i] + obj.radius_px])
                inside = shape_mask(
                    obj.shape, region_xs[None, lo_x:hi_x] - obj_x[i], region_ys[lo_y:hi_y, None] - obj_y[i],
                    obj.radius_px,
                )  # [h', w'] bool
                canvas[lo_y:hi_y, lo_x:hi_x][inside] = colour
            frames[i, y0:y1, x0:x1] = _pool(canvas, s)
    return frames


def _pixel_box(x_px: float, y_px: float, radius_px: float, scene: "Scene") -> tuple[int, int, int, int]:
    """Pixel rows [y0, y1) and columns [x0, x1) that an object centred at (x, y) can touch, inside the image."""
    x0, x1 = int(np.floor(x_px - radius_px)) - 1, int(np.ceil(x_px + radius_px)) + 1
    y0, y1 = int(np.floor(y_px - radius_px)) - 1, int(np.ceil(y_px + radius_px)) + 1
    return max(0, y0), min(scene.height, y1), max(0, x0), min(scene.width, x1)
