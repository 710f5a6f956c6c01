"""Choosing the localiser setting by measurement, the relevance-span method, warm-up / decay, pre-train + fine-tune."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from prvr.cli import main
from prvr.data.dataset import PRVRCorpus
from prvr.data.synthetic import make_synthetic_corpus
from prvr.moments.baselines import best_contiguous_span_seconds
from prvr.moments.config import apply_moment_overrides, load_moment_preset
from prvr.moments.localizer import load_localizer, read_moment_checkpoint
from prvr.moments.train import (
    MomentData,
    evaluate_moments,
    frame_source,
    inference_grid,
    lr_factor,
    predict_split,
    select_inference,
    train_moments,
)


def _tiny_config(*overrides: str):
    base = load_moment_preset("tiny")
    data = dataclasses.replace(base.data, video_feature="synth", text_feature="synth")
    return apply_moment_overrides(dataclasses.replace(base, data=data), overrides)


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("moments_select")
    make_synthetic_corpus(root, "synth", splits={"train": 80, "val": 30}, seed=5, frame_range=(20, 50))
    # a second collection with the same feature widths (a "pre-training corpus"): other videos, same world
    make_synthetic_corpus(root, "pre", splits={"train": 60}, seed=6, frame_range=(20, 50))
    return root


@pytest.fixture(scope="module")
def selected(synth_root: Path, tmp_path_factory: pytest.TempPathFactory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("moments_selected")
    result = train_moments(synth_root, "synth", out, _tiny_config("train.epochs=2"), max_val_queries=40)
    return out, result


def _val_data(root: Path, config, max_queries: int | None = 40) -> MomentData:
    corpus = PRVRCorpus(root, "synth", "val", config.data)
    return MomentData(corpus, frame_source(corpus), max_queries)


def test_relevance_span_method_answers_the_relevance_baseline_first(selected, synth_root: Path) -> None:
    _, result = selected
    localizer = load_localizer(result.best_path)
    data = _val_data(synth_root, localizer.config, None)
    plain = predict_split(localizer, data, method="denoiser", steps=1, proposal_step=None, rescore=0.0,
                          batch_size=7)
    chosen = predict_split(localizer, data, method="relevance_span", steps=1, proposal_step=None, rescore=0.0,
                           batch_size=7)
    for record, a, b in zip(data.records, plain, chosen):
        start, end = best_contiguous_span_seconds(np.asarray(b["relevance"]), float(record.duration))
        first = b["pred_relevant_windows"][0]
        assert first[0] == pytest.approx(start, abs=1e-3) and first[1] == pytest.approx(end, abs=1e-3)
        assert first[2] == pytest.approx(a["pred_relevant_windows"][0][2])  # scored as the best sampled span
        assert b["pred_relevant_windows"][1:] == a["pred_relevant_windows"][:-1]  # the sampled spans follow
    # refined_span: the relevance proposal (the span refined by the decoder, last among the denoiser's spans) first
    batch = data.batch(list(range(len(data))))
    args = (batch.video, batch.video_mask, batch.text, batch.text_mask)
    spans, scores, _ = localizer.predict(*args, method="denoiser", steps=1, proposal_step=0, rescore=1.0)
    refined, refined_scores, _ = localizer.predict(*args, method="refined_span", steps=1, proposal_step=None,
                                                   rescore=1.0)  # no proposal step given: it refines from step 0
    assert torch.equal(refined[:, 0], spans[:, -1]) and torch.equal(refined[:, 1:], spans[:, :-1])
    assert torch.equal(refined_scores[:, 0], scores.amax(dim=1)) and torch.equal(refined_scores[:, 1:], scores[:, :-1])
    with pytest.raises(ValueError, match="method"):
        predict_split(localizer, data, method="nope")
    with pytest.raises(ValueError, match="method"):
        apply_moment_overrides(localizer.config, ["inference.method=nope"])


def test_selection_measures_every_setting_and_search_uses_the_best(selected, synth_root: Path) -> None:
    out, result = selected
    payload = read_moment_checkpoint(result.best_path)
    record = payload["inference_selection"]
    localizer = load_localizer(result.best_path)
    grid = inference_grid(localizer.config)
    assert record["queries"] == 40 and len(record["rows"]) == len(grid) == 16
    assert {row["method"] for row in record["rows"]} == {"denoiser", "relevance_span", "refined_span"}
    scores = [row["R1@0.5"] + row["R1@0.7"] for row in record["rows"]]
    best = record["rows"][int(np.argmax(scores))]  # argmax: the first of equal scores, as the selection keeps
    assert record["chosen"] == {key: best[key] for key in record["chosen"]}
    inference = localizer.config.inference
    assert (inference.method, inference.sampling_steps, inference.eta, inference.relevance_proposal_step,
            inference.relevance_rescore) == (best["method"], best["sampling_steps"], best["eta"],
                                             best["relevance_proposal_step"], best["relevance_rescore"])
    # the loaded localiser's defaults (what Retriever.search calls: localize_many without settings) are the chosen
    data = _val_data(synth_root, localizer.config)
    measured = evaluate_moments(localizer, data)
    assert measured["R1@0.5"] == pytest.approx(best["R1@0.5"], abs=0.01)
    assert measured["R1@0.7"] == pytest.approx(best["R1@0.7"], abs=0.01)
    record0 = data.records[0]
    corpus = data.corpus
    found = localizer.localize_many(corpus.query_tokens(record0.query_id), [corpus.video(record0.video_id)[1]],
                                    [record0.duration], num_moments=3)[0]
    explicit = predict_split(localizer, MomentData(corpus, data.frames_of, 1), num_moments=3,
                             method=best["method"], steps=best["sampling_steps"],
                             proposal_step=best["relevance_proposal_step"], rescore=best["relevance_rescore"])
    assert localizer.diffusion.sampler.eta == best["eta"]
    assert [t for m in found.moments for t in (m.start_sec, m.end_sec)] == pytest.approx(
        [t for w in explicit[0]["pred_relevant_windows"] for t in w[:2]], abs=1e-4)
    # the selection is a pure measurement: re-measuring the grid on the same queries picks the same setting
    again = select_inference(localizer, data, grid)
    assert [row["R1@0.5"] for row in again.rows] == [row["R1@0.5"] for row in record["rows"]]


def test_lr_factor_warms_up_then_decays() -> None:
    factor = lr_factor(0.25, "linear", 8)  # 2 warm-up steps
    assert [factor(step) for step in range(8)] == pytest.approx([0.5, 1.0, 1.0, 5 / 6, 4 / 6, 3 / 6, 2 / 6, 1 / 6])
    constant = lr_factor(0.0, "constant", 8)
    assert [constant(step) for step in range(8)] == [1.0] * 8
    with pytest.raises(ValueError, match="warmup_fraction"):
        _tiny_config("train.warmup_fraction=1.5")


def test_pretrain_on_another_collection_then_fine_tune(synth_root: Path, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    config = _tiny_config("train.epochs=1", "train.warmup_fraction=0.5", "train.lr_decay=linear")
    pre = train_moments(synth_root, "synth", tmp_path / "pre", config, train_collection="pre", select=False,
                        max_val_queries=20)
    history = pre.history[0]
    assert history["epoch"] == 1
    pre_corpus = PRVRCorpus(synth_root, "pre", "train", config.data)
    steps = -(-len(MomentData(pre_corpus, frame_source(pre_corpus)).records) // config.train.batch_size)
    last = torch.load(tmp_path / "pre" / "last.pt", weights_only=True)
    assert last["scheduler"]["last_epoch"] == steps  # the schedule ran over the pre-training corpus
    tuned = train_moments(synth_root, "synth", tmp_path / "tuned", config, init_from=pre.last_path, select=False,
                          max_train_queries=32, max_val_queries=20)
    assert json.loads((tmp_path / "tuned" / "init_from.json").read_text())["init_from"] == str(pre.last_path)
    # the fine-tune starts from the pre-trained weights: its first step moves them only a little
    start = torch.load(pre.last_path, weights_only=True)["model"]
    after = torch.load(tuned.last_path, weights_only=True)["model"]
    fresh = torch.load(train_moments(synth_root, "synth", tmp_path / "fresh", config, select=False,
                                     max_train_queries=32, max_val_queries=20).last_path, weights_only=True)["model"]
    key = "decoder.span_head.weight"
    assert (after[key] - start[key]).norm() < (fresh[key] - start[key]).norm()
    wider = apply_moment_overrides(config, ["network.hidden_size=32"])
    with pytest.raises(ValueError, match="network.hidden_size"):
        train_moments(synth_root, "synth", tmp_path / "bad", wider, init_from=pre.last_path, select=False,
                      max_train_queries=32, max_val_queries=20)


def test_cli_train_split_collection_and_init_from(synth_root: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    base = ["train-moments", "--data", str(synth_root), "--collection", "synth", "--preset", "tiny",
            "--video-feature", "synth", "--text-feature", "synth", "--set", "train.epochs=1",
            "--max-val-queries", "10", "--no-progress", "--no-select"]
    pre = runner.invoke(main, base + ["--out", str(tmp_path / "pre"), "--train-split", "pre:train"])
    assert pre.exit_code == 0, pre.output
    tuned = runner.invoke(main, base + ["--out", str(tmp_path / "tuned"), "--init-from", str(tmp_path / "pre" /
                                                                                             "best.pt"),
                                        "--max-train-queries", "16"])
    assert tuned.exit_code == 0, tuned.output
    assert (tmp_path / "tuned" / "init_from.json").is_file()
    missing = runner.invoke(main, base + ["--out", str(tmp_path / "x"), "--train-split", "nope:train"])
    assert missing.exit_code == 1


def test_bench_relevance_baseline_is_the_relevance_span_setting(selected, synth_root: Path) -> None:
    from prvr.benchmarks.moments_bench import accuracy

    _, result = selected
    localizer = load_localizer(result.best_path)
    data = _val_data(synth_root, localizer.config)
    measured = accuracy(localizer, data, batch_size=16)
    row = next(r for r in read_moment_checkpoint(result.best_path)["inference_selection"]["rows"]
               if r["method"] == "relevance_span")
    for key in ("R1@0.3", "R1@0.5", "R1@0.7"):  # two code paths, one span: the curve's best contiguous span
        assert measured["relevance_baseline"][key] == pytest.approx(row[key], abs=0.01)
    assert 0.0 <= measured["relevance_baseline"]["mIoU"] <= 100.0 and 0.0 <= measured["denoiser"]["mIoU"] <= 100.0
    assert measured["method"] == localizer.config.inference.method


def test_floor_skips_the_selection_queries(tmp_path: Path) -> None:
    from prvr.benchmarks.capproxy_dataset import query_sentence_path
    from prvr.benchmarks.moments_bench import moment_zero_shot_floor
    from prvr.data.features import write_hdf5_features

    # the floor needs one embedding space for frames and sentences (MiniLM-L3 / -L6 are both 384-d)
    make_synthetic_corpus(tmp_path, "synth", splits={"train": 10, "val": 30}, seed=7, frame_range=(20, 50),
                          video_dim=48, text_dim=48)
    corpus = PRVRCorpus(tmp_path, "synth", "val", _tiny_config().data)
    write_hdf5_features(query_sentence_path(tmp_path, "synth", "synth"),  # the mean query token as the sentence
                        ((r.query_id, corpus.query_tokens(r.query_id).mean(axis=0, keepdims=True))
                         for r in corpus.queries))
    every = moment_zero_shot_floor(str(tmp_path), "synth", "val", "synth", "synth", None)
    held_out = moment_zero_shot_floor(str(tmp_path), "synth", "val", "synth", "synth", None, skip_queries=10)
    first = moment_zero_shot_floor(str(tmp_path), "synth", "val", "synth", "synth", 10)
    assert held_out["queries"] == every["queries"] - 10 and held_out["skipped_queries"] == 10
    for key in ("R1@0.3", "R1@0.5", "R1@0.7"):  # R1 is a mean over queries: the parts make up the whole
        whole = (first["metrics"][key] * 10 + held_out["metrics"][key] * held_out["queries"]) / every["queries"]
        assert whole == pytest.approx(every["metrics"][key], abs=0.02)
