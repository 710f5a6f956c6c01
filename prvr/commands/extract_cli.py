"""`prvr extract`: video files -> frame-backbone features in the standard PRVR layout (cached, resumable)."""

from __future__ import annotations

import json

import click

from prvr.commands.common import fail_cleanly

__all__ = ["extract_command"]


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
