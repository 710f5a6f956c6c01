"""Moment training on a tiny synthetic corpus, checkpoints, resume, the localiser API and the CLI."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from prvr.cli import main
from prvr.data.dataset import PRVRCorpus
from prvr.data.synthetic import make_synthetic_corpus
from prvr.metrics.moments import moment_metrics
from prvr.moments.baselines import span_relevance_gain
from prvr.moments.config import MOMENT_METHODS, apply_moment_overrides, load_moment_preset
from prvr.moments.localizer import DiffusionMomentLocalizer, load_localizer, pad_batch, read_moment_checkpoint
from prvr.moments.spans import span_cw_to_se
from prvr.moments.train import MomentData, frame_source, predict_split, train_moments
from prvr.types import Localization, MomentLocalizer


def _tiny_config(*overrides: str):
    base = load_moment_preset("tiny")
    data = dataclasses.replace(base.data, video_feature="synth", text_feature="synth")
    return apply_moment_overrides(dataclasses.replace(base, data=data), overrides)


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("moments_synth")
    make_synthetic_corpus(root, "synth", splits={"train": 120, "val": 40}, seed=3, frame_range=(20, 60))
    return root


@pytest.fixture(scope="module")
def trained(synth_root: Path, tmp_path_factory: pytest.TempPathFactory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("moments_run")
    result = train_moments(synth_root, "synth", out, _tiny_config("train.epochs=6", "train.patience=6"),
                           select=False)
    return out, result


def _random_span_baseline(root: Path, seed: int = 0) -> dict[str, float]:
    """Uniform random spans (start < end ~ U[0, duration]) with random scores: the chance level."""
    corpus = PRVRCorpus(root, "synth", "val", _tiny_config().data)
    data = MomentData(corpus, frame_source(corpus))
    rng = np.random.default_rng(seed)
    predictions = []
    for record in data.records:
        ends = np.sort(rng.uniform(0, record.duration, size=(10, 2)), axis=1)
        predictions.append({"qid": record.query_id,
                            "pred_relevant_windows": [[s, e, float(p)] for (s, e), p in zip(ends, rng.random(10))]})
    return moment_metrics(predictions, data.ground_truth())


def test_short_training_beats_random_spans(trained, synth_root: Path) -> None:
    out, result = trained
    chance = _random_span_baseline(synth_root)
    assert result.best_metrics["R1@0.5"] > chance["R1@0.5"] + 5.0
    assert result.best_metrics["mAP"] > chance["mAP"] + 3.0
    assert result.best_path.is_file() and result.last_path.is_file()
    assert 1 <= result.best_epoch <= result.epochs_run == 6
    payload = read_moment_checkpoint(result.best_path)
    assert json.loads(payload["moment_config"])["video_dim"] == 64  # the data's width, saved in the checkpoint


def test_checkpoint_round_trip_gives_the_same_predictions(trained, synth_root: Path) -> None:
    out, result = trained
    localizer = load_localizer(result.best_path)
    assert isinstance(localizer, DiffusionMomentLocalizer)
    protocol: MomentLocalizer = localizer  # the protocol of prvr.types (structural; checked by mypy)
    assert callable(protocol.localize)
    corpus = PRVRCorpus(synth_root, "synth", "val", localizer.config.data)
    data = MomentData(corpus, frame_source(corpus))
    first = predict_split(localizer, data, batch_size=16)
    again = predict_split(load_localizer(result.best_path), data, batch_size=16)
    assert first == again
    metrics = moment_metrics([{k: p[k] for k in ("qid", "pred_relevant_windows")} for p in first],
                             data.ground_truth())
    assert metrics["R1@0.5"] == pytest.approx(result.best_metrics["R1@0.5"])


def test_localize_api_sorted_clamped_batched_and_seeded(trained, synth_root: Path) -> None:
    _, result = trained
    localizer = load_localizer(result.best_path)
    corpus = PRVRCorpus(synth_root, "synth", "val", localizer.config.data)
    record = corpus.queries[0]
    query = corpus.query_tokens(record.query_id)
    frames = corpus.video(record.video_id)[1]
    found = localizer.localize(query, frames, record.duration, num_moments=5)
    assert isinstance(found, Localization) and len(found.moments) == 5
    assert found.relevance.shape == (frames.shape[0],) and np.isfinite(found.relevance).all()
    scores = [m.score for m in found.moments]
    assert scores == sorted(scores, reverse=True)
    assert all(0.0 <= m.start_sec <= m.end_sec <= record.duration for m in found.moments)
    again = localizer.localize(query, frames, record.duration, num_moments=5)
    assert [dataclasses.astuple(m) for m in again.moments] == [dataclasses.astuple(m) for m in found.moments]
    other = corpus.queries[5]
    many = localizer.localize_many(query, [frames, corpus.video(other.video_id)[1]],
                                   [record.duration, other.duration], num_moments=3, num_spans=8, steps=2)
    assert len(many) == 2 and all(len(loc.moments) == 3 for loc in many)
    single = localizer.localize(corpus.query_tokens(record.query_id), corpus.video(other.video_id)[1],
                                other.duration, num_moments=3, num_spans=8, steps=2)
    for a, b in zip(single.moments, many[1].moments):  # batching does not change a pair's answer
        assert a.start_sec == pytest.approx(b.start_sec, abs=1e-4) and a.score == pytest.approx(b.score, abs=1e-5)
    assert all(0.0 <= m.start_sec <= m.end_sec <= other.duration for m in many[1].moments)
    nms_config = apply_moment_overrides(localizer.config, ["inference.nms_threshold=0.3"])
    nms = DiffusionMomentLocalizer(localizer.model, nms_config)
    kept = nms.localize(query, frames, record.duration, num_moments=10, num_spans=20)
    for i, a in enumerate(kept.moments):
        for b in kept.moments[i + 1:]:
            inter = max(0.0, min(a.end_sec, b.end_sec) - max(a.start_sec, b.start_sec))
            union = max(a.end_sec, b.end_sec) - min(a.start_sec, b.start_sec)
            assert union == 0 or inter / union <= 0.3 + 1e-6


def test_relevance_rescore_reorders_by_the_curve(trained, synth_root: Path) -> None:
    _, result = trained
    localizer = load_localizer(result.best_path)
    corpus = PRVRCorpus(synth_root, "synth", "val", localizer.config.data)
    record = corpus.queries[0]
    video, video_mask = pad_batch([corpus.video(record.video_id)[1]])
    text, text_mask = pad_batch([corpus.query_tokens(record.query_id)])
    spans, p_fg, relevance = localizer.predict(video, video_mask, text, text_mask, num_spans=12, rescore=0.0)
    _, scores, _ = localizer.predict(video, video_mask, text, text_mask, num_spans=12, rescore=3.0)
    gain = span_relevance_gain(span_cw_to_se(spans).clamp(0, 1), relevance, video_mask)
    torch.testing.assert_close(scores, p_fg * torch.exp(3.0 * (gain - 1.0)))
    with pytest.raises(ValueError, match="rescore"):
        localizer.predict(video, video_mask, text, text_mask, rescore=-1.0)


def test_relevance_proposal_adds_one_refined_span(trained, synth_root: Path) -> None:
    _, result = trained
    localizer = load_localizer(result.best_path)
    corpus = PRVRCorpus(synth_root, "synth", "val", localizer.config.data)
    records = corpus.queries[:3]
    video, video_mask = pad_batch([corpus.video(r.video_id)[1] for r in records])
    text, text_mask = pad_batch([corpus.query_tokens(r.query_id) for r in records])
    base, base_scores, _ = localizer.predict(video, video_mask, text, text_mask, num_spans=6, proposal_step=None)
    spans, scores, _ = localizer.predict(video, video_mask, text, text_mask, num_spans=6, proposal_step=0)
    assert spans.shape == (3, 7, 2) and scores.shape == (3, 7)
    torch.testing.assert_close(spans[:, :6], base)  # the random spans are untouched; the extra one comes last
    assert bool(((spans >= 0) & (spans <= 1)).all()) and bool(((scores >= 0) & (scores <= 1)).all())
    again, _, _ = localizer.predict(video, video_mask, text, text_mask, num_spans=6, proposal_step=0)
    torch.testing.assert_close(again, spans)  # seeded
    with pytest.raises(ValueError, match="proposal_step"):
        localizer.predict(video, video_mask, text, text_mask, proposal_step=localizer.config.diffusion.steps)
    configured = DiffusionMomentLocalizer(localizer.model, apply_moment_overrides(
        localizer.config, ["inference.relevance_proposal_step=50"]))
    found = configured.localize(corpus.query_tokens(records[0].query_id), corpus.video(records[0].video_id)[1],
                                records[0].duration, num_moments=3)
    assert len(found.moments) == 3 and all(0 <= m.start_sec <= m.end_sec <= records[0].duration
                                           for m in found.moments)
    with pytest.raises(ValueError, match="relevance_proposal_step"):
        apply_moment_overrides(localizer.config, ["inference.relevance_proposal_step=-3"])


def test_bad_input_gets_clear_errors_or_sensible_answers(trained) -> None:
    _, result = trained
    localizer = load_localizer(result.best_path)
    query = np.random.default_rng(0).standard_normal((6, 48)).astype(np.float32)
    frames = np.random.default_rng(1).standard_normal((30, 64)).astype(np.float32)
    with pytest.raises(ValueError, match="empty query"):
        localizer.localize(np.zeros((0, 48), np.float32), frames, 30.0)
    for duration in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="duration"):
            localizer.localize(query, frames, duration)
    with pytest.raises(ValueError, match="width"):
        localizer.localize(query, frames[:, :10], 30.0)
    with pytest.raises(ValueError, match="non-empty"):
        localizer.localize(query, frames[:0], 30.0)
    with pytest.raises(ValueError, match="NaN"):
        localizer.localize(query, np.full_like(frames, np.nan), 30.0)
    for method in MOMENT_METHODS:  # a one-frame video: a sensible answer, whatever the recorded method
        localizer.config = dataclasses.replace(localizer.config, inference=dataclasses.replace(
            localizer.config.inference, method=method))
        one_frame = localizer.localize(query, frames[:1], 4.0, num_moments=3)
        assert len(one_frame.moments) == 3 and one_frame.relevance.shape == (1,)
        assert all(0.0 <= m.start_sec <= m.end_sec <= 4.0 and math.isfinite(m.score) for m in one_frame.moments)
    with pytest.raises(FileNotFoundError):
        load_localizer("/nonexistent/best.pt")


def test_resume_equals_an_uninterrupted_run(synth_root: Path, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    config = _tiny_config("train.epochs=2", "train.patience=5")
    full = train_moments(synth_root, "synth", tmp_path / "full", config, max_train_queries=96, max_val_queries=40)
    train_moments(synth_root, "synth", tmp_path / "part", apply_moment_overrides(config, ["train.epochs=1"]),
                  max_train_queries=96, max_val_queries=40)
    payload = torch.load(tmp_path / "part" / "last.pt", weights_only=True)
    saved = json.loads(payload["moment_config"])
    payload["moment_config"] = json.dumps({**saved, "train": {**saved["train"], "epochs": 2}})
    torch.save(payload, tmp_path / "part" / "last.pt")
    resumed = train_moments(synth_root, "synth", tmp_path / "part", resume=True, max_train_queries=96,
                            max_val_queries=40)
    assert resumed.epochs_run == 2
    assert resumed.history[-1]["val"] == full.history[-1]["val"]
    a = torch.load(tmp_path / "full" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "part" / "last.pt", weights_only=True)["model"]
    assert all(torch.allclose(a[key], b[key]) for key in a)


def test_retrieval_conditioned_training_uses_the_index_frame_tokens(synth_root: Path, tmp_path: Path) -> None:
    from prvr.checkpoint import save_checkpoint
    from prvr.config import load_preset
    from prvr.model import DreamPRVR

    torch.set_num_threads(1)
    retrieval = load_preset("tiny")
    retrieval = dataclasses.replace(
        retrieval, data=dataclasses.replace(retrieval.data, video_feature="synth", text_feature="synth"),
        model=dataclasses.replace(retrieval.model, video_dim=64, text_dim=48))
    checkpoint = tmp_path / "retrieval.pt"
    save_checkpoint(checkpoint, model=DreamPRVR(retrieval.model, seed=0), config=retrieval, epoch=0)
    result = train_moments(synth_root, "synth", tmp_path / "run", _tiny_config("train.epochs=1"),
                           retrieval_checkpoint=checkpoint, max_train_queries=64, max_val_queries=20)
    localizer = load_localizer(result.best_path)
    assert localizer.config.condition == "retrieval"
    assert localizer.config.video_dim == retrieval.model.hidden_size
    with pytest.raises(ValueError, match="retrieval"):
        train_moments(synth_root, "synth", tmp_path / "bad",
                      apply_moment_overrides(localizer.config, ["train.epochs=1"]))


def test_cli_train_moments_and_localize(synth_root: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "cli_run"
    args = ["train-moments", "--data", str(synth_root), "--collection", "synth", "--out", str(out),
            "--preset", "tiny", "--video-feature", "synth", "--text-feature", "synth",
            "--set", "epochs=1",  # the flat name of before the nesting (train.epochs) is still accepted
            "--max-train-queries", "64", "--max-val-queries", "20", "--no-progress"]
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.output.splitlines() if line.startswith("{")]
    assert lines[0]["epoch"] == 1 and "R1@0.5" in lines[0]["val"]
    assert Path(lines[-1]["checkpoint"]).is_file()
    corpus = PRVRCorpus(synth_root, "synth", "val", _tiny_config().data)
    query_id = corpus.queries[0].query_id
    shown = runner.invoke(main, ["localize", "--checkpoint", str(out / "best.pt"), "--data", str(synth_root),
                                 "--collection", "synth", "--query-id", query_id, "--json", "-n", "3"])
    assert shown.exit_code == 0, shown.output
    assert len(json.loads(shown.output)["moments"]) == 3
    missing = runner.invoke(main, ["localize", "--checkpoint", str(out / "best.pt"), "--data", str(synth_root),
                                   "--collection", "synth", "--query-id", "nope#enc#0"])
    assert missing.exit_code == 1 and "not in split" in missing.output
    bad = runner.invoke(main, args[:-1] + ["--no-progress", "--set", "no_such_field=1"])
    assert bad.exit_code == 1 and "unknown key" in bad.output
