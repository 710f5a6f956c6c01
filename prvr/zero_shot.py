"""The zero-shot retrieval model: a joint image-text backbone's own embeddings, no training, DreamPRVR's interface.

Shape letters: B videos, C clip tokens, F frame tokens, L text tokens, Nq queries, D the backbone's joint space.

A CLIP / SigLIP backbone embeds frames (``get_image_features``) and sentences (``get_text_features``) in one space,
so a folder of videos is searchable before there is a single caption to train on (issue 20):

* frame tokens: the frame embeddings, L2-normalised (bin means above ``data.max_frames``, as for DreamPRVR);
* clip tokens: the ``data.clip_bins`` bin means of the frames, L2-normalised (``prvr.data.preprocess``);
* query: the masked mean of the query's token features (raw: ``data.normalize_query_tokens = false``),
  L2-normalised. A CLIP / SigLIP text encoder
  (``prvr.text_encoders.ClipTextEncoder``) gives one "token" per sentence, its projected text embedding, so the
  query is that embedding; token-feature text backbones (the benchmark's MiniLM) are mean-pooled.

Optional event tokens (``model.events``, off by default; ``prvr.events``): each video's frame tokens are followed by
the means of its training-free events, computed at index time, so the same max over tokens scores them.

The score is DreamPRVR's (docs/design.md §2) with its own weights: ``model.clip_weight = 0`` / ``frame_weight = 1``
(max over frames, the field's zero-shot baseline) by default. The VideoBatch it reads is already the PRVR
preprocessing (clip bins, frame tokens, L2-normalised rows), so ``encode_videos`` only re-normalises; the model has
no weights and its checkpoint is its config (``save_zero_shot_checkpoint``), which ``prvr.checkpoint.load_model``
recognises by ``model.kind = "zero_shot"``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from prvr.config import EventConfig, ExperimentConfig, ModelConfig
from prvr.similarity import video_scores
from prvr.types import QueryBatch, VideoBatch, VideoTokens

__all__ = ["ZeroShotPRVR", "ZeroShotSetup", "zero_shot_config", "save_zero_shot_checkpoint", "joint_backbone_setup",
           "features_setup", "bank_term", "ZERO_SHOT_WEIGHTS"]

ZERO_SHOT_WEIGHTS = {"clip_weight": 0.0, "frame_weight": 1.0}  # measured: docs/BENCHMARKS.md, "Zero-shot on ..."


class ZeroShotPRVR(nn.Module):
    """Frame / clip tokens and query vectors straight from a joint image-text space (no parameters)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if config.video_dim != config.text_dim:
            raise ValueError(f"a zero-shot model needs video and text features of one space, got widths "
                             f"{config.video_dim} / {config.text_dim}; use a backbone's image and text towers")
        self.config = config
        self.register_buffer("_anchor", torch.zeros(0), persistent=False)  # carries the device

    @property
    def device(self) -> torch.device:
        return self._anchor.device

    @torch.no_grad()
    def encode_videos(self, videos: VideoBatch) -> VideoTokens:
        """Preprocessed frames -> clip tokens (B, C, D) and frame tokens (B, F, D), L2-normalised; padding zero.

        With ``model.events.enabled`` every video's frame tokens are followed by its ``max_events`` event tokens
        (``prvr.events``): frame tokens (B, F + E, D), the mask True on both.
        """
        videos = videos.to(self.device)
        clip = F.normalize(videos.clip_feats.float(), dim=-1)  # (B, C, D)
        frame = F.normalize(videos.frame_feats.float(), dim=-1) * videos.frame_mask.unsqueeze(-1)  # (B, F, D)
        if self.config.events.enabled:
            return VideoTokens(clip, *self._with_events(frame, videos.frame_mask))
        return VideoTokens(clip, frame, videos.frame_mask)

    def _with_events(self, frame: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """Each video's E event tokens (``prvr.events``) right after its real frames: (B, F + E, D), (B, F + E)."""
        from prvr.events import event_tokens

        events = self.config.events
        width = frame.shape[1] + events.max_events
        out = frame.new_zeros(frame.shape[0], width, frame.shape[2])  # (B, F + E, D)
        out_mask = torch.zeros(frame.shape[0], width, dtype=torch.bool, device=frame.device)  # (B, F + E)
        for row in range(frame.shape[0]):
            count = int(mask[row].sum())
            real = frame[row, :count]  # (F_b, D), the real frames come first
            tokens = torch.from_numpy(event_tokens(real.cpu().numpy(), events)).to(frame)  # (E, D)
            out[row, :count] = real
            out[row, count:count + events.max_events] = tokens
            out_mask[row, :count + events.max_events] = True
        return out, out_mask

    @torch.no_grad()
    def encode_queries(self, queries: QueryBatch) -> Tensor:
        """Token features (Nq, L, D) -> (Nq, D): the masked mean of the tokens, L2-normalised."""
        queries = queries.to(self.device)
        mask = queries.mask.unsqueeze(-1).to(queries.tokens.dtype)  # (Nq, L, 1)
        pooled = (queries.tokens * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1.0)  # (Nq, D)
        return F.normalize(pooled.float(), dim=-1)

    def score(self, queries: Tensor, tokens: VideoTokens) -> dict[str, Tensor]:
        """Cosine max-over-tokens scores: {"clip", "frame", "total"} each (Nq, B)."""
        return video_scores(
            queries, tokens, clip_weight=self.config.clip_weight, frame_weight=self.config.frame_weight
        )


def zero_shot_config(dim: int, *, video_backbone: str | None, video_feature: str = "videos",
                     text_feature: str = "none", clip_weight: float = ZERO_SHOT_WEIGHTS["clip_weight"],
                     frame_weight: float = ZERO_SHOT_WEIGHTS["frame_weight"], name: str = "zero_shot",
                     normalize_query_tokens: bool = False, events: EventConfig | None = None,
                     base: ExperimentConfig | None = None) -> ExperimentConfig:
    """The experiment config of a zero-shot model in a D-dim joint space.

    Args:
        dim: D, the width of the backbone's image and text embeddings.
        video_backbone: the frame backbone id (``clip:name@sha12``), checked against every feature file indexed.
        video_feature / text_feature: the feature names recorded (``--data`` layouts).
        clip_weight / frame_weight: the score weights (default max over frames alone).
        normalize_query_tokens: L2-normalise query tokens before the mean (default off: the mean of the raw token
            features is the backbone's own mean-pooled sentence vector; a CLIP / SigLIP query is one token anyway).
        events: the event-token settings (``prvr.events``; default the base's, off).
        name: the config name.
        base: the data / train settings to start from (default the defaults).
    """
    if dim < 1:
        raise ValueError(f"the embedding width must be positive, got {dim}")
    if clip_weight < 0 or frame_weight < 0 or clip_weight + frame_weight <= 0:
        raise ValueError(f"score weights must be >= 0 and not both 0, got {clip_weight} / {frame_weight}")
    base = base or ExperimentConfig()
    model = dataclasses.replace(base.model, kind="zero_shot", video_dim=dim, text_dim=dim, hidden_size=dim,
                                clip_weight=float(clip_weight), frame_weight=float(frame_weight),
                                events=events if events is not None else base.model.events)
    data = dataclasses.replace(base.data, video_feature=video_feature, text_feature=text_feature,
                               video_backbone=video_backbone, normalize_query_tokens=normalize_query_tokens)
    return dataclasses.replace(base, name=name, model=model, data=data)


def save_zero_shot_checkpoint(path: str | Path, config: ExperimentConfig, *,
                              text_backbone: dict[str, Any] | None = None) -> Path:
    """Write the zero-shot model as a checkpoint (its config, no weights) that ``load_model`` reads back.

    Args:
        path: the file (written atomically).
        config: from :func:`zero_shot_config` (``model.kind == "zero_shot"``).
        text_backbone: ``{"id", "path", "kind"}`` of the query text encoder, recorded for the reader.
    """
    from prvr.checkpoint import save_checkpoint

    if config.model.kind != "zero_shot":
        raise ValueError(f"expected a zero-shot config (model.kind 'zero_shot'), got {config.model.kind!r}")
    state = {"zero_shot": {"video_backbone": config.data.video_backbone, "text_backbone": text_backbone}}
    save_checkpoint(path, model=ZeroShotPRVR(config.model), config=config, epoch=0, state=state)
    return Path(path)


# ----------------------------------------------------------------------------------------------------------------
# what `prvr build-index --zero-shot` writes


@dataclasses.dataclass(frozen=True)
class ZeroShotSetup:
    """A zero-shot model ready to index with: its config, the frame backbone spec and the query text encoder.

    Attributes:
        config: from :func:`zero_shot_config`.
        backbone: the ``<kind>:<folder or hub id>`` frame backbone for ``--videos`` (None for ``--data`` features).
        text_backbone: ``{"id", "path", "kind"}`` of the query text encoder the index records, or None.
    """

    config: ExperimentConfig
    backbone: str | None
    text_backbone: dict[str, Any] | None


def _no_text_tower(spec: str, why: str) -> ValueError:
    return ValueError(
        f"--zero-shot needs a backbone with a text tower, but {spec!r} {why}; pass a CLIP or SigLIP model "
        "(--backbone clip:PATH or siglip:PATH: its image tower embeds the frames, its text tower the queries), or "
        "train DreamPRVR on these features (`prvr train`) and index with --checkpoint instead"
    )


def joint_backbone_setup(spec: str, *, clip_weight: float = ZERO_SHOT_WEIGHTS["clip_weight"],
                         frame_weight: float = ZERO_SHOT_WEIGHTS["frame_weight"],
                         allow_download: bool = True) -> ZeroShotSetup:
    """The zero-shot model of a CLIP / SigLIP backbone spec (``clip:PATH``, ``siglip:PATH``, a hub id ...).

    Only config.json and the weight file's digest are read; the backbone id is the one ``prvr extract`` records for
    the same spec, so the features it extracts pass the index's backbone check.

    Raises:
        ValueError: the spec names a model without a text tower (a plain ViT / DINO ``vision:`` model, say), or a
            SigLIP folder under ``clip:`` (and vice versa).
    """
    from prvr.features.backbones import _backbone_id, _model_name, resolve_model_dir
    from prvr.text_encoders import JOINT_TEXT_KINDS, joint_model_kind

    kind, separator, target = spec.partition(":")
    if not separator or "/" in kind or Path(spec).expanduser().exists():
        kind, target = "clip", spec  # a bare folder or hub id means clip, as in load_image_backbone
    if kind not in JOINT_TEXT_KINDS:
        raise _no_text_tower(spec, f"is a {kind!r} image backbone")
    folder = resolve_model_dir(target, allow_download=allow_download)
    found = joint_model_kind(folder)
    if found is None:
        raise _no_text_tower(spec, f"holds no CLIP / SigLIP model (see {folder / 'config.json'})")
    if found != kind:
        raise ValueError(f"{folder} holds a {found} model; pass it as --backbone {found}:{target}")
    import json

    raw = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    if kind == "clip":
        dim = int(raw.get("projection_dim", 512))
    else:
        dim = int(raw.get("vision_config", {}).get("hidden_size", 768))
    name = _model_name(target, folder)
    backbone_id = _backbone_id(kind, name, folder)
    config = zero_shot_config(dim, video_backbone=backbone_id, clip_weight=clip_weight, frame_weight=frame_weight)
    text_backbone = {"id": backbone_id, "path": str(folder.resolve()), "kind": kind}
    return ZeroShotSetup(config, f"{kind}:{target}", text_backbone)


def features_setup(root: str | Path, collection: str, split: str, *, video_feature: str, text_feature: str,
                   text_backbone: dict[str, Any] | None, clip_weight: float = ZERO_SHOT_WEIGHTS["clip_weight"],
                   frame_weight: float = ZERO_SHOT_WEIGHTS["frame_weight"]) -> ZeroShotSetup:
    """The zero-shot model of standard-layout features whose frames and query tokens share one space.

    Raises:
        ValueError: the video and query feature widths differ (two spaces: train DreamPRVR instead).
    """
    from prvr.data.dataset import PRVRCorpus
    from prvr.engine import feature_backbone

    data = dataclasses.replace(ExperimentConfig().data, video_feature=video_feature, text_feature=text_feature)
    corpus = PRVRCorpus(root, collection, split, data)
    if corpus.video_dim != corpus.text_dim:
        raise ValueError(
            f"--zero-shot scores frames against queries in one space, but {collection} {video_feature} features are "
            f"{corpus.video_dim}-d and {text_feature} query features {corpus.text_dim}-d; use the image and text "
            "features of one CLIP / SigLIP backbone, or train DreamPRVR (`prvr train`) and pass --checkpoint"
        )
    config = zero_shot_config(corpus.video_dim, video_backbone=feature_backbone(root, collection, data),
                              video_feature=video_feature, text_feature=text_feature, clip_weight=clip_weight,
                              frame_weight=frame_weight)
    return ZeroShotSetup(config, None, text_backbone)


# ----------------------------------------------------------------------------------------------------------------
# query-bank normalisation (hubness correction)


@torch.no_grad()
def bank_term(model: Any, bank: Tensor, tokens: VideoTokens, *, k: int = 200, query_chunk: int = 1024,
              video_chunk: int = 512) -> Tensor:
    """The per-video hubness term of CSLS-style score normalisation: the mean of each video's top-k bank scores.

    ``s'(q, v) = s(q, v) - a * bank_term(v)``: a video close to every query of a bank of representative queries
    (the training captions, or a bank the user gives) is discounted. The term depends on the video only, so it is
    computed once (index time) and search pays one subtraction.

    Args:
        model: anything with ``score(queries, tokens)["total"]`` (DreamPRVR or the zero-shot model).
        bank: (Nb, D) encoded bank queries.
        tokens: V videos' tokens.
        k: bank queries averaged per video (min(k, Nb)).
        query_chunk / video_chunk: the (chunk, chunk) score blocks built at once.

    Returns:
        (V,) float32.
    """
    if bank.dim() != 2 or bank.shape[0] == 0:
        raise ValueError(f"the bank must be (Nb >= 1, D) query vectors, got {tuple(bank.shape)}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    k = min(k, bank.shape[0])
    terms = []
    for start in range(0, len(tokens), video_chunk):
        part = VideoTokens(tokens.clip[start:start + video_chunk], tokens.frame[start:start + video_chunk],
                           tokens.frame_mask[start:start + video_chunk])
        best: Tensor | None = None  # (k, v) running top-k of the bank's scores for this video chunk
        for q_start in range(0, bank.shape[0], query_chunk):
            scores = model.score(bank[q_start:q_start + query_chunk], part)["total"].float()  # (nb, v)
            stacked = scores if best is None else torch.cat([best, scores])
            best = stacked.topk(min(k, stacked.shape[0]), dim=0).values  # (k, v)
        assert best is not None
        terms.append(best.mean(dim=0))  # (v,)
    return torch.cat(terms)
