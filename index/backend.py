"""Which token-index back-end a generation uses, and the few steps that differ between them (FAISS or Milvus).

A generation's manifest names its back-end (``IndexManifest.backend``; manifests written before the field existed
are FAISS). FAISS keeps its files in ``gen-XXXXXX/faiss/``; Milvus keeps its tokens in the engine, in collections
named after the index's uid and the generation, and a sidecar in ``gen-XXXXXX/milvus/``. The generation's SQL row
records the engine URL (without credentials) and the uid in ``params["engine"]`` from the moment the build begins,
so a build that dies before its commit point can have its collections dropped by the next builder.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from prvr.index.faiss_store import FaissTokenIndex
from prvr.index.layout import FAISS_DIR
from prvr.index.manifest import IndexManifest

__all__ = [
    "BACKENDS",
    "MILVUS_DIR",
    "drop_engine_collections",
    "engine_collections",
    "engine_record",
    "index_subdir",
    "load_token_index",
    "new_milvus_index",
    "start_generation",
]

logger = logging.getLogger(__name__)

BACKENDS = ("faiss", "milvus")
MILVUS_DIR = "milvus"  # MilvusTokenIndex.save (milvus_index.json, videos.npz); the vectors live in the engine


def index_subdir(backend: str) -> str:
    """The generation sub-directory of the back-end's files."""
    return MILVUS_DIR if backend == "milvus" else FAISS_DIR


def load_token_index(gen_dir: str | Path, manifest: IndexManifest, *, mmap: bool = False) -> Any:
    """Open the token index of a generation: FAISS files or a reconnection to its Milvus collections."""
    gen_dir = Path(gen_dir)
    if manifest.backend == "milvus":
        from prvr.index.milvus_store import MilvusTokenIndex

        return MilvusTokenIndex.load(gen_dir / MILVUS_DIR)
    if manifest.backend != "faiss":
        raise ValueError(f"{gen_dir}/manifest.json names back-end {manifest.backend!r}; this prvr knows {BACKENDS}")
    return FaissTokenIndex.load(gen_dir / FAISS_DIR, mmap=mmap, use_gpu=False)


def new_milvus_index(dim: int, *, clip_weight: float, frame_weight: float, engine: dict[str, Any],
                     index_type: str | None, num_tokens: int, candidates_per_video: int) -> Any:
    """An empty Milvus index for a first build (its collections are named by :func:`start_generation`).

    Args:
        engine: ``{"url": ..., "shards": 1, "replicas": 1, "index_params": {...}}`` (``url`` required).
        index_type: Milvus index type, default FLAT up to ``FLAT_MAX_TOKENS`` clip tokens, IVF_FLAT above.
        num_tokens: expected clip tokens (chooses the default type and nlist).
    """
    from prvr.index.faiss_store import FLAT_MAX_TOKENS
    from prvr.index.milvus_store import MilvusTokenIndex, _index_params, new_index_uid

    if not engine.get("url"):
        raise ValueError("--backend milvus needs --engine-url: a local file such as index.milvus.db (embedded "
                         "milvus-lite) or http://milvus-host:19530")
    index_type = (index_type or ("FLAT" if num_tokens <= FLAT_MAX_TOKENS else "IVF_FLAT")).upper()
    index = MilvusTokenIndex(
        dim, clip_weight=clip_weight, frame_weight=frame_weight, url=engine["url"],
        prefix=f"prvr_{new_index_uid()}_new", index_type=index_type,
        index_params=_index_params(index_type, num_tokens, engine.get("index_params")),
        shards=int(engine.get("shards") or 1), replicas=int(engine.get("replicas") or 1),
        candidates_per_video=candidates_per_video,
    )
    return index


def engine_record(index: Any, previous_params: dict[str, Any] | None = None) -> dict[str, Any]:
    """``{"engine": {...}}`` for a generation row's params (empty for FAISS): URL without credentials and uid."""
    if getattr(index, "describe", None) is None or index.describe().get("backend") != "milvus":
        return {}
    uid = (previous_params or {}).get("engine", {}).get("uid") or index.prefix.split("_")[1]  # prvr_<uid>_...
    return {"engine": {"backend": "milvus", "url": index.url, "uid": uid}}


def start_generation(index: Any, params: dict[str, Any], generation: str) -> Any:
    """The index a new generation writes into: FAISS's in-memory copy as is; for Milvus, collections of the new
    generation (an empty first index is renamed, a loaded one copied with :meth:`MilvusTokenIndex.fork`)."""
    engine = params.get("engine")
    if engine is None:
        return index
    from prvr.index.milvus_store import collection_prefix

    prefix = collection_prefix(engine["uid"], generation)
    if not index._created:
        index.prefix = prefix
        return index
    return index.fork(prefix)


def drop_engine_collections(params: dict[str, Any] | None, generation: str, *, dry_run: bool = False) -> list[str]:
    """Drop the engine collections of a failed, abandoned or retired generation (FAISS: nothing to do).

    Never call it for the active generation: its collections are what searches read.

    Returns:
        The names of the generation's collections that existed (and are dropped unless ``dry_run``).
    """
    engine = (params or {}).get("engine")
    if not engine:
        return []
    from prvr.index import milvus_store

    prefix = milvus_store.collection_prefix(engine["uid"], generation)
    names = [f"{prefix}_{kind}" for kind in milvus_store.KINDS]
    if dry_run:
        return [name for name in milvus_store.list_collections(engine["url"], (prefix,)) if name in names]
    return milvus_store.drop_collections(engine["url"], names)


def engine_collections(url: str, uids: set[str], live_directories: set[str], *, drop: bool) -> list[str]:
    """The collections at ``url`` of the indexes ``uids`` that belong to no live generation (dropped when ``drop``).

    A collection is this index's when its name starts with ``prvr_<uid>_``; it is live when it is one of the
    ``{prefix}_clip`` / ``{prefix}_frame`` of a generation directory in ``live_directories``. Other indexes sharing
    the engine (another uid) are never touched.

    Returns:
        The orphan collection names, sorted.
    """
    from prvr.index import milvus_store

    live = {f"{milvus_store.collection_prefix(uid, directory)}_{kind}"
            for uid in uids for directory in live_directories for kind in milvus_store.KINDS}
    owned = milvus_store.list_collections(url, tuple(f"prvr_{uid}_" for uid in sorted(uids)))
    orphans = [name for name in owned if name not in live]
    if drop and orphans:
        milvus_store.drop_collections(url, orphans)
    return orphans
