"""Hungarian matcher and set criterion of the moment denoiser."""

from __future__ import annotations

import itertools

import pytest
import torch

from prvr.moments.criterion import SetCriterion, weighted_sum
from prvr.moments.matcher import HungarianMatcher


def _random_case(seed: int, batch: int = 4, queries: int = 5):
    generator = torch.Generator().manual_seed(seed)
    spans = torch.rand(batch, queries, 2, generator=generator) * 0.5 + 0.1
    logits = torch.randn(batch, queries, 2, generator=generator)
    targets = [torch.rand(g, 2, generator=generator) * 0.5 + 0.1 for g in (1, 3, 0, 5)][:batch]
    return spans, logits, targets


def test_batched_equals_per_sample_and_empty_targets() -> None:
    spans, logits, targets = _random_case(0)
    matcher = HungarianMatcher(10.0, 1.0, 4.0)
    batched = matcher(spans, logits, targets)
    for b, (pred, tgt) in enumerate(batched):
        single = matcher.match_one(spans[b], logits[b], targets[b])
        assert torch.equal(pred, single[0]) and torch.equal(tgt, single[1])
        assert len(pred) == min(spans.shape[1], targets[b].shape[0])
    assert batched[2][0].numel() == 0 and batched[2][1].numel() == 0


def test_matching_is_the_brute_force_optimum() -> None:
    spans, logits, targets = _random_case(1)
    matcher = HungarianMatcher(10.0, 1.0, 4.0)
    for b in (0, 1, 3):
        cost = matcher.cost_matrix(spans[b], logits[b], targets[b])  # (Q, G)
        pred, tgt = matcher.match_one(spans[b], logits[b], targets[b])
        found = float(cost[pred, tgt].sum())
        queries, goals = cost.shape
        best = min(
            float(sum(cost[q, g] for q, g in zip(perm, range(goals))))
            for perm in itertools.permutations(range(queries), goals)
        )
        assert found == pytest.approx(best, abs=1e-5)


def test_matcher_rejects_all_zero_costs_and_nan() -> None:
    with pytest.raises(ValueError, match="at least one"):
        HungarianMatcher(0, 0, 0)
    spans = torch.full((1, 2, 2), float("nan"))
    with pytest.raises(ValueError, match="NaN"):
        HungarianMatcher()(spans, torch.zeros(1, 2, 2), [torch.tensor([[0.5, 0.2]])])


def test_criterion_perfect_prediction_and_background_weight() -> None:
    targets = [torch.tensor([[0.5, 0.2]]), torch.tensor([[0.3, 0.1], [0.7, 0.2]])]
    spans = torch.tensor([[[0.5, 0.2], [0.1, 0.05]], [[0.7, 0.2], [0.3, 0.1]]])
    logits = torch.tensor([[[5.0, -5.0], [-5.0, 5.0]], [[5.0, -5.0], [5.0, -5.0]]])
    criterion = SetCriterion(HungarianMatcher(), background_weight=0.1)
    losses = criterion([spans, spans], [logits, logits], targets)
    assert float(losses["loss_l1"]) == pytest.approx(0.0, abs=1e-6)
    assert float(losses["loss_giou"]) == pytest.approx(0.0, abs=1e-6)
    # CE with weights: foreground rows weight 1, the one background row weight 0.1; two layers summed.
    ce_row = torch.nn.functional.cross_entropy(torch.tensor([[5.0, -5.0]]), torch.tensor([0]))
    assert float(losses["loss_ce"]) == pytest.approx(2 * float(ce_row), rel=1e-4)
    shifted = spans.clone()
    shifted[0, 0, 0] += 0.1  # one centre off by 0.1 -> L1 = 0.1 / 3 targets per layer
    losses = criterion([shifted], [logits], targets)
    assert float(losses["loss_l1"]) == pytest.approx(0.1 / 3, rel=1e-4)


def test_weighted_sum_by_name() -> None:
    losses = {"loss_l1": torch.tensor(2.0), "loss_ce": torch.tensor(3.0), "loss_giou": torch.tensor(5.0)}
    assert float(weighted_sum(losses, {"l1": 10.0, "ce": 1.0})) == pytest.approx(23.0)
    with pytest.raises(ValueError, match="loss_<name>"):
        weighted_sum({"l1": torch.tensor(1.0)}, {"l1": 1.0})
    with pytest.raises(ValueError, match="non-zero weight"):
        weighted_sum(losses, {"other": 1.0})
