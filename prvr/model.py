"""DreamPRVR: encode videos once (index time), encode queries (query time), score, and the training forward pass.

Shape letters: B videos, C clip tokens, F frame tokens, K registers, Nq queries, D hidden.
Paper: Li et al., "Imagine Before Concentration: Diffusion-Guided Registers Enhance Partially Relevant Video
Retrieval" (CVPR 2026); the score it computes is stated in docs/design.md §2.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from prvr.config import ModelConfig
from prvr.encoders import QueryEncoder, VideoEncoder
from prvr.nn.registers import textual_perturbation_targets
from prvr.similarity import video_scores
from prvr.types import QueryBatch, VideoBatch, VideoTokens

__all__ = ["DreamPRVR", "count_parameters"]


class DreamPRVR(nn.Module):
    """The retrieval model. ``encode_videos`` and ``encode_queries`` are the two public entry points."""

    def __init__(self, config: ModelConfig, seed: int = 0) -> None:
        super().__init__()
        self.config = config
        self.query_encoder = QueryEncoder(config)
        self.video_encoder = VideoEncoder(config, seed=seed)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @torch.no_grad()
    def encode_videos(self, videos: VideoBatch) -> VideoTokens:
        """Video -> clip tokens and frame tokens (deterministic; run once per video at index time).

        The model is put in eval mode for the call and restored afterwards, so the tokens never depend on dropout
        or on sampling noise, nor on which other videos share the batch.
        """
        was_training = self.training
        self.eval()
        try:
            tokens, _ = self.video_encoder(videos.to(self.device))
        finally:
            self.train(was_training)
        return tokens

    @torch.no_grad()
    def encode_queries(self, queries: QueryBatch) -> Tensor:
        """Text token features -> (Nq, D) query vectors (run per query at search time)."""
        was_training = self.training
        self.eval()
        try:
            vectors = self.query_encoder(queries.to(self.device))
        finally:
            self.train(was_training)
        return vectors

    def score(self, queries: Tensor, tokens: VideoTokens) -> dict[str, Tensor]:
        """Cosine max-over-tokens scores: {"clip", "frame", "total"} each (Nq, B)."""
        return video_scores(
            queries, tokens, clip_weight=self.config.clip_weight, frame_weight=self.config.frame_weight
        )

    def forward(
        self, videos: VideoBatch, queries: QueryBatch, *, generator: torch.Generator | None = None
    ) -> dict[str, Tensor]:
        """Training pass over B videos and all their Nq captions.

        Returns the named tensors that ``prvr.losses.Criterion`` consumes: "query" (Nq, D), "clip_tokens" (B, C, D),
        "frame_tokens" (B, F, D), "frame_mask" (B, F) and, with registers, "pvs_mu"/"pvs_logvar" (B, D) and
        "dre_pred"/"dre_target" (T*B, K, D).
        """
        if queries.video_index is None:
            raise ValueError("training needs QueryBatch.video_index (the row of each query's video)")
        query = self.query_encoder(queries)  # (Nq, D)
        tokens, register_output = self.video_encoder(videos, generator=generator)
        outputs: dict[str, Tensor] = {
            "query": query,
            "clip_tokens": tokens.clip,
            "frame_tokens": tokens.frame,
            "frame_mask": tokens.frame_mask,
        }
        registers = self.video_encoder.registers
        if register_output is not None and registers is not None:
            register_config = self.config.registers
            if register_output.mu is not None and register_output.logvar is not None:
                outputs["pvs_mu"] = register_output.mu
                outputs["pvs_logvar"] = register_output.logvar
            if register_config.diffusion.steps > 0:
                targets = textual_perturbation_targets(
                    query,
                    queries.video_index,
                    num_videos=len(videos),
                    num_registers=register_config.num_registers,
                    scale=register_config.perturb_scale,
                    generator=generator,
                )  # (B, K, D)
                pred, target = registers.diffusion_targets(register_output, targets, generator=generator)
                outputs["dre_pred"] = pred
                outputs["dre_target"] = target
        return outputs


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
