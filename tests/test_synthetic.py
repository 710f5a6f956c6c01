"""Tests of the synthetic corpus: determinism, the standard layout, ground truth, and learnable-but-not-trivial."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from prvr.data.captions import caption_path, moments_path, read_captions, read_moments
from prvr.data.features import open_query_features, open_video_features, query_feature_path
from prvr.data.synthetic import ACTIONS, OBJECTS, SUBJECTS, make_synthetic_corpus

SMALL = {"splits": {"train": 8, "val": 4}, "video_dim": 12, "text_dim": 10, "latent_dim": 6}


def read_arrays(path: Path) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as handle:
        return {key: handle[key][()] for key in handle}


def test_layout_and_summary(tmp_path: Path) -> None:
    summary = make_synthetic_corpus(tmp_path, "toy", **SMALL, video_feature="cam", text_feature="enc")
    base = tmp_path / "toy"
    assert Path(summary["video_feature_file"]) == base / "FeatureData" / "cam" / "feature.hdf5"
    assert Path(summary["query_feature_file"]) == query_feature_path(tmp_path, "toy", "enc")
    assert summary["video_dim"] == 12 and summary["text_dim"] == 10
    videos = open_video_features(tmp_path, "toy", "cam")
    queries = open_query_features(tmp_path, "toy", "enc")
    assert videos.dim == 12 and queries.dim == 10
    all_caps: set[str] = set()
    for split, count in SMALL["splits"].items():
        records = read_captions(caption_path(tmp_path, "toy", split))
        video_ids = list(dict.fromkeys(r.video_id for r in records))
        assert len(video_ids) == count == summary["splits"][split]["videos"]
        assert len(records) == summary["splits"][split]["queries"]
        assert all(v.startswith(f"toy_{split}_") for v in video_ids)
        assert set(video_ids) <= set(videos.ids())
        moments = read_moments(moments_path(tmp_path, "toy", split))
        assert set(moments) == {r.query_id for r in records}
        for video_id in video_ids:
            frames = videos[video_id]
            assert 20 <= frames.shape[0] <= 120
            own = [r for r in records if r.video_id == video_id]
            assert 2 <= len(own) <= 5
            spans = []
            for record in own:
                assert record.query_id.startswith(f"{video_id}#enc#")
                (start, end), = moments[record.query_id][0]
                assert moments[record.query_id][1] == float(frames.shape[0])  # 1 frame per second
                assert 0 <= start < end <= frames.shape[0] and end - start >= 3
                spans.append((start, end))
            spans.sort()
            assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))  # events do not overlap
        for record in records:
            words = record.text.split()
            assert sum(w in SUBJECTS for w in words) == 1
            assert sum(w in ACTIONS for w in words) == 1
            assert sum(w in OBJECTS for w in words) == 1
            assert queries[record.query_id].shape[0] == len(words)  # one token per word
        all_caps |= {r.query_id for r in records}
    assert set(queries.ids()) == all_caps  # the query file holds every split
    assert set(videos.ids()) == {f"toy_{s}_{i:05d}" for s, n in SMALL["splits"].items() for i in range(n)}


def test_deterministic_given_the_seed(tmp_path: Path) -> None:
    make_synthetic_corpus(tmp_path / "a", **SMALL, seed=5)
    make_synthetic_corpus(tmp_path / "b", **SMALL, seed=5)
    make_synthetic_corpus(tmp_path / "c", **SMALL, seed=6)
    files = [
        Path("synth/FeatureData/synth/feature.hdf5"),
        Path("synth/TextData/synth_synth_query_feat.hdf5"),
    ]
    for file in files:
        first, second, other = (read_arrays(tmp_path / run / file) for run in ("a", "b", "c"))
        assert list(first) == list(second)
        for key in first:
            assert first[key].dtype == np.float32
            assert first[key].tobytes() == second[key].tobytes()
        assert any(key not in other or other[key].tobytes() != first[key].tobytes() for key in first)
    for name in ("synthtrain.caption.txt", "synthval.moments.jsonl"):
        text_a = (tmp_path / "a" / "synth" / "TextData" / name).read_text()
        assert text_a == (tmp_path / "b" / "synth" / "TextData" / name).read_text()
        assert text_a != (tmp_path / "c" / "synth" / "TextData" / name).read_text()


def test_splits_are_independent_of_other_splits(tmp_path: Path) -> None:
    make_synthetic_corpus(tmp_path / "a", splits={"train": 3, "val": 2}, video_dim=8, text_dim=8, latent_dim=4)
    make_synthetic_corpus(tmp_path / "b", splits={"val": 2}, video_dim=8, text_dim=8, latent_dim=4)
    first = read_arrays(tmp_path / "a" / "synth" / "FeatureData" / "synth" / "feature.hdf5")
    second = read_arrays(tmp_path / "b" / "synth" / "FeatureData" / "synth" / "feature.hdf5")
    for key, value in second.items():
        np.testing.assert_array_equal(first[key], value)


def test_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="splits"):
        make_synthetic_corpus(tmp_path, splits={"train": 0})
    with pytest.raises(ValueError, match="frame_range"):
        make_synthetic_corpus(tmp_path, splits={"train": 1}, frame_range=(10, 5))
    with pytest.raises(ValueError, match="event_range"):
        make_synthetic_corpus(tmp_path, splits={"train": 1}, event_range=(0, 2))


# ----------------------------------------------------------------------------------------------------------------
# learnable, not trivial


def _normalize(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _ranks(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """0-based rank of each query's target video (ties counted in the query's favour)."""
    return (scores > scores[np.arange(len(targets)), targets][:, None]).sum(axis=1)


@pytest.fixture(scope="module")
def learnable(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[np.ndarray, list[np.ndarray], np.ndarray]]:
    root = tmp_path_factory.mktemp("learnable")
    # Equal widths so that the zero-shot cosine between raw frames and raw query tokens is defined.
    make_synthetic_corpus(root, splits={"train": 300, "val": 100}, video_dim=48, text_dim=48, seed=0)
    videos = open_video_features(root, "synth", "synth")
    queries = open_query_features(root, "synth", "synth")
    data = {}
    for split in ("train", "val"):
        records = read_captions(caption_path(root, "synth", split))
        video_ids = list(dict.fromkeys(r.video_id for r in records))
        row = {v: i for i, v in enumerate(video_ids)}
        pooled = np.stack([queries[r.query_id].mean(axis=0) for r in records])  # (Nq, D_text)
        targets = np.array([row[r.video_id] for r in records])
        data[split] = (pooled, [videos[v] for v in video_ids], targets)
    return data


def test_zero_shot_cosine_is_near_random(learnable: dict) -> None:
    pooled, frames, targets = learnable["val"]
    scores = np.stack([(_normalize(pooled) @ _normalize(f).T).max(axis=1) for f in frames], axis=1)  # (Nq, V)
    ranks = _ranks(scores, targets)
    n_videos = len(frames)
    recall10 = 100 * np.mean(ranks < 10)
    assert 3.0 <= recall10 <= 18.0  # random: 10 %
    assert 0.4 * n_videos <= ranks.mean() <= 0.6 * n_videos  # random: (V - 1) / 2


def test_least_squares_map_retrieves_far_above_random(learnable: dict) -> None:
    train_pooled, train_frames, train_targets = learnable["train"]
    pooled, frames, targets = learnable["val"]
    train_means = np.stack([f.mean(axis=0) for f in train_frames])  # (V_train, D_in)
    weights, *_ = np.linalg.lstsq(train_pooled, train_means[train_targets], rcond=None)  # (D_text, D_in)
    val_means = np.stack([f.mean(axis=0) for f in frames])  # (V, D_in)
    ranks = _ranks(_normalize(pooled @ weights) @ _normalize(val_means).T, targets)
    recall10 = 100 * np.mean(ranks < 10)
    assert recall10 >= 20.0  # about 2.5x random
    assert ranks.mean() <= 0.4 * len(frames)
    # ... and still far from solved: mean pooling mixes events and the per-video scene vector.
    assert 100 * np.mean(ranks < 1) <= 30.0


def test_moments_sidecar_is_json_lines(tmp_path: Path) -> None:
    make_synthetic_corpus(tmp_path, **SMALL)
    lines = moments_path(tmp_path, "synth", "train").read_text().splitlines()
    first = json.loads(lines[0])
    assert set(first) == {"cap_id", "video_id", "windows", "duration"}
