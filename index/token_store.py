"""Append-only token store (bfloat16 by default; float32, or a compressed encoding of ``index.token_codec`` on
request): one contiguous (C + F_valid, D) block per video, memory-mapped for re-ranking.

Shape letters: B videos, C clip tokens, F frame tokens, D hidden.

Layout of a store directory::

    shard-G-NNNNN.bin   raw little-endian rows of D values: uint16 bit patterns of torch.bfloat16 tokens, or
                        float32 values for a store created with ``dtype="float32"`` (exact scores, twice the bytes);
                        or, for a compressed store (``dtype="pq32"``, ``"sq8"``, ...), rows of ``code_size`` bytes
    codebook.npy        the trained codebook of a ``pqM`` store, the basis of a ``pcaK`` store (written once by
                        :meth:`TokenStore.train`, before any row; copies of the store, i.e. later index
                        generations, keep and reuse it)
    store.npz           the index: per video (id, shard, first row, clip count, frame count, removed) and, per
                        shard, its file name and committed row count; plus a JSON meta (dim, dtype, normalised; for a
                        compressed store the codec parameters, the codebook's sha256 and the largest decode error)

Crash safety: shard bytes are written and fsynced *before* the index is replaced (temp file + fsync + rename +
directory fsync). A reader trusts only the committed row counts of the index, so bytes a crashed writer left past
them are ignored, and the next append truncates them. Deleting marks a tombstone; :meth:`TokenStore.compact` rewrites
the live blocks into a new shard generation. Writers take an ``fcntl`` lock and re-read the index first, so several
writer processes stay consistent; readers call :meth:`TokenStore.refresh` to see later appends.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from prvr.fileio import atomic_path, exclusive_lock, file_sha256, fsync_directory
from prvr.index.token_codec import CODEC_NAMES_HELP, TokenCodec, is_codec_name, make_codec
from prvr.types import VideoTokens

__all__ = ["TokenStore"]

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
INDEX_NAME = "store.npz"
LOCK_NAME = ".lock"
BYTES_PER_VALUE = 2  # bfloat16 (the default storage)
STORAGE = {"bfloat16": (np.uint16, 2), "float32": (np.float32, 4)}  # dtype name -> (numpy storage type, bytes)
DEFAULT_SHARD_MAX_BYTES = 1 << 30
CODEBOOK_NAME = "codebook.npy"
BF16_TOKEN_ERROR = 2.0**-8  # |bf16(t) - t| <= 2^-9 |t| per coordinate, so <= 2^-9 for a unit token; doubled for margin


def _check_dtype(dtype: str, dim: int | None) -> None:
    if dtype in STORAGE:
        return
    if not is_codec_name(dtype):
        raise ValueError(f"unknown token store dtype {dtype!r}; use {CODEC_NAMES_HELP}")
    if dim is not None:
        make_codec(dtype, int(dim))  # raises when the encoding does not fit D


def _to_float32_tensor(x: Any) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach().to(device="cpu", dtype=torch.float32)
    return torch.as_tensor(np.asarray(x, dtype=np.float32))


def _bf16_bits(x: torch.Tensor) -> np.ndarray:
    """uint16 bit patterns of ``x`` rounded to bfloat16 (round to nearest even)."""
    return x.to(torch.bfloat16).contiguous().view(torch.int16).numpy().view(np.uint16)


def _expand_ranges(starts: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For ranges ``[start, start + count)``: (flat values, owning range, position inside the range)."""
    total = int(counts.sum())
    owner = np.repeat(np.arange(counts.shape[0]), counts)  # (total,)
    first = np.cumsum(counts) - counts  # (R,)
    inside = np.arange(total) - first[owner]  # (total,)
    return starts[owner] + inside, owner, inside


@dataclass
class _Bulk:
    """Appends of one :meth:`TokenStore.bulk` block written since its last commit (not in the index yet)."""

    names: list[str]  # shard names and written row counts including these appends
    rows: list[int]
    dirty: set[str] = field(default_factory=set)  # shards written (to fsync at the commit)
    pending_ids: set[int] = field(default_factory=set)
    ids: list[np.ndarray] = field(default_factory=list)
    shard: list[np.ndarray] = field(default_factory=list)
    row: list[np.ndarray] = field(default_factory=list)
    n_clip: list[np.ndarray] = field(default_factory=list)
    n_frame: list[np.ndarray] = field(default_factory=list)


class TokenStore:
    """Per-video clip and valid-frame tokens in bfloat16 (or float32) shard files, memory-mapped.

    Args:
        directory: the store directory (created with an empty index when it holds none).
        dim: D; required to create a store, checked against the stored value when opening one.
        normalize: L2-normalise tokens before rounding to bf16 (then a dot product is the cosine). Only used when
            creating; an existing store keeps its setting.
        dtype: storage precision when creating: ``"bfloat16"`` (half the bytes and bandwidth; scores within ~2^-9),
            ``"float32"`` (scores equal the model's up to float32 rounding), or a compressed encoding of
            :mod:`index.token_codec`: ``"pqM"`` (M bytes per token) or ``"pcaK"`` (K + 4; both: call :meth:`train`
            before the first append),
            ``"sq8"`` / ``"sq4"`` (D + 4 / D / 2 + 4 bytes). An existing store keeps its own.
        codec_seed: k-means seed of a ``pqM`` codebook (training is deterministic given the sample and the seed).
        shard_max_bytes: start a new shard file once the current one would exceed this (a video never spans shards).
        read_only: refuse writes (for query servers).
    """

    def __init__(
        self,
        directory: str | Path,
        dim: int | None = None,
        *,
        normalize: bool = True,
        dtype: str = "bfloat16",
        shard_max_bytes: int = DEFAULT_SHARD_MAX_BYTES,
        read_only: bool = False,
        codec_seed: int = 0,
    ) -> None:
        self.directory = Path(directory)
        self.read_only = bool(read_only)
        self._bulk: _Bulk | None = None
        _check_dtype(dtype, dim)
        if shard_max_bytes < 1:
            raise ValueError(f"shard_max_bytes must be positive, got {shard_max_bytes}")
        self.shard_max_bytes = int(shard_max_bytes)
        index_path = self.directory / INDEX_NAME
        if not index_path.is_file():
            if read_only:
                raise FileNotFoundError(f"{index_path} not found: {self.directory} is not a token store")
            if dim is None or int(dim) < 1:
                raise ValueError(f"creating a token store in {self.directory} needs a positive dim, got {dim}")
            self.directory.mkdir(parents=True, exist_ok=True)
            with self._lock():
                if not index_path.is_file():
                    state = self._empty_state(int(dim), bool(normalize), dtype)
                    if is_codec_name(dtype):
                        codec = make_codec(dtype, int(dim), seed=codec_seed)
                        state["meta"].update(codec=codec.params(), codebook=None, max_error=0.0)
                    self._set_state(state)
                    self._write_index()
        self.refresh()
        if dim is not None and int(dim) != self.dim:
            raise ValueError(f"{self.directory} stores D = {self.dim} tokens, opened with dim = {dim}")

    # ----------------------------------------------------------------------------------------------- state I/O

    @staticmethod
    def _empty_state(dim: int, normalize: bool, dtype: str = "bfloat16") -> dict[str, Any]:
        _check_dtype(dtype, dim)
        return {
            "meta": {"format_version": FORMAT_VERSION, "dim": dim, "dtype": dtype, "normalized": normalize,
                     "generation": 0},
            "video_ids": np.zeros(0, dtype=np.int64),
            "shard": np.zeros(0, dtype=np.int32),
            "row": np.zeros(0, dtype=np.int64),
            "n_clip": np.zeros(0, dtype=np.int32),
            "n_frame": np.zeros(0, dtype=np.int32),
            "removed": np.zeros(0, dtype=bool),
            "shard_names": np.zeros(0, dtype="<U64"),
            "shard_rows": np.zeros(0, dtype=np.int64),
        }

    def _read_index(self) -> dict[str, Any]:
        path = self.directory / INDEX_NAME
        fix = "restore the store from a backup or rebuild it from the embeddings"
        try:
            with np.load(path, allow_pickle=False) as arrays:
                state = {key: arrays[key] for key in arrays.files}
            state["meta"] = json.loads(str(state["meta"]))
            for key in ("video_ids", "shard", "row", "n_clip", "n_frame", "removed", "shard_names", "shard_rows"):
                if key not in state:
                    raise KeyError(key)
        except FileNotFoundError:
            raise
        except (ValueError, KeyError, OSError, zipfile.BadZipFile) as error:
            raise ValueError(f"{path} is corrupted ({error!r}); {fix}") from error
        if int(state["meta"].get("format_version", -1)) != FORMAT_VERSION:
            raise ValueError(f"{path} has an unknown format_version {state['meta'].get('format_version')}; {fix}")
        return state

    def _set_state(self, state: dict[str, Any]) -> None:
        self._meta: dict[str, Any] = state["meta"]
        self._ids: np.ndarray = state["video_ids"].astype(np.int64)
        self._shard: np.ndarray = state["shard"].astype(np.int32)
        self._row: np.ndarray = state["row"].astype(np.int64)
        self._n_clip: np.ndarray = state["n_clip"].astype(np.int32)
        self._n_frame: np.ndarray = state["n_frame"].astype(np.int32)
        self._removed: np.ndarray = state["removed"].astype(bool)
        self._shard_names: list[str] = [str(name) for name in state["shard_names"]]
        self._shard_rows: np.ndarray = state["shard_rows"].astype(np.int64)
        live = np.flatnonzero(~self._removed)
        order = np.argsort(self._ids[live], kind="stable")
        self._live_entries = live[order]  # entry numbers sorted by video id
        self._live_ids = self._ids[self._live_entries]

    def _write_index(self) -> None:
        """Atomically replace the index file with the in-memory state (call after the shard data is fsynced)."""
        with atomic_path(self.directory / INDEX_NAME) as temp, open(temp, "wb") as handle:
            np.savez(
                handle,
                meta=np.array(json.dumps(self._meta, sort_keys=True)),
                video_ids=self._ids,
                shard=self._shard,
                row=self._row,
                n_clip=self._n_clip,
                n_frame=self._n_frame,
                removed=self._removed,
                shard_names=np.array(self._shard_names, dtype="<U64"),
                shard_rows=self._shard_rows,
            )

    def refresh(self) -> None:
        """Re-read the index and re-map the shards (a reader's way to see later appends / removals)."""
        self._set_state(self._read_index())
        self._codec = self._load_codec()
        self._maps: list[np.memmap | None] = []
        for name, rows in zip(self._shard_names, self._shard_rows):
            path = self.directory / name
            needed = int(rows) * self._row_bytes
            size = path.stat().st_size if path.is_file() else -1
            if size < needed:
                raise ValueError(
                    f"{path} holds {max(size, 0)} bytes but the index commits {needed}: the shard is missing or "
                    "truncated; restore it from a backup or rebuild the store"
                )
            # copy-on-write mapping: reads share the page cache, and the array is writable for torch.from_numpy
            # (a stray write stays private to this process instead of corrupting the shard)
            shape = (int(rows), self._row_width)
            mapped = np.memmap(path, dtype=self._storage_type, mode="c", shape=shape) if rows else None
            self._maps.append(mapped)
        self._views: dict[int, torch.Tensor] = {}

    def _load_codec(self) -> TokenCodec | None:
        """The codec of a compressed store (with its codebook, once trained), None for bfloat16 / float32."""
        if not is_codec_name(self.dtype):
            return None
        params = self._meta.get("codec") or {}
        codec = make_codec(self.dtype, self.dim, seed=int(params.get("seed", 0)))
        codebook = self._meta.get("codebook")
        if codebook is not None:
            path = self.directory / str(codebook["file"])
            fix = "restore it from a backup or rebuild the store"
            if not path.is_file():
                raise ValueError(f"{path} (the {self.dtype} codebook) is missing; {fix}")
            if file_sha256(path) != codebook["sha256"]:
                raise ValueError(f"{path} does not match the sha256 recorded in {INDEX_NAME}; {fix}")
            codec.load_state(path)
        return codec

    def _lock(self) -> contextlib.AbstractContextManager[None]:
        return exclusive_lock(self.directory / LOCK_NAME, wait=True)

    def _check_writable(self, action: str) -> None:
        if self.read_only:
            raise RuntimeError(f"cannot {action}: the token store was opened read_only=True; reopen it writable")

    def _check_not_bulk(self, action: str) -> None:
        if self._bulk is not None:
            raise RuntimeError(f"cannot {action} inside a bulk() block: leave it first (only appends are batched)")

    # -------------------------------------------------------------------------------------------------- queries

    @property
    def dim(self) -> int:
        return int(self._meta["dim"])

    @property
    def dtype(self) -> str:
        """Storage dtype name: ``"bfloat16"`` (default) or ``"float32"``."""
        return str(self._meta.get("dtype", "bfloat16"))

    @property
    def _storage_type(self) -> type:
        return np.uint8 if self._codec is not None else STORAGE[self.dtype][0]

    @property
    def _row_width(self) -> int:
        """Stored values per token row: D, or the codec's code size in bytes."""
        return self._codec.code_size if self._codec is not None else self.dim

    @property
    def _row_bytes(self) -> int:
        return self._row_width * (1 if self._codec is not None else STORAGE[self.dtype][1])

    @property
    def codec(self) -> TokenCodec | None:
        """The compressed encoding (``pqM`` / ``pcaK`` / ``sq8`` / ``sq4``), or None for a bfloat16 / float32 store."""
        return self._codec

    @property
    def bytes_per_token(self) -> int:
        """Shard bytes per stored token row."""
        return self._row_bytes

    @property
    def token_error(self) -> float:
        """Upper bound of ``||stored token - written unit token||`` over every token written so far.

        The score of a unit query against a stored token is within this of the exact cosine (Cauchy-Schwarz), so a
        video score ``w_c max clip + w_f max frame`` is within ``(|w_c| + |w_f|) * token_error``. Measured at append
        time for compressed stores; ``2^-8`` for bfloat16 and 0 for float32.
        """
        if self._codec is not None:
            return float(self._meta.get("max_error", 0.0))
        return BF16_TOKEN_ERROR if self.dtype == "bfloat16" else 0.0

    def codec_record(self) -> dict[str, Any]:
        """What the index manifest records of the encoding: dtype, codec parameters, codebook file and sha256."""
        record: dict[str, Any] = {"dtype": self.dtype, "bytes_per_token": self.bytes_per_token,
                                  "token_error": self.token_error}
        if self._codec is not None:
            record["codec"] = dict(self._meta["codec"])
            record["codebook"] = dict(self._meta["codebook"]) if self._meta.get("codebook") else None
        return record

    @property
    def normalized(self) -> bool:
        """True when tokens were L2-normalised before storage (dot product = cosine up to bf16 rounding)."""
        return bool(self._meta["normalized"])

    @property
    def video_ids(self) -> np.ndarray:
        """(N,) int64 live video ids, sorted."""
        return self._live_ids.copy()

    @property
    def nbytes(self) -> int:
        """Committed shard bytes (tombstoned blocks count until :meth:`compact`)."""
        return int(self._shard_rows.sum()) * self._row_bytes

    def __len__(self) -> int:
        return int(self._live_ids.shape[0])

    def __contains__(self, video_id: object) -> bool:
        if not isinstance(video_id, (int, np.integer)):
            return False
        position = int(np.searchsorted(self._live_ids, video_id))
        return position < len(self._live_ids) and int(self._live_ids[position]) == int(video_id)

    def _entries(self, video_ids: np.ndarray) -> np.ndarray:
        if len(self._live_ids) == 0:
            clipped = np.zeros(video_ids.shape, dtype=np.int64)
            found = np.zeros(video_ids.shape, dtype=bool)
        else:
            clipped = np.minimum(np.searchsorted(self._live_ids, video_ids), len(self._live_ids) - 1)
            found = self._live_ids[clipped] == video_ids
        if not found.all():
            raise ValueError(
                f"videos {video_ids[~found][:10].tolist()} are not in the token store {self.directory} (never "
                "appended or removed); call refresh() if another process appended them"
            )
        return self._live_entries[clipped]

    def locate(self, video_ids: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Where each video's block lies: ``(shard, first_row, n_clip, n_frame)``, four (B,) arrays.

        The block of a video is rows ``first_row : first_row + n_clip + n_frame`` of :meth:`shard_tensor` ``(shard)``:
        its clip tokens, then its valid frame tokens. Raises ValueError on ids that are not stored.
        """
        ids = np.asarray(video_ids, dtype=np.int64).reshape(-1)
        entries = self._entries(ids)
        return self._shard[entries], self._row[entries], self._n_clip[entries], self._n_frame[entries]

    def shard_tensor(self, shard: int) -> torch.Tensor:
        """Zero-copy (rows, D) view of a shard's committed rows, in the storage dtype (bfloat16 or float32;
        memory-mapped; treat it as read-only); (rows, code_size) uint8 codes for a compressed store."""
        view = self._views.get(int(shard))
        if view is None:
            mapped = self._maps[int(shard)]
            if mapped is None:
                raise ValueError(f"shard {shard} of {self.directory} holds no rows")
            if self._codec is not None:
                view = torch.from_numpy(mapped)  # (rows, code_size) uint8 codes
            elif self.dtype == "float32":
                view = torch.from_numpy(mapped)  # (rows, D)
            else:
                view = torch.from_numpy(mapped.view(np.int16)).view(torch.bfloat16)  # (rows, D)
            self._views[int(shard)] = view
        return view

    def get(self, video_ids: Any, *, dtype: torch.dtype = torch.float32) -> VideoTokens:
        """Gather the tokens of B videos (duplicates allowed), frames zero-padded to the longest.

        Args:
            video_ids: (B,) int ids of stored videos.
            dtype: ``torch.float32`` (default) or ``torch.bfloat16`` to keep the stored precision (a compressed store
                returns its decoded tokens).

        Returns:
            VideoTokens on the CPU with clip (B, C, D), frame (B, F_max, D), frame_mask (B, F_max); valid frames first.
        """
        if dtype not in (torch.float32, torch.bfloat16):
            raise ValueError(f"dtype must be torch.float32 or torch.bfloat16, got {dtype}")
        ids = np.asarray(video_ids, dtype=np.int64).reshape(-1)
        if ids.size == 0:
            raise ValueError("get() needs at least one video id")
        entries = self._entries(ids)  # (B,)
        num_clips = self._n_clip[entries]
        if (num_clips != num_clips[0]).any():
            raise ValueError(
                f"the requested videos have different clip-token counts {sorted(set(num_clips.tolist()))}; "
                "VideoTokens needs one C: request them in separate get() calls"
            )
        batch, clips, dim = ids.shape[0], int(num_clips[0]), self.dim
        frames = self._n_frame[entries]  # (B,)
        max_frames = int(frames.max())
        width = self._row_width
        clip_bits = np.empty((batch, clips, width), dtype=self._storage_type)
        frame_bits = np.zeros((batch, max_frames, width), dtype=self._storage_type)
        mask = np.zeros((batch, max_frames), dtype=bool)
        shards = self._shard[entries]
        for shard in np.unique(shards):
            mapped = self._maps[int(shard)]
            assert mapped is not None
            members = np.flatnonzero(shards == shard)  # positions in the batch
            starts = self._row[entries[members]]  # (b,)
            clip_rows = starts[:, None] + np.arange(clips)[None, :]  # (b, C)
            clip_bits[members] = mapped[clip_rows.reshape(-1)].reshape(len(members), clips, width)
            rows, owner, inside = _expand_ranges(starts + clips, frames[members])  # (T_f,) each
            frame_bits[members[owner], inside] = mapped[rows]
            mask[members[owner], inside] = True
        if self._codec is not None:
            clip = torch.from_numpy(self._codec.decode(clip_bits.reshape(-1, width))).view(batch, clips, dim)
            frame = torch.from_numpy(self._codec.decode(frame_bits.reshape(-1, width))).view(batch, max_frames, dim)
            frame = frame * torch.from_numpy(mask).unsqueeze(-1)  # padding decodes to a centroid: zero it
        elif self.dtype == "float32":
            clip, frame = torch.from_numpy(clip_bits), torch.from_numpy(frame_bits)  # (B, C, D), (B, F_max, D)
        else:
            clip = torch.from_numpy(clip_bits.view(np.int16)).view(torch.bfloat16)  # (B, C, D)
            frame = torch.from_numpy(frame_bits.view(np.int16)).view(torch.bfloat16)  # (B, F_max, D)
        return VideoTokens(clip.to(dtype), frame.to(dtype), torch.from_numpy(mask))

    def row_scores(self, shard: int, rows: slice | np.ndarray, query: np.ndarray) -> np.ndarray:
        """Products of some rows of a shard with (n, D) float32 queries, decoded on the fly: (R, n) float32.

        Args:
            shard: the shard number (from :meth:`locate`).
            rows: a slice or (R,) int array of row numbers inside the shard.
            query: (n, D) float32 queries, used as given (unit vectors give cosines on a normalised store).
        """
        mapped = self._maps[int(shard)]
        if mapped is None:
            raise ValueError(f"shard {shard} of {self.directory} holds no rows")
        rows = mapped[rows]
        q = np.ascontiguousarray(query, dtype=np.float32)
        if self._codec is not None:
            return self._codec.score(q, rows)
        if self.dtype == "float32":
            return np.asarray(rows) @ q.T
        return (rows.astype(np.uint32) << 16).view(np.float32) @ q.T  # bf16 bits -> float32, exactly

    def describe(self) -> dict[str, Any]:
        """JSON-serialisable summary: counts, bytes, shards."""
        return {
            "directory": str(self.directory),
            "dim": self.dim,
            "dtype": self._meta["dtype"],
            "normalized": self.normalized,
            "num_videos": len(self),
            "tombstones": int(self._removed.sum()),
            "nbytes": self.nbytes,
            "shards": list(self._shard_names),
            "generation": int(self._meta["generation"]),
            "bytes_per_token": self.bytes_per_token,
            "token_error": self.token_error,
            **({"codec": dict(self._meta["codec"])} if self._codec is not None else {}),
        }

    # --------------------------------------------------------------------------------------------------- writes

    def append(self, video_ids: Any, clip: Any, frame: Any, frame_mask: Any) -> None:
        """Store the clip tokens and valid frame tokens of V new videos.

        Args:
            video_ids: (V,) int ids, unique and not stored (removed ids may be stored again).
            clip: (V, C, D) clip tokens (numpy or torch, any float dtype).
            frame: (V, F, D) frame tokens, padded.
            frame_mask: (V, F) bool, True on real frames (at least one per video).
        """
        self._check_writable("append")
        ids = np.asarray(video_ids, dtype=np.int64).reshape(-1)
        clip_t = _to_float32_tensor(clip)
        frame_t = _to_float32_tensor(frame)
        if isinstance(frame_mask, torch.Tensor):
            mask_t = frame_mask.detach().cpu().bool()
        else:
            mask_t = torch.as_tensor(np.asarray(frame_mask, dtype=bool))
        num_videos = ids.shape[0]
        if clip_t.dim() != 3 or frame_t.dim() != 3 or mask_t.dim() != 2:
            raise ValueError(
                "expected clip (V, C, D), frame (V, F, D), frame_mask (V, F), got "
                f"{tuple(clip_t.shape)}, {tuple(frame_t.shape)}, {tuple(mask_t.shape)}"
            )
        if not (clip_t.shape[0] == frame_t.shape[0] == mask_t.shape[0] == num_videos):
            raise ValueError(
                f"{num_videos} ids but clip / frame / frame_mask have {clip_t.shape[0]} / {frame_t.shape[0]} / "
                f"{mask_t.shape[0]} rows"
            )
        if clip_t.shape[2] != self.dim or frame_t.shape[2] != self.dim:
            raise ValueError(f"token width must be D = {self.dim}, got {clip_t.shape[2]} and {frame_t.shape[2]}")
        if mask_t.shape[1] != frame_t.shape[1] or clip_t.shape[1] < 1:
            raise ValueError(f"need C >= 1 and frame_mask (V, F) matching frame, got {tuple(mask_t.shape)}")
        if num_videos == 0:
            return
        if not bool(mask_t.any(dim=1).all()):
            bad = ids[~mask_t.any(dim=1).numpy()][:10].tolist()
            raise ValueError(f"videos {bad} have no valid frame; every video needs at least one True in frame_mask")
        if np.unique(ids).shape[0] != num_videos:
            raise ValueError("video_ids contains duplicates; each video is appended once")
        if not (torch.isfinite(clip_t).all() and torch.isfinite(frame_t[mask_t]).all()):
            raise ValueError("tokens contain NaN or inf; fix the encoder output before storing")
        if self.normalized:
            clip_t = F.normalize(clip_t, dim=-1)
            frame_t = F.normalize(frame_t, dim=-1)
        mask = mask_t.numpy()
        max_error = 0.0
        if self._codec is not None:
            if self._codec.needs_training:
                raise RuntimeError(f"the {self.dtype} token store {self.directory} has no codebook yet: call train() "
                                   "on a sample of tokens before the first append")
            clip_bits, clip_error = self._encode(clip_t.contiguous().numpy())  # (V, C, code_size)
            frame_bits, frame_error = self._encode(frame_t.contiguous().numpy())  # (V, F, code_size)
            max_error = max(float(clip_error.max()), float(frame_error[mask].max()))
        elif self.dtype == "float32":
            clip_bits, frame_bits = clip_t.contiguous().numpy(), frame_t.contiguous().numpy()  # (V, C, D), (V, F, D)
        else:
            clip_bits = _bf16_bits(clip_t)  # (V, C, D)
            frame_bits = _bf16_bits(frame_t)  # (V, F, D)
        frame_counts = mask.sum(axis=1).astype(np.int32)  # (V,)
        blocks = [np.concatenate([clip_bits[v], frame_bits[v][mask[v]]], axis=0) for v in range(num_videos)]

        clip_counts = np.full(num_videos, clip_bits.shape[1], dtype=np.int32)
        if self._bulk is not None:  # inside bulk(): we hold the lock; the index is written by commit()
            self._check_new(ids)
            if self._codec is not None:
                self._meta["max_error"] = max(float(self._meta.get("max_error", 0.0)), max_error)
            self._write_blocks(ids, blocks, clip_counts, frame_counts, fsync=False)
            self._bulk.pending_ids.update(ids.tolist())
            return
        with self._lock():
            self.refresh()  # another writer may have committed since we opened
            self._check_new(ids)
            if self._codec is not None:
                self._meta["max_error"] = max(float(self._meta.get("max_error", 0.0)), max_error)
            self._commit_blocks(ids, blocks, clip_counts, frame_counts)
        self.refresh()

    def _check_new(self, ids: np.ndarray) -> None:
        """Refuse ids that are stored (live) or appended in the current bulk block; O(B log N)."""
        present = [int(vid) for vid in ids if vid in self]
        if self._bulk is not None:
            present += [int(vid) for vid in ids if int(vid) in self._bulk.pending_ids]
        if present:
            raise ValueError(f"videos {present[:10]} are already stored; remove() them first")

    @contextlib.contextmanager
    def bulk(self) -> Iterator[None]:
        """Hold the writer lock for many appends and commit the index once (and at each :meth:`commit`).

        A plain :meth:`append` re-reads and rewrites the whole index (O(N) per call, so a build of N videos in small
        batches costs O(N^2): ~0.4 s per append at 200k videos). Inside this block an append only writes its shard
        bytes; :meth:`commit` (called on a normal exit too) fsyncs them and commits the index. An exception, or a
        crash, leaves the appends since the last commit uncommitted: readers never see them and the next append
        overwrites their bytes, exactly as for a crashed plain append.
        """
        self._check_writable("append")
        if self._bulk is not None:
            raise RuntimeError("bulk() blocks do not nest")
        with self._lock():
            self.refresh()
            self._bulk = _Bulk(names=list(self._shard_names), rows=[int(r) for r in self._shard_rows])
            try:
                yield
                self.commit()
            finally:
                self._bulk = None
        self.refresh()

    def commit(self) -> None:
        """Inside :meth:`bulk`: fsync the shard bytes appended since the last commit, then commit the index.

        A no-op outside a bulk block (plain appends commit themselves).
        """
        bulk = self._bulk
        if bulk is None or not bulk.ids:
            return
        for name in sorted(bulk.dirty):
            with open(self.directory / name, "r+b") as handle:
                os.fsync(handle.fileno())
        fsync_directory(self.directory)
        self._append_entries(np.concatenate(bulk.ids), np.concatenate(bulk.shard), np.concatenate(bulk.row),
                             np.concatenate(bulk.n_clip), np.concatenate(bulk.n_frame), bulk.names, bulk.rows)
        self._write_index()
        self.refresh()
        self._bulk = _Bulk(names=list(self._shard_names), rows=[int(r) for r in self._shard_rows])

    @property
    def num_entries(self) -> int:
        """Committed entries in append order, tombstoned ones included (what :meth:`truncate` counts)."""
        return int(self._ids.shape[0])

    def truncate(self, num_entries: int) -> None:
        """Forget every entry after the first ``num_entries`` (in append order) and their shard rows.

        The undo of appends committed after a known point: a resumed index build rolls its store back to the point
        its last FAISS snapshot was taken at, so the two hold the same videos. Entries are appended in order and
        never moved (except by :meth:`compact`), so the kept ones are exactly the store as it was then.
        """
        self._check_writable("truncate")
        self._check_not_bulk("truncate")
        with self._lock():
            self.refresh()
            if not 0 <= num_entries <= self.num_entries:
                raise ValueError(f"cannot truncate {self.directory} to {num_entries} entries: it holds "
                                 f"{self.num_entries}")
            if num_entries == self.num_entries:
                return
            keep = slice(0, num_entries)
            ends = np.zeros(len(self._shard_names), dtype=np.int64)  # committed rows each shard keeps
            if num_entries:
                np.maximum.at(ends, self._shard[keep], self._row[keep] + self._n_clip[keep] + self._n_frame[keep])
            used = int(self._shard[keep].max()) + 1 if num_entries else 0
            state = {"meta": self._meta, "video_ids": self._ids[keep], "shard": self._shard[keep],
                     "row": self._row[keep], "n_clip": self._n_clip[keep], "n_frame": self._n_frame[keep],
                     "removed": self._removed[keep], "shard_names": np.array(self._shard_names[:used], dtype="<U64"),
                     "shard_rows": ends[:used]}
            self._set_state(state)
            self._write_index()
        self.refresh()

    def _encode(self, tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(V, T, D) float32 -> codes (V, T, code_size) and each token's decode error ||t - decode(code)|| (V, T)."""
        assert self._codec is not None
        flat = tokens.reshape(-1, self.dim)  # (V*T, D)
        codes = self._codec.encode(flat)  # (V*T, code_size)
        error = np.linalg.norm(self._codec.decode(codes) - flat, axis=1)  # (V*T,)
        return codes.reshape(*tokens.shape[:2], -1), error.reshape(tokens.shape[:2])

    def train(self, clip: Any, frame: Any | None = None, frame_mask: Any | None = None) -> None:
        """Train the codebook of an empty ``pqM`` / ``pcaK`` store on sample tokens and commit it (a no-op otherwise).

        Args:
            clip: (V, C, D) sample clip tokens, or (T, D) tokens.
            frame: optional (V, F, D) sample frame tokens.
            frame_mask: (V, F) bool, True on real frames (required with ``frame``).

        Raises:
            RuntimeError: when the store already has a codebook or holds tokens (codes of two codebooks cannot mix).
        """
        self._check_writable("train")
        self._check_not_bulk("train")
        if self._codec is None or not self._codec.needs_training:
            if self._codec is not None and self._meta.get("codebook") is not None:
                raise RuntimeError(f"{self.directory} already has a {self.dtype} codebook; a new one needs a new store")
            return
        sample = _to_float32_tensor(clip).reshape(-1, self.dim)
        if frame is not None:
            if frame_mask is None:
                raise ValueError("train(clip, frame) needs frame_mask too")
            mask = torch.as_tensor(np.asarray(frame_mask, dtype=bool))
            sample = torch.cat([sample, _to_float32_tensor(frame)[mask]])  # (T, D)
        if self.normalized:
            sample = F.normalize(sample, dim=-1)
        with self._lock():
            self.refresh()
            if len(self._ids):
                raise RuntimeError(f"{self.directory} already holds tokens; train a codebook before the first append")
            assert self._codec is not None
            self._codec.train(sample.contiguous().numpy())
            payload = self._codec.state_bytes()
            assert payload is not None
            with atomic_path(self.directory / CODEBOOK_NAME) as temp, open(temp, "wb") as handle:
                handle.write(payload)
            self._meta["codebook"] = {"file": CODEBOOK_NAME, "sha256": file_sha256(self.directory / CODEBOOK_NAME),
                                      "train_tokens": int(sample.shape[0])}
            self._write_index()
        self.refresh()
        logger.info("trained the %s codebook of %s on %d tokens", self.dtype, self.directory, sample.shape[0])

    def _write_blocks(
        self, ids: np.ndarray, blocks: list[np.ndarray], clip_counts: np.ndarray, frame_counts: np.ndarray, *,
        fsync: bool,
    ) -> tuple[np.ndarray, np.ndarray, list[str], list[int]]:
        """Write blocks after the written end of the last shard(s) (the committed end, or inside :meth:`bulk` the end
        of the appends so far); returns each block's (shard, first row) and the shard names / row counts after it."""
        row_bytes = self._row_bytes
        shard_of = np.empty(len(ids), dtype=np.int32)
        row_of = np.empty(len(ids), dtype=np.int64)
        pending: dict[int, list[np.ndarray]] = {}
        bulk = self._bulk
        names = list(bulk.names if bulk is not None else self._shard_names)
        shard_rows = list(bulk.rows if bulk is not None else (int(rows) for rows in self._shard_rows))
        written = list(shard_rows)  # where the valid bytes of each shard end before this write
        for position, block in enumerate(blocks):
            current = len(names) - 1
            full = current >= 0 and shard_rows[current] > 0 and (
                (shard_rows[current] + block.shape[0]) * row_bytes > self.shard_max_bytes
            )
            if current < 0 or full:
                names.append(f"shard-{int(self._meta['generation']):04d}-{len(names):05d}.bin")
                shard_rows.append(0)
                written.append(0)
                current += 1
            shard_of[position] = current
            row_of[position] = shard_rows[current]
            shard_rows[current] += block.shape[0]
            pending.setdefault(current, []).append(block)
        for shard, shard_blocks in pending.items():
            path = self.directory / names[shard]
            with open(path, "r+b" if path.exists() else "w+b") as handle:
                handle.truncate(written[shard] * row_bytes)  # drop bytes a crashed writer left past the valid end
                handle.seek(written[shard] * row_bytes)
                for block in shard_blocks:
                    handle.write(np.ascontiguousarray(block).tobytes())
                handle.flush()
                if fsync:
                    os.fsync(handle.fileno())
        if bulk is not None:
            bulk.names, bulk.rows = names, shard_rows
            bulk.dirty.update(names[shard] for shard in pending)
            bulk.ids.append(ids)
            bulk.shard.append(shard_of)
            bulk.row.append(row_of)
            bulk.n_clip.append(clip_counts.astype(np.int32))
            bulk.n_frame.append(frame_counts.astype(np.int32))
        return shard_of, row_of, names, shard_rows

    def _append_entries(self, ids: np.ndarray, shard_of: np.ndarray, row_of: np.ndarray, clip_counts: np.ndarray,
                        frame_counts: np.ndarray, names: list[str], shard_rows: list[int]) -> None:
        self._ids = np.concatenate([self._ids, ids])
        self._shard = np.concatenate([self._shard, shard_of])
        self._row = np.concatenate([self._row, row_of])
        self._n_clip = np.concatenate([self._n_clip, clip_counts.astype(np.int32)])
        self._n_frame = np.concatenate([self._n_frame, frame_counts.astype(np.int32)])
        self._removed = np.concatenate([self._removed, np.zeros(len(ids), dtype=bool)])
        self._shard_names = names
        self._shard_rows = np.asarray(shard_rows, dtype=np.int64)

    def _commit_blocks(
        self, ids: np.ndarray, blocks: list[np.ndarray], clip_counts: np.ndarray, frame_counts: np.ndarray
    ) -> None:
        """Write blocks after the committed end of the last shard(s), fsync, then commit the index."""
        shard_of, row_of, names, shard_rows = self._write_blocks(ids, blocks, clip_counts, frame_counts, fsync=True)
        fsync_directory(self.directory)
        self._append_entries(ids, shard_of, row_of, clip_counts, frame_counts, names, shard_rows)
        self._write_index()

    def remove(self, video_ids: Any) -> None:
        """Tombstone stored videos (their bytes stay until :meth:`compact`).

        Raises:
            ValueError: on ids that are not stored.
        """
        self._check_writable("remove")
        self._check_not_bulk("remove")
        ids = np.unique(np.asarray(video_ids, dtype=np.int64).reshape(-1))
        if ids.size == 0:
            return
        with self._lock():
            self.refresh()
            entries = self._entries(ids)
            self._removed[entries] = True
            self._write_index()
        self.refresh()

    def compact(self) -> None:
        """Rewrite the live blocks into a new shard generation and delete the old shard files.

        The new shards are fsynced before the index switches to them, so a crash leaves either the old or the new
        store readable (orphaned shard files of an interrupted compaction are deleted by the next one).
        """
        self._check_writable("compact")
        self._check_not_bulk("compact")
        with self._lock():
            self.refresh()
            live = np.sort(self._live_entries)  # keep the append order
            blocks = []
            for entry in live:
                rows = int(self._n_clip[entry] + self._n_frame[entry])
                mapped = self._maps[int(self._shard[entry])]
                assert mapped is not None
                blocks.append(np.asarray(mapped[self._row[entry] : self._row[entry] + rows]))
            generation = int(self._meta["generation"]) + 1
            state = self._empty_state(self.dim, self.normalized, self.dtype)
            for key in ("codec", "codebook", "max_error"):  # a compacted store keeps its codebook
                if key in self._meta:
                    state["meta"][key] = self._meta[key]
            state["meta"]["generation"] = generation
            ids, clips, frames = self._ids[live], self._n_clip[live], self._n_frame[live]
            self._set_state(state)
            self._maps = []
            for stale in self.directory.glob(f"shard-{generation:04d}-*.bin"):
                stale.unlink()  # left by an interrupted compaction
            self._commit_blocks(ids, blocks, clips, frames)  # one index write: old or new store, never a mix
            referenced = set(self._shard_names)
            for path in self.directory.glob("shard-*.bin"):
                if path.name not in referenced:
                    path.unlink()  # the old generation (and orphans of crashed writers)
            fsync_directory(self.directory)
        self.refresh()
        logger.info("compacted %s to generation %d (%d videos)", self.directory, generation, len(self))
