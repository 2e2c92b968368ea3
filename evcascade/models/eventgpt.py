"""Load EventGPT-7B checkpoints (XduSyL/EventGPT) into our `EventEncoder` + `DraftLM`, by an explicit key map.

EventGPT's parameter names come from its module tree (model/EventChatModel.py): ``EventChatModel`` is a
``LlamaForCausalLM`` whose ``model`` (an ``EventChatLlamaModel``) also holds ``visual_tower`` (a wrapper
whose ``visual_tower`` is a ``CLIPVisionModel``), ``visual_projector`` (Linear, GELU, Linear) and
``feature_adaptor`` (Linear). So (full table with shapes in docs/eventgpt_mapping.md):

    model.visual_tower.visual_tower.vision_model.*  -> encoder  tower.*   (transformers 5 CLIPVisionModel layout)
    model.visual_projector.{0,2}.{weight,bias}      -> encoder  projector.{0,2}.*
    model.feature_adaptor.{weight,bias}             -> encoder  adaptor.*
    model.{embed_tokens,layers,norm}.*              -> draft_lm language_model.model.*
    lm_head.weight                                  -> draft_lm language_model.lm_head.weight

Its forward encodes each of the 5 event images with the tower's ``last_hidden_state``, applies projector
then adaptor per token, and aggregates 5 temporal + 577 spatial tokens: exactly `EventEncoder` with
``feature_layer=-1, head_hidden_size=4096, head_adaptor=True``, whose output feeds the LM through an
identity projector. Keys EventGPT's own forward never uses (an optional event Q-Former, rotary and
position-id buffers older transformers saved) are ignored and reported; any other unmatched key, or any
of our parameters left unfilled, is an InputError naming them unless ``strict=False``.

Note: EventGPT puts its 582 event tokens inside the prompt (after "USER: "); as a cascade level the
engine feeds them before the whole text prompt (a prefix), a layout EventGPT was not trained on.
"""

from __future__ import annotations

import contextlib
import json
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch
from transformers import CLIPVisionConfig, CLIPVisionModel

from evcascade.errors import InputError, InputFileNotFoundError
from evcascade.models.configuration import DraftLMConfig, EventEncoderConfig
from evcascade.models.draft_lm import DraftLM
from evcascade.models.event_encoder import EventEncoder

# (their prefix, our module, our prefix), first match wins
# CLIPVisionModel lost its ``vision_model.`` level in transformers 5 (checkpoints written by 4.x, as EventGPT's
# are, carry it); `load_eventgpt` re-targets "tower." to wherever our tower's keys actually live.
KEY_RULES: tuple[tuple[str, str, str], ...] = (
    ("model.visual_tower.visual_tower.vision_model.", "encoder", "tower."),
    ("model.visual_tower.visual_tower.", "encoder", "tower."),
    ("model.visual_projector.", "encoder", "projector."),
    ("model.feature_adaptor.", "encoder", "adaptor."),
    ("model.embed_tokens.", "draft_lm", "language_model.model.embed_tokens."),
    ("model.layers.", "draft_lm", "language_model.model.layers."),
    ("model.norm.", "draft_lm", "language_model.model.norm."),
    ("lm_head.", "draft_lm", "language_model.lm_head."),
)
# keys EventGPT's forward never reads: ignored, and reported as such
IGNORED_KEYS = re.compile(
    r"(\.rotary_emb\.inv_freq$|\.embeddings\.position_ids$|^model\.query_embeddings|^model\.query_embedder\.|"
    r"^model\.attention_layers\.)"
)
TOWER_PREFIX = "model.visual_tower.visual_tower."
# EventGPT-only config entries, not Llama's
_EVENTGPT_CONFIG_KEYS = ("architectures", "auto_map", "model_type", "event_feature_adaptor", "use_event_qformer")
_WEIGHT_FILES = ("model.safetensors.index.json", "model.safetensors", "pytorch_model.bin.index.json", "pytorch_model.bin")


def clip_vit_l14_336_config() -> CLIPVisionConfig:
    """The vision config of ``openai/clip-vit-large-patch14-336``, EventGPT's tower (577 tokens of 1024)."""
    return CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                            image_size=336, patch_size=14, projection_dim=768, hidden_act="quick_gelu")


def map_eventgpt_key(key: str, tower_prefix: str = "tower.") -> tuple[str, str] | None:
    """EventGPT parameter name -> (``"encoder"`` | ``"draft_lm"``, our name), or None if it maps nowhere.

    ``tower_prefix``: where our CLIP tower's parameters live ("tower." with transformers 5).

    >>> map_eventgpt_key("model.visual_tower.visual_tower.vision_model.pre_layrnorm.weight")
    ('encoder', 'tower.pre_layrnorm.weight')
    >>> map_eventgpt_key("model.visual_projector.2.bias")
    ('encoder', 'projector.2.bias')
    >>> map_eventgpt_key("model.layers.0.self_attn.q_proj.weight")
    ('draft_lm', 'language_model.model.layers.0.self_attn.q_proj.weight')
    """
    for theirs, module, ours in KEY_RULES:
        if key.startswith(theirs):
            return module, (tower_prefix if ours == "tower." else ours) + key[len(theirs):]
    return None


@dataclass
class LoadReport:
    """What a checkpoint load matched: names are EventGPT's for unexpected/ignored, ours for missing."""

    loaded: int = 0
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    tower_from: str | None = None  # where the CLIP tower came from when the checkpoint lacks it


@dataclass
class EventGPTModels:
    """EventGPT as our modules: ``encoder`` (tower + projector + adaptor + aggregation) and ``draft_lm``."""

    encoder: EventEncoder
    draft_lm: DraftLM
    report: LoadReport

    def prefix(self):
        """The drafter's ``prefix_fn``: events -> 582 (for 7B) prefix embeddings."""
        from evcascade.models.pipeline import build_event_drafter_prefix

        return build_event_drafter_prefix(self.encoder, self.draft_lm)


# ---------------------------------------------------------------------- checkpoint files
def _resolve_folder(path_or_id: str | Path) -> Path:
    path = Path(path_or_id).expanduser()
    if path.is_dir():
        return path
    text = str(path_or_id)
    if path.exists() or text.startswith((".", "/", "~")) or text.count("/") != 1:
        raise InputFileNotFoundError(f"EventGPT checkpoint folder not found: {text!r}")
    from huggingface_hub import snapshot_download  # a hub id "owner/name"

    try:
        return Path(snapshot_download(text, allow_patterns=["*.json", "*.safetensors", "*.bin"]))
    except Exception as err:  # network, auth, missing repo: all user-fixable
        raise InputError(f"could not fetch EventGPT checkpoint {text!r} from the hub: {err}") from err


def _weight_files(folder: Path) -> list[Path]:
    for name in _WEIGHT_FILES:
        candidate = folder / name
        if not candidate.exists():
            continue
        if name.endswith(".index.json"):
            weight_map = json.loads(candidate.read_text())["weight_map"]
            files = [folder / shard for shard in dict.fromkeys(weight_map.values())]
            missing = [str(f) for f in files if not f.exists()]
            if missing:
                raise InputFileNotFoundError(f"{candidate} names shards that do not exist: {missing}")
            return files
        return [candidate]
    raise InputFileNotFoundError(f"no weights in {str(folder)!r}: expected one of {list(_WEIGHT_FILES)}")


def _read_shard(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    # weights_only: a .bin is a pickle, and unpickling arbitrary objects runs code
    return torch.load(path, map_location="cpu", weights_only=True)


def _key_names(files: list[Path], folder: Path) -> list[str]:
    index = next((folder / n for n in _WEIGHT_FILES if n.endswith(".index.json") and (folder / n).exists()), None)
    if index is not None:
        return list(json.loads(index.read_text())["weight_map"])
    if files[0].suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(files[0]), framework="pt") as handle:
            return list(handle.keys())
    return list(_read_shard(files[0]))


# ---------------------------------------------------------------------- configs
def eventgpt_configs(config_dict: dict, key_names: list[str], vision_config: CLIPVisionConfig | dict | None = None
                     ) -> tuple[EventEncoderConfig, DraftLMConfig]:
    """Our two configs from EventGPT's ``config.json`` and its parameter names (for the projector depth)."""
    text = {k: v for k, v in config_dict.items() if k not in _EVENTGPT_CONFIG_KEYS and not k.startswith("mm_")}
    text["model_type"] = "llama"
    if "hidden_size" not in text or "vocab_size" not in text:
        raise InputError("EventGPT config.json lacks hidden_size/vocab_size: is this an EventGPT (Llama) checkpoint?")
    hidden = int(text["hidden_size"])
    depths = [int(m.group(1)) for k in key_names if (m := re.match(r"model\.visual_projector\.(\d+)\.weight$", k))]
    vision = vision_config if vision_config is not None else clip_vit_l14_336_config()
    vision = vision.to_dict() if hasattr(vision, "to_dict") else dict(vision)
    encoder = EventEncoderConfig(
        vision_config=vision, num_images=5, feature_layer=-1, freeze_tower=True, aggregation="spatio_temporal",
        head_hidden_size=hidden, head_depth=max(depths) // 2 + 1 if depths else 2,
        head_adaptor="model.feature_adaptor.weight" in key_names,
    )
    draft = DraftLMConfig(text_config=text, visual_hidden_size=hidden, projector_type="identity")
    return encoder, draft


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def _summary(names: list[str], limit: int = 12) -> str:
    shown = ", ".join(names[:limit])
    return f"{shown} (+{len(names) - limit} more)" if len(names) > limit else shown


# ---------------------------------------------------------------------- loading
def load_eventgpt(
    path_or_id: str | Path,
    *,
    vision_config: CLIPVisionConfig | dict | None = None,
    clip_tower: str | Path | None = None,
    strict: bool = True,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> EventGPTModels:
    """EventGPT checkpoint folder (or hub id) -> `EventGPTModels`, weights copied shard by shard.

    ``vision_config``: the tower's config (default: CLIP ViT-L/14-336). ``clip_tower``: a CLIP checkpoint to
    take the tower from when the EventGPT checkpoint lacks it (EventGPT's config points at one in
    ``mm_visual_tower``). ``strict=False`` loads anyway when keys are missing/unexpected (missing parameters
    keep their fresh initialisation) and warns with the names instead of raising.
    """
    folder = _resolve_folder(path_or_id)
    config_path = folder / "config.json"
    if not config_path.exists():
        raise InputFileNotFoundError(f"no config.json in EventGPT checkpoint folder {str(folder)!r}")
    config_dict = json.loads(config_path.read_text())
    files = _weight_files(folder)
    names = _key_names(files, folder)
    if clip_tower is not None and vision_config is None:
        vision_config = CLIPVisionConfig.from_pretrained(str(clip_tower))
    encoder_cfg, draft_cfg = eventgpt_configs(config_dict, names, vision_config)

    # what our modules expect, without allocating them
    with torch.device("meta"):
        expected = {("encoder", k) for k in EventEncoder(encoder_cfg).state_dict()}
        expected |= {("draft_lm", k) for k in DraftLM(draft_cfg).state_dict()}
    tower_prefix = "tower.vision_model." if ("encoder", "tower.vision_model.pre_layrnorm.weight") in expected else "tower."
    if draft_cfg.text_config.tie_word_embeddings:
        expected.discard(("draft_lm", "language_model.lm_head.weight"))
    report = LoadReport()
    mapped: set[tuple[str, str]] = set()
    for name in names:
        target = map_eventgpt_key(name, tower_prefix)
        if IGNORED_KEYS.search(name):
            report.ignored.append(name)
        elif target is None or target not in expected:
            report.unexpected.append(name)
        else:
            mapped.add(target)
    missing = sorted(expected - mapped)
    tower_missing = [k for m, k in missing if m == "encoder" and k.startswith("tower.")]
    if clip_tower is not None and tower_missing:
        report.tower_from = str(clip_tower)
        missing = [(m, k) for m, k in missing if not (m == "encoder" and k.startswith("tower."))]
    report.missing = [f"{m}.{k}" for m, k in missing]
    if report.missing or report.unexpected:
        hint = ""
        if tower_missing and clip_tower is None:
            hint = (f"; the checkpoint has no CLIP tower ({TOWER_PREFIX}*): pass clip_tower= a CLIP checkpoint "
                    f"(its config names mm_visual_tower={config_dict.get('mm_visual_tower')!r})")
        message = (f"EventGPT checkpoint {str(folder)!r} does not match: missing {len(report.missing)} "
                   f"[{_summary(report.missing)}], unexpected {len(report.unexpected)} [{_summary(report.unexpected)}]{hint}")
        if strict:
            raise InputError(message + "; pass strict=False to load anyway")
        warnings.warn(message, stacklevel=2)

    from transformers.initialization import no_init_weights

    # skip random init (minutes at 7B) when every parameter is about to be overwritten
    init = no_init_weights() if not missing else contextlib.nullcontext()
    with init, _default_dtype(dtype):
        models = {"encoder": EventEncoder(encoder_cfg), "draft_lm": DraftLM(draft_cfg)}
    params = {(m, k): t for m, model in models.items() for k, t in model.state_dict().items()}
    with torch.no_grad():
        for shard in files:
            for name, value in _read_shard(shard).items():
                target = map_eventgpt_key(name, tower_prefix)
                if target not in mapped:
                    continue
                param = params[target]
                if tuple(param.shape) != tuple(value.shape):
                    raise InputError(f"EventGPT weight {name!r} has shape {tuple(value.shape)} but our "
                                     f"{target[0]}.{target[1]} expects {tuple(param.shape)}")
                param.copy_(value)
                report.loaded += 1
        if report.tower_from is not None:
            tower = CLIPVisionModel.from_pretrained(str(clip_tower))
            models["encoder"].tower.load_state_dict(tower.state_dict())
    encoder, draft_lm = models["encoder"], models["draft_lm"]
    if draft_cfg.text_config.tie_word_embeddings:
        draft_lm.language_model.tie_weights()
    encoder.set_tower_frozen(True)
    return EventGPTModels(encoder.to(device).eval(), draft_lm.to(device).eval(), report)
