"""PRVR ranks (pessimistic ties), chunked ranks, R@K / SumR / MedR / MeanR against naive references."""

from __future__ import annotations

import pytest
import torch

import reference
from prvr.metrics.retrieval import chunked_ranks, format_metrics, ranks_from_scores, recall_metrics
from prvr.similarity import token_max_scores


def test_ranks_hand_case_with_ties() -> None:
    scores = torch.tensor(
        [
            [0.9, 0.5, 0.9, 0.1],  # target 0 tied with video 2 -> rank 2
            [0.9, 0.5, 0.9, 0.1],  # target 3 is the lowest -> rank 4
            [0.3, 0.3, 0.3, 0.3],  # all equal -> rank V = 4
            [0.1, 0.8, 0.2, 0.7],  # target 1 strictly best -> rank 1
            [0.5, 0.6, 0.5, 0.5],  # target 2: one greater, two equal others -> rank 4
        ]
    )
    target = torch.tensor([0, 3, 1, 1, 2])
    assert ranks_from_scores(scores, target).tolist() == [2, 4, 4, 1, 4]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ranks_match_naive_sort_with_constructed_ties(seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    scores = torch.randint(0, 4, (40, 9), generator=generator).float()  # few distinct values: many ties
    target = torch.randint(0, 9, (40,), generator=generator)
    ranks = ranks_from_scores(scores, target)
    assert ranks.dtype == torch.long
    assert ranks.tolist() == reference.target_ranks(scores, target)


def test_ranks_without_ties_match_argsort() -> None:
    generator = torch.Generator().manual_seed(3)
    scores = torch.randn(30, 12, generator=generator)
    target = torch.randint(0, 12, (30,), generator=generator)
    order = scores.argsort(dim=1, descending=True)
    expected = (order == target.unsqueeze(1)).nonzero()[:, 1] + 1
    assert torch.equal(ranks_from_scores(scores, target), expected)


def test_ranks_reject_bad_inputs() -> None:
    scores = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="target values"):
        ranks_from_scores(scores, torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="target must be"):
        ranks_from_scores(scores, torch.tensor([0]))
    with pytest.raises(ValueError, match="NaN"):
        ranks_from_scores(torch.tensor([[0.1, float("nan"), 0.2]]), torch.tensor([0]))


@pytest.mark.parametrize("chunk", [1, 4, 7, 100])
def test_chunked_ranks_equal_full_matrix(chunk: int) -> None:
    generator = torch.Generator().manual_seed(4)
    query = torch.randn(23, 6, generator=generator)
    tokens = torch.randn(10, 5, 6, generator=generator)
    mask = torch.ones(10, 5, dtype=torch.bool)
    mask[::3, 2:] = False
    target = torch.randint(0, 10, (23,), generator=generator)
    full = ranks_from_scores(token_max_scores(query, tokens, mask, True), target)
    calls: list[int] = []

    def score_fn(chunk_queries: torch.Tensor) -> torch.Tensor:
        calls.append(chunk_queries.shape[0])
        return token_max_scores(chunk_queries, tokens, mask, True, max_elements=64)

    ranks = chunked_ranks(query, score_fn, target, chunk=chunk)
    assert torch.equal(ranks, full)
    assert max(calls) <= chunk and sum(calls) == 23


def test_recall_metrics_hand_case() -> None:
    ranks = torch.tensor([1, 2, 5, 6, 10, 11, 100, 101])
    metrics = recall_metrics(ranks)
    assert metrics["R@1"] == pytest.approx(12.5)
    assert metrics["R@5"] == pytest.approx(37.5)
    assert metrics["R@10"] == pytest.approx(62.5)
    assert metrics["R@100"] == pytest.approx(87.5)
    assert metrics["SumR"] == pytest.approx(200.0)
    assert metrics["MedR"] == pytest.approx(8.0)  # mean of the middle ranks 6 and 10
    assert metrics["MeanR"] == pytest.approx(236 / 8)
    assert metrics["num_queries"] == 8


def test_sumr_uses_unrounded_values() -> None:
    ranks = [1, 7, 7]  # R@1 = 33.333..., R@5 = 33.333..., R@10 = R@100 = 100
    metrics = recall_metrics(ranks)
    assert metrics["R@1"] == pytest.approx(100 / 3, rel=1e-12)
    assert metrics["SumR"] == pytest.approx(200 + 200 / 3, rel=1e-12)
    rounded_sum = sum(round(metrics[key], 1) for key in ("R@1", "R@5", "R@10", "R@100"))
    assert metrics["SumR"] != pytest.approx(rounded_sum, abs=1e-3)
    assert metrics["MedR"] == 7.0


def test_recall_custom_ks_and_errors() -> None:
    metrics = recall_metrics([1, 3, 4], ks=(1, 3))
    assert set(metrics) == {"R@1", "R@3", "SumR", "MedR", "MeanR", "num_queries"}
    assert metrics["R@3"] == pytest.approx(200 / 3)
    with pytest.raises(ValueError, match="no ranks"):
        recall_metrics([])
    with pytest.raises(ValueError, match="1-based"):
        recall_metrics([0, 1])


def test_format_metrics_is_one_line() -> None:
    text = format_metrics(recall_metrics([1, 2, 5, 6, 10, 11, 100, 101]))
    assert "\n" not in text
    assert text.startswith("R@1 12.50 | R@5 37.50 | R@10 62.50 | R@100 87.50 | SumR 200.00")
    assert "MedR 8.0" in text and "queries 8" in text
