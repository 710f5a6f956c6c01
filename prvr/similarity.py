"""Query-to-video similarity: max over a video's tokens of the query-token score, clip and frame scale, fused.

Shape letters: Nq queries, B videos, T tokens per video (C clip tokens or F frame tokens), D hidden.

A video is scored against a query by its best-matching token (MS-SL / GMMFormer / DreamPRVR):
``S_clip(q, v) = max_i <q, clip_i>`` and ``S_frame(q, v) = max over valid j of <q, frame_j>``, with cosine
similarities at retrieval time and raw dot products inside the InfoNCE losses. The fused score is
``S = w_c * S_clip + w_f * S_frame``.
"""

from __future__ import annotations

import logging
from typing import Literal, overload

import torch
import torch.nn.functional as F
from torch import Tensor

from prvr.types import VideoTokens

__all__ = ["DEFAULT_MAX_ELEMENTS", "token_max_scores", "video_scores"]

logger = logging.getLogger(__name__)

# Largest (Nq_chunk, B_chunk, T) intermediate built at once: 32 Mi elements, 128 MiB in float32.
DEFAULT_MAX_ELEMENTS = 32 * 1024 * 1024


@overload
def token_max_scores(
    query: Tensor,
    tokens: Tensor,
    mask: Tensor | None = ...,
    normalize: bool = ...,
    *,
    max_elements: int = ...,
    return_argmax: Literal[False] = ...,
) -> Tensor: ...


@overload
def token_max_scores(
    query: Tensor,
    tokens: Tensor,
    mask: Tensor | None = ...,
    normalize: bool = ...,
    *,
    max_elements: int = ...,
    return_argmax: Literal[True],
) -> tuple[Tensor, Tensor]: ...


def token_max_scores(
    query: Tensor,
    tokens: Tensor,
    mask: Tensor | None = None,
    normalize: bool = False,
    *,
    max_elements: int = DEFAULT_MAX_ELEMENTS,
    return_argmax: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Score every query against every video by its best valid token.

    ``scores[n, b] = max over t with mask[b, t] of <q_n, tokens[b, t]>`` (cosine similarity when ``normalize``).
    Padded tokens get ``-inf`` before the max, so they never win. The work is chunked over videos (and over
    queries when a single video row is already too large) so that the ``(Nq_chunk, B_chunk, T)`` intermediate
    holds at most ``max_elements`` elements (at least one query x one video per step). Gradients flow to the
    winning token only, as for any max.

    Args:
        query: (Nq, D) query vectors.
        tokens: (B, T, D) video tokens.
        mask: (B, T) bool, True on real tokens; None means every token is real.
        normalize: L2-normalise queries and tokens first (cosine similarity).
        max_elements: budget for the largest intermediate tensor.
        return_argmax: also return the position of the winning token.

    Returns:
        (Nq, B) scores, or ``(scores, argmax)`` with argmax (Nq, B) long token positions when ``return_argmax``.

    Raises:
        ValueError: on inconsistent shapes, a video whose tokens are all padded, or a non-positive budget.
    """
    if query.dim() != 2 or tokens.dim() != 3:
        raise ValueError(
            f"expected query (Nq, D) and tokens (B, T, D), got {tuple(query.shape)} and {tuple(tokens.shape)}"
        )
    num_queries, dim = query.shape
    num_videos, num_tokens, token_dim = tokens.shape
    if token_dim != dim:
        raise ValueError(f"query width {dim} != token width {token_dim}; project both sides to the same D")
    if num_tokens == 0:
        raise ValueError("tokens have T = 0 positions; every video needs at least one token")
    if max_elements < 1:
        raise ValueError(f"max_elements must be positive, got {max_elements}")
    if mask is not None:
        if mask.shape != (num_videos, num_tokens):
            raise ValueError(f"mask shape {tuple(mask.shape)} != (B, T) = {(num_videos, num_tokens)}")
        mask = mask.to(device=tokens.device, dtype=torch.bool)
        empty = ~mask.any(dim=1)  # (B,)
        if bool(empty.any()):
            rows = torch.nonzero(empty).flatten()[:10].tolist()
            raise ValueError(
                f"{int(empty.sum())} video(s) have no valid token (e.g. rows {rows}); "
                "every video needs at least one True in its mask"
            )
    if normalize:
        query = F.normalize(query, dim=-1)
        tokens = F.normalize(tokens, dim=-1)

    if num_queries == 0 or num_videos == 0:
        scores = query.new_zeros((num_queries, num_videos))
        positions = torch.zeros((num_queries, num_videos), dtype=torch.long, device=query.device)
        return (scores, positions) if return_argmax else scores

    query_chunk = min(num_queries, max(1, max_elements // num_tokens))
    video_chunk = min(num_videos, max(1, max_elements // (query_chunk * num_tokens)))
    score_rows: list[Tensor] = []
    position_rows: list[Tensor] = []
    for q_start in range(0, num_queries, query_chunk):
        q = query[q_start : q_start + query_chunk]  # (nq, D)
        score_cols: list[Tensor] = []
        position_cols: list[Tensor] = []
        for b_start in range(0, num_videos, video_chunk):
            block = tokens[b_start : b_start + video_chunk]  # (b, T, D)
            pair = torch.einsum("nd,btd->nbt", q, block)  # (nq, b, T)
            if mask is not None:
                pair = pair.masked_fill(~mask[b_start : b_start + video_chunk].unsqueeze(0), float("-inf"))
            best, where = pair.max(dim=-1)  # (nq, b), (nq, b)
            score_cols.append(best)
            position_cols.append(where)
        score_rows.append(torch.cat(score_cols, dim=1))  # (nq, B)
        position_rows.append(torch.cat(position_cols, dim=1))
    scores = torch.cat(score_rows, dim=0)  # (Nq, B)
    if return_argmax:
        return scores, torch.cat(position_rows, dim=0)  # (Nq, B), (Nq, B)
    return scores


def video_scores(
    query: Tensor,
    tokens: VideoTokens,
    clip_weight: float,
    frame_weight: float,
    normalize: bool = True,
    *,
    max_elements: int = DEFAULT_MAX_ELEMENTS,
) -> dict[str, Tensor]:
    """Clip-scale, frame-scale and fused query-to-video scores.

    Args:
        query: (Nq, D) query vectors.
        tokens: the videos' clip (B, C, D) and frame (B, F, D) tokens with the (B, F) frame mask.
        clip_weight: w_c of the fused score.
        frame_weight: w_f of the fused score.
        normalize: cosine similarity (True, the retrieval score) or raw dot products.
        max_elements: intermediate budget passed to :func:`token_max_scores`.

    Returns:
        ``{"clip": (Nq, B), "frame": (Nq, B), "total": (Nq, B)}`` with
        ``total = clip_weight * clip + frame_weight * frame``.
    """
    clip = token_max_scores(query, tokens.clip, None, normalize, max_elements=max_elements)  # (Nq, B)
    frame = token_max_scores(
        query, tokens.frame, tokens.frame_mask, normalize, max_elements=max_elements
    )  # (Nq, B)
    return {"clip": clip, "frame": frame, "total": clip_weight * clip + frame_weight * frame}
