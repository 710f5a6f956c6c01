"""Span geometry: cw <-> se round trips, temporal IoU / gIoU hand cases and bounds, NMS, seconds, doctests."""

from __future__ import annotations

import doctest
import itertools

import pytest
import torch

import prvr.moments.spans as spans_module
import reference
from prvr.moments.spans import (
    generalized_temporal_iou,
    span_cw_to_se,
    span_se_to_cw,
    spans_to_seconds,
    temporal_iou,
    temporal_nms,
)


def _random_spans_se(generator: torch.Generator, shape: tuple[int, ...]) -> torch.Tensor:
    points = torch.rand(*shape, 2, generator=generator, dtype=torch.float64)  # (..., 2)
    return torch.sort(points, dim=-1).values  # start <= end


def test_doctests() -> None:
    result = doctest.testmod(spans_module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted >= 6
    assert result.failed == 0


@pytest.mark.parametrize("seed", [0, 1])
def test_cw_se_round_trips(seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    spans_se = _random_spans_se(generator, (3, 7))  # (B, Q, 2)
    torch.testing.assert_close(span_cw_to_se(span_se_to_cw(spans_se)), spans_se)
    spans_cw = torch.rand(5, 2, generator=generator, dtype=torch.float64)  # (Q, 2)
    torch.testing.assert_close(span_se_to_cw(span_cw_to_se(spans_cw)), spans_cw)
    assert span_cw_to_se(spans_cw).shape == spans_cw.shape


def test_conversion_values_and_shape_check() -> None:
    torch.testing.assert_close(span_cw_to_se(torch.tensor([0.5, 0.4])), torch.tensor([0.3, 0.7]))
    torch.testing.assert_close(span_se_to_cw(torch.tensor([0.2, 1.0])), torch.tensor([0.6, 0.8]))
    with pytest.raises(ValueError, match="last axis of size 2"):
        span_cw_to_se(torch.zeros(4, 3))


@pytest.mark.parametrize(
    ("a", "b", "expected_iou", "expected_union"),
    [
        ([0.0, 1.0], [2.0, 3.0], 0.0, 2.0),  # disjoint
        ([0.0, 4.0], [1.0, 2.0], 0.25, 4.0),  # nested
        ([1.0, 3.0], [1.0, 3.0], 1.0, 2.0),  # identical
        ([0.0, 1.0], [1.0, 2.0], 0.0, 2.0),  # touching
        ([0.0, 2.0], [1.0, 4.0], 0.25, 4.0),  # partial overlap
        ([1.0, 1.0], [1.0, 1.0], 0.0, 0.0),  # two identical points: defined as 0
    ],
)
def test_temporal_iou_hand_cases(a: list[float], b: list[float], expected_iou: float, expected_union: float) -> None:
    iou, union = temporal_iou(torch.tensor([a]), torch.tensor([b]))
    assert iou.shape == (1, 1)
    assert iou.item() == pytest.approx(expected_iou)
    assert union.item() == pytest.approx(expected_union)
    iou_swapped, _ = temporal_iou(torch.tensor([b]), torch.tensor([a]))
    assert iou_swapped.item() == pytest.approx(expected_iou)


def test_temporal_iou_matches_naive_pairwise() -> None:
    generator = torch.Generator().manual_seed(3)
    spans_a = _random_spans_se(generator, (6,))  # (N, 2)
    spans_b = _random_spans_se(generator, (4,))  # (M, 2)
    iou, _ = temporal_iou(spans_a, spans_b)
    assert iou.shape == (6, 4)
    for i, j in itertools.product(range(6), range(4)):
        assert iou[i, j].item() == pytest.approx(reference.span_iou(spans_a[i].tolist(), spans_b[j].tolist()))


def test_generalized_iou_bounds_and_cases() -> None:
    generator = torch.Generator().manual_seed(4)
    spans_a = _random_spans_se(generator, (50,))  # (N, 2)
    spans_b = _random_spans_se(generator, (40,))  # (M, 2)
    giou = generalized_temporal_iou(spans_a, spans_b)
    iou, _ = temporal_iou(spans_a, spans_b)
    assert giou.shape == (50, 40)
    assert bool((giou >= -1).all()) and bool((giou <= 1).all())
    assert bool((giou <= iou + 1e-12).all())
    overlapping = iou > 0
    torch.testing.assert_close(giou[overlapping], iou[overlapping])  # 1-D: hull == union when they overlap
    self_giou = generalized_temporal_iou(spans_a, spans_a).diagonal()  # (N,)
    torch.testing.assert_close(self_giou, torch.ones(50, dtype=torch.float64))
    # disjoint [0, 1] and [3, 4]: gap 2, hull 4 -> -0.5; far apart points tend to -1
    disjoint = generalized_temporal_iou(torch.tensor([[0.0, 1.0]]), torch.tensor([[3.0, 4.0]])).item()
    assert disjoint == pytest.approx(-0.5)
    far = generalized_temporal_iou(torch.tensor([[0.0, 0.0]]), torch.tensor([[1.0, 1.0]])).item()
    assert far == pytest.approx(-1.0)


def test_generalized_iou_has_gradients() -> None:
    spans_a = torch.tensor([[0.1, 0.5]], requires_grad=True)
    giou = generalized_temporal_iou(spans_a, torch.tensor([[0.3, 0.9]]))
    giou.sum().backward()
    assert spans_a.grad is not None and bool(torch.isfinite(spans_a.grad).all())


def test_nms_hand_case() -> None:
    spans = torch.tensor([[0.0, 10.0], [1.0, 10.0], [20.0, 30.0], [0.0, 9.0], [21.0, 30.0], [40.0, 41.0]])
    scores = torch.tensor([0.8, 0.9, 0.5, 0.7, 0.5, 0.1])
    # order 1, 0, 3, 2, 4, 5; 1 suppresses 0 (0.9) and 3 (0.8); 2 suppresses 4 (0.9); 5 is alone
    assert temporal_nms(spans, scores, threshold=0.5).tolist() == [1, 2, 5]
    # threshold 0.85: 0 (IoU 0.9 with 1) and 4 (IoU 0.9 with 2) are still suppressed, 3 (IoU 0.8) survives
    assert temporal_nms(spans, scores, threshold=0.85).tolist() == [1, 3, 2, 5]
    assert temporal_nms(spans, scores, threshold=1.0).tolist() == [1, 0, 3, 2, 4, 5]
    assert temporal_nms(spans[:0], scores[:0], threshold=0.5).tolist() == []


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_nms_matches_naive(seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    spans = _random_spans_se(generator, (30,))  # (Q, 2)
    scores = torch.randint(0, 5, (30,), generator=generator).double()  # many ties
    for threshold in (0.0, 0.3, 0.7):
        expected = reference.nms(spans.tolist(), scores.tolist(), threshold)
        assert temporal_nms(spans, scores, threshold).tolist() == expected


def test_spans_to_seconds_clamps_and_broadcasts() -> None:
    spans = torch.tensor([[[-0.2, 0.5], [0.9, 1.3]], [[0.0, 1.0], [0.25, 0.75]]])  # (B, Q, 2)
    seconds = spans_to_seconds(spans, torch.tensor([10.0, 100.0]))
    torch.testing.assert_close(seconds, torch.tensor([[[0.0, 5.0], [9.0, 10.0]], [[0.0, 100.0], [25.0, 75.0]]]))
    torch.testing.assert_close(spans_to_seconds(spans[0], 10.0), seconds[0])
    assert bool((seconds[..., 0] <= seconds[..., 1]).all())
    with pytest.raises(ValueError, match="prefix"):
        spans_to_seconds(spans, torch.tensor([1.0, 2.0, 3.0]))
    with pytest.raises(ValueError, match=">= 0"):
        spans_to_seconds(spans, -1.0)
