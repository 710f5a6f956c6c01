"""The feature cache: one small HDF5 file per (video content, backbone, sampling), each renamed into place whole.

Shape letters: n features of one video, D feature dimension.

Layout: ``<cache>/<key[:2]>/<key>.h5`` with one dataset ``features`` (n, D) float32 and the video's metadata as
attributes. The key is the sha256 of (the file's content sha256, the backbone id, the sampling settings), so a
renamed or moved file is found again, an edited file or another backbone / rate is a miss, and a run killed at any
point leaves only complete entries (each is written to a temporary file, fsynced and renamed): re-running the
extraction recomputes only the videos whose entry is missing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from prvr.data.features import validate_features
from prvr.fileio import atomic_path
from prvr.features.frames import SamplingConfig

__all__ = ["CachedFeatures", "FeatureCache", "cache_key"]

logger = logging.getLogger(__name__)

_FORMAT = 1  # bump when the entry layout changes (old entries are then misses)


def cache_key(content_sha256: str, backbone_id: str, sampling: SamplingConfig) -> str:
    """The cache key of one video's features.

    Args:
        content_sha256: sha256 hex digest of the video file's bytes.
        backbone_id: the frame backbone's id.
        sampling: the sampling settings.

    Returns:
        64 hex characters.
    """
    payload = json.dumps(
        {"format": _FORMAT, "content": content_sha256, "backbone": backbone_id, "sampling": sampling.to_dict()},
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class CachedFeatures:
    """One cache entry.

    Attributes:
        features: (n, D) float32.
        metadata: what decoding found (duration, frame count, ...), as stored.
    """

    features: np.ndarray
    metadata: dict[str, Any]


class FeatureCache:
    """A folder of per-video feature entries (see the module docstring).

    Args:
        directory: the cache folder (created when missing).
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        """Where the entry of ``key`` lives."""
        if len(key) != 64 or any(c not in "0123456789abcdef" for c in key):
            raise ValueError(f"cache key must be 64 lowercase hex characters, got {key!r}")
        return self.directory / key[:2] / f"{key}.h5"

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.path(key).is_file()

    def get(self, key: str) -> CachedFeatures | None:
        """The entry of ``key``, or None when absent (an unreadable entry is removed and treated as absent)."""
        file = self.path(key)
        if not file.is_file():
            return None
        try:
            with h5py.File(file, "r") as handle:
                features = validate_features(handle["features"][()], source=str(file), key="features")
                metadata = json.loads(handle.attrs["metadata"])
        except (OSError, KeyError, ValueError, TypeError, RuntimeError) as error:
            logger.warning("dropping unreadable cache entry %s (%s)", file, error)
            file.unlink(missing_ok=True)
            return None
        return CachedFeatures(features, metadata)

    def put(self, key: str, features: np.ndarray, metadata: dict[str, Any]) -> Path:
        """Store one entry atomically.

        Args:
            key: from :func:`cache_key`.
            features: (n, D) finite floats.
            metadata: JSON-serialisable facts about the video.

        Returns:
            The entry's path.
        """
        rows = validate_features(features, source="FeatureCache.put", key=key)
        file = self.path(key)
        file.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(file) as tmp:
            with h5py.File(tmp, "w") as handle:
                handle.create_dataset("features", data=rows)
                handle.attrs["metadata"] = json.dumps(metadata, sort_keys=True)
        return file

    def __len__(self) -> int:
        return sum(1 for _ in self.directory.glob("??/*.h5"))
