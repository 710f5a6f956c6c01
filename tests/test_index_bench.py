"""The index benchmark's float reference (a chunked scan of the generator) against a slow per-video loop, and one
small two-tier run of ``run_size`` end to end."""

from __future__ import annotations

import numpy as np

from prvr.benchmarks.index_bench import IndexBenchOptions, SyntheticCorpus, float_truth, run_size


def _loop_scores(corpus: SyntheticCorpus, queries: np.ndarray, w_clip: float, w_frame: float) -> np.ndarray:
    """(Nq, V) float64 scores, one video at a time."""
    q = queries.astype(np.float64)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    out = np.empty((q.shape[0], corpus.num_videos))
    for first in range(0, corpus.num_videos, corpus.chunk_size):
        ids, clip, frame, mask = corpus.chunk(first, min(corpus.chunk_size, corpus.num_videos - first))
        for i, video in enumerate(ids):
            c = clip[i].astype(np.float64)
            f = frame[i][mask[i]].astype(np.float64)
            c /= np.linalg.norm(c, axis=1, keepdims=True)
            f /= np.linalg.norm(f, axis=1, keepdims=True)
            out[:, video] = w_clip * (q @ c.T).max(axis=1) + w_frame * (q @ f.T).max(axis=1)
    return out


def test_float_truth_is_the_exact_top_k_of_every_video() -> None:
    corpus = SyntheticCorpus(230, clips=4, frames=6, dim=16, rank=4, seed=3, chunk=50)
    queries = corpus.queries(7, seed=1)
    truth = float_truth(corpus, queries, 12, clip_weight=0.6, frame_weight=0.4)
    reference = _loop_scores(corpus, queries, 0.6, 0.4)
    for row, scores in zip(truth, reference):
        assert len(row) == 12
        got = np.array([s for _, s in row])
        np.testing.assert_allclose(got, np.sort(scores)[::-1][:12], atol=1e-5)
        for video, score in row:
            assert abs(scores[video] - score) <= 1e-5


def test_a_small_two_tier_run_end_to_end(tmp_path) -> None:
    """pca8 codes + a float32 second tier on an exact index: the calibrated search finds the float top-10."""
    options = IndexBenchOptions(sizes=(400,), clips=4, frames=6, dim=16, rank=4, factory_small="Flat", small_max=1000,
                                train_videos=200, chunk=100, queries=20, calibration_queries=40, candidates=(50, 100),
                                knob_grid=None, brute_single=1, repeats=1, token_dtype="pca8",
                                refine_dtype="float32", refine_k=30)
    row = run_size(400, options, tmp_path)
    assert row["token_store"]["dtype"] == "pca8" and row["token_store"]["bytes_per_token"] == 12
    assert row["token_store"]["refine"] == {"dtype": "float32", "bytes_per_token": 64, "refine_k": 30}
    assert row["bytes_per_video"]["refine_on_disk"] > row["bytes_per_video"]["store"] > 0
    assert row["recall"]["at10"] >= 0.99
    assert 0 < row["brute_force_ms"]["recall_at10"] <= 1
