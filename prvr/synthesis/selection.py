"""FVE's hybrid data selection: cross-modal relevance, uni-modal structure and model performance.

Shape letters: n frames of one video, D feature dimension, Nq candidate queries, V candidate videos.

The signals, as ../shared/spec/data_synthesis.md restates them, for a generated moment m_e (frames f^1..f^N, the
span) made from the source moment m_s with the new sentence p_e:

* s_c(p_e, m_e) = (1/N) sum_i cos(VLM(p_e), VLM(f^i_{m_e})): does the moment show the prompt? On ANet-CapProxy the
  VLM is all-MiniLM-L6 on both sides: p_e's L6 sentence vector against the moment's frames rendered by the L6
  camera (the oracle camera: the L6 vectors of the sentences the edited frames show, with the same noise draw and
  scene vector), :func:`cross_modal_relevance`;
* s_u(m_s, m_e) = (1/N) sum_i cos(VM(f^i_{m_s}), VM(f^i_{m_e})): did the edit keep the source's structure? VM is
  the identity on the benchmark's camera frames (the frames outside the span are identical by construction),
  :func:`uni_modal_structure`;
* model performance: D_mpd = TOP_l({(d, -VMR(d)) | d in D_cu}): of the candidates that pass the thresholds on s_c
  and s_u (D_cu), the ``budget`` on which the current model does worst. VMR(d) here is the current model's margin
  on the candidate's own query over the candidate corpus (its video's score minus the best other video's),
  :func:`model_margins`.

:func:`select` combines them; each is switchable (:class:`SelectionConfig`), so the single-signal rows and the
unselected row (all off: a seeded random ``budget`` of the candidates) come from the same function.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__ = ["SelectionConfig", "cross_modal_relevance", "uni_modal_structure", "model_margins", "select"]


@dataclass(frozen=True)
class SelectionConfig:
    """Which signals select, their thresholds and the budget.

    Attributes:
        cross_modal: keep only candidates with s_c >= ``min_cross_modal``.
        structure: keep only candidates with s_u >= ``min_structure``.
        model: of those kept, take the ``budget`` with the lowest model margin (the worst-served); otherwise a
            seeded random ``budget`` of them.
        min_cross_modal: threshold on s_c.
        min_structure: threshold on s_u.
        budget: l, the most candidates selected (fewer when fewer pass).
        seed: the random draw when ``model`` is off.
    """

    cross_modal: bool = False
    structure: bool = False
    model: bool = False
    min_cross_modal: float = 0.0
    min_structure: float = 0.0
    budget: int = 2000
    seed: int = 0

    def __post_init__(self) -> None:
        if self.budget < 1:
            raise ValueError(f"selection budget must be >= 1, got {self.budget}")

    @property
    def name(self) -> str:
        """A short label: ``unselected``, ``sc``, ``su``, ``model``, ``sc+su+model`` (the hybrid), ..."""
        parts = [label for label, on in (("sc", self.cross_modal), ("su", self.structure), ("model", self.model))
                 if on]
        return "+".join(parts) or "unselected"


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def cross_modal_relevance(prompt_vector: np.ndarray, vlm_frames: np.ndarray, span: np.ndarray) -> float:
    """s_c: the mean over the span of cos(VLM(p_e), VLM(frame)).

    Args:
        prompt_vector: (D,) the VLM's text vector of p_e.
        vlm_frames: (n, D) the edited video as the VLM sees it.
        span: (n,) bool, the generated moment's frames.
    """
    rows = _unit(vlm_frames[np.asarray(span, dtype=bool)])  # (N, D)
    if rows.shape[0] == 0:
        raise ValueError("s_c needs a non-empty span")
    return float((rows @ _unit(prompt_vector)).mean())


def uni_modal_structure(source_frames: np.ndarray, edited_frames: np.ndarray, span: np.ndarray) -> float:
    """s_u: the mean over the span of cos(source frame, edited frame).

    Args:
        source_frames: (n, D) the source video.
        edited_frames: (n, D) the generated video.
        span: (n,) bool, the generated moment's frames.
    """
    span = np.asarray(span, dtype=bool)
    if not span.any():
        raise ValueError("s_u needs a non-empty span")
    source, edited = _unit(source_frames[span]), _unit(edited_frames[span])  # (N, D) each
    return float((source * edited).sum(axis=1).mean())


@torch.no_grad()
def model_margins(model: Any, corpus: Any, *, batch_videos: int = 128, query_chunk: int = 512,
                  video_chunk: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """The current model on every candidate: its margin and its rank over the candidate corpus.

    Args:
        model: anything with ``encode_videos`` / ``encode_queries`` / ``score`` (DreamPRVR, the trivial reference).
        corpus: the candidates as a :class:`prvr.data.dataset.PRVRCorpus` (one query per video).
        batch_videos, query_chunk, video_chunk: work sizes.

    Returns:
        ((Nq,) margin = score(q, own video) - max score(q, other video), (Nq,) 1-based rank of the own video, ties
        counted against it), in caption order.
    """
    from prvr.engine import encode_corpus, encode_corpus_queries
    from prvr.types import VideoTokens

    def video_slice(v: int) -> VideoTokens:
        registers = tokens.registers[v : v + video_chunk] if tokens.registers is not None else None
        return VideoTokens(tokens.clip[v : v + video_chunk], tokens.frame[v : v + video_chunk],
                           tokens.frame_mask[v : v + video_chunk], registers)

    tokens = encode_corpus(model, corpus, batch_size=batch_videos)
    queries, targets = encode_corpus_queries(model, corpus, batch_size=query_chunk)
    if len(tokens) < 2:
        raise ValueError("model margins need at least two candidate videos")
    device = model.device
    margins = np.empty(len(targets), dtype=np.float64)
    ranks = np.empty(len(targets), dtype=np.int64)
    for start in range(0, len(targets), query_chunk):
        q = queries[start : start + query_chunk].to(device)  # (nq, D)
        scores = torch.cat([
            model.score(q, video_slice(v).to(device))["total"].double().cpu()
            for v in range(0, len(tokens), video_chunk)
        ], dim=1)  # (nq, V)
        rows = torch.arange(scores.shape[0])
        target = torch.as_tensor(targets[start : start + query_chunk], dtype=torch.long)  # (nq,)
        own = scores[rows, target]  # (nq,)
        others = scores.clone()
        others[rows, target] = float("-inf")
        margins[start : start + len(target)] = (own - others.max(dim=1).values).numpy()
        ranks[start : start + len(target)] = (1 + (others >= own[:, None]).sum(dim=1)).numpy()
    return margins, ranks


def select(scores: Sequence[Mapping[str, float]], config: SelectionConfig) -> list[int]:
    """Which candidates the configured selection keeps.

    Args:
        scores: one mapping per candidate with ``s_c`` and ``s_u`` (when those filters are on) and ``margin``
            (when ``config.model``).
        config: the signals, thresholds and budget.

    Returns:
        The kept candidates' indices, ascending.

    Raises:
        ValueError: a switched-on signal's score is missing from a candidate.
    """
    needed = [key for key, on in (("s_c", config.cross_modal), ("s_u", config.structure),
                                  ("margin", config.model)) if on]
    for index, record in enumerate(scores):
        missing = [key for key in needed if key not in record]
        if missing:
            raise ValueError(f"candidate {index} has no {missing} score; compute it first "
                             "(s_c / s_u by `synthesize`, the margin by `select --checkpoint`)")
    passing = [i for i, record in enumerate(scores)
               if (not config.cross_modal or record["s_c"] >= config.min_cross_modal)
               and (not config.structure or record["s_u"] >= config.min_structure)]
    if config.model:
        # TOP_l by -VMR: the lowest margins first, candidate order breaking ties.
        order = sorted(passing, key=lambda i: (scores[i]["margin"], i))
    else:
        rng = np.random.default_rng(config.seed)
        order = [passing[i] for i in rng.permutation(len(passing))]
    return sorted(order[: config.budget])
