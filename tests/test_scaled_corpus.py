"""The scaled load-run corpus: noisy copies of a real corpus's videos, readable by the data layer."""

from __future__ import annotations

import dataclasses

import h5py
import numpy as np
import pytest

from prvr.benchmarks.scaled_corpus import build_scaled_corpus, copy_id
from prvr.config import ExperimentConfig
from prvr.data.captions import caption_path, moments_path, read_captions, read_moments
from prvr.data.dataset import PRVRCorpus
from prvr.data.features import open_query_features, open_video_features
from prvr.data.synthetic import make_synthetic_corpus


@pytest.fixture()
def source(tmp_path):
    make_synthetic_corpus(tmp_path, "synth", splits={"train": 4, "val": 3}, seed=3, frame_range=(6, 12))
    return tmp_path


def _build(root, **kwargs):
    options = dict(out_collection="big", out_split="test", num_videos=17, video_feature="synth", text_feature="synth",
                   noise=0.3, seed=5)
    options.update(kwargs)
    return build_scaled_corpus(root, "synth", ["val", "train"], **options)


def test_copies_cycle_the_sources_and_keep_captions_windows_and_features(source):
    summary = _build(source)
    assert summary["videos"] == 17 and summary["source_videos"] == 7 and summary["copies"] == 3
    originals = open_video_features(source, "synth", "synth")
    scaled = open_video_features(source, "big", "synth")
    source_records = read_captions(caption_path(source, "synth", "val")) + read_captions(
        caption_path(source, "synth", "train"))
    first_video = source_records[0].video_id
    assert len(scaled) == 17
    # copy 0 is the video itself (up to the float16 storage); copies differ by noise of the stated size
    assert np.allclose(scaled[first_video], originals[first_video], atol=1e-2)
    frames = np.asarray(originals[first_video], dtype=np.float32)
    noisy = np.asarray(scaled[copy_id(first_video, 1)], dtype=np.float32)
    assert noisy.shape == frames.shape and not np.allclose(noisy, frames, atol=1e-2)
    rms = np.sqrt(np.mean(frames**2, axis=1))
    relative = np.sqrt(np.mean((noisy - frames) ** 2, axis=1)) / rms
    assert np.all(relative > 0.15) and np.all(relative < 0.45)  # noise 0.3 x RMS, 6-12 frames of 64 dims
    # every copy keeps its source's captions, windows and duration; query features are the source's
    records = read_captions(caption_path(source, "big", "test"))
    moments = read_moments(moments_path(source, "big", "test"))
    source_moments = read_moments(moments_path(source, "synth", "val"))
    queries = open_query_features(source, "big", "synth")
    source_queries = open_query_features(source, "synth", "synth")
    copied = [r for r in records if r.video_id == copy_id(first_video, 1)]
    assert [r.text for r in copied] == [r.text for r in source_records if r.video_id == first_video]
    for record in copied:
        original = record.query_id.replace("~c1", "")
        assert moments[record.query_id] == source_moments[original]
        assert np.array_equal(queries[record.query_id], source_queries[original])
    with h5py.File(source / "big" / "TextData" / "synth_big_query_feat.hdf5", "r") as handle:
        assert handle[copied[0].query_id].id == handle[copied[0].query_id.replace("~c1", "")].id  # a hard link


def test_the_data_layer_opens_it_and_builds_are_deterministic(source):
    _build(source)
    config = dataclasses.replace(ExperimentConfig().data, video_feature="synth", text_feature="synth")
    corpus = PRVRCorpus(source, "big", "test", config)
    assert len(corpus.video_ids) == 17
    first = np.asarray(open_video_features(source, "big", "synth")[corpus.video_ids[-1]])
    _build(source)
    assert np.array_equal(np.asarray(open_video_features(source, "big", "synth")[corpus.video_ids[-1]]), first)


@pytest.mark.parametrize("kwargs, message", [
    ({"num_videos": 0}, "num_videos"),
    ({"noise": -1.0}, "noise"),
    ({"out_collection": "synth"}, "differ"),
])
def test_bad_arguments_are_refused_before_writing(source, kwargs, message):
    with pytest.raises(ValueError, match=message):
        _build(source, **kwargs)
    assert not (source / "big").exists() or kwargs.get("out_collection") == "synth"


def test_a_source_caption_without_query_features_is_refused(source):
    with h5py.File(source / "synth" / "TextData" / "synth_synth_query_feat.hdf5", "a") as handle:
        del handle[read_captions(caption_path(source, "synth", "val"))[0].query_id]
    with pytest.raises(ValueError, match="query feature"):
        _build(source)
