"""Write small video files with PyAV whose every frame is known: for tests, demos and checking a decoder setup.

Shape letters: H height, W width.

Frame i of :func:`write_video` is a flat grey of level :func:`frame_level` (i) with a white square in the top-left
corner, so a decoded frame tells which frame it was and which way up it is.
"""

from __future__ import annotations

import fractions
import os
from collections.abc import Sequence
from pathlib import Path

import av
import numpy as np

__all__ = ["frame_level", "frame_image", "write_video", "write_audio_only", "write_empty_video", "encodable_codecs"]

_TIME_BASE = fractions.Fraction(1, 1000)


def frame_level(index: int) -> int:
    """The grey level of frame ``index`` (steps of 6 between 16 and 238, so lossy codecs keep frames apart).

    >>> [frame_level(i) for i in (0, 1, 37, 38)]
    [16, 22, 238, 16]
    """
    return 16 + 6 * (index % 38)


def frame_image(index: int, width: int, height: int) -> np.ndarray:
    """(H, W, 3) uint8: the grey of frame ``index`` with a white top-left square of a quarter of each side."""
    image = np.full((height, width, 3), frame_level(index), dtype=np.uint8)
    image[: max(1, height // 4), : max(1, width // 4)] = 255
    return image


def encodable_codecs(candidates: Sequence[str] = ("libx264", "mpeg4", "libvpx-vp9", "ffv1", "mjpeg")) -> list[str]:
    """The encoders among ``candidates`` that this PyAV build has."""
    available = av.codecs_available
    return [name for name in candidates if name in available]


def write_video(
    path: str | os.PathLike[str],
    times_sec: Sequence[float],
    *,
    codec: str = "libx264",
    width: int = 64,
    height: int = 48,
    pix_fmt: str = "yuv420p",
    rotation: int | None = None,
    rate: int = 25,
    with_audio: bool = False,
) -> Path:
    """Write frames shown at ``times_sec`` (increasing; variable gaps make a variable frame rate).

    Args:
        path: the file; the container follows the suffix (.mp4, .mkv, .webm ...).
        times_sec: presentation time of each frame (millisecond precision).
        codec: the encoder (see :func:`encodable_codecs`).
        width: coded width (odd sizes need a codec and ``pix_fmt`` that allow them, e.g. ffv1 + yuv444p).
        height: coded height.
        pix_fmt: the encoder's pixel format.
        rotation: counter-clockwise display rotation in degrees written as a display matrix, or None.
        rate: the nominal frame rate declared to the encoder.
        with_audio: add a silent AAC / MP2 track.

    Returns:
        The path.
    """
    path = Path(path)
    times = [round(float(t) * 1000) for t in times_sec]
    if any(b <= a for a, b in zip(times, times[1:])):
        raise ValueError("times_sec must be strictly increasing (at millisecond precision)")
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        stream.time_base = _TIME_BASE
        stream.codec_context.time_base = _TIME_BASE
        if rotation is not None:
            stream.set_display_rotation(rotation)
        audio = _add_silent_audio(container) if with_audio else None
        for index, pts in enumerate(times):
            frame = av.VideoFrame.from_ndarray(frame_image(index, width, height), format="rgb24")
            frame.pts, frame.time_base = pts, _TIME_BASE
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
        if audio is not None:
            _write_silence(container, audio, (times[-1] + 40) / 1000 if times else 1.0)
    return path


def _add_silent_audio(container: av.container.OutputContainer) -> av.audio.stream.AudioStream:
    codec = "aac" if "aac" in av.codecs_available else "mp2"
    stream = container.add_stream(codec, rate=16000)
    stream.layout = "mono"
    return stream


def _write_silence(container: av.container.OutputContainer, stream: av.audio.stream.AudioStream,
                   seconds: float) -> None:
    rate = stream.codec_context.sample_rate
    step = 1024
    for start in range(0, int(seconds * rate), step):
        frame = av.AudioFrame.from_ndarray(np.zeros((1, step), dtype=np.float32), format="fltp", layout="mono")
        frame.sample_rate, frame.pts = rate, start
        container.mux(stream.encode(frame))
    container.mux(stream.encode())


def write_audio_only(path: str | os.PathLike[str], seconds: float = 1.0) -> Path:
    """A file with one silent audio track and no video stream."""
    path = Path(path)
    with av.open(str(path), mode="w") as container:
        _write_silence(container, _add_silent_audio(container), seconds)
    return path


def write_empty_video(path: str | os.PathLike[str], codec: str = "mpeg4") -> Path:
    """A container with a video stream that holds no frame (the header is written, no packet)."""
    path = Path(path)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        container.start_encoding()
    return path
