"""Load run of the search service: throughput and p50/p99 latency at 1, 4 and 16 concurrent clients (loopback only).

Starts ``prvr serve`` on a free 127.0.0.1 port in a subprocess (so the clients do not share its interpreter), then
for each concurrency level sends GET /search requests drawn from the indexed split's captions from N client threads,
bounded in count (--requests) and time (--max-seconds) per run, repeated --repeats times; the figures are the medians
over the repeats. Any non-200 answer is an error; the script exits 1 when there is one.

    python scripts/bench_service.py --index indexes/capproxy-val --out docs/bench/service.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from prvr.index.builder import generation_path, open_index_database
from prvr.index.manifest import load_manifest
from prvr.data.captions import caption_path, read_captions
from prvr.fileio import atomic_path

HOST = "127.0.0.1"  # loopback only, by design


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def manifest_of(index_dir: Path) -> Any:
    with open_index_database(index_dir) as db:
        generation = db.active_generation()
    if generation is None:
        raise SystemExit(f"{index_dir} has no active generation; build it with `prvr build-index`")
    return load_manifest(generation_path(index_dir, generation.directory))


def query_texts(manifest: Any, limit: int, seed: int) -> list[str]:
    source = manifest.data_source
    path = caption_path(source["root"], source["collection"], source["split"])
    texts = sorted({record.text for record in read_captions(path)})
    random.Random(seed).shuffle(texts)
    return texts[:limit]


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 100])."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 100))))
    return ordered[rank - 1]


def load_run(base: str, texts: list[str], clients: int, requests: int, max_seconds: float, k: int,
             moments: bool, relevance: bool, offset: int) -> dict[str, Any]:
    """``requests`` searches from ``clients`` threads (stopping early after ``max_seconds``)."""
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
        "p50_ms": percentile(latencies, 50) * 1000 if latencies else None,
        "p99_ms": percentile(latencies, 99) * 1000 if latencies else None,
        "server_search_p50_ms": statistics.median(server_ms) if server_ms else None,
    }


def start_server(index_dir: Path, port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    entry = "import sys; from prvr.cli import main; sys.exit(main())"  # `python -m prvr.cli` imports it twice
    command = [sys.executable, "-c", entry, "serve", "--index", str(index_dir), "--host", HOST, "--port", str(port),
               "--poll-interval", "0"]
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def wait_ready(base: str, server: subprocess.Popen[bytes], timeout_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            stderr = server.stderr.read().decode(errors="replace") if server.stderr else ""
            raise SystemExit(f"the server exited with {server.returncode}:\n{stderr[-2000:]}")
        try:
            response = httpx.get(base + "/health", timeout=2)
            if response.status_code == 200:
                return response.json()
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"the server did not answer /health within {timeout_s:.0f} s")


def markdown(report: dict[str, Any]) -> str:
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", required=True, type=Path, help="Index directory (prvr build-index --out).")
    parser.add_argument("--clients", default="1,4,16", help="Concurrency levels, comma separated.")
    parser.add_argument("--requests", type=int, default=200, help="Requests per run (count bound).")
    parser.add_argument("--max-seconds", type=float, default=60.0, help="Time bound of one run.")
    parser.add_argument("--repeats", type=int, default=3, help="Runs per level; the report gives medians.")
    parser.add_argument("--warmup", type=int, default=10, help="Unmeasured requests before the first level.")
    parser.add_argument("-k", type=int, default=10, help="Results per query.")
    parser.add_argument("--no-moments", action="store_true", help="Search without moment localisation.")
    parser.add_argument("--relevance", action="store_true", help="Ask for relevance curves too.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the query order.")
    parser.add_argument("--out", type=Path, default=Path("docs/bench/service.json"), help="JSON report (+ .md).")
    args = parser.parse_args()
    if args.requests < 1 or args.repeats < 1 or args.max_seconds <= 0:
        parser.error("--requests, --repeats and --max-seconds must be positive")
    levels = [int(x) for x in args.clients.split(",")]
    if any(level < 1 for level in levels):
        parser.error("--clients must be positive integers")

    index_dir = args.index.resolve()
    manifest = manifest_of(index_dir)
    texts = query_texts(manifest, limit=2000, seed=args.seed)
    if not texts:
        raise SystemExit("the indexed split has no captions to use as queries")
    load_before = os.getloadavg()[0]  # other jobs on the machine share its cores: recorded with the figures
    port = free_port()
    base = f"http://{HOST}:{port}"
    server = start_server(index_dir, port)
    try:
        health = wait_ready(base, server, timeout_s=300)
        moments = not args.no_moments
        warm = load_run(base, texts, 1, args.warmup, 120, args.k, moments, args.relevance, offset=10_000)
        if warm["errors"]:
            raise SystemExit(f"warm-up failed: {warm['error_samples']}")
        results = []
        for clients in levels:
            runs = [load_run(base, texts, clients, args.requests, args.max_seconds, args.k, moments, args.relevance,
                             offset=run * args.requests) for run in range(args.repeats)]
            summary = {
                "clients": clients,
                "throughput_qps": statistics.median(r["throughput_qps"] for r in runs),
                "p50_ms": statistics.median(r["p50_ms"] for r in runs if r["p50_ms"] is not None),
                "p99_ms": statistics.median(r["p99_ms"] for r in runs if r["p99_ms"] is not None),
                "server_search_p50_ms": statistics.median(
                    r["server_search_p50_ms"] for r in runs if r["server_search_p50_ms"] is not None
                ),
                "requests": sum(r["requests"] for r in runs),
                "errors": sum(r["errors"] for r in runs),
                "runs": runs,
            }
            results.append(summary)
            print(f"{clients:>3} clients: {summary['throughput_qps']:.1f} q/s, p50 {summary['p50_ms']:.1f} ms, "
                  f"p99 {summary['p99_ms']:.1f} ms, {summary['errors']} errors", flush=True)
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    source = manifest.data_source
    home = str(Path.home())
    report = {
        "command": "python " + " ".join([sys.argv[0], *sys.argv[1:]]).replace(home, "~"),
        "setup": {
            "index": str(args.index).replace(home, "~"),
            "generation": health["generation_directory"],
            "num_videos": health["num_videos"],
            "collection": source.get("collection"),
            "split": source.get("split"),
            "faiss": "FAISS clip {} / frame {}, {} tokens".format(
                manifest.faiss.get("clip", {}).get("factory"), manifest.faiss.get("frame", {}).get("factory"),
                manifest.faiss.get("ntotal")),
            "checkpoint_sha256": manifest.checkpoint_sha256,
            "has_moment_model": manifest.moment_checkpoint is not None,
            "k": args.k,
            "moments": not args.no_moments,
            "relevance": args.relevance,
            "requests": args.requests,
            "max_seconds": args.max_seconds,
            "repeats": args.repeats,
            "omp_threads": os.environ.get("OMP_NUM_THREADS", "1"),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
            "load_average_before": round(load_before, 2),
        },
        "levels": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)

    with atomic_path(args.out) as tmp:
        Path(tmp).write_text(json.dumps(report, indent=2) + "\n")
    with atomic_path(args.out.with_suffix(".md")) as tmp:
        Path(tmp).write_text(markdown(report))
    errors = sum(level["errors"] for level in results)
    if errors:
        print(f"{errors} requests failed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
