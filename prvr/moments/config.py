"""MomentConfig: the typed, frozen configuration of the moment denoiser, its JSON presets and dotted overrides.

Presets live in ``prvr/moments/presets/<name>.json`` and hold only the values that differ from the defaults (the
defaults follow the MomentDiff / DiffusionVMR papers restated in ``spec/moment_denoiser.md``). The full config is
saved inside every moment checkpoint (key ``moment_config``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Literal

from prvr.config import DataConfig, apply_overrides, config_from_dict, config_to_dict, preset_names, read_preset

__all__ = [
    "MomentConfig",
    "DEFAULT_MOMENT_LOSS_WEIGHTS",
    "list_moment_presets",
    "load_moment_preset",
    "apply_moment_overrides",
]

# loss_<name> -> weight (spec: L_set = 10 L1 + 1 (1 - gIoU) + 4 CE, lambda_sim = 4 split over its three terms).
DEFAULT_MOMENT_LOSS_WEIGHTS: dict[str, float] = {
    "l1": 10.0,
    "giou": 1.0,
    "ce": 4.0,
    "sim_rank": 4.0,
    "sim_bce": 4.0,
    "sim_nce": 4.0,
}


@dataclass(frozen=True)
class MomentConfig:
    """Everything that defines a moment denoiser: data, condition, decoder, diffusion, losses, training, search.

    ``decoder`` picks the span decoder: "momentdiff" (span + timestep embedding, intensity-aware cross-attention,
    shared heads) or "diffusionvmr" (1-D RoI align, proposal self-attention, dynamic interaction, cascading layers).
    ``condition`` says what the video side is: "frames" (raw frame features) or "retrieval" (the frame tokens of a
    DreamPRVR checkpoint, i.e. what the index stores).
    """

    name: str = "default"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    condition: Literal["frames", "retrieval"] = "frames"
    video_dim: int = 1024  # D_v, set from the data / retrieval model at training time
    text_dim: int = 1024  # D_t, set from the data
    # condition generator (similarity-aware)
    hidden_size: int = 256  # D
    num_heads: int = 8
    ffn_size: int = 1024
    input_dropout: float = 0.5
    dropout: float = 0.1
    cross_layers: int = 2
    encoder_layers: int = 2
    relevance_feature: bool = False  # add Linear(1 -> D)(sigmoid(s_i)) to the memory the decoder reads (ours)
    # decoder
    decoder: Literal["momentdiff", "diffusionvmr"] = "momentdiff"
    decoder_layers: int = 2  # MomentDiff 2; DiffusionVMR 6
    roi_points: int = 16  # DiffusionVMR: points sampled inside each span by linear interpolation
    decoder_roi: bool = False  # MomentDiff: add the RoI-pooled memory inside each span to its query (spec: allowed)
    dynamic_dim: int = 64  # DiffusionVMR: width of the dynamic interaction's hidden map
    # diffusion
    diffusion_steps: int = 1000  # T
    schedule: Literal["cosine", "linear"] = "cosine"
    signal_scale: float = 2.0  # lambda: x0 = lambda (2 g - 1)
    train_proposals: int = 5  # N_r; DiffusionVMR grows from 1 to this over training
    progressive_proposals: bool = False  # DiffusionVMR's 1 -> train_proposals schedule
    # inference
    sampling_steps: int = 2
    num_spans: int = 10
    eta: float = 0.0
    nms_threshold: float | None = None  # temporal NMS IoU; None = off
    # Ours, inference only: span score = p_fg * exp(w * (gain - 1)), gain = the span's share of the relevance
    # curve's best contiguous mass (prvr.moments.baselines.span_relevance_gain); 0 = p_fg alone (MomentDiff).
    relevance_rescore: float = 0.0
    # Ours, inference only: add the relevance curve's best contiguous span as one more proposal, noised to this
    # diffusion step and denoised in one network pass (SDEdit-style refinement); None = random spans only.
    relevance_proposal_step: int | None = None
    # matching and losses
    cost_l1: float = 10.0
    cost_giou: float = 1.0
    cost_class: float = 4.0
    background_weight: float = 0.1
    sim_margin: float = 0.2
    sim_temperature: float = 0.5
    loss_weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_MOMENT_LOSS_WEIGHTS))
    # training
    lr: float = 2e-4
    weight_decay: float = 1e-4
    grad_clip: float = 0.1
    batch_size: int = 32  # (query, video) pairs per step
    epochs: int = 30
    patience: int = 10  # early stopping on val R1@0.5 + R1@0.7
    eval_batch_size: int = 64
    threads: int = 1  # torch intra-op threads; 0 = torch's default
    # corpus-level moments (VCMR)
    vcmr_mode: Literal["exp", "softmax"] = "exp"
    vcmr_alpha: float = 20.0
    vcmr_top_k: int = 10

    def __post_init__(self) -> None:
        checks = [
            (self.hidden_size % self.num_heads == 0, f"hidden_size {self.hidden_size} must divide by num_heads "
                                                     f"{self.num_heads}"),
            (self.hidden_size % 4 == 0, f"hidden_size must be a multiple of 4 (sinusoidal codes), got "
                                        f"{self.hidden_size}"),
            (self.decoder_layers >= 1, "decoder_layers must be >= 1"),
            (self.diffusion_steps >= 1, "diffusion_steps must be >= 1"),
            (1 <= self.sampling_steps <= self.diffusion_steps, f"sampling_steps must lie in [1, diffusion_steps="
                                                               f"{self.diffusion_steps}]"),
            (self.num_spans >= 1 and self.train_proposals >= 1, "num_spans and train_proposals must be >= 1"),
            (self.relevance_proposal_step is None or 0 <= self.relevance_proposal_step < self.diffusion_steps,
             f"relevance_proposal_step must be None or lie in [0, diffusion_steps={self.diffusion_steps})"),
            (self.signal_scale > 0, "signal_scale must be > 0"),
            (self.roi_points >= 1, "roi_points must be >= 1"),
            (self.vcmr_top_k >= 1, "vcmr_top_k must be >= 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"MomentConfig: {message}")
        unknown = sorted(set(self.loss_weights) - set(DEFAULT_MOMENT_LOSS_WEIGHTS))
        if unknown:
            raise ValueError(f"MomentConfig.loss_weights: unknown loss name(s) {unknown}; known names are "
                             f"{sorted(DEFAULT_MOMENT_LOSS_WEIGHTS)}")

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(config_to_dict(self), indent=indent, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> MomentConfig:
        return config_from_dict(cls, json.loads(text))


def list_moment_presets() -> list[str]:
    """Names of the bundled moment presets (``prvr/moments/presets/<name>.json``)."""
    return preset_names("prvr.moments")


def load_moment_preset(name: str) -> MomentConfig:
    """The bundled moment preset ``name``, or a JSON file path holding a (partial) MomentConfig."""
    data = read_preset("prvr.moments", name, kind="moment preset")
    return config_from_dict(MomentConfig, data)


def apply_moment_overrides(config: MomentConfig, overrides: list[str] | tuple[str, ...]) -> MomentConfig:
    """Apply ``dotted.path=value`` overrides (JSON values or bare strings), e.g. ``decoder=diffusionvmr``."""
    return apply_overrides(config, overrides)
