"""Corpus-level moments (VCMR): combine the retrieval score of each top-K video with its moments' scores.

Shape letters: K retrieved videos of one query, M moments per video.

``exp`` mode: score(v, m) = exp(alpha * S(q, v)) * p_fg(m) (alpha ~ 20-30 for cosine scores; computed as
exp(alpha * (S - max S)) so large alphas cannot overflow: one positive factor per query, the ranking is the same).
``softmax`` mode: softmax_k(alpha * S(q, v_k)) * p_fg(m), a probability over the K videos times the moment's. Within
one query it ranks exactly like ``exp`` (it divides by a per-query constant); it differs only where scores of
different queries are compared (thresholds, calibration).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from prvr.types import Localization

__all__ = ["CorpusMoment", "corpus_moment_scores", "rank_corpus_moments"]


@dataclass(frozen=True)
class CorpusMoment:
    """One row of a corpus-level moment ranking."""

    video_id: str
    start_sec: float
    end_sec: float
    score: float


def corpus_moment_scores(video_scores: np.ndarray, moment_scores: np.ndarray, *,
                         mode: Literal["exp", "softmax"] = "exp", alpha: float = 20.0) -> np.ndarray:
    """Combined scores of M moments in each of K videos.

    Args:
        video_scores: (K,) retrieval scores S(q, v).
        moment_scores: (K, M) foreground probabilities p_fg(m) (NaN = no moment in that slot).
        mode: "exp" or "softmax" (see the module docstring).
        alpha: the sharpness of the video term.

    Returns:
        (K, M) combined scores (NaN where ``moment_scores`` is NaN).
    """
    scores = np.asarray(video_scores, dtype=np.float64)
    if scores.ndim != 1 or not np.isfinite(scores).all():
        raise ValueError(f"video_scores must be a finite (K,) array, got shape {scores.shape}")
    moments = np.asarray(moment_scores, dtype=np.float64)
    if moments.ndim != 2 or moments.shape[0] != scores.shape[0]:
        raise ValueError(f"moment_scores must be (K, M) with K = {scores.shape[0]}, got {moments.shape}")
    logits = alpha * (scores - scores.max()) if scores.size else scores  # (K,)
    if mode == "exp":
        weights = np.exp(logits)
    elif mode == "softmax":
        weights = np.exp(logits) / np.exp(logits).sum()
    else:
        raise ValueError(f"unknown VCMR mode {mode!r}; choose 'exp' or 'softmax'")
    return weights[:, None] * moments


def rank_corpus_moments(video_ids: Sequence[str], video_scores: Sequence[float] | np.ndarray,
                        localizations: Sequence[Localization], *, mode: Literal["exp", "softmax"] = "exp",
                        alpha: float = 20.0, top_k: int | None = None, max_rows: int = 100) -> list[CorpusMoment]:
    """Rank every moment of the top-K videos of one query by the combined score.

    Args:
        video_ids: the retrieved videos, best first.
        video_scores: their retrieval scores.
        localizations: one :class:`~prvr.types.Localization` per video.
        mode, alpha: see :func:`corpus_moment_scores`.
        top_k: use only the first K videos (None = all given).
        max_rows: keep at most this many rows.

    Returns:
        Rows sorted by combined score, best first (ties keep the video order, then the moment order).
    """
    if not len(video_ids) == len(video_scores) == len(localizations):
        raise ValueError(f"got {len(video_ids)} videos, {len(video_scores)} scores and {len(localizations)} "
                         "localisations; give one of each per retrieved video")
    count = len(video_ids) if top_k is None else min(int(top_k), len(video_ids))
    if count == 0:
        return []
    width = max(len(loc.moments) for loc in localizations[:count])
    if width == 0:
        return []
    p_fg = np.full((count, width), np.nan)  # (K, M)
    for k, loc in enumerate(localizations[:count]):
        p_fg[k, : len(loc.moments)] = [m.score for m in loc.moments]
    combined = corpus_moment_scores(np.asarray(video_scores[:count], dtype=np.float64), p_fg, mode=mode,
                                    alpha=alpha)
    flat = np.where(np.isnan(combined), -np.inf, combined).ravel()  # (K * M,)
    order = np.argsort(-flat, kind="stable")
    rows: list[CorpusMoment] = []
    for index in order[:max_rows]:
        if not np.isfinite(flat[index]):
            break
        k, m = divmod(int(index), width)
        moment = localizations[k].moments[m]
        rows.append(CorpusMoment(video_ids[k], moment.start_sec, moment.end_sec, float(flat[index])))
    return rows
