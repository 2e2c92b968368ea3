"""The synthetic world: a procedural scene of moving shapes, deterministic from a seed.

A `Scene` is a small scene graph: a few objects (shape, colour, size) that each move in a straight
line (left / right / up / down, slow or fast) or stay put, over a textured background, seen by a
camera that may pan. From it come an RGB video, events (the video-to-event simulator run on a
higher-rate render) and questions with fixed answers (``evcascade.data.questions``), about the whole clip or a
window of it (motion as the window's frames show it: ``Scene.observed_motion``, ``MOTION_THRESHOLD_PX``).

Each modality carries what it carries in reality: events see motion and edges but no colour and,
with a still camera, nothing of static objects; one frame sees colour and shape but not motion;
the full video sees both. The questions are built so that each of these matters.

Coordinates are pixels, x to the right and y down, measured at t = 0 in the world (background)
frame; the camera's displacement is subtracted to get image positions. Times are microseconds.

>>> scene = sample_scene(seed=3)
>>> scene == sample_scene(seed=3), len(scene.objects) >= 1
(True, True)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Sequence

import numpy as np

from evcascade.data.render import render_frames
from evcascade.errors import InputError
from evcascade.events.container import Events
from evcascade.events.simulator import simulate
from evcascade.video import Video

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star")
COLOURS: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple", "orange")
SIZES: tuple[str, ...] = ("big", "small")
DIRECTIONS: tuple[str, ...] = ("left", "right", "up", "down")
SPEEDS: tuple[str, ...] = ("static", "slow", "fast")

# unit vectors in image coordinates (y grows downwards)
_DIRECTION_VECTORS: dict[str, tuple[float, float]] = {
    "left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0),
}
# object radius and speed as fractions of the frame's shorter side (speed per second): at 64 px a big
# object spans ~20 px (more than a 16-px ViT patch) and a fast one crosses ~29 px in 1.5 s.
_RADIUS_FRACTION: dict[str, float] = {"big": 0.16, "small": 0.10}
_SPEED_FRACTION: dict[str, float] = {"static": 0.0, "slow": 0.12, "fast": 0.30}
_CAMERA_SPEED_FRACTION = 0.12

MOTION_THRESHOLD_PX = 2.5
"""An object *moves* in a window when its centre travels at least this far between the window's first and last
frames. Those are the frames a model sees (``Video.sample`` keeps the first and the last), and the window's events
span at least as long, so below it neither shows motion worth naming: a fast object needs 150 ms between those
frames (2.9 px; 100 ms is 1.9 px), a slow one 350 ms (2.7 px; 300 ms is 2.3 px), and a window holding a single frame
shows none. With frames 50 ms apart the displacements are discrete; 2.5 px sits between neighbours of both speeds.
"""
FAR_THRESHOLD_PX = 16.0
"""A moving object travels *far* in a window (else *a little*) when it covers at least this many pixels (a patch of
the demo target). Over a whole default clip this is the world's speed (slow ~11 px, fast ~28 px); in a shorter
window two frames show how far, never how fast (nothing tells a model the window's length)."""
MIN_WINDOW_US = 50_000
"""Shortest window the world asks about (``sample_window_us``): one frame at 20 fps."""


@dataclass(frozen=True)
class WorldConfig:
    """How scenes are drawn and rendered; every field has a default that trains a tiny model in minutes."""

    width: int = 64
    """Frame width in pixels (also the event sensor width)."""
    height: int = 64
    """Frame height in pixels."""
    duration_us: int = 1_500_000
    """Length of a scene in microseconds."""
    fps: float = 20.0
    """Frame rate of the RGB video."""
    event_fps: float = 200.0
    """Rate of the render the event simulator sees; higher gives events finer timing."""
    min_objects: int = 1
    """Fewest objects in a scene."""
    max_objects: int = 3
    """Most objects in a scene (at most the number of shapes: shapes are unique within a scene)."""
    moving_prob: float = 0.7
    """Probability that an object moves; at least ``min_moving`` objects always move."""
    min_moving: int = 1
    """Fewest moving objects in a scene."""
    camera_motion_prob: float = 0.0
    """Probability that the camera pans (a global shift of the whole image)."""
    supersample: int = 4
    """Sub-pixel samples per pixel side when rendering, so that slow motion changes pixel values smoothly."""
    contrast_threshold: float = 0.2
    """Log-intensity change that fires an event in the simulator (ON and OFF alike; DSEC-like sensors ~0.2-0.3)."""
    shapes: tuple[str, ...] = SHAPES
    """Shapes to draw from."""
    colours: tuple[str, ...] = COLOURS
    """Colours to draw from."""

    def __post_init__(self) -> None:
        for name in ("width", "height", "duration_us", "supersample"):
            if int(getattr(self, name)) < 1:
                raise InputError(f"WorldConfig.{name} must be >= 1, got {getattr(self, name)}")
        if min(self.width, self.height) < 32:
            raise InputError(f"WorldConfig frames must be at least 32x32 pixels, got {self.width}x{self.height}")
        for name in ("fps", "event_fps", "contrast_threshold"):
            if not float(getattr(self, name)) > 0:
                raise InputError(f"WorldConfig.{name} must be > 0, got {getattr(self, name)}")
        if self.fps * self.duration_us / 1e6 < 1:
            raise InputError(f"WorldConfig: {self.duration_us} us at {self.fps} fps holds no frame")
        for name in ("moving_prob", "camera_motion_prob"):
            if not 0.0 <= float(getattr(self, name)) <= 1.0:
                raise InputError(f"WorldConfig.{name} must be in [0, 1], got {getattr(self, name)}")
        unknown = [s for s in self.shapes if s not in SHAPES] + [c for c in self.colours if c not in COLOURS]
        if unknown or not self.shapes or not self.colours:
            raise InputError(f"WorldConfig: unknown or empty shapes/colours {unknown}; known: {SHAPES}, {COLOURS}")
        if not 1 <= self.min_objects <= self.max_objects <= min(len(self.shapes), 4):
            raise InputError(
                f"WorldConfig needs 1 <= min_objects <= max_objects <= {min(len(self.shapes), 4)}, "
                f"got min_objects={self.min_objects}, max_objects={self.max_objects}"
            )
        if not 0 <= self.min_moving <= self.min_objects:
            raise InputError(f"WorldConfig.min_moving must be in [0, min_objects], got {self.min_moving}")
        object.__setattr__(self, "shapes", tuple(self.shapes))
        object.__setattr__(self, "colours", tuple(self.colours))

    def frame_times_us(self) -> np.ndarray:
        """Timestamps of the video frames, ``int64 [T]``: ``round(i * 1e6 / fps)`` inside the duration."""
        return _times_us(self.duration_us, self.fps)

    def event_render_times_us(self) -> np.ndarray:
        """Timestamps of the frames rendered for the event simulator, ``int64 [T_events]``."""
        return _times_us(self.duration_us, self.event_fps)


def window_frame_times_us(config: WorldConfig, window_us: tuple[int, int] | None = None) -> np.ndarray:
    """Timestamps of the video frames inside ``window_us = (start_us, end_us)`` (half-open, as ``Video.window``);
    None is the whole clip. Raises ``InputError`` for a window that holds no frame."""
    times_us = config.frame_times_us()
    if window_us is None:
        return times_us
    start_us, end_us = (int(t) for t in window_us)
    if not 0 <= start_us < end_us:
        raise InputError(f"a window needs 0 <= start_us < end_us, got ({start_us}, {end_us})")
    inside = times_us[(times_us >= start_us) & (times_us < end_us)]
    if len(inside) == 0:
        raise InputError(f"window [{start_us}, {end_us}) us holds no frame at {config.fps} fps")
    return inside


def sample_window_us(rng: np.random.Generator, config: WorldConfig, *, full_probability: float = 0.25,
                     min_us: int = MIN_WINDOW_US) -> tuple[int, int]:
    """A window ``(start_us, end_us)`` to ask about: the whole clip with ``full_probability``, else a length drawn
    log-uniformly in ``[min_us, duration]`` (as many 50-100 ms windows as 0.75-1.5 s ones) at a uniform start."""
    if rng.random() < full_probability:
        return 0, config.duration_us
    min_us = min(int(min_us), config.duration_us)  # a clip shorter than the shortest window: the whole clip
    length_us = int(np.exp(rng.uniform(np.log(min_us), np.log(config.duration_us))))
    start_us = int(rng.integers(0, config.duration_us - length_us + 1))
    return start_us, start_us + length_us


def _times_us(duration_us: int, fps: float) -> np.ndarray:
    times_us = np.rint(np.arange(int(np.ceil(duration_us * fps / 1e6)) + 1) * (1e6 / fps)).astype(np.int64)
    return times_us[times_us < duration_us]


@dataclass(frozen=True)
class SceneObject:
    """One object: what it looks like and how it moves (``direction`` is None for a static object)."""

    shape: str
    colour: str
    size: str
    radius_px: float
    x0_px: float
    y0_px: float
    direction: str | None = None
    speed: str = "static"

    def __post_init__(self) -> None:
        if self.shape not in SHAPES or self.colour not in COLOURS or self.size not in SIZES:
            raise InputError(f"unknown shape/colour/size {self.shape!r}/{self.colour!r}/{self.size!r}")
        if self.speed not in SPEEDS or (self.direction is None) != (self.speed == "static"):
            raise InputError(f"an object moves (direction in {DIRECTIONS}, speed slow/fast) or is static; "
                             f"got direction={self.direction!r}, speed={self.speed!r}")
        if self.direction is not None and self.direction not in DIRECTIONS:
            raise InputError(f"unknown direction {self.direction!r}; expected one of {DIRECTIONS}")

    @property
    def moving(self) -> bool:
        return self.direction is not None

    def velocity_px_s(self, frame_side_px: int) -> tuple[float, float]:
        """(vx, vy) in pixels per second for a frame whose shorter side is ``frame_side_px``."""
        if self.direction is None:
            return 0.0, 0.0
        speed_px_s = _SPEED_FRACTION[self.speed] * frame_side_px
        ux, uy = _DIRECTION_VECTORS[self.direction]
        return ux * speed_px_s, uy * speed_px_s


@dataclass(frozen=True)
class Background:
    """A smooth texture: base grey, a linear gradient and a few sinusoids, a function of world coordinates."""

    base_rgb: tuple[float, float, float]
    gradient_per_px: tuple[float, float]  # grey levels per pixel along x, y
    waves: tuple[tuple[float, float, float, float], ...] = ()  # (kx, ky rad/px, phase rad, amplitude grey levels)


@dataclass(frozen=True)
class Scene:
    """A scene graph: frame size, duration, objects in drawing order, background and camera pan."""

    width: int
    height: int
    duration_us: int
    objects: tuple[SceneObject, ...]
    background: Background
    camera_direction: str | None = None
    seed: int | None = None

    def __post_init__(self) -> None:
        shapes = [o.shape for o in self.objects]
        if len(set(shapes)) != len(shapes):
            raise InputError(f"shapes must be unique within a scene (questions name objects by shape), got {shapes}")
        if self.camera_direction is not None and self.camera_direction not in DIRECTIONS:
            raise InputError(f"unknown camera_direction {self.camera_direction!r}; expected one of {DIRECTIONS}")
        object.__setattr__(self, "objects", tuple(self.objects))

    @property
    def frame_side_px(self) -> int:
        return min(self.width, self.height)

    @property
    def moving_objects(self) -> tuple[SceneObject, ...]:
        return tuple(o for o in self.objects if o.moving)

    def camera_velocity_px_s(self) -> tuple[float, float]:
        if self.camera_direction is None:
            return 0.0, 0.0
        ux, uy = _DIRECTION_VECTORS[self.camera_direction]
        speed_px_s = _CAMERA_SPEED_FRACTION * self.frame_side_px
        return ux * speed_px_s, uy * speed_px_s

    def camera_offset_px(self, t_us: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """How far the camera has panned at each time, ``[T]`` x and y."""
        vx, vy = self.camera_velocity_px_s()
        t_s = np.asarray(t_us, dtype=np.float64) / 1e6
        return vx * t_s, vy * t_s

    def image_positions_px(self, obj: SceneObject, t_us: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Centre of ``obj`` in the image at each time, ``[T]`` x and y (world motion minus camera pan)."""
        vx, vy = obj.velocity_px_s(self.frame_side_px)
        cam_x, cam_y = self.camera_offset_px(t_us)
        t_s = np.asarray(t_us, dtype=np.float64) / 1e6
        return obj.x0_px + vx * t_s - cam_x, obj.y0_px + vy * t_s - cam_y

    def observed_motion(self, obj: SceneObject | None, frame_times_us: np.ndarray) -> tuple[str | None, str | None]:
        """What the frames at ``frame_times_us`` (a window's, in time order) show of ``obj``'s motion (``None``: the
        camera's): ``(direction, distance)``, ``(None, None)`` when its centre travels less than
        ``MOTION_THRESHOLD_PX`` between the first and the last frame, else distance ``"far"`` (at least
        ``FAR_THRESHOLD_PX``) or ``"little"``. Objects move in the world frame (the camera's pan is its own fact).

        >>> ball = SceneObject("circle", "red", "big", 10.0, 20.0, 30.0, direction="left", speed="fast")
        >>> scene = Scene(64, 64, 1_500_000, (ball,), Background((50.0, 50.0, 50.0), (0.0, 0.0)))
        >>> [scene.observed_motion(ball, np.array(t)) for t in ([0, 1_450_000], [0, 200_000], [0, 50_000], [0])]
        [('left', 'far'), ('left', 'little'), (None, None), (None, None)]
        """
        direction, speed = (obj.direction, obj.speed) if obj is not None else (self.camera_direction, "camera")
        if direction is None:
            return None, None
        speed_px_s = (_CAMERA_SPEED_FRACTION if obj is None else _SPEED_FRACTION[speed]) * self.frame_side_px
        times_us = np.asarray(frame_times_us, dtype=np.int64)
        distance_px = speed_px_s * float(times_us[-1] - times_us[0]) / 1e6
        if distance_px < MOTION_THRESHOLD_PX:
            return None, None
        return direction, ("far" if distance_px >= FAR_THRESHOLD_PX else "little")

    def to_dict(self) -> dict:
        """Plain JSON-ready data (``Scene.from_dict`` inverts it)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Scene":
        background = data["background"]
        return cls(
            width=int(data["width"]), height=int(data["height"]), duration_us=int(data["duration_us"]),
            objects=tuple(SceneObject(**o) for o in data["objects"]),
            background=Background(
                base_rgb=tuple(background["base_rgb"]), gradient_per_px=tuple(background["gradient_per_px"]),
                waves=tuple(tuple(w) for w in background["waves"]),
            ),
            camera_direction=data.get("camera_direction"), seed=data.get("seed"),
        )


# ---------------------------------------------------------------------------------------------- sampling
def sample_background(rng: np.random.Generator) -> Background:
    """A dark, low-contrast texture (luma <= ~90): every object colour's luma is >= 125, so every object
    edge is a log-contrast of >= ~0.27 and fires events at the default threshold."""
    grey = rng.uniform(35.0, 55.0)
    tint = rng.uniform(0.85, 1.15, size=3)
    waves = []
    for _ in range(int(rng.integers(2, 5))):
        period_px = rng.uniform(6.0, 20.0)
        angle = rng.uniform(0.0, np.pi)
        k = 2 * np.pi / period_px
        waves.append((float(k * np.cos(angle)), float(k * np.sin(angle)), float(rng.uniform(0, 2 * np.pi)),
                      float(rng.uniform(2.0, 5.0))))
    gradient = rng.uniform(-0.15, 0.15, size=2)
    return Background(tuple(float(grey * c) for c in tint), (float(gradient[0]), float(gradient[1])), tuple(waves))


def _fits(scene_w: int, scene_h: int, radius_px: float, xs: np.ndarray, ys: np.ndarray) -> bool:
    margin = radius_px + 1.0
    inside_x = xs.min() >= margin and xs.max() <= scene_w - margin
    return bool(inside_x and ys.min() >= margin and ys.max() <= scene_h - margin)


def sample_scene(seed: int, config: WorldConfig | None = None) -> Scene:
    """A random scene: objects that stay in view and never overlap for the whole duration."""
    config = config or WorldConfig()
    rng = np.random.default_rng(seed)
    side_px = min(config.width, config.height)
    camera_direction = None
    if rng.random() < config.camera_motion_prob:
        camera_direction = str(rng.choice(DIRECTIONS))
    num_objects = int(rng.integers(config.min_objects, config.max_objects + 1))
    shapes = rng.permutation(len(config.shapes))[:num_objects]
    colours = rng.permutation(len(config.colours))
    moving = rng.random(num_objects) < config.moving_prob
    moving[: config.min_moving] = True  # objects come in random shape order, so this biases nothing

    check_t_us = np.linspace(0, config.duration_us, 16)
    scene = Scene(config.width, config.height, config.duration_us, (), sample_background(rng), camera_direction, seed)
    placed: list[SceneObject] = []
    for i in range(num_objects):
        size = str(rng.choice(SIZES))
        direction = str(rng.choice(DIRECTIONS)) if moving[i] else None
        speed = str(rng.choice(("slow", "fast"))) if moving[i] else "static"
        radius_px = _RADIUS_FRACTION[size] * side_px
        for _ in range(200):  # rejection sampling; a seed always takes the same path
            candidate = SceneObject(
                shape=config.shapes[shapes[i]], colour=config.colours[colours[i % len(colours)]], size=size,
                radius_px=float(radius_px), x0_px=float(rng.uniform(0, config.width)),
                y0_px=float(rng.uniform(0, config.height)), direction=direction, speed=speed,
            )
            xs, ys = scene.image_positions_px(candidate, check_t_us)
            if not _fits(config.width, config.height, radius_px, xs, ys):
                continue
            if all(_apart(scene, candidate, other, check_t_us) for other in placed):
                placed.append(candidate)
                break
    if len(placed) < config.min_objects:  # only possible with crowded custom configs
        raise InputError(f"seed {seed}: could not place {config.min_objects} objects without overlap in "
                         f"{config.width}x{config.height}; use a larger frame or fewer objects")
    return replace(scene, objects=tuple(placed))


def _apart(scene: Scene, a: SceneObject, b: SceneObject, t_us: np.ndarray) -> bool:
    ax, ay = scene.image_positions_px(a, t_us)
    bx, by = scene.image_positions_px(b, t_us)
    return bool(np.min(np.hypot(ax - bx, ay - by)) > a.radius_px + b.radius_px + 2.0)


# ---------------------------------------------------------------------------------------------- samples
@dataclass(frozen=True, eq=False)
class WorldSample:
    """One rendered scene: the scene graph, its RGB video, its events, its caption and QA pairs."""

    scene: Scene
    video: Video
    events: Events
    caption: str
    qa: tuple = field(default=())  # tuple[QA, ...]


def render_sample(scene: Scene, config: WorldConfig | None = None, *, seed: int = 0) -> WorldSample:
    """Render ``scene``: video frames at ``config.fps``; events simulated from a ``config.event_fps`` render."""
    from evcascade.data.questions import caption, qa_pairs  # here: questions imports this module's vocabulary

    config = config or WorldConfig()
    if (scene.width, scene.height) != (config.width, config.height):
        raise InputError(f"scene is {scene.width}x{scene.height} but config renders {config.width}x{config.height}")
    frame_times_us = config.frame_times_us()
    video = Video(render_frames(scene, frame_times_us, config.supersample), frame_times_us)
    event_times_us = config.event_render_times_us()
    events = simulate(
        render_frames(scene, event_times_us, config.supersample), event_times_us,
        contrast_threshold_pos=config.contrast_threshold, contrast_threshold_neg=config.contrast_threshold, seed=seed,
    )
    return WorldSample(scene, video, events, caption(scene, fps=config.fps), tuple(qa_pairs(scene, fps=config.fps)))


def make_world_sample(seed: int, config: WorldConfig | None = None) -> WorldSample:
    """A random scene (``sample_scene``) rendered with its events and questions; same seed, same sample."""
    return render_sample(sample_scene(seed, config), config, seed=seed)


def scene_seeds(seed: int, num_scenes: int) -> list[int]:
    """Per-scene seeds derived from one set seed; scene i's seed does not depend on ``num_scenes``."""
    return [int(np.random.SeedSequence([seed, i]).generate_state(1)[0]) for i in range(num_scenes)]


__all__: Sequence[str] = (
    "WorldConfig", "SceneObject", "Background", "Scene", "WorldSample", "sample_scene", "sample_background",
    "render_sample", "make_world_sample", "scene_seeds", "window_frame_times_us", "sample_window_us",
    "MOTION_THRESHOLD_PX", "FAR_THRESHOLD_PX", "MIN_WINDOW_US", "SHAPES", "COLOURS", "SIZES", "DIRECTIONS", "SPEEDS",
)
