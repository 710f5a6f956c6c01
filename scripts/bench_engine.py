"""FAISS vs Milvus (milvus-lite, the embedded Milvus 2.5 engine) behind the same VectorIndex protocol.

On the structured synthetic token corpus of ``prvr.benchmarks.index_bench`` (C clip and <= F frame tokens per video),
both back-ends index the same tokens and answer the same queries through ``index.search.search_topk`` (token search,
dedup by video, exact re-rank from one shared bf16 token store). Reports build time, p50 / p99 latency of single
queries, the share of queries whose top-10 (ids, in order) is identical and the peak memory of each phase.

Memory-lean: the corpus is generated chunk by chunk (never held), and the back-ends run one after the other: FAISS
is built (with the token store on disk), queried and released; then the same chunks are generated again into
Milvus, queried and dropped. So the peak is one back-end's copy of the float32 tokens, not the corpus plus both.
Resumable by phase: a rerun with the same ``--work`` skips a finished FAISS phase (its rankings are saved there).
Reproduce (docs/bench/engine.md)::

    OMP_NUM_THREADS=1 .venv/bin/python scripts/bench_engine.py --videos 10000 --out docs/bench/engine.json
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np


def _percentiles(seconds: list[float]) -> dict[str, float]:
    ms = 1000 * np.asarray(seconds)
    return {"p50_ms": round(float(np.percentile(ms, 50)), 2), "p99_ms": round(float(np.percentile(ms, 99)), 2)}


def _status_mb(pid: int | str, field: str) -> float:
    """``VmRSS`` / ``VmHWM`` (peak) of a process from /proc, in MiB (NaN when unreadable)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def _descendants(pid: int) -> list[int]:
    """Every live descendant process of ``pid`` (the milvus-lite server is a child of this process)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as handle:
                    parents[int(entry)] = int(handle.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        children = [child for child, ppid in parents.items() if ppid == parent]
        found += children
        frontier += children
    return found


def _available_gb() -> float:
    with open("/proc/meminfo", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("MemAvailable:"):
                return round(int(line.split()[1]) / 2**20, 2)
    return float("nan")


def _guard_memory(min_available_gb: float) -> None:
    """Stop the bench (and the milvus-lite server it started) when the machine's available memory falls below
    ``min_available_gb``: other jobs share the machine, and an OOM kill would hit one of them as likely as this."""

    def watch() -> None:
        while True:
            available = _available_gb()
            if available < min_available_gb:
                print(f"stopping: {available} GB available < --min-available-gb {min_available_gb}", file=sys.stderr,
                      flush=True)
                for pid in _descendants(os.getpid()):
                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGTERM)
                os._exit(3)
            time.sleep(1.0)

    threading.Thread(target=watch, name="memory-guard", daemon=True).start()


def _chunks(corpus: Any, videos: int):
    for first in range(0, videos, corpus.chunk_size):
        yield corpus.chunk(first, min(corpus.chunk_size, videos - first))


def _query_all(index: Any, store: Any, queries: np.ndarray, args: argparse.Namespace,
               weights: dict[str, float]) -> tuple[list[list[int]], dict[str, Any]]:
    from prvr.index.search import search_topk

    search_topk(index, store, queries[:5], args.k, args.candidates, **weights)  # warm-up
    seconds, rows, rounds, certified = [], [], [], 0
    for row in range(queries.shape[0]):
        started = time.perf_counter()
        ranked = search_topk(index, store, queries[row : row + 1], args.k, args.candidates, **weights)[0]
        seconds.append(time.perf_counter() - started)
        rows.append(ranked.video_ids.tolist())
        rounds.append(ranked.rounds)
        certified += int(ranked.certified)
    return rows, {**_percentiles(seconds), "mean_rounds": round(float(np.mean(rounds)), 3),
                  "certified": certified / queries.shape[0]}


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
    parser.add_argument("--work", default=None, help="scratch directory (token store, milvus-lite file), kept for "
                        "a resumed rerun; default a temp dir, removed at the end")
    parser.add_argument("--out", default=None, help="write the JSON report here")
    parser.add_argument("--min-available-gb", type=float, default=3.0,
                        help="stop when the machine's available memory falls below this")
    args = parser.parse_args()
    _guard_memory(args.min_available_gb)

    import faiss
    import torch

    from prvr.benchmarks.index_bench import SyntheticCorpus, peak_rss_mb, rss_mb
    from prvr.index.faiss_store import FaissTokenIndex
    from prvr.index.milvus_store import MilvusTokenIndex, new_index_uid
    from prvr.index.token_store import TokenStore

    threads = int(os.environ.get("OMP_NUM_THREADS", "1"))
    faiss.omp_set_num_threads(threads)
    torch.set_num_threads(threads)
    weights = {"clip_weight": 0.6, "frame_weight": 0.4}
    corpus = SyntheticCorpus(args.videos, clips=args.clips, frames=args.frames, dim=args.dim, rank=32, seed=0,
                             chunk=2000)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="bench_engine_"))
    work.mkdir(parents=True, exist_ok=True)
    url = args.engine_url or str(work / "engine.db")
    report: dict[str, Any] = {
        "command": "OMP_NUM_THREADS=%d %s" % (threads, " ".join([Path(sys.executable).name, *sys.argv])),
        "videos": args.videos, "dim": args.dim, "queries": args.queries, "k": args.k,
        "n_candidates": args.candidates, "threads": threads, "faiss_factory": args.faiss_factory,
        "milvus_index": args.milvus_index, "faiss_version": faiss.__version__,
        "engine": "milvus-lite" if args.engine_url is None else args.engine_url,
        "load_average_start": [round(x, 2) for x in os.getloadavg()], "mem_available_gb_start": _available_gb(),
        "backends": {},
    }
    print(f"start: {report['mem_available_gb_start']} GB available, load {report['load_average_start']}",
          file=sys.stderr, flush=True)
    queries = corpus.queries(args.queries, seed=1)
    tops: dict[str, list[list[int]]] = {}

    # phase 1: FAISS (and the shared token store, written once); released before Milvus starts
    faiss_done = work / "phase_faiss.json"  # resumable by phase: a rerun with the same --work skips a finished one
    store_dir = work / "tokens"
    if faiss_done.is_file():
        done = json.loads(faiss_done.read_text(encoding="utf-8"))
        store = TokenStore(store_dir, args.dim, normalize=True, dtype="bfloat16")
        if len(store) != args.videos or done["videos"] != args.videos:
            raise SystemExit(f"{work} holds another run ({len(store)} stored videos); give a fresh --work")
        tops["faiss"], report["tokens"], report["backends"]["faiss"] = done["tops"], done["tokens"], done["stats"]
        print(f"faiss phase done earlier: {done['stats']}", file=sys.stderr, flush=True)
    else:
        shutil.rmtree(store_dir, ignore_errors=True)  # a store left half-written by a killed run
        store = TokenStore(store_dir, args.dim, normalize=True, dtype="bfloat16")
        index: Any = FaissTokenIndex(args.dim, factory=args.faiss_factory, use_gpu=False, **weights)
        build_s = 0.0
        for batch in _chunks(corpus, args.videos):
            store.append(*batch)
            started = time.perf_counter()
            index.add(*batch)
            build_s += time.perf_counter() - started
        report["tokens"] = index.ntotal
        print(f"faiss built: {index.ntotal} tokens in {build_s:.1f} s, rss {rss_mb():.0f} MiB", file=sys.stderr,
              flush=True)
        tops["faiss"], stats = _query_all(index, store, queries, args, weights)
        stats = {"build_s": round(build_s, 2), **stats, "bench_peak_rss_mb": round(peak_rss_mb()),
                 "load_average": [round(x, 2) for x in os.getloadavg()]}
        report["backends"]["faiss"] = stats
        del index
        gc.collect()
        faiss_done.write_text(json.dumps({"videos": args.videos, "tokens": report["tokens"], "stats": stats,
                                          "tops": tops["faiss"]}), encoding="utf-8")
        print(f"faiss done: {stats}, rss after release {rss_mb():.0f} MiB", file=sys.stderr, flush=True)

    # phase 2: Milvus, from the same chunks generated again (a killed phase 2 starts over on a fresh engine file)
    if args.engine_url is None:
        for leftover in (work / "engine.db", work / ".engine.db.lock"):
            if leftover.is_dir():
                shutil.rmtree(leftover)
            elif leftover.exists():
                leftover.unlink()
    index = MilvusTokenIndex(args.dim, url=url, prefix=f"bench_{new_index_uid()}", index_type=args.milvus_index,
                             **weights)
    build_s = 0.0
    for batch in _chunks(corpus, args.videos):
        started = time.perf_counter()
        index.add(*batch)
        build_s += time.perf_counter() - started
    started = time.perf_counter()
    index.save(work / "milvus")  # flush: the rows are sealed and durable in the engine
    build_s += time.perf_counter() - started
    # the milvus-lite server is a child process of this one (a cluster's memory is not ours to read)
    servers = _descendants(os.getpid()) if args.engine_url is None else []
    print(f"milvus built: {index.ntotal} tokens in {build_s:.1f} s, server rss "
          f"{sum(_status_mb(pid, 'VmRSS') for pid in servers):.0f} MiB", file=sys.stderr, flush=True)
    tops["milvus"], stats = _query_all(index, store, queries, args, weights)
    server_peak = sum(_status_mb(pid, "VmHWM") for pid in servers)  # read before the server exits
    report["backends"]["milvus"] = {"build_s": round(build_s, 2), **stats,
                                    "bench_rss_mb": round(rss_mb()),
                                    "server_peak_rss_mb": round(server_peak) if servers else None,
                                    "load_average": [round(x, 2) for x in os.getloadavg()]}
    index.drop()
    report["bench_peak_rss_mb"] = round(peak_rss_mb())
    report["mem_available_gb_end"] = _available_gb()
    report["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    same = [a == b for a, b in zip(tops["faiss"], tops["milvus"])]
    report["identical_top10_rate"] = float(np.mean(same))
    report["identical_top10"] = f"{sum(same)} / {len(same)}"
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)  # the token store is ~0.5 GB per 20k videos


if __name__ == "__main__":
    main()
