"""`prvr extract`: video files -> frame-backbone features in the standard PRVR layout (cached, resumable);
`prvr extract-text`: a collection's captions -> query token features of a text backbone (the same one search uses)."""

from __future__ import annotations

import json

import click

from prvr.commands.common import fail_cleanly

__all__ = ["extract_command", "extract_text_command"]


@click.command("extract")
@click.option("--videos", "videos", required=True, multiple=True, type=click.Path(exists=True),
              help="A folder of videos (searched recursively) or a video file; repeatable.")
@click.option("--out", "out_root", required=True, type=click.Path(file_okay=False),
              help="Data root: features go to OUT/<collection>/FeatureData/<name>/feature.hdf5.")
@click.option("--backbone", default="clip:openai/clip-vit-base-patch32", show_default=True,
              help="Frame backbone <kind>:<model folder or hub id>; kinds: clip (image tower + projection), vision "
                   "(any transformers vision model). A hub id needs the hub or the local HF cache.")
@click.option("--collection", default="videos", show_default=True, help="Collection folder name under OUT.")
@click.option("--name", "feature_name", default=None,
              help="FeatureData folder name (default: from the backbone, e.g. clip_vit_base_patch32).")
@click.option("--fps", default=1.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Features per second of video.")
@click.option("--frames-per-feature", default=1, show_default=True, type=click.IntRange(min=1),
              help="Frames averaged into one feature (clip-style pooling).")
@click.option("--short-side", default=None, type=click.IntRange(min=8),
              help="Resize frames to this shorter side while decoding (bounds memory on huge videos).")
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(min=1),
              help="Frames per backbone forward pass (and the most frames held in memory).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1 ...")
@click.option("--cache", "cache_dir", default=None, type=click.Path(file_okay=False),
              help="Feature cache folder (default: cache/ inside the feature folder).")
@click.option("--threads", default=0, show_default=True, type=click.IntRange(min=0),
              help="Decoder threads per video (0: FFmpeg's choice).")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
@click.option("--ray", "ray_address", is_flag=False, flag_value="local", default=None, metavar="[ADDRESS]",
              help="Decode and encode on Ray actors (Ray Data map_batches): bare --ray starts a local Ray instance; "
                   "an ADDRESS (auto, ray://HOST:10001) joins a cluster. Needs the ray extra.")
@click.option("--ray-workers", default=2, show_default=True, type=click.IntRange(min=1),
              help="Ray actors, each holding one copy of the backbone.")
@click.option("--ray-gpus-per-worker", default=None, type=click.FloatRange(min=0),
              help="GPUs per Ray actor (default: 1 when the cluster has GPUs and --device is auto, else 0).")
@fail_cleanly
def extract_command(videos: tuple[str, ...], out_root: str, backbone: str, collection: str,
                    feature_name: str | None, fps: float, frames_per_feature: int, short_side: int | None,
                    batch_size: int, device: str, cache_dir: str | None, threads: int, no_progress: bool,
                    ray_address: str | None, ray_workers: int, ray_gpus_per_worker: float | None) -> None:
    """Decode videos, sample frames and encode them with a frozen image backbone; failures are listed, not fatal.

    Prints a JSON summary. Re-running after an interruption only computes the videos not in the cache (also after
    a --ray run: the cache and the output files are the same). Exits with 1 when no video could be extracted.
    """
    from prvr.features.backbones import load_image_backbone
    from prvr.features.extract import extract_videos
    from prvr.features.frames import SamplingConfig

    sampling = SamplingConfig(fps=fps, frames_per_feature=frames_per_feature, short_side=short_side)
    runner = None
    if ray_address is not None:
        from prvr.features.ray_extract import RayBackbone, RayOptions, check_spec_is_shared, ray_runner

        options = RayOptions(address=ray_address, workers=ray_workers, gpus_per_worker=ray_gpus_per_worker)
        check_spec_is_shared(backbone)
        model = RayBackbone.from_spec(backbone)  # the weights load on the actors only
        runner = ray_runner(model.spec, model.backbone_id, sampling, options, device=device, batch_size=batch_size,
                            threads=threads)
    else:
        model = load_image_backbone(backbone, device=device, batch_size=batch_size)
    result = extract_videos(list(videos), out_root, model, collection=collection, feature_name=feature_name,
                            sampling=sampling, cache_dir=cache_dir, threads=threads, progress=not no_progress,
                            runner=runner)
    click.echo(json.dumps(result.summary(), indent=2))
    if not result.succeeded:
        raise RuntimeError(f"none of the {len(result.videos)} video(s) could be extracted; reasons in "
                           f"{result.folder / 'failures.json'}")


def _caption_option(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> list[tuple[str, str]]:
    """``--captions SPLIT=FILE`` -> [(split, file)]."""
    pairs = []
    for value in values:
        split, separator, path = value.partition("=")
        if not separator or not split or not path:
            raise click.BadParameter(f"expected SPLIT=FILE such as train=captions.json, got {value!r}")
        pairs.append((split, path))
    return pairs


@click.command("extract-text")
@click.option("--data", "root", required=True, type=click.Path(file_okay=False),
              help="Data root: the collection's captions are read from ROOT/<collection>/TextData/"
                   "<collection><split>.caption.txt, the features written beside them.")
@click.option("--collection", default="videos", show_default=True,
              help="Collection name (the one `prvr extract --collection` wrote the frame features of).")
@click.option("--text-backbone", "text_backbone", required=True,
              help="Query text encoder: clip:PATH or siglip:PATH (the text tower of the model `prvr extract "
                   "--backbone` used for the frames: the queries then live in the frames' space), 'minilm-l6', or a "
                   "local transformers model folder. Give `build-index` / `prvr serve` the same value.")
@click.option("--split", "splits", multiple=True,
              help="Split to encode (repeatable; default: every split with a caption file).")
@click.option("--captions", "captions", multiple=True, callback=_caption_option, metavar="SPLIT=FILE",
              help="First write FILE as SPLIT's caption file: a '<video_id>#enc#<k> <text>' caption.txt, or an "
                   "annotation file `prvr data annotations` reads (ActivityNet Captions, Charades-STA, TVR, "
                   "QVHighlights; its timestamps become the moments sidecar). Video ids must be the video file stems "
                   "`prvr extract` used. Repeatable.")
@click.option("--name", "feature_name", default=None,
              help="Query feature name, `prvr train --text-feature` (default: from the backbone, e.g. clip_vit_base_"
                   "patch32).")
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(min=1),
              help="Sentences per text-encoder forward pass.")
@click.option("--max-tokens", default=30, show_default=True, type=click.IntRange(min=1),
              help="Token features kept per query (token-feature encoders; a CLIP / SigLIP tower gives one).")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
@fail_cleanly
def extract_text_command(root: str, collection: str, text_backbone: str, splits: tuple[str, ...],
                         captions: list[tuple[str, str]], feature_name: str | None, batch_size: int, max_tokens: int,
                         no_progress: bool) -> None:
    """Encode a collection's captions with a text backbone into the query token features `prvr train` reads.

    The features are what the same backbone's query encoder gives at search time (`build-index --text-backbone`,
    `prvr query`, `prvr serve`); the file records the backbone's id, the checkpoint trained on it too, and an index
    refuses a query encoder of another backbone. Prints a JSON summary.
    """
    from prvr.features.text_extract import extract_query_features
    from prvr.text_encoders import load_text_encoder

    for split, path in captions:
        _import_captions(root, collection, split, path)
    encoder, record = load_text_encoder(text_backbone, max_tokens=max_tokens, batch_size=batch_size)
    wanted = list(splits) or None  # None: every split with a caption file, the imported ones included
    result = extract_query_features(root, collection, encoder, record, splits=wanted, feature_name=feature_name,
                                    progress=not no_progress)
    click.echo(json.dumps(result.summary(), indent=2))


def _import_captions(root: str, collection: str, split: str, path: str) -> None:
    """Write an annotation or caption file as ``<collection><split>.caption.txt`` (+ moments when it has times)."""
    from pathlib import Path

    from prvr.data.annotations import read_annotations
    from prvr.data.captions import caption_path, moments_path, next_caption_numbers, with_caption_ids
    from prvr.data.captions import read_captions, write_captions, write_moments

    source = Path(path)
    if not source.is_file():
        raise FileNotFoundError(f"--captions {split}={path}: no such file")
    records = read_captions(source) if source.name.endswith(".caption.txt") else read_annotations(source)
    if not records:
        raise ValueError(f"--captions {split}={path} holds no captions")
    target = caption_path(root, collection, split)
    own_ids = source.name.endswith(".caption.txt") and all(
        record.query_id.startswith(f"{record.video_id}#") for record in records)
    if not own_ids:  # an annotation file's ids restart at 0 per file
        # number after the ids other splits' caption files already give the same videos (one feature file for all)
        others = [p for p in sorted(target.parent.glob(f"{collection}*.caption.txt")) if p != target]
        records = with_caption_ids(records, next_caption_numbers(others))
    target.parent.mkdir(parents=True, exist_ok=True)
    write_captions(target, records)
    if any(record.windows for record in records):
        write_moments(moments_path(root, collection, split), records)
