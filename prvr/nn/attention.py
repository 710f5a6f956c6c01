"""Gaussian temporal priors and the register-augmented attention masks of DreamPRVR's multi-branch block.

Shape letters: B batch (videos), L token length (padded), K registers, S = L + K sequence length, N branches.
A prior is a multiplicative factor on the scaled attention logits (see :class:`prvr.nn.layers.MultiHeadAttention`);
masks are boolean with True = "may attend".
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["MIN_WIDTH", "gaussian_prior", "stacked_priors", "register_attention_mask", "lengths_from_mask"]

logger = logging.getLogger(__name__)

MIN_WIDTH = 0.01  # widths below this are clamped (GMMFormer): sigma = max(width, MIN_WIDTH) / 9


def lengths_from_mask(mask: Tensor) -> Tensor:
    """Valid lengths of a prefix mask (valid tokens first, padding last).

    Args:
        mask: (B, L) bool, True on valid tokens.

    Returns:
        (B,) long lengths.

    Raises:
        ValueError: if a row is not of the form [True] * n + [False] * (L - n); the Gaussian prior places its
            centres by position inside the valid prefix, so holes in the mask would shift them silently.
    """
    if mask.dim() != 2 or mask.dtype != torch.bool:
        raise ValueError(f"expected a (B, L) bool mask, got {tuple(mask.shape)} {mask.dtype}")
    lengths = mask.sum(dim=1)  # (B,)
    prefix = torch.arange(mask.shape[1], device=mask.device)[None, :] < lengths[:, None]  # (B, L)
    if not torch.equal(prefix, mask):
        raise ValueError("the token mask must be a prefix mask (valid tokens first, then padding); pad at the end")
    return lengths


def _check_lengths(lengths: Tensor, max_len: int) -> None:
    if lengths.dim() != 1:
        raise ValueError(f"lengths must be a (B,) tensor, got shape {tuple(lengths.shape)}")
    if lengths.is_floating_point() or lengths.is_complex():
        raise ValueError(f"lengths must be an integer tensor, got {lengths.dtype}; pass mask.sum(1)")
    if lengths.numel() and (int(lengths.min()) < 0 or int(lengths.max()) > max_len):
        raise ValueError(
            f"lengths must lie in [0, {max_len}], got [{int(lengths.min())}, {int(lengths.max())}]; "
            "max_len is the padded length of the batch"
        )


def _gaussian_priors(
    lengths: Tensor, max_len: int, widths: Sequence[float | None], dtype: torch.dtype
) -> Tensor:
    """(B, N, max_len, max_len) priors, one per width, all branches in one vectorised pass."""
    _check_lengths(lengths, max_len)
    device = lengths.device
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    index = torch.arange(max_len, device=device, dtype=compute)  # (L,)
    n = lengths.to(compute)[:, None, None, None]  # (B, 1, 1, 1)
    centres = index[None, None, :, None] / n.clamp(min=1.0)  # (B, 1, L, 1): c_i = i / n
    positions = index[None, None, None, :] / (n - 1.0).clamp(min=1.0)  # (B, 1, 1, L): p_j = j / (n - 1), n = 1: 0
    sigmas = [max(w, MIN_WIDTH) / 9.0 if w is not None else 1.0 for w in widths]
    sigma = torch.tensor(sigmas, device=device, dtype=compute)[None, :, None, None]  # (1, N, 1, 1)
    log_g = -((positions - centres) ** 2) / (2.0 * sigma**2)  # (B, N, L, L)
    valid_row = index[None, None, :, None] < n  # (B, 1, L, 1)
    valid_col = index[None, None, None, :] < n  # (B, 1, 1, L)
    # Dividing each row by its max is subtracting the row max in log space: stable even for tiny widths where
    # every exp() of the raw exponent would underflow to 0. The max runs over the video's own columns only, so
    # the prior of a video never depends on how far the batch is padded.
    row_max = log_g.masked_fill(~valid_col, float("-inf")).amax(dim=-1, keepdim=True)  # (B, N, L, 1)
    row_max = torch.where(valid_row, row_max, torch.zeros_like(row_max))
    prior = torch.exp(log_g - row_max)  # (B, N, L, L)
    plain = torch.tensor([w is None for w in widths], device=device)[None, :, None, None]  # (1, N, 1, 1)
    keep = valid_row & valid_col & ~plain  # (B, N, L, L)
    return torch.where(keep, prior, torch.ones_like(prior)).to(dtype)


def gaussian_prior(
    lengths: Tensor, max_len: int, width: float | None, *, dtype: torch.dtype = torch.float32
) -> Tensor:
    """The Gaussian temporal prior of GMMFormer / DreamPRVR for each video of a padded batch.

    For a video of valid length n: centres c_i = i / n, positions p_j = j / (n - 1) (p = 0 when n = 1),
    sigma = max(width, 0.01) / 9, G[i, j] = exp(-(p_j - c_i)^2 / (2 sigma^2)), each row divided by its max.
    Entries in padded rows or columns are 1 (they are masked by the attention anyway).

    Args:
        lengths: (B,) integer valid lengths; the output lives on their device.
        max_len: padded length L of the batch (>= every length).
        width: the Gaussian width, or None for a plain branch (all ones).
        dtype: output dtype.

    Returns:
        (B, L, L) prior; rows of valid positions have max 1 over the valid columns.
    """
    return _gaussian_priors(lengths, max_len, [width], dtype)[:, 0]


def stacked_priors(
    lengths: Tensor,
    max_len: int,
    widths: Sequence[float | None],
    num_registers: int,
    *,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Priors of all branches over the [tokens ; registers] sequence.

    The Gaussian applies to the token-token L x L block only; token-register entries and register rows get 1.

    Args:
        lengths: (B,) integer valid token lengths.
        max_len: padded token length L.
        widths: one entry per branch, None = plain attention.
        num_registers: K (0 = no registers).
        dtype: output dtype.

    Returns:
        (B, N, L + K, L + K) priors.
    """
    if num_registers < 0:
        raise ValueError(f"num_registers must be >= 0, got {num_registers}")
    if len(widths) == 0:
        raise ValueError("widths must name at least one branch (None = plain attention)")
    priors = _gaussian_priors(lengths, max_len, widths, dtype)  # (B, N, L, L)
    return F.pad(priors, (0, num_registers, 0, num_registers), value=1.0)  # (B, N, L+K, L+K)


def register_attention_mask(token_mask: Tensor, num_registers: int) -> Tensor:
    """Which key each row of [tokens ; registers] may attend to.

    Token rows attend to valid tokens and all registers; register rows attend to valid tokens only (never to
    registers); padded token keys are masked for every row; registers are always valid keys.

    Args:
        token_mask: (B, L) bool, True on valid tokens.
        num_registers: K (0 = no registers: plain key masking).

    Returns:
        (B, L + K, L + K) bool, True where row i may attend to key j.
    """
    if token_mask.dim() != 2 or token_mask.dtype != torch.bool:
        raise ValueError(f"token_mask must be a (B, L) bool tensor, got {tuple(token_mask.shape)} {token_mask.dtype}")
    if num_registers < 0:
        raise ValueError(f"num_registers must be >= 0, got {num_registers}")
    batch, length = token_mask.shape
    size = length + num_registers
    register_keys = torch.ones(batch, num_registers, dtype=torch.bool, device=token_mask.device)
    keys = torch.cat([token_mask, register_keys], dim=1)  # (B, S)
    is_register = torch.arange(size, device=token_mask.device) >= length  # (S,)
    register_pair = is_register[:, None] & is_register[None, :]  # (S, S): register row, register key
    return keys[:, None, :] & ~register_pair[None]  # (B, S, S)
