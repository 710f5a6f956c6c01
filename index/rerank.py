"""Exact DreamPRVR re-ranking of index candidates from the token store: w_c * max clip cos + w_f * max frame cos.

Shape letters: Nq queries, n queries of one group, U videos scored at once, R token rows, C clip tokens, F frame
tokens, T tokens, D hidden.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from prvr.index.bank import VideoTerm
from prvr.index.protocol import Candidates
from prvr.index.token_store import TokenStore, _expand_ranges

__all__ = ["DEFAULT_MAX_GATHER_VIDEOS", "exact_rerank"]

logger = logging.getLogger(__name__)

# Videos scored in one step: 2048 x 160 tokens x 512 x 2 B = 335 MB of bf16 when gathered.
DEFAULT_MAX_GATHER_VIDEOS = 2048

# Rows up-cast and multiplied at once by the "views" path: large enough to amortise the call, small enough that the
# float32 copy stays cache-sized.
RUN_ROWS = 2048

# Most (query, video) scores of one group of queries held at once (float32: 256 MB).
SCORE_BLOCK = 1 << 26

Method = Literal["auto", "views", "gather"]


def exact_rerank(
    query: Any,
    candidates: list[Candidates],
    store: TokenStore,
    *,
    clip_weight: float,
    frame_weight: float,
    k: int,
    compute_dtype: torch.dtype = torch.float32,
    method: Method = "auto",
    max_gather_videos: int = DEFAULT_MAX_GATHER_VIDEOS,
    skip_missing: bool = False,
    video_term: VideoTerm | None = None,
) -> list[list[tuple[int, float]]]:
    """Score every query's candidates exactly from the stored tokens and keep the best k.

    ``score = w_c * max_i cos(q, clip_i) + w_f * max_{valid j} cos(q, frame_j)`` as in
    ``prvr.similarity.video_scores``, over the stored (bf16-rounded) tokens. A store written with ``normalize=True``
    holds unit tokens, so the dot product is the cosine up to bf16 rounding (~2^-9 relative); otherwise the tokens are
    normalised here. Ties are broken by increasing video id, so results are deterministic.

    Two ways to reach the tokens:

    * ``"views"`` (CPU default): one product per video on zero-copy views of the memory-mapped shards, then a
      vectorised segment max; nothing is copied.
    * ``"gather"`` (default off the CPU): ``store.get`` copies the candidates into padded (U, T, D) tensors, moved to
      the query's device, and scores them in blocks.

    Measured (1 query x 1000 candidates x (32 + 128) tokens x 512, warm page cache, 1 thread, 2-core VM under load):
    views 43 ms float32 / 32 ms bf16; gather 190-220 ms float32 / 125-135 ms bf16 (the copy alone: 90-95 ms).
    16 queries sharing the candidates: views 5 ms/query float32 but 63 ms/query bf16 (small bf16 GEMMs are slow on
    this CPU), so float32 is the default.

    With ``compute_dtype=torch.bfloat16`` the products come out rounded to bf16 (8-bit mantissa), so they only select
    each video's winning token; the winners are then rescored in float32, which keeps near-ties apart.

    A compressed store (``pqM`` / ``sq8`` / ``sq4``, see ``index.token_codec``) is scored from its codes on the CPU
    ("views": the candidates' code rows are gathered, then scored by table look-ups or decode + product, whatever
    ``compute_dtype``); each score is then within ``(|w_c| + |w_f|) * store.token_error`` of the exact one.

    Args:
        query: (Nq, D) query vectors (numpy or torch; the computation runs on a torch query's device).
        candidates: Nq candidate lists from a ``VectorIndex.search``.
        store: the token store holding every candidate.
        clip_weight: w_c.
        frame_weight: w_f.
        k: videos kept per query (>= 1).
        compute_dtype: ``torch.float32`` (tokens up-cast) or ``torch.bfloat16`` (stored precision).
        method: ``"auto"``, ``"views"`` (CPU only) or ``"gather"``.
        max_gather_videos: at most this many distinct videos are scored in one step.
        skip_missing: drop candidates the store does not hold (removed meanwhile) instead of raising ValueError.
        video_term: per-video offsets subtracted from the scores before the top-k (the query-bank term
            ``alpha * t(v)``, ``index.bank``), or None.

    Returns:
        Per query, up to k ``(video_id, score)`` pairs, best first.
    """
    if compute_dtype not in (torch.float32, torch.bfloat16):
        raise ValueError(f"compute_dtype must be torch.float32 or torch.bfloat16, got {compute_dtype}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    if max_gather_videos < 1:
        raise ValueError(f"max_gather_videos must be positive, got {max_gather_videos}")
    if method not in ("auto", "views", "gather"):
        raise ValueError(f"method must be 'auto', 'views' or 'gather', got {method!r}")
    if isinstance(query, torch.Tensor):
        q = query.detach().float()
    else:
        q = torch.as_tensor(np.asarray(query, dtype=np.float32))
    if q.dim() != 2 or q.shape[1] != store.dim:
        raise ValueError(f"query must be (Nq, D = {store.dim}), got {tuple(q.shape)}; a single vector is query[None]")
    if q.shape[0] == 0:
        raise ValueError("empty query batch (Nq = 0); pass at least one query vector")
    if len(candidates) != q.shape[0]:
        raise ValueError(f"{q.shape[0]} queries but {len(candidates)} candidate lists; pass one list per query")
    if method == "auto":
        method = "views" if q.device.type == "cpu" else "gather"
    elif method == "views" and q.device.type != "cpu":
        raise ValueError(f"method='views' scores memory-mapped CPU tokens; the query is on {q.device}: use 'gather'")
    q = F.normalize(q, dim=-1)  # (Nq, D)

    lists = []
    for row in candidates:
        ids = np.asarray(row.video_ids, dtype=np.int64)
        if skip_missing and ids.size:
            ids = ids[np.isin(ids, store.video_ids)]
        lists.append(np.unique(ids))
    results: list[list[tuple[int, float]]] = [[] for _ in candidates]

    # group consecutive queries while the union of their candidates fits one step
    start = 0
    while start < len(lists):
        union = lists[start]
        stop = start + 1
        while stop < len(lists):
            grown = np.union1d(union, lists[stop])
            # a query joins while the union fits one step, or when it adds nothing to a larger union (exact_topk's
            # every-video lists: one pass over the store for many queries, not one per query), within SCORE_BLOCK
            if grown.shape[0] > max(max_gather_videos, union.shape[0]) or (
                    (stop - start + 1) * grown.shape[0] > SCORE_BLOCK):
                break
            union, stop = grown, stop + 1
        scores = np.zeros((stop - start, union.shape[0]), dtype=np.float32)  # (n, U)
        for first in range(0, union.shape[0], max_gather_videos):
            ids = union[first : first + max_gather_videos]
            if method == "views":
                score = _score_codes if store.codec is not None else _score_views
            else:
                score = _score_gathered
            clip_scores, frame_scores = score(q[start:stop], ids, store, compute_dtype)  # (n, U) each
            total = (clip_weight * clip_scores + frame_weight * frame_scores).cpu().numpy()  # (n, U)
            if video_term is not None:
                total = total - video_term.of(ids)[None].astype(np.float32)  # (n, U)
            scores[:, first : first + ids.shape[0]] = total
        for offset, query_row in enumerate(range(start, stop)):
            ids = lists[query_row]
            if ids.size == 0:
                continue
            row_scores = scores[offset, np.searchsorted(union, ids)]  # (N,)
            order = np.lexsort((ids, -row_scores))[:k]
            results[query_row] = [(int(ids[i]), float(row_scores[i])) for i in order]
        start = stop
    return results


def _score_views(
    query: torch.Tensor, ids: np.ndarray, store: TokenStore, compute_dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, U) clip and frame max-cosines from zero-copy views of the shards, one product per video."""
    shards, first_rows, num_clips, num_frames = store.locate(ids)  # (U,) each
    lengths = num_clips + num_frames  # (U,)
    q = query.to(compute_dtype).T.contiguous()  # (D, n)
    products = []
    norms = []
    for shard, first, stop in _row_runs(shards, first_rows, lengths):
        block = store.shard_tensor(shard)[first:stop]  # (T, D) view in the storage dtype, no copy
        block = block.to(compute_dtype)  # a no-op when the storage dtype is the compute dtype
        products.append(block @ q)  # (T, n)
        if not store.normalized:
            norms.append(block.float().norm(dim=1))  # (T,)
    scores = torch.cat(products).float()  # (R, n)
    if norms:
        scores = scores / torch.cat(norms).clamp_min(1e-12).unsqueeze(1)

    lengths_t = torch.from_numpy(lengths.astype(np.int64))
    owner = torch.repeat_interleave(torch.arange(len(ids)), lengths_t)  # (R,)
    within = torch.arange(scores.shape[0]) - torch.repeat_interleave(torch.cumsum(lengths_t, 0) - lengths_t, lengths_t)
    is_frame = within >= torch.from_numpy(num_clips.astype(np.int64))[owner]  # (R,)
    segment = owner * 2 + is_frame.long()  # (R,) in [0, 2U): clip then frame segment of each video
    best = _segment_max(scores, segment, 2 * len(ids))  # (2U, n)

    if compute_dtype != torch.float32:
        # rescore, in float32, every row that reached its segment's bf16 max
        is_max = scores == best[segment]  # (R, n)
        rows = torch.nonzero(is_max.any(dim=1)).squeeze(1)  # (M,)
        absolute = torch.from_numpy(first_rows)[owner[rows]] + within[rows]  # (M,) row inside its shard
        row_shards = torch.from_numpy(shards.astype(np.int64))[owner[rows]]  # (M,)
        tokens = torch.empty(rows.shape[0], query.shape[1])  # (M, D)
        for shard in torch.unique(row_shards).tolist():
            here = row_shards == shard
            tokens[here] = store.shard_tensor(shard).index_select(0, absolute[here]).float()
        if not store.normalized:
            tokens = F.normalize(tokens, dim=-1)
        exact = (tokens @ query.T).masked_fill(~is_max[rows], float("-inf"))  # (M, n)
        best = _segment_max(exact, segment[rows], 2 * len(ids))  # (2U, n)
    return best[0::2].T, best[1::2].T  # (n, U), (n, U)


def _row_runs(shards: np.ndarray, first_rows: np.ndarray, lengths: np.ndarray,
              max_rows: int = RUN_ROWS) -> list[tuple[int, int, int]]:
    """``(shard, first_row, stop_row)`` row ranges covering the U videos' blocks in their order, joined where one
    video's block ends where the next one's begins in the same shard, then cut to at most ``max_rows`` rows.

    Concatenating the ranges' rows gives the same (R,) rows as the blocks one by one; the products are few and large
    instead of one small one per video (a Python loop of U steps was most of a batched re-rank's time).
    """
    if shards.shape[0] == 0:
        return []
    ends = first_rows + lengths  # (U,)
    breaks = np.flatnonzero((shards[1:] != shards[:-1]) | (first_rows[1:] != ends[:-1])) + 1
    runs = []
    for a, b in zip(np.concatenate([[0], breaks]).tolist(), np.concatenate([breaks, [shards.shape[0]]]).tolist()):
        shard, first, stop = int(shards[a]), int(first_rows[a]), int(ends[b - 1])
        runs.extend((shard, row, min(row + max_rows, stop)) for row in range(first, stop, max_rows))
    return runs


def _score_codes(
    query: torch.Tensor, ids: np.ndarray, store: TokenStore, compute_dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, U) clip and frame max-scores of a compressed store: gather the candidates' code rows, score them."""
    shards, first_rows, num_clips, num_frames = store.locate(ids)  # (U,) each
    lengths = (num_clips + num_frames).astype(np.int64)  # (U,)
    rows, owner, within = _expand_ranges(first_rows.astype(np.int64), lengths)  # (R,) each
    q = query.numpy()  # (n, D) unit queries
    scores = np.empty((rows.shape[0], q.shape[0]), dtype=np.float32)  # (R, n)
    row_shards = shards[owner]
    for shard in np.unique(shards).tolist():
        here = np.flatnonzero(row_shards == shard)
        scores[here] = store.row_scores(shard, rows[here], q)
    owner_t, within_t = torch.from_numpy(owner), torch.from_numpy(within)
    is_frame = within_t >= torch.from_numpy(num_clips.astype(np.int64))[owner_t]  # (R,)
    segment = owner_t * 2 + is_frame.long()  # (R,) in [0, 2U)
    best = _segment_max(torch.from_numpy(scores), segment, 2 * len(ids))  # (2U, n)
    return best[0::2].T, best[1::2].T  # (n, U), (n, U)


def _segment_max(values: torch.Tensor, segment: torch.Tensor, num_segments: int) -> torch.Tensor:
    """(S, n) per-segment max of the (R, n) rows ``values`` whose segment is ``segment`` (R,)."""
    out = torch.full((num_segments, values.shape[1]), float("-inf"), dtype=values.dtype)
    index = segment.unsqueeze(1).expand(-1, values.shape[1])  # (R, n)
    return out.scatter_reduce_(0, index, values, reduce="amax")


def _score_gathered(
    query: torch.Tensor, ids: np.ndarray, store: TokenStore, compute_dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, U) clip and frame max-cosines from padded tokens copied out of the store onto the query's device."""
    tokens = store.get(ids, dtype=torch.bfloat16).to(query.device)
    clip_scores = []
    frame_scores = []
    block = 16  # videos up-cast at once: keeps the float32 copy cache-sized (5x faster than all at once, measured)
    for first in range(0, len(ids), block):
        clip = tokens.clip[first : first + block].to(compute_dtype)  # (b, C, D)
        frame = tokens.frame[first : first + block].to(compute_dtype)  # (b, F, D)
        if not store.normalized:
            clip = F.normalize(clip.float(), dim=-1).to(compute_dtype)
            frame = F.normalize(frame.float(), dim=-1).to(compute_dtype)
        clip_scores.append(_max_token_scores(query, clip, None))  # (n, b)
        frame_scores.append(_max_token_scores(query, frame, tokens.frame_mask[first : first + block]))  # (n, b)
    return torch.cat(clip_scores, dim=1), torch.cat(frame_scores, dim=1)


def _max_token_scores(query: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """``out[n, u] = max over valid t of <query[n], tokens[u, t]>`` in float32 (bf16 winners rescored in float32).

    Args:
        query: (n, D) float32 unit queries (cast to the tokens' dtype for the product).
        tokens: (U, T, D) tokens, float32 or bfloat16.
        mask: (U, T) bool, True on valid tokens, or None.

    Returns:
        (n, U) float32 scores.
    """
    num_videos, num_tokens, dim = tokens.shape
    flat = tokens.reshape(num_videos * num_tokens, dim)  # (U*T, D)
    pair = (flat @ query.to(tokens.dtype).T).view(num_videos, num_tokens, -1)  # (U, T, n)
    if mask is not None:
        pair = pair.masked_fill(~mask.unsqueeze(-1), float("-inf"))
    if tokens.dtype == torch.float32:
        return pair.amax(dim=1).T.contiguous()  # (n, U)
    winner = pair.argmax(dim=1)  # (U, n)
    rows = torch.arange(num_videos, device=tokens.device).unsqueeze(1)  # (U, 1)
    best = tokens[rows, winner].float()  # (U, n, D)
    return torch.einsum("und,nd->nu", best, query)  # (n, U)
