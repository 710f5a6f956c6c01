"""Milvus back-end of the token index: a clip-token and a frame-token collection, searched and merged per video.

Shape letters: V videos, C clip tokens, F frame tokens, T tokens, D hidden, Nq queries, K tokens per search.

The same logical model as :mod:`prvr.index.faiss_store`, kept in a vector engine: every token is one row
``(pk = video_id << 8 | token_index, video_id, vector)`` of the collection of its scale, L2-normalised, metric IP
(= cosine). Milvus 2.5 has no multi-vector MAX_SIM, so the engine only answers "top-K' tokens" per scale; this module
deduplicates them to candidate videos with the :class:`~prvr.index.protocol.Candidates` semantics of the FAISS
back-end and the exact DreamPRVR score is computed afterwards from the local token store (``index.rerank``),
exactly as with FAISS (docs/design.md §3.9).

Connection (``engine_url``): a local file ``*.db`` runs the embedded engine (milvus-lite, which starts the real
Milvus server binary on that file), ``http(s)://host:19530`` a Milvus cluster. Credentials come from the
environment (``PRVR_MILVUS_TOKEN``: ``user:password`` or an API key) and are never written anywhere; the saved
sidecar records the URL without them. Collection names carry the index's uid and the generation
(``prvr_<uid>_gen000003_clip``), so the generations of one index never share a collection: a build writes new
collections and the previous generation's stay untouched and serving until the SQL commit point flips.
Engine search results never leave this module.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import uuid
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import numpy as np

from prvr.fileio import file_sha256, fsync_directory, write_text_atomic
from prvr.index.faiss_store import FLAT_MAX_TOKENS, nlist_for
from prvr.index.protocol import Candidates
from prvr.index.token_ops import (
    TOKEN_BITS,
    VideoHits,
    as_array,
    check_queries,
    empty_candidates,
    flatten_batch,
    merge_hits,
    sorted_contains,
    video_hits,
)

__all__ = [
    "MAX_TOPK",
    "TOKEN_ENV",
    "MilvusTokenIndex",
    "collection_prefix",
    "drop_collections",
    "list_collections",
    "new_index_uid",
    "public_url",
]

logger = logging.getLogger(__name__)

TOKEN_ENV = "PRVR_MILVUS_TOKEN"  # user:password or API key of a Milvus cluster; read at connect time only
MAX_TOPK = 16384  # Milvus caps limit (topk) of one search at 16384
# bytes of vectors per insert call: milvus-lite 2.5.1 took 27.8k rows/s in calls of 256 x 256-d rows (256 KiB),
# 15.1k in calls of 1 MiB and 3.0k in calls of 4 MiB (measured, 2 cores)
INSERT_BYTES = 1 << 18
COPY_ROWS = 1024  # rows per query_iterator batch when a new generation copies the previous one
FORMAT_VERSION = 1
META_NAME = "milvus_index.json"
VIDEOS_NAME = "videos.npz"
KINDS = ("clip", "frame")
INDEX_TYPES = ("FLAT", "IVF_FLAT", "IVF_SQ8", "IVF_PQ", "HNSW", "AUTOINDEX")
EXACT_INDEX_TYPES = ("FLAT",)
_NAME_OK = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

_clients: dict[str, Any] = {}  # one client per engine URL and process (milvus-lite: one server per db file)
_clients_lock = threading.Lock()


# ------------------------------------------------------------------------------------------------- connection


def _is_remote(url: str) -> bool:
    return urlsplit(url).scheme in ("http", "https", "tcp", "grpc", "unix")


def public_url(url: str) -> str:
    """The engine URL as recorded on disk: local files absolute, cluster URLs as given.

    Raises:
        ValueError: on a URL holding credentials (use ``PRVR_MILVUS_TOKEN``) or a local file not ending in ``.db``.
    """
    url = str(url).strip()
    if not url:
        raise ValueError("the Milvus engine URL is empty; give a local file such as index.milvus.db or "
                         "http://milvus-host:19530")
    if _is_remote(url):
        parts = urlsplit(url)
        if parts.username or parts.password or "token=" in parts.query:
            raise ValueError(f"the engine URL must not hold credentials (they would be written to the manifest); "
                             f"export {TOKEN_ENV}=user:password (or an API key) and pass {parts.scheme}://"
                             f"{parts.hostname}{':' + str(parts.port) if parts.port else ''}")
        return url
    path = Path(url).expanduser().resolve()
    if path.suffix != ".db":
        raise ValueError(f"a local Milvus engine (milvus-lite) is a file ending in .db, got {url!r}; or give "
                         "http://host:19530 for a Milvus cluster")
    return str(path)


def _client(url: str) -> Any:
    """A cached ``MilvusClient`` for ``url`` (credentials from ``PRVR_MILVUS_TOKEN``)."""
    try:
        from pymilvus import MilvusClient
    except ImportError as error:  # pragma: no cover - depends on the install
        raise ImportError("the Milvus back-end needs pymilvus and milvus-lite: pip install 'prvr[milvus]'") from error
    url = public_url(url)
    with _clients_lock:
        client = _clients.get(url)
        if client is None:
            if not _is_remote(url):
                Path(url).parent.mkdir(parents=True, exist_ok=True)
            token = os.environ.get(TOKEN_ENV, "") if _is_remote(url) else ""
            client = MilvusClient(uri=url, token=token)
            _clients[url] = client
            logger.info("connected to Milvus at %s", url)
        return client


def new_index_uid() -> str:
    """A fresh 12-hex-digit uid naming one index's collections."""
    return uuid.uuid4().hex[:12]


def collection_prefix(index_uid: str, generation: str) -> str:
    """``prvr_<uid>_<generation>`` with non-alphanumerics as ``_`` (``gen-000003`` -> ``gen_000003``)."""
    prefix = f"prvr_{index_uid}_{re.sub(r'[^A-Za-z0-9_]', '_', generation)}"
    if not _NAME_OK.match(prefix) or len(prefix) > 200:
        raise ValueError(f"cannot name Milvus collections after {prefix!r}")
    return prefix


def list_collections(url: str, prefixes: tuple[str, ...]) -> list[str]:
    """The collections at ``url`` whose names start with one of ``prefixes``, sorted."""
    return sorted(name for name in _client(url).list_collections() if name.startswith(prefixes))


def drop_collections(url: str, names: list[str]) -> list[str]:
    """Drop the named collections that exist (the builder's clean-up of a failed or retired generation).

    Returns:
        The names dropped.
    """
    client = _client(url)
    dropped = []
    for name in names:
        if client.has_collection(name):
            client.drop_collection(name)
            dropped.append(name)
    if dropped:
        logger.info("dropped Milvus collections %s at %s", dropped, public_url(url))
    return dropped


# ------------------------------------------------------------------------------------------------------ helpers


def _normalized(x: np.ndarray) -> np.ndarray:
    out = np.array(x, dtype=np.float32, order="C", copy=True)
    norms = np.linalg.norm(out, axis=-1, keepdims=True)
    np.divide(out, norms, out=out, where=norms > 0)
    return out


def _index_params(index_type: str, num_tokens: int, given: dict[str, Any] | None) -> dict[str, Any]:
    params = dict(given or {})
    if index_type.startswith("IVF") and "nlist" not in params:
        params["nlist"] = nlist_for(max(1, num_tokens))
    if index_type == "IVF_PQ" and "m" not in params:
        params["m"] = 8
    if index_type == "HNSW":
        params.setdefault("M", 32)
        params.setdefault("efConstruction", 200)
    return params


# --------------------------------------------------------------------------------------------------------- index


class MilvusTokenIndex:
    """Clip- and frame-token collections in Milvus returning candidate videos (implements ``VectorIndex``).

    ``search`` asks each collection for its top ``K' = candidates_per_video x n_candidates`` tokens, keeps each
    video's best token per scale, unions the two video sets and orders them by ``w_c * clip + w_f * frame``. With the
    exact ``FLAT`` index type the candidates carry the same threshold bound as FAISS Flat (the searcher can then
    certify the top-k); approximate index types (IVF_*, HNSW, AUTOINDEX) certify nothing (``bound = +inf``).

    Args:
        dim: D.
        clip_weight: w_c >= 0.
        frame_weight: w_f >= 0.
        url: the engine (``*.db`` file for milvus-lite, ``http://host:19530`` for a cluster).
        prefix: collection name prefix; the collections are ``{prefix}_clip`` and ``{prefix}_frame``.
        index_type: Milvus index type (``FLAT`` exact; ``IVF_FLAT`` / ``IVF_SQ8`` / ``IVF_PQ`` / ``HNSW`` /
            ``AUTOINDEX`` approximate; milvus-lite has FLAT, IVF_FLAT and AUTOINDEX only); None = FLAT up to
            ``FLAT_MAX_TOKENS`` tokens of the first add, IVF_FLAT above.
        index_params: build parameters (``nlist``, ``M``, ``efConstruction``, ...); defaults from the token count.
        nprobe: IVF lists probed per query (default about 3% of nlist, at least 16).
        ef_search: HNSW ``ef``.
        shards: ``num_shards`` of each collection (cluster write parallelism; fixed at creation).
        replicas: in-memory replicas each collection is loaded with (cluster read throughput / availability).
        candidates_per_video: tokens fetched per requested candidate video.
    """

    use_gpu = False  # the Retriever asks: engine searches need no process-wide lock

    def __init__(
        self,
        dim: int,
        *,
        clip_weight: float,
        frame_weight: float,
        url: str,
        prefix: str,
        index_type: str | None = None,
        index_params: dict[str, Any] | None = None,
        nprobe: int | None = None,
        ef_search: int | None = None,
        shards: int = 1,
        replicas: int = 1,
        candidates_per_video: int = 4,
    ) -> None:
        if int(dim) < 1:
            raise ValueError(f"dim must be positive, got {dim}")
        if clip_weight < 0 or frame_weight < 0 or clip_weight + frame_weight <= 0:
            raise ValueError(
                f"clip_weight and frame_weight must be >= 0 and not both 0, got {clip_weight}, {frame_weight}"
            )
        if index_type is not None and index_type.upper() not in INDEX_TYPES:
            raise ValueError(f"Milvus index type must be one of {INDEX_TYPES}, got {index_type!r}")
        if candidates_per_video < 1 or shards < 1 or replicas < 1:
            raise ValueError(f"candidates_per_video, shards and replicas must be >= 1, got {candidates_per_video}, "
                             f"{shards}, {replicas}")
        if not _NAME_OK.match(prefix):
            raise ValueError(f"collection prefix must be letters, digits and _, got {prefix!r}")
        self.dim = int(dim)
        self.clip_weight = float(clip_weight)
        self.frame_weight = float(frame_weight)
        self.url = public_url(url)
        self.prefix = prefix
        self.index_type = index_type.upper() if index_type is not None else None
        self.index_params = dict(index_params or {})
        self._nprobe = nprobe
        self._ef_search = ef_search
        self.shards = int(shards)
        self.replicas = int(replicas)
        self.candidates_per_video = int(candidates_per_video)
        self._created = False
        self._video_ids = np.zeros(0, dtype=np.int64)
        self._clip_counts = np.zeros(0, dtype=np.int32)
        self._frame_counts = np.zeros(0, dtype=np.int32)

    # ------------------------------------------------------------------------------------------------ properties

    @property
    def collections(self) -> dict[str, str]:
        """``{"clip": name, "frame": name}``."""
        return {kind: f"{self.prefix}_{kind}" for kind in KINDS}

    @property
    def client(self) -> Any:
        return _client(self.url)

    @property
    def ntotal(self) -> int:
        """Tokens held by both collections."""
        return int(self._clip_counts.sum()) + int(self._frame_counts.sum())

    def _part_ntotal(self, kind: str) -> int:
        return int((self._clip_counts if kind == "clip" else self._frame_counts).sum())

    @property
    def num_videos(self) -> int:
        return int(self._video_ids.shape[0])

    @property
    def is_exact(self) -> bool:
        """True for the FLAT index type (exact brute force in the engine)."""
        return (self.index_type or "FLAT") in EXACT_INDEX_TYPES

    @property
    def read_only(self) -> bool:
        return False

    def __contains__(self, video_id: object) -> bool:
        return sorted_contains(self._video_ids, video_id)

    def _search_params(self) -> dict[str, Any]:
        params: dict[str, Any] = {}
        index_type = self.index_type or "FLAT"
        if index_type.startswith("IVF"):
            nlist = int(self.index_params.get("nlist", 1))
            params["nprobe"] = int(min(nlist, self._nprobe or max(16, -(-nlist // 32))))
        if index_type == "HNSW" and self._ef_search is not None:
            params["ef"] = int(self._ef_search)
        return params

    def describe(self) -> dict[str, Any]:
        """JSON-serialisable summary (the manifest's index section): engine, collections, index type, counts."""
        import pymilvus

        search = self._search_params()
        index_type = self.index_type or "FLAT"
        parts = {
            kind: {
                "factory": f"milvus:{index_type}",
                "collection": name,
                "ntotal": self._part_ntotal(kind),
                "exact": self.is_exact,
                "nlist": int(self.index_params["nlist"]) if "nlist" in self.index_params else None,
                "nprobe": search.get("nprobe"),
                "ef_search": search.get("ef"),
                "on_gpu": False,
            }
            for kind, name in self.collections.items()
        }
        return {
            "backend": "milvus",
            "engine": "milvus-lite" if not _is_remote(self.url) else "milvus",
            "engine_url": self.url,
            "pymilvus_version": pymilvus.__version__,
            "dim": self.dim,
            "metric": "ip",
            "index_type": index_type,
            "index_params": dict(self.index_params),
            "search_params": search,
            "shards": self.shards,
            "replicas": self.replicas,
            "clip_weight": self.clip_weight,
            "frame_weight": self.frame_weight,
            "candidates_per_video": self.candidates_per_video,
            "num_videos": self.num_videos,
            "ntotal": self.ntotal,
            "exact": self.is_exact,
            "read_only": False,
            "use_gpu": False,
            **parts,
        }

    # ----------------------------------------------------------------------------------------- search parameters

    @property
    def search_parameters(self) -> dict[str, Any]:
        return {"nprobe": self._nprobe, "ef_search": self._ef_search}

    def restore_search_parameters(self, parameters: dict[str, Any]) -> None:
        self._nprobe = parameters.get("nprobe")
        self._ef_search = parameters.get("ef_search")

    def set_nprobe(self, nprobe: int) -> None:
        if int(nprobe) < 1:
            raise ValueError(f"nprobe must be >= 1, got {nprobe}")
        if not (self.index_type or "FLAT").startswith("IVF"):
            raise ValueError(f"nprobe applies to IVF index types only; this index is {self.index_type or 'FLAT'}")
        self._nprobe = int(nprobe)

    def set_ef_search(self, ef_search: int) -> None:
        if int(ef_search) < 1:
            raise ValueError(f"ef_search must be >= 1, got {ef_search}")
        if self.index_type != "HNSW":
            raise ValueError(f"ef_search applies to HNSW only; this index is {self.index_type or 'FLAT'}")
        self._ef_search = int(ef_search)

    # ------------------------------------------------------------------------------------------------- engine

    def _create_collections(self, num_tokens: int) -> None:
        """Create both collections (schema, vector index, load); the index type is fixed here."""
        from pymilvus import DataType, MilvusClient

        if self.index_type is None:
            self.index_type = "FLAT" if num_tokens <= FLAT_MAX_TOKENS else "IVF_FLAT"
        self.index_params = _index_params(self.index_type, num_tokens, self.index_params)
        client = self.client
        for kind, name in self.collections.items():
            if client.has_collection(name):
                raise RuntimeError(f"Milvus collection {name} already exists at {self.url}; a generation's collections "
                                   "are written once (drop it, or build a new generation)")
            schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False,
                                                description=f"prvr {kind} tokens")
            schema.add_field("pk", DataType.INT64, is_primary=True, description="video_id << 8 | token index")
            schema.add_field("video_id", DataType.INT64)
            schema.add_field("vector", DataType.FLOAT_VECTOR, dim=self.dim)
            index_params = client.prepare_index_params()
            index_params.add_index(field_name="vector", index_type=self.index_type, metric_type="IP",
                                   params=self.index_params)
            client.create_collection(name, schema=schema, index_params=index_params, consistency_level="Strong",
                                     num_shards=self.shards)
            self._load(name)
        self._created = True
        logger.info("created Milvus collections %s (%s %s) at %s", list(self.collections.values()),
                    self.index_type, self.index_params, self.url)

    def _load(self, name: str) -> None:
        if self.replicas > 1:
            self.client.load_collection(name, replica_number=self.replicas)
        else:
            self.client.load_collection(name)

    def _insert(self, kind: str, pks: np.ndarray, vectors: np.ndarray) -> None:
        name = self.collections[kind]
        videos = pks >> TOKEN_BITS
        step = max(16, INSERT_BYTES // (4 * self.dim))
        for start in range(0, pks.shape[0], step):
            stop = start + step
            rows = [{"pk": int(p), "video_id": int(v), "vector": vec}
                    for p, v, vec in zip(pks[start:stop], videos[start:stop], vectors[start:stop])]
            self.client.insert(name, rows)

    def _engine_count(self, kind: str) -> int:
        result = self.client.query(self.collections[kind], filter="", output_fields=["count(*)"])
        return int(result[0]["count(*)"])

    # ----------------------------------------------------------------------------------------------- validation

    def _flatten(
        self, video_ids: Any, clip: Any, frame: Any, frame_mask: Any
    ) -> tuple[np.ndarray, dict[str, tuple[np.ndarray, np.ndarray]], np.ndarray, np.ndarray]:
        """Validate an add() batch (the checks of every back-end: ``index.token_ops.flatten_batch``)."""
        return flatten_batch(video_ids, clip, frame, frame_mask, dim=self.dim, indexed=self._video_ids,
                             normalize=_normalized)

    # --------------------------------------------------------------------------------------------------- writes

    def add(self, video_ids: Any, clip: Any, frame: Any, frame_mask: Any) -> None:
        """Insert the clip tokens and the valid frame tokens of V new videos into this index's collections.

        The first call creates the collections (index type chosen from this batch's clip-token count when None).
        """
        ids, tokens, clip_counts, frame_counts = self._flatten(video_ids, clip, frame, frame_mask)
        if ids.shape[0] == 0:
            return
        if not self._created:
            self._create_collections(int(tokens["clip"][0].shape[0]))
        for kind in KINDS:
            vectors, pks = tokens[kind]
            self._insert(kind, pks, vectors)
        all_ids = np.concatenate([self._video_ids, ids])
        order = np.argsort(all_ids, kind="stable")
        self._video_ids = all_ids[order]
        self._clip_counts = np.concatenate([self._clip_counts, clip_counts])[order]
        self._frame_counts = np.concatenate([self._frame_counts, frame_counts])[order]

    def remove(self, video_ids: Any) -> None:
        """Delete every token of the given videos from this index's collections (``video_id in [...]``)."""
        ids = np.unique(as_array(video_ids, np.int64).reshape(-1))
        if ids.size == 0:
            return
        known = np.isin(ids, self._video_ids)
        if not known.all():
            raise ValueError(f"videos {ids[~known][:10].tolist()} are not in the index (never added or already "
                             "removed)")
        for name in self.collections.values():
            for start in range(0, ids.shape[0], 1024):
                chunk = ",".join(str(int(v)) for v in ids[start : start + 1024])
                self.client.delete(name, filter=f"video_id in [{chunk}]")
        keep = ~np.isin(self._video_ids, ids)
        self._video_ids = self._video_ids[keep]
        self._clip_counts = self._clip_counts[keep]
        self._frame_counts = self._frame_counts[keep]

    def fork(self, prefix: str) -> MilvusTokenIndex:
        """A copy of this index in new collections ``{prefix}_clip`` / ``{prefix}_frame`` (this one is untouched).

        How a new generation starts from the active one: Milvus has no server-side collection copy, so the rows
        (float32 vectors, as inserted) are read back with a query iterator and re-inserted. The copy costs one pass
        over the index through the client; the token store's bf16 tokens are not used, so the copy is bit-exact.
        """
        other = MilvusTokenIndex(
            self.dim, clip_weight=self.clip_weight, frame_weight=self.frame_weight, url=self.url, prefix=prefix,
            index_type=self.index_type, index_params=self.index_params, nprobe=self._nprobe,
            ef_search=self._ef_search, shards=self.shards, replicas=self.replicas,
            candidates_per_video=self.candidates_per_video,
        )
        other._create_collections(max(1, self._part_ntotal("clip")))
        for kind, name in self.collections.items():
            iterator = self.client.query_iterator(name, batch_size=COPY_ROWS, filter="",
                                                  output_fields=["pk", "vector"])
            copied = 0
            try:
                while batch := iterator.next():
                    pks = np.fromiter((row["pk"] for row in batch), dtype=np.int64, count=len(batch))
                    vectors = np.asarray([row["vector"] for row in batch], dtype=np.float32)  # (B, D)
                    other._insert(kind, pks, vectors)
                    copied += len(batch)
            finally:
                iterator.close()
            if copied != self._part_ntotal(kind):
                raise RuntimeError(f"copied {copied} {kind} tokens from {name}, expected {self._part_ntotal(kind)}; "
                                   "the collection and the video list disagree: rebuild the index")
        other._video_ids = self._video_ids.copy()
        other._clip_counts = self._clip_counts.copy()
        other._frame_counts = self._frame_counts.copy()
        return other

    def drop(self) -> None:
        """Drop this index's collections (a failed or abandoned generation)."""
        drop_collections(self.url, list(self.collections.values()))
        self._created = False

    # --------------------------------------------------------------------------------------------------- search

    def _best_per_video(self, kind: str, query: np.ndarray, num_tokens: int) -> list[VideoHits]:
        ntotal = self._part_ntotal(kind)
        k = min(num_tokens, ntotal, MAX_TOPK)
        exact = self.is_exact
        exhausted = exact and k >= ntotal
        truncated = exact and num_tokens > MAX_TOPK and ntotal > MAX_TOPK
        results = self.client.search(self.collections[kind], data=list(query), limit=k, output_fields=[],
                                     search_params={"metric_type": "IP", "params": self._search_params()})
        return [video_hits(np.fromiter((hit["id"] for hit in hits), dtype=np.int64, count=len(hits)),
                           np.fromiter((hit["distance"] for hit in hits), dtype=np.float32, count=len(hits)),
                           exhausted=exhausted, truncated=truncated)
                for hits in results]

    def search(self, query: Any, n_candidates: int) -> list[Candidates]:
        """Candidate videos for each of the (Nq, D) queries, best approximate score first (see FaissTokenIndex)."""
        q, n = check_queries(query, self.dim, n_candidates)
        q = _normalized(q)
        if self.num_videos == 0:
            return empty_candidates(q.shape[0])
        num_tokens = self.candidates_per_video * n
        clip_hits = self._best_per_video("clip", q, num_tokens)
        frame_hits = self._best_per_video("frame", q, num_tokens)
        return [self._merge(clip, frame, n) for clip, frame in zip(clip_hits, frame_hits)]

    def _merge(self, clip: VideoHits, frame: VideoHits, n: int) -> Candidates:
        """``index.token_ops.merge_hits``; when an exact search hit Milvus's topk cap, every live video joins with
        the cut-offs as its unknown terms (upper bounds), so widening still terminates with a certified top-k."""
        return merge_hits(clip, frame, n, clip_weight=self.clip_weight, frame_weight=self.frame_weight,
                          exact=self.is_exact, live_videos=self._video_ids)

    # ------------------------------------------------------------------------------------------------ save/load

    def save(self, directory: str | Path) -> None:
        """Flush the collections (durable in the engine), then write ``videos.npz`` and the ``milvus_index.json``
        sidecar (URL without credentials, collection names, index type, counts) crash-safely into ``directory``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if not self._created:
            self._create_collections(1)
        for name in self.collections.values():
            self.client.flush(name)
        videos = directory / VIDEOS_NAME
        temp = directory / f".{VIDEOS_NAME}.tmp-{os.getpid()}"
        with open(temp, "wb") as handle:
            np.savez(handle, video_ids=self._video_ids, clip_counts=self._clip_counts,
                     frame_counts=self._frame_counts)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, videos)
        meta = {
            "format_version": FORMAT_VERSION,
            "engine_url": self.url,
            "prefix": self.prefix,
            "collections": self.collections,
            "dim": self.dim,
            "clip_weight": self.clip_weight,
            "frame_weight": self.frame_weight,
            "index_type": self.index_type,
            "index_params": self.index_params,
            "nprobe": self._nprobe,
            "ef_search": self._ef_search,
            "shards": self.shards,
            "replicas": self.replicas,
            "candidates_per_video": self.candidates_per_video,
            "ntotal": {kind: self._part_ntotal(kind) for kind in KINDS},
            "num_videos": self.num_videos,
            "files": {"videos": {"file": VIDEOS_NAME, "bytes": videos.stat().st_size, "sha256": file_sha256(videos)}},
        }
        write_text_atomic(directory / META_NAME, json.dumps(meta, indent=2, sort_keys=True))
        fsync_directory(directory)
        logger.info("saved Milvus index %s (%d videos / %d tokens) to %s", self.prefix, self.num_videos,
                    self.ntotal, directory)

    @classmethod
    def load(cls, directory: str | Path, *, mmap: bool = False, verify: bool = True,
             use_gpu: bool | Literal["auto"] = False) -> MilvusTokenIndex:
        """Reconnect to the collections a :meth:`save` recorded (``mmap`` / ``use_gpu`` do not apply).

        Args:
            directory: the directory given to ``save``.
            verify: check that both collections exist and hold the recorded token counts.

        Raises:
            FileNotFoundError: when the sidecar, videos file or a collection is missing.
            ValueError: when they disagree.
        """
        del mmap, use_gpu
        directory = Path(directory)
        meta_path = directory / META_NAME
        if not meta_path.is_file():
            raise FileNotFoundError(f"{meta_path} not found: {directory} is not a saved MilvusTokenIndex directory")
        fix = "rebuild the index generation"
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            if int(meta["format_version"]) != FORMAT_VERSION:
                raise ValueError(f"format_version {meta['format_version']}, this code reads {FORMAT_VERSION}")
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(f"{meta_path} is unusable ({error}); {fix}") from error
        index = cls(
            int(meta["dim"]), clip_weight=float(meta["clip_weight"]), frame_weight=float(meta["frame_weight"]),
            url=meta["engine_url"], prefix=meta["prefix"], index_type=meta["index_type"],
            index_params=meta["index_params"], nprobe=meta["nprobe"], ef_search=meta["ef_search"],
            shards=int(meta["shards"]), replicas=int(meta["replicas"]),
            candidates_per_video=int(meta["candidates_per_video"]),
        )
        with np.load(directory / VIDEOS_NAME, allow_pickle=False) as arrays:
            index._video_ids = arrays["video_ids"].astype(np.int64)
            index._clip_counts = arrays["clip_counts"].astype(np.int32)
            index._frame_counts = arrays["frame_counts"].astype(np.int32)
        if index.num_videos != int(meta["num_videos"]):
            raise ValueError(f"{directory / VIDEOS_NAME} lists {index.num_videos} videos, sidecar "
                             f"{meta['num_videos']}; {fix}")
        client = index.client
        for kind, name in index.collections.items():
            if not client.has_collection(name):
                raise FileNotFoundError(f"Milvus collection {name} (recorded in {meta_path}) does not exist at "
                                        f"{index.url}; {fix}")
            index._load(name)
            if verify and index._engine_count(kind) != int(meta["ntotal"][kind]):
                raise ValueError(f"Milvus collection {name} holds {index._engine_count(kind)} tokens but {meta_path} "
                                 f"records {meta['ntotal'][kind]}; {fix}")
        index._created = True
        return index
