"""Zero-shot moments (issue 20): the runs above the mean of the query-frame cosine curve, checked against a slow
brute-force reference on hand-made and random curves; the localiser's seconds, scores and relevance curve; the
manifest record, and that old manifests load unchanged."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from prvr.moments.baselines import best_contiguous_span, top_contiguous_spans
from prvr.moments.zero_shot import (
    ZeroShotMomentConfig,
    ZeroShotMomentLocalizer,
    localizer_from_record,
    localizer_record,
    smooth_curve,
)


def _reference_runs(curve: np.ndarray, count: int) -> list[tuple[int, int, float]]:
    """Every (i, j) tried: the best sum of curve - mean over frames no earlier run holds, repeated count times."""
    centred = np.asarray(curve, dtype=np.float64) - np.mean(curve)
    if np.allclose(centred, 0.0):
        return [(0, len(curve) - 1, 0.0)]
    taken = np.zeros(len(curve), dtype=bool)
    runs: list[tuple[int, int, float]] = []
    while len(runs) < count:
        best = None
        for i in range(len(curve)):
            for j in range(i, len(curve)):
                if taken[i:j + 1].any():
                    break
                total = float(centred[i:j + 1].sum())
                if best is None or total > best[2] + 1e-12:  # ties: the earlier start, then the shorter run
                    best = (i, j, total)
        if best is None or (runs and best[2] <= 0.0):
            break
        runs.append(best)
        taken[best[0]:best[1] + 1] = True
    return runs


def test_hand_made_curves() -> None:
    step = np.array([0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0])
    assert top_contiguous_spans(step, 3) == [(2, 4, pytest.approx(3 * (1 - 3 / 7)))]  # nothing else above the mean
    two_bumps = np.array([0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0])
    runs = top_contiguous_spans(two_bumps, 5)
    assert [(a, b) for a, b, _ in runs] == [(1, 2), (6, 6)]
    assert runs[0][2] > runs[1][2] > 0
    assert top_contiguous_spans(np.full(4, 0.3), 3) == [(0, 3, 0.0)]  # flat: the whole video
    assert top_contiguous_spans(np.array([0.5]), 2) == [(0, 0, 0.0)]
    # a short dip inside a bump is bridged when the frames around it outweigh it
    assert top_contiguous_spans(np.array([0.0, 1.0, 0.6, 1.0, 0.0, 0.0]), 1)[0][:2] == (1, 3)
    with pytest.raises(ValueError, match="count"):
        top_contiguous_spans(step, 0)


@pytest.mark.parametrize("seed", range(30))
def test_runs_equal_a_brute_force_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    curve = rng.normal(size=int(rng.integers(1, 24)))
    if seed % 3 == 0:
        curve = np.round(curve, 0)  # ties
    found = top_contiguous_spans(curve, 6)
    expected = _reference_runs(curve, 6)
    assert [(a, b) for a, b, _ in found] == [(a, b) for a, b, _ in expected]
    assert [e for _, _, e in found] == pytest.approx([e for _, _, e in expected], abs=1e-9)
    assert found[0][:2] == best_contiguous_span(curve)  # the first run is the zero-shot floor's span


def test_smoothing_equals_a_loop() -> None:
    curve = np.random.default_rng(0).normal(size=11)
    for frames in (1, 3, 5, 15):
        half = frames // 2
        expected = [curve[max(i - half, 0):i + half + 1].mean() for i in range(len(curve))]
        assert smooth_curve(curve, frames) == pytest.approx(expected)
    with pytest.raises(ValueError, match="odd"):
        ZeroShotMomentConfig(smooth=2)


def test_localizer_moments_in_seconds() -> None:
    rng = np.random.default_rng(1)
    query = rng.normal(size=(3, 8)).astype(np.float32)  # (L, D)
    direction = query.mean(axis=0) / np.linalg.norm(query.mean(axis=0))
    frames = rng.normal(scale=0.1, size=(10, 8)).astype(np.float32) - direction  # (F, D) facing away
    frames[4:7] += 3.0 * direction  # the query happens in frames 4..6
    frames[1] += 2.0 * direction  # and in frame 1
    localizer = ZeroShotMomentLocalizer()
    located = localizer.localize(query, frames, 20.0, num_moments=3)
    assert located.moments[0].start_sec == pytest.approx(8.0) and located.moments[0].end_sec == pytest.approx(14.0)
    assert located.moments[0].score == 1.0 and all(0 < m.score <= 1.0 for m in located.moments)
    assert [m.score for m in located.moments] == sorted((m.score for m in located.moments), reverse=True)
    assert (located.moments[1].start_sec, located.moments[1].end_sec) == pytest.approx((2.0, 4.0))
    cosine = (frames / np.linalg.norm(frames, axis=1, keepdims=True)) @ direction
    assert located.relevance == pytest.approx((1 + cosine) / 2, abs=1e-6)
    many = localizer.localize_many(query, [frames, frames[:5]], [20.0, 5.0], num_moments=2)
    assert many[0].moments == located.moments[:2]
    assert all(0.0 <= m.start_sec < m.end_sec <= 5.0 for m in many[1].moments)
    with pytest.raises(ValueError, match="joint space"):
        localizer.localize(query[:, :4], frames, 20.0)
    with pytest.raises(ValueError, match="duration"):
        localizer.localize(query, frames, 0.0)


def test_localizer_record_round_trip() -> None:
    record = localizer_record(ZeroShotMomentConfig(smooth=5))
    assert record == {"kind": "zero_shot", "smooth": 5}
    assert localizer_from_record(record).config.smooth == 5
    with pytest.raises(ValueError, match="unknown moment localiser"):
        localizer_from_record({"kind": "magic"})


def test_manifests_without_a_moment_localizer_load_unchanged() -> None:
    from prvr.index.manifest import IndexManifest

    manifest = IndexManifest(experiment_config="{}", checkpoint_path="models/x.pt", checkpoint_sha256="0" * 64,
                             text_backbone=None, data_source={}, counts={}, faiss={}, search_defaults={},
                             generation="gen-000001")
    old = json.loads(manifest.to_json())
    del old["moment_localizer"]  # what a manifest written before the field looks like
    assert IndexManifest.from_dict(old) == manifest and manifest.moment_localizer is None
    with_record = dataclasses.replace(manifest, moment_localizer=localizer_record())
    assert IndexManifest.from_dict(json.loads(with_record.to_json())) == with_record
