"""Ingestion throughput: decoding + sampling, and frame encoding with a CLIP ViT-B/32-sized image tower.

The command line is ``scripts/bench_ingest.py --out docs/bench/ingest.json``. Each number is the median of
``repeats`` runs. The backbone has ViT-B/32's architecture (``CLIPConfig()`` defaults) with random weights: the
compute is that of openai/clip-vit-base-patch32, whose weights are not available here. Nothing is timed inside the
unit tests.
"""

from __future__ import annotations

import os
import platform
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from prvr.benchmarks.report import median_seconds
from prvr.features.backbones import ClipImageBackbone
from prvr.features.frames import SamplingConfig, VideoFrameSampler
from prvr.features.synthetic_video import write_video

__all__ = ["bench_backbone", "bench_decode", "run_ingest_bench"]


def _decode(path: Path, sampling: SamplingConfig) -> dict[str, Any]:
    sampler = VideoFrameSampler(path, sampling)
    count = sum(1 for _ in sampler)
    assert sampler.info is not None
    return {"features": count, **sampler.info.to_dict()}


def bench_decode(path: Path, repeats: int) -> dict[str, Any]:
    """Median seconds of decoding and sampling ``path`` at the default sampling, with its speed-ups."""
    info = _decode(path, SamplingConfig())
    seconds = median_seconds(lambda: _decode(path, SamplingConfig()), repeats)
    return {"video": path.name, "duration_sec": round(info["duration_sec"], 3), "frames": info["frame_count"],
            "size": f"{info['width']}x{info['height']}", "codec": info["codec"],
            "median_seconds": round(seconds, 4),
            "video_seconds_per_second": round(info["duration_sec"] / seconds, 1),
            "decoded_frames_per_second": round(info["frame_count"] / seconds, 1)}


def bench_backbone(repeats: int, batch_size: int) -> dict[str, Any]:
    """Median seconds of encoding one batch of 480x270 images with a random-weight CLIP ViT-B/32 image tower."""
    from transformers import CLIPConfig, CLIPModel

    with tempfile.TemporaryDirectory() as folder:
        torch.manual_seed(0)
        CLIPModel(CLIPConfig()).save_pretrained(folder)  # ViT-B/32 shapes, random weights
        backbone = ClipImageBackbone(folder, device="cpu", batch_size=batch_size)
        images = [np.random.default_rng(i).integers(0, 256, (270, 480, 3), dtype=np.uint8)
                  for i in range(batch_size)]
        backbone.encode_images(images[:2])  # warm-up
        seconds = median_seconds(lambda: backbone.encode_images(images), repeats)
    return {"architecture": "CLIP ViT-B/32 image tower + projection (random weights)", "batch_size": batch_size,
            "input": "480x270 RGB", "median_seconds_per_batch": round(seconds, 4),
            "images_per_second": round(batch_size / seconds, 2),
            "video_seconds_per_second_at_1_fps": round(batch_size / seconds, 2)}


def run_ingest_bench(*, repeats: int = 3, threads: int = 1, batch_size: int = 16,
                     sample_video: Path | None = None) -> dict[str, Any]:
    """Decoding of a generated ten-minute video (and of ``sample_video`` when it exists), then the image tower.

    Sets torch's thread count to ``threads``. Returns the report written to ``docs/bench/ingest.json``.
    """
    torch.set_num_threads(threads)
    results: dict[str, Any] = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                               "load_average_1min_at_start": round(os.getloadavg()[0], 2),
                               "torch_threads": threads, "repeats": repeats, "decode": []}
    with tempfile.TemporaryDirectory() as folder:
        long_video = write_video(Path(folder) / "ten_minutes.mp4", np.arange(0, 600.0, 1 / 25), width=320,
                                 height=240)
        results["decode"].append(bench_decode(long_video, repeats))
    if sample_video is not None and sample_video.is_file():
        results["decode"].append(bench_decode(sample_video, repeats))
    results["backbone"] = bench_backbone(repeats, batch_size)
    return results
