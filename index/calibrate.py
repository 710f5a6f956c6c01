"""Calibration of the search settings: video-level recall@K against exact scoring of every video, over a grid.

Shape letters: Nq queries, V videos, D hidden, K results per query.

For every setting of the grid (IVF ``nprobe`` or HNSW ``efSearch``, times the candidate count) the two-stage search
runs once, without widening, and its top-K is compared with the exact top-K from scoring every stored video
(``prvr.index.exact.exact_topk``). The cheapest setting whose mean recall reaches the target is chosen. Cost is a deterministic work model (vectors the
token search compares plus tokens the re-rank reads), so the choice does not depend on how loaded the machine is;
measured milliseconds are reported beside it.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from prvr.index.faiss_store import FaissTokenIndex
from prvr.index.exact import exact_topk
from prvr.index.search import search_topk
from prvr.index.token_store import TokenStore

__all__ = ["DEFAULT_CANDIDATE_GRID", "CalibrationResult", "calibrate", "heldout_token_queries", "video_recall"]

logger = logging.getLogger(__name__)

DEFAULT_CANDIDATE_GRID = (25, 50, 100, 200, 400, 800)
TIE_TOLERANCE = 1e-6


@dataclass(frozen=True)
class CalibrationResult:
    """What a calibration measured and chose.

    Attributes:
        knob: ``"nprobe"`` (IVF), ``"ef_search"`` (HNSW) or None (exact Flat: only the candidate count).
        chosen: the chosen setting ``{knob: value, "n_candidates", "recall", "ms_per_query", "cost"}``.
        reached: whether the chosen setting reaches the target (else it is the most accurate one measured).
        grid: every measured setting, in grid order.
        target: the recall target.
        k: K of recall@K.
        num_queries: queries measured.
        query_source: where the queries came from.
    """

    knob: str | None
    chosen: dict[str, Any]
    reached: bool
    grid: list[dict[str, Any]]
    target: float
    k: int
    num_queries: int
    query_source: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (stored in the manifest's ``calibration``)."""
        return {"knob": self.knob, "chosen": self.chosen, "reached": self.reached, "grid": self.grid,
                "target": self.target, "k": self.k, "num_queries": self.num_queries,
                "query_source": self.query_source}

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
    """The index's recall knob, its default grid (powers of two) and what the cost model needs."""
    described = index.describe()
    clip = described["clip"]
    parts = [(int(described[kind]["ntotal"]), described[kind].get("nlist")) for kind in ("clip", "frame")]
    lists = [int(nlist) for _, nlist in parts if nlist]
    if lists:
        nlist = max(lists)
        grid = sorted({min(nlist, 1 << i) for i in range(int(math.log2(nlist)) + 1)} | {nlist})
        return "nprobe", grid, {"nlist": nlist, "parts": parts}
    factory = str(clip.get("factory") or "")
    if "HNSW" in factory:
        return "ef_search", [16, 32, 64, 128, 256, 512], {}
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
) -> CalibrationResult:
    """Measure recall@k of every setting of the grid and pick the cheapest that reaches ``target``.

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
        n_candidates_grid: candidate counts to try.
        knob_grid: nprobe (IVF) / efSearch (HNSW) values to try; default powers of two.
        query_source: recorded in the result.

    Returns:
        The :class:`CalibrationResult`.
    """
    if not 0 < target <= 1:
        raise ValueError(f"target must lie in (0, 1], got {target}")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    grid_n = sorted({int(n) for n in n_candidates_grid})
    if not grid_n or grid_n[0] < 1:
        raise ValueError(f"n_candidates_grid needs positive values, got {list(n_candidates_grid)}")
    queries = np.ascontiguousarray(np.asarray(queries, dtype=np.float32))
    if queries.ndim != 2 or queries.shape[0] == 0 or queries.shape[1] != index.dim:
        raise ValueError(f"queries must be (Nq >= 1, D = {index.dim}), got {queries.shape}")
    if index.num_videos == 0:
        raise ValueError("the index is empty: nothing to calibrate")
    knob, default_grid, extra = _knob(index)
    values = default_grid if knob_grid is None or knob is None else sorted({int(v) for v in knob_grid})
    if knob == "nprobe":
        values = [v for v in values if 1 <= v <= extra["nlist"]] or [extra["nlist"]]
    weights = {"clip_weight": clip_weight, "frame_weight": frame_weight}
    truth = exact_topk(queries, store, k, **weights)
    tokens_per_video = index.ntotal / max(1, index.num_videos)
    saved = index.search_parameters
    grid: list[dict[str, Any]] = []
    try:
        for value in values:
            if knob == "nprobe":
                index.set_nprobe(value)
            elif knob == "ef_search":
                index.set_ef_search(value)
            for n in grid_n:
                started = time.perf_counter()
                ranked = search_topk(index, store, queries, k, n, widen=False, **weights)
                elapsed = time.perf_counter() - started
                recall = float(np.mean([video_recall(r.pairs(), t, k) for r, t in zip(ranked, truth)]))
                entry: dict[str, Any] = {
                    "n_candidates": n,
                    "recall": round(recall, 6),
                    "ms_per_query": round(1000 * elapsed / queries.shape[0], 3),
                    "cost": _cost(knob, value, n, index, tokens_per_video, extra),
                }
                if knob is not None:
                    entry[knob] = value
                grid.append(entry)
                logger.info("calibration %s", entry)
    finally:
        index.restore_search_parameters(saved)
    reaching = [entry for entry in grid if entry["recall"] >= target]
    if reaching:
        chosen = min(reaching, key=lambda e: (e["cost"], e["n_candidates"]))
    else:
        chosen = max(grid, key=lambda e: (e["recall"], -e["cost"]))
        logger.warning("no setting reached recall@%d %.3f; best measured %.4f (%s)", k, target, chosen["recall"],
                       chosen)
    return CalibrationResult(knob, dict(chosen), bool(reaching), grid, float(target), int(k), int(queries.shape[0]),
                             query_source)
