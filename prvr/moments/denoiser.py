"""The moment denoiser network and the span diffusion process that drives it (kept apart, improved-diffusion style).

Shape letters: B batch of (query, video) pairs, Q span proposals, G ground-truth spans of one sample, F frames,
L query tokens.

:class:`MomentDenoiser` is the network: ``encode`` builds the condition once per (query, video) pair, ``forward``
denoises spans given the condition. :class:`SpanDiffusion` owns the noise schedule (``prvr.schedule``): the signal
scaling x0 = lambda (2 g - 1), the training corruption with random-span padding, and the DDIM loop (through
:func:`prvr.schedule.sample`, x0 taken at the last step, seeded).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from prvr.moments.condition import Condition, ConditionGenerator
from prvr.moments.config import MomentConfig
from prvr.moments.decoders import DecoderOutput, build_decoder
from prvr.schedule import DDIMSampler, NoiseSchedule, Prediction, sample

__all__ = ["MomentDenoiser", "SpanDiffusion", "random_spans_cw"]

_MIN_WIDTH = 0.01


class MomentDenoiser(nn.Module):
    """Condition generator + span decoder (the one named by ``config.network.decoder``)."""

    def __init__(self, config: MomentConfig) -> None:
        super().__init__()
        self.config = config
        self.condition = ConditionGenerator(config.network, config.video_dim, config.text_dim)
        self.decoder = build_decoder(config.network)

    def encode(self, video: Tensor, video_mask: Tensor, text: Tensor, text_mask: Tensor) -> Condition:
        """(B, F, D_v), (B, F), (B, L, D_t), (B, L) -> the condition (memory, mask, relevance logits)."""
        return self.condition(video, video_mask, text, text_mask)

    def forward(self, spans_cw: Tensor, t: Tensor, condition: Condition) -> DecoderOutput:
        """Denoise (B, Q, 2) spans in [0, 1] at timesteps t (B,) under ``condition``: per-layer x0 predictions."""
        return self.decoder(spans_cw, t, condition)


def random_spans_cw(shape: tuple[int, ...], generator: torch.Generator | None = None,
                    device: torch.device | str = "cpu") -> Tensor:
    """Random padding spans: centre and width ~ N(0.5, (1/6)^2), clamped to [0, 1], width >= 0.01: (*shape, 2)."""
    spans = torch.randn((*shape, 2), generator=generator, device=device) / 6.0 + 0.5
    centre = spans[..., 0].clamp(0.0, 1.0)
    width = spans[..., 1].clamp(_MIN_WIDTH, 1.0)
    return torch.stack([centre, width], dim=-1)


class SpanDiffusion:
    """Gaussian diffusion of (centre, width) spans in the signal space [-lambda, lambda] (x0-prediction).

    Args:
        config: gives the schedule (``diffusion.steps`` T, ``diffusion.schedule``), the signal scale lambda
            (``diffusion.signal_scale``) and the sampler's ``inference.eta``.
    """

    def __init__(self, config: MomentConfig) -> None:
        self.scale = float(config.diffusion.signal_scale)
        self.schedule = NoiseSchedule(config.diffusion.steps, kind=config.diffusion.schedule)
        self.sampler = DDIMSampler(self.schedule, eta=config.inference.eta)

    def to_signal(self, spans_cw: Tensor) -> Tensor:
        """[0, 1] spans -> signal space: x = lambda (2 g - 1)."""
        return self.scale * (2.0 * spans_cw - 1.0)

    def from_signal(self, x: Tensor) -> Tensor:
        """Signal space -> [0, 1] spans, clamping to [-lambda, lambda] first."""
        return (x.clamp(-self.scale, self.scale) / self.scale + 1.0) / 2.0

    def training_targets(self, targets_cw: list[Tensor], num_proposals: int,
                         generator: torch.Generator | None = None) -> Tensor:
        """x0 of each sample: its ground-truth spans (at most ``num_proposals``) padded with random spans.

        Returns:
            (B, Q, 2) spans in [0, 1] (Q = num_proposals).
        """
        rows = []
        for target in targets_cw:
            padding = random_spans_cw((num_proposals,), generator)  # (Q, 2)
            kept = target[:num_proposals].to(padding)
            rows.append(torch.cat([kept, padding[kept.shape[0]:]], dim=0))
        return torch.stack(rows)  # (B, Q, 2)

    def corrupt(self, x_start_cw: Tensor, t: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Noisy spans at timesteps t (B,): q_sample in the signal space, clamped, mapped back to [0, 1]."""
        x_start = self.to_signal(x_start_cw)
        noise = torch.randn(x_start.shape, generator=generator, device=x_start.device)
        return self.from_signal(self.schedule.q_sample(x_start, t, noise))

    def sample(self, model: MomentDenoiser, condition: Condition, num_spans: int, steps: int,
               generator: torch.Generator | None = None, x_T: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """DDIM from pure noise: S steps from t = T - 1 down; the last step returns x0_hat (never abar[-1]).

        Args:
            model: the denoiser.
            condition: the condition of B pairs.
            num_spans: Q, spans sampled per pair.
            steps: S, DDIM steps.
            generator: seeds x_T when it is not given (and the sampler noise when eta > 0).
            x_T: (B, Q, 2) starting noise in the signal space, or None to draw it.

        Returns:
            ``(spans_cw (B, Q, 2) in [0, 1], logits (B, Q, 2))`` of the last network call.
        """
        batch = condition.memory.shape[0]
        device = condition.memory.device
        if x_T is None:
            x_T = torch.randn((batch, num_spans, 2), generator=generator, device=device)  # (B, Q, 2)
        elif x_T.shape != (batch, num_spans, 2):
            raise ValueError(f"x_T must have shape {(batch, num_spans, 2)}, got {tuple(x_T.shape)}")
        last: dict[str, Tensor] = {}

        def network_fn(x_t: Tensor, t: Tensor) -> Tensor:
            output = model(self.from_signal(x_t), t, condition)
            last["spans"], last["logits"] = output.final_spans, output.final_logits
            return self.to_signal(output.final_spans)  # x0_hat in the signal space

        x_0 = sample(network_fn, x_T, self.sampler, prediction=Prediction.SAMPLE, clip_sample=self.scale,
                     generator=generator, num_inference_steps=steps)
        return self.from_signal(x_0), last["logits"]
