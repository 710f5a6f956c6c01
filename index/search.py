"""Two-stage search: token-index candidates, exact re-rank, widened until the top-k is provably exact.

Shape letters: Nq queries, D hidden, K results per query, N candidate videos.

On an exact (Flat) index, :class:`~index.protocol.Candidates` carries ``bound``, an upper bound of the exact score
of every video it did not return (Fagin's threshold rule). When the k-th re-ranked score reaches the bound, no
unseen video can enter the top-k; otherwise the candidate count (and with it the token count ``k'``) is doubled for
that query and the search repeated. ``k'`` grows until the token searches return every token (``bound = -inf``), so
the loop ends. With ``n_candidates = V`` a single round is not enough in general: ``k' = 4 x N`` tokens can all belong
to fewer than N videos (see ``index.protocol``). Approximate indexes (IVF, HNSW, PQ) certify nothing
(``bound = +inf``) and are searched once, bounded by their calibrated nprobe / efSearch.

A compressed token store (``pqM`` / ``sq8`` / ``sq4``) scores within ``(|w_c| + |w_f|) * store.token_error`` of the
exact score, a margin (~0.1-1 for PQ) that the k-th score would have to clear above the bound: widening would then
run until every token is returned, so with a compressed store the search runs once and certifies nothing.

Two tiers (``refine``): the compressed store ranks the N candidates and keeps its best ``refine_k`` videos (the
short list), which a finer store of the same videos (``sq8`` / bfloat16 / float32, usually memory-mapped on disk
and touched only for the short list) re-scores; the top-k comes from the finer scores. Recall then depends on the
short list holding the true top-k, not on the coarse scores separating near-ties.

With a query-bank term (``video_term``, ``index.bank``) the re-ranked score is ``s(q, v) - alpha * t(v)``; a video
outside the candidates scores at most ``bound - min_v alpha * t(v)`` (its raw score is at most ``bound`` and its
offset at least the smallest one), so the k-th corrected score is certified against that shifted bound
(docs/design.md §3.11).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from prvr.index.bank import VideoTerm
from prvr.index.protocol import Candidates, VectorIndex
from prvr.index.rerank import exact_rerank
from prvr.index.token_store import TokenStore

__all__ = ["BF16_SCORE_TOLERANCE", "DEFAULT_REFINE_K", "RankedVideos", "search_topk"]

logger = logging.getLogger(__name__)

# The bound comes from float32 FAISS vectors, the re-rank from bf16-rounded unit tokens: a cosine moves by at most
# sum_i |q_i t_i| * 2^-9 <= 2^-9 per scale, so the k-th score must clear the bound by this margin per unit weight.
BF16_SCORE_TOLERANCE = 2.0**-8
DEFAULT_REFINE_K = 50  # videos the compressed first tier keeps for the finer second tier to re-score


@dataclass(frozen=True, eq=False)
class RankedVideos:
    """The exact top-k of one query over its candidates.

    Attributes:
        video_ids: (K,) int64 internal video ids, best first (ties by increasing id).
        scores: (K,) float32 exact DreamPRVR scores from the token store.
        certified: True when the top-k is provably the exact top-k of the whole index (exact index, bound met).
        n_candidates: candidate videos of the last round.
        rounds: token searches run for this query (1 without widening).
    """

    video_ids: np.ndarray
    scores: np.ndarray
    certified: bool
    n_candidates: int
    rounds: int

    def pairs(self) -> list[tuple[int, float]]:
        """``[(video_id, score), ...]`` best first."""
        return [(int(v), float(s)) for v, s in zip(self.video_ids, self.scores)]


def _certified(ranked: list[tuple[int, float]], candidates: Candidates, k: int, margin: float,
               lowest_offset: float = 0.0) -> bool:
    if candidates.bound == float("-inf"):
        return True  # every indexed video was a candidate
    if candidates.bound == float("inf") or len(ranked) < k:
        return False
    return ranked[k - 1][1] >= candidates.bound - lowest_offset + margin


def search_topk(
    index: VectorIndex,
    store: TokenStore,
    query: Any,
    k: int,
    n_candidates: int,
    *,
    clip_weight: float,
    frame_weight: float,
    widen: bool = True,
    is_exact: bool | None = None,
    video_term: VideoTerm | None = None,
    refine: TokenStore | None = None,
    refine_k: int | None = None,
) -> list[RankedVideos]:
    """Top-k videos of each query: candidates from ``index``, exact scores from ``store``, widened when needed.

    Args:
        index: the token index (``FaissTokenIndex`` or another :class:`VectorIndex`).
        store: the token store holding every indexed video.
        query: (Nq, D) float32 query vectors.
        k: results per query (>= 1).
        n_candidates: candidate videos of the first round (at least k are taken).
        clip_weight: w_c of the score.
        frame_weight: w_f of the score.
        widen: on an exact index, double the candidates of each query until its top-k is certified.
        is_exact: whether ``index`` is exact; default its ``is_exact`` attribute (False when it has none).
        video_term: the query-bank offsets ``alpha * t(v)`` subtracted from every score (``index.bank``), or None.
        refine: the finer second tier holding every video of ``store``, or None (one tier).
        refine_k: short-list length of the second tier (at least k are kept); required with ``refine``.

    Returns:
        Nq :class:`RankedVideos` (with ``refine``, the scores are the second tier's).
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    if isinstance(n_candidates, bool) or not isinstance(n_candidates, (int, np.integer)) or n_candidates < 1:
        raise ValueError(f"n_candidates must be a positive int, got {n_candidates!r}")
    if refine is not None:
        if isinstance(refine_k, bool) or not isinstance(refine_k, (int, np.integer)) or refine_k < 1:
            raise ValueError(f"refine_k must be a positive int with a refine tier, got {refine_k!r}")
        if refine.dim != store.dim:
            raise ValueError(f"the refine tier holds D = {refine.dim} tokens, the store D = {store.dim}")
    q = np.ascontiguousarray(np.asarray(query, dtype=np.float32))
    if q.ndim != 2:
        raise ValueError(f"query must be (Nq, D), got {q.shape}; a single vector is query[None]")
    exact = bool(getattr(index, "is_exact", False)) if is_exact is None else bool(is_exact)
    exact = exact and store.codec is None and refine is None  # a lossy store cannot certify (module docstring)
    margin = BF16_SCORE_TOLERANCE * (abs(clip_weight) + abs(frame_weight))
    lowest = video_term.lowest if video_term is not None else 0.0
    k = int(k)
    results: list[RankedVideos | None] = [None] * q.shape[0]
    pending = np.arange(q.shape[0])
    n = max(int(n_candidates), k)
    rounds = 0
    while pending.size:
        rounds += 1
        candidates = index.search(q[pending], n)
        ranked = exact_rerank(q[pending], candidates, store, clip_weight=clip_weight, frame_weight=frame_weight,
                              k=k if refine is None else max(k, int(refine_k)), video_term=video_term)
        if refine is not None:
            short = [Candidates(np.array([v for v, _ in found], dtype=np.int64),
                                np.array([s for _, s in found], dtype=np.float32), float("inf")) for found in ranked]
            ranked = exact_rerank(q[pending], short, refine, clip_weight=clip_weight, frame_weight=frame_weight, k=k,
                                  video_term=video_term)
        still = []
        for row, (position, found, cands) in enumerate(zip(pending, ranked, candidates)):
            done = not (widen and exact) or _certified(found, cands, k, margin, lowest)
            if done:
                ids = np.fromiter((v for v, _ in found), dtype=np.int64, count=len(found))
                scores = np.fromiter((s for _, s in found), dtype=np.float32, count=len(found))
                certified = exact and _certified(found, cands, k, margin, lowest)
                results[int(position)] = RankedVideos(ids, scores, certified, n, rounds)
            else:
                still.append(row)
        pending = pending[still]
        if pending.size:
            logger.debug("%d queries not certified with %d candidates; widening to %d", pending.size, n, 2 * n)
            n *= 2
    return [r for r in results if r is not None]
