"""Typed configs of the drafter models: what each model is, in fields that `save_pretrained` writes as JSON.

transformers 5 turns every `PreTrainedConfig` subclass into a keyword-only dataclass, so each field below
is a dataclass field with a default; `__post_init__` checks values (raising `InputError` naming the bad
value) and then hands the rest to the base class.

>>> cfg = EventEncoderConfig(vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
...     "num_attention_heads": 4, "image_size": 32, "patch_size": 8}, spatial_grid=2)
>>> cfg.grid_size, cfg.num_tokens, cfg.output_size   # 5 temporal + CLS + 2x2 pooled patches
(4, 10, 32)
"""

from __future__ import annotations

from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

from evcascade.errors import InputError
from evcascade.preprocess import CLIP_MEAN, CLIP_STD

PROJECTOR_TYPES = ("mlp2x_gelu", "linear", "identity")
AGGREGATIONS = ("spatio_temporal", "concat")


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise InputError(message)


def _positive(name: str, value, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    _require(isinstance(value, int) and not isinstance(value, bool) and value >= 1, f"{name} must be an int >= 1, got {value!r}")


class EventEncoderConfig(PreTrainedConfig):
    """Event images -> CLIP vision tower -> (optional per-token head) -> spatio-temporal tokens, EventGPT-style.

    Output tokens, for ``aggregation="spatio_temporal"``: ``num_images`` temporal tokens (each image's mean
    over all its tokens) then ``1 + G*G`` spatial tokens (CLS and patch grid, each the mean over images),
    where G is ``spatial_grid`` (the token budget; adaptive average pooling of the patch grid) or the tower's
    own grid. ``"concat"`` keeps every image's tokens: ``num_images * (1 + G*G)``.
    """

    model_type = "evcascade_event_encoder"
    sub_configs_defaults = {"vision_config": SubConfigSpec(config_class=AutoConfig, model_type="clip_vision_model")}

    vision_config: dict | PreTrainedConfig | None = None
    num_images: int = 5  # event images per window (EventGPT: 5, equal event counts each)
    feature_layer: int = -1  # tower hidden state used (EventGPT: last_hidden_state, i.e. -1)
    freeze_tower: bool = True  # no gradients into the CLIP tower (EventGPT trains it frozen)
    aggregation: str = "spatio_temporal"
    spatial_grid: int | None = None  # token budget: pool the G0 x G0 patch grid to this side (None = keep G0)
    head_hidden_size: int | None = None  # per-token projector before aggregation (EventGPT: 4096); None = none
    head_depth: int = 2  # Linear, then (GELU, Linear) x (depth - 1), as EventGPT's build_mlp_projector
    head_adaptor: bool = False  # EventGPT's extra Linear(head, head) "feature_adaptor" after the projector
    image_mean: tuple[float, float, float] = tuple(CLIP_MEAN)
    image_std: tuple[float, float, float] = tuple(CLIP_STD)
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        _positive("num_images", self.num_images)
        _require(self.aggregation in AGGREGATIONS, f"aggregation must be one of {AGGREGATIONS}, got {self.aggregation!r}")
        _positive("spatial_grid", self.spatial_grid, optional=True)
        _positive("head_hidden_size", self.head_hidden_size, optional=True)
        _positive("head_depth", self.head_depth)
        _require(self.head_hidden_size is not None or not self.head_adaptor,
                 "head_adaptor=True needs head_hidden_size (the adaptor follows the head)")
        layers = self.vision_config.num_hidden_layers
        _require(-(layers + 1) <= self.feature_layer <= layers,
                 f"feature_layer must index the tower's {layers + 1} hidden states, got {self.feature_layer}")
        if self.spatial_grid is not None:
            _require(self.spatial_grid <= self.grid_size,
                     f"spatial_grid={self.spatial_grid} exceeds the tower's patch grid {self.grid_size}")
        self.image_mean, self.image_std = tuple(self.image_mean), tuple(self.image_std)

    @property
    def image_size(self) -> int:
        """Side of the square input image, in pixels."""
        return int(self.vision_config.image_size)

    @property
    def grid_size(self) -> int:
        """Side of the tower's own patch grid (336 / 14 = 24 for ViT-L/14-336)."""
        return self.image_size // int(self.vision_config.patch_size)

    @property
    def output_grid(self) -> int:
        """Side of the spatial patch grid after the token budget."""
        return self.spatial_grid or self.grid_size

    @property
    def num_tokens(self) -> int:
        """Tokens per window in the output ``[B, num_tokens, output_size]``."""
        per_image = 1 + self.output_grid**2
        if self.aggregation == "spatio_temporal":
            return self.num_images + per_image
        return self.num_images * per_image

    @property
    def output_size(self) -> int:
        """Feature size of each output token."""
        return self.head_hidden_size or int(self.vision_config.hidden_size)


class AlignmentConfig(PreTrainedConfig):
    """Maps spatio-temporal event tokens onto the target's video-feature grid ``[T, 1 + Gt*Gt, D_t]``."""

    model_type = "evcascade_alignment"

    input_size: int = 1024  # D_enc, the event encoder's output_size
    num_event_images: int = 5  # temporal tokens in the input
    event_grid: int = 24  # side of the input's spatial patch grid
    target_hidden_size: int = 1024  # D_t, the target video tower's hidden size
    target_num_frames: int = 8  # T, frames the target samples
    target_grid: int = 16  # side of the target's patch grid (224 / 14)
    hidden_size: int = 1024  # width of the MLP
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        for name in ("input_size", "num_event_images", "event_grid", "target_hidden_size", "target_num_frames",
                     "target_grid", "hidden_size"):
            _positive(name, getattr(self, name))

    @property
    def num_input_tokens(self) -> int:
        return self.num_event_images + 1 + self.event_grid**2

    @property
    def tokens_per_frame(self) -> int:
        return 1 + self.target_grid**2


class FrameRefinerConfig(PreTrainedConfig):
    """Gated per-token fusion of draft video features with one key frame's features (same grid, same D_t)."""

    model_type = "evcascade_frame_refiner"

    hidden_size: int = 1024  # D_t, of both the draft features and the key-frame features
    fusion_size: int = 256  # bottleneck width of the fusion MLP
    num_frames: int = 8  # T of the draft features (one learned embedding per frame)
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        for name in ("hidden_size", "fusion_size", "num_frames"):
            _positive(name, getattr(self, name))


class DraftLMConfig(PreTrainedConfig):
    """A small causal LM (any ``AutoModelForCausalLM`` config) plus a visual projector and token budget.

    Visual features ``[B, T, 1 + G*G, visual_hidden_size]`` are pooled to ``pool_frames`` frames and a
    ``pool_grid`` x ``pool_grid`` patch grid (CLS kept), flattened, projected and fed before the text.
    """

    model_type = "evcascade_draft_lm"
    sub_configs_defaults = {"text_config": SubConfigSpec(config_class=AutoConfig, model_type="llama")}

    text_config: dict | PreTrainedConfig | None = None
    visual_hidden_size: int | None = None  # D_t of incoming visual features; None = a text-only drafter
    projector_type: str = "mlp2x_gelu"  # Video-LLaVA's projector shape; "identity" needs D_t == LM hidden
    pool_frames: int | None = None  # token budget over time (None = keep every frame)
    pool_grid: int | None = None  # token budget over space (None = keep the incoming grid)
    initializer_range: float = 0.02
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        _require(self.projector_type in PROJECTOR_TYPES,
                 f"projector_type must be one of {PROJECTOR_TYPES}, got {self.projector_type!r}")
        _positive("visual_hidden_size", self.visual_hidden_size, optional=True)
        _positive("pool_frames", self.pool_frames, optional=True)
        _positive("pool_grid", self.pool_grid, optional=True)
        text_hidden = int(self.text_config.hidden_size)
        if self.projector_type == "identity" and self.visual_hidden_size is not None:
            _require(self.visual_hidden_size == text_hidden,
                     f"projector_type='identity' needs visual_hidden_size == the LM hidden size, got "
                     f"visual_hidden_size={self.visual_hidden_size} and text_config.hidden_size={text_hidden}")

    @property
    def vocab_size(self) -> int:
        """The LM's vocabulary (logits' last dimension)."""
        return int(self.text_config.vocab_size)

    @property
    def hidden_size(self) -> int:
        return int(self.text_config.hidden_size)
