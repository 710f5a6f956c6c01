"""The two span decoders behind one interface: MomentDiff's and DiffusionVMR's.

Shape letters: B batch, Q span proposals, F frames, P RoI points per span, D hidden, H heads.

Both take the current noisy spans (normalised (centre, width), already mapped back to [0, 1]), the integer
timestep t (the noise intensity) and the :class:`~prvr.moments.condition.Condition`, and return the predictions of
every layer (x0-prediction: clean spans in [0, 1] and 2-class logits, index 0 = foreground). The last layer's
prediction is the output; the earlier ones feed the auxiliary losses.

* :class:`MomentDiffDecoder` (Li et al., NeurIPS 2023): span embedding + timestep embedding, ``decoder_layers``
  intensity-aware cross-attention layers whose queries carry a sinusoidal code of the current span beside the
  content (conditional-DETR style) and whose keys carry the frame positions; shared span / class heads; each layer's
  span (detached) gives the next layer's positional code.
* :class:`DiffusionVMRDecoder` (Zhao et al., ACM MM 2023): ``decoder_layers`` cascading denoising layers; each pools
  span features from M by 1-D RoI alignment (P points by linear interpolation, averaged), runs self-attention among
  proposals, a dynamic interaction (the proposal feature generates two small linear maps applied to its RoI points),
  an FFN and a timestep scale-shift, then refines the span with a 3-layer MLP and classifies it with an MLP.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from prvr.moments.condition import Condition
from prvr.moments.config import NetworkConfig
from prvr.moments.embeddings import TimestepEmbedding, row_frame_positions, sine_code, span_code
from prvr.moments.spans import span_cw_to_se
from prvr.nn.layers import MultiHeadAttention, masked_softmax

__all__ = ["DecoderOutput", "SpanDecoder", "MomentDiffDecoder", "DiffusionVMRDecoder", "build_decoder",
           "roi_align_1d"]

_EPS = 1e-4


@dataclass(frozen=True)
class DecoderOutput:
    """Per-layer predictions, first layer first.

    Attributes:
        spans: one (B, Q, 2) tensor of (centre, width) in [0, 1] per layer.
        logits: one (B, Q, 2) tensor of class logits per layer (0 = foreground, 1 = background).
    """

    spans: list[Tensor]
    logits: list[Tensor]

    @property
    def final_spans(self) -> Tensor:
        return self.spans[-1]

    @property
    def final_logits(self) -> Tensor:
        return self.logits[-1]


class SpanDecoder(nn.Module):
    """The interface: ``decoder(spans_cw (B, Q, 2), t (B,), condition) -> DecoderOutput``."""

    def forward(self, spans_cw: Tensor, t: Tensor, condition: Condition) -> DecoderOutput:  # pragma: no cover
        raise NotImplementedError


def _mlp(in_dim: int, hidden: int, out_dim: int, layers: int) -> nn.Sequential:
    modules: list[nn.Module] = []
    width = in_dim
    for _ in range(layers - 1):
        modules += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    modules.append(nn.Linear(width, out_dim))
    return nn.Sequential(*modules)


def _inverse_sigmoid(x: Tensor) -> Tensor:
    x = x.clamp(_EPS, 1 - _EPS)
    return torch.log(x / (1 - x))


# ----------------------------------------------------------------------------------------------------------------
# MomentDiff


class _IntensityAwareLayer(nn.Module):
    """Cross-attention whose query / key are [content ; position] (conditional DETR), then a post-LN FFN."""

    def __init__(self, dim: int, heads: int, ffn_dim: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.query_content = nn.Linear(dim, dim)
        self.query_position = nn.Linear(dim, dim)
        self.key_content = nn.Linear(dim, dim)
        self.key_position = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)
        self.attention_norm = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.ReLU(), nn.Dropout(dropout), nn.Linear(ffn_dim, dim))
        self.ffn_norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, h: Tensor, span_position: Tensor, memory: Tensor, memory_position: Tensor,
                mask: Tensor) -> Tensor:
        """h (B, Q, D), span_position (B, Q, D), memory (B, F, D), memory_position (B, F, D), mask (B, F) -> (B, Q, D)."""
        split = "b n (h d) -> b h n d"
        query = torch.cat([rearrange(self.query_content(h), split, h=self.heads),
                           rearrange(self.query_position(span_position), split, h=self.heads)], -1)  # (B, H, Q, 2d)
        key_position = self.key_position(memory_position)  # (B, F, D)
        key = torch.cat([rearrange(self.key_content(memory), split, h=self.heads),
                         rearrange(key_position, split, h=self.heads)], -1)  # (B, H, F, 2d)
        value = rearrange(self.value(memory), split, h=self.heads)  # (B, H, F, d)
        logits = torch.einsum("bhqd,bhfd->bhqf", query, key) / math.sqrt(query.shape[-1])  # (B, H, Q, F)
        probs = self.dropout(masked_softmax(logits, mask[:, None, None, :]))
        attended = rearrange(torch.einsum("bhqf,bhfd->bhqd", probs, value), "b h q d -> b q (h d)")  # (B, Q, D)
        h = self.attention_norm(h + self.dropout(self.out(attended)))
        return self.ffn_norm(h + self.dropout(self.ffn(h)))


class MomentDiffDecoder(SpanDecoder):
    """Span embedding + timestep embedding -> intensity-aware cross-attention layers -> shared heads."""

    def __init__(self, config: NetworkConfig) -> None:
        super().__init__()
        dim = config.hidden_size
        self.dim = dim
        self.span_embedding = nn.Linear(2, dim)
        self.timestep_embedding = TimestepEmbedding(dim)
        self.span_position = _mlp(dim, dim, dim, 2)
        self.layers = nn.ModuleList(
            _IntensityAwareLayer(dim, config.num_heads, config.ffn_size, config.dropout)
            for _ in range(config.decoder_layers)
        )
        self.span_head = nn.Linear(dim, 2)
        self.class_head = nn.Linear(dim, 2)
        # Optional RoI pooling of M inside the current span, added to the span query (DenoiseLoc / DiffusionVMR).
        self.roi_points = config.roi_points
        self.roi_projection = nn.Linear(dim, dim) if config.decoder_roi else None

    def forward(self, spans_cw: Tensor, t: Tensor, condition: Condition) -> DecoderOutput:
        memory_position = sine_code(row_frame_positions(condition.mask), self.dim)  # (B, F, D)
        h = self.span_embedding(spans_cw) + self.timestep_embedding(t)[:, None]  # (B, Q, D)
        reference = spans_cw
        spans, logits = [], []
        for layer in self.layers:
            position = self.span_position(span_code(reference, self.dim))  # (B, Q, D)
            if self.roi_projection is not None:
                rois = roi_align_1d(condition.memory, condition.mask, span_cw_to_se(reference), self.roi_points)
                h = h + self.roi_projection(rois.mean(2))  # (B, Q, D)
            h = layer(h, position, condition.memory, memory_position, condition.mask)
            layer_spans = self.span_head(h).sigmoid()  # (B, Q, 2)
            spans.append(layer_spans)
            logits.append(self.class_head(h))  # (B, Q, 2)
            reference = layer_spans.detach()
        return DecoderOutput(spans, logits)


# ----------------------------------------------------------------------------------------------------------------
# DiffusionVMR


def roi_align_1d(memory: Tensor, mask: Tensor, spans_se: Tensor, points: int) -> Tensor:
    """1-D RoI alignment: ``points`` features per span, linearly interpolated between neighbouring frames.

    Point j of a span sits at start + (end - start) (j + 0.5) / P (clamped to [0, 1]); its frame coordinate is
    x F_b - 0.5 (frame i has its centre at (i + 0.5) / F_b), clamped to [0, F_b - 1], and its feature the linear
    interpolation of the two neighbouring frames. Only the F_b real frames of each row are used.

    Args:
        memory: (B, F, D).
        mask: (B, F) bool, True on real frames (a prefix of each row).
        spans_se: (B, Q, 2) normalised (start, end).
        points: P.

    Returns:
        (B, Q, P, D).
    """
    lengths = mask.sum(1).clamp_min(1).to(memory.dtype)  # (B,)
    fractions = (torch.arange(points, device=memory.device, dtype=memory.dtype) + 0.5) / points  # (P,)
    start, end = spans_se.unbind(-1)  # (B, Q)
    where = (start[..., None] + (end - start)[..., None] * fractions).clamp(0.0, 1.0)  # (B, Q, P)
    coordinate = where * lengths[:, None, None] - 0.5  # (B, Q, P)
    coordinate = torch.minimum(coordinate.clamp_min(0.0), (lengths - 1)[:, None, None])
    low = coordinate.floor().long()  # (B, Q, P)
    high = torch.minimum(low + 1, (lengths - 1).long()[:, None, None])  # (B, Q, P)
    weight = (coordinate - low.to(memory.dtype))[..., None]  # (B, Q, P, 1)
    rows = torch.arange(memory.shape[0], device=memory.device)[:, None, None]  # (B, 1, 1)
    return memory[rows, low] * (1 - weight) + memory[rows, high] * weight  # (B, Q, P, D)


class _DenoisingLayer(nn.Module):
    """One cascade stage: RoI features -> proposal self-attention -> dynamic interaction -> FFN -> time -> heads."""

    def __init__(self, config: NetworkConfig, residual: bool = True) -> None:
        super().__init__()
        self.residual = residual
        dim, dyn = config.hidden_size, config.dynamic_dim
        self.dim, self.dynamic_dim, self.points = dim, dyn, config.roi_points
        self.self_attention = MultiHeadAttention(dim, config.num_heads, config.dropout)
        self.attention_norm = nn.LayerNorm(dim)
        self.dynamic_parameters = nn.Linear(dim, 2 * dim * dyn)
        self.dynamic_norm_hidden = nn.LayerNorm(dyn)
        self.dynamic_norm_out = nn.LayerNorm(dim)
        self.dynamic_out = nn.Linear(config.roi_points * dim, dim)
        self.dynamic_out_norm = nn.LayerNorm(dim)
        self.interaction_norm = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, config.ffn_size), nn.ReLU(), nn.Dropout(config.dropout),
                                 nn.Linear(config.ffn_size, dim))
        self.ffn_norm = nn.LayerNorm(dim)
        self.time_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))
        self.span_head = _mlp(dim, dim, 2, 3)
        self.class_head = _mlp(dim, dim, 2, 2)
        self.dropout = nn.Dropout(config.dropout)
        nn.init.zeros_(self.span_head[-1].weight)
        nn.init.zeros_(self.span_head[-1].bias)

    def forward(self, spans_cw: Tensor, features: Tensor | None, time: Tensor,
                condition: Condition) -> tuple[Tensor, Tensor, Tensor]:
        """spans (B, Q, 2), features (B, Q, D) or None, time (B, D) -> (refined spans, logits, features)."""
        rois = roi_align_1d(condition.memory, condition.mask, span_cw_to_se(spans_cw), self.points)  # (B, Q, P, D)
        pooled = rois.mean(2)  # (B, Q, D)
        h = pooled if features is None else features + pooled  # (B, Q, D)
        h = self.attention_norm(h + self.dropout(self.self_attention(h)))
        batch, proposals = h.shape[:2]
        parameters = self.dynamic_parameters(h).reshape(batch * proposals, 2, -1)  # (BQ, 2, D * dyn)
        first = parameters[:, 0].reshape(-1, self.dim, self.dynamic_dim)  # (BQ, D, dyn)
        second = parameters[:, 1].reshape(-1, self.dynamic_dim, self.dim)  # (BQ, dyn, D)
        x = rois.reshape(batch * proposals, self.points, self.dim)  # (BQ, P, D)
        x = F.relu(self.dynamic_norm_hidden(torch.bmm(x, first)))  # (BQ, P, dyn)
        x = F.relu(self.dynamic_norm_out(torch.bmm(x, second)))  # (BQ, P, D)
        x = F.relu(self.dynamic_out_norm(self.dynamic_out(x.flatten(1))))  # (BQ, D)
        h = self.interaction_norm(h + self.dropout(x.reshape(batch, proposals, self.dim)))
        h = self.ffn_norm(h + self.dropout(self.ffn(h)))  # (B, Q, D)
        scale, shift = self.time_modulation(time)[:, None].chunk(2, dim=-1)  # (B, 1, D) each
        h = h * (scale + 1.0) + shift
        offset = _inverse_sigmoid(spans_cw) if self.residual else 0.0  # absolute: starts at the prior mean 0.5
        refined = (offset + self.span_head(h)).sigmoid()  # (B, Q, 2)
        return refined, self.class_head(h), h


class DiffusionVMRDecoder(SpanDecoder):
    """``decoder_layers`` cascading denoising layers; each layer's (detached) spans are the next layer's input.

    With ``config.first_layer_residual`` (the design before the fix) the first layer too refines its input, the
    NOISY span, in logit space: its x0 prediction starts as x_t itself. That suits one DDIM step (the random spans act
    as anchors) but beyond it DDIM counts the noise twice: at t ~ T, eps_hat = (x_t / sqrt(abar_t) - x0_hat) /
    sqrt(1 / abar_t - 1) ~ x_t, so x_t' = sqrt(abar_t') x0_hat + sqrt(1 - abar_t') eps_hat ~ (sqrt(abar_t') +
    sqrt(1 - abar_t')) x_t (up to 1.41 x_t): every step pushes the spans outwards until they stick at the clamp
    (centre 0 or 1, width 0 or 1). Without it the first layer predicts the span from its RoI features alone (the
    noisy span still says where to pool), so x0_hat is an estimate of x0 that does not carry x_t through; later
    layers refine the earlier prediction as before.
    """

    def __init__(self, config: NetworkConfig) -> None:
        super().__init__()
        self.timestep_embedding = TimestepEmbedding(config.hidden_size)
        self.layers = nn.ModuleList(_DenoisingLayer(config, residual=index > 0 or config.first_layer_residual)
                                    for index in range(config.decoder_layers))

    def forward(self, spans_cw: Tensor, t: Tensor, condition: Condition) -> DecoderOutput:
        time = self.timestep_embedding(t)  # (B, D)
        current = spans_cw.clamp(_EPS, 1 - _EPS)
        features: Tensor | None = None
        spans, logits = [], []
        for layer in self.layers:
            refined, layer_logits, features = layer(current, features, time, condition)
            spans.append(refined)
            logits.append(layer_logits)
            current = refined.detach()
        return DecoderOutput(spans, logits)


def build_decoder(config: NetworkConfig) -> SpanDecoder:
    """The decoder named by ``config.decoder``."""
    if config.decoder == "momentdiff":
        return MomentDiffDecoder(config)
    if config.decoder == "diffusionvmr":
        return DiffusionVMRDecoder(config)
    raise ValueError(f"unknown decoder {config.decoder!r}; choose 'momentdiff' or 'diffusionvmr'")
