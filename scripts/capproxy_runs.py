"""The ANet-CapProxy grid: DreamPRVR, its ablations and its ancestors, trained DEV-TRAIN -> DEV-VAL.

Each row is a named set of config overrides on one preset. ``run`` trains one (row, seed) into
``<runs>/<row>-s<seed>`` and resumes it when it was cut off; ``table`` reads every run's ``metrics.jsonl`` and writes
the best-epoch DEV-VAL metrics as JSON and a markdown table; ``plot`` draws validation SumR per epoch for chosen rows.

    python scripts/capproxy_runs.py rows
    python scripts/capproxy_runs.py run dreamprvr --seed 0 --data data --runs runs/capproxy
    python scripts/capproxy_runs.py table --runs runs/capproxy --out docs/bench/capproxy_runs
    python scripts/capproxy_runs.py plot --runs runs/capproxy --rows dreamprvr ms_sl_like --out docs/capproxy_sumr.png
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import click

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


def _run_dir(runs: Path, row: str, seed: int) -> Path:
    return runs / f"{row}-s{seed}"


def _history(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _sumr(record: dict) -> float:
    return float(record["val"]["SumR"])


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Train and tabulate the ANet-CapProxy grid."""


@main.command("rows")
def rows_command() -> None:
    """List the rows and their overrides."""
    for name, (label, overrides) in ROWS.items():
        click.echo(f"{name:<16} {label}: {' '.join(overrides) or '(preset as is)'}")


@main.command("run")
@click.argument("row", type=click.Choice(sorted(ROWS)))
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--data", "root", default="data", show_default=True, help="Data root holding capproxy/.")
@click.option("--runs", default="runs/capproxy", show_default=True, help="Folder of the grid's runs.")
@click.option("--preset", default="capproxy", show_default=True)
@click.option("--epochs", default=12, show_default=True, type=click.IntRange(min=1))
@click.option("--threads", default=1, show_default=True, type=click.IntRange(min=0))
def run_command(row: str, seed: int, root: str, runs: str, preset: str, epochs: int, threads: int) -> None:
    """Train one (row, seed), resuming a run that was cut off; a finished run is left as it is."""
    run_dir = _run_dir(Path(runs), row, seed)
    if row == TRIVIAL:
        import torch

        from prvr.benchmarks.trivial import TrivialConfig, train_trivial
        from prvr.config import DataConfig

        if threads:
            torch.set_num_threads(threads)
        data = DataConfig(video_feature="minilm_l3", text_feature="minilm_l6")
        history = train_trivial(root, "capproxy", data, run_dir, TrivialConfig(epochs=epochs, seed=seed))
        click.echo(json.dumps({"best": _best(history)}))
        return
    command = [sys.executable, "-m", "prvr", "train", "--data", root, "--collection", "capproxy",
               "--preset", preset, "--out", str(run_dir), "--video-feature", "minilm_l3",
               "--text-feature", "minilm_l6", "--seed", str(seed), "--no-progress",
               "--set", f"train.epochs={epochs}", "--set", f"train.threads={threads}"]
    for override in ROWS[row][1]:
        command += ["--set", override]
    if (run_dir / "last.pt").is_file():
        command.append("--resume")
    click.echo(" ".join(command), err=True)
    sys.exit(subprocess.call(command))


def _best(history: list[dict]) -> dict:
    best = max(history, key=_sumr)
    return {"epoch": best["epoch"], **{m: float(best["val"][m]) for m in METRICS}}


@main.command("table")
@click.option("--runs", default="runs/capproxy", show_default=True)
@click.option("--out", "out_stem", default="docs/bench/capproxy_runs", show_default=True,
              help="Writes OUT.json and OUT.md.")
def table_command(runs: str, out_stem: str) -> None:
    """Best-epoch DEV-VAL metrics of every finished or running (row, seed), with the mean over seeds."""
    rows = []
    for run_dir in sorted(Path(runs).glob("*-s*")):
        row, _, seed = run_dir.name.rpartition("-s")
        history = _history(run_dir)
        if row not in ROWS or not history:
            continue
        rows.append({"row": row, "seed": int(seed), "epochs": len(history), **_best(history),
                     "wall_seconds": history[-1]["wall_seconds"],
                     "seconds_per_epoch": history[-1]["wall_seconds"] / len(history)})
    Path(out_stem).with_suffix(".json").write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    lines = ["| row | seed | epochs run | best epoch | R@1 | R@5 | R@10 | R@100 | SumR | min / epoch |",
             "|---" * 10 + "|"]
    for r in rows:
        lines.append(f"| {ROWS[r['row']][0]} | {r['seed']} | {r['epochs']} | {r['epoch']} | "
                     + " | ".join(f"{r[m]:.2f}" for m in METRICS) + f" | {r['seconds_per_epoch'] / 60:.2f} |")
    lines += ["", "| row | seeds | mean SumR | min - max |", "|---|---|---|---|"]
    for name in ROWS:
        sums = [r["SumR"] for r in rows if r["row"] == name]
        if sums:
            lines.append(f"| {ROWS[name][0]} | {len(sums)} | {sum(sums) / len(sums):.2f} | "
                         f"{min(sums):.2f} - {max(sums):.2f} |")
    Path(out_stem).with_suffix(".md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    click.echo("\n".join(lines))


@main.command("plot")
@click.option("--runs", default="runs/capproxy", show_default=True)
@click.option("--rows", "row_names", multiple=True, required=True, type=click.Choice(sorted(ROWS)))
@click.option("--out", "out_path", default="docs/capproxy_sumr.png", show_default=True)
def plot_command(runs: str, row_names: tuple[str, ...], out_path: str) -> None:
    """Validation SumR per epoch, one line per (row, seed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (by_epoch, by_minute) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=120, sharey=True)
    for row in row_names:
        for run_dir in sorted(Path(runs).glob(f"{row}-s*")):
            history = _history(run_dir)
            if history:
                label = f"{ROWS[row][0]} (seed {run_dir.name.rpartition('-s')[2]})"
                sums = [_sumr(r) for r in history]
                by_epoch.plot([r["epoch"] for r in history], sums, marker="o", markersize=3, label=label)
                by_minute.plot([r["wall_seconds"] / 60 for r in history], sums, marker="o", markersize=3, label=label)
    by_epoch.set_xlabel("epoch")
    by_minute.set_xlabel("training + validation wall time (min, one thread)")
    by_epoch.set_ylabel("DEV-VAL SumR")
    figure.suptitle("ANet-CapProxy: validation SumR per epoch and per wall-clock minute")
    for axis in (by_epoch, by_minute):
        axis.grid(alpha=0.3)
    by_epoch.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(out_path)
    click.echo(out_path)


if __name__ == "__main__":
    main()
