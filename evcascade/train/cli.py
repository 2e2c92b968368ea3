"""``python -m evcascade.train align|distill|cache|export ...``: the training entry points.

- ``align`` / ``distill``: a `LightningCLI` over `AlignModule` / `DistillModule` and `ClipDataModule`;
  everything after the stage name is LightningCLI's (``--config configs/train/align_tiny.yaml``, ``fit`` by
  default, ``--ckpt_path last`` to resume, ``--trainer.strategy ddp`` ...). ``data.target_cache`` is linked
  to ``model.target_cache``, and ``data.task`` is the stage.
- ``cache``: fills a target cache (`build_target_cache`) from a YAML of ``cache_main``'s arguments;
  ``--shard I/N`` makes this process worker I of N (its part of the windows, merged by the last one to finish).
- ``export``: ``export --stage align --ckpt_path CKPT --out DIR`` writes the Hugging Face folders.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Sequence

from lightning.pytorch.cli import LightningCLI

from evcascade.errors import InputError

PROG = "python -m evcascade.train"
STAGES = {
    "align": "train the alignment MLP: event features -> the target's video-feature space (LightningCLI)",
    "distill": "distil a draft LM from the target's answers, with an event [+ key-frame] prefix (LightningCLI)",
    "cache": "compute (or resume) the target cache: video features and answers per window",
    "export": "write a checkpoint's trained pieces as Hugging Face folders (a cascade level)",
}
_LIGHTNING_SUBCOMMANDS = ("fit", "validate", "test", "predict")


class StageCLI(LightningCLI):
    """LightningCLI that feeds the data module's cache folder to the model."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.target_cache", "model.target_cache")


def run_stage(stage: str, args: Sequence[str], *, run: bool = True, prog: str = PROG) -> StageCLI:
    """Run LightningCLI for ``align`` or ``distill`` with ``args`` (``fit`` is implied when no subcommand is given;
    ``--help`` alone shows LightningCLI's subcommands, ``fit --help`` every option)."""
    from evcascade.train.datamodules import ClipDataModule

    if stage == "align":
        from evcascade.train.align import AlignModule as model_class
    elif stage == "distill":
        from evcascade.train.distill import DistillModule as model_class
    else:
        raise InputError(f"stage must be one of {tuple(STAGES)}, got {stage!r}")
    args = list(args)
    help_only = bool(args) and set(args) <= {"-h", "--help"}
    if run and not help_only and (not args or args[0] not in _LIGHTNING_SUBCOMMANDS):
        args = ["fit", *args]
    if help_only:
        pass
    elif run:
        args = [args[0], f"--data.task={stage}", *args[1:]]
    else:
        args = [f"--data.task={stage}", *args]
    with warnings.catch_warnings():
        # we hand LightningCLI the stage's own args after dispatching on sys.argv ourselves: its "args and
        # sys.argv both given" caution does not apply
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
        return StageCLI(model_class, ClipDataModule, args=args, run=run, seed_everything_default=0,
                        save_config_kwargs={"overwrite": True},
                        parser_kwargs={"prog": f"{prog} {stage}", "description": STAGES[stage]})


def cache_main(
    target: str,
    out: str,
    dsec_root: str | None = None,
    dsec_images_root: str | None = None,
    sequences: list[str] | None = None,
    manifest: str | None = None,
    prompts: list[str] | None = None,
    features: bool = True,
    answers: bool = True,
    event_window_us: int = 50_000,
    video_window_us: int | None = None,
    stride_frames: int = 1,
    max_new_tokens: int = 64,
    top_k: int = 32,
    dtype: str = "float16",
    shard_size: int = 64,
    device: str = "cpu",
    target_dtype: str = "float32",
    shard: str | None = None,
) -> dict[str, int]:
    """Compute (or resume computing) the target cache ``out`` over DSEC or a manifest.

    Args:
        target: a Video-LLaVA folder or hub id (``LanguageBind/Video-LLaVA-7B-hf``) with its tokenizer, or
            ``tiny:<seed>`` for the random tiny model of `evcascade.models.tiny` (tests, demos).
        out: the cache folder (created; resumed when it exists).
        prompts: questions asked about every window, besides each manifest entry's own.
        dtype: storage dtype of the video features (float16 halves the disk).
        target_dtype: dtype the target runs in (bfloat16 on GPUs that have it).
        shard: ``I/N``: this worker computes the I-th of N contiguous slices of the windows into ``out/part-I-of-N``
            (resumable per worker); the last worker to finish merges the parts into ``out``. ``env`` takes I/N
            from torchrun (``RANK``/``WORLD_SIZE``) or SLURM (``SLURM_PROCID``/``SLURM_NTASKS``), and
            ``device: cuda`` then means this worker's GPU (``LOCAL_RANK`` / ``SLURM_LOCALID``).
    """
    import os
    import time

    import torch

    from evcascade.models.alignment import target_video_layout
    from evcascade.train import target_cache as tc
    from evcascade.train.datasets import ClipDataset, dsec_windows, manifest_windows

    if (dsec_root is None) == (manifest is None):
        raise InputError("give exactly one data source: --dsec_root or --manifest")
    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if target_dtype not in dtypes:
        raise InputError(f"target_dtype must be one of {sorted(dtypes)}, got {target_dtype!r}")
    if target.startswith("tiny:"):
        from evcascade.models.tiny import tiny_tokenizer, tiny_video_llava

        tokenizer = tiny_tokenizer()
        model = tiny_video_llava(tokenizer, seed=int(target.split(":", 1)[1]), image_size=32, patch_size=16)
    else:
        from transformers import AutoTokenizer, VideoLlavaForConditionalGeneration

        tokenizer = AutoTokenizer.from_pretrained(target)
        model = VideoLlavaForConditionalGeneration.from_pretrained(target, dtype=dtypes[target_dtype])
    if shard == "env":
        shard = tc.shard_from_env()
        local_rank = os.environ.get("LOCAL_RANK", os.environ.get("SLURM_LOCALID"))
        if device == "cuda" and local_rank is not None:
            device = f"cuda:{int(local_rank)}"
    worker, workers = tc.parse_shard(shard) if shard is not None else (0, 1)
    model = model.to(device).eval()
    num_frames = target_video_layout(model.config)[0]
    if dsec_root is not None:
        windows = dsec_windows(dsec_root, images_root=dsec_images_root, sequences=sequences,
                               event_window_us=event_window_us, video_window_us=video_window_us or 400_000,
                               stride_frames=stride_frames)
    else:
        windows = manifest_windows(manifest, video_window_us=video_window_us)
    folder = out
    if shard is not None:
        if any(Path(out).expanduser().glob("shard-*.pt")):
            raise InputError(f"{out!r} holds a cache written without --shard; give the sharded run a new folder")
        windows = windows[tc.shard_slice(len(windows), worker, workers)]
        folder = tc.part_folder(out, worker, workers)
    dataset = ClipDataset(windows, num_frames=num_frames, event_window_us=event_window_us, load_events=False)
    started = time.perf_counter()
    counts = tc.build_target_cache(model, tokenizer, dataset, folder, target_name=target, prompts=prompts or (),
                                   features=features, answers=answers, max_new_tokens=max_new_tokens, top_k=top_k,
                                   dtype=dtype, shard_size=shard_size, progress=True)
    seconds = time.perf_counter() - started  # the windows' work, without loading the target
    rate = f"{seconds:.1f} s, {len(windows) / seconds:.2f} windows/s" if seconds > 0 else "0 s"
    if shard is None:
        print(f"target cache {out}: {counts} ({rate})")
        return counts
    tc.mark_part_complete(folder, {**counts, "windows": len(windows)})
    merged = tc.merge_parts(out)
    print(f"target cache {out}, part {worker}/{workers} ({len(windows)} windows): {counts} ({rate}); "
          + ("merged the parts" if merged else tc.parts_status(out)))
    return counts


def export_main(stage: str, ckpt_path: str, out: str) -> str:
    """Export the trained pieces of a checkpoint of ``stage`` (align | distill) to the folder ``out``."""
    from evcascade.train.export import export_checkpoint

    path = export_checkpoint(stage, ckpt_path, out)
    print(f"exported {stage} pieces to {path}")
    return str(path)


def usage(prog: str = PROG) -> str:
    """The top-level help: the stages, one line each."""
    lines = [f"usage: {prog} {{{','.join(STAGES)}}} [options]", "", "Training stages (each takes --help):"]
    lines += [f"  {name:<8} {text}" for name, text in STAGES.items()]
    lines += ["", f"e.g. {prog} align --config configs/train/align_tiny.yaml   (see train/README.md)"]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None, prog: str = PROG) -> int:
    """Dispatch on the stage name; user mistakes print their message and exit with code 2."""
    from jsonargparse import CLI

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] in (["-h"], ["--help"]):
        print(usage(prog))
        return 0
    if not argv or argv[0] not in STAGES:
        print(usage(prog).splitlines()[0], file=sys.stderr)
        given = f"unknown stage {argv[0]!r}; " if argv else ""
        print(f"{prog}: error: {given}choose a stage: {', '.join(STAGES)} (--help says what each does)",
              file=sys.stderr)
        return 2
    stage, rest = argv[0], argv[1:]
    try:
        if stage in ("cache", "export"):
            function = cache_main if stage == "cache" else export_main
            CLI(function, args=rest, as_positional=False, prog=f"{prog} {stage}", description=STAGES[stage])
        else:
            run_stage(stage, rest, prog=prog)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
