"""Check that Retriever.search over every query of a split reproduces `prvr eval`'s R@K (same model, exact index).

The check is ``prvr.benchmarks.retriever_check.check_retriever_against_eval`` (its docstring says what it builds and
compares); this script prints both columns and exits 1 when any R@K differs (2 when `prvr eval` fails).

Run::

    OMP_NUM_THREADS=1 .venv/bin/python scripts/check_retriever_eval.py --checkpoint runs/cap_cpu_s0/best.pt \\
        --data data --collection capproxy --split val
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from prvr.benchmarks.report import add_token_store_arguments, write_json
from prvr.benchmarks.retriever_check import EvalCommandError, check_retriever_against_eval

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="best.pt of a `prvr train` run.")
    parser.add_argument("--data", required=True, help="Data root.")
    parser.add_argument("--collection", required=True)
    parser.add_argument("--split", default="val")
    parser.add_argument("--index", default=None, help="Index directory (default: a temporary one, deleted).")
    parser.add_argument("--batch-size", type=int, default=256, help="Queries per Retriever call.")
    parser.add_argument("--text-backbone", default=None,
                        help="Recorded in the index for `prvr query` ('minilm-l6' or a local model folder).")
    add_token_store_arguments(parser, default_dtype="float32",
                              dtype_help="float32 is the identity check; bfloat16 rounding can swap near-tied videos; "
                                         "a compressed one measures what the codes cost in R@K.")
    parser.add_argument("--out", default=None, help="Also write the comparison as JSON here.")
    args = parser.parse_args()

    try:
        report = check_retriever_against_eval(
            args.checkpoint, args.data, args.collection, args.split, index_dir=args.index,
            batch_size=args.batch_size, text_backbone=args.text_backbone, token_dtype=args.token_dtype,
            refine_dtype=args.refine_dtype, refine_k=args.refine_k,
            eval_cwd=REPO)  # as before: `prvr eval` runs in the repository root
    except EvalCommandError as error:
        print(error.stderr, file=sys.stderr)
        return 2
    differ = report.pop("different")
    print(f"{'metric':<8} {'Retriever':>12} {'prvr eval':>12}")
    for key in report["retriever"]:
        ours, reference = report["retriever"][key], report["prvr_eval"][key]
        print(f"{key:<8} {ours:>12.4f} {reference:>12.4f}{'   DIFFERENT' if key in differ else ''}")
    print(f"{report['queries']} queries over {report['videos']} videos; checkpoint sha256 "
          f"{report['checkpoint_sha256'][:12]}...; " + ("identical" if not differ else f"different: {differ}"))
    if args.out:
        write_json(args.out, report)
    return 0 if not differ else 1


if __name__ == "__main__":
    sys.exit(main())
