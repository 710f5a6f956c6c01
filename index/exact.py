"""The exact reference scorer: every stored video scored from its tokens with the model's fusion weights.

Shape letters: Nq queries, V videos, R token rows, C clip tokens, F frame tokens, D hidden, K results per query.

``score(q, v) = w_c * max_i cos(q, clip_i) + w_f * max_{valid j} cos(q, frame_j)`` over the stored (bf16) tokens, as
``prvr.index.rerank.exact_rerank`` computes it for candidates. Approximate search is measured against it (the faiss
contrib habit): calibration (:func:`exact_topk`) and the index benchmark (:func:`exact_scores`, one GEMM per block of
token rows, the fast whole-corpus path). The weights are arguments, read from the index (``FaissTokenIndex``'s
``clip_weight`` / ``frame_weight``, saved with it) or the model config (``ModelConfig.clip_weight`` / ``frame_weight``).
"""

from __future__ import annotations

import numpy as np

from prvr.index.bank import VideoTerm
from prvr.index.protocol import Candidates
from prvr.index.rerank import exact_rerank
from prvr.index.token_store import TokenStore

__all__ = ["exact_scores", "exact_topk", "top_pairs"]


def exact_topk(
    queries: np.ndarray, store: TokenStore, k: int, *, clip_weight: float, frame_weight: float,
    video_term: VideoTerm | None = None,
) -> list[list[tuple[int, float]]]:
    """Brute force through the re-rank: the exact top-k of each (Nq, D) query over every stored video.

    Every stored video is a candidate of ``exact_rerank``, so removed (tombstoned) rows are skipped and the scores
    are bit-identical to the re-rank's. Ties are broken by increasing video id. With ``video_term`` (the query-bank
    offsets ``alpha * t(v)``, ``index.bank``) the scores are the corrected ones search returns.

    Returns:
        Per query, up to k ``(video_id, score)`` pairs, best first.
    """
    all_ids = np.asarray(store.video_ids, dtype=np.int64)
    everything = Candidates(all_ids, np.zeros(all_ids.shape[0], dtype=np.float32))
    return exact_rerank(queries, [everything] * queries.shape[0], store, clip_weight=clip_weight,
                        frame_weight=frame_weight, k=k, video_term=video_term)


def exact_scores(
    store: TokenStore,
    queries: np.ndarray,
    *,
    clip_weight: float,
    frame_weight: float,
    videos_per_step: int = 4096,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact scores of every stored video: one GEMM per block of consecutive videos of a shard, then per-video
    maxima with ``np.maximum.reduceat`` over the clip and frame segments (each video's rows are contiguous).

    The queries are L2-normalised here; the stored tokens are used as stored (a store written with
    ``normalize=True`` holds unit tokens, so the products are cosines; a compressed store is decoded on the fly).
    Needs a store without removed rows.

    Args:
        store: the token store.
        queries: (Nq, D) query vectors.
        clip_weight: w_c.
        frame_weight: w_f.
        videos_per_step: videos scored per GEMM.

    Returns:
        (video ids (V,) sorted increasing, scores (Nq, V) float32).
    """
    if videos_per_step < 1:
        raise ValueError(f"videos_per_step must be >= 1, got {videos_per_step}")
    ids = np.sort(np.asarray(store.video_ids, dtype=np.int64))
    shards, first_rows, num_clips, num_frames = store.locate(ids)
    q = np.ascontiguousarray(queries, dtype=np.float32)
    q = q / np.linalg.norm(q, axis=1, keepdims=True)  # (Nq, D)
    clip_best = np.empty((ids.shape[0], q.shape[0]), dtype=np.float32)  # (V, Nq)
    frame_best = np.empty_like(clip_best)
    for shard in np.unique(shards).tolist():
        members = np.flatnonzero(shards == shard)
        members = members[np.argsort(first_rows[members])]  # storage order
        for offset in range(0, members.shape[0], videos_per_step):
            block = members[offset : offset + videos_per_step]
            starts = first_rows[block].astype(np.int64)
            ends = starts + num_clips[block] + num_frames[block]
            if not np.array_equal(starts[1:], ends[:-1]):
                raise RuntimeError("exact_scores expects contiguous video blocks (no tombstones); compact the store "
                                   "or use exact_topk")
            first, last = int(starts[0]), int(ends[-1])
            scores = store.row_scores(shard, slice(first, last), q)  # (R, Nq), decoded from any encoding
            clip_starts = starts - first
            frame_starts = clip_starts + num_clips[block]
            bounds = np.stack([clip_starts, frame_starts], axis=1).reshape(-1)  # (2b,) segment starts
            maxima = np.maximum.reduceat(scores, bounds, axis=0)  # (2b, Nq)
            clip_best[block] = maxima[0::2]
            frame_best[block] = maxima[1::2]
    total = clip_weight * clip_best + frame_weight * frame_best  # (V, Nq)
    return ids, np.ascontiguousarray(total.T)


def top_pairs(ids: np.ndarray, scores: np.ndarray, k: int) -> list[list[tuple[int, float]]]:
    """Per query row of (Nq, V) ``scores`` the top-k (video id, score), ties by increasing id."""
    out = []
    for row in scores:
        order = np.lexsort((ids, -row))[:k]
        out.append([(int(ids[i]), float(row[i])) for i in order])
    return out
