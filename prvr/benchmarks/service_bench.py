"""The search service load run: a ``prvr serve`` subprocess, client threads sending GET /search, the summary page.

The command line is ``scripts/bench_service.py`` (its docstring describes the run). Loopback only, by design.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from prvr.benchmarks.report import median, percentile

__all__ = ["HOST", "load_run", "markdown", "start_server", "summarize_level", "wait_ready"]

HOST = "127.0.0.1"  # loopback only, by design


def load_run(base: str, texts: list[str], clients: int, requests: int, max_seconds: float, k: int,
             moments: bool, relevance: bool, offset: int, health_interval_s: float = 0.05,
             honour_retry_after: bool = True) -> dict[str, Any]:
    """``requests`` searches from ``clients`` threads (stopping early after ``max_seconds``), with a prober sending
    GET /health every ``health_interval_s`` meanwhile. A client that gets a 503 waits its ``Retry-After`` seconds
    before its next request, as HTTP clients should (``honour_retry_after=False``: it retries at once, a retry storm).

    A 503 (the server's queue bound or request timeout) is counted apart from errors (anything else that is not a
    200 with results). Latency percentiles are nearest-rank (always a measured request) over the 200 answers;
    ``max_wait_ms`` is the longest any request waited for its answer, 503s included; ``server_search_p50_ms`` is the
    median of the server's own ``took_ms`` (queue wait + search).
    """
    latencies: list[float] = []
    waits: list[float] = []  # every answered request, 503s included
    server_ms: list[float] = []
    health_ms: list[float] = []
    errors: list[str] = []
    refused: list[str] = []
    retry_after: list[int] = []
    lock = threading.Lock()
    counter = iter(range(requests))
    deadline = time.monotonic() + max_seconds
    done = threading.Event()

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
                status, body, problem = 0, {}, None
                try:
                    response = session.get("/search", params=params)
                    status = response.status_code
                    body = response.json() if status in (200, 503) else {}
                    if status == 503:
                        problem = (body.get("error") or {}).get("code", "503")
                        retry = response.headers.get("retry-after", "")
                        if retry.isdigit():
                            with lock:
                                retry_after.append(int(retry))
                    elif status != 200 or not body.get("results"):
                        problem = f"{status}: {response.text[:200]}"
                except (httpx.HTTPError, ValueError) as error:
                    problem = repr(error)
                elapsed = time.perf_counter() - start
                with lock:
                    if status in (200, 503):
                        waits.append(elapsed)
                    if problem is None:
                        latencies.append(elapsed)
                        server_ms.append(float(body["took_ms"]))
                    elif status == 503:
                        refused.append(problem)
                    else:
                        errors.append(problem)
                retry = response.headers.get("retry-after", "") if status == 503 else ""
                if honour_retry_after and retry.isdigit():  # after the timing: the wait is the client's own
                    time.sleep(max(0.0, min(float(retry), deadline - time.monotonic())))

    def prober() -> None:
        with httpx.Client(base_url=base, timeout=60) as session:
            while not done.wait(health_interval_s):
                start = time.perf_counter()
                try:
                    ok = session.get("/health").status_code == 200
                except httpx.HTTPError:
                    ok = False
                with lock:
                    if ok:
                        health_ms.append((time.perf_counter() - start) * 1000)
                    else:
                        errors.append("/health failed")

    threads = [threading.Thread(target=client) for _ in range(clients)]
    probe = threading.Thread(target=prober)
    start = time.perf_counter()
    probe.start()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    done.set()
    probe.join()

    def ms(values: list[float], q: float) -> float | None:
        return percentile(values, q, method="nearest_rank") * 1000 if values else None

    return {
        "requests": len(latencies) + len(errors) + len(refused),
        "errors": len(errors),
        "error_samples": errors[:3],
        "refused_503": len(refused),
        "refused_codes": sorted(set(refused)),
        "retry_after_s_max": max(retry_after) if retry_after else None,
        "seconds": wall,
        "throughput_qps": len(latencies) / wall if wall > 0 else 0.0,
        "p50_ms": ms(latencies, 50),
        "p99_ms": ms(latencies, 99),
        "max_wait_ms": max(waits) * 1000 if waits else None,
        "server_search_p50_ms": median(server_ms) if server_ms else None,
        "health_p50_ms": median(health_ms) if health_ms else None,
        "health_max_ms": max(health_ms) if health_ms else None,
    }


def summarize_level(clients: int, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One concurrency level: medians over its runs of throughput and latencies, summed counts, the longest wait."""

    def med(name: str) -> float | None:
        values = [r[name] for r in runs if r[name] is not None]
        return median(values) if values else None

    waits = [r["max_wait_ms"] for r in runs if r["max_wait_ms"] is not None]
    health = [r["health_max_ms"] for r in runs if r["health_max_ms"] is not None]
    return {
        "clients": clients,
        "throughput_qps": median(r["throughput_qps"] for r in runs),
        "p50_ms": med("p50_ms"),
        "p99_ms": med("p99_ms"),
        "server_search_p50_ms": med("server_search_p50_ms"),
        "health_p50_ms": med("health_p50_ms"),
        "health_max_ms": max(health) if health else None,
        "max_wait_ms": max(waits) if waits else None,
        "requests": sum(r["requests"] for r in runs),
        "errors": sum(r["errors"] for r in runs),
        "refused_503": sum(r["refused_503"] for r in runs),
        "runs": runs,
    }


def start_server(index_dir: Path, port: int, host: str = HOST, extra_args: Sequence[str] = (),
                 log_path: Path | None = None) -> subprocess.Popen[bytes]:
    """``prvr serve`` on ``host:port`` in its own process (OMP_NUM_THREADS 1 unless set), without index polling;
    ``extra_args`` are more ``prvr serve`` options (e.g. ``--no-batching``).

    The server's log (one line per request) goes to ``log_path`` (default: a temporary file), never to a pipe: an
    unread pipe fills after a few thousand lines and then blocks the server's event loop on its next log line.
    """
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    entry = "import sys; from prvr.cli import main; sys.exit(main())"  # `python -m prvr.cli` imports it twice
    command = [sys.executable, "-c", entry, "serve", "--index", str(index_dir), "--host", host, "--port", str(port),
               "--poll-interval", "0", *extra_args]
    if log_path is None:
        handle, name = tempfile.mkstemp(prefix="prvr-serve-", suffix=".log")
        os.close(handle)
        log_path = Path(name)
    with open(log_path, "wb") as log:
        server = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=log)
    server.log_path = log_path  # type: ignore[attr-defined]  (read by wait_ready when the server dies)
    return server


def wait_ready(base: str, server: subprocess.Popen[bytes], timeout_s: float) -> dict[str, Any]:
    """The server's /health answer once it gives one; RuntimeError when it exits or stays silent ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            log_path = getattr(server, "log_path", None)
            stderr = Path(log_path).read_text(errors="replace") if log_path is not None else ""
            raise RuntimeError(f"the server exited with {server.returncode}:\n{stderr[-2000:]}")
        try:
            response = httpx.get(base + "/health", timeout=2)
            if response.status_code == 200:
                return response.json()
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the server did not answer /health within {timeout_s:.0f} s")


def _cell(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def markdown(report: dict[str, Any]) -> str:
    """The markdown page of a service load-run report (one table per server mode)."""
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
            f"{setup['repeats']} runs, and a prober sending GET /health every 50 ms meanwhile; after a 503 a client "
            f"{'waits its Retry-After seconds' if setup.get('clients_honour_retry_after') else 'retries at once'}. "
            f"Machine: "
            f"{setup['machine']}, 1-min load average {setup['load_average_before']} before the run. Checkpoint "
            f"sha256 {setup['checkpoint_sha256'][:12]}."
        ),
    ]
    for mode in report["modes"]:
        lines += [
            "",
            f"## {mode['name']}: `prvr serve {' '.join(mode['server_args'])}`".rstrip(),
            "",
            "| clients | queries/s | p50 (ms) | p99 (ms) | longest wait (ms) | server-side p50 (ms) "
            "| /health p50 / max (ms) | requests | 503s | errors |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for level in mode["levels"]:
            lines.append(
                f"| {level['clients']} | {level['throughput_qps']:.1f} | {_cell(level['p50_ms'])} "
                f"| {_cell(level['p99_ms'])} | {_cell(level['max_wait_ms'])} | {_cell(level['server_search_p50_ms'])} "
                f"| {_cell(level['health_p50_ms'])} / {_cell(level['health_max_ms'])} | {level['requests']} "
                f"| {level['refused_503']} | {level['errors']} |"
            )
    if len(report["modes"]) > 1:
        base, other = report["modes"][1], report["modes"][0]
        ratios = []
        for left, right in zip(other["levels"], base["levels"]):
            if right["throughput_qps"] > 0:
                ratios.append(f"{left['clients']} clients {left['throughput_qps'] / right['throughput_qps']:.2f}x")
        lines += ["", f"Throughput of {other['name']} over {base['name']} (same run): " + ", ".join(ratios) + "."]
    lines += [
        "",
        (
            "Latency is measured by the client over the 200 answers; the longest wait includes 503s (it is what the "
            "request timeout bounds); the server-side column is the server's `took_ms` (queue wait + the joined "
            "search: encoding, FAISS, re-rank, moments), so the difference is HTTP, JSON and the event loop."
        ),
        "",
        f"Reproduce: `{report['command']}`",
        "",
    ]
    return "\n".join(lines)
