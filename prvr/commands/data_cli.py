"""`prvr data synth|check|annotations`: create, check and inspect data in the standard PRVR layout."""

from __future__ import annotations

import dataclasses
import json

import click

from prvr.commands.common import fail_cleanly, feature_overrides, resolve_config

__all__ = ["data_group"]


@click.group("data")
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

    config = resolve_config(preset, overrides + feature_overrides(video_feature, text_feature), None)
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
