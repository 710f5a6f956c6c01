"""The similarity-aware condition generator of MomentDiff and its similarity loss L_sim.

Shape letters: B batch of (query, video) pairs, F frames, L query tokens, D hidden, D_v video width, D_t text width.

Video tokens (frame tokens of the index, or raw frame features) and query tokens are projected to D (LayerNorm ->
Dropout -> Linear, twice, ReLU between), video tokens plus a sinusoidal code of their position cross-attend to the
query (``cross_layers`` post-LN layers), a self-attention encoder runs over [global token ; video] and gives the
memory M (B, F, D); a Linear(D -> 1) head on M gives the per-frame query relevance s (B, F).

With ``similarity_feature`` (ours) each frame also gets an explicit cosine c_i between its projected token and the
mean-pooled projected query (each through its own Linear(D -> D)): tau * c_i + b is added to s_i, and
Linear(1 -> D)(c_i) to the video tokens before the cross layers, so the relevance starts from a dual-encoder score
(what a retrieval model learns from few pairs) instead of having to appear out of attention.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from prvr.moments.config import NetworkConfig
from prvr.moments.embeddings import frame_positions, row_frame_positions, sine_code
from prvr.nn.layers import LinearLayer, TransformerLayer

__all__ = ["Condition", "ConditionGenerator", "frame_labels", "similarity_losses"]


@dataclass(frozen=True)
class Condition:
    """What every span decoder attends to.

    Attributes:
        memory: (B, F, D) video memory M.
        mask: (B, F) bool, True on real frames.
        relevance: (B, F) per-frame relevance logits s (0 on padded frames; read them through ``mask``).
    """

    memory: Tensor
    mask: Tensor
    relevance: Tensor

    def expand(self, repeats: int) -> Condition:
        """Each row repeated ``repeats`` times consecutively (B -> B * repeats), for one query over many seeds."""
        return Condition(self.memory.repeat_interleave(repeats, 0), self.mask.repeat_interleave(repeats, 0),
                         self.relevance.repeat_interleave(repeats, 0))


class _Projection(nn.Module):
    """LayerNorm -> Dropout -> Linear -> ReLU -> LayerNorm -> Dropout -> Linear."""

    def __init__(self, in_dim: int, out_dim: int, dropout: float) -> None:
        super().__init__()
        self.first = LinearLayer(in_dim, out_dim, dropout, relu=True)
        self.second = LinearLayer(out_dim, out_dim, dropout, relu=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.second(self.first(x))


class ConditionGenerator(nn.Module):
    """Query-conditioned video memory and per-frame relevance (see the module docstring).

    Args:
        config: the network config (width, heads, layers, dropouts, ``relevance_feature``).
        video_dim: D_v of the frame tokens.
        text_dim: D_t of the query tokens.
    """

    def __init__(self, config: NetworkConfig, video_dim: int, text_dim: int) -> None:
        super().__init__()
        dim = config.hidden_size
        self.dim = dim
        self.video_projection = _Projection(video_dim, dim, config.input_dropout)
        self.text_projection = _Projection(text_dim, dim, config.input_dropout)
        self.cross_layers = nn.ModuleList(
            TransformerLayer(dim, config.num_heads, config.ffn_size, config.dropout) for _ in range(config.cross_layers)
        )
        self.encoder_layers = nn.ModuleList(
            TransformerLayer(dim, config.num_heads, config.ffn_size, config.dropout)
            for _ in range(config.encoder_layers)
        )
        self.global_token = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.normal_(self.global_token, std=0.02)
        self.relevance_head = nn.Linear(dim, 1)
        # Optional (ours): the decoder reads the relevance too, so span confidence can follow the frame relevance.
        self.relevance_embedding = nn.Linear(1, dim) if config.relevance_feature else None
        self.similarity = _Similarity(dim) if config.similarity_feature else None

    def forward(self, video: Tensor, video_mask: Tensor, text: Tensor, text_mask: Tensor) -> Condition:
        """Build the condition of B (query, video) pairs.

        Args:
            video: (B, F, D_v) frame tokens (zero-padded).
            video_mask: (B, F) bool, True on real frames.
            text: (B, L, D_t) query tokens (zero-padded).
            text_mask: (B, L) bool, True on real tokens.

        Returns:
            The :class:`Condition` (memory (B, F, D), mask, relevance logits (B, F)).
        """
        positions = sine_code(row_frame_positions(video_mask), self.dim)  # (B, F, D)
        v = self.video_projection(video)  # (B, F, D)
        q = self.text_projection(text)  # (B, L, D)
        text_weights = text_mask.float() / text_mask.float().sum(1, keepdim=True).clamp_min(1.0)  # (B, L)
        sentence = torch.einsum("bl,bld->bd", text_weights, q)  # (B, D) mean of the real query tokens
        similarity_logits = None
        if self.similarity is not None:
            cosine = self.similarity(v, sentence)  # (B, F)
            v = v + self.similarity.embedding(cosine[..., None])
            similarity_logits = self.similarity.scale.exp() * cosine + self.similarity.bias  # (B, F)
        v = v + positions
        for layer in self.cross_layers:
            v = layer(v, q, key_mask=text_mask)  # (B, F, D)
        global_token = self.global_token + sentence[:, None]  # (B, 1, D)
        h = torch.cat([global_token, v], dim=1)  # (B, 1 + F, D)
        mask = torch.cat([torch.ones_like(video_mask[:, :1]), video_mask], dim=1)  # (B, 1 + F)
        for layer in self.encoder_layers:
            h = layer(h, key_mask=mask)
        memory = h[:, 1:]  # (B, F, D)
        relevance = self.relevance_head(memory).squeeze(-1)  # (B, F)
        if similarity_logits is not None:
            relevance = relevance + similarity_logits
        relevance = relevance.masked_fill(~video_mask, 0.0)  # (B, F)
        if self.relevance_embedding is not None:
            memory = memory + self.relevance_embedding(relevance.sigmoid()[..., None])  # (B, F, D)
        return Condition(memory, video_mask, relevance)


class _Similarity(nn.Module):
    """The explicit frame-query cosine of ``similarity_feature``: c_i = cos(W_v v_i, W_q q) (B, F), its learned
    temperature tau = exp(scale) (starts at 10) and bias b, and the Linear(1 -> D) embedding of c_i."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.video = nn.Linear(dim, dim)
        self.text = nn.Linear(dim, dim)
        self.embedding = nn.Linear(1, dim)
        self.scale = nn.Parameter(torch.tensor(2.302585))  # log 10
        self.bias = nn.Parameter(torch.tensor(-5.0))  # cosine 0.5 at the start maps to logit 0

    def forward(self, video: Tensor, sentence: Tensor) -> Tensor:
        frames = F.normalize(self.video(video), dim=-1)  # (B, F, D)
        query = F.normalize(self.text(sentence), dim=-1)  # (B, D)
        return torch.einsum("bfd,bd->bf", frames, query)


def frame_labels(windows_se: list[Tensor], video_mask: Tensor) -> Tensor:
    """Per-frame labels y_i = 1 when the frame centre (i + 0.5) / F_b lies in a ground-truth window.

    Args:
        windows_se: B tensors (G_b, 2) of normalised (start, end) windows.
        video_mask: (B, F) bool, True on the F_b real frames of each row.

    Returns:
        (B, F) float labels (0 on padding). A window narrower than a frame labels the frame that holds its centre.
    """
    lengths = video_mask.sum(1)  # (B,)
    labels = torch.zeros(video_mask.shape, dtype=torch.float32, device=video_mask.device)
    for b, windows in enumerate(windows_se):
        count = int(lengths[b])
        if count == 0 or windows.numel() == 0:
            continue
        centres = frame_positions(count, video_mask.device)  # (F_b,)
        w = windows.to(centres)
        inside = (centres[:, None] >= w[None, :, 0]) & (centres[:, None] <= w[None, :, 1])  # (F_b, G)
        labels[b, :count] = inside.any(1).float()
        middle = ((w[:, 0] + w[:, 1]) / 2 * count).long().clamp(0, count - 1)  # (G,)
        labels[b, middle] = 1.0
    return labels


def similarity_losses(relevance: Tensor, labels: Tensor, mask: Tensor, negative_relevance: Tensor | None, *,
                      negative_valid: Tensor | None = None, margin: float = 0.2, temperature: float = 0.5,
                      generator: torch.Generator | None = None) -> dict[str, Tensor]:
    """L_sim: margin ranking between a sampled positive and negative frame, BCE, and a contrastive term.

    Args:
        relevance: (B, F) relevance logits s of each (query, video) pair.
        labels: (B, F) 0/1 frame labels (see :func:`frame_labels`).
        mask: (B, F) bool, True on real frames.
        negative_relevance: (B, F) logits of the same videos paired with another query of the batch (all their
            frames are negatives), or None to skip the contrastive term.
        negative_valid: (B,) bool, False where that other query is about the same video (no contrastive term for
            the row); None = every row.
        margin: ranking margin on sigmoid(s).
        temperature: of the contrastive softmax.
        generator: seeds the positive / negative frame sampling.

    Returns:
        ``{"loss_sim_rank", "loss_sim_bce", "loss_sim_nce"}`` (the last only with ``negative_relevance``).
    """
    valid = mask.float()  # (B, F)
    positive = labels * valid  # (B, F)
    negative = (1.0 - labels) * valid  # (B, F)
    has_both = (positive.sum(1) > 0) & (negative.sum(1) > 0)  # (B,)
    scores = relevance.sigmoid()  # (B, F)
    losses: dict[str, Tensor] = {}
    if bool(has_both.any()):
        noise = torch.rand(relevance.shape, generator=generator, device=relevance.device)  # (B, F)
        pick_positive = (noise * positive - (1 - positive)).argmax(1)  # (B,) a random positive frame
        pick_negative = (noise * negative - (1 - negative)).argmax(1)  # (B,) a random negative frame
        rows = torch.arange(relevance.shape[0], device=relevance.device)
        gap = margin + scores[rows, pick_negative] - scores[rows, pick_positive]  # (B,)
        losses["loss_sim_rank"] = (gap.clamp_min(0.0) * has_both.float()).sum() / has_both.float().sum()
    else:
        losses["loss_sim_rank"] = relevance.sum() * 0.0
    bce = F.binary_cross_entropy_with_logits(relevance, labels, reduction="none")  # (B, F)
    losses["loss_sim_bce"] = (bce * valid).sum() / valid.sum().clamp_min(1.0)
    if negative_relevance is not None:
        # Every positive frame against all frames of its video under another query: InfoNCE with temperature tau.
        negatives = negative_relevance.masked_fill(~mask, float("-inf")) / temperature  # (B, F)
        negative_lse = torch.logsumexp(negatives, dim=1, keepdim=True)  # (B, 1)
        positives = relevance / temperature  # (B, F)
        log_prob = positives - torch.logaddexp(positives, negative_lse)  # (B, F)
        weights = positive if negative_valid is None else positive * negative_valid.float()[:, None]  # (B, F)
        losses["loss_sim_nce"] = -(log_prob * weights).sum() / weights.sum().clamp_min(1.0)
    return losses
