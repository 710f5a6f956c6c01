"""Two indexes of the same videos and checkpoint (e.g. ``--backend faiss`` and ``--backend milvus``) answer the same
caption queries: the share of queries whose top-k ids are identical (in order), the largest score difference, and
p50 / p99 of one query at a time through ``Retriever.search`` on each.

    OMP_NUM_THREADS=1 python scripts/compare_indexes.py --a indexes/capproxy-val --b indexes/capproxy-val-milvus \
        --out docs/bench/engine_capproxy.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import time
from pathlib import Path

import numpy as np

from prvr.benchmarks.report import percentile, write_json
from prvr.data.captions import caption_path, read_captions
from prvr.retriever import Retriever


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--a", required=True, type=Path, help="First index directory.")
    parser.add_argument("--b", required=True, type=Path, help="Second index directory.")
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--batch", type=int, default=64, help="Queries per search call for the ranking comparison.")
    parser.add_argument("--timed", type=int, default=200, help="Queries timed one at a time on each index.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="JSON report.")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    with Retriever.load(args.a) as a, Retriever.load(args.b) as b:
        source = a.manifest.data_source
        texts = sorted({r.text for r in read_captions(caption_path(source["root"], source["collection"],
                                                                   source["split"]))})
        random.Random(args.seed).shuffle(texts)
        same, worst = 0, 0.0
        for start in range(0, len(texts), args.batch):
            chunk = texts[start:start + args.batch]
            for left, right in zip(a.search(chunk, args.k, localize=False), b.search(chunk, args.k, localize=False)):
                if [r.video_id for r in left] == [r.video_id for r in right]:
                    same += 1
                    worst = max(worst, max(abs(x.score - y.score) for x, y in zip(left, right)))
        timings = {}
        for name, retriever in (("a", a), ("b", b)):
            seconds = []
            for text in texts[:args.timed]:
                start = time.perf_counter()
                retriever.search(text, args.k, localize=False)
                seconds.append(time.perf_counter() - start)
            timings[name] = {"p50_ms": round(percentile(seconds, 50) * 1000, 2),
                             "p99_ms": round(percentile(seconds, 99) * 1000, 2)}
        report = {
            "a": {"index": str(args.a), "backend": a.manifest.backend, "faiss": a.manifest.faiss, **timings["a"]},
            "b": {"index": str(args.b), "backend": b.manifest.backend, "faiss": b.manifest.faiss, **timings["b"]},
            "queries": len(texts), "k": args.k, "identical_topk": same, "identical_share": round(same / len(texts), 4),
            "max_score_difference_when_identical": float(np.float32(worst)),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
            "load_average_before": round(load_before, 2),
            "command": "python " + " ".join(sys.argv),
        }
    print(json.dumps(report, indent=2, default=str))
    if args.out is not None:
        write_json(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
