"""Every DreamPRVR loss against a naive python-loop reference, edge cases, sampling, and the Criterion."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

import reference
from prvr.config import LossConfig
from prvr.losses import (
    LOSS_NAMES,
    Criterion,
    diffusion_mse,
    infonce_loss,
    kl_standard_normal,
    query_diversity_loss,
    query_similarity_preservation_loss,
    sample_triplet_negatives,
    triplet_loss,
)
from prvr.similarity import token_max_scores

# ---------------------------------------------------------------------------------------------------------------
# batches


def _video_index(counts: list[int]) -> torch.Tensor:
    return torch.tensor([v for v, c in enumerate(counts) for _ in range(c)], dtype=torch.long)


BATCHES = {
    "mixed": [1, 3, 2, 4, 1, 2],  # several videos with 1-4 queries, including single-query videos
    "singles": [1, 1, 1, 1],  # every video has one query
    "one_video": [3],  # no negatives at all
    "one_video_one_query": [1],
    "two_videos": [2, 1],
}


def _case(name: str, seed: int = 0, dim: int = 6):
    counts = BATCHES[name]
    generator = torch.Generator().manual_seed(seed)
    video_index = _video_index(counts)
    scores = torch.randn(len(video_index), len(counts), generator=generator, dtype=torch.float64) * 2.0
    query = torch.randn(len(video_index), dim, generator=generator, dtype=torch.float64)
    return scores, query, video_index


# ---------------------------------------------------------------------------------------------------------------
# helpers (the naive references are in reference.py)


def _assert_finite_grad(tensor: torch.Tensor) -> None:
    assert tensor.grad is not None
    assert bool(torch.isfinite(tensor.grad).all())


# ---------------------------------------------------------------------------------------------------------------
# InfoNCE


@pytest.mark.parametrize("name", list(BATCHES))
def test_infonce_matches_loop(name: str) -> None:
    scores, _, video_index = _case(name, seed=1)
    scores.requires_grad_(True)
    loss = infonce_loss(scores, video_index)
    assert loss.dim() == 0
    assert loss.item() == pytest.approx(reference.infonce(scores.detach(), video_index), rel=1e-10, abs=1e-12)
    loss.backward()
    _assert_finite_grad(scores)


def test_infonce_skips_videos_without_queries() -> None:
    generator = torch.Generator().manual_seed(2)
    video_index = torch.tensor([0, 0, 2, 3, 3], dtype=torch.long)  # video 1 has no query
    scores = torch.randn(5, 4, generator=generator, dtype=torch.float64, requires_grad=True)
    loss = infonce_loss(scores, video_index)
    assert loss.item() == pytest.approx(reference.infonce(scores.detach(), video_index), rel=1e-10)
    loss.backward()
    _assert_finite_grad(scores)


def test_infonce_one_video_is_zero() -> None:
    scores, _, video_index = _case("one_video")
    assert float(infonce_loss(scores, video_index)) == pytest.approx(0.0, abs=1e-12)


def test_infonce_rejects_bad_index() -> None:
    scores, _, video_index = _case("mixed")
    with pytest.raises(ValueError, match="video_index"):
        infonce_loss(scores, video_index + 10)
    with pytest.raises(ValueError, match="video_index"):
        infonce_loss(scores, video_index[:-1])


# ---------------------------------------------------------------------------------------------------------------
# triplet


@pytest.mark.parametrize("name", list(BATCHES))
@pytest.mark.parametrize("hard", [False, True])
def test_triplet_matches_loop_for_drawn_negatives(name: str, hard: bool) -> None:
    scores, _, video_index = _case(name, seed=3)
    scores.requires_grad_(True)
    negatives = sample_triplet_negatives(scores, video_index, hard, 2, torch.Generator().manual_seed(5))
    loss = triplet_loss(scores, video_index, 0.2, hard, 2, torch.Generator().manual_seed(5))
    expected = reference.triplet(scores.detach(), video_index, 0.2, negatives)
    assert loss.item() == pytest.approx(expected, rel=1e-10, abs=1e-12)
    given = triplet_loss(scores, video_index, 0.2, negatives=negatives)
    assert given.item() == pytest.approx(expected, rel=1e-10, abs=1e-12)
    loss.backward()
    _assert_finite_grad(scores)


def test_triplet_negative_rules_random() -> None:
    scores, _, video_index = _case("mixed", seed=4)
    num_queries, num_videos = scores.shape
    generator = torch.Generator().manual_seed(0)
    video_hits = torch.zeros(num_queries, num_videos)
    query_hits = torch.zeros(num_queries, num_videos)
    for _ in range(400):
        negatives = sample_triplet_negatives(scores, video_index, False, 20, generator)
        assert negatives.video is not None
        video_hits[torch.arange(num_queries), negatives.video] += 1
        query_hits[negatives.query, negatives.columns] += 1
    positive = torch.nn.functional.one_hot(video_index, num_videos).bool()
    assert float(video_hits[positive].sum()) == 0.0  # never the positive video
    assert bool((video_hits[~positive] > 0).all())  # every other video gets drawn
    assert float(query_hits[positive].sum()) == 0.0  # never a query of the video itself
    assert bool((query_hits[~positive] > 0).all())  # every other query gets drawn
    # Uniform: each of the 5 other videos about 400/5 = 80 times.
    assert float(video_hits[~positive].min()) > 40 and float(video_hits[~positive].max()) < 130


def test_triplet_random_vs_hard_on_constructed_case() -> None:
    # Query 0 -> video 0, query 1 -> video 1, queries 2, 3 -> video 2, query 4 -> video 3.
    video_index = torch.tensor([0, 1, 2, 2, 3])
    scores = torch.tensor(
        [
            [0.9, 0.8, 0.1, 0.0],
            [0.7, 0.9, 0.2, 0.1],
            [0.1, 0.6, 0.9, 0.3],
            [0.2, 0.1, 0.8, 0.5],
            [0.3, 0.4, 0.95, 0.9],
        ]
    )
    hardest = sample_triplet_negatives(scores, video_index, True, 1, torch.Generator().manual_seed(0))
    # Hardest negative video per query (pool 1).
    assert hardest.video.tolist() == [1, 0, 1, 3, 2]
    assert hardest.columns.tolist() == [0, 1, 2, 3]
    # Hardest negative query per video: v0 -> q1 (0.7), v1 -> q0 (0.8), v2 -> q4 (0.95), v3 -> q3 (0.5).
    assert hardest.query.tolist() == [1, 0, 4, 3]
    relu = lambda x: max(0.0, x)  # noqa: E731
    text_to_video = [0.2 + 0.8 - 0.9, 0.2 + 0.7 - 0.9, 0.2 + 0.6 - 0.9, 0.2 + 0.5 - 0.8, 0.2 + 0.95 - 0.9]
    video_to_text = [0.2 + 0.7 - 0.9, 0.2 + 0.8 - 0.9, 0.2 + 0.95 - 0.85, 0.2 + 0.5 - 0.9]
    expected = sum(map(relu, text_to_video)) / 5 + sum(map(relu, video_to_text)) / 4
    assert expected == pytest.approx(0.07 + 0.1)
    loss = triplet_loss(scores, video_index, 0.2, True, 1)
    assert loss.item() == pytest.approx(expected, abs=1e-6)

    # Hard pool of 2: draws only among the two best negatives, and both get drawn.
    generator = torch.Generator().manual_seed(1)
    seen: set[int] = set()
    for _ in range(50):
        drawn = sample_triplet_negatives(scores, video_index, True, 2, generator)
        assert int(drawn.video[0]) in (1, 2)
        seen.add(int(drawn.video[0]))
    assert seen == {1, 2}
    # Random negatives reach the easiest video too (video 3 for query 0), hard ones with pool 2 never do.
    generator = torch.Generator().manual_seed(1)
    random_draws = {int(sample_triplet_negatives(scores, video_index, False, 2, generator).video[0]) for _ in range(50)}
    assert random_draws == {1, 2, 3}


def test_triplet_deterministic_with_generator() -> None:
    scores, _, video_index = _case("mixed", seed=6)
    def draw(seed: int) -> float:
        return triplet_loss(scores, video_index, 0.2, False, 20, torch.Generator().manual_seed(seed)).item()

    first = [draw(seed) for seed in range(5)]
    second = [draw(seed) for seed in range(5)]
    assert first == second
    assert len(set(first)) > 1  # the seed does change the draw
    a = sample_triplet_negatives(scores, video_index, True, 3, torch.Generator().manual_seed(7))
    b = sample_triplet_negatives(scores, video_index, True, 3, torch.Generator().manual_seed(7))
    assert torch.equal(a.video, b.video) and torch.equal(a.query, b.query)


def test_triplet_one_video_is_zero_with_grad() -> None:
    for name in ("one_video", "one_video_one_query"):
        scores, _, video_index = _case(name)
        scores.requires_grad_(True)
        loss = triplet_loss(scores, video_index, 0.2, False, 20, torch.Generator().manual_seed(0))
        assert loss.item() == 0.0
        assert loss.requires_grad
        loss.backward()
        assert float(scores.grad.abs().sum()) == 0.0


# ---------------------------------------------------------------------------------------------------------------
# query diversity and similarity preservation


@pytest.mark.parametrize("name", list(BATCHES))
@pytest.mark.parametrize("params", [(32.0, 1.0, 0.2), (8.0, 2.0, 0.15), (4.0, 0.5, 0.0)])
def test_query_diversity_matches_loop(name: str, params: tuple[float, float, float]) -> None:
    _, query, video_index = _case(name, seed=8)
    query.requires_grad_(True)
    loss = query_diversity_loss(query, video_index, *params)
    assert loss.item() == pytest.approx(reference.query_diversity(query.detach(), video_index, *params), rel=1e-9, abs=1e-12)
    loss.backward()
    _assert_finite_grad(query)


def test_query_diversity_large_alpha_is_stable() -> None:
    video_index = torch.tensor([0, 0])
    query = torch.tensor([[1.0, 0.0], [1.0, 1e-4]], requires_grad=True)  # cosine ~ 1
    loss = query_diversity_loss(query, video_index, alpha=1000.0, lam=1.0, delta=0.2)
    assert math.isfinite(loss.item())
    assert loss.item() == pytest.approx(2 * 2.0 * 1000.0 * 1.2 / 2, rel=1e-4)
    loss.backward()
    _assert_finite_grad(query)


@pytest.mark.parametrize("name", list(BATCHES))
@pytest.mark.parametrize("tau", [0.08, 0.01, 0.5])
def test_qsp_matches_loop(name: str, tau: float) -> None:
    _, query, video_index = _case(name, seed=9)
    query.requires_grad_(True)
    loss = query_similarity_preservation_loss(query, video_index, tau)
    assert loss.item() == pytest.approx(reference.supcon(query.detach(), video_index, tau), rel=1e-9, abs=1e-12)
    loss.backward()
    _assert_finite_grad(query)


def test_qsp_pulls_same_video_queries_together() -> None:
    video_index = torch.tensor([0, 0, 1, 1])
    close = torch.tensor([[1.0, 0.0], [0.9, 0.1], [-1.0, 0.0], [-0.9, -0.1]])
    far = torch.tensor([[1.0, 0.0], [-1.0, 0.1], [0.0, 1.0], [0.1, -1.0]])
    assert float(query_similarity_preservation_loss(close, video_index, 0.1)) < float(
        query_similarity_preservation_loss(far, video_index, 0.1)
    )


# ---------------------------------------------------------------------------------------------------------------
# KL and diffusion


def test_kl_matches_loop() -> None:
    generator = torch.Generator().manual_seed(10)
    mu = torch.randn(3, 4, generator=generator, dtype=torch.float64, requires_grad=True)
    logvar = torch.randn(3, 4, generator=generator, dtype=torch.float64, requires_grad=True)
    expected = 0.0
    for b in range(3):
        for d in range(4):
            m, lv = mu[b, d].item(), logvar[b, d].item()
            expected += -0.5 * (1 + lv - m * m - math.exp(lv))
    loss = kl_standard_normal(mu, logvar)
    assert loss.item() == pytest.approx(expected / 3, rel=1e-12)
    loss.backward()
    _assert_finite_grad(mu)
    _assert_finite_grad(logvar)
    assert float(kl_standard_normal(torch.zeros(2, 5), torch.zeros(2, 5))) == 0.0


def test_diffusion_mse() -> None:
    pred = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    target = torch.tensor([[0.0, 2.0], [5.0, 4.0]])
    assert float(diffusion_mse(pred, target)) == pytest.approx((1 + 0 + 4 + 0) / 4)
    with pytest.raises(ValueError, match="shape"):
        diffusion_mse(pred, target[:1])


# ---------------------------------------------------------------------------------------------------------------
# Criterion


def _outputs(seed: int = 11, counts: list[int] | None = None, dim: int = 8):
    counts = counts if counts is not None else [2, 1, 3, 2]
    generator = torch.Generator().manual_seed(seed)
    video_index = _video_index(counts)
    num_videos = len(counts)
    frame_mask = torch.ones(num_videos, 6, dtype=torch.bool)
    frame_mask[-1, 3:] = False
    outputs = {
        "query": torch.randn(len(video_index), dim, generator=generator, requires_grad=True),
        "clip_tokens": torch.randn(num_videos, 5, dim, generator=generator, requires_grad=True),
        "frame_tokens": torch.randn(num_videos, 6, dim, generator=generator, requires_grad=True),
        "frame_mask": frame_mask,
        "pvs_mu": torch.randn(num_videos, dim, generator=generator, requires_grad=True),
        "pvs_logvar": torch.randn(num_videos, dim, generator=generator, requires_grad=True),
        "dre_pred": torch.randn(num_videos, 3, dim, generator=generator, requires_grad=True),
        "dre_target": torch.randn(num_videos, 3, dim, generator=generator),
    }
    return outputs, video_index


def test_criterion_total_is_weighted_sum_and_parts_match() -> None:
    config = dataclasses.replace(LossConfig(), weights=dict(LossConfig().weights, nce_fused=0.5), nce_temperature=0.07)
    outputs, video_index = _outputs()
    criterion = Criterion(config, 0.6, 0.4)
    losses = criterion(outputs, video_index, epoch=0, generator=torch.Generator().manual_seed(3))
    assert set(losses) == {f"loss_{name}" for name in LOSS_NAMES} | {"loss"}
    total = sum(config.weights[name] * losses[f"loss_{name}"].item() for name in LOSS_NAMES)
    assert losses["loss"].item() == pytest.approx(total, rel=1e-6)

    q, mask = outputs["query"].detach().double(), outputs["frame_mask"]
    raw_frame = token_max_scores(q, outputs["frame_tokens"].detach().double(), mask, normalize=False)
    raw_clip = token_max_scores(q, outputs["clip_tokens"].detach().double(), None, normalize=False)
    cos_frame = token_max_scores(q, outputs["frame_tokens"].detach().double(), mask, normalize=True)
    cos_clip = token_max_scores(q, outputs["clip_tokens"].detach().double(), None, normalize=True)
    expected = {
        "nce_fused": reference.infonce((0.6 * cos_clip + 0.4 * cos_frame) / 0.07, video_index),
        "nce_frame": reference.infonce(raw_frame, video_index),
        "nce_clip": reference.infonce(raw_clip, video_index),
        "div": reference.query_diversity(q, video_index, config.div_alpha, config.div_lambda, config.div_delta),
        "qsp": reference.supcon(q, video_index, config.qsp_temperature),
        "kl": kl_standard_normal(outputs["pvs_mu"], outputs["pvs_logvar"]).item(),
        "dre": diffusion_mse(outputs["dre_pred"], outputs["dre_target"]).item(),
    }
    for name, value in expected.items():
        assert losses[f"loss_{name}"].item() == pytest.approx(value, rel=1e-5), name

    losses["loss"].backward()
    for key in ("query", "clip_tokens", "frame_tokens", "pvs_mu", "pvs_logvar", "dre_pred"):
        _assert_finite_grad(outputs[key])


def test_criterion_triplet_uses_cosine_and_switches_to_hard() -> None:
    config = dataclasses.replace(LossConfig(), hard_negative_start_epoch=3, hard_negative_pool=1)
    outputs, video_index = _outputs(seed=12)
    criterion = Criterion(config, 0.6, 0.4)
    cosine = token_max_scores(outputs["query"], outputs["clip_tokens"], None, normalize=True)
    for epoch, hard in ((0, False), (2, False), (3, True), (10, True)):
        losses = criterion(outputs, video_index, epoch=epoch, generator=torch.Generator().manual_seed(4))
        # The clip triplet is drawn first from the generator, so a fresh generator with the same seed replays it.
        expected = triplet_loss(cosine, video_index, config.margin, hard, 1, torch.Generator().manual_seed(4))
        assert losses["loss_trip_clip"].item() == pytest.approx(expected.item(), rel=1e-6)
    hard_negatives = sample_triplet_negatives(cosine, video_index, True, 1)
    hard_value = reference.triplet(cosine.detach().double(), video_index, config.margin, hard_negatives)
    losses = criterion(outputs, video_index, epoch=3)
    assert losses["loss_trip_clip"].item() == pytest.approx(hard_value, rel=1e-5)


def test_criterion_zero_weight_and_missing_inputs_omit_terms() -> None:
    weights = dict(LossConfig().weights, div=0.0, nce_frame=0.0)
    config = dataclasses.replace(LossConfig(), weights=weights)
    outputs, video_index = _outputs(seed=13)
    del outputs["pvs_mu"], outputs["pvs_logvar"], outputs["dre_pred"]
    losses = Criterion(config, 0.6, 0.4)(outputs, video_index, epoch=0, generator=torch.Generator().manual_seed(0))
    assert set(losses) == {"loss_nce_clip", "loss_trip_clip", "loss_trip_frame", "loss_qsp", "loss"}
    total = sum(weights[key[5:]] * value.item() for key, value in losses.items() if key != "loss")
    assert losses["loss"].item() == pytest.approx(total, rel=1e-6)

    all_zero = dataclasses.replace(LossConfig(), weights={name: 0.0 for name in LOSS_NAMES})
    outputs, video_index = _outputs(seed=14)
    losses = Criterion(all_zero, 0.6, 0.4)(outputs, video_index, epoch=0)
    assert set(losses) == {"loss"} and losses["loss"].item() == 0.0
    losses["loss"].backward()  # still connected to the graph


def test_criterion_single_video_batch() -> None:
    outputs, video_index = _outputs(seed=15, counts=[3])
    losses = Criterion(LossConfig(), 0.6, 0.4)(outputs, video_index, epoch=30)
    assert losses["loss_trip_clip"].item() == 0.0 and losses["loss_trip_frame"].item() == 0.0
    losses["loss"].backward()
    _assert_finite_grad(outputs["query"])


def test_criterion_rejects_unknown_and_negative_weights() -> None:
    assert LOSS_NAMES == ("nce_clip", "trip_clip", "nce_frame", "trip_frame", "div", "qsp", "kl", "dre", "nce_fused")
    assert LossConfig().weights["nce_fused"] == 0.0  # the paper's recipe unless a preset turns it on
    config = dataclasses.replace(LossConfig(), weights=dict(LossConfig().weights, nce=1.0))
    with pytest.raises(ValueError, match="known names") as info:
        Criterion(config, 0.6, 0.4)
    assert "nce_clip" in str(info.value) and "'nce'" in str(info.value)
    config = dataclasses.replace(LossConfig(), weights=dict(LossConfig().weights, div=-1.0))
    with pytest.raises(ValueError, match=">= 0"):
        Criterion(config, 0.6, 0.4)
    with pytest.raises(ValueError, match="nce_temperature"):
        Criterion(dataclasses.replace(LossConfig(), nce_temperature=0.0), 0.6, 0.4)


def test_criterion_missing_tokens_raise() -> None:
    outputs, video_index = _outputs(seed=16)
    del outputs["frame_tokens"]
    with pytest.raises(ValueError, match="frame_tokens"):
        Criterion(LossConfig(), 0.6, 0.4)(outputs, video_index, epoch=0)


def test_criterion_batch_scores() -> None:
    outputs, _ = _outputs(seed=17)
    scores = Criterion(LossConfig(), 0.5, 0.5).batch_scores(outputs)
    assert scores["total"].shape == (8, 4)
    torch.testing.assert_close(scores["total"], 0.5 * scores["clip"] + 0.5 * scores["frame"])
