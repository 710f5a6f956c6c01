"""Which localiser the demo's search uses, chosen by measurement on the demo's val split.

Candidates for a (query, video) pair, all read from what the index stores:

* ``denoiser``: the trained moment model's sampled spans;
* ``relevance_span``: the runs of that model's per-frame relevance curve (``RelevanceSpanLocalizer``);
* ``retrieval_cosine@a``: the runs of the retrieval model's own query-frame cosine curve above
  ``mean + a (max - mean)`` (``RetrievalCosineLocalizer``; no moment model), for each level a of ``LEVELS``.

The demo measures each on its val queries (the ground-truth video of each), keeps the best by R1@0.5 + R1@0.7 and
records it with every number in its manifest and in the index (``manifest.moment_localizer``); the test split, held
out from the choice, gets the chosen one's numbers too.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from prvr.moments.zero_shot import (
    DENOISER_KIND,
    RELEVANCE_SPAN_KIND,
    RETRIEVAL_COSINE_KIND,
    RetrievalCosineLocalizer,
    curve_moments,
)

__all__ = ["READINGS", "LEVELS", "relevance_span_predictions", "cosine_predictions", "measure_readings",
           "selection_score", "reading_record"]

READINGS: tuple[str, ...] = (DENOISER_KIND, RELEVANCE_SPAN_KIND)
LEVELS: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75)  # cut levels of the retrieval-cosine runs tried on val
_KEEP = ("R1@0.3", "R1@0.5", "R1@0.7", "mAP")


def selection_score(metrics: dict[str, float]) -> float:
    """R1@0.5 + R1@0.7, the score the moment training selects its best epoch by."""
    return float(metrics["R1@0.5"]) + float(metrics["R1@0.7"])


def relevance_span_predictions(predictions: Sequence[dict[str, Any]], durations: Sequence[float],
                               num_moments: int = 5) -> list[dict[str, Any]]:
    """QVHighlights-format predictions of the relevance-span reading, from ``predict_split``'s rows (which carry
    each pair's ``relevance`` curve) and the videos' durations in seconds."""
    if len(predictions) != len(durations):
        raise ValueError(f"{len(predictions)} predictions but {len(durations)} durations")
    rows = []
    for prediction, duration in zip(predictions, durations):
        moments = curve_moments(np.asarray(prediction["relevance"], dtype=np.float64), float(duration), num_moments)
        rows.append({"qid": prediction["qid"],
                     "pred_relevant_windows": [[m.start_sec, m.end_sec, m.score] for m in moments]})
    return rows


def cosine_predictions(localizer: RetrievalCosineLocalizer, data: Any, num_moments: int = 5) -> list[dict[str, Any]]:
    """QVHighlights-format predictions of a retrieval-cosine localiser on ``data`` (its records' own videos)."""
    rows = []
    for record in data.records:
        found = localizer.localize(data.corpus.query_tokens(record.query_id), data.frames_of(record.video_id),
                                   float(record.duration), num_moments=num_moments)
        rows.append({"qid": record.query_id,
                     "pred_relevant_windows": [[m.start_sec, m.end_sec, m.score] for m in found.moments]})
    return rows


def _metrics(rows: Sequence[dict[str, Any]], truth: list[dict[str, Any]]) -> dict[str, float]:
    from prvr.metrics.moments import moment_metrics

    found = moment_metrics([{"qid": r["qid"], "pred_relevant_windows": r["pred_relevant_windows"]} for r in rows],
                           truth)
    return {key: round(float(found[key]), 2) for key in _KEEP}


def measure_readings(localizer: Any | None, data: Any, *, retrieval_model: Any | None = None,
                     levels: Sequence[float] = LEVELS, batch_size: int = 64) -> dict[str, Any]:
    """Every candidate localiser on ``data`` (a ``prvr.moments.train.MomentData`` whose frames are the index's
    retrieval frame tokens), and the best one.

    Args:
        localizer: the trained moment localiser (``DiffusionMomentLocalizer``), or None (no moment model).
        data: the pairs to measure on.
        retrieval_model: the DreamPRVR of the index, for the ``retrieval_cosine@a`` candidates (None: skipped).
        levels: the cut levels a tried.
        batch_size: pairs per moment-model batch.

    Returns:
        ``{"queries": N, "<candidate>": {R1@0.3, R1@0.5, R1@0.7, mAP}, ..., "chosen": candidate}``; ``chosen``
        has the largest R1@0.5 + R1@0.7 (ties: the earlier candidate, the denoiser first).
    """
    from prvr.moments.train import predict_split

    truth = data.ground_truth()
    measured: dict[str, Any] = {"queries": len(data)}
    candidates: list[str] = []
    if localizer is not None:
        predictions = predict_split(localizer, data, batch_size=batch_size)
        durations = [float(record.duration) for record in data.records]
        measured[DENOISER_KIND] = _metrics(predictions, truth)
        measured[RELEVANCE_SPAN_KIND] = _metrics(relevance_span_predictions(predictions, durations), truth)
        candidates += [DENOISER_KIND, RELEVANCE_SPAN_KIND]
    if retrieval_model is not None:
        for level in levels:
            name = f"{RETRIEVAL_COSINE_KIND}@{level:g}"
            cosine = RetrievalCosineLocalizer(retrieval_model, data.corpus.config, level)
            measured[name] = _metrics(cosine_predictions(cosine, data), truth)
            candidates.append(name)
    if not candidates:
        raise ValueError("nothing to measure: give a moment localiser, a retrieval model, or both")
    measured["chosen"] = max(candidates, key=lambda name: (selection_score(measured[name]), -candidates.index(name)))
    return measured


def reading_record(chosen: str, measured: dict[str, Any]) -> dict[str, Any]:
    """The index manifest's ``moment_localizer`` for a chosen candidate name (``retrieval_cosine@0.5`` ->
    ``{"kind": "retrieval_cosine", "level": 0.5}``), with the measurements that chose it."""
    kind, _, level = chosen.partition("@")
    record: dict[str, Any] = {"kind": kind, "measured": measured}
    if kind == RETRIEVAL_COSINE_KIND:
        record["level"] = float(level)
    return record
