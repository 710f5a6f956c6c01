"""Sinusoidal codes for normalised positions, spans and diffusion timesteps.

Shape letters: B batch, Q span proposals, F frames, D hidden.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["sine_code", "frame_positions", "row_frame_positions", "span_code", "TimestepEmbedding"]


def sine_code(values: Tensor, dim: int, *, scale: float = 2.0 * math.pi, temperature: float = 10000.0) -> Tensor:
    """Transformer-style sinusoidal code of scalar values (DETR / DAB-DETR use scale 2 pi for [0, 1] inputs).

    code[..., 2i] = sin(scale v / temperature^(2i / dim)), code[..., 2i + 1] = cos(same).

    Args:
        values: (...) real values.
        dim: even code width.
        scale: multiplier of the values before the frequencies.
        temperature: the largest period.

    Returns:
        (..., dim) float code.
    """
    if dim % 2:
        raise ValueError(f"sine_code needs an even dim, got {dim}")
    exponents = torch.arange(0, dim, 2, device=values.device, dtype=torch.float32) / dim  # (dim/2,)
    frequencies = temperature ** (-exponents)  # (dim/2,)
    angles = values.float()[..., None] * scale * frequencies  # (..., dim/2)
    return torch.stack([angles.sin(), angles.cos()], dim=-1).flatten(-2)  # (..., dim)


def frame_positions(num_frames: int, device: torch.device | None = None) -> Tensor:
    """Normalised centres (i + 0.5) / F of F uniformly spaced frame tokens: (F,)."""
    return (torch.arange(num_frames, device=device, dtype=torch.float32) + 0.5) / num_frames


def row_frame_positions(mask: Tensor) -> Tensor:
    """Per-row normalised frame centres (i + 0.5) / F_b of zero-padded videos (0 on padding): (B, F) bool -> (B, F).

    Each row is normalised by its own length F_b = mask.sum(1), so a video's positions do not depend on the other
    videos of the batch (the real frames are a prefix of each row).
    """
    lengths = mask.sum(1, keepdim=True).clamp_min(1).float()  # (B, 1)
    index = torch.arange(mask.shape[1], device=mask.device, dtype=torch.float32)[None]  # (1, F)
    return ((index + 0.5) / lengths) * mask.float()


def span_code(spans_cw: Tensor, dim: int) -> Tensor:
    """Code of (centre, width) spans: sine(centre) (dim/2) ++ sine(width) (dim/2): (..., 2) -> (..., dim)."""
    centre, width = spans_cw.unbind(-1)
    return torch.cat([sine_code(centre, dim // 2), sine_code(width, dim // 2)], dim=-1)


class TimestepEmbedding(nn.Module):
    """Noise-intensity embedding: sine code of the integer timestep -> Linear -> SiLU -> Linear (improved-DDPM)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: Tensor) -> Tensor:
        """(B,) long timesteps -> (B, D)."""
        return self.mlp(sine_code(t.float(), self.dim, scale=1.0))
