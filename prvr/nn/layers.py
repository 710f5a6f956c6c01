"""Shared building blocks: projection, learned positions, masked multi-head attention, post-LN layers, pooling.

Shape letters: B batch, L query length, S key length, D hidden, H heads.
Masks are boolean with True = "may attend / is valid"; they are turned into additive -inf only inside attention.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

__all__ = [
    "LinearLayer",
    "LearnedPositionalEncoding",
    "masked_softmax",
    "MultiHeadAttention",
    "TransformerLayer",
    "ModularPooling",
]


class LinearLayer(nn.Module):
    """LayerNorm(in) -> Dropout -> Linear(in, out) -> ReLU (the MS-SL family's input projection)."""

    def __init__(self, in_dim: int, out_dim: int, dropout: float = 0.0, relu: bool = True) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(in_dim)
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(in_dim, out_dim)
        self.relu = relu

    def forward(self, x: Tensor) -> Tensor:
        x = self.linear(self.dropout(self.norm(x)))
        return F.relu(x) if self.relu else x


class LearnedPositionalEncoding(nn.Module):
    """x + learned position embedding -> LayerNorm -> Dropout."""

    def __init__(self, max_len: int, dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.max_len = max_len
        self.embedding = nn.Embedding(max_len, dim)
        # BERT-style small init: nn.Embedding's N(0, 1) would swamp the projected content (std ~0.4) at the start
        # of training, and short CPU runs never recover from it (measured on the synthetic corpus).
        nn.init.normal_(self.embedding.weight, std=0.02)
        self.norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        length = x.shape[1]
        if length > self.max_len:
            raise ValueError(
                f"sequence of length {length} exceeds the {self.max_len} learned positions; "
                "preprocess inputs to at most that many tokens (DataConfig.max_frames / max_query_tokens)"
            )
        positions = torch.arange(length, device=x.device)
        return self.dropout(self.norm(x + self.embedding(positions)[None]))  # (B, L, D)


def masked_softmax(logits: Tensor, allowed: Tensor | None, dim: int = -1) -> Tensor:
    """Softmax over ``dim`` restricted to ``allowed`` entries; rows with no allowed entry give all zeros.

    Args:
        logits: any shape.
        allowed: bool, broadcastable to ``logits``; True = take part in the softmax. None = all.
    """
    if allowed is None:
        return torch.softmax(logits, dim=dim)
    logits = logits.masked_fill(~allowed, float("-inf"))
    any_allowed = allowed.any(dim=dim, keepdim=True)
    logits = torch.where(any_allowed, logits, torch.zeros_like(logits))
    probs = torch.softmax(logits, dim=dim)
    return probs * any_allowed.to(probs.dtype)


class MultiHeadAttention(nn.Module):
    """Multi-head attention with an optional multiplicative prior on the scaled logits (Gaussian attention).

    attn = softmax((Q K^T / sqrt(d_head)) * prior + mask), as in GMMFormer / DreamPRVR; prior=None is plain attention.
    """

    def __init__(self, dim: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % heads != 0:
            raise ValueError(f"hidden size {dim} is not divisible by the number of heads {heads}")
        self.heads = heads
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self,
        x: Tensor,
        context: Tensor | None = None,
        *,
        key_mask: Tensor | None = None,
        attn_mask: Tensor | None = None,
        prior: Tensor | None = None,
    ) -> Tensor:
        """Attend from ``x`` to ``context`` (self-attention when context is None).

        Args:
            x: (B, L, D) queries.
            context: (B, S, D) keys/values, or None for self-attention.
            key_mask: (B, S) bool, True on valid keys.
            attn_mask: (B or 1, L, S) bool, True where query i may attend to key j.
            prior: (B or 1, L, S) or (B or 1, H, L, S) multiplicative factor on the scaled logits.

        Returns:
            (B, L, D).
        """
        context = x if context is None else context
        q = rearrange(self.query(x), "b l (h d) -> b h l d", h=self.heads)
        k = rearrange(self.key(context), "b s (h d) -> b h s d", h=self.heads)
        v = rearrange(self.value(context), "b s (h d) -> b h s d", h=self.heads)
        logits = torch.einsum("bhld,bhsd->bhls", q, k) / math.sqrt(q.shape[-1])  # (B, H, L, S)
        if prior is not None:
            logits = logits * (prior if prior.dim() == 4 else prior[:, None])
        allowed = None
        if key_mask is not None:
            allowed = key_mask[:, None, None, :]  # (B, 1, 1, S)
        if attn_mask is not None:
            pair = attn_mask[:, None]  # (B, 1, L, S)
            allowed = pair if allowed is None else (allowed & pair)
        probs = self.dropout(masked_softmax(logits, allowed))
        out = torch.einsum("bhls,bhsd->bhld", probs, v)
        return self.out(rearrange(out, "b h l d -> b l (h d)"))


class TransformerLayer(nn.Module):
    """Post-LN transformer layer: h = LN(x + Drop(MHA(x))); y = LN(h + Drop(FFN(h))), FFN with ReLU."""

    def __init__(self, dim: int, heads: int, ffn_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.attention = MultiHeadAttention(dim, heads, dropout)
        self.attention_norm = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.ReLU(), nn.Dropout(dropout), nn.Linear(ffn_dim, dim))
        self.ffn_norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self,
        x: Tensor,
        context: Tensor | None = None,
        *,
        key_mask: Tensor | None = None,
        attn_mask: Tensor | None = None,
        prior: Tensor | None = None,
    ) -> Tensor:
        """(B, L, D) -> (B, L, D); arguments as in :class:`MultiHeadAttention`."""
        attended = self.attention(x, context, key_mask=key_mask, attn_mask=attn_mask, prior=prior)
        h = self.attention_norm(x + self.dropout(attended))
        return self.ffn_norm(h + self.dropout(self.ffn(h)))


class ModularPooling(nn.Module):
    """The "modular vector" pooling: masked softmax over tokens of Linear(D -> 1, no bias), weighted sum."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.score = nn.Linear(dim, 1, bias=False)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """(B, L, D), mask (B, L) -> (B, D)."""
        logits = self.score(x).squeeze(-1)  # (B, L)
        weights = masked_softmax(logits, mask)
        return torch.einsum("bl,bld->bd", weights, x)
