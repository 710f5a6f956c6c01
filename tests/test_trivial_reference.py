"""The capproxy trivial reference: trains in the project's loader, beats chance, writes prvr-train-like records."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from prvr.benchmarks.trivial import TrivialConfig, TrivialPRVR, train_trivial
from prvr.config import DataConfig
from prvr.data.synthetic import make_synthetic_corpus
from prvr.types import VideoTokens


def test_trivial_reference_learns_and_resumes_finished_runs(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    root = tmp_path / "data"
    make_synthetic_corpus(root, "synth", splits={"train": 120, "val": 40}, seed=5, frame_range=(10, 40))
    data = DataConfig(video_feature="synth", text_feature="synth")
    config = TrivialConfig(hidden_size=32, epochs=6, batch_videos=16, lr=1e-2, seed=1)
    history = train_trivial(root, "synth", data, tmp_path / "run", config)
    assert [record["epoch"] for record in history] == [1, 2, 3, 4, 5, 6]
    chance = 100.0 * (1 + 5 + 10) / 40 + 100.0  # SumR of a random ranking of 40 videos (R@100 is always 100)
    assert max(r["val"]["SumR"] for r in history) > chance + 60
    assert all(record["wall_seconds"] > 0 and "seconds" in record["train"] for record in history)
    lines = (tmp_path / "run" / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["val"]["SumR"] for line in lines] == [r["val"]["SumR"] for r in history]
    assert json.loads((tmp_path / "run" / "config.json").read_text())["trivial"]["seed"] == 1
    again = train_trivial(root, "synth", data, tmp_path / "run", config)  # a finished run is not trained again
    assert again == [json.loads(line) for line in lines]


def test_trivial_model_scores_like_the_dreamprvr_interface() -> None:
    model = TrivialPRVR(12, 10, TrivialConfig(hidden_size=8))
    assert model.device.type == "cpu"
    queries = torch.randn(3, 8)
    tokens = VideoTokens(torch.randn(2, 4, 8), torch.randn(2, 5, 8), torch.ones(2, 5, dtype=torch.bool))
    scores = model.score(queries, tokens)
    assert scores["total"].shape == (3, 2)
    torch.testing.assert_close(scores["total"], 0.6 * scores["clip"] + 0.4 * scores["frame"])
