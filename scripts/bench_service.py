"""Load run of the search service: throughput, p50/p99 latency, 503s and /health at 1, 4, 16 and 64 clients, with
and without micro-batching in the same run (loopback only).

For each server mode (``batched``: the default micro-batching; ``unbatched``: ``--no-batching``) starts ``prvr serve``
on a free 127.0.0.1 port in a subprocess (so the clients do not share its interpreter), then for each concurrency
level sends GET /search requests drawn from the indexed split's captions from N client threads, bounded in count
(--requests) and time (--max-seconds) per run, repeated --repeats times, while a prober times GET /health; the figures
are the medians over the repeats. A 503 (queue bound or request timeout, with Retry-After) is counted apart; any
other non-200 answer is an error and the script exits 1. The load run itself is ``prvr.benchmarks.service_bench``.

    python scripts/bench_service.py --index indexes/capproxy-val --out docs/bench/service.json
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from prvr.index.layout import open_active
from prvr.data.captions import caption_path, read_captions
from prvr.benchmarks.report import write_json, write_text
from prvr.benchmarks.service_bench import HOST, load_run, markdown, start_server, summarize_level, wait_ready

# server mode -> its extra prvr serve options; "bounded" shows the overload bounds (small queue, short timeout)
MODES = {"batched": [], "unbatched": ["--no-batching"],
         "bounded": ["--no-batching", "--max-queue", "16", "--request-timeout", "1"]}


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def manifest_of(index_dir: Path) -> Any:
    try:
        with open_active(index_dir) as active:
            return active.manifest
    except (FileNotFoundError, RuntimeError) as error:
        raise SystemExit(str(error)) from None


def query_texts(manifest: Any, limit: int, seed: int) -> list[str]:
    source = manifest.data_source
    path = caption_path(source["root"], source["collection"], source["split"])
    texts = sorted({record.text for record in read_captions(path)})
    random.Random(seed).shuffle(texts)
    return texts[:limit]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", required=True, type=Path, help="Index directory (prvr build-index --out).")
    parser.add_argument("--clients", default="1,4,16,64", help="Concurrency levels, comma separated.")
    parser.add_argument("--modes", default="batched,unbatched", help="Server modes, comma separated: batched "
                        "(micro-batching on), unbatched (--no-batching), bounded (--no-batching, a 16-query queue and "
                        "a 1 s timeout: the 503 path).")
    parser.add_argument("--batch-window-ms", type=float, default=None, help="prvr serve --batch-window-ms.")
    parser.add_argument("--max-batch", type=int, default=None, help="prvr serve --max-batch (batched mode).")
    parser.add_argument("--max-queue", type=int, default=None, help="prvr serve --max-queue.")
    parser.add_argument("--request-timeout", type=float, default=None, help="prvr serve --request-timeout (s).")
    parser.add_argument("--retry-storm", action="store_true",
                        help="Clients retry a 503 at once instead of waiting its Retry-After seconds.")
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
    modes = [mode.strip() for mode in args.modes.split(",") if mode.strip()]
    if not modes or any(mode not in MODES for mode in modes):
        parser.error(f"--modes takes a comma-separated list of {', '.join(MODES)}")
    common: list[str] = []
    for flag, value in (("--max-queue", args.max_queue), ("--request-timeout", args.request_timeout)):
        if value is not None:
            common += [flag, str(value)]

    index_dir = args.index.resolve()
    manifest = manifest_of(index_dir)
    texts = query_texts(manifest, limit=2000, seed=args.seed)
    if not texts:
        raise SystemExit("the indexed split has no captions to use as queries")
    load_before = os.getloadavg()[0]  # other jobs on the machine share its cores: recorded with the figures
    moments = not args.no_moments
    report_modes = []
    health: dict[str, Any] = {}
    for mode in modes:
        server_args = [*common, *MODES[mode]]
        if mode == "batched":
            for flag, value in (("--batch-window-ms", args.batch_window_ms), ("--max-batch", args.max_batch)):
                if value is not None:
                    server_args += [flag, str(value)]
        port = free_port()
        base = f"http://{HOST}:{port}"
        server = start_server(index_dir, port, extra_args=server_args)
        try:
            try:
                health = wait_ready(base, server, timeout_s=300)
            except RuntimeError as error:
                raise SystemExit(str(error)) from error
            warm = load_run(base, texts, 1, args.warmup, 120, args.k, moments, args.relevance, offset=10_000)
            if warm["errors"] or warm["refused_503"]:
                raise SystemExit(f"warm-up failed: {warm['error_samples']}")
            results = []
            for clients in levels:
                runs = [load_run(base, texts, clients, args.requests, args.max_seconds, args.k, moments,
                                 args.relevance, offset=run * args.requests, honour_retry_after=not args.retry_storm)
                        for run in range(args.repeats)]
                summary = summarize_level(clients, runs)
                results.append(summary)
                print(f"{mode:>9} {clients:>3} clients: {summary['throughput_qps']:.1f} q/s, p50 "
                      f"{_ms(summary['p50_ms'])}, p99 {_ms(summary['p99_ms'])}, longest wait "
                      f"{_ms(summary['max_wait_ms'])}, {summary['refused_503']} 503s, {summary['errors']} errors",
                      flush=True)
                for run in runs:
                    for sample in run["error_samples"]:
                        print(f"    error: {sample}", flush=True)
        finally:
            server.send_signal(signal.SIGINT)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
            Path(server.log_path).unlink(missing_ok=True)
        report_modes.append({"name": mode, "server_args": server_args, "levels": results})
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
            "clients_honour_retry_after": not args.retry_storm,
            "omp_threads": os.environ.get("OMP_NUM_THREADS", "1"),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
            "load_average_before": round(load_before, 2),
        },
        "modes": report_modes,
    }
    write_json(args.out, report)
    write_text(args.out.with_suffix(".md"), markdown(report))
    errors = sum(level["errors"] for mode in report_modes for level in mode["levels"])
    if errors:
        print(f"{errors} requests failed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
