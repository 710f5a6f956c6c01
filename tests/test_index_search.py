"""Two-stage search widened until exact (against a float64 brute force), and calibration of nprobe / efSearch."""

from __future__ import annotations

import numpy as np
import pytest

from helpers import TOKEN_DIM, W_CLIP, W_FRAME, noisy_queries, synthetic_tokens
from reference import fused_scores
from prvr.index.calibrate import calibrate, heldout_token_queries, video_recall
from prvr.index.exact import exact_topk
from prvr.index.faiss_store import FaissTokenIndex
from prvr.index.search import search_topk
from prvr.index.token_store import TokenStore

DIM = TOKEN_DIM
WEIGHTS = {"clip_weight": W_CLIP, "frame_weight": W_FRAME}


def _reference_scores(query, clip, frame, mask):
    """The float64 loop reference with this module's weights."""
    return fused_scores(query, clip, frame, mask, clip_weight=W_CLIP, frame_weight=W_FRAME)


def _index(factory: str | None, clip, frame, mask, ids, **kwargs) -> FaissTokenIndex:
    index = FaissTokenIndex(DIM, factory=factory, use_gpu=False, **WEIGHTS, **kwargs)
    index.add(ids, clip, frame, mask)
    return index


def _crowded(seed: int = 3, num_videos: int = 60):
    """Five videos whose every token lies near one direction u: a query along u sees only them in its first k'
    tokens, so a single round with few candidates cannot hold k = 8 distinct videos."""
    clip, frame, mask = synthetic_tokens(seed, num_videos)
    rng = np.random.default_rng(seed)
    u = rng.standard_normal(DIM).astype(np.float32)
    u /= np.linalg.norm(u)
    scale = np.linalg.norm(clip, axis=-1).mean()
    for video in range(5):
        clip[video] = scale * (u + 0.05 * rng.standard_normal(clip[video].shape))
        frame[video] = scale * (u + 0.05 * rng.standard_normal(frame[video].shape))
    frame[~mask] = 0.0
    query = np.stack([u + 0.01 * rng.standard_normal(DIM) for _ in range(3)]).astype(np.float32)
    return clip.astype(np.float32), frame.astype(np.float32), mask, query


def _check_against_reference(ranked, reference: np.ndarray, ids: np.ndarray, k: int, tol: float = 8e-3) -> None:
    """Tie-aware: the reported scores are the reference's top-k scores and belong to the reported videos."""
    position = {int(v): i for i, v in enumerate(ids)}
    for row, scores in zip(ranked, reference):
        expected = np.sort(scores)[::-1][:k]
        assert row.video_ids.shape[0] == min(k, len(ids))
        np.testing.assert_allclose(row.scores, expected, atol=tol)
        for video, score in zip(row.video_ids.tolist(), row.scores.tolist()):
            assert abs(scores[position[video]] - score) <= tol


def test_widening_certifies_exact_top_k(tmp_path) -> None:
    clip, frame, mask, query = _crowded()
    ids = np.arange(clip.shape[0], dtype=np.int64) * 3 + 7
    store = TokenStore(tmp_path, DIM)
    store.append(ids, clip, frame, mask)
    index = _index("Flat", clip, frame, mask, ids)
    reference = _reference_scores(query, clip, frame, mask)  # (Nq, V) float64 loops

    one_round = search_topk(index, store, query, 8, 2, widen=False, **WEIGHTS)
    assert all(len(row.video_ids) < 8 for row in one_round), "the crowded videos should fill the first k' tokens"
    assert not any(row.certified for row in one_round)

    widened = search_topk(index, store, query, 8, 2, **WEIGHTS)
    assert all(row.certified and row.rounds > 1 for row in widened)
    _check_against_reference(widened, reference, ids, 8)
    # n_candidates = V is not enough in one round either when k' tokens are taken by few videos; widening is
    every = search_topk(index, store, query, len(ids), len(ids), **WEIGHTS)
    _check_against_reference(every, reference, ids, len(ids))
    assert all(row.certified for row in every)


def test_exact_search_equals_brute_force_on_random_queries(tmp_path) -> None:
    clip, frame, mask = synthetic_tokens(11, 120)
    ids = np.arange(120, dtype=np.int64)
    store = TokenStore(tmp_path, DIM)
    store.append(ids, clip, frame, mask)
    index = _index(None, clip, frame, mask, ids)
    query = noisy_queries(12, clip, 25)
    reference = _reference_scores(query, clip, frame, mask)
    for k, n in ((1, 1), (10, 5), (10, 200), (50, 10)):
        ranked = search_topk(index, store, query, k, n, **WEIGHTS)
        assert all(row.certified for row in ranked)
        _check_against_reference(ranked, reference, ids, k)


def test_approximate_index_is_searched_once_and_not_certified(tmp_path) -> None:
    clip, frame, mask = synthetic_tokens(5, 400)
    ids = np.arange(400, dtype=np.int64)
    store = TokenStore(tmp_path, DIM)
    store.append(ids, clip, frame, mask)
    index = _index("IVF16,Flat", clip, frame, mask, ids, nprobe=1)
    ranked = search_topk(index, store, noisy_queries(2, clip, 10), 10, 20, **WEIGHTS)
    assert all(row.rounds == 1 and not row.certified for row in ranked)
    # probing every list of an IVF-Flat index is exhaustive: the same answers as brute force
    index.set_nprobe(16)
    query = noisy_queries(3, clip, 10)
    ranked = search_topk(index, store, query, 10, 400, **WEIGHTS)
    _check_against_reference(ranked, _reference_scores(query, clip, frame, mask), ids, 10)


def test_video_recall_is_tie_aware() -> None:
    truth = [(1, 0.9), (2, 0.8), (3, 0.7)]
    assert video_recall([(1, 0.9), (2, 0.8), (3, 0.7)], truth, 3) == 1.0
    assert video_recall([(1, 0.9), (2, 0.8), (9, 0.7)], truth, 3) == 1.0  # a tie with the 3rd counts
    assert video_recall([(1, 0.9), (2, 0.8), (9, 0.6)], truth, 3) == pytest.approx(2 / 3)
    assert video_recall([], [], 3) == 1.0


@pytest.mark.parametrize(("factory", "knob"), [("IVF32,Flat", "nprobe"), ("HNSW16", "ef_search")])
def test_calibration_reaches_the_target_on_held_out_tokens(factory, knob, tmp_path) -> None:
    clip, frame, mask = synthetic_tokens(5, 600)
    ids = np.arange(600, dtype=np.int64)
    store = TokenStore(tmp_path, DIM)
    store.append(ids, clip, frame, mask)
    index = _index(factory, clip, frame, mask, ids)
    before = index.describe()["clip"][knob]
    queries = heldout_token_queries(store, 60, seed=1)
    result = calibrate(index, store, queries, k=10, target=0.97, n_candidates_grid=(20, 50, 100), **WEIGHTS)
    assert result.knob == knob and result.reached
    assert result.chosen["recall"] >= 0.97
    assert index.describe()["clip"][knob] == before  # the index's own setting is restored
    # the choice is the cheapest setting that reaches the target
    reaching = [e for e in result.grid if e["recall"] >= 0.97]
    assert result.chosen["cost"] == min(e["cost"] for e in reaching)
    # re-measure the chosen setting independently against brute force
    getattr(index, f"set_{knob}")(result.chosen[knob])
    ranked = search_topk(index, store, queries, 10, result.chosen["n_candidates"], **WEIGHTS)
    truth = exact_topk(queries, store, 10, **WEIGHTS)
    recall = np.mean([video_recall(r.pairs(), t, 10) for r, t in zip(ranked, truth)])
    assert recall == pytest.approx(result.chosen["recall"], abs=1e-6)
    assert result.search_defaults() == {"n_candidates": result.chosen["n_candidates"], knob: result.chosen[knob]}


def test_calibration_of_an_exact_index_and_errors(tmp_path) -> None:
    clip, frame, mask = synthetic_tokens(8, 80)
    ids = np.arange(80, dtype=np.int64)
    store = TokenStore(tmp_path, DIM)
    store.append(ids, clip, frame, mask)
    index = _index("Flat", clip, frame, mask, ids)
    queries = noisy_queries(9, clip, 20)
    result = calibrate(index, store, queries, k=5, target=1.0, n_candidates_grid=(5, 80), **WEIGHTS)
    assert result.knob is None and result.reached
    assert max(e["recall"] for e in result.grid) == 1.0
    with pytest.raises(ValueError, match="target"):
        calibrate(index, store, queries, target=1.5, **WEIGHTS)
    with pytest.raises(ValueError, match="queries must be"):
        calibrate(index, store, queries[:, :3], **WEIGHTS)
    with pytest.raises(ValueError, match="k must be"):
        search_topk(index, store, queries, 0, 10, **WEIGHTS)
