"""The query-bank term stored with each video (hubness correction, issue 20): ``s'(q, v) = s(q, v) - a * t(v)``.

Shape letters: V videos, Nb bank queries, D hidden.

``t(v) = mean top-k s(bank, v)`` (``prvr.zero_shot.bank_term``) depends on the video only, so the builder computes it
once per video at index time and writes it, with the encoded bank (so that ``prvr index add`` gives new videos the
term of the same bank), to ``bank_term.npz`` in the generation directory; the manifest's ``query_bank`` records the
file, its sha256, ``k``, ``alpha`` and where the bank came from. Search subtracts ``a * t(v)`` in the exact re-rank
and lowers the candidates' bound by ``a * min_v t(v)`` (docs/design.md §3.11).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from prvr.fileio import atomic_path, file_sha256

__all__ = ["BANK_FILE", "VideoTerm", "load_bank", "video_term", "write_bank"]

BANK_FILE = "bank_term.npz"


@dataclass(frozen=True, eq=False)
class VideoTerm:
    """The per-video offset subtracted from every exact score: ``alpha * t(v)``.

    Attributes:
        video_ids: (V,) int64 internal ids, sorted, unique.
        values: (V,) float32 offsets ``alpha * t(v)``, aligned with ``video_ids``.
    """

    video_ids: np.ndarray
    values: np.ndarray

    @property
    def lowest(self) -> float:
        """The smallest offset: what a video outside the candidates loses at least (the bound's shift)."""
        return float(self.values.min()) if self.values.size else 0.0

    def of(self, video_ids: np.ndarray) -> np.ndarray:
        """(N,) offsets of the given ids.

        Raises:
            ValueError: on an id without a stored term.
        """
        ids = np.asarray(video_ids, dtype=np.int64)
        positions = np.minimum(np.searchsorted(self.video_ids, ids), max(self.video_ids.size - 1, 0))
        if self.video_ids.size == 0 or not np.array_equal(self.video_ids[positions], ids):
            missing = ids[self.video_ids[positions] != ids] if self.video_ids.size else ids
            raise ValueError(f"videos {missing[:5].tolist()} have no query-bank term; rebuild the index")
        return self.values[positions]


def write_bank(gen_dir: Path, video_ids: np.ndarray, terms: np.ndarray, bank: np.ndarray, *, k: int, alpha: float,
               source: str) -> dict[str, Any]:
    """Write ``bank_term.npz`` (ids, terms, bank vectors) crash-safely; return the manifest's ``query_bank`` record."""
    ids = np.asarray(video_ids, dtype=np.int64)
    order = np.argsort(ids, kind="stable")
    buffer = io.BytesIO()
    np.savez(buffer, video_ids=ids[order], terms=np.asarray(terms, dtype=np.float32)[order],
             bank=np.asarray(bank, dtype=np.float32))
    path = Path(gen_dir) / BANK_FILE
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getvalue())
    return {"file": BANK_FILE, "sha256": file_sha256(path), "k": int(k), "alpha": float(alpha), "source": source,
            "videos": int(ids.size), "bank_queries": int(np.asarray(bank).shape[0])}


def load_bank(gen_dir: Path, record: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(video_ids (V,), terms (V,), bank (Nb, D))`` of a generation's ``query_bank`` record.

    Raises:
        FileNotFoundError / ValueError: when the file is missing or not the one recorded.
    """
    path = Path(gen_dir) / record["file"]
    if not path.is_file():
        raise FileNotFoundError(f"{path} (the manifest's query_bank) does not exist; rebuild the index")
    if file_sha256(path) != record["sha256"]:
        raise ValueError(f"{path} is not the query-bank file the manifest records (sha256 differs); rebuild the index")
    with np.load(path) as data:
        return data["video_ids"], data["terms"], data["bank"]


def video_term(gen_dir: Path, record: dict[str, Any]) -> VideoTerm:
    """The :class:`VideoTerm` a generation's ``query_bank`` record describes (``alpha * t``)."""
    ids, terms, _ = load_bank(gen_dir, record)
    return VideoTerm(ids, (float(record["alpha"]) * terms).astype(np.float32))
