"""Drafter presets: YAML files under ``evcascade/assets/presets/drafters/`` naming a real drafter, read into `DrafterPreset`.

A preset is configuration, not code: the hub id (or a local folder), the dtype, which visual prefix the
drafter uses (``none`` = text-only; ``events`` = L1; ``events+key_frame`` = L2; ``eventgpt``), its meaningful
vocabulary and the weight format. ``DrafterPreset.load()`` is the one place that turns it into a model.

>>> preset = load_drafter_preset("llama-68m")
>>> preset.hub_id, preset.visual_prefix, preset.dtype
('JackFram/llama-68m', 'none', 'float32')
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import torch

from evcascade.errors import InputError, InputFileNotFoundError

PRESET_DIR = Path(__file__).resolve().parents[1] / "assets" / "presets" / "drafters"
VISUAL_PREFIXES = ("none", "events", "events+key_frame", "eventgpt")
FORMATS = ("hf", "eventgpt")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class DrafterPreset:
    """One real drafter, as named in a ``evcascade/assets/presets/drafters/*.yaml`` file."""

    name: str
    hub_id: str
    """Hub id or local folder of the weights."""
    dtype: str = "float32"
    """float32 | bfloat16 | float16."""
    visual_prefix: str = "none"
    """none | events | events+key_frame | eventgpt: what the drafter sees besides text."""
    vocab_size: int | None = None
    """Meaningful vocabulary (the engine checks it against the target's text vocabulary)."""
    format: str = "hf"
    """hf: ``from_pretrained`` (a causal LM or a saved DraftLM); eventgpt: ``load_eventgpt`` key mapping."""
    clip_tower: str | None = None
    """For eventgpt: the CLIP checkpoint to take the tower from if the checkpoint lacks it."""
    notes: str = ""

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise InputError(f"preset {self.name!r}: dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        if self.visual_prefix not in VISUAL_PREFIXES:
            raise InputError(f"preset {self.name!r}: visual_prefix must be one of {VISUAL_PREFIXES}, got {self.visual_prefix!r}")
        if self.format not in FORMATS:
            raise InputError(f"preset {self.name!r}: format must be one of {FORMATS}, got {self.format!r}")
        if (self.format == "eventgpt") != (self.visual_prefix == "eventgpt"):
            raise InputError(f"preset {self.name!r}: format 'eventgpt' and visual_prefix 'eventgpt' go together")

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    def load(self, device: torch.device | str = "cpu"):
        """The drafter model: a causal LM / `DraftLM` (format hf), or `EventGPTModels` (format eventgpt)."""
        if self.format == "eventgpt":
            from evcascade.models.eventgpt import load_eventgpt

            return load_eventgpt(self.hub_id, clip_tower=self.clip_tower, dtype=self.torch_dtype, device=device)
        from transformers import AutoModelForCausalLM

        import evcascade.models  # noqa: F401  (registers DraftLM for saved evcascade drafters)

        return AutoModelForCausalLM.from_pretrained(self.hub_id, dtype=self.torch_dtype).to(device).eval()


def list_drafter_presets(folder: Path = PRESET_DIR) -> list[str]:
    """Names of the presets in ``folder``."""
    return sorted(p.stem for p in Path(folder).glob("*.yaml"))


def load_drafter_preset(name_or_path: str | Path, folder: Path = PRESET_DIR) -> DrafterPreset:
    """A preset by name (``llama-68m``) or by path to a YAML file."""
    import yaml

    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = Path(folder) / f"{name_or_path}.yaml"
        if not path.exists():
            raise InputError(f"unknown drafter preset {str(name_or_path)!r}; known: {list_drafter_presets(folder)}")
    if not path.exists():
        raise InputFileNotFoundError(f"no such preset file: {str(path)!r}")
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict):
        raise InputError(f"preset {str(path)!r} must be a YAML mapping, got {type(data).__name__}")
    known = {f.name for f in fields(DrafterPreset)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise InputError(f"preset {str(path)!r} has unknown fields {unknown}; known fields: {sorted(known)}")
    for required in ("name", "hub_id"):
        if required not in data:
            raise InputError(f"preset {str(path)!r} lacks the required field {required!r}")
    return DrafterPreset(**data)
