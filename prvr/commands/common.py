"""What every `prvr` command shares: the error policy (exit code 1 with a fix-it message) and the small option
helpers. It imports nothing of prvr.cli, so the command modules can import it at import time (also under
``python -m prvr``)."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import click

__all__ = ["InputError", "fail_cleanly", "feature_overrides", "open_corpus", "text_backbone_record",
           "video_files_corpus", "VIDEO_OPTIONS_HELP", "feature_backbone"]


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


def feature_overrides(video_feature: str | None, text_feature: str | None) -> tuple[str, ...]:
    """``--video-feature`` / ``--text-feature`` as dotted config overrides (only those given)."""
    pairs = (("data.video_feature", video_feature), ("data.text_feature", text_feature))
    return tuple(f"{path}={json.dumps(value)}" for path, value in pairs if value is not None)


def open_corpus(root: str, collection: str, split: str, config: Any, **kwargs: Any) -> Any:
    """One split of a standard-layout collection, preprocessed with ``config.data``."""
    from prvr.data.dataset import PRVRCorpus

    return PRVRCorpus(root, collection, split, config.data, **kwargs)


def text_backbone_record(spec: str | None) -> dict[str, Any] | None:
    """--text-backbone: 'minilm-l6' (the packaged all-MiniLM-L6-v2), a local model folder, or none."""
    if spec is None or spec == "none":
        return None
    from prvr.text_encoders import TokenFeatureEncoder, find_minilm_l6_dir

    path = find_minilm_l6_dir() if spec == "minilm-l6" else Path(spec)
    if not Path(path).is_dir():
        raise ValueError(f"--text-backbone {spec!r} is not a folder; give a local transformers model folder or "
                         "'minilm-l6' (pip install -e '.[bench]')")
    return {"id": TokenFeatureEncoder(path).encoder_id, "path": str(Path(path).resolve())}


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


def feature_backbone(root: str, collection: str, config: Any) -> str | None:
    """The frame backbone id recorded in ``<root>/<collection>/FeatureData/<video_feature>/feature.hdf5`` (None for
    feature releases without one, or other layouts), refused when the config records a different one."""
    from prvr.features.backbones import check_backbone, feature_file_backbone

    feature_file = Path(root) / collection / "FeatureData" / config.data.video_feature / "feature.hdf5"
    if not feature_file.is_file():
        return None
    found = feature_file_backbone(feature_file)
    if config.data.video_backbone is not None and found is not None:
        check_backbone(config.data.video_backbone, found=found, what="the checkpoint")
    return found
