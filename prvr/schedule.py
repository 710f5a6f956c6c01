"""Gaussian diffusion noise schedules and samplers (ancestral DDPM, DDIM), kept apart from every network.

Shape letters: B batch; ``...`` any trailing shape of the diffused variable (e.g. (B, K, D) registers, (B, Q, 2) spans).

The network never owns the schedule (improved-diffusion / diffusers style): a :class:`NoiseSchedule` holds the
float64 tables, a sampler exposes two verbs (``set_timesteps`` and ``step``) and :func:`sample` runs the loop with
the network passed in as a function ``network_fn(x_t, t) -> model_output``.

Timesteps are 0-based: t = 0 is the first (least noisy) step and t = T - 1 the last, with
``alphas_cumprod[t] = prod_{i <= t} (1 - betas[i])``.
"""

from __future__ import annotations

import enum
import logging
import math
from typing import Callable, Literal

import numpy as np
import torch
from torch import Tensor

from prvr.config import DiffusionConfig

__all__ = [
    "Prediction",
    "NoiseSchedule",
    "AncestralSampler",
    "DDIMSampler",
    "cosine_betas",
    "linear_betas",
    "sample",
]

logger = logging.getLogger(__name__)

Timestep = int | Tensor


class Prediction(enum.Enum):
    """What the network predicts: the added noise (EPSILON) or the clean sample x0 (SAMPLE)."""

    EPSILON = "epsilon"
    SAMPLE = "sample"


def cosine_betas(num_steps: int, s: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
    """Cosine schedule of Nichol & Dhariwal (2021), "Improved DDPM", eq. 17.

    abar(u) = cos(((u / T + s) / (1 + s)) * pi / 2)^2 and beta_t = min(1 - abar(t + 1) / abar(t), max_beta).

    Args:
        num_steps: T >= 1.
        s: small offset that keeps beta_0 away from 0.
        max_beta: upper clip of every beta (the last beta is ~1 without it).

    Returns:
        (T,) float64 betas.
    """

    def abar(u: float) -> float:
        return math.cos((u / num_steps + s) / (1.0 + s) * math.pi / 2.0) ** 2

    betas = [min(1.0 - abar(t + 1) / abar(t), max_beta) for t in range(num_steps)]
    return np.asarray(betas, dtype=np.float64)


def linear_betas(
    num_steps: int, start: float | None = None, end: float | None = None, max_beta: float = 0.999
) -> np.ndarray:
    """Linear schedule of Ho et al. (2020); the default range is DDPM's (1e-4, 0.02) scaled by 1000 / T.

    Args:
        num_steps: T >= 1.
        start: beta_0 (default 1e-4 * 1000 / T).
        end: beta_{T-1} (default 0.02 * 1000 / T).
        max_beta: upper clip of every beta (short schedules reach beta > 1 otherwise).

    Returns:
        (T,) float64 betas.
    """
    scale = 1000.0 / num_steps
    start = 1e-4 * scale if start is None else start
    end = 0.02 * scale if end is None else end
    return np.minimum(np.linspace(start, end, num_steps, dtype=np.float64), max_beta)


class NoiseSchedule:
    """Forward process q(x_t | x_0) and posterior q(x_{t-1} | x_t, x_0) of a discrete Gaussian diffusion.

    Tables are float64 numpy arrays; every method casts the values it needs to the dtype and device of its tensor
    inputs, so one schedule serves CPU and GPU, float32 and float16 callers alike.

    Args:
        num_steps: T, the number of diffusion steps (>= 1).
        kind: "cosine" (Nichol & Dhariwal) or "linear" (Ho et al.).
        cosine_s: offset s of the cosine schedule.
        max_beta: upper clip of the betas.
        linear_start: beta_0 of the linear schedule (None = 1e-4 * 1000 / T).
        linear_end: beta_{T-1} of the linear schedule (None = 0.02 * 1000 / T).
    """

    def __init__(
        self,
        num_steps: int,
        kind: Literal["cosine", "linear"] = "cosine",
        cosine_s: float = 0.008,
        max_beta: float = 0.999,
        linear_start: float | None = None,
        linear_end: float | None = None,
    ) -> None:
        if num_steps < 1:
            raise ValueError(
                f"a noise schedule needs num_steps >= 1, got {num_steps}; steps=0 means no diffusion and no schedule"
            )
        if not 0.0 < max_beta < 1.0:
            raise ValueError(f"max_beta must lie in (0, 1), got {max_beta}")
        if kind == "cosine":
            betas = cosine_betas(num_steps, cosine_s, max_beta)
        elif kind == "linear":
            betas = linear_betas(num_steps, linear_start, linear_end, max_beta)
        else:
            raise ValueError(f"unknown schedule kind {kind!r}; choose 'cosine' or 'linear'")
        if not (np.all(betas > 0.0) and np.all(betas <= max_beta)):
            raise ValueError(
                f"betas must lie in (0, {max_beta}]; check the linear range ({linear_start}, {linear_end})"
            )
        self.num_steps = num_steps
        self.kind = kind
        self.betas = betas  # (T,)
        self.alphas = 1.0 - betas
        self.alphas_cumprod = np.cumprod(self.alphas)
        self.alphas_cumprod_prev = np.concatenate([[1.0], self.alphas_cumprod[:-1]])
        self.sqrt_alphas_cumprod = np.sqrt(self.alphas_cumprod)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - self.alphas_cumprod)
        self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod)
        self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod - 1.0)
        # Posterior q(x_{t-1} | x_t, x_0) = N(coef1 x_0 + coef2 x_t, variance); variance is 0 at t = 0.
        one_minus = 1.0 - self.alphas_cumprod
        self.posterior_variance = betas * (1.0 - self.alphas_cumprod_prev) / one_minus
        self.posterior_mean_coef1 = betas * np.sqrt(self.alphas_cumprod_prev) / one_minus
        self.posterior_mean_coef2 = (1.0 - self.alphas_cumprod_prev) * np.sqrt(self.alphas) / one_minus

    @classmethod
    def from_config(cls, config: DiffusionConfig) -> NoiseSchedule:
        """The schedule described by a :class:`~prvr.config.DiffusionConfig` (needs ``config.steps >= 1``)."""
        return cls(config.steps, kind=config.schedule, cosine_s=config.cosine_s, max_beta=config.max_beta)

    def __len__(self) -> int:
        return self.num_steps

    def __repr__(self) -> str:
        return f"NoiseSchedule(num_steps={self.num_steps}, kind={self.kind!r})"

    # ------------------------------------------------------------------------------------------------------------
    # table lookup

    def _extract(self, table: np.ndarray, t: Timestep, like: Tensor) -> Tensor:
        """``table[t]`` as a tensor on ``like``'s device and dtype, broadcastable against ``like``.

        Args:
            table: (T,) float64.
            t: python int (one step for the whole batch) or long tensor (B,) (one step per sample).
            like: (B, ...) the tensor the value will multiply.

        Returns:
            0-d tensor for an int ``t``; (B, 1, ..., 1) for a tensor ``t``.
        """
        if isinstance(t, Tensor):
            if t.dim() == 0:
                t = int(t.item())
            else:
                if t.dim() != 1 or (like.dim() > 0 and t.shape[0] != like.shape[0]):
                    raise ValueError(
                        f"t must be an int or a (B,) long tensor matching the batch size {like.shape[:1]}, "
                        f"got shape {tuple(t.shape)}"
                    )
                values = torch.from_numpy(table).to(device=like.device, dtype=like.dtype)
                picked = values[t.to(device=like.device, dtype=torch.long)]  # (B,)
                return picked.reshape(-1, *([1] * (like.dim() - 1)))  # (B, 1, ..., 1)
        if not 0 <= int(t) < self.num_steps:
            raise ValueError(f"timestep {t} is outside [0, {self.num_steps - 1}]")
        return torch.tensor(float(table[int(t)]), device=like.device, dtype=like.dtype)

    # ------------------------------------------------------------------------------------------------------------
    # forward process and conversions

    def q_sample(self, x_start: Tensor, t: Timestep, noise: Tensor) -> Tensor:
        """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps.

        Args:
            x_start: (B, ...) clean sample x_0.
            t: int or (B,) long tensor.
            noise: (B, ...) eps, same shape as ``x_start``.

        Returns:
            (B, ...) x_t.
        """
        if noise.shape != x_start.shape:
            raise ValueError(f"noise shape {tuple(noise.shape)} differs from x_start shape {tuple(x_start.shape)}")
        return (
            self._extract(self.sqrt_alphas_cumprod, t, x_start) * x_start
            + self._extract(self.sqrt_one_minus_alphas_cumprod, t, x_start) * noise
        )

    def predict_x0_from_eps(self, x_t: Tensor, t: Timestep, eps: Tensor) -> Tensor:
        """x_0 = sqrt(1 / abar_t) x_t - sqrt(1 / abar_t - 1) eps (inverse of :meth:`q_sample`)."""
        return (
            self._extract(self.sqrt_recip_alphas_cumprod, t, x_t) * x_t
            - self._extract(self.sqrt_recipm1_alphas_cumprod, t, x_t) * eps
        )

    def predict_eps_from_x0(self, x_t: Tensor, t: Timestep, x0: Tensor) -> Tensor:
        """eps = (sqrt(1 / abar_t) x_t - x_0) / sqrt(1 / abar_t - 1)."""
        return (self._extract(self.sqrt_recip_alphas_cumprod, t, x_t) * x_t - x0) / self._extract(
            self.sqrt_recipm1_alphas_cumprod, t, x_t
        )

    def posterior_mean(self, x0: Tensor, x_t: Tensor, t: Timestep) -> Tensor:
        """Mean of q(x_{t-1} | x_t, x_0): coef1_t x_0 + coef2_t x_t (equals x_0 at t = 0)."""
        return (
            self._extract(self.posterior_mean_coef1, t, x_t) * x0
            + self._extract(self.posterior_mean_coef2, t, x_t) * x_t
        )

    def posterior_std(self, t: Timestep, like: Tensor | None = None) -> Tensor:
        """Standard deviation of q(x_{t-1} | x_t, x_0), sqrt(beta_t (1 - abar_{t-1}) / (1 - abar_t)); 0 at t = 0.

        Args:
            t: int or (B,) long tensor.
            like: a (B, ...) tensor giving device, dtype and the broadcast shape (default: CPU float32, 1-D).
        """
        if like is None:
            like = torch.zeros(t.shape[0] if isinstance(t, Tensor) and t.dim() == 1 else 1)
        return self._extract(np.sqrt(self.posterior_variance), t, like)

    def to_model_outputs(
        self, model_output: Tensor, t: Timestep, x_t: Tensor, prediction: Prediction, clip_sample: float | None
    ) -> tuple[Tensor, Tensor]:
        """(x0_hat, eps_hat) from a network output; x0_hat is clamped to +-clip_sample and eps_hat re-derived from it.

        Args:
            model_output: (B, ...) predicted eps or x0, per ``prediction``.
            t: int or (B,) long tensor.
            x_t: (B, ...) current sample.
            prediction: what ``model_output`` is.
            clip_sample: clamp bound for x0_hat, or None.

        Returns:
            x0_hat (B, ...), eps_hat (B, ...).
        """
        prediction = Prediction(prediction)
        if prediction is Prediction.EPSILON:
            x0_hat = self.predict_x0_from_eps(x_t, t, model_output)
        else:
            x0_hat = model_output
        if clip_sample is not None:
            x0_hat = x0_hat.clamp(-clip_sample, clip_sample)
        return x0_hat, self.predict_eps_from_x0(x_t, t, x0_hat)


def _gaussian_like(x: Tensor, generator: torch.Generator | None) -> Tensor:
    """N(0, I) noise of ``x``'s shape, device and dtype from ``generator`` (which must live on that device)."""
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


class AncestralSampler:
    """DDPM ancestral sampling: x_{t-1} = posterior mean(x0_hat, x_t) + [t > 0] sigma_t z, over all T steps."""

    def __init__(self, schedule: NoiseSchedule) -> None:
        self.schedule = schedule
        self.timesteps: list[int] = self.set_timesteps()

    def set_timesteps(self) -> list[int]:
        """All steps, T-1 down to 0 (ancestral sampling cannot skip steps)."""
        self.timesteps = list(range(self.schedule.num_steps - 1, -1, -1))
        return self.timesteps

    def step(
        self,
        model_output: Tensor,
        t: Timestep,
        x_t: Tensor,
        *,
        prediction: Prediction,
        clip_sample: float | None,
        generator: torch.Generator | None = None,
        add_noise: bool = True,
    ) -> Tensor:
        """One reverse step x_t -> x_{t-1}.

        Args:
            model_output: (B, ...) the network's eps or x0 prediction at (x_t, t).
            t: int or (B,) long tensor.
            x_t: (B, ...) current sample.
            prediction: what ``model_output`` is.
            clip_sample: clamp bound for x0_hat, or None.
            generator: seeds the posterior noise.
            add_noise: False gives the posterior mean (deterministic); noise is never added at t = 0.

        Returns:
            (B, ...) x_{t-1} (at t = 0: the clamped x0_hat).
        """
        schedule = self.schedule
        x0_hat, _ = schedule.to_model_outputs(model_output, t, x_t, prediction, clip_sample)
        mean = schedule.posterior_mean(x0_hat, x_t, t)
        if not add_noise or (not isinstance(t, Tensor) and int(t) == 0):
            return mean
        std = schedule.posterior_std(t, x_t)  # 0 at t = 0, so per-sample t needs no extra mask
        return mean + std * _gaussian_like(x_t, generator)


class DDIMSampler:
    """DDIM (Song et al., 2021) over an evenly spaced subset of the T training steps; eta = 0 is deterministic.

    Args:
        schedule: the training schedule.
        eta: 0 = deterministic DDIM, 1 = DDPM-like stochasticity.
    """

    def __init__(self, schedule: NoiseSchedule, eta: float = 0.0) -> None:
        if eta < 0:
            raise ValueError(f"eta must be >= 0, got {eta}")
        self.schedule = schedule
        self.eta = eta
        self.timesteps: list[int] = self.set_timesteps(schedule.num_steps)

    def set_timesteps(self, num_inference_steps: int) -> list[int]:
        """The S timesteps visited, from T-1 down: ``floor(linspace(-1, T - 1, S + 1))`` reversed, the -1 dropped.

        The step after the last listed timestep is the final one (``t_prev = -1``, return x0_hat). Examples with
        T = 1000: S = 1 -> [999]; S = 4 -> [999, 749, 499, 249]; S = T -> [999, 998, ..., 0].

        Args:
            num_inference_steps: S in [1, T].

        Returns:
            the S timesteps, strictly decreasing.
        """
        total = self.schedule.num_steps
        if not 1 <= num_inference_steps <= total:
            raise ValueError(f"num_inference_steps must lie in [1, {total}], got {num_inference_steps}")
        grid = np.floor(np.linspace(-1.0, total - 1.0, num_inference_steps + 1) + 1e-9).astype(np.int64)
        self.timesteps = [int(v) for v in grid[::-1][:-1]]
        return self.timesteps

    def previous_timestep(self, t: int) -> int:
        """The step after ``t`` in the current list (-1 after the last one)."""
        index = self.timesteps.index(t)
        return self.timesteps[index + 1] if index + 1 < len(self.timesteps) else -1

    def step(
        self,
        model_output: Tensor,
        t: Timestep,
        t_prev: Timestep | None,
        x_t: Tensor,
        *,
        prediction: Prediction,
        clip_sample: float | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """One DDIM update x_t -> x_{t_prev}.

        x_{t'} = sqrt(abar_t') x0_hat + sqrt(1 - abar_t' - sigma^2) eps_hat + sigma z, with
        sigma = eta sqrt((1 - abar_t') / (1 - abar_t)) sqrt(1 - abar_t / abar_t').
        When ``t_prev`` is None or negative (per sample for a tensor) this is the last step and x0_hat is returned:
        abar is never indexed at -1.

        Args:
            model_output: (B, ...) the network's eps or x0 prediction at (x_t, t).
            t: int or (B,) long tensor.
            t_prev: int, (B,) long tensor, or None; negative / None = final step.
            x_t: (B, ...) current sample.
            prediction: what ``model_output`` is.
            clip_sample: clamp bound for x0_hat, or None.
            generator: seeds the noise when eta > 0.

        Returns:
            (B, ...) x_{t_prev}, or x0_hat at the final step.
        """
        schedule = self.schedule
        x0_hat, eps_hat = schedule.to_model_outputs(model_output, t, x_t, prediction, clip_sample)
        if t_prev is None or (not isinstance(t_prev, Tensor) and int(t_prev) < 0):
            return x0_hat
        final = None
        if isinstance(t_prev, Tensor):
            final = (t_prev < 0).reshape(-1, *([1] * (x_t.dim() - 1)))  # (B, 1, ..., 1)
            t_prev = t_prev.clamp_min(0)
        abar_t = schedule._extract(schedule.alphas_cumprod, t, x_t)
        abar_prev = schedule._extract(schedule.alphas_cumprod, t_prev, x_t)
        sigma = self.eta * torch.sqrt((1.0 - abar_prev) / (1.0 - abar_t) * (1.0 - abar_t / abar_prev))
        direction = torch.sqrt((1.0 - abar_prev - sigma**2).clamp_min(0.0))
        x_prev = torch.sqrt(abar_prev) * x0_hat + direction * eps_hat
        if self.eta > 0:
            x_prev = x_prev + sigma * _gaussian_like(x_t, generator)
        if final is not None:
            x_prev = torch.where(final, x0_hat, x_prev)
        return x_prev


def sample(
    network_fn: Callable[[Tensor, Tensor], Tensor],
    x_T: Tensor,
    sampler: AncestralSampler | DDIMSampler,
    *,
    prediction: Prediction,
    clip_sample: float | None = None,
    generator: torch.Generator | None = None,
    num_inference_steps: int | None = None,
    add_noise: bool = True,
) -> Tensor:
    """Run the reverse process from x_T with ``sampler``; the network is an argument, never owned.

    Args:
        network_fn: ``(x_t (B, ...), t (B,) long) -> model_output (B, ...)``.
        x_T: (B, ...) starting sample.
        sampler: an :class:`AncestralSampler` (all T steps) or a :class:`DDIMSampler`.
        prediction: what the network predicts.
        clip_sample: clamp bound for x0_hat, or None.
        generator: seeds the sampler noise.
        num_inference_steps: DDIM only: S steps (default T).
        add_noise: ancestral only: False = posterior means (deterministic chain).

    Returns:
        (B, ...) the final sample (x_0 for ancestral sampling, x0_hat of the last step for DDIM).
    """
    x_t = x_T
    batch = x_T.shape[0]

    def timestep(value: int) -> Tensor:
        return torch.full((batch,), value, dtype=torch.long, device=x_T.device)  # (B,)

    if isinstance(sampler, AncestralSampler):
        for t in sampler.set_timesteps():
            output = network_fn(x_t, timestep(t))
            x_t = sampler.step(
                output, t, x_t, prediction=prediction, clip_sample=clip_sample, generator=generator, add_noise=add_noise
            )
        return x_t
    if isinstance(sampler, DDIMSampler):
        timesteps = sampler.set_timesteps(num_inference_steps or sampler.schedule.num_steps)
        for t, t_prev in zip(timesteps, timesteps[1:] + [-1]):
            output = network_fn(x_t, timestep(t))
            x_t = sampler.step(
                output, t, t_prev, x_t, prediction=prediction, clip_sample=clip_sample, generator=generator
            )
        return x_t
    raise ValueError(f"unsupported sampler {type(sampler).__name__}; pass an AncestralSampler or a DDIMSampler")
