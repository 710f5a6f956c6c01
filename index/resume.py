"""Resumable index builds: snapshots of a building generation, and picking the generation up after a kill.

A FAISS build of a large corpus (1M videos: hours on a laptop) that is killed would otherwise start over. While it
adds videos, the builder takes a snapshot every ``checkpoint_every`` videos (and once after training the IVF / PQ
quantisers): the token store's appends are committed, the writable FAISS index is saved into a fresh
``snapshot-NNNNNN/`` directory of the generation, the query-bank terms so far beside it, and only then ``resume.json``
is replaced atomically to name that snapshot, the store's committed entry count at that point and the build's
identity (its *key*: checkpoint, data source, the ordered video ids, the previous generation, the index and store
settings). Older snapshots are deleted after the switch, so a kill at any point leaves ``resume.json`` naming a
complete snapshot, or no ``resume.json`` at all.

The next build of the same index with the same key takes the generation over: it loads the snapshot's FAISS index,
truncates the token store back to the recorded entry count (appends after the snapshot are redone) and adds the
videos the snapshot does not hold, in the same order, so the result is the one an uninterrupted build writes. A build
with another key abandons the stale generation as before. Snapshots are removed before the generation is committed,
so a finished generation holds exactly the files of an uninterrupted one. Milvus builds are not resumed (the engine's
collections would need the same rollback): they start over.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from prvr.fileio import fsync_directory, write_json_atomic
from prvr.index.faiss_store import FaissTokenIndex

__all__ = ["RESUME_NAME", "ResumePoint", "clear_snapshots", "ids_digest", "read_resume_point", "write_snapshot"]

logger = logging.getLogger(__name__)

RESUME_NAME = "resume.json"
SNAPSHOT_PREFIX = "snapshot-"
BANK_NAME = "bank_terms.npz"
FORMAT_VERSION = 1


def ids_digest(ids: Sequence[str]) -> str:
    """sha256 of an ordered list of external video ids (the order is part of a build's identity)."""
    digest = hashlib.sha256()
    for vid in ids:
        digest.update(vid.encode("utf-8", "surrogatepass") + b"\0")
    return digest.hexdigest()


@dataclass(frozen=True)
class ResumePoint:
    """The last complete snapshot of a building generation.

    Attributes:
        snapshot: the snapshot directory (a saved writable :class:`FaissTokenIndex`).
        store_entries: committed token-store entries when it was taken (:meth:`TokenStore.truncate` to this).
        new_videos: videos of this build added by then.
        new_clip_tokens / new_frame_tokens: tokens of those videos.
        bank_ids / bank_terms: the query-bank terms of the generation's videos so far (empty without a bank).
    """

    snapshot: Path
    store_entries: int
    new_videos: int
    new_clip_tokens: int
    new_frame_tokens: int
    bank_ids: np.ndarray
    bank_terms: np.ndarray

    def load_index(self) -> FaissTokenIndex:
        """The snapshot's FAISS index, writable, with its search parameters."""
        return FaissTokenIndex.load(self.snapshot, mmap=False, use_gpu=False)


def read_resume_point(gen_dir: Path, key: dict[str, Any]) -> ResumePoint | None:
    """The resume point of ``gen_dir`` when its recorded key equals ``key`` and its snapshot is intact, else None."""
    path = gen_dir / RESUME_NAME
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("format_version") != FORMAT_VERSION:
        return None
    if record.get("key") != _normalised(key):
        logger.info("%s was started by another build (different corpus or settings): not resumed", gen_dir.name)
        return None
    snapshot = gen_dir / str(record.get("snapshot", ""))
    bank_ids = np.zeros(0, dtype=np.int64)
    bank_terms = np.zeros(0, dtype=np.float32)
    try:
        FaissTokenIndex.load(snapshot, mmap=True, verify=True, use_gpu=False)  # complete and matching its sidecar
        if (snapshot / BANK_NAME).is_file():
            with np.load(snapshot / BANK_NAME, allow_pickle=False) as arrays:
                bank_ids, bank_terms = arrays["ids"], arrays["terms"]
    except (OSError, ValueError, KeyError) as error:
        logger.warning("the snapshot of %s is unreadable (%s): not resumed", gen_dir.name, error)
        return None
    counts = record["counts"]
    return ResumePoint(snapshot, int(record["store_entries"]), int(counts["new_videos"]),
                       int(counts["new_clip_tokens"]), int(counts["new_frame_tokens"]), bank_ids, bank_terms)


def write_snapshot(gen_dir: Path, key: dict[str, Any], index: FaissTokenIndex, *, store_entries: int,
                   counts: dict[str, int], bank: tuple[np.ndarray, np.ndarray] | None) -> None:
    """Save ``index`` as the generation's new resume point (call after committing the token store's appends).

    Args:
        gen_dir: the building generation's directory.
        key: the build's identity (:func:`read_resume_point` resumes only an equal key).
        index: the writable FAISS index holding exactly the videos of the committed store entries.
        store_entries: the token store's committed entry count (``TokenStore.num_entries``).
        counts: ``new_videos``, ``new_clip_tokens``, ``new_frame_tokens`` of the build so far.
        bank: (ids, terms) of the query-bank terms so far, or None without a bank.
    """
    previous = _snapshots(gen_dir)
    number = 1 + max((int(path.name[len(SNAPSHOT_PREFIX):]) for path in previous), default=0)
    final = gen_dir / f"{SNAPSHOT_PREFIX}{number:06d}"
    staging = gen_dir / f".{final.name}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    index.save(staging)
    if bank is not None:
        with open(staging / BANK_NAME, "wb") as handle:
            np.savez(handle, ids=np.asarray(bank[0], dtype=np.int64), terms=np.asarray(bank[1], dtype=np.float32))
    fsync_directory(staging)
    staging.rename(final)
    fsync_directory(gen_dir)
    write_json_atomic(gen_dir / RESUME_NAME, {"format_version": FORMAT_VERSION, "key": _normalised(key),
                                              "snapshot": final.name, "store_entries": int(store_entries),
                                              "counts": {name: int(value) for name, value in counts.items()}})
    for path in previous:
        shutil.rmtree(path, ignore_errors=True)
    logger.info("snapshot %s of %s: %d new videos so far", final.name, gen_dir.name, counts["new_videos"])


def clear_snapshots(gen_dir: Path) -> None:
    """Remove the resume point and every snapshot (before the generation is committed)."""
    (gen_dir / RESUME_NAME).unlink(missing_ok=True)
    for path in [*_snapshots(gen_dir), *gen_dir.glob(f".{SNAPSHOT_PREFIX}*.tmp")]:
        shutil.rmtree(path, ignore_errors=True)
    fsync_directory(gen_dir)


def _snapshots(gen_dir: Path) -> list[Path]:
    return sorted(path for path in gen_dir.glob(f"{SNAPSHOT_PREFIX}*")
                  if path.is_dir() and path.name[len(SNAPSHOT_PREFIX):].isdigit())


def _normalised(key: dict[str, Any]) -> Any:
    """The key as JSON reads it back (tuples become lists), so a stored key compares equal to a fresh one."""
    return json.loads(json.dumps(key, sort_keys=True))
