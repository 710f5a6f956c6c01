"""A larger corpus for load runs, made of noisy copies of a real one's videos (e.g. 100k videos from ANet-CapProxy).

The service benchmark asks for an index of 100k videos built by ``prvr build-index``; ANet-CapProxy has 2,964 videos
with query features. :func:`build_scaled_corpus` writes a new collection in the standard layout whose videos are the
source splits' videos in turn, copy 0 unchanged and copy ``c >= 1`` with independent Gaussian noise on every frame
(``noise`` times the frame's RMS per dimension, drawn from ``(seed, c)``), until ``num_videos`` videos exist. Every
copy keeps its source's captions, moment windows and duration; the query features of a copy are HDF5 hard links to
its source caption's (stored once). It is a corpus for measuring speed and memory at scale, not retrieval quality:
each video has near-duplicates, so recall on it says nothing about the model.

Ids: copy ``c`` of video ``v`` is ``v~c<c>`` (copy 0 keeps ``v``), its captions ``v~c<c>#enc#<n>``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from prvr.config import ExperimentConfig
from prvr.data.captions import caption_path, moments_path, write_captions, write_moments
from prvr.data.dataset import PRVRCorpus
from prvr.data.features import (
    open_video_features,
    query_feature_path,
    write_hdf5_features,
)
from prvr.fileio import atomic_path
from prvr.types import QueryRecord

__all__ = ["build_scaled_corpus", "copy_id"]

logger = logging.getLogger(__name__)


def copy_id(video_id: str, copy: int) -> str:
    """The id of copy ``copy`` of ``video_id`` (copy 0 is the video itself)."""
    return video_id if copy == 0 else f"{video_id}~c{copy}"


def build_scaled_corpus(
    root: str | Path,
    collection: str,
    splits: Sequence[str],
    *,
    out_collection: str,
    out_split: str,
    num_videos: int,
    video_feature: str,
    text_feature: str,
    noise: float = 0.3,
    seed: int = 0,
) -> dict[str, Any]:
    """Write ``root/out_collection``: ``num_videos`` videos cycled from ``collection``'s ``splits`` (see module).

    Args:
        root: the data root holding ``collection`` (the new collection is written beside it).
        collection: the source collection, in the standard layout, with query features ``text_feature``.
        splits: its caption splits whose videos are copied, in this order.
        out_collection: the new collection's name (must differ from ``collection``).
        out_split: the one caption split of the new collection.
        num_videos: videos to write (at least one).
        video_feature: the FeatureData name to copy (written under the same name).
        text_feature: the query feature name to link.
        noise: noise of copies >= 1, relative to each frame's RMS per dimension (>= 0).
        seed: seed of the noise.

    Returns:
        A summary: counts, copies, paths.

    Raises:
        ValueError: on bad arguments, an empty source, or a source caption without query features.
    """
    root = Path(root)
    if isinstance(num_videos, bool) or not isinstance(num_videos, int) or num_videos < 1:
        raise ValueError(f"num_videos must be a positive int, got {num_videos!r}")
    if not (noise >= 0 and np.isfinite(noise)):
        raise ValueError(f"noise must be a finite number >= 0, got {noise!r}")
    if out_collection == collection:
        raise ValueError(f"out_collection must differ from the source collection {collection!r}")
    if not splits:
        raise ValueError("give at least one source split")
    # captions with their windows and durations, per video in caption-file order, checked against the feature
    # files (every caption has query features) by the data layer; the raw frames come from the store itself
    data = replace(ExperimentConfig().data, video_feature=video_feature, text_feature=text_feature,
                   cache_in_memory=False)
    order: list[str] = []
    captions: dict[str, list[QueryRecord]] = {}
    for split in splits:
        source_split = PRVRCorpus(root, collection, split, data)
        for video_id in source_split.video_ids:
            if video_id not in captions:
                order.append(video_id)
                captions[video_id] = source_split.captions_of(video_id)
    features = open_video_features(root, collection, video_feature)
    source_queries = query_feature_path(root, collection, text_feature)
    copies = -(-num_videos // len(order))
    plan = [(index % len(order), index // len(order)) for index in range(num_videos)]  # (source video, copy)

    out_records: list[QueryRecord] = []
    for source, copy in plan:
        video_id = order[source]
        new_video = copy_id(video_id, copy)
        for record in captions[video_id]:
            number = record.query_id.rsplit("#", 1)[-1]
            new_id = record.query_id if copy == 0 else f"{new_video}#enc#{number}"
            out_records.append(replace(record, query_id=new_id, video_id=new_video))

    def frames() -> Iterator[tuple[str, np.ndarray]]:
        for source, copy in plan:
            video_id = order[source]
            array = np.asarray(features[video_id], dtype=np.float32)  # (T, D)
            if copy > 0 and noise > 0:
                rng = np.random.default_rng([seed, copy, source])
                rms = np.sqrt(np.mean(array**2, axis=1, keepdims=True))  # (T, 1)
                array = array + noise * rms * rng.standard_normal(array.shape).astype(np.float32)
            yield copy_id(video_id, copy), array

    out_root = root / out_collection
    video_file = out_root / "FeatureData" / video_feature / "feature.hdf5"
    video_file.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(_hdf5_file(root / collection / "FeatureData" / video_feature), "r") as handle:
        attrs = {name: handle.attrs[name] for name in handle.attrs}
    attrs.update({"scaled_from": f"{collection}/{'+'.join(splits)}", "scaled_noise": float(noise),
                  "scaled_seed": int(seed)})
    write_hdf5_features(video_file, frames(), dtype=np.float16, attrs=attrs)

    query_file = query_feature_path(root, out_collection, text_feature)
    query_file.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(source_queries, "r") as source_handle, atomic_path(query_file) as tmp:
        with h5py.File(tmp, "w") as out:
            for name in source_handle.attrs:
                out.attrs[name] = source_handle.attrs[name]
            for source, copy in plan:
                for record in captions[order[source]]:
                    if copy == 0:  # PRVRCorpus checked that every caption has its query features
                        out.create_dataset(record.query_id, data=source_handle[record.query_id][()])
                    else:
                        number = record.query_id.rsplit("#", 1)[-1]
                        out[f"{copy_id(order[source], copy)}#enc#{number}"] = out[record.query_id]  # a hard link
    captions_file = caption_path(root, out_collection, out_split)
    write_captions(captions_file, out_records)
    write_moments(moments_path(root, out_collection, out_split), out_records)
    summary = {"collection": out_collection, "split": out_split, "videos": num_videos, "queries": len(out_records),
               "source": f"{collection}/{'+'.join(splits)}", "source_videos": len(order), "copies": copies,
               "noise": float(noise), "seed": int(seed), "video_file": str(video_file), "query_file": str(query_file),
               "caption_file": str(captions_file)}
    logger.info("scaled corpus %s: %d videos (%d sources x up to %d copies), %d captions", out_collection, num_videos,
                len(order), copies, len(out_records))
    return summary


def _hdf5_file(folder: Path) -> Path:
    """The HDF5 file of a FeatureData entry (its attributes, e.g. the backbone, are copied to the new corpus)."""
    for path in (folder / "feature.hdf5", folder.with_suffix(".hdf5")):
        if path.is_file():
            return path
    raise ValueError(f"{folder} holds no feature.hdf5 (the scaled corpus copies HDF5 video features only)")
