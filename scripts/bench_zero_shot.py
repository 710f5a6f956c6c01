"""Zero-shot retrieval on a split whose frames and queries share one space (ANet-CapProxy's oracle features).

The measuring is ``prvr.benchmarks.zero_shot_bench``; this script parses the options and writes the rows to
--out-json and a markdown table to --out-md.

Usage::

    OMP_NUM_THREADS=1 python scripts/bench_zero_shot.py --data data --collection capproxy --split val \\
        --video-feature minilm_l6 --text-feature minilm_l6 --bank-split train

``--variants plain,events-a`` runs only the named rows (keys of ``prvr.benchmarks.zero_shot_bench.ROWS``;
``--list`` prints them) and merges them into an existing --out-json, replacing rows of the same name.
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch

from prvr.benchmarks.zero_shot_bench import DEFAULT_ROWS, ROWS, run_rows


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
    parser.add_argument("--variants", default="", help="Comma-separated row keys to run (default: the original "
                        "rows); merged into an existing --out-json.")
    parser.add_argument("--list", action="store_true", help="Print the row keys and exit.")
    args = parser.parse_args()
    if args.list:
        print("\n".join(f"{key}: {row.name}" for key, row in ROWS.items()))
        return
    keys = [key for key in args.variants.split(",") if key]
    unknown = [key for key in keys if key not in ROWS]
    if unknown:
        parser.error(f"unknown --variants {unknown}; --list prints the known keys")
    selected = [ROWS[key] for key in keys] if keys else list(DEFAULT_ROWS)
    torch.set_num_threads(args.threads)
    rows = run_rows(args.data, args.collection, args.split, video_feature=args.video_feature,
                    text_feature=args.text_feature, bank_split=args.bank_split or None, rows=selected)
    if keys and args.out_json.is_file():  # keep the rows measured before, replace the re-measured ones
        fresh = {row["name"] for row in rows}
        rows = [row for row in json.loads(args.out_json.read_text())["rows"] if row["name"] not in fresh] + rows
    payload = {"split": args.split, "video_feature": args.video_feature, "text_feature": args.text_feature,
               "bank_split": args.bank_split, "machine": platform.processor() or platform.machine(),
               "threads": args.threads, "rows": rows}
    args.out_json.parent.mkdir(parents=True, exist_ok=True)
    args.out_json.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    lines = [f"Zero-shot on {args.collection} {args.split} ({args.video_feature} frames, {args.text_feature} "
             f"queries; bank: {args.bank_split or 'none'} captions)", "",
             "| variant | R@1 | R@5 | R@10 | R@100 | SumR | event tokens / video (distinct) | encode CPU s / 1,000 "
             "videos |", "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        encode, distinct = row.get("encode_cpu_s_per_1000_videos"), row.get("distinct_events_per_video")
        events = f"{row.get('event_tokens_per_video', 0)}" + ("" if distinct is None else f" ({distinct:.1f})")
        lines.append(f"| {row['name']} | {row['R@1']:.2f} | {row['R@5']:.2f} | {row['R@10']:.2f} | "
                     f"{row['R@100']:.2f} | {row['SumR']:.2f} | {events} | "
                     f"{'' if encode is None else f'{encode:.1f}'} |")
    args.out_md.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
