"""Condition generator, both span decoders, 1-D RoI align, similarity losses and the span DDIM loop."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from prvr.moments.condition import Condition, frame_labels, similarity_losses
from prvr.moments.config import MomentConfig, apply_moment_overrides, list_moment_presets, load_moment_preset
from prvr.moments.decoders import DecoderOutput, roi_align_1d
from prvr.moments.denoiser import MomentDenoiser, SpanDiffusion, random_spans_cw


def _config(decoder: str) -> MomentConfig:
    base = load_moment_preset("tiny")
    extras = decoder.endswith("+")  # the optional RoI query features and relevance-in-memory
    decoder = decoder.rstrip("+")
    layers = 2 if decoder == "momentdiff" else 3
    network = dataclasses.replace(base.network, decoder=decoder, decoder_layers=layers, roi_points=4, dynamic_dim=8,
                                  decoder_roi=extras, relevance_feature=extras)
    return dataclasses.replace(base, video_dim=12, text_dim=10, network=network)


def _inputs(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    video = torch.randn(3, 9, 12, generator=generator)
    video_mask = torch.ones(3, 9, dtype=torch.bool)
    video_mask[1, 6:] = False
    video_mask[2, 1:] = False  # a one-frame video
    text = torch.randn(3, 5, 10, generator=generator)
    text_mask = torch.ones(3, 5, dtype=torch.bool)
    text_mask[0, 3:] = False
    return video, video_mask, text, text_mask


@pytest.mark.parametrize("decoder", ["momentdiff", "diffusionvmr", "momentdiff+", "diffusionvmr+"])
def test_decoder_shapes_ranges_and_determinism(decoder: str) -> None:
    config = _config(decoder)
    torch.manual_seed(0)
    model = MomentDenoiser(config).eval()
    condition = model.encode(*_inputs())
    assert condition.memory.shape == (3, 9, config.network.hidden_size)
    assert condition.relevance.shape == (3, 9)
    spans = random_spans_cw((3, 7), torch.Generator().manual_seed(1))
    t = torch.tensor([0, 500, 999])
    with torch.no_grad():
        first = model(spans, t, condition)
        second = model(spans, t, condition)
    assert len(first.spans) == config.network.decoder_layers == len(first.logits)
    for layer_spans, layer_logits in zip(first.spans, first.logits):
        assert layer_spans.shape == (3, 7, 2) and layer_logits.shape == (3, 7, 2)
        assert bool(((layer_spans >= 0) & (layer_spans <= 1)).all())
        assert bool(torch.isfinite(layer_logits).all())
    assert all(torch.equal(a, b) for a, b in zip(first.spans, second.spans))
    # padding frames do not change the outputs: append junk frames behind a False mask
    video, video_mask, text, text_mask = _inputs()
    longer = torch.cat([video, torch.randn(3, 4, 12) * 50], 1)
    longer_mask = torch.cat([video_mask, torch.zeros(3, 4, dtype=torch.bool)], 1)
    with torch.no_grad():
        padded = model(spans, t, model.encode(longer, longer_mask, text, text_mask))
    assert torch.allclose(padded.final_spans, first.final_spans, atol=1e-5)


def test_roi_align_matches_a_slow_reference() -> None:
    generator = torch.Generator().manual_seed(3)
    memory = torch.randn(2, 6, 4, generator=generator)
    mask = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])
    spans_se = torch.tensor([[[0.0, 1.0], [0.2, 0.3]], [[0.5, 0.9], [0.95, 1.0]]])
    points = 5
    fast = roi_align_1d(memory, mask, spans_se, points)
    for b in range(2):
        length = int(mask[b].sum())
        for q in range(2):
            start, end = spans_se[b, q].tolist()
            for j in range(points):
                x = min(max(start + (end - start) * (j + 0.5) / points, 0.0), 1.0)
                u = min(max(x * length - 0.5, 0.0), length - 1)
                low = math.floor(u)
                high = min(low + 1, length - 1)
                w = u - low
                expected = memory[b, low] * (1 - w) + memory[b, high] * w
                assert torch.allclose(fast[b, q, j], expected, atol=1e-6)


def test_frame_labels_and_similarity_losses() -> None:
    mask = torch.tensor([[True] * 4, [True] * 2 + [False] * 2])
    labels = frame_labels([torch.tensor([[0.5, 1.0]]), torch.tensor([[0.0, 0.1]])], mask)
    assert labels.tolist() == [[0, 0, 1, 1], [1, 0, 0, 0]]
    relevance = torch.tensor([[-3.0, -3.0, 3.0, 3.0], [3.0, -3.0, 0.0, 0.0]], requires_grad=True)
    good = similarity_losses(relevance, labels, mask, -relevance.detach() - 5, generator=torch.Generator())
    bad = similarity_losses(-relevance, labels, mask, relevance.detach() + 5, generator=torch.Generator())
    for key in ("loss_sim_rank", "loss_sim_bce", "loss_sim_nce"):
        assert float(good[key].detach()) < float(bad[key].detach())
    assert float(good["loss_sim_rank"]) == 0.0  # margin 0.2 is met by sigmoid(3) - sigmoid(-3)
    skipped = similarity_losses(relevance, labels, mask, relevance.detach(), negative_valid=torch.tensor([False,
                                                                                                          False]))
    assert float(skipped["loss_sim_nce"]) == 0.0
    sum(good.values()).backward()
    assert relevance.grad is not None and bool(torch.isfinite(relevance.grad).all())


class _ToyDenoiser:
    """x0_hat = 0.25 + 0.5 * spans (in [0, 1]); foreground logit = centre."""

    def __call__(self, spans_cw: torch.Tensor, t: torch.Tensor, condition: Condition) -> DecoderOutput:
        out = 0.25 + 0.5 * spans_cw
        logits = torch.stack([spans_cw[..., 0], torch.zeros_like(spans_cw[..., 0])], -1)
        return DecoderOutput([out], [logits])


def _reference_ddim(x_T: np.ndarray, steps: int, total: int = 1000, scale: float = 2.0) -> np.ndarray:
    """The DDIM loop with eta = 0, straight from the formulas (float64)."""

    def abar(u: float) -> float:
        return math.cos((u / total + 0.008) / 1.008 * math.pi / 2) ** 2

    betas = np.minimum([1 - abar(t + 1) / abar(t) for t in range(total)], 0.999)
    alphas_cumprod = np.cumprod(1 - betas)
    grid = np.floor(np.linspace(-1, total - 1, steps + 1) + 1e-9).astype(int)[::-1][:-1]
    x = x_T.astype(np.float64)
    for index, t in enumerate(grid):
        spans = (np.clip(x, -scale, scale) / scale + 1) / 2
        x0 = scale * (2 * (0.25 + 0.5 * spans) - 1)
        x0 = np.clip(x0, -scale, scale)
        if index == len(grid) - 1:
            x = x0
            break
        a_t, a_prev = alphas_cumprod[t], alphas_cumprod[grid[index + 1]]
        eps = (np.sqrt(1 / a_t) * x - x0) / np.sqrt(1 / a_t - 1)
        x = np.sqrt(a_prev) * x0 + np.sqrt(1 - a_prev) * eps
    return (np.clip(x, -scale, scale) / scale + 1) / 2


@pytest.mark.parametrize("steps", [1, 2, 4, 10, 1000])
def test_span_ddim_matches_reference_and_takes_x0_at_the_last_step(steps: int) -> None:
    config = dataclasses.replace(load_moment_preset("tiny"), video_dim=4, text_dim=4)
    diffusion = SpanDiffusion(config)
    condition = Condition(torch.zeros(2, 3, 8), torch.ones(2, 3, dtype=torch.bool), torch.zeros(2, 3))
    spans, logits = diffusion.sample(_ToyDenoiser(), condition, num_spans=4, steps=steps,  # type: ignore[arg-type]
                                     generator=torch.Generator().manual_seed(0))
    x_T = torch.randn((2, 4, 2), generator=torch.Generator().manual_seed(0)).numpy()
    expected = _reference_ddim(x_T, steps)
    assert bool(torch.isfinite(spans).all()) and bool(torch.isfinite(logits).all())
    np.testing.assert_allclose(spans.numpy(), expected, atol=1e-5)


def test_span_ddim_pinned_statistics_and_seed() -> None:
    config = dataclasses.replace(load_moment_preset("tiny"), video_dim=4, text_dim=4)
    diffusion = SpanDiffusion(config)
    condition = Condition(torch.zeros(2, 3, 8), torch.ones(2, 3, dtype=torch.bool), torch.zeros(2, 3))

    def run(seed: int) -> torch.Tensor:
        return diffusion.sample(_ToyDenoiser(), condition, 4, 4,  # type: ignore[arg-type]
                                generator=torch.Generator().manual_seed(seed))[0]

    spans = run(0)
    assert torch.equal(spans, run(0)) and not torch.equal(spans, run(1))
    assert float(spans.sum()) == pytest.approx(PINNED_SUM, abs=1e-4)
    assert float(spans.mean()) == pytest.approx(PINNED_SUM / 16, abs=1e-5)


PINNED_SUM = 7.804404  # sum of the 2 x 4 x 2 spans; the reference test above checks the formulas


def test_presets_load_and_validate() -> None:
    assert {"tiny", "cpu", "diffusionvmr_cpu", "default"} <= set(list_moment_presets())
    for name in list_moment_presets():
        config = load_moment_preset(name)
        assert MomentConfig.from_json(config.to_json()) == config
    with pytest.raises(ValueError, match="unknown"):
        apply_moment_overrides(load_moment_preset("tiny"), ["no_such_field=1"])
    with pytest.raises(ValueError, match="loss name"):
        apply_moment_overrides(load_moment_preset("tiny"), ['loss.weights={"typo": 1.0}'])
    with pytest.raises(ValueError, match="num_heads"):
        apply_moment_overrides(load_moment_preset("tiny"), ["network.num_heads=5"])


def _stuck_at_the_clamp(spans_cw: torch.Tensor) -> float:
    """Fraction of span coordinates at the clamp (0 or 1): where a drifting DDIM chain ends up."""
    return float(((spans_cw <= 1e-4) | (spans_cw >= 1 - 1e-4)).float().mean())


def test_diffusionvmr_noisy_anchor_drifts_to_the_clamp_and_the_fix_does_not() -> None:
    """Why the DiffusionVMR decoder collapsed beyond one DDIM step, on the decoder as initialised (zero span head).

    With ``first_layer_residual`` the x0 prediction starts as x_t itself; DDIM then re-derives eps_hat ~ x_t and adds
    it again (x_t' ~ (sqrt(abar') + sqrt(1 - abar')) x_t), so every extra step pushes spans outward to the clamp.
    The fix (first layer absolute) gives an x0 estimate that does not carry x_t, and more steps change nothing.
    """
    torch.manual_seed(0)
    video, video_mask, text, text_mask = _inputs()
    x_T = torch.randn(3, 64, 2, generator=torch.Generator().manual_seed(1))
    stuck = {}
    for residual in (True, False):
        flag = f"network.first_layer_residual={str(residual).lower()}"
        config = apply_moment_overrides(_config("diffusionvmr"), [flag])
        model = MomentDenoiser(config).eval()
        diffusion = SpanDiffusion(config)
        with torch.no_grad():
            condition = model.encode(video, video_mask, text, text_mask)
            runs = {steps: diffusion.sample(model, condition, 64, steps, x_T=x_T)[0] for steps in (1, 2, 10)}
        stuck[residual] = {steps: _stuck_at_the_clamp(spans) for steps, spans in runs.items()}
        if not residual:
            torch.testing.assert_close(runs[10], runs[1])  # the chain's fixed point is its x0 estimate
            torch.testing.assert_close(runs[1], torch.full_like(runs[1], 0.5))  # the prior mean, before training
    assert stuck[True][1] < 0.1  # one step returns x0_hat = x_T: only the tails of N(0, 1) beyond lambda = 2
    assert stuck[True][2] > stuck[True][1] + 0.1 and stuck[True][10] > stuck[True][2]  # the collapse, step by step
    assert stuck[False] == {1: 0.0, 2: 0.0, 10: 0.0}


def test_similarity_feature_adds_the_frame_query_cosine_to_the_relevance() -> None:
    """network.similarity_feature: s_i = head(M_i) + tau cos(W_v v_i, W_q mean(q)) + b, 0 on padding; off by default
    (old checkpoints keep their parameters and outputs)."""
    from prvr.moments.condition import ConditionGenerator

    plain = _config("momentdiff")
    assert not plain.network.similarity_feature
    assert not any("similarity" in name for name in ConditionGenerator(plain.network, 12, 10).state_dict())
    config = apply_moment_overrides(plain, ["network.similarity_feature=true"])
    torch.manual_seed(0)
    generator = ConditionGenerator(config.network, 12, 10).eval()
    video, video_mask, text, text_mask = _inputs()
    with torch.no_grad():
        generator.relevance_head.weight.zero_()
        generator.relevance_head.bias.zero_()
        condition = generator(video, video_mask, text, text_mask)
        v = generator.video_projection(video)  # (B, F, D)
        q = generator.text_projection(text)  # (B, L, D)
        sentence = (q * text_mask[..., None]).sum(1) / text_mask.sum(1, keepdim=True)  # (B, D)
        frames = generator.similarity.video(v)
        query = generator.similarity.text(sentence)
        cosine = torch.nn.functional.cosine_similarity(frames, query[:, None], dim=-1)  # (B, F) slow reference
        expected = (10.0 * cosine - 5.0).masked_fill(~video_mask, 0.0)
    torch.testing.assert_close(condition.relevance, expected, atol=1e-4, rtol=1e-4)
    assert (condition.relevance[~video_mask] == 0).all()
