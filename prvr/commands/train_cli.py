"""`prvr train`, `prvr eval` and `prvr quickstart`: train DreamPRVR on a corpus and measure text-to-video retrieval."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from prvr.commands.common import fail_cleanly, feature_overrides, open_corpus, resolve_config
from prvr.config import list_presets

__all__ = ["train_command", "eval_command", "quickstart_command"]


def _headline(metrics: dict[str, Any]) -> dict[str, Any]:
    """The metrics worth a line of text: recalls, SumR, ranks and counts (timings and paths stay in the JSON)."""
    return {k: v for k, v in metrics.items()
            if k not in ("seconds", "video_seconds", "checkpoint", "split", "subsets")}


@click.command("train")
@click.option("--data", "root", required=True, type=click.Path(exists=True, file_okay=False), help="Data root.")
@click.option("--collection", required=True, help="Collection name (folder under the data root).")
@click.option("--preset", default="cpu", show_default=True,
              help=f"Preset name ({', '.join(list_presets())}) or a JSON file.")
@click.option("--out", "run_dir", required=True, type=click.Path(file_okay=False), help="Run directory.")
@click.option("--set", "overrides", multiple=True, metavar="PATH=VALUE",
              help="Override a config field, e.g. --set train.epochs=5 (repeatable).")
@click.option("--video-feature", default=None, help="FeatureData/<name> to use (sets data.video_feature).")
@click.option("--text-feature", default=None,
              help="TextData/<name>_<collection>_query_feat.hdf5 to use (sets data.text_feature).")
@click.option("--train-split", "train_splits", multiple=True, default=("train",), show_default=True,
              metavar="[COLLECTION:]SPLIT",
              help="Training split; repeat for joint training on several (disjoint) splits, e.g. --train-split train "
                   "--train-split capproxy_pretrain:train. COLLECTION defaults to --collection.")
@click.option("--init-from", default=None, type=click.Path(exists=True, dir_okay=False),
              help="Start from this checkpoint's weights (fine-tune: new optimizer and schedule; its model and data "
                   "config must match this run's).")
@click.option("--val-split", default="val", show_default=True,
              help="Split for model selection; the papers select on 'test' itself (say so when you do).")
@click.option("--seed", type=int, default=None, help="Override the preset's seed.")
@click.option("--resume", is_flag=True, help="Continue from RUN_DIR/last.pt.")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
@fail_cleanly
def train_command(root: str, collection: str, preset: str, run_dir: str, overrides: tuple[str, ...],
                  video_feature: str | None, text_feature: str | None, train_splits: tuple[str, ...],
                  init_from: str | None, val_split: str, seed: int | None, resume: bool, no_progress: bool) -> None:
    """Train DreamPRVR; prints one JSON line of metrics per epoch and writes best.pt / last.pt.

    Query subsets stored for the validation split (e.g. ANet-CapProxy's unseen-words queries) are scored after
    every epoch beside it; model selection uses the full split.
    """
    from prvr.data.subsets import find_query_subsets
    from prvr.engine import config_for_corpus, fit
    from prvr.model import DreamPRVR, count_parameters

    config = resolve_config(preset, overrides + feature_overrides(video_feature, text_feature), seed)
    train_corpus = open_train_corpus(root, collection, train_splits, config)
    config = config_for_corpus(config, train_corpus)
    val_corpus = open_corpus(root, collection, val_split, config, expected_video_dim=config.model.video_dim,
                             expected_text_dim=config.model.text_dim)
    subsets = find_query_subsets(root, collection, val_split)
    click.echo(json.dumps({"preset": config.name, "parameters": count_parameters(DreamPRVR(config.model)),
                           "train_splits": train_corpus.split if hasattr(train_corpus, "parts") else train_splits[0],
                           "train_videos": len(train_corpus.video_ids), "train_queries": len(train_corpus.queries),
                           "val_videos": len(val_corpus.video_ids), "val_queries": len(val_corpus.queries),
                           "val_subsets": {name: len(ids) for name, ids in subsets.items()},
                           "init_from": init_from}))
    result = fit(config, train_corpus, val_corpus, run_dir, resume=resume, init_from=init_from,
                 val_subsets=subsets or None, progress=not no_progress,
                 on_epoch=lambda record: click.echo(json.dumps(record)))
    click.echo(json.dumps({"best_epoch": result.best_epoch, "best": result.best_metrics,
                           "epochs_run": result.epochs_run, "stopped_early": result.stopped_early,
                           "checkpoint": str(Path(run_dir) / "best.pt")}))


def parse_train_split(spec: str, collection: str) -> tuple[str, str]:
    """``[COLLECTION:]SPLIT`` -> (collection, split); the collection defaults to ``collection``."""
    owner, _, split = spec.rpartition(":")
    if not split:
        raise ValueError(f"--train-split {spec!r}: give SPLIT or COLLECTION:SPLIT")
    return owner or collection, split


def open_train_corpus(root: str, collection: str, specs: tuple[str, ...], config: Any) -> Any:
    """One training split as a PRVRCorpus, or several (``[COLLECTION:]SPLIT`` each) as one JointCorpus."""
    from prvr.data.dataset import JointCorpus

    pairs = [parse_train_split(spec, collection) for spec in specs]
    if len(set(pairs)) != len(pairs):
        raise ValueError(f"--train-split names the same split twice: {list(specs)}")
    parts = [open_corpus(root, owner, split, config) for owner, split in pairs]
    return parts[0] if len(parts) == 1 else JointCorpus(parts)


@click.command("eval")
@click.option("--checkpoint", required=True, type=click.Path(dir_okay=False), help="A best.pt / last.pt file.")
@click.option("--data", "root", required=True, type=click.Path(exists=True, file_okay=False), help="Data root.")
@click.option("--collection", required=True, help="Collection name.")
@click.option("--split", default="test", show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1 ...")
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as one JSON object.")
@click.option("--out", "out_path", type=click.Path(dir_okay=False), default=None,
              help="Also write the metrics JSON here.")
@click.option("--moment-checkpoint", default=None, type=click.Path(exists=True, dir_okay=False),
              help="Also report moment metrics (R1@IoU, mAP) of this `train-moments` checkpoint on the ground-truth "
                   "videos (needs timestamps).")
@fail_cleanly
def eval_command(checkpoint: str, root: str, collection: str, split: str, device: str, as_json: bool,
                 out_path: str | None, moment_checkpoint: str | None = None) -> None:
    """Evaluate text-to-video retrieval: R@1/5/10/100, SumR, median and mean rank (and moments on request).

    Query subsets stored beside the split's caption file (``prvr.data.subsets``, e.g. ANet-CapProxy's
    unseen-words queries of DEV-VAL) are reported beside the full split, ranked among all of its videos.
    """
    from prvr.checkpoint import load_model
    from prvr.data.subsets import find_query_subsets
    from prvr.engine import evaluate, query_backbone, resolve_device
    from prvr.metrics.retrieval import format_metrics

    model, config, _ = load_model(checkpoint, resolve_device(device))
    query_backbone(root, collection, config.data)  # query features of another text backbone are refused
    corpus = open_corpus(root, collection, split, config, expected_video_dim=config.model.video_dim,
                         expected_text_dim=config.model.text_dim)
    subsets = find_query_subsets(root, collection, split)
    metrics = evaluate(model, corpus, config.train, subsets=subsets or None)
    metrics = {"split": split, "checkpoint": str(checkpoint), **metrics}
    if moment_checkpoint:
        from prvr.moments.train import evaluate_checkpoint_on_split

        metrics["moments"] = evaluate_checkpoint_on_split(moment_checkpoint, root, collection, split,
                                                          retrieval_checkpoint=checkpoint)
    if out_path:
        Path(out_path).write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    if as_json:
        click.echo(json.dumps(metrics))
    else:
        click.echo(f"{collection}/{split}: {format_metrics(_headline(metrics))}")
        for name, values in metrics.get("subsets", {}).items():
            click.echo(f"{collection}/{split} subset {name}: {format_metrics(values)}")
        if moment_checkpoint:
            click.echo(f"{collection}/{split} moments: {format_metrics(metrics['moments'])}")


@click.command("quickstart")
@click.option("--out", "out_dir", default="runs/quickstart", show_default=True, type=click.Path(file_okay=False),
              help="Where the synthetic data and the run go.")
@click.option("--epochs", default=8, show_default=True, type=click.IntRange(min=1))
@click.option("--seed", default=0, show_default=True, type=int)
@fail_cleanly
def quickstart_command(out_dir: str, epochs: int, seed: int) -> None:
    """Generate the synthetic corpus, train the `tiny` preset on it, and evaluate on its test split."""
    from prvr.checkpoint import load_model
    from prvr.data.synthetic import make_synthetic_corpus
    from prvr.engine import config_for_corpus, evaluate, fit
    from prvr.metrics.retrieval import format_metrics

    root = Path(out_dir) / "data"
    make_synthetic_corpus(root, "synth", splits={"train": 500, "val": 100, "test": 100}, seed=seed)
    config = resolve_config(
        "tiny", (f"train.epochs={epochs}", "data.video_feature=synth", "data.text_feature=synth"), seed
    )
    train_corpus = open_corpus(str(root), "synth", "train", config)
    config = config_for_corpus(config, train_corpus)
    val_corpus = open_corpus(str(root), "synth", "val", config)
    click.echo(f"training the tiny preset for {epochs} epochs on {len(train_corpus.video_ids)} synthetic videos")
    result = fit(config, train_corpus, val_corpus, Path(out_dir) / "run", progress=True,
                 on_epoch=lambda r: click.echo(f"epoch {r['epoch']:>2}: val SumR {r['val']['SumR']:.1f}"))
    model, config, _ = load_model(Path(out_dir) / "run" / "best.pt")
    test_corpus = open_corpus(str(root), "synth", "test", config)
    metrics = evaluate(model, test_corpus, config.train)
    n = len(test_corpus.video_ids)
    chance = sum(100.0 * min(k, n) / n for k in (1, 5, 10, 100))
    click.echo(f"test ({n} videos): {format_metrics(_headline(metrics))}")
    click.echo(f"random ranking would give SumR {chance:.1f}; best epoch {result.best_epoch}")
