"""Training and evaluation throughput of DreamPRVR presets on this machine (medians of repeated runs).

The measuring is ``prvr.benchmarks.train_bench``; this script runs it per preset and writes the JSON.

Inputs are random features with the shapes of the preset's data (video/text dims, 128-video batches with all their
captions, frame counts drawn like ActivityNet's), so the figures measure the model, not the disk.

    python scripts/bench_train.py --presets activitynet cpu --repeats 3 --out docs/bench/train.json
"""

from __future__ import annotations

import argparse
import json
import platform

import torch

from prvr.benchmarks.report import write_json
from prvr.benchmarks.train_bench import gemm_gflops, measure_eval, measure_train


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
        row = measure_train(preset, args.repeats, args.seed)
        print(json.dumps(row), flush=True)
        results["train"].append(row)
    for preset in args.presets:
        row = measure_eval(preset, args.eval_repeats, args.seed)
        print(json.dumps(row), flush=True)
        results["eval"].append(row)
    results["machine"]["fp32_gemm_gflops_after"] = round(gemm_gflops(), 1)
    out = write_json(args.out, results)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
