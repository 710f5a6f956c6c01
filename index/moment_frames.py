"""The localiser's own frame tokens, stored beside the retrieval tokens at a finer temporal resolution.

Shape letters: F frames of one video, D their width.

Retrieval reads a few dozen frame tokens per video (``data.max_frames`` bins); an event of a few seconds in a long
video is then less than one token. A moment localiser trained on the raw frame features (``condition="frames"``)
at up to ``max_frames`` tokens per video (e.g. one per second) reads them from here at search time: one float16
``.npy`` of shape (F, D) per internal video id under ``<generation>/moment_frames/``, described by ``meta.json``
(``dim``, ``max_frames``, ``dtype``). A later generation copies the folder and adds its new videos, as the token
store is copied. Bytes per video: F * D * 2 plus a 128-byte .npy header (e.g. 240 one-second tokens of
384-d MiniLM-L3 features: 184 KB).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from prvr.fileio import write_json_atomic

__all__ = ["MOMENT_FRAMES_DIR", "MomentFrameStore"]

MOMENT_FRAMES_DIR = "moment_frames"
_META = "meta.json"
_DTYPE = "float16"


class MomentFrameStore:
    """Per-video (F, D) float16 frame tokens in one folder.

    Args:
        directory: the folder (created for writing when missing).
        dim: D, required to create a new store; checked against ``meta.json`` otherwise.
        max_frames: the most tokens per video the store was built for (recorded; checked on append).
        read_only: open an existing store for reading.
    """

    def __init__(self, directory: str | os.PathLike[str], dim: int | None = None, max_frames: int | None = None,
                 *, read_only: bool = False) -> None:
        self.directory = Path(directory)
        meta_path = self.directory / _META
        if meta_path.is_file():
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            if dim is not None and int(meta["dim"]) != int(dim):
                raise ValueError(f"{self.directory} holds {meta['dim']}-d moment frames, not {dim}-d; build the index "
                                 "into a new directory to change the moment features")
            self.dim, self.max_frames = int(meta["dim"]), int(meta["max_frames"])
        elif read_only:
            raise FileNotFoundError(f"{meta_path} does not exist; the index generation has no moment frames: "
                                    "rebuild it with the moment frames (build_index(moment_corpus=...))")
        else:
            if dim is None or max_frames is None or dim < 1 or max_frames < 1:
                raise ValueError(f"a new moment frame store needs dim >= 1 and max_frames >= 1, got {dim}, "
                                 f"{max_frames}")
            self.directory.mkdir(parents=True, exist_ok=True)
            self.dim, self.max_frames = int(dim), int(max_frames)
            write_json_atomic(meta_path, {"dim": self.dim, "max_frames": self.max_frames, "dtype": _DTYPE})
        self.read_only = read_only

    def _path(self, video_id: int) -> Path:
        return self.directory / f"{int(video_id)}.npy"

    def append(self, video_id: int, frames: np.ndarray) -> int:
        """Store one video's (F, D) tokens (F <= max_frames, finite); returns the bytes written."""
        if self.read_only:
            raise RuntimeError(f"{self.directory} is open read-only")
        array = np.asarray(frames)
        if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] != self.dim:
            raise ValueError(f"video {video_id}: moment frames must be (F >= 1, {self.dim}), got {array.shape}")
        if array.shape[0] > self.max_frames:
            raise ValueError(f"video {video_id}: {array.shape[0]} moment frames, more than the store's max_frames "
                             f"{self.max_frames}; bin them first (prvr.data.preprocess.frame_tokens)")
        if not np.isfinite(array).all():
            raise ValueError(f"video {video_id}: moment frames contain NaN or inf; re-extract its features")
        encoded = np.ascontiguousarray(array.astype(_DTYPE))
        path = self._path(video_id)
        tmp = path.with_suffix(".npy.tmp")
        with open(tmp, "wb") as handle:
            np.save(handle, encoded)
        tmp.replace(path)
        return int(encoded.nbytes)

    def get(self, video_ids: Sequence[int]) -> list[np.ndarray]:
        """The (F_i, D) float32 tokens of each video, in order.

        Raises:
            KeyError: naming the videos the store does not hold.
        """
        missing = [int(v) for v in video_ids if not self._path(v).is_file()]
        if missing:
            raise KeyError(f"videos {missing[:10]} have no moment frames in {self.directory}; rebuild the index "
                           "generation with the moment frames")
        return [np.load(self._path(v)).astype(np.float32) for v in video_ids]

    def __contains__(self, video_id: object) -> bool:
        return isinstance(video_id, (int, np.integer)) and self._path(int(video_id)).is_file()

    def record(self) -> dict[str, Any]:
        """What the manifest's ``moment_frames`` holds: folder, width, resolution, dtype, videos and bytes."""
        files = list(self.directory.glob("*.npy"))
        return {"dir": MOMENT_FRAMES_DIR, "dim": self.dim, "max_frames": self.max_frames, "dtype": _DTYPE,
                "videos": len(files), "bytes": int(sum(f.stat().st_size for f in files))}
