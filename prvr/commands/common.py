"""What every `prvr` command shares: the error policy (exit code 1 with a fix-it message) and the small option
helpers. It imports no command module and nothing heavy (torch, faiss, transformers load inside the helpers), so
every command module imports it at import time."""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path
from typing import Any

import click

__all__ = ["InputError", "fail_cleanly", "resolve_config", "feature_overrides", "open_corpus",
           "text_backbone_record", "video_files_corpus", "VIDEO_OPTIONS_HELP", "corpus_to_index"]


class InputError(click.ClickException):
    """A problem with what the user gave us: printed as "Error: ..." with exit code 1."""

    exit_code = 1


def fail_cleanly(function: Any) -> Any:
    """Turn the library's ValueError / FileNotFoundError / RuntimeError into a one-line message and exit code 1."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except (ValueError, FileNotFoundError, RuntimeError, OSError) as error:
            raise InputError(str(error)) from error

    return wrapper


def resolve_config(preset: str, overrides: tuple[str, ...], seed: int | None) -> Any:
    """``--preset`` with the ``--set PATH=VALUE`` overrides applied, and ``--seed`` when given."""
    import dataclasses

    from prvr.config import apply_overrides, load_preset

    config = apply_overrides(load_preset(preset), list(overrides))
    if seed is not None:
        config = dataclasses.replace(config, seed=seed)
    return config


def feature_overrides(video_feature: str | None, text_feature: str | None) -> tuple[str, ...]:
    """``--video-feature`` / ``--text-feature`` as dotted config overrides (only those given)."""
    pairs = (("data.video_feature", video_feature), ("data.text_feature", text_feature))
    return tuple(f"{path}={json.dumps(value)}" for path, value in pairs if value is not None)


def open_corpus(root: str, collection: str, split: str, config: Any, **kwargs: Any) -> Any:
    """One split of a standard-layout collection, preprocessed with ``config.data``."""
    from prvr.data.dataset import PRVRCorpus

    return PRVRCorpus(root, collection, split, config.data, **kwargs)


def text_backbone_record(spec: str | None) -> dict[str, Any] | None:
    """--text-backbone: clip:PATH / siglip:PATH (a joint model's text tower), 'minilm-l6' (the packaged
    all-MiniLM-L6-v2), a local model folder, or none (``prvr.text_encoders.text_backbone_record``)."""
    from prvr.text_encoders import text_backbone_record as record

    return record(spec)


VIDEO_OPTIONS_HELP = ("Video files or folders: decode, extract frame features (cached in INDEX_DIR/features, "
                      "resumable) and index them instead of --data/--collection/--split. Repeatable.")


def video_files_corpus(videos: tuple[str, ...], index_dir: str | Path, config: Any, backbone: str | None, *,
                       fps: float, device: str, progress: bool,
                       expected_backbone: str | None = None) -> Any:
    """``--videos``: extract (or take from the index's feature cache) and open the files as a corpus to index.

    The frame backbone must be ``expected_backbone`` when given, else the one the checkpoint was trained on when the
    checkpoint records it (``config.data.video_backbone``); files that cannot be decoded are reported on stderr and skipped.
    """
    from prvr.features.backbones import DEFAULT_IMAGE_BACKBONE
    from prvr.features.corpus import extract_for_index
    from prvr.features.frames import SamplingConfig

    recorded = expected_backbone or config.data.video_backbone
    spec = backbone or DEFAULT_IMAGE_BACKBONE
    corpus, extraction = extract_for_index(list(videos), Path(index_dir) / "features", config, spec,
                                           expected_backbone=recorded, sampling=SamplingConfig(fps=fps),
                                           device=device, progress=progress)
    for failed in extraction.failed:
        click.echo(f"skipped {failed.source}: {failed.reason}", err=True)
    click.echo(f"{len(extraction.succeeded)} of {len(extraction.videos)} video files extracted "
               f"({extraction.backbone_calls} backbone batches; the rest from the cache)", err=True)
    return corpus


def _indexed_backbone(index_dir: Path) -> str | None:
    """The frame backbone id of the video files already extracted into this index (None when there are none)."""
    from prvr.features.backbones import feature_file_backbone
    from prvr.features.corpus import find_feature_name
    from prvr.features.extract import FEATURE_FILE

    try:
        name = find_feature_name(index_dir / "features", "videos")
    except FileNotFoundError:
        return None
    feature_file = index_dir / "features" / "videos" / "FeatureData" / name / FEATURE_FILE
    return feature_file_backbone(feature_file) if feature_file.is_file() else None


def _loadable_spec(backbone_id: str) -> str:
    """``kind:name`` of an id ``kind:name@sha12`` when that name can be loaded again (a hub id or an existing path)."""
    spec = backbone_id.rsplit("@", 1)[0]
    name = spec.partition(":")[2] or spec
    if "/" in name or Path(name).expanduser().exists():
        return spec
    raise ValueError(f"the index's videos were extracted with {backbone_id}, loaded from a local folder named "
                     f"{name!r}; pass --backbone <kind>:<that folder> to extract the new videos the same way")


def moment_frames_corpus(moment_checkpoint: str | Path | None, root: str | None, collection: str | None,
                         split: str | None) -> Any | None:
    """The split at the moment localiser's own resolution, when it reads raw frames (``condition == "frames"``).

    Such a localiser (the capproxy ones: MiniLM-L3 frames binned to its ``data.max_frames``) cannot read the
    retrieval model's frame tokens, so the index stores its tokens beside them (``index.moment_frames``). None for a
    retrieval-conditioned localiser, without a checkpoint, or without ``--data`` (``--videos``).
    """
    if moment_checkpoint is None or not (root and collection and split):
        return None
    from prvr.data.dataset import PRVRCorpus
    from prvr.moments.localizer import moment_checkpoint_config

    config = moment_checkpoint_config(moment_checkpoint)  # None: another localiser's file, read by its own loader
    if config is None or config.condition != "frames":
        return None
    return PRVRCorpus(root, collection, split, config.data, expected_video_dim=config.video_dim)


def corpus_to_index(config: Any, index_dir: str, *, videos: tuple[str, ...], root: str | None,
                    collection: str | None, split: str | None, split_is_option: bool, verb: str,
                    backbone: str | None, fps: float, device: str, progress: bool, match_indexed_videos: bool,
                    check_feature_backbone: bool) -> tuple[Any, str]:
    """What `build-index` and `index add` index: the ``--videos`` files, or a split of ``--data/--collection``.

    Exactly one of the two must be given; the error messages name the command's own options.

    Args:
        config: the checkpoint's experiment config (with the ``--video-feature`` / ``--text-feature`` overrides).
        index_dir: the index directory (``--videos`` features are cached in its ``features/``).
        videos: ``--videos`` files or folders (empty: use the data options).
        root, collection, split: ``--data``, ``--collection``, ``--split``.
        split_is_option: ``--split`` has no default and counts as one of the data options (`index add`); else it
            has a default and only picks the split (`build-index`).
        verb: what the command does, for "nothing to <verb>" (``"index"``, ``"add"``).
        backbone, fps, device: ``--backbone``, ``--fps``, ``--device`` for ``--videos``.
        progress: show progress bars.
        match_indexed_videos: ``--videos`` must be extracted with the frame backbone of the video files already
            in the index, which is also the default ``--backbone`` (`index add`).
        check_feature_backbone: refuse data whose feature file records another backbone than the checkpoint's
            (`build-index`).

    Returns:
        (corpus, collection name).

    Raises:
        ValueError: both or neither source given, or a backbone mismatch.
    """
    # a build reads each video once: the corpus's RAM cache of preprocessed videos and queries (the training default)
    # would only grow, by ~150 KB per video at 96 x 384 float32 tokens (100k videos: 15 GB, the build was OOM-killed).
    # build_index itself never caches the videos it reads; this also keeps any other read of the split uncached.
    config = dataclasses.replace(config, data=dataclasses.replace(config.data, cache_in_memory=False))
    data_options = [root, collection, split] if split_is_option else [root, collection]
    names = "/".join(("--data", "--collection", "--split")[: len(data_options)])
    if videos:
        if any(data_options):
            raise ValueError(f"give either --videos or {names}, not both")
        expected = None
        if match_indexed_videos:
            expected = _indexed_backbone(Path(index_dir))
            if backbone is None and expected is not None:
                backbone = _loadable_spec(expected)
        corpus = video_files_corpus(videos, index_dir, config, backbone, fps=fps, device=device, progress=progress,
                                    expected_backbone=expected)
        return corpus, corpus.collection
    if all(data_options):
        assert root is not None and collection is not None and split is not None
        if check_feature_backbone:
            from prvr.engine import feature_backbone

            feature_backbone(root, collection, config.data)
        return open_corpus(root, collection, split, config, expected_video_dim=config.model.video_dim), collection
    usage = " ".join(("--data ROOT", "--collection NAME", "--split SPLIT")[: len(data_options)])
    raise ValueError(f"nothing to {verb}: give {usage} (features in the standard layout) or --videos DIR "
                     "(video files)")
