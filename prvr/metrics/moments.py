"""Moment retrieval metrics (numpy only): QVHighlights R1@IoU and mAP@IoU over JSONL predictions, TVR VCMR/SVMR/VR.

Definitions: ``docs/design.md`` §4; the prediction format is documented in ``docs/prediction_format.md``.
Shape letters: P predictions of one query, G ground-truth windows of one query, T IoU thresholds.

Usage: ``python -m prvr.metrics.moments --submission preds.jsonl --gt highlight_val_release.jsonl [--out m.json]``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

__all__ = [
    "R1_THRESHOLDS",
    "MAP_THRESHOLDS",
    "VCMR_KS",
    "VCMR_IOUS",
    "load_jsonl",
    "temporal_iou_matrix",
    "r1_at_iou",
    "map_at_iou",
    "average_precision",
    "moment_metrics",
    "vcmr_recall",
    "main",
]

logger = logging.getLogger(__name__)

R1_THRESHOLDS: tuple[float, ...] = (0.3, 0.5, 0.7)
MAP_THRESHOLDS: tuple[float, ...] = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))  # 0.50:0.05:0.95
VCMR_KS: tuple[int, ...] = (1, 5, 10, 100)
VCMR_IOUS: tuple[float, ...] = (0.5, 0.7)

Missing = Literal["error", "miss", "skip"]
_MISSING_CHOICES = ("error", "miss", "skip")


# ----------------------------------------------------------------------------------------------------------------
# Reading and validation


def load_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Read a JSONL file: one JSON object per line.

    Record ``i`` of the result is line ``i + 1`` of the file (so validation errors can name the line): blank lines
    are only allowed at the end of the file.

    Args:
        path: the file.

    Returns:
        The records, in file order.

    Raises:
        ValueError: on invalid JSON, a line that is not an object, or a blank line before the last record.
    """
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    records: list[dict[str, Any]] = []
    for line_number, line in enumerate(lines, start=1):
        if not line.strip():
            raise ValueError(f"{path}: line {line_number} is blank; remove blank lines between JSONL records")
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: line {line_number} is not valid JSON ({error.msg})") from error
        if not isinstance(record, dict):
            raise ValueError(f"{path}: line {line_number} must be a JSON object, got {type(record).__name__}")
        records.append(record)
    return records


def _threshold_key(threshold: float) -> str:
    return f"{threshold:g}"


def _clean_thresholds(thresholds: Sequence[float] | np.ndarray, name: str) -> tuple[float, ...]:
    """Round to 6 decimals so ``np.arange`` drift (0.7000000000000002) cannot move the boundary of ``iou >= t``."""
    cleaned = tuple(round(float(t), 6) for t in np.asarray(thresholds, dtype=np.float64).ravel())
    if not cleaned:
        raise ValueError(f"{name} must hold at least one IoU threshold")
    if any(not 0.0 <= t <= 1.0 for t in cleaned):
        raise ValueError(f"{name} must lie in [0, 1], got {list(cleaned)}")
    return cleaned


def _window_array(windows: Any, width: int, where: str, field: str) -> np.ndarray:
    """Validate a list of windows ``[[start, end(, score)], ...]`` into a (P, width) float64 array."""
    if not isinstance(windows, (list, tuple)):
        raise ValueError(f"{where}: '{field}' must be a list of [start, end{', score' if width == 3 else ''}] lists")
    rows = []
    for index, window in enumerate(windows):
        if not isinstance(window, (list, tuple)) or len(window) != width:
            expected = "[start, end, score]" if width == 3 else "[start, end]"
            raise ValueError(f"{where}: {field}[{index}] = {window!r} must be {expected}")
        try:
            row = [float(value) for value in window]
        except (TypeError, ValueError) as error:
            raise ValueError(f"{where}: {field}[{index}] = {window!r} holds a non-number") from error
        if not all(math.isfinite(value) for value in row):
            raise ValueError(f"{where}: {field}[{index}] = {window!r} holds NaN or infinity")
        if row[0] > row[1]:
            raise ValueError(f"{where}: {field}[{index}] = {window!r} has start > end; write [start, end]")
        rows.append(row)
    return np.asarray(rows, dtype=np.float64).reshape(len(rows), width)  # (P, width)


def _index_ground_truth(ground_truth: Sequence[Mapping[str, Any]]) -> dict[Hashable, tuple[np.ndarray, Any]]:
    """qid -> ((G, 2) windows, vid or None) for QVHighlights-style ground-truth records."""
    indexed: dict[Hashable, tuple[np.ndarray, Any]] = {}
    for position, record in enumerate(ground_truth):
        where = f"ground truth line {position + 1}"
        if not isinstance(record, Mapping) or "qid" not in record:
            raise ValueError(f"{where}: missing 'qid'; every ground-truth record needs a query id")
        qid = record["qid"]
        if qid in indexed:
            raise ValueError(f"{where}: duplicate qid {qid!r}")
        if "relevant_windows" not in record:
            raise ValueError(f"{where} (qid {qid!r}): missing 'relevant_windows' (a test split without labels?)")
        windows = _window_array(record["relevant_windows"], 2, where, "relevant_windows")
        if len(windows) == 0:
            raise ValueError(f"{where} (qid {qid!r}): 'relevant_windows' is empty; R1 and AP need >= 1 window")
        indexed[qid] = (windows, record.get("vid"))
    return indexed


def _qid_hint(qid: Any, known: Mapping[Hashable, Any]) -> str:
    as_text = str(qid)
    if any(str(other) == as_text for other in known):
        return f" (a ground-truth qid prints the same but has another type than {type(qid).__name__}: check int vs str)"
    return ""


def _index_predictions(
    predictions: Sequence[Mapping[str, Any]], ground_truth: Mapping[Hashable, tuple[np.ndarray, Any]]
) -> dict[Hashable, np.ndarray]:
    """qid -> (P, 3) [start, end, score] rows in listed order, validated against the ground truth."""
    indexed: dict[Hashable, np.ndarray] = {}
    for position, record in enumerate(predictions):
        where = f"prediction line {position + 1}"
        if not isinstance(record, Mapping) or "qid" not in record:
            raise ValueError(f"{where}: missing 'qid'; every prediction needs the query id of the ground truth")
        qid = record["qid"]
        if qid in indexed:
            raise ValueError(f"{where}: duplicate qid {qid!r}; give one prediction record per query")
        if qid not in ground_truth:
            raise ValueError(
                f"{where}: qid {qid!r} is not in the ground truth{_qid_hint(qid, ground_truth)}; "
                "evaluate against the split the predictions were made for"
            )
        gt_vid = ground_truth[qid][1]
        if "vid" in record and gt_vid is not None and record["vid"] != gt_vid:
            raise ValueError(f"{where} (qid {qid!r}): vid {record['vid']!r} differs from the ground truth's {gt_vid!r}")
        if "pred_relevant_windows" not in record:
            raise ValueError(f"{where} (qid {qid!r}): missing 'pred_relevant_windows' ([[start, end, score], ...])")
        indexed[qid] = _window_array(record["pred_relevant_windows"], 3, where, "pred_relevant_windows")
    return indexed


def _resolve_missing(found: Mapping[Hashable, Any], expected: Sequence[Hashable], missing: str) -> list[Hashable]:
    """The qids to evaluate, applying the ``missing`` policy to ground-truth qids without a prediction."""
    if missing not in _MISSING_CHOICES:
        raise ValueError(f"missing must be one of {_MISSING_CHOICES}, got {missing!r}")
    absent = [qid for qid in expected if qid not in found]
    if absent and missing == "error":
        raise ValueError(
            f"{len(absent)} of {len(expected)} ground-truth queries have no prediction (first: {absent[0]!r}); "
            "predict every query, or pass missing='miss' (count them as misses) or missing='skip' (evaluate only "
            "the predicted queries)"
        )
    if absent:
        logger.warning(
            "%d of %d ground-truth queries have no prediction (missing=%r)", len(absent), len(expected), missing
        )
    qids = [qid for qid in expected if qid in found] if missing == "skip" else list(expected)
    if not qids:
        raise ValueError("no query to evaluate: the predictions share no qid with the ground truth")
    return qids


# ----------------------------------------------------------------------------------------------------------------
# Moment retrieval inside one video (QVHighlights)


def temporal_iou_matrix(spans_a: np.ndarray, spans_b: np.ndarray) -> np.ndarray:
    """Pairwise tIoU of (start, end) spans: ``max(0, min(ends) - max(starts)) / (max(ends) - min(starts))``.

    A zero-length hull (two identical points) gives 0.

    >>> temporal_iou_matrix(np.array([[0.0, 2.0]]), np.array([[1.0, 3.0], [2.0, 4.0], [0.5, 1.5]])).round(4)
    array([[0.3333, 0.    , 0.5   ]])

    Args:
        spans_a: (P, >=2) spans; only the first two columns (start, end) are read.
        spans_b: (G, >=2) spans.

    Returns:
        (P, G) float64 tIoU.
    """
    a = np.asarray(spans_a, dtype=np.float64)[:, :2]  # (P, 2)
    b = np.asarray(spans_b, dtype=np.float64)[:, :2]  # (G, 2)
    inter = np.minimum(a[:, None, 1], b[None, :, 1]) - np.maximum(a[:, None, 0], b[None, :, 0])  # (P, G)
    hull = np.maximum(a[:, None, 1], b[None, :, 1]) - np.minimum(a[:, None, 0], b[None, :, 0])  # (P, G)
    inter = np.clip(inter, 0.0, None)
    iou: np.ndarray = np.divide(inter, hull, out=np.zeros_like(inter), where=hull > 0)  # (P, G)
    return iou


def average_precision(iou: np.ndarray, thresholds: Sequence[float]) -> np.ndarray:
    """AP of one query at several IoU thresholds, predictions already in score order.

    Each prediction, in order, is matched to the still-unmatched ground-truth window of highest tIoU (the first
    such window on an exact tie); it is a true positive if that tIoU >= the threshold and a false positive
    otherwise (also when no window is left). Precision ``cumTP / (cumTP + cumFP)``, recall ``cumTP / G``; AP is the
    VOC-2011 area: the precision envelope (running maximum from the right, with a 0 appended at recall 1) summed
    over the points where recall changes.

    Args:
        iou: (P, G) tIoU of the score-ordered predictions against the G >= 1 ground-truth windows.
        thresholds: the T IoU thresholds.

    Returns:
        (T,) AP in [0, 1] (0 where P == 0).
    """
    num_predictions, num_windows = iou.shape
    thresholds_array = np.asarray(thresholds, dtype=np.float64)  # (T,)
    num_thresholds = thresholds_array.size
    if num_windows == 0:
        raise ValueError("average_precision needs at least one ground-truth window")
    if num_predictions == 0:
        return np.zeros(num_thresholds)
    rows = np.arange(num_thresholds)  # (T,)
    taken = np.zeros((num_thresholds, num_windows), dtype=bool)  # (T, G)
    true_positive = np.zeros((num_thresholds, num_predictions), dtype=bool)  # (T, P)
    for prediction in range(num_predictions):
        free_iou = np.where(taken, -1.0, iou[prediction][None, :])  # (T, G), taken windows cannot match
        best = free_iou.argmax(axis=1)  # (T,)
        hit = free_iou[rows, best] >= thresholds_array  # (T,)
        taken[rows[hit], best[hit]] = True
        true_positive[:, prediction] = hit
    cum_tp = np.cumsum(true_positive, axis=1, dtype=np.float64)  # (T, P)
    cum_fp = np.cumsum(~true_positive, axis=1, dtype=np.float64)  # (T, P)
    precision = cum_tp / (cum_tp + cum_fp)  # (T, P)
    recall = cum_tp / num_windows  # (T, P)
    ap = np.zeros(num_thresholds)
    for t in range(num_thresholds):
        envelope_precision = np.concatenate([[0.0], precision[t], [0.0]])  # (P + 2,)
        envelope_recall = np.concatenate([[0.0], recall[t], [1.0]])  # (P + 2,)
        envelope_precision = np.maximum.accumulate(envelope_precision[::-1])[::-1]
        changes = np.flatnonzero(envelope_recall[1:] != envelope_recall[:-1]) + 1
        ap[t] = float(np.sum((envelope_recall[changes] - envelope_recall[changes - 1]) * envelope_precision[changes]))
    return ap


def _prepare(
    predictions: Sequence[Mapping[str, Any]], ground_truth: Sequence[Mapping[str, Any]], missing: str
) -> tuple[dict[Hashable, np.ndarray], dict[Hashable, tuple[np.ndarray, Any]], list[Hashable]]:
    gt_by_qid = _index_ground_truth(ground_truth)
    pred_by_qid = _index_predictions(predictions, gt_by_qid)
    qids = _resolve_missing(pred_by_qid, list(gt_by_qid), missing)
    return pred_by_qid, gt_by_qid, qids


def _r1(
    pred_by_qid: Mapping[Hashable, np.ndarray],
    gt_by_qid: Mapping[Hashable, tuple[np.ndarray, Any]],
    qids: Sequence[Hashable],
    thresholds: tuple[float, ...],
) -> dict[str, float]:
    best_iou = np.zeros(len(qids))  # (Nq,) a query without any prediction keeps 0
    for position, qid in enumerate(qids):
        windows = pred_by_qid.get(qid)
        if windows is not None and len(windows) > 0:
            best_iou[position] = temporal_iou_matrix(windows[:1], gt_by_qid[qid][0]).max()
    return {f"R1@{_threshold_key(t)}": 100.0 * float(np.mean(best_iou >= t)) for t in thresholds}


def _map(
    pred_by_qid: Mapping[Hashable, np.ndarray],
    gt_by_qid: Mapping[Hashable, tuple[np.ndarray, Any]],
    qids: Sequence[Hashable],
    thresholds: tuple[float, ...],
    max_predictions: int | None,
) -> dict[str, float]:
    if max_predictions is not None and max_predictions < 1:
        raise ValueError(f"max_predictions must be >= 1 or None (all), got {max_predictions}")
    ap_rows = np.zeros((len(qids), len(thresholds)))  # (Nq, T)
    for position, qid in enumerate(qids):
        windows = pred_by_qid.get(qid, np.zeros((0, 3)))[:max_predictions]  # first listed, then sorted
        order = np.argsort(-windows[:, 2], kind="stable")  # (P,) descending score, ties keep listed order
        iou = temporal_iou_matrix(windows[order], gt_by_qid[qid][0])  # (P, G)
        ap_rows[position] = average_precision(iou, thresholds)
    ap_per_threshold = ap_rows.mean(axis=0)  # (T,)
    metrics = {
        f"mAP@{_threshold_key(t)}": 100.0 * float(ap) for t, ap in zip(thresholds, ap_per_threshold, strict=True)
    }
    metrics["mAP"] = 100.0 * float(ap_per_threshold.mean())
    return metrics


def r1_at_iou(
    predictions: Sequence[Mapping[str, Any]],
    ground_truth: Sequence[Mapping[str, Any]],
    thresholds: Sequence[float] | np.ndarray = R1_THRESHOLDS,
    *,
    missing: Missing = "error",
) -> dict[str, float]:
    """Recall@1 at tIoU thresholds: the FIRST listed window against the ground-truth window it overlaps most.

    Args:
        predictions: records ``{"qid", "pred_relevant_windows": [[start, end, score], ...]}`` (``"vid"`` optional,
            checked against the ground truth when both have it).
        ground_truth: records ``{"qid", "relevant_windows": [[start, end], ...]}``.
        thresholds: IoU thresholds; a hit is ``tIoU >= threshold``.
        missing: ground-truth queries without a prediction: ``"error"`` raises, ``"miss"`` counts them as misses,
            ``"skip"`` evaluates only the predicted queries.

    Returns:
        ``{"R1@0.3": ..., "R1@0.5": ..., "R1@0.7": ...}`` in percent, unrounded.

    Raises:
        ValueError: on a malformed record (the message names the line) or a qid absent from the ground truth.
    """
    pred_by_qid, gt_by_qid, qids = _prepare(predictions, ground_truth, missing)
    return _r1(pred_by_qid, gt_by_qid, qids, _clean_thresholds(thresholds, "thresholds"))


def map_at_iou(
    predictions: Sequence[Mapping[str, Any]],
    ground_truth: Sequence[Mapping[str, Any]],
    thresholds: Sequence[float] | np.ndarray = MAP_THRESHOLDS,
    max_predictions: int | None = 10,
    *,
    missing: Missing = "error",
) -> dict[str, float]:
    """Mean average precision at tIoU thresholds (QVHighlights): see :func:`average_precision`.

    Per query the first ``max_predictions`` listed windows are kept, then sorted by descending score (a stable sort:
    equal scores keep their listed order); AP is averaged over queries.

    Args:
        predictions: records as in :func:`r1_at_iou`.
        ground_truth: records as in :func:`r1_at_iou`.
        thresholds: IoU thresholds (default 0.50:0.05:0.95).
        max_predictions: windows kept per query (None keeps all).
        missing: policy for ground-truth queries without a prediction, as in :func:`r1_at_iou` (a missed query
            has AP 0).

    Returns:
        ``{"mAP@0.5": ..., ..., "mAP": mean over the given thresholds}`` in percent, unrounded.

    Raises:
        ValueError: on a malformed record (the message names the line) or a qid absent from the ground truth.
    """
    pred_by_qid, gt_by_qid, qids = _prepare(predictions, ground_truth, missing)
    return _map(pred_by_qid, gt_by_qid, qids, _clean_thresholds(thresholds, "thresholds"), max_predictions)


def moment_metrics(
    predictions: Sequence[Mapping[str, Any]],
    ground_truth: Sequence[Mapping[str, Any]],
    *,
    r1_thresholds: Sequence[float] | np.ndarray = R1_THRESHOLDS,
    map_thresholds: Sequence[float] | np.ndarray = MAP_THRESHOLDS,
    max_predictions: int | None = 10,
    missing: Missing = "error",
    decimals: int | None = None,
) -> dict[str, float]:
    """All moment-retrieval metrics of a QVHighlights-format submission (validated once).

    Args:
        predictions: records as in :func:`r1_at_iou`.
        ground_truth: records as in :func:`r1_at_iou`.
        r1_thresholds: thresholds of R1@IoU.
        map_thresholds: thresholds of mAP@IoU; ``"mAP"`` is their mean.
        max_predictions: windows per query kept for mAP.
        missing: policy for ground-truth queries without a prediction (see :func:`r1_at_iou`).
        decimals: round every value to this many decimals (the official tables use 2) after all averaging;
            None keeps full precision.

    Returns:
        ``{"R1@0.3", "R1@0.5", "R1@0.7", "mAP@0.5", ..., "mAP@0.95", "mAP"}`` in percent.
    """
    pred_by_qid, gt_by_qid, qids = _prepare(predictions, ground_truth, missing)
    metrics = _r1(pred_by_qid, gt_by_qid, qids, _clean_thresholds(r1_thresholds, "r1_thresholds"))
    metrics.update(
        _map(pred_by_qid, gt_by_qid, qids, _clean_thresholds(map_thresholds, "map_thresholds"), max_predictions)
    )
    logger.info("evaluated %d queries", len(qids))
    if decimals is not None:
        metrics = {key: round(value, decimals) for key, value in metrics.items()}
    return metrics


# ----------------------------------------------------------------------------------------------------------------
# Video corpus moment retrieval (TVR)


def vcmr_recall(
    predictions: Mapping[Hashable, Sequence[Sequence[Any]]],
    ground_truth: Mapping[Hashable, tuple[Hashable, Sequence[float]]],
    ks: Sequence[int] = VCMR_KS,
    ious: Sequence[float] = VCMR_IOUS,
    *,
    missing: Missing = "error",
) -> dict[str, float]:
    """VCMR, SVMR and VR recall at K (TVR conventions), in percent.

    - VCMR R@K,mu: some row among the first K has the ground-truth video and tIoU >= mu.
    - SVMR R@K,mu: the same among the first K rows of the ground-truth video (other videos' rows are dropped).
    - VR R@K: the ground-truth video is among the first K DISTINCT videos of the list (a video's later rows do not
      take a place; with one row per video this is simply the first K rows).

    Args:
        predictions: qid -> ranked rows ``(video_id, start, end[, score...])`` in seconds, best first (extra
            columns such as a score are ignored; the order is the ranking).
        ground_truth: qid -> ``(video_id, (start, end))`` in seconds.
        ks: cut-offs K.
        ious: tIoU thresholds mu.
        missing: policy for ground-truth queries without predictions, as in :func:`r1_at_iou`.

    Returns:
        ``{"VCMR-R@1-IoU0.5", ..., "SVMR-R@1-IoU0.5", ..., "VR-R@1", ...}``, unrounded.

    Raises:
        ValueError: on a malformed row (start > end, NaN, fewer than 3 columns) or a qid absent from the ground truth.
    """
    if not ks or any(int(k) < 1 for k in ks):
        raise ValueError(f"ks must be a non-empty list of positive cut-offs, got {list(ks)}")
    thresholds = _clean_thresholds(ious, "ious")
    gt_windows: dict[Hashable, tuple[Hashable, np.ndarray]] = {}
    for qid, entry in ground_truth.items():
        if not isinstance(entry, (list, tuple)) or len(entry) != 2:
            raise ValueError(f"ground truth of qid {qid!r} must be (video_id, (start, end)), got {entry!r}")
        gt_windows[qid] = (entry[0], _window_array([entry[1]], 2, f"ground truth of qid {qid!r}", "window"))
    for qid in predictions:
        if qid not in gt_windows:
            raise ValueError(f"predictions of qid {qid!r} have no ground truth{_qid_hint(qid, gt_windows)}")
    qids = _resolve_missing(predictions, list(gt_windows), missing)
    max_k = max(int(k) for k in ks)
    # per query: the 1-based position of the first correct row (inf when none) for each mode and threshold
    first_vcmr = np.full((len(qids), len(thresholds)), np.inf)  # (Nq, T)
    first_svmr = np.full((len(qids), len(thresholds)), np.inf)  # (Nq, T)
    first_vr = np.full(len(qids), np.inf)  # (Nq,)
    for position, qid in enumerate(qids):
        gt_video, gt_window = gt_windows[qid]
        rows = predictions.get(qid, ())
        where = f"predictions of qid {qid!r}"
        videos: list[Hashable] = []
        spans = []
        for index, row in enumerate(rows):
            if not isinstance(row, (list, tuple)) or len(row) < 3:
                raise ValueError(f"{where}: row {index} = {row!r} must be (video_id, start, end[, score])")
            spans.append(_window_array([row[1:3]], 2, where, f"row {index}")[0])
            videos.append(row[0])
        if not rows:
            continue
        on_video = np.array([video == gt_video for video in videos])  # (P,)
        iou = temporal_iou_matrix(np.stack(spans), gt_window)[:, 0]  # (P,)
        correct = on_video[:, None] & (iou[:, None] >= np.asarray(thresholds)[None, :])  # (P, T)
        ranks_all = np.arange(1, len(rows) + 1)  # (P,)
        ranks_svmr = np.cumsum(on_video)  # (P,) position among the ground-truth video's rows
        for t in range(len(thresholds)):
            hits = np.flatnonzero(correct[:, t])
            if hits.size:
                first_vcmr[position, t] = ranks_all[hits[0]]
                first_svmr[position, t] = ranks_svmr[hits[0]]
        seen: set[Hashable] = set()
        for video in videos:
            if video in seen:
                continue
            seen.add(video)
            if video == gt_video:
                first_vr[position] = len(seen)
                break
            if len(seen) >= max_k:
                break
    metrics: dict[str, float] = {}
    for name, first in (("VCMR", first_vcmr), ("SVMR", first_svmr)):
        for t, threshold in enumerate(thresholds):
            for k in ks:
                metrics[f"{name}-R@{int(k)}-IoU{_threshold_key(threshold)}"] = 100.0 * float(np.mean(first[:, t] <= k))
    for k in ks:
        metrics[f"VR-R@{int(k)}"] = 100.0 * float(np.mean(first_vr <= k))
    return metrics


# ----------------------------------------------------------------------------------------------------------------
# Command line


def main(argv: Sequence[str] | None = None) -> int:
    """Evaluate a QVHighlights-format submission; print the metrics JSON (and write it with ``--out``).

    Args:
        argv: arguments (default ``sys.argv[1:]``).

    Returns:
        The exit status (0).
    """
    parser = argparse.ArgumentParser(
        prog="python -m prvr.metrics.moments",
        description="Moment retrieval metrics (R1@IoU, mAP@IoU) of a JSONL submission; see docs/prediction_format.md",
    )
    parser.add_argument("--submission", required=True, type=Path, help="predictions JSONL, one record per query")
    parser.add_argument("--gt", required=True, type=Path, help="ground-truth JSONL with relevant_windows")
    parser.add_argument("--out", type=Path, default=None, help="also write the metrics JSON to this file")
    parser.add_argument("--max-predictions", type=int, default=10, help="windows per query kept for mAP")
    parser.add_argument(
        "--missing", choices=_MISSING_CHOICES, default="error", help="policy for ground-truth queries not predicted"
    )
    parser.add_argument("--decimals", type=int, default=2, help="rounding of the printed values")
    args = parser.parse_args(argv)
    metrics = moment_metrics(
        load_jsonl(args.submission),
        load_jsonl(args.gt),
        max_predictions=args.max_predictions,
        missing=args.missing,
        decimals=args.decimals,
    )
    text = json.dumps(metrics, indent=2)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n", encoding="utf-8")
    sys.stdout.write(text + "\n")
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    raise SystemExit(main())
