"""Zero-shot moments: the best contiguous spans of the query-frame cosine curve, no training (issue 20).

Shape letters: F frames, L query tokens, D the joint image-text width, K videos of one query.

A zero-shot index (``build-index --zero-shot``) stores frame tokens in the backbone's joint space, so the cosine
between the query vector and each frame is already a relevance curve. :class:`ZeroShotMomentLocalizer` implements
the :class:`prvr.types.MomentLocalizer` protocol on it:

1. query = the mean of the raw query tokens, L2-normalised (the zero-shot model's query vector,
   ``prvr.zero_shot.ZeroShotPRVR.encode_queries``); frames = the stored frame tokens, L2-normalised;
2. curve = ``frames @ query`` (F,) over the times only (an index with event tokens records how many trailing
   frame tokens are events, ``event_tokens``, and they are dropped first), optionally smoothed by a centred moving
   average of ``smooth`` frames;
3. moments = the disjoint runs of frames above the curve's per-video mean, ranked by their summed excess
   (``prvr.moments.baselines.top_contiguous_spans``; the first is the best contiguous span, the zero-shot floor of
   ``scripts/bench_moments.py``); frame k covers [k / F, (k + 1) / F] of the duration. A moment's score is its
   excess over the best run's (1 for the best, in (0, 1] for the others).

The returned relevance curve is ``(1 + cos) / 2`` of the smoothed curve, in [0, 1]. The index records the localiser
as ``manifest.moment_localizer = {"kind": "zero_shot", "smooth": S}`` (:func:`localizer_record`), read back by
:func:`localizer_from_record`.

:class:`RelevanceSpanLocalizer` applies the same span rule to a TRAINED localiser's per-frame relevance curve (the
relevance-span baseline of ``scripts/bench_moments.py``): where it measures better than the denoiser's own spans on
the validation queries, an index records ``{"kind": "relevance_span", ...}`` beside its moment checkpoint and search
wraps the loaded localiser (:func:`wrap_trained_localizer`).

:class:`RetrievalCosineLocalizer` needs no moment model at all: the trained DreamPRVR's query vector against the
index's own frame tokens (the frame-scale similarity the retrieval model is trained on) is the curve, cut at
``mean + level (max - mean)``; recorded as ``{"kind": "retrieval_cosine", "level": a}`` and built by the Retriever
around its own model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from prvr.moments.baselines import top_contiguous_spans
from prvr.types import Localization, Moment

__all__ = ["ZeroShotMomentConfig", "ZeroShotMomentLocalizer", "RelevanceSpanLocalizer", "localizer_record",
           "localizer_from_record", "relevance_span_record", "wrap_trained_localizer", "curve_moments",
           "smooth_curve", "ZERO_SHOT_KIND", "RELEVANCE_SPAN_KIND", "DENOISER_KIND", "RETRIEVAL_COSINE_KIND",
           "RetrievalCosineLocalizer", "retrieval_cosine_record"]

ZERO_SHOT_KIND = "zero_shot"
RETRIEVAL_COSINE_KIND = "retrieval_cosine"  # the retrieval model's own query-frame cosine (needs no checkpoint)
RELEVANCE_SPAN_KIND = "relevance_span"  # spans of a trained localiser's relevance curve (needs its checkpoint)
DENOISER_KIND = "denoiser"  # the trained localiser's own spans (what a moment checkpoint alone means)


@dataclass(frozen=True)
class ZeroShotMomentConfig:
    """Settings of the zero-shot localiser.

    Attributes:
        smooth: frames in the centred moving average applied to the cosine curve (1 = none; odd).
        event_tokens: trailing frame tokens of every video that are event tokens, not times (``prvr.events``;
            ``EventConfig.tokens_added`` of the index's model), dropped before the curve.
    """

    smooth: int = 1
    event_tokens: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.smooth, bool) or not isinstance(self.smooth, int) or self.smooth < 1 or self.smooth % 2 == 0:
            raise ValueError(f"smooth must be an odd number of frames >= 1, got {self.smooth!r}")
        if isinstance(self.event_tokens, bool) or not isinstance(self.event_tokens, int) or self.event_tokens < 0:
            raise ValueError(f"event_tokens must be an int >= 0, got {self.event_tokens!r}")


def smooth_curve(curve: np.ndarray, frames: int) -> np.ndarray:
    """Centred moving average of ``frames`` (odd) frames; near the ends, the mean of the frames that exist.

    >>> smooth_curve(np.array([0.0, 3.0, 0.0, 0.0]), 3).tolist()
    [1.5, 1.0, 1.0, 0.0]
    """
    values = np.asarray(curve, dtype=np.float64)
    if frames <= 1 or values.size < 2:
        return values
    half = frames // 2
    prefix = np.concatenate([[0.0], np.cumsum(values)])  # (F + 1,)
    index = np.arange(values.size)
    low, high = np.maximum(index - half, 0), np.minimum(index + half + 1, values.size)
    return (prefix[high] - prefix[low]) / (high - low)


class ZeroShotMomentLocalizer:
    """Moments from the query-frame cosine curve of a joint image-text space (no parameters)."""

    def __init__(self, config: ZeroShotMomentConfig | None = None) -> None:
        self.config = config or ZeroShotMomentConfig()

    def curve(self, query_tokens: np.ndarray, frame_tokens: np.ndarray) -> np.ndarray:
        """The (smoothed) cosine between the query vector and each frame: (F,) float64."""
        query = np.asarray(query_tokens, dtype=np.float64)
        frames = np.asarray(frame_tokens, dtype=np.float64)
        if query.ndim != 2 or query.shape[0] == 0:
            raise ValueError(f"query_tokens must be a non-empty (L, D) array, got shape {query.shape}; an empty "
                             "query has nothing to localise: give a sentence")
        events = self.config.event_tokens
        if frames.ndim != 2 or frames.shape[0] <= events:
            raise ValueError(f"frame_tokens must be a (F + {events}, D) array of F >= 1 frames and {events} event "
                             f"tokens, got shape {frames.shape}; pass the video's stored frame tokens")
        frames = frames[:frames.shape[0] - events]  # (F, D): the times only
        if query.shape[1] != frames.shape[1]:
            raise ValueError(f"query tokens are {query.shape[1]}-d but frame tokens {frames.shape[1]}-d: the "
                             "zero-shot localiser needs one joint space (a zero-shot index's own text encoder)")
        if not (np.isfinite(query).all() and np.isfinite(frames).all()):
            raise ValueError("query or frame tokens contain NaN or inf; re-encode them")
        vector = query.mean(axis=0)  # (D,)
        vector = vector / max(float(np.linalg.norm(vector)), 1e-12)
        frames = frames / np.maximum(np.linalg.norm(frames, axis=1, keepdims=True), 1e-12)  # (F, D)
        return smooth_curve(frames @ vector, self.config.smooth)  # (F,)

    def localize(self, query_tokens: np.ndarray, frame_tokens: np.ndarray, duration: float, *,
                 num_moments: int = 5) -> Localization:
        """Localise one query in one video: runs above the mean, best first, in seconds within [0, duration]."""
        _check_duration(duration)
        curve = self.curve(query_tokens, frame_tokens)
        relevance = np.clip((1.0 + curve) / 2.0, 0.0, 1.0).astype(np.float32)  # (F,)
        return Localization(curve_moments(curve, duration, num_moments), relevance)

    def localize_many(self, query_tokens: np.ndarray, videos: Sequence[np.ndarray], durations: Sequence[float], *,
                      num_moments: int = 5) -> list[Localization]:
        """One query over K videos, in the order of ``videos``."""
        if len(videos) != len(durations):
            raise ValueError(f"{len(videos)} videos but {len(durations)} durations")
        return [self.localize(query_tokens, frames, duration, num_moments=num_moments)
                for frames, duration in zip(videos, durations)]


def _check_duration(duration: float) -> None:
    if not (isinstance(duration, (int, float, np.floating, np.integer)) and math.isfinite(float(duration))
            and float(duration) > 0):
        raise ValueError(f"duration must be a finite number of seconds > 0, got {duration!r}; read it from the "
                         "video's metadata")


def curve_moments(curve: np.ndarray, duration: float, num_moments: int, level: float = 0.0) -> tuple[Moment, ...]:
    """The disjoint runs of a per-frame curve above its mean (``level`` > 0: above ``mean + level (max - mean)``,
    ``prvr.moments.baselines.top_contiguous_spans``), best first, in seconds.

    Frame k of F covers [k / F, (k + 1) / F] of the duration; a moment's score is its excess over the best run's
    (1 for the best). A flat curve (or one frame) gives the whole video with score 1.

    >>> curve_moments(np.array([0.0, 1.0, 1.0, 0.0]), 8.0, 2)
    (Moment(start_sec=2.0, end_sec=6.0, score=1.0),)

    Args:
        curve: (F,) finite values, F >= 1.
        duration: seconds, finite and > 0.
        num_moments: at most this many runs, >= 1.
        level: where the runs are cut, in [0, 1).
    """
    if num_moments < 1:
        raise ValueError(f"num_moments must be >= 1, got {num_moments}")
    _check_duration(duration)
    count, seconds = int(np.asarray(curve).size), float(duration)
    runs = top_contiguous_spans(curve, num_moments, level)
    best = runs[0][2]  # > 0 unless the curve is flat (one whole-video run)
    return tuple(Moment(first / count * seconds, min((last + 1) / count, 1.0) * seconds,
                        float(excess / best) if best > 0 else 1.0) for first, last, excess in runs)


class RelevanceSpanLocalizer:
    """A trained localiser's relevance curve, read as spans (:func:`curve_moments`) instead of its sampled spans.

    Args:
        trained: a localiser whose ``localize_many`` returns the (F,) relevance curve (``DiffusionMomentLocalizer``).
    """

    def __init__(self, trained: Any) -> None:
        self.trained = trained
        self.config = getattr(trained, "config", None)  # what the Retriever checks against the index

    def localize(self, query_tokens: np.ndarray, frame_tokens: np.ndarray, duration: float, *,
                 num_moments: int = 5) -> Localization:
        """Localise one query in one video (the :class:`prvr.types.MomentLocalizer` protocol)."""
        return self.localize_many(query_tokens, [frame_tokens], [duration], num_moments=num_moments)[0]

    def localize_many(self, query_tokens: np.ndarray, videos: Sequence[np.ndarray], durations: Sequence[float], *,
                      num_moments: int = 5) -> list[Localization]:
        """One query over K videos: the trained model's relevance curves (one batch), then their runs."""
        if num_moments < 1:
            raise ValueError(f"num_moments must be >= 1, got {num_moments}")
        located = self.trained.localize_many(query_tokens, videos, durations, num_moments=1)
        return [Localization(curve_moments(np.asarray(found.relevance, dtype=np.float64), float(duration),
                                           num_moments), found.relevance)
                for found, duration in zip(located, durations)]


class RetrievalCosineLocalizer:
    """Moments from the cosine between a retrieval model's query vector and the video's frame tokens.

    Args:
        model: the DreamPRVR whose frame tokens the index stores (``encode_queries`` gives the (D,) query vector).
        data: its ``DataConfig`` (how query tokens are preprocessed: ``max_query_tokens``, normalisation).
        level: where the runs are cut (:func:`curve_moments`), in [0, 1).
    """

    def __init__(self, model: Any, data: Any, level: float = 0.5) -> None:
        if not (isinstance(level, (int, float)) and 0.0 <= float(level) < 1.0):
            raise ValueError(f"level must be a number in [0, 1), got {level!r}")
        self.model = model
        self.data = data
        self.level = float(level)
        self.config = None  # reads the index's retrieval frame tokens: nothing for the Retriever to check

    def query_vector(self, query_tokens: np.ndarray) -> np.ndarray:
        """The model's unit (D,) vector of one query's (L, D_text) token features."""
        import torch

        from prvr.data.preprocess import collate_queries, preprocess_query

        query = np.asarray(query_tokens, dtype=np.float32)
        if query.ndim != 2 or query.shape[0] == 0:
            raise ValueError(f"query_tokens must be a non-empty (L, D_text) array, got shape {query.shape}; an empty "
                             "query has nothing to localise: give a sentence")
        if not np.isfinite(query).all():
            raise ValueError("query_tokens contain NaN or inf; re-encode the query")
        tokens = preprocess_query(query, self.data.max_query_tokens, normalize=self.data.normalize_query_tokens)
        with torch.no_grad():
            vector = self.model.encode_queries(collate_queries([tokens], ["q"]))[0].float().cpu().numpy()  # (D,)
        return vector / max(float(np.linalg.norm(vector)), 1e-12)

    def localize(self, query_tokens: np.ndarray, frame_tokens: np.ndarray, duration: float, *,
                 num_moments: int = 5) -> Localization:
        """Localise one query in one video (the :class:`prvr.types.MomentLocalizer` protocol)."""
        return self.localize_many(query_tokens, [frame_tokens], [duration], num_moments=num_moments)[0]

    def localize_many(self, query_tokens: np.ndarray, videos: Sequence[np.ndarray], durations: Sequence[float], *,
                      num_moments: int = 5) -> list[Localization]:
        """One query over K videos: the query vector once, then each video's (F,) cosine curve and its runs."""
        if len(videos) != len(durations):
            raise ValueError(f"{len(videos)} videos but {len(durations)} durations")
        for duration in durations:
            _check_duration(duration)
        vector = self.query_vector(query_tokens)
        found = []
        for frames, duration in zip(videos, durations):
            frames = np.asarray(frames, dtype=np.float64)
            if frames.ndim != 2 or frames.shape[0] == 0 or frames.shape[1] != vector.shape[0]:
                raise ValueError(f"frame_tokens must be a non-empty (F, {vector.shape[0]}) array of the index, got "
                                 f"shape {frames.shape}")
            if not np.isfinite(frames).all():
                raise ValueError("frame_tokens contain NaN or inf; rebuild the index")
            frames = frames / np.maximum(np.linalg.norm(frames, axis=1, keepdims=True), 1e-12)  # (F, D)
            curve = frames @ vector  # (F,)
            relevance = np.clip((1.0 + curve) / 2.0, 0.0, 1.0).astype(np.float32)
            found.append(Localization(curve_moments(curve, float(duration), num_moments, self.level), relevance))
        return found


def retrieval_cosine_record(level: float, measured: dict[str, Any] | None = None) -> dict[str, Any]:
    """The manifest record of a :class:`RetrievalCosineLocalizer` with cut ``level`` (and what chose it)."""
    return {"kind": RETRIEVAL_COSINE_KIND, "level": float(level), **({"measured": measured} if measured else {})}


def relevance_span_record(measured: dict[str, Any] | None = None) -> dict[str, Any]:
    """The manifest record that makes search read a moment checkpoint's relevance curve as spans; ``measured``
    (e.g. the val metrics of both readings that chose it) is kept beside it."""
    return {"kind": RELEVANCE_SPAN_KIND, **({"measured": measured} if measured else {})}


def wrap_trained_localizer(trained: Any, record: dict[str, Any] | None) -> Any:
    """The localiser search uses for a moment checkpoint: the trained one itself (no record, or kind
    ``denoiser``) or its :class:`RelevanceSpanLocalizer` (kind ``relevance_span``).

    Raises:
        ValueError: on another record (e.g. ``zero_shot``, which needs no checkpoint).
    """
    kind = None if record is None else record.get("kind")
    if kind in (None, DENOISER_KIND, RETRIEVAL_COSINE_KIND):  # retrieval_cosine: the Retriever builds it itself
        return trained
    if kind == RELEVANCE_SPAN_KIND:
        return RelevanceSpanLocalizer(trained)
    raise ValueError(f"moment localiser {record!r} does not go with a moment checkpoint; this code knows kinds "
                     f"{DENOISER_KIND!r} and {RELEVANCE_SPAN_KIND!r} there: rebuild the index")


def localizer_record(config: ZeroShotMomentConfig | None = None) -> dict[str, Any]:
    """What the manifest's ``moment_localizer`` holds for this localiser."""
    config = config or ZeroShotMomentConfig()
    record: dict[str, Any] = {"kind": ZERO_SHOT_KIND, "smooth": config.smooth}
    if config.event_tokens:  # older readers know only "smooth"; a record without events stays as it was
        record["event_tokens"] = config.event_tokens
    return record


def localizer_from_record(record: dict[str, Any]) -> ZeroShotMomentLocalizer:
    """The localiser a manifest's ``moment_localizer`` record names.

    Raises:
        ValueError: on a kind this code does not know, or bad settings.
    """
    if not isinstance(record, dict) or record.get("kind") != ZERO_SHOT_KIND:
        raise ValueError(f"unknown moment localiser {record!r}; this code knows {{'kind': {ZERO_SHOT_KIND!r}}} "
                         f"without a moment checkpoint (and {RELEVANCE_SPAN_KIND!r} / {DENOISER_KIND!r} with one): "
                         "rebuild the index with this version of prvr")
    settings = {key: value for key, value in record.items() if key != "kind"}
    return ZeroShotMomentLocalizer(ZeroShotMomentConfig(**settings))
