"""FAISS back-end of the token index: a clip-token index and a frame-token index searched and merged per video.

Shape letters: V videos, C clip tokens, F frame tokens, T tokens, D hidden, Nq queries, K tokens per search.

FAISS id of a token = ``video_id << 8 | token_index`` (docs/design.md §3.2): the video id is a shift away, no lookup
table. Vectors are L2-normalised so inner product = cosine. Search returns videos (``Candidates``); FAISS's ``D`` /
``I`` arrays never leave this module.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import faiss
import numpy as np

from prvr.fileio import file_sha256, fsync_directory
from prvr.index.protocol import Candidates
from prvr.index.token_ops import (  # the token ids are re-exported: callers import them from here
    MAX_VIDEO_ID,
    TOKEN_BITS,
    TOKEN_STRIDE,
    VideoHits,
    as_array,
    check_queries,
    decode_token_ids,
    empty_candidates,
    encode_token_ids,
    flatten_batch,
    merge_hits,
    sorted_contains,
    video_hits,
)

__all__ = [
    "FLAT_MAX_TOKENS",
    "GPU_MAX_K",
    "MAX_VIDEO_ID",
    "TOKEN_BITS",
    "FaissTokenIndex",
    "choose_factory",
    "decode_token_ids",
    "encode_token_ids",
    "gpu_available",
    "nlist_for",
]

logger = logging.getLogger(__name__)

# faiss-cpu only uses BLAS when nq * d >= 128000, a 16x slow-down for batches of 20-250 queries (docs/design.md §3.4).
# This is a process-wide FAISS setting; it is set once, when the FAISS back-end is imported.
faiss.cvar.distance_compute_blas_threshold = 20

FLAT_MAX_TOKENS = 200_000  # exact search stays interactive up to ~10^5-10^6 tokens on 2 cores (§3.3)
TRAIN_POINTS_PER_LIST = 64  # training sample = min(T, max(64 * nlist, 65536)) (docs/design.md §3.3)
MIN_TRAIN_SAMPLE = 1 << 16  # PQ / SQ codebooks want >= 39 x 256 points whatever nlist is
MIN_TRAIN_POINTS_PER_LIST = 39  # FAISS warns below this
GPU_MAX_K = 2048  # classic GPU FAISS caps k and nprobe at 2048 (faiss #2103)
REMOVE_CHUNK_VIDEOS = 4096  # videos per IDSelectorBatch (256 slot ids each)
FORMAT_VERSION = 1
META_NAME = "faiss_index.json"
VIDEOS_NAME = "videos.npz"
KINDS = ("clip", "frame")

Metric = Literal["ip", "l2"]


# ----------------------------------------------------------------------------------------------------------- ids


def nlist_for(num_tokens: int) -> int:
    """Number of IVF lists for ``num_tokens`` vectors: ``4 * sqrt(T)`` rounded to a power of two (faiss #112)."""
    if num_tokens < 1:
        raise ValueError(f"num_tokens must be positive, got {num_tokens}")
    return int(2 ** round(math.log2(max(1.0, 4.0 * math.sqrt(num_tokens)))))


def choose_factory(num_tokens: int, dim: int, *, memory_budget_bytes: int | None = None) -> str:
    """The FAISS factory string for a token index of ``num_tokens`` vectors (docs/design.md §3.3).

    * ``T <= FLAT_MAX_TOKENS``: ``IDMap2,Flat`` (exact).
    * larger: ``IVF{nlist},Flat`` with ``nlist = nlist_for(T)``.
    * when ``memory_budget_bytes`` is given and the float32 vectors exceed it: ``IVF{nlist},SQ8`` (1 byte/dim) or,
      beyond that, ``IVF{nlist},PQ{D/8}`` (1 byte per 8 dims); the exact re-rank from the token store is the refine.

    Args:
        num_tokens: T, the number of vectors the index will hold.
        dim: D.
        memory_budget_bytes: optional cap on the index's vector storage.

    Returns:
        A factory string accepted by ``FaissTokenIndex(factory=...)``.
    """
    if num_tokens < 1 or dim < 1:
        raise ValueError(f"num_tokens and dim must be positive, got {num_tokens} and {dim}")
    flat_bytes = num_tokens * dim * 4
    if memory_budget_bytes is None or flat_bytes <= memory_budget_bytes:
        if num_tokens <= FLAT_MAX_TOKENS:
            return "IDMap2,Flat"
        return f"IVF{nlist_for(num_tokens)},Flat"
    nlist = nlist_for(num_tokens)
    if num_tokens * dim <= memory_budget_bytes or dim % 8 != 0:
        return f"IVF{nlist},SQ8"
    return f"IVF{nlist},PQ{dim // 8}"


def _resolve_factory(spec: str, num_tokens: int) -> str:
    """Fill ``{nlist}`` and wrap id-less indexes (Flat, HNSW, PQ, ...) in ``IDMap2`` so custom ids work."""
    spec = spec.strip()
    if "{nlist}" in spec:
        spec = spec.replace("{nlist}", str(nlist_for(max(1, num_tokens))))
    if spec.startswith("IDMap") or (spec.startswith("IVF") and "RFlat" not in spec and "Refine" not in spec):
        return spec
    return f"IDMap2,{spec}"


def _metric_code(metric: Metric | str | int) -> int:
    if isinstance(metric, (int, np.integer)):
        if int(metric) in (faiss.METRIC_INNER_PRODUCT, faiss.METRIC_L2):
            return int(metric)
    elif str(metric).lower() in ("ip", "inner_product", "cosine"):
        return faiss.METRIC_INNER_PRODUCT
    elif str(metric).lower() == "l2":
        return faiss.METRIC_L2
    raise ValueError(f"metric must be 'ip' or 'l2' (or faiss.METRIC_INNER_PRODUCT / METRIC_L2), got {metric!r}")


def _default_nprobe(nlist: int) -> int:
    """About 3% of the lists (a starting point, docs/design.md §3.3; calibrate), at least 16, at most nlist."""
    return int(min(nlist, max(16, math.ceil(nlist / 32))))


def gpu_available() -> bool:
    """True when this FAISS build has GPU support and sees a GPU."""
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


# ------------------------------------------------------------------------------------------------------ helpers


def _normalized(x: np.ndarray) -> np.ndarray:
    """C-contiguous float32 copy with unit rows (zero rows stay zero)."""
    out = np.array(x, dtype=np.float32, order="C", copy=True)
    if out.size:
        faiss.normalize_L2(out)
    return out


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def _chunks(array: np.ndarray, size: int) -> Iterator[np.ndarray]:
    for start in range(0, len(array), size):
        yield array[start : start + size]


class _TokenIndex:
    """One FAISS index (clip or frame tokens) with its factory string and search parameters."""

    def __init__(self, name: str, factory: str | None) -> None:
        self.name = name
        self.factory_spec = factory  # as given (may hold {nlist}); None = automatic
        self.factory: str | None = None  # resolved string, once created
        self.index: faiss.Index | None = None
        self.gpu_index: faiss.Index | None = None

    # --- structure
    @property
    def ntotal(self) -> int:
        return 0 if self.index is None else int(self.index.ntotal)

    def ivf(self) -> Any | None:
        if self.index is None:
            return None
        found = faiss.try_extract_index_ivf(self.index)
        return None if found is None else faiss.downcast_index(found)

    def hnsw(self) -> Any | None:
        if self.index is None:
            return None
        inner = self.index
        if isinstance(inner, (faiss.IndexIDMap, faiss.IndexIDMap2)):
            inner = faiss.downcast_index(inner.index)
        return inner if isinstance(inner, faiss.IndexHNSW) else None

    def is_exact(self) -> bool:
        if self.index is None:
            return True
        inner = self.index
        if isinstance(inner, (faiss.IndexIDMap, faiss.IndexIDMap2)):
            inner = faiss.downcast_index(inner.index)
        return type(inner) in (faiss.IndexFlat, faiss.IndexFlatIP, faiss.IndexFlatL2)

    def supports_remove(self) -> bool:
        return self.hnsw() is None

    # --- creation
    def create(self, dim: int, metric: int, sample: np.ndarray, seed: int) -> None:
        """Build the FAISS index from the factory (auto by the sample size when None) and train it on ``sample``."""
        num_tokens = int(sample.shape[0])
        spec = self.factory_spec or choose_factory(max(1, num_tokens), dim)
        self.factory = _resolve_factory(spec, num_tokens)
        try:
            index = faiss.index_factory(dim, self.factory, metric)
        except RuntimeError as error:
            raise ValueError(
                f"FAISS cannot build the {self.name} index from factory {self.factory!r}: {error}. "
                "Use a factory string such as 'Flat', 'IVF1024,Flat', 'IVF{nlist},SQ8' or 'HNSW32'"
            ) from error
        self.index = index
        ivf = self.ivf()
        if ivf is not None:
            ivf.cp.seed = seed
        for holder in (ivf, self.index, getattr(self.index, "index", None)):
            if holder is not None and hasattr(holder, "pq"):
                holder.pq.cp.seed = seed
        if not index.is_trained:
            self.train(sample, seed)
        logger.info("created %s index %s (%d training tokens)", self.name, self.factory, num_tokens)

    def train(self, tokens: np.ndarray, seed: int) -> None:
        assert self.index is not None
        ivf = self.ivf()
        nlist = int(ivf.nlist) if ivf is not None else 1
        needed = max(TRAIN_POINTS_PER_LIST * nlist, MIN_TRAIN_SAMPLE)
        num_tokens = int(tokens.shape[0])
        if num_tokens < nlist:
            raise ValueError(
                f"the {self.name} index {self.factory} needs at least nlist = {nlist} training tokens, got "
                f"{num_tokens}; call train() with a larger sample, or pick a smaller nlist / factory=None"
            )
        if num_tokens < MIN_TRAIN_POINTS_PER_LIST * nlist:
            logger.warning(
                "%s index %s trained on %d tokens (< %d x nlist): lists will be poorly balanced",
                self.name,
                self.factory,
                num_tokens,
                MIN_TRAIN_POINTS_PER_LIST,
            )
        if num_tokens > needed:
            rows = np.sort(np.random.default_rng(seed).choice(num_tokens, size=needed, replace=False))
            tokens = tokens[rows]
        self.index.train(np.ascontiguousarray(tokens))

    # --- search parameters
    def set_nprobe(self, nprobe: int) -> bool:
        ivf = self.ivf()
        if ivf is None:
            return False
        ivf.nprobe = int(min(nprobe, ivf.nlist))
        self.gpu_index = None
        return True

    def set_ef_search(self, ef_search: int) -> bool:
        hnsw = self.hnsw()
        if hnsw is None:
            return False
        hnsw.hnsw.efSearch = int(ef_search)
        return True

    def search_params(self, tombstone_ids: np.ndarray | None) -> Any | None:
        """SearchParameters excluding the tombstoned token slots (None when there is nothing to exclude)."""
        if tombstone_ids is None or tombstone_ids.size == 0:
            return None
        batch = faiss.IDSelectorBatch(tombstone_ids)
        selector = faiss.IDSelectorNot(batch)
        hnsw = self.hnsw()
        ivf = self.ivf()
        if hnsw is not None:
            params = faiss.SearchParametersHNSW(sel=selector, efSearch=int(hnsw.hnsw.efSearch))
        elif ivf is not None:
            params = faiss.SearchParametersIVF(sel=selector, nprobe=int(ivf.nprobe))
        else:
            params = faiss.SearchParameters(sel=selector)
        params.referenced_objects = [batch, selector]  # SWIG holds raw pointers: keep them alive
        return params

    def describe(self) -> dict[str, Any]:
        ivf = self.ivf()
        hnsw = self.hnsw()
        return {
            "factory": self.factory if self.factory is not None else self.factory_spec,
            "ntotal": self.ntotal,
            "is_trained": bool(self.index.is_trained) if self.index is not None else False,
            "exact": self.is_exact() if self.index is not None else None,
            "nlist": int(ivf.nlist) if ivf is not None else None,
            "nprobe": int(ivf.nprobe) if ivf is not None else None,
            "ef_search": int(hnsw.hnsw.efSearch) if hnsw is not None else None,
            "on_gpu": self.gpu_index is not None,
        }


# --------------------------------------------------------------------------------------------------------- index


class FaissTokenIndex:
    """Clip-token and frame-token FAISS indexes returning candidate videos (implements ``VectorIndex``).

    Each video contributes its C clip tokens and its valid frame tokens, L2-normalised, with FAISS id
    ``video_id << 8 | position``. ``search`` runs a top-K' token search in each index (``K' = candidates_per_video x
    n_candidates``, about 4 tokens per distinct video: docs/design.md §3.1), keeps each video's best token per index,
    unions the two video sets and orders them by ``w_c * clip + w_f * frame`` (see :class:`Candidates` for unknown terms).

    With ``factory=None`` each index's factory is chosen from the number of tokens it is first trained on
    (:func:`choose_factory`); a builder that adds in chunks should instead pass ``choose_factory(total_tokens, dim)``
    or call :meth:`train` with a representative sample first. Flat and HNSW are wrapped in ``IDMap2``. IVF indexes are
    trained on a seeded sample with a seeded k-means, so two builds from the same data are identical (HNSW builds are
    multi-threaded and not bit-reproducible). Writers must be serialised; concurrent searches are fine on CPU.

    Args:
        dim: D, the token width.
        clip_weight: w_c >= 0.
        frame_weight: w_f >= 0.
        factory: FAISS factory string for both indexes (``{nlist}`` is filled by :func:`nlist_for`), or None.
        frame_factory: a different factory for the frame index (default: ``factory``).
        metric: ``"ip"`` (default) or ``"l2"``; scores are cosine similarities either way.
        nprobe: IVF lists probed per query (default about 3% of nlist, at least 16); calibrate it.
        ef_search: HNSW efSearch (FAISS raises it to K' when smaller).
        candidates_per_video: tokens fetched per requested candidate video (K' = this x n_candidates).
        seed: seed of the training sample and of k-means.
        use_gpu: ``"auto"`` searches on GPU 0 when FAISS has GPU support and sees a GPU; True requires it.
    """

    def __init__(
        self,
        dim: int,
        *,
        clip_weight: float,
        frame_weight: float,
        factory: str | None = None,
        frame_factory: str | None = None,
        metric: Metric | int = "ip",
        nprobe: int | None = None,
        ef_search: int | None = None,
        candidates_per_video: int = 4,
        seed: int = 0,
        use_gpu: bool | Literal["auto"] = "auto",
    ) -> None:
        if int(dim) < 1:
            raise ValueError(f"dim must be positive, got {dim}")
        if clip_weight < 0 or frame_weight < 0 or clip_weight + frame_weight <= 0:
            raise ValueError(
                f"clip_weight and frame_weight must be >= 0 and not both 0, got {clip_weight}, {frame_weight}"
            )
        if candidates_per_video < 1:
            raise ValueError(f"candidates_per_video must be >= 1, got {candidates_per_video}")
        if nprobe is not None and nprobe < 1:
            raise ValueError(f"nprobe must be >= 1, got {nprobe}")
        if ef_search is not None and ef_search < 1:
            raise ValueError(f"ef_search must be >= 1, got {ef_search}")
        if use_gpu not in ("auto", True, False):
            raise ValueError(f"use_gpu must be 'auto', True or False, got {use_gpu!r}")
        if use_gpu is True and not gpu_available():
            raise RuntimeError(
                "use_gpu=True but this FAISS build has no GPU support or sees no GPU; install faiss-gpu "
                "(conda faiss-gpu / pip faiss-gpu-cu12) or pass use_gpu='auto' to fall back to the CPU"
            )
        self.dim = int(dim)
        self.clip_weight = float(clip_weight)
        self.frame_weight = float(frame_weight)
        self.metric = _metric_code(metric)
        self.candidates_per_video = int(candidates_per_video)
        self.seed = int(seed)
        self.use_gpu: bool | Literal["auto"] = use_gpu
        self._nprobe = nprobe
        self._ef_search = ef_search
        self._parts = {
            "clip": _TokenIndex("clip", factory),
            "frame": _TokenIndex("frame", frame_factory if frame_factory is not None else factory),
        }
        self._read_only = False
        self._mapped_from: Path | None = None  # directory of the files an mmap=True index maps
        self._gpu_resources: Any | None = None
        # live videos, sorted by id, with their token counts (to check removals); tombstoned videos apart
        self._video_ids = np.zeros(0, dtype=np.int64)
        self._clip_counts = np.zeros(0, dtype=np.int32)
        self._frame_counts = np.zeros(0, dtype=np.int32)
        self._tombstones = np.zeros(0, dtype=np.int64)
        self._tombstone_slots: np.ndarray | None = None

    # ------------------------------------------------------------------------------------------------ properties

    @property
    def ntotal(self) -> int:
        """Tokens held by both FAISS indexes (tombstoned HNSW tokens included until a rebuild)."""
        return sum(part.ntotal for part in self._parts.values())

    @property
    def num_videos(self) -> int:
        """Searchable (added and not removed) videos."""
        return int(self._video_ids.shape[0])

    @property
    def is_exact(self) -> bool:
        """True when both indexes are exact (Flat): approximate scores are then upper bounds (Candidates.bound)."""
        return all(part.is_exact() for part in self._parts.values())

    @property
    def read_only(self) -> bool:
        return self._read_only

    def __contains__(self, video_id: object) -> bool:
        return sorted_contains(self._video_ids, video_id)

    def describe(self) -> dict[str, Any]:
        """JSON-serialisable summary: factories, nprobe / efSearch, counts, weights, tombstones."""
        return {
            "backend": "faiss",
            "faiss_version": faiss.__version__,
            "dim": self.dim,
            "metric": "ip" if self.metric == faiss.METRIC_INNER_PRODUCT else "l2",
            "clip_weight": self.clip_weight,
            "frame_weight": self.frame_weight,
            "candidates_per_video": self.candidates_per_video,
            "seed": self.seed,
            "num_videos": self.num_videos,
            "ntotal": self.ntotal,
            "tombstones": int(self._tombstones.shape[0]),
            "exact": self.is_exact,
            "read_only": self._read_only,
            "use_gpu": self.use_gpu,
            "clip": self._parts["clip"].describe(),
            "frame": self._parts["frame"].describe(),
        }

    # ----------------------------------------------------------------------------------------- search parameters

    @property
    def search_parameters(self) -> dict[str, Any]:
        """Snapshot of the search knobs: the explicit ``nprobe`` / ``ef_search`` (None = the index default) and each
        index's effective values, for :meth:`restore_search_parameters`."""
        parts = {kind: (part.describe()["nprobe"], part.describe()["ef_search"]) for kind, part in self._parts.items()}
        return {"nprobe": self._nprobe, "ef_search": self._ef_search, "parts": parts}

    def restore_search_parameters(self, parameters: dict[str, Any]) -> None:
        """Undo ``set_nprobe`` / ``set_ef_search``: apply a :attr:`search_parameters` snapshot."""
        self._nprobe = parameters.get("nprobe")
        self._ef_search = parameters.get("ef_search")
        for kind, (nprobe, ef_search) in parameters.get("parts", {}).items():
            part = self._parts[kind]
            if nprobe is not None:
                part.set_nprobe(int(nprobe))
            if ef_search is not None:
                part.set_ef_search(int(ef_search))
            part.gpu_index = None

    def set_nprobe(self, nprobe: int) -> None:
        """Set the IVF lists probed per query (the calibration knob). Raises ValueError on non-IVF indexes."""
        if int(nprobe) < 1:
            raise ValueError(f"nprobe must be >= 1, got {nprobe}")
        self._nprobe = int(nprobe)
        built = [part for part in self._parts.values() if part.index is not None]
        applied = [part.set_nprobe(self._nprobe) for part in built]
        if built and not any(applied):
            raise ValueError(
                f"nprobe applies to IVF indexes only; these are {[part.factory for part in built]}. "
                "Flat is exact (nothing to tune); use set_ef_search for HNSW"
            )

    def set_ef_search(self, ef_search: int) -> None:
        """Set HNSW efSearch. Raises ValueError when neither index is HNSW."""
        if int(ef_search) < 1:
            raise ValueError(f"ef_search must be >= 1, got {ef_search}")
        self._ef_search = int(ef_search)
        built = [part for part in self._parts.values() if part.index is not None]
        applied = [part.set_ef_search(self._ef_search) for part in built]
        if built and not any(applied):
            raise ValueError(f"ef_search applies to HNSW indexes only; these are {[p.factory for p in built]}")

    def _apply_search_parameters(self, part: _TokenIndex) -> None:
        ivf = part.ivf()
        if ivf is not None:
            part.set_nprobe(self._nprobe if self._nprobe is not None else _default_nprobe(int(ivf.nlist)))
        if self._ef_search is not None:
            part.set_ef_search(self._ef_search)

    # ----------------------------------------------------------------------------------------------- validation

    def _check_writable(self, action: str) -> None:
        if self._read_only:
            raise RuntimeError(
                f"cannot {action}: this index was opened with mmap=True and is read-only "
                "(FAISS aborts the process on writes to mapped storage); load it with mmap=False to modify it"
            )

    def _flatten(
        self, video_ids: Any, clip: Any, frame: Any, frame_mask: Any
    ) -> tuple[np.ndarray, dict[str, tuple[np.ndarray, np.ndarray]], np.ndarray, np.ndarray]:
        """Validate an add() batch; return ids, ``{kind: (tokens (T, D) unit rows, faiss ids (T,))}`` and counts."""
        return flatten_batch(video_ids, clip, frame, frame_mask, dim=self.dim, indexed=self._video_ids,
                             normalize=_normalized, tombstones=self._tombstones)

    # --------------------------------------------------------------------------------------------------- writes

    def train(self, clip: Any, frame: Any, frame_mask: Any) -> None:
        """Create and train both indexes on a sample of videos without adding them.

        Args:
            clip: (V, C, D) clip tokens of the sample.
            frame: (V, F, D) frame tokens of the sample.
            frame_mask: (V, F) bool.
        """
        self._check_writable("train")
        if any(part.index is not None for part in self._parts.values()):
            raise RuntimeError("the index is already trained; create a new FaissTokenIndex to retrain")
        # no index yet means no video yet: the placeholder ids 0..V-1 cannot collide with indexed videos
        sample_ids = np.arange(as_array(clip, np.float32).shape[0], dtype=np.int64)
        _, tokens, _, _ = self._flatten(sample_ids, clip, frame, frame_mask)
        for kind, part in self._parts.items():
            part.create(self.dim, self.metric, tokens[kind][0], self._seed_for(kind))
            self._apply_search_parameters(part)

    def _seed_for(self, kind: str) -> int:
        return self.seed * 2 + KINDS.index(kind)

    def add(self, video_ids: Any, clip: Any, frame: Any, frame_mask: Any) -> None:
        """Index the clip tokens and the valid frame tokens of V new videos.

        The first call creates (and, for IVF / PQ, trains) the indexes unless :meth:`train` ran before.

        Args:
            video_ids: (V,) int64 ids, unique, not indexed yet, in ``[0, 2**55)``.
            clip: (V, C, D) float32 clip tokens (numpy or torch), C <= 256.
            frame: (V, F, D) float32 frame tokens, zero-padded, F <= 256.
            frame_mask: (V, F) bool, True on real frames (at least one per video).
        """
        self._check_writable("add")
        ids, tokens, clip_counts, frame_counts = self._flatten(video_ids, clip, frame, frame_mask)
        if ids.shape[0] == 0:
            return
        for kind, part in self._parts.items():  # create / train both before adding to either
            if part.index is None:
                part.create(self.dim, self.metric, tokens[kind][0], self._seed_for(kind))
                self._apply_search_parameters(part)
        for kind, part in self._parts.items():
            kind_tokens, kind_ids = tokens[kind]
            part.index.add_with_ids(kind_tokens, kind_ids)
            part.gpu_index = None
        all_ids = np.concatenate([self._video_ids, ids])
        order = np.argsort(all_ids, kind="stable")
        self._video_ids = all_ids[order]
        self._clip_counts = np.concatenate([self._clip_counts, clip_counts])[order]
        self._frame_counts = np.concatenate([self._frame_counts, frame_counts])[order]
        logger.debug("added %d videos (%d clip, %d frame tokens)", len(ids), clip_counts.sum(), frame_counts.sum())

    def remove(self, video_ids: Any) -> None:
        """Remove every token of the given videos (Flat / IVF: ``remove_ids``; HNSW: tombstones).

        Args:
            video_ids: (V,) ids of indexed videos.

        Raises:
            ValueError: on ids that are not indexed.
            RuntimeError: on a read-only (mmapped) index.
        """
        self._check_writable("remove")
        ids = np.unique(as_array(video_ids, np.int64).reshape(-1))
        if ids.size == 0:
            return
        known = np.isin(ids, self._video_ids)
        if not known.all():
            raise ValueError(
                f"videos {ids[~known][:10].tolist()} are not in the index (never added or already removed)"
            )
        positions = np.searchsorted(self._video_ids, ids)
        expected = {"clip": int(self._clip_counts[positions].sum()), "frame": int(self._frame_counts[positions].sum())}
        tombstone = False
        for kind, part in self._parts.items():
            if not part.supports_remove():
                tombstone = True
                continue
            removed = 0
            for chunk in _chunks(ids, REMOVE_CHUNK_VIDEOS):
                if chunk.shape[0] == 1:
                    first = int(chunk[0]) << TOKEN_BITS
                    selector = faiss.IDSelectorRange(first, first + TOKEN_STRIDE)
                else:
                    slots = encode_token_ids(chunk[:, None], np.arange(TOKEN_STRIDE)[None, :])  # (v, 256)
                    selector = faiss.IDSelectorBatch(slots.reshape(-1))
                removed += int(part.index.remove_ids(selector))
            part.gpu_index = None
            if removed != expected[kind]:
                raise RuntimeError(
                    f"{kind} index removed {removed} tokens for {len(ids)} videos, expected {expected[kind]}; the "
                    "index and its video list disagree: rebuild the index"
                )
        if tombstone:
            self._tombstones = np.union1d(self._tombstones, ids)
            self._tombstone_slots = None
        keep = np.ones(len(self._video_ids), dtype=bool)
        keep[positions] = False
        self._video_ids = self._video_ids[keep]
        self._clip_counts = self._clip_counts[keep]
        self._frame_counts = self._frame_counts[keep]

    # --------------------------------------------------------------------------------------------------- search

    def _tombstone_token_ids(self) -> np.ndarray | None:
        if self._tombstones.size == 0:
            return None
        if self._tombstone_slots is None:
            slots = encode_token_ids(self._tombstones[:, None], np.arange(TOKEN_STRIDE)[None, :])  # (v, 256)
            self._tombstone_slots = slots.reshape(-1)
        return self._tombstone_slots

    def _searcher(self, part: _TokenIndex) -> tuple[faiss.Index, bool]:
        """The index to search (a GPU replica when enabled and possible) and whether it is on the GPU."""
        assert part.index is not None
        wants_gpu = self.use_gpu is True or (self.use_gpu == "auto" and gpu_available())
        if not wants_gpu or self._tombstones.size:
            return part.index, False
        if part.gpu_index is None:
            try:
                if self._gpu_resources is None:
                    self._gpu_resources = faiss.StandardGpuResources()
                part.gpu_index = faiss.index_cpu_to_gpu(self._gpu_resources, 0, part.index)
                ivf = part.ivf()
                if ivf is not None:
                    faiss.GpuParameterSpace().set_index_parameter(
                        part.gpu_index, "nprobe", int(min(ivf.nprobe, GPU_MAX_K))
                    )
            except (RuntimeError, AttributeError) as error:
                if self.use_gpu is True:
                    raise RuntimeError(
                        f"cannot move the {part.name} index ({part.factory}) to the GPU: {error}; use_gpu='auto' "
                        "falls back to the CPU"
                    ) from error
                logger.warning("%s index %s stays on the CPU: %s", part.name, part.factory, error)
                part.gpu_index = None
                return part.index, False
        return part.gpu_index, True

    def _best_per_video(self, part: _TokenIndex, query: np.ndarray, num_tokens: int) -> list[VideoHits]:
        """Per query: the best cosine of every video among the top ``num_tokens`` tokens of one index."""
        searcher, on_gpu = self._searcher(part)
        k = min(num_tokens, part.ntotal, GPU_MAX_K if on_gpu else num_tokens)
        params = None if on_gpu else part.search_params(self._tombstone_token_ids())
        distances, labels = searcher.search(query, k, params=params)  # (Nq, K), (Nq, K)
        if self.metric == faiss.METRIC_L2:
            distances = 1.0 - distances / 2.0  # squared L2 of unit vectors -> cosine
        exhausted = k >= part.ntotal and part.is_exact()
        return [video_hits(row_labels[row_labels >= 0], row_scores[row_labels >= 0], exhausted=exhausted)
                for row_scores, row_labels in zip(distances, labels)]

    def search(self, query: Any, n_candidates: int) -> list[Candidates]:
        """Candidate videos for each query, best approximate score first.

        Args:
            query: (Nq, D) float32 text vectors (normalised here).
            n_candidates: N >= 1, the most videos returned per query.

        Returns:
            Nq :class:`Candidates` (fewer than N videos when the index holds fewer).
        """
        q, n = check_queries(query, self.dim, n_candidates)
        q = _normalized(q)
        if self.num_videos == 0:
            return empty_candidates(q.shape[0])
        num_tokens = self.candidates_per_video * n
        clip_hits = self._best_per_video(self._parts["clip"], q, num_tokens)
        frame_hits = self._best_per_video(self._parts["frame"], q, num_tokens)
        return [self._merge(clip, frame, n) for clip, frame in zip(clip_hits, frame_hits)]

    def _merge(self, clip: VideoHits, frame: VideoHits, n: int) -> Candidates:
        """Union of the two scales' videos, unknown terms filled with the cut-offs, best n by approximate score."""
        return merge_hits(clip, frame, n, clip_weight=self.clip_weight, frame_weight=self.frame_weight,
                          exact=self.is_exact)

    # ------------------------------------------------------------------------------------------------ save/load

    def save(self, directory: str | Path) -> None:
        """Write ``clip.faiss``, ``frame.faiss``, ``videos.npz`` and the ``faiss_index.json`` sidecar.

        Each file goes to a temporary name in ``directory``, is fsynced and renamed over the old one; the sidecar
        (sizes and sha256 of the others) is renamed last and the directory fsynced. A crash mid-save can leave new
        data files beside the old sidecar: :meth:`load` detects the mismatch. For atomic swaps, save each generation
        into a fresh directory.

        Args:
            directory: target directory (created when missing).
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        staged: list[tuple[Path, Path]] = []
        files: dict[str, dict[str, Any]] = {}
        try:
            for kind, part in self._parts.items():
                if part.index is None:
                    continue
                final = directory / f"{kind}.faiss"
                temp = directory / f".{kind}.faiss.tmp-{os.getpid()}"
                if self._mapped_from is not None:
                    # a mapped IVF would be written as a stub pointing at its mapping: copy the unchanged file
                    shutil.copyfile(self._mapped_from / f"{kind}.faiss", temp)
                else:
                    faiss.write_index(part.index, str(temp))
                _fsync_file(temp)
                staged.append((temp, final))
                files[kind] = {"file": final.name, "bytes": temp.stat().st_size, "sha256": file_sha256(temp)}
            final = directory / VIDEOS_NAME
            temp = directory / f".{VIDEOS_NAME}.tmp-{os.getpid()}"
            with open(temp, "wb") as handle:
                np.savez(
                    handle,
                    video_ids=self._video_ids,
                    clip_counts=self._clip_counts,
                    frame_counts=self._frame_counts,
                    tombstones=self._tombstones,
                )
                handle.flush()
                os.fsync(handle.fileno())
            staged.append((temp, final))
            files["videos"] = {"file": final.name, "bytes": temp.stat().st_size, "sha256": file_sha256(temp)}
            meta = {
                "format_version": FORMAT_VERSION,
                "faiss_version": faiss.__version__,
                "dim": self.dim,
                "metric": "ip" if self.metric == faiss.METRIC_INNER_PRODUCT else "l2",
                "clip_weight": self.clip_weight,
                "frame_weight": self.frame_weight,
                "candidates_per_video": self.candidates_per_video,
                "seed": self.seed,
                "nprobe": self._nprobe,
                "ef_search": self._ef_search,
                "factories": {kind: part.factory or part.factory_spec for kind, part in self._parts.items()},
                "ntotal": {kind: part.ntotal for kind, part in self._parts.items()},
                "num_videos": self.num_videos,
                "files": files,
            }
            meta_final = directory / META_NAME
            meta_temp = directory / f".{META_NAME}.tmp-{os.getpid()}"
            with open(meta_temp, "w", encoding="utf-8") as handle:
                json.dump(meta, handle, indent=2, sort_keys=True)
                handle.flush()
                os.fsync(handle.fileno())
            staged.append((meta_temp, meta_final))
        except BaseException:
            for temp, _ in staged:
                temp.unlink(missing_ok=True)
            raise
        for temp, final in staged:
            os.replace(temp, final)
        fsync_directory(directory)
        logger.info("saved %d videos / %d tokens to %s", self.num_videos, self.ntotal, directory)

    @classmethod
    def load(
        cls,
        directory: str | Path,
        *,
        mmap: bool = False,
        verify: bool = False,
        use_gpu: bool | Literal["auto"] = "auto",
    ) -> FaissTokenIndex:
        """Open an index written by :meth:`save`.

        Args:
            directory: the directory given to ``save``.
            mmap: map the vectors instead of reading them (IVF: ``IO_FLAG_MMAP``, Flat / HNSW: ``IO_FLAG_MMAP_IFC``);
                opens in milliseconds; the index is then read-only (add / remove raise RuntimeError).
            verify: also check the sha256 of every file (reads them in full).
            use_gpu: as in the constructor.

        Returns:
            The index.

        Raises:
            FileNotFoundError: when the directory or one of its files is missing.
            ValueError: when a file is truncated, corrupted or does not match the sidecar.
        """
        directory = Path(directory)
        meta_path = directory / META_NAME
        if not meta_path.is_file():
            raise FileNotFoundError(f"{meta_path} not found: {directory} is not a saved FaissTokenIndex directory")
        fix = "rebuild the index (or restore the directory from a backup)"
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            version = int(meta["format_version"])
            files = meta["files"]
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(f"{meta_path} is corrupted ({error}); {fix}") from error
        if version != FORMAT_VERSION:
            raise ValueError(f"{meta_path} has format_version {version}, this code reads {FORMAT_VERSION}; {fix}")
        for name, entry in files.items():
            path = directory / entry["file"]
            if not path.is_file():
                raise FileNotFoundError(f"{path} is missing (listed in {meta_path.name}); {fix}")
            size = path.stat().st_size
            if size != entry["bytes"]:
                raise ValueError(
                    f"{path} has {size} bytes but {meta_path.name} records {entry['bytes']}: the file is truncated or "
                    f"belongs to another save (interrupted save?); save the index again or {fix}"
                )
            if verify and file_sha256(path) != entry["sha256"]:
                raise ValueError(f"{path} fails its sha256 check (corrupted); {fix}")
        index = cls(
            int(meta["dim"]),
            clip_weight=float(meta["clip_weight"]),
            frame_weight=float(meta["frame_weight"]),
            factory=meta["factories"]["clip"],
            frame_factory=meta["factories"]["frame"],
            metric=meta["metric"],
            nprobe=meta["nprobe"],
            ef_search=meta["ef_search"],
            candidates_per_video=int(meta["candidates_per_video"]),
            seed=int(meta["seed"]),
            use_gpu=use_gpu,
        )
        for kind, part in index._parts.items():
            if kind not in files:
                continue
            path = directory / files[kind]["file"]
            factory = meta["factories"][kind] or ""
            flags = 0
            if mmap:
                flags = faiss.IO_FLAG_MMAP if factory.startswith("IVF") else faiss.IO_FLAG_MMAP_IFC
            try:
                part.index = faiss.read_index(str(path), flags)
            except RuntimeError as error:
                first_line = str(error).strip().splitlines()[-1] if str(error).strip() else "unreadable"
                raise ValueError(f"{path} is not a readable FAISS index ({first_line}); {fix}") from error
            part.factory = factory
            if part.ntotal != int(meta["ntotal"][kind]):
                raise ValueError(
                    f"{path} holds {part.ntotal} tokens but {meta_path.name} records {meta['ntotal'][kind]}; {fix}"
                )
            index._apply_search_parameters(part)
        videos_path = directory / files["videos"]["file"]
        try:
            with np.load(videos_path, allow_pickle=False) as arrays:
                index._video_ids = arrays["video_ids"].astype(np.int64)
                index._clip_counts = arrays["clip_counts"].astype(np.int32)
                index._frame_counts = arrays["frame_counts"].astype(np.int32)
                index._tombstones = arrays["tombstones"].astype(np.int64)
        except (ValueError, KeyError, OSError, zipfile.BadZipFile) as error:
            raise ValueError(f"{videos_path} is corrupted ({error}); {fix}") from error
        if index.num_videos != int(meta["num_videos"]):
            raise ValueError(f"{videos_path} lists {index.num_videos} videos, sidecar {meta['num_videos']}; {fix}")
        index._read_only = bool(mmap)
        index._mapped_from = directory.resolve() if mmap else None
        return index
