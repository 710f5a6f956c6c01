"""`prvr index calibrate` on an index with a query bank (issue 20): recall is measured against the exact
bank-corrected scores ``s(q, v) - a * t(v)``, the score search returns, checked against a brute-force loop."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import reference
from prvr.checkpoint import load_model
from prvr.index.calibrate import calibrate, video_recall

K, ALPHA = 3, 4.0  # a large weight, so that the bank moves the rankings


@pytest.fixture()
def bank_index(synthetic_corpus, tiny_checkpoint, tmp_path) -> Path:
    from prvr.index.builder import build_index

    _, config, _ = load_model(tiny_checkpoint)
    bank = np.random.default_rng(5).normal(size=(20, config.model.hidden_size)).astype(np.float32)
    out = tmp_path / "index"
    build_index(tiny_checkpoint, synthetic_corpus.val, out, collection_name="synth", query_bank=bank, bank_k=4,
                bank_alpha=ALPHA, bank_source="test bank", token_dtype="float32", progress=False)
    return out


def _brute_force_recalls(retriever, queries: np.ndarray, n: int, offsets: dict[int, float]) -> float:
    """max(n, K) candidates from the token index, each re-scored by a float64 loop over its videos, against the loop's
    top-K over every video; ``offsets`` is ``a * t(v)`` per video (zeros for the uncorrected score)."""
    store, weights = retriever.store, retriever.config.model
    ids = store.video_ids
    tokens = store.get(ids)
    raw = reference.fused_scores(queries, tokens.clip.numpy(), tokens.frame.numpy(), tokens.frame_mask.numpy(),
                                 clip_weight=weights.clip_weight, frame_weight=weights.frame_weight)  # (Nq, V)
    score = {(row, int(video)): raw[row, column] - offsets[int(video)]
             for row in range(len(queries)) for column, video in enumerate(ids)}
    recalls = []
    for row, candidates in enumerate(retriever.faiss_index.search(queries, max(n, K))):  # at least K, as search
        truth = sorted(((int(v), score[row, int(v)]) for v in ids), key=lambda pair: (-pair[1], pair[0]))[:K]
        found = sorted(((int(v), score[row, int(v)]) for v in candidates.video_ids),
                       key=lambda pair: (-pair[1], pair[0]))[:K]
        recalls.append(video_recall(found, truth, K))
    return float(np.mean(recalls))


def test_calibration_measures_the_bank_corrected_recall(bank_index) -> None:
    from prvr.retriever import Retriever

    with Retriever.load(bank_index) as retriever:
        term = retriever.video_term
        assert term is not None
        queries = np.random.default_rng(6).normal(size=(40, retriever.store.dim)).astype(np.float32)
        weights = {"clip_weight": retriever.config.model.clip_weight,
                   "frame_weight": retriever.config.model.frame_weight}
        grid = (1, 2, 4, 12)
        corrected = calibrate(retriever.faiss_index, retriever.store, queries, k=K, target=0.9,
                              n_candidates_grid=grid, held_out_fraction=0.0, margin=0.0, video_term=term, **weights)
        plain = calibrate(retriever.faiss_index, retriever.store, queries, k=K, target=0.9, n_candidates_grid=grid,
                          held_out_fraction=0.0, margin=0.0, **weights)
        offsets = dict(zip(term.video_ids.tolist(), term.values.astype(np.float64).tolist()))
        zeros = {video: 0.0 for video in offsets}
        expected = {n: _brute_force_recalls(retriever, queries, n, offsets) for n in grid}
        expected_plain = {n: _brute_force_recalls(retriever, queries, n, zeros) for n in grid}
    assert corrected.bank_corrected and not plain.bank_corrected
    assert {e["n_candidates"]: e["recall"] for e in corrected.grid} == pytest.approx(expected, abs=1e-6)
    assert {e["n_candidates"]: e["recall"] for e in plain.grid} == pytest.approx(expected_plain, abs=1e-6)
    assert expected != expected_plain  # the bank changes what the calibration must measure


def test_the_calibrate_command_uses_the_index_bank(bank_index) -> None:
    from click.testing import CliRunner

    from prvr.cli import main

    result = CliRunner().invoke(main, ["index", "calibrate", str(bank_index), "--queries", "30", "--candidates",
                                       "1,4", "--dry-run", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["bank_corrected"] is True
