"""The set criterion of the span denoisers and the weighted sum of named losses.

Shape letters: B batch, Q span proposals, G ground-truth spans of one sample, F frames.

For every decoder layer: Hungarian-match the predictions to the targets, then L1 and (1 - gIoU) over matched pairs
(averaged over the number of targets) and a 2-class cross-entropy where unmatched proposals are background with
class weight ``background_weight``; the per-layer losses are summed (DETR's auxiliary losses). Keys are
``loss_l1``, ``loss_giou``, ``loss_ce``; :func:`weighted_sum` combines any ``loss_<name>`` dict with weights by name.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from prvr.moments.matcher import HungarianMatcher
from prvr.moments.spans import generalized_temporal_iou, span_cw_to_se

__all__ = ["SetCriterion", "weighted_sum"]

FOREGROUND, BACKGROUND = 0, 1


class SetCriterion:
    """L1 + gIoU + CE of matched span sets, summed over decoder layers.

    Args:
        matcher: the Hungarian matcher.
        background_weight: class weight of the background class in the cross-entropy (DETR's eos_coef).
    """

    def __init__(self, matcher: HungarianMatcher, background_weight: float = 0.1) -> None:
        if not 0.0 < background_weight <= 1.0:
            raise ValueError(f"background_weight must lie in (0, 1], got {background_weight}")
        self.matcher = matcher
        self.class_weight = torch.tensor([1.0, background_weight])

    def layer_losses(self, spans_cw: Tensor, logits: Tensor, targets_cw: list[Tensor]) -> dict[str, Tensor]:
        """Losses of one layer's predictions.

        Args:
            spans_cw: (B, Q, 2) predicted spans in [0, 1].
            logits: (B, Q, 2) class logits (0 = foreground).
            targets_cw: B tensors (G_b, 2).

        Returns:
            ``{"loss_l1", "loss_giou", "loss_ce"}`` scalars.
        """
        matches = self.matcher(spans_cw.detach(), logits.detach(), targets_cw)
        batch_index = torch.cat([torch.full_like(pred, b) for b, (pred, _) in enumerate(matches)])  # (M,)
        pred_index = torch.cat([pred for pred, _ in matches])  # (M,)
        matched_pred = spans_cw[batch_index, pred_index]  # (M, 2)
        matched_target = torch.cat([targets_cw[b][tgt] for b, (_, tgt) in enumerate(matches)]).to(spans_cw)  # (M, 2)
        num_targets = max(sum(int(t.shape[0]) for t in targets_cw), 1)
        if matched_pred.shape[0] > 0:
            loss_l1 = F.l1_loss(matched_pred, matched_target, reduction="sum") / num_targets
            giou = torch.diag(generalized_temporal_iou(span_cw_to_se(matched_pred), span_cw_to_se(matched_target)))
            loss_giou = (1.0 - giou).sum() / num_targets
        else:
            loss_l1 = spans_cw.sum() * 0.0
            loss_giou = spans_cw.sum() * 0.0
        labels = torch.full(logits.shape[:2], BACKGROUND, dtype=torch.long, device=logits.device)  # (B, Q)
        labels[batch_index, pred_index] = FOREGROUND
        loss_ce = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), weight=self.class_weight.to(logits))
        return {"loss_l1": loss_l1, "loss_giou": loss_giou, "loss_ce": loss_ce}

    def __call__(self, layer_spans: list[Tensor], layer_logits: list[Tensor],
                 targets_cw: list[Tensor]) -> dict[str, Tensor]:
        """Sum of :meth:`layer_losses` over the decoder layers (lists of (B, Q, 2) tensors, one per layer)."""
        if len(layer_spans) != len(layer_logits) or not layer_spans:
            raise ValueError("give one (spans, logits) pair per decoder layer (at least one)")
        total: dict[str, Tensor] = {}
        for spans_cw, logits in zip(layer_spans, layer_logits):
            for key, value in self.layer_losses(spans_cw, logits, targets_cw).items():
                total[key] = total[key] + value if key in total else value
        return total


def weighted_sum(losses: dict[str, Tensor], weights: dict[str, float]) -> Tensor:
    """sum_name weights[name] * losses["loss_" + name]; a loss without a weight (or weight 0) is left out.

    Raises:
        ValueError: a loss key does not start with ``loss_``.
    """
    total: Tensor | None = None
    for key, value in losses.items():
        if not key.startswith("loss_"):
            raise ValueError(f"loss keys must look like loss_<name>, got {key!r}")
        weight = weights.get(key[len("loss_"):], 0.0)
        if weight:
            total = weight * value if total is None else total + weight * value
    if total is None:
        raise ValueError(f"no loss has a non-zero weight: losses {sorted(losses)}, weights {weights}")
    return total
