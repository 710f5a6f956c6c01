"""The index benchmark: build, calibrate and measure the two-stage search on synthetic corpora with token structure.

Shape letters: V videos, C clip tokens, F frame tokens, D hidden, r intrinsic rank, Nq queries.

For each corpus size: build time (FAISS train + add, token store append), bytes per video (FAISS files + token store),
RSS, p50/p99 single-query latency of candidate search + exact re-rank (no text encoding, no moments), batch
throughput, video-level recall@10 / @100 against exact float32 scores of every video (:func:`float_truth`, a chunked
scan of the generator, independent of the store's encoding), and the latency of scoring every video from the store
(``prvr.index.exact.exact_scores``) in the same run (the ratio is the figure, since a shared machine's speed drifts).
The search settings (nprobe, candidates) come from ``prvr.index.calibrate`` on calibration queries disjoint from the
measured ones (chosen on their fitting part with a confidence margin, verified on their held-out part; the exact
top-K of the calibration queries comes from the same GEMM path as the measured ones). The fusion weights are
``ModelConfig``'s, saved with the index and read back from it.

Tokens: a random rank-r basis in D dimensions; each video has a centre in that subspace; its clip tokens and its
frame tokens (an AR(1) walk in time, so neighbouring frames are alike) scatter around the centre; isotropic noise
is added in all D dimensions. Queries are noisy copies of one token of one video (partially relevant queries).

The command line is ``scripts/bench_index.py``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import platform
import resource
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import torch

from prvr.benchmarks.report import median, percentile
from prvr.config import ModelConfig
from prvr.index.calibrate import calibrate, video_recall
from prvr.index.exact import exact_scores, top_pairs
from prvr.index.faiss_store import FaissTokenIndex
from prvr.index.search import DEFAULT_REFINE_K, search_topk
from prvr.index.token_store import TokenStore
from prvr.similarity import video_scores
from prvr.types import VideoTokens

__all__ = ["IndexBenchOptions", "SyntheticCorpus", "markdown", "run_index_bench", "run_size"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class IndexBenchOptions:
    """Settings of one index benchmark (the ``scripts/bench_index.py`` options, same names and defaults)."""

    sizes: tuple[int, ...] = (10000, 100000)
    clips: int = 32  # C clip tokens per video
    frames: int = 32  # F frame tokens per video at most (max_frames)
    dim: int = 256  # D (the cpu preset's hidden size)
    rank: int = 32  # intrinsic rank of the token distribution
    factory_small: str = "IVF{nlist},Flat"  # factory up to small_max videos
    factory_large: str = "IVF2048,SQ8"  # factory above small_max videos
    small_max: int = 20000
    train_videos: int = 4096  # videos in the IVF training sample
    chunk: int = 2000  # videos generated and added per step
    queries: int = 200  # measured queries
    calibration_queries: int = 500  # fitting + held-out parts
    held_out_fraction: float = 0.3  # share of the calibration queries that verifies the choice
    candidates: tuple[int, ...] = (100, 200, 400)  # candidate counts for calibration
    knob_grid: tuple[int, ...] | None = (32, 64, 128)  # nprobe values for calibration
    target: float = 0.99  # calibration target recall@10
    brute_single: int = 5  # single-query exact-scoring runs
    repeats: int = 3  # batch throughput runs (median)
    threads: int = 1  # FAISS / torch threads (set by the caller; recorded in the report)
    seed: int = 0
    work: str | None = None  # scratch directory (None: a temp dir, deleted)
    token_dtype: str = "bfloat16"  # the re-rank store's encoding (a codec is trained on the training sample)
    refine_dtype: str | None = None  # second tier re-scoring the short list (None: one tier)
    refine_k: int = DEFAULT_REFINE_K  # short-list length of the second tier


class SyntheticCorpus:
    """Deterministic structured token corpus, generated chunk by chunk (never held whole in memory)."""

    def __init__(self, num_videos: int, *, clips: int, frames: int, dim: int, rank: int, seed: int,
                 chunk: int) -> None:
        self.num_videos, self.clips, self.frames, self.dim, self.rank, self.seed = (
            num_videos, clips, frames, dim, rank, seed)
        self.chunk_size = chunk
        rng = np.random.default_rng(seed)
        self.basis = (rng.standard_normal((rank, dim)) / math.sqrt(rank)).astype(np.float32)  # (r, D)

    def chunk(self, first: int, count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Videos ``first .. first + count - 1``: ids (B,), clip (B, C, D), frame (B, F, D), mask (B, F).

        ``first`` must be a multiple of the chunk size (the random stream is keyed by it).
        """
        assert first % self.chunk_size == 0 and count <= self.chunk_size
        rng = np.random.default_rng([self.seed, first])
        b, r = count, self.rank
        centre = rng.standard_normal((b, 1, r)).astype(np.float32)  # (B, 1, r)
        clip = centre + 0.7 * rng.standard_normal((b, self.clips, r)).astype(np.float32)  # (B, C, r)
        walk = np.empty((b, self.frames, r), dtype=np.float32)  # AR(1) in time, stationary variance 0.8^2
        walk[:, 0] = 0.8 * rng.standard_normal((b, r))
        innovation = 0.8 * math.sqrt(1 - 0.9**2)
        for t in range(1, self.frames):
            walk[:, t] = 0.9 * walk[:, t - 1] + innovation * rng.standard_normal((b, r))
        frame = centre + walk  # (B, F, r)
        clip = clip @ self.basis + 0.15 * rng.standard_normal((b, self.clips, self.dim)).astype(np.float32)
        frame = frame @ self.basis + 0.15 * rng.standard_normal((b, self.frames, self.dim)).astype(np.float32)
        lengths = rng.integers(self.frames // 2, self.frames + 1, b)
        mask = np.arange(self.frames)[None, :] < lengths[:, None]  # (B, F)
        frame[~mask] = 0.0
        ids = np.arange(first, first + count, dtype=np.int64)
        return ids, clip.astype(np.float32), frame.astype(np.float32), mask

    def queries(self, count: int, seed: int) -> np.ndarray:
        """(Nq, D) noisy copies of a random (clip or frame) token of random videos.

        The random draws come in the order video, token, noise per query; the chunks are generated twice at most
        (once for their token counts, once for the tokens of the queries that fall in them), not once per query.
        """
        rng = np.random.default_rng([self.seed, seed, 7])
        token_counts: dict[int, np.ndarray] = {}  # chunk start -> (B,) tokens per video
        draws = []
        for _ in range(count):
            video = int(rng.integers(0, self.num_videos))
            first = video - video % self.chunk_size
            if first not in token_counts:
                _, clip, _, mask = self.chunk(first, min(self.chunk_size, self.num_videos - first))
                token_counts[first] = clip.shape[1] + mask.sum(axis=1)
            token = int(rng.integers(0, int(token_counts[first][video - first])))
            noise = rng.standard_normal(self.dim).astype(np.float32)
            draws.append((first, video - first, token, noise))
        out = np.empty((count, self.dim), dtype=np.float32)
        for first in sorted(token_counts):
            _, clip, frame, mask = self.chunk(first, min(self.chunk_size, self.num_videos - first))
            for row, (chunk_first, local, token_index, noise) in enumerate(draws):
                if chunk_first != first:
                    continue
                tokens = np.concatenate([clip[local], frame[local][mask[local]]])
                token = tokens[token_index] / np.linalg.norm(tokens[token_index])
                out[row] = token + 0.6 * noise / np.linalg.norm(noise)
        return out / np.linalg.norm(out, axis=1, keepdims=True)


def float_truth(corpus: SyntheticCorpus, queries: np.ndarray, k: int, *, clip_weight: float,
                frame_weight: float) -> list[list[tuple[int, float]]]:
    """The exact top-k of every query from the generator's float32 tokens, by a chunked scan of the corpus.

    Independent of any store encoding and of the FAISS index: each chunk is generated again, its tokens normalised,
    every video scored by ``prvr.similarity.video_scores`` (the model's fused cosine score, float32) and merged into
    a running top-k (ties by increasing id). Memory: one chunk's tokens and an (Nq, chunk + k) score block.
    """
    q = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32))  # (Nq, D); video_scores normalises
    best_ids = np.empty((q.shape[0], 0), dtype=np.int64)
    best_scores = np.empty((q.shape[0], 0), dtype=np.float32)
    for first in range(0, corpus.num_videos, corpus.chunk_size):
        ids, clip, frame, mask = corpus.chunk(first, min(corpus.chunk_size, corpus.num_videos - first))
        tokens = VideoTokens(torch.from_numpy(clip), torch.from_numpy(frame), torch.from_numpy(mask))
        chunk_scores = video_scores(q, tokens, clip_weight, frame_weight)["total"].numpy()  # (Nq, B)
        all_ids = np.concatenate([best_ids, np.broadcast_to(ids, (q.shape[0], ids.shape[0]))], axis=1)
        all_scores = np.concatenate([best_scores, chunk_scores], axis=1)
        order = np.lexsort((all_ids, -all_scores), axis=1)[:, :k]  # (Nq, k)
        best_ids = np.take_along_axis(all_ids, order, axis=1)
        best_scores = np.take_along_axis(all_scores, order, axis=1)
    return [[(int(v), float(x)) for v, x in zip(row_ids, row_scores)] for row_ids, row_scores in
            zip(best_ids, best_scores)]


def rss_mb() -> float:
    """Resident set size of this process now, in MiB (Linux ``/proc``; NaN elsewhere)."""
    with open("/proc/self/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mb() -> float:
    """Peak resident set size of this process, in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def directory_bytes(path: Path) -> int:
    """Bytes of every file under ``path``."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def run_size(num_videos: int, options: IndexBenchOptions, work: Path) -> dict[str, Any]:
    """Build, calibrate and measure one corpus of ``num_videos`` videos under ``work``; returns its result row."""
    corpus = SyntheticCorpus(num_videos, clips=options.clips, frames=options.frames, dim=options.dim, rank=options.rank,
                             seed=options.seed, chunk=options.chunk)
    factory = options.factory_small if num_videos <= options.small_max else options.factory_large
    directory = work / f"v{num_videos}"
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    logger.info("corpus %d videos, factory %s", num_videos, factory)
    model = ModelConfig()  # the fusion weights of the model the index would serve
    index = FaissTokenIndex(options.dim, factory=factory, use_gpu=False, seed=options.seed,
                            clip_weight=model.clip_weight, frame_weight=model.frame_weight)
    store = TokenStore(directory / "tokens", options.dim, dtype=options.token_dtype, codec_seed=options.seed)
    refine = (TokenStore(directory / "refine", options.dim, dtype=options.refine_dtype, codec_seed=options.seed)
              if options.refine_dtype else None)
    timings: dict[str, float] = {}

    started = time.perf_counter()
    sample_videos = min(num_videos, options.train_videos)
    parts = [corpus.chunk(first, min(options.chunk, sample_videos - first)) for first in range(0, sample_videos,
                                                                                            options.chunk)]
    clip, frame, mask = (np.concatenate([p[i] for p in parts]) for i in (1, 2, 3))
    index.train(clip, frame, mask)
    for tier in (store, refine):
        if tier is not None:
            tier.train(clip, frame, mask)  # a codec's codebook / basis (a no-op for raw encodings)
    timings["train_s"] = time.perf_counter() - started
    del clip, frame, mask, parts
    add_s = store_s = 0.0
    with contextlib.ExitStack() as bulks:
        for tier in (store, refine):
            if tier is not None:
                bulks.enter_context(tier.bulk())  # one commit at the end, not one per chunk
        for first in range(0, num_videos, options.chunk):
            ids, clip, frame, mask = corpus.chunk(first, min(options.chunk, num_videos - first))
            t0 = time.perf_counter()
            index.add(ids, clip, frame, mask)
            t1 = time.perf_counter()
            store.append(ids, clip, frame, mask)
            if refine is not None:
                refine.append(ids, clip, frame, mask)
            add_s += t1 - t0
            store_s += time.perf_counter() - t1
            if first % (50 * options.chunk) == 0:
                logger.info("added %d / %d videos (RSS %.0f MB)", first + ids.shape[0], num_videos, rss_mb())
    timings["add_s"], timings["store_s"] = add_s, store_s
    t0 = time.perf_counter()
    index.save(directory / "faiss")
    timings["save_s"] = time.perf_counter() - t0
    timings["build_s"] = timings["train_s"] + add_s + store_s + timings["save_s"]
    faiss_bytes = directory_bytes(directory / "faiss")
    store_bytes = directory_bytes(directory / "tokens")
    refine_bytes = directory_bytes(directory / "refine") if refine is not None else 0
    build_peak_rss = peak_rss_mb()
    del index
    index = FaissTokenIndex.load(directory / "faiss", mmap=True, use_gpu=False)
    store = TokenStore(directory / "tokens", read_only=True)
    tiers: dict[str, Any] = {}
    if refine is not None:
        refine = TokenStore(directory / "refine", read_only=True)
        tiers = {"refine": refine, "refine_k": options.refine_k}
    weights = {"clip_weight": index.clip_weight, "frame_weight": index.frame_weight}  # saved with the index
    logger.info("built in %.1f s: %.0f MB index, %.0f MB store", timings["build_s"], faiss_bytes / 2**20,
                store_bytes / 2**20)

    # calibration on queries disjoint from the measured ones
    t0 = time.perf_counter()
    calibration_queries = corpus.queries(options.calibration_queries, seed=1)
    queries = corpus.queries(options.queries, seed=2)
    t1 = time.perf_counter()
    truth_all = float_truth(corpus, np.concatenate([calibration_queries, queries]), 100, **weights)
    timings["truth_s"] = time.perf_counter() - t1
    calibration_truth = [row[:10] for row in truth_all[: calibration_queries.shape[0]]]
    truth = truth_all[calibration_queries.shape[0] :]
    result = calibrate(index, store, calibration_queries, k=10, target=options.target,
                       n_candidates_grid=tuple(options.candidates),
                       knob_grid=list(options.knob_grid) if options.knob_grid else None,
                       query_source="synthetic calibration queries", held_out_fraction=options.held_out_fraction,
                       seed=options.seed, truth=calibration_truth, **tiers, **weights)
    timings["calibrate_s"] = time.perf_counter() - t0
    defaults = result.search_defaults()
    if "nprobe" in defaults:
        index.set_nprobe(defaults["nprobe"])
    if "ef_search" in defaults:
        index.set_ef_search(defaults["ef_search"])
    n_candidates = int(defaults["n_candidates"])
    logger.info("calibrated: %s (reached: %s, held-out check passed: %s)", result.chosen, result.reached,
                result.held_out_passed)

    # brute force, in the same run: scores of every video from the (first-tier) store, one query, then batched
    brute_single = []
    for row in range(min(options.brute_single, queries.shape[0])):
        t0 = time.perf_counter()
        exact_scores(store, queries[row : row + 1], **weights)
        brute_single.append(1000 * (time.perf_counter() - t0))
    t0 = time.perf_counter()
    ids, scores = exact_scores(store, queries, **weights)
    brute_batch_ms = 1000 * (time.perf_counter() - t0) / queries.shape[0]
    brute_recall10 = float(np.mean([video_recall(f, t, 10) for f, t in zip(top_pairs(ids, scores, 10), truth)]))
    del scores

    # two-stage search, one query at a time (warm-up first)
    search_topk(index, store, queries[:5], 100, n_candidates, **tiers, **weights)
    single_ms = []
    found10, found100 = [], []
    for row in range(queries.shape[0]):
        t0 = time.perf_counter()
        ranked = search_topk(index, store, queries[row : row + 1], 10, n_candidates, **tiers, **weights)
        single_ms.append(1000 * (time.perf_counter() - t0))
        found10.append(ranked[0].pairs())
    wide = {**tiers, "refine_k": max(200, options.refine_k)} if tiers else {}
    ranked100 = search_topk(index, store, queries, 100, max(n_candidates, 400), **wide, **weights)
    found100 = [r.pairs() for r in ranked100]
    batch_runs = []
    for _ in range(options.repeats):
        t0 = time.perf_counter()
        search_topk(index, store, queries, 10, n_candidates, **tiers, **weights)
        batch_runs.append(time.perf_counter() - t0)
    recall10 = float(np.mean([video_recall(f, t, 10) for f, t in zip(found10, truth)]))
    recall100 = float(np.mean([video_recall(f, t, 100) for f, t in zip(found100, truth)]))
    p50 = percentile(single_ms, 50)
    brute_p50 = median(brute_single)
    return {
        "videos": num_videos,
        "tokens_per_video": {"clip": options.clips, "frame_max": options.frames},
        "factory": index.describe()["clip"]["factory"],
        "frame_factory": index.describe()["frame"]["factory"],
        "nlist": index.describe()["clip"]["nlist"],
        "exact_index": index.is_exact,
        "calibration": {"target": options.target, "k": 10, "chosen": result.chosen, "reached": result.reached,
                        "queries": int(calibration_queries.shape[0]), "fit_queries": result.num_fit_queries,
                        "held_out_queries": result.num_held_out_queries, "fit_recall": result.fit_recall,
                        "fit_lower_bound": result.chosen["fit_lower_bound"], "margin": result.margin,
                        "margin_method": result.margin_method, "held_out_recall": result.held_out_recall,
                        "held_out_passed": result.held_out_passed, "escalated_from": result.escalated_from,
                        "grid": result.grid},
        "search": {"n_candidates": n_candidates, **{k: v for k, v in defaults.items() if k != "n_candidates"}},
        "token_store": {"dtype": store.dtype, "bytes_per_token": store.bytes_per_token,
                        "token_error": round(store.token_error, 5),
                        "refine": ({"dtype": refine.dtype, "bytes_per_token": refine.bytes_per_token,
                                    "refine_k": options.refine_k} if refine is not None else None)},
        "tokens_per_video_mean": round(store.nbytes / store.bytes_per_token / num_videos, 2),
        "timings_s": {key: round(value, 2) for key, value in timings.items()},
        "bytes_per_video": {"faiss": round(faiss_bytes / num_videos, 1), "store": round(store_bytes / num_videos, 1),
                            "total": round((faiss_bytes + store_bytes) / num_videos, 1),
                            "refine_on_disk": round(refine_bytes / num_videos, 1)},
        "rss_mb": {"after_search": round(rss_mb(), 1), "build_peak": round(build_peak_rss, 1),
                   "peak": round(peak_rss_mb(), 1)},
        "single_query_ms": {"p50": round(p50, 3), "p99": round(percentile(single_ms, 99), 3),
                            "queries": len(single_ms)},
        "batch": {"queries": int(queries.shape[0]), "qps_median": round(queries.shape[0] / median(
            batch_runs), 1), "ms_per_query_median": round(1000 * median(batch_runs) / queries.shape[0], 3)},
        "recall": {"at10": round(recall10, 4), "at100": round(recall100, 4)},
        "brute_force_ms": {"single_p50": round(brute_p50, 2), "single_runs": len(brute_single),
                           "batched_per_query": round(brute_batch_ms, 3), "recall_at10": round(brute_recall10, 4)},
        "speedup_vs_brute_force_single": round(brute_p50 / p50, 1),
    }


def _calibration_cell(calibration: dict[str, Any]) -> str:
    """``fit / held-out`` recall of the chosen setting, with the check's verdict (older reports: one recall)."""
    if "held_out_recall" not in calibration:
        return f"{calibration['chosen']['recall']:.4f}"
    held = calibration["held_out_recall"]
    if held is None:
        return f"{calibration['fit_recall']:.4f} / -"
    verdict = "passed" if calibration["held_out_passed"] else "FAILED"
    return f"{calibration['fit_recall']:.4f} / {held:.4f} ({verdict})"


def markdown(report: dict[str, Any]) -> str:
    """The markdown table of a :func:`run_index_bench` report."""
    lines = [
        "# Index benchmark (synthetic structured corpora)",
        "",
        f"Command: `{report['command']}`",
        "",
        f"Machine: {report['machine']}. {report['note']}",
        "",
        "| videos | index (clip / frame) | store (tiers) | search setting | build s | bytes/video (index + store) | "
        "peak RSS MB | "
        "p50 / p99 ms (1 query) | batch QPS | calibration recall@10 fit / held-out | recall@10 | recall@100 | "
        "brute force ms (1 query) | speed-up |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report["results"]:
        setting = ", ".join(f"{k} {v}" for k, v in row["search"].items())
        tiers = row.get("token_store") or {"dtype": "bfloat16", "refine": None}
        refine = tiers.get("refine")
        store = tiers["dtype"] + (f" -> {refine['dtype']} top-{refine['refine_k']} (on disk)" if refine else "")
        lines.append(
            f"| {row['videos']:,} | {row['factory']} / {row['frame_factory']} | {store} | {setting} | "
            f"{row['timings_s']['build_s']} | {row['bytes_per_video']['faiss']:,.0f} + "
            f"{row['bytes_per_video']['store']:,.0f} | {row['rss_mb']['peak']:,.0f} | "
            f"{row['single_query_ms']['p50']:.2f} / {row['single_query_ms']['p99']:.2f} | "
            f"{row['batch']['qps_median']} | {_calibration_cell(row['calibration'])} | "
            f"{row['recall']['at10']:.4f} | {row['recall']['at100']:.4f} | "
            f"{row['brute_force_ms']['single_p50']:,.1f} | "
            f"{row['speedup_vs_brute_force_single']}x |"
        )
    lines += ["", *[f"- {line}" for line in report["notes"]], ""]
    return "\n".join(lines)


def run_index_bench(options: IndexBenchOptions, *, command: str) -> dict[str, Any]:
    """Every corpus size of ``options`` in turn; returns the report (``command`` is recorded in it).

    The scratch directory is ``options.work`` (kept) or a temporary one (deleted). FAISS / torch threads are the
    caller's to set (``scripts/bench_index.py`` sets ``options.threads``).
    """
    work = Path(options.work) if options.work else Path(tempfile.mkdtemp(prefix="bench_index_"))
    started = time.perf_counter()
    results = []
    try:
        for size in options.sizes:
            results.append(run_size(size, options, work))
            logger.info("%s", json.dumps(results[-1]))
    finally:
        if not options.work:
            shutil.rmtree(work, ignore_errors=True)
    load = os.getloadavg()
    return {
        "command": command,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, faiss {faiss.__version__}, "
                   f"torch {torch.__version__}, {options.threads} thread(s)",
        "note": ("Shared machine: other helpers and a training job ran during the measurement (load average at the "
                 f"end {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} on 2 cores); latencies are medians / percentiles "
                 "of one run and drift 2-5x between periods, so compare the ratios within a row."),
        "wall_s": round(time.perf_counter() - started, 1),
        "results": results,
        "notes": [
            f"Latency = candidate search (clip + frame FAISS indexes) + re-rank from the {options.token_dtype} token "
            "store" + (f", whose best {options.refine_k} videos a {options.refine_dtype} second tier re-scores"
                       if options.refine_dtype else "") + "; no text encoding, no moments. Recall = tie-aware video "
            "recall against the exact float32 scores of every video, computed by a chunked scan of the generator "
            "(float_truth), for the calibration and the measured queries alike.",
            "Brute force = one GEMM per block of token-store rows + a per-video max, every video scored from the "
            "first-tier store (prvr.index.exact.exact_scores); its recall@10 is in the JSON.",
            f"Search settings were chosen by index.calibrate on {options.calibration_queries} calibration queries "
            f"disjoint from the {options.queries} measured ones (target recall@10 {options.target}): the cheapest "
            f"setting whose recall on the fitting part ({1 - options.held_out_fraction:.0%}) clears the target by a "
            "one-sided 95% lower confidence bound, verified on the held-out part "
            f"({options.held_out_fraction:.0%}); grid nprobe {options.knob_grid} x candidates {options.candidates}. "
            "recall@100 is measured at the same nprobe with max(n_candidates, 400) candidates (and a short list of "
            "max(200, refine_k) with a second tier).",
            f"Tokens per video: {options.clips} clip + up to {options.frames} frame tokens (frames binned to "
            f"max_frames = {options.frames}), D = {options.dim}, intrinsic rank {options.rank}.",
            "bytes/video counts what the search holds resident (FAISS files + first-tier store); a second tier lives "
            "on disk, memory-mapped and read for the short list only (refine_on_disk in the JSON).",
        ],
    }
