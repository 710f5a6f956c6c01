"""An extracted feature folder opened as the video corpus ``index.builder.build_index`` takes (videos, no captions).

Shape letters: C clip tokens, F frame tokens, D_in video feature width.

``build_index`` reads ``video_ids``, ``video(video_id)`` (through ``iter_video_batches``), ``video_dim``,
``text_dim``, ``config`` (``clip_bins``, ``max_frames``, the feature names), ``root``, ``collection``, ``split`` and
``captions_of`` and ``video_info`` (the :class:`prvr.types.VideoCorpus` protocol); :class:`ExtractedVideoCorpus`
provides them for a folder written by ``prvr extract``, with the videos' durations and source files from its
``videos.jsonl`` (``duration_of``, ``source_of``, ``video_info``).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from prvr.config import DataConfig, ExperimentConfig
from prvr.data.features import HDF5FeatureStore
from prvr.data.preprocess import preprocess_video
from prvr.features.backbones import ImageBackbone, check_backbone, load_image_backbone
from prvr.features.extract import (
    FAILURES_FILE,
    FEATURE_FILE,
    SIDECAR_FILE,
    ExtractionResult,
    extract_videos,
    feature_folder,
    read_sidecar,
)
from prvr.features.frames import SamplingConfig
from prvr.types import QueryRecord, VideoInfo

__all__ = ["EXTRACTED_SPLIT", "ExtractedVideoCorpus", "find_feature_name", "extract_for_index"]

logger = logging.getLogger(__name__)

EXTRACTED_SPLIT = "videos"  # the split name an extracted corpus reports (it has no caption split)


def find_feature_name(root: str | os.PathLike[str], collection: str) -> str:
    """The one FeatureData folder of ``<root>/<collection>`` that ``prvr extract`` wrote.

    Raises:
        FileNotFoundError: none; ValueError: several (pass the name).
    """
    base = Path(root) / collection / "FeatureData"
    names = sorted(p.name for p in base.glob("*") if (p / SIDECAR_FILE).is_file()) if base.is_dir() else []
    if not names:
        raise FileNotFoundError(f"{base} holds no folder written by `prvr extract` (with {SIDECAR_FILE}); run it first")
    if len(names) > 1:
        raise ValueError(f"{base} holds several extracted features ({', '.join(names)}); name one (--video-feature)")
    return names[0]


class ExtractedVideoCorpus:
    """The successfully extracted videos of a ``prvr extract`` folder, preprocessed like a PRVR split's videos.

    Args:
        root: the ``--out`` of ``prvr extract``.
        collection: its ``--collection`` (default ``videos``).
        config: the model's data settings (``clip_bins``, ``max_frames``); ``video_feature`` is replaced by the
            extracted feature name.
        text_dim: the model's query feature width (the corpus has no queries; ``build_index`` compares it).
        feature_name: the FeatureData name (default: the only extracted one).
        expected_video_dim: D_in the model needs, or None.
        expected_backbone: the backbone id the model was trained on, or None to skip the check.

    Raises:
        FileNotFoundError: the folder or its files are missing.
        ValueError: no video was extracted, the dimension or the backbone differs from the model's.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        collection: str,
        config: DataConfig,
        *,
        text_dim: int,
        feature_name: str | None = None,
        expected_video_dim: int | None = None,
        expected_backbone: str | None = None,
    ) -> None:
        self.root = Path(root)
        self.collection = collection
        self.split = EXTRACTED_SPLIT
        name = feature_name or find_feature_name(root, collection)
        self.config = dataclasses.replace(config, video_feature=name)
        self.folder = feature_folder(root, collection, name)
        records = [row for row in read_sidecar(self.folder) if row.get("status") == "ok"]
        feature_file = self.folder / FEATURE_FILE
        if not records or not feature_file.is_file():
            raise ValueError(
                f"{self.folder}: no video was extracted successfully (see its failures.json); nothing to index"
            )
        self._store = HDF5FeatureStore(feature_file)
        missing = [row["video_id"] for row in records if row["video_id"] not in self._store]
        if missing:
            raise ValueError(f"{feature_file} lacks {len(missing)} video(s) of {SIDECAR_FILE} (e.g. {missing[0]!r}); "
                             "re-run `prvr extract`")
        self._records = {row["video_id"]: row for row in records}
        self._video_ids = [row["video_id"] for row in records]
        self._video_dim = int(self._store.dim)
        if expected_video_dim is not None and self._video_dim != expected_video_dim:
            raise ValueError(
                f"{feature_file}: features have dimension {self._video_dim}, but the model expects "
                f"{expected_video_dim}; extract with the backbone the model was trained on"
            )
        self._store.expected_dim = self._video_dim
        self.backbone_id: str | None = self._store.attrs.get("backbone")
        check_backbone(expected_backbone, found=self.backbone_id, what="the model")
        self._text_dim = int(text_dim)

    @property
    def video_ids(self) -> list[str]:
        """The extracted videos, in extraction order."""
        return list(self._video_ids)

    @property
    def video_dim(self) -> int:
        return self._video_dim

    @property
    def text_dim(self) -> int:
        return self._text_dim

    @property
    def queries(self) -> list[QueryRecord]:
        """No queries: an extracted folder holds videos only."""
        return []

    def captions_of(self, video_id: str) -> list[QueryRecord]:
        """No captions (the durations are in :meth:`duration_of`)."""
        if video_id not in self._records:
            raise KeyError(f"video {video_id!r} is not in {self.folder}")
        return []

    def duration_of(self, video_id: str) -> float | None:
        """The video's duration in seconds, from the sidecar."""
        value = self._records[video_id].get("duration_sec")
        return float(value) if value is not None else None

    def source_of(self, video_id: str) -> str:
        """The path of the video file the features came from."""
        return str(self._records[video_id]["source"])

    def video_info(self, video_id: str) -> VideoInfo:
        """The source file, duration, fps and frame count of one video, from the sidecar."""
        row = self._records[video_id]
        return VideoInfo(duration_s=row.get("duration_sec"), uri=str(row["source"]), fps=row.get("fps") or None,
                         n_frames=row.get("frame_count"))

    def video(self, video_id: str, *, cache: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """``(clip, frames)``: (C, D_in) and (F, D_in) float32, as :meth:`prvr.data.dataset.PRVRCorpus.video`
        (nothing is cached here, so ``cache`` changes nothing)."""
        return preprocess_video(self._store[video_id], self.config)

    def close(self) -> None:
        self._store.close()

    def __enter__(self) -> ExtractedVideoCorpus:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ExtractedVideoCorpus({str(self.folder)!r}: {len(self._video_ids)} videos)"


def extract_for_index(
    videos: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    features_root: str | os.PathLike[str],
    config: ExperimentConfig,
    backbone: str | ImageBackbone,
    *,
    expected_backbone: str | None = None,
    collection: str = "videos",
    sampling: SamplingConfig | None = None,
    device: str = "auto",
    batch_size: int = 32,
    progress: bool = True,
) -> tuple[ExtractedVideoCorpus, ExtractionResult]:
    """Extract (or take from the cache) the features of video files and open them for ``build_index``.

    What ``prvr build-index --videos DIR`` and ``prvr index add --videos DIR`` run before ``build_index``.

    Args:
        videos: a folder of videos, a file, or a list of them.
        features_root: where the features go (``<features_root>/<collection>/FeatureData/<name>/``).
        config: the checkpoint's experiment config (its ``data`` settings and model dims are used).
        backbone: the frame backbone, or its spec for :func:`prvr.features.backbones.load_image_backbone`.
        expected_backbone: the backbone id the checkpoint was trained on (None: not checked).
        collection: the collection folder name.
        sampling: frame sampling (default: 1 feature per second).
        device: the backbone's device when ``backbone`` is a spec.
        batch_size: frames per backbone pass when ``backbone`` is a spec.
        progress: show progress bars.

    Returns:
        ``(corpus, extraction)``: the corpus of the videos that were extracted, and the extraction result (its
        ``failed`` list says which files were skipped and why).

    Raises:
        ValueError: no video could be extracted, or the backbone / dimension differs from the checkpoint's.
    """
    if isinstance(backbone, str):
        backbone = load_image_backbone(backbone, device=device, batch_size=batch_size)
    if expected_backbone is not None:
        check_backbone(expected_backbone, found=backbone.backbone_id, what="the checkpoint")
    extraction = extract_videos(videos, features_root, backbone, collection=collection, sampling=sampling,
                                progress=progress)
    if not extraction.succeeded:
        raise ValueError(f"none of the {len(extraction.videos)} video(s) could be extracted; reasons in "
                         f"{extraction.folder / FAILURES_FILE}")
    corpus = ExtractedVideoCorpus(features_root, collection, config.data, text_dim=config.model.text_dim,
                                  feature_name=extraction.feature_name, expected_video_dim=config.model.video_dim,
                                  expected_backbone=expected_backbone)
    return corpus, extraction
