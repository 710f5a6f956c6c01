"""Noise schedule and samplers against hand formulas and slow explicit loops."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import reference
from prvr.config import DiffusionConfig
from prvr.schedule import AncestralSampler, DDIMSampler, NoiseSchedule, Prediction, sample


def _cosine_f(u: float, total: int, s: float = 0.008) -> float:
    return math.cos((u / total + s) / (1 + s) * math.pi / 2) ** 2


@pytest.mark.parametrize("kind", ["cosine", "linear"])
@pytest.mark.parametrize("steps", [1, 10, 1000])
def test_betas_in_range_and_alphas_cumprod_decreasing(kind: str, steps: int) -> None:
    schedule = NoiseSchedule(steps, kind=kind, max_beta=0.999)
    assert schedule.betas.shape == (steps,)
    assert np.all(schedule.betas > 0) and np.all(schedule.betas <= 0.999)
    assert np.all(np.diff(schedule.alphas_cumprod) < 0)
    assert schedule.alphas_cumprod_prev[0] == 1.0
    np.testing.assert_allclose(schedule.alphas_cumprod_prev[1:], schedule.alphas_cumprod[:-1])
    assert np.all(np.isfinite(schedule.posterior_mean_coef1)) and np.all(np.isfinite(schedule.posterior_variance))


def test_cosine_values_match_hand_formula() -> None:
    total = 10
    schedule = NoiseSchedule(total, kind="cosine", cosine_s=0.008, max_beta=0.999)
    f0 = _cosine_f(0, total)
    for t in (0, 3, 7):  # unclipped steps: abar_t = f(t + 1) / f(0)
        assert schedule.alphas_cumprod[t] == pytest.approx(_cosine_f(t + 1, total) / f0, rel=1e-12)
    assert schedule.betas[0] == pytest.approx(1 - _cosine_f(1, total) / f0, rel=1e-12)
    assert schedule.betas[-1] == 0.999  # 1 - f(T)/f(T-1) ~ 1 is clipped
    # a few absolute numbers, computed once by hand with the formula above
    assert schedule.alphas_cumprod[0] == pytest.approx(0.9720927371, abs=1e-9)
    assert schedule.alphas_cumprod[4] == pytest.approx(0.4938435904, abs=1e-9)


def test_linear_schedule_default_range() -> None:
    schedule = NoiseSchedule(1000, kind="linear")
    assert schedule.betas[0] == pytest.approx(1e-4)
    assert schedule.betas[-1] == pytest.approx(0.02)
    short = NoiseSchedule(10, kind="linear")
    assert short.betas[-1] == 0.999  # 0.02 * 100 = 2.0 is clipped


def test_from_config_and_errors() -> None:
    schedule = NoiseSchedule.from_config(DiffusionConfig(steps=7, schedule="linear", max_beta=0.5))
    assert len(schedule) == 7 and schedule.kind == "linear" and schedule.betas.max() <= 0.5
    with pytest.raises(ValueError, match="num_steps"):
        NoiseSchedule(0)
    with pytest.raises(ValueError, match="kind"):
        NoiseSchedule(5, kind="sigmoid")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="outside"):
        schedule.q_sample(torch.zeros(2, 3), 7, torch.zeros(2, 3))


def test_q_sample_closed_form_vs_product_loop() -> None:
    schedule = NoiseSchedule(10)
    gen = torch.Generator().manual_seed(0)
    x_start = torch.randn(4, 3, 5, generator=gen, dtype=torch.float64)
    noise = torch.randn(4, 3, 5, generator=gen, dtype=torch.float64)
    t = torch.tensor([0, 3, 9, 5])
    out = schedule.q_sample(x_start, t, noise)
    for row in range(4):
        abar = 1.0
        for i in range(int(t[row]) + 1):
            abar *= 1.0 - float(schedule.betas[i])
        expected = math.sqrt(abar) * x_start[row] + math.sqrt(1 - abar) * noise[row]
        torch.testing.assert_close(out[row], expected, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(schedule.q_sample(x_start[row : row + 1], int(t[row]), noise[row : row + 1]),
                                   expected[None], rtol=1e-12, atol=1e-12)


def test_q_sample_by_sequential_noising_has_the_closed_form_statistics() -> None:
    schedule = NoiseSchedule(10)
    gen = torch.Generator().manual_seed(1)
    x_start = torch.full((200_000,), 0.7, dtype=torch.float64)
    x = x_start.clone()
    for i in range(5):  # x_i = sqrt(1 - beta_i) x_{i-1} + sqrt(beta_i) z, steps 0..4
        x = math.sqrt(1 - schedule.betas[i]) * x + math.sqrt(schedule.betas[i]) * torch.randn(x.shape, generator=gen,
                                                                                              dtype=torch.float64)
    abar = schedule.alphas_cumprod[4]
    assert float(x.mean()) == pytest.approx(math.sqrt(abar) * 0.7, abs=5e-3)
    assert float(x.var()) == pytest.approx(1 - abar, abs=5e-3)


def test_dtype_and_device_follow_inputs() -> None:
    schedule = NoiseSchedule(10)
    x = torch.randn(2, 4, dtype=torch.float32)
    assert schedule.q_sample(x, torch.tensor([1, 2]), x).dtype == torch.float32
    assert schedule.predict_x0_from_eps(x.double(), 3, x.double()).dtype == torch.float64
    assert schedule.posterior_std(torch.tensor([0, 4]), x).shape == (2, 1)


def test_x0_eps_round_trip() -> None:
    schedule = NoiseSchedule(1000, kind="linear")
    gen = torch.Generator().manual_seed(2)
    x0 = torch.randn(6, 8, generator=gen, dtype=torch.float64)
    eps = torch.randn(6, 8, generator=gen, dtype=torch.float64)
    t = torch.tensor([0, 1, 10, 500, 998, 999])
    x_t = schedule.q_sample(x0, t, eps)
    torch.testing.assert_close(schedule.predict_x0_from_eps(x_t, t, eps), x0, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(schedule.predict_eps_from_x0(x_t, t, x0), eps, rtol=1e-9, atol=1e-9)


def test_posterior_matches_gaussian_product_by_hand() -> None:
    """q(x_{t-1} | x_t, x_0) from Bayes: N(sqrt(abar') x0, 1 - abar') times N(x_t; sqrt(alpha_t) x_{t-1}, beta_t)."""
    schedule = NoiseSchedule(10)
    gen = torch.Generator().manual_seed(3)
    x0 = torch.randn(3, 4, generator=gen, dtype=torch.float64)
    x_t = torch.randn(3, 4, generator=gen, dtype=torch.float64)
    for t in range(1, 10):
        abar_prev = float(np.prod(1 - schedule.betas[:t]))
        beta = float(schedule.betas[t])
        precision = 1 / (1 - abar_prev) + (1 - beta) / beta
        mean = (math.sqrt(abar_prev) * x0 / (1 - abar_prev) + math.sqrt(1 - beta) * x_t / beta) / precision
        torch.testing.assert_close(schedule.posterior_mean(x0, x_t, t), mean, rtol=1e-9, atol=1e-9)
        assert float(schedule.posterior_std(t)) == pytest.approx(math.sqrt(1 / precision), rel=1e-5)
    torch.testing.assert_close(schedule.posterior_mean(x0, x_t, 0), x0)  # t = 0: the posterior is x_0 itself
    assert float(schedule.posterior_std(0)) == 0.0
    t_vec = torch.tensor([0, 4, 9])
    per_sample = schedule.posterior_mean(x0, x_t, t_vec)
    for row in range(3):
        torch.testing.assert_close(per_sample[row], schedule.posterior_mean(x0[row : row + 1], x_t[row : row + 1],
                                                                            int(t_vec[row]))[0])


# ----------------------------------------------------------------------------------------------------------------
# samplers


def test_ddim_set_timesteps() -> None:
    sampler = DDIMSampler(NoiseSchedule(1000, kind="linear"))
    assert sampler.set_timesteps(1) == [999]
    assert sampler.set_timesteps(4) == [999, 749, 499, 249]
    assert sampler.set_timesteps(3) == [999, 665, 332]
    assert sampler.previous_timestep(665) == 332 and sampler.previous_timestep(332) == -1
    assert sampler.set_timesteps(1000) == list(range(999, -1, -1))
    assert DDIMSampler(NoiseSchedule(10)).set_timesteps(5) == [9, 7, 5, 3, 1]
    with pytest.raises(ValueError, match="num_inference_steps"):
        sampler.set_timesteps(0)
    with pytest.raises(ValueError, match="num_inference_steps"):
        sampler.set_timesteps(1001)


def test_ancestral_set_timesteps() -> None:
    assert AncestralSampler(NoiseSchedule(10)).set_timesteps() == list(range(9, -1, -1))


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_fixed_x0_denoiser_converges_and_last_step_is_x0(eta: float) -> None:
    schedule = NoiseSchedule(1000)
    sampler = DDIMSampler(schedule, eta=eta)
    gen = torch.Generator().manual_seed(4)
    target = torch.rand(5, 3, 2, generator=gen) * 2 - 1  # (B, Q, 2) within the clip range
    x = torch.randn(5, 3, 2, generator=gen)
    timesteps = sampler.set_timesteps(4)
    distances = []
    for t, t_prev in zip(timesteps, timesteps[1:] + [-1]):
        x = sampler.step(target, t, t_prev, x, prediction=Prediction.SAMPLE, clip_sample=1.0, generator=gen)
        assert torch.isfinite(x).all()
        distances.append(float((x - target).abs().max()))
    assert distances[-1] == pytest.approx(0.0, abs=1e-6)
    if eta == 0.0:
        assert all(b < a for a, b in zip(distances, distances[1:]))
    # the final step returns x0_hat for None, a negative int and a negative per-sample tensor
    for final in (None, -1, torch.full((5,), -1)):
        out = sampler.step(target * 3, 249, final, x, prediction=Prediction.SAMPLE, clip_sample=1.0)
        torch.testing.assert_close(out, (target * 3).clamp(-1, 1))


def test_ddim_eta0_with_true_noise_follows_the_forward_marginals() -> None:
    """If the network predicts the exact eps, a deterministic DDIM step lands on q_sample(x0, t', eps)."""
    schedule = NoiseSchedule(100, kind="linear")
    sampler = DDIMSampler(schedule, eta=0.0)
    gen = torch.Generator().manual_seed(5)
    x0 = torch.randn(4, 6, generator=gen, dtype=torch.float64)
    eps = torch.randn(4, 6, generator=gen, dtype=torch.float64)
    x_t = schedule.q_sample(x0, 80, eps)
    out = sampler.step(eps, 80, 30, x_t, prediction=Prediction.EPSILON)
    torch.testing.assert_close(out, schedule.q_sample(x0, 30, eps), rtol=1e-9, atol=1e-9)
    mixed = sampler.step(eps, torch.full((4,), 80), torch.tensor([30, -1, 30, -1]), x_t, prediction="epsilon")
    torch.testing.assert_close(mixed[0], out[0], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(mixed[1], x0[1], rtol=1e-9, atol=1e-9)


def test_ddim_seeded_toy_run_matches_naive_loop_and_pinned_values() -> None:
    schedule = NoiseSchedule(1000)
    sampler = DDIMSampler(schedule, eta=0.5)
    x_T = torch.randn(8, 5, 2, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    out = sample(
        lambda x, t: 0.5 * torch.tanh(x) + 0.1,
        x_T,
        sampler,
        prediction=Prediction.SAMPLE,
        clip_sample=1.0,
        generator=torch.Generator().manual_seed(7),
        num_inference_steps=5,
    )
    expected = reference.toy_ddim(schedule, x_T, sampler.timesteps, 0.5, seed=7)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)
    assert float(out.sum()) == pytest.approx(PINNED_DDIM_SUM, abs=1e-8)
    assert float(out.mean()) == pytest.approx(PINNED_DDIM_MEAN, abs=1e-10)
    again = sample(lambda x, t: 0.5 * torch.tanh(x) + 0.1, x_T, sampler, prediction=Prediction.SAMPLE,
                   clip_sample=1.0, generator=torch.Generator().manual_seed(7), num_inference_steps=5)
    assert torch.equal(out, again)


PINNED_DDIM_SUM = 12.812442445859567
PINNED_DDIM_MEAN = 0.16015553057324458


def test_ancestral_step_formula_and_noise_rules() -> None:
    schedule = NoiseSchedule(10)
    sampler = AncestralSampler(schedule)
    gen = torch.Generator().manual_seed(8)
    x_t = torch.randn(3, 4, 5, generator=gen, dtype=torch.float64) * 2
    eps = torch.randn(3, 4, 5, generator=gen, dtype=torch.float64)
    for t in (9, 4, 1):
        abar = float(schedule.alphas_cumprod[t])
        x0_hat = (x_t / math.sqrt(abar) - math.sqrt(1 / abar - 1) * eps).clamp(-1, 1)
        mean = schedule.posterior_mean_coef1[t] * x0_hat + schedule.posterior_mean_coef2[t] * x_t
        out = sampler.step(eps, t, x_t, prediction=Prediction.EPSILON, clip_sample=1.0, add_noise=False)
        torch.testing.assert_close(out, mean, rtol=1e-10, atol=1e-10)
        noisy = sampler.step(eps, t, x_t, prediction=Prediction.EPSILON, clip_sample=1.0,
                             generator=torch.Generator().manual_seed(9))
        z = torch.randn(x_t.shape, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
        torch.testing.assert_close(noisy, mean + math.sqrt(schedule.posterior_variance[t]) * z, rtol=1e-10, atol=1e-10)
    # t = 0 never adds noise and returns the clamped x0_hat; the same holds per sample
    final = sampler.step(eps, 0, x_t, prediction=Prediction.EPSILON, clip_sample=1.0, generator=gen)
    torch.testing.assert_close(final, schedule.predict_x0_from_eps(x_t, 0, eps).clamp(-1, 1))
    per_sample = sampler.step(eps, torch.tensor([0, 0, 0]), x_t, prediction=Prediction.EPSILON, clip_sample=1.0,
                              generator=gen)
    torch.testing.assert_close(per_sample, final)
    unclipped = sampler.step(eps, 0, x_t, prediction=Prediction.EPSILON, clip_sample=None)
    assert unclipped.abs().max() > 1.0


def test_ancestral_loop_with_x0_network_reaches_target() -> None:
    schedule = NoiseSchedule(10)
    target = torch.linspace(-0.9, 0.9, 12).reshape(2, 3, 2)
    x_T = torch.randn(2, 3, 2, generator=torch.Generator().manual_seed(10))
    seen: list[int] = []

    def network(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        assert t.shape == (2,) and t.dtype == torch.long
        seen.append(int(t[0]))
        return target

    out = sample(network, x_T, AncestralSampler(schedule), prediction=Prediction.SAMPLE, clip_sample=1.0,
                 generator=torch.Generator().manual_seed(11))
    assert seen == list(range(9, -1, -1))
    torch.testing.assert_close(out, target)
