"""Moment metrics: R1@IoU, mAP@IoU and VCMR/SVMR/VR against naive references, hand cases, errors, CLI, golden file."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import reference
from prvr.metrics.moments import (
    MAP_THRESHOLDS,
    average_precision,
    load_jsonl,
    main,
    map_at_iou,
    moment_metrics,
    r1_at_iou,
    temporal_iou_matrix,
    vcmr_recall,
)

QVHIGHLIGHTS = Path(__file__).resolve().parents[2] / "shared" / "data" / "qvhighlights"


# ---------------------------------------------------------------------------------------------------------------
# random cases (the naive references, written from docs/design.md §4, are in reference.py)


def _random_case(seed: int, num_queries: int = 40) -> tuple[list[dict], list[dict]]:
    """QVHighlights-like records on a 2-second grid (exact-threshold IoUs are common) with many tied scores."""
    rng = random.Random(seed)
    preds, gts = [], []
    for qid in range(num_queries):
        duration = 2 * rng.randint(10, 40)

        def window(duration: int = duration) -> list[float]:
            start = 2 * rng.randint(0, duration // 2 - 1)
            end = 2 * rng.randint(start // 2 + 1, duration // 2)
            return [float(start), float(end)]

        gts.append(
            {
                "qid": qid,
                "vid": f"v{qid}",
                "duration": duration,
                "relevant_windows": [window() for _ in range(rng.randint(1, 4))],
            }
        )
        windows = [window() + [rng.choice([0.1, 0.5, 0.5, 0.9])] for _ in range(rng.randint(0, 14))]
        preds.append({"qid": qid, "vid": f"v{qid}", "pred_relevant_windows": windows})
    return preds, gts


# ---------------------------------------------------------------------------------------------------------------
# R1 and mAP


def test_temporal_iou_matrix_hand_cases() -> None:
    iou = temporal_iou_matrix(np.array([[0.0, 2.0, 0.9]]), np.array([[0, 2], [2, 4], [1, 3], [0, 8], [5, 6]]))
    np.testing.assert_allclose(iou, [[1.0, 0.0, 1 / 3, 0.25, 0.0]])
    assert temporal_iou_matrix(np.array([[1.0, 1.0]]), np.array([[1.0, 1.0]]))[0, 0] == 0.0


def test_r1_uses_first_listed_window_and_best_overlapping_gt() -> None:
    gts = [
        {"qid": "a", "relevant_windows": [[0, 10]]},
        {"qid": "b", "relevant_windows": [[0, 4], [10, 20]]},
        {"qid": "c", "relevant_windows": [[0, 10]]},
    ]
    preds = [
        {"qid": "a", "pred_relevant_windows": [[0, 5, 0.1], [0, 10, 0.9]]},  # first listed: IoU exactly 0.5
        {"qid": "b", "pred_relevant_windows": [[10, 19, 0.3]]},  # best GT is the second: IoU 0.9
        {"qid": "c", "pred_relevant_windows": []},  # no prediction: miss
    ]
    metrics = r1_at_iou(preds, gts, thresholds=(0.5, 0.7, 0.9, 0.95))
    assert metrics == pytest.approx({"R1@0.5": 200 / 3, "R1@0.7": 100 / 3, "R1@0.9": 100 / 3, "R1@0.95": 0.0})


def test_average_precision_hand_case_several_gt_windows() -> None:
    gt = [[0, 10], [20, 30]]
    preds = [[0, 10, 0.9], [1, 10, 0.8], [20, 29, 0.7]]  # TP, FP (its GT is taken, the other has IoU 0), TP
    # precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1 -> AP = 1/2 * 1 + 1/2 * 2/3
    expected = 0.5 + 0.5 * 2 / 3
    metrics = map_at_iou(
        [{"qid": 1, "pred_relevant_windows": preds}], [{"qid": 1, "relevant_windows": gt}], thresholds=(0.5, 0.95)
    )
    assert metrics["mAP@0.5"] == pytest.approx(100 * expected)
    assert metrics["mAP@0.95"] == pytest.approx(100 * 0.5)  # [20, 29] has IoU 0.9 < 0.95: only the first hits
    assert metrics["mAP"] == pytest.approx(100 * (expected + 0.5) / 2)
    iou = temporal_iou_matrix(np.array(preds), np.array(gt))
    np.testing.assert_allclose(average_precision(iou, [0.5]), [expected])
    np.testing.assert_allclose(average_precision(iou[:0], [0.5, 0.7]), [0.0, 0.0])


def test_map_ties_in_score_keep_listed_order() -> None:
    gts = [{"qid": 1, "relevant_windows": [[0, 10]]}]
    fp_first = [{"qid": 1, "pred_relevant_windows": [[50, 60, 0.5], [0, 10, 0.5]]}]
    tp_first = [{"qid": 1, "pred_relevant_windows": [[0, 10, 0.5], [50, 60, 0.5]]}]
    assert map_at_iou(fp_first, gts, thresholds=(0.5,))["mAP@0.5"] == pytest.approx(50.0)
    assert map_at_iou(tp_first, gts, thresholds=(0.5,))["mAP@0.5"] == pytest.approx(100.0)
    # the score, not the listed order, decides when scores differ
    by_score = [{"qid": 1, "pred_relevant_windows": [[50, 60, 0.1], [0, 10, 0.9]]}]
    assert map_at_iou(by_score, gts, thresholds=(0.5,))["mAP@0.5"] == pytest.approx(100.0)


def test_map_truncates_to_first_listed_before_sorting() -> None:
    gts = [{"qid": 1, "relevant_windows": [[0, 10]]}]
    windows = [[50, 60, 0.5]] * 2 + [[0, 10, 0.99]]  # the hit is listed third, with the best score
    preds = [{"qid": 1, "pred_relevant_windows": windows}]
    assert map_at_iou(preds, gts, thresholds=(0.5,), max_predictions=2)["mAP@0.5"] == 0.0
    assert map_at_iou(preds, gts, thresholds=(0.5,), max_predictions=3)["mAP@0.5"] == pytest.approx(100.0)
    assert map_at_iou(preds, gts, thresholds=(0.5,), max_predictions=None)["mAP@0.5"] == pytest.approx(100.0)


def test_arange_thresholds_do_not_move_exact_boundaries() -> None:
    gts = [{"qid": 1, "relevant_windows": [[0, 10]]}]
    preds = [{"qid": 1, "pred_relevant_windows": [[0, 7, 1.0]]}]  # IoU exactly 0.7
    assert np.arange(0.5, 0.96, 0.05)[4] > 0.7  # the drift this guards against
    r1 = r1_at_iou(preds, gts, thresholds=np.arange(0.5, 0.96, 0.05))
    assert r1["R1@0.7"] == 100.0 and r1["R1@0.75"] == 0.0
    assert map_at_iou(preds, gts, thresholds=np.arange(0.5, 0.96, 0.05))["mAP@0.7"] == 100.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_match_naive_reference(seed: int) -> None:
    preds, gts = _random_case(seed)
    metrics = moment_metrics(preds, gts)
    for threshold in (0.3, 0.5, 0.7):
        assert metrics[f"R1@{threshold:g}"] == pytest.approx(reference.moment_r1(preds, gts, threshold), abs=1e-9)
    per_threshold = []
    for threshold in MAP_THRESHOLDS:
        expected = reference.moment_map(preds, gts, threshold)
        per_threshold.append(expected)
        assert metrics[f"mAP@{threshold:g}"] == pytest.approx(expected, abs=1e-9)
    assert metrics["mAP"] == pytest.approx(sum(per_threshold) / len(per_threshold), abs=1e-9)
    assert 0.0 < metrics["mAP@0.5"] < 100.0  # the case is not degenerate


def test_decimals_rounds_at_the_end() -> None:
    preds, gts = _random_case(5, num_queries=7)
    full = moment_metrics(preds, gts)
    rounded = moment_metrics(preds, gts, decimals=2)
    assert rounded == {key: round(value, 2) for key, value in full.items()}
    assert rounded.keys() >= {"R1@0.3", "R1@0.5", "R1@0.7", "mAP@0.5", "mAP@0.75", "mAP"}


def test_missing_queries_policy() -> None:
    gts = [{"qid": 1, "relevant_windows": [[0, 10]]}, {"qid": 2, "relevant_windows": [[0, 10]]}]
    preds = [{"qid": 1, "pred_relevant_windows": [[0, 10, 1.0]]}]
    with pytest.raises(ValueError, match="no prediction"):
        moment_metrics(preds, gts)
    assert moment_metrics(preds, gts, missing="miss")["R1@0.5"] == pytest.approx(50.0)
    assert moment_metrics(preds, gts, missing="miss")["mAP"] == pytest.approx(50.0)
    assert moment_metrics(preds, gts, missing="skip")["R1@0.5"] == pytest.approx(100.0)
    with pytest.raises(ValueError, match="missing must be one of"):
        moment_metrics(preds, gts, missing="ignore")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"pred_relevant_windows": [[0, 1, 0.5]]}, r"prediction line 2: missing 'qid'"),
        ({"qid": 2, "pred_relevant_windows": [[5, 1, 0.5]]}, r"prediction line 2: .*start > end"),
        ({"qid": 2, "pred_relevant_windows": [[0, math.nan, 0.5]]}, r"prediction line 2: .*NaN"),
        ({"qid": 2, "pred_relevant_windows": [[0, 1, math.inf]]}, r"prediction line 2: .*infinity"),
        ({"qid": 9, "pred_relevant_windows": [[0, 1, 0.5]]}, r"prediction line 2: qid 9 is not in the ground truth"),
        ({"qid": "2", "pred_relevant_windows": [[0, 1, 0.5]]}, r"line 2: .*int vs str"),
        ({"qid": 1, "pred_relevant_windows": [[0, 1, 0.5]]}, r"prediction line 2: duplicate qid 1"),
        ({"qid": 2, "pred_relevant_windows": [[0, 1]]}, r"prediction line 2: .*\[start, end, score\]"),
        ({"qid": 2, "pred_relevant_windows": [[0, "x", 1]]}, r"prediction line 2: .*non-number"),
        ({"qid": 2}, r"prediction line 2 \(qid 2\): missing 'pred_relevant_windows'"),
        ({"qid": 2, "vid": "other", "pred_relevant_windows": []}, r"prediction line 2 \(qid 2\): vid 'other'"),
    ],
)
def test_malformed_predictions_name_the_line(record: dict[str, Any], message: str) -> None:
    gts = [{"qid": 1, "vid": "a", "relevant_windows": [[0, 10]]}, {"qid": 2, "vid": "b", "relevant_windows": [[0, 10]]}]
    preds = [{"qid": 1, "pred_relevant_windows": [[0, 10, 1.0]]}, record]
    with pytest.raises(ValueError, match=message):
        moment_metrics(preds, gts, missing="miss")


def test_malformed_ground_truth() -> None:
    preds = [{"qid": 1, "pred_relevant_windows": []}]
    with pytest.raises(ValueError, match="ground truth line 1 .*empty"):
        moment_metrics(preds, [{"qid": 1, "relevant_windows": []}])
    with pytest.raises(ValueError, match="ground truth line 1 .*missing 'relevant_windows'"):
        moment_metrics(preds, [{"qid": 1}])
    with pytest.raises(ValueError, match="ground truth line 2: duplicate qid 1"):
        moment_metrics(preds, [{"qid": 1, "relevant_windows": [[0, 1]]}] * 2)


def test_load_jsonl_lines(tmp_path: Path) -> None:
    good = tmp_path / "good.jsonl"
    good.write_text('{"qid": 1}\n{"qid": 2}\n\n', encoding="utf-8")
    assert load_jsonl(good) == [{"qid": 1}, {"qid": 2}]
    blank = tmp_path / "blank.jsonl"
    blank.write_text('{"qid": 1}\n\n{"qid": 2}\n', encoding="utf-8")
    with pytest.raises(ValueError, match="line 2 is blank"):
        load_jsonl(blank)
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"qid": 1}\n{"qid": \n', encoding="utf-8")
    with pytest.raises(ValueError, match="line 2 is not valid JSON"):
        load_jsonl(broken)
    not_object = tmp_path / "list.jsonl"
    not_object.write_text("[1, 2]\n", encoding="utf-8")
    with pytest.raises(ValueError, match="line 1 must be a JSON object"):
        load_jsonl(not_object)


def test_main_prints_and_writes_metrics(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    preds, gts = _random_case(7, num_queries=10)
    submission, gt_file, out = tmp_path / "preds.jsonl", tmp_path / "gt.jsonl", tmp_path / "sub" / "metrics.json"
    submission.write_text("".join(json.dumps(p) + "\n" for p in preds), encoding="utf-8")
    gt_file.write_text("".join(json.dumps(g) + "\n" for g in gts), encoding="utf-8")
    assert main(["--submission", str(submission), "--gt", str(gt_file), "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(out.read_text(encoding="utf-8"))
    assert printed == moment_metrics(preds, gts, decimals=2)


@pytest.mark.skipif(not (QVHIGHLIGHTS / "sample_val_preds.jsonl").exists(), reason="shared QVHighlights data absent")
def test_golden_qvhighlights_sample_predictions() -> None:
    preds = load_jsonl(QVHIGHLIGHTS / "sample_val_preds.jsonl")
    gts = load_jsonl(QVHIGHLIGHTS / "highlight_val_release.jsonl")
    metrics = moment_metrics(preds, gts, decimals=2)
    expected = {"R1@0.5": 53.94, "R1@0.7": 34.84, "mAP": 32.20, "mAP@0.5": 54.96, "mAP@0.75": 31.01}
    for key, value in expected.items():
        assert abs(metrics[key] - value) <= 0.01 + 1e-9, (key, metrics[key], value)
    official = json.loads((QVHIGHLIGHTS / "sample_val_preds_metrics_raw.json").read_text(encoding="utf-8"))["full"]
    r1_all = r1_at_iou(preds, gts, thresholds=MAP_THRESHOLDS)
    for threshold in MAP_THRESHOLDS:  # every threshold of the official file, exactly after rounding
        assert round(metrics[f"mAP@{threshold:g}"], 2) == official["MR-mAP"][f"{threshold:g}"]
        assert round(r1_all[f"R1@{threshold:g}"], 2) == official["MR-R1"][f"{threshold:g}"]


# ---------------------------------------------------------------------------------------------------------------
# VCMR / SVMR / VR


def test_vcmr_hand_case() -> None:
    ground_truth = {"q1": ("v1", (10.0, 20.0)), "q2": ("v2", (0.0, 10.0)), "q3": ("v3", (0.0, 10.0))}
    predictions = {
        # VCMR: first correct row is the 3rd (IoU 0.9); SVMR: 2nd row of v1; VR: v1 is the 2nd distinct video
        "q1": [("v2", 10.0, 20.0, 0.9), ("v1", 0.0, 5.0, 0.8), ("v1", 11.0, 20.0, 0.7), ("v3", 0.0, 1.0, 0.1)],
        # IoU 0.6: a hit at 0.5 only
        "q2": [("v2", 0.0, 6.0)],
        # the ground-truth video is the 5th row but the 3rd distinct video
        "q3": [("v1", 0.0, 10.0), ("v1", 0.0, 10.0), ("v1", 1.0, 2.0), ("v2", 0.0, 1.0), ("v3", 0.0, 10.0)],
    }
    metrics = vcmr_recall(predictions, ground_truth, ks=(1, 2, 3, 5), ious=(0.5, 0.7))
    third = 100 / 3
    expected = {
        "VCMR-R@1-IoU0.5": third,
        "VCMR-R@2-IoU0.5": third,
        "VCMR-R@3-IoU0.5": 2 * third,
        "VCMR-R@5-IoU0.5": 100.0,
        "VCMR-R@1-IoU0.7": 0.0,
        "VCMR-R@2-IoU0.7": 0.0,
        "VCMR-R@3-IoU0.7": third,
        "VCMR-R@5-IoU0.7": 2 * third,
        "SVMR-R@1-IoU0.5": 2 * third,
        "SVMR-R@2-IoU0.5": 100.0,
        "SVMR-R@3-IoU0.5": 100.0,
        "SVMR-R@5-IoU0.5": 100.0,
        "SVMR-R@1-IoU0.7": third,
        "SVMR-R@2-IoU0.7": 2 * third,
        "SVMR-R@3-IoU0.7": 2 * third,
        "SVMR-R@5-IoU0.7": 2 * third,
        "VR-R@1": third,
        "VR-R@2": 2 * third,
        "VR-R@3": 100.0,
        "VR-R@5": 100.0,
    }
    assert metrics.keys() == expected.keys()
    for key, value in expected.items():
        assert metrics[key] == pytest.approx(value), key


@pytest.mark.parametrize("seed", [0, 1])
def test_vcmr_matches_naive_reference(seed: int) -> None:
    rng = random.Random(seed)
    ground_truth, predictions = {}, {}
    for qid in range(30):
        start = 2.0 * rng.randint(0, 20)
        ground_truth[qid] = (f"v{rng.randint(0, 5)}", (start, start + 2.0 * rng.randint(1, 10)))
        rows = []
        for _ in range(rng.randint(0, 25)):
            row_start = 2.0 * rng.randint(0, 25)
            rows.append((f"v{rng.randint(0, 5)}", row_start, row_start + 2.0 * rng.randint(0, 10), rng.random()))
        predictions[qid] = rows
    ks, ious = (1, 5, 10, 100), (0.5, 0.7)
    metrics = vcmr_recall(predictions, ground_truth, ks=ks, ious=ious)
    for k in ks:
        for mu in ious:
            vcmr, svmr, vr = reference.vcmr_metrics(predictions, ground_truth, k, mu)
            assert metrics[f"VCMR-R@{k}-IoU{mu:g}"] == pytest.approx(vcmr)
            assert metrics[f"SVMR-R@{k}-IoU{mu:g}"] == pytest.approx(svmr)
            assert metrics[f"VR-R@{k}"] == pytest.approx(vr)
    assert 0 < metrics["VCMR-R@100-IoU0.5"] < 100


def test_vcmr_errors_and_missing() -> None:
    ground_truth = {"q1": ("v1", (0.0, 10.0)), "q2": ("v1", (0.0, 10.0))}
    with pytest.raises(ValueError, match="no prediction"):
        vcmr_recall({"q1": [("v1", 0.0, 10.0)]}, ground_truth)
    assert vcmr_recall({"q1": [("v1", 0.0, 10.0)]}, ground_truth, missing="miss")["VR-R@1"] == pytest.approx(50.0)
    with pytest.raises(ValueError, match="start > end"):
        vcmr_recall({"q1": [("v1", 5.0, 1.0)], "q2": []}, ground_truth)
    with pytest.raises(ValueError, match="NaN"):
        vcmr_recall({"q1": [("v1", math.nan, 1.0)], "q2": []}, ground_truth)
    with pytest.raises(ValueError, match="no ground truth"):
        vcmr_recall({"q9": []}, ground_truth, missing="miss")
    with pytest.raises(ValueError, match="video_id, start, end"):
        vcmr_recall({"q1": [("v1", 0.0)], "q2": []}, ground_truth)
