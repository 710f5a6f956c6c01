"""The back-end-neutral vector-index contract: token-level candidate generation that returns videos.

Shape letters: V videos, C clip tokens, F frame tokens, D hidden, Nq queries, N candidates.

Every back-end (FAISS here; Milvus / Qdrant later) indexes the clip tokens and the valid frame tokens of each video
and answers a text query with candidate *videos*. Because the DreamPRVR score is a max over tokens at both scales,
``S(q, v) = w_c * max_i cos(q, clip_i) + w_f * max_j cos(q, frame_j)``, a top-k token search per scale followed by a
dedup by video yields the candidates (docs/design.md §3.1); the exact score is computed afterwards from the token
store (``index.rerank``). Back-end result arrays (FAISS's ``D`` / ``I``) never leave ``index/``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

__all__ = ["Candidates", "VectorIndex"]


@dataclass(frozen=True, eq=False)  # arrays inside: compare fields explicitly
class Candidates:
    """The candidate videos of one query, best first.

    The approximate score of a video is ``w_c * best clip-token cosine + w_f * best frame-token cosine`` over the
    tokens the index returned. When a video was returned by only one of the two token searches, the missing term is
    filled with that search's lowest returned cosine (its cut-off): for an exact index this is an upper bound of the
    missing term, so every approximate score is an upper bound of the exact score and equals it when both terms are
    known. For approximate indexes (IVF, HNSW, PQ) the scores are only estimates.

    Attributes:
        video_ids: (N,) int64, unique, ordered by decreasing approximate score (ties by increasing id).
        scores: (N,) float32 approximate scores, non-increasing.
        bound: an upper bound of the exact score of every indexed video *not* in ``video_ids`` (Fagin's threshold
            rule): if the k-th best exact re-ranked score is ``>= bound``, the re-ranked top-k is provably the exact
            top-k. ``-inf`` when every indexed video was returned; ``+inf`` for approximate indexes, which certify
            nothing.
    """

    video_ids: np.ndarray
    scores: np.ndarray
    bound: float = float("-inf")

    def __post_init__(self) -> None:
        ids = np.asarray(self.video_ids)
        scores = np.asarray(self.scores)
        if ids.ndim != 1 or scores.shape != ids.shape:
            raise ValueError(
                f"Candidates needs 1-D video_ids and scores of the same length, got {ids.shape} and {scores.shape}"
            )
        if ids.dtype != np.int64:
            raise ValueError(f"Candidates.video_ids must be int64, got {ids.dtype}; cast with .astype(np.int64)")

    def __len__(self) -> int:
        return int(self.video_ids.shape[0])


@runtime_checkable
class VectorIndex(Protocol):
    """What every token-index back-end provides (tested against the same contract).

    Video ids are non-negative int64 keys owned by the caller (the SQL surrogate key); the index never renumbers them.
    Updating a video is ``remove`` then ``add``.
    """

    def add(self, video_ids: np.ndarray, clip: np.ndarray, frame: np.ndarray, frame_mask: np.ndarray) -> None:
        """Index the clip tokens and the valid frame tokens of V new videos.

        Args:
            video_ids: (V,) int64 ids, unique and not yet indexed.
            clip: (V, C, D) float32 clip tokens.
            frame: (V, F, D) float32 frame tokens, padded.
            frame_mask: (V, F) bool, True on real frames.
        """
        ...

    def remove(self, video_ids: np.ndarray) -> None:
        """Remove (or tombstone) every token of the given indexed videos."""
        ...

    def search(self, query: np.ndarray, n_candidates: int) -> list[Candidates]:
        """Up to ``n_candidates`` candidate videos for each of the (Nq, D) float32 queries."""
        ...

    def save(self, directory: str | Path) -> None:
        """Write the index into ``directory`` (created when missing), crash-safely."""
        ...

    @classmethod
    def load(cls, directory: str | Path, *, mmap: bool = False) -> VectorIndex:
        """Open an index written by ``save``; ``mmap=True`` maps it read-only."""
        ...

    @property
    def ntotal(self) -> int:
        """Number of indexed tokens (clip + frame)."""
        ...

    @property
    def num_videos(self) -> int:
        """Number of searchable videos."""
        ...

    def describe(self) -> dict[str, Any]:
        """JSON-serialisable description: factory strings, search parameters, counts."""
        ...
