"""Two-stage search widened until exact (against a float64 brute force), and calibration of nprobe / efSearch with a
fitting / held-out split."""

from __future__ import annotations

import numpy as np
import pytest

from helpers import TOKEN_DIM, W_CLIP, W_FRAME, noisy_queries, synthetic_tokens
from reference import fused_scores
from prvr.index import calibrate as calibrate_module
from prvr.index.calibrate import (
    CalibrationResult,
    calibrate,
    heldout_token_queries,
    recall_lower_bound,
    split_queries,
    video_recall,
)
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


def _recall_of(index, store, queries, rows, n_candidates, k=10):
    """Mean recall@k of the current setting over ``rows``, re-measured against the exact reference."""
    ranked = search_topk(index, store, queries[rows], k, n_candidates, widen=False, **WEIGHTS)
    truth = exact_topk(queries[rows], store, k, **WEIGHTS)
    return float(np.mean([video_recall(r.pairs(), t, k) for r, t in zip(ranked, truth)]))


@pytest.mark.parametrize(("factory", "knob"), [("IVF32,Flat", "nprobe"), ("HNSW16", "ef_search")])
def test_calibration_reaches_the_target_on_held_out_tokens(factory, knob, tmp_path) -> None:
    clip, frame, mask = synthetic_tokens(5, 600)
    ids = np.arange(600, dtype=np.int64)
    store = TokenStore(tmp_path, DIM)
    store.append(ids, clip, frame, mask)
    index = _index(factory, clip, frame, mask, ids)
    before = index.describe()["clip"][knob]
    queries = heldout_token_queries(store, 90, seed=1)
    result = calibrate(index, store, queries, k=10, target=0.97, n_candidates_grid=(20, 50, 100), seed=4, **WEIGHTS)
    assert result.knob == knob and result.reached and result.held_out_passed
    assert (result.num_fit_queries, result.num_held_out_queries) == (63, 27)
    assert result.chosen["fit_lower_bound"] >= 0.97 and result.chosen["held_out_recall"] >= 0.97
    assert result.chosen["fit_lower_bound"] < result.chosen["fit_recall"]
    assert result.margin == pytest.approx(result.chosen["fit_recall"] - result.chosen["fit_lower_bound"], abs=1e-6)
    assert index.describe()["clip"][knob] == before  # the index's own setting is restored
    # the choice is the cheapest setting whose fitting bound clears the target (it passed the held-out check)
    clearing = [e for e in result.grid if e["fit_lower_bound"] >= 0.97]
    assert result.chosen["cost"] == min(e["cost"] for e in clearing) and not result.escalated_from
    # re-measure the chosen setting on each part independently against the exact reference
    fit_rows, held_rows = split_queries(90, 0.3, seed=4)
    getattr(index, f"set_{knob}")(result.chosen[knob])
    n = result.chosen["n_candidates"]
    assert _recall_of(index, store, queries, fit_rows, n) == pytest.approx(result.chosen["fit_recall"], abs=1e-6)
    assert _recall_of(index, store, queries, held_rows, n) == pytest.approx(result.chosen["held_out_recall"], abs=1e-6)
    assert _recall_of(index, store, queries, np.arange(90), n) == pytest.approx(result.chosen["recall"], abs=1e-6)
    assert result.search_defaults() == {"n_candidates": result.chosen["n_candidates"], knob: result.chosen[knob]}


def test_split_is_deterministic_disjoint_and_complete() -> None:
    fit, held = split_queries(500, 0.3, seed=7)
    again_fit, again_held = split_queries(500, 0.3, seed=7)
    np.testing.assert_array_equal(fit, again_fit)
    np.testing.assert_array_equal(held, again_held)
    assert held.size == 150 and fit.size == 350
    assert not set(fit.tolist()) & set(held.tolist())
    np.testing.assert_array_equal(np.sort(np.concatenate([fit, held])), np.arange(500))
    assert not np.array_equal(split_queries(500, 0.3, seed=8)[1], held)  # the seed matters
    assert split_queries(10, 0.0)[1].size == 0 and split_queries(10, 0.0)[0].size == 10
    assert [part.size for part in split_queries(2, 0.01)] == [1, 1]  # at least one held out, never all
    assert [part.size for part in split_queries(3, 0.99)] == [1, 2]
    with pytest.raises(ValueError, match=r"held_out_fraction must lie in \[0, 1\)"):
        split_queries(10, 1.0)
    with pytest.raises(ValueError, match="at least 2 queries"):
        split_queries(1, 0.3)


def test_recall_lower_bound_against_a_slow_reference() -> None:
    rng = np.random.default_rng(0)
    recalls = np.where(rng.random(400) < 0.1, 0.9, 1.0)
    # slow reference: the normal bound written out over the sample plus one pseudo-query missing one of ten
    sample = list(recalls) + [0.9]
    mean = sum(sample) / len(sample)
    std = (sum((x - mean) ** 2 for x in sample) / (len(sample) - 1)) ** 0.5
    expected = mean - 1.6448536269514722 * std / len(sample) ** 0.5
    assert recall_lower_bound(recalls, 10, confidence=0.95) == pytest.approx(expected, abs=1e-12)
    assert recall_lower_bound(recalls, 10, confidence=0.99) < recall_lower_bound(recalls, 10, confidence=0.9)
    perfect = recall_lower_bound(np.ones(100), 10)
    assert 0.99 < perfect < 1.0  # a perfect sample still gets a margin
    assert recall_lower_bound(np.ones(1000), 10) > perfect  # more queries, a tighter bound
    with pytest.raises(ValueError, match="confidence"):
        recall_lower_bound(recalls, 10, confidence=1.0)


def test_the_margin_never_makes_the_choice_cheaper(tmp_path) -> None:
    clip, frame, mask = synthetic_tokens(5, 600)
    ids = np.arange(600, dtype=np.int64)
    store = TokenStore(tmp_path, DIM)
    store.append(ids, clip, frame, mask)
    index = _index("IVF32,Flat", clip, frame, mask, ids)
    queries = heldout_token_queries(store, 80, seed=2)
    truth = exact_topk(queries, store, 10, **WEIGHTS)
    common = {"k": 10, "target": 0.97, "n_candidates_grid": (10, 20, 50), "truth": truth, **WEIGHTS}
    plain = calibrate(index, store, queries, margin=0.0, held_out_fraction=0.0, **common)
    fixed = [calibrate(index, store, queries, margin=margin, held_out_fraction=0.0, **common).chosen["cost"]
             for margin in (0.0, 0.01, 0.03, 0.05)]
    assert fixed == sorted(fixed) and fixed[-1] > fixed[0] == plain.chosen["cost"]  # a wider margin never costs less
    bounded = calibrate(index, store, queries, held_out_fraction=0.0, **common)
    assert bounded.num_held_out_queries == 0 and bounded.held_out_passed is None
    assert bounded.margin_method == "normal@0.95" and bounded.margin > 0
    assert bounded.chosen["cost"] >= plain.chosen["cost"]
    assert plain.margin == 0 and plain.margin_method == "fixed"
    # without margin and held-out part it is the old rule: the cheapest setting reaching the target on the sample
    assert plain.chosen["cost"] == min(e["cost"] for e in plain.grid if e["recall"] >= 0.97)
    assert plain.chosen["fit_recall"] == plain.chosen["recall"]


def _scripted_recalls(monkeypatch, num_queries: int, held_rows: np.ndarray, held_out_by_setting: list[float]):
    """Replace video_recall in calibrate: fitting queries always 1.0; held-out queries of the i-th measured setting
    ``held_out_by_setting[i]`` (calls come setting by setting, query by query)."""
    held = set(held_rows.tolist())
    calls = iter(range(10**6))

    def fake(found, truth, k):
        call = next(calls)
        setting, row = divmod(call, num_queries)
        return held_out_by_setting[setting] if row in held else 1.0

    monkeypatch.setattr(calibrate_module, "video_recall", fake)


def test_a_held_out_failure_steps_to_the_next_more_expensive_setting(tmp_path, monkeypatch) -> None:
    clip, frame, mask = synthetic_tokens(8, 80)
    ids = np.arange(80, dtype=np.int64)
    store = TokenStore(tmp_path, DIM)
    store.append(ids, clip, frame, mask)
    index = _index("Flat", clip, frame, mask, ids)  # cost grows with the candidate count
    queries = noisy_queries(9, clip, 40)
    _, held_rows = split_queries(40, 0.25, seed=3)
    common = {"k": 5, "target": 0.9, "n_candidates_grid": (5, 10, 20, 40), "held_out_fraction": 0.25, "seed": 3,
              **WEIGHTS}
    _scripted_recalls(monkeypatch, 40, held_rows, [0.5, 0.8, 1.0, 1.0])
    result = calibrate(index, store, queries, **common)
    assert result.reached and result.held_out_passed
    assert result.chosen["n_candidates"] == 20  # 5 and 10 cleared the fitting bound but failed the held-out check
    assert [e["n_candidates"] for e in result.escalated_from] == [5, 10]
    assert [e["held_out_recall"] for e in result.escalated_from] == [0.5, 0.8]
    assert all(e["fit_lower_bound"] >= 0.9 for e in result.grid)

    _scripted_recalls(monkeypatch, 40, held_rows, [0.5, 0.8, 0.85, 0.7])  # nothing passes: best held-out kept
    result = calibrate(index, store, queries, **common)
    assert not result.reached and result.held_out_passed is False
    assert result.chosen["n_candidates"] == 20 and len(result.escalated_from) == 4
    stored = result.to_dict()
    assert stored["held_out_passed"] is False and stored["held_out_recall"] == 0.85 and stored["fit_recall"] == 1.0
    assert stored["num_fit_queries"] == 30 and stored["num_held_out_queries"] == 10


def test_a_calibration_stored_before_the_held_out_check_still_reads(tmp_path) -> None:
    old = {"knob": "nprobe", "chosen": {"n_candidates": 100, "recall": 0.992, "ms_per_query": 13.6, "cost": 4.0e4,
                                        "nprobe": 64},
           "reached": True, "grid": [], "target": 0.99, "k": 10, "num_queries": 100, "query_source": "given"}
    result = CalibrationResult.from_dict(old)
    assert result.num_fit_queries == 100 and result.num_held_out_queries == 0 and result.held_out_passed is None
    assert result.fit_recall == 0.992 and result.held_out_recall is None and result.margin == 0.0
    assert result.search_defaults() == {"n_candidates": 100, "nprobe": 64}
    assert CalibrationResult.from_dict(result.to_dict()) == result


def test_calibration_of_an_exact_index_and_errors(tmp_path) -> None:
    clip, frame, mask = synthetic_tokens(8, 80)
    ids = np.arange(80, dtype=np.int64)
    store = TokenStore(tmp_path, DIM)
    store.append(ids, clip, frame, mask)
    index = _index("Flat", clip, frame, mask, ids)
    queries = noisy_queries(9, clip, 20)
    result = calibrate(index, store, queries, k=5, target=1.0, n_candidates_grid=(5, 80), margin=0.0, **WEIGHTS)
    assert result.knob is None and result.reached and result.held_out_passed
    # a statistical bound stays below 1, so it never certifies a target of 1.0 (the fallback is the most accurate)
    strict = calibrate(index, store, queries, k=5, target=1.0, n_candidates_grid=(5, 80), **WEIGHTS)
    assert not strict.reached and strict.chosen["fit_recall"] == 1.0
    assert max(e["recall"] for e in result.grid) == 1.0
    with pytest.raises(ValueError, match="target"):
        calibrate(index, store, queries, target=1.5, **WEIGHTS)
    with pytest.raises(ValueError, match="margin must lie"):
        calibrate(index, store, queries, margin=1.0, **WEIGHTS)
    with pytest.raises(ValueError, match="held_out_fraction"):
        calibrate(index, store, queries, held_out_fraction=-0.1, **WEIGHTS)
    with pytest.raises(ValueError, match="confidence"):
        calibrate(index, store, queries, confidence=0.3, **WEIGHTS)
    with pytest.raises(ValueError, match="cost_by"):
        calibrate(index, store, queries, cost_by="speed", **WEIGHTS)
    with pytest.raises(ValueError, match="queries must be"):
        calibrate(index, store, queries[:, :3], **WEIGHTS)
    with pytest.raises(ValueError, match="k must be"):
        search_topk(index, store, queries, 0, 10, **WEIGHTS)


def test_two_tier_search_rescores_the_short_list_from_the_finer_store(tmp_path) -> None:
    """pca4 codes rank the candidates (a lossy tier: its top-k differs from the exact one), a float32 tier
    re-scores the short list: with the short list as long as the corpus the answer equals one-tier exact search; with
    a short one every reported score is the float32 score of its video; bad short-list lengths are refused."""
    clip, frame, mask = synthetic_tokens(11, 120)
    ids = np.arange(120, dtype=np.int64) * 2 + 5
    coarse = TokenStore(tmp_path / "codes", DIM, dtype="pca4")
    coarse.train(clip, frame, mask)
    coarse.append(ids, clip, frame, mask)
    fine = TokenStore(tmp_path / "fine", DIM, dtype="float32")
    fine.append(ids, clip, frame, mask)
    index = _index(None, clip, frame, mask, ids)
    query = noisy_queries(12, clip, 25)
    reference = _reference_scores(query, clip, frame, mask)
    lossy = search_topk(index, coarse, query, 10, 120, **WEIGHTS)
    exact_sets = [set(ids[np.argsort(-row)[:10]].tolist()) for row in reference]
    assert any(set(r.video_ids.tolist()) != t for r, t in zip(lossy, exact_sets)), "pca4 should lose near-ties"
    every = search_topk(index, coarse, query, 10, 120, refine=fine, refine_k=120, **WEIGHTS)
    _check_against_reference(every, reference, ids, 10, tol=1e-4)
    assert not any(row.certified for row in every)
    short = search_topk(index, coarse, query, 10, 120, refine=fine, refine_k=20, **WEIGHTS)
    position = {int(v): i for i, v in enumerate(ids)}
    for row, scores, coarse_row in zip(short, reference, search_topk(index, coarse, query, 20, 120, **WEIGHTS)):
        assert set(row.video_ids.tolist()) <= set(coarse_row.video_ids.tolist())
        np.testing.assert_allclose(row.scores, [scores[position[v]] for v in row.video_ids.tolist()], atol=1e-4)
        assert (np.diff(row.scores) <= 0).all()
    for bad in (None, 0, True):
        with pytest.raises(ValueError, match="refine_k"):
            search_topk(index, coarse, query, 10, 120, refine=fine, refine_k=bad, **WEIGHTS)
