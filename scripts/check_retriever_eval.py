"""Check that Retriever.search over every query of a split reproduces `prvr eval`'s R@K (same model, exact index).

Builds an exact (``IDMap2,Flat``) index with a float32 token store (bfloat16 rounding, the default for serving, can
swap near-tied videos: measured 1-2 of 3,533 capproxy queries) of the split's videos with `prvr build-index`'s builder, ranks every query of
the split through ``Retriever.search_features`` (candidate search widened until the top-100 is provably exact, then
the exact re-rank from the bf16 token store), computes R@1/5/10/100 from the rank of each query's video, runs
``prvr eval`` on the same checkpoint (the copy stored inside the index) in a subprocess, prints both and exits 1 when
any R@K differs. Ranks beyond 100 are not needed for R@K <= 100 and are not computed (MedR / MeanR are not compared).

Run::

    OMP_NUM_THREADS=1 .venv/bin/python scripts/check_retriever_eval.py --checkpoint runs/cap_cpu_s0/best.pt \\
        --data data --collection capproxy --split val
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from prvr.index.builder import build_index  # noqa: E402
from prvr.checkpoint import read_checkpoint  # noqa: E402
from prvr.config import ExperimentConfig  # noqa: E402
from prvr.data.dataset import PRVRCorpus, iter_query_batches  # noqa: E402
from prvr.metrics.retrieval import recall_metrics  # noqa: E402
from prvr.retriever import Retriever  # noqa: E402

KS = (1, 5, 10, 100)


def retriever_ranks(index_dir: Path, corpus: PRVRCorpus, batch_size: int) -> tuple[np.ndarray, dict[str, float]]:
    """1-based rank of each query's video in the Retriever's top-100 (101 when it is not there), and timings."""
    ranks = []
    started = time.perf_counter()
    with Retriever.load(index_dir) as retriever:
        k = min(100, retriever.num_videos)
        for batch, targets in iter_query_batches(corpus, batch_size):
            rows = retriever.search_features(batch, k, localize=False)
            target_ids = [corpus.video_ids[int(t)] for t in np.asarray(targets)]
            for row, target in zip(rows, target_ids):
                found = [result.video_id for result in row]
                ranks.append(found.index(target) + 1 if target in found else 101)
    return np.asarray(ranks), {"search_seconds": time.perf_counter() - started}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="best.pt of a `prvr train` run.")
    parser.add_argument("--data", required=True, help="Data root.")
    parser.add_argument("--collection", required=True)
    parser.add_argument("--split", default="val")
    parser.add_argument("--index", default=None, help="Index directory (default: a temporary one, deleted).")
    parser.add_argument("--batch-size", type=int, default=256, help="Queries per Retriever call.")
    parser.add_argument("--text-backbone", default=None,
                        help="Recorded in the index for `prvr query` ('minilm-l6' or a local model folder).")
    parser.add_argument("--token-dtype", default="float32", choices=["float32", "bfloat16"],
                        help="Token store precision (bfloat16 rounding can swap near-tied videos).")
    parser.add_argument("--out", default=None, help="Also write the comparison as JSON here.")
    args = parser.parse_args()

    config = ExperimentConfig.from_json(read_checkpoint(args.checkpoint)["model_config"])
    corpus = PRVRCorpus(args.data, args.collection, args.split, config.data,
                        expected_video_dim=config.model.video_dim, expected_text_dim=config.model.text_dim)
    index_dir = Path(args.index) if args.index else Path(tempfile.mkdtemp(prefix="check_retriever_"))
    try:
        started = time.perf_counter()
        from prvr.commands.common import text_backbone_record

        built = build_index(args.checkpoint, corpus, index_dir, collection_name=args.collection,
                            factory="IDMap2,Flat", text_backbone=text_backbone_record(args.text_backbone),
                            token_dtype=args.token_dtype, progress=False)
        build_seconds = time.perf_counter() - started
        stored_checkpoint = index_dir / built.manifest.checkpoint_path  # the exact bytes the index was built with
        ranks, timings = retriever_ranks(index_dir, corpus, args.batch_size)
        ours = recall_metrics(ranks, KS)
        command = [sys.executable, "-c", "import sys; from prvr.cli import main; sys.exit(main())", "eval", "--checkpoint", str(stored_checkpoint), "--data",
                   args.data, "--collection", args.collection, "--split", args.split, "--device", "cpu", "--json"]
        completed = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)
        if completed.returncode != 0:
            print(completed.stderr, file=sys.stderr)
            return 2
        reference = json.loads(completed.stdout.strip().splitlines()[-1])
    finally:
        if not args.index:
            shutil.rmtree(index_dir, ignore_errors=True)
    keys = [f"R@{k}" for k in KS] + ["SumR"]
    differ = [key for key in keys if abs(ours[key] - reference[key]) > 1e-9]
    report = {
        "checkpoint": str(args.checkpoint),
        "checkpoint_sha256": built.manifest.checkpoint_sha256,
        "token_dtype": args.token_dtype,
        "split": f"{args.collection}/{args.split}",
        "videos": built.num_videos,
        "queries": int(ranks.shape[0]),
        "retriever": {key: ours[key] for key in keys},
        "prvr_eval": {key: reference[key] for key in keys},
        "identical": not differ,
        "build_seconds": round(build_seconds, 1),
        "search_seconds": round(timings["search_seconds"], 1),
    }
    print(f"{'metric':<8} {'Retriever':>12} {'prvr eval':>12}")
    for key in keys:
        print(f"{key:<8} {ours[key]:>12.4f} {reference[key]:>12.4f}{'   DIFFERENT' if key in differ else ''}")
    print(f"{report['queries']} queries over {report['videos']} videos; checkpoint sha256 "
          f"{built.manifest.checkpoint_sha256[:12]}...; " + ("identical" if not differ else f"different: {differ}"))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0 if not differ else 1


if __name__ == "__main__":
    sys.exit(main())
