"""Typed, frozen configuration for every component, JSON presets, and dotted-path overrides.

The dataclasses below are the single source of truth for hyper-parameters. A preset is a small JSON file
under ``prvr/presets/`` holding only the values that differ from the defaults (the defaults are the published
ActivityNet settings of DreamPRVR). The full config is saved inside every checkpoint and index.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Literal, TypeVar

__all__ = [
    "DataConfig",
    "DiffusionConfig",
    "BlockConfig",
    "RegisterConfig",
    "EventConfig",
    "ModelConfig",
    "LossConfig",
    "TrainConfig",
    "ExperimentConfig",
    "list_presets",
    "load_preset",
    "apply_overrides",
    "config_to_dict",
    "config_from_dict",
]

T = TypeVar("T")

DEFAULT_LOSS_WEIGHTS: dict[str, float] = {
    "nce_clip": 0.02,
    "trip_clip": 1.0,
    "nce_frame": 0.04,
    "trip_frame": 1.0,
    "div": 0.003,
    "qsp": 0.01,
    "kl": 1e-4,
    "dre": 1e-3,
    # Not in the paper: InfoNCE on the fused cosine score over a temperature (loss.nce_temperature). Off by default;
    # the capproxy preset turns it on (docs/BENCHMARKS.md measures it).
    "nce_fused": 0.0,
}


@dataclass(frozen=True)
class DataConfig:
    """Feature names and the per-video preprocessing of the PRVR family (MS-SL onwards)."""

    video_feature: str = "i3d"  # FeatureData/<video_feature>/ (feature.hdf5 or BigFile files)
    video_backbone: str | None = None  # id of the frame backbone of those features (from the feature file)
    text_feature: str = "roberta"  # TextData/<text_feature>_<collection>_query_feat.hdf5
    # id of the text backbone of those query features (from the query feature file; `prvr extract-text` records it),
    # checked against the query encoder an index records (prvr.text_encoders.check_text_backbone)
    text_backbone: str | None = None
    clip_bins: int = 32  # C: clip tokens per video (bin means)
    max_frames: int = 128  # F: frame tokens are bin means above this length
    max_query_tokens: int = 30  # L: query tokens kept
    # L2-normalise each query token (the family's preprocessing); the zero-shot model turns it off so its mean-pooled
    # query is the backbone's own mean-pooled sentence vector (prvr.zero_shot)
    normalize_query_tokens: bool = True
    cache_in_memory: bool = True  # keep preprocessed videos in RAM after the first epoch


@dataclass(frozen=True)
class DiffusionConfig:
    """The truncated diffusion that estimates registers (DRE). The schedule lives in ``prvr.schedule``."""

    steps: int = 10  # T; 0 = registers straight from the initialiser (ablation)
    schedule: Literal["cosine", "linear"] = "cosine"
    cosine_s: float = 0.008
    max_beta: float = 0.999
    clip_sample: float = 1.0  # x0_hat is clamped to [-clip_sample, clip_sample]
    noise: Literal["gaussian", "video_centric"] = "gaussian"  # training noise; ref code: video_centric
    stochastic_in_train: bool = True  # add posterior noise while generating in training (eval is always noise-free)
    hidden_ratio: float = 0.25  # bottleneck width of the denoiser's residual layers, as a fraction of D
    num_layers: int = 2


@dataclass(frozen=True)
class RegisterConfig:
    """Global video "registers": condition (Q-Former), initialiser (PVS), targets (TPS), estimator (DRE)."""

    enabled: bool = True
    num_registers: int = 4  # K
    init: Literal["pvs", "gaussian"] = "pvs"  # video-centric PVS, or N(0, I) (ablation)
    sample_init_in_train: bool = False  # x_T = mu + sigma * eps in training; ref code: x_T = mu
    gpo_temperature: float = 0.1
    gpo_hidden: int = 32
    perturb_scale: float = 0.1  # TPS: alpha ~ N(1, (scale*s)^2), beta ~ N(c, (scale*s)^2)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)


@dataclass(frozen=True)
class BlockConfig:
    """The register-augmented multi-branch Gaussian block with per-time-step mixture fusion."""

    # One transformer layer per entry: None = plain attention, a float = Gaussian prior of that width.
    widths: tuple[float | None, ...] = (None, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)
    fusion_temperature: float = 0.6  # tau_sft


@dataclass(frozen=True)
class EventConfig:
    """Event tokens of the zero-shot model (``prvr.events``): training-free segments of each video's frames.

    Off by default. When on, every video's frame tokens are followed by exactly ``max_events`` event tokens (the
    L2-normalised means of its events' frames, the last repeated to fill the slots; a repeat changes no
    max-over-tokens score), computed at index time; the zero-shot moment localiser drops those trailing tokens.

    Attributes:
        enabled: add the event tokens.
        scales: Haar half-widths h (frames): at scale h a boundary's change is ``1 - cos`` of the means of the h
            frames before and after it (h = 1: the adjacent-frame cosine).
        threshold: a change point must exceed the scale's median change by ``threshold`` x its median absolute
            deviation (and be the largest within h // 2 boundaries).
        min_length: frames per event at least.
        max_events: event tokens per video (events beyond it are dropped, coarsest scale kept first).
    """

    enabled: bool = False
    scales: tuple[int, ...] = (2, 4, 8)
    threshold: float = 1.0
    min_length: int = 2
    max_events: int = 8

    def __post_init__(self) -> None:
        if not self.scales or any(isinstance(h, bool) or not isinstance(h, int) or h < 1 for h in self.scales):
            raise ValueError(f"events.scales must be positive frame counts, got {self.scales!r}")
        if isinstance(self.min_length, bool) or not isinstance(self.min_length, int) or self.min_length < 1:
            raise ValueError(f"events.min_length must be an int >= 1, got {self.min_length!r}")
        if isinstance(self.max_events, bool) or not isinstance(self.max_events, int) or self.max_events < 1:
            raise ValueError(f"events.max_events must be an int >= 1, got {self.max_events!r}")
        if not self.threshold >= 0:
            raise ValueError(f"events.threshold must be >= 0 (median absolute deviations), got {self.threshold!r}")

    @property
    def tokens_added(self) -> int:
        """Event tokens each video gains: ``max_events`` when enabled, else 0."""
        return self.max_events if self.enabled else 0


@dataclass(frozen=True)
class ModelConfig:
    """DreamPRVR. Input dims default to the published ActivityNet features; training sets them from the data.

    ``kind`` picks the model a checkpoint rebuilds (``prvr.checkpoint.load_model``): ``dreamprvr`` (trained, the
    default, so every older checkpoint loads unchanged) or ``zero_shot`` (``prvr.zero_shot.ZeroShotPRVR``: a joint
    image-text backbone's own embeddings; it reads only the dims and the score weights below).
    """

    kind: Literal["dreamprvr", "zero_shot"] = "dreamprvr"
    video_dim: int = 1024
    text_dim: int = 1024
    hidden_size: int = 384  # D
    num_heads: int = 4
    ffn_size: int = 1536
    dropout: float = 0.31
    projection_relu: bool = True  # input projections end in ReLU (MS-SL family); false keeps the signed features
    max_video_positions: int = 128
    max_text_positions: int = 30
    clip_weight: float = 0.6  # w_c
    frame_weight: float = 0.4  # w_f
    block: BlockConfig = field(default_factory=BlockConfig)
    registers: RegisterConfig = field(default_factory=RegisterConfig)
    events: EventConfig = field(default_factory=EventConfig)  # zero-shot only (prvr.events)


@dataclass(frozen=True)
class LossConfig:
    """Loss hyper-parameters. ``weights`` maps loss names to weights; a weight of 0 skips the loss."""

    weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_LOSS_WEIGHTS))
    margin: float = 0.2  # triplet margin
    nce_temperature: float = 0.05  # temperature of the fused-cosine InfoNCE ("nce_fused")
    hard_negative_start_epoch: int = 20  # epochs (0-based) before this use random negatives
    hard_negative_pool: int = 20  # text-to-video hard negatives are drawn uniformly from the top-N
    qsp_temperature: float = 0.08
    div_alpha: float = 32.0
    div_lambda: float = 1.0
    div_delta: float = 0.2


@dataclass(frozen=True)
class TrainConfig:
    lr: float = 2.5e-4
    weight_decay: float = 0.01
    warmup_fraction: float = 0.01
    grad_clip: float = 1.0
    batch_videos: int = 128  # each video comes with all of its captions
    epochs: int = 100
    patience: int = 10  # early stopping on validation SumR
    num_workers: int = 0
    eval_query_chunk: int = 1024
    eval_video_chunk: int = 512
    device: str = "auto"  # "auto" = cuda when available, else cpu
    threads: int = 0  # torch intra-op threads; 0 = leave torch's default


@dataclass(frozen=True)
class ExperimentConfig:
    name: str = "activitynet"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(config_to_dict(self), indent=indent, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ExperimentConfig:
        return config_from_dict(cls, json.loads(text))


# ----------------------------------------------------------------------------------------------------------------
# dict <-> dataclass


def config_to_dict(config: Any) -> dict[str, Any]:
    """A JSON-ready dict of a (nested) config dataclass; tuples become lists."""
    if not dataclasses.is_dataclass(config):
        raise TypeError(f"expected a config dataclass, got {type(config).__name__}")
    return _to_plain(config)


def _to_plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return {f.name: _to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [_to_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _to_plain(v) for k, v in value.items()}
    return value


def config_from_dict(cls: type[T], data: dict[str, Any], *, base: T | None = None) -> T:
    """Build ``cls`` from a (possibly partial) dict; missing keys keep the values of ``base`` (or the defaults).

    Unknown keys raise ``ValueError`` naming the key, so a typo in a preset or an override never passes silently.
    """
    if not isinstance(data, dict):
        raise ValueError(f"{cls.__name__}: expected a JSON object, got {type(data).__name__}")
    base = base if base is not None else cls()
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown key(s) {unknown}; known keys are {sorted(names)}")
    updates: dict[str, Any] = {}
    for key, value in data.items():
        updates[key] = _coerce(hints[key], value, getattr(base, key), f"{cls.__name__}.{key}")
    return dataclasses.replace(base, **updates)


def _coerce(hint: Any, value: Any, current: Any, where: str) -> Any:
    if dataclasses.is_dataclass(hint):
        return config_from_dict(hint, value, base=current)
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where}: expected a list, got {value!r}")
        inner = args[0] if args else Any
        return tuple(_coerce(inner, v, None, where) for v in value)
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected an object, got {value!r}")
        merged = dict(current) if isinstance(current, dict) else {}
        for k, v in value.items():
            merged[str(k)] = _coerce(args[1] if args else Any, v, None, f"{where}.{k}")
        return merged
    if origin is Literal:
        if value not in args:
            raise ValueError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, current, where)
            except ValueError:
                continue
        raise ValueError(f"{where}: {value!r} does not fit {hint}")
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ValueError(f"{where}: expected true/false, got {value!r}")
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
            raise ValueError(f"{where}: expected an integer, got {value!r}")
        return int(value)
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ValueError(f"{where}: expected a string, got {value!r}")
        return value
    return value


# ----------------------------------------------------------------------------------------------------------------
# presets and overrides


def preset_names(package: str) -> list[str]:
    """Names of the presets bundled as ``<package>/presets/<name>.json``."""
    folder = resources.files(package) / "presets"
    return sorted(p.name[: -len(".json")] for p in folder.iterdir() if p.name.endswith(".json"))


def read_preset(package: str, name: str, kind: str = "preset") -> dict[str, Any]:
    """The JSON of the bundled preset ``name`` of ``package``, or of a JSON file when ``name`` ends in .json."""
    if name.endswith(".json"):
        with open(name, encoding="utf-8") as handle:
            return json.load(handle)
    path = resources.files(package) / "presets" / f"{name}.json"
    if not path.is_file():
        raise ValueError(f"unknown {kind} {name!r}; choose one of {preset_names(package)} or pass a .json file")
    return json.loads(path.read_text(encoding="utf-8"))


def list_presets() -> list[str]:
    """Names of the bundled presets (``prvr/presets/<name>.json``)."""
    return preset_names("prvr")


def load_preset(name: str) -> ExperimentConfig:
    """The bundled preset ``name``, or a JSON file path holding a (partial) ExperimentConfig."""
    data = read_preset("prvr", name)
    config = config_from_dict(ExperimentConfig, data)
    return config


def apply_overrides(config: T, overrides: list[str] | tuple[str, ...]) -> T:
    """Apply ``dotted.path=value`` overrides to any config dataclass; values are JSON (``0.2``, ``true``,
    ``[null, 1.0]``) or bare strings.

    Example: ``model.registers.enabled=false``, ``loss.weights.div=0``, ``train.epochs=5``.
    """
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like dotted.path=value, e.g. train.epochs=5")
        path, raw = item.split("=", 1)
        try:
            value: Any = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        nested: Any = value
        for key in reversed(path.strip().split(".")):
            nested = {key: nested}
        config = config_from_dict(type(config), nested, base=config)
    return config
