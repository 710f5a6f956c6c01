"""The `prvr` command line: one click group. Exit codes: 0 ok, 1 a problem with the inputs (message says which
and how to fix it), 2 a usage error (click's)."""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
from pathlib import Path
from typing import Any

import click

from prvr.commands.common import (
    VIDEO_OPTIONS_HELP,
    fail_cleanly,
    feature_backbone,
    feature_overrides,
    open_corpus,
    text_backbone_record,
    video_files_corpus,
)
from prvr.config import ExperimentConfig, apply_overrides, list_presets, load_preset

__all__ = ["main"]

logger = logging.getLogger("prvr")


def _resolve_config(preset: str, overrides: tuple[str, ...], seed: int | None) -> ExperimentConfig:
    config = apply_overrides(load_preset(preset), list(overrides))
    if seed is not None:
        config = dataclasses.replace(config, seed=seed)
    return config


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug).")
def main(verbose: int) -> None:
    """prvr: partially relevant video retrieval (DreamPRVR)."""
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


# ----------------------------------------------------------------------------------------------------------------
# configuration


@main.command("presets")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@fail_cleanly
def presets_command(as_json: bool) -> None:
    """List the bundled presets with their parameter counts."""
    from prvr.model import DreamPRVR, count_parameters

    rows = []
    for name in list_presets():
        config = load_preset(name)
        rows.append({"preset": name, "parameters": count_parameters(DreamPRVR(config.model)),
                     "hidden_size": config.model.hidden_size, "branches": len(config.model.block.widths),
                     "registers": config.model.registers.num_registers if config.model.registers.enabled else 0})
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    click.echo(f"{'preset':<14}{'parameters':>14}{'D':>6}{'branches':>10}{'registers':>11}")
    for row in rows:
        click.echo(f"{row['preset']:<14}{row['parameters']:>14,}{row['hidden_size']:>6}{row['branches']:>10}"
                   f"{row['registers']:>11}")


@main.command("config")
@click.option("--preset", default="cpu", show_default=True, help="Preset name or a JSON file.")
@click.option("--set", "overrides", multiple=True, metavar="PATH=VALUE",
              help="Override a config field, e.g. --set model.registers.enabled=false (repeatable).")
@fail_cleanly
def config_command(preset: str, overrides: tuple[str, ...]) -> None:
    """Print the resolved configuration as JSON."""
    click.echo(_resolve_config(preset, overrides, None).to_json())


# ----------------------------------------------------------------------------------------------------------------
# data


@main.group("data")
def data_group() -> None:
    """Create, check and inspect data in the standard PRVR layout."""


@data_group.command("synth")
@click.option("--out", "root", required=True, type=click.Path(file_okay=False), help="Data root to write into.")
@click.option("--collection", default="synth", show_default=True, help="Collection name.")
@click.option("--train-videos", default=300, show_default=True, type=click.IntRange(min=2))
@click.option("--val-videos", default=100, show_default=True, type=click.IntRange(min=2))
@click.option("--test-videos", default=100, show_default=True, type=click.IntRange(min=2))
@click.option("--seed", default=0, show_default=True, type=int)
@fail_cleanly
def synth_command(root: str, collection: str, train_videos: int, val_videos: int, test_videos: int,
                  seed: int) -> None:
    """Write a synthetic corpus with learnable structure (features, captions, moments)."""
    from prvr.data.synthetic import make_synthetic_corpus

    summary = make_synthetic_corpus(
        root, collection, splits={"train": train_videos, "val": val_videos, "test": test_videos}, seed=seed
    )
    click.echo(json.dumps(summary, indent=2, default=str))


@data_group.command("check")
@click.option("--data", "root", required=True, type=click.Path(exists=True, file_okay=False), help="Data root.")
@click.option("--collection", required=True, help="Collection name (folder under the data root).")
@click.option("--split", default="train", show_default=True, help="Caption split to check.")
@click.option("--preset", default="activitynet", show_default=True, help="Preset whose data settings to use.")
@click.option("--set", "overrides", multiple=True, metavar="PATH=VALUE", help="Config override (repeatable).")
@click.option("--video-feature", default=None, help="FeatureData/<name> to use (sets data.video_feature).")
@click.option("--text-feature", default=None, help="Query feature name (sets data.text_feature).")
@fail_cleanly
def check_command(root: str, collection: str, split: str, preset: str, overrides: tuple[str, ...],
                  video_feature: str | None, text_feature: str | None) -> None:
    """Validate a split: every caption has video and query features, dims agree, no NaN/inf or empty videos."""
    from prvr.data.dataset import PRVRCorpus

    config = _resolve_config(preset, overrides + feature_overrides(video_feature, text_feature), None)
    corpus = PRVRCorpus(root, collection, split, config.data)
    for video_id in corpus.video_ids:
        corpus.video(video_id)
    for record in corpus.queries:
        corpus.query_tokens(record.query_id)
    click.echo(json.dumps({"split": split, "videos": len(corpus.video_ids), "queries": len(corpus.queries),
                           "video_dim": corpus.video_dim, "text_dim": corpus.text_dim,
                           "has_moments": corpus.moments is not None}))


@data_group.command("annotations")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@click.option("--format", "fmt", default="auto", show_default=True,
              type=click.Choice(["auto", "tvr", "charades", "activitynet", "qvhighlights"]))
@click.option("--head", default=3, show_default=True, type=click.IntRange(min=0), help="Records to show.")
@fail_cleanly
def annotations_command(path: str, fmt: str, head: int) -> None:
    """Read an annotation file (TVR, Charades-STA, ActivityNet Captions, QVHighlights) and summarise it."""
    from prvr.data.annotations import read_annotations

    records = read_annotations(path, fmt=fmt)
    timed = sum(1 for r in records if r.windows)
    click.echo(json.dumps({"queries": len(records), "videos": len({r.video_id for r in records}),
                           "with_timestamps": timed,
                           "head": [dataclasses.asdict(r) for r in records[:head]]}, indent=2))


# ----------------------------------------------------------------------------------------------------------------
# training and evaluation


def _headline(metrics: dict[str, Any]) -> dict[str, Any]:
    """The metrics worth a line of text: recalls, SumR, ranks and counts (timings and paths stay in the JSON)."""
    return {k: v for k, v in metrics.items() if k not in ("seconds", "video_seconds", "checkpoint", "split")}


@main.command("train")
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
@click.option("--train-split", default="train", show_default=True)
@click.option("--val-split", default="val", show_default=True,
              help="Split for model selection; the papers select on 'test' itself (say so when you do).")
@click.option("--seed", type=int, default=None, help="Override the preset's seed.")
@click.option("--resume", is_flag=True, help="Continue from RUN_DIR/last.pt.")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
@fail_cleanly
def train_command(root: str, collection: str, preset: str, run_dir: str, overrides: tuple[str, ...],
                  video_feature: str | None, text_feature: str | None, train_split: str, val_split: str, seed: int | None, resume: bool, no_progress: bool) -> None:
    """Train DreamPRVR; prints one JSON line of metrics per epoch and writes best.pt / last.pt."""
    from prvr.engine import fit
    from prvr.model import DreamPRVR, count_parameters

    config = _resolve_config(preset, overrides + feature_overrides(video_feature, text_feature), seed)
    train_corpus = open_corpus(root, collection, train_split, config)
    backbone_id = feature_backbone(root, collection, config)
    if backbone_id is not None:  # recorded in the checkpoint: indexing features of another backbone is refused
        config = dataclasses.replace(config, data=dataclasses.replace(config.data, video_backbone=backbone_id))
    dims = {"video_dim": train_corpus.video_dim, "text_dim": train_corpus.text_dim}
    if (config.model.video_dim, config.model.text_dim) != (dims["video_dim"], dims["text_dim"]):
        logger.info("input dims taken from the data: %s (preset had %d / %d)", dims, config.model.video_dim,
                    config.model.text_dim)
        config = dataclasses.replace(config, model=dataclasses.replace(config.model, **dims))
    val_corpus = open_corpus(root, collection, val_split, config, expected_video_dim=dims["video_dim"],
                              expected_text_dim=dims["text_dim"])
    click.echo(json.dumps({"preset": config.name, "parameters": count_parameters(DreamPRVR(config.model)),
                           "train_videos": len(train_corpus.video_ids), "train_queries": len(train_corpus.queries),
                           "val_videos": len(val_corpus.video_ids), "val_queries": len(val_corpus.queries)}))
    result = fit(config, train_corpus, val_corpus, run_dir, resume=resume, progress=not no_progress,
                 on_epoch=lambda record: click.echo(json.dumps(record)))
    click.echo(json.dumps({"best_epoch": result.best_epoch, "best": result.best_metrics,
                           "epochs_run": result.epochs_run, "stopped_early": result.stopped_early,
                           "checkpoint": str(Path(run_dir) / "best.pt")}))


@main.command("eval")
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
    """Evaluate text-to-video retrieval: R@1/5/10/100, SumR, median and mean rank (and moments on request)."""
    from prvr.checkpoint import load_model
    from prvr.engine import evaluate, resolve_device
    from prvr.metrics.retrieval import format_metrics

    model, config, _ = load_model(checkpoint, resolve_device(device))
    corpus = open_corpus(root, collection, split, config, expected_video_dim=config.model.video_dim,
                          expected_text_dim=config.model.text_dim)
    metrics = evaluate(model, corpus, config.train)
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
        if moment_checkpoint:
            click.echo(f"{collection}/{split} moments: {format_metrics(metrics['moments'])}")


@main.command("quickstart")
@click.option("--out", "out_dir", default="runs/quickstart", show_default=True, type=click.Path(file_okay=False),
              help="Where the synthetic data and the run go.")
@click.option("--epochs", default=8, show_default=True, type=click.IntRange(min=1))
@click.option("--seed", default=0, show_default=True, type=int)
@fail_cleanly
def quickstart_command(out_dir: str, epochs: int, seed: int) -> None:
    """Generate the synthetic corpus, train the `tiny` preset on it, and evaluate on its test split."""
    from prvr.checkpoint import load_model
    from prvr.data.synthetic import make_synthetic_corpus
    from prvr.engine import evaluate, fit
    from prvr.metrics.retrieval import format_metrics

    root = Path(out_dir) / "data"
    make_synthetic_corpus(root, "synth", splits={"train": 500, "val": 100, "test": 100}, seed=seed)
    config = _resolve_config(
        "tiny", (f"train.epochs={epochs}", "data.video_feature=synth", "data.text_feature=synth"), seed
    )
    train_corpus = open_corpus(str(root), "synth", "train", config)
    config = dataclasses.replace(config, model=dataclasses.replace(
        config.model, video_dim=train_corpus.video_dim, text_dim=train_corpus.text_dim))
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


# ----------------------------------------------------------------------------------------------------------------
# index and search


@main.command("build-index")
@click.option("--checkpoint", required=True, type=click.Path(exists=True, dir_okay=False), help="best.pt / last.pt.")
@click.option("--data", "root", default=None, type=click.Path(exists=True, file_okay=False),
              help="Data root of features in the standard layout (or give --videos).")
@click.option("--collection", default=None, help="Collection name (folder under the data root).")
@click.option("--split", default="test", show_default=True, help="Caption split whose videos are indexed.")
@click.option("--videos", multiple=True, type=click.Path(exists=True), help=VIDEO_OPTIONS_HELP)
@click.option("--backbone", default=None,
              help="Frame backbone for --videos, <kind>:<model folder or hub id> (default: "
                   "clip:openai/clip-vit-base-patch32); must be the checkpoint's when it records one.")
@click.option("--fps", default=1.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Features per second of video for --videos.")
@click.option("--device", default="auto", show_default=True, help="Frame backbone device for --videos.")
@click.option("--out", "index_dir", required=True, type=click.Path(file_okay=False), help="Index directory.")
@click.option("--video-feature", default=None, help="FeatureData/<name> (default: the checkpoint's).")
@click.option("--text-feature", default=None, help="Query feature name (default: the checkpoint's).")
@click.option("--factory", default=None, help="FAISS factory string (default: chosen by corpus size).")
@click.option("--text-backbone", default=None,
              help="Query text encoder recorded for `prvr query`: 'minilm-l6' or a local model folder.")
@click.option("--moment-checkpoint", default=None, type=click.Path(exists=True, dir_okay=False),
              help="Moment localiser checkpoint, copied into the index; `prvr query` then shows moments.")
@click.option("--candidates", default=None, type=click.IntRange(min=1),
              help="Default candidate videos per query (default 200, or the previous generation's).")
@click.option("--token-dtype", default="bfloat16", show_default=True, type=click.Choice(["bfloat16", "float32"]),
              help="Re-rank token store precision of a new index (float32: scores equal `prvr eval`'s, 2x bytes).")
@click.option("--database-url", default=None,
              help="SQLAlchemy URL of a new index's metadata (e.g. postgresql+psycopg://prvr:${PRVR_DB_PASSWORD}@host/"
                   "prvr; ${VAR} is read from the environment when opened). Default: index.db inside --out.")
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(min=1))
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
@fail_cleanly
def build_index_command(checkpoint: str, root: str | None, collection: str | None, split: str,
                        videos: tuple[str, ...], backbone: str | None, fps: float, device: str, index_dir: str,
                        video_feature: str | None, text_feature: str | None, factory: str | None,
                        text_backbone: str | None, moment_checkpoint: str | None, candidates: int | None,
                        token_dtype: str, database_url: str | None, batch_size: int,
                        no_progress: bool) -> None:
    """Encode a split's videos once and index their clip and frame tokens (a new generation, committed last)."""
    from prvr.index.builder import build_index
    from prvr.checkpoint import read_checkpoint

    config = ExperimentConfig.from_json(read_checkpoint(checkpoint)["model_config"])
    config = apply_overrides(config, list(feature_overrides(video_feature, text_feature)))
    if videos:
        if root or collection:
            raise ValueError("give either --videos or --data/--collection, not both")
        corpus = video_files_corpus(videos, index_dir, config, backbone, fps=fps, device=device,
                                    progress=not no_progress)
        collection = corpus.collection
    elif root and collection:
        feature_backbone(root, collection, config)
        corpus = open_corpus(root, collection, split, config, expected_video_dim=config.model.video_dim)
    else:
        raise ValueError("nothing to index: give --data ROOT --collection NAME (features in the standard layout) "
                         "or --videos DIR (video files)")
    result = build_index(checkpoint, corpus, index_dir, collection_name=collection, factory=factory,
                         batch_size=batch_size, text_backbone=text_backbone_record(text_backbone),
                         n_candidates=candidates, moment_checkpoint=moment_checkpoint, token_dtype=token_dtype,
                         database_url=database_url,
                         progress=not no_progress)
    click.echo(json.dumps({"index": str(index_dir), "generation": result.generation_id,
                           "videos": result.num_videos, "new_videos": result.new_videos, "tokens": result.ntotal}))


@main.command("query")
@click.argument("text")
@click.option("--index", "index_dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="Index directory written by `prvr build-index`.")
@click.option("-k", "k", default=10, show_default=True, type=click.IntRange(min=1, max=10_000))
@click.option("--candidates", default=None, type=click.IntRange(min=1), help="Videos re-ranked exactly.")
@click.option("--no-moments", is_flag=True, help="Skip moment localisation (faster; no moment model needed).")
@click.option("--moments", "num_moments", default=3, show_default=True, type=click.IntRange(min=1),
              help="Moments shown per video.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@fail_cleanly
def query_command(text: str, index_dir: str, k: int, candidates: int | None, no_moments: bool, num_moments: int,
                  as_json: bool) -> None:
    """Rank the indexed videos for a sentence (with their top moments when the index has a moment model)."""
    from prvr.retriever import Retriever

    if not text.strip():
        raise ValueError("the query is empty; give a sentence such as \"a man is playing a guitar\"")
    with Retriever.load(index_dir) as retriever:
        results = retriever.search(text, k=k, n_candidates=candidates, localize=not no_moments,
                                   num_moments=num_moments)
        show_moments = retriever.has_localizer and not no_moments
    if as_json:
        click.echo(json.dumps([dataclasses.asdict(r) for r in results]))
        return
    header = f"{'rank':>4}  {'score':>7}  {'video':<24}" + ("  moments (start-end s, score)" if show_moments else "")
    click.echo(header.rstrip())
    for rank, result in enumerate(results, start=1):
        line = f"{rank:>4}  {result.score:>7.4f}  {result.video_id:<24}"
        if show_moments:
            spans = ", ".join(f"{m.start_sec:.1f}-{m.end_sec:.1f} ({m.score:.2f})" for m in result.moments)
            line += "  " + (spans or "(no duration known)" if result.duration is None else spans or "-")
        click.echo(line.rstrip())


from prvr.commands.index_cli import index_group  # noqa: E402  (after main: the module imports prvr.cli lazily)
from prvr.commands.serve_cli import serve_command  # noqa: E402  (a command in its own module)
from prvr.commands.moments_cli import localize_command, train_moments_command  # noqa: E402  (own module)

main.add_command(index_group)
main.add_command(serve_command)
main.add_command(train_moments_command)
main.add_command(localize_command)

from prvr.commands.extract_cli import extract_command  # noqa: E402  (own module)

main.add_command(extract_command)

from prvr.commands.demo_cli import demo_command  # noqa: E402  (own module)

main.add_command(demo_command)

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
