"""Benchmark of the moment denoiser on a standard-layout split with timestamps (ANet-CapProxy DEV-VAL by default).

The measuring is ``prvr.benchmarks.moments_bench``; this script parses the options, loads the checkpoints,
runs the sections asked for and updates the report after each.

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
import sys
from pathlib import Path
from typing import Any

import torch

from prvr.benchmarks.moments_bench import (
    accuracy,
    data_for,
    grid,
    moment_zero_shot_floor,
    parse_step,
    rescore_grid,
    vcmr,
    write_markdown,
)
from prvr.benchmarks.report import write_json
from prvr.moments.config import MOMENT_METHODS
from prvr.moments.localizer import load_localizer
from prvr.moments.train import MomentData

logger = logging.getLogger("bench_moments")


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
                        help="Accuracy and floor sections: leave out the first N queries (e.g. the grid's, used "
                             "for choosing); vcmr section: choose alpha on them and report the others too "
                             "('held_out').")
    parser.add_argument("--spans", type=int, default=None, help="Accuracy section: spans (default: config).")
    parser.add_argument("--steps", type=int, default=None, help="Accuracy section: DDIM steps (default: config).")
    parser.add_argument("--rescore", type=float, default=None,
                        help="Relevance-aware span score weight w for every section (default: the checkpoint's).")
    parser.add_argument("--method", default=None, choices=list(MOMENT_METHODS),
                        help="What the first moment is, for every section (default: the checkpoint's); 'denoiser' "
                             "with --proposal-step none --rescore 0 measures the decoder alone.")
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
            localizers[name].config = dataclasses.replace(localizers[name].config, inference=dataclasses.replace(
                localizers[name].config.inference, relevance_rescore=args.rescore))
        if args.method is not None:
            localizers[name].config = dataclasses.replace(localizers[name].config, inference=dataclasses.replace(
                localizers[name].config.inference, method=args.method))
        if args.proposal_step is not None:
            localizers[name].config = dataclasses.replace(localizers[name].config, inference=dataclasses.replace(
                localizers[name].config.inference, relevance_proposal_step=parse_step(args.proposal_step)))
        report.setdefault("checkpoints", {})[name] = {"path": path, "config": dataclasses.asdict(
            localizers[name].config)}

    def save() -> None:
        write_json(out_json, report, default=str)
        write_markdown(report, Path(args.out_md))

    if "floor" in sections:
        report["floor"] = moment_zero_shot_floor(args.data, args.collection, args.split, args.video_feature,
                                                 args.text_feature, args.max_queries,
                                                 skip_queries=args.skip_queries)
        logger.info("floor %s", report["floor"])
        save()
    for name, localizer in localizers.items():
        data = data_for(localizer, args.data, args.collection, args.split, args.max_queries)
        if "accuracy" in sections:
            held_out = MomentData(data.corpus, data.frames_of)
            held_out.records = data.records[args.skip_queries:]
            report.setdefault("accuracy", {})[name] = {
                **accuracy(localizer, held_out, args.batch_size, args.spans, args.steps),
                "skipped_queries": args.skip_queries}
            logger.info("accuracy %s %s", name, report["accuracy"][name])
            save()
        if "rescore" in sections:
            report.setdefault("rescore", {})[name] = rescore_grid(
                localizer, data, args.grid_queries, [parse_step(v) for v in args.proposal_grid.split(",")],
                [float(v) for v in args.rescore_grid.split(",")], args.batch_size, args.spans, args.steps)
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
                                                    args.vcmr_queries, args.spans, args.steps,
                                                    select_queries=args.skip_queries)}
        save()
    save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
