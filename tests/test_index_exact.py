"""The exact reference scorer (prvr.index.exact) against a float64 Python loop over the stored tokens."""

from __future__ import annotations

import numpy as np
import pytest

from prvr.config import ModelConfig
from prvr.index.exact import exact_scores, exact_topk, top_pairs
from prvr.index.token_store import TokenStore

DIM = 16
WEIGHTS = {"clip_weight": ModelConfig().clip_weight, "frame_weight": ModelConfig().frame_weight}


def _store(tmp_path, seed: int = 0, chunks: int = 2, per_chunk: int = 7) -> TokenStore:
    """Two appends (two shards), videos with 3 clip tokens and 1..5 valid frame tokens."""
    rng = np.random.default_rng(seed)
    store = TokenStore(tmp_path / "tokens", DIM)
    for chunk in range(chunks):
        ids = np.arange(per_chunk, dtype=np.int64) * 5 + 100 * chunk + 3
        clip = rng.standard_normal((per_chunk, 3, DIM)).astype(np.float32)
        frame = rng.standard_normal((per_chunk, 5, DIM)).astype(np.float32)
        mask = np.arange(5)[None, :] < rng.integers(1, 6, size=(per_chunk, 1))
        store.append(ids, clip, frame, mask)
    return store


def _loop_scores(store: TokenStore, queries: np.ndarray, clip_weight: float, frame_weight: float) -> dict[int, list]:
    """Per video, per query: w_c * max cos(q, clip) + w_f * max cos(q, valid frame), in float64 Python loops."""
    out: dict[int, list] = {}
    for video in sorted(int(v) for v in store.video_ids):
        tokens = store.get([video])
        clips = tokens.clip[0].double().numpy()
        frames = tokens.frame[0][tokens.frame_mask[0]].double().numpy()
        row = []
        for query in queries.astype(np.float64):
            unit = query / np.sqrt(sum(x * x for x in query))
            best_clip = max(sum(a * b for a, b in zip(unit, token)) / np.sqrt(sum(b * b for b in token))
                            for token in clips)
            best_frame = max(sum(a * b for a, b in zip(unit, token)) / np.sqrt(sum(b * b for b in token))
                             for token in frames)
            row.append(clip_weight * best_clip + frame_weight * best_frame)
        out[video] = row
    return out


@pytest.mark.parametrize("weights", [WEIGHTS, {"clip_weight": 1.0, "frame_weight": 0.0},
                                     {"clip_weight": 0.2, "frame_weight": 0.9}])
def test_exact_scores_match_a_float64_loop(tmp_path, weights) -> None:
    store = _store(tmp_path)
    queries = np.random.default_rng(1).standard_normal((4, DIM)).astype(np.float32)
    ids, scores = exact_scores(store, queries, videos_per_step=3, **weights)  # blocks cross video boundaries
    reference = _loop_scores(store, queries, **weights)
    assert ids.tolist() == sorted(reference)
    assert scores.shape == (4, len(reference)) and scores.dtype == np.float32
    expected = np.array([reference[int(v)] for v in ids]).T  # (Nq, V)
    np.testing.assert_allclose(scores, expected, atol=2e-2)  # stored tokens are unit bf16: ~2^-8 relative


@pytest.mark.parametrize("k", [1, 5, 50])
def test_exact_topk_matches_the_loop_and_the_gemm_path(tmp_path, k) -> None:
    store = _store(tmp_path, seed=2)
    queries = np.random.default_rng(3).standard_normal((3, DIM)).astype(np.float32)
    reference = _loop_scores(store, queries, **WEIGHTS)
    found = exact_topk(queries, store, k, **WEIGHTS)
    ids, scores = exact_scores(store, queries, **WEIGHTS)
    by_gemm = top_pairs(ids, scores, k)
    for row, (pairs, gemm_pairs) in enumerate(zip(found, by_gemm)):
        expected = sorted(reference, key=lambda v: (-reference[v][row], v))[:k]
        assert len(pairs) == min(k, len(reference))
        for video, score in pairs:
            assert abs(score - reference[video][row]) < 2e-2
        # the k-th true score is reached by every reported video (tie-tolerant)
        kth = reference[expected[-1]][row]
        assert all(reference[video][row] >= kth - 4e-2 for video, _ in pairs)
        assert [v for v, _ in pairs] == [v for v, _ in gemm_pairs]
        np.testing.assert_allclose([s for _, s in pairs], [s for _, s in gemm_pairs], atol=1e-5)


def test_top_pairs_breaks_ties_by_increasing_id() -> None:
    ids = np.array([9, 4, 7], dtype=np.int64)
    scores = np.array([[0.5, 0.5, 0.9]], dtype=np.float32)
    assert top_pairs(ids, scores, 3) == [[(7, pytest.approx(0.9)), (4, 0.5), (9, 0.5)]]


def test_removed_rows_exact_topk_skips_them_and_exact_scores_asks_to_compact(tmp_path) -> None:
    store = _store(tmp_path, seed=4)
    removed = int(store.video_ids[2])
    store.remove([removed])
    queries = np.random.default_rng(5).standard_normal((2, DIM)).astype(np.float32)
    found = exact_topk(queries, store, 100, **WEIGHTS)
    assert all(removed not in {v for v, _ in row} for row in found)
    assert all(len(row) == len(store.video_ids) for row in found)
    with pytest.raises(RuntimeError, match="compact"):
        exact_scores(store, queries, **WEIGHTS)
    store.compact()
    ids, scores = exact_scores(store, queries, **WEIGHTS)
    assert [v for v, _ in top_pairs(ids, scores, 100)[0]] == [v for v, _ in found[0]]
