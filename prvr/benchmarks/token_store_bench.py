"""The token-store benchmark: bytes, decode / score error, final-ranking recall and re-rank latency per encoding.

Shape letters: V videos, C clip tokens, F frame tokens, D hidden, Nq queries, N candidates.

One synthetic structured corpus (``index_bench.SyntheticCorpus``: 32 clip + up to 64 frame tokens, D = 256, rank 32)
is stored once per encoding (bfloat16, float32 and the compressed ``pqM`` / ``sq8`` / ``sq4`` of
``index.token_codec``). The candidates come from one FAISS token index over the float tokens (exact ``IDMap2,Flat``
by default, so the store's effect is isolated), shared by every store. Ground truth: exact float32 scores of every
video (``exact_scores`` on the float32 store). Per encoding:

* bytes per video of the store directory (shards + codebook + index file) and per token row;
* decode error ``||t - decode(encode(t))||`` of unit tokens (the store's recorded maximum, and the mean);
* video-score error ``|s_codec - s_float32|`` over every candidate of every query (max, mean), and the bound
  ``(w_c + w_f) * max decode error``;
* recall@10 / @100 of the final ranking (``search_topk``, one round, no widening, the same candidates) against the
  exact float32 top-k, tie-aware, counted with the exact scores of the found videos;
* per-query latency of the re-rank alone (1 query x N candidates, median / p99 over the queries).

The command line is ``scripts/bench_token_store.py``.
"""

from __future__ import annotations

import logging
import platform
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import torch

from prvr.benchmarks.index_bench import SyntheticCorpus, directory_bytes
from prvr.benchmarks.report import median, percentile
from prvr.config import ModelConfig
from prvr.index.calibrate import video_recall
from prvr.index.exact import exact_scores, top_pairs
from prvr.index.faiss_store import FaissTokenIndex
from prvr.index.rerank import exact_rerank
from prvr.index.search import search_topk
from prvr.index.token_store import TokenStore

__all__ = ["TokenStoreBenchOptions", "markdown", "run_token_store_bench"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TokenStoreBenchOptions:
    """Settings of one run (the ``scripts/bench_token_store.py`` options, same names and defaults)."""

    videos: int = 10000
    clips: int = 32
    frames: int = 64
    dim: int = 256
    rank: int = 32
    encodings: tuple[str, ...] = ("float32", "bfloat16", "sq8", "sq4", "pq64", "pq32", "pq16")
    factory: str = "IDMap2,Flat"  # candidate index over the float tokens
    train_videos: int = 2048  # codebook training sample (x 96 tokens; faiss uses at most 65,536 per sub-space)
    queries: int = 200
    candidates: int = 200
    chunk: int = 2000
    seed: int = 0
    work: str | None = None


def run_token_store_bench(options: TokenStoreBenchOptions, *, command: str) -> dict[str, Any]:
    """Measure every encoding of ``options``; returns the JSON report (``rows`` one per encoding)."""
    work = Path(options.work) if options.work else Path(tempfile.mkdtemp(prefix="prvr-token-bench-"))
    try:
        return _run(options, work, command)
    finally:
        if options.work is None:
            shutil.rmtree(work, ignore_errors=True)


def _run(options: TokenStoreBenchOptions, work: Path, command: str) -> dict[str, Any]:
    corpus = SyntheticCorpus(options.videos, clips=options.clips, frames=options.frames, dim=options.dim,
                             rank=options.rank, seed=options.seed, chunk=options.chunk)
    model = ModelConfig()
    weights = {"clip_weight": model.clip_weight, "frame_weight": model.frame_weight}
    chunks = [corpus.chunk(first, min(options.chunk, options.videos - first))
              for first in range(0, options.videos, options.chunk)]
    sample_videos = min(options.videos, options.train_videos)
    sample = tuple(np.concatenate([c[i] for c in chunks])[:sample_videos] for i in (1, 2, 3))  # clip, frame, mask

    index = FaissTokenIndex(options.dim, factory=options.factory, use_gpu=False, seed=options.seed, **weights)
    if not options.factory.endswith("Flat") or options.factory.startswith("IVF"):
        index.train(*sample)
    for ids, clip, frame, mask in chunks:
        index.add(ids, clip, frame, mask)
    index.save(work / "faiss")
    index_bytes = directory_bytes(work / "faiss")
    queries = corpus.queries(options.queries, seed=1)  # (Nq, D) unit
    candidates = index.search(queries, options.candidates)
    logger.info("candidate index %s: %.0f bytes/video", options.factory, index_bytes / options.videos)

    rows = []
    truth_scores: np.ndarray | None = None
    float_candidate_scores: list[dict[int, float]] | None = None
    for encoding in ("float32", *[e for e in options.encodings if e != "float32"]):
        directory = work / encoding
        store = TokenStore(directory, options.dim, dtype=encoding, codec_seed=options.seed)
        started = time.perf_counter()
        store.train(*sample)
        train_s = time.perf_counter() - started
        started = time.perf_counter()
        mean_error = []
        for ids, clip, frame, mask in chunks:
            store.append(ids, clip, frame, mask)
        append_s = time.perf_counter() - started
        store = TokenStore(directory, read_only=True)
        if store.codec is not None:  # mean decode error on the first chunk (the maximum is recorded by the store)
            _, clip, frame, mask = chunks[0]
            tokens = np.concatenate([clip.reshape(-1, options.dim), frame[mask]])
            tokens = tokens / np.linalg.norm(tokens, axis=1, keepdims=True)
            mean_error.append(float(np.linalg.norm(store.codec.decode(store.codec.encode(tokens)) - tokens,
                                                   axis=1).mean()))
        ids_sorted, scores = exact_scores(store, queries, **weights)  # (V,), (Nq, V)
        if truth_scores is None:
            truth_scores = scores
        assert truth_scores is not None
        exact_of = [dict(zip(ids_sorted.tolist(), row.tolist())) for row in truth_scores]
        truth = top_pairs(ids_sorted, truth_scores, 100)

        ranked = exact_rerank(queries, candidates, store, k=options.candidates, **weights)
        candidate_scores = [dict(row) for row in ranked]
        if float_candidate_scores is None:
            float_candidate_scores = candidate_scores
        errors = np.array([abs(score - float_candidate_scores[n][video]) for n, row in enumerate(candidate_scores)
                           for video, score in row.items()])
        found = search_topk(index, store, queries, 100, options.candidates, widen=False, **weights)
        recall = {}
        for k in (10, 100):
            values = []
            for n, result in enumerate(found):
                exact_found = [(int(v), exact_of[n][int(v)]) for v in result.video_ids[:k]]  # judged by exact scores
                values.append(video_recall(exact_found, truth[n], k))
            recall[k] = float(np.mean(values))
        latencies = []
        for n in range(queries.shape[0]):
            started = time.perf_counter()
            exact_rerank(queries[n : n + 1], candidates[n : n + 1], store, k=10, **weights)
            latencies.append((time.perf_counter() - started) * 1000)
        store_bytes = directory_bytes(directory)
        row = {
            "encoding": encoding,
            "bytes_per_token": store.bytes_per_token,
            "store_bytes_per_video": store_bytes / options.videos,
            "index_bytes_per_video": index_bytes / options.videos,
            "token_error_max": store.token_error,
            "token_error_mean": mean_error[0] if mean_error else None,
            "score_error_max": float(errors.max()),
            "score_error_mean": float(errors.mean()),
            "score_error_bound": (abs(weights["clip_weight"]) + abs(weights["frame_weight"])) * store.token_error,
            "recall_at_10": recall[10],
            "recall_at_100": recall[100],
            "rerank_ms_p50": median(latencies),
            "rerank_ms_p99": percentile(latencies, 99),
            "train_s": train_s,
            "append_s": append_s,
        }
        logger.info("%s", row)
        rows.append(row)
        del store
    return {
        "command": command,
        "machine": f"{platform.machine()}, faiss {faiss.__version__}, torch {torch.__version__}, "
                   f"{torch.get_num_threads()} thread(s)",
        "options": {**options.__dict__, "encodings": list(options.encodings)},
        "rows": rows,
    }


def markdown(report: dict[str, Any]) -> str:
    """The measured table of ``report`` (written to docs/bench/token_store.md by the script, prose added by hand)."""
    options = report["options"]
    lines = [
        f"Command: `{report['command']}`",
        "",
        f"Machine: {report['machine']}. {options['videos']:,} videos x ({options['clips']} clip + up to "
        f"{options['frames']} frame tokens), D = {options['dim']}, rank {options['rank']}; candidates from "
        f"`{options['factory']}` over float tokens, N = {options['candidates']}; {options['queries']} queries.",
        "",
        "| encoding | B/token | store B/video | decode err max / mean | score err max / mean (bound) | recall@10 | "
        "recall@100 | re-rank ms p50 / p99 | train s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        mean = row["token_error_mean"]
        lines.append(
            f"| {row['encoding']} | {row['bytes_per_token']} | {row['store_bytes_per_video']:,.0f} | "
            f"{row['token_error_max']:.4f} / {'-' if mean is None else f'{mean:.4f}'} | "
            f"{row['score_error_max']:.4f} / {row['score_error_mean']:.5f} ({row['score_error_bound']:.3f}) | "
            f"{row['recall_at_10']:.4f} | {row['recall_at_100']:.4f} | {row['rerank_ms_p50']:.2f} / "
            f"{row['rerank_ms_p99']:.2f} | {row['train_s']:.1f} |"
        )
    lines.append("")
    lines.append(f"Candidate index `{options['factory']}`: {report['rows'][0]['index_bytes_per_video']:,.0f} "
                 "bytes/video.")
    return "\n".join(lines) + "\n"
