"""Scene-graph supervision for the demo target: labels read off a `Scene`, and the linear heads that predict them.

The heads are training scaffolding (``evcascade.demo.target`` explains the recipe): they read the target's
video-tower features and its language model's states and are thrown away after training. Shape slots
follow ``SHAPES`` (shapes are unique in a scene, so a shape names an object).

>>> from evcascade.data.world import sample_scene
>>> labels = scene_labels([sample_scene(seed=3)], np.array([0, 1_000_000]), grid=4)
>>> labels.xy.shape, labels.cell_owner.shape
(torch.Size([1, 2, 4, 2]), torch.Size([1, 2, 16, 16]))
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from evcascade.data.world import COLOURS, DIRECTIONS, SHAPES, SIZES, SPEEDS, Scene

MOTIONS: tuple[str | None, ...] = (None, *DIRECTIONS)  # class 0 = static
MAX_OBJECTS = 4
IGNORE = -100  # cross-entropy's ignore index: absent objects and prompt tokens carry no label
DISTANCE_CLASS: dict[str | None, str] = {None: "static", "little": "slow", "far": "fast"}
"""``Scene.observed_motion``'s distance -> the speed slot it is trained in: over a whole clip they agree (slow objects
move a little, fast ones far), and in a shorter window the distance is what two frames can show."""

@dataclass(frozen=True)
class SceneLabels:
    """Scene-graph labels of a batch of clips; shape slots follow ``SHAPES``; ``IGNORE`` where undefined."""

    present: torch.Tensor  # long [B, S]  0/1
    colour: torch.Tensor  # long [B, S]  index into COLOURS
    size: torch.Tensor  # long [B, S]  index into SIZES
    motion: torch.Tensor  # long [B, S]  index into MOTIONS (0 = static): as the clip's frames show it
    speed: torch.Tensor  # long [B, S]  index into SPEEDS: distance shown (static / a little / far, DISTANCE_CLASS)
    count: torch.Tensor  # long [B]     number of objects - 1
    xy: torch.Tensor  # float [B, T, S, 2] centre in the image, in [0, 1]; NaN where absent
    cell_owner: torch.Tensor  # long [B, T, G*G, C*C] per patch, its C x C cells: 0 = background, else 1 + shape slot


def scene_labels(scenes: Sequence[Scene], frame_times_us: np.ndarray, grid: int, cells: int = 4) -> SceneLabels:
    """The labels of ``scenes`` seen at ``frame_times_us`` (``[T]`` for all, or ``[B, T]``: each clip's window)
    through a ``grid`` x ``grid`` patch grid. Motion and distance are what those frames show
    (``Scene.observed_motion``, the rule the questions answer by).

    ``cell_owner`` is a coarse segmentation: each patch split into ``cells`` x ``cells`` cells, each cell labelled
    with the shape that covers its centre. It makes patch features encode outlines, which is what tells a
    circle from a square or a star at a few pixels of radius.
    """
    from evcascade.data.render import shape_mask

    times_us = np.asarray(frame_times_us, dtype=np.int64)
    times_us = np.broadcast_to(times_us, (len(scenes), times_us.shape[-1]))  # [B, T]
    batch, frames, slots = len(scenes), times_us.shape[1], len(SHAPES)
    present = torch.zeros(batch, slots, dtype=torch.long)
    colour, size, motion, speed = (torch.full((batch, slots), IGNORE, dtype=torch.long) for _ in range(4))
    count = torch.zeros(batch, dtype=torch.long)
    xy = torch.full((batch, frames, slots, 2), float("nan"))
    side = grid * cells
    owner = np.zeros((batch, frames, side, side), dtype=np.int64)  # cell rows and columns over the whole image
    for b, scene in enumerate(scenes):
        cell_x = (np.arange(side) + 0.5) * scene.width / side  # [side] cell-centre x in pixels
        cell_y = (np.arange(side) + 0.5) * scene.height / side
        count[b] = len(scene.objects) - 1
        for obj in scene.objects:
            s = SHAPES.index(obj.shape)
            present[b, s] = 1
            colour[b, s], size[b, s] = COLOURS.index(obj.colour), SIZES.index(obj.size)
            direction, distance = scene.observed_motion(obj, times_us[b])
            motion[b, s], speed[b, s] = MOTIONS.index(direction), SPEEDS.index(DISTANCE_CLASS[distance])
            x_px, y_px = scene.image_positions_px(obj, times_us[b])  # [T], [T]
            xy[b, :, s, 0] = torch.as_tensor(x_px / scene.width, dtype=torch.float32)
            xy[b, :, s, 1] = torch.as_tensor(y_px / scene.height, dtype=torch.float32)
            for t in range(frames):
                inside = shape_mask(obj.shape, cell_x[None, :] - x_px[t], cell_y[:, None] - y_px[t], obj.radius_px)
                owner[b, t][inside] = 1 + s  # [side, side]
    # [B, T, G, C, G, C] -> [B, T, G, G, C, C]: group cells by patch, patches in row-major order as the ViT does
    owner = owner.reshape(batch, frames, grid, cells, grid, cells).transpose(0, 1, 2, 4, 3, 5)
    cell_owner = torch.from_numpy(np.ascontiguousarray(owner)).view(batch, frames, grid * grid, cells * cells)
    return SceneLabels(present, colour, size, motion, speed, count, xy, cell_owner)


class SceneGraphHeads(nn.Module):
    """Auxiliary linear heads that read the scene graph off the target's vision features and LM states.

    ``vision_slots``: CLS feature of each frame -> per shape slot (present 2, colour 6, size 2, x, y).
    ``vision_patch``: each patch feature -> for each of its ``cells`` x ``cells`` cells, which shape covers it
    (1 + 4 classes); and for the object covering most of the patch, its colour, size and centre (x, y). So
    every token of an object carries the whole object: whatever the LM pools over, it gets the position.
    ``frame``: LM state of each frame's last visual token -> per slot (present 2, x, y in that frame).
    ``scene``: LM state of the last visual token -> per slot (present 2, colour 6, size 2, motion 5, speed 3,
    shift from the first to the last frame x, y) and the count (4 classes).
    """

    _SLOT_VISION = (2, len(COLOURS), len(SIZES), 2)
    _SLOT_SCENE = (2, len(COLOURS), len(SIZES), len(MOTIONS), len(SPEEDS), 2)
    _PATCH_OBJECT = (len(COLOURS), len(SIZES), 2)

    def __init__(self, vision_hidden_size: int, text_hidden_size: int, cells: int = 4) -> None:
        super().__init__()
        slots = len(SHAPES)
        self.cells = cells
        self.vision_slots = nn.Linear(vision_hidden_size, slots * sum(self._SLOT_VISION))
        self.vision_patch = nn.Linear(vision_hidden_size, cells * cells * (1 + slots) + sum(self._PATCH_OBJECT))
        self.scene = nn.Linear(text_hidden_size, slots * sum(self._SLOT_SCENE) + MAX_OBJECTS)
        self.frame = nn.Linear(text_hidden_size, slots * 4)

    def vision_loss(self, vision_features: torch.Tensor, labels: SceneLabels) -> torch.Tensor:
        """Loss of the vision heads on ``vision_features [B, T, 1 + G*G, Dv]``."""
        batch, frames = vision_features.shape[:2]
        slots = len(SHAPES)
        out = self.vision_slots(vision_features[:, :, 0]).view(batch, frames, slots, -1)  # [B, T, S, 12]
        present_logits, colour_logits, size_logits, xy_pred = out.split(self._SLOT_VISION, dim=-1)

        def per_frame(target: torch.Tensor) -> torch.Tensor:  # [B, S] -> [B, T, S]
            return target[:, None].expand(batch, frames, slots)

        loss = F.cross_entropy(present_logits.flatten(0, 2), per_frame(labels.present).flatten())
        loss = loss + _masked_ce(colour_logits.flatten(0, 2), per_frame(labels.colour).flatten())
        loss = loss + _masked_ce(size_logits.flatten(0, 2), per_frame(labels.size).flatten())
        known = ~torch.isnan(labels.xy)  # [B, T, S, 2]
        if known.any():  # positions in units of patches, so an error of one patch costs ~1
            grid = math.isqrt(vision_features.shape[2] - 1)
            loss = loss + F.smooth_l1_loss(xy_pred[known] * grid, labels.xy[known] * grid)
        patch_out = self.vision_patch(vision_features[:, :, 1:])  # [B, T, G*G, C*C * (1 + S) + 10]
        num_cells = self.cells * self.cells
        cell_logits = patch_out[..., : num_cells * (1 + slots)].reshape(-1, 1 + slots)  # [B*T*G*G*C*C, 1 + S]
        loss = loss + F.cross_entropy(cell_logits, labels.cell_owner.flatten())
        colour_logits, size_logits, xy_pred = patch_out[..., num_cells * (1 + slots):].split(self._PATCH_OBJECT, -1)
        # the object covering most cells of each patch (slot index, -1 for none)
        counts = F.one_hot(labels.cell_owner, 1 + slots)[..., 1:].sum(-2)  # [B, T, G*G, S]
        owner = torch.where(counts.amax(-1) > 0, counts.argmax(-1), -1)  # [B, T, G*G]
        covered = owner >= 0
        if covered.any():
            b, t, _ = covered.nonzero(as_tuple=True)
            slot = owner[covered]
            loss = loss + F.cross_entropy(colour_logits[covered], labels.colour[b, slot])
            loss = loss + F.cross_entropy(size_logits[covered], labels.size[b, slot])
            grid = math.isqrt(vision_features.shape[2] - 1)
            loss = loss + F.smooth_l1_loss(xy_pred[covered] * grid, labels.xy[b, t, slot] * grid)
        return loss

    def scene_loss(self, frame_states: torch.Tensor, labels: SceneLabels) -> torch.Tensor:
        """Loss of the LM heads on ``frame_states [B, T, D]``, the LM states at each frame's last visual token.

        Every frame's state answers where each shape is in that frame (``frame`` head); the last one, which
        sees all frames, also answers the scene head. The frame-1 state sees only frame 1, so it learns a clean
        per-frame summary; the last state can then read the first frame's positions from one token at a
        fixed distance instead of telling frames apart in a pool of tokens.
        """
        batch, frames, slots = *frame_states.shape[:2], len(SHAPES)
        frame_out = self.frame(frame_states).view(batch, frames, slots, 4)  # [B, T, S, present 2 + xy 2]
        loss = F.cross_entropy(frame_out[..., :2].flatten(0, 2), labels.present[:, None].expand(-1, frames, -1).flatten())
        known = ~torch.isnan(labels.xy)  # [B, T, S, 2]
        if known.any():
            loss = loss + F.smooth_l1_loss(frame_out[..., 2:][known] * 10, labels.xy[known] * 10)
        summary_state = frame_states[:, -1]  # [B, D]
        out = self.scene(summary_state)  # [B, S * 20 + 4]
        per_slot = out[:, : slots * sum(self._SLOT_SCENE)].view(batch, slots, -1)  # [B, S, 18]
        present_logits, colour_logits, size_logits, motion_logits, speed_logits, shift_pred = per_slot.split(
            self._SLOT_SCENE, dim=-1)
        loss = loss + F.cross_entropy(present_logits.flatten(0, 1), labels.present.flatten())
        for logits, target in ((colour_logits, labels.colour), (size_logits, labels.size),
                               (motion_logits, labels.motion), (speed_logits, labels.speed)):
            loss = loss + _masked_ce(logits.flatten(0, 1), target.flatten())
        # the shift from the first to the last frame, in units of a tenth of the image: a graded signal that
        # rewards every bit of cross-frame comparison, where the motion class only rewards getting it right
        shift = (labels.xy[:, -1] - labels.xy[:, 0]) * 10  # [B, S, 2], NaN where absent
        known = ~torch.isnan(shift)
        if known.any():
            loss = loss + F.smooth_l1_loss(shift_pred[known], shift[known])
        return loss + F.cross_entropy(out[:, slots * sum(self._SLOT_SCENE):], labels.count)


def _masked_ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the labelled rows; 0 (with a gradient path) when none is labelled."""
    if not (target != IGNORE).any():
        return logits.sum() * 0.0
    return F.cross_entropy(logits, target, ignore_index=IGNORE)
