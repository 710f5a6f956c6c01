"""Training and evaluation throughput of DreamPRVR presets on this machine (medians of repeated runs).

Inputs are random features with the shapes of the preset's data (video/text dims, 128-video batches with all their
captions, frame counts drawn like ActivityNet's), so the figures measure the model, not the disk.

    python scripts/bench_train.py --presets activitynet cpu --repeats 3 --out docs/bench/train.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from prvr.config import load_preset
from prvr.data.preprocess import collate_queries, collate_videos, preprocess_query, preprocess_video
from prvr.engine import build_optimizer, rank_corpus
from prvr.losses import Criterion
from prvr.model import DreamPRVR, count_parameters
from prvr.types import VideoTokens


def random_batch(config, num_videos: int, rng: np.random.Generator):
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


def bench_train(preset: str, repeats: int, seed: int) -> dict:
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
    median = statistics.median(times)
    return {
        "preset": preset,
        "parameters": count_parameters(model),
        "batch_videos": len(videos),
        "batch_queries": len(queries),
        "step_seconds_median": round(median, 4),
        "step_seconds_all": [round(t, 4) for t in times],
        "videos_per_second": round(len(videos) / median, 2),
        "queries_per_second": round(len(queries) / median, 2),
    }


@torch.no_grad()
def bench_eval(preset: str, repeats: int, seed: int, num_videos: int = 1000, queries_per_video: float = 3.5) -> dict:
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
        "video_encode_seconds_median": round(statistics.median(encode_times), 3),
        "query_encode_and_rank_seconds_median": round(statistics.median(rank_times), 3),
        "queries_per_second": round(int(num_videos * queries_per_video) / statistics.median(rank_times), 1),
        "videos_encoded_per_second": round(num_videos / statistics.median(encode_times), 1),
    }


def gemm_gflops(size: int = 2048, repeats: int = 5) -> float:
    """fp32 matmul throughput measured in the same run: this VM's speed drifts several-fold between periods, so
    compare step times to other measurements only after normalising by this figure."""
    a = torch.randn(size, size)
    a @ a
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ a
        times.append(time.perf_counter() - start)
    return 2 * size**3 / statistics.median(times) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["activitynet", "cpu"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--eval-repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="docs/bench/train.json")
    args = parser.parse_args()
    results = {
        "machine": {"platform": platform.platform(), "torch": torch.__version__, "threads": torch.get_num_threads(),
                    "fp32_gemm_gflops_before": round(gemm_gflops(), 1)},
        "train": [],
        "eval": [],
    }
    for preset in args.presets:
        row = bench_train(preset, args.repeats, args.seed)
        print(json.dumps(row), flush=True)
        results["train"].append(row)
    for preset in args.presets:
        row = bench_eval(preset, args.eval_repeats, args.seed)
        print(json.dumps(row), flush=True)
        results["eval"].append(row)
    results["machine"]["fp32_gemm_gflops_after"] = round(gemm_gflops(), 1)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
