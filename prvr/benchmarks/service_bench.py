"""The search service load run: a ``prvr serve`` subprocess, client threads sending GET /search, the summary page.

The command line is ``scripts/bench_service.py`` (its docstring describes the run). Loopback only, by design.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from prvr.benchmarks.report import median, percentile

__all__ = ["HOST", "load_run", "markdown", "start_server", "summarize_level", "wait_ready"]

HOST = "127.0.0.1"  # loopback only, by design


def load_run(base: str, texts: list[str], clients: int, requests: int, max_seconds: float, k: int,
             moments: bool, relevance: bool, offset: int) -> dict[str, Any]:
    """``requests`` searches from ``clients`` threads (stopping early after ``max_seconds``).

    Latency percentiles are nearest-rank (always a measured request); ``server_search_p50_ms`` is the median of the
    server's own ``took_ms``.
    """
    latencies: list[float] = []
    server_ms: list[float] = []  # the search itself, as timed by the server (took_ms)
    errors: list[str] = []
    lock = threading.Lock()
    counter = iter(range(requests))
    deadline = time.monotonic() + max_seconds

    def client() -> None:
        with httpx.Client(base_url=base, timeout=60) as session:
            while time.monotonic() < deadline:
                with lock:
                    index = next(counter, None)
                if index is None:
                    return
                params = {"q": texts[(offset + index) % len(texts)], "k": k, "moments": str(moments).lower(),
                          "relevance": str(relevance).lower()}
                start = time.perf_counter()
                try:
                    response = session.get("/search", params=params)
                    body = response.json() if response.status_code == 200 else {}
                    ok = len(body.get("results", ())) > 0
                    problem = None if ok else f"{response.status_code}: {response.text[:200]}"
                except (httpx.HTTPError, ValueError) as error:
                    problem = repr(error)
                elapsed = time.perf_counter() - start
                with lock:
                    if problem is None:
                        latencies.append(elapsed)
                        server_ms.append(float(body["took_ms"]))
                    else:
                        errors.append(problem)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    return {
        "requests": len(latencies) + len(errors),
        "errors": len(errors),
        "error_samples": errors[:3],
        "seconds": wall,
        "throughput_qps": len(latencies) / wall if wall > 0 else 0.0,
        "p50_ms": percentile(latencies, 50, method="nearest_rank") * 1000 if latencies else None,
        "p99_ms": percentile(latencies, 99, method="nearest_rank") * 1000 if latencies else None,
        "server_search_p50_ms": median(server_ms) if server_ms else None,
    }


def summarize_level(clients: int, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One concurrency level: medians over its runs of throughput and latencies, summed request and error counts."""
    return {
        "clients": clients,
        "throughput_qps": median(r["throughput_qps"] for r in runs),
        "p50_ms": median(r["p50_ms"] for r in runs if r["p50_ms"] is not None),
        "p99_ms": median(r["p99_ms"] for r in runs if r["p99_ms"] is not None),
        "server_search_p50_ms": median(
            r["server_search_p50_ms"] for r in runs if r["server_search_p50_ms"] is not None
        ),
        "requests": sum(r["requests"] for r in runs),
        "errors": sum(r["errors"] for r in runs),
        "runs": runs,
    }


def start_server(index_dir: Path, port: int, host: str = HOST) -> subprocess.Popen[bytes]:
    """``prvr serve`` on ``host:port`` in its own process (OMP_NUM_THREADS 1 unless set), without index polling."""
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    entry = "import sys; from prvr.cli import main; sys.exit(main())"  # `python -m prvr.cli` imports it twice
    command = [sys.executable, "-c", entry, "serve", "--index", str(index_dir), "--host", host, "--port", str(port),
               "--poll-interval", "0"]
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def wait_ready(base: str, server: subprocess.Popen[bytes], timeout_s: float) -> dict[str, Any]:
    """The server's /health answer once it gives one; RuntimeError when it exits or stays silent ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            stderr = server.stderr.read().decode(errors="replace") if server.stderr else ""
            raise RuntimeError(f"the server exited with {server.returncode}:\n{stderr[-2000:]}")
        try:
            response = httpx.get(base + "/health", timeout=2)
            if response.status_code == 200:
                return response.json()
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the server did not answer /health within {timeout_s:.0f} s")


def markdown(report: dict[str, Any]) -> str:
    """The markdown page of a service load-run report."""
    setup = report["setup"]
    lines = [
        "# Search service load run",
        "",
        (
            f"Index `{setup['index']}`: {setup['num_videos']} videos ({setup['collection']}/{setup['split']}), "
            f"{setup['faiss']}; k = {setup['k']}, moments {'on' if setup['moments'] else 'off'} "
            f"(localiser {'present' if setup['has_moment_model'] else 'absent in this index'}), relevance "
            f"{'on' if setup['relevance'] else 'off'}."
        ),
        (
            f"`prvr serve` on {HOST} in its own process (OMP_NUM_THREADS={setup['omp_threads']}); GET /search from "
            f"N client threads, {setup['requests']} requests or {setup['max_seconds']:.0f} s per run, medians of "
            f"{setup['repeats']} runs. Machine: {setup['machine']}, 1-min load average {setup['load_average_before']} "
            f"before the run. Checkpoint sha256 {setup['checkpoint_sha256'][:12]}."
        ),
        "",
        "| clients | queries/s | p50 (ms) | p99 (ms) | server-side search p50 (ms) | requests | errors |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for level in report["levels"]:
        lines.append(
            f"| {level['clients']} | {level['throughput_qps']:.1f} | {level['p50_ms']:.1f} | {level['p99_ms']:.1f} "
            f"| {level['server_search_p50_ms']:.1f} | {level['requests']} | {level['errors']} |"
        )
    lines += [
        "",
        (
            "Latency is measured by the client; the server-side column is the search call (`took_ms`: encoding, FAISS, "
            "re-rank, moments, and the wait for the shared model), so the difference is HTTP, JSON and the thread pool."
        ),
        "",
        f"Reproduce: `{report['command']}`",
        "",
    ]
    return "\n".join(lines)
