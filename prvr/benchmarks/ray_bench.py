"""Local vs Ray extraction of the same generated videos: wall seconds and whether the features are identical.

50 videos (by default) are generated with :func:`prvr.features.synthetic_video.write_video`, then extracted twice
into fresh folders with a random-weight CLIP ViT-B/32 image tower (``CLIPConfig()`` shapes): once in this process
and once on a local Ray instance with N actors (``prvr.features.ray_extract``); each actor and the local run use one
torch thread. The Ray time includes starting Ray and its actors (what a user waits for).
"""

from __future__ import annotations

import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from prvr.features.backbones import ClipImageBackbone
from prvr.features.extract import extract_videos
from prvr.features.frames import SamplingConfig
from prvr.features.ray_extract import RayOptions, ray_runner
from prvr.features.synthetic_video import write_video

__all__ = ["run_ray_bench"]


def _features(path: Path) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as handle:
        return {name: handle[name][()] for name in handle}


def run_ray_bench(*, videos: int = 50, seconds: float = 8.0, workers: int = 2, fps: float = 1.0,
                  batch_size: int = 8) -> dict[str, Any]:
    """Extract ``videos`` generated clips of ``seconds`` s locally and on Ray with ``workers`` actors."""
    load_before = os.getloadavg()[0]  # other jobs share the cores: recorded with the figures
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"  # the Ray workers inherit it
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        folder = root / "videos"
        folder.mkdir()
        for n in range(videos):
            write_video(folder / f"v{n:03d}.mp4", np.arange(0, seconds, 0.1), width=160, height=120)
        model_dir = root / "clip-b32-random"
        torch.manual_seed(0)
        from transformers import CLIPConfig, CLIPModel

        CLIPModel(CLIPConfig()).save_pretrained(model_dir)
        sampling = SamplingConfig(fps=fps)
        backbone = ClipImageBackbone(model_dir, device="cpu", batch_size=batch_size)
        start = time.perf_counter()
        local = extract_videos(folder, root / "local", backbone, sampling=sampling, progress=False)
        local_s = time.perf_counter() - start
        runner = ray_runner(f"clip:{model_dir}", backbone.backbone_id, sampling, RayOptions(workers=workers),
                            device="cpu", batch_size=batch_size)
        start = time.perf_counter()
        remote = extract_videos(folder, root / "ray", backbone, sampling=sampling, progress=False, runner=runner)
        ray_s = time.perf_counter() - start
        expected, got = _features(local.feature_file), _features(remote.feature_file)
        identical = sorted(expected) == sorted(got) and all(np.array_equal(expected[k], got[k]) for k in expected)
        max_diff = max(float(np.abs(expected[k] - got[k]).max()) for k in expected) if sorted(expected) == \
            sorted(got) else None
    return {
        "videos": videos, "seconds_per_video": seconds, "fps": fps, "batch_size": batch_size,
        "backbone": "CLIP ViT-B/32 image tower + projection (random weights), 160x120 frames",
        "local_seconds": round(local_s, 2), "ray_seconds": round(ray_s, 2), "ray_workers": workers,
        "speedup": round(local_s / ray_s, 2), "identical_features": identical, "max_abs_difference": max_diff,
        "ok": [len(local.succeeded), len(remote.succeeded)],
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "load_average_before": round(load_before, 2),
    }
