"""MomentConfig: the typed, frozen configuration of the moment denoiser, its JSON presets and dotted overrides.

The config nests one frozen dataclass per component, like :class:`prvr.config.ExperimentConfig`::

    MomentConfig: name, seed, data, condition, video_dim, text_dim
      network    NetworkConfig        condition generator and span decoder
      diffusion  SpanDiffusionConfig  the noise schedule and the training proposals
      inference  InferenceConfig      the DDIM sampler and the post-processing at search time
      matcher    MatcherConfig        Hungarian matching costs
      loss       MomentLossConfig     loss weights by name and the loss hyper-parameters
      train      MomentTrainConfig    optimiser, batches, epochs, early stopping
      vcmr       VCMRConfig           corpus-level moment ranking

Presets live in ``prvr/moments/presets/<name>.json`` and hold only the values that differ from the defaults (the
defaults follow the MomentDiff and DiffusionVMR papers). The full config is saved inside every moment checkpoint
(key ``moment_config``).

Until the nesting, the config was one flat dataclass. Every dict that is read into a MomentConfig (a checkpoint's
``moment_config``, a preset, a JSON file) and every dotted override passes through :func:`migrate_flat_moment_config`
/ :func:`migrate_moment_path`, so old checkpoints still load and the old flat names (``sampling_steps=4``,
``loss_weights.sim_nce=0``) are accepted for compatibility beside the nested paths (``inference.sampling_steps=4``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

from prvr.config import DataConfig, apply_overrides, config_from_dict, config_to_dict, preset_names, read_preset

__all__ = [
    "MomentConfig",
    "NetworkConfig",
    "SpanDiffusionConfig",
    "InferenceConfig",
    "MatcherConfig",
    "MomentLossConfig",
    "MomentTrainConfig",
    "VCMRConfig",
    "DEFAULT_MOMENT_LOSS_WEIGHTS",
    "MOMENT_METHODS",
    "FLAT_MOMENT_FIELDS",
    "migrate_flat_moment_config",
    "migrate_moment_path",
    "list_moment_presets",
    "load_moment_preset",
    "apply_moment_overrides",
]

# loss_<name> -> weight: the set loss 10 L1 + 1 (1 - gIoU) + 4 CE of MomentDiff, and its similarity loss weight 4
# given to each of the three similarity terms.
DEFAULT_MOMENT_LOSS_WEIGHTS: dict[str, float] = {
    "l1": 10.0,
    "giou": 1.0,
    "ce": 4.0,
    "sim_rank": 4.0,
    "sim_bce": 4.0,
    "sim_nce": 4.0,
}


def _check(owner: str, checks: list[tuple[bool, str]]) -> None:
    for ok, message in checks:
        if not ok:
            raise ValueError(f"{owner}: {message}")


@dataclass(frozen=True)
class NetworkConfig:
    """The similarity-aware condition generator and the span decoder.

    ``decoder`` picks the span decoder: "momentdiff" (span + timestep embedding, intensity-aware cross-attention,
    shared heads) or "diffusionvmr" (1-D RoI align, proposal self-attention, dynamic interaction, cascading layers).
    """

    # condition generator (similarity-aware)
    hidden_size: int = 256  # D
    num_heads: int = 8
    ffn_size: int = 1024
    input_dropout: float = 0.5
    dropout: float = 0.1
    cross_layers: int = 2
    encoder_layers: int = 2
    relevance_feature: bool = False  # add Linear(1 -> D)(sigmoid(s_i)) to the memory the decoder reads (ours)
    # (ours) an explicit frame-query cosine (a dual-encoder channel, as a retrieval model scores): it is added to
    # the relevance logits and embedded into the video tokens before the cross layers; without it query-frame
    # similarity has to come out of attention alone, which a small model on a few thousand queries does not learn
    similarity_feature: bool = False
    # decoder
    decoder: Literal["momentdiff", "diffusionvmr"] = "momentdiff"
    decoder_layers: int = 2  # MomentDiff 2; DiffusionVMR 6
    roi_points: int = 16  # DiffusionVMR: points sampled inside each span by linear interpolation
    decoder_roi: bool = False  # MomentDiff: add the RoI-pooled memory inside each span to its query (DenoiseLoc)
    dynamic_dim: int = 64  # DiffusionVMR: width of the dynamic interaction's hidden map
    # DiffusionVMR: True = the first layer refines the noisy input span (x0_hat starts at x_t; collapses beyond one
    # DDIM step, see prvr.moments.decoders.DiffusionVMRDecoder); False = it predicts the span outright (the fix)
    first_layer_residual: bool = True

    def __post_init__(self) -> None:
        _check("MomentConfig.network", [
            (self.hidden_size % self.num_heads == 0, f"hidden_size {self.hidden_size} must divide by num_heads "
                                                     f"{self.num_heads}"),
            (self.hidden_size % 4 == 0, f"hidden_size must be a multiple of 4 (sinusoidal codes), got "
                                        f"{self.hidden_size}"),
            (self.decoder_layers >= 1, "decoder_layers must be >= 1"),
            (self.roi_points >= 1, "roi_points must be >= 1"),
        ])


@dataclass(frozen=True)
class SpanDiffusionConfig:
    """The Gaussian diffusion of (centre, width) spans and the proposals it corrupts in training."""

    steps: int = 1000  # T
    schedule: Literal["cosine", "linear"] = "cosine"
    signal_scale: float = 2.0  # lambda: x0 = lambda (2 g - 1)
    train_proposals: int = 5  # N_r; DiffusionVMR grows from 1 to this over training
    progressive_proposals: bool = False  # DiffusionVMR's 1 -> train_proposals schedule

    def __post_init__(self) -> None:
        _check("MomentConfig.diffusion", [
            (self.steps >= 1, "steps must be >= 1"),
            (self.signal_scale > 0, "signal_scale must be > 0"),
            (self.train_proposals >= 1, "train_proposals must be >= 1"),
        ])


MOMENT_METHODS = ("denoiser", "relevance_span", "refined_span")  # what InferenceConfig.method may say


@dataclass(frozen=True)
class InferenceConfig:
    """Search-time sampling and post-processing; it can change without retraining."""

    sampling_steps: int = 2  # DDIM steps
    num_spans: int = 10  # Q, spans sampled per (query, video) pair
    eta: float = 0.0  # DDIM stochasticity; 0 = deterministic
    nms_threshold: float | None = None  # temporal NMS IoU; None = off
    # Ours: span score = p_fg * exp(w * (gain - 1)), gain = the span's share of the relevance curve's best
    # contiguous mass (prvr.moments.baselines.span_relevance_gain); 0 = p_fg alone (MomentDiff).
    relevance_rescore: float = 0.0
    # Ours: add the relevance curve's best contiguous span as one more proposal, noised to this diffusion step and
    # denoised in one network pass (SDEdit-style refinement); None = random spans only.
    relevance_proposal_step: int | None = None
    # Ours: what the first moment is. "denoiser": the sampled spans by score; "relevance_span": the relevance curve's
    # best contiguous span (prvr.moments.baselines.best_contiguous_spans_se), scored as the pair's best sampled span
    # and ranked first, the sampled spans after it; "refined_span": that span refined by the decoder (the relevance
    # proposal, from relevance_proposal_step, 0 when None) ranked first the same way. Training can measure every
    # setting on the selection queries and record the best here (prvr.moments.train.select_inference).
    method: Literal["denoiser", "relevance_span", "refined_span"] = "denoiser"

    def __post_init__(self) -> None:
        _check("MomentConfig.inference", [
            (self.method in MOMENT_METHODS,
             f"method must be one of {', '.join(repr(m) for m in MOMENT_METHODS)}, got {self.method!r}"),
            (self.sampling_steps >= 1, f"sampling_steps must be >= 1, got {self.sampling_steps}"),
            (self.num_spans >= 1, "num_spans must be >= 1"),
            (self.relevance_proposal_step is None or self.relevance_proposal_step >= 0,
             f"relevance_proposal_step must be None or >= 0, got {self.relevance_proposal_step}"),
        ])


@dataclass(frozen=True)
class MatcherConfig:
    """Costs of the Hungarian matching between proposals and ground-truth spans."""

    cost_l1: float = 10.0
    cost_giou: float = 1.0
    cost_class: float = 4.0


@dataclass(frozen=True)
class MomentLossConfig:
    """Loss weights by name (``loss_<name>``; 0 skips a loss) and the loss hyper-parameters."""

    weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_MOMENT_LOSS_WEIGHTS))
    background_weight: float = 0.1  # class weight of the background class in the cross-entropy (DETR's eos_coef)
    sim_margin: float = 0.2  # ranking margin of the similarity loss
    sim_temperature: float = 0.5  # temperature of its contrastive term

    def __post_init__(self) -> None:
        unknown = sorted(set(self.weights) - set(DEFAULT_MOMENT_LOSS_WEIGHTS))
        if unknown:
            raise ValueError(f"MomentConfig.loss.weights: unknown loss name(s) {unknown}; known names are "
                             f"{sorted(DEFAULT_MOMENT_LOSS_WEIGHTS)}")


@dataclass(frozen=True)
class MomentTrainConfig:
    lr: float = 2e-4
    weight_decay: float = 1e-4
    grad_clip: float = 0.1
    batch_size: int = 32  # (query, video) pairs per step
    epochs: int = 30
    patience: int = 10  # early stopping on val R1@0.5 + R1@0.7
    eval_batch_size: int = 64
    threads: int = 1  # torch intra-op threads; 0 = torch's default
    # learning-rate schedule over the run's steps: linear warm-up over this fraction of them, then constant or a
    # linear decay to 0 (the retrieval trainer's recipe, prvr.engine.build_optimizer); 0 / "constant" = a flat lr
    warmup_fraction: float = 0.0
    lr_decay: Literal["constant", "linear"] = "constant"

    def __post_init__(self) -> None:
        _check("MomentConfig.train", [
            (0.0 <= self.warmup_fraction < 1.0, f"warmup_fraction must lie in [0, 1), got {self.warmup_fraction}"),
            (self.lr_decay in ("constant", "linear"), f"lr_decay must be 'constant' or 'linear', got "
                                                      f"{self.lr_decay!r}"),
        ])


@dataclass(frozen=True)
class VCMRConfig:
    """Corpus-level moments (VCMR): how a video's retrieval score and a moment's score combine."""

    mode: Literal["exp", "softmax"] = "exp"
    alpha: float = 20.0
    top_k: int = 10

    def __post_init__(self) -> None:
        _check("MomentConfig.vcmr", [(self.top_k >= 1, "top_k must be >= 1")])


@dataclass(frozen=True)
class MomentConfig:
    """Everything that defines a moment denoiser: data, condition, network, diffusion, losses, training, search.

    ``condition`` says what the video side is: "frames" (raw frame features) or "retrieval" (the frame tokens of a
    DreamPRVR checkpoint, i.e. what the index stores). Checks that span two groups live here; each group checks
    its own fields.
    """

    name: str = "default"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    condition: Literal["frames", "retrieval"] = "frames"
    video_dim: int = 1024  # D_v, set from the data / retrieval model at training time
    text_dim: int = 1024  # D_t, set from the data
    network: NetworkConfig = field(default_factory=NetworkConfig)
    diffusion: SpanDiffusionConfig = field(default_factory=SpanDiffusionConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    matcher: MatcherConfig = field(default_factory=MatcherConfig)
    loss: MomentLossConfig = field(default_factory=MomentLossConfig)
    train: MomentTrainConfig = field(default_factory=MomentTrainConfig)
    vcmr: VCMRConfig = field(default_factory=VCMRConfig)

    def __post_init__(self) -> None:
        steps = self.diffusion.steps
        proposal_step = self.inference.relevance_proposal_step
        _check("MomentConfig", [
            (self.inference.sampling_steps <= steps, f"inference.sampling_steps must lie in [1, diffusion.steps="
                                                     f"{steps}]"),
            (proposal_step is None or proposal_step < steps,
             f"inference.relevance_proposal_step must be None or lie in [0, diffusion.steps={steps})"),
        ])

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(config_to_dict(self), indent=indent, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, base: MomentConfig | None = None) -> MomentConfig:
        """Build from a (partial) nested dict; old flat keys are migrated first (:func:`migrate_flat_moment_config`)."""
        return config_from_dict(cls, migrate_flat_moment_config(data), base=base)

    @classmethod
    def from_json(cls, text: str) -> MomentConfig:
        """Parse the JSON of :meth:`to_json`, or the flat JSON that checkpoints held before the nesting."""
        return cls.from_dict(json.loads(text))


# ----------------------------------------------------------------------------------------------------------------
# the flat layout before the nesting

_TOP_LEVEL = ("name", "seed", "data", "condition", "video_dim", "text_dim")

# old flat field -> its dotted path now (top-level fields kept their names).
FLAT_MOMENT_FIELDS: dict[str, str] = {
    **{name: f"network.{name}" for name in (
        "hidden_size", "num_heads", "ffn_size", "input_dropout", "dropout", "cross_layers", "encoder_layers",
        "relevance_feature", "decoder", "decoder_layers", "roi_points", "decoder_roi", "dynamic_dim")},
    "diffusion_steps": "diffusion.steps",
    "schedule": "diffusion.schedule",
    "signal_scale": "diffusion.signal_scale",
    "train_proposals": "diffusion.train_proposals",
    "progressive_proposals": "diffusion.progressive_proposals",
    **{name: f"inference.{name}" for name in (
        "sampling_steps", "num_spans", "eta", "nms_threshold", "relevance_rescore", "relevance_proposal_step")},
    "cost_l1": "matcher.cost_l1",
    "cost_giou": "matcher.cost_giou",
    "cost_class": "matcher.cost_class",
    "background_weight": "loss.background_weight",
    "sim_margin": "loss.sim_margin",
    "sim_temperature": "loss.sim_temperature",
    "loss_weights": "loss.weights",
    **{name: f"train.{name}" for name in (
        "lr", "weight_decay", "grad_clip", "batch_size", "epochs", "patience", "eval_batch_size", "threads")},
    "vcmr_mode": "vcmr.mode",
    "vcmr_alpha": "vcmr.alpha",
    "vcmr_top_k": "vcmr.top_k",
}

_GROUPS = ("network", "diffusion", "inference", "matcher", "loss", "train", "vcmr")


def migrate_moment_path(path: str) -> str:
    """The nested dotted path of an override path: ``sampling_steps`` -> ``inference.sampling_steps``,
    ``loss_weights.sim_nce`` -> ``loss.weights.sim_nce``; nested paths and unknown names are returned as given."""
    head, dot, rest = path.strip().partition(".")
    return FLAT_MOMENT_FIELDS[head] + dot + rest if head in FLAT_MOMENT_FIELDS else path.strip()


def migrate_flat_moment_config(data: dict[str, Any]) -> dict[str, Any]:
    """A (partial) MomentConfig dict in the nested layout: every old flat key moves to its group.

    Nested dicts pass through unchanged, and a dict may mix both layouts as long as no field is given twice. The
    mapping is :data:`FLAT_MOMENT_FIELDS`.

    Raises:
        ValueError: for a key that is neither a MomentConfig field nor an old flat name, or a field given both flat
            and nested.
    """
    if not isinstance(data, dict):
        raise ValueError(f"MomentConfig: expected a JSON object, got {type(data).__name__}")
    unknown = sorted(set(data) - set(_TOP_LEVEL) - set(_GROUPS) - set(FLAT_MOMENT_FIELDS))
    if unknown:
        raise ValueError(f"MomentConfig: unknown key(s) {unknown}; known keys are {list(_TOP_LEVEL + _GROUPS)} "
                         f"(and, for compatibility, the flat names of before the nesting: "
                         f"{sorted(FLAT_MOMENT_FIELDS)})")
    nested: dict[str, Any] = {key: value for key, value in data.items() if key not in FLAT_MOMENT_FIELDS}
    for key, value in data.items():
        if key not in FLAT_MOMENT_FIELDS:
            continue
        group, name = FLAT_MOMENT_FIELDS[key].split(".")
        section = nested.get(group, {})
        if not isinstance(section, dict):
            raise ValueError(f"MomentConfig.{group}: expected a JSON object, got {type(section).__name__}")
        if name in section:
            raise ValueError(f"MomentConfig: {key!r} and {group}.{name} name the same field; keep only {group}.{name}")
        nested[group] = {**section, name: value}
    return nested


# ----------------------------------------------------------------------------------------------------------------
# presets and overrides


def list_moment_presets() -> list[str]:
    """Names of the bundled moment presets (``prvr/moments/presets/<name>.json``)."""
    return preset_names("prvr.moments")


def load_moment_preset(name: str) -> MomentConfig:
    """The bundled moment preset ``name``, or a JSON file path holding a (partial) MomentConfig (nested or flat)."""
    data = read_preset("prvr.moments", name, kind="moment preset")
    return MomentConfig.from_dict(data)


def apply_moment_overrides(config: MomentConfig, overrides: list[str] | tuple[str, ...]) -> MomentConfig:
    """Apply ``dotted.path=value`` overrides (JSON values or bare strings), e.g. ``network.decoder=diffusionvmr``.

    The flat names of before the nesting (``sampling_steps=4``, ``epochs=5``, ``loss_weights.sim_nce=0``) are
    accepted for compatibility and mapped to their nested paths (:data:`FLAT_MOMENT_FIELDS`).
    """
    migrated = []
    for item in overrides:
        path, equals, value = item.partition("=")
        migrated.append(migrate_moment_path(path) + equals + value if equals else item)
    return apply_overrides(config, migrated)
