"""Benchmark of the token-store encodings (bfloat16, float32, sq8, sq4, pqM): bytes, errors, recall, latency.

The measuring is ``prvr.benchmarks.token_store_bench`` (its docstring says what is measured); this script parses the
options, sets one thread, runs it and writes the JSON report and the markdown table.

Run (the numbers in docs/bench/token_store.md)::

    OMP_NUM_THREADS=1 .venv/bin/python scripts/bench_token_store.py --out docs/bench/token_store.json
"""

from __future__ import annotations

import argparse
import logging
import sys

import faiss
import torch

from prvr.benchmarks.report import write_json
from prvr.benchmarks.token_store_bench import TokenStoreBenchOptions, markdown, run_token_store_bench


def main() -> int:
    defaults = TokenStoreBenchOptions()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos", type=int, default=defaults.videos)
    parser.add_argument("--clips", type=int, default=defaults.clips, help="C clip tokens per video.")
    parser.add_argument("--frames", type=int, default=defaults.frames, help="F frame tokens per video at most.")
    parser.add_argument("--dim", type=int, default=defaults.dim, help="D (the cpu preset's hidden size).")
    parser.add_argument("--rank", type=int, default=defaults.rank, help="Intrinsic rank of the tokens.")
    parser.add_argument("--encodings", default=",".join(defaults.encodings), help="Comma-separated store encodings.")
    parser.add_argument("--factory", default=defaults.factory, help="FAISS factory of the candidate index.")
    parser.add_argument("--train-videos", type=int, default=defaults.train_videos, help="Codebook training videos.")
    parser.add_argument("--queries", type=int, default=defaults.queries)
    parser.add_argument("--candidates", type=int, default=defaults.candidates, help="N videos re-ranked per query.")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--work", default=None, help="Scratch directory (default a temp dir, deleted).")
    parser.add_argument("--out", default="docs/bench/token_store.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    faiss.omp_set_num_threads(1)
    torch.set_num_threads(1)
    options = TokenStoreBenchOptions(
        videos=args.videos, clips=args.clips, frames=args.frames, dim=args.dim, rank=args.rank,
        encodings=tuple(args.encodings.split(",")), factory=args.factory, train_videos=args.train_videos,
        queries=args.queries, candidates=args.candidates, seed=args.seed, work=args.work)
    command = "OMP_NUM_THREADS=1 .venv/bin/python " + " ".join(["scripts/bench_token_store.py", *sys.argv[1:]])
    report = run_token_store_bench(options, command=command)
    write_json(args.out, report)
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
