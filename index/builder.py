"""The indexing facade: encode a corpus's videos once and commit them as a new, crash-safe index generation.

Shape letters: V videos, B videos per batch, C clip tokens, F frame tokens, D hidden.

The index directory's files are described in :mod:`prvr.index.layout`. Each generation is a full snapshot: a build on
top of an active generation copies its token store (both tiers of a two-tier index, ``refine_dtype``), loads its FAISS
index writable, adds the videos it does not hold yet and saves everything into a fresh directory (`prvr index add`);
:func:`remove_videos` does the same with FAISS ``remove_ids`` and store tombstones (`prvr index remove`), and
:func:`rewrite_manifest` swaps only the search settings of the active manifest (`prvr index calibrate`). Only after
every file is fsynced does :meth:`prvr.index.catalog.Database.activate_generation` flip the active generation in one
transaction, so a build killed at any point leaves the previous generation active and loadable.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import torch
from tqdm import tqdm

from prvr.index.bank import load_bank, write_bank
from prvr.index.backend import (
    BACKENDS,
    drop_engine_collections,
    engine_record,
    index_subdir,
    load_token_index,
    new_milvus_index,
    start_generation,
)
from prvr.index.faiss_store import FaissTokenIndex, choose_factory, nlist_for
from prvr.index.manifest import MANIFEST_NAME, IndexManifest, _utc_now_iso, write_manifest
from prvr.index.resume import RESUME_NAME, ResumePoint, clear_snapshots, ids_digest, read_resume_point, write_snapshot
from prvr.index.token_codec import CODEC_NAMES_HELP, is_codec_name
from prvr.index.search import DEFAULT_REFINE_K
from prvr.index.token_store import STORAGE, TokenStore
from prvr.checkpoint import load_model
from prvr.data.dataset import iter_video_batches
from prvr.fileio import atomic_path, exclusive_lock, file_sha256, fsync_directory
from prvr.model import DreamPRVR
from prvr.moments.zero_shot import localizer_from_record as zero_shot_localizer_from_record
from prvr.moments.zero_shot import ZeroShotMomentConfig
from prvr.moments.zero_shot import localizer_record as zero_shot_localizer_record
from prvr.moments.zero_shot import RETRIEVAL_COSINE_KIND, RetrievalCosineLocalizer, wrap_trained_localizer
from prvr.index.moment_frames import MOMENT_FRAMES_DIR, MomentFrameStore
from prvr.types import VideoCorpus, VideoTokens
from prvr.zero_shot import bank_term
from prvr.index.catalog import Database, GenerationStatus, VideoRecord, open_database
from prvr.index.layout import (
    DATABASE_URL_FILE,
    FAISS_DIR,
    LOCK_NAME,
    MODELS_DIR,
    REFINE_DIR,
    TOKENS_DIR,
    database_location,
    find_active,
    generation_path,
    is_index_dir,
    open_active,
    record_database_url,
)

__all__ = [
    "DEFAULT_N_CANDIDATES",
    "DEFAULT_REFINE_K",
    "BuildResult",
    "build_index",
    "check_refine_tier",
    "check_token_dtype",
    "remove_videos",
    "rewrite_manifest",
]

logger = logging.getLogger(__name__)

DEFAULT_N_CANDIDATES = 200
DEFAULT_CHECKPOINT_EVERY = 50_000  # videos between resume snapshots of a FAISS build
MAX_TRAIN_VIDEOS = 4096  # cap of the IVF / PQ training sample (videos encoded twice)


@dataclass(frozen=True)
class BuildResult:
    """What a build committed.

    Attributes:
        generation_id: the id of the now active generation.
        directory: its directory (``out_dir/generations/gen-XXXXXX``).
        num_videos: videos the generation holds.
        new_videos: videos encoded by this build (the others came from the previous generation).
        ntotal: FAISS tokens (clip + frame).
        manifest: the written manifest.
    """

    generation_id: int
    directory: Path
    num_videos: int
    new_videos: int
    ntotal: int
    manifest: IndexManifest


def check_token_dtype(token_dtype: str, option: str = "--token-dtype") -> None:
    """Refuse an unknown token store encoding early (before any encoding work), naming the valid ones."""
    if token_dtype not in STORAGE and not is_codec_name(token_dtype):
        raise ValueError(f"unknown {option} {token_dtype!r}; use {CODEC_NAMES_HELP}")


def check_refine_tier(token_dtype: str, refine_dtype: str | None, refine_k: int, *, first_build: bool = True) -> None:
    """Refuse a second tier that cannot work, early (before any encoding work).

    Args:
        token_dtype: the first tier's encoding (only checked against ``refine_dtype`` on a first build).
        refine_dtype: the second tier's encoding, or None (one tier).
        refine_k: the short-list length (a positive int, whatever ``refine_dtype``).
        first_build: False when the index exists already (its first tier is kept, ``token_dtype`` is ignored).

    Raises:
        ValueError: on a ``refine_k`` below 1, an unknown ``refine_dtype``, or (first build) a ``refine_dtype`` beside
            an uncompressed or equal ``token_dtype``.
    """
    if isinstance(refine_k, bool) or not isinstance(refine_k, (int, np.integer)) or refine_k < 1:
        raise ValueError(f"--refine-k must be a positive int (the videos the compressed tier keeps for the finer one "
                         f"to re-score), got {refine_k!r}")
    if refine_dtype is None:
        return
    check_token_dtype(refine_dtype, "--refine-dtype")
    if not first_build:
        return
    if not is_codec_name(token_dtype):
        raise ValueError(f"--refine-dtype {refine_dtype} re-scores a compressed first tier, but --token-dtype "
                         f"{token_dtype} is not compressed (one tier already scores to {token_dtype} precision); "
                         "give a compressed --token-dtype (sq8, sq4, pqM, pcaK) with it, or drop --refine-dtype")
    if refine_dtype == token_dtype:
        raise ValueError(f"--refine-dtype {refine_dtype} equals --token-dtype: the second tier would re-score with the "
                         "same tokens; choose a finer encoding (e.g. bfloat16 or float32)")


def _build_lock(index_dir: Path) -> contextlib.AbstractContextManager[None]:
    """Serialise builders of one index directory (an exclusive lock file, released when the process dies)."""
    return exclusive_lock(index_dir / LOCK_NAME, busy_message=f"another build holds {index_dir / LOCK_NAME}; wait "
                                                              "for it to finish (one writer per index)")


def _abandon_stale_builds(db: Database, index_dir: Path, keep: int | None = None) -> None:
    """Drop generations left ``building`` by crashed builds (safe: we hold the build lock) and their directories.

    The directory goes first and the row last: a crash in between leaves the row, so the next build finishes the
    job (the other order would orphan the directory, which no row names and no later build would remove).
    ``keep``: the id of a building generation to leave alone (the one a build resumes, or keeps resumable).
    """
    for generation in db.generations(GenerationStatus.BUILDING):
        if generation.id == keep:
            continue
        shutil.rmtree(generation_path(index_dir, generation.directory), ignore_errors=True)
        drop_engine_collections(generation.params, generation.directory)
        name = db.abandon_generation(generation.id)
        logger.warning("removed generation %s left behind by an interrupted build", name)


def _as_numpy(tokens: VideoTokens) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return (
        tokens.clip.detach().float().cpu().numpy(),  # (B, C, D)
        tokens.frame.detach().float().cpu().numpy(),  # (B, F, D)
        tokens.frame_mask.detach().cpu().numpy().astype(bool),  # (B, F)
    )


def _needs_training(factory: str) -> bool:
    return not factory.endswith("Flat") or factory.startswith("IVF")


def _train_sample(
    model: DreamPRVR, corpus: VideoCorpus, video_ids: Sequence[str], factory: str, batch_size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Encode an evenly spaced sample of videos for IVF / PQ training: ~max(64 x nlist, 65536) clip tokens."""
    clips = corpus.config.clip_bins
    wanted_tokens = max(64 * nlist_for(max(1, len(video_ids) * clips)), 1 << 16)
    count = min(len(video_ids), MAX_TRAIN_VIDEOS, math.ceil(wanted_tokens / clips))
    picks = np.unique(np.linspace(0, len(video_ids) - 1, count).round().astype(np.int64))
    parts = [_as_numpy(model.encode_videos(batch)) for batch in
             iter_video_batches(corpus, batch_size, [video_ids[i] for i in picks], cache=False)]
    max_frames = max(frame.shape[1] for _, frame, _ in parts)
    clip = np.concatenate([c for c, _, _ in parts])  # (V_s, C, D)
    frame = np.concatenate(
        [np.pad(f, ((0, 0), (0, max_frames - f.shape[1]), (0, 0))) for _, f, _ in parts]
    )  # (V_s, F_max, D)
    mask = np.concatenate([np.pad(m, ((0, 0), (0, max_frames - m.shape[1]))) for _, _, m in parts])  # (V_s, F_max)
    logger.info("training %s on %d sampled videos", factory, clip.shape[0])
    return clip, frame, mask


def build_index(
    checkpoint: str | Path,
    corpus: VideoCorpus,
    out_dir: str | Path,
    *,
    collection_name: str,
    factory: str | None = None,
    batch_size: int = 64,
    text_backbone: dict[str, Any] | None = None,
    n_candidates: int | None = None,
    candidates_per_video: int = 4,
    moment_checkpoint: str | Path | None = None,
    moment_localizer: dict[str, Any] | None = None,
    moment_corpus: VideoCorpus | None = None,
    query_bank: Any | None = None,
    bank_k: int = 200,
    bank_alpha: float = 0.5,
    bank_source: str = "given",
    token_dtype: str = "bfloat16",
    refine_dtype: str | None = None,
    refine_k: int = DEFAULT_REFINE_K,
    database_url: str | None = None,
    backend: str | None = None,
    engine: dict[str, Any] | None = None,
    checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY,
    progress: bool = True,
) -> BuildResult:
    """Encode the corpus's videos and commit them, with the active generation's videos, as a new generation.

    A FAISS build that is killed or interrupted (Ctrl-C) after a snapshot resumes when the same build is run again
    (same checkpoint, corpus and settings; :mod:`prvr.index.resume`); a build that fails with an error is removed.

    Args:
        checkpoint: a checkpoint written by ``prvr.checkpoint.save_checkpoint``.
        corpus: the split whose videos are added (external id = video id).
        out_dir: the index directory (created when missing).
        collection_name: the collection name recorded in the manifest's data source.
        factory: FAISS factory string for both token indexes; default ``choose_factory`` of each index's expected
            token count (for a first build; later builds keep the previous generation's indexes).
        batch_size: videos encoded per forward pass.
        text_backbone: ``{"id": ..., "path": local model folder or None}`` of the query text encoder, recorded for
            the Retriever; default: kept from the previous generation, else None.
        n_candidates: default candidate videos per query, recorded in the manifest; default: the previous
            generation's search defaults (calibrated ones included), else ``DEFAULT_N_CANDIDATES``.
        candidates_per_video: FAISS tokens fetched per candidate video (K' = this x n_candidates).
        moment_checkpoint: a moment-localiser checkpoint (``prvr.moments.localizer.load_localizer`` reads it),
            copied into the index under its sha256 and recorded in the manifest; default: the previous generation's.
        moment_localizer: a training-free localiser record (``prvr.moments.zero_shot.localizer_record``) for the
            manifest; default: the previous generation's, else the zero-shot localiser for a zero-shot model
            (``model.kind == "zero_shot"``: its frame tokens and queries share one space) without a moment checkpoint.
            Beside a moment checkpoint: how search reads it (``prvr.moments.zero_shot.relevance_span_record()``).
        moment_corpus: the same videos at the moment localiser's resolution (e.g. the split opened with
            ``data.max_frames`` = the moment model's): their frame tokens ``moment_corpus.video(id)[1]`` are stored
            in ``<generation>/moment_frames/`` (``index.moment_frames``) and the localiser reads them instead of the
            retrieval frame tokens; later builds of such an index need it too (default: none, or refused then).
        query_bank: (Nb, D) encoded bank queries (the model's ``encode_queries``) of a FIRST build: each video's
            term ``mean top-k s(bank, v)`` (``prvr.zero_shot.bank_term``, k = ``bank_k``) is stored with the bank in
            the generation (``index.bank``) and search scores ``s(q, v) - bank_alpha * t(v)``. Later builds of an
            index with a bank give their new videos the term of the stored bank (another bank is refused).
        bank_k / bank_alpha: the term's k and weight a.
        bank_source: what the bank was (a split, a file), recorded in the manifest.
        token_dtype: encoding of the re-rank token store of a first build: ``"bfloat16"`` (half the bytes),
            ``"float32"`` (scores equal the model's up to float32 rounding, so rankings match ``prvr eval`` exactly),
            or a compressed one of ``index.token_codec`` (``"pqM"``: M bytes per token, its codebook trained on the
            FAISS training sample with the config's seed; ``"sq8"`` / ``"sq4"``). Later builds keep the existing
            store's encoding and codebook (the store is copied, so new videos are encoded with the same codebook).
        refine_dtype: the encoding of a second, finer token store of a first build beside a compressed
            ``token_dtype`` (e.g. ``"pca32"`` with ``"sq8"`` / ``"bfloat16"`` / ``"float32"``), in ``refine/``: search
            keeps the compressed store's best ``refine_k`` candidates and re-scores them with it
            (``index.search.search_topk``); its codec, when it needs one, is trained on the same sample. Default
            None: one tier. Later builds keep the index's tiers (another ``refine_dtype`` is refused).
        refine_k: the short-list length of the second tier (first build; later builds keep the index's).
        database_url: a SQLAlchemy URL for the metadata of a NEW index (e.g. PostgreSQL), written to
            ``database.url`` in the index directory (``${VAR}`` is expanded when opened); default the SQLite file
            ``index.db`` inside it. An existing index keeps its database.
        backend: token-index back-end of a NEW index, ``"faiss"`` (default) or ``"milvus"``; later builds keep the
            active generation's (another value is refused).
        engine: Milvus settings of a new index: ``{"url": "*.db" file or "http://host:19530", "shards": 1,
            "replicas": 1, "index_params": {...}}``; ``factory`` is then a Milvus index type (FLAT, IVF_FLAT, ...).
        checkpoint_every: videos between resume snapshots of a FAISS build (one is also taken after training the
            quantisers); 0 turns snapshots, and so resuming, off.
        progress: show a tqdm bar.

    Returns:
        The :class:`BuildResult` of the activated generation.

    Raises:
        ValueError: on a checkpoint other than the active generation's, or corpus dims that do not fit the model.
        RuntimeError: when another build of ``out_dir`` is running.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if checkpoint_every < 0:
        raise ValueError(f"checkpoint_every must be >= 0 videos (0: no resume snapshots), got {checkpoint_every}")
    check_token_dtype(token_dtype)
    check_refine_tier(token_dtype, refine_dtype, refine_k, first_build=False)  # against token_dtype: first build
    if (n_candidates is not None and n_candidates < 1) or candidates_per_video < 1:
        raise ValueError(f"n_candidates and candidates_per_video must be >= 1, got {n_candidates}, "
                         f"{candidates_per_video}")
    if text_backbone is not None and "id" not in text_backbone:
        raise ValueError(f"text_backbone must be {{'id': ..., 'path': ...}}, got {text_backbone!r}")
    checkpoint = Path(checkpoint).resolve()
    if not checkpoint.is_file():
        raise FileNotFoundError(f"checkpoint {checkpoint} does not exist; pass the best.pt of a `prvr train` run")
    if moment_checkpoint is not None and not Path(moment_checkpoint).is_file():
        raise FileNotFoundError(f"moment checkpoint {moment_checkpoint} does not exist; pass the file written by the "
                                "moment localiser's training")
    if moment_checkpoint is not None and moment_corpus is None:
        from prvr.moments.localizer import moment_checkpoint_config

        moment_config = moment_checkpoint_config(moment_checkpoint)
        if moment_config is not None and moment_config.condition == "frames":  # search could never localise
            raise ValueError(f"moment checkpoint {moment_checkpoint} reads raw frame features "
                             f"({moment_config.data.video_feature}, up to {moment_config.data.max_frames} tokens), not "
                             "the retrieval tokens this index stores; pass moment_corpus (the same videos opened with "
                             "its data config; `prvr build-index --data` does this) or a localiser trained with "
                             "--retrieval-checkpoint")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with _build_lock(out_dir):
        stored, sha = _store_checkpoint(checkpoint, out_dir)  # hash the copy: training may replace best.pt meanwhile
        moments: dict[str, Any] | None = None
        if moment_checkpoint is not None:
            moment_path, moment_sha = _store_checkpoint(Path(moment_checkpoint).resolve(), out_dir)
            moments = {"path": str(moment_path), "sha256": moment_sha}
        model, config, _ = load_model(out_dir / stored)
        if (corpus.video_dim, corpus.text_dim) != (config.model.video_dim, config.model.text_dim):
            raise ValueError(
                f"corpus {corpus.collection}/{corpus.split} has video/text dims {corpus.video_dim}/{corpus.text_dim} "
                f"but the checkpoint expects {config.model.video_dim}/{config.model.text_dim}; use the features it "
                "was trained on"
            )
        new_url = database_url is not None and not is_index_dir(out_dir)
        record_database_url(out_dir, database_url)
        db = open_database(database_location(out_dir))
        try:
            db.create_schema()
            if new_url and db.generations():  # another index's: its builds and ours would drop each other's rows
                (out_dir / DATABASE_URL_FILE).unlink()
                raise ValueError(f"{db.engine.url.render_as_string(hide_password=True)} already holds the generations "
                                 f"of another index; give {out_dir} a database of its own (one database per index)")
            return _build_locked(
                db, model, config, stored, sha, corpus, out_dir,
                collection_name=collection_name, factory=factory, batch_size=batch_size,
                text_backbone=text_backbone, n_candidates=n_candidates,
                candidates_per_video=candidates_per_video, moment_checkpoint=moments,
                moment_localizer=moment_localizer, moment_corpus=moment_corpus, token_dtype=token_dtype,
                refine_dtype=refine_dtype, refine_k=refine_k,
                bank=_bank_request(query_bank, bank_k, bank_alpha, bank_source),
                backend=backend, engine=engine, checkpoint_every=checkpoint_every, progress=progress,
            )
        except BaseException as error:
            with contextlib.suppress(Exception):  # the original error matters more than a failed clean-up
                # this build's row, directory and engine collections; an interrupted (not failed) build that has a
                # resume snapshot is kept for the next run of the same build
                keep = None if isinstance(error, Exception) else _resumable_generation(db, out_dir)
                if keep is None:
                    _abandon_stale_builds(db, out_dir)
                else:
                    logger.warning("build interrupted: run the same command again to resume it")
                    _abandon_stale_builds(db, out_dir, keep=keep)
            raise
        finally:
            db.close()


@dataclass
class _BankBuild:
    """A query bank applied during one build: the encoded bank, its settings and the per-video terms so far."""

    vectors: np.ndarray  # (Nb, D) encoded bank queries
    k: int
    alpha: float
    source: str
    ids: list[np.ndarray] = field(default_factory=list)  # batches of (B,) internal video ids
    terms: list[np.ndarray] = field(default_factory=list)  # batches of (B,) t(v)

    def add(self, model: Any, ids: np.ndarray, tokens: VideoTokens) -> None:
        """The term of one encoded batch of videos."""
        bank = torch.from_numpy(self.vectors).to(tokens.clip.device)  # (Nb, D)
        self.ids.append(ids)
        self.terms.append(bank_term(model, bank, tokens, k=self.k).cpu().numpy())  # (B,)

    def write(self, gen_dir: Path) -> dict[str, Any]:
        """``bank_term.npz`` of every video so far; the manifest's ``query_bank`` record."""
        ids = np.concatenate(self.ids) if self.ids else np.zeros(0, dtype=np.int64)
        terms = np.concatenate(self.terms) if self.terms else np.zeros(0, dtype=np.float32)
        return write_bank(gen_dir, ids, terms, self.vectors, k=self.k, alpha=self.alpha, source=self.source)


def _bank_request(query_bank: Any | None, k: int, alpha: float, source: str) -> _BankBuild | None:
    """The bank of a first build, checked."""
    if query_bank is None:
        return None
    vectors = np.ascontiguousarray(np.asarray(query_bank, dtype=np.float32))
    if vectors.ndim != 2 or vectors.shape[0] == 0:
        raise ValueError(f"the query bank must be (Nb >= 1, D) encoded queries, got shape {vectors.shape}")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"bank_k must be a positive int, got {k!r}")
    if not math.isfinite(alpha):
        raise ValueError(f"bank_alpha must be finite, got {alpha!r}")
    return _BankBuild(vectors, k, float(alpha), source)


def _store_checkpoint(checkpoint: Path, out_dir: Path) -> tuple[Path, str]:
    """Copy the checkpoint into the index as ``models/<sha256[:16]>.pt`` so the index describes itself (a later
    training run that overwrites best.pt cannot break search). The hash is taken of the copy, so a file replaced
    during the copy cannot be recorded under another file's hash. Temporary copies that a killed build left in
    ``models/`` are deleted first (the caller holds the build lock, so no other copy is in progress).

    Returns:
        (path relative to ``out_dir``, sha256 of the stored copy).
    """
    models = out_dir / MODELS_DIR
    models.mkdir(parents=True, exist_ok=True)
    for stale in models.glob(".*.tmp"):  # atomic_path's names: a SIGKILL skips their clean-up
        stale.unlink(missing_ok=True)
    with atomic_path(models / ".incoming.pt") as tmp:
        shutil.copyfile(checkpoint, tmp)
    incoming = models / ".incoming.pt"
    sha = file_sha256(incoming)
    relative = Path(MODELS_DIR) / f"{sha[:16]}{checkpoint.suffix or '.pt'}"
    incoming.replace(out_dir / relative)
    fsync_directory(models)
    return relative, sha


def _build_locked(
    db: Database,
    model: DreamPRVR,
    config: Any,
    checkpoint: Path,
    sha: str,
    corpus: VideoCorpus,
    out_dir: Path,
    *,
    collection_name: str,
    factory: str | None,
    batch_size: int,
    text_backbone: dict[str, Any] | None,
    n_candidates: int | None,
    candidates_per_video: int,
    moment_checkpoint: dict[str, Any] | None,
    moment_localizer: dict[str, Any] | None,
    moment_corpus: VideoCorpus | None,
    token_dtype: str,
    refine_dtype: str | None,
    refine_k: int,
    bank: _BankBuild | None,
    backend: str | None,
    engine: dict[str, Any] | None,
    checkpoint_every: int,
    progress: bool,
) -> BuildResult:
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    previous = find_active(db, out_dir)
    search_defaults: dict[str, Any] = {"n_candidates": n_candidates or DEFAULT_N_CANDIDATES}
    calibration: dict[str, Any] | None = None
    if previous is not None:
        previous_manifest = previous.manifest
        if previous_manifest.checkpoint_sha256 != sha:
            raise ValueError(
                f"{out_dir} holds tokens of checkpoint {previous_manifest.checkpoint_sha256[:12]}... "
                f"({previous_manifest.checkpoint_path}), not of {checkpoint} ({sha[:12]}...): tokens of two models "
                "cannot share an index; build into a new directory"
            )
        if text_backbone is None:
            text_backbone = previous_manifest.text_backbone
        if moment_checkpoint is None:
            moment_checkpoint = previous_manifest.moment_checkpoint
        if moment_localizer is None:
            moment_localizer = previous_manifest.moment_localizer
        if bank is not None:
            raise ValueError(f"{out_dir} already holds videos: a query bank is given on the first build of an index "
                             "(later builds reuse its bank); build into a new directory with --query-bank")
        if previous_manifest.query_bank is not None:
            record = previous_manifest.query_bank
            old_ids, old_terms, bank_vectors = load_bank(previous.directory, record)
            bank = _BankBuild(bank_vectors, int(record["k"]), float(record["alpha"]), record.get("source", "given"),
                              [old_ids], [old_terms])
        if n_candidates is None:
            # keep calibrated settings; the corpus grew, so `prvr index calibrate` again is advised
            search_defaults = dict(previous_manifest.search_defaults)
            calibration = previous_manifest.calibration
        if backend is not None and backend != previous_manifest.backend:
            raise ValueError(f"{out_dir} uses the {previous_manifest.backend} back-end, not {backend}; an index "
                             "cannot change back-ends: build into a new directory")
        kept_refine = previous_manifest.refine
        if refine_dtype is not None and (kept_refine is None or kept_refine["store"].get("dtype") != refine_dtype):
            has = "no refine tier" if kept_refine is None else f"a {kept_refine['store'].get('dtype')} refine tier"
            raise ValueError(f"{out_dir} has {has}, not --refine-dtype {refine_dtype}: the second tier is chosen on "
                             "the first build and kept by later ones; drop --refine-dtype or build into a new "
                             "directory")
        refine_dtype = kept_refine["store"].get("dtype") if kept_refine is not None else None
        refine_k = int(kept_refine["refine_k"]) if kept_refine is not None else refine_k
    else:
        check_refine_tier(token_dtype, refine_dtype, refine_k)
        if moment_localizer is None and moment_checkpoint is None and config.model.kind == "zero_shot":
            moment_localizer = zero_shot_localizer_record(  # the localiser skips the trailing event tokens
                ZeroShotMomentConfig(event_tokens=config.model.events.tokens_added))
    if moment_localizer is not None and moment_localizer.get("kind") == RETRIEVAL_COSINE_KIND:
        RetrievalCosineLocalizer(model, config.data, moment_localizer.get("level", 0.5))  # refuse a bad level
    elif moment_localizer is not None and moment_checkpoint is not None:
        wrap_trained_localizer(None, moment_localizer)  # refuse a record that does not go with a checkpoint
    elif moment_localizer is not None:
        localizer = zero_shot_localizer_from_record(moment_localizer)  # refuse an unknown record before any work
        added = config.model.events.tokens_added if config.model.kind == "zero_shot" else 0
        if localizer.config.event_tokens != added:
            raise ValueError(f"the moment localiser skips {localizer.config.event_tokens} trailing event tokens but "
                             f"the model adds {added} per video (model.events); record event_tokens={added}")
    had_moment_frames = previous is not None and previous.manifest.moment_frames is not None
    if had_moment_frames and moment_corpus is None:
        raise ValueError(f"{out_dir} stores the moment localiser's own frame tokens; pass moment_corpus (the same "
                         "videos at the moment model's resolution) so the new videos get them too")
    if moment_corpus is not None and previous is not None and not had_moment_frames:
        raise ValueError(f"{out_dir} was built without moment frames; build into a new directory to add them")
    if bank is not None and bank.vectors.shape[1] != config.model.hidden_size:
        raise ValueError(f"the query bank is {bank.vectors.shape[1]}-d but the model's query vectors are "
                         f"{config.model.hidden_size}-d; encode the bank with this index's model")
    # FAISS builds resume; Milvus collections and the moment frame store have no rollback to a snapshot
    resumable = moment_corpus is None and (
        (previous.manifest.backend if previous is not None else backend or "faiss") == "faiss")
    key = _build_key(sha, corpus, collection_name, previous, factory, batch_size, candidates_per_video, token_dtype,
                     bank, {"dtype": refine_dtype, "refine_k": refine_k} if refine_dtype is not None else None)
    resume: tuple[Any, ResumePoint] | None = None
    if resumable and checkpoint_every:
        resume = _find_resume_point(db, out_dir, key)
    if resume is None:
        _abandon_stale_builds(db, out_dir)
    else:
        _abandon_stale_builds(db, out_dir, keep=resume[0].id)

    video_ids = corpus.video_ids
    # a corpus of extracted video files knows each video's duration and source file; a caption split only durations
    id_of = db.register_videos(
        [VideoRecord(external_id=vid, **dataclasses.asdict(corpus.video_info(vid))) for vid in video_ids]
    )
    model_id = db.register_model(
        config.name, sha, dim=config.model.hidden_size, config=json.loads(config.to_json())
    )
    dim = config.model.hidden_size
    if previous is not None:
        index = load_token_index(previous.directory, previous.manifest)
        members = db.generation_video_ids(previous.generation.id)
    elif backend == "milvus":
        index = new_milvus_index(dim, clip_weight=config.model.clip_weight, frame_weight=config.model.frame_weight,
                                 engine=dict(engine or {}), index_type=factory,
                                 num_tokens=len(video_ids) * corpus.config.clip_bins,
                                 candidates_per_video=candidates_per_video)
        members = []
    else:
        clip_factory = factory or choose_factory(len(video_ids) * corpus.config.clip_bins, dim)
        frame_factory = factory or choose_factory(len(video_ids) * corpus.config.max_frames, dim)
        index = FaissTokenIndex(
            dim,
            clip_weight=config.model.clip_weight,
            frame_weight=config.model.frame_weight,
            factory=clip_factory,
            frame_factory=frame_factory,
            candidates_per_video=candidates_per_video,
            seed=config.seed,
            use_gpu=False,
        )
        members = []
    new_ids = [vid for vid in video_ids if id_of[vid] not in index]
    described = index.describe()
    factories = {kind: str(described[kind]["factory"] or "auto") for kind in ("clip", "frame")}
    counts = {"new_videos": 0, "new_clip_tokens": 0, "new_frame_tokens": 0}
    if resume is not None:
        generation, point = resume
        generation_id = generation.id
        gen_dir = generation_path(out_dir, generation.directory)
        index = point.load_index()
        store = TokenStore(gen_dir / TOKENS_DIR, dim)
        store.truncate(point.store_entries)  # appends after the snapshot are redone
        refine = _resumed_refine_store(gen_dir, dim, refine_dtype)
        if refine is not None:
            refine.truncate(point.store_entries)  # both tiers append the same videos in the same order
        if bank is not None:
            bank.ids, bank.terms = [point.bank_ids], [point.bank_terms]
        counts = {"new_videos": point.new_videos, "new_clip_tokens": point.new_clip_tokens,
                  "new_frame_tokens": point.new_frame_tokens}
        todo = [vid for vid in new_ids if id_of[vid] not in index]
        logger.info("resuming generation %s: %d of %d new videos done", generation.directory,
                    len(new_ids) - len(todo), len(new_ids))
    else:
        generation_id = db.begin_generation(
            model_id=model_id,
            factories=factories,
            faiss_version=faiss.__version__,
            params={**search_defaults, "candidates_per_video": index.candidates_per_video,
                    **engine_record(index, previous.generation.params if previous is not None else None)},
            video_ids=sorted(set(members) | {id_of[vid] for vid in video_ids}),
        )
        generation = db.get_generation(generation_id)
        assert generation is not None
        gen_dir = generation_path(out_dir, generation.directory)
        index = start_generation(index, generation.params, generation.directory)
        shutil.rmtree(gen_dir, ignore_errors=True)
        gen_dir.mkdir(parents=True)
        todo = new_ids
        trained = False
        refine = None
        if previous is not None:
            shutil.copytree(previous.directory / TOKENS_DIR, gen_dir / TOKENS_DIR)
            store = TokenStore(gen_dir / TOKENS_DIR, dim)
            if previous.manifest.refine is not None:  # the second tier keeps its codec too
                shutil.copytree(previous.directory / REFINE_DIR, gen_dir / REFINE_DIR)
                refine = TokenStore(gen_dir / REFINE_DIR, dim)
            if had_moment_frames:
                shutil.copytree(previous.directory / MOMENT_FRAMES_DIR, gen_dir / MOMENT_FRAMES_DIR)
        else:
            store = TokenStore(gen_dir / TOKENS_DIR, dim, normalize=True, dtype=token_dtype, codec_seed=config.seed)
            if refine_dtype is not None:
                refine = TokenStore(gen_dir / REFINE_DIR, dim, normalize=True, dtype=refine_dtype,
                                    codec_seed=config.seed)
            index_training = isinstance(index, FaissTokenIndex) and any(map(_needs_training, factories.values()))
            store_training = any(tier is not None and tier.codec is not None and tier.codec.needs_training
                                 for tier in (store, refine))
            if new_ids and (index_training or store_training):
                sample = _train_sample(model, corpus, new_ids, factories["clip"], batch_size)
                if index_training:
                    index.train(*sample)
                store.train(*sample)
                if refine is not None:
                    refine.train(*sample)
                trained = True
        if resumable and checkpoint_every and trained:  # the quantisers are the expensive part to redo
            _snapshot(gen_dir, key, index, store, counts, bank, refine)

    moment_store = None
    if moment_corpus is not None:
        moment_store = MomentFrameStore(gen_dir / MOMENT_FRAMES_DIR, moment_corpus.video_dim,
                                        moment_corpus.config.max_frames)
    since_snapshot = 0
    # each video is read once: none is kept in a RAM cache the corpus may have (a 100k build was OOM-killed)
    batches = iter_video_batches(corpus, batch_size, todo, cache=False) if todo else iter(())
    with contextlib.ExitStack() as bulks:
        bulks.enter_context(store.bulk())
        if refine is not None:
            bulks.enter_context(refine.bulk())
        for batch in tqdm(batches, total=math.ceil(len(todo) / batch_size), desc="index videos",
                          disable=not progress, unit="batch"):
            tokens = model.encode_videos(batch)
            clip, frame, mask = _as_numpy(tokens)
            ids = np.array([id_of[vid] for vid in batch.video_ids], dtype=np.int64)  # (B,)
            if bank is not None:
                bank.add(model, ids, tokens)
            index.add(ids, clip, frame, mask)
            store.append(ids, clip, frame, mask)
            if refine is not None:
                refine.append(ids, clip, frame, mask)
            if moment_store is not None:
                for video_id, internal in zip(batch.video_ids, ids.tolist()):
                    moment_store.append(internal, moment_corpus.video(video_id, cache=False)[1])  # (F', D_in) frames
            counts["new_videos"] += len(ids)
            counts["new_clip_tokens"] += clip.shape[0] * clip.shape[1]
            counts["new_frame_tokens"] += int(mask.sum())
            since_snapshot += len(ids)
            if resumable and checkpoint_every and since_snapshot >= checkpoint_every:
                store.commit()
                if refine is not None:
                    refine.commit()
                _snapshot(gen_dir, key, index, store, counts, bank, refine)
                since_snapshot = 0
    clear_snapshots(gen_dir)  # a committed generation holds exactly an uninterrupted build's files

    data_source = {
        "root": str(Path(corpus.root).resolve()),
        "collection": collection_name,
        "split": corpus.split,
        "video_feature": corpus.config.video_feature,
        "text_feature": corpus.config.text_feature,
    }
    bank_record = bank.write(gen_dir) if bank is not None else None
    manifest = IndexManifest(
        experiment_config=config.to_json(),
        checkpoint_path=str(checkpoint),
        checkpoint_sha256=sha,
        text_backbone=dict(text_backbone) if text_backbone is not None else None,
        data_source=data_source,
        counts={},
        faiss={},
        search_defaults={**search_defaults, "candidates_per_video": index.candidates_per_video},
        generation=generation.directory,
        moment_checkpoint=moment_checkpoint,
        moment_localizer=dict(moment_localizer) if moment_localizer is not None else None,
        moment_frames=moment_store.record() if moment_store is not None else None,
        query_bank=bank_record,
        calibration=calibration,
        token_store=store.codec_record(),
        refine=_refine_record(refine, refine_k),
    )
    manifest = _commit_generation(db, generation_id, gen_dir, index, manifest, counts)
    logger.info("index generation %s active: %d videos (%d new), %d tokens", generation.directory,
                index.num_videos, len(new_ids), index.ntotal)
    return BuildResult(generation_id, gen_dir, index.num_videos, len(new_ids), index.ntotal, manifest)


def _build_key(sha: str, corpus: VideoCorpus, collection_name: str, previous: Any, factory: str | None,
               batch_size: int, candidates_per_video: int, token_dtype: str, bank: _BankBuild | None,
               refine: dict[str, Any] | None) -> dict[str, Any]:
    """What makes two builds the same build (a snapshot of one is resumed only by an equal key)."""
    bank_key = None
    if bank is not None:
        bank_key = {"k": bank.k, "alpha": bank.alpha, "source": bank.source,
                    "sha256": hashlib.sha256(np.ascontiguousarray(bank.vectors, dtype=np.float32).tobytes()).hexdigest()}
    return {
        "checkpoint_sha256": sha,
        "data": {"root": str(Path(corpus.root).resolve()), "collection": collection_name, "split": corpus.split,
                 "video_feature": corpus.config.video_feature, "text_feature": corpus.config.text_feature,
                 "videos": len(corpus.video_ids), "video_ids_sha256": ids_digest(corpus.video_ids)},
        "previous_generation": previous.generation.directory if previous is not None else None,
        "factory": factory, "batch_size": batch_size, "candidates_per_video": candidates_per_video,
        "token_dtype": token_dtype if previous is None else None, "bank": bank_key,
        "refine": refine if previous is None else None,
    }


def _find_resume_point(db: Database, index_dir: Path, key: dict[str, Any]) -> tuple[Any, ResumePoint] | None:
    """The building generation (newest first) whose snapshot was written by a build with this key."""
    for generation in sorted(db.generations(GenerationStatus.BUILDING), key=lambda g: g.id, reverse=True):
        point = read_resume_point(generation_path(index_dir, generation.directory), key)
        if point is not None:
            return generation, point
    return None


def _resumable_generation(db: Database, index_dir: Path) -> int | None:
    """The newest building generation that has a resume point (whatever its key), or None."""
    for generation in sorted(db.generations(GenerationStatus.BUILDING), key=lambda g: g.id, reverse=True):
        if (generation_path(index_dir, generation.directory) / RESUME_NAME).is_file():
            return generation.id
    return None


def _refine_record(refine: TokenStore | None, refine_k: int) -> dict[str, Any] | None:
    """The manifest's ``refine`` record of a second tier (None without one)."""
    return None if refine is None else {"store": refine.codec_record(), "refine_k": int(refine_k)}


def _resumed_refine_store(gen_dir: Path, dim: int, refine_dtype: str | None) -> TokenStore | None:
    """The second tier of a resumed generation (None when the build has none); its folder must be there, since the
    build key that matched names the tier."""
    if refine_dtype is None:
        return None
    if not (gen_dir / REFINE_DIR).is_dir():
        raise RuntimeError(f"{gen_dir} was snapshotted with a {refine_dtype} refine tier but {REFINE_DIR}/ is gone; "
                           "run the build again (the broken generation is dropped and the build starts over)")
    refine = TokenStore(gen_dir / REFINE_DIR, dim)
    if refine.dtype != refine_dtype:
        raise RuntimeError(f"{gen_dir / REFINE_DIR} holds {refine.dtype} tokens, the build's refine tier is "
                           f"{refine_dtype}; run the build again (the broken generation is dropped)")
    return refine


def _snapshot(gen_dir: Path, key: dict[str, Any], index: Any, store: TokenStore, counts: dict[str, int],
              bank: _BankBuild | None, refine: TokenStore | None = None) -> None:
    if refine is not None and refine.num_entries != store.num_entries:  # resume truncates both to one count
        raise RuntimeError(f"the refine tier holds {refine.num_entries} committed entries, the token store "
                           f"{store.num_entries}; commit both before a snapshot")
    bank_state = None
    if bank is not None:
        bank_state = (np.concatenate(bank.ids) if bank.ids else np.zeros(0, dtype=np.int64),
                      np.concatenate(bank.terms) if bank.terms else np.zeros(0, dtype=np.float32))
    write_snapshot(gen_dir, key, index, store_entries=store.num_entries, counts=counts, bank=bank_state)


def _commit_generation(
    db: Database,
    generation_id: int,
    gen_dir: Path,
    index: Any,
    manifest: IndexManifest,
    counts: dict[str, int],
) -> IndexManifest:
    """Save the token index and the manifest into ``gen_dir``, fsync everything, then activate (the commit point)."""
    described = index.describe()
    index.save(gen_dir / index_subdir(described["backend"]))
    manifest = dataclasses.replace(
        manifest,
        counts={"videos": index.num_videos, **counts, "ntotal": index.ntotal},
        faiss=index.describe(),
        backend=described["backend"],
    )
    write_manifest(manifest, gen_dir)
    fsync_directory(gen_dir)
    fsync_directory(gen_dir.parent)
    db.activate_generation(generation_id, ntotal=index.ntotal, files=_generation_files(gen_dir))
    return manifest


def _resolve_members(db: Database, generation_id: int, external_ids: Sequence[str]) -> list[int]:
    """Surrogate ids of external ids that the generation holds; ValueError naming the unknown ones."""
    members = set(db.generation_video_ids(generation_id))
    ids: list[int] = []
    unknown: list[str] = []
    for external_id in dict.fromkeys(external_ids):
        video = db.get_video(external_id)
        if video is None or video.deleted_at is not None or video.id not in members:
            unknown.append(external_id)
        else:
            ids.append(int(video.id))
    if unknown:
        raise ValueError(
            f"video ids {unknown[:10]}{' ...' if len(unknown) > 10 else ''} are not in the active index generation "
            "(never added, or already removed); see `prvr index info`"
        )
    return ids


def remove_videos(index_dir: str | Path, external_ids: Sequence[str], *, compact: bool = True) -> BuildResult:
    """Remove videos from the index as a new generation, without re-encoding anything.

    The new generation starts from copies of the active one (FAISS ``remove_ids``, token-store tombstones in both
    tiers of a two-tier index, compacted when ``compact``), is fsynced and only then activated; the removed videos
    are soft-deleted in the database after the commit (their rows stay, the previous generation stays usable for
    rollback).

    Args:
        index_dir: an index directory with an active generation.
        external_ids: the external ids of the videos to remove (at least one).
        compact: rewrite the token store (and the refine tier) without the removed blocks (reclaims their bytes).

    Returns:
        The :class:`BuildResult` of the activated generation (``new_videos`` is 0).

    Raises:
        ValueError: on an empty list or ids the active generation does not hold.
        RuntimeError: when the index has no active generation or another writer holds it.
    """
    if isinstance(external_ids, str):
        raise ValueError(f"pass a list of video ids, not the string {external_ids!r}")
    external_ids = list(external_ids)
    if not external_ids:
        raise ValueError("no video ids to remove; pass at least one")
    index_dir = Path(index_dir)
    with _build_lock(index_dir), open_active(index_dir) as active:
        db, previous = active.db, active.generation
        ids = _resolve_members(db, previous.id, external_ids)
        _abandon_stale_builds(db, index_dir)
        index = load_token_index(active.directory, active.manifest)
        removed = set(ids)
        members = [vid for vid in db.generation_video_ids(previous.id) if vid not in removed]
        generation_id = db.begin_generation(
            model_id=previous.model_id,
            factories=dict(previous.factories),
            faiss_version=faiss.__version__,
            params=dict(previous.params),
            video_ids=members,
        )
        generation = db.get_generation(generation_id)
        assert generation is not None
        gen_dir = generation_path(index_dir, generation.directory)
        index = start_generation(index, generation.params, generation.directory)
        index.remove(np.asarray(ids, dtype=np.int64))
        shutil.rmtree(gen_dir, ignore_errors=True)
        gen_dir.mkdir(parents=True)
        shutil.copytree(active.directory / TOKENS_DIR, gen_dir / TOKENS_DIR)
        store = TokenStore(gen_dir / TOKENS_DIR)
        if active.manifest.query_bank is not None:  # the removed videos' terms stay: a lower minimum is still a bound
            shutil.copyfile(active.directory / active.manifest.query_bank["file"],
                            gen_dir / active.manifest.query_bank["file"])
        store.remove(np.asarray(ids, dtype=np.int64))
        if compact:
            store.compact()
        refine_record = active.manifest.refine
        if refine_record is not None:  # the second tier holds the same videos: tombstone (and compact) them too
            shutil.copytree(active.directory / REFINE_DIR, gen_dir / REFINE_DIR)
            refine = TokenStore(gen_dir / REFINE_DIR)
            refine.remove(np.asarray(ids, dtype=np.int64))
            if compact:
                refine.compact()
            refine_record = _refine_record(refine, int(refine_record["refine_k"]))
        manifest = dataclasses.replace(active.manifest, generation=generation.directory, created_at=_utc_now_iso(),
                                       token_store=store.codec_record(), refine=refine_record)
        counts = {"new_videos": 0, "removed_videos": len(ids)}
        manifest = _commit_generation(db, generation_id, gen_dir, index, manifest, counts)
        db.soft_delete(external_ids)
    logger.info("index generation %s active: %d videos (%d removed)", generation.directory, index.num_videos, len(ids))
    return BuildResult(generation_id, gen_dir, index.num_videos, 0, index.ntotal, manifest)


def _generation_files(gen_dir: Path) -> dict[str, dict[str, Any]]:
    """Size and sha256 of the token-index files (from their sidecar, no re-read) and of the manifest."""
    subdir, sidecar_name = FAISS_DIR, "faiss_index.json"
    if not (gen_dir / subdir / sidecar_name).is_file():
        subdir, sidecar_name = index_subdir("milvus"), "milvus_index.json"
    sidecar = json.loads((gen_dir / subdir / sidecar_name).read_text(encoding="utf-8"))
    files = {
        f"{subdir}/{entry['file']}": {"size": int(entry["bytes"]), "sha256": entry["sha256"]}
        for entry in sidecar["files"].values()
    }
    manifest = gen_dir / MANIFEST_NAME
    files[MANIFEST_NAME] = {"size": manifest.stat().st_size, "sha256": file_sha256(manifest)}
    return files


def rewrite_manifest(index_dir: str | Path, manifest: IndexManifest) -> Path:
    """Replace the active generation's manifest (atomic write) and refresh its recorded file hashes.

    Only search settings may change this way (``prvr index calibrate``): the tokens, indexes and checkpoint of a
    generation are immutable, so any other change is refused.

    Raises:
        ValueError: when ``manifest`` differs from the active one in anything but ``search_defaults`` /
            ``calibration``.
    """
    index_dir = Path(index_dir)
    with _build_lock(index_dir), open_active(index_dir) as active:
        mutable = {"search_defaults": None, "calibration": None}
        if dataclasses.replace(active.manifest, **mutable) != dataclasses.replace(manifest, **mutable):
            raise ValueError("only search_defaults and calibration of an active manifest may be rewritten; "
                             "build a new generation for anything else")
        path = write_manifest(manifest, active.directory)
        active.db.activate_generation(active.generation.id, files=_generation_files(active.directory))
    return path
