"""The demo's moment model on its own val split: the denoiser, the relevance-span baseline, the resolution bound.

Reads a built demo directory (``prvr demo`` / ``prvr.demo.build.build_demo``) and prints one JSON object:

* ``denoiser``: R1@0.3/0.5/0.7 and mAP of the saved moment model (its inference settings);
* ``relevance_span``: the runs of the same model's per-frame relevance curve (``prvr.demo.moments``), and the
  ``chosen`` reading;
* ``grid_bound``: the share of val queries whose true window, snapped outward to the localiser's token grid
  (F = min(seconds, max_frames) tokens), still has IoU >= 0.5 / 0.7 with the truth (a span of whole tokens, the
  relevance span's granularity, cannot do better);
* ``tokens``: the frame tokens per video the localiser reads (min / median / max) and seconds per token.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/bench_demo_moments.py --demo ~/.cache/prvr/demo/demo-gen-v1-s0-n600
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import torch


def _grid_iou(window: tuple[float, float], duration: float, tokens: int) -> float:
    """IoU of the truth with its outward snap to a grid of ``tokens`` equal bins of [0, duration]."""
    start, end = window
    step = duration / tokens
    snapped = (math.floor(start / step) * step, min(math.ceil(end / step) * step, duration))
    inter = max(0.0, min(end, snapped[1]) - max(start, snapped[0]))
    union = max(end, snapped[1]) - min(start, snapped[0])
    return inter / union if union > 0 else 0.0


def main(argv: list[str] | None = None) -> None:
    from prvr.data.dataset import PRVRCorpus
    from prvr.demo.build import DEMO_COLLECTION, read_manifest
    from prvr.demo.moments import measure_readings
    from prvr.moments.localizer import load_localizer
    from prvr.moments.train import MomentData, frame_source

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", type=Path, required=True, help="the built demo directory")
    parser.add_argument("--split", default="val", help="caption split to measure on")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="moment checkpoint (default: the one the demo manifest records)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    checkpoint = args.checkpoint
    if checkpoint is None:
        manifest = read_manifest(args.demo)
        if manifest is None or "moments" not in manifest["stages"]:
            parser.error(f"{args.demo} holds no built demo; run `prvr demo --cache-dir ...` first or pass --checkpoint")
        checkpoint = args.demo / next(iter(manifest["stages"]["moments"]["files"]))
    localizer = load_localizer(checkpoint)
    config = localizer.config
    corpus = PRVRCorpus(args.demo / "data", DEMO_COLLECTION, args.split, config.data,
                        expected_text_dim=config.text_dim)
    retrieval = args.demo / "run" / "best.pt" if config.condition == "retrieval" else None
    data = MomentData(corpus, frame_source(corpus, retrieval))
    measured = measure_readings(localizer, data, batch_size=config.train.eval_batch_size)
    tokens = [int(data.frames_of(r.video_id).shape[0]) for r in data.records]
    ious = [_grid_iou(tuple(r.windows[0]), float(r.duration), n) for r, n in zip(data.records, tokens)]
    seconds_per_token = [float(r.duration) / n for r, n in zip(data.records, tokens)]
    print(json.dumps({
        "checkpoint": str(checkpoint), "condition": config.condition, "max_frames": config.data.max_frames,
        "queries": len(data),
        **measured,
        "grid_bound": {"IoU>=0.5": round(100 * float(np.mean(np.array(ious) >= 0.5)), 2),
                       "IoU>=0.7": round(100 * float(np.mean(np.array(ious) >= 0.7)), 2)},
        "tokens": {"min": int(min(tokens)), "median": float(np.median(tokens)), "max": int(max(tokens)),
                   "median_seconds_per_token": round(float(np.median(seconds_per_token)), 2),
                   "median_event_seconds": round(float(np.median([e - s for r in data.records
                                                                  for s, e in r.windows[:1]])), 2)},
    }, indent=1))


if __name__ == "__main__":  # pragma: no cover
    main()
