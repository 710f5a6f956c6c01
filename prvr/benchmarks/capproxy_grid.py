"""The ANet-CapProxy grid: its rows (named config overrides), their training commands, the table and the plot.

DreamPRVR, its ablations and its ancestors, trained DEV-TRAIN -> DEV-VAL into ``<runs>/<row>-s<seed>``; every run
writes ``metrics.jsonl``. The command line is ``scripts/capproxy_runs.py``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["METRICS", "ROWS", "TRIVIAL", "best_epoch", "history", "parse_train_split", "plot_sumr", "run_dir", "sumr",
           "table_markdown", "table_rows", "train_command", "train_trivial_row"]

# Row name -> (label, overrides of the preset). The "trivial" row is not a DreamPRVR config: it trains the benchmark's
# trivial reference (prvr.benchmarks.trivial) in the same loader and metrics.
TRIVIAL = "trivial"
ROWS: dict[str, tuple[str, tuple[str, ...]]] = {
    TRIVIAL: ("trivial reference, ours (two linear maps, tempered InfoNCE; D 256, lr 1e-3)", ()),
    "dreamprvr": ("DreamPRVR", ()),
    # Registers off leaves the Gaussian blocks: that is also the HLFormer / GMMFormerV2-like ancestor.
    "no_registers": ("registers off (= HLFormer / GMMFormerV2-like: Gaussian blocks, no registers)",
                     ("model.registers.enabled=false",)),
    "no_diffusion": ("no diffusion refinement (registers straight from PVS)", ("model.registers.diffusion.steps=0",)),
    "gaussian_init": ("Gaussian instead of the video-centric initialisation", ("model.registers.init=gaussian",)),
    "no_text_losses": ("no text-structure losses", ("loss.weights.div=0", "loss.weights.qsp=0")),
    "ms_sl_like": ("MS-SL / GMMFormer-like (no Gaussian prior, no registers)",
                   ("model.registers.enabled=false", "model.block.widths=[null]")),
    # The paper's training recipe on the same preset: no fused-cosine InfoNCE, ReLU after the input projections.
    "paper_recipe": ("DreamPRVR with the paper's losses and ReLU projections",
                     ("loss.weights.nce_fused=0", "model.projection_relu=true")),
}
METRICS = ("R@1", "R@5", "R@10", "R@100", "SumR")


def run_dir(runs: Path, row: str, seed: int) -> Path:
    """The run folder of one (row, seed): ``<runs>/<row>-s<seed>``."""
    return runs / f"{row}-s{seed}"


def history(folder: Path) -> list[dict]:
    """The per-epoch records of a run's ``metrics.jsonl`` (empty when it has none yet)."""
    path = folder / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def sumr(record: dict) -> float:
    """The DEV-VAL SumR of one epoch record."""
    return float(record["val"]["SumR"])


def best_epoch(records: list[dict]) -> dict:
    """The epoch of highest DEV-VAL SumR and its metrics (with those of its query subsets, when scored)."""
    best = max(records, key=sumr)
    result = {"epoch": best["epoch"], **{m: float(best["val"][m]) for m in METRICS}}
    subsets = best["val"].get("subsets")
    if subsets:
        result["subsets"] = {name: {m: float(values[m]) for m in METRICS} for name, values in subsets.items()}
    return result


def parse_train_split(spec: str, collection: str = "capproxy") -> tuple[str, str]:
    """``[COLLECTION:]SPLIT`` -> (collection, split), as ``prvr train --train-split``."""
    owner, _, split = spec.rpartition(":")
    if not split:
        raise ValueError(f"train split {spec!r}: give SPLIT or COLLECTION:SPLIT")
    return owner or collection, split


def train_trivial_row(root: str, folder: Path, *, seed: int, epochs: int, threads: int,
                      train_splits: Sequence[str] = ("train",), init_from: str | None = None) -> dict:
    """Train the trivial reference of one seed into ``folder`` (on ``train_splits``, jointly when several,
    starting from ``init_from``'s weights when given); returns its best epoch."""
    import torch

    from prvr.benchmarks.trivial import TrivialConfig, train_trivial
    from prvr.config import DataConfig

    if threads:
        torch.set_num_threads(threads)
    data = DataConfig(video_feature="minilm_l3", text_feature="minilm_l6")
    records = train_trivial(root, "capproxy", data, folder, TrivialConfig(epochs=epochs, seed=seed),
                            train_parts=[parse_train_split(spec) for spec in train_splits], init_from=init_from)
    return best_epoch(records)


def train_command(row: str, folder: Path, *, seed: int, root: str, preset: str, epochs: int,
                  threads: int, train_splits: Sequence[str] = ("train",), init_from: str | None = None) -> list[str]:
    """The ``prvr train`` command line of one DreamPRVR (row, seed), resuming when ``folder`` holds a last.pt.

    ``train_splits`` are ``[COLLECTION:]SPLIT`` (several: joint training); ``init_from`` fine-tunes from a
    checkpoint's weights."""
    command = [sys.executable, "-m", "prvr", "train", "--data", root, "--collection", "capproxy",
               "--preset", preset, "--out", str(folder), "--video-feature", "minilm_l3",
               "--text-feature", "minilm_l6", "--seed", str(seed), "--no-progress",
               "--set", f"train.epochs={epochs}", "--set", f"train.threads={threads}"]
    for override in ROWS[row][1]:
        command += ["--set", override]
    for spec in train_splits:
        command += ["--train-split", spec]
    if init_from is not None:
        command += ["--init-from", init_from]
    if (folder / "last.pt").is_file():
        command.append("--resume")
    return command


def table_rows(runs: Path) -> list[dict]:
    """Best-epoch DEV-VAL metrics of every finished or running (row, seed) under ``runs``."""
    rows = []
    for folder in sorted(Path(runs).glob("*-s*")):
        row, _, seed = folder.name.rpartition("-s")
        records = history(folder)
        if row not in ROWS or not records:
            continue
        rows.append({"row": row, "seed": int(seed), "epochs": len(records), **best_epoch(records),
                     "wall_seconds": records[-1]["wall_seconds"],
                     "seconds_per_epoch": records[-1]["wall_seconds"] / len(records)})
    return rows


def table_markdown(rows: list[dict], subset: str | None = None) -> str:
    """The per-run table and the mean over seeds of every row, as markdown lines (no final newline).

    ``subset`` (e.g. ``unseen_words``) adds its R@1/5/10/100/SumR at the same best epoch ("-" where not scored).
    """
    extra = [f"{subset} {m}" for m in METRICS] if subset else []
    header = ["row", "seed", "epochs run", "best epoch", *METRICS, *extra, "min / epoch"]
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for r in rows:
        cells = [f"{r[m]:.2f}" for m in METRICS]
        if subset:
            values = r.get("subsets", {}).get(subset)
            cells += [f"{values[m]:.2f}" for m in METRICS] if values else ["-"] * len(METRICS)
        lines.append(f"| {ROWS[r['row']][0]} | {r['seed']} | {r['epochs']} | {r['epoch']} | "
                     + " | ".join(cells) + f" | {r['seconds_per_epoch'] / 60:.2f} |")
    lines += ["", "| row | seeds | mean SumR | min - max |", "|---|---|---|---|"]
    for name in ROWS:
        sums = [r["SumR"] for r in rows if r["row"] == name]
        if sums:
            lines.append(f"| {ROWS[name][0]} | {len(sums)} | {sum(sums) / len(sums):.2f} | "
                         f"{min(sums):.2f} - {max(sums):.2f} |")
    return "\n".join(lines)


def plot_sumr(runs: Path, row_names: Sequence[str], out_path: str) -> None:
    """Validation SumR per epoch and per wall-clock minute, one line per (row, seed), saved to ``out_path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (by_epoch, by_minute) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=120, sharey=True)
    for row in row_names:
        for folder in sorted(Path(runs).glob(f"{row}-s*")):
            records = history(folder)
            if records:
                label = f"{ROWS[row][0]} (seed {folder.name.rpartition('-s')[2]})"
                sums = [sumr(r) for r in records]
                by_epoch.plot([r["epoch"] for r in records], sums, marker="o", markersize=3, label=label)
                by_minute.plot([r["wall_seconds"] / 60 for r in records], sums, marker="o", markersize=3, label=label)
    by_epoch.set_xlabel("epoch")
    by_minute.set_xlabel("training + validation wall time (min, one thread)")
    by_epoch.set_ylabel("DEV-VAL SumR")
    figure.suptitle("ANet-CapProxy: validation SumR per epoch and per wall-clock minute")
    for axis in (by_epoch, by_minute):
        axis.grid(alpha=0.3)
    by_epoch.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(out_path)
