"""The search facade: load the active index generation and answer text queries with ranked external video ids.

Shape letters: Nq queries, L text tokens, D_text text feature width, D hidden, N candidates, F frames.

Two stages: FAISS token search -> candidate videos, then the exact DreamPRVR score of each candidate from the bf16
token store (``index.search.search_topk``). On an exact (Flat) index the candidate search is widened until the top-k
is provably the brute-force top-k; approximate indexes use their calibrated nprobe / efSearch and candidate count
(``prvr index calibrate``). A two-tier index (manifest ``refine``) re-scores the compressed store's best ``refine_k``
videos with its finer ``refine/`` store. When a moment localiser is attached, each result also carries its top moments
in seconds.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, overload

import numpy as np
import torch

from prvr.index.backend import load_token_index
from prvr.index.faiss_store import FaissTokenIndex
from prvr.index.layout import REFINE_DIR, TOKENS_DIR, open_active
from prvr.index.manifest import IndexManifest
from prvr.index.search import search_topk
from prvr.index.token_store import TokenStore
from prvr.checkpoint import load_model
from prvr.config import ExperimentConfig
from prvr.data.preprocess import collate_queries, preprocess_query
from prvr.fileio import file_sha256
from prvr.model import DreamPRVR
from prvr.moments.spans import temporal_nms
from prvr.query_text import clean_queries
from prvr.types import Moment, MomentLocalizer, QueryBatch
from prvr.index.catalog import Database

__all__ = ["SearchResult", "Retriever"]

logger = logging.getLogger(__name__)


DEFAULT_NUM_MOMENTS = 5
# sentences per text-encoder forward at search time: length-sorted batches of 8 pad little; measured on MiniLM-L6,
# 1 thread, 64 capproxy queries: 10 ms a query at 8 against 20 ms at 64 (the encoder's default, for feature builds)
QUERY_ENCODER_BATCH = 8
DEFAULT_MOMENT_OVERLAP = 0.7  # temporal IoU above which a lower-scored moment of the same video is a duplicate


@dataclass(frozen=True)
class SearchResult:
    """One retrieved video.

    Attributes:
        video_id: the external video id.
        score: the exact DreamPRVR score ``w_c * max clip cos + w_f * max frame cos``.
        moments: predicted moments inside the video, best first (empty without a localiser, with
            ``localize=False``, or when the video's duration is unknown).
        relevance: the localiser's (F,) per-frame relevance curve, only with ``search(..., relevance=True)``.
        duration: the video's duration in seconds from the index database, None when unknown.
    """

    video_id: str
    score: float
    moments: tuple[Moment, ...] = ()
    relevance: tuple[float, ...] | None = None
    duration: float | None = None


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
        localizer: a :class:`~prvr.types.MomentLocalizer`, or None.
        moment_checkpoint: a localiser checkpoint loaded on first use (through
            ``prvr.moments.localizer.load_localizer``) when ``localizer`` is None.
        moment_overlap: moments of one video that overlap a better one by more than this temporal IoU are dropped
            from the results (a sampler returns near-copies of its best span); 1.0 keeps them all.
        moment_frames: an ``index.moment_frames.MomentFrameStore`` of the localiser's finer frame tokens, read
            instead of the retrieval frame tokens of ``store``; None = the retrieval frame tokens.
        refine: the second tier of a two-tier index (a finer store of the same videos as the compressed ``store``):
            it re-scores the ``refine_k`` best videos of ``store`` (``index.search.search_topk``), and the localiser
            reads its frame tokens; None: one tier.
        refine_k: the second tier's short-list length (required with ``refine``).
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
        localizer: MomentLocalizer | None = None,
        moment_checkpoint: Path | None = None,
        moment_overlap: float = DEFAULT_MOMENT_OVERLAP,
        moment_frames: Any | None = None,
        refine: TokenStore | None = None,
        refine_k: int | None = None,
    ) -> None:
        if not 0.0 <= moment_overlap <= 1.0:
            raise ValueError(f"moment_overlap must be a temporal IoU in [0, 1], got {moment_overlap}")
        if refine is not None and (isinstance(refine_k, bool) or not isinstance(refine_k, int) or refine_k < 1):
            raise ValueError(f"a refine tier needs a positive int refine_k (its short-list length), got {refine_k!r}")
        self.db = db
        self.generation_id = generation_id
        self.manifest = manifest
        self.model = model
        self.config = config
        self.faiss_index = faiss_index
        self.store = store
        self.text_encoder = text_encoder
        self._localizer = localizer
        self._moment_checkpoint = moment_checkpoint
        self.moment_overlap = moment_overlap
        self.moment_frames = moment_frames
        self.refine = refine
        self.refine_k = refine_k if refine is not None else None
        self._lock = threading.Lock()  # the torch model and text encoder
        self._localizer_lock = threading.Lock()
        self._search_lock = threading.Lock() if faiss_index.use_gpu is True else None  # GPU indexes: one caller
        self._warned_durations: set[str] = set()
        # the query-bank offsets alpha * t(v) of the index (index.bank), subtracted from every exact score
        self.video_term: Any | None = None
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
        localizer: MomentLocalizer | None = None,
        device: str = "cpu",
    ) -> Retriever:
        """Open the active generation of an index directory written by ``index.builder.build_index``.

        Args:
            index_dir: the index directory (holding ``index.db`` and ``generations/``).
            checkpoint: the model checkpoint; default the path recorded in the manifest. Its sha256 must match.
            text_encoder: the query text encoder; default a ``TokenFeatureEncoder`` of the manifest's text backbone
                path when it has one, else None (then only :meth:`search_features` works).
            localizer: a moment localiser; default the one of the manifest's moment checkpoint (loaded on first use
                through ``prvr.moments.localizer.load_localizer``), else its training-free ``moment_localizer``
                (``prvr.moments.zero_shot``, what a zero-shot index records), else none (results carry no moments).
            device: torch device of the query encoder.

        The manifest's ``search_defaults`` (``n_candidates`` and, after ``prvr index calibrate``, ``nprobe`` /
        ``ef_search``) are applied to the FAISS index.

        Returns:
            The Retriever.

        Raises:
            FileNotFoundError: when ``index_dir`` holds no index database or a file is missing.
            RuntimeError: when no generation is active yet.
            ValueError: when the checkpoint (or the moment checkpoint) is not the one the index was built with.
        """
        index_dir = Path(index_dir)
        active = open_active(index_dir)
        db, generation, gen_dir, manifest = active.db, active.generation, active.directory, active.manifest
        try:
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
            faiss_index = load_token_index(gen_dir, manifest, mmap=True)  # FAISS files or Milvus collections
            _apply_search_defaults(faiss_index, manifest)
            store = TokenStore(gen_dir / TOKENS_DIR, read_only=True)  # reads its own encoding and codebook
            _check_token_store(store, manifest.token_store, generation.directory)
            refine = refine_k = None
            if manifest.refine is not None:  # two tiers: the finer store re-scores the compressed one's short list
                refine = TokenStore(gen_dir / REFINE_DIR, read_only=True)
                _check_token_store(refine, manifest.refine["store"], generation.directory, REFINE_DIR)
                if len(refine) != len(store) or refine.dim != store.dim:
                    raise ValueError(f"generation {generation.directory}'s {REFINE_DIR}/ store holds {len(refine)} "
                                     f"videos of D = {refine.dim}, its {TOKENS_DIR}/ store {len(store)} of D = "
                                     f"{store.dim}: the tiers must hold the same videos; restore {REFINE_DIR}/ or "
                                     "rebuild the generation")
                refine_k = int(manifest.refine["refine_k"])
            moment_frames = None
            if manifest.moment_frames is not None:  # the localiser's finer frame tokens (index.moment_frames)
                from prvr.index.moment_frames import MomentFrameStore

                moment_frames = MomentFrameStore(gen_dir / manifest.moment_frames["dir"], read_only=True)
            moment_checkpoint = None
            record = manifest.moment_localizer
            if localizer is None and record is not None and record.get("kind") == "retrieval_cosine":
                from prvr.moments.zero_shot import RetrievalCosineLocalizer

                # measured better than the moment model on the selection queries: the model's own frame cosine
                localizer = RetrievalCosineLocalizer(model, config.data, float(record.get("level", 0.5)))
            elif localizer is None and manifest.moment_checkpoint is not None:
                moment_checkpoint = _checked_moment_checkpoint(index_dir, gen_dir, manifest)
            elif localizer is None and manifest.moment_localizer is not None:
                from prvr.moments.zero_shot import localizer_from_record

                localizer = localizer_from_record(manifest.moment_localizer)  # training-free: nothing to load
            if text_encoder is None and manifest.text_backbone is not None and manifest.text_backbone.get("path"):
                from prvr.text_encoders import load_query_encoder

                text_encoder = load_query_encoder(manifest.text_backbone, max_tokens=config.data.max_query_tokens,
                                                  batch_size=QUERY_ENCODER_BATCH)
            retriever = cls(db, generation.id, manifest, model, config, faiss_index, store, text_encoder,
                            localizer=localizer, moment_checkpoint=moment_checkpoint, moment_frames=moment_frames,
                            refine=refine, refine_k=refine_k)
            if manifest.query_bank is not None:
                from prvr.index.bank import video_term

                retriever.video_term = video_term(gen_dir, manifest.query_bank)
        except BaseException:
            active.close()
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
        from prvr.text_encoders import check_text_backbone

        check_text_backbone(self.config.data.text_backbone, getattr(encoder, "encoder_id", None),
                            what=f"the checkpoint of index generation {self.generation_id}",
                            found_what="the query encoder")
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

    @property
    def has_localizer(self) -> bool:
        """True when results can carry moments (a localiser is attached or the manifest names one)."""
        return self._localizer is not None or self._moment_checkpoint is not None

    def localizer(self) -> MomentLocalizer | None:
        """The moment localiser, loading the manifest's moment checkpoint on first use; None when there is none.

        Raises:
            RuntimeError: when the index names a moment checkpoint that cannot be loaded.
        """
        if self._localizer is not None or self._moment_checkpoint is None:
            return self._localizer
        with self._localizer_lock:
            if self._localizer is None:
                from prvr.moments import localizer as moment_localizer

                from prvr.moments.zero_shot import wrap_trained_localizer

                try:
                    trained = moment_localizer.load_localizer(self._moment_checkpoint)
                    # how this index reads the model (its relevance curve or its sampled spans), chosen by measurement
                    localizer = wrap_trained_localizer(trained, self.manifest.moment_localizer)
                except (OSError, ValueError, KeyError) as error:
                    raise RuntimeError(
                        f"this index has a moment checkpoint ({self._moment_checkpoint}) that cannot be loaded "
                        f"({error}); rebuild the index with a valid --moment-checkpoint, or search with "
                        "localize=False (`prvr query --no-moments`)"
                    ) from error
                self._check_localizer(localizer)
                self._localizer = localizer
                logger.info("moment localiser loaded from %s", self._moment_checkpoint)
        return self._localizer

    def _check_localizer(self, localizer: Any) -> None:
        """Refuse a localiser whose config says it reads other video features than the stored frame tokens (the
        moment frames when the index has them, else the retrieval frame tokens)."""
        config = getattr(localizer, "config", None)
        condition = getattr(config, "condition", None)
        video_dim = getattr(config, "video_dim", None)
        if self.moment_frames is not None:
            if condition == "retrieval" or (video_dim is not None and int(video_dim) != self.moment_frames.dim):
                raise RuntimeError(
                    f"the moment checkpoint {self._moment_checkpoint} conditions on {condition or 'other'} features "
                    f"of width {video_dim}, but the index stores {self.moment_frames.dim}-d moment frames for it; "
                    "rebuild the index with the moment model trained on those raw frame features (condition "
                    "'frames'), or search with localize=False (`prvr query --no-moments`)"
                )
            return
        hidden = self.config.model.hidden_size
        if condition == "frames" or (video_dim is not None and int(video_dim) != hidden):
            raise RuntimeError(
                f"the moment checkpoint {self._moment_checkpoint} conditions on {condition or 'other'} features of "
                f"width {video_dim}, but the index stores the retrieval model's {hidden}-d frame tokens; train the "
                "moment model on the retrieval frame tokens (condition 'retrieval') and rebuild the index with that "
                "--moment-checkpoint, or search with localize=False (`prvr query --no-moments`)"
            )

    # -------------------------------------------------------------------------------------------------- search

    @overload
    def search(self, query: str, k: int = ..., *, n_candidates: int | None = ..., localize: bool = ...,
               relevance: bool = ..., num_moments: int = ...) -> list[SearchResult]: ...

    @overload
    def search(self, query: Sequence[str], k: int = ..., *, n_candidates: int | None = ..., localize: bool = ...,
               relevance: bool = ..., num_moments: int = ...) -> list[list[SearchResult]]: ...

    def search(
        self,
        query: str | Sequence[str],
        k: int = 10,
        *,
        n_candidates: int | None = None,
        localize: bool = True,
        relevance: bool = False,
        num_moments: int = DEFAULT_NUM_MOMENTS,
    ) -> list[SearchResult] | list[list[SearchResult]]:
        """Rank videos for one text query or a list of them (a list is encoded in one call, searched in one batch).

        Args:
            query: a sentence, or a list of sentences.
            k: results per query.
            n_candidates: candidate videos re-ranked exactly (default: the manifest's search default); on an exact
                index only the first round's count (widened until the top-k is provably exact).
            localize: add moments to each result when a localiser is available.
            relevance: also return the localiser's per-frame relevance curve of each result.
            num_moments: moments per result at most.

        Returns:
            For a string, up to k :class:`SearchResult` best first; for a list, one such list per sentence.

        Raises:
            QueryTextError: (a ValueError) on a query the policy of :mod:`prvr.query_text` refuses: not text,
                invalid Unicode, nothing visible, longer than :data:`prvr.query_text.MAX_QUERY_CHARS`.
            ValueError: on k <= 0.
            RuntimeError: when no text encoder is available.
        """
        single = isinstance(query, str)
        texts = clean_queries([query] if single else query)  # the one query-text policy (prvr.query_text)
        n_candidates = self._default_candidates(n_candidates)
        _check_k(k, n_candidates)
        if self.text_encoder is None:
            raise RuntimeError(
                "this Retriever has no text encoder: the index manifest records no local text backbone path; pass "
                "text_encoder=TokenFeatureEncoder(<local model folder>) to Retriever.load, or use search_features "
                "with precomputed token features"
            )
        with self._lock:
            encoded = self.text_encoder.encode(texts)
        raw = [np.asarray(tokens, dtype=np.float32) for tokens in encoded.tokens]  # Nq x (L_i, D_text)
        max_tokens = self.config.data.max_query_tokens
        normalize = self.config.data.normalize_query_tokens
        arrays = [preprocess_query(tokens, max_tokens, normalize=normalize) for tokens in raw]  # Nq x (L_i, D_text)
        batch = collate_queries(arrays, [f"q{i}" for i in range(len(arrays))])
        results = self.search_features(batch, k, n_candidates=n_candidates, localize=localize, relevance=relevance,
                                       num_moments=num_moments, query_tokens=raw)
        return results[0] if single else results

    def search_features(
        self,
        tokens: QueryBatch,
        k: int = 10,
        n_candidates: int | None = None,
        *,
        localize: bool = True,
        relevance: bool = False,
        num_moments: int = DEFAULT_NUM_MOMENTS,
        query_tokens: Sequence[np.ndarray] | None = None,
    ) -> list[list[SearchResult]]:
        """Rank videos for queries given as preprocessed token features.

        Args:
            tokens: a QueryBatch of Nq queries: tokens (Nq, L, D_text) L2-normalised, mask (Nq, L).
            k: results per query.
            n_candidates: candidate videos re-ranked exactly in the first round (at least k are taken).
            localize: add moments to each result when a localiser is available.
            relevance: also return the per-frame relevance curves.
            num_moments: moments per result at most.
            query_tokens: Nq (L_i, D_text) float32 token features given to the localiser (what the text encoder
                produced); default the unpadded rows of ``tokens``.

        Returns:
            Nq lists of up to k :class:`SearchResult`, best first (ties by increasing internal id).
        """
        n_candidates = self._default_candidates(n_candidates)
        _check_k(k, n_candidates)
        if isinstance(num_moments, bool) or not isinstance(num_moments, int) or num_moments < 1:
            raise ValueError(f"num_moments must be a positive int, got {num_moments!r}")
        if len(tokens) == 0:
            raise ValueError("empty query batch (Nq = 0); pass at least one query")
        if tokens.tokens.dim() != 3 or tokens.tokens.shape[2] != self.config.model.text_dim:
            raise ValueError(
                f"query tokens must be (Nq, L, D_text = {self.config.model.text_dim}), got {tuple(tokens.tokens.shape)}"
            )
        if query_tokens is not None and len(query_tokens) != len(tokens):
            raise ValueError(f"query_tokens has {len(query_tokens)} entries for {len(tokens)} queries")
        with self._lock:
            vectors = self.model.encode_queries(tokens).float().cpu().numpy()  # (Nq, D)
        ranked = self.search_vectors(vectors, int(k), int(n_candidates))
        flat_ids = [int(video_id) for row in ranked for video_id in row.video_ids]
        external = self.db.external_ids(flat_ids) if flat_ids else []
        durations = self.db.video_durations(flat_ids) if flat_ids else []
        localizer = self.localizer() if localize else None
        results: list[list[SearchResult]] = []
        position = 0
        for query_row, row in enumerate(ranked):
            found = []
            for score in row.scores.tolist():
                name, duration = external[position], durations[position]
                position += 1
                found.append(SearchResult(name, float(score), duration=duration))
            if localizer is not None:
                if query_tokens is not None:
                    text = np.asarray(query_tokens[query_row], dtype=np.float32)
                else:
                    text = tokens.tokens[query_row][tokens.mask[query_row]].float().cpu().numpy()  # (L, D_text)
                found = self._localize(localizer, found, row.video_ids.tolist(), text, relevance, num_moments)
            results.append(found)
        return results

    def search_vectors(self, vectors: np.ndarray, k: int, n_candidates: int | None = None) -> list[Any]:
        """Stage 1 + 2 on (Nq, D) query vectors: ``index.search.RankedVideos`` per query (internal ids)."""
        n_candidates = self._default_candidates(n_candidates)
        _check_k(k, n_candidates)
        lock = self._search_lock
        if lock is not None:
            lock.acquire()
        try:
            return search_topk(self.faiss_index, self.store, vectors, int(k), int(n_candidates),
                               clip_weight=self.config.model.clip_weight,
                               frame_weight=self.config.model.frame_weight, video_term=self.video_term,
                               refine=self.refine, refine_k=self.refine_k)
        finally:
            if lock is not None:
                lock.release()

    def _localize(
        self,
        localizer: MomentLocalizer,
        found: list[SearchResult],
        video_ids: list[int],
        query_tokens: np.ndarray,
        relevance: bool,
        num_moments: int,
    ) -> list[SearchResult]:
        """``found`` (one query's results) with the localiser's moments: one token-store gather and one batched
        localiser call for all of them."""
        rows = [i for i, result in enumerate(found) if result.duration is not None and result.duration > 0]
        for result in found:
            if (result.duration is None or not result.duration > 0) and result.video_id not in self._warned_durations:
                self._warned_durations.add(result.video_id)
                logger.warning("video %s has no known duration in the index database: no moments for it (register "
                               "its duration to get moments)", result.video_id)
        if not rows:
            return found
        if self.moment_frames is not None:  # the localiser's own finer tokens: (F'_j, D_in) each
            frames = self.moment_frames.get([video_ids[i] for i in rows])
        else:
            finest = self.refine if self.refine is not None else self.store
            stored = finest.get([video_ids[i] for i in rows])
            frames = [stored.frame[j][stored.frame_mask[j]].numpy().astype(np.float32, copy=False)  # (F_j, D)
                      for j in range(len(rows))]
        with self._localizer_lock:
            # over-ask, then drop near-copies of better moments, so num_moments distinct ones remain where they exist
            localized = localizer.localize_many(query_tokens, frames, [float(found[i].duration) for i in rows],
                                                num_moments=3 * num_moments)
        found = list(found)
        for i, located in zip(rows, localized):
            result = found[i]
            moments = distinct_moments(located.moments, self.moment_overlap)[:num_moments]
            curve = tuple(float(x) for x in np.asarray(located.relevance).reshape(-1)) if relevance else None
            found[i] = SearchResult(result.video_id, result.score, moments, curve, result.duration)
        return found

    def _default_candidates(self, n_candidates: int | None) -> int:
        if n_candidates is not None:
            return n_candidates
        return int(self.manifest.search_defaults.get("n_candidates", 200))


def distinct_moments(moments: Sequence[Moment], max_overlap: float) -> tuple[Moment, ...]:
    """Moments best first, without those whose temporal IoU with a better one exceeds ``max_overlap`` (greedy NMS).

    >>> distinct_moments([Moment(0, 10, 0.9), Moment(1, 10, 0.8), Moment(20, 30, 0.7)], 0.7)
    (Moment(start_sec=0, end_sec=10, score=0.9), Moment(start_sec=20, end_sec=30, score=0.7))
    """
    ordered = sorted(moments, key=lambda moment: -moment.score)  # stable: ties keep the localiser's order
    if max_overlap >= 1.0 or len(ordered) < 2:
        return tuple(ordered)
    spans = torch.tensor([[m.start_sec, m.end_sec] for m in ordered], dtype=torch.float64)  # (Q, 2)
    scores = torch.tensor([m.score for m in ordered], dtype=torch.float64)  # (Q,)
    keep = temporal_nms(spans, scores, max_overlap)
    return tuple(ordered[i] for i in keep.tolist())


def _check_token_store(store: TokenStore, recorded: dict[str, Any] | None, generation: str,
                       folder: str = TOKENS_DIR) -> None:
    """Refuse a token store whose encoding or codebook is not the one the manifest records (``recorded``: the
    manifest's ``token_store``, or the ``store`` of its ``refine``; None in manifests written before the
    ``token_store`` field existed, trusted: the store describes itself)."""
    if recorded is None:
        return
    actual = store.codec_record()
    for key in ("dtype", "codebook"):
        if recorded.get(key) != actual.get(key):
            raise ValueError(
                f"the {folder}/ store of generation {generation} has {key} {actual.get(key)!r} but its manifest "
                f"records {recorded.get(key)!r}; the {folder}/ folder was replaced: restore it or rebuild the "
                "generation"
            )


def _apply_search_defaults(faiss_index: FaissTokenIndex, manifest: IndexManifest) -> None:
    """Set the calibrated nprobe / efSearch of the manifest on the loaded index."""
    defaults = manifest.search_defaults
    if defaults.get("nprobe") is not None:
        faiss_index.set_nprobe(int(defaults["nprobe"]))
    if defaults.get("ef_search") is not None:
        faiss_index.set_ef_search(int(defaults["ef_search"]))


def _checked_moment_checkpoint(index_dir: Path, gen_dir: Path, manifest: IndexManifest) -> Path:
    """The manifest's moment checkpoint, verified against its recorded sha256."""
    assert manifest.moment_checkpoint is not None
    path = index_dir / manifest.moment_checkpoint["path"]
    if not path.is_file():
        raise FileNotFoundError(f"moment checkpoint {path} (recorded in {gen_dir}/manifest.json) does not exist; "
                                "rebuild the index with --moment-checkpoint, or pass localizer= to Retriever.load")
    sha = file_sha256(path)
    if sha != manifest.moment_checkpoint["sha256"]:
        raise ValueError(f"moment checkpoint {path} has sha256 {sha[:12]}... but the manifest records "
                         f"{manifest.moment_checkpoint['sha256'][:12]}...; the file was replaced: rebuild the index "
                         "with --moment-checkpoint")
    return path
