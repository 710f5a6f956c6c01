"""Synthesised training pairs (FVE's generation step): a source video with one event re-made from a new sentence.

Shape letters: n frames of one video, S events of its timeline, D feature dimension.

A generator turns an :class:`EditRequest` (a source video, one of its events, a new sentence p_e) and the source's
frames into a :class:`SynthesisedPair`: the edited frames, the span of frames it re-made, and the new query with
its moment. :class:`PairGenerator` is the protocol; :class:`EventEditGenerator` is ANet-CapProxy's exact edit (the
benchmark's camera re-renders the event from p_e with the source's noise draw and scene vector,
:func:`prvr.benchmarks.capproxy_dataset.edit_event_frames`). A real video editor (a video-diffusion model on pixels,
as in FVE) would implement the same protocol and return frames from its own features.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from prvr.benchmarks.capproxy_dataset import FEATURE_DTYPE, CapProxyVideo, edit_event_frames
from prvr.types import QueryRecord

__all__ = ["EditRequest", "SynthesisedPair", "PairGenerator", "EventEditGenerator", "synthetic_video_id"]


def synthetic_video_id(source_id: str, event: int) -> str:
    """The id of the video made from ``source_id`` by editing its event ``event``: ``syn_<source>_e<event>``."""
    return f"syn_{source_id}_e{event}"


@dataclass(frozen=True)
class EditRequest:
    """What to generate: event ``event`` of ``source`` re-made to show ``sentence`` (p_e).

    Attributes:
        source: the source video (a DEV-TRAIN timeline).
        event: index into ``source.sentences`` / ``source.windows``.
        sentence: the new sentence p_e (one line).
        sentence_id: where p_e comes from (e.g. ``<train.json video>#<k>``), kept with the pair.
    """

    source: CapProxyVideo
    event: int
    sentence: str
    sentence_id: str


@dataclass(frozen=True)
class SynthesisedPair:
    """A generated (video, query, moment) triple.

    Attributes:
        video_id: the new video's id (:func:`synthetic_video_id`).
        frames: (n, D) the edited video, in the dtype of the source frames given (re-made rows rounded to the
            benchmark's float16 storage).
        span: (n,) bool, the frames that were re-made (all others are the source's, bit for bit).
        query: p_e as a query of ``video_id`` with the moment (the event's window clamped to the duration).
    """

    video_id: str
    frames: np.ndarray
    span: np.ndarray
    query: QueryRecord


class PairGenerator(Protocol):
    """Makes one synthesised pair from a request and the source video's frames."""

    generator_id: str

    def generate(self, request: EditRequest, source_frames: np.ndarray) -> SynthesisedPair:
        """Args: request; source_frames (n, D) as stored. Returns the pair (frames of the same shape)."""
        ...


class EventEditGenerator:
    """ANet-CapProxy's exact event edit: the camera re-renders one event from the new sentence.

    Args:
        camera: sentence text -> (D,) E_video(text), the benchmark camera's unit sentence vector; it must hold every
            source sentence and every new sentence that will be requested.
    """

    generator_id = "capproxy-event-edit-v1"

    def __init__(self, camera: Mapping[str, np.ndarray]) -> None:
        self.camera = camera

    def _embedding(self, text: str) -> np.ndarray:
        if text not in self.camera:
            raise KeyError(f"the camera table has no embedding of {text[:60]!r}; encode every source and new "
                           "sentence before generating")
        return self.camera[text]

    def generate(self, request: EditRequest, source_frames: np.ndarray) -> SynthesisedPair:
        source = request.source
        embeddings = np.stack([self._embedding(text) for text in source.sentences])  # (S, D)
        edited, span = edit_event_frames(source.video_id, source.duration, source.windows, embeddings, request.event,
                                         self._embedding(request.sentence))  # (n, D) float64, (n,)
        if source_frames.shape != edited.shape:
            raise ValueError(f"video {source.video_id!r}: the stored frames have shape {source_frames.shape}, the "
                             f"recipe gives {edited.shape}; the source features are not this timeline's")
        frames = np.array(source_frames, copy=True)  # (n, D) the source, as read
        # Only the event's frames are re-made, rounded to the benchmark's storage precision as every frame is.
        frames[span] = edited[span].astype(FEATURE_DTYPE).astype(frames.dtype)
        start, end = source.windows[request.event]
        moment = (max(0.0, min(start, end)), min(source.duration, max(start, end)))
        video_id = synthetic_video_id(source.video_id, request.event)
        query = QueryRecord(f"{video_id}#enc#0", video_id, request.sentence, (moment,), source.duration)
        return SynthesisedPair(video_id, frames, span, query)
