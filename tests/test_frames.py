"""Decoding and frame sampling (prvr.features.frames) on videos written by the test with PyAV, and the real sample."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from prvr.features.frames import (
    SamplingConfig,
    VideoDecodeError,
    VideoFrameSampler,
    feature_count,
    sample_times,
)
from prvr.features.synthetic_video import (
    encodable_codecs,
    frame_level,
    write_audio_only,
    write_empty_video,
    write_video,
)

SAMPLE_VIDEO = Path(__file__).resolve().parents[2] / "shared" / "data" / "univtg_example" / "charades.mp4"

# (encoder, container suffix, pixel format, width, height)
CODECS = [
    ("libx264", ".mp4", "yuv420p", 64, 48),
    ("mpeg4", ".mp4", "yuv420p", 64, 48),
    ("libvpx-vp9", ".webm", "yuv420p", 64, 48),
    ("ffv1", ".mkv", "yuv444p", 63, 37),  # odd sizes
    ("mjpeg", ".avi", "yuvj444p", 45, 31),
]


def _sample(path: Path, **settings: object) -> tuple[list, VideoFrameSampler]:
    sampler = VideoFrameSampler(path, SamplingConfig(**settings))  # type: ignore[arg-type]
    return list(sampler), sampler


def _expected_frame(times: np.ndarray, target: float) -> int:
    """The reference rule, written plainly: the last frame shown at or before ``target`` (else the last frame)."""
    shown = [i for i, t in enumerate(times) if t - times[0] <= target + 1e-9]
    return shown[-1] if shown else 0


def _level(image: np.ndarray) -> float:
    """The grey level of a decoded test frame, away from its white corner square."""
    height, width = image.shape[:2]
    return float(image[height // 2 :, width // 2 :].mean())


def test_feature_count_and_sample_times() -> None:
    assert [feature_count(d, 1.0) for d in (0.0, 0.04, 1.0, 1.0001, 30.697)] == [0, 1, 1, 2, 31]
    assert feature_count(2.5, 2.0) == 5 and feature_count(2.51, 2.0) == 6
    np.testing.assert_allclose(sample_times(2, SamplingConfig(fps=2.0, frames_per_feature=2)),
                               [[0.125, 0.375], [0.625, 0.875]])
    with pytest.raises(ValueError, match="fps"):
        SamplingConfig(fps=0)
    with pytest.raises(ValueError, match="frames_per_feature"):
        SamplingConfig(frames_per_feature=0)


@pytest.mark.parametrize("codec,suffix,pix_fmt,width,height", CODECS, ids=[c[0] for c in CODECS])
def test_every_codec_samples_the_frame_on_screen(tmp_path: Path, codec: str, suffix: str, pix_fmt: str,
                                                 width: int, height: int) -> None:
    if codec not in encodable_codecs():
        pytest.skip(f"this PyAV build cannot encode {codec}")
    times = np.arange(0, 3.3, 0.1)  # 33 frames, 3.3 s
    path = write_video(tmp_path / f"v{suffix}", times, codec=codec, pix_fmt=pix_fmt, width=width, height=height)
    frames, sampler = _sample(path)
    info = sampler.info
    assert info is not None and info.frame_count == len(times)
    assert times[-1] < info.duration_sec <= times[-1] + 0.11
    assert info.num_features == math.ceil(info.duration_sec - 1e-9) == len(frames) == 4
    assert (info.width, info.height, info.rotation) == (width, height, 0)
    for frame in frames:
        assert frame.image.shape == (height, width, 3) and frame.image.dtype == np.uint8
        expected = _expected_frame(times, frame.time_sec)
        assert frame.frame_time_sec == pytest.approx(times[expected], abs=1e-6)
        assert abs(_level(frame.image) - frame_level(expected)) < 3  # the pixels are that frame's
    assert [f.time_sec for f in frames] == pytest.approx([0.5, 1.5, 2.5, 3.5])


def test_variable_frame_rate_is_sampled_by_time_not_by_count(tmp_path: Path) -> None:
    gaps = np.tile([0.02, 0.45, 0.05, 0.9], 4)  # bursts and long holds
    times = np.concatenate([[0.0], np.cumsum(gaps)])
    path = write_video(tmp_path / "vfr.mkv", times)
    frames, sampler = _sample(path, fps=4.0, frames_per_feature=2)
    info = sampler.info
    assert info is not None and info.frame_count == len(times)
    assert len(frames) == 2 * info.num_features == 2 * feature_count(info.duration_sec, 4.0)
    expected_times = sample_times(info.num_features, SamplingConfig(fps=4.0, frames_per_feature=2)).ravel()
    assert [f.time_sec for f in frames] == pytest.approx(expected_times.tolist())
    picked = [_expected_frame(times, t) for t in expected_times]
    assert [f.frame_time_sec for f in frames] == pytest.approx(times[picked].tolist())
    assert [f.feature_index for f in frames] == [i // 2 for i in range(len(frames))]
    for frame, index in zip(frames, picked):
        assert abs(_level(frame.image) - frame_level(index)) < 3
    # frame-count sampling would have taken frame 4 * k at 1 feature per 4 frames; time sampling must not
    assert len(set(picked)) < len(picked)  # long holds repeat a frame


@pytest.mark.parametrize("rotation", [90, 180, -90])
def test_rotation_metadata_is_applied(tmp_path: Path, rotation: int) -> None:
    path = write_video(tmp_path / "rotated.mp4", np.arange(0, 1.0, 0.1), width=64, height=48, rotation=rotation)
    frames, sampler = _sample(path)
    assert sampler.info is not None and sampler.info.rotation == rotation % 360
    image = frames[0].image
    expected_shape = (48, 64, 3) if rotation == 180 else (64, 48, 3)
    assert image.shape == expected_shape
    assert (sampler.info.height, sampler.info.width) == expected_shape[:2]
    # the coded frame's white square is top-left; counter-clockwise 90 moves it bottom-left, 180 bottom-right,
    # 270 (-90) top-right
    height, width = image.shape[:2]
    corners = {"tl": image[: height // 8, : width // 8], "bl": image[-height // 8 :, : width // 8],
               "br": image[-height // 8 :, -width // 8 :], "tr": image[: height // 8, -width // 8 :]}
    bright = {name for name, patch in corners.items() if patch.mean() > 200}
    assert bright == {{90: "bl", 180: "br", 270: "tr"}[rotation % 360]}


def test_pooling_frames_and_short_side(tmp_path: Path) -> None:
    times = np.arange(0, 2.0, 0.05)
    path = write_video(tmp_path / "pool.mp4", times, width=96, height=64)
    frames, sampler = _sample(path, fps=1.0, frames_per_feature=4, short_side=32)
    assert sampler.info is not None and sampler.info.num_features == 2 and len(frames) == 8
    assert [f.time_sec for f in frames[:4]] == pytest.approx([0.125, 0.375, 0.625, 0.875])
    assert all(f.image.shape == (32, 48, 3) for f in frames)
    assert (sampler.info.width, sampler.info.height) == (96, 64)  # the source size is reported


def test_a_long_video_is_streamed(tmp_path: Path) -> None:
    path = write_video(tmp_path / "long.mp4", np.arange(0, 600.0, 1.0), width=32, height=32, rate=1)  # 10 min
    sampler = VideoFrameSampler(path, SamplingConfig())
    iterator = iter(sampler)
    first = next(iterator)
    assert first.feature_index == 0 and sampler.info is None  # frames come out before the file is decoded
    rest = list(iterator)
    assert sampler.info is not None and len(rest) + 1 == sampler.info.num_features == 600
    assert sampler.info.duration_sec == pytest.approx(600.0)


def test_unusable_files_raise_with_the_reason(tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(VideoDecodeError, match="not a readable media file"):
        _sample(corrupt)
    with pytest.raises(VideoDecodeError, match=r"no video stream \(streams: audio\)"):
        _sample(write_audio_only(tmp_path / "speech.mp4"))
    with pytest.raises(VideoDecodeError, match="no stream with data|0 decodable frames|not a readable"):
        _sample(write_empty_video(tmp_path / "empty.mp4"))
    good = write_video(tmp_path / "good.mp4", np.arange(0, 1.0, 0.1))
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(VideoDecodeError):
        _sample(truncated)
    damaged = bytearray(good.read_bytes())  # frame data zeroed: the decoder rejects the packets
    start = damaged.find(b"mdat")
    size = int.from_bytes(damaged[start - 4 : start], "big")
    damaged[start + 4 : start - 4 + size] = bytes(size - 8)
    (tmp_path / "damaged.mp4").write_bytes(bytes(damaged))
    with pytest.raises(VideoDecodeError, match="decoding failed after 0 frame"):
        _sample(tmp_path / "damaged.mp4")
    with pytest.raises(FileNotFoundError):
        VideoFrameSampler(tmp_path / "missing.mp4", SamplingConfig())
    sampler = VideoFrameSampler(good, SamplingConfig())
    list(sampler)
    with pytest.raises(RuntimeError, match="already iterated"):
        list(sampler)


def test_audio_tracks_are_ignored(tmp_path: Path) -> None:
    path = write_video(tmp_path / "with_audio.mp4", np.arange(0, 2.0, 0.1), with_audio=True)
    frames, sampler = _sample(path)
    assert sampler.info is not None and sampler.info.frame_count == 20 and len(frames) == 2


@pytest.mark.skipif(not SAMPLE_VIDEO.is_file(), reason="../shared/data/univtg_example absent")
def test_the_real_charades_video_decodes() -> None:
    frames, sampler = _sample(SAMPLE_VIDEO)
    info = sampler.info
    assert info is not None and info.codec == "h264" and info.frame_count == 460
    assert info.duration_sec == pytest.approx(460 * 1001 / 15000, abs=1e-6)  # 30.70 s at 15000/1001 fps
    assert info.num_features == len(frames) == 31
    assert frames[0].image.shape == (270, 480, 3)
    assert [round(f.time_sec, 3) for f in frames[:2]] == [0.5, 1.5]
    assert all(0 <= f.time_sec - f.frame_time_sec < 1001 / 15000 + 1e-9 for f in frames)
