"""The two towers of DreamPRVR: the video encoder (index time) and the query encoder (query time).

Shape letters: B videos, C clip tokens, F frame tokens, K registers, Nq queries, L text tokens, D hidden.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from prvr.config import ModelConfig
from prvr.nn.blocks import RegisterGaussianBlock
from prvr.nn.layers import LearnedPositionalEncoding, LinearLayer, ModularPooling, TransformerLayer
from prvr.nn.registers import RegisterGenerator, RegisterOutput
from prvr.types import QueryBatch, VideoBatch, VideoTokens

__all__ = ["QueryEncoder", "VideoEncoder"]


class QueryEncoder(nn.Module):
    """tokens -> LinearLayer -> positions -> one transformer layer -> modular-vector pooling -> q."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        dim = config.hidden_size
        self.project = LinearLayer(config.text_dim, dim, config.dropout, relu=config.projection_relu)
        self.positions = LearnedPositionalEncoding(config.max_text_positions, dim, config.dropout)
        self.layer = TransformerLayer(dim, config.num_heads, config.ffn_size, config.dropout)
        self.pool = ModularPooling(dim)

    def forward(self, queries: QueryBatch) -> Tensor:
        """QueryBatch with tokens (Nq, L, D_text) -> (Nq, D) query vectors (not normalised)."""
        if len(queries) == 0:
            raise ValueError("no queries to encode: pass at least one query")
        if not bool(queries.mask.any(dim=1).all()):
            raise ValueError("a query has no valid token (empty text?); every query needs at least one token")
        x = self.positions(self.project(queries.tokens))  # (Nq, L, D)
        x = self.layer(x, key_mask=queries.mask)
        return self.pool(x, queries.mask)  # (Nq, D)


class VideoEncoder(nn.Module):
    """Clip and frame branches, registers from the truncated diffusion, register-augmented Gaussian blocks."""

    def __init__(self, config: ModelConfig, seed: int = 0) -> None:
        super().__init__()
        dim = config.hidden_size
        self.clip_project = LinearLayer(config.video_dim, dim, config.dropout, relu=config.projection_relu)
        self.clip_positions = LearnedPositionalEncoding(config.max_video_positions, dim, config.dropout)
        self.frame_project = LinearLayer(config.video_dim, dim, config.dropout, relu=config.projection_relu)
        self.frame_positions = LearnedPositionalEncoding(config.max_video_positions, dim, config.dropout)
        self.registers: RegisterGenerator | None = None
        if config.registers.enabled:
            self.registers = RegisterGenerator(
                config.registers, dim, config.num_heads, config.ffn_size, config.dropout, seed=seed
            )
        self.clip_block = RegisterGaussianBlock(dim, config.num_heads, config.ffn_size, config.dropout, config.block)
        self.frame_block = RegisterGaussianBlock(dim, config.num_heads, config.ffn_size, config.dropout, config.block)

    def forward(
        self, videos: VideoBatch, *, generator: torch.Generator | None = None
    ) -> tuple[VideoTokens, RegisterOutput | None]:
        """Encode B videos.

        Args:
            videos: clip_feats (B, C, D_in), frame_feats (B, F, D_in), frame_mask (B, F).
            generator: random source for the stochastic parts used in training (ignored in eval).

        Returns:
            VideoTokens (clip (B, C, D), frame (B, F, D), frame_mask, registers (B, K, D) or None) and the register
            generator's output (mu, logvar, condition) for the losses, or None when registers are off.
        """
        if len(videos) == 0:
            raise ValueError("no videos to encode: pass at least one video")
        if not bool(videos.frame_mask.any(dim=1).all()):
            raise ValueError("a video has no valid frame; zero-frame videos cannot be encoded")
        clip = self.clip_positions(self.clip_project(videos.clip_feats))  # (B, C, D)
        frame = self.frame_positions(self.frame_project(videos.frame_feats))  # (B, F, D)
        register_output = None
        registers = None
        if self.registers is not None:
            register_output = self.registers(clip, generator=generator)
            registers = register_output.registers  # (B, K, D)
        clip_mask = torch.ones(clip.shape[:2], dtype=torch.bool, device=clip.device)  # (B, C)
        clip_tokens = self.clip_block(clip, clip_mask, registers)  # (B, C, D)
        frame_tokens = self.frame_block(frame, videos.frame_mask, registers)  # (B, F, D)
        tokens = VideoTokens(clip_tokens, frame_tokens, videos.frame_mask, registers)
        return tokens, register_output
