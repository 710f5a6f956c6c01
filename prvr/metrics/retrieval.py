"""PRVR text-to-video retrieval metrics: tie-aware ranks (chunked over queries), R@K, SumR, median and mean rank.

Shape letters: Nq queries, V videos, D hidden. Each query has exactly one relevant video (its ``target`` column).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = ["DEFAULT_KS", "ranks_from_scores", "chunked_ranks", "recall_metrics", "format_metrics"]

logger = logging.getLogger(__name__)

DEFAULT_KS: tuple[int, ...] = (1, 5, 10, 100)


def ranks_from_scores(scores: Tensor, target: Tensor) -> Tensor:
    """1-based rank of each query's relevant video, ties counted against the query.

    Rule: ``rank = 1 + #{v : s_v > s_target} + #{v != target : s_v == s_target}``, i.e. the relevant video is
    placed after every video with a strictly greater score AND after every other video with an equal score (the
    pessimistic tie rule: a model that scores everything equal gets rank V, not 1).

    Args:
        scores: (Nq, V) query-to-video scores, higher is better; NaN is rejected.
        target: (Nq,) long, column of each query's relevant video.

    Returns:
        (Nq,) long ranks in [1, V], on the scores' device.

    Raises:
        ValueError: on bad shapes, out-of-range targets or NaN scores.
    """
    if scores.dim() != 2:
        raise ValueError(f"scores must be (Nq, V), got shape {tuple(scores.shape)}")
    if target.shape != (scores.shape[0],):
        raise ValueError(f"target must be (Nq,) = ({scores.shape[0]},), got shape {tuple(target.shape)}")
    num_queries, num_videos = scores.shape
    if num_queries == 0:
        return torch.zeros(0, dtype=torch.long, device=scores.device)
    target = target.to(device=scores.device, dtype=torch.long)
    low, high = int(target.min()), int(target.max())
    if low < 0 or high >= num_videos:
        raise ValueError(f"target values must lie in [0, V={num_videos}), got [{low}, {high}]")
    if bool(torch.isnan(scores).any()):
        raise ValueError("scores contain NaN; ranks would be meaningless (check the model outputs)")
    target_scores = scores.gather(1, target.unsqueeze(1))  # (Nq, 1)
    greater = (scores > target_scores).sum(dim=1)  # (Nq,)
    equal_others = (scores == target_scores).sum(dim=1) - 1  # (Nq,) minus the target itself
    return 1 + greater + equal_others


def chunked_ranks(
    query_vectors: Tensor,
    score_fn: Callable[[Tensor], Tensor],
    target: Tensor,
    chunk: int = 1024,
) -> Tensor:
    """Ranks of all queries, scoring ``chunk`` queries at a time so the full (Nq, V) matrix never exists.

    ``score_fn`` maps a (nq, D) slice of ``query_vectors`` to its (nq, V) score rows against the whole corpus
    (it may itself chunk over videos, e.g. with :func:`prvr.similarity.token_max_scores`). Runs under
    ``torch.no_grad``; ties are resolved as in :func:`ranks_from_scores`.

    Args:
        query_vectors: (Nq, D) query vectors (any leading-dim-sliceable tensor).
        score_fn: scorer of a chunk of queries.
        target: (Nq,) long, column of each query's relevant video.
        chunk: queries per call of ``score_fn``.

    Returns:
        (Nq,) long ranks on the CPU.
    """
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    num_queries = query_vectors.shape[0]
    if target.shape != (num_queries,):
        raise ValueError(f"target must be (Nq,) = ({num_queries},), got shape {tuple(target.shape)}")
    parts: list[Tensor] = []
    num_videos: int | None = None
    with torch.no_grad():
        for start in range(0, num_queries, chunk):
            scores = score_fn(query_vectors[start : start + chunk])  # (nq, V)
            if num_videos is None:
                num_videos = scores.shape[-1]
            elif scores.shape[-1] != num_videos:
                raise ValueError(f"score_fn returned {scores.shape[-1]} columns, earlier chunks had {num_videos}")
            part_target = target[start : start + chunk].to(scores.device)  # (nq,)
            parts.append(ranks_from_scores(scores, part_target).cpu())
    if not parts:
        return torch.zeros(0, dtype=torch.long)
    return torch.cat(parts)  # (Nq,)


def recall_metrics(ranks: Tensor | np.ndarray | Sequence[int], ks: Sequence[int] = DEFAULT_KS) -> dict[str, float]:
    """Recall at K, SumR, median and mean rank from 1-based ranks.

    ``R@K = 100 * #{ranks <= K} / Nq`` (unrounded), ``SumR = sum over ks of R@K`` from the unrounded values,
    ``MedR`` = median rank (mean of the two middle ranks when Nq is even), ``MeanR`` = mean rank.

    Args:
        ranks: (Nq,) 1-based ranks.
        ks: the cut-offs K (default 1, 5, 10, 100).

    Returns:
        ``{"R@1", "R@5", "R@10", "R@100", "SumR", "MedR", "MeanR", "num_queries"}`` (one R@K per entry of ks).
    """
    values = np.asarray(ranks.detach().cpu() if isinstance(ranks, Tensor) else ranks, dtype=np.float64).ravel()
    if values.size == 0:
        raise ValueError("no ranks given; evaluate at least one query")
    if np.isnan(values).any() or (values < 1).any():
        raise ValueError("ranks must be 1-based (>= 1) and not NaN; see ranks_from_scores")
    if not ks or any(int(k) < 1 for k in ks):
        raise ValueError(f"ks must be a non-empty list of positive cut-offs, got {list(ks)}")
    metrics: dict[str, float] = {}
    for k in ks:
        metrics[f"R@{int(k)}"] = 100.0 * float(np.mean(values <= k))
    metrics["SumR"] = math.fsum(metrics[f"R@{int(k)}"] for k in ks)
    metrics["MedR"] = float(np.median(values))
    metrics["MeanR"] = float(np.mean(values))
    metrics["num_queries"] = int(values.size)
    return metrics


def format_metrics(metrics: Mapping[str, float]) -> str:
    """One line for logs, e.g. ``R@1 17.40 | R@5 39.00 | R@10 50.40 | R@100 86.20 | SumR 193.00 | MedR 10.0 ...``.

    Args:
        metrics: the output of :func:`recall_metrics` (unknown keys are appended as ``key value``).

    Returns:
        A single-line summary.
    """
    recall_keys = sorted((key for key in metrics if key.startswith("R@")), key=lambda key: int(key[2:]))
    parts = [f"{key} {metrics[key]:.2f}" for key in recall_keys]
    if "SumR" in metrics:
        parts.append(f"SumR {metrics['SumR']:.2f}")
    if "MedR" in metrics:
        parts.append(f"MedR {metrics['MedR']:.1f}")
    if "MeanR" in metrics:
        parts.append(f"MeanR {metrics['MeanR']:.1f}")
    if "num_queries" in metrics:
        parts.append(f"queries {int(metrics['num_queries'])}")
    known = set(recall_keys) | {"SumR", "MedR", "MeanR", "num_queries"}
    parts.extend(f"{key} {value}" for key, value in metrics.items() if key not in known)
    return " | ".join(parts)
