"""Hungarian matching between predicted spans and ground-truth spans (the DETR matcher, in 1-D).

Shape letters: B batch, Q span proposals, G ground-truth spans of one sample.

cost(q, g) = cost_l1 * |span_q - span_g|_1 (centre, width) - cost_giou * gIoU(q, g) - cost_class * p_fg(q);
each sample is solved on its own with ``scipy.optimize.linear_sum_assignment`` (the batched call equals the
per-sample calls by construction, and a sample without targets gets an empty match).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from prvr.moments.spans import generalized_temporal_iou, span_cw_to_se

__all__ = ["HungarianMatcher", "Match"]

Match = tuple[Tensor, Tensor]  # (prediction indices (M,), target indices (M,)), both long


class HungarianMatcher:
    """One-to-one assignment of predictions to targets minimising the weighted L1 / gIoU / class cost.

    Args:
        cost_l1: weight of the L1 distance between (centre, width) spans.
        cost_giou: weight of the negative generalised temporal IoU.
        cost_class: weight of the negative foreground probability.
    """

    def __init__(self, cost_l1: float = 10.0, cost_giou: float = 1.0, cost_class: float = 4.0) -> None:
        if cost_l1 == 0 and cost_giou == 0 and cost_class == 0:
            raise ValueError("all matching costs are 0; give at least one of cost_l1, cost_giou, cost_class > 0")
        self.cost_l1 = cost_l1
        self.cost_giou = cost_giou
        self.cost_class = cost_class

    @torch.no_grad()
    def cost_matrix(self, spans_cw: Tensor, logits: Tensor, targets_cw: Tensor) -> Tensor:
        """The (Q, G) matching cost of one sample.

        Args:
            spans_cw: (Q, 2) predicted (centre, width) in [0, 1].
            logits: (Q, 2) class logits, index 0 = foreground, 1 = background.
            targets_cw: (G, 2) ground-truth (centre, width).

        Returns:
            (Q, G) float cost.
        """
        p_fg = logits.float().softmax(-1)[:, 0]  # (Q,)
        l1 = torch.cdist(spans_cw.float(), targets_cw.float(), p=1)  # (Q, G)
        giou = generalized_temporal_iou(span_cw_to_se(spans_cw.float()), span_cw_to_se(targets_cw.float()))  # (Q, G)
        return self.cost_l1 * l1 - self.cost_giou * giou - self.cost_class * p_fg[:, None]

    @torch.no_grad()
    def match_one(self, spans_cw: Tensor, logits: Tensor, targets_cw: Tensor) -> Match:
        """Match one sample: (Q, 2), (Q, 2), (G, 2) -> indices of min(Q, G) pairs, sorted by prediction index."""
        device = spans_cw.device
        if targets_cw.numel() == 0 or spans_cw.shape[0] == 0:
            empty = torch.zeros(0, dtype=torch.long, device=device)
            return empty, empty.clone()
        cost = self.cost_matrix(spans_cw, logits, targets_cw).cpu().numpy()  # (Q, G)
        if not np.isfinite(cost).all():
            raise ValueError("the matching cost holds NaN or inf; check the predicted spans and the targets")
        rows, cols = linear_sum_assignment(cost)
        return (torch.as_tensor(rows, dtype=torch.long, device=device),
                torch.as_tensor(cols, dtype=torch.long, device=device))

    def __call__(self, spans_cw: Tensor, logits: Tensor, targets_cw: list[Tensor]) -> list[Match]:
        """Match a batch sample by sample.

        Args:
            spans_cw: (B, Q, 2) predicted spans.
            logits: (B, Q, 2) class logits.
            targets_cw: B tensors (G_b, 2) of ground-truth spans (G_b may be 0).

        Returns:
            B pairs ``(prediction indices, target indices)``.
        """
        if spans_cw.shape[0] != len(targets_cw):
            raise ValueError(f"{spans_cw.shape[0]} predictions but {len(targets_cw)} target lists")
        return [self.match_one(spans_cw[b], logits[b], targets_cw[b]) for b in range(len(targets_cw))]
