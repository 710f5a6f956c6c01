"""Zero-shot retrieval on a split whose frames and queries share one space (ANet-CapProxy's oracle features).

The measuring is ``prvr.benchmarks.zero_shot_bench``; this script parses the options and writes the rows to
--out-json and a markdown table to --out-md.

Usage::

    OMP_NUM_THREADS=1 python scripts/bench_zero_shot.py --data data --collection capproxy --split val \\
        --video-feature minilm_l6 --text-feature minilm_l6 --bank-split train
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch

from prvr.benchmarks.zero_shot_bench import run_rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, type=Path, help="Data root (standard layout).")
    parser.add_argument("--collection", default="capproxy")
    parser.add_argument("--split", default="val", help="Split evaluated (DEV-VAL = val).")
    parser.add_argument("--video-feature", default="minilm_l6", help="Frames (minilm_l6 = the oracle features).")
    parser.add_argument("--text-feature", default="minilm_l6")
    parser.add_argument("--bank-split", default="train", help="Split whose captions are the query bank ('' = none).")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out-json", type=Path, default=Path("docs/bench/zero_shot.json"))
    parser.add_argument("--out-md", type=Path, default=Path("docs/bench/zero_shot.md"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = run_rows(args.data, args.collection, args.split, video_feature=args.video_feature,
                    text_feature=args.text_feature, bank_split=args.bank_split or None)
    payload = {"split": args.split, "video_feature": args.video_feature, "text_feature": args.text_feature,
               "bank_split": args.bank_split, "machine": platform.processor() or platform.machine(),
               "threads": args.threads, "rows": rows}
    args.out_json.parent.mkdir(parents=True, exist_ok=True)
    args.out_json.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    lines = [f"Zero-shot on {args.collection} {args.split} ({args.video_feature} frames, {args.text_feature} "
             f"queries; bank: {args.bank_split or 'none'} captions)", "",
             "| variant | R@1 | R@5 | R@10 | R@100 | SumR |", "|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['name']} | {row['R@1']:.1f} | {row['R@5']:.1f} | {row['R@10']:.1f} | "
                     f"{row['R@100']:.1f} | {row['SumR']:.1f} |")
    args.out_md.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
