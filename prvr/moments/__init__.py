"""Moment geometry: span conversions, temporal IoU / gIoU, NMS (see :mod:`prvr.moments.spans`)."""

from __future__ import annotations

from prvr.moments.spans import (
    generalized_temporal_iou,
    span_cw_to_se,
    span_se_to_cw,
    spans_to_seconds,
    temporal_iou,
    temporal_nms,
)

__all__ = [
    "span_cw_to_se",
    "span_se_to_cw",
    "temporal_iou",
    "generalized_temporal_iou",
    "temporal_nms",
    "spans_to_seconds",
]
