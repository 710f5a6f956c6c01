"""`prvr extract` end to end: generated videos -> tiny CLIP features in the PRVR layout, failures, cache, resume,
the corpus the index builder takes, and the real sample video."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from helpers import save_tiny_clip, save_untrained_checkpoint
from prvr.features.backbones import ClipImageBackbone
from prvr.features.cache import FeatureCache
from prvr.features.corpus import ExtractedVideoCorpus, extract_for_index, find_feature_name
from prvr.features.extract import (
    FAILURES_FILE,
    assign_video_ids,
    extract_videos,
    feature_name_for,
    find_videos,
    read_sidecar,
)
from prvr.features.frames import SamplingConfig, VideoFrameSampler
from prvr.features.synthetic_video import write_audio_only, write_empty_video, write_video

SAMPLE_VIDEO = Path(__file__).resolve().parents[2] / "shared" / "data" / "univtg_example" / "charades.mp4"
OK_IDS = {"a", "a-2", "b", "c", "odd", "rotated", "vfr"}
FAILED_IDS = {"corrupt", "empty", "speech"}
SAMPLING = SamplingConfig(fps=1.0, frames_per_feature=2)


class CountingBackbone:
    """Wraps a backbone: counts calls and images, checks batch sizes, and can die after some calls (a kill)."""

    def __init__(self, inner: ClipImageBackbone, die_after: int | None = None) -> None:
        self.inner = inner
        self.backbone_id, self.dim, self.batch_size = inner.backbone_id, inner.dim, inner.batch_size
        self.die_after = die_after
        self.calls = 0
        self.images = 0

    def encode_images(self, images: list[np.ndarray]) -> np.ndarray:
        if self.die_after is not None and self.calls >= self.die_after:
            raise KeyboardInterrupt("killed mid-way")
        assert 1 <= len(images) <= self.batch_size  # memory is bounded by one batch of frames
        self.calls += 1
        self.images += len(images)
        return self.inner.encode_images(images)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, tiny_clip: Path) -> dict:
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("extract")
    clip = tiny_clip
    videos = tmp / "videos"
    (videos / "sub").mkdir(parents=True)
    write_video(videos / "a.mp4", np.arange(0, 3.3, 0.1))
    write_video(videos / "sub" / "a.mp4", np.arange(0, 1.2, 0.1), codec="mpeg4")  # same stem -> a-2
    write_video(videos / "b.mp4", np.arange(0, 2.0, 0.1), codec="mpeg4", with_audio=True)
    write_video(videos / "c.webm", np.arange(0, 2.0, 0.1), codec="libvpx-vp9")
    write_video(videos / "rotated.mp4", np.arange(0, 1.5, 0.1), rotation=90)
    write_video(videos / "vfr.mkv", np.concatenate([[0.0], np.cumsum(np.tile([0.03, 0.6, 0.07], 4))]))
    write_video(videos / "odd.mkv", np.arange(0, 1.0, 0.1), codec="ffv1", pix_fmt="yuv444p", width=63, height=37)
    (videos / "corrupt.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 3000, np.uint8).tobytes())
    write_audio_only(videos / "speech.mp4")
    write_empty_video(videos / "empty.mp4")
    (videos / "notes.txt").write_text("not a video", encoding="utf-8")
    backbone = ClipImageBackbone(clip, device="cpu", batch_size=3)
    return {"tmp": tmp, "clip": clip, "videos": videos, "backbone": backbone}


@pytest.fixture(scope="module")
def extracted(setup: dict) -> dict:
    counting = CountingBackbone(setup["backbone"])
    result = extract_videos(setup["videos"], setup["tmp"] / "data", counting, sampling=SAMPLING, progress=False)
    return {"result": result, "counting": counting, "root": setup["tmp"] / "data"}


def test_inputs_and_names(tmp_path: Path, setup: dict) -> None:
    paths = find_videos(setup["videos"])
    assert len(paths) == 10 and all(p.is_absolute() for p in paths) and not any(p.suffix == ".txt" for p in paths)
    assert assign_video_ids([Path("a/x.mp4"), Path("b/x.mp4"), Path("x-2.avi")]) == ["x", "x-3", "x-2"]
    assert feature_name_for("clip:openai/clip-vit-base-patch32@0123456789ab") == "clip_vit_base_patch32"
    with pytest.raises(FileNotFoundError, match="holds no video files"):
        find_videos(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        find_videos(tmp_path / "absent")


def test_a_folder_is_extracted_and_failures_are_reported(extracted: dict, setup: dict) -> None:
    result, counting = extracted["result"], extracted["counting"]
    assert {v.video_id for v in result.succeeded} == OK_IDS
    assert {v.video_id for v in result.failed} == FAILED_IDS
    reasons = {v.video_id: v.reason for v in result.failed}
    assert "not a readable media file" in reasons["corrupt"]
    assert "no video stream (streams: audio)" in reasons["speech"]
    assert "no stream with data" in reasons["empty"] or "0 decodable frames" in reasons["empty"]
    assert result.folder == extracted["root"] / "videos" / "FeatureData" / "tiny_clip"
    sidecar = {row["video_id"]: row for row in read_sidecar(result.folder)}
    assert set(sidecar) == OK_IDS | FAILED_IDS
    assert sidecar["a-2"]["source"].endswith("sub/a.mp4") and sidecar["a"]["source"].endswith("videos/a.mp4")
    assert sidecar["rotated"]["rotation"] == 90 and (sidecar["rotated"]["width"], sidecar["rotated"]["height"]) \
        == (48, 64)
    assert (sidecar["odd"]["width"], sidecar["odd"]["height"]) == (63, 37)
    failures = json.loads((result.folder / FAILURES_FILE).read_text(encoding="utf-8"))
    assert {row["video_id"] for row in failures["failed"]} == FAILED_IDS
    total_images = 0
    with h5py.File(result.feature_file, "r") as handle:
        assert set(handle) == OK_IDS
        assert handle.attrs["backbone"] == setup["backbone"].backbone_id
        assert json.loads(handle.attrs["sampling"]) == SAMPLING.to_dict()
        for video_id in OK_IDS:
            row = sidecar[video_id]
            assert row["status"] == "ok" and row["num_features"] == math.ceil(row["duration_sec"] - 1e-9)
            assert handle[video_id].shape == (row["num_features"], 12)
            assert handle[video_id].attrs["duration_sec"] == pytest.approx(row["duration_sec"])
            total_images += 2 * row["num_features"]
    assert counting.images == total_images  # two frames per feature, each encoded once


def test_features_equal_a_direct_computation(extracted: dict, setup: dict) -> None:
    """Reference: every sampled frame through the backbone in one call, then the mean of each feature's frames."""
    for name, video_id in (("vfr.mkv", "vfr"), ("rotated.mp4", "rotated")):
        frames = list(VideoFrameSampler(setup["videos"] / name, SAMPLING))
        per_frame = setup["backbone"].encode_images([frame.image for frame in frames])
        expected = np.stack([per_frame[[i for i, f in enumerate(frames) if f.feature_index == feature]].mean(0)
                             for feature in range(frames[-1].feature_index + 1)])
        with h5py.File(extracted["result"].feature_file, "r") as handle:
            np.testing.assert_allclose(handle[video_id][()], expected, atol=1e-5)


def test_a_killed_run_resumes_without_recomputing(tmp_path: Path, extracted: dict, setup: dict) -> None:
    dying = CountingBackbone(setup["backbone"], die_after=7)
    with pytest.raises(KeyboardInterrupt):
        extract_videos(setup["videos"], tmp_path, dying, sampling=SAMPLING, progress=False)
    folder = tmp_path / "videos" / "FeatureData" / "tiny_clip"
    finished = len(FeatureCache(folder / "cache"))
    assert 1 <= finished < len(OK_IDS)
    assert not (folder / "feature.hdf5").exists()  # written only at the end, whole
    assert not [p for p in folder.rglob("*") if p.name.endswith(".tmp")]
    again = CountingBackbone(setup["backbone"])
    result = extract_videos(setup["videos"], tmp_path, again, sampling=SAMPLING, progress=False)
    assert sum(v.cached for v in result.succeeded) == finished
    first_images = extracted["counting"].images
    assert 0 < again.images < first_images  # only the unfinished videos were encoded
    cached_images = sum(2 * v.num_features for v in result.succeeded if v.cached)
    assert again.images == first_images - cached_images
    again_again = CountingBackbone(setup["backbone"])
    extract_videos(setup["videos"], tmp_path, again_again, sampling=SAMPLING, progress=False)
    assert again_again.calls == 0  # a third run is all cache
    with h5py.File(result.feature_file, "r") as resumed, h5py.File(extracted["result"].feature_file, "r") as fresh:
        assert set(resumed) == set(fresh) == OK_IDS
        for video_id in OK_IDS:
            np.testing.assert_array_equal(resumed[video_id][()], fresh[video_id][()])


def test_another_backbone_or_rate_is_refused(tmp_path: Path, setup: dict) -> None:
    one = setup["videos"] / "b.mp4"
    extract_videos(one, tmp_path, setup["backbone"], sampling=SAMPLING, progress=False)
    other = ClipImageBackbone(save_tiny_clip(tmp_path / "tiny-clip", seed=1), device="cpu")
    assert other.backbone_id != setup["backbone"].backbone_id
    with pytest.raises(ValueError, match="holds features of backbone"):
        extract_videos(one, tmp_path, other, sampling=SAMPLING, progress=False)
    with pytest.raises(ValueError, match="extracted with sampling"):
        extract_videos(one, tmp_path, setup["backbone"], sampling=SamplingConfig(fps=2.0), progress=False)
    other_name = extract_videos(one, tmp_path, other, feature_name="second", progress=False)
    assert other_name.folder.name == "second" and len(other_name.succeeded) == 1


def test_cli(tmp_path: Path, setup: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    from prvr.cli import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the hub id below must fail fast, without a network attempt
    runner = CliRunner()
    videos = tmp_path / "in"
    videos.mkdir()
    shutil.copy(setup["videos"] / "b.mp4", videos / "b.mp4")
    shutil.copy(setup["videos"] / "corrupt.mp4", videos / "corrupt.mp4")
    args = ["extract", "--videos", str(videos), "--out", str(tmp_path / "out"), "--backbone",
            f"clip:{setup['clip']}", "--device", "cpu", "--fps", "2", "--no-progress", "--name", "clip_tiny"]
    outcome = runner.invoke(main, args)
    assert outcome.exit_code == 0, outcome.output
    summary = json.loads(outcome.output[outcome.output.index("{"):])
    assert (summary["ok"], summary["failed"], summary["feature_name"]) == (1, 1, "clip_tiny")
    with h5py.File(summary["features"], "r") as handle:
        assert handle["b"].shape == (4, 12)  # 1.94 s at 2 features per second
    (videos / "b.mp4").unlink()
    outcome = runner.invoke(main, args)
    assert outcome.exit_code == 1 and "none of the 1 video(s) could be extracted" in outcome.output
    outcome = runner.invoke(main, [*args[:5], "--backbone", "clip:prvr-tests/absent-model", "--device", "cpu"])
    assert outcome.exit_code == 1 and "hf download" in outcome.output


def test_the_extracted_folder_builds_a_searchable_index(tmp_path: Path, extracted: dict, setup: dict,
                                                       tiny_bert: Path) -> None:
    from prvr.index.builder import build_index
    from prvr.retriever import Retriever
    from prvr.text_encoders import TokenFeatureEncoder
    from prvr.index.catalog import open_database

    root = extracted["root"]
    assert find_feature_name(root, "videos") == "tiny_clip"
    checkpoint = tmp_path / "model.pt"
    config = save_untrained_checkpoint(checkpoint, video_dim=12, text_dim=16)
    corpus = ExtractedVideoCorpus(root, "videos", config.data, text_dim=16, expected_video_dim=12,
                                  expected_backbone=setup["backbone"].backbone_id)
    assert set(corpus.video_ids) == OK_IDS and corpus.captions_of("a") == []
    assert 3.2 < corpus.duration_of("a") <= 3.3 + 1e-6  # 33 frames 0.1 s apart, plus the last one's duration
    assert corpus.video_info("a-2").uri.endswith("sub/a.mp4") and corpus.video_info("vfr").n_frames == 13
    clip, frames = corpus.video("a")
    assert clip.shape == (config.data.clip_bins, 12) and frames.shape == (4, 12)

    bert = tiny_bert
    encoder = TokenFeatureEncoder(bert)
    result = build_index(checkpoint, corpus, tmp_path / "index", collection_name="videos", progress=False,
                         text_backbone={"id": encoder.encoder_id, "path": str(bert)})
    assert result.num_videos == len(OK_IDS)
    db = open_database(tmp_path / "index" / "index.db")
    try:
        generation = db.active_generation()
        assert generation is not None and generation.num_videos == len(OK_IDS)
    finally:
        db.close()
    with Retriever.load(tmp_path / "index") as retriever:
        hits = retriever.search("a man walks the dog on the beach", k=3)
    assert len(hits) == 3 and {hit.video_id for hit in hits} <= OK_IDS

    with pytest.raises(ValueError, match="made by backbone"):
        ExtractedVideoCorpus(root, "videos", config.data, text_dim=16, expected_backbone="clip:other@ffffffffffff")
    with pytest.raises(ValueError, match="expects 99"):
        ExtractedVideoCorpus(root, "videos", config.data, text_dim=16, expected_video_dim=99)

    # the one call `prvr index add --videos DIR` makes before build_index: only the new file is indexed
    more = tmp_path / "more"
    more.mkdir()
    write_video(more / "new.mp4", np.arange(0, 2.5, 0.1))
    with pytest.raises(ValueError, match="made by backbone"):
        extract_for_index(more, tmp_path / "features", config, setup["backbone"], expected_backbone="clip:x@ff")
    added_corpus, extraction = extract_for_index(more, tmp_path / "features", config, setup["backbone"],
                                                 expected_backbone=setup["backbone"].backbone_id, progress=False)
    assert added_corpus.video_ids == ["new"] and not extraction.failed
    added = build_index(checkpoint, added_corpus, tmp_path / "index", collection_name="videos", progress=False)
    assert (added.num_videos, added.new_videos) == (len(OK_IDS) + 1, 1)


@pytest.mark.skipif(not SAMPLE_VIDEO.is_file(), reason="../shared/data/univtg_example absent")
def test_the_real_charades_video_is_ingested(tmp_path: Path, setup: dict) -> None:
    counting = CountingBackbone(setup["backbone"])
    result = extract_videos(SAMPLE_VIDEO, tmp_path, counting, progress=False)
    (video,) = result.succeeded
    assert video.video_id == "charades" and video.frame_count == 460 and video.num_features == 31
    assert video.duration_sec == pytest.approx(30.697, abs=1e-3) and video.fps == pytest.approx(14.985, abs=1e-3)
    assert counting.images == 31 and counting.calls == math.ceil(31 / 3)
    with h5py.File(result.feature_file, "r") as handle:
        assert handle["charades"].shape == (31, 12)


KILL_SCRIPT = """
import sys, time
import torch
torch.set_num_threads(1)
from prvr.features.backbones import ClipImageBackbone
from prvr.features.extract import extract_videos
from prvr.features.frames import SamplingConfig

class Slow:
    def __init__(self, inner):
        self.inner, self.backbone_id, self.dim, self.batch_size = inner, inner.backbone_id, inner.dim, 1
    def encode_images(self, images):
        time.sleep(0.3)
        return self.inner.encode_images(images)

backbone = Slow(ClipImageBackbone(sys.argv[1], device="cpu", batch_size=1))
extract_videos(sys.argv[2], sys.argv[3], backbone, sampling=SamplingConfig(fps=1.0, frames_per_feature=2),
               progress=False)
"""


@pytest.mark.slow
def test_a_sigkilled_process_resumes(tmp_path: Path, extracted: dict, setup: dict) -> None:
    """A real kill -9 in the middle of a run: finished videos come from the cache, the output matches a fresh run."""
    import os
    import signal
    import subprocess
    import sys
    import time

    script = tmp_path / "run.py"
    script.write_text(KILL_SCRIPT, encoding="utf-8")
    cache = FeatureCache(tmp_path / "out" / "videos" / "FeatureData" / "tiny_clip" / "cache")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    child = subprocess.Popen([sys.executable, str(script), str(setup["clip"]), str(setup["videos"]),
                              str(tmp_path / "out")], env=env)
    deadline = time.monotonic() + 240
    while len(cache) < 2 and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert child.poll() is None, "the run finished before it could be killed"
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    finished = len(cache)
    assert 2 <= finished < len(OK_IDS)
    counting = CountingBackbone(setup["backbone"])
    result = extract_videos(setup["videos"], tmp_path / "out", counting, sampling=SAMPLING, progress=False)
    assert sum(v.cached for v in result.succeeded) >= finished
    assert counting.images < extracted["counting"].images
    with h5py.File(result.feature_file, "r") as resumed, h5py.File(extracted["result"].feature_file, "r") as fresh:
        for video_id in OK_IDS:
            np.testing.assert_allclose(resumed[video_id][()], fresh[video_id][()], atol=1e-6)
