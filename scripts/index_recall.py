"""R@1/5/10/100 of every query of a split, searched through an existing index (``Retriever.search_vectors``).

Measures what ``prvr query`` serves, query-bank term included (docs/BENCHMARKS.md, "Zero-shot on the oracle
features"); the query vectors come from the split's token features, the ranks from each query's certified top-100.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/index_recall.py --index indexes/zs-oracle-bank --data data \\
        --collection capproxy --split val
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from prvr.data.dataset import PRVRCorpus
from prvr.engine import encode_corpus_queries
from prvr.metrics.retrieval import recall_metrics
from prvr.retriever import Retriever

KS = (1, 5, 10, 100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--index", required=True, help="Index directory (`prvr build-index --out`).")
    parser.add_argument("--data", required=True, help="Data root of the split's query features.")
    parser.add_argument("--collection", required=True)
    parser.add_argument("--split", default="val")
    parser.add_argument("--batch-size", type=int, default=256, help="Queries per search call.")
    args = parser.parse_args()
    started = time.perf_counter()
    with Retriever.load(args.index) as retriever:
        corpus = PRVRCorpus(args.data, args.collection, args.split, retriever.config.data)
        vectors, targets = encode_corpus_queries(retriever.model, corpus, batch_size=1024)  # (Nq, D), (Nq,)
        ranked = []
        for start in range(0, len(vectors), args.batch_size):
            ranked += retriever.search_vectors(vectors[start:start + args.batch_size].numpy(), max(KS), 200)
        internal = sorted({int(v) for row in ranked for v in row.video_ids})
        name_of = dict(zip(internal, retriever.db.external_ids(internal)))
    videos = corpus.video_ids
    ranks = []
    for row, target in zip(ranked, targets):
        names = [name_of[int(v)] for v in row.video_ids]
        ranks.append(names.index(videos[target]) + 1 if videos[target] in names else max(KS) + 1)
    metrics = recall_metrics(np.asarray(ranks), KS)  # ranks past the top-100 count as 101: R@K and SumR only
    report = {**{key: round(metrics[key], 2) for key in [*(f"R@{k}" for k in KS), "SumR"]},
              "queries": len(ranks), "certified": all(row.certified for row in ranked),
              "seconds": round(time.perf_counter() - started, 1)}
    print(json.dumps(report))


if __name__ == "__main__":
    main()
