"""The moment denoiser benchmark's measuring: zero-shot floor, accuracy, steps x spans grid, rescore grid, VCMR.

Each function measures one section of ``scripts/bench_moments.py`` (its docstring describes the sections) and
returns the JSON-ready result; :func:`write_markdown` renders a report.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from prvr.benchmarks.capproxy_dataset import query_sentence_path
from prvr.benchmarks.report import median, median_ms, write_text
from prvr.config import DataConfig
from prvr.data.dataset import PRVRCorpus
from prvr.data.features import HDF5FeatureStore
from prvr.metrics.moments import moment_metrics, vcmr_recall
from prvr.moments.baselines import best_contiguous_span_seconds
from prvr.moments.localizer import DiffusionMomentLocalizer
from prvr.moments.spans import temporal_iou
from prvr.moments.train import MomentData, frame_source, predict_split
from prvr.moments.vcmr import rank_corpus_moments
from prvr.moments.zero_shot import ZeroShotMomentConfig, ZeroShotMomentLocalizer, smooth_curve

__all__ = ["KEYS", "SPANS", "STEPS", "accuracy", "data_for", "grid", "moment_zero_shot_floor",
           "moment_zero_shot_localizer", "parse_step",
           "rescore_grid", "vcmr", "write_markdown"]

logger = logging.getLogger(__name__)

KEYS = ("R1@0.3", "R1@0.5", "R1@0.7", "mAP@0.5", "mAP@0.75", "mAP")
STEPS = (1, 2, 4, 10)
SPANS = (5, 10, 20)


def parse_step(text: str) -> int | None:
    """A proposal step from the command line: an int, or ``"none"`` for no relevance proposal."""
    return None if text.strip().lower() == "none" else int(text)


def _metrics(predictions: list[dict[str, Any]], data: MomentData) -> dict[str, float]:
    found = moment_metrics([{"qid": p["qid"], "pred_relevant_windows": p["pred_relevant_windows"]}
                            for p in predictions], data.ground_truth())
    return {key: round(found[key], 2) for key in KEYS}


def _first_span_miou(predictions: list[dict[str, Any]], data: MomentData) -> float:
    """mIoU (percent): the mean over queries of the first predicted span's best tIoU with a ground-truth window."""
    ious = []
    for record, prediction in zip(data.records, predictions):
        first = torch.tensor([prediction["pred_relevant_windows"][0][:2]], dtype=torch.float64)  # (1, 2)
        truth = torch.tensor([list(w) for w in record.windows], dtype=torch.float64)  # (G, 2)
        ious.append(float(temporal_iou(first, truth)[0].max()))
    return round(100.0 * float(np.mean(ious)), 2)


def _curve_baseline(data: MomentData, curves: dict[str, np.ndarray]) -> dict[str, float]:
    predictions = []
    for record in data.records:
        start, end = best_contiguous_span_seconds(curves[record.query_id], float(record.duration or 0.0))
        predictions.append({"qid": record.query_id, "pred_relevant_windows": [[start, end, 1.0]]})
    return {**_metrics(predictions, data), "mIoU": _first_span_miou(predictions, data)}


def moment_zero_shot_floor(root: str, collection: str, split: str, video_feature: str, text_feature: str,
                           max_queries: int | None, smooth: int = 1, skip_queries: int = 0) -> dict[str, Any]:
    """Best contiguous span of cos(raw frame, mean-pooled query) on the ground-truth video (all frames, 1 per s).

    ``skip_queries`` leaves out the first queries (the selection queries of the trained rows), so the floor is read
    on the same held-out queries as they are.

    What ``prvr.moments.zero_shot.ZeroShotMomentLocalizer`` (a zero-shot index's moments) answers first, with the
    curve smoothed by a moving average of ``smooth`` frames (1: none).

    The localisation floor; ``prvr.benchmarks.capproxy_dataset.zero_shot_floor`` is the retrieval one (R@K of the
    max-over-frames cosine over the whole split).
    """
    config = DataConfig(video_feature=video_feature, text_feature=text_feature, max_frames=1_000_000)
    corpus = PRVRCorpus(root, collection, split, config)
    data = MomentData(corpus, frame_source(corpus), max_queries)
    data.records = data.records[skip_queries:]
    sentences = HDF5FeatureStore(query_sentence_path(root, collection, text_feature))
    curves = {}
    for record in data.records:
        frames = data.frames_of(record.video_id)  # (n, D) L2-normalised
        query = np.asarray(sentences[record.query_id], dtype=np.float32).reshape(-1)
        query = query / max(float(np.linalg.norm(query)), 1e-12)
        curves[record.query_id] = smooth_curve(frames @ query, smooth)  # (n,)
    return {"queries": len(data), "skipped_queries": skip_queries, "metrics": _curve_baseline(data, curves),
            "smooth": smooth,
            "definition": "best contiguous span of cos(raw frame, mean-pooled L6 query) above its per-video mean"}


def moment_zero_shot_localizer(root: str, collection: str, split: str, video_feature: str, text_feature: str,
                               max_queries: int | None, smooth: int = 1, num_moments: int = 10) -> dict[str, Any]:
    """``ZeroShotMomentLocalizer`` (a zero-shot index's moments) on the ground-truth video: all frames at 1 per s,
    the mean-pooled query sentence vector; its first span is :func:`moment_zero_shot_floor`'s.

    Returns:
        ``{"queries", "smooth", "metrics"}``: the moment metrics of up to ``num_moments`` spans per query (mAP uses
        them all) plus ``mIoU``, the mean over queries of the first span's best tIoU with a ground-truth window.
    """
    config = DataConfig(video_feature=video_feature, text_feature=text_feature, max_frames=1_000_000)
    corpus = PRVRCorpus(root, collection, split, config)
    data = MomentData(corpus, frame_source(corpus), max_queries)
    sentences = HDF5FeatureStore(query_sentence_path(root, collection, text_feature))
    localizer = ZeroShotMomentLocalizer(ZeroShotMomentConfig(smooth=smooth))
    predictions, ious = [], []
    for record in data.records:
        query = np.asarray(sentences[record.query_id], dtype=np.float32).reshape(1, -1)  # (1, D)
        located = localizer.localize(query, data.frames_of(record.video_id), float(record.duration or 0.0),
                                     num_moments=num_moments)
        windows = [[m.start_sec, m.end_sec, m.score] for m in located.moments]
        predictions.append({"qid": record.query_id, "pred_relevant_windows": windows})
        first = torch.tensor([windows[0][:2]], dtype=torch.float64)  # (1, 2)
        truth = torch.tensor([list(w) for w in record.windows], dtype=torch.float64)  # (G, 2)
        ious.append(float(temporal_iou(first, truth)[0].max()))
    metrics = {**_metrics(predictions, data), "mIoU": round(100.0 * float(np.mean(ious)), 2)}
    return {"queries": len(data), "smooth": smooth, "num_moments": num_moments, "metrics": metrics}


def data_for(localizer: DiffusionMomentLocalizer, root: str, collection: str, split: str,
             max_queries: int | None) -> MomentData:
    """The split's moment data read with the localizer's own data config."""
    corpus = PRVRCorpus(root, collection, split, localizer.config.data)
    return MomentData(corpus, frame_source(corpus), max_queries)


def accuracy(localizer: DiffusionMomentLocalizer, data: MomentData, batch_size: int, spans: int | None = None,
             steps: int | None = None) -> dict[str, Any]:
    """Denoiser and relevance-baseline metrics on the ground-truth video of every query of ``data``."""
    started = time.perf_counter()
    predictions = predict_split(localizer, data, batch_size=batch_size, num_spans=spans, steps=steps)
    seconds = time.perf_counter() - started
    curves = {p["qid"]: np.asarray(p["relevance"]) for p in predictions}
    inference = localizer.config.inference
    return {"queries": len(data), "spans": spans or inference.num_spans, "steps": steps or inference.sampling_steps,
            "method": inference.method, "eta": inference.eta, "proposal_step": inference.relevance_proposal_step,
            "rescore": inference.relevance_rescore,
            "denoiser": {**_metrics(predictions, data), "mIoU": _first_span_miou(predictions, data)},
            "relevance_baseline": _curve_baseline(data, curves), "wall_s": round(seconds, 1)}


def grid(localizer: DiffusionMomentLocalizer, data: MomentData, grid_queries: int, latency_pairs: int,
         repeats: int, batch_size: int) -> list[dict[str, Any]]:
    """Accuracy and CPU latency over DDIM steps x spans on the first ``grid_queries`` queries."""
    subset = MomentData(data.corpus, data.frames_of, grid_queries)
    rows = []
    pairs = subset.records[:latency_pairs]
    video_ids = list(dict.fromkeys(r.video_id for r in subset.records))
    duration_of = {r.video_id: float(r.duration or 0.0) for r in subset.records}
    for steps in STEPS:
        for spans in SPANS:
            predictions = predict_split(localizer, subset, num_spans=spans, steps=steps, batch_size=batch_size)
            row: dict[str, Any] = {"steps": steps, "spans": spans, **_metrics(predictions, subset)}
            single, many = [], []
            for index, record in enumerate(pairs):
                query = subset.corpus.query_tokens(record.query_id)
                frames = subset.frames_of(record.video_id)
                single.append(median_ms(lambda: localizer.localize(query, frames, float(record.duration),
                                                                    num_spans=spans, steps=steps), repeats))
                others = [video_ids[(index + k) % len(video_ids)] for k in range(10)]
                videos = [subset.frames_of(v) for v in others]
                durations = [duration_of[v] for v in others]
                many.append(median_ms(lambda: localizer.localize_many(query, videos, durations, num_spans=spans,
                                                                       steps=steps), repeats))
            row["ms_per_pair"] = round(median(single), 2)
            row["ms_per_query_top10"] = round(median(many), 2)
            rows.append(row)
            logger.info("grid %s", row)
    return rows


def rescore_grid(localizer: DiffusionMomentLocalizer, data: MomentData, grid_queries: int,
                 proposal_steps: list[int | None], weights: list[float], batch_size: int, spans: int | None = None,
                 steps: int | None = None) -> list[dict[str, Any]]:
    """Metrics of the relevance-aware span score weight w crossed with the relevance proposal step, on the first
    ``grid_queries`` queries (the selection queries)."""
    selection = MomentData(data.corpus, data.frames_of)
    selection.records = data.records[:grid_queries]
    return [
        {"proposal_step": "none" if step is None else step, "w": w, "queries": len(selection),
         **_metrics(predict_split(localizer, selection, batch_size=batch_size, num_spans=spans,
                                  steps=steps, rescore=w, proposal_step=step), selection)}
        for step in proposal_steps
        for w in weights]


def vcmr(localizer: DiffusionMomentLocalizer, root: str, collection: str, split: str, retrieval_checkpoint: str,
         top_k: int, alphas: list[float], max_queries: int | None, spans: int | None = None,
         steps: int | None = None, select_queries: int = 0) -> dict[str, Any]:
    """Retrieval scores over the whole split, top-K videos localised per query, VCMR / SVMR / VR recall.

    With ``select_queries`` N > 0 the score calibration (alpha of ``exp(alpha S) p``) is chosen on the first N queries
    by the sum of VCMR R@1/5/10 at IoU 0.5 and 0.7 (``chosen``; R@10 alone picked alpha 0, which ignores the video
    score and drops R@1 to a quarter) and ``held_out`` gives every alpha's recall on the others, so the chosen row is
    measured on queries that did not choose it; ``results`` stays over all queries.
    """
    from prvr.checkpoint import load_model
    from prvr.engine import _slice_tokens, encode_corpus, encode_corpus_queries

    model, config, _ = load_model(retrieval_checkpoint)
    retrieval_corpus = PRVRCorpus(root, collection, split, config.data)
    started = time.perf_counter()
    with torch.no_grad():
        tokens = encode_corpus(model, retrieval_corpus)
        queries, targets = encode_corpus_queries(model, retrieval_corpus)
        columns = [model.score(queries, _slice_tokens(tokens, s, s + 256))["total"].float()
                   for s in range(0, len(tokens), 256)]
    scores = torch.cat(columns, dim=1).numpy()  # (Nq, V)
    retrieval_s = time.perf_counter() - started
    video_ids = retrieval_corpus.video_ids
    data = data_for(localizer, root, collection, split, None)
    row_of = {r.query_id: i for i, r in enumerate(retrieval_corpus.queries)}
    duration_of = {r.video_id: float(r.duration) for r in data.records}
    records = data.records[:max_queries] if max_queries else data.records
    rankings: dict[str, dict[str, list[list[Any]]]] = {}
    ground_truth = {r.query_id: (r.video_id, tuple(r.windows[0])) for r in records}
    started = time.perf_counter()
    for record in records:
        row = scores[row_of[record.query_id]]
        top = np.argsort(-row, kind="stable")[:top_k]
        ids = [video_ids[i] for i in top]
        locs = localizer.localize_many(data.corpus.query_tokens(record.query_id), [data.frames_of(v) for v in ids],
                                       [duration_of.get(v, float(len(data.frames_of(v)))) for v in ids],
                                       num_moments=10, num_spans=spans, steps=steps)
        for mode in ("exp",):  # softmax over the top-K = exp / a per-query constant: the same ranking
            for alpha in alphas:
                ranked = rank_corpus_moments(ids, row[top], locs, mode=mode, alpha=alpha, max_rows=100)
                key = f"{mode}_alpha{alpha:g}"
                rankings.setdefault(key, {})[record.query_id] = [[m.video_id, m.start_sec, m.end_sec]
                                                                 for m in ranked]
    localize_s = time.perf_counter() - started

    def recall(preds: dict[str, list[list[Any]]], part: list[Any]) -> dict[str, float]:
        truth = {r.query_id: ground_truth[r.query_id] for r in part}
        chosen = {r.query_id: preds[r.query_id] for r in part}
        return {name: round(value, 2) for name, value in vcmr_recall(chosen, truth).items()}

    results = {key: recall(preds, records) for key, preds in rankings.items()}
    out = {"queries": len(records), "videos": len(video_ids), "top_k": top_k, "spans": spans, "steps": steps,
           "retrieval_checkpoint": retrieval_checkpoint, "retrieval_s": round(retrieval_s, 1),
           "localize_s": round(localize_s, 1), "latency_ms_per_query": round(1000 * localize_s / len(records), 1),
           "results": results}
    if 0 < select_queries < len(records):
        selection = {key: recall(preds, records[:select_queries]) for key, preds in rankings.items()}

        def summed(key: str) -> float:
            return sum(selection[key][f"VCMR-R@{k}-IoU{mu}"] for k in (1, 5, 10) for mu in ("0.5", "0.7"))

        chosen_key = max(selection, key=lambda key: (summed(key), key))
        out.update({"select_queries": select_queries, "selection": selection, "chosen": chosen_key,
                    "held_out": {key: recall(preds, records[select_queries:]) for key, preds in rankings.items()}})
    return out


def _table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def write_markdown(report: dict[str, Any], path: Path) -> None:
    """The markdown tables of a moments report, written to ``path``."""
    parts = [f"# Moment denoiser benchmark ({report['collection']} {report['split']})", "",
             "Commands (in order; each updates the JSON):", "",
             *[f"    OMP_NUM_THREADS=1 {command}" for command in report.get("commands", [])], "",
             f"Machine: {report['machine']}", ""]
    accuracy_rows = []
    if "floor" in report:
        skipped = report["floor"].get("skipped_queries", 0)
        accuracy_rows.append({"method": "zero-shot floor (MiniLM cosine, best contiguous span)",
                              "queries": f"{report['floor']['queries']}" + (f" (after the first {skipped})"
                                                                            if skipped else ""),
                              **report["floor"]["metrics"]})
    for name, section in report.get("accuracy", {}).items():
        accuracy_rows.append({"method": f"{name}: relevance curve, best contiguous span",
                              **section["relevance_baseline"]})
        setting = f"{section['spans']} spans, {section['steps']} steps"
        if "method" in section:  # the recorded setting, spelled out (rows before the selection lack it)
            setting = (f"{section['method']}, {setting}, eta {section['eta']}, proposal step "
                       f"{section['proposal_step']}, w {section['rescore']}")
        accuracy_rows.append({"method": f"{name}: localiser ({setting})" if "method" in section else
                              f"{name}: denoiser ({setting})", **section["denoiser"]})
        for row in accuracy_rows[-2:]:
            skipped = section.get("skipped_queries", 0)
            row["queries"] = f"{section['queries']}" + (f" (after the first {skipped})" if skipped else "")
    if accuracy_rows:
        parts += ["## On the ground-truth video", "", _table(accuracy_rows, ["method", "queries", *KEYS, "mIoU"]),
                  ""]
    for name, rows in report.get("grid", {}).items():
        parts += [f"## {name}: steps x spans (first {report['grid_queries']} queries; CPU, 1 thread, medians)", "",
                  _table(rows, ["steps", "spans", "R1@0.5", "R1@0.7", "mAP", "ms_per_pair", "ms_per_query_top10"]),
                  ""]
    for name, rows in report.get("rescore", {}).items():
        parts += [f"## {name}: relevance proposal (refined from step s) and span score p_fg * exp(w (gain - 1)) "
                  f"(first {rows[0]['queries']} queries)", "", _table(rows, ["proposal_step", "w", *KEYS]), ""]
    if "vcmr" in report:
        section = report["vcmr"]
        parts += [f"## VCMR over the corpus ({section['videos']} videos, {section['queries']} queries, top-"
                  f"{section['top_k']} videos localised)", ""]
        rows = [{"ranking": key, **values} for key, values in section["results"].items()]
        columns = ["ranking", "VCMR-R@1-IoU0.5", "VCMR-R@5-IoU0.5", "VCMR-R@10-IoU0.5", "VCMR-R@100-IoU0.5",
                   "VCMR-R@1-IoU0.7", "VCMR-R@5-IoU0.7", "VCMR-R@10-IoU0.7", "VCMR-R@100-IoU0.7", "VR-R@1",
                   "VR-R@10"]
        parts += [_table(rows, columns), ""]
        if "held_out" in section:
            held = section["queries"] - section["select_queries"]
            parts += [f"Chosen on the first {section['select_queries']} queries (sum of VCMR R@1/5/10 at IoU 0.5 and "
                      f"0.7): **{section['chosen']}**. The other {held} queries:", ""]
            rows = [{"ranking": key + (" (chosen)" if key == section["chosen"] else ""), **values}
                    for key, values in section["held_out"].items()]
            parts += [_table(rows, columns), ""]
        if "latency_ms_per_query" in section:
            parts += [f"Localisation: {section['latency_ms_per_query']} ms per query over its top-{section['top_k']} "
                      "videos (one batched localiser call, 1 thread; retrieval scoring not included).", ""]
    if report.get("notes"):
        parts += ["## Notes", "", *[f"- {item}" for item in report["notes"]], ""]
    if report.get("not_measured"):
        parts += ["## Not measured", "", *[f"- {item}" for item in report["not_measured"]], ""]
    write_text(path, "\n".join(parts))
