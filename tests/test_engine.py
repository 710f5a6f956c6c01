"""End to end: a tiny DreamPRVR learns the synthetic corpus; resume; optimizer groups; chunked ranking."""

from __future__ import annotations

import dataclasses
import json

import h5py
import numpy as np
import pytest
import torch

from prvr.checkpoint import load_model, read_checkpoint
from prvr.config import apply_overrides, load_preset
from prvr.data.dataset import PRVRCorpus
from prvr.data.synthetic import make_synthetic_corpus
from prvr.engine import (
    build_optimizer,
    config_for_corpus,
    encode_corpus,
    encode_corpus_queries,
    evaluate,
    fit,
    rank_corpus,
)
from prvr.metrics.retrieval import ranks_from_scores
from prvr.model import DreamPRVR


def chance_sumr(num_videos: int) -> float:
    return sum(100.0 * min(k, num_videos) / num_videos for k in (1, 5, 10, 100))


@pytest.fixture(scope="module")
def corpus_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    make_synthetic_corpus(root, "synth", splits={"train": 160, "val": 60, "test": 60}, seed=3)
    return root


def corpora(root, config):
    config = apply_overrides(config, ["data.video_feature=synth", "data.text_feature=synth"])
    train = PRVRCorpus(root, "synth", "train", config.data)
    val = PRVRCorpus(root, "synth", "val", config.data)
    return config_for_corpus(config, train), train, val


def _corpus_with_backbone(root, backbone_id: str | None):
    """A small synthetic split of unusual dims (40 / 24) whose feature file records ``backbone_id``."""
    make_synthetic_corpus(root, "synth", splits={"train": 4}, video_dim=40, text_dim=24, seed=1,
                          frame_range=(4, 8))
    if backbone_id is not None:
        with h5py.File(root / "synth" / "FeatureData" / "synth" / "feature.hdf5", "a") as handle:
            handle.attrs["backbone"] = backbone_id
    config = apply_overrides(load_preset("tiny"), ["data.video_feature=synth", "data.text_feature=synth"])
    return config, PRVRCorpus(root, "synth", "train", config.data)


def test_config_for_corpus_reads_dims_and_backbone_from_the_data(tmp_path) -> None:
    config, corpus = _corpus_with_backbone(tmp_path, "clip:some-model@0123456789ab")
    assert (config.model.video_dim, config.model.text_dim) != (40, 24)  # the preset's guess is wrong
    assert config.data.video_backbone is None
    prepared = config_for_corpus(config, corpus)
    assert (prepared.model.video_dim, prepared.model.text_dim) == (40, 24)
    assert prepared.data.video_backbone == "clip:some-model@0123456789ab"
    # nothing else moves: the rest of the model, the data settings, training and loss stay the preset's
    assert dataclasses.replace(prepared.model, video_dim=config.model.video_dim,
                               text_dim=config.model.text_dim) == config.model
    assert dataclasses.replace(prepared.data, video_backbone=None) == config.data
    assert (prepared.train, prepared.loss, prepared.seed, prepared.name) == (config.train, config.loss,
                                                                              config.seed, config.name)
    assert config_for_corpus(prepared, corpus) == prepared  # idempotent
    DreamPRVR(prepared.model)  # the prepared dims build a model


def test_config_for_corpus_without_a_recorded_backbone_and_with_another_one(tmp_path) -> None:
    config, corpus = _corpus_with_backbone(tmp_path / "plain", None)
    assert config_for_corpus(config, corpus).data.video_backbone is None
    config, corpus = _corpus_with_backbone(tmp_path / "clip", "clip:some-model@0123456789ab")
    expecting = dataclasses.replace(config, data=dataclasses.replace(config.data,
                                                                     video_backbone="clip:other-model@ba9876543210"))
    with pytest.raises(ValueError, match="some-model"):
        config_for_corpus(expecting, corpus)


def test_tiny_model_learns_the_synthetic_corpus(tmp_path) -> None:
    # 500 training videos: with fewer, the transformer towers memorise the training set (measured: 160 videos stay
    # near chance on val while a linear probe generalises), which says nothing about the code.
    make_synthetic_corpus(tmp_path / "data", "synth", splits={"train": 500, "val": 60, "test": 2}, seed=3)
    config = apply_overrides(load_preset("tiny"), ["train.epochs=4", "train.patience=4"])
    config, train, val = corpora(tmp_path / "data", config)
    records = []
    result = fit(config, train, val, tmp_path / "run", progress=False, on_epoch=records.append)
    assert len(records) == 4
    chance = chance_sumr(len(val.video_ids))  # 126.7 for 60 videos, of which R@100 = 100
    best = result.best_metrics["SumR"]
    # R@1 + R@5 + R@10 at chance is 26.7 for 60 videos; the model must be far above it.
    top10 = result.best_metrics["R@1"] + result.best_metrics["R@5"] + result.best_metrics["R@10"]
    assert top10 > 3 * (chance - 100.0), result.best_metrics
    assert best > chance + 50, (best, chance)
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3, 4]
    model, saved, payload = load_model(tmp_path / "run" / "best.pt")
    assert saved == config and payload["epoch"] == result.best_epoch
    again = evaluate(model, val, config.train)
    assert again["SumR"] == pytest.approx(best, abs=1e-3)


def test_resume_continues_exactly(corpus_root, tmp_path) -> None:
    config, train, val = corpora(corpus_root, apply_overrides(load_preset("tiny"), ["train.epochs=3",
                                                                                     "train.patience=10"]))
    fit(config, train, val, tmp_path / "straight", progress=False)
    straight = [json.loads(line) for line in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]

    class Killed(Exception):
        pass

    def kill_in_epoch_three(record):
        if record["epoch"] == 3:  # after epoch 3's metrics line, before its checkpoint: a kill mid-run
            raise Killed

    with pytest.raises(Killed):
        fit(config, train, val, tmp_path / "cut", progress=False, on_epoch=kill_in_epoch_three)
    assert read_checkpoint(tmp_path / "cut" / "last.pt")["epoch"] == 2
    fit(config, train, val, tmp_path / "cut", progress=False, resume=True)
    resumed = [json.loads(line) for line in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in resumed] == [1, 2, 3]  # the half-written epoch is not duplicated
    for a, b in zip(resumed, straight):
        assert a["val"]["SumR"] == pytest.approx(b["val"]["SumR"], abs=1e-6)
        assert a["train"]["loss"] == pytest.approx(b["train"]["loss"], rel=1e-5)


def test_resume_refuses_a_different_config(corpus_root, tmp_path) -> None:
    config, train, val = corpora(corpus_root, apply_overrides(load_preset("tiny"), ["train.epochs=1"]))
    fit(config, train, val, tmp_path / "run", progress=False)
    other = apply_overrides(config, ["model.dropout=0.3"])
    with pytest.raises(ValueError, match="differs"):
        fit(other, train, val, tmp_path / "run", progress=False, resume=True)
    with pytest.raises(FileNotFoundError, match="without --resume"):
        fit(config, train, val, tmp_path / "fresh", progress=False, resume=True)


def test_no_weight_decay_on_biases_and_norms() -> None:
    model = DreamPRVR(dataclasses.replace(load_preset("tiny").model, video_dim=8, text_dim=8))
    optimizer, scheduler = build_optimizer(model, load_preset("tiny").train, total_steps=200)
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] > 0 and no_decay["weight_decay"] == 0
    assert all(p.ndim >= 2 for p in decay["params"]) and all(p.ndim <= 1 for p in no_decay["params"])
    lrs = []
    for _ in range(200):
        lrs.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    peak = max(lrs)
    assert lrs[0] < peak and lrs.index(peak) <= 3 and lrs[-1] < 0.02 * peak


def test_chunked_ranking_equals_full_matrix(corpus_root) -> None:
    torch.manual_seed(0)
    config, _, val = corpora(corpus_root, load_preset("tiny"))
    model = DreamPRVR(config.model).eval()
    tokens = encode_corpus(model, val, batch_size=7)
    queries, targets = encode_corpus_queries(model, val, batch_size=13)
    chunked = rank_corpus(model, queries, tokens, targets, query_chunk=11, video_chunk=9)
    full = ranks_from_scores(model.score(queries, tokens)["total"], torch.as_tensor(targets)).numpy()
    np.testing.assert_array_equal(chunked, full)
