"""`prvr build-index --videos` and `prvr index add --videos`: video files -> features -> a searchable index, with
the bad files reported and skipped, and a frame backbone other than the checkpoint's refused."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from prvr.checkpoint import save_checkpoint
from prvr.cli import main
from prvr.config import ExperimentConfig, apply_overrides, load_preset
from prvr.features.synthetic_video import write_video
from prvr.model import DreamPRVR
from prvr.index.catalog import open_database

SAMPLE_VIDEO = Path(__file__).resolve().parents[2] / "shared" / "data" / "univtg_example" / "charades.mp4"


def _checkpoint(path: Path, *, video_backbone: str | None = None) -> Path:
    config = apply_overrides(load_preset("tiny"), ["model.block.widths=[null, 2.0]",
                                                   "model.registers.diffusion.steps=2"])
    config = dataclasses.replace(config, model=dataclasses.replace(config.model, video_dim=12, text_dim=16),
                                 data=dataclasses.replace(config.data, video_backbone=video_backbone))
    torch.manual_seed(0)
    save_checkpoint(path, model=DreamPRVR(config.model, seed=0), config=config, epoch=0)
    return path


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory, tiny_clip: Path, tiny_bert: Path) -> dict:
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("videos-cli")
    videos = tmp / "videos"
    videos.mkdir()
    write_video(videos / "walk.mp4", np.arange(0, 3.0, 0.1))
    write_video(videos / "cook.mkv", np.arange(0, 2.0, 0.1), codec="mpeg4")
    (videos / "broken.mp4").write_bytes(b"\x00\x01 this is not a video" * 50)
    more = tmp / "more"
    more.mkdir()
    write_video(more / "surf.mp4", np.arange(0, 2.5, 0.1))
    return {"tmp": tmp, "videos": videos, "more": more, "clip": tiny_clip, "bert": tiny_bert,
            "checkpoint": _checkpoint(tmp / "model.pt")}


def test_build_index_from_video_files_then_add_more(assets: dict, tmp_path: Path) -> None:
    runner = CliRunner()
    index_dir = tmp_path / "index"
    backbone = f"clip:{assets['clip']}"
    # the generated videos, plus the real sample video when ../shared is there
    sample = ["--videos", str(SAMPLE_VIDEO)] if SAMPLE_VIDEO.is_file() else []
    expected = 3 if sample else 2
    result = runner.invoke(main, ["build-index", "--checkpoint", str(assets["checkpoint"]), *sample,
                                  "--videos", str(assets["videos"]), "--backbone", backbone, "--device", "cpu",
                                  "--out", str(index_dir), "--text-backbone", str(assets["bert"]), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "skipped" in result.output and "broken.mp4" in result.output  # reported, the rest indexed
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert (summary["videos"], summary["new_videos"]) == (expected, expected)

    db = open_database(index_dir / "index.db")
    try:
        walk, cook = db.get_video("walk"), db.get_video("cook")
        assert walk is not None and cook is not None
        assert walk.uri.endswith("walk.mp4") and cook.uri.endswith("cook.mkv")  # served by the web page's player
        assert 2.9 < walk.duration_s <= 3.1 and 1.9 < cook.duration_s <= 2.1
    finally:
        db.close()

    result = runner.invoke(main, ["query", "a man walks the dog", "--index", str(index_dir), "--json",
                                  "--no-moments", "-k", "3"])
    assert result.exit_code == 0, result.output
    expected_ids = {"walk", "cook", "charades"} if sample else {"walk", "cook"}
    assert {hit["video_id"] for hit in json.loads(result.stdout)} == expected_ids

    # the index's backbone was loaded from a local folder: `index add` asks for it instead of guessing
    result = runner.invoke(main, ["index", "add", str(index_dir), "--videos", str(assets["more"]), "--no-progress"])
    assert result.exit_code == 1 and "--backbone" in result.output
    result = runner.invoke(main, ["index", "add", str(index_dir), "--videos", str(assets["more"]),
                                  "--backbone", backbone, "--device", "cpu", "--no-progress"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert (summary["videos"], summary["new_videos"]) == (expected + 1, 1)


def test_bad_combinations_and_another_backbone_are_refused(assets: dict, tmp_path: Path) -> None:
    runner = CliRunner()
    base = ["build-index", "--checkpoint", str(assets["checkpoint"]), "--out", str(tmp_path / "index"),
            "--no-progress"]
    result = runner.invoke(main, base)
    assert result.exit_code == 1 and "nothing to index" in result.output
    result = runner.invoke(main, [*base, "--videos", str(assets["videos"]), "--data", str(tmp_path),
                                  "--collection", "x"])
    assert result.exit_code == 1 and "not both" in result.output

    other = _checkpoint(tmp_path / "other.pt", video_backbone="clip:another-model@0123456789ab")
    stored = ExperimentConfig.from_json(torch.load(other, weights_only=False)["model_config"])
    assert stored.data.video_backbone == "clip:another-model@0123456789ab"  # the config round-trips the id
    result = runner.invoke(main, ["build-index", "--checkpoint", str(other), "--videos", str(assets["videos"]),
                                  "--backbone", f"clip:{assets['clip']}", "--device", "cpu",
                                  "--out", str(tmp_path / "index2"), "--no-progress"])
    assert result.exit_code == 1 and "another-model" in result.output
    assert not (tmp_path / "index2" / "index.db").exists()  # refused before anything was written
