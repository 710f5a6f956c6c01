"""Benchmark of the index and search path on synthetic corpora with realistic token structure.

The measuring is ``prvr.benchmarks.index_bench`` (its docstring says what is measured); this script parses the
options, sets the threads, runs it and writes the JSON report and the markdown table.

Run (the numbers in docs/bench/index.md)::

    OMP_NUM_THREADS=1 .venv/bin/python scripts/bench_index.py --sizes 10000,100000 \\
        --out docs/bench/index.json --markdown docs/bench/index.md
"""

from __future__ import annotations

import argparse
import logging
import sys

import faiss
import torch

from prvr.benchmarks.index_bench import IndexBenchOptions, markdown, run_index_bench
from prvr.benchmarks.report import add_token_store_arguments, write_json, write_text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,100000", help="Comma-separated corpus sizes (videos).")
    parser.add_argument("--clips", type=int, default=32, help="C clip tokens per video.")
    parser.add_argument("--frames", type=int, default=32, help="F frame tokens per video at most (max_frames).")
    parser.add_argument("--dim", type=int, default=256, help="D (the cpu preset's hidden size).")
    parser.add_argument("--rank", type=int, default=32, help="Intrinsic rank of the token distribution.")
    parser.add_argument("--factory-small", default="IVF{nlist},Flat", help="Factory up to --small-max videos.")
    parser.add_argument("--factory-large", default="IVF2048,SQ8", help="Factory above --small-max videos.")
    parser.add_argument("--small-max", type=int, default=20000)
    parser.add_argument("--train-videos", type=int, default=4096, help="Videos in the IVF training sample.")
    parser.add_argument("--chunk", type=int, default=2000, help="Videos generated and added per step.")
    parser.add_argument("--queries", type=int, default=200, help="Measured queries.")
    parser.add_argument("--calibration-queries", type=int, default=500, help="Calibration queries (both parts).")
    parser.add_argument("--held-out-fraction", type=float, default=0.3,
                        help="Share of the calibration queries held out to verify the choice.")
    parser.add_argument("--candidates", default="100,200,400", help="Candidate counts for calibration.")
    parser.add_argument("--knob-grid", default="32,64,128", help="nprobe values for calibration.")
    parser.add_argument("--target", type=float, default=0.99, help="Calibration target recall@10.")
    parser.add_argument("--brute-single", type=int, default=5, help="Single-query brute-force runs.")
    parser.add_argument("--repeats", type=int, default=3, help="Batch throughput runs (median).")
    parser.add_argument("--threads", type=int, default=1, help="FAISS / torch threads.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", default=None, help="Scratch directory (default a temp dir, deleted).")
    add_token_store_arguments(parser, default_dtype="bfloat16", dtype_help="a codec is trained on the training sample.")
    parser.add_argument("--out", default="docs/bench/index.json")
    parser.add_argument("--markdown", default="docs/bench/index.md")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("index").setLevel(logging.WARNING)
    faiss.omp_set_num_threads(args.threads)  # batch job: all the threads asked for (servers use 1 per request)
    torch.set_num_threads(args.threads)
    # FAISS switches from its own loops to BLAS above this many queries; 20 is also set when faiss_store is imported
    faiss.cvar.distance_compute_blas_threshold = 20
    options = IndexBenchOptions(
        sizes=tuple(int(x) for x in args.sizes.split(",")), clips=args.clips, frames=args.frames, dim=args.dim,
        rank=args.rank, factory_small=args.factory_small, factory_large=args.factory_large, small_max=args.small_max,
        train_videos=args.train_videos, chunk=args.chunk, queries=args.queries,
        calibration_queries=args.calibration_queries, held_out_fraction=args.held_out_fraction,
        candidates=tuple(int(x) for x in args.candidates.split(",")),
        knob_grid=tuple(int(x) for x in args.knob_grid.split(",")) if args.knob_grid else None, target=args.target,
        brute_single=args.brute_single, repeats=args.repeats, threads=args.threads, seed=args.seed, work=args.work,
        token_dtype=args.token_dtype, refine_dtype=args.refine_dtype, refine_k=args.refine_k)
    command = "OMP_NUM_THREADS=1 .venv/bin/python " + " ".join(["scripts/bench_index.py", *sys.argv[1:]])
    report = run_index_bench(options, command=command)
    write_json(args.out, report)
    write_text(args.markdown, markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
