"""Evaluation of the demo target: accuracy of greedy ``generate`` answers, per question kind and per window length.

Answers in the world are fixed phrases, so the metric is exact match (after decoding and stripping) with one of the
answer's phrasings (``QA.is_correct``: the canonical one, or a paraphrase saying the same thing). Each pool entry
is asked about its own window (``ScenePool.windows_us``), so a record carries the window's length and
``window_table`` splits accuracy by ``WINDOW_BINS_MS``.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from evcascade.demo.scenes import ScenePool
    from evcascade.demo.target import ExampleEncoder

WINDOW_BINS_MS: tuple[tuple[float, float], ...] = ((0, 100), (100, 300), (300, 1000), (1000, 1500))
"""Window-length bins of ``window_table``, ``[lo, hi)`` in milliseconds (the last one closed: a whole 1.5 s clip)."""


@torch.no_grad()
def evaluate_target(model, encoder: ExampleEncoder, pool: ScenePool, *, max_new_tokens: int = 80,
                    batch_size: int = 64) -> tuple[dict, list[dict]]:
    """Accuracy of greedy ``generate`` answers per question kind on every question of every scene in ``pool``.

    Returns ``({kind: {"accuracy", "correct", "total"}, ..., "mean": ...}, records)``; prompts with the same
    question have the same length, so each batch needs no padding.
    """
    from evcascade.data.questions import qa_pairs

    model.eval()
    by_question: dict[str, list[tuple[int, object]]] = {}
    for i, scene in enumerate(pool.scenes):
        for qa in qa_pairs(scene, tuple(int(t) for t in pool.windows_us[i])):
            by_question.setdefault(qa.question, []).append((i, qa))
    records = []
    for question, items in by_question.items():
        prompt = encoder.prompt_ids(question)
        for start in range(0, len(items), batch_size):
            chunk = items[start:start + batch_size]
            index = np.array([i for i, _ in chunk])
            input_ids = prompt[None].expand(len(chunk), -1)  # [b, L]
            out = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                                 pixel_values_videos=encoder.pixels(pool.frames[index]),
                                 max_new_tokens=max_new_tokens, do_sample=False)
            texts = encoder.tokenizer.batch_decode(out[:, input_ids.shape[1]:], skip_special_tokens=True)
            for (i, qa), text in zip(chunk, texts):
                start_us, end_us = (int(t) for t in pool.windows_us[i])
                records.append({"seed": int(pool.seeds[i]), "window_us": [start_us, end_us],
                                "window_ms": (end_us - start_us) / 1000, "kind": qa.kind, "question": qa.question,
                                "answer": qa.answer, "generated": text.strip(),
                                "correct": qa.is_correct(text)})
    return accuracy_table(records), records


def accuracy_table(records: list[dict]) -> dict:
    """``{kind: {"correct", "total", "accuracy"}, ..., "mean": mean over kinds}`` of ``evaluate_target`` records."""
    table: dict = {}
    for record in records:
        entry = table.setdefault(record["kind"], {"correct": 0, "total": 0})
        entry["correct"] += int(record["correct"])
        entry["total"] += 1
    for entry in table.values():
        entry["accuracy"] = entry["correct"] / entry["total"]
    table = {kind: table[kind] for kind in sorted(table, key=_kind_order)}
    table["mean"] = float(np.mean([e["accuracy"] for e in table.values()])) if table else 0.0
    return table


def window_table(records: list[dict], bins_ms=WINDOW_BINS_MS) -> dict:
    """``{"lo-hi ms": accuracy_table of the records whose window length falls in the bin}``, empty bins left out."""
    out = {}
    for k, (lo, hi) in enumerate(bins_ms):
        last = k == len(bins_ms) - 1
        inside = [r for r in records if lo <= r["window_ms"] < hi or (last and r["window_ms"] == hi)]
        if inside:
            out[f"{lo:g}-{hi:g} ms"] = accuracy_table(inside)
    return out


def _kind_order(kind: str) -> int:
    from evcascade.data.questions import QUESTION_KINDS

    return QUESTION_KINDS.index(kind) if kind in QUESTION_KINDS else len(QUESTION_KINDS)


def evaluate_cascade(cascade, manifest_path, *, mode: str = "cascade", max_entries: int | None = None,
                     progress: bool = False) -> tuple[dict, list[dict]]:
    """Accuracy of a cascade's greedy answers on a world written to disk (``evcascade.data.layout.write_world``):
    every question of every manifest entry, asked the way a user asks (``Cascade.generate`` on the entry's events
    and mp4 video, ``start_us`` / ``end_us`` when the entry has a window), scored against ``qa_pairs`` of the scene
    over the window the clip loader actually cut (the recordings' overlap for a whole-clip entry).

    Returns ``({"per_kind": accuracy_table, "per_window": window_table, "tau": {kind: mean tau}}, records)``.
    """
    from evcascade.data.layout import read_manifest
    from evcascade.data.questions import qa_pairs
    from evcascade.data.world import WorldConfig, sample_scene

    manifest = read_manifest(manifest_path)
    config = WorldConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in manifest["config"].items()})
    entries = manifest["scenes"][:max_entries]
    if progress:
        from tqdm import tqdm

        entries = tqdm(entries, desc="evaluate", unit="clip")
    records = []
    for entry in entries:
        scene = sample_scene(int(entry["seed"]), config)
        window = {"start_us": entry.get("start_us"), "end_us": entry.get("end_us")}
        for question in entry["prompts"]:
            with warnings.catch_warnings():  # a window holding one frame repeats it, as asked: no news here
                warnings.filterwarnings("ignore", message=".*repeated to", category=UserWarning)
                answer = cascade.generate(entry["events"], entry["video"], question, mode=mode, **window)
            start_us, end_us = answer.inputs["window_us"]
            qa = next(qa for qa in qa_pairs(scene, (start_us, end_us), fps=config.fps) if qa.question == question)
            stats = answer.stats.to_dict()
            records.append({"id": entry["id"], "seed": int(entry["seed"]), "window_us": [start_us, end_us],
                            "window_ms": (end_us - start_us) / 1000, "kind": qa.kind, "question": question,
                            "answer": qa.answer, "generated": answer.text.strip(),
                            "correct": qa.is_correct(answer.text), "tokens": len(answer.token_ids),
                            "tau": stats.get("tau")})
    tau: dict = {}
    for record in records:
        if record["tau"] is not None:
            tau.setdefault(record["kind"], []).append(record["tau"])
    return {"per_kind": accuracy_table(records), "per_window": window_table(records),
            "tau": {k: float(np.mean(v)) for k, v in tau.items()},
            "tokens": {k: float(np.mean([r["tokens"] for r in records if r["kind"] == k])) for k in tau}}, records
