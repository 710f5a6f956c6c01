"""Corpus-level moment scores (VCMR) and the contiguous-span baselines."""

from __future__ import annotations

import numpy as np
import pytest

import torch

from prvr.moments.baselines import (
    best_contiguous_span,
    best_contiguous_span_seconds,
    best_contiguous_spans_se,
    span_relevance_gain,
)
from prvr.moments.vcmr import corpus_moment_scores, rank_corpus_moments
from prvr.types import Localization, Moment


def test_exp_and_softmax_scores_against_the_formulas() -> None:
    video = np.array([0.30, 0.25, 0.10])
    p_fg = np.array([[0.9, 0.2], [0.95, np.nan], [1.0, 0.5]])
    exp = corpus_moment_scores(video, p_fg, mode="exp", alpha=20.0)
    expected = np.exp(20.0 * video)[:, None] * p_fg
    np.testing.assert_allclose(exp / np.nanmax(exp), expected / np.nanmax(expected))  # one factor per query
    soft = corpus_moment_scores(video, p_fg, mode="softmax", alpha=20.0)
    weights = np.exp(20 * video) / np.exp(20 * video).sum()
    np.testing.assert_allclose(soft, weights[:, None] * p_fg)
    assert np.isfinite(corpus_moment_scores(np.array([50.0, 0.0]), np.ones((2, 1)), alpha=1000.0)).all()
    with pytest.raises(ValueError, match="mode"):
        corpus_moment_scores(video, p_fg, mode="max")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="K ="):
        corpus_moment_scores(video, p_fg[:2])


def test_rank_corpus_moments_orders_by_the_combined_score() -> None:
    curve = np.zeros(3, np.float32)
    locs = [Localization((Moment(0, 5, 0.5), Moment(5, 9, 0.4)), curve),
            Localization((Moment(1, 2, 0.99),), curve),
            Localization((Moment(3, 4, 1.0),), curve)]
    rows = rank_corpus_moments(["a", "b", "c"], [0.5, 0.48, 0.1], locs, alpha=20.0)
    # exp(20 * 0.5) * 0.5 = 11013 < exp(20 * 0.48) * 0.99 = 14611; c is far behind.
    assert [(r.video_id, r.start_sec) for r in rows] == [("b", 1), ("a", 0), ("a", 5), ("c", 3)]
    assert [r.video_id for r in rank_corpus_moments(["a", "b", "c"], [0.5, 0.48, 0.1], locs, top_k=1)] == ["a", "a"]
    assert len(rank_corpus_moments(["a", "b", "c"], [0.5, 0.48, 0.1], locs, max_rows=2)) == 2
    with pytest.raises(ValueError, match="one of each"):
        rank_corpus_moments(["a"], [0.5, 0.1], locs[:1])


def _slow_best_span(curve: np.ndarray) -> tuple[int, int]:
    centred = curve - curve.mean()
    best, span = -np.inf, (0, 0)
    for i in range(len(curve)):
        for j in range(i, len(curve)):
            total = centred[i: j + 1].sum()
            if total > best + 1e-12:
                best, span = total, (i, j)
    return span


def test_best_contiguous_span_matches_brute_force() -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        curve = rng.standard_normal(int(rng.integers(1, 15)))
        if np.allclose(curve - curve.mean(), 0):
            continue
        assert best_contiguous_span(curve) == _slow_best_span(curve)
    assert best_contiguous_span(np.ones(4)) == (0, 3)
    assert best_contiguous_span_seconds(np.array([0.0, 1.0, 1.0, 0.0]), 40.0) == (10.0, 30.0)
    with pytest.raises(ValueError, match="non-empty"):
        best_contiguous_span(np.array([]))


def test_span_relevance_gain_against_a_loop() -> None:
    rng = np.random.default_rng(1)
    lengths = [1, 3, 9, 14]
    curves = torch.zeros(len(lengths), 14, dtype=torch.float64)
    mask = torch.zeros(len(lengths), 14, dtype=torch.bool)
    for row, length in enumerate(lengths):
        curves[row, :length] = torch.from_numpy(rng.random(length))
        mask[row, :length] = True
    spans = torch.from_numpy(np.sort(rng.random((len(lengths), 6, 2)), axis=-1))  # (B, Q, 2) start <= end
    gains = span_relevance_gain(spans, curves, mask)
    for row, length in enumerate(lengths):
        curve = curves[row, :length].numpy()
        centred = curve - curve.mean()
        first, last = best_contiguous_span(curve)
        best = centred[first: last + 1].sum()
        for q in range(6):
            start, end = spans[row, q].tolist()
            held = sum(centred[k] for k in range(length) if start <= (k + 0.5) / length <= end)
            expected = 0.0 if best <= 1e-8 else held / best
            assert gains[row, q].item() == pytest.approx(expected, abs=1e-9)
    whole = span_relevance_gain(torch.tensor([[[first / 14, (last + 1) / 14]]], dtype=torch.float64),
                                curves[3:], mask[3:])
    assert whole.item() == pytest.approx(1.0)  # the best contiguous span holds all of its own mass


def test_batched_best_contiguous_spans_match_the_loop() -> None:
    rng = np.random.default_rng(2)
    for _ in range(50):
        lengths = rng.integers(1, 15, size=5)
        curves = torch.zeros(5, int(lengths.max()), dtype=torch.float64)
        mask = torch.zeros_like(curves, dtype=torch.bool)
        for row, length in enumerate(lengths):
            curves[row, :length] = torch.from_numpy(rng.random(length))
            mask[row, :length] = True
        found = best_contiguous_spans_se(curves, mask)
        for row, length in enumerate(lengths):
            first, last = best_contiguous_span(curves[row, :length].numpy())
            assert found[row].tolist() == pytest.approx([first / length, (last + 1) / length])
    flat = best_contiguous_spans_se(torch.full((1, 4), 0.3), torch.ones(1, 4, dtype=torch.bool))
    assert flat.tolist() == [[0.0, 1.0]]  # nothing above the mean: the whole video, as best_contiguous_span says
