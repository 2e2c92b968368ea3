"""Frame preprocessing for CLIP-style vision towers: resize the shortest edge, centre crop, rescale, normalise.

``preprocess_frames`` calls the reference, Hugging Face's ``VideoLlavaImageProcessor`` (Pillow; it needs no
torchvision, unlike the stock Video-LLaVA video processor), so the verifier sees exactly the pixels Video-LLaVA
is given: every caller (verifier, key-frame encoder, event encoder, target cache) goes through it.

Why not a torch port: Pillow resizes in two 1-D passes with fixed-point coefficients and uint8 rounding between
them, and picks which axis goes first by the shape (tall frames go vertical first), so a port that always went
horizontal first was up to 0.35 apart after normalisation (708x245 frames). The port was not faster either:
one thread, 8 frames, 1080x1440 -> 224: reference 153 ms, port 270 ms (``docs/bench/preprocess_paths.py``).

>>> import numpy as np
>>> frames = np.zeros((8, 480, 640, 3), dtype=np.uint8)
>>> preprocess_frames(frames).shape
torch.Size([8, 3, 224, 224])
"""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass, fields
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from evcascade.errors import InputError, InputFileNotFoundError

CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
# PIL resampling enum values as stored in preprocessor_config.json
_PIL_RESAMPLE: dict[int, str] = {2: "bilinear", 3: "bicubic"}


def _as_pair(size: int | Sequence[int], name: str) -> tuple[int, int]:
    pair = (size, size) if isinstance(size, (int, np.integer)) else tuple(size)
    if len(pair) != 2 or not all(isinstance(s, (int, np.integer)) and s > 0 for s in pair):
        raise InputError(f"{name} must be a positive int or (height, width), got {size!r}")
    return int(pair[0]), int(pair[1])


def _as_frames_tensor(frames: Any, device: torch.device | str | None) -> torch.Tensor:
    """``frames`` (uint8 ``[T, H, W, 3]`` numpy or tensor) as a uint8 tensor on ``device``; never a view the caller owns
    that we later write to (every step below makes new tensors)."""
    if isinstance(frames, np.ndarray):
        frames = torch.from_numpy(np.ascontiguousarray(frames))
    if not isinstance(frames, torch.Tensor):
        raise InputError(f"frames must be a uint8 [T, H, W, 3] numpy array or tensor, got {type(frames).__name__}")
    if frames.dtype != torch.uint8:
        raise InputError(f"frames must be uint8 RGB [T, H, W, 3] with values 0..255, got dtype {frames.dtype}")
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise InputError(f"frames must be [T, H, W, 3], got shape {tuple(frames.shape)}")
    if frames.shape[1] == 0 or frames.shape[2] == 0:
        raise InputError(f"frames must have a positive height and width, got shape {tuple(frames.shape)}")
    return frames.to(device) if device is not None else frames


@lru_cache(maxsize=16)
def _reference_processor(size: int, crop_h: int, crop_w: int, mean: tuple, std: tuple, rescale_factor: float,
                         resample: str):
    """One ``VideoLlavaImageProcessor`` per setting (it holds no per-call state)."""
    from transformers import VideoLlavaImageProcessor

    pil_resample = {name: code for code, name in _PIL_RESAMPLE.items()}[resample]
    return VideoLlavaImageProcessor(
        size={"shortest_edge": size}, crop_size={"height": crop_h, "width": crop_w}, image_mean=list(mean),
        image_std=list(std), rescale_factor=rescale_factor, resample=pil_resample,
    )


def preprocess_frames(
    frames: Any,
    *,
    size: int = 224,
    crop_size: int | Sequence[int] = 224,
    mean: Sequence[float] = CLIP_MEAN,
    std: Sequence[float] = CLIP_STD,
    rescale_factor: float = 1 / 255,
    resample: str = "bicubic",
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """RGB frames ``uint8 [T, H, W, 3]`` -> float32 ``[T, 3, crop_h, crop_w]``, as ``VideoLlavaImageProcessor`` does.

    ``size`` is the target of the shortest edge; ``crop_size`` an int (square) or ``(height, width)``; the
    output lands on ``device`` (default: where the frames are; numpy frames go to CPU). T = 0 gives ``[0, 3, h, w]``.
    The work is the reference processor's, on CPU, frame by frame (see the module notes).

    >>> out = preprocess_frames(np.full((2, 64, 48, 3), 255, dtype=np.uint8), size=32, crop_size=32)
    >>> tuple(out.shape), round(float(out[0, 0, 0, 0]), 4)   # white: (1 - mean) / std
    ((2, 3, 32, 32), 1.9303)
    """
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size <= 0:
        raise InputError(f"size (the shortest edge) must be a positive int, got {size!r}")
    crop_h, crop_w = _as_pair(crop_size, "crop_size")
    if size < max(crop_h, crop_w):
        raise InputError(f"size (shortest edge {size}) must be >= crop_size {(crop_h, crop_w)}: no padding is done")
    if resample not in _PIL_RESAMPLE.values():
        raise InputError(f"resample must be one of {sorted(_PIL_RESAMPLE.values())}, got {resample!r}")
    if len(mean) != 3 or len(std) != 3 or any(s <= 0 for s in std):
        raise InputError(f"mean and std must hold 3 values (std > 0), got mean={tuple(mean)} std={tuple(std)}")

    frames = _as_frames_tensor(frames, device)
    out_device = frames.device
    if frames.shape[0] == 0:
        return torch.zeros(0, 3, crop_h, crop_w, device=out_device)
    processor = _reference_processor(int(size), crop_h, crop_w, tuple(float(m) for m in mean),
                                     tuple(float(s) for s in std), float(rescale_factor), resample)
    frames_np = frames.cpu().numpy()  # [T, H, W, 3] uint8
    # channels_last stated, not inferred: HF guesses the layout from the shape, and a 3-pixel-high frame fools it
    options = {"return_tensors": "np", "input_data_format": "channels_last"}
    if "return_legacy_image_output" in inspect.signature(processor.preprocess).parameters:
        options["return_legacy_image_output"] = False  # 5.2x: the old key warns; later versions drop the switch
    batch = processor.preprocess(list(frames_np), **options)
    out = batch["pixel_values"] if "pixel_values" in batch else batch["pixel_values_images"]  # [T, 3, crop_h, crop_w]
    return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32)).to(out_device)


@dataclass(frozen=True)
class PreprocessConfig:
    """Frame preprocessing settings of one checkpoint; calling it runs ``preprocess_frames`` with them."""

    size: int = 224
    """Target length of the shortest edge before cropping."""
    crop_size: tuple[int, int] = (224, 224)
    """``(height, width)`` of the centre crop; the vision tower's input size."""
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD
    rescale_factor: float = 1 / 255
    resample: str = "bicubic"

    def __post_init__(self) -> None:
        object.__setattr__(self, "crop_size", _as_pair(self.crop_size, "crop_size"))
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        # validate once, here, with the same checks the function applies
        preprocess_frames(np.zeros((0, 1, 1, 3), dtype=np.uint8), **self._kwargs())

    def _kwargs(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def __call__(self, frames: Any, device: torch.device | str | None = None) -> torch.Tensor:
        return preprocess_frames(frames, device=device, **self._kwargs())

    @classmethod
    def for_model(cls, model_config: Any) -> "PreprocessConfig":
        """CLIP defaults sized for a model's vision tower (``config.vision_config.image_size``)."""
        vision = getattr(model_config, "vision_config", model_config)
        image_size = int(vision.image_size)
        return cls(size=image_size, crop_size=(image_size, image_size))

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "PreprocessConfig":
        """Read a Hugging Face ``preprocessor_config.json`` dict (CLIP / VideoLlava image processor keys)."""
        skipped = [step for step in ("do_resize", "do_center_crop", "do_rescale", "do_normalize")
                   if values.get(step, True) is False]
        if skipped:
            raise InputError(f"preprocessor config turns off {skipped}; only the full CLIP recipe is supported")
        try:
            size = values.get("size", 224)
            if isinstance(size, dict):
                size = size["shortest_edge"] if "shortest_edge" in size else min(size["height"], size["width"])
            crop = values.get("crop_size", size)
            if isinstance(crop, dict):
                crop = (crop["height"], crop["width"])
            resample = values.get("resample", 3)
            if resample not in _PIL_RESAMPLE:
                raise InputError(f"preprocessor resample={resample!r} is not supported; expected one of "
                                 f"{sorted(_PIL_RESAMPLE)} (PIL bilinear / bicubic)")
            return cls(size=int(size), crop_size=crop, mean=tuple(values.get("image_mean", CLIP_MEAN)),
                       std=tuple(values.get("image_std", CLIP_STD)),
                       rescale_factor=float(values.get("rescale_factor", 1 / 255)), resample=_PIL_RESAMPLE[resample])
        except (KeyError, TypeError) as error:
            raise InputError(f"unreadable preprocessor config {values!r}: {error!r}") from error


def preprocessor_config_from(source: str | Path | dict, model_config: Any = None) -> PreprocessConfig:
    """Preprocessing settings from a checkpoint: a folder or hub id with ``preprocessor_config.json``, the json
    file itself, or its dict. Without one, CLIP defaults sized for ``model_config``'s vision tower (or 224).

    >>> preprocessor_config_from({"size": {"shortest_edge": 336}, "crop_size": {"height": 336, "width": 336}}).crop_size
    (336, 336)
    """
    if isinstance(source, dict):
        return PreprocessConfig.from_dict(source)
    path = Path(source).expanduser()
    json_path: Path | None = None
    if path.is_file():
        json_path = path
    elif path.is_dir():
        json_path = path / "preprocessor_config.json" if (path / "preprocessor_config.json").is_file() else None
    elif str(source).startswith((".", "/", "~")) or str(source).endswith(".json"):
        raise InputFileNotFoundError(f"no such checkpoint folder or preprocessor config: {str(source)!r}")
    else:  # a hub id: use the local Hugging Face cache (or the hub when online)
        try:
            from transformers.utils import cached_file

            found = cached_file(str(source), "preprocessor_config.json", _raise_exceptions_for_missing_entries=False)
            json_path = Path(found) if found else None
        except OSError:
            json_path = None
    if json_path is not None:
        try:
            values = json.loads(json_path.read_text())
        except json.JSONDecodeError as error:
            raise InputError(f"{str(json_path)!r} is not valid JSON: {error}") from error
        return PreprocessConfig.from_dict(values)
    return PreprocessConfig.for_model(model_config) if model_config is not None else PreprocessConfig()
