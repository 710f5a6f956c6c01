"""Exact re-rank against a loop reference over the stored tokens: fp32 / bf16, ties, chunking, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import reference
from prvr.index.protocol import Candidates
from prvr.index.rerank import exact_rerank
from prvr.index.token_store import TokenStore

DIM = 24
W_CLIP, W_FRAME = 0.6, 0.4


def _videos(seed: int, num_videos: int, num_clips: int = 6, num_frames: int = 12):
    """Structured tokens (rank 6) so that scores spread like real embeddings."""
    generator = torch.Generator().manual_seed(seed)
    basis = torch.randn(6, DIM, generator=generator)  # (r, D)
    centre = torch.randn(num_videos, 1, 6, generator=generator)  # (V, 1, r)
    clip = (centre + 0.7 * torch.randn(num_videos, num_clips, 6, generator=generator)) @ basis  # (V, C, D)
    frame = (centre + 0.9 * torch.randn(num_videos, num_frames, 6, generator=generator)) @ basis  # (V, F, D)
    lengths = torch.randint(1, num_frames + 1, (num_videos,), generator=generator)
    mask = torch.arange(num_frames).unsqueeze(0) < lengths.unsqueeze(1)  # (V, F)
    return clip, frame, mask


def _candidates(rng: np.random.Generator, ids: np.ndarray, count: int) -> Candidates:
    chosen = rng.choice(ids, size=count, replace=False).astype(np.int64)
    return Candidates(chosen, np.zeros(count, dtype=np.float32))


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    clip, frame, mask = _videos(0, 80)
    ids = np.arange(80, dtype=np.int64) * 11 + 5
    store = TokenStore(tmp_path_factory.mktemp("store"), DIM)
    store.append(ids, clip, frame, mask)
    query = torch.randn(5, DIM, generator=torch.Generator().manual_seed(1)) @ torch.eye(DIM)
    query = query + clip[torch.arange(5) * 7, 0]  # near some clip tokens
    return store, ids, query


@pytest.mark.parametrize("method", ["views", "gather"])
@pytest.mark.parametrize(("dtype", "tol"), [(torch.float32, 1e-5), (torch.bfloat16, 5e-3)])
def test_matches_loop_reference(stored, dtype, tol, method):
    store, ids, query = stored
    rng = np.random.default_rng(2)
    candidates = [_candidates(rng, ids, 40) for _ in range(len(query))]
    reference_scores = reference.stored_video_scores(query, store, ids, clip_weight=W_CLIP, frame_weight=W_FRAME)
    ranked = exact_rerank(
        query, candidates, store, clip_weight=W_CLIP, frame_weight=W_FRAME, k=10, compute_dtype=dtype, method=method
    )
    for n, row in enumerate(ranked):
        pool = candidates[n].video_ids
        expected = np.sort([reference_scores[v][n] for v in pool.tolist()])[::-1][:10]
        assert len(row) == 10 and set(v for v, _ in row) <= set(pool.tolist())
        np.testing.assert_allclose([s for _, s in row], expected, atol=tol)  # tie-aware: the score sequence
        for video, score in row:
            assert abs(score - reference_scores[video][n]) <= tol
        assert all(a[1] >= b[1] for a, b in zip(row, row[1:]))


@pytest.mark.parametrize("method", ["views", "gather"])
def test_bf16_winner_is_rescored_in_float32(stored, method):
    store, ids, query = stored
    pool = [Candidates(ids.copy(), np.zeros(len(ids), dtype=np.float32))] * 2
    kwargs = dict(clip_weight=W_CLIP, frame_weight=W_FRAME, k=len(ids), method=method)
    for fp32_row, bf16_row in zip(
        exact_rerank(query[:2], pool, store, **kwargs),
        exact_rerank(query[:2], pool, store, compute_dtype=torch.bfloat16, **kwargs),
    ):
        fp32, bf16 = dict(fp32_row), dict(bf16_row)
        assert all(bf16[v] <= fp32[v] + 1e-6 for v in fp32)  # a rescored token never beats the true max
        same = sum(abs(fp32[v] - bf16[v]) < 1e-6 for v in fp32)
        assert same >= 0.8 * len(ids)  # identical unless bf16 rounding picked another (near-tied) token


def test_ties_are_broken_by_video_id(tmp_path):
    clip, frame, mask = _videos(3, 1)
    store = TokenStore(tmp_path, DIM)
    twins = np.array([42, 7, 19, 3], dtype=np.int64)
    store.append(twins, clip.expand(4, -1, -1), frame.expand(4, -1, -1), mask.expand(4, -1))
    query = torch.randn(2, DIM, generator=torch.Generator().manual_seed(4))
    shuffled = [Candidates(twins, np.zeros(4, dtype=np.float32)), Candidates(twins[::-1].copy(), np.zeros(4))]
    for dtype, method in [(d, m) for d in (torch.float32, torch.bfloat16) for m in ("views", "gather")]:
        ranked = exact_rerank(
            query, shuffled, store, clip_weight=W_CLIP, frame_weight=W_FRAME, k=3, compute_dtype=dtype, method=method
        )
        for row in ranked:
            assert [v for v, _ in row] == [3, 7, 19]
            assert row[0][1] == row[1][1] == row[2][1]


def test_chunked_gather_equals_single_gather(stored):
    store, ids, query = stored
    rng = np.random.default_rng(5)
    candidates = [_candidates(rng, ids, count) for count in (30, 50, 1, 70, 20)]
    candidates[2] = Candidates(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32))  # nothing to rank
    kwargs = dict(clip_weight=W_CLIP, frame_weight=W_FRAME, k=15)
    whole = exact_rerank(query, candidates, store, **kwargs)
    for limit, method in [(1, "views"), (7, "gather"), (64, "views")]:
        chunked = exact_rerank(query.numpy(), candidates, store, max_gather_videos=limit, method=method, **kwargs)
        for got, want in zip(chunked, whole):  # the same ranking, up to float32 summation order
            assert [v for v, _ in got] == [v for v, _ in want]
            np.testing.assert_allclose([s for _, s in got], [s for _, s in want], atol=1e-6)
    assert whole[2] == [] and len(whole[0]) == 15 and len(whole[3]) == 15


def test_unnormalised_store_is_normalised_at_rerank(tmp_path):
    clip, frame, mask = _videos(6, 20)
    store = TokenStore(tmp_path, DIM, normalize=False)
    ids = np.arange(20, dtype=np.int64)
    store.append(ids, 5.0 * clip, 5.0 * frame, mask)
    query = clip[:3, 0] + 0.1
    reference_scores = reference.stored_video_scores(query, store, ids, clip_weight=W_CLIP, frame_weight=W_FRAME)
    pool = [Candidates(ids, np.zeros(20, dtype=np.float32))] * 3
    for dtype, method in [(d, m) for d in (torch.float32, torch.bfloat16) for m in ("views", "gather")]:
        ranked = exact_rerank(
            query, pool, store, clip_weight=W_CLIP, frame_weight=W_FRAME, k=5, compute_dtype=dtype, method=method
        )
        tol = 1e-5 if dtype == torch.float32 else 1e-2
        for n, row in enumerate(ranked):
            for video, score in row:
                assert abs(score - reference_scores[video][n]) < tol
            assert max(row[0][1], 0) <= W_CLIP + W_FRAME + 1e-5  # cosines, not raw dot products


def test_invalid_inputs_raise_clear_errors(stored):
    store, ids, query = stored
    full = [Candidates(ids[:5].copy(), np.zeros(5, dtype=np.float32))]
    kwargs = dict(clip_weight=W_CLIP, frame_weight=W_FRAME)
    for bad_k in (0, -1, 1.5):
        with pytest.raises(ValueError, match="k must be"):
            exact_rerank(query[:1], full, store, k=bad_k, **kwargs)
    with pytest.raises(ValueError, match="empty query"):
        exact_rerank(query[:0], [], store, k=3, **kwargs)
    with pytest.raises(ValueError, match="candidate lists"):
        exact_rerank(query[:2], full, store, k=3, **kwargs)
    with pytest.raises(ValueError, match="query must be"):
        exact_rerank(query[0], full, store, k=3, **kwargs)
    with pytest.raises(ValueError, match="method"):
        exact_rerank(query[:1], full, store, k=3, method="fast", **kwargs)
    with pytest.raises(ValueError, match="compute_dtype"):
        exact_rerank(query[:1], full, store, k=3, compute_dtype=torch.float16, **kwargs)
    unknown = [Candidates(np.array([ids[0], 123456], dtype=np.int64), np.zeros(2, dtype=np.float32))]
    with pytest.raises(ValueError, match="not in the token store"):
        exact_rerank(query[:1], unknown, store, k=3, **kwargs)
    kept = exact_rerank(query[:1], unknown, store, k=3, skip_missing=True, **kwargs)
    assert [v for v, _ in kept[0]] == [int(ids[0])]
    with pytest.raises(ValueError, match="int64"):
        Candidates(np.array([1, 2], dtype=np.int32), np.zeros(2))
    with pytest.raises(ValueError, match="same length"):
        Candidates(np.array([1, 2], dtype=np.int64), np.zeros(3))


def test_row_runs_join_adjacent_blocks_and_cover_the_same_rows():
    from prvr.index.rerank import _row_runs

    shards = np.array([0, 0, 0, 1, 1, 0])
    first = np.array([0, 5, 20, 0, 3, 30])
    lengths = np.array([5, 4, 6, 3, 2, 1])
    runs = _row_runs(shards, first, lengths, max_rows=4)
    rows = [(shard, row) for shard, start, stop in runs for row in range(start, stop)]
    expected = [(int(s), int(f) + t) for s, f, n in zip(shards, first, lengths) for t in range(int(n))]
    assert rows == expected  # same rows in the same order: the per-video segments still line up
    assert all(stop - start <= 4 for _, start, stop in runs)
    assert _row_runs(shards, first, lengths, max_rows=100)[:2] == [(0, 0, 9), (0, 20, 26)]  # 0-5 and 5-9 joined
    assert _row_runs(shards[:0], first[:0], lengths[:0]) == []


def test_queries_sharing_every_video_are_scored_together_as_one_by_one(stored):
    """exact_topk's lists (every video, larger than one step) are grouped, not scored one query at a time."""
    from prvr.index.exact import exact_topk

    store, ids, query = stored
    together = exact_rerank(query, [Candidates(ids, np.zeros(len(ids), dtype=np.float32))] * len(query), store,
                            clip_weight=W_CLIP, frame_weight=W_FRAME, k=10, max_gather_videos=16)
    alone = [exact_rerank(query[n : n + 1], [Candidates(ids, np.zeros(len(ids), dtype=np.float32))], store,
                          clip_weight=W_CLIP, frame_weight=W_FRAME, k=10, max_gather_videos=16)[0]
             for n in range(len(query))]
    for joined, single in zip(together, alone):
        assert [v for v, _ in joined] == [v for v, _ in single]
        np.testing.assert_allclose([s for _, s in joined], [s for _, s in single], atol=1e-6)
    assert [[v for v, _ in row] for row in exact_topk(query, store, 10, clip_weight=W_CLIP,
                                                       frame_weight=W_FRAME)] == [[v for v, _ in r] for r in together]


def test_one_pass_over_the_store_for_queries_with_the_same_large_list(stored, monkeypatch):
    import prvr.index.rerank as rerank

    store, ids, query = stored
    calls = []
    real = rerank._score_views
    monkeypatch.setattr(rerank, "_score_views", lambda q, *a: calls.append(q.shape[0]) or real(q, *a))
    everything = Candidates(ids, np.zeros(len(ids), dtype=np.float32))
    exact_rerank(query, [everything] * len(query), store, clip_weight=W_CLIP, frame_weight=W_FRAME, k=10,
                 method="views", max_gather_videos=16)
    assert calls == [len(query)] * (len(ids) // 16)  # 5 steps of 16 videos, each for all queries (was 25 steps)
