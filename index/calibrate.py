"""Calibration of the search settings: video-level recall@K against exact scoring of every video, over a 2-D grid,
chosen on one part of the queries and verified on another.

Shape letters: Nq queries, V videos, D hidden, K results per query.

For every setting of the grid (IVF ``nprobe`` or HNSW ``efSearch``, times the candidate count ``n_candidates``, the
size of the exact re-rank list) the two-stage search runs once over all calibration queries, without widening, and
its top-K is compared with the exact top-K from scoring every stored video (``prvr.index.exact.exact_topk``); its
latency is measured. The queries are split, deterministically by a seed, into a *fitting* part and a *held-out* part:

1. choose the cheapest setting whose recall on the fitting part clears the target by a confidence margin
   (:func:`recall_lower_bound`), so that the choice is not the luckiest setting of one sample;
2. verify it on the held-out part, which took no part in the choice: when the held-out recall falls below the
   target, step to the next more expensive setting that also clears the fitting bound, and record the step.

On an index built with a query bank (``build-index --query-bank``, ``index.bank``) pass its ``video_term``: both the
search and the exact reference then score ``s(q, v) - alpha * t(v)``, the score ``Retriever.search`` returns, so the
recall measured is that of what users are served (without it, a bank index would be calibrated on another ranking).

Cost is a deterministic work model (vectors the token search compares plus tokens the re-rank reads), so the choice
does not depend on how loaded the machine is; ``cost_by="latency"`` ranks by the measured milliseconds instead.
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from prvr.index.bank import VideoTerm
from prvr.index.exact import exact_topk
from prvr.index.faiss_store import FaissTokenIndex
from prvr.index.search import search_topk
from prvr.index.token_store import TokenStore

__all__ = [
    "DEFAULT_CANDIDATE_GRID",
    "DEFAULT_CONFIDENCE",
    "DEFAULT_HELD_OUT_FRACTION",
    "DEFAULT_NPROBE_GRID",
    "DEFAULT_NUM_QUERIES",
    "CalibrationResult",
    "calibrate",
    "heldout_token_queries",
    "recall_lower_bound",
    "split_queries",
    "video_recall",
]

logger = logging.getLogger(__name__)

DEFAULT_CANDIDATE_GRID = (100, 200, 400)
DEFAULT_NPROBE_GRID = (32, 64, 128, 256, 512)  # clipped to nlist; an index of <= 32 lists sweeps powers of two
DEFAULT_EF_SEARCH_GRID = (16, 32, 64, 128, 256, 512)
DEFAULT_NUM_QUERIES = 500
DEFAULT_HELD_OUT_FRACTION = 0.3
DEFAULT_CONFIDENCE = 0.95
TIE_TOLERANCE = 1e-6
CostBy = Literal["model", "latency"]


@dataclass(frozen=True)
class CalibrationResult:
    """What a calibration measured and chose (``to_dict`` is stored in the manifest's ``calibration``).

    Attributes:
        knob: ``"nprobe"`` (IVF), ``"ef_search"`` (HNSW) or None (exact Flat: only the candidate count).
        chosen: the chosen setting ``{knob: value, "n_candidates", "recall", "fit_recall", "fit_lower_bound",
            "held_out_recall", "ms_per_query", "cost"}`` (``recall`` is over all calibration queries).
        reached: whether the chosen setting clears the target on the fitting part (with the margin) and on the
            held-out part (else it is the best fallback measured).
        grid: every measured setting, in grid order.
        target: the recall target.
        k: K of recall@K.
        num_queries: queries measured (both parts).
        query_source: where the queries came from.
        num_fit_queries: queries of the fitting part.
        num_held_out_queries: queries of the held-out part (0: no held-out check).
        held_out_fraction: the requested share of held-out queries.
        split_seed: seed of the fitting / held-out split.
        margin_method: ``"normal@<confidence>"`` (:func:`recall_lower_bound`) or ``"fixed"``.
        margin: fitting recall minus its lower bound, of the chosen setting.
        held_out_passed: whether the chosen setting's held-out recall reaches the target (None without a held-out
            part).
        escalated_from: the settings that cleared the fitting bound but failed the held-out check, cheapest first.
        cost_by: ``"model"`` (work model) or ``"latency"`` (measured ms per query).
        bank_corrected: whether recall was measured on the query-bank corrected scores (``video_term``).
    """

    knob: str | None
    chosen: dict[str, Any]
    reached: bool
    grid: list[dict[str, Any]]
    target: float
    k: int
    num_queries: int
    query_source: str
    num_fit_queries: int = 0
    num_held_out_queries: int = 0
    held_out_fraction: float = 0.0
    split_seed: int = 0
    margin_method: str = "fixed"
    margin: float = 0.0
    held_out_passed: bool | None = None
    escalated_from: list[dict[str, Any]] = field(default_factory=list)
    cost_by: str = "model"
    bank_corrected: bool = False

    @property
    def fit_recall(self) -> float:
        """Recall@K of the chosen setting on the fitting part."""
        return float(self.chosen.get("fit_recall", self.chosen["recall"]))

    @property
    def held_out_recall(self) -> float | None:
        """Recall@K of the chosen setting on the held-out part (None without one)."""
        return self.chosen.get("held_out_recall")

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (stored in the manifest's ``calibration``)."""
        return {"knob": self.knob, "chosen": self.chosen, "reached": self.reached, "grid": self.grid,
                "target": self.target, "k": self.k, "num_queries": self.num_queries,
                "query_source": self.query_source, "num_fit_queries": self.num_fit_queries,
                "num_held_out_queries": self.num_held_out_queries, "held_out_fraction": self.held_out_fraction,
                "split_seed": self.split_seed, "margin_method": self.margin_method, "margin": self.margin,
                "fit_recall": self.fit_recall, "held_out_recall": self.held_out_recall,
                "held_out_passed": self.held_out_passed, "escalated_from": self.escalated_from,
                "cost_by": self.cost_by, "bank_corrected": self.bank_corrected}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CalibrationResult:
        """Read a stored ``calibration``; one written before the held-out check (no split fields) reads as a
        calibration whose queries were all fitting queries with no margin."""
        names = {f.name for f in cls.__dataclass_fields__.values()}
        kept = {key: value for key, value in data.items() if key in names}
        kept.setdefault("num_fit_queries", int(data["num_queries"]))
        return cls(**kept)

    def search_defaults(self) -> dict[str, Any]:
        """The manifest ``search_defaults`` entries of the chosen setting."""
        out: dict[str, Any] = {"n_candidates": int(self.chosen["n_candidates"])}
        if self.knob is not None:
            out[self.knob] = int(self.chosen[self.knob])
        return out


def video_recall(found: list[tuple[int, float]], truth: list[tuple[int, float]], k: int) -> float:
    """Tie-aware recall@k: a found video counts when its exact score reaches the k-th true score.

    Both lists hold exact scores from the same token store, so a video tied with the k-th true one is as good an
    answer as it (the reference's tie-break by id is arbitrary).
    """
    if not truth:
        return 1.0
    wanted = min(k, len(truth))
    kth = truth[wanted - 1][1]
    true_ids = {video for video, _ in truth[:wanted]}
    hits = sum(1 for video, score in found[:wanted] if video in true_ids or score >= kth - TIE_TOLERANCE)
    return hits / wanted


def split_queries(num_queries: int, held_out_fraction: float, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic disjoint split of query rows into a fitting and a held-out part.

    ``round(held_out_fraction * num_queries)`` rows (at least one when the fraction is positive, and never all of
    them) are held out, drawn by a seeded permutation; the same arguments give the same split.

    Returns:
        (fitting rows, held-out rows), each sorted increasing; together they are ``0 .. num_queries - 1``.
    """
    if isinstance(num_queries, bool) or not isinstance(num_queries, (int, np.integer)) or num_queries < 1:
        raise ValueError(f"num_queries must be a positive int, got {num_queries!r}")
    if not 0 <= held_out_fraction < 1:
        raise ValueError(f"held_out_fraction must lie in [0, 1) (0: no held-out check), got {held_out_fraction}")
    num_held = 0
    if held_out_fraction > 0:
        if num_queries < 2:
            raise ValueError(f"a held-out part needs at least 2 queries, got {num_queries}; give more queries or "
                             "held_out_fraction=0")
        num_held = min(num_queries - 1, max(1, round(held_out_fraction * num_queries)))
    order = np.random.default_rng(seed).permutation(num_queries)
    return np.sort(order[num_held:]), np.sort(order[:num_held])


def recall_lower_bound(recalls: np.ndarray, k: int, *, confidence: float = DEFAULT_CONFIDENCE) -> float:
    """One-sided lower confidence bound on the mean recall@k of unseen queries, from per-query recalls.

    The normal (central-limit) bound ``mean - z * s / sqrt(n)`` over one pseudo-query with a single miss
    (recall ``1 - 1/k``) added to the sample. Why this one:

    * per-query recalls are i.i.d. draws in [0, 1] when the queries are a random sample, so the mean of a few hundred
      of them is close to normal whatever their distribution (mostly 1.0 with a tail of 0.9, 0.8, ...);
    * the sample spread is used, not the worst case: a Wilson bound on the mean (which assumes the Bernoulli
      variance p(1 - p), the Bhatia-Davis maximum for a [0, 1] variable) would ask for ~0.999 fitting recall to
      certify 0.99 on 350 queries, while a recall@10 of 0.99 is mostly queries missing one video of ten, whose
      variance is ~10x smaller;
    * the pseudo-miss keeps the bound below 1 when every sampled query is perfect (s = 0 would certify 1.0 from any
      sample size), in the spirit of Laplace's add-one rule; it costs ``~1/(k n)`` of mean.

    Args:
        recalls: (n,) per-query recall@k, n >= 1.
        k: K of recall@K.
        confidence: one-sided confidence level in (0.5, 1).

    Returns:
        The lower bound, clipped to [0, 1].
    """
    if not 0.5 < confidence < 1:
        raise ValueError(f"confidence must lie in (0.5, 1), got {confidence}")
    values = np.asarray(recalls, dtype=np.float64).reshape(-1)
    if values.size == 0:
        raise ValueError("recall_lower_bound needs at least one per-query recall")
    values = np.append(values, 1.0 - 1.0 / k)
    z = statistics.NormalDist().inv_cdf(confidence)
    bound = float(values.mean() - z * values.std(ddof=1) / math.sqrt(values.size))
    return min(1.0, max(0.0, bound))


def heldout_token_queries(store: TokenStore, num_queries: int, *, seed: int = 0, noise: float = 0.5) -> np.ndarray:
    """Queries made from stored tokens: a random token of a random video plus isotropic noise, unit length.

    Used when no real query features are given. ``noise`` is the noise norm relative to the unit token, so a query is
    near one video's token without equalling it (an indexed token itself would make every index look perfect).

    Returns:
        (Nq, D) float32 unit vectors.
    """
    if num_queries < 1:
        raise ValueError(f"num_queries must be >= 1, got {num_queries}")
    ids = np.asarray(store.video_ids, dtype=np.int64)
    if ids.size == 0:
        raise ValueError("the token store is empty: nothing to calibrate on")
    rng = np.random.default_rng(seed)
    picks = ids[rng.integers(0, ids.shape[0], size=num_queries)]
    out = np.empty((num_queries, store.dim), dtype=np.float32)
    for row, video_id in enumerate(picks.tolist()):
        tokens = store.get([video_id])
        pool = np.concatenate([tokens.clip[0].numpy(), tokens.frame[0][tokens.frame_mask[0]].numpy()])  # (T, D)
        token = pool[rng.integers(0, pool.shape[0])]
        token = token / max(float(np.linalg.norm(token)), 1e-12)
        direction = rng.standard_normal(store.dim).astype(np.float32)
        out[row] = token + noise * direction / max(float(np.linalg.norm(direction)), 1e-12)
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def _knob(index: FaissTokenIndex) -> tuple[str | None, list[int], dict[str, Any]]:
    """The index's recall knob, its default grid and what the cost model needs."""
    described = index.describe()
    clip = described["clip"]
    parts = [(int(described[kind]["ntotal"]), described[kind].get("nlist")) for kind in ("clip", "frame")]
    lists = [int(nlist) for _, nlist in parts if nlist]
    if lists:
        nlist = max(lists)
        if nlist <= DEFAULT_NPROBE_GRID[0]:  # a small index: sweep every power of two
            grid = sorted({min(nlist, 1 << i) for i in range(int(math.log2(nlist)) + 1)} | {nlist})
        else:
            grid = sorted({min(nlist, value) for value in DEFAULT_NPROBE_GRID})
        return "nprobe", grid, {"nlist": nlist, "parts": parts}
    factory = str(clip.get("factory") or "")
    if "HNSW" in factory:
        return "ef_search", list(DEFAULT_EF_SEARCH_GRID), {}
    return None, [0], {}


def _cost(knob: str | None, value: int, n_candidates: int, index: FaissTokenIndex, tokens_per_video: float,
          extra: dict[str, Any]) -> float:
    """Work model: vectors compared by the token searches + tokens read by the re-rank."""
    if knob == "nprobe":
        scanned = sum(ntotal * (min(value, nlist) / nlist if nlist else 1.0) for ntotal, nlist in extra["parts"])
    elif knob == "ef_search":
        scanned = 2 * value * 32 * math.log2(max(2, index.ntotal))  # ~ ef x M x levels
    else:
        scanned = index.ntotal
    return float(scanned + n_candidates * tokens_per_video)


def _setting(entry: dict[str, Any], knob: str | None) -> dict[str, Any]:
    """The identifying part of a grid entry, with its held-out recall (what ``escalated_from`` records)."""
    out = {"n_candidates": entry["n_candidates"], "fit_lower_bound": entry["fit_lower_bound"],
           "held_out_recall": entry["held_out_recall"]}
    if knob is not None:
        out[knob] = entry[knob]
    return out


def calibrate(
    index: FaissTokenIndex,
    store: TokenStore,
    queries: np.ndarray,
    *,
    clip_weight: float,
    frame_weight: float,
    k: int = 10,
    target: float = 0.99,
    n_candidates_grid: tuple[int, ...] | list[int] = DEFAULT_CANDIDATE_GRID,
    knob_grid: list[int] | None = None,
    query_source: str = "given",
    held_out_fraction: float = DEFAULT_HELD_OUT_FRACTION,
    margin: float | None = None,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
    cost_by: CostBy = "model",
    truth: list[list[tuple[int, float]]] | None = None,
    video_term: VideoTerm | None = None,
    refine: TokenStore | None = None,
    refine_k: int | None = None,
) -> CalibrationResult:
    """Measure recall@k of every setting of the grid, choose on the fitting queries, verify on the held-out ones.

    The index's own search parameter is restored afterwards; apply the choice with
    ``result.search_defaults()`` (``prvr index calibrate`` stores it in the manifest).

    Args:
        index: the FAISS token index to tune.
        store: its token store.
        queries: (Nq, D) float32 query vectors (real query encodings, or :func:`heldout_token_queries`).
        clip_weight: w_c.
        frame_weight: w_f.
        k: K of recall@K.
        target: mean recall to reach, in (0, 1].
        n_candidates_grid: candidate counts (exact re-rank list sizes) to try.
        knob_grid: nprobe (IVF) / efSearch (HNSW) values to try; default :data:`DEFAULT_NPROBE_GRID` clipped to
            nlist (every power of two up to nlist for an index of at most 32 lists) / 16 .. 512.
        query_source: recorded in the result.
        held_out_fraction: share of the queries held out for the check, in [0, 1); 0 skips the check.
        margin: None for the statistical margin of :func:`recall_lower_bound` at ``confidence``, else a fixed
            margin in [0, 1) (0 with ``held_out_fraction=0`` is the old choose-on-the-sample behaviour). The
            statistical bound stays below 1, so a target of 1.0 needs ``margin=0``.
        confidence: one-sided confidence level of the statistical margin, in (0.5, 1).
        seed: seed of the fitting / held-out split (:func:`split_queries`).
        cost_by: rank the settings by the work model (``"model"``, machine-independent) or the measured latency
            (``"latency"``).
        truth: the exact top-k of each query when the caller already has it (for instance from the GEMM path
            ``prvr.index.exact.exact_scores``); default :func:`prvr.index.exact.exact_topk`. With ``video_term``
            it must hold the bank-corrected scores.
        video_term: the index's query-bank offsets ``alpha * t(v)`` (``Retriever.video_term``), or None: subtracted
            in the search and the exact reference alike.
        refine: the second tier of a two-tier search (``index.search.search_topk``), or None; the default exact
            reference is then computed from it rather than from the compressed store.
        refine_k: the second tier's short-list length (required with ``refine``).

    Returns:
        The :class:`CalibrationResult`.
    """
    if not 0 < target <= 1:
        raise ValueError(f"target must lie in (0, 1], got {target}")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    if margin is not None and not 0 <= margin < 1:
        raise ValueError(f"margin must lie in [0, 1) or be None (the statistical bound), got {margin}")
    if not 0.5 < confidence < 1:
        raise ValueError(f"confidence must lie in (0.5, 1), got {confidence}")
    if cost_by not in ("model", "latency"):
        raise ValueError(f"cost_by must be 'model' or 'latency', got {cost_by!r}")
    grid_n = sorted({int(n) for n in n_candidates_grid})
    if not grid_n or grid_n[0] < 1:
        raise ValueError(f"n_candidates_grid needs positive values, got {list(n_candidates_grid)}")
    queries = np.ascontiguousarray(np.asarray(queries, dtype=np.float32))
    if queries.ndim != 2 or queries.shape[0] == 0 or queries.shape[1] != index.dim:
        raise ValueError(f"queries must be (Nq >= 1, D = {index.dim}), got {queries.shape}")
    if index.num_videos == 0:
        raise ValueError("the index is empty: nothing to calibrate")
    if truth is not None and len(truth) != queries.shape[0]:
        raise ValueError(f"truth holds {len(truth)} lists for {queries.shape[0]} queries")
    fit_rows, held_rows = split_queries(queries.shape[0], held_out_fraction, seed=seed)
    knob, default_grid, extra = _knob(index)
    values = default_grid if knob_grid is None or knob is None else sorted({int(v) for v in knob_grid})
    if knob == "nprobe":
        values = sorted({min(v, extra["nlist"]) for v in values if v >= 1}) or [extra["nlist"]]
    weights = {"clip_weight": clip_weight, "frame_weight": frame_weight}
    if truth is None:
        truth = exact_topk(queries, store if refine is None else refine, k, video_term=video_term, **weights)
    tokens_per_video = index.ntotal / max(1, index.num_videos)
    saved = index.search_parameters
    grid: list[dict[str, Any]] = []
    try:
        tiers = {"video_term": video_term, "refine": refine, "refine_k": refine_k}
        search_topk(index, store, queries[:8], k, grid_n[0], widen=False, **tiers, **weights)  # warm the page cache
        for value in values:
            if knob == "nprobe":
                index.set_nprobe(value)
            elif knob == "ef_search":
                index.set_ef_search(value)
            for n in grid_n:
                started = time.perf_counter()
                ranked = search_topk(index, store, queries, k, n, widen=False, **tiers, **weights)
                elapsed = time.perf_counter() - started
                recalls = np.array([video_recall(r.pairs(), t, k) for r, t in zip(ranked, truth)])  # (Nq,)
                fit_recall = float(recalls[fit_rows].mean())
                bound = (recall_lower_bound(recalls[fit_rows], k, confidence=confidence) if margin is None
                         else max(0.0, fit_recall - margin))
                entry: dict[str, Any] = {
                    "n_candidates": n,
                    "recall": round(float(recalls.mean()), 6),
                    "fit_recall": round(fit_recall, 6),
                    "fit_lower_bound": round(bound, 6),
                    "held_out_recall": round(float(recalls[held_rows].mean()), 6) if held_rows.size else None,
                    "ms_per_query": round(1000 * elapsed / queries.shape[0], 3),
                    "cost": _cost(knob, value, n, index, tokens_per_video, extra),
                }
                if knob is not None:
                    entry[knob] = value
                grid.append(entry)
                logger.info("calibration %s", entry)
    finally:
        index.restore_search_parameters(saved)
    price = "cost" if cost_by == "model" else "ms_per_query"
    by_price = sorted(grid, key=lambda e: (e[price], e["n_candidates"]))
    clearing = [entry for entry in by_price if entry["fit_lower_bound"] >= target]
    escalated: list[dict[str, Any]] = []
    if not clearing:
        chosen = max(grid, key=lambda e: (e["fit_recall"], -e[price]))
        logger.warning("no setting cleared recall@%d %.3f on the fitting queries with the margin; best fitting recall "
                       "%.4f (%s)", k, target, chosen["fit_recall"], chosen)
        passed = None if not held_rows.size else bool(chosen["held_out_recall"] >= target)
    elif not held_rows.size:
        chosen, passed = clearing[0], None
    else:
        for entry in clearing:
            if entry["held_out_recall"] >= target:
                chosen, passed = entry, True
                break
            escalated.append(_setting(entry, knob))
            logger.warning("held-out recall@%d %.4f < target %.3f at %s: stepping to the next more expensive "
                           "setting", k, entry["held_out_recall"], target, _setting(entry, knob))
        else:
            chosen, passed = max(clearing, key=lambda e: (e["held_out_recall"], -e[price])), False
            logger.warning("no setting clearing the fitting bound reached recall@%d %.3f on the held-out queries; "
                           "kept the best held-out one %s", k, target, chosen)
    applied_margin = round(chosen["fit_recall"] - chosen["fit_lower_bound"], 6)
    return CalibrationResult(
        knob, dict(chosen), bool(clearing) and passed is not False, grid, float(target), int(k),
        int(queries.shape[0]), query_source, num_fit_queries=int(fit_rows.size),
        num_held_out_queries=int(held_rows.size), held_out_fraction=float(held_out_fraction), split_seed=int(seed),
        margin_method="fixed" if margin is not None else f"normal@{confidence:g}", margin=applied_margin,
        held_out_passed=passed, escalated_from=escalated, cost_by=cost_by, bank_corrected=video_term is not None)
