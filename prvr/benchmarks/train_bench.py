"""Training and evaluation throughput of DreamPRVR presets on random inputs with the shapes of each preset's data.

Inputs are random features with the shapes of the preset's data (video/text dims, 128-video batches with all their
captions, frame counts drawn like ActivityNet's), so the figures measure the model, not the disk. The command line
is ``scripts/bench_train.py``.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from prvr.benchmarks.report import median, repeat_seconds
from prvr.config import ExperimentConfig, load_preset
from prvr.data.preprocess import collate_queries, collate_videos, preprocess_query, preprocess_video
from prvr.engine import build_optimizer, rank_corpus
from prvr.losses import Criterion
from prvr.model import DreamPRVR, count_parameters
from prvr.types import QueryBatch, VideoBatch, VideoTokens

__all__ = ["gemm_gflops", "measure_eval", "measure_train", "random_batch"]


def random_batch(config: ExperimentConfig, num_videos: int,
                 rng: np.random.Generator) -> tuple[VideoBatch, QueryBatch]:
    """``num_videos`` random videos (40-199 frames) with 2-5 random captions each, preprocessed and collated."""
    videos, queries, video_index = [], [], []
    for v in range(num_videos):
        n_frames = int(rng.integers(40, 200))
        frames = rng.standard_normal((n_frames, config.model.video_dim)).astype(np.float32)
        videos.append(preprocess_video(frames, config.data))
        for _ in range(int(rng.integers(2, 6))):
            tokens = rng.standard_normal((int(rng.integers(8, 30)), config.model.text_dim)).astype(np.float32)
            queries.append(preprocess_query(tokens, config.data.max_query_tokens))
            video_index.append(v)
    video_batch = collate_videos(videos, [f"v{i}" for i in range(num_videos)])
    query_batch = collate_queries(queries, [f"q{i}" for i in range(len(queries))], np.asarray(video_index))
    return video_batch, query_batch


def measure_train(preset: str, repeats: int, seed: int) -> dict[str, Any]:
    """Median seconds of one optimiser step on a ``batch_videos`` random batch (after one warm-up step)."""
    config = load_preset(preset)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = DreamPRVR(config.model, seed=seed)
    criterion = Criterion(config.loss, clip_weight=config.model.clip_weight, frame_weight=config.model.frame_weight)
    optimizer, scheduler = build_optimizer(model, config.train, total_steps=repeats + 1)
    videos, queries = random_batch(config, config.train.batch_videos, rng)
    generator = torch.Generator().manual_seed(seed)
    times = []
    for step in range(repeats + 1):  # the first step warms up allocators and is not counted
        start = time.perf_counter()
        outputs = model(videos, queries, generator=generator)
        losses = criterion(outputs, queries.video_index, epoch=0, generator=generator)
        optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        optimizer.step()
        scheduler.step()
        if step > 0:
            times.append(time.perf_counter() - start)
    step_median = median(times)
    return {
        "preset": preset,
        "parameters": count_parameters(model),
        "batch_videos": len(videos),
        "batch_queries": len(queries),
        "step_seconds_median": round(step_median, 4),
        "step_seconds_all": [round(t, 4) for t in times],
        "videos_per_second": round(len(videos) / step_median, 2),
        "queries_per_second": round(len(queries) / step_median, 2),
    }


@torch.no_grad()
def measure_eval(preset: str, repeats: int, seed: int, num_videos: int = 1000,
                 queries_per_video: float = 3.5) -> dict[str, Any]:
    """Median seconds of encoding ``num_videos`` random videos, and of encoding and ranking their queries."""
    config = load_preset(preset)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = DreamPRVR(config.model, seed=seed).eval()
    encode_times, rank_times = [], []
    for _ in range(repeats):
        batches = [random_batch(config, min(128, num_videos - first), rng)[0] for first in range(0, num_videos, 128)]
        start = time.perf_counter()
        chunks = [model.encode_videos(videos) for videos in batches]
        encode_times.append(time.perf_counter() - start)
        width = max(c.frame.shape[1] for c in chunks)
        tokens = VideoTokens(
            torch.cat([c.clip for c in chunks]),
            torch.cat([torch.nn.functional.pad(c.frame, (0, 0, 0, width - c.frame.shape[1])) for c in chunks]),
            torch.cat([torch.nn.functional.pad(c.frame_mask, (0, width - c.frame_mask.shape[1])) for c in chunks]),
        )
        num_queries = int(num_videos * queries_per_video)
        token_arrays = [
            preprocess_query(rng.standard_normal((20, config.model.text_dim)).astype(np.float32), 30)
            for _ in range(num_queries)
        ]
        start = time.perf_counter()
        vectors = torch.cat([
            model.encode_queries(collate_queries(chunk, [f"q{i + j}" for j in range(len(chunk))]))
            for i in range(0, num_queries, 1024)
            for chunk in [token_arrays[i : i + 1024]]
        ])
        targets = rng.integers(0, num_videos, size=num_queries)
        rank_corpus(model, vectors, tokens, targets, query_chunk=config.train.eval_query_chunk,
                    video_chunk=config.train.eval_video_chunk)
        rank_times.append(time.perf_counter() - start)
    return {
        "preset": preset,
        "videos": num_videos,
        "queries": int(num_videos * queries_per_video),
        "video_encode_seconds_median": round(median(encode_times), 3),
        "query_encode_and_rank_seconds_median": round(median(rank_times), 3),
        "queries_per_second": round(int(num_videos * queries_per_video) / median(rank_times), 1),
        "videos_encoded_per_second": round(num_videos / median(encode_times), 1),
    }


def gemm_gflops(size: int = 2048, repeats: int = 5) -> float:
    """fp32 matmul throughput measured in the same run: this VM's speed drifts several-fold between periods, so
    compare step times to other measurements only after normalising by this figure."""
    a = torch.randn(size, size)
    a @ a
    return 2 * size**3 / median(repeat_seconds(lambda: a @ a, repeats)) / 1e9
