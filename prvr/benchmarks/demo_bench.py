"""First-run and cached-run timings of the demo (command line: ``scripts/bench_demo.py --repeats 3 --out ...``).

Each repeat builds the default demo into a fresh temporary cache (stage seconds, wall and CPU seconds of the whole
build), then runs the build again on that cache (the reuse path: manifest and sha256 checks only) and answers the
example queries. :func:`run_demo_bench` repeats that and summarises the medians with the machine's load average.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from typing import Any

from prvr.benchmarks.report import median
from prvr.demo.build import DemoSettings, build_demo, read_timelines
from prvr.demo.examples import FREE_QUERIES, answer_examples, overlap_summary, pick_test_queries

__all__ = ["run_demo_bench", "run_once"]


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
        answers = answer_examples(cold.index_dir, timelines, FREE_QUERIES, pick_test_queries(timelines, settings.seed))
        examples_wall = time.perf_counter() - wall
    return {"stages_s": cold.seconds, "first_build_wall_s": round(cold_wall, 2),
            "first_build_cpu_s": round(cold_cpu, 2), "cached_build_wall_s": round(warm_wall, 2),
            "examples_wall_s": round(examples_wall, 2), "test": cold.facts["model"].get("test", {}),
            "moments_val": cold.facts["moments"].get("val", {}), "moments_reading": cold.facts["moments"].get("reading"),
            "moments_test": cold.facts["moments"].get("test", {}), "example_overlap": overlap_summary(answers)}


def run_demo_bench(settings: DemoSettings, repeats: int,
                   on_run: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """``repeats`` runs of :func:`run_once` and their medians; ``on_run`` sees each run as it finishes."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    load_before = os.getloadavg()
    runs = []
    for _ in range(repeats):
        runs.append(run_once(settings))
        if on_run is not None:
            on_run(runs[-1])

    def median_of(key: str) -> float:
        return round(median(run[key] for run in runs), 2)

    stage_names = sorted({name for run in runs for name in run["stages_s"]})
    return {
        "settings": {"videos": settings.videos, "epochs": settings.epochs, "moment_epochs": settings.moment_epochs,
                     "preset": settings.preset},
        "repeats": repeats,
        "cpu_count": os.cpu_count(),
        "torch_threads_env": os.environ.get("OMP_NUM_THREADS"),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "median": {"first_build_wall_s": median_of("first_build_wall_s"),
                   "first_build_cpu_s": median_of("first_build_cpu_s"),
                   "cached_build_wall_s": median_of("cached_build_wall_s"),
                   "examples_wall_s": median_of("examples_wall_s"),
                   "stages_s": {name: round(median(run["stages_s"][name] for run in runs), 2)
                                for name in stage_names}},
        "runs": runs,
    }
