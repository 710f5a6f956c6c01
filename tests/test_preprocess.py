"""Tests of the per-video / per-query preprocessing and the batch collation, against slow loop references."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import reference
from prvr.config import DataConfig
from prvr.data.preprocess import (
    bin_boundaries,
    bin_means,
    clip_tokens,
    collate_queries,
    collate_videos,
    frame_tokens,
    l2_normalize,
    preprocess_query,
    preprocess_video,
)


@pytest.mark.parametrize("n", [1, 2, 5, 17, 31, 32, 33, 64, 127, 128, 129, 200, 511])
def test_bin_means_matches_loop_reference(n: int) -> None:
    rng = np.random.default_rng(n)
    frames = rng.standard_normal((n, 7)).astype(np.float32)
    for bins in (32, 128):
        got = bin_means(frames, bins)
        assert got.shape == (bins, 7)
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, reference.bin_means(frames, bins), rtol=1e-5, atol=1e-6)


def test_bin_means_hand_cases_and_empty_bin_rule() -> None:
    frames = np.arange(3, dtype=np.float32)[:, None] * np.ones((1, 2), dtype=np.float32)  # rows 0, 1, 2
    # linspace(0, 3, 5) = [0, .75, 1.5, 2.25, 3] -> [0, 1, 2, 2, 3]: bin 2 is empty and takes frame 2.
    np.testing.assert_array_equal(bin_boundaries(3, 4), [0, 1, 2, 2, 3])
    np.testing.assert_array_equal(bin_means(frames, 4)[:, 0], [0, 1, 2, 2])
    # linspace(0, 2, 5) = [0, .5, 1, 1.5, 2] -> [0, 0, 1, 2, 2] (half to even): bins 0 and 3 are empty;
    # bin 3 starts at index 2 == n, clamped to the last frame.
    two = frames[:2]
    np.testing.assert_array_equal(bin_boundaries(2, 4), [0, 0, 1, 2, 2])
    np.testing.assert_array_equal(bin_means(two, 4)[:, 0], [0, 0, 1, 1])
    # n = 1: every bin repeats the only frame.
    one = np.array([[3.0, -4.0]], dtype=np.float32)
    np.testing.assert_array_equal(bin_means(one, 32), np.repeat(one, 32, axis=0))
    # n = bins: identity. n = 2 * bins: pairs.
    rng = np.random.default_rng(0)
    x = rng.standard_normal((32, 3)).astype(np.float32)
    np.testing.assert_allclose(bin_means(x, 32), x, rtol=1e-6)
    y = rng.standard_normal((64, 3)).astype(np.float32)
    np.testing.assert_allclose(bin_means(y, 32), (y[0::2] + y[1::2]) / 2, rtol=1e-5, atol=1e-6)


def test_bin_means_float64_and_errors() -> None:
    x = np.random.default_rng(1).standard_normal((40, 4))
    assert bin_means(x, 32).dtype == np.float64
    with pytest.raises(ValueError, match="at least one row"):
        bin_means(np.zeros((0, 4), dtype=np.float32), 32)
    with pytest.raises(ValueError, match="2-D"):
        bin_means(np.zeros(4, dtype=np.float32), 32)


def test_l2_normalize() -> None:
    rng = np.random.default_rng(2)
    x = rng.standard_normal((6, 5)).astype(np.float32) * 10
    x[3] = 0.0
    out = l2_normalize(x)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, reference.l2_normalize_rows(x), rtol=1e-5, atol=1e-7)
    norms = np.linalg.norm(out, axis=1)
    np.testing.assert_allclose(np.delete(norms, 3), 1.0, rtol=1e-5)
    assert np.all(out[3] == 0.0)
    # along another axis
    np.testing.assert_allclose(np.linalg.norm(l2_normalize(x[[0, 1, 2]], axis=0), axis=0), 1.0, rtol=1e-5)


@pytest.mark.parametrize("n", [1, 20, 33])
def test_clip_tokens(n: int) -> None:
    frames = np.random.default_rng(n).standard_normal((n, 9)).astype(np.float32)
    got = clip_tokens(frames)
    assert got.shape == (32, 9)
    np.testing.assert_allclose(got, reference.l2_normalize_rows(reference.bin_means(frames, 32)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("n", [1, 50, 128])
def test_frame_tokens_keeps_short_videos(n: int) -> None:
    frames = np.random.default_rng(n).standard_normal((n, 5)).astype(np.float32)
    got = frame_tokens(frames)
    assert got.shape == (n, 5)
    np.testing.assert_allclose(got, reference.l2_normalize_rows(frames), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("n", [129, 300])
def test_frame_tokens_bins_long_videos(n: int) -> None:
    frames = np.random.default_rng(n).standard_normal((n, 5)).astype(np.float32)
    got = frame_tokens(frames)
    assert got.shape == (128, 5)
    np.testing.assert_allclose(got, reference.l2_normalize_rows(reference.bin_means(frames, 128)), rtol=1e-5, atol=1e-6)
    small = frame_tokens(frames, max_frames=16)
    np.testing.assert_allclose(small, reference.l2_normalize_rows(reference.bin_means(frames, 16)), rtol=1e-5, atol=1e-6)


def test_preprocess_video_shapes_and_dtypes() -> None:
    config = DataConfig(clip_bins=8, max_frames=10)
    raw = np.random.default_rng(3).standard_normal((25, 6)).astype(np.float16)
    clip, frames = preprocess_video(raw, config)
    assert clip.shape == (8, 6) and frames.shape == (10, 6)
    assert clip.dtype == np.float32 and frames.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(clip, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(frames, reference.l2_normalize_rows(reference.bin_means(raw.astype(np.float32), 10)), rtol=1e-4)
    clip64, frames64 = preprocess_video(raw.astype(np.float64), config)
    assert clip64.dtype == np.float32 and frames64.dtype == np.float32
    with pytest.raises(ValueError, match="preprocess_video"):
        preprocess_video(np.zeros((0, 6), dtype=np.float32), config)


def test_preprocess_query_truncates_and_normalises() -> None:
    tokens = np.random.default_rng(4).standard_normal((45, 12)).astype(np.float32) * 3
    out = preprocess_query(tokens)
    assert out.shape == (30, 12) and out.dtype == np.float32
    np.testing.assert_allclose(out, reference.l2_normalize_rows(tokens[:30]), rtol=1e-5, atol=1e-6)
    assert preprocess_query(tokens[:7], max_tokens=30).shape == (7, 12)
    assert preprocess_query(tokens, max_tokens=5).shape == (5, 12)


def test_collate_videos_pads_and_masks() -> None:
    rng = np.random.default_rng(5)
    lengths = [3, 7, 1]
    items = [(rng.standard_normal((4, 6)).astype(np.float32), rng.standard_normal((n, 6)).astype(np.float32))
             for n in lengths]
    batch = collate_videos(items, ["a", "b", "c"])
    assert batch.clip_feats.shape == (3, 4, 6)
    assert batch.frame_feats.shape == (3, 7, 6)
    assert batch.frame_mask.dtype == torch.bool
    assert batch.video_ids == ["a", "b", "c"] and len(batch) == 3
    for row, n in enumerate(lengths):
        assert batch.frame_mask[row].tolist() == [True] * n + [False] * (7 - n)
        np.testing.assert_array_equal(batch.frame_feats[row, :n].numpy(), items[row][1])
        assert torch.all(batch.frame_feats[row, n:] == 0)
        np.testing.assert_array_equal(batch.clip_feats[row].numpy(), items[row][0])
    with pytest.raises(ValueError, match="video ids"):
        collate_videos(items, ["a"])
    with pytest.raises(ValueError, match="width"):
        collate_videos([items[0], (items[1][0], items[1][1][:, :5])], ["a", "b"])
    with pytest.raises(ValueError, match="empty"):
        collate_videos([], [])


def test_collate_queries_pads_and_masks() -> None:
    rng = np.random.default_rng(6)
    lengths = [2, 5, 3, 5]
    arrays = [rng.standard_normal((n, 8)).astype(np.float32) for n in lengths]
    batch = collate_queries(arrays, ["q0", "q1", "q2", "q3"], video_index=[0, 0, 1, 2])
    assert batch.tokens.shape == (4, 5, 8)
    assert batch.mask.sum(dim=1).tolist() == lengths
    assert batch.video_index is not None and batch.video_index.dtype == torch.long
    assert batch.video_index.tolist() == [0, 0, 1, 2]
    for row, n in enumerate(lengths):
        np.testing.assert_array_equal(batch.tokens[row, :n].numpy(), arrays[row])
        assert torch.all(batch.tokens[row, n:] == 0)
        assert not batch.mask[row, n:].any()
    assert collate_queries(arrays, ["a", "b", "c", "d"]).video_index is None
    with pytest.raises(ValueError, match="video_index"):
        collate_queries(arrays, ["a", "b", "c", "d"], video_index=[0, 1])
    with pytest.raises(ValueError, match="query ids"):
        collate_queries(arrays, ["a"])
