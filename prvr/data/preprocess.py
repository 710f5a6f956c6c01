"""Per-video and per-query feature preprocessing of the PRVR family (MS-SL onwards) and batch collation.

Shape letters: n raw frames, C clip tokens (bins), F frame tokens, L text tokens, B videos, Nq queries,
D_in video feature width, D_text text feature width.

The clip and frame tokens follow the preprocessing that every published PRVR code base shares:

* clip tokens: the n frames are cut into C = 32 bins with boundaries ``round(linspace(0, n, C + 1))`` (numpy's
  round-half-to-even), each bin is averaged (an empty bin, which happens when n < C, takes the frame at its start
  index, clamped to n - 1, so short videos repeat frames), then every row is L2-normalised;
* frame tokens: all frames when n <= 128, else the same bin means with 128 bins; L2-normalised rows;
* query tokens: L2-normalised per token and truncated to the first 30 tokens.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch

from prvr.config import DataConfig
from prvr.types import QueryBatch, VideoBatch

__all__ = [
    "l2_normalize",
    "bin_boundaries",
    "bin_means",
    "clip_tokens",
    "frame_tokens",
    "preprocess_video",
    "preprocess_query",
    "collate_videos",
    "collate_queries",
]

logger = logging.getLogger(__name__)


def _as_float_matrix(x: np.ndarray, what: str) -> np.ndarray:
    """Check that ``x`` is a non-empty 2-D real array; return it as float32 (float64 stays float64)."""
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"{what}: expected a 2-D array (rows, features), got shape {x.shape}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{what}: expected at least one row and one column, got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float32)
    elif x.dtype != np.float64:
        x = x.astype(np.float32, copy=False)
    return x


def l2_normalize(x: np.ndarray, axis: int = -1, eps: float = 1e-12) -> np.ndarray:
    """Divide ``x`` by its L2 norm along ``axis``; an all-zero vector stays zero.

    Args:
        x: any real array.
        axis: the axis holding the vector components.
        eps: lower bound on the norm (guards against division by zero).

    Returns:
        An array of the same shape and floating dtype as ``x`` (integers become float32).
    """
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float32)
    norm = np.linalg.norm(x, axis=axis, keepdims=True)
    return (x / np.maximum(norm, eps)).astype(x.dtype, copy=False)


def bin_boundaries(n: int, bins: int) -> np.ndarray:
    """The ``bins + 1`` integer bin boundaries ``round(linspace(0, n, bins + 1))`` clamped to ``[0, n]``.

    Args:
        n: number of frames (>= 1).
        bins: number of bins (>= 1).

    Returns:
        (bins + 1,) int64 boundaries, non-decreasing, first 0 and last n.
    """
    if n < 1 or bins < 1:
        raise ValueError(f"bin_boundaries needs n >= 1 and bins >= 1, got n={n}, bins={bins}")
    bounds = np.round(np.linspace(0, n, bins + 1)).astype(np.int64)
    return np.clip(bounds, 0, n)


def bin_means(frames: np.ndarray, bins: int) -> np.ndarray:
    """Average ``frames`` over ``bins`` equal temporal bins (the PRVR "uniform feature sampling").

    Bin i covers ``frames[b_i:b_{i+1}]`` with ``b = bin_boundaries(n, bins)``; an empty bin (n < bins) takes the
    frame at index ``min(b_i, n - 1)``. The means are computed from a float64 prefix sum, so the result matches a
    per-bin ``mean`` loop to float32 precision.

    Args:
        frames: (n, D) frame features, n >= 1.
        bins: number of output rows.

    Returns:
        (bins, D) bin means, float32 (float64 when the input is float64).
    """
    frames = _as_float_matrix(frames, "bin_means frames")
    n = frames.shape[0]
    bounds = bin_boundaries(n, bins)
    starts, ends = bounds[:-1], bounds[1:]  # (bins,), (bins,)
    prefix = np.zeros((n + 1, frames.shape[1]), dtype=np.float64)  # (n + 1, D)
    np.cumsum(frames, axis=0, dtype=np.float64, out=prefix[1:])
    counts = ends - starts  # (bins,)
    sums = prefix[ends] - prefix[starts]  # (bins, D)
    means = sums / np.maximum(counts, 1)[:, None]  # (bins, D)
    empty = counts == 0
    if empty.any():
        means[empty] = frames[np.minimum(starts[empty], n - 1)]
    return means.astype(frames.dtype, copy=False)


def clip_tokens(frames: np.ndarray, bins: int = 32) -> np.ndarray:
    """Clip tokens: L2-normalised bin means over ``bins`` bins.

    Args:
        frames: (n, D_in) raw frame features.
        bins: C, the number of clip tokens.

    Returns:
        (C, D_in) float32 (float64 for float64 input).
    """
    return l2_normalize(bin_means(frames, bins))


def frame_tokens(frames: np.ndarray, max_frames: int = 128) -> np.ndarray:
    """Frame tokens: all frames if n <= ``max_frames``, else ``max_frames`` bin means; rows L2-normalised.

    Args:
        frames: (n, D_in) raw frame features.
        max_frames: the largest number of frame tokens.

    Returns:
        (F, D_in) with F = min(n, max_frames), float32 (float64 for float64 input).
    """
    frames = _as_float_matrix(frames, "frame_tokens frames")
    if max_frames < 1:
        raise ValueError(f"max_frames must be >= 1, got {max_frames}")
    if frames.shape[0] > max_frames:
        frames = bin_means(frames, max_frames)
    return l2_normalize(frames)


def preprocess_video(frames: np.ndarray, config: DataConfig) -> tuple[np.ndarray, np.ndarray]:
    """Clip and frame tokens of one video, as every PRVR model of this project consumes them.

    Args:
        frames: (n, D_in) raw backbone features of one video.
        config: gives ``clip_bins`` (C) and ``max_frames``.

    Returns:
        ``(clip, frames)``: (C, D_in) and (F, D_in) float32 arrays, F = min(n, config.max_frames).
    """
    frames = _as_float_matrix(frames, "preprocess_video frames")
    clip = clip_tokens(frames, config.clip_bins).astype(np.float32, copy=False)
    frame = frame_tokens(frames, config.max_frames).astype(np.float32, copy=False)
    return clip, frame


def preprocess_query(tokens: np.ndarray, max_tokens: int = 30, *, normalize: bool = True) -> np.ndarray:
    """Query tokens: truncated to the first ``max_tokens`` and L2-normalised per token.

    Args:
        tokens: (L_raw, D_text) token features of one query.
        max_tokens: the largest L kept.
        normalize: L2-normalise each token (``DataConfig.normalize_query_tokens``; off only for the zero-shot model).

    Returns:
        (L, D_text) float32 with L = min(L_raw, max_tokens).
    """
    tokens = _as_float_matrix(tokens, "preprocess_query tokens")
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    kept = tokens[:max_tokens]
    return (l2_normalize(kept) if normalize else kept).astype(np.float32, copy=False)


def _pad_stack(arrays: Sequence[np.ndarray], what: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-pad 2-D arrays (len_i, D) along the first axis to the longest one; return (N, T, D) and a (N, T) mask."""
    if len(arrays) == 0:
        raise ValueError(f"{what}: cannot collate an empty list")
    dims = {int(a.shape[1]) for a in arrays}
    if len(dims) != 1:
        raise ValueError(f"{what}: all items must share the feature width, got widths {sorted(dims)}")
    width = dims.pop()
    longest = max(int(a.shape[0]) for a in arrays)
    padded = np.zeros((len(arrays), longest, width), dtype=np.float32)  # (N, T, D)
    mask = np.zeros((len(arrays), longest), dtype=bool)  # (N, T)
    for row, array in enumerate(arrays):
        padded[row, : array.shape[0]] = array
        mask[row, : array.shape[0]] = True
    return torch.from_numpy(padded), torch.from_numpy(mask)


def collate_videos(items: Sequence[tuple[np.ndarray, np.ndarray]], video_ids: Sequence[str]) -> VideoBatch:
    """Stack preprocessed videos into a :class:`VideoBatch`, zero-padding frame tokens to the batch maximum.

    Args:
        items: B pairs ``(clip (C, D_in), frames (F_b, D_in))`` from :func:`preprocess_video`.
        video_ids: the B video ids, in the same order.

    Returns:
        VideoBatch with clip_feats (B, C, D_in), frame_feats (B, F, D_in) with F = max F_b, frame_mask (B, F).
    """
    if len(items) != len(video_ids):
        raise ValueError(f"collate_videos: {len(items)} items but {len(video_ids)} video ids")
    if len(items) == 0:
        raise ValueError("collate_videos: cannot collate an empty list of videos")
    clips = [np.asarray(clip, dtype=np.float32) for clip, _ in items]
    shapes = {c.shape for c in clips}
    if len(shapes) != 1:
        raise ValueError(f"collate_videos: clip tokens must share one shape (C, D_in), got {sorted(shapes)}")
    clip_feats = torch.from_numpy(np.stack(clips))  # (B, C, D_in)
    frame_feats, frame_mask = _pad_stack([np.asarray(f, dtype=np.float32) for _, f in items], "collate_videos")
    if frame_feats.shape[2] != clip_feats.shape[2]:
        raise ValueError(
            f"collate_videos: clip width {clip_feats.shape[2]} differs from frame width {frame_feats.shape[2]}"
        )
    return VideoBatch(clip_feats, frame_feats, frame_mask, list(video_ids))


def collate_queries(
    token_arrays: Sequence[np.ndarray],
    query_ids: Sequence[str],
    video_index: Sequence[int] | np.ndarray | None = None,
) -> QueryBatch:
    """Stack preprocessed queries into a :class:`QueryBatch`, zero-padding tokens to the longest query.

    Args:
        token_arrays: Nq arrays (L_i, D_text) from :func:`preprocess_query`.
        query_ids: the Nq query ids.
        video_index: optional (Nq,) row of each query's video in a paired VideoBatch.

    Returns:
        QueryBatch with tokens (Nq, L, D_text), mask (Nq, L), video_index (Nq,) long or None.
    """
    if len(token_arrays) != len(query_ids):
        raise ValueError(f"collate_queries: {len(token_arrays)} token arrays but {len(query_ids)} query ids")
    tokens, mask = _pad_stack([np.asarray(t, dtype=np.float32) for t in token_arrays], "collate_queries")
    index = None
    if video_index is not None:
        index = torch.as_tensor(np.asarray(video_index, dtype=np.int64))  # (Nq,)
        if index.shape != (len(query_ids),):
            raise ValueError(
                f"collate_queries: video_index has shape {tuple(index.shape)}, expected ({len(query_ids)},)"
            )
    return QueryBatch(tokens, mask, list(query_ids), index)
