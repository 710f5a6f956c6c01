"""The ANet-CapProxy grid: DreamPRVR, its ablations and its ancestors, trained DEV-TRAIN -> DEV-VAL.

Each row is a named set of config overrides on one preset. ``run`` trains one (row, seed) into
``<runs>/<row>-s<seed>`` and resumes it when it was cut off; ``table`` reads every run's ``metrics.jsonl`` and writes
the best-epoch DEV-VAL metrics as JSON and a markdown table; ``plot`` draws validation SumR per epoch for chosen rows.
The rows and the work are ``prvr.benchmarks.capproxy_grid``; this is its click command line.

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

from prvr.benchmarks.capproxy_grid import (
    ROWS,
    TRIVIAL,
    plot_sumr,
    run_dir,
    table_markdown,
    table_rows,
    train_command,
    train_trivial_row,
)
from prvr.benchmarks.report import write_json, write_text


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
@click.option("--train-split", "train_splits", multiple=True, default=("train",), show_default=True,
              metavar="[COLLECTION:]SPLIT",
              help="Training split(s); several train jointly, e.g. --train-split train --train-split "
                   "capproxy_pretrain:train (the train.json corpus of build_capproxy.py build-pretrain).")
@click.option("--init-from", default=None, type=click.Path(exists=True, dir_okay=False),
              help="Fine-tune from this run's best.pt (a pre-training run of the same row).")
def run_command(row: str, seed: int, root: str, runs: str, preset: str, epochs: int, threads: int,
                train_splits: tuple[str, ...], init_from: str | None) -> None:
    """Train one (row, seed), resuming a run that was cut off; a finished run is left as it is."""
    folder = run_dir(Path(runs), row, seed)
    if row == TRIVIAL:
        click.echo(json.dumps({"best": train_trivial_row(root, folder, seed=seed, epochs=epochs, threads=threads,
                                                         train_splits=train_splits, init_from=init_from)}))
        return
    command = train_command(row, folder, seed=seed, root=root, preset=preset, epochs=epochs, threads=threads,
                            train_splits=train_splits, init_from=init_from)
    click.echo(" ".join(command), err=True)
    sys.exit(subprocess.call(command))


@main.command("table")
@click.option("--runs", default="runs/capproxy", show_default=True)
@click.option("--out", "out_stem", default="docs/bench/capproxy_runs", show_default=True,
              help="Writes OUT.json and OUT.md.")
@click.option("--subset", default=None, metavar="NAME",
              help="Add the best epoch's metrics on this DEV-VAL query subset (e.g. unseen_words).")
def table_command(runs: str, out_stem: str, subset: str | None) -> None:
    """Best-epoch DEV-VAL metrics of every finished or running (row, seed), with the mean over seeds."""
    rows = table_rows(Path(runs))
    write_json(Path(out_stem).with_suffix(".json"), rows)
    text = table_markdown(rows, subset)
    write_text(Path(out_stem).with_suffix(".md"), text + "\n")
    click.echo(text)


@main.command("plot")
@click.option("--runs", default="runs/capproxy", show_default=True)
@click.option("--rows", "row_names", multiple=True, required=True, type=click.Choice(sorted(ROWS)))
@click.option("--out", "out_path", default="docs/capproxy_sumr.png", show_default=True)
def plot_command(runs: str, row_names: tuple[str, ...], out_path: str) -> None:
    """Validation SumR per epoch, one line per (row, seed)."""
    plot_sumr(Path(runs), row_names, out_path)
    click.echo(out_path)


if __name__ == "__main__":
    main()
