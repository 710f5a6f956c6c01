"""Dataclasses that cross module boundaries: annotation records, model batches and video tokens.

Shape letters: B videos, C clip tokens, F frame tokens, K registers, L text tokens, Nq queries, D hidden.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

import torch
from torch import Tensor

if TYPE_CHECKING:
    from prvr.config import DataConfig

__all__ = [
    "QueryRecord",
    "VideoBatch",
    "QueryBatch",
    "VideoTokens",
    "Moment",
    "Localization",
    "MomentLocalizer",
    "VideoInfo",
    "VideoCorpus",
]


@dataclass(frozen=True)
class QueryRecord:
    """One natural-language query about one video, from any annotation source.

    ``windows`` holds the ground-truth moments in seconds (empty when the source has no timestamps; several for
    QVHighlights). ``duration`` is the video length in seconds when the source gives it.
    """

    query_id: str
    video_id: str
    text: str
    windows: tuple[tuple[float, float], ...] = ()
    duration: float | None = None

    @property
    def start(self) -> float | None:
        return self.windows[0][0] if self.windows else None

    @property
    def end(self) -> float | None:
        return self.windows[0][1] if self.windows else None


@dataclass(frozen=True)
class VideoBatch:
    """Preprocessed video features of B videos.

    Attributes:
        clip_feats: (B, C, D_in) L2-normalised clip-bin means.
        frame_feats: (B, F, D_in) L2-normalised frame features, zero-padded to the batch's longest video.
        frame_mask: (B, F) bool, True on real frames.
        video_ids: B external video ids.
    """

    clip_feats: Tensor
    frame_feats: Tensor
    frame_mask: Tensor
    video_ids: list[str] = field(default_factory=list)

    def to(self, device: torch.device | str) -> VideoBatch:
        return VideoBatch(
            self.clip_feats.to(device), self.frame_feats.to(device), self.frame_mask.to(device), self.video_ids
        )

    def __len__(self) -> int:
        return self.clip_feats.shape[0]


@dataclass(frozen=True)
class QueryBatch:
    """Token features of Nq queries.

    Attributes:
        tokens: (Nq, L, D_text) L2-normalised token features, zero-padded.
        mask: (Nq, L) bool, True on real tokens.
        query_ids: Nq query ids.
        video_index: (Nq,) long, the row of each query's video in the paired VideoBatch (training), or None.
    """

    tokens: Tensor
    mask: Tensor
    query_ids: list[str] = field(default_factory=list)
    video_index: Tensor | None = None

    def to(self, device: torch.device | str) -> QueryBatch:
        index = self.video_index.to(device) if self.video_index is not None else None
        return QueryBatch(self.tokens.to(device), self.mask.to(device), self.query_ids, index)

    def __len__(self) -> int:
        return self.tokens.shape[0]


@dataclass(frozen=True)
class VideoTokens:
    """What the video side of the model produces, once per video, at index time.

    Attributes:
        clip: (B, C, D) clip tokens.
        frame: (B, F, D) frame tokens (padded positions are meaningless; see frame_mask).
        frame_mask: (B, F) bool, True on real frames.
        registers: (B, K, D) the generated registers, or None when registers are disabled.
    """

    clip: Tensor
    frame: Tensor
    frame_mask: Tensor
    registers: Tensor | None = None

    def to(self, device: torch.device | str) -> VideoTokens:
        registers = self.registers.to(device) if self.registers is not None else None
        return VideoTokens(self.clip.to(device), self.frame.to(device), self.frame_mask.to(device), registers)

    def __len__(self) -> int:
        return self.clip.shape[0]


@dataclass(frozen=True)
class Moment:
    """One predicted span inside a video, in seconds, with ``0 <= start_sec <= end_sec <= duration``.

    Attributes:
        start_sec: start of the span.
        end_sec: end of the span.
        score: the localiser's confidence (foreground probability), in [0, 1].
    """

    start_sec: float
    end_sec: float
    score: float


@dataclass(frozen=True)
class Localization:
    """What a moment localiser says about one (query, video) pair.

    Attributes:
        moments: spans sorted by score, best first.
        relevance: (F,) per-frame relevance of the video to the query (for display and highlight scores).
    """

    moments: tuple[Moment, ...]
    relevance: np.ndarray


class MomentLocalizer(Protocol):
    """Finds where in a video a query happens, from what the index stores (no backbone pass over the video)."""

    def localize(
        self, query_tokens: np.ndarray, frame_tokens: np.ndarray, duration: float, *, num_moments: int = 5
    ) -> Localization:
        """Localise one query in one video.

        Args:
            query_tokens: (L, D_text) float32 text-backbone token features of the query (unpadded).
            frame_tokens: (F, D) float32 frame tokens of the video, as stored in the index.
            duration: the video's duration in seconds (> 0).
            num_moments: how many spans to return at most.

        Returns:
            The moments (seconds, clamped to [0, duration], best first) and the per-frame relevance curve.
        """
        ...

    def localize_many(
        self, query_tokens: np.ndarray, videos: list[np.ndarray], durations: list[float], *, num_moments: int = 5
    ) -> list[Localization]:
        """Localise one query in each of K videos (its top-K results) in one batch: what search calls.

        Args:
            query_tokens: (L, D_text) as in :meth:`localize`.
            videos: K arrays (F_k, D) of frame tokens.
            durations: K durations in seconds.
            num_moments: how many spans to return at most per video.

        Returns:
            K localisations, in the order of ``videos``.
        """
        ...


@dataclass(frozen=True)
class VideoInfo:
    """What a corpus knows of one video besides its features (all optional): what the index catalog records."""

    duration_s: float | None = None
    uri: str | None = None  # the source file, when the features came from one
    fps: float | None = None
    n_frames: int | None = None


class VideoCorpus(Protocol):
    """The videos an index is built from: a caption split (``prvr.data.dataset.PRVRCorpus``) or a folder of
    extracted video features (``prvr.features.corpus.ExtractedVideoCorpus``).

    ``video`` returns the preprocessed ``(clip, frames)`` features, (C, D_in) and (F, D_in) float32; ``cache=False``
    reads a video without keeping it in a RAM cache the corpus may have (an index build reads each video once).
    """

    root: Path
    collection: str
    split: str
    config: DataConfig

    @property
    def video_ids(self) -> list[str]: ...

    @property
    def video_dim(self) -> int: ...

    @property
    def text_dim(self) -> int: ...

    def video(self, video_id: str, *, cache: bool = True) -> tuple[np.ndarray, np.ndarray]: ...

    def captions_of(self, video_id: str) -> list[QueryRecord]: ...

    def video_info(self, video_id: str) -> VideoInfo: ...
