"""Moment localisation at search time: DDIM over random spans, then sort, to seconds, clamp, optional NMS.

Shape letters: B batch of (query, video) pairs, K videos of one query, Q sampled spans, F frames, L query tokens,
D_v video width, D_t text width.

:class:`DiffusionMomentLocalizer` implements the :class:`prvr.types.MomentLocalizer` protocol from what the index
stores (the query's token features and the video's frame tokens), and :meth:`~DiffusionMomentLocalizer.localize_many`
runs one query over its top-K videos as one batch (the condition of the query is built once per video, the sampler
runs all K x Q spans together). :func:`load_localizer` rebuilds it from a moment checkpoint.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from prvr.checkpoint import read_checkpoint
from prvr.data.preprocess import frame_tokens as preprocess_frames
from prvr.data.preprocess import preprocess_query
from prvr.moments.baselines import best_contiguous_spans_se, span_relevance_gain
from prvr.moments.condition import Condition
from prvr.moments.config import MOMENT_METHODS, MomentConfig
from prvr.moments.denoiser import MomentDenoiser, SpanDiffusion
from prvr.moments.spans import span_cw_to_se, span_se_to_cw, temporal_nms
from prvr.types import Localization, Moment

__all__ = ["DiffusionMomentLocalizer", "load_localizer", "read_moment_checkpoint", "moment_checkpoint_config",
           "pad_batch"]

MOMENT_FORMAT_VERSION = 1


def pad_batch(arrays: Sequence[np.ndarray], device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
    """Zero-pad (len_i, D) float arrays to (N, max len, D) with a (N, max len) bool mask (True on real rows)."""
    longest = max(int(a.shape[0]) for a in arrays)
    width = int(arrays[0].shape[1])
    padded = np.zeros((len(arrays), longest, width), dtype=np.float32)
    mask = np.zeros((len(arrays), longest), dtype=bool)
    for row, array in enumerate(arrays):
        padded[row, : array.shape[0]] = array
        mask[row, : array.shape[0]] = True
    return torch.from_numpy(padded).to(device), torch.from_numpy(mask).to(device)


def read_moment_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a moment checkpoint dict safely (``weights_only=True``) with clear errors for missing / foreign files."""
    return read_checkpoint(path, map_location, config_key="moment_config", command="prvr train-moments")


def moment_checkpoint_config(path: str | Path) -> MomentConfig | None:
    """The embedded config of a `prvr train-moments` checkpoint; None for another localiser's file (a plugin's, read
    by its own loader). A missing file raises FileNotFoundError."""
    try:
        return MomentConfig.from_json(read_moment_checkpoint(path)["moment_config"])
    except ValueError:  # unreadable or without a moment_config: not ours
        return None


class DiffusionMomentLocalizer:
    """A trained :class:`MomentDenoiser` + :class:`SpanDiffusion`, with input checks and post-processing.

    Args:
        model: the denoiser (put in eval mode here).
        config: its config (sampling defaults: ``inference.num_spans``, ``inference.sampling_steps``,
            ``inference.nms_threshold``, ``seed``).
        device: where the network runs.
    """

    def __init__(self, model: MomentDenoiser, config: MomentConfig, device: str | torch.device = "cpu") -> None:
        self.config = config
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.diffusion = SpanDiffusion(config)

    # ------------------------------------------------------------------------------------------------------------
    # tensor level

    @torch.no_grad()
    def predict(self, video: Tensor, video_mask: Tensor, text: Tensor, text_mask: Tensor, *,
                num_spans: int | None = None, steps: int | None = None, rescore: float | None = None,
                proposal_step: int | None = -1, method: str | None = None,
                generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Sample spans for B preprocessed (query, video) pairs.

        Args:
            video: (B, F, D_v) frame tokens, zero-padded; video_mask (B, F).
            text: (B, L, D_t) query tokens, zero-padded; text_mask (B, L).
            num_spans: Q (default ``config.inference.num_spans``).
            steps: DDIM steps (default ``config.inference.sampling_steps``).
            rescore: w of the relevance-aware span score (default ``config.inference.relevance_rescore``; 0 = p_fg
                alone).
            proposal_step: refine the relevance curve's best contiguous span from this diffusion step and add it as
                span Q + 1 (-1 = ``config.inference.relevance_proposal_step``; None = off).
            method: "denoiser", "relevance_span" or "refined_span" (default ``config.inference.method``):
                "relevance_span" puts the relevance curve's best contiguous span first, scored as the pair's best
                sampled span; "refined_span" puts the relevance proposal (that span refined by the decoder from
                ``proposal_step``, 0 when off) first the same way.
            generator: seeds the starting noise, drawn per batch (default: every pair starts from the SAME Q spans of
                noise, drawn from ``config.seed``, so a pair's answer does not depend on its batch).

        Returns:
            ``(spans_cw (B, Q', 2) in [0, 1], scores (B, Q'), relevance (B, F) in [0, 1])`` with Q' = Q, plus one
            with a relevance proposal (always on for "refined_span", moved to index 0), plus one more (at index 0)
            for "relevance_span"; the scores are the foreground probabilities ``p_fg``, times ``exp(w * (gain -
            1))`` when ``rescore`` w > 0.
        """
        method = self.config.inference.method if method is None else method
        if method not in MOMENT_METHODS:
            raise ValueError(f"method must be one of {', '.join(repr(m) for m in MOMENT_METHODS)}, got {method!r}")
        num_spans = self.config.inference.num_spans if num_spans is None else int(num_spans)
        steps = self.config.inference.sampling_steps if steps is None else int(steps)
        if num_spans < 1:
            raise ValueError(f"num_spans must be >= 1, got {num_spans}")
        if not 1 <= steps <= self.config.diffusion.steps:
            raise ValueError(f"steps must lie in [1, {self.config.diffusion.steps}], got {steps}")
        rescore = self.config.inference.relevance_rescore if rescore is None else float(rescore)
        if not (math.isfinite(rescore) and rescore >= 0):
            raise ValueError(f"rescore must be a finite number >= 0, got {rescore}")
        x_T = None
        if generator is None:
            generator = torch.Generator().manual_seed(self.config.seed)
            shared = torch.randn((num_spans, 2), generator=generator)  # (Q, 2)
            x_T = shared[None].expand(video.shape[0], -1, -1).to(self.device)  # (B, Q, 2)
        condition = self.model.encode(video.to(self.device), video_mask.to(self.device), text.to(self.device),
                                      text_mask.to(self.device))
        spans_cw, logits = self.diffusion.sample(self.model, condition, num_spans, steps, generator, x_T)
        relevance = condition.relevance.sigmoid() * condition.mask  # (B, F)
        proposal_step = self.config.inference.relevance_proposal_step if proposal_step == -1 else proposal_step
        if method == "refined_span" and proposal_step is None:
            proposal_step = 0
        if proposal_step is not None:
            refined, refined_logits = self._refine_relevance_span(condition, relevance, int(proposal_step))
            spans_cw = torch.cat([spans_cw, refined], dim=1)  # (B, Q + 1, 2)
            logits = torch.cat([logits, refined_logits], dim=1)  # (B, Q + 1, 2)
        p_fg = logits.softmax(-1)[..., 0]  # (B, Q')
        if rescore > 0:
            gain = span_relevance_gain(span_cw_to_se(spans_cw.float()).clamp(0.0, 1.0), relevance, condition.mask)
            p_fg = p_fg * torch.exp(rescore * (gain - 1.0))  # (B, Q')
        if method == "relevance_span":
            # first in the stable descending sort of _postprocess: it ties the best sampled span's score
            best_se = best_contiguous_spans_se(relevance, condition.mask)  # (B, 2)
            spans_cw = torch.cat([span_se_to_cw(best_se)[:, None], spans_cw], dim=1)  # (B, Q' + 1, 2)
            p_fg = torch.cat([p_fg.amax(dim=1, keepdim=True), p_fg], dim=1)  # (B, Q' + 1)
        elif method == "refined_span":  # the proposal (last) moves first, scored as the pair's best span
            spans_cw = torch.cat([spans_cw[:, -1:], spans_cw[:, :-1]], dim=1)  # (B, Q + 1, 2)
            p_fg = torch.cat([p_fg.amax(dim=1, keepdim=True), p_fg[:, :-1]], dim=1)  # (B, Q + 1)
        return spans_cw, p_fg, relevance

    def _refine_relevance_span(self, condition: Condition, relevance: Tensor, step: int) -> tuple[Tensor, Tensor]:
        """The best contiguous span of each pair's relevance curve, noised to ``step`` (seeded) and denoised once.

        Returns:
            ``(spans_cw (B, 1, 2), logits (B, 1, 2))``.
        """
        if not 0 <= step < self.config.diffusion.steps:
            raise ValueError(f"proposal_step must lie in [0, {self.config.diffusion.steps}), got {step}")
        proposal = span_se_to_cw(best_contiguous_spans_se(relevance, condition.mask))[:, None]  # (B, 1, 2)
        noise = torch.randn((1, 1, 2), generator=torch.Generator().manual_seed(self.config.seed + 1))
        x_start = self.diffusion.to_signal(proposal)
        t = torch.full((proposal.shape[0],), step, dtype=torch.long, device=proposal.device)  # (B,)
        x_t = self.diffusion.schedule.q_sample(x_start, t, noise.to(proposal.device).expand_as(x_start))
        output = self.model(self.diffusion.from_signal(x_t), t, condition)
        return output.final_spans, output.final_logits

    # ------------------------------------------------------------------------------------------------------------
    # numpy level (the MomentLocalizer protocol)

    def _check_query(self, query_tokens: np.ndarray) -> np.ndarray:
        query = np.asarray(query_tokens)
        if query.ndim != 2 or query.shape[0] == 0:
            raise ValueError(f"query_tokens must be a non-empty (L, D_text) array, got shape {query.shape}; an "
                             "empty query has nothing to localise: give a sentence")
        if query.shape[1] != self.config.text_dim:
            raise ValueError(f"query_tokens have width {query.shape[1]} but the localiser was trained on "
                             f"{self.config.text_dim}; encode the query with the same text backbone")
        if not np.isfinite(query).all():
            raise ValueError("query_tokens contain NaN or inf; re-encode the query")
        return preprocess_query(query, self.config.data.max_query_tokens)

    def _check_video(self, frames: np.ndarray, duration: float) -> np.ndarray:
        video = np.asarray(frames)
        if video.ndim != 2 or video.shape[0] == 0:
            raise ValueError(f"frame_tokens must be a non-empty (F, D) array, got shape {video.shape}")
        if video.shape[1] != self.config.video_dim:
            raise ValueError(f"frame_tokens have width {video.shape[1]} but the localiser was trained on "
                             f"{self.config.video_dim} ({self.config.condition!r} condition); pass the tokens of "
                             "the same index / feature")
        if not np.isfinite(video).all():
            raise ValueError("frame_tokens contain NaN or inf; re-encode the video")
        if not (isinstance(duration, (int, float, np.floating, np.integer)) and math.isfinite(float(duration))
                and float(duration) > 0):
            raise ValueError(f"duration must be a finite number of seconds > 0, got {duration!r}; read it from the "
                             "video's metadata")
        if self.config.condition == "frames":
            return preprocess_frames(video, self.config.data.max_frames).astype(np.float32, copy=False)
        return video.astype(np.float32, copy=False)

    def _postprocess(self, spans_cw: Tensor, p_fg: Tensor, relevance: np.ndarray, duration: float,
                     num_moments: int) -> Localization:
        """(Q, 2), (Q,) of one pair -> moments in seconds, best first, clamped, NMS'd, at most ``num_moments``."""
        spans_se = span_cw_to_se(spans_cw.float()).clamp(0.0, 1.0)  # (Q, 2)
        order = torch.sort(p_fg, descending=True, stable=True).indices  # (Q,)
        if self.config.inference.nms_threshold is not None:
            order = temporal_nms(spans_se, p_fg, self.config.inference.nms_threshold)
        order = order[:num_moments]
        seconds = (spans_se[order].double() * float(duration)).clamp(0.0, float(duration))  # (K, 2)
        moments = tuple(Moment(float(s), float(e), float(p)) for (s, e), p in zip(seconds.tolist(), p_fg[order]))
        return Localization(moments, relevance.astype(np.float32))

    def localize(self, query_tokens: np.ndarray, frame_tokens: np.ndarray, duration: float, *,
                 num_moments: int = 5, num_spans: int | None = None, steps: int | None = None) -> Localization:
        """Localise one query in one video (the :class:`prvr.types.MomentLocalizer` protocol).

        Args:
            query_tokens: (L, D_t) float32 token features of the query.
            frame_tokens: (F, D_v) float32 frame tokens of the video (F >= 1).
            duration: seconds, finite and > 0.
            num_moments: at most this many spans are returned.
            num_spans: spans sampled (default ``config.inference.num_spans``; raised to ``num_moments`` when
                smaller).
            steps: DDIM steps (default ``config.inference.sampling_steps``).

        Returns:
            Moments best first (seconds within [0, duration]) and the (F,) relevance curve in [0, 1].
        """
        return self.localize_many(query_tokens, [frame_tokens], [duration], num_moments=num_moments,
                                  num_spans=num_spans, steps=steps)[0]

    def localize_many(self, query_tokens: np.ndarray, videos: Sequence[np.ndarray], durations: Sequence[float], *,
                      num_moments: int = 5, num_spans: int | None = None,
                      steps: int | None = None) -> list[Localization]:
        """One query over K videos (e.g. its top-K retrieved videos) in one batch.

        Args:
            query_tokens: (L, D_t) token features of the query.
            videos: K arrays (F_k, D_v) of frame tokens.
            durations: K durations in seconds.
            num_moments, num_spans, steps: as in :meth:`localize`.

        Returns:
            K localisations, in the order of ``videos``.
        """
        if num_moments < 1:
            raise ValueError(f"num_moments must be >= 1, got {num_moments}")
        if len(videos) != len(durations):
            raise ValueError(f"{len(videos)} videos but {len(durations)} durations")
        if not videos:
            return []
        query = self._check_query(query_tokens)
        frames = [self._check_video(video, duration) for video, duration in zip(videos, durations)]
        num_spans = max(self.config.inference.num_spans if num_spans is None else int(num_spans), num_moments)
        video, video_mask = pad_batch(frames, self.device)  # (K, F, D_v), (K, F)
        text, text_mask = pad_batch([query] * len(frames), self.device)  # (K, L, D_t), (K, L)
        spans_cw, p_fg, relevance = self.predict(video, video_mask, text, text_mask, num_spans=num_spans,
                                                 steps=steps)
        relevance_np = relevance.cpu().numpy()
        return [self._postprocess(spans_cw[k].cpu(), p_fg[k].cpu(), relevance_np[k, : frames[k].shape[0]],
                                  float(durations[k]), num_moments) for k in range(len(frames))]

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device = "cpu") -> DiffusionMomentLocalizer:
        """Rebuild the localiser from a moment checkpoint's embedded config and weights."""
        payload = read_moment_checkpoint(path)
        config = MomentConfig.from_json(payload["moment_config"])
        model = MomentDenoiser(config)
        model.load_state_dict(payload["model"])
        return cls(model, config, device)


def load_localizer(path: str | Path, device: str = "cpu") -> DiffusionMomentLocalizer:
    """The localiser saved in a moment checkpoint (best.pt / last.pt of `prvr train-moments`)."""
    return DiffusionMomentLocalizer.from_checkpoint(path, device)
