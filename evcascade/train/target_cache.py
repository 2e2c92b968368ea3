"""The target's expensive outputs, computed once and kept on disk: video features, greedy answers, top-k logits.

::

    <cache>/
    ├── meta.json            what made the cache: target, feature layer, top_k, layout (T, grid, D), dtype
    ├── target_config/       the target's config.json (alignment is sized from it)
    ├── index.json           key -> {shard, kind, clip, prompt}; rewritten (atomically) after every shard
    └── shard-00000.pt ...   {key: {name: tensor}}, written to a temporary name and renamed into place

Keys: a clip's window key (``seq/ts``, a manifest id) holds ``video_features [T, 1 + P, D]``, the target video
tower's ``hidden_states[vision_feature_layer]`` before the projector; ``answer_key(clip, prompt)`` holds
``prompt_ids [Lp]`` (the drafter's view of the templated prompt, placeholders removed), ``answer_ids [La]`` (the
target's greedy answer, EOS included when reached) and ``topk_ids`` / ``topk_logits [La, K]`` (its raw logits).

Resumable: a run that is killed loses at most the shard it was filling; the next run skips every key the index
holds. A cache refuses to mix targets: reopening it with a different target, layer or top_k is an error.

Several workers (``python -m evcascade.train cache --shard I/N``, one per GPU or node) each fill a part of their
own, ``<cache>/part-I-of-N/`` (the layout above, resumable the same way), over a contiguous slice of the windows
(`shard_slice`); each part ends with ``complete.json``. When the last part completes, ``merge_parts`` writes the
cache's own ``meta.json``, ``target_config/`` and ``index.json`` (the parts' indexes in part order, shard paths
``part-I-of-N/shard-*.pt``) and ``parts.json``: the merged cache reads exactly like one written by a single worker,
entries in the same order.
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any, Iterable

import torch

from evcascade.errors import InputError, InputFileNotFoundError

CACHE_VERSION = 1
_MUST_MATCH = ("version", "target", "feature_layer", "top_k", "layout")


def answer_key(clip_key: str, prompt: str) -> str:
    """The cache key of the target's answer to ``prompt`` about clip ``clip_key``.

    >>> answer_key("zurich_city_00_a/123", "what is moving ?")
    'zurich_city_00_a/123\\tq=what is moving ?'
    """
    return f"{clip_key}\tq={prompt}"


def _write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


DEFAULT_MEMORY_BYTES = 4 << 30


def _nbytes(shard: dict[str, dict[str, torch.Tensor]]) -> int:
    return sum(t.numel() * t.element_size() for entry in shard.values() for t in entry.values())


class TargetCache:
    """Read side of a cache folder: ``meta``, ``keys(kind)``, ``get(key)``.

    Loaded shards stay in memory, least recently used first out, up to ``memory_bytes`` of tensors (at least
    one shard): training reads keys in shuffled order, so a cache that fits stays loaded and every shard is
    read once, where keeping only the latest shard or two reloads a shard for nearly every sample.
    """

    def __init__(self, folder, *, memory_bytes: int = DEFAULT_MEMORY_BYTES):
        self.memory_bytes = int(memory_bytes)
        self._loaded_bytes: dict[str, int] = {}
        self.folder = Path(folder).expanduser()
        meta_path, index_path = self.folder / "meta.json", self.folder / "index.json"
        for path in (meta_path, index_path):
            if not path.is_file():
                parts = sorted(p.name for p in self.folder.glob("part-*-of-*") if p.is_dir())
                if parts:
                    raise InputFileNotFoundError(
                        f"{str(self.folder)!r} holds the parts {parts} of a sharded target cache but no merged index: "
                        f"{parts_status(self.folder)}")
                raise InputFileNotFoundError(
                    f"{str(self.folder)!r} is not a target cache (no {path.name}); build one with "
                    "`python -m evcascade.train cache --config ...`"
                )
        self.meta = json.loads(meta_path.read_text())
        self.index: dict[str, dict] = json.loads(index_path.read_text())["entries"]
        self._shards: OrderedDict[str, dict] = OrderedDict()

    def __contains__(self, key: str) -> bool:
        return key in self.index

    def __len__(self) -> int:
        return len(self.index)

    def keys(self, kind: str | None = None) -> list[str]:
        """Keys in insertion order, optionally only ``"features"`` or ``"answer"`` entries."""
        return [k for k, v in self.index.items() if kind is None or v["kind"] == kind]

    def answers_of(self, clip_key: str) -> list[str]:
        """Answer keys of one clip, in insertion order."""
        return [k for k, v in self.index.items() if v["kind"] == "answer" and v["clip"] == clip_key]

    @property
    def target_config(self):
        """The target's config (a ``PreTrainedConfig``), as saved when the cache was built."""
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(self.folder / "target_config")

    def shard_of(self, key: str) -> str:
        """The shard file (relative to the folder) that holds ``key``."""
        return self.index[key]["shard"]

    def shard_bytes(self, shard: str) -> int:
        """Size on disk of one shard (about its size in memory: tensors are stored uncompressed)."""
        return (self.folder / shard).stat().st_size

    def get(self, key: str) -> dict[str, torch.Tensor]:
        """The tensors stored under ``key``; a missing key names the cache and says how to fill it."""
        entry = self.index.get(key)
        if entry is None:
            raise InputError(f"{key!r} is not in the target cache {str(self.folder)!r} ({len(self)} entries); "
                             "rebuild the cache over the same data (it resumes and adds what is missing)")
        shard = self._shards.get(entry["shard"])
        if shard is None:
            shard = torch.load(self.folder / entry["shard"], map_location="cpu", weights_only=True)
            self._shards[entry["shard"]] = shard
            self._loaded_bytes[entry["shard"]] = _nbytes(shard)
            while len(self._shards) > 1 and sum(self._loaded_bytes.values()) > self.memory_bytes:
                oldest, _ = self._shards.popitem(last=False)
                del self._loaded_bytes[oldest]
        else:
            self._shards.move_to_end(entry["shard"])
        return shard[key]


class TargetCacheWriter:
    """Write side: ``put(key, tensors)`` buffers, every ``shard_size`` entries a shard is written and indexed."""

    def __init__(self, folder, meta: dict, *, target_config=None, shard_size: int = 64):
        if isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size < 1:
            raise InputError(f"shard_size must be an int >= 1, got {shard_size!r}")
        self.folder = Path(folder).expanduser()
        self.folder.mkdir(parents=True, exist_ok=True)
        self.shard_size = shard_size
        self.meta = {"version": CACHE_VERSION, **meta}
        meta_path = self.folder / "meta.json"
        if meta_path.is_file():
            old = json.loads(meta_path.read_text())
            clash = {k: (old.get(k), self.meta.get(k)) for k in _MUST_MATCH if old.get(k) != self.meta.get(k)}
            if clash:
                raise InputError(f"{str(self.folder)!r} holds a cache of another target or setting "
                                 f"(stored vs now: {clash}); use a new folder")
        else:
            _write_json_atomic(meta_path, self.meta)
        if target_config is not None and not (self.folder / "target_config").is_dir():
            target_config.save_pretrained(self.folder / "target_config")
        index_path = self.folder / "index.json"
        self.index: dict[str, dict] = json.loads(index_path.read_text())["entries"] if index_path.is_file() else {}
        self._buffer: dict[str, dict[str, torch.Tensor]] = {}
        self._buffer_info: dict[str, dict] = {}
        shards = sorted(self.folder.glob("shard-*.pt"))
        self._next_shard = 1 + max((int(p.stem.split("-")[1]) for p in shards), default=-1)

    def __contains__(self, key: str) -> bool:
        return key in self.index or key in self._buffer

    def put(self, key: str, tensors: dict[str, torch.Tensor], *, kind: str, clip: str, prompt: str | None = None) -> None:
        """Store ``tensors`` (copied to CPU) under ``key``; flushes a shard when the buffer is full."""
        if key in self:
            raise InputError(f"{key!r} is already in the target cache {str(self.folder)!r}")
        self._buffer[key] = {name: t.detach().to("cpu").clone().contiguous() for name, t in tensors.items()}
        self._buffer_info[key] = {"kind": kind, "clip": clip, "prompt": prompt}
        if len(self._buffer) >= self.shard_size:
            self.flush()

    def flush(self) -> None:
        """Write the buffered entries as one shard, then the index that points at it."""
        if not self._buffer:
            return
        name = f"shard-{self._next_shard:05d}.pt"
        tmp = self.folder / f".{name}.{os.getpid()}.tmp"
        torch.save(self._buffer, tmp)
        os.replace(tmp, self.folder / name)
        for key, info in self._buffer_info.items():
            self.index[key] = {"shard": name, **info}
        _write_json_atomic(self.folder / "index.json", {"entries": self.index})
        self._next_shard += 1
        self._buffer, self._buffer_info = {}, {}

    def __enter__(self) -> "TargetCacheWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.flush()


# ---------------------------------------------------------------------------------------------- workers
def parse_shard(spec: str) -> tuple[int, int]:
    """``"I/N"`` -> ``(I, N)`` with ``0 <= I < N``; a clear error otherwise.

    >>> parse_shard("1/4")
    (1, 4)
    """
    try:
        index, count = (int(part) for part in str(spec).split("/"))
    except ValueError:
        raise InputError(f"shard must be I/N (worker I of N, counting from 0), got {spec!r}") from None
    if count < 1 or not 0 <= index < count:
        raise InputError(f"shard must be I/N with 0 <= I < N, got {spec!r}")
    return index, count


def shard_slice(num_items: int, index: int, count: int) -> slice:
    """Worker ``index`` of ``count``'s contiguous slice of ``num_items`` (sizes differ by at most one).

    >>> [shard_slice(5, i, 2) for i in range(2)]
    [slice(0, 3, None), slice(3, 5, None)]
    """
    base, extra = divmod(num_items, count)
    start = index * base + min(index, extra)
    return slice(start, start + base + (index < extra))


def part_folder(folder, index: int, count: int) -> Path:
    """Where worker ``index`` of ``count`` writes its part of the cache ``folder``."""
    return Path(folder).expanduser() / f"part-{index}-of-{count}"


def parts_status(folder) -> str:
    """One line on which parts of a sharded cache are complete, and which to (re)run."""
    folder = Path(folder).expanduser()
    counts = {int(p.name.rsplit("-", 1)[1]) for p in folder.glob("part-*-of-*") if p.is_dir()}
    if len(counts) != 1:
        return f"parts of different worker counts {sorted(counts)}: use one --shard I/N split per cache folder"
    count = counts.pop()
    missing = [i for i in range(count) if not (part_folder(folder, i, count) / "complete.json").is_file()]
    if missing:
        return f"parts {missing} of {count} are not complete; run `cache --shard I/{count}` for I in {missing}"
    return f"all {count} parts complete"


def merge_parts(folder) -> bool:
    """Merge the complete parts of ``folder`` into its own index; False (nothing written) while any is missing."""
    import shutil

    folder = Path(folder).expanduser()
    parts = sorted((p for p in folder.glob("part-*-of-*") if p.is_dir()), key=lambda p: int(p.name.split("-")[1]))
    counts = {int(p.name.rsplit("-", 1)[1]) for p in parts}
    if len(counts) != 1:
        raise InputError(f"{str(folder)!r}: {parts_status(folder)}")
    count = counts.pop()
    if len(parts) != count or not all((p / "complete.json").is_file() for p in parts):
        return False
    metas = [json.loads((p / "meta.json").read_text()) for p in parts]
    for part, meta in zip(parts[1:], metas[1:]):
        clash = {k: (metas[0].get(k), meta.get(k)) for k in _MUST_MATCH if metas[0].get(k) != meta.get(k)}
        if clash:
            raise InputError(f"{str(part)!r} was written with another target or setting than {parts[0].name}: {clash}")
    entries: dict[str, dict] = {}
    indexes = [json.loads((p / "index.json").read_text())["entries"] if (p / "index.json").is_file() else {}
               for p in parts]  # a worker with no windows writes no index
    for part, index in zip(parts, indexes):
        for key, entry in index.items():
            entries[key] = {**entry, "shard": f"{part.name}/{entry['shard']}"}
    if not (folder / "target_config").is_dir() and (parts[0] / "target_config").is_dir():
        shutil.copytree(parts[0] / "target_config", folder / f".target_config.{os.getpid()}.tmp")
        try:
            os.replace(folder / f".target_config.{os.getpid()}.tmp", folder / "target_config")
        except OSError:  # another worker merged at the same moment
            shutil.rmtree(folder / f".target_config.{os.getpid()}.tmp", ignore_errors=True)
    _write_json_atomic(folder / "meta.json", metas[0])
    _write_json_atomic(folder / "index.json", {"entries": entries})
    _write_json_atomic(folder / "parts.json", {"parts": [p.name for p in parts],
                                               "entries": [len(index) for index in indexes]})
    return True


def shard_from_env() -> str:
    """``I/N`` from the launcher's environment: torchrun (``RANK``/``WORLD_SIZE``) or SLURM (``SLURM_PROCID``/
    ``SLURM_NTASKS``); ``0/1`` outside any launcher."""
    for rank, size in (("RANK", "WORLD_SIZE"), ("SLURM_PROCID", "SLURM_NTASKS")):
        if rank in os.environ and size in os.environ:
            return f"{int(os.environ[rank])}/{int(os.environ[size])}"
    return "0/1"


def mark_part_complete(part, counts: dict[str, int]) -> None:
    """Record that a worker's part holds every entry of its windows (``complete.json``)."""
    _write_json_atomic(Path(part) / "complete.json", counts)


# ---------------------------------------------------------------------------------------------- computing
@torch.no_grad()
def target_answer(target, prompter, pixel_values_videos: torch.Tensor, question: str, *, max_new_tokens: int,
                  top_k: int) -> dict[str, torch.Tensor]:
    """The target's greedy answer to ``question`` about a clip ``[1, T, 3, S, S]``, with its top-k raw logits."""
    prompt = prompter(question)
    prompter.check_fits(prompt, max_new_tokens)
    device = next(target.parameters()).device
    ids = prompt.target_ids.to(device)
    pad_id = target.generation_config.pad_token_id
    pad_id = target.config.get_text_config().pad_token_id if pad_id is None else pad_id
    out = target.generate(
        input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values_videos=pixel_values_videos.to(device),
        max_new_tokens=max_new_tokens, do_sample=False, output_logits=True, return_dict_in_generate=True,
        pad_token_id=pad_id,
    )
    answer_ids = out.sequences[0, ids.shape[1]:]  # [La]
    logits = torch.stack([step[0] for step in out.logits]).float()  # [La, V]
    k = min(top_k, logits.shape[-1])
    topk_logits, topk_ids = logits.topk(k, dim=-1)  # [La, K]
    return {"prompt_ids": prompt.text_ids[0], "answer_ids": answer_ids, "topk_ids": topk_ids,
            "topk_logits": topk_logits}


def build_target_cache(
    target,
    tokenizer,
    dataset,
    folder,
    *,
    target_name: str = "",
    prompts: Iterable[str] = (),
    features: bool = True,
    answers: bool = True,
    max_new_tokens: int = 32,
    top_k: int = 32,
    dtype: str = "float32",
    shard_size: int = 64,
    progress: bool = False,
) -> dict[str, int]:
    """Fill ``folder`` with the target's video features and answers for every window of ``dataset``.

    ``dataset`` is a `ClipDataset` that loads frames; prompts are each window's own plus ``prompts``. Returns
    counts: ``features`` / ``answers`` computed now, ``cached`` already present (skipped).
    """
    from evcascade.decoding.prompting import VideoLlavaPrompter
    from evcascade.models.alignment import target_video_layout
    from evcascade.models.pipeline import KeyFrameEncoder

    dtypes = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    if dtype not in dtypes:
        raise InputError(f"cache dtype must be one of {sorted(dtypes)}, got {dtype!r}")
    num_frames, grid, hidden = target_video_layout(target.config)
    if dataset.num_frames != num_frames:
        raise InputError(f"the data samples {dataset.num_frames} frames per window but the target takes {num_frames}")
    tower = KeyFrameEncoder.from_video_llava(target)  # frames -> hidden_states[vision_feature_layer], before projector
    prompter = VideoLlavaPrompter(tokenizer, target.config)
    meta = {"target": target_name, "feature_layer": tower.feature_layer, "top_k": int(top_k), "dtype": dtype,
            "layout": {"num_frames": num_frames, "grid": grid, "hidden_size": hidden},
            "vocab_size": int(target.config.get_text_config().vocab_size)}
    extra = list(prompts)
    counts = {"features": 0, "answers": 0, "cached": 0}
    indices = range(len(dataset))
    if progress:
        from tqdm import tqdm

        indices = tqdm(indices, desc="target cache", unit="clip")
    with TargetCacheWriter(folder, meta, target_config=target.config, shard_size=shard_size) as writer:
        for index in indices:
            window = dataset.windows[index]
            questions = list(dict.fromkeys([*window.prompts, *extra])) if answers else []
            todo_features = features and window.key not in writer
            todo = [q for q in questions if answer_key(window.key, q) not in writer]
            counts["cached"] += (features and not todo_features) + len(questions) - len(todo)
            if not todo_features and not todo:
                continue
            frames = dataset[index]["frames"]  # [T, H, W, 3]
            video_features = tower(frames)  # [T, 1 + P, D]
            if todo_features:
                writer.put(window.key, {"video_features": video_features.to(dtypes[dtype])}, kind="features",
                           clip=window.key)
                counts["features"] += 1
            if todo:
                from evcascade.preprocess import preprocess_frames

                pixels = preprocess_frames(frames, size=tower.image_size, crop_size=tower.image_size)[None]  # [1, T, 3, S, S]
                for question in todo:
                    result = target_answer(target, prompter, pixels.to(tower.tower.dtype), question,
                                           max_new_tokens=max_new_tokens, top_k=top_k)
                    writer.put(answer_key(window.key, question), result, kind="answer", clip=window.key, prompt=question)
                    counts["answers"] += 1
    return counts
