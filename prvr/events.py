"""Event tokens: training-free multi-scale segmentation of a video's frame features into events (issue 20).

Shape letters: F frames, D the feature width, E event tokens per video (``EventConfig.max_events``).

The idea is TF-PRVR's (segment the frame-feature signal at several scales, no training); the method is ours:

1. at each scale h (``EventConfig.scales``), the change at boundary b (between frames b - 1 and b) is a Haar-wavelet
   detail coefficient of the frame sequence: ``d_h(b) = 1 - cos(mean x[b-h:b], mean x[b:b+h])`` (windows cut at the
   ends; h = 1 is one minus the adjacent-frame cosine), :func:`haar_changes`;
2. a change point is a boundary whose change is the largest within ``h // 2`` boundaries on either side (the
   first of a plateau; a clean step's Haar response falls off over h boundaries either side, so its flanks are never
   maxima, and a step whose neighbours are at least 1.5 h frames away is found at its exact position) and exceeds
   the video's own level, ``median(d_h) + threshold * MAD(d_h)``; they are accepted strongest
   first (ties by position) while every event keeps ``min_length`` frames, :func:`change_points`;
3. the events are the segments between the change points of each scale, coarsest scale first, in time order within a
   scale, without repeats, at most ``max_events`` (:func:`segment_events`); an event token is the L2-normalised
   mean of the event's (unit) frames, and the tokens are padded to exactly E by repeating the last one
   (:func:`event_tokens`), so the zero-shot moment localiser knows that the last E frame tokens are not times.

A constant video has no change at any scale: its one event is the whole video. The zero-shot model appends the event
tokens to the frame tokens (``prvr.zero_shot.ZeroShotPRVR.encode_videos``), so max-over-tokens scoring, the index,
the exact re-rank and the bank term see them with no change.
"""

from __future__ import annotations

import numpy as np

from prvr.config import EventConfig

__all__ = ["haar_changes", "change_points", "segment_events", "event_tokens"]

_EPS = 1e-9  # a change must clear the level by this much (float noise of an exactly constant signal)


def _unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def haar_changes(frames: np.ndarray, half_width: int) -> np.ndarray:
    """``d_h(b) = 1 - cos(mean x[b-h:b], mean x[b:b+h])`` for the boundaries b = 1 .. F - 1.

    Args:
        frames: (F, D) frame features.
        half_width: h >= 1 frames on each side (cut at the video's ends).

    Returns:
        (F - 1,) float64; entry j is boundary b = j + 1.

    >>> haar_changes(np.array([[1.0, 0], [1, 0], [0, 1], [0, 1]]), 1).round(6).tolist()
    [0.0, 1.0, 0.0]
    """
    x = np.asarray(frames, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"frames must be (F, D), got shape {x.shape}")
    if half_width < 1:
        raise ValueError(f"half_width must be >= 1, got {half_width}")
    count = x.shape[0]
    if count < 2:
        return np.zeros(0)
    prefix = np.concatenate([np.zeros((1, x.shape[1])), np.cumsum(x, axis=0)])  # (F + 1, D)
    boundary = np.arange(1, count)  # (F - 1,)
    low, high = np.maximum(boundary - half_width, 0), np.minimum(boundary + half_width, count)
    before = (prefix[boundary] - prefix[low]) / (boundary - low)[:, None]  # (F - 1, D)
    after = (prefix[high] - prefix[boundary]) / (high - boundary)[:, None]  # (F - 1, D)
    return 1.0 - np.sum(_unit_rows(before) * _unit_rows(after), axis=1)


def change_points(changes: np.ndarray, half_width: int, *, threshold: float, min_length: int) -> list[int]:
    """The accepted change points (boundaries b, increasing) of one scale's changes ``d_h`` (:func:`haar_changes`).

    >>> change_points(np.array([0.0, 1.0, 0.0, 0.0, 0.5, 0.0]), 1, threshold=1.0, min_length=2)
    [2, 5]
    """
    d = np.asarray(changes, dtype=np.float64)
    count = d.size + 1  # frames
    if d.size == 0:
        return []
    median = float(np.median(d))
    level = median + threshold * float(np.median(np.abs(d - median)))
    radius = half_width // 2
    padded = np.concatenate([np.full(radius, -np.inf), d, np.full(radius, -np.inf)])  # (F - 1 + 2r,)
    windows = np.lib.stride_tricks.sliding_window_view(padded, 2 * radius + 1)  # (F - 1, 2r + 1), d[j] at column r
    left = windows[:, :radius].max(axis=1, initial=-np.inf)  # the r boundaries before: strictly smaller
    right = windows[:, radius + 1:].max(axis=1, initial=-np.inf)  # the r after: not larger (a plateau's first wins)
    candidates = np.flatnonzero((d > level + _EPS) & (d > left) & (d >= right)).tolist()
    accepted: list[int] = []
    for j in sorted(candidates, key=lambda j: (-d[j], j)):
        boundary = j + 1
        edges = [0, *accepted, count]
        if all(abs(boundary - edge) >= min_length for edge in edges):
            accepted.append(boundary)
    return sorted(accepted)


def segment_events(frames: np.ndarray, config: EventConfig) -> list[tuple[int, int]]:
    """The events of one video: ``(start, end)`` frame ranges (end exclusive), coarsest scale first, at most
    ``config.max_events``; always at least one (the whole video when nothing changes).

    Raises:
        ValueError: on a video without frames.
    """
    x = np.asarray(frames, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"event segmentation needs a non-empty (F, D) frame array, got shape {x.shape}")
    events: list[tuple[int, int]] = []
    for half_width in sorted(set(config.scales), reverse=True):
        points = change_points(haar_changes(x, half_width), half_width, threshold=config.threshold,
                               min_length=config.min_length)
        edges = [0, *points, x.shape[0]]
        for start, end in zip(edges[:-1], edges[1:]):
            if (start, end) not in events:
                events.append((start, end))
    return events[:config.max_events]


def event_tokens(frames: np.ndarray, config: EventConfig) -> np.ndarray:
    """(E, D) float64: the L2-normalised means of the events' L2-normalised frames, padded to E = ``max_events`` by
    repeating the last event."""
    x = _unit_rows(np.asarray(frames, dtype=np.float64))
    events = segment_events(x, config)
    tokens = _unit_rows(np.stack([x[start:end].mean(axis=0) for start, end in events]))  # (n, D)
    padding = np.repeat(tokens[-1:], config.max_events - tokens.shape[0], axis=0)  # (E - n, D)
    return np.concatenate([tokens, padding])
