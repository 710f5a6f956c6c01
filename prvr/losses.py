"""DreamPRVR training losses, one function each, and the Criterion that weights them by name.

Shape letters: Nq queries, B videos, C clip tokens, F frame tokens, D hidden.
``video_index`` (Nq,) long gives, for each query n, the row v(n) of its video in the batch; Q(v) is the set of
queries of video v. Score matrices S are (Nq, B) with ``S[n, v]`` the score of query n against video v.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from prvr.config import DEFAULT_LOSS_WEIGHTS, LossConfig
from prvr.similarity import token_max_scores, video_scores
from prvr.types import VideoTokens

__all__ = [
    "LOSS_NAMES",
    "infonce_loss",
    "TripletNegatives",
    "sample_triplet_negatives",
    "triplet_loss",
    "query_diversity_loss",
    "query_similarity_preservation_loss",
    "kl_standard_normal",
    "diffusion_mse",
    "Criterion",
]

logger = logging.getLogger(__name__)

# The loss names, in the config's order: nce_clip, trip_clip, nce_frame, trip_frame, div, qsp, kl, dre, nce_fused.
LOSS_NAMES: tuple[str, ...] = tuple(DEFAULT_LOSS_WEIGHTS)


def _check_scores(scores: Tensor, video_index: Tensor) -> Tensor:
    """Validate a (Nq, B) score matrix against (Nq,) video rows; returns video_index on the scores' device."""
    if scores.dim() != 2:
        raise ValueError(f"scores must be (Nq, B), got shape {tuple(scores.shape)}")
    if video_index.shape != (scores.shape[0],):
        raise ValueError(f"video_index must be (Nq,) = ({scores.shape[0]},), got shape {tuple(video_index.shape)}")
    if scores.shape[0] == 0:
        raise ValueError("no queries in the batch; every training batch needs at least one query")
    video_index = video_index.to(device=scores.device, dtype=torch.long)
    low, high = int(video_index.min()), int(video_index.max())
    if low < 0 or high >= scores.shape[1]:
        raise ValueError(f"video_index values must lie in [0, B={scores.shape[1]}), got [{low}, {high}]")
    return video_index


def _positive_mask(video_index: Tensor, num_videos: int) -> Tensor:
    """(Nq, B) bool, True where video v is the video of query n."""
    return F.one_hot(video_index, num_videos).bool()  # (Nq, B)


def _zero(reference: Tensor) -> Tensor:
    """A scalar zero that stays connected to the graph of ``reference`` (so backward() never fails)."""
    return reference.sum() * 0.0


def infonce_loss(scores: Tensor, video_index: Tensor) -> Tensor:
    """Multi-positive InfoNCE without temperature, both directions (MS-SL / GMMFormer / DreamPRVR).

    ``L = mean_n [logsumexp_v S(n, v) - S(n, v(n))]
    + mean_v [logsumexp_n S(n, v) - logsumexp_{n in Q(v)} S(n, v)]``;
    videos with no query in the batch are skipped in the second term.

    Args:
        scores: (Nq, B) raw (unnormalised) max-over-token scores.
        video_index: (Nq,) long, video row of each query.

    Returns:
        Scalar loss.
    """
    video_index = _check_scores(scores, video_index)
    num_queries, num_videos = scores.shape
    rows = torch.arange(num_queries, device=scores.device)
    text_to_video = torch.logsumexp(scores, dim=1) - scores[rows, video_index]  # (Nq,)

    positive = _positive_mask(video_index, num_videos)  # (Nq, B)
    has_query = positive.any(dim=0)  # (B,)
    column_scores = scores[:, has_query]  # (Nq, B')
    column_positive = positive[:, has_query]  # (Nq, B')
    all_lse = torch.logsumexp(column_scores, dim=0)  # (B',)
    positive_lse = torch.logsumexp(column_scores.masked_fill(~column_positive, float("-inf")), dim=0)  # (B',)
    video_to_text = all_lse - positive_lse  # (B',)
    return text_to_video.mean() + video_to_text.mean()


def _sample_below(counts: Tensor, generator: torch.Generator | None) -> Tensor:
    """One uniform integer in [0, counts[i]) per entry (counts > 0), drawn on the generator's device.

    Args:
        counts: (N,) long positive counts, on any device.
        generator: source of randomness; None uses torch's global CPU generator.

    Returns:
        (N,) long on the device of ``counts``.
    """
    sample_device = generator.device if generator is not None else torch.device("cpu")
    uniform = torch.rand(counts.shape, generator=generator, device=sample_device, dtype=torch.float64)  # (N,)
    uniform = uniform.to(counts.device)
    picks = torch.floor(uniform * counts.to(torch.float64)).long()  # (N,)
    return torch.minimum(picks, counts - 1)


@dataclass(frozen=True)
class TripletNegatives:
    """The negatives drawn for one triplet-loss evaluation.

    Attributes:
        video: (Nq,) long negative video of each query, or None when the batch has a single video.
        columns: (B',) long videos that anchor a video-to-text term (they have queries, and other queries exist).
        query: (B',) long negative query of each video in ``columns``.
    """

    video: Tensor | None
    columns: Tensor
    query: Tensor


def sample_triplet_negatives(
    scores: Tensor,
    video_index: Tensor,
    hard: bool = False,
    hard_pool: int = 20,
    generator: torch.Generator | None = None,
) -> TripletNegatives:
    """Draw the negatives of :func:`triplet_loss` (see there for the rules); no gradient flows through the choice.

    Args:
        scores: (Nq, B) scores.
        video_index: (Nq,) long, video row of each query.
        hard: hard-negative mining instead of random negatives.
        hard_pool: number of top-scoring negative videos to draw from when ``hard`` (clamped to B - 1).
        generator: random generator; None uses torch's global CPU generator.

    Returns:
        The sampled negatives, on the scores' device.
    """
    video_index = _check_scores(scores, video_index)
    if hard and hard_pool < 1:
        raise ValueError(f"hard_pool must be >= 1, got {hard_pool}")
    num_queries, num_videos = scores.shape
    device = scores.device
    scores = scores.detach()
    positive = _positive_mask(video_index, num_videos)  # (Nq, B)

    negative_video: Tensor | None = None
    if num_videos > 1:
        if hard:
            pool = min(hard_pool, num_videos - 1)
            masked = scores.masked_fill(positive, float("-inf"))  # (Nq, B)
            top = masked.topk(pool, dim=1).indices  # (Nq, pool)
            pick = _sample_below(torch.full((num_queries,), pool, dtype=torch.long, device=device), generator)
            negative_video = top.gather(1, pick.unsqueeze(1)).squeeze(1)  # (Nq,)
        else:
            # Uniform over the B - 1 other videos: draw r in [0, B - 1), then skip the positive.
            others = torch.full((num_queries,), num_videos - 1, dtype=torch.long, device=device)
            draw = _sample_below(others, generator)  # (Nq,)
            negative_video = draw + (draw >= video_index).long()  # (Nq,)

    negative = ~positive  # (Nq, B) query n is a negative for video v
    num_negative = negative.sum(dim=0)  # (B,)
    valid = positive.any(dim=0) & (num_negative > 0)  # (B,)
    columns = torch.nonzero(valid).flatten()  # (B',)
    column_negative = negative[:, columns]  # (Nq, B')
    if columns.numel() == 0:
        negative_query = columns.clone()
    elif hard:
        masked = scores[:, columns].masked_fill(~column_negative, float("-inf"))  # (Nq, B')
        negative_query = masked.argmax(dim=0)  # (B',)
    else:
        # The k-th negative query of each column (in query order), k uniform in [0, #negatives).
        k = _sample_below(num_negative[columns], generator)  # (B',)
        order = column_negative.long().cumsum(dim=0)  # (Nq, B') 1-based rank among the negatives
        hit = column_negative & (order == (k + 1).unsqueeze(0))  # (Nq, B') exactly one True per column
        negative_query = hit.long().argmax(dim=0)  # (B',)
    return TripletNegatives(negative_video, columns, negative_query)


def triplet_loss(
    scores: Tensor,
    video_index: Tensor,
    margin: float,
    hard: bool = False,
    hard_pool: int = 20,
    generator: torch.Generator | None = None,
    negatives: TripletNegatives | None = None,
) -> Tensor:
    """Bidirectional hinge triplet loss with one sampled negative per anchor (MS-SL / DreamPRVR).

    Text-to-video, for each query n with positive video v(n): one negative video v' != v(n), uniform over all
    other videos of the batch (random) or uniform over the ``hard_pool`` highest-scoring ones (hard);
    ``l_n = relu(margin + S(n, v') - S(n, v(n)))``.
    Video-to-text, for each video v that has queries: ``pos_v = mean_{n in Q(v)} S(n, v)``; one negative query
    n' not in Q(v), uniform over all such queries (random) or the single highest-scoring one (hard);
    ``l_v = relu(margin + S(n', v) - pos_v)``.
    ``L = mean_n l_n + mean_v l_v``. A direction with no valid anchor (no negative available, e.g. a batch of one
    video, or only one video with queries for the video-to-text side) contributes 0; a batch of one video thus
    gives a zero loss that is still connected to the graph. Negative choice is not differentiated through.

    Sampling uses ``generator`` on its own device (CPU by default), then moves the indices to the scores'
    device, so a fixed generator seed gives the same negatives on any device.

    Args:
        scores: (Nq, B) cosine max-over-token scores.
        video_index: (Nq,) long, video row of each query.
        margin: hinge margin m.
        hard: hard-negative mining instead of random negatives.
        hard_pool: number of top-scoring negative videos to draw from when ``hard`` (clamped to B - 1).
        generator: random generator for reproducible sampling; None uses torch's global CPU generator.
        negatives: pre-drawn negatives (from :func:`sample_triplet_negatives`); drawn here when None.

    Returns:
        Scalar loss.
    """
    video_index = _check_scores(scores, video_index)
    if negatives is None:
        negatives = sample_triplet_negatives(scores, video_index, hard, hard_pool, generator)
    num_queries, num_videos = scores.shape
    loss = _zero(scores)
    if negatives.video is not None:
        rows = torch.arange(num_queries, device=scores.device)
        positive_scores = scores[rows, video_index]  # (Nq,)
        negative_scores = scores[rows, negatives.video]  # (Nq,)
        loss = loss + F.relu(margin + negative_scores - positive_scores).mean()
    if negatives.columns.numel() > 0:
        positive = _positive_mask(video_index, num_videos)[:, negatives.columns]  # (Nq, B')
        column_scores = scores[:, negatives.columns]  # (Nq, B')
        mean_positive = (column_scores * positive).sum(dim=0) / positive.sum(dim=0)  # (B',)
        negative_scores = column_scores.gather(0, negatives.query.unsqueeze(0)).squeeze(0)  # (B',)
        loss = loss + F.relu(margin + negative_scores - mean_positive).mean()
    return loss


def query_diversity_loss(
    query: Tensor, video_index: Tensor, alpha: float = 32.0, lam: float = 1.0, delta: float = 0.2
) -> Tensor:
    """Push apart the queries of the same video (GMMFormer's query diverse loss, kept in DreamPRVR).

    Over ordered pairs i != j with v(i) = v(j), ``c_ij = cos(q_i, q_j)``:
    ``L = (1 / Nq) * sum (1 + c_ij)^lam * log(1 + exp(alpha * (c_ij + delta)))`` (the log term as a softplus).
    Zero (connected to the graph) when no video has two queries.

    Args:
        query: (Nq, D) query vectors (normalised inside).
        video_index: (Nq,) long, video row of each query.
        alpha: softplus sharpness.
        lam: exponent of the (1 + c) weight.
        delta: margin shift inside the softplus.

    Returns:
        Scalar loss.
    """
    pairs = _same_video_pairs(query, video_index)  # (Nq, Nq)
    if not bool(pairs.any()):
        return _zero(query)
    unit = F.normalize(query, dim=-1)  # (Nq, D)
    cosine = unit @ unit.t()  # (Nq, Nq)
    weight = (1.0 + cosine).clamp_min(0.0).pow(lam)  # (Nq, Nq); clamp guards round-off below -1
    terms = weight * F.softplus(alpha * (cosine + delta))  # (Nq, Nq)
    return (terms * pairs).sum() / query.shape[0]


def _same_video_pairs(query: Tensor, video_index: Tensor) -> Tensor:
    """(Nq, Nq) bool, True for ordered pairs i != j of queries of the same video."""
    if query.dim() != 2 or video_index.shape != (query.shape[0],):
        raise ValueError(
            f"expected query (Nq, D) and video_index (Nq,), got {tuple(query.shape)} and {tuple(video_index.shape)}"
        )
    if query.shape[0] == 0:
        raise ValueError("no queries in the batch; every training batch needs at least one query")
    video_index = video_index.to(query.device)
    same = video_index.unsqueeze(0) == video_index.unsqueeze(1)  # (Nq, Nq)
    return same & ~torch.eye(query.shape[0], dtype=torch.bool, device=query.device)


def query_similarity_preservation_loss(query: Tensor, video_index: Tensor, temperature: float) -> Tensor:
    """Pull together the queries of the same video: supervised contrastive loss (Khosla et al., NeurIPS 2020).

    With z = L2-normalised queries and P(i) = the other queries of i's video:
    ``L_i = -(1 / |P(i)|) * sum_{p in P(i)} log( exp(z_i.z_p / tau) / sum_{a != i} exp(z_i.z_a / tau) )``,
    ``L = mean of L_i over anchors with |P(i)| >= 1`` (0, connected to the graph, when there is none).

    Args:
        query: (Nq, D) query vectors.
        video_index: (Nq,) long, video row of each query.
        temperature: tau > 0.

    Returns:
        Scalar loss.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    pairs = _same_video_pairs(query, video_index)  # (Nq, Nq) positives
    num_positive = pairs.sum(dim=1)  # (Nq,)
    anchors = num_positive > 0  # (Nq,)
    if not bool(anchors.any()):
        return _zero(query)
    unit = F.normalize(query, dim=-1)  # (Nq, D)
    logits = unit @ unit.t() / temperature  # (Nq, Nq)
    self_pair = torch.eye(query.shape[0], dtype=torch.bool, device=query.device)  # (Nq, Nq)
    log_normaliser = torch.logsumexp(logits.masked_fill(self_pair, float("-inf")), dim=1)  # (Nq,)
    log_prob = logits - log_normaliser.unsqueeze(1)  # (Nq, Nq)
    positive_log_prob = torch.where(pairs, log_prob, torch.zeros_like(log_prob)).sum(dim=1)  # (Nq,)
    per_anchor = -positive_log_prob[anchors] / num_positive[anchors]  # (Nq',)
    return per_anchor.mean()


def kl_standard_normal(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL divergence of N(mu, diag(exp(logvar))) from N(0, I), summed over D and averaged over B.

    ``L = -0.5 * sum(1 + logvar - mu^2 - exp(logvar)) / B``.

    Args:
        mu: (B, D) means.
        logvar: (B, D) log-variances.

    Returns:
        Scalar loss.
    """
    if mu.shape != logvar.shape or mu.dim() != 2 or mu.shape[0] == 0:
        raise ValueError(
            f"expected mu and logvar of the same (B, D) shape, got {tuple(mu.shape)} and {tuple(logvar.shape)}"
        )
    return -0.5 * torch.sum(1.0 + logvar - mu.pow(2) - logvar.exp()) / mu.shape[0]


def diffusion_mse(pred: Tensor, target: Tensor) -> Tensor:
    """Mean squared error of the denoiser's prediction, ``L = mean (pred - target)^2`` over all elements.

    Args:
        pred: predicted noise, any shape.
        target: the true noise, same shape as ``pred``.

    Returns:
        Scalar loss.
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
    return F.mse_loss(pred, target)


class Criterion:
    """All DreamPRVR losses of one batch, weighted by name.

    ``loss = sum over names of weights[name] * loss_<name>``; a loss with weight 0, or whose optional inputs
    (``pvs_mu``/``pvs_logvar`` for "kl", ``dre_pred``/``dre_target`` for "dre") are absent, is neither computed
    nor reported. InfoNCE uses raw dot-product max scores, triplet uses cosine max scores, clip and frame scale
    separately; "nce_fused" (not in the paper) is InfoNCE on the fused cosine score ``w_c S_clip + w_f S_frame``
    divided by ``config.nce_temperature``; triplet switches from random to hard negatives at
    ``config.hard_negative_start_epoch``.

    Args:
        config: loss hyper-parameters and weights.
        clip_weight: w_c, used only by :meth:`batch_scores` (the losses weight the clip and frame terms by name).
        frame_weight: w_f, likewise.
    """

    def __init__(self, config: LossConfig, clip_weight: float, frame_weight: float) -> None:
        unknown = sorted(set(config.weights) - set(LOSS_NAMES))
        if unknown:
            raise ValueError(f"unknown loss weight name(s) {unknown}; known names are {list(LOSS_NAMES)}")
        if config.nce_temperature <= 0:
            raise ValueError(f"loss.nce_temperature must be > 0, got {config.nce_temperature}")
        negative = sorted(name for name, weight in config.weights.items() if weight < 0)
        if negative:
            raise ValueError(f"loss weights must be >= 0, got negative weight(s) for {negative}")
        self.config = config
        self.weights: dict[str, float] = {name: float(config.weights.get(name, 0.0)) for name in LOSS_NAMES}
        self.clip_weight = clip_weight
        self.frame_weight = frame_weight

    def enabled(self, name: str) -> bool:
        """Whether the loss ``name`` has a non-zero weight."""
        return self.weights[name] != 0.0

    def __call__(
        self,
        outputs: dict[str, Tensor],
        video_index: Tensor,
        epoch: int,
        generator: torch.Generator | None = None,
    ) -> dict[str, Tensor]:
        """Compute the enabled losses of one batch.

        Args:
            outputs: "query" (Nq, D); "clip_tokens" (B, C, D); "frame_tokens" (B, F, D); "frame_mask" (B, F) bool
                (all frames valid when absent); optional "pvs_mu", "pvs_logvar" (B, D); optional "dre_pred",
                "dre_target" (matching shapes).
            video_index: (Nq,) long, video row of each query.
            epoch: 0-based epoch; hard negatives from ``config.hard_negative_start_epoch`` on.
            generator: random generator for the triplet negatives.

        Returns:
            ``loss_<name>`` for every computed loss and "loss", their weighted sum (scalars).
        """
        config = self.config
        if "query" not in outputs:
            raise ValueError(f"outputs lack 'query' (Nq, D); got keys {sorted(outputs)}")
        query = outputs["query"]  # (Nq, D)
        video_index = video_index.to(device=query.device, dtype=torch.long)
        losses: dict[str, Tensor] = {}
        hard = epoch >= config.hard_negative_start_epoch

        cosine_scores: dict[str, Tensor] = {}
        for scale, token_key, mask_key in (("clip", "clip_tokens", None), ("frame", "frame_tokens", "frame_mask")):
            nce_name, trip_name = f"nce_{scale}", f"trip_{scale}"
            if not (self.enabled(nce_name) or self.enabled(trip_name) or self.enabled("nce_fused")):
                continue
            if token_key not in outputs:
                raise ValueError(
                    f"outputs lack {token_key!r} needed by loss(es) {nce_name!r}/{trip_name!r}/'nce_fused'; "
                    f"provide it or set those loss weights to 0"
                )
            tokens = outputs[token_key]  # (B, T, D)
            mask = outputs.get(mask_key) if mask_key is not None else None  # (B, T) or None
            if self.enabled(nce_name):
                raw = token_max_scores(query, tokens, mask, normalize=False)  # (Nq, B)
                losses[f"loss_{nce_name}"] = infonce_loss(raw, video_index)
            if self.enabled(trip_name) or self.enabled("nce_fused"):
                cosine_scores[scale] = token_max_scores(query, tokens, mask, normalize=True)  # (Nq, B)
            if self.enabled(trip_name):
                losses[f"loss_{trip_name}"] = triplet_loss(
                    cosine_scores[scale], video_index, config.margin, hard, config.hard_negative_pool, generator
                )
        if self.enabled("nce_fused"):
            fused = self.clip_weight * cosine_scores["clip"] + self.frame_weight * cosine_scores["frame"]  # (Nq, B)
            losses["loss_nce_fused"] = infonce_loss(fused / config.nce_temperature, video_index)

        if self.enabled("div"):
            losses["loss_div"] = query_diversity_loss(
                query, video_index, config.div_alpha, config.div_lambda, config.div_delta
            )
        if self.enabled("qsp"):
            losses["loss_qsp"] = query_similarity_preservation_loss(query, video_index, config.qsp_temperature)
        if self.enabled("kl") and "pvs_mu" in outputs and "pvs_logvar" in outputs:
            losses["loss_kl"] = kl_standard_normal(outputs["pvs_mu"], outputs["pvs_logvar"])
        if self.enabled("dre") and "dre_pred" in outputs and "dre_target" in outputs:
            losses["loss_dre"] = diffusion_mse(outputs["dre_pred"], outputs["dre_target"])

        total = _zero(query)
        for key, value in losses.items():
            total = total + self.weights[key[len("loss_") :]] * value
        losses["loss"] = total
        return losses

    def batch_scores(self, outputs: dict[str, Tensor]) -> dict[str, Tensor]:
        """Cosine clip, frame and fused (w_c, w_f) scores of the batch's queries against its videos, for logging.

        Args:
            outputs: as for ``__call__`` ("query", "clip_tokens", "frame_tokens", optional "frame_mask").

        Returns:
            ``{"clip", "frame", "total"}``, each (Nq, B).
        """
        frame = outputs["frame_tokens"]  # (B, F, D)
        mask = outputs.get("frame_mask")
        if mask is None:
            mask = torch.ones(frame.shape[:2], dtype=torch.bool, device=frame.device)  # (B, F)
        tokens = VideoTokens(outputs["clip_tokens"], frame, mask)
        return video_scores(outputs["query"], tokens, self.clip_weight, self.frame_weight, normalize=True)
