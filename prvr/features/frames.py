"""Decode a video file with PyAV and sample RGB frames at a fixed rate, streamed (memory bounded by one frame).

Shape letters: H height, W width (display orientation), K frames pooled into one feature.

The sampling rule (``SamplingConfig``): a video of duration T seconds gives ``ceil(T * fps)`` features; feature i
covers the window ``[i / fps, min((i + 1) / fps, T))`` and is made of K frames taken at the times
``(i + (j + 0.5) / K) / fps`` for j = 0..K-1, i.e. the centres of K equal parts of the window. The frame taken at a
time t is the frame on screen at t: the last decoded frame whose presentation time is <= t (times come from each
frame's pts and time base, so variable frame rates are sampled by time, not by frame count). Times past the last
frame's start (the end of the final, partial window) take the last frame. Times are measured from the first
decoded frame; T is the last frame's presentation time plus its duration, minus the first frame's time.

Rotation metadata (a display matrix, e.g. phone videos) is applied: frames come out as they are meant to be seen.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np

__all__ = [
    "SamplingConfig",
    "SampledFrame",
    "VideoInfo",
    "VideoDecodeError",
    "feature_count",
    "sample_times",
    "VideoFrameSampler",
]

logger = logging.getLogger(__name__)

_EPS = 1e-9  # slack on float times (a 3.0 s video at 1 fps is 3 features, not 4)


@dataclass(frozen=True)
class SamplingConfig:
    """How frames are taken from a video.

    Attributes:
        fps: features per second (1.0: one feature per second of video).
        frames_per_feature: K, frames averaged into one feature (1: a frame feature; > 1: a clip-style feature).
        short_side: resize each sampled frame so its shorter side has this many pixels while decoding (None: keep
            the native size; the backbone's processor resizes anyway, this only bounds memory for huge frames).
    """

    fps: float = 1.0
    frames_per_feature: int = 1
    short_side: int | None = None

    def __post_init__(self) -> None:
        if not (isinstance(self.fps, (int, float)) and math.isfinite(self.fps) and self.fps > 0):
            raise ValueError(f"fps must be a positive number of features per second, got {self.fps!r}")
        if isinstance(self.frames_per_feature, bool) or not isinstance(self.frames_per_feature, int) \
                or self.frames_per_feature < 1:
            raise ValueError(f"frames_per_feature must be an int >= 1, got {self.frames_per_feature!r}")
        if self.short_side is not None and (not isinstance(self.short_side, int) or self.short_side < 8):
            raise ValueError(f"short_side must be None or an int >= 8 pixels, got {self.short_side!r}")

    def to_dict(self) -> dict[str, Any]:
        return {"fps": float(self.fps), "frames_per_feature": self.frames_per_feature, "short_side": self.short_side}


@dataclass(frozen=True)
class SampledFrame:
    """One frame taken from a video.

    Attributes:
        feature_index: i, the feature this frame belongs to.
        time_sec: the sampling time it was taken for (see the module docstring).
        frame_time_sec: the presentation time of the decoded frame that was on screen then (<= time_sec).
        image: (H, W, 3) uint8 RGB in display orientation.
    """

    feature_index: int
    time_sec: float
    frame_time_sec: float
    image: np.ndarray


@dataclass(frozen=True)
class VideoInfo:
    """What decoding a whole video found out.

    Attributes:
        path: the file.
        duration_sec: T (see the module docstring).
        frame_count: frames decoded.
        fps: frame_count / duration_sec, the average decoded frame rate.
        width: display width (after rotation) of the decoded frames, before any ``short_side`` resize.
        height: display height.
        rotation: the counter-clockwise rotation in degrees (0, 90, 180, 270) applied to the coded frames.
        codec: the decoder's name, e.g. ``h264``.
        num_features: ``ceil(T * fps)`` features sampled.
    """

    path: str
    duration_sec: float
    frame_count: int
    fps: float
    width: int
    height: int
    rotation: int
    codec: str
    num_features: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class VideoDecodeError(ValueError):
    """A file that yields no usable frames: not a media file, no video stream, zero frames, or a decoding failure."""


def feature_count(duration_sec: float, fps: float) -> int:
    """``ceil(duration_sec * fps)``, the number of features of a video (at least 1 for any positive duration).

    >>> feature_count(30.697, 1.0), feature_count(3.0, 1.0), feature_count(0.04, 1.0), feature_count(2.5, 2.0)
    (31, 3, 1, 5)
    """
    if duration_sec <= 0:
        return 0
    return max(1, math.ceil(duration_sec * fps - _EPS))


def sample_times(num_features: int, config: SamplingConfig) -> np.ndarray:
    """The sampling times of the first ``num_features`` features.

    Args:
        num_features: how many features.
        config: the sampling settings.

    Returns:
        (num_features, K) float64 seconds: row i holds ``(i + (j + 0.5) / K) / fps``.
    """
    k = config.frames_per_feature
    index = np.arange(num_features, dtype=np.float64)[:, None]  # (n, 1)
    offset = (np.arange(k, dtype=np.float64)[None, :] + 0.5) / k  # (1, K)
    return (index + offset) / config.fps  # (n, K)


def _normalised_rotation(degrees: float) -> int:
    """A display-matrix angle (counter-clockwise, [-180, 180]) as one of 0, 90, 180, 270."""
    return int(round(degrees / 90.0)) % 4 * 90


class VideoFrameSampler:
    """Stream the sampled frames of one video file; :attr:`info` is filled once the iteration has finished.

    Only the frame on screen and the converted copy of the last sampled frame are held, so memory does not grow
    with the video's length. Iterate once.

    Args:
        path: the video file.
        config: the sampling settings.
        threads: decoder threads (0: FFmpeg's choice).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        VideoDecodeError: (while iterating) the file is not a readable media file, has no video stream, decodes to
            zero frames, or fails part-way; the message says which.
    """

    def __init__(self, path: str | os.PathLike[str], config: SamplingConfig, *, threads: int = 0) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"video file {self.path} does not exist")
        self.config = config
        self.threads = threads
        self.info: VideoInfo | None = None
        self._started = False

    def _open(self) -> Any:
        try:
            container = av.open(str(self.path), mode="r")
        except (av.FFmpegError, OSError, UnicodeDecodeError) as error:
            raise VideoDecodeError(f"{self.path} is not a readable media file ({error})") from None
        if not container.streams.video:
            kinds = sorted({stream.type for stream in container.streams})
            container.close()
            if not kinds:  # e.g. an mp4 whose video track has zero samples, or one cut before its index
                raise VideoDecodeError(f"{self.path} holds no stream with data (0 frames, or a truncated file)")
            raise VideoDecodeError(f"{self.path} has no video stream (streams: {', '.join(kinds)})")
        return container

    def _to_rgb(self, frame: av.VideoFrame, rotation: int) -> np.ndarray:
        """(H, W, 3) uint8 of a decoded frame: optional resize of the shorter side, then rotation."""
        short_side = self.config.short_side
        if short_side is not None and min(frame.width, frame.height) != short_side:
            scale = short_side / min(frame.width, frame.height)
            width = max(1, round(frame.width * scale))
            height = max(1, round(frame.height * scale))
            image = frame.reformat(width=width, height=height, format="rgb24",
                                   interpolation="BICUBIC").to_ndarray()
        else:
            image = frame.to_ndarray(format="rgb24")  # (H_coded, W_coded, 3)
        if rotation:
            image = np.ascontiguousarray(np.rot90(image, k=rotation // 90))  # counter-clockwise
        return image

    def __iter__(self) -> Iterator[SampledFrame]:
        if self._started:
            raise RuntimeError(f"VideoFrameSampler({self.path}) was already iterated; create a new one")
        self._started = True
        container = self._open()
        try:
            yield from self._sample(container)
        finally:
            container.close()

    def _sample(self, container: Any) -> Iterator[SampledFrame]:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        if self.threads:
            stream.codec_context.thread_count = self.threads
        nominal = float(stream.average_rate) if stream.average_rate else 0.0
        k = self.config.frames_per_feature
        fps = self.config.fps

        def target(position: int) -> float:  # the position-th sampling time, feature-major
            feature, part = divmod(position, k)
            return (feature + (part + 0.5) / k) / fps

        position = 0  # next sampling time to serve
        first_time: float | None = None
        previous: av.VideoFrame | None = None
        previous_time = 0.0
        previous_interval = 1.0 / nominal if nominal > 0 else 0.0
        converted: tuple[int, np.ndarray] | None = None  # (frame number, image) of the last sampled frame
        frame_count = 0
        rotation = 0
        size = (0, 0)

        def take(frame: av.VideoFrame, frame_time: float, number: int) -> SampledFrame:
            nonlocal converted
            if converted is None or converted[0] != number:
                converted = (number, self._to_rgb(frame, rotation))
            feature, _ = divmod(position, k)
            return SampledFrame(feature, target(position), frame_time, converted[1])

        try:
            for frame in container.decode(stream):
                if frame.time is not None:
                    absolute = float(frame.time)
                elif first_time is None:
                    absolute = 0.0
                else:  # no pts: assume the previous frame's interval
                    absolute = first_time + previous_time + (previous_interval or 1.0 / 25)
                if first_time is None:
                    first_time = absolute
                    rotation = _normalised_rotation(getattr(frame, "rotation", 0))  # PyAV >= 13
                    size = (frame.width, frame.height) if rotation in (0, 180) else (frame.height, frame.width)
                time = max(absolute - first_time, previous_time)  # never run backwards
                if previous is not None:
                    if time > previous_time:
                        previous_interval = time - previous_time
                    while target(position) < time - _EPS:
                        yield take(previous, previous_time, frame_count - 1)
                        position += 1
                previous, previous_time = frame, time
                frame_count += 1
        except av.FFmpegError as error:
            raise VideoDecodeError(
                f"{self.path}: decoding failed after {frame_count} frame(s) at {previous_time:.2f} s ({error})"
            ) from None
        if previous is None:
            raise VideoDecodeError(f"{self.path} has a video stream but 0 decodable frames")

        frame_duration = getattr(previous, "duration", None)  # PyAV >= 13
        last_duration = float(frame_duration * previous.time_base) if frame_duration and previous.time_base else 0.0
        if last_duration <= 0:
            last_duration = previous_interval if previous_interval > 0 else (1.0 / nominal if nominal else 1.0)
        duration = previous_time + last_duration
        total = feature_count(duration, fps) * k
        while position < total:
            yield take(previous, previous_time, frame_count - 1)
            position += 1
        self.info = VideoInfo(
            path=str(self.path),
            duration_sec=duration,
            frame_count=frame_count,
            fps=frame_count / duration,
            width=size[0],
            height=size[1],
            rotation=rotation,
            codec=str(stream.codec_context.name),
            num_features=feature_count(duration, fps),
        )
        logger.debug("%s: %d frames, %.2f s, %d features", self.path, frame_count, duration, self.info.num_features)
