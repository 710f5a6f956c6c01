"""Training-free span baselines: the best contiguous span of a per-frame curve.

Shape letters: F frames.

The best contiguous span of a curve s is the run of frames [i, j] maximising sum_{k=i..j} (s_k - mean(s)) (the
maximum-sum subarray of the mean-centred curve, Kadane's algorithm): the frames "above the per-video mean", merged
where short dips do not outweigh them. Applied to the denoiser's relevance curve it is the relevance baseline; applied
to the zero-shot cosine between frames and the pooled query it is the zero-shot floor (no trained weights at all).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["best_contiguous_span", "best_contiguous_span_seconds", "best_contiguous_spans_se", "span_relevance_gain",
           "top_contiguous_spans"]


def _checked_curve(curve: np.ndarray) -> np.ndarray:
    values = np.asarray(curve, dtype=np.float64)
    if values.ndim != 1 or values.size == 0 or not np.isfinite(values).all():
        raise ValueError(f"curve must be a non-empty finite (F,) array, got shape {values.shape}")
    return values


def _best_run(centred: np.ndarray, low: int, high: int) -> tuple[float, int, int]:
    """Kadane over ``centred[low:high]``: ``(sum, first, last)`` of its maximum-sum run (earliest, then shortest)."""
    best, best_range = -np.inf, (low, low)
    running, start = 0.0, low
    for index in range(low, high):
        value = float(centred[index])
        if running <= 0.0:
            running, start = value, index
        else:
            running += value
        if running > best:
            best, best_range = running, (start, index)
    return best, best_range[0], best_range[1]


def best_contiguous_span(curve: np.ndarray) -> tuple[int, int]:
    """The frames [first, last] (inclusive) of the maximum-sum run of ``curve - curve.mean()``.

    A constant curve (nothing above its mean) gives the whole video. Ties keep the earliest, then shortest, run.

    >>> best_contiguous_span(np.array([0.1, 0.9, 0.8, 0.3, 0.7, 0.0]))
    (1, 4)

    Args:
        curve: (F,) finite values, F >= 1.

    Returns:
        ``(first, last)`` frame indices.
    """
    return top_contiguous_spans(curve, 1)[0][:2]  # type: ignore[return-value]


def top_contiguous_spans(curve: np.ndarray, count: int, level: float = 0.0) -> list[tuple[int, int, float]]:
    """Up to ``count`` disjoint runs of frames above the curve's mean, best first, as ``(first, last, excess)``.

    With ``level`` > 0 the runs are those above ``mean + level * (max - mean)`` instead (0 = the mean, 1 = the
    peak): a higher level keeps two events of one video apart where a dip between them stays above the mean.

    The first is :func:`best_contiguous_span` (its excess is ``sum(curve[first:last + 1] - mean)``); each next one
    is the maximum-sum run of ``curve - mean`` in what the runs before it left (the frames on either side of each,
    never across one), as long as it lies above the mean (excess > 0). A constant curve gives the whole video with
    excess 0.

    >>> top_contiguous_spans(np.array([1.0, 0.0, 0.0, 1.0, 1.0, 0.0]), 3)
    [(3, 4, 1.0), (0, 0, 0.5)]

    Args:
        curve: (F,) finite values, F >= 1.
        count: runs wanted, >= 1.

    Returns:
        1 to ``count`` runs ``(first, last, excess)``, by decreasing excess (ties: the earlier run first).
    """
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    if not 0.0 <= level < 1.0:
        raise ValueError(f"level must lie in [0, 1), got {level}")
    values = _checked_curve(curve)
    if np.allclose(values - values.mean(), 0.0):
        return [(0, values.size - 1, 0.0)]
    centred = values - (values.mean() + level * (values.max() - values.mean()))
    pieces = [(0, values.size)]  # [low, high) stretches no chosen run covers
    best_of = {piece: _best_run(centred, *piece) for piece in pieces}
    runs: list[tuple[int, int, float]] = []
    while best_of and len(runs) < count:
        piece = max(best_of, key=lambda p: (best_of[p][0], -p[0]))  # the best sum; ties: the earlier stretch
        total, first, last = best_of.pop(piece)
        if runs and total <= 0.0:
            break
        runs.append((first, last, total))
        for low, high in ((piece[0], first), (last + 1, piece[1])):
            if high > low:
                best_of[(low, high)] = _best_run(centred, low, high)
    return runs


def best_contiguous_span_seconds(curve: np.ndarray, duration: float) -> tuple[float, float]:
    """:func:`best_contiguous_span` in seconds: frame i covers [i / F, (i + 1) / F] of the duration."""
    first, last = best_contiguous_span(curve)
    count = len(curve)
    return first / count * duration, min((last + 1) / count, 1.0) * duration


def _centred_runs(relevance: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Batched maximum-sum runs of the mean-centred curves, from prefix sums.

    Returns:
        ``centred (B, F)`` (0 on padding), ``run_sum (B, F)``: the best sum of a run ending at frame j (-inf on
        padding), ``run_start (B, F)``: where that run starts, and ``count (B,)``: valid frames per pair.
    """
    mask_f = mask.to(relevance.dtype)  # (B, F)
    count = mask_f.sum(dim=1).clamp_min(1.0)  # (B,)
    centred = (relevance - ((relevance * mask_f).sum(dim=1) / count)[:, None]) * mask_f  # (B, F)
    prefix = torch.cumsum(centred, dim=1)  # (B, F) sum of frames 0..j
    low, run_start = torch.cummin(prefix - centred, dim=1)  # (B, F) least sum of frames 0..i-1 over i <= j
    run_sum = (prefix - low).masked_fill(~mask, float("-inf"))  # (B, F)
    return centred, run_sum, run_start, count


def span_relevance_gain(spans_se: Tensor, relevance: Tensor, mask: Tensor) -> Tensor:
    """How much of the best contiguous span's relevance mass each span holds (batched).

    For a pair with valid frames F and centred curve c_k = r_k - mean(r), a span [s, e] (fractions of the video)
    holds the frames whose centres (k + 0.5) / F fall inside it, and ``gain = sum_{k in span} c_k / best`` where
    ``best`` is the maximum-sum run of c (:func:`best_contiguous_span`'s objective). The best contiguous span itself
    has gain 1; a span of frames below the mean has a negative gain. A flat curve (best ~ 0) gives 0 for every span.

    Args:
        spans_se: (B, Q, 2) normalised (start, end).
        relevance: (B, F) per-frame curve; padded entries are ignored.
        mask: (B, F) bool, True on real frames.

    Returns:
        (B, Q) gains.
    """
    centred, run_sum, _, count = _centred_runs(relevance, mask)
    best = run_sum.amax(dim=1)  # (B,)
    frames = torch.arange(relevance.shape[1], device=relevance.device, dtype=relevance.dtype)  # (F,)
    centres = (frames[None] + 0.5) / count[:, None]  # (B, F)
    inside = (centres[:, None] >= spans_se[..., :1]) & (centres[:, None] <= spans_se[..., 1:])  # (B, Q, F)
    held = (inside.to(relevance.dtype) * centred[:, None]).sum(dim=-1)  # (B, Q)
    flat = best <= 1e-8  # (B,)
    return torch.where(flat[:, None], torch.zeros_like(held), held / best.clamp_min(1e-8)[:, None])


def best_contiguous_spans_se(relevance: Tensor, mask: Tensor) -> Tensor:
    """:func:`best_contiguous_span` of B padded curves at once, as normalised (start, end) (B, 2).

    Frame k covers [k / F, (k + 1) / F] of its video (F = its valid frames); a flat curve gives the whole video.

    Args:
        relevance: (B, F) curves; padded entries are ignored.
        mask: (B, F) bool, True on real frames (each row has at least one).

    Returns:
        (B, 2) spans in [0, 1].
    """
    centred, run_sum, run_start, count = _centred_runs(relevance, mask)
    last = run_sum.argmax(dim=1)  # (B,) the first end with the best sum
    first = run_start.gather(1, last[:, None]).squeeze(1)  # (B,)
    flat = centred.abs().amax(dim=1) <= 1e-8  # (B,)
    first = torch.where(flat, torch.zeros_like(first), first)
    last = torch.where(flat, count.long() - 1, last)
    return torch.stack([first.to(relevance.dtype) / count, (last + 1).to(relevance.dtype) / count], dim=-1)
