"""First-run and cached-run timings of the demo (formerly ``python -m prvr.demo.bench``, same options).

The measuring is ``prvr.benchmarks.demo_bench``; this script prints one JSON line per repeat, writes the summary
to --out and prints the medians::

    OMP_NUM_THREADS=1 .venv/bin/python scripts/bench_demo.py --repeats 2 --out docs/bench/demo.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from prvr.benchmarks.demo_bench import run_demo_bench
from prvr.benchmarks.report import write_json
from prvr.demo.build import DemoSettings


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="cold + warm builds to take the median of")
    parser.add_argument("--videos", type=int, default=DemoSettings().videos, help="videos in the demo corpus")
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    summary = run_demo_bench(DemoSettings(videos=args.videos), args.repeats,
                             on_run=lambda run: print(json.dumps(run), flush=True))
    write_json(args.out, summary)
    print(json.dumps(summary["median"]))


if __name__ == "__main__":  # pragma: no cover
    main()
