"""One PRVR split (captions + video and query features), validated up front, and its training / evaluation batches.

Shape letters: B videos, C clip tokens, F frame tokens, L query tokens, Nq queries, D_in video feature width,
D_text text feature width.

Training follows the PRVR family: a batch is B videos, each with ALL of its captions, so that every query's positive
video is in the batch (``QueryBatch.video_index`` gives its row). The shuffling order of an epoch is a pure function
of (seed, epoch), so a resumed run replays the same batches.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from prvr.config import DataConfig
from prvr.data.captions import Windows, caption_path, moments_path, read_captions, read_moments
from prvr.data.features import FeatureStore, open_query_features, open_video_features, query_feature_path
from prvr.data.preprocess import collate_queries, collate_videos, preprocess_query, preprocess_video
from prvr.types import QueryBatch, QueryRecord, VideoBatch, VideoCorpus, VideoInfo

__all__ = [
    "PRVRCorpus",
    "JointCorpus",
    "TrainVideoDataset",
    "TrainItem",
    "collate_train",
    "epoch_permutation",
    "make_train_loader",
    "iter_video_batches",
    "iter_query_batches",
]

logger = logging.getLogger(__name__)

_SHOW_MISSING = 5  # ids listed in a "missing features" error

# (video_id, clip (C, D_in), frames (F, D_in), [(cap_id, tokens (L, D_text)), ...])
TrainItem = tuple[str, np.ndarray, np.ndarray, list[tuple[str, np.ndarray]]]


def _missing_message(missing: Sequence[str], total: int, what: str) -> str:
    shown = ", ".join(repr(m) for m in missing[:_SHOW_MISSING])
    more = f" and {len(missing) - _SHOW_MISSING} more" if len(missing) > _SHOW_MISSING else ""
    return f"{len(missing)} of {total} {what} ({shown}{more})"


def _with_moments(record: QueryRecord, moments: dict[str, tuple[Windows, float | None]]) -> QueryRecord:
    """``record`` with the windows and duration of the sidecar (records that already have windows are kept)."""
    entry = moments.get(record.query_id)
    if entry is None or record.windows:
        return record
    windows, duration = entry
    return dataclasses.replace(record, windows=windows, duration=duration)


class PRVRCorpus:
    """One split of a collection in the standard PRVR layout, with preprocessing and an optional RAM cache.

    On construction the caption file is read and checked against the feature stores: every video must have
    features, every cap id must have query features, dims must match the expected ones, and the split must not be
    empty; each failure raises ``ValueError`` naming the file and the fix. The moments sidecar, when present, fills
    the queries' windows and durations.

    The corpus may be pickled or forked into DataLoader workers: the feature stores re-open their files lazily in
    each process, and the RAM cache is not pickled (each worker fills its own).
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        collection: str,
        split: str,
        config: DataConfig,
        *,
        expected_video_dim: int | None = None,
        expected_text_dim: int | None = None,
    ) -> None:
        """Read and validate one split.

        Args:
            root: the data root holding ``<collection>/``.
            collection: the collection name.
            split: the split name (``train``, ``val``, ``test``, ...).
            config: feature names and preprocessing sizes.
            expected_video_dim: D_in the caller needs (e.g. a checkpoint's ``model.video_dim``), or None.
            expected_text_dim: D_text the caller needs, or None.
        """
        self.root = Path(root)
        self.collection = collection
        self.split = split
        self.config = config
        self.caption_file = caption_path(self.root, collection, split)
        self.moments_file = moments_path(self.root, collection, split)

        records = read_captions(self.caption_file)
        if not records:
            raise ValueError(
                f"split {split!r} of {collection!r} is empty: {self.caption_file} holds no captions; "
                f"fill it with '<video_id>#enc#<k> <text>' lines or pick another split"
            )
        self._moments: dict[str, tuple[Windows, float | None]] | None = None
        if self.moments_file.is_file():
            self._moments = read_moments(self.moments_file)
            records = [_with_moments(record, self._moments) for record in records]
        self._queries: list[QueryRecord] = records

        self._video_ids: list[str] = []
        row_of: dict[str, int] = {}
        self._captions_of: dict[str, list[QueryRecord]] = {}
        for record in records:
            if record.video_id not in row_of:
                row_of[record.video_id] = len(self._video_ids)
                self._video_ids.append(record.video_id)
                self._captions_of[record.video_id] = []
            self._captions_of[record.video_id].append(record)
        self._row_of = row_of
        self._query_video_index = np.array([row_of[r.video_id] for r in records], dtype=np.int64)  # (Nq,)

        self._video_store: FeatureStore = open_video_features(self.root, collection, config.video_feature)
        self._query_store: FeatureStore = open_query_features(self.root, collection, config.text_feature)
        self._validate(expected_video_dim, expected_text_dim)
        # Every later read is checked against the store's dimension, so a stray item of another width fails loudly.
        self._video_store.expected_dim = self._video_dim
        self._query_store.expected_dim = self._text_dim

        self._video_cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._query_cache: dict[str, np.ndarray] = {}
        logger.info(
            "corpus %s/%s: %d videos, %d queries, video dim %d, text dim %d",
            collection,
            split,
            len(self._video_ids),
            len(self._queries),
            self._video_dim,
            self._text_dim,
        )

    # ------------------------------------------------------------------------------------------------------------
    # construction helpers

    def _validate(self, expected_video_dim: int | None, expected_text_dim: int | None) -> None:
        video_path = self._video_store.path
        query_path = query_feature_path(self.root, self.collection, self.config.text_feature)
        video_ids = set(self._video_store.ids())
        missing_videos = [v for v in self._video_ids if v not in video_ids]
        if missing_videos:
            raise ValueError(
                f"{self.caption_file}: "
                + _missing_message(missing_videos, len(self._video_ids), "videos have no features")
                + f" in {video_path}; extract their features into that store (DataConfig.video_feature="
                f"{self.config.video_feature!r}) or remove their captions from the split"
            )
        cap_ids = set(self._query_store.ids())
        missing_queries = [r.query_id for r in self._queries if r.query_id not in cap_ids]
        if missing_queries:
            raise ValueError(
                f"{self.caption_file}: "
                + _missing_message(missing_queries, len(self._queries), "cap ids have no query features")
                + f" in {query_path}; re-encode the captions of this split (DataConfig.text_feature="
                f"{self.config.text_feature!r}) or remove those lines"
            )
        self._video_dim = int(self._video_store.dim)
        self._text_dim = int(self._query_store.dim)
        if expected_video_dim is not None and self._video_dim != expected_video_dim:
            raise ValueError(
                f"{video_path}: video features have dimension {self._video_dim}, expected {expected_video_dim}; "
                f"use the feature the model was trained on (DataConfig.video_feature) or set model.video_dim="
                f"{self._video_dim}"
            )
        if expected_text_dim is not None and self._text_dim != expected_text_dim:
            raise ValueError(
                f"{query_path}: query features have dimension {self._text_dim}, expected {expected_text_dim}; "
                f"use the text feature the model was trained on (DataConfig.text_feature) or set model.text_dim="
                f"{self._text_dim}"
            )

    # ------------------------------------------------------------------------------------------------------------
    # read-only views

    @property
    def video_ids(self) -> list[str]:
        """Unique video ids, in order of first appearance in the caption file."""
        return list(self._video_ids)

    @property
    def queries(self) -> list[QueryRecord]:
        """The split's queries in caption-file order (windows and duration from the moments sidecar, if any)."""
        return list(self._queries)

    @property
    def query_video_index(self) -> np.ndarray:
        """(Nq,) int64: the index in :attr:`video_ids` of each query's video."""
        return self._query_video_index.copy()

    @property
    def video_dim(self) -> int:
        """D_in of the video features."""
        return self._video_dim

    @property
    def text_dim(self) -> int:
        """D_text of the query token features."""
        return self._text_dim

    @property
    def moments(self) -> dict[str, tuple[Windows, float | None]] | None:
        """cap id -> (windows, duration) from the moments sidecar, or None when the split has no sidecar."""
        return dict(self._moments) if self._moments is not None else None

    def captions_of(self, video_id: str) -> list[QueryRecord]:
        """The queries of ``video_id`` in caption-file order.

        Raises:
            KeyError: the video is not in this split.
        """
        if video_id not in self._captions_of:
            raise KeyError(f"video {video_id!r} has no captions in {self.caption_file}")
        return list(self._captions_of[video_id])

    def video_info(self, video_id: str) -> VideoInfo:
        """What the split knows of a video besides its features: its duration, from its first caption that has one."""
        durations = [record.duration for record in self.captions_of(video_id) if record.duration is not None]
        return VideoInfo(duration_s=float(durations[0]) if durations else None)

    def video_row(self, video_id: str) -> int:
        """The index of ``video_id`` in :attr:`video_ids`."""
        if video_id not in self._row_of:
            raise KeyError(f"video {video_id!r} is not in split {self.split!r} ({self.caption_file})")
        return self._row_of[video_id]

    # ------------------------------------------------------------------------------------------------------------
    # features

    def video(self, video_id: str, *, cache: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """The preprocessed features of one video (cached in RAM when ``config.cache_in_memory``).

        Args:
            video_id: any id of the video feature store (not only this split's).
            cache: False reads the video without adding it to the cache (a cached copy is still used): an index
                build reads each video once, and a cache would only grow (~150 KB per video).

        Returns:
            ``(clip, frames)``: (C, D_in) and (F, D_in) float32, L2-normalised rows. Cached arrays are shared:
            do not modify them in place.
        """
        cached = self._video_cache.get(video_id)
        if cached is not None:
            return cached
        item = preprocess_video(self._video_store[video_id], self.config)
        if cache and self.config.cache_in_memory:
            self._video_cache[video_id] = item
        return item

    def query_tokens(self, cap_id: str) -> np.ndarray:
        """The preprocessed token features of one query: (L, D_text) float32, L <= ``config.max_query_tokens``."""
        cached = self._query_cache.get(cap_id)
        if cached is not None:
            return cached
        tokens = preprocess_query(self._query_store[cap_id], self.config.max_query_tokens,
                                  normalize=self.config.normalize_query_tokens)
        if self.config.cache_in_memory:
            self._query_cache[cap_id] = tokens
        return tokens

    def close(self) -> None:
        """Release the feature files (they re-open on the next read)."""
        self._video_store.close()
        self._query_store.close()

    def __enter__(self) -> PRVRCorpus:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_video_cache"] = {}
        state["_query_cache"] = {}
        return state

    def __repr__(self) -> str:
        return (
            f"PRVRCorpus({str(self.root)!r}, {self.collection!r}, {self.split!r}: {len(self._video_ids)} videos, "
            f"{len(self._queries)} queries)"
        )


class JointCorpus:
    """Several training splits (of one or more collections) read as one: joint training on their union.

    It offers what training reads of a corpus (videos, their captions, features) and routes each video to the split
    that holds it. The splits must share no video id and no cap id (one video in two splits would be two rows of
    one batch with the same features: a leak of one into the other, e.g. an extra corpus overlapping DEV), and their
    feature dims must agree. ``root`` / ``collection`` / ``config`` are the first split's (the frame backbone a
    checkpoint records is read from it).
    """

    def __init__(self, parts: Sequence[PRVRCorpus]) -> None:
        if not parts:
            raise ValueError("JointCorpus needs at least one split")
        self.parts = list(parts)
        first = self.parts[0]
        self.root, self.collection, self.config = first.root, first.collection, first.config
        self.split = "+".join(f"{part.collection}:{part.split}" for part in self.parts)
        self._part_of: dict[str, PRVRCorpus] = {}
        seen_queries: dict[str, PRVRCorpus] = {}
        for part in self.parts:
            if (part.video_dim, part.text_dim) != (first.video_dim, first.text_dim):
                raise ValueError(
                    f"joint training: {part!r} has feature dims {part.video_dim} / {part.text_dim}, {first!r} has "
                    f"{first.video_dim} / {first.text_dim}; use the same video and text features in every split"
                )
            shared = [v for v in part.video_ids if v in self._part_of]
            if shared:
                other = self._part_of[shared[0]]
                raise ValueError(
                    f"joint training: {len(shared)} videos are in both {other.collection}:{other.split} and "
                    f"{part.collection}:{part.split} (e.g. {shared[:3]}); the splits must be disjoint"
                )
            for record in part.queries:
                if record.query_id in seen_queries:
                    raise ValueError(f"joint training: cap id {record.query_id!r} is in two splits")
                seen_queries[record.query_id] = part
            self._part_of.update({video_id: part for video_id in part.video_ids})
        self._video_ids = [video_id for part in self.parts for video_id in part.video_ids]
        self._query_part = seen_queries

    @property
    def video_ids(self) -> list[str]:
        """Every split's videos, split by split."""
        return list(self._video_ids)

    @property
    def queries(self) -> list[QueryRecord]:
        """Every split's queries, split by split."""
        return [record for part in self.parts for record in part.queries]

    @property
    def video_dim(self) -> int:
        return self.parts[0].video_dim

    @property
    def text_dim(self) -> int:
        return self.parts[0].text_dim

    def captions_of(self, video_id: str) -> list[QueryRecord]:
        if video_id not in self._part_of:
            raise KeyError(f"video {video_id!r} is in none of the joint splits {self.split}")
        return self._part_of[video_id].captions_of(video_id)

    def video(self, video_id: str, *, cache: bool = True) -> tuple[np.ndarray, np.ndarray]:
        if video_id not in self._part_of:
            raise KeyError(f"video {video_id!r} is in none of the joint splits {self.split}")
        return self._part_of[video_id].video(video_id, cache=cache)

    def query_tokens(self, cap_id: str) -> np.ndarray:
        if cap_id not in self._query_part:
            raise KeyError(f"cap id {cap_id!r} is in none of the joint splits {self.split}")
        return self._query_part[cap_id].query_tokens(cap_id)

    def close(self) -> None:
        for part in self.parts:
            part.close()

    def __repr__(self) -> str:
        return f"JointCorpus({self.split}: {len(self._video_ids)} videos, {len(self._query_part)} queries)"


# ----------------------------------------------------------------------------------------------------------------
# training


class TrainVideoDataset(Dataset):
    """Videos of a corpus, each with all of its captions: item = (video_id, clip, frames, [(cap_id, tokens), ...])."""

    def __init__(self, corpus: PRVRCorpus | JointCorpus) -> None:
        self.corpus = corpus
        self._video_ids = corpus.video_ids

    def __len__(self) -> int:
        return len(self._video_ids)

    def __getitem__(self, index: int) -> TrainItem:
        video_id = self._video_ids[index]
        clip, frames = self.corpus.video(video_id)
        captions = [(r.query_id, self.corpus.query_tokens(r.query_id)) for r in self.corpus.captions_of(video_id)]
        return video_id, clip, frames, captions


def collate_train(items: Sequence[TrainItem]) -> tuple[VideoBatch, QueryBatch]:
    """Batch videos with all of their captions.

    Args:
        items: B items of :class:`TrainVideoDataset`.

    Returns:
        ``(videos, queries)``: a VideoBatch of B videos and a QueryBatch of their Nq captions (video by video, in
        caption order) whose ``video_index`` (Nq,) is the row of each caption's video in ``videos``.
    """
    video_ids = [item[0] for item in items]
    videos = collate_videos([(item[1], item[2]) for item in items], video_ids)
    tokens: list[np.ndarray] = []
    cap_ids: list[str] = []
    rows: list[int] = []
    for row, (_, _, _, captions) in enumerate(items):
        for cap_id, array in captions:
            cap_ids.append(cap_id)
            tokens.append(array)
            rows.append(row)
    queries = collate_queries(tokens, cap_ids, np.asarray(rows, dtype=np.int64))
    return videos, queries


def _epoch_seed(seed: int, epoch: int) -> int:
    """A 63-bit seed that depends on both ``seed`` and ``epoch`` (no collisions between nearby pairs)."""
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(epoch) & 0xFFFFFFFF]).generate_state(2)
    return (int(state[0]) << 31 | int(state[1])) & (2**63 - 1)


def epoch_permutation(num_videos: int, seed: int, epoch: int) -> np.ndarray:
    """The video order of one epoch: a permutation of ``range(num_videos)`` that depends only on (seed, epoch).

    Args:
        num_videos: the dataset size.
        seed: the run's seed.
        epoch: the epoch (0-based).

    Returns:
        (num_videos,) int64.
    """
    generator = torch.Generator().manual_seed(_epoch_seed(seed, epoch))
    return torch.randperm(num_videos, generator=generator).numpy()


class _EpochSampler(Sampler[int]):
    """Yields :func:`epoch_permutation` (from ``start`` on); every iteration gives the same order."""

    def __init__(self, num_videos: int, seed: int, epoch: int, start: int = 0) -> None:
        self.num_videos = num_videos
        self.seed = seed
        self.epoch = epoch
        self.start = start

    def __iter__(self) -> Iterator[int]:
        order = epoch_permutation(self.num_videos, self.seed, self.epoch)
        return iter(order[self.start :].tolist())

    def __len__(self) -> int:
        return max(self.num_videos - self.start, 0)


def make_train_loader(
    corpus: PRVRCorpus | JointCorpus,
    batch_videos: int,
    *,
    seed: int,
    epoch: int,
    num_workers: int = 0,
    start_batch: int = 0,
) -> DataLoader:
    """A DataLoader over the corpus' videos in the shuffled order of ``(seed, epoch)``; the last batch may be short.

    Args:
        corpus: the training split.
        batch_videos: B, videos per batch (each with all its captions).
        seed: the run's seed.
        epoch: the epoch (0-based); the order is :func:`epoch_permutation` (len(video_ids), seed, epoch).
        num_workers: DataLoader worker processes (0 = load in the main process).
        start_batch: skip this many batches of the epoch (to resume mid-epoch with the same remaining batches).

    Returns:
        A DataLoader yielding ``(VideoBatch, QueryBatch)`` pairs (see :func:`collate_train`).
    """
    if batch_videos < 1:
        raise ValueError(f"batch_videos must be >= 1, got {batch_videos}")
    if start_batch < 0:
        raise ValueError(f"start_batch must be >= 0, got {start_batch}")
    dataset = TrainVideoDataset(corpus)
    sampler = _EpochSampler(len(dataset), seed, epoch, start=start_batch * batch_videos)
    return DataLoader(
        dataset,
        batch_size=batch_videos,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate_train,
        drop_last=False,
        persistent_workers=False,
    )


# ----------------------------------------------------------------------------------------------------------------
# evaluation


def iter_video_batches(
    corpus: VideoCorpus, batch_size: int, video_ids: Sequence[str] | None = None, *, cache: bool = True
) -> Iterator[VideoBatch]:
    """Preprocessed videos in corpus order (or in the order of ``video_ids``), ``batch_size`` at a time.

    Args:
        corpus: the split.
        batch_size: B, videos per batch.
        video_ids: the videos to encode (default: ``corpus.video_ids``).
        cache: False keeps the videos read out of the corpus's RAM cache (see ``PRVRCorpus.video``).

    Returns:
        An iterator of VideoBatch.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    ids = list(corpus.video_ids if video_ids is None else video_ids)
    for start in range(0, len(ids), batch_size):
        chunk = ids[start : start + batch_size]
        yield collate_videos([corpus.video(video_id, cache=cache) for video_id in chunk], chunk)


def iter_query_batches(corpus: PRVRCorpus, batch_size: int) -> Iterator[tuple[QueryBatch, np.ndarray]]:
    """The corpus' queries in caption order, ``batch_size`` at a time, with their target videos.

    Args:
        corpus: the split.
        batch_size: Nq, queries per batch.

    Returns:
        An iterator of ``(queries, targets)``: a QueryBatch (``video_index`` None) and (Nq,) int64, the index of
        each query's video in ``corpus.video_ids``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    queries = corpus.queries
    targets = corpus.query_video_index
    for start in range(0, len(queries), batch_size):
        chunk = queries[start : start + batch_size]
        cap_ids = [record.query_id for record in chunk]
        batch = collate_queries([corpus.query_tokens(cap_id) for cap_id in cap_ids], cap_ids)
        yield batch, targets[start : start + batch_size]
