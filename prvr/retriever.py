"""The search facade: load the active index generation and answer text queries with ranked external video ids.

Shape letters: Nq queries, L text tokens, D_text text feature width, D hidden, N candidates.

Two stages (spec/index.md 6.1): FAISS token search -> candidate videos, then the exact DreamPRVR score of each
candidate from the bf16 token store. With an exact (Flat) index and ``n_candidates`` >= the number of videos the
result equals a brute-force ranking of the whole corpus (up to bf16 rounding of the stored tokens).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from index.builder import DB_NAME, FAISS_DIR, TOKENS_DIR, generation_path
from index.faiss_store import FaissTokenIndex
from index.manifest import IndexManifest, load_manifest
from index.rerank import exact_rerank
from index.token_store import TokenStore
from prvr.checkpoint import load_model
from prvr.config import ExperimentConfig
from prvr.data.preprocess import collate_queries, preprocess_query
from prvr.fileio import file_sha256
from prvr.model import DreamPRVR
from prvr.types import QueryBatch
from services.db import Database, open_database

__all__ = ["SearchResult", "Retriever"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SearchResult:
    """One retrieved video.

    Attributes:
        video_id: the external video id.
        score: the exact DreamPRVR score ``w_c * max clip cos + w_f * max frame cos``.
        moments: predicted moments inside the video (empty until a localizer is attached).
    """

    video_id: str
    score: float
    moments: tuple = ()


def _check_k(k: int, n_candidates: int) -> None:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k <= 0:
        raise ValueError(f"k must be a positive int, got {k!r}")
    if isinstance(n_candidates, bool) or not isinstance(n_candidates, (int, np.integer)) or n_candidates <= 0:
        raise ValueError(f"n_candidates must be a positive int, got {n_candidates!r}")


class Retriever:
    """Text -> ranked videos over one index generation (use :meth:`load`).

    Thread-safe: concurrent ``search`` calls share one lock around the model, FAISS and re-rank calls; the id
    mapping goes through the database outside the lock.

    Args:
        db: the index's metadata database.
        generation_id: the generation being served.
        manifest: its manifest.
        model: the DreamPRVR of the manifest's checkpoint (eval mode).
        config: the checkpoint's experiment config.
        faiss_index: the generation's FAISS token index.
        store: the generation's token store.
        text_encoder: an object with ``encode(texts).tokens`` (``prvr.text_encoders.TokenFeatureEncoder``), or None.
    """

    def __init__(
        self,
        db: Database,
        generation_id: int,
        manifest: IndexManifest,
        model: DreamPRVR,
        config: ExperimentConfig,
        faiss_index: FaissTokenIndex,
        store: TokenStore,
        text_encoder: Any | None = None,
    ) -> None:
        self.db = db
        self.generation_id = generation_id
        self.manifest = manifest
        self.model = model
        self.config = config
        self.faiss_index = faiss_index
        self.store = store
        self.text_encoder = text_encoder
        self._lock = threading.Lock()
        if text_encoder is not None:
            self._check_text_encoder(text_encoder)

    # -------------------------------------------------------------------------------------------------- loading

    @classmethod
    def load(
        cls,
        index_dir: str | Path,
        *,
        checkpoint: str | Path | None = None,
        text_encoder: Any | None = None,
        device: str = "cpu",
    ) -> Retriever:
        """Open the active generation of an index directory written by ``index.builder.build_index``.

        Args:
            index_dir: the index directory (holding ``index.db`` and ``generations/``).
            checkpoint: the model checkpoint; default the path recorded in the manifest. Its sha256 must match.
            text_encoder: the query text encoder; default a ``TokenFeatureEncoder`` of the manifest's text backbone
                path when it has one, else None (then only :meth:`search_features` works).
            device: torch device of the query encoder.

        Returns:
            The Retriever.

        Raises:
            FileNotFoundError: when ``index_dir`` holds no index database or a file is missing.
            RuntimeError: when no generation is active yet.
            ValueError: when the checkpoint is not the one the index was built with.
        """
        index_dir = Path(index_dir)
        db_path = index_dir / DB_NAME
        if not db_path.is_file():
            raise FileNotFoundError(f"{db_path} not found: {index_dir} is not an index directory; build one with "
                                    "`prvr build-index`")
        db = open_database(db_path)
        try:
            generation = db.active_generation()
            if generation is None:
                raise RuntimeError(f"{index_dir} has no active index generation (no build finished yet); run "
                                   "`prvr build-index` and wait for it to complete")
            gen_dir = generation_path(index_dir, generation.directory)
            manifest = load_manifest(gen_dir)
            # the builder stores the checkpoint inside the index (a path relative to it); older or external
            # manifests may hold an absolute path
            checkpoint_path = Path(checkpoint) if checkpoint is not None else index_dir / manifest.checkpoint_path
            if not checkpoint_path.is_file():
                raise FileNotFoundError(f"checkpoint {checkpoint_path} (recorded in {gen_dir}/manifest.json) does not "
                                        "exist; pass checkpoint= pointing at a copy of it")
            sha = file_sha256(checkpoint_path)
            if sha != manifest.checkpoint_sha256:
                raise ValueError(
                    f"checkpoint {checkpoint_path} has sha256 {sha[:12]}... but index generation {generation.directory} "
                    f"was built with {manifest.checkpoint_sha256[:12]}... ({manifest.checkpoint_path}); query vectors of "
                    "another model do not match the indexed tokens: pass that checkpoint or rebuild the index"
                )
            model, config, _ = load_model(checkpoint_path, device=device)
            faiss_index = FaissTokenIndex.load(gen_dir / FAISS_DIR, mmap=True, use_gpu=False)
            store = TokenStore(gen_dir / TOKENS_DIR, read_only=True)
            if text_encoder is None and manifest.text_backbone is not None and manifest.text_backbone.get("path"):
                from prvr.text_encoders import TokenFeatureEncoder

                text_encoder = TokenFeatureEncoder(manifest.text_backbone["path"],
                                                   max_tokens=config.data.max_query_tokens)
            retriever = cls(db, generation.id, manifest, model, config, faiss_index, store, text_encoder)
        except BaseException:
            db.close()
            raise
        logger.info("serving index generation %s: %d videos", generation.directory, faiss_index.num_videos)
        return retriever

    def close(self) -> None:
        """Release the database connections."""
        self.db.close()

    def __enter__(self) -> Retriever:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _check_text_encoder(self, encoder: Any) -> None:
        dim = getattr(encoder, "dim", None)
        if dim is not None and int(dim) != self.config.model.text_dim:
            raise ValueError(
                f"the text encoder gives {dim}-d token features but the model expects text_dim = "
                f"{self.config.model.text_dim}; use the backbone the query features were extracted with"
            )

    @property
    def num_videos(self) -> int:
        """Videos in the served generation."""
        return self.faiss_index.num_videos

    # -------------------------------------------------------------------------------------------------- search

    def search(
        self, query: str | Sequence[str], k: int = 10, *, n_candidates: int | None = None
    ) -> list[SearchResult] | list[list[SearchResult]]:
        """Rank videos for one text query or a list of them.

        Args:
            query: a sentence, or a list of sentences.
            k: results per query.
            n_candidates: candidate videos re-ranked exactly (default: the manifest's search default, 200).

        Returns:
            For a string, up to k :class:`SearchResult` best first; for a list, one such list per sentence.

        Raises:
            ValueError: on an empty query or k <= 0.
            RuntimeError: when no text encoder is available.
        """
        single = isinstance(query, str)
        texts = [query] if single else list(query)
        if not texts:
            raise ValueError("empty query list; pass at least one sentence")
        for position, text in enumerate(texts):
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f"query {position} is empty or not a string ({text!r}); pass non-empty sentences")
        n_candidates = self._default_candidates(n_candidates)
        _check_k(k, n_candidates)
        if self.text_encoder is None:
            raise RuntimeError(
                "this Retriever has no text encoder: the index manifest records no local text backbone path; pass "
                "text_encoder=TokenFeatureEncoder(<local model folder>) to Retriever.load, or use search_features "
                "with precomputed token features"
            )
        with self._lock:
            encoded = self.text_encoder.encode([text.strip() for text in texts])
        max_tokens = self.config.data.max_query_tokens
        arrays = [preprocess_query(tokens, max_tokens) for tokens in encoded.tokens]  # Nq x (L_i, D_text)
        batch = collate_queries(arrays, [f"q{i}" for i in range(len(arrays))])
        results = self.search_features(batch, k, n_candidates=n_candidates)
        return results[0] if single else results

    def search_features(
        self, tokens: QueryBatch, k: int = 10, n_candidates: int | None = None
    ) -> list[list[SearchResult]]:
        """Rank videos for queries given as preprocessed token features.

        Args:
            tokens: a QueryBatch of Nq queries: tokens (Nq, L, D_text) L2-normalised, mask (Nq, L).
            k: results per query.
            n_candidates: candidate videos re-ranked exactly (at least k are taken).

        Returns:
            Nq lists of up to k :class:`SearchResult`, best first (ties by increasing internal id).
        """
        n_candidates = self._default_candidates(n_candidates)
        _check_k(k, n_candidates)
        if len(tokens) == 0:
            raise ValueError("empty query batch (Nq = 0); pass at least one query")
        if tokens.tokens.dim() != 3 or tokens.tokens.shape[2] != self.config.model.text_dim:
            raise ValueError(
                f"query tokens must be (Nq, L, D_text = {self.config.model.text_dim}), got {tuple(tokens.tokens.shape)}"
            )
        with self._lock:
            vectors = self.model.encode_queries(tokens).float().cpu().numpy()  # (Nq, D)
            candidates = self.faiss_index.search(vectors, max(int(n_candidates), int(k)))
            ranked = exact_rerank(
                vectors,
                candidates,
                self.store,
                clip_weight=self.config.model.clip_weight,
                frame_weight=self.config.model.frame_weight,
                k=int(k),
            )
        flat_ids = [video_id for row in ranked for video_id, _ in row]
        external = iter(self.db.external_ids(flat_ids)) if flat_ids else iter(())
        return [[SearchResult(next(external), float(score)) for _, score in row] for row in ranked]

    def _default_candidates(self, n_candidates: int | None) -> int:
        if n_candidates is not None:
            return n_candidates
        return int(self.manifest.search_defaults.get("n_candidates", 200))
