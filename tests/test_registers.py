"""Register generator pieces (condition, GPO, PVS, TPS, denoiser, chain) against slow references and invariants."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from prvr.config import DiffusionConfig, RegisterConfig
from prvr.losses import kl_standard_normal
from prvr.nn.registers import (
    GeneralizedPooling,
    ProbabilisticVariationalSampler,
    RegisterCondition,
    RegisterDenoiser,
    RegisterGenerator,
    sinusoidal_embedding,
    textual_perturbation_targets,
)

D, HEADS, FFN, C, K = 16, 2, 32, 8, 3


def _config(**changes: object) -> RegisterConfig:
    diffusion_changes = {k[len("diffusion_") :]: v for k, v in changes.items() if k.startswith("diffusion_")}
    register_changes = {k: v for k, v in changes.items() if not k.startswith("diffusion_")}
    diffusion = dataclasses.replace(DiffusionConfig(), **diffusion_changes)
    return dataclasses.replace(RegisterConfig(num_registers=K, diffusion=diffusion), **register_changes)


def _generator(seed: int = 0, **changes: object) -> RegisterGenerator:
    torch.manual_seed(seed)
    return RegisterGenerator(_config(**changes), D, HEADS, FFN, dropout=0.1, seed=seed)


def _clips(batch: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, C, D, generator=torch.Generator().manual_seed(seed))


def test_sinusoidal_embedding_values() -> None:
    codes = sinusoidal_embedding(torch.tensor([0, 3]), 6)
    assert codes.shape == (2, 6)
    freqs = [10000 ** (-i / 3) for i in range(3)]
    expected = [math.sin(3 * f) for f in freqs] + [math.cos(3 * f) for f in freqs]
    torch.testing.assert_close(codes[1], torch.tensor(expected))
    torch.testing.assert_close(codes[0], torch.tensor([0.0, 0, 0, 1, 1, 1]))
    assert sinusoidal_embedding(torch.arange(4), 5).shape == (4, 5)


def test_condition_shapes_and_mask() -> None:
    torch.manual_seed(0)
    condition = RegisterCondition(D, HEADS, FFN, 0.0, K).eval()
    x = _clips(2)
    encoded, tokens = condition(x)
    assert encoded.shape == (2, C, D) and tokens.shape == (2, K, D)
    mask = torch.ones(2, C, dtype=torch.bool)
    mask[:, 5:] = False
    garbage = x.clone()
    garbage[:, 5:] = 100.0
    enc_a, tok_a = condition(x, mask)
    enc_b, tok_b = condition(garbage, mask)
    torch.testing.assert_close(tok_a, tok_b)
    torch.testing.assert_close(enc_a[:, :5], enc_b[:, :5])
    with pytest.raises(ValueError, match="num_registers"):
        RegisterCondition(D, HEADS, FFN, 0.0, 0)


def _naive_gpo(gpo: GeneralizedPooling, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-video, per-dimension loop: sort the valid values, weight rank r by the GRU softmax weight of rank r."""
    out = torch.zeros(x.shape[0], x.shape[2], dtype=x.dtype)
    for b in range(x.shape[0]):
        valid = x[b][mask[b]]  # (n, D)
        n = valid.shape[0]
        if n == 0:
            continue
        positions = torch.arange(n, dtype=torch.float32)
        codes = torch.zeros(n, gpo.hidden)
        half = gpo.hidden // 2
        for i in range(half):
            freq = 10000 ** (-i / half)
            codes[:, i] = torch.sin(positions * freq)
            codes[:, half + i] = torch.cos(positions * freq)
        states, _ = gpo.gru(codes[None])
        states = 0.5 * (states[0, :, : gpo.hidden] + states[0, :, gpo.hidden :])  # (n, H)
        weights = torch.softmax(gpo.score(states)[:, 0] / gpo.temperature, dim=0)  # (n,)
        for d in range(x.shape[2]):
            ranked = sorted(valid[:, d].tolist(), reverse=True)
            out[b, d] = sum(w * v for w, v in zip(weights.tolist(), ranked))
    return out


def test_gpo_matches_naive_reference_on_a_mask() -> None:
    torch.manual_seed(1)
    gpo = GeneralizedPooling(D, hidden=8, temperature=0.1)
    x = torch.randn(4, 6, D, generator=torch.Generator().manual_seed(2))
    lengths = torch.tensor([6, 3, 6, 0])
    mask = torch.arange(6)[None] < lengths[:, None]  # (B, L)
    out = gpo(x, mask)
    torch.testing.assert_close(out, _naive_gpo(gpo, x, mask), rtol=1e-5, atol=1e-5)
    assert torch.equal(out[3], torch.zeros(D))  # no valid step -> zeros
    garbage = x.clone()
    garbage[1, 3:] = 1e4  # padded steps must not win the sort
    torch.testing.assert_close(gpo(garbage, mask), out)
    torch.testing.assert_close(gpo(x[1:2, :3]), out[1:2], rtol=1e-6, atol=1e-6)  # unpadded = padded
    # constant sequences pool to the constant: the rank weights sum to one
    torch.testing.assert_close(gpo(torch.full((2, 5, D), 0.3)), torch.full((2, D), 0.3))
    with pytest.raises(ValueError, match="width"):
        gpo(torch.zeros(1, 3, D + 1))


def test_gpo_low_temperature_approaches_max_or_min() -> None:
    torch.manual_seed(3)
    gpo = GeneralizedPooling(D, hidden=8, temperature=1e-4)
    x = torch.randn(2, 7, D, generator=torch.Generator().manual_seed(4))
    weights = gpo.rank_weights(7, torch.device("cpu"))
    best = int(weights.argmax())
    ranked = torch.sort(x, dim=1, descending=True).values[:, best]  # (B, D)
    torch.testing.assert_close(gpo(x), ranked, rtol=1e-4, atol=1e-4)


def test_pvs_outputs_sampling_and_kl() -> None:
    torch.manual_seed(5)
    pvs = ProbabilisticVariationalSampler(D, hidden=8, temperature=0.1, dropout=0.0)
    x = _clips(3, seed=6)
    mu, logvar = pvs(x)
    assert mu.shape == (3, D) and logvar.shape == (3, D)
    torch.testing.assert_close(mu.norm(dim=-1), torch.ones(3))
    assert torch.isfinite(logvar).all()
    kl = kl_standard_normal(mu, logvar).detach()
    expected = sum(-0.5 * (1 + lv - m**2 - math.exp(lv)) for m, lv in zip(mu.flatten().tolist(),
                                                                        logvar.flatten().tolist())) / 3
    assert float(kl) == pytest.approx(expected, rel=1e-5) and float(kl) >= 0
    assert float(kl_standard_normal(torch.zeros(2, D), torch.zeros(2, D))) == 0.0
    copies = pvs.sample(mu, logvar, K, stochastic=False)
    assert copies.shape == (3, K, D) and torch.equal(copies, mu[:, None].expand(3, K, D))
    many = pvs.sample(mu, logvar, 20_000, stochastic=True, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(many.mean(1), mu, rtol=0, atol=0.05 * float(logvar.detach().exp().sqrt().max()) + 1e-3)
    torch.testing.assert_close(many.var(1).log(), logvar, rtol=0, atol=0.05)
    # reparameterised: the gradient reaches the variance head
    many[:, :4].sum().backward()
    assert pvs.var_from_gpo.weight.grad is not None and pvs.var_from_gpo.weight.grad.abs().sum() > 0


# ----------------------------------------------------------------------------------------------------------------
# TPS


def _queries(seed: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    query = torch.randn(7, D, generator=gen, dtype=torch.float64) * 0.3 + 0.05
    video_index = torch.tensor([0, 2, 1, 0, 2, 2, 1])
    return query, video_index


def test_tps_values_and_gradient_match_a_reference_with_detached_alpha_beta() -> None:
    query, video_index = _queries()
    query.requires_grad_(True)
    out = textual_perturbation_targets(query, video_index, 3, K, scale=0.1, generator=torch.Generator().manual_seed(9))
    assert out.shape == (3, K, D)
    # reference: explicit per-video means; alpha and beta rebuilt from the documented draw (2, B, K, D) as constants
    ref_query = query.detach().clone().requires_grad_(True)
    noise = torch.randn((2, 3, K, D), generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    refs = []
    for v in range(3):
        rows = [i for i in range(7) if int(video_index[i]) == v]
        m = torch.stack([ref_query[i] for i in rows]).mean(0)  # (D,)
        c, s = m.mean(), m.std()
        alpha = 1 + 0.1 * float(s.detach()) * noise[0, v]
        beta = float(c.detach()) + 0.1 * float(s.detach()) * noise[1, v]
        refs.append(alpha * ((m - c) / s)[None] + beta)  # (K, D)
    ref = torch.stack(refs)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    weights = torch.randn(3, K, D, generator=torch.Generator().manual_seed(10), dtype=torch.float64)
    (grad,) = torch.autograd.grad((out * weights).sum(), query)
    (ref_grad,) = torch.autograd.grad((ref * weights).sum(), ref_query)
    assert grad.abs().sum() > 0
    torch.testing.assert_close(grad, ref_grad, rtol=1e-9, atol=1e-9)


def test_tps_statistics_over_many_targets() -> None:
    query, video_index = _queries(seed=11)
    many = 40_000
    out = textual_perturbation_targets(query, video_index, 3, many, scale=0.1,
                                       generator=torch.Generator().manual_seed(12))  # (B, many, D)
    for v in range(3):
        m = query[video_index == v].mean(0)
        c, s = float(m.mean()), float(m.std())
        standardised = (m - c) / s
        torch.testing.assert_close(out[v].mean(0), standardised + c, rtol=0, atol=0.01)
        # Var z = (0.1 s)^2 (standardised^2 + 1) for alpha, beta independent
        torch.testing.assert_close(out[v].std(0), 0.1 * s * torch.sqrt(standardised**2 + 1), rtol=0.05, atol=1e-4)


def test_tps_errors() -> None:
    query, video_index = _queries()
    with pytest.raises(ValueError, match="no query"):
        textual_perturbation_targets(query, video_index, 4, K)
    with pytest.raises(ValueError, match="video_index"):
        textual_perturbation_targets(query, video_index, 2, K)
    with pytest.raises(ValueError, match="video_index"):
        textual_perturbation_targets(query, video_index[:3], 3, K)


# ----------------------------------------------------------------------------------------------------------------
# denoiser and generator


def test_denoiser_shapes_and_inputs_matter() -> None:
    torch.manual_seed(13)
    denoiser = RegisterDenoiser(D, hidden_ratio=0.25, num_layers=2, num_steps=10)
    gen = torch.Generator().manual_seed(14)
    x_t, cond = torch.randn(2, K, D, generator=gen), torch.randn(2, K, D, generator=gen)
    t = torch.tensor([0, 9])
    eps = denoiser(x_t, t, cond)
    assert eps.shape == (2, K, D)
    assert not torch.allclose(eps, denoiser(x_t, torch.tensor([5, 5]), cond))
    assert not torch.allclose(eps, denoiser(x_t, t, torch.randn(2, K, D, generator=gen)))  # LN: not cond + 1
    assert len(denoiser.layers) == 2 and denoiser.layers[0].from_input.out_features == 4


def test_generator_shapes_eval_determinism_and_batch_independence() -> None:
    model = _generator().eval()
    clips = _clips(4)
    first = model(clips)
    assert first.registers.shape == (4, K, D) and first.condition.shape == (4, K, D)
    assert first.mu is not None and first.mu.shape == (4, D) and first.logvar is not None
    assert torch.isfinite(kl_standard_normal(first.mu, first.logvar))
    second = model(clips, generator=torch.Generator().manual_seed(123))
    assert torch.equal(first.registers, second.registers)
    alone = model(clips[2:3])
    torch.testing.assert_close(alone.registers, first.registers[2:3], rtol=1e-5, atol=1e-5)
    assert first.registers.abs().max() <= 1.0  # the last step returns the clamped x0_hat


def test_generator_chain_matches_a_manual_loop() -> None:
    model = _generator(seed=15).eval()
    clips = _clips(2, seed=16)
    out = model(clips)
    schedule = model.schedule
    assert schedule is not None and model.denoiser is not None and out.mu is not None
    x = out.mu[:, None].expand(2, K, D)
    for t in range(9, -1, -1):
        eps = model.denoiser(x, torch.full((2,), t), out.condition)
        abar = float(schedule.alphas_cumprod[t])
        x0_hat = (x / math.sqrt(abar) - math.sqrt(1 / abar - 1) * eps).clamp(-1, 1)
        abar_prev = float(schedule.alphas_cumprod[t - 1]) if t > 0 else 1.0
        beta = float(schedule.betas[t])
        x = (beta * math.sqrt(abar_prev) * x0_hat + (1 - abar_prev) * math.sqrt(1 - beta) * x) / (1 - abar)
    torch.testing.assert_close(out.registers, x, rtol=1e-5, atol=1e-5)


def test_zero_steps_gives_x_T() -> None:
    model = _generator(diffusion_steps=0)
    assert model.denoiser is None
    for mode in (model.train(), model.eval()):
        out = mode(_clips(3))
        assert out.mu is not None
        assert torch.equal(out.registers, out.mu[:, None].expand(3, K, D))
    with pytest.raises(ValueError, match="dre=0"):
        model.diffusion_targets(out, torch.zeros(3, K, D))


def test_gaussian_init_fixed_in_eval_fresh_in_training() -> None:
    model = _generator(init="gaussian", diffusion_steps=0)
    assert "initial_noise" in model.state_dict() and model.pvs is None
    model.eval()
    out = model(_clips(3))
    assert out.mu is None and out.logvar is None
    expected = torch.randn((K, D), generator=torch.Generator().manual_seed(0))
    assert torch.equal(out.registers, expected[None].expand(3, K, D))
    model.train()
    a, b = model(_clips(3)).registers, model(_clips(3)).registers
    assert not torch.allclose(a, b)
    chained = _generator(init="gaussian").eval()
    clips = _clips(3)
    assert torch.equal(chained(clips).registers, chained(clips).registers)
    torch.testing.assert_close(chained(clips[:1]).registers, chained(clips).registers[:1], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="video_centric"):
        _generator(init="gaussian", diffusion_noise="video_centric")


def test_training_noise_switches_and_gradients_through_the_chain() -> None:
    model = _generator(seed=17).train()
    clips = _clips(2).requires_grad_(True)
    a = model(clips, generator=torch.Generator().manual_seed(1)).registers
    b = model(clips, generator=torch.Generator().manual_seed(1)).registers
    c = model(clips, generator=torch.Generator().manual_seed(2)).registers
    # dropout differs between calls too, so compare with dropout off
    model.condition.eval()
    model.pvs.dropout.eval()  # type: ignore[union-attr]
    a = model(clips, generator=torch.Generator().manual_seed(1)).registers
    b = model(clips, generator=torch.Generator().manual_seed(1)).registers
    c = model(clips, generator=torch.Generator().manual_seed(2)).registers
    assert torch.equal(a, b) and not torch.allclose(a, c)  # posterior noise in training
    (a * torch.randn_like(a)).sum().backward()
    assert clips.grad is not None and clips.grad.abs().sum() > 0
    assert model.condition.queries.grad is not None and model.condition.queries.grad.abs().sum() > 0
    assert model.pvs is not None and model.pvs.gate.weight.grad.abs().sum() > 0  # type: ignore[union-attr]
    assert model.denoiser is not None and model.denoiser.layers[0].from_time.weight.grad.abs().sum() > 0

    quiet = _generator(seed=17, diffusion_stochastic_in_train=False).train()
    quiet.condition.eval()
    quiet.pvs.dropout.eval()  # type: ignore[union-attr]
    x = quiet(clips, generator=torch.Generator().manual_seed(1)).registers
    y = quiet(clips, generator=torch.Generator().manual_seed(2)).registers
    assert torch.equal(x, y)
    quiet.eval()
    torch.testing.assert_close(quiet(clips).registers, x)

    sampled = _generator(seed=17, sample_init_in_train=True, diffusion_steps=0).train()
    sampled.condition.eval()
    sampled.pvs.dropout.eval()  # type: ignore[union-attr]
    out = sampled(clips, generator=torch.Generator().manual_seed(3))
    assert out.mu is not None and out.logvar is not None
    eps = torch.randn((2, K, D), generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(out.registers, out.mu[:, None] + torch.exp(0.5 * out.logvar)[:, None] * eps)


def test_diffusion_targets_gaussian_and_video_centric() -> None:
    model = _generator(seed=18).train()
    clips = _clips(3)
    out = model(clips)
    targets = torch.randn(3, K, D, generator=torch.Generator().manual_seed(19))
    pred, noise = model.diffusion_targets(out, targets, generator=torch.Generator().manual_seed(20))
    assert pred.shape == (30, K, D) and noise.shape == (30, K, D)
    assert torch.isfinite(pred).all()
    torch.testing.assert_close(noise, torch.randn((30, K, D), generator=torch.Generator().manual_seed(20)))
    # row t * B + b is x_t of video b at step t
    model.eval()
    schedule = model.schedule
    assert schedule is not None and model.denoiser is not None
    pred_eval, _ = model.diffusion_targets(out, targets, generator=torch.Generator().manual_seed(20))
    x_t = schedule.q_sample(targets[1:2], 4, noise[4 * 3 + 1 : 4 * 3 + 2])
    single = model.denoiser(x_t, torch.tensor([4]), out.condition[1:2])
    torch.testing.assert_close(pred_eval[4 * 3 + 1 : 4 * 3 + 2], single, rtol=1e-5, atol=1e-5)
    F.mse_loss(pred, noise).backward()
    assert model.condition.queries.grad is not None

    centric = _generator(seed=18, diffusion_noise="video_centric").train()
    out = centric(clips)
    pred, noise = centric.diffusion_targets(out, targets)
    assert out.mu is not None
    assert torch.equal(noise, out.mu[None, :, None].expand(10, 3, K, D).reshape(30, K, D))
    with pytest.raises(ValueError, match="targets"):
        centric.diffusion_targets(out, targets[:, :2])
