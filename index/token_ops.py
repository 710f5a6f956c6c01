"""What every token-index back-end does around its engine (FAISS, Milvus): check an ``add`` batch and flatten it
into (token, id) rows, check a query batch, deduplicate one scale's token hits by video, and merge the two scales'
hits into :class:`index.protocol.Candidates` with the certification bound of docs/design.md §3.1.

Shape letters: V videos, C clip tokens, F frame tokens, D width, T tokens, Nq queries, U videos hit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from prvr.index.protocol import Candidates

__all__ = ["MAX_VIDEO_ID", "TOKEN_BITS", "TOKEN_STRIDE", "VideoHits", "as_array", "check_queries",
           "decode_token_ids", "empty_candidates", "encode_token_ids", "flatten_batch", "merge_hits", "sorted_contains",
           "video_hits"]

TOKEN_BITS = 8  # token ids are video_id << 8 | token index (docs/design.md §3.2)
TOKEN_STRIDE = 1 << TOKEN_BITS  # 256 token slots per video (32 clips, <= 128 frames)
MAX_VIDEO_ID = (1 << (63 - TOKEN_BITS)) - 1  # 55 bits left for the video id

TokenRows = dict[str, tuple[np.ndarray, np.ndarray]]  # kind -> (tokens (T, D) unit rows, token ids (T,))


def encode_token_ids(video_ids: np.ndarray, token_index: np.ndarray) -> np.ndarray:
    """Token ids ``video_id << 8 | token_index`` (broadcasting).

    Args:
        video_ids: int array of video ids in ``[0, MAX_VIDEO_ID]``.
        token_index: int array of token positions in ``[0, 256)``, broadcastable against ``video_ids``.

    Returns:
        int64 ids of the broadcast shape.
    """
    video_ids = np.asarray(video_ids, dtype=np.int64)
    token_index = np.asarray(token_index, dtype=np.int64)
    if video_ids.size and (video_ids.min() < 0 or video_ids.max() > MAX_VIDEO_ID):
        raise ValueError(f"video ids must lie in [0, 2**55 - 1], got [{video_ids.min()}, {video_ids.max()}]")
    if token_index.size and (token_index.min() < 0 or token_index.max() >= TOKEN_STRIDE):
        raise ValueError(
            f"token index must lie in [0, {TOKEN_STRIDE}), got [{token_index.min()}, {token_index.max()}]; "
            f"a video can hold at most {TOKEN_STRIDE} clip and {TOKEN_STRIDE} frame tokens"
        )
    return (video_ids << TOKEN_BITS) | token_index


def decode_token_ids(token_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`encode_token_ids`: ``(video_ids, token_index)``, both int64 of the input's shape."""
    token_ids = np.asarray(token_ids, dtype=np.int64)
    return token_ids >> TOKEN_BITS, token_ids & (TOKEN_STRIDE - 1)


def as_array(x: Any, dtype: type) -> np.ndarray:
    """numpy view/copy of a numpy array or torch tensor (any device, bf16 included)."""
    if hasattr(x, "detach"):
        t = x.detach().cpu()
        if dtype is np.float32:
            t = t.float()
        x = t.numpy()
    return np.asarray(x, dtype=dtype)


def flatten_batch(video_ids: Any, clip: Any, frame: Any, frame_mask: Any, *, dim: int, indexed: np.ndarray,
                  normalize: Callable[[np.ndarray], np.ndarray],
                  tombstones: np.ndarray | None = None) -> tuple[np.ndarray, TokenRows, np.ndarray, np.ndarray]:
    """Check an ``add`` batch and flatten it.

    Args:
        video_ids: (V,) int64 ids, new to the index.
        clip: (V, C, D) clip tokens; frame: (V, F, D) frame tokens; frame_mask: (V, F) bool.
        dim: the index's D.
        indexed: the ids already indexed (refused).
        normalize: the back-end's unit-row normaliser (each keeps its own arithmetic, so its scores stay its own).
        tombstones: ids removed without deletion support (refused: they cannot come back).

    Returns:
        ``(ids (V,), {"clip": (tokens, token ids), "frame": ...}, clip counts (V,), frame counts (V,))``.

    Raises:
        ValueError: on any shape, id, duplicate or non-finite problem, with the fix.
    """
    ids = as_array(video_ids, np.int64).reshape(-1)
    clip_array = as_array(clip, np.float32)
    frame_array = as_array(frame, np.float32)
    mask = as_array(frame_mask, np.bool_)
    num_videos = ids.shape[0]
    if clip_array.ndim != 3 or frame_array.ndim != 3 or mask.ndim != 2:
        raise ValueError("expected clip (V, C, D), frame (V, F, D) and frame_mask (V, F), got "
                         f"{clip_array.shape}, {frame_array.shape} and {mask.shape}")
    if clip_array.shape[0] != num_videos or frame_array.shape[0] != num_videos or mask.shape[0] != num_videos:
        raise ValueError(f"video_ids has {num_videos} entries but clip / frame / frame_mask have "
                         f"{clip_array.shape[0]} / {frame_array.shape[0]} / {mask.shape[0]} rows")
    if clip_array.shape[2] != dim or frame_array.shape[2] != dim:
        raise ValueError(f"token width must be dim = {dim}, got clip D = {clip_array.shape[2]} and frame D = "
                         f"{frame_array.shape[2]}")
    if mask.shape[1] != frame_array.shape[1]:
        raise ValueError(f"frame_mask {mask.shape} does not match frame {frame_array.shape[:2]}")
    num_clips, num_frames = clip_array.shape[1], frame_array.shape[1]
    if num_clips < 1 or num_clips > TOKEN_STRIDE or num_frames > TOKEN_STRIDE:
        raise ValueError(f"need 1 <= C <= {TOKEN_STRIDE} clip tokens and F <= {TOKEN_STRIDE} frame tokens per video "
                         f"(the id stride is {TOKEN_STRIDE}), got C = {num_clips}, F = {num_frames}")
    if num_videos and not mask.any(axis=1).all():
        bad = ids[~mask.any(axis=1)][:10].tolist()
        raise ValueError(f"videos {bad} have no valid frame; every video needs at least one True in frame_mask")
    if num_videos and (ids.min() < 0 or ids.max() > MAX_VIDEO_ID):
        raise ValueError(f"video ids must lie in [0, 2**55 - 1], got [{ids.min()}, {ids.max()}]")
    if np.unique(ids).shape[0] != num_videos:
        raise ValueError("video_ids contains duplicates; each video is added once")
    present = ids[np.isin(ids, indexed)]
    if present.size:
        raise ValueError(f"videos {present[:10].tolist()} are already indexed; remove() them first to update them")
    if tombstones is not None:
        buried = ids[np.isin(ids, tombstones)]
        if buried.size:
            raise ValueError(f"videos {buried[:10].tolist()} were removed from an index without deletion support "
                             "(HNSW tombstones); rebuild the index to re-add them, or give the new version a new id")
    if not (np.isfinite(clip_array).all() and np.isfinite(frame_array[mask]).all()):
        raise ValueError("tokens contain NaN or inf; fix the encoder output before indexing")
    clip_ids = encode_token_ids(ids[:, None], np.arange(num_clips)[None, :]).reshape(-1)  # (V*C,)
    clip_tokens = normalize(clip_array.reshape(-1, dim))  # (V*C, D)
    rows, positions = np.nonzero(mask)  # (T_f,), (T_f,)
    frame_tokens = normalize(frame_array[rows, positions])  # (T_f, D)
    frame_ids = encode_token_ids(ids[rows], positions)  # (T_f,)
    tokens = {"clip": (clip_tokens, clip_ids), "frame": (frame_tokens, frame_ids)}
    return ids, tokens, np.full(num_videos, num_clips, dtype=np.int32), mask.sum(axis=1).astype(np.int32)


def sorted_contains(video_ids: np.ndarray, video_id: object) -> bool:
    """Whether the int ``video_id`` is in the sorted id array (anything that is not an int is not)."""
    if isinstance(video_id, bool) or not isinstance(video_id, (int, np.integer)):
        return False
    position = np.searchsorted(video_ids, video_id)
    return bool(position < len(video_ids) and video_ids[position] == video_id)


def check_queries(query: Any, dim: int, n_candidates: Any) -> tuple[np.ndarray, int]:
    """A search's (Nq, D) float32 queries (not yet normalised) and its candidate count, checked.

    Raises:
        ValueError: wrong shape, an empty batch, a non-positive count, NaN or inf.
    """
    q = as_array(query, np.float32)
    if q.ndim != 2 or q.shape[1] != dim:
        raise ValueError(f"query must be (Nq, D = {dim}), got {q.shape}; a single vector is query[None]")
    if q.shape[0] == 0:
        raise ValueError("empty query batch (Nq = 0); pass at least one query vector")
    if isinstance(n_candidates, bool) or not isinstance(n_candidates, (int, np.integer)) or n_candidates < 1:
        raise ValueError(f"n_candidates must be a positive int, got {n_candidates!r}")
    if not np.isfinite(q).all():
        raise ValueError("query contains NaN or inf")
    return q, int(n_candidates)


def empty_candidates(num_queries: int) -> list[Candidates]:
    """What an index without videos answers (nothing, certified)."""
    empty = Candidates(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32), float("-inf"))
    return [empty for _ in range(num_queries)]


@dataclass(frozen=True)
class VideoHits:
    """One query's hits in one scale's token index, deduplicated by video.

    Attributes:
        videos: (U,) sorted video ids.
        scores: (U,) float32 best token cosine of each video.
        cutoff: the lowest returned cosine (-1 when nothing came back): on an exact index, an upper bound of the
            score of every token not returned.
        exhausted: the exact index returned every token it holds.
        truncated: the exact search wanted more tokens than the engine returns at once (Milvus's topk cap).
    """

    videos: np.ndarray
    scores: np.ndarray
    cutoff: float
    exhausted: bool
    truncated: bool = False


def video_hits(token_ids: np.ndarray, scores: np.ndarray, *, exhausted: bool, truncated: bool = False) -> VideoHits:
    """Deduplicate one query's (T,) token hits to the best cosine of each video."""
    scores = np.asarray(scores, dtype=np.float32)
    videos, _ = decode_token_ids(token_ids)
    unique, inverse = np.unique(videos, return_inverse=True)
    best = np.full(unique.shape[0], -np.inf, dtype=np.float32)
    np.maximum.at(best, inverse, scores)
    cutoff = float(scores.min()) if scores.size else -1.0
    return VideoHits(unique, best, cutoff, exhausted, truncated)


def merge_hits(clip: VideoHits, frame: VideoHits, n: int, *, clip_weight: float, frame_weight: float,
               exact: bool, live_videos: np.ndarray | None = None) -> Candidates:
    """The union of the two scales' videos, unknown terms filled with the cut-offs, the best n by approximate score.

    On an exact index the bound is the cut-offs' fused score (no video outside the hits can score more), raised to
    the (n+1)-th approximate score when more than n videos were hit; -inf when a search returned every token. When
    a search was truncated by the engine, every live video (``live_videos``) joins with the cut-offs as its unknown
    terms, so widening still ends with a certified top-k. Approximate indexes certify nothing (+inf).
    """
    videos = np.union1d(clip.videos, frame.videos)  # (U,)
    if (clip.truncated or frame.truncated) and live_videos is not None:
        videos = np.union1d(videos, live_videos)
    clip_scores = np.full(videos.shape[0], clip.cutoff, dtype=np.float32)
    frame_scores = np.full(videos.shape[0], frame.cutoff, dtype=np.float32)
    clip_scores[np.searchsorted(videos, clip.videos)] = clip.scores
    frame_scores[np.searchsorted(videos, frame.videos)] = frame.scores
    approx = (clip_weight * clip_scores + frame_weight * frame_scores).astype(np.float32)  # (U,)
    order = np.lexsort((videos, -approx))
    if not exact:
        bound = float("inf")  # approximate search certifies nothing
    else:
        # every live video has clip and frame tokens, so one exhausted search means no video went unseen
        unseen = clip.exhausted or frame.exhausted or clip.truncated or frame.truncated
        bound = float("-inf") if unseen else clip_weight * clip.cutoff + frame_weight * frame.cutoff
        if order.shape[0] > n:
            bound = max(bound, float(approx[order[n]]))
    keep = order[:n]
    return Candidates(videos[keep].astype(np.int64), approx[keep], bound)
