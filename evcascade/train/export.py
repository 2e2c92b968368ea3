"""Export trained pieces as Hugging Face folders (``save_pretrained``) that the cascade loads.

::

    <export_dir>/
    ├── event_encoder/     EventEncoder            (align)
    ├── alignment/         AlignmentMLP            (align)
    ├── frame_refiner/     FrameRefiner            (align, when trained)
    ├── draft_lm/          DraftLM, LoRA merged    (distill)
    └── export.json        which pieces, from which stage and checkpoint, and the target cache's meta

Each folder loads with its class's ``from_pretrained`` or, since `evcascade.models` registers them, the Auto
classes (``AutoModelForCausalLM.from_pretrained(<export_dir>/draft_lm)`` gives the `DraftLM`).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

from evcascade.errors import InputError


def _record(out: Path, stage: str, pieces: list[str], meta: dict) -> None:
    path = out / "export.json"
    record = json.loads(path.read_text()) if path.is_file() else {"pieces": {}}
    for piece in pieces:
        record["pieces"][piece] = {"stage": stage, **meta}
    path.write_text(json.dumps(record, indent=1))


def export_align(module, out_dir) -> Path:
    """Write ``event_encoder/``, ``alignment/`` (and ``frame_refiner/``) of an `AlignModule` into ``out_dir``."""
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    pieces = {"event_encoder": module.encoder, "alignment": module.alignment}
    if module.refiner is not None:
        pieces["frame_refiner"] = module.refiner
    for name, model in pieces.items():
        model.save_pretrained(out / name)
    _record(out, "align", list(pieces), {"target_cache": str(module.hparams.target_cache), "step": int(module.global_step)})
    return out


def merged_draft_lm(module):
    """A copy of the module's `DraftLM` with any LoRA adapters merged into the weights (a plain DraftLM)."""
    draft = copy.deepcopy(module.draft_lm).cpu()
    if hasattr(draft.language_model, "merge_and_unload"):
        draft.language_model = draft.language_model.merge_and_unload()
    return draft


def export_distill(module, out_dir) -> Path:
    """Write ``draft_lm/`` (LoRA merged) of a `DistillModule` into ``out_dir``."""
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    merged_draft_lm(module).save_pretrained(out / "draft_lm")
    meta = {"target_cache": str(module.hparams.target_cache), "visual_source": module.hparams.visual_source,
            "step": int(module.global_step)}
    trainer = getattr(module, "_trainer", None)
    metrics = trainer.callback_metrics if trainer is not None else {}
    for name in ("val/acceptance", "val/top1"):  # the last validation's offline acceptance estimate, if any
        if name in metrics:
            meta[name.replace("/", "_")] = float(metrics[name])
    _record(out, "distill", ["draft_lm"], meta)
    return out


def export_checkpoint(stage: str, ckpt_path: str, out_dir: str) -> Path:
    """Export the pieces of a Lightning checkpoint of stage ``align`` or ``distill``."""
    from evcascade.errors import require_file

    require_file(ckpt_path)
    if stage == "align":
        from evcascade.train.align import AlignModule

        return export_align(AlignModule.load_from_checkpoint(ckpt_path, map_location="cpu"), out_dir)
    if stage == "distill":
        from evcascade.train.distill import DistillModule

        return export_distill(DistillModule.load_from_checkpoint(ckpt_path, map_location="cpu"), out_dir)
    raise InputError(f"stage must be 'align' or 'distill', got {stage!r}")
