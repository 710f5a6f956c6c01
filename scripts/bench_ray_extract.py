"""Extraction of generated videos in this process vs on a local Ray instance (``prvr extract --ray``).

The measuring is ``prvr.benchmarks.ray_bench``::

    python scripts/bench_ray_extract.py --videos 50 --workers 2 --out docs/bench/ray_extract.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from prvr.benchmarks.ray_bench import run_ray_bench
from prvr.benchmarks.report import write_json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=8.0, help="Length of each generated video.")
    parser.add_argument("--workers", type=int, default=2, help="Ray actors.")
    parser.add_argument("--out", type=Path, default=Path("docs/bench/ray_extract.json"))
    args = parser.parse_args()
    if args.videos < 1 or args.workers < 1 or args.seconds <= 0:
        parser.error("--videos, --workers and --seconds must be positive")
    result = run_ray_bench(videos=args.videos, seconds=args.seconds, workers=args.workers)
    result["command"] = f"python scripts/bench_ray_extract.py --videos {args.videos} --workers {args.workers}"
    write_json(args.out, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
