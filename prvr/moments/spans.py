"""1-D span geometry (the temporal case of DETR box_ops): cw <-> se, temporal IoU / gIoU, NMS, seconds.

Conventions: ``_cw`` spans are normalised (centre, width), ``_se`` spans are (start, end), ``_sec`` spans are in
seconds. Shape letters: N and M span counts, Q span proposals, B videos, K kept spans. The last axis of every span
tensor has size 2.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "span_cw_to_se",
    "span_se_to_cw",
    "temporal_iou",
    "generalized_temporal_iou",
    "temporal_nms",
    "spans_to_seconds",
]


def _check_spans(spans: Tensor, name: str) -> None:
    if spans.dim() == 0 or spans.shape[-1] != 2:
        raise ValueError(f"{name} must have a last axis of size 2 (a span), got shape {tuple(spans.shape)}")


def span_cw_to_se(spans_cw: Tensor) -> Tensor:
    """(centre, width) -> (start, end), elementwise over leading axes.

    >>> span_cw_to_se(torch.tensor([[0.5, 0.2], [0.1, 0.2]]))
    tensor([[0.4000, 0.6000],
            [0.0000, 0.2000]])

    Args:
        spans_cw: (..., 2) spans as (centre, width).

    Returns:
        (..., 2) spans as (start, end) = (centre - width / 2, centre + width / 2); no clamping.
    """
    _check_spans(spans_cw, "spans_cw")
    centre, width = spans_cw.unbind(-1)  # (...), (...)
    return torch.stack([centre - 0.5 * width, centre + 0.5 * width], dim=-1)  # (..., 2)


def span_se_to_cw(spans_se: Tensor) -> Tensor:
    """(start, end) -> (centre, width), the inverse of :func:`span_cw_to_se`.

    >>> span_se_to_cw(torch.tensor([[0.4, 0.6], [0.0, 1.0]]))
    tensor([[0.5000, 0.2000],
            [0.5000, 1.0000]])

    Args:
        spans_se: (..., 2) spans as (start, end).

    Returns:
        (..., 2) spans as (centre, width) = ((start + end) / 2, end - start).
    """
    _check_spans(spans_se, "spans_se")
    start, end = spans_se.unbind(-1)  # (...), (...)
    return torch.stack([0.5 * (start + end), end - start], dim=-1)  # (..., 2)


def temporal_iou(spans_a_se: Tensor, spans_b_se: Tensor) -> tuple[Tensor, Tensor]:
    """Pairwise temporal IoU and union length of two sets of (start, end) spans.

    ``iou = max(0, min(end_a, end_b) - max(start_a, start_b)) / union`` with ``union = len_a + len_b - inter``.
    Where both spans have zero length (union 0) the IoU is defined as 0. Touching spans (end_a == start_b) have
    IoU 0; nested spans have IoU len_inner / len_outer.

    >>> iou, union = temporal_iou(torch.tensor([[0.0, 2.0]]), torch.tensor([[1.0, 3.0], [2.0, 4.0], [0.0, 2.0]]))
    >>> iou
    tensor([[0.3333, 0.0000, 1.0000]])
    >>> union
    tensor([[3., 4., 2.]])

    Args:
        spans_a_se: (N, 2) spans as (start, end) with start <= end.
        spans_b_se: (M, 2) spans as (start, end) with start <= end.

    Returns:
        ``(iou, union)``, both (N, M).
    """
    _check_spans(spans_a_se, "spans_a_se")
    _check_spans(spans_b_se, "spans_b_se")
    if spans_a_se.dim() != 2 or spans_b_se.dim() != 2:
        raise ValueError(
            f"temporal_iou takes (N, 2) and (M, 2) spans, got {tuple(spans_a_se.shape)} and "
            f"{tuple(spans_b_se.shape)}; flatten leading axes first"
        )
    length_a = spans_a_se[:, 1] - spans_a_se[:, 0]  # (N,)
    length_b = spans_b_se[:, 1] - spans_b_se[:, 0]  # (M,)
    left = torch.maximum(spans_a_se[:, None, 0], spans_b_se[None, :, 0])  # (N, M)
    right = torch.minimum(spans_a_se[:, None, 1], spans_b_se[None, :, 1])  # (N, M)
    inter = (right - left).clamp(min=0)  # (N, M)
    union = length_a[:, None] + length_b[None, :] - inter  # (N, M)
    iou = torch.where(union > 0, inter / union.clamp(min=torch.finfo(union.dtype).tiny), torch.zeros_like(inter))
    return iou, union


def generalized_temporal_iou(spans_a_se: Tensor, spans_b_se: Tensor) -> Tensor:
    """Pairwise generalised temporal IoU (Rezatofighi et al., CVPR 2019, in 1-D), in [-1, 1].

    ``giou = iou - (hull - union) / hull`` with ``hull = max(end) - min(start)``. Overlapping spans have
    giou == iou; disjoint spans have giou = -gap / hull < 0. A zero-length hull gives giou 0.

    >>> generalized_temporal_iou(torch.tensor([[0.0, 1.0]]), torch.tensor([[0.0, 1.0], [2.0, 3.0], [0.5, 1.5]]))
    tensor([[ 1.0000, -0.3333,  0.3333]])

    Args:
        spans_a_se: (N, 2) spans as (start, end) with start <= end.
        spans_b_se: (M, 2) spans as (start, end) with start <= end.

    Returns:
        (N, M) generalised IoU.
    """
    iou, union = temporal_iou(spans_a_se, spans_b_se)  # (N, M), (N, M)
    hull_left = torch.minimum(spans_a_se[:, None, 0], spans_b_se[None, :, 0])  # (N, M)
    hull_right = torch.maximum(spans_a_se[:, None, 1], spans_b_se[None, :, 1])  # (N, M)
    hull = (hull_right - hull_left).clamp(min=0)  # (N, M)
    penalty = torch.where(
        hull > 0, (hull - union) / hull.clamp(min=torch.finfo(hull.dtype).tiny), torch.zeros_like(hull)
    )
    return iou - penalty


def temporal_nms(spans_se: Tensor, scores: Tensor, threshold: float) -> Tensor:
    """Greedy temporal non-maximum suppression.

    Walks the spans by descending score (ties keep the input order) and drops every later span whose IoU with an
    already kept span is strictly greater than ``threshold`` (the torchvision ``nms`` rule).

    >>> spans = torch.tensor([[0.0, 1.0], [0.1, 1.0], [2.0, 3.0], [0.0, 0.9]])
    >>> temporal_nms(spans, torch.tensor([0.9, 0.95, 0.5, 0.1]), threshold=0.5)
    tensor([1, 2])

    Args:
        spans_se: (Q, 2) spans as (start, end).
        scores: (Q,) scores, higher is better.
        threshold: IoU above which a lower-scored span is suppressed (1.0 keeps every span; 0.0 drops every span
            that overlaps a kept one).

    Returns:
        (K,) long indices into ``spans_se`` of the kept spans, sorted by descending score.
    """
    _check_spans(spans_se, "spans_se")
    if spans_se.dim() != 2 or scores.shape != spans_se.shape[:1]:
        raise ValueError(
            f"temporal_nms takes spans (Q, 2) and scores (Q,), got {tuple(spans_se.shape)} and {tuple(scores.shape)}"
        )
    if bool(torch.isnan(scores).any()):
        raise ValueError("scores contain NaN; NMS order would be undefined (check the model outputs)")
    order = torch.sort(scores, descending=True, stable=True).indices  # (Q,)
    iou, _ = temporal_iou(spans_se[order], spans_se[order])  # (Q, Q) in score order
    suppressed = torch.zeros(order.numel(), dtype=torch.bool, device=spans_se.device)  # (Q,)
    keep: list[int] = []
    for position in range(order.numel()):
        if bool(suppressed[position]):
            continue
        keep.append(position)
        suppressed |= iou[position] > threshold
    kept_positions = torch.tensor(keep, dtype=torch.long, device=spans_se.device)  # (K,)
    return order[kept_positions]


def spans_to_seconds(spans_se: Tensor, duration: float | Tensor) -> Tensor:
    """Normalised (start, end) spans -> seconds, clamped to [0, duration].

    >>> spans_to_seconds(torch.tensor([[-0.1, 0.5], [0.25, 1.2]]), 60.0)
    tensor([[ 0., 30.],
            [15., 60.]])

    Args:
        spans_se: (..., 2) spans as normalised (start, end), e.g. (B, Q, 2).
        duration: video length in seconds: a float, or a tensor whose shape is a prefix of
            ``spans_se.shape[:-1]`` (e.g. (B,) for (B, Q, 2) spans).

    Returns:
        (..., 2) spans in seconds (``_sec``), each coordinate clamped to [0, duration]; start <= end is preserved.
    """
    _check_spans(spans_se, "spans_se")
    duration_tensor = torch.as_tensor(duration, dtype=spans_se.dtype, device=spans_se.device)
    leading = spans_se.shape[:-1]
    if duration_tensor.dim() > len(leading) or tuple(duration_tensor.shape) != tuple(leading[: duration_tensor.dim()]):
        raise ValueError(
            f"duration shape {tuple(duration_tensor.shape)} must be a prefix of the spans' leading shape "
            f"{tuple(leading)} (e.g. (B,) for (B, Q, 2) spans)"
        )
    if bool((duration_tensor < 0).any()) or bool(torch.isnan(duration_tensor).any()):
        raise ValueError("duration must be >= 0 seconds and not NaN")
    duration_tensor = duration_tensor.reshape(
        tuple(duration_tensor.shape) + (1,) * (spans_se.dim() - duration_tensor.dim())
    )  # (..., 1, ..., 1) broadcastable against (..., 2)
    spans_sec = spans_se * duration_tensor  # (..., 2)
    return torch.minimum(spans_sec.clamp(min=0), duration_tensor)
