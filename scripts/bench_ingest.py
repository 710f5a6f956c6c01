"""Ingestion throughput: video decoding + sampling, and frame encoding with a CLIP ViT-B/32-sized image tower.

The measuring is ``prvr.benchmarks.ingest_bench`` (formerly ``python -m prvr.features.benchmark``, same options)::

    OMP_NUM_THREADS=1 python scripts/bench_ingest.py --out docs/bench/ingest.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from prvr.benchmarks.ingest_bench import run_ingest_bench
from prvr.benchmarks.report import write_json

# a real clip beside the repository (decoded too when it is there)
SAMPLE_VIDEO = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "univtg_example" / "charades.mp4"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("docs/bench/ingest.json"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    results = run_ingest_bench(repeats=args.repeats, threads=args.threads, batch_size=args.batch_size,
                               sample_video=SAMPLE_VIDEO)
    write_json(args.out, results)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
