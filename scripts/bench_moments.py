"""Benchmark of the moment denoiser on a standard-layout split with timestamps (ANet-CapProxy DEV-VAL by default).

Sections (each optional, every number written to --out-json and a markdown table to --out-md):

* ``floor``: zero-shot floor, the best contiguous span (above the per-video mean) of the cosine between the raw
  1-per-second frames and the query's mean-pooled sentence vector (``<text>_<collection>_query_sent.hdf5``).
* ``accuracy``: per checkpoint (``--checkpoint NAME=PATH``, repeatable): the denoiser at its config's default spans /
  steps, and the relevance baseline (best contiguous span of its own relevance curve), on the ground-truth video.
* ``grid``: per checkpoint, accuracy over DDIM steps x spans on the first ``--grid-queries`` queries, with CPU
  latency: ms per (query, video) (``localize``) and ms per query over its top-10 videos batched
  (``localize_many``), medians of ``--repeats`` runs over ``--latency-pairs`` pairs, one thread.
* ``rescore``: per checkpoint, the relevance-aware span score (``p_fg * exp(w * (gain - 1))``, see
  ``prvr.moments.baselines.span_relevance_gain``) over ``--rescore-grid`` weights on the first ``--grid-queries``
  queries (the selection queries), crossed with ``--proposal-grid``: the relevance curve's best contiguous span
  added as one more proposal, noised to step s and refined in one network pass; ``--rescore W`` and
  ``--proposal-step S`` then apply the chosen setting to every section.
* ``vcmr``: with ``--retrieval-checkpoint``: DreamPRVR scores over the whole split, the top-K videos of each query
  localised in one batch, ranked by exp(alpha S) p_fg over alphas (the softmax variant ranks identically within a
  query: it divides by a per-query constant), VCMR / SVMR / VR recall.

Usage::

    OMP_NUM_THREADS=1 python scripts/bench_moments.py --data data --collection capproxy --split val \\
        --checkpoint momentdiff=runs/moments_md/best.pt --checkpoint diffusionvmr=runs/moments_dvmr/best.pt \\
        --sections floor,accuracy,grid,vcmr --retrieval-checkpoint runs/cap_cpu_s0/best.pt
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from prvr.benchmarks.capproxy_dataset import query_sentence_path
from prvr.config import DataConfig
from prvr.data.dataset import PRVRCorpus
from prvr.data.features import HDF5FeatureStore
from prvr.fileio import atomic_path
from prvr.metrics.moments import moment_metrics, vcmr_recall
from prvr.moments.baselines import best_contiguous_span_seconds
from prvr.moments.localizer import DiffusionMomentLocalizer, load_localizer
from prvr.moments.train import MomentData, frame_source, predict_split
from prvr.moments.vcmr import rank_corpus_moments

logger = logging.getLogger("bench_moments")

KEYS = ("R1@0.3", "R1@0.5", "R1@0.7", "mAP@0.5", "mAP@0.75", "mAP")
STEPS = (1, 2, 4, 10)
SPANS = (5, 10, 20)


def _step(text: str) -> int | None:
    return None if text.strip().lower() == "none" else int(text)


def _metrics(predictions: list[dict[str, Any]], data: MomentData) -> dict[str, float]:
    found = moment_metrics([{"qid": p["qid"], "pred_relevant_windows": p["pred_relevant_windows"]}
                            for p in predictions], data.ground_truth())
    return {key: round(found[key], 2) for key in KEYS}


def _curve_baseline(data: MomentData, curves: dict[str, np.ndarray]) -> dict[str, float]:
    predictions = []
    for record in data.records:
        start, end = best_contiguous_span_seconds(curves[record.query_id], float(record.duration or 0.0))
        predictions.append({"qid": record.query_id, "pred_relevant_windows": [[start, end, 1.0]]})
    return _metrics(predictions, data)


def zero_shot_floor(root: str, collection: str, split: str, video_feature: str, text_feature: str,
                    max_queries: int | None) -> dict[str, Any]:
    """Best contiguous span of cos(raw frame, mean-pooled query) on the ground-truth video (all frames, 1 per s)."""
    config = DataConfig(video_feature=video_feature, text_feature=text_feature, max_frames=1_000_000)
    corpus = PRVRCorpus(root, collection, split, config)
    data = MomentData(corpus, frame_source(corpus), max_queries)
    sentences = HDF5FeatureStore(query_sentence_path(root, collection, text_feature))
    curves = {}
    for record in data.records:
        frames = data.frames_of(record.video_id)  # (n, D) L2-normalised
        query = np.asarray(sentences[record.query_id], dtype=np.float32).reshape(-1)
        query = query / max(float(np.linalg.norm(query)), 1e-12)
        curves[record.query_id] = frames @ query  # (n,)
    return {"queries": len(data), "metrics": _curve_baseline(data, curves),
            "definition": "best contiguous span of cos(raw frame, mean-pooled L6 query) above its per-video mean"}


def _data_for(localizer: DiffusionMomentLocalizer, root: str, collection: str, split: str,
              max_queries: int | None) -> MomentData:
    corpus = PRVRCorpus(root, collection, split, localizer.config.data)
    return MomentData(corpus, frame_source(corpus), max_queries)


def accuracy(localizer: DiffusionMomentLocalizer, data: MomentData, batch_size: int, spans: int | None = None,
             steps: int | None = None) -> dict[str, Any]:
    started = time.perf_counter()
    predictions = predict_split(localizer, data, batch_size=batch_size, num_spans=spans, steps=steps)
    seconds = time.perf_counter() - started
    curves = {p["qid"]: np.asarray(p["relevance"]) for p in predictions}
    return {"queries": len(data), "spans": spans or localizer.config.num_spans,
            "steps": steps or localizer.config.sampling_steps, "denoiser": _metrics(predictions, data),
            "relevance_baseline": _curve_baseline(data, curves), "wall_s": round(seconds, 1)}


def _median_ms(function: Any, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(1000.0 * (time.perf_counter() - started))
    return round(statistics.median(times), 2)


def grid(localizer: DiffusionMomentLocalizer, data: MomentData, grid_queries: int, latency_pairs: int,
         repeats: int, batch_size: int) -> list[dict[str, Any]]:
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
                single.append(_median_ms(lambda: localizer.localize(query, frames, float(record.duration),
                                                                    num_spans=spans, steps=steps), repeats))
                others = [video_ids[(index + k) % len(video_ids)] for k in range(10)]
                videos = [subset.frames_of(v) for v in others]
                durations = [duration_of[v] for v in others]
                many.append(_median_ms(lambda: localizer.localize_many(query, videos, durations, num_spans=spans,
                                                                       steps=steps), repeats))
            row["ms_per_pair"] = round(statistics.median(single), 2)
            row["ms_per_query_top10"] = round(statistics.median(many), 2)
            rows.append(row)
            logger.info("grid %s", row)
    return rows


def vcmr(localizer: DiffusionMomentLocalizer, root: str, collection: str, split: str, retrieval_checkpoint: str,
         top_k: int, alphas: list[float], max_queries: int | None, spans: int | None = None,
         steps: int | None = None) -> dict[str, Any]:
    """Retrieval scores over the whole split, top-K videos localised per query, VCMR / SVMR / VR recall."""
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
    data = _data_for(localizer, root, collection, split, None)
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
    results = {key: {name: round(value, 2) for name, value in vcmr_recall(preds, ground_truth).items()}
               for key, preds in rankings.items()}
    return {"queries": len(records), "videos": len(video_ids), "top_k": top_k, "spans": spans, "steps": steps,
            "retrieval_checkpoint": retrieval_checkpoint, "retrieval_s": round(retrieval_s, 1),
            "localize_s": round(localize_s, 1), "results": results}


def _table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def write_markdown(report: dict[str, Any], path: Path) -> None:
    parts = [f"# Moment denoiser benchmark ({report['collection']} {report['split']})", "",
             "Commands (in order; each updates the JSON):", "",
             *[f"    OMP_NUM_THREADS=1 {command}" for command in report.get("commands", [])], "",
             f"Machine: {report['machine']}", ""]
    accuracy_rows = []
    if "floor" in report:
        accuracy_rows.append({"method": "zero-shot floor (MiniLM cosine, best contiguous span)",
                              "queries": report["floor"]["queries"], **report["floor"]["metrics"]})
    for name, section in report.get("accuracy", {}).items():
        accuracy_rows.append({"method": f"{name}: relevance curve, best contiguous span",
                              **section["relevance_baseline"]})
        accuracy_rows.append({"method": f"{name}: denoiser ({section['spans']} spans, {section['steps']} steps)",
                              **section["denoiser"]})
        for row in accuracy_rows[-2:]:
            skipped = section.get("skipped_queries", 0)
            row["queries"] = f"{section['queries']}" + (f" (after the first {skipped})" if skipped else "")
    if accuracy_rows:
        parts += ["## On the ground-truth video", "", _table(accuracy_rows, ["method", "queries", *KEYS]), ""]
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
    if report.get("notes"):
        parts += ["## Notes", "", *[f"- {item}" for item in report["notes"]], ""]
    if report.get("not_measured"):
        parts += ["## Not measured", "", *[f"- {item}" for item in report["not_measured"]], ""]
    with atomic_path(path) as tmp:
        Path(tmp).write_text("\n".join(parts), encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--collection", default="capproxy")
    parser.add_argument("--split", default="val")
    parser.add_argument("--video-feature", default="minilm_l3")
    parser.add_argument("--text-feature", default="minilm_l6")
    parser.add_argument("--checkpoint", action="append", default=[], help="NAME=PATH of a moment checkpoint.")
    parser.add_argument("--retrieval-checkpoint", default=None)
    parser.add_argument("--sections", default="floor,accuracy,grid")
    parser.add_argument("--max-queries", type=int, default=None, help="Limit of the accuracy / floor sections.")
    parser.add_argument("--skip-queries", type=int, default=0,
                        help="Accuracy section: leave out the first N queries (e.g. the grid's, used for choosing).")
    parser.add_argument("--spans", type=int, default=None, help="Accuracy section: spans (default: config).")
    parser.add_argument("--steps", type=int, default=None, help="Accuracy section: DDIM steps (default: config).")
    parser.add_argument("--rescore", type=float, default=None,
                        help="Relevance-aware span score weight w for every section (default: the checkpoint's).")
    parser.add_argument("--rescore-grid", default="0,0.5,1,2,4,8",
                        help="Section 'rescore': the weights w tried on the first --grid-queries queries.")
    parser.add_argument("--proposal-step", default=None,
                        help="Relevance proposal step for every section ('none' = off; default: the checkpoint's).")
    parser.add_argument("--proposal-grid", default="none",
                        help="Section 'rescore': relevance proposal steps tried ('none' = random spans only).")
    parser.add_argument("--grid-queries", type=int, default=500)
    parser.add_argument("--latency-pairs", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--vcmr-top-k", type=int, default=10)
    parser.add_argument("--vcmr-alphas", default="0,10,20,30,100")
    parser.add_argument("--vcmr-queries", type=int, default=None)
    parser.add_argument("--not-measured", action="append", default=None, help="A line for 'Not measured'.")
    parser.add_argument("--note", action="append", default=None, help="A line for 'Notes' (training runs etc.).")
    parser.add_argument("--out-json", default="docs/bench/moments.json")
    parser.add_argument("--out-md", default="docs/bench/moments.md")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(1)
    sections = set(args.sections.split(","))
    out_json = Path(args.out_json)
    report: dict[str, Any] = json.loads(out_json.read_text()) if out_json.is_file() else {}
    if sections - {"none"}:
        commands = report.setdefault("commands", [])
        commands.append(" ".join(["python", "scripts/bench_moments.py", *sys.argv[1:]]))
    report.pop("command", None)
    report.update({"collection": args.collection, "split": args.split,
                   "machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}, 1 thread",
                   "grid_queries": args.grid_queries})
    if args.not_measured is not None:
        report["not_measured"] = args.not_measured
    if args.note is not None:
        report["notes"] = args.note
    localizers = {}
    for item in args.checkpoint:
        name, _, path = item.partition("=")
        localizers[name] = load_localizer(path)
        if args.rescore is not None:
            localizers[name].config = dataclasses.replace(localizers[name].config, relevance_rescore=args.rescore)
        if args.proposal_step is not None:
            localizers[name].config = dataclasses.replace(localizers[name].config,
                                                          relevance_proposal_step=_step(args.proposal_step))
        report.setdefault("checkpoints", {})[name] = {"path": path, "config": dataclasses.asdict(
            localizers[name].config)}

    def save() -> None:
        out_json.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(out_json) as tmp:
            Path(tmp).write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
        write_markdown(report, Path(args.out_md))

    if "floor" in sections:
        report["floor"] = zero_shot_floor(args.data, args.collection, args.split, args.video_feature,
                                          args.text_feature, args.max_queries)
        logger.info("floor %s", report["floor"])
        save()
    for name, localizer in localizers.items():
        data = _data_for(localizer, args.data, args.collection, args.split, args.max_queries)
        if "accuracy" in sections:
            held_out = MomentData(data.corpus, data.frames_of)
            held_out.records = data.records[args.skip_queries:]
            report.setdefault("accuracy", {})[name] = {
                **accuracy(localizer, held_out, args.batch_size, args.spans, args.steps),
                "skipped_queries": args.skip_queries}
            logger.info("accuracy %s %s", name, report["accuracy"][name])
            save()
        if "rescore" in sections:
            selection = MomentData(data.corpus, data.frames_of)
            selection.records = data.records[: args.grid_queries]
            report.setdefault("rescore", {})[name] = [
                {"proposal_step": "none" if step is None else step, "w": w, "queries": len(selection),
                 **_metrics(predict_split(localizer, selection, batch_size=args.batch_size, num_spans=args.spans,
                                          steps=args.steps, rescore=w, proposal_step=step), selection)}
                for step in (_step(v) for v in args.proposal_grid.split(","))
                for w in (float(v) for v in args.rescore_grid.split(","))]
            logger.info("rescore %s %s", name, report["rescore"][name])
            save()
        if "grid" in sections:
            report.setdefault("grid", {})[name] = grid(localizer, data, args.grid_queries, args.latency_pairs,
                                                       args.repeats, args.batch_size)
            save()
    if "vcmr" in sections:
        if not args.retrieval_checkpoint or not localizers:
            raise SystemExit("the vcmr section needs --retrieval-checkpoint and one --checkpoint")
        name, localizer = next(iter(localizers.items()))
        alphas = [float(a) for a in args.vcmr_alphas.split(",")]
        report["vcmr"] = {"localizer": name, **vcmr(localizer, args.data, args.collection, args.split,
                                                    args.retrieval_checkpoint, args.vcmr_top_k, alphas,
                                                    args.vcmr_queries, args.spans, args.steps)}
        save()
    save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
