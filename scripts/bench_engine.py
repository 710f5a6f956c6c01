"""FAISS vs Milvus (milvus-lite, the embedded Milvus 2.5 engine) behind the same VectorIndex protocol.

On the structured synthetic token corpus of ``prvr.benchmarks.index_bench`` (C clip and <= F frame tokens per video),
both back-ends index the same tokens and answer the same queries through ``index.search.search_topk`` (token search,
dedup by video, exact re-rank from one shared bf16 token store). Reports build time, p50 / p99 latency of single
queries and the share of queries whose top-10 (ids, in order) is identical. Reproduce (docs/bench/engine.md)::

    OMP_NUM_THREADS=1 .venv/bin/python scripts/bench_engine.py --videos 10000 --out docs/bench/engine.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _percentiles(seconds: list[float]) -> dict[str, float]:
    ms = 1000 * np.asarray(seconds)
    return {"p50_ms": round(float(np.percentile(ms, 50)), 2), "p99_ms": round(float(np.percentile(ms, 99)), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=10000)
    parser.add_argument("--clips", type=int, default=32)
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--candidates", type=int, default=200, help="first-round candidate videos")
    parser.add_argument("--faiss-factory", default="IDMap2,Flat")
    parser.add_argument("--milvus-index", default="FLAT", help="Milvus index type (milvus-lite: FLAT, IVF_FLAT)")
    parser.add_argument("--engine-url", default=None, help="default: a milvus-lite file in a temp dir")
    parser.add_argument("--out", default=None, help="write the JSON report here")
    args = parser.parse_args()

    import faiss
    import torch

    from prvr.benchmarks.index_bench import SyntheticCorpus
    from prvr.index.faiss_store import FaissTokenIndex
    from prvr.index.milvus_store import MilvusTokenIndex, new_index_uid
    from prvr.index.search import search_topk
    from prvr.index.token_store import TokenStore

    threads = int(os.environ.get("OMP_NUM_THREADS", "1"))
    faiss.omp_set_num_threads(threads)
    torch.set_num_threads(threads)
    weights = {"clip_weight": 0.6, "frame_weight": 0.4}
    corpus = SyntheticCorpus(args.videos, clips=args.clips, frames=args.frames, dim=args.dim, rank=32, seed=0,
                             chunk=2000)
    work = Path(tempfile.mkdtemp(prefix="bench_engine_"))
    url = args.engine_url or str(work / "engine.db")
    store = TokenStore(work / "tokens", args.dim, normalize=True, dtype="bfloat16")
    indexes = {
        "faiss": FaissTokenIndex(args.dim, factory=args.faiss_factory, use_gpu=False, **weights),
        "milvus": MilvusTokenIndex(args.dim, url=url, prefix=f"bench_{new_index_uid()}", index_type=args.milvus_index,
                                   **weights),
    }
    build = {name: 0.0 for name in indexes}
    for first in range(0, args.videos, corpus.chunk_size):
        batch = corpus.chunk(first, min(corpus.chunk_size, args.videos - first))
        store.append(*batch)
        for name, index in indexes.items():
            started = time.perf_counter()
            index.add(*batch)
            build[name] += time.perf_counter() - started
    started = time.perf_counter()
    indexes["milvus"].save(work / "milvus")  # flush: the rows are sealed and durable in the engine
    build["milvus"] += time.perf_counter() - started
    queries = corpus.queries(args.queries, seed=1)

    report: dict = {
        "command": "OMP_NUM_THREADS=%d %s" % (threads, " ".join([Path(sys.executable).name, *sys.argv])),
        "videos": args.videos, "tokens": indexes["faiss"].ntotal, "dim": args.dim, "queries": args.queries,
        "k": args.k, "n_candidates": args.candidates, "threads": threads,
        "faiss_factory": args.faiss_factory, "milvus_index": args.milvus_index,
        "faiss_version": faiss.__version__, "engine": "milvus-lite" if args.engine_url is None else args.engine_url,
        "backends": {},
    }
    tops: dict[str, list[list[int]]] = {}
    for name, index in indexes.items():
        search_topk(index, store, queries[:5], args.k, args.candidates, **weights)  # warm-up
        seconds, rows, rounds, certified = [], [], [], 0
        for row in range(args.queries):
            started = time.perf_counter()
            ranked = search_topk(index, store, queries[row : row + 1], args.k, args.candidates, **weights)[0]
            seconds.append(time.perf_counter() - started)
            rows.append(ranked.video_ids.tolist())
            rounds.append(ranked.rounds)
            certified += int(ranked.certified)
        tops[name] = rows
        report["backends"][name] = {"build_s": round(build[name], 2), **_percentiles(seconds),
                                    "mean_rounds": round(float(np.mean(rounds)), 3),
                                    "certified": certified / args.queries}
    same = [a == b for a, b in zip(tops["faiss"], tops["milvus"])]
    report["identical_top10_rate"] = float(np.mean(same))
    indexes["milvus"].drop()
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
