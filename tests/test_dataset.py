"""Tests of PRVRCorpus validation, the training loader (order, caption completeness) and the evaluation iterators."""

from __future__ import annotations

import dataclasses
import pickle
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from prvr.config import DataConfig
from prvr.data.captions import caption_path, moments_path
from prvr.data.dataset import (
    PRVRCorpus,
    TrainVideoDataset,
    collate_train,
    epoch_permutation,
    iter_query_batches,
    iter_video_batches,
    make_train_loader,
)
from prvr.data.features import query_feature_path, write_hdf5_features
from prvr.data.preprocess import preprocess_query, preprocess_video
from prvr.data.synthetic import make_synthetic_corpus

CONFIG = DataConfig(video_feature="feat", text_feature="txt", clip_bins=4, max_frames=6, max_query_tokens=5)
# Caption order interleaves videos so that "order of first appearance" is tested.
CAPTIONS = [("vB#enc#0", "a cat sits"), ("vA#enc#0", "a dog runs"), ("vB#enc#1", "the cat jumps"),
            ("vC#enc#0", "someone cooks"), ("vA#enc#1", "the dog barks")]


def write_corpus(
    root: Path,
    captions: list[tuple[str, str]] = CAPTIONS,
    *,
    videos: dict[str, np.ndarray] | None = None,
    queries: dict[str, np.ndarray] | None = None,
    collection: str = "toy",
    split: str = "train",
) -> None:
    """Hand-written corpus in the standard layout (random features for every id unless given)."""
    rng = np.random.default_rng(0)
    if videos is None:
        video_ids = dict.fromkeys(cap.split("#")[0] for cap, _ in captions)
        videos = {v: rng.standard_normal((int(rng.integers(2, 10)), 8)).astype(np.float32) for v in video_ids}
    if queries is None:
        queries = {cap: rng.standard_normal((int(rng.integers(3, 8)), 6)).astype(np.float32) for cap, _ in captions}
    text_dir = root / collection / "TextData"
    text_dir.mkdir(parents=True, exist_ok=True)
    caption_path(root, collection, split).write_text("".join(f"{c} {t}\n" for c, t in captions), encoding="utf-8")
    feature_dir = root / collection / "FeatureData" / "feat"
    feature_dir.mkdir(parents=True, exist_ok=True)
    write_hdf5_features(feature_dir / "feature.hdf5", videos.items())
    write_hdf5_features(query_feature_path(root, collection, "txt"), queries.items())


@pytest.fixture()
def toy(tmp_path: Path) -> Path:
    write_corpus(tmp_path)
    return tmp_path


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    make_synthetic_corpus(root, "synth", splits={"train": 23, "val": 6}, video_dim=16, text_dim=12,
                          latent_dim=8, frame_range=(20, 40), seed=3)
    return root


SYNTH_CONFIG = DataConfig(video_feature="synth", text_feature="synth", clip_bins=8, max_frames=32)


# ----------------------------------------------------------------------------------------------------------------
# PRVRCorpus


def test_corpus_views(toy: Path) -> None:
    corpus = PRVRCorpus(toy, "toy", "train", CONFIG, expected_video_dim=8, expected_text_dim=6)
    assert corpus.video_ids == ["vB", "vA", "vC"]
    assert [q.query_id for q in corpus.queries] == [c for c, _ in CAPTIONS]
    assert corpus.query_video_index.tolist() == [0, 1, 0, 2, 1]
    assert [q.query_id for q in corpus.captions_of("vA")] == ["vA#enc#0", "vA#enc#1"]
    assert corpus.captions_of("vB")[1].text == "the cat jumps"
    assert corpus.video_dim == 8 and corpus.text_dim == 6
    assert corpus.moments is None
    assert corpus.video_row("vC") == 2
    with pytest.raises(KeyError):
        corpus.captions_of("nope")


def test_corpus_features_are_preprocessed_and_cached(toy: Path) -> None:
    corpus = PRVRCorpus(toy, "toy", "train", CONFIG)
    from prvr.data.features import open_query_features, open_video_features

    raw_video = open_video_features(toy, "toy", "feat")["vA"]
    clip, frames = corpus.video("vA")
    ref_clip, ref_frames = preprocess_video(raw_video, CONFIG)
    np.testing.assert_array_equal(clip, ref_clip)
    np.testing.assert_array_equal(frames, ref_frames)
    assert clip.shape == (4, 8) and frames.shape == (min(raw_video.shape[0], 6), 8)
    assert corpus.video("vA")[0] is clip  # cached
    raw_tokens = open_query_features(toy, "toy", "txt")["vA#enc#1"]
    tokens = corpus.query_tokens("vA#enc#1")
    np.testing.assert_array_equal(tokens, preprocess_query(raw_tokens, 5))
    assert corpus.query_tokens("vA#enc#1") is tokens

    uncached = PRVRCorpus(toy, "toy", "train", dataclasses.replace(CONFIG, cache_in_memory=False))
    first = uncached.video("vA")[0]
    assert uncached.video("vA")[0] is not first
    np.testing.assert_array_equal(uncached.video("vA")[0], first)


def test_corpus_pickles_without_cache(toy: Path) -> None:
    corpus = PRVRCorpus(toy, "toy", "train", CONFIG)
    expected = corpus.video("vC")
    clone = pickle.loads(pickle.dumps(corpus))
    assert clone._video_cache == {}  # the RAM cache does not travel
    np.testing.assert_array_equal(clone.video("vC")[1], expected[1])
    np.testing.assert_array_equal(clone.query_tokens("vC#enc#0"), corpus.query_tokens("vC#enc#0"))
    corpus.close()
    np.testing.assert_array_equal(corpus.video("vB")[0], clone.video("vB")[0])  # re-opens after close


def test_missing_video_features_are_listed(tmp_path: Path) -> None:
    captions = [(f"v{i}#enc#0", "text") for i in range(9)]
    rng = np.random.default_rng(1)
    videos = {f"v{i}": rng.standard_normal((3, 8)).astype(np.float32) for i in (0, 4)}
    write_corpus(tmp_path, captions, videos=videos)
    with pytest.raises(ValueError) as info:
        PRVRCorpus(tmp_path, "toy", "train", CONFIG)
    message = str(info.value)
    assert "7 of 9 videos have no features" in message
    assert "'v1'" in message and "'v6'" in message and "'v7'" not in message and "and 2 more" in message
    assert "feature.hdf5" in message and "toytrain.caption.txt" in message


def test_missing_query_features_are_listed(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    queries = {cap: rng.standard_normal((4, 6)).astype(np.float32) for cap, _ in CAPTIONS[:3]}
    write_corpus(tmp_path, queries=queries)
    with pytest.raises(ValueError) as info:
        PRVRCorpus(tmp_path, "toy", "train", CONFIG)
    message = str(info.value)
    assert "2 of 5 cap ids have no query features" in message
    assert "'vC#enc#0'" in message and "'vA#enc#1'" in message
    assert "txt_toy_query_feat.hdf5" in message


def test_dimension_mismatch(toy: Path) -> None:
    with pytest.raises(ValueError, match=r"feature\.hdf5: video features have dimension 8, expected 1024"):
        PRVRCorpus(toy, "toy", "train", CONFIG, expected_video_dim=1024)
    with pytest.raises(ValueError, match=r"query_feat\.hdf5: query features have dimension 6, expected 768"):
        PRVRCorpus(toy, "toy", "train", CONFIG, expected_text_dim=768)


def test_inconsistent_dims_inside_a_store(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    videos = {"vB": rng.standard_normal((3, 8)).astype(np.float32)}
    write_corpus(tmp_path, [("vB#enc#0", "x")], videos=videos)
    # Append a video of another width behind the writer's back (the writer itself refuses mixed widths).
    import h5py

    with h5py.File(tmp_path / "toy" / "FeatureData" / "feat" / "feature.hdf5", "a") as handle:
        handle.create_dataset("vZ", data=rng.standard_normal((3, 5)).astype(np.float32))
    corpus = PRVRCorpus(tmp_path, "toy", "train", CONFIG)
    with pytest.raises(ValueError, match="'vZ' have dimension 5, expected 8"):
        corpus.video("vZ")


def test_empty_split_and_missing_files(tmp_path: Path) -> None:
    write_corpus(tmp_path)
    caption_path(tmp_path, "toy", "val").write_text("\n\n", encoding="utf-8")
    with pytest.raises(ValueError, match="split 'val' of 'toy' is empty"):
        PRVRCorpus(tmp_path, "toy", "val", CONFIG)
    with pytest.raises(FileNotFoundError, match="toytest.caption.txt"):
        PRVRCorpus(tmp_path, "toy", "test", CONFIG)
    with pytest.raises(FileNotFoundError, match="no video features 'other'"):
        PRVRCorpus(tmp_path, "toy", "train", DataConfig(video_feature="other", text_feature="txt"))


def test_corpus_reads_moments(synth: Path) -> None:
    corpus = PRVRCorpus(synth, "synth", "val", SYNTH_CONFIG)
    moments = corpus.moments
    assert moments is not None and set(moments) == {q.query_id for q in corpus.queries}
    for query in corpus.queries:
        windows, duration = moments[query.query_id]
        assert query.windows == windows and query.duration == duration
        assert 0 <= query.start < query.end <= duration
    assert moments_path(synth, "synth", "val").is_file()


# ----------------------------------------------------------------------------------------------------------------
# training batches


def loader_ids(loader: torch.utils.data.DataLoader) -> list[list[str]]:
    return [videos.video_ids for videos, _ in loader]


def test_train_loader_order_is_a_function_of_seed_and_epoch(synth: Path) -> None:
    corpus = PRVRCorpus(synth, "synth", "train", SYNTH_CONFIG)
    first = loader_ids(make_train_loader(corpus, 5, seed=7, epoch=2))
    again = make_train_loader(corpus, 5, seed=7, epoch=2)
    assert loader_ids(again) == first
    assert loader_ids(again) == first  # iterating the same loader twice gives the same order
    assert [len(b) for b in first] == [5, 5, 5, 5, 3]  # drop_last=False
    flat = [v for batch in first for v in batch]
    assert sorted(flat) == sorted(corpus.video_ids)
    order = epoch_permutation(len(corpus.video_ids), 7, 2)
    assert flat == [corpus.video_ids[i] for i in order]
    assert loader_ids(make_train_loader(corpus, 5, seed=7, epoch=3)) != first
    assert loader_ids(make_train_loader(corpus, 5, seed=8, epoch=2)) != first
    assert flat != corpus.video_ids
    resumed = loader_ids(make_train_loader(corpus, 5, seed=7, epoch=2, start_batch=3))
    assert resumed == first[3:]


def test_train_batches_hold_every_caption_with_its_row(synth: Path) -> None:
    corpus = PRVRCorpus(synth, "synth", "train", SYNTH_CONFIG)
    seen: Counter[str] = Counter()
    for videos, queries in make_train_loader(corpus, 4, seed=0, epoch=0):
        assert queries.video_index is not None
        assert queries.tokens.shape[0] == len(queries.query_ids) == queries.video_index.shape[0]
        for row, video_id in enumerate(videos.video_ids):
            expected = [q.query_id for q in corpus.captions_of(video_id)]
            got = [c for c, r in zip(queries.query_ids, queries.video_index.tolist()) if r == row]
            assert got == expected
        for cap_id, row in zip(queries.query_ids, queries.video_index.tolist()):
            assert cap_id.split("#")[0] == videos.video_ids[row]
        for j, cap_id in enumerate(queries.query_ids):
            tokens = corpus.query_tokens(cap_id)
            assert int(queries.mask[j].sum()) == tokens.shape[0]
            np.testing.assert_array_equal(queries.tokens[j, : tokens.shape[0]].numpy(), tokens)
        for row, video_id in enumerate(videos.video_ids):
            clip, frames = corpus.video(video_id)
            np.testing.assert_array_equal(videos.clip_feats[row].numpy(), clip)
            assert int(videos.frame_mask[row].sum()) == frames.shape[0]
        seen.update(queries.query_ids)
    assert set(seen) == {q.query_id for q in corpus.queries} and set(seen.values()) == {1}


def test_train_loader_with_workers_matches_main_process(synth: Path) -> None:
    corpus = PRVRCorpus(synth, "synth", "train", SYNTH_CONFIG)
    corpus.video(corpus.video_ids[0])  # open the files in the parent before forking
    serial = list(make_train_loader(corpus, 6, seed=1, epoch=0))
    parallel = list(make_train_loader(corpus, 6, seed=1, epoch=0, num_workers=2))
    assert len(serial) == len(parallel)
    for (v0, q0), (v1, q1) in zip(serial, parallel):
        assert v0.video_ids == v1.video_ids and q0.query_ids == q1.query_ids
        assert torch.equal(v0.frame_feats, v1.frame_feats) and torch.equal(q0.tokens, q1.tokens)
        assert torch.equal(q0.video_index, q1.video_index)


def test_dataset_item_and_collate(toy: Path) -> None:
    corpus = PRVRCorpus(toy, "toy", "train", CONFIG)
    dataset = TrainVideoDataset(corpus)
    assert len(dataset) == 3
    video_id, clip, frames, captions = dataset[1]
    assert video_id == "vA" and [c for c, _ in captions] == ["vA#enc#0", "vA#enc#1"]
    videos, queries = collate_train([dataset[2], dataset[0]])
    assert videos.video_ids == ["vC", "vB"]
    assert queries.query_ids == ["vC#enc#0", "vB#enc#0", "vB#enc#1"]
    assert queries.video_index.tolist() == [0, 1, 1]


# ----------------------------------------------------------------------------------------------------------------
# evaluation iterators


def test_iter_video_batches(synth: Path) -> None:
    corpus = PRVRCorpus(synth, "synth", "val", SYNTH_CONFIG)
    batches = list(iter_video_batches(corpus, 4))
    assert [b.video_ids for b in batches] == [corpus.video_ids[:4], corpus.video_ids[4:]]
    assert batches[0].clip_feats.shape[1:] == (8, 16)
    subset = list(iter_video_batches(corpus, 10, video_ids=corpus.video_ids[::-1][:3]))
    assert len(subset) == 1 and subset[0].video_ids == corpus.video_ids[::-1][:3]
    with pytest.raises(ValueError, match="batch_size"):
        next(iter_video_batches(corpus, 0))


def test_iter_query_batches(synth: Path) -> None:
    corpus = PRVRCorpus(synth, "synth", "val", SYNTH_CONFIG)
    cap_ids: list[str] = []
    targets: list[int] = []
    for queries, target in iter_query_batches(corpus, 7):
        assert len(queries) <= 7 and target.shape == (len(queries),) and queries.video_index is None
        cap_ids.extend(queries.query_ids)
        targets.extend(target.tolist())
    assert cap_ids == [q.query_id for q in corpus.queries]
    assert targets == corpus.query_video_index.tolist()
    assert all(corpus.video_ids[t] == c.split("#")[0] for c, t in zip(cap_ids, targets))
