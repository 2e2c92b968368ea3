"""`Cascade`: a Video-LLaVA verifier and its drafting levels, assembled from a folder or a preset (floor 4).

A cascade folder (what ``Cascade.save_pretrained`` writes and ``Cascade.from_pretrained`` reads)::

    my_cascade/
      cascade.json            {"format": "evcascade.cascade", "version": 1, "target": "target",
                               "levels": [{"type": "ngram", "name": "ngram"},
                                          {"type": "event_drafter", "name": "events", "path": "levels/events"}],
                               "generation": {"max_new_tokens": 32, "draft_k": 5}}
      target/                 VideoLlavaForConditionalGeneration + tokenizer (save_pretrained)
      levels/events/          event_encoder/ alignment/ [frame_refiner/] draft_lm/  (save_pretrained each)

``target`` and a level's ``path`` are folders relative to cascade.json or Hugging Face hub ids. Level types:
``ngram`` (prompt lookup, no weights), ``model`` (any causal LM sharing the target's tokenizer),
``drafter_preset`` (a named preset under ``evcascade/assets/presets/drafters``), ``event_drafter`` (our event
encoder + alignment [+ frame refiner] + draft LM; with a refiner it is the L2 events+key-frame level). Any
level may carry ``"prior_acceptance"``: the adaptive policy's starting estimate of its per-token acceptance
(e.g. the distill stage's ``val/acceptance``), so a fresh process drafts with a trained level from its first
answer instead of waiting for exploration to find it.
Presets (``evcascade/assets/presets/cascades/*.json``) are cascade.json files whose paths are hub ids.

>>> from evcascade.models.tiny import tiny_tokenizer, tiny_video_llava
>>> tok = tiny_tokenizer()
>>> cascade = Cascade.from_models(tiny_video_llava(tok), tok)
>>> [level.name for level in cascade.levels]
['ngram']
"""

from __future__ import annotations

import json
import queue
import threading
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from evcascade.errors import InputError

BUNDLED = "bundled"
ASSETS = Path(__file__).resolve().parent / "assets"
BUNDLED_DIR = ASSETS / "demo_cascade"
# the same target fine-tuned on detailed captions and 50 ms - 1.5 s windows (demos/train_demo_drafters.py --variant
# windows): long answers, short windows; weaker than the default on two whole-clip kinds (README, the demo target)
BUNDLED_WINDOWS = "bundled-windows"
BUNDLED_WINDOWS_DIR = ASSETS / "demo_cascade_windows"
CASCADE_PRESET_DIR = ASSETS / "presets" / "cascades"
CONFIG_NAME = "cascade.json"
FORMAT = "evcascade.cascade"
DEFAULT_PROMPT = "what is moving ?"


def list_cascade_presets() -> list[str]:
    """Names accepted by ``--model`` besides ``bundled`` / ``bundled-windows`` and folders."""
    return sorted(p.stem for p in CASCADE_PRESET_DIR.glob("*.json"))


def resolve_model(name: str) -> Path | None:
    """The cascade.json that ``name`` means, or None when it is ``bundled`` and no demo cascade is installed.

    ``name`` is ``"bundled"`` (or ``"bundled-windows"``), a preset name (``list_cascade_presets()``) or a folder
    holding cascade.json.
    """
    if name in (BUNDLED, BUNDLED_WINDOWS):
        path = (BUNDLED_DIR if name == BUNDLED else BUNDLED_WINDOWS_DIR) / CONFIG_NAME
        return path if path.is_file() else None
    preset = CASCADE_PRESET_DIR / f"{name}.json"
    if preset.is_file():
        return preset
    folder = Path(name).expanduser()
    if folder.is_dir():
        if not (folder / CONFIG_NAME).is_file():
            raise InputError(f"--model {name!r}: the folder has no {CONFIG_NAME} (write one with Cascade.save_pretrained)")
        return folder / CONFIG_NAME
    raise InputError(
        f"--model {name!r} is not 'bundled', 'bundled-windows', a preset ({', '.join(list_cascade_presets())}) or a folder with "
        f"{CONFIG_NAME}; omit --model for the bundled default"
    )


@dataclass
class Answer:
    """One answer: its text, its token ids (answer only) and how it was made.

    >>> from evcascade.decoding.stats import DecodeStats
    >>> Answer("the circle moves .", [7, 8, 9, 10], DecodeStats.for_levels(["ngram"])).to_dict()["token_ids"]
    [7, 8, 9, 10]
    """

    text: str
    token_ids: list[int]
    stats: Any
    """`evcascade.decoding.stats.DecodeStats`: tau, per-level acceptance by position, timings, tokens/s."""
    mode: str = "cascade"
    inputs: dict[str, Any] = field(default_factory=dict)
    token_sources: list[str] = field(default_factory=list)
    """Per token: the level whose draft the target accepted, or "target"."""
    provisional: Any = None
    """With ``generate(provisional=...)``: the `evcascade.decoding.provisional.ProvisionalAnswer` delivered first,
    judged against this answer (``confirmed``, ``first_difference_token`` / ``_char``)."""
    latency_s: float | None = None
    """Wall seconds from the ``generate`` call to this answer (inputs, provisional answer and decoding)."""

    def to_dict(self) -> dict[str, Any]:
        out = {"text": self.text, "token_ids": list(self.token_ids), "token_sources": list(self.token_sources),
               "mode": self.mode, "stats": self.stats.to_dict(), "inputs": self.inputs, "latency_s": self.latency_s}
        if self.provisional is not None:
            out["provisional"] = self.provisional.to_dict()
        return out


def judge_provisional(answer: Answer, early: Any) -> Answer:
    """``answer`` carrying the provisional answer ``early`` judged against it (confirmed, where they first differ)."""
    return replace(answer, provisional=early.judged(answer.token_ids, answer.text))


def _weights_missing(what: str, where: str, exc: Exception) -> InputError:
    return InputError(
        f"{what} needs weights from {where!r}, which are not on this machine (not a local folder and not in the "
        f"Hugging Face cache) and cannot be downloaded here; fetch them on a connected machine "
        f"(hf download {where}) or omit --model to use the bundled default ({type(exc).__name__})"
    )


def missing_weights(spec: dict[str, Any], root: Path) -> list[tuple[str, str, str]]:
    """``(role, reference, why)`` for each set of weights a cascade spec needs that is on this machine neither as
    a folder nor in the local Hugging Face cache. Looks only at the disk, so a missing 7B target is reported at
    once instead of after the hub client's retries.
    """
    from evcascade.models.presets import load_drafter_preset

    needs: list[tuple[str, str]] = []
    if isinstance(spec.get("target"), str) and spec["target"]:
        needs.append(("target", spec["target"]))
    for level in spec.get("levels", []):
        name = level.get("name", level.get("type"))
        if level.get("type") == "drafter_preset" and isinstance(level.get("preset"), str):
            preset = load_drafter_preset(level["preset"])
            needs.append((f"level {name!r}", preset.hub_id))
            if preset.clip_tower:
                needs.append((f"level {name!r} CLIP tower", preset.clip_tower))
        elif level.get("type") == "model" and isinstance(level.get("path"), str):
            needs.append((f"level {name!r}", level["path"]))
    missing = []
    for role, ref in needs:
        if _is_local(root, ref) is not None or Path(ref).expanduser().exists():
            continue
        if ref.startswith((".", "/", "~")) or ref.count("/") != 1:  # a folder, not a hub id
            missing.append((role, ref, "no such folder"))
            continue
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(ref, "config.json"), str):
            missing.append((role, ref, "not in the Hugging Face cache"))
    return missing


def _check_weights_present(spec: dict[str, Any], root: Path, source: str) -> None:
    missing = missing_weights(spec, root)
    if not missing:
        return
    listed = "; ".join(f"{role} {ref!r} ({why})" for role, ref, why in missing)
    fetch = " and ".join(f"hf download {ref}" for _, ref, why in missing if why != "no such folder")
    folders = [ref for _, ref, why in missing if why == "no such folder"]
    how = (f"fetch them on a connected machine ({fetch})" if fetch else "") + (
        (" and " if fetch else "") + f"put the folder{'s' * (len(folders) > 1)} in place (the drafter presets in "
        f"evcascade/assets/presets/drafters/ say where they come from)" if folders else "")
    raise InputError(f"--model {source!r} needs weights that are not on this machine: {listed}; {how}, or omit "
                     f"--model to use the bundled default")


class Cascade:
    """Answers questions about an event recording + video: drafting levels, cheapest first, and a Video-LLaVA verifier.

    ``generate(..., mode="cascade")`` is lossless in greedy mode: its tokens equal ``mode="target"`` (the target
    decoding alone), always.

    >>> from evcascade.models.tiny import tiny_tokenizer, tiny_video_llava
    >>> tok = tiny_tokenizer()
    >>> cascade = Cascade.from_models(tiny_video_llava(tok, seed=1), tok)
    >>> sample = ASSETS / "sample"
    >>> fast = cascade.generate(sample / "events.h5", sample / "video.mp4", "what is moving ?", max_new_tokens=6)
    >>> slow = cascade.generate(sample / "events.h5", sample / "video.mp4", "what is moving ?", max_new_tokens=6,
    ...                         mode="target")
    >>> fast.token_ids == slow.token_ids, len(fast.token_ids)
    (True, 6)
    """

    def __init__(self, verifier, tokenizer, levels: Sequence[Any] = (), *, name: str = "custom",
                 generation: dict[str, Any] | None = None, source: str | None = None) -> None:
        from evcascade.decoding.engine import CascadeDecoder
        from evcascade.decoding.feature_cache import LRUCache
        from evcascade.decoding.prompting import VideoLlavaPrompter

        self.verifier, self.tokenizer, self.levels = verifier, tokenizer, list(levels)
        self.name, self.source = name, source
        self.generation_defaults = dict(generation or {})
        self.prompter = VideoLlavaPrompter(tokenizer, verifier.model.config)
        self.decoder = CascadeDecoder(verifier, self.levels)
        self._agreements = LRUCache(4)  # per-clip event/video agreement maps for acceptance="modality"
        self.target_decoder = CascadeDecoder(verifier, [])
        vision = verifier.model.config.vision_config
        tokens_per_frame = (vision.image_size // vision.patch_size) ** 2 + 1
        self.num_frames = int(verifier.model.config.video_seq_length // tokens_per_frame)
        self._lock = threading.Lock()
        self._scheduler = None  # the batch scheduler behind submit(), made on first use
        self.max_batch = 8  # most requests the scheduler verifies in one forward (set before the first submit)
        self._scheduler_lock = threading.Lock()
        self._provisional_drafting = None  # the provisional answers' own drafter copy, made on first use
        self.provisional_level: str | None = None
        """Name of the level that drafts provisional answers (None: the top model level)."""
        self.provisional_mix = 0.0
        """> 0: every other model level drafts the provisional answer with it, its log-probabilities weighted by
        this (``decoding.provisional.mixed_answer``); 0: the provisional level alone."""

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_models(cls, target, tokenizer, levels: Sequence[Any] | None = None, **kwargs) -> "Cascade":
        """From in-memory models: a ``VideoLlavaForConditionalGeneration`` and drafters (default: the n-gram level)."""
        from evcascade.decoding.ngram import NGramDrafter
        from evcascade.decoding.verifier import VideoLlavaVerifier

        levels = [NGramDrafter(name="ngram")] if levels is None else list(levels)
        return cls(VideoLlavaVerifier(target), tokenizer, levels, **kwargs)

    @classmethod
    def from_pretrained(cls, preset_or_path: str | Path = BUNDLED, *, device: str | torch.device = "cpu",
                        dtype: str | torch.dtype | None = "auto") -> "Cascade":
        """Load ``bundled``, a preset name, or a folder written by ``save_pretrained``."""
        from evcascade.decoding.verifier import resolve_dtype

        config_path = resolve_model(str(preset_or_path))
        if config_path is None:
            raise InputError(
                "the bundled demo cascade is not installed in this version of evcascade (it ships with the "
                "synthetic-world release); pass a preset name or a folder written by Cascade.save_pretrained"
            )
        try:
            spec = json.loads(config_path.read_text())
        except json.JSONDecodeError as exc:
            raise InputError(f"{str(config_path)!r} is not valid JSON: {exc}") from None
        if spec.get("format") != FORMAT:
            raise InputError(f"{str(config_path)!r} is not an evcascade cascade (format={spec.get('format')!r}, "
                             f"expected {FORMAT!r})")
        return _build(spec, config_path.parent, str(preset_or_path), torch.device(device),
                      resolve_dtype("auto" if dtype is None else dtype))

    def save_pretrained(self, folder: str | Path) -> Path:
        """Write cascade.json, the target (+ tokenizer) and every level's weights under ``folder``."""
        from evcascade.decoding.model_drafter import ModelDrafter
        from evcascade.decoding.ngram import NGramDrafter

        root = Path(folder)
        root.mkdir(parents=True, exist_ok=True)
        self.verifier.model.save_pretrained(root / "target")
        self.tokenizer.save_pretrained(root / "target")
        levels = []
        for level in self.levels:
            if isinstance(level, NGramDrafter):
                levels.append({"type": "ngram", "name": level.name, "max_ngram": level.max_ngram,
                               "min_ngram": level.min_ngram})
            elif isinstance(level, ModelDrafter) and getattr(level.prefix_fn, "encoder", None) is not None:
                prefix = level.prefix_fn
                path = f"levels/{level.name}"
                for sub, module in (("event_encoder", prefix.encoder), ("alignment", prefix.alignment),
                                    ("frame_refiner", prefix.refiner), ("draft_lm", prefix.draft_lm)):
                    if module is not None:
                        module.save_pretrained(root / path / sub)
                levels.append({"type": "event_drafter", "name": level.name, "path": path})
            elif isinstance(level, ModelDrafter) and level.prefix_fn is None:
                path = f"levels/{level.name}"
                level.model.save_pretrained(root / path)
                levels.append({"type": "model", "name": level.name, "path": path})
            else:
                raise InputError(f"cannot save level {level.name!r} of type {type(level).__name__}")
            if level.prior_acceptance is not None:
                levels[-1]["prior_acceptance"] = level.prior_acceptance
        spec = {"format": FORMAT, "version": 1, "name": self.name, "target": "target", "levels": levels,
                "generation": self.generation_defaults}
        (root / CONFIG_NAME).write_text(json.dumps(spec, indent=2))
        return root

    # ------------------------------------------------------------------ answering
    def generate(self, events: Any = None, video: Any = None, prompt: str = DEFAULT_PROMPT, *,
                 start_us: int | None = None, end_us: int | None = None, video_offset_us: int | None = None,
                 mode: str = "cascade", allow_pickle: bool = False, on_text=None, clip: Any = None,
                 events_topic: str | None = None, video_topic: str | None = None, provisional=None,
                 **options: Any) -> Answer:
        """Answer ``prompt`` about a clip.

        ``events``: a path, or any packet `LiveSession.push_events` takes (an `Events`, a structured array
        (x, y, t, p), a mapping, an ``(x, y, t_us, p)`` tuple; see `Events.coerce`); ``video``: a path, a `Video`, or
        uint8 frames ``[T, H, W, 3]`` (``video_offset_us`` overrides `evcascade.clip`'s default alignment); or
        ``clip``: an `evcascade.clip.Clip` already on one clock (then events,
        video and the window arguments are not used). ``options`` are `GenerationOptions` fields
        (max_new_tokens, do_sample, temperature, top_k, top_p, seed, stop_strings, draft_k, adaptive, and the
        opt-in lossy ``acceptance`` / ``lenience``: lossless unless asked). ``events_topic`` / ``video_topic``
        choose the topics of ROS bags (default: the bag's only event / image topic).
        ``on_text(piece)`` is called with each new piece of the answer's text (whole characters and words, by
        transformers' ``TextStreamer`` rules).
        ``provisional(answer)``: called with the best drafting level's own greedy answer
        (`evcascade.decoding.provisional.ProvisionalAnswer`, unverified, with its latency) as soon as it exists; it is
        drafted on a thread of its own (``draft_provisional``) while the verified decode runs here, and the callback
        runs on that thread (keep it short). The returned `Answer` carries it judged against the verified answer
        (``.provisional``).
        """
        started_s = time.perf_counter()
        if provisional is not None and not callable(provisional):
            raise InputError(f"provisional must be a callable taking the provisional answer, got {provisional!r}")
        if mode not in ("cascade", "target"):
            raise InputError(f"mode must be 'cascade' or 'target', got {mode!r}")
        if not isinstance(prompt, str) or not prompt.strip():
            raise InputError(f"prompt must be a non-empty question, got {prompt!r}")
        clip = self._clip(events, video, clip, start_us=start_us, end_us=end_us, video_offset_us=video_offset_us,
                          allow_pickle=allow_pickle, events_topic=events_topic, video_topic=video_topic)
        request, context, gen = self._request(prompt, clip, options)
        if gen.acceptance == "modality":
            self._add_agreement(context, request.pixel_values_videos)
        decoder = self.decoder if mode == "cascade" else self.target_decoder
        streamer = _text_streamer(self.tokenizer, on_text) if on_text is not None else None
        # the provisional answer is drafted beside the verified decode, never before it (it must not delay it)
        early = self._start_provisional(context, gen, started_s, provisional) if provisional is not None else None
        with self._lock:  # one request at a time per verifier (its KV cache is the request's state)
            result = decoder.generate(request, context, gen, on_tokens=streamer.put if streamer else None)
        if streamer is not None:
            streamer.end()
        ids = result.token_ids[0].tolist()
        answer = Answer(result.text or "", ids, result.stats, mode, _inputs_of(clip, prompt), result.token_sources)
        if early is not None:
            answer = judge_provisional(answer, early.result())
        answer.latency_s = time.perf_counter() - started_s
        return answer

    def _clip(self, events: Any, video: Any, clip: Any, **window: Any):
        """The request's `Clip`: ``clip`` checked, or loaded from ``events`` / ``video`` and the window arguments."""
        from evcascade.clip import load_clip

        if clip is not None:
            if len(clip.video) != self.num_frames:
                raise InputError(f"the clip has {len(clip.video)} frames but this target takes {self.num_frames}")
            return clip
        if video is None:
            raise InputError("video is required: Video-LLaVA answers from the clip's frames")
        events_in, video_in = _as_events(events), _as_video(video, events)
        if events_in is None:
            raise InputError("events are required (a path, an Events, or a structured array)")
        return load_clip(events_in, video_in, num_frames=self.num_frames, **window)

    def _request(self, prompt: str, clip: Any, options: dict[str, Any]):
        """The verifier's request, the drafters' context and the generation options of one question on ``clip``."""
        from evcascade.decoding.verifier import VerifyRequest

        built, context, gen = self._draft_inputs(prompt, clip, options)
        pixels = self.verifier.pixel_values(clip.video.frames)  # [1, T, 3, S, S]
        return VerifyRequest(built.target_ids, pixels), context, gen

    def _draft_inputs(self, prompt: str, clip: Any, options: dict[str, Any]):
        """The built prompt, the drafters' context and the generation options (what drafting needs: no pixels)."""
        from evcascade.decoding.drafters import DraftContext
        from evcascade.decoding.engine import GenerationOptions

        merged = {**self.generation_defaults, **options}
        try:
            gen = GenerationOptions(tokenizer=self.tokenizer, **merged)
        except TypeError as exc:
            raise InputError(f"unknown generation option: {exc}") from None
        _warn_unused_sampling(gen)
        built = self.prompter(prompt)
        self.prompter.check_fits(built, gen.max_new_tokens)
        return built, DraftContext(built.text_ids, events=clip.events, video=clip.video), gen

    def generate_batch(self, requests: Sequence[dict[str, Any]], *, mode: str = "cascade",
                       **options: Any) -> list[Answer]:
        """Answer several questions together: one target forward verifies every request's drafts per step
        (``decoding/batch.py``); each answer equals its own ``generate`` answer (greedy, or coupled sampling with
        its own seed). ``requests``: dicts with ``prompt`` and ``clip`` (or ``events`` / ``video`` and the window
        arguments) and any per-request generation options; ``options`` apply to all."""
        from evcascade.decoding.batch import BatchDecoder

        if mode not in ("cascade", "target"):
            raise InputError(f"mode must be 'cascade' or 'target', got {mode!r}")
        items = [self._batch_item(request, options, index) for index, request in enumerate(requests)]
        decoder = BatchDecoder(self.verifier, self.levels if mode == "cascade" else [], lock=self._lock,
                               pad_token_id=self._pad_token_id())
        return [self._batch_answer(result, items[i], mode) for i, result in enumerate(decoder.run(items))]

    def submit(self, prompt: str, clip: Any, **options: Any):
        """Queue one question for the cascade's batch scheduler (started on first use; requests from any
        thread join the running batch between steps); a `concurrent.futures.Future` of its `Answer`."""
        from concurrent.futures import Future

        from evcascade.decoding.batch import BatchDecoder
        from evcascade.decoding.scheduler import BatchScheduler

        with self._scheduler_lock:
            if self._scheduler is None:
                # the scheduler's prefills use the verifier's batch-1 state: they wait for generate()'s requests
                decoder = BatchDecoder(self.verifier, self.levels, lock=self._lock, pad_token_id=self._pad_token_id())
                self._scheduler = BatchScheduler(decoder, max_batch=self.max_batch)
        item = self._batch_item({"prompt": prompt, "clip": clip, **options}, {}, None)
        answer: Future = Future()

        def done(future) -> None:
            error = future.exception()
            if error is not None:
                answer.set_exception(error)
            else:
                answer.set_result(self._batch_answer(future.result(), item, "cascade"))

        self._scheduler.submit(item).add_done_callback(done)
        return answer

    def _batch_item(self, request: dict[str, Any], options: dict[str, Any], tag: Any):
        from evcascade.decoding.batch import BatchRequest

        if not isinstance(request, dict) or "prompt" not in request:
            raise InputError(f"each batch request must be a dict with a 'prompt' (and a 'clip' or events/video), "
                             f"got {request!r}")
        request = dict(request)
        prompt = request.pop("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise InputError(f"prompt must be a non-empty question, got {prompt!r}")
        window = {k: request.pop(k) for k in ("start_us", "end_us", "video_offset_us", "allow_pickle", "events_topic",
                                               "video_topic") if k in request}
        clip = self._clip(request.pop("events", None), request.pop("video", None), request.pop("clip", None), **window)
        target, context, gen = self._request(prompt, clip, {**options, **request})
        return BatchRequest(target, context, gen, tag, _inputs_of(clip, prompt))

    def _batch_answer(self, result, item, mode: str) -> Answer:
        return Answer(result.text or "", result.token_ids, result.stats, mode, item.inputs,
                      latency_s=result.stats.total_s)

    def _pad_token_id(self) -> int:
        pad = getattr(self.tokenizer, "pad_token_id", None)
        return int(pad) if pad is not None else 0

    def draft_provisional(self, prompt: str, clip: Any, *, on_answer=None, started_s: float | None = None,
                          **options: Any):
        """Start drafting the provisional answer to ``prompt`` on ``clip`` (the best drafting level's own greedy
        answer, on a thread of its own: ``decoding/provisional.py``); a `concurrent.futures.Future` of its
        `ProvisionalAnswer`. ``on_answer`` is called with it on that thread; ``started_s`` (a ``perf_counter``) is
        where its latency counts from (default: now). Pair it with ``submit`` and ``judge_provisional`` to serve
        provisional answers beside batched verification (``LiveSession(batched=True)``)."""
        started_s = time.perf_counter() if started_s is None else started_s
        if on_answer is not None and not callable(on_answer):
            raise InputError(f"on_answer must be a callable taking the provisional answer, got {on_answer!r}")
        clip = self._clip(None, None, clip)
        _, context, gen = self._draft_inputs(prompt, clip, options)
        return self._start_provisional(context, gen, started_s, on_answer)

    def _start_provisional(self, context, gen, started_s: float, on_answer):
        """The best drafting level's greedy answer under ``gen``'s stop criteria, drafted on its own thread."""
        from evcascade.decoding.provisional import ProvisionalDrafting, provisional_level
        from evcascade.decoding.stopping import StopChecker

        eos = gen.eos_token_ids if gen.eos_token_ids is not None else self.verifier.eos_token_ids
        stopper = StopChecker(eos_token_ids=eos, max_new_tokens=gen.max_new_tokens, stop_strings=gen.stop_strings,
                              tokenizer=gen.tokenizer)
        if not (isinstance(self.provisional_mix, (int, float)) and self.provisional_mix >= 0):
            raise InputError(f"provisional_mix must be a number >= 0, got {self.provisional_mix!r}")
        level = provisional_level(self.levels, self.provisional_level)
        mix = [(other, self.provisional_mix) for other in self.levels
               if other.can_review and other is not level] if self.provisional_mix else []
        wanted = (level, *(other for other, _ in mix))
        with self._scheduler_lock:
            drafting = self._provisional_drafting
            if drafting is None or drafting.source != wanted or drafting.weights[1:] != tuple(w for _, w in mix):
                self._provisional_drafting = ProvisionalDrafting(level, self.tokenizer, mix)  # copies; weights shared
            drafting = self._provisional_drafting
        return drafting.start(context, stopper, started_s=started_s, on_answer=on_answer)

    def _add_agreement(self, context, pixels: torch.Tensor) -> None:
        """Put the clip's event/video agreement map (computed once per clip) where the modality rule reads it."""
        from evcascade.decoding.feature_cache import content_key
        from evcascade.decoding.modality import AGREEMENT_KEY, agreement_for_request

        prefix = next((level.prefix_fn for level in self.levels
                       if getattr(getattr(level, "prefix_fn", None), "alignment", None) is not None), None)
        if prefix is None:
            raise InputError("acceptance='modality' needs an event drafter level with an alignment MLP; "
                             f"this cascade has levels {[level.name for level in self.levels]}")
        key = content_key(pixels)
        agreement = self._agreements.get(key)
        if agreement is None:
            agreement = agreement_for_request(self.verifier, prefix, context, pixels, key)
            self._agreements.put(key, agreement)
        context.extras[AGREEMENT_KEY] = agreement

    def stream(self, events: Any = None, video: Any = None, prompt: str = DEFAULT_PROMPT, **kwargs: Any) -> Iterator[str]:
        """Yield pieces of the answer's text as tokens are accepted; the last item is the `Answer` itself."""
        pieces: "queue.Queue[tuple[str, Any]]" = queue.Queue()

        def work() -> None:
            try:
                answer = self.generate(events, video, prompt, on_text=lambda s: pieces.put(("text", s)), **kwargs)
                pieces.put(("done", answer))
            except BaseException as exc:  # handed to the caller's thread
                pieces.put(("error", exc))

        threading.Thread(target=work, daemon=True, name="evcascade-stream").start()
        while True:
            kind, value = pieces.get()
            if kind == "text":
                yield value
            elif kind == "done":
                yield value
                return
            else:
                raise value

    def __repr__(self) -> str:
        return f"Cascade(name={self.name!r}, levels={[level.name for level in self.levels]}, frames={self.num_frames})"


def _text_streamer(tokenizer, on_text):
    """A transformers ``TextStreamer`` that hands each finished piece of text to ``on_text`` instead of printing.

    Hugging Face's rules decide what is finished: a piece never ends inside a multi-byte character that a
    byte-fallback tokenizer spreads over several tokens, nor inside a word that the next token may change.
    """
    from transformers import TextStreamer

    class _Streamer(TextStreamer):
        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            if text:
                on_text(text)

    return _Streamer(tokenizer, skip_prompt=False, skip_special_tokens=True)


def _warn_unused_sampling(gen) -> None:
    """Say, as ``transformers`` ``generate`` does, that sampling knobs do nothing under greedy decoding."""
    if gen.do_sample:
        return
    unused = [f"{name}={value}" for name, value, default in (("temperature", gen.temperature, 1.0),
                                                              ("top_p", gen.top_p, 1.0), ("top_k", gen.top_k, None))
              if value != default]
    if unused:
        warnings.warn(f"{', '.join(unused)} ignored: decoding is greedy (set do_sample=True, --do-sample on the "
                      f"command line, to sample)", UserWarning, stacklevel=3)


def _inputs_of(clip: Any, prompt: str) -> dict[str, Any]:
    """What an `Answer` records of its request: the window, the sources and how the video was put on the clock."""
    return {"window_us": [clip.start_us, clip.end_us], "num_events": len(clip.events), "num_frames": len(clip.video),
            "events": clip.events_path, "video": clip.video_path, "prompt": prompt,
            "alignment": clip.alignment.to_dict() if clip.alignment is not None else None}


def _as_events(events: Any) -> Any:
    """Paths pass through; packets become `Events` the way `LiveSession.push_events` takes them (`Events.coerce`)."""
    from evcascade.events.container import Events

    if events is None or isinstance(events, (str, Path)):
        return events
    return Events.coerce(events, source="events (a path or a packet)")


def _as_video(video: Any, events: Any) -> Any:
    """Paths and `Video`s pass through; a bare frame array gets timestamps spread over the events' span."""
    from evcascade.events.container import Events
    from evcascade.video import Video

    if isinstance(video, (str, Path, Video)):
        return video
    if isinstance(video, (np.ndarray, torch.Tensor)):
        frames = video.cpu().numpy() if isinstance(video, torch.Tensor) else video
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise InputError(f"video frames must be uint8 [T, H, W, 3], got {frames.dtype} {tuple(frames.shape)}")
        evs = _as_events(events)
        if isinstance(evs, Events) and len(evs):
            timestamps = np.linspace(evs.start_us, evs.end_us - 1, len(frames)).astype(np.int64)
        else:
            timestamps = np.arange(len(frames), dtype=np.int64) * 50_000
        return Video(frames, timestamps)
    raise InputError(f"video must be a path, a Video or uint8 frames [T, H, W, 3], got {type(video).__name__}")


# ---------------------------------------------------------------------------------------------------- loading
def _is_local(root: Path, ref: str) -> Path | None:
    path = (root / ref) if not Path(ref).is_absolute() else Path(ref)
    return path if path.exists() else None


def _build(spec: dict[str, Any], root: Path, source: str, device: torch.device, dtype) -> Cascade:
    from transformers import AutoTokenizer

    from evcascade.decoding.verifier import VideoLlavaVerifier

    target_ref = spec.get("target")
    if not isinstance(target_ref, str) or not target_ref:
        raise InputError(f"{source}: cascade.json needs a 'target' (folder or hub id), got {target_ref!r}")
    _check_weights_present(spec, root, source)
    target_path = _is_local(root, target_ref)
    where = str(target_path) if target_path is not None else target_ref
    try:
        verifier = VideoLlavaVerifier.from_pretrained(where, device=device, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(where)
    except (OSError, InputError) as exc:
        if target_path is None:
            raise _weights_missing(f"--model {source!r} (target)", target_ref, exc) from None
        raise InputError(f"{source}: cannot load the target from {where!r}: {exc}") from None
    levels = [_build_level(level, root, source, verifier, device) for level in spec.get("levels", [])]
    return Cascade(verifier, tokenizer, levels, name=spec.get("name", source), generation=spec.get("generation"),
                   source=source)


def _build_level(level: dict[str, Any], root: Path, source: str, verifier, device: torch.device):
    """One level of a cascade spec, with its ``prior_acceptance`` (the policy's starting estimate) when given."""
    prior = level.get("prior_acceptance")
    if prior is not None and (isinstance(prior, bool) or not isinstance(prior, (int, float)) or not 0 <= prior <= 1):
        raise InputError(f"{source}: level {level.get('name', level.get('type'))!r}: prior_acceptance must be a "
                         f"number in [0, 1], got {prior!r}")
    drafter = _make_level(level, root, source, verifier, device)
    drafter.prior_acceptance = None if prior is None else float(prior)
    return drafter


def _make_level(level: dict[str, Any], root: Path, source: str, verifier, device: torch.device):
    from evcascade.decoding.model_drafter import ModelDrafter
    from evcascade.decoding.ngram import NGramDrafter

    kind, name = level.get("type"), level.get("name", level.get("type"))
    if kind == "ngram":
        options = {k: level[k] for k in ("max_ngram", "min_ngram", "memory_size") if k in level}
        return NGramDrafter(name=name, **options)
    if kind == "drafter_preset":
        from evcascade.models.presets import load_drafter_preset

        preset = load_drafter_preset(level["preset"])
        try:
            model = preset.load(device)
        except (OSError, InputError) as exc:
            raise _weights_missing(f"--model {source!r} (level {name!r})", preset.hub_id, exc) from None
        if preset.format == "eventgpt":
            return ModelDrafter(model.draft_lm, prefix_fn=model.prefix(), name=name, vocab_size=preset.vocab_size)
        return ModelDrafter(model, name=name, vocab_size=preset.vocab_size)
    ref = level.get("path")
    if not isinstance(ref, str):
        raise InputError(f"{source}: level {name!r} of type {kind!r} needs a 'path'")
    path = _is_local(root, ref)
    if kind == "model":
        from transformers import AutoModelForCausalLM

        import evcascade.models  # noqa: F401  (registers DraftLM)

        try:
            model = AutoModelForCausalLM.from_pretrained(str(path) if path else ref).to(device)
        except OSError as exc:
            raise _weights_missing(f"--model {source!r} (level {name!r})", ref, exc) from None
        return ModelDrafter(model, name=name, vocab_size=level.get("vocab_size"))
    if kind == "event_drafter":
        if path is None:
            raise InputError(f"{source}: event drafter level {name!r}: no folder {str(root / ref)!r}")
        return _event_drafter(path, name, verifier, device)
    raise InputError(f"{source}: unknown level type {kind!r} (known: ngram, model, drafter_preset, event_drafter)")


def _event_drafter(path: Path, name: str, verifier, device: torch.device):
    from transformers import AutoModel

    import evcascade.models  # noqa: F401  (registers our Auto classes)
    from evcascade.decoding.model_drafter import ModelDrafter
    from evcascade.models.pipeline import KeyFrameEncoder, build_event_drafter_prefix

    parts = {}
    for sub in ("event_encoder", "alignment", "frame_refiner", "draft_lm"):
        if (path / sub).is_dir():
            parts[sub] = AutoModel.from_pretrained(str(path / sub)).to(device).eval()
    for required in ("event_encoder", "draft_lm"):
        if required not in parts:
            raise InputError(f"event drafter level {name!r}: {str(path)!r} lacks the {required}/ folder")
    refiner = parts.get("frame_refiner")
    prefix = build_event_drafter_prefix(
        parts["event_encoder"], parts["draft_lm"], alignment=parts.get("alignment"), refiner=refiner,
        key_frame_encoder=KeyFrameEncoder.from_video_llava(verifier.model) if refiner is not None else None,
        target_config=verifier.model.config,
    )
    return ModelDrafter(parts["draft_lm"], prefix_fn=prefix, name=name)
