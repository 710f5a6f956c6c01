"""First-run and cached-run timings of the demo: ``python -m prvr.demo.bench --repeats 3 --out docs/bench/demo.json``.

Each repeat builds the default demo into a fresh temporary cache (stage seconds, wall and CPU seconds of the whole
build), then runs the build again on that cache (the reuse path: manifest and sha256 checks only) and answers the
example queries. Prints one JSON line per repeat and writes the medians with the machine's load average.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from prvr.demo.build import DemoSettings, build_demo, read_timelines
from prvr.demo.examples import FREE_QUERIES, answer_examples, pick_test_queries
from prvr.fileio import atomic_path

__all__ = ["run_once", "main"]


def _cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def run_once(settings: DemoSettings) -> dict[str, Any]:
    """One cold build, one warm build and the example queries, timed."""
    with tempfile.TemporaryDirectory(prefix="prvr-demo-bench-") as cache:
        wall, cpu = time.perf_counter(), _cpu_seconds()
        cold = build_demo(settings, cache_root=cache, progress=False)
        cold_wall, cold_cpu = time.perf_counter() - wall, _cpu_seconds() - cpu
        wall = time.perf_counter()
        warm = build_demo(settings, cache_root=cache, progress=False)
        warm_wall = time.perf_counter() - wall
        if warm.built:
            raise RuntimeError(f"the second build rebuilt {warm.built}: the cache was not reused")
        wall = time.perf_counter()
        timelines = read_timelines(cold.directory)
        answer_examples(cold.index_dir, timelines, FREE_QUERIES, pick_test_queries(timelines, settings.seed))
        examples_wall = time.perf_counter() - wall
    return {"stages_s": cold.seconds, "first_build_wall_s": round(cold_wall, 2),
            "first_build_cpu_s": round(cold_cpu, 2), "cached_build_wall_s": round(warm_wall, 2),
            "examples_wall_s": round(examples_wall, 2), "test": cold.facts["model"].get("test", {}),
            "moments_val": cold.facts["moments"].get("val", {})}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="cold + warm builds to take the median of")
    parser.add_argument("--videos", type=int, default=DemoSettings().videos, help="videos in the demo corpus")
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    settings = DemoSettings(videos=args.videos)
    load_before = os.getloadavg()
    runs = []
    for _ in range(args.repeats):
        runs.append(run_once(settings))
        print(json.dumps(runs[-1]), flush=True)

    def median(key: str) -> float:
        return round(statistics.median(run[key] for run in runs), 2)

    stage_names = sorted({name for run in runs for name in run["stages_s"]})
    summary = {
        "settings": {"videos": settings.videos, "epochs": settings.epochs, "moment_epochs": settings.moment_epochs,
                     "preset": settings.preset},
        "repeats": args.repeats,
        "cpu_count": os.cpu_count(),
        "torch_threads_env": os.environ.get("OMP_NUM_THREADS"),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "median": {"first_build_wall_s": median("first_build_wall_s"), "first_build_cpu_s": median("first_build_cpu_s"),
                   "cached_build_wall_s": median("cached_build_wall_s"), "examples_wall_s": median("examples_wall_s"),
                   "stages_s": {name: round(statistics.median(run["stages_s"][name] for run in runs), 2)
                                for name in stage_names}},
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(args.out) as tmp:
        tmp.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(summary["median"]))


if __name__ == "__main__":  # pragma: no cover
    main()
