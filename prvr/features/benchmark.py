"""Ingestion throughput: decoding + sampling, and frame encoding with a CLIP ViT-B/32-sized image tower.

Run ``python -m prvr.features.benchmark --out docs/bench/ingest.json``. Each number is the median of ``--repeats``
runs. The backbone has ViT-B/32's architecture (``CLIPConfig()`` defaults) with random weights: the compute is that
of openai/clip-vit-base-patch32, whose weights are not available here. Nothing is timed inside the unit tests.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from prvr.features.backbones import ClipImageBackbone
from prvr.features.frames import SamplingConfig, VideoFrameSampler
from prvr.features.synthetic_video import write_video
from prvr.fileio import atomic_path

SAMPLE_VIDEO = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "univtg_example" / "charades.mp4"


def _median_seconds(function: Any, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _decode(path: Path, sampling: SamplingConfig) -> dict[str, Any]:
    sampler = VideoFrameSampler(path, sampling)
    count = sum(1 for _ in sampler)
    assert sampler.info is not None
    return {"features": count, **sampler.info.to_dict()}


def bench_decode(path: Path, repeats: int) -> dict[str, Any]:
    info = _decode(path, SamplingConfig())
    seconds = _median_seconds(lambda: _decode(path, SamplingConfig()), repeats)
    return {"video": path.name, "duration_sec": round(info["duration_sec"], 3), "frames": info["frame_count"],
            "size": f"{info['width']}x{info['height']}", "codec": info["codec"],
            "median_seconds": round(seconds, 4),
            "video_seconds_per_second": round(info["duration_sec"] / seconds, 1),
            "decoded_frames_per_second": round(info["frame_count"] / seconds, 1)}


def bench_backbone(repeats: int, batch_size: int) -> dict[str, Any]:
    from transformers import CLIPConfig, CLIPModel

    with tempfile.TemporaryDirectory() as folder:
        torch.manual_seed(0)
        CLIPModel(CLIPConfig()).save_pretrained(folder)  # ViT-B/32 shapes, random weights
        backbone = ClipImageBackbone(folder, device="cpu", batch_size=batch_size)
        images = [np.random.default_rng(i).integers(0, 256, (270, 480, 3), dtype=np.uint8)
                  for i in range(batch_size)]
        backbone.encode_images(images[:2])  # warm-up
        seconds = _median_seconds(lambda: backbone.encode_images(images), repeats)
    return {"architecture": "CLIP ViT-B/32 image tower + projection (random weights)", "batch_size": batch_size,
            "input": "480x270 RGB", "median_seconds_per_batch": round(seconds, 4),
            "images_per_second": round(batch_size / seconds, 2),
            "video_seconds_per_second_at_1_fps": round(batch_size / seconds, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("docs/bench/ingest.json"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results: dict[str, Any] = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                               "load_average_1min_at_start": round(os.getloadavg()[0], 2),
                               "torch_threads": args.threads, "repeats": args.repeats, "decode": []}
    with tempfile.TemporaryDirectory() as folder:
        long_video = write_video(Path(folder) / "ten_minutes.mp4", np.arange(0, 600.0, 1 / 25), width=320,
                                 height=240)
        results["decode"].append(bench_decode(long_video, args.repeats))
    if SAMPLE_VIDEO.is_file():
        results["decode"].append(bench_decode(SAMPLE_VIDEO, args.repeats))
    results["backbone"] = bench_backbone(args.repeats, args.batch_size)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(args.out) as tmp:
        tmp.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
