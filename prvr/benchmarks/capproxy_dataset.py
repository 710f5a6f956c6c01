"""Builds the ANet-CapProxy dataset: ActivityNet Captions val_1 timelines become frames, val_2 sentences queries.

Shape letters: n frames of one video, S sentences of one video, D feature dimension, L query tokens,
Nq queries, V videos, T frames of all videos of a split.

The recipe, fixed so that every build writes the same numbers:

* videos = the ids present in both files; DEV split by ``bucket = int(sha1(video_id).hexdigest(), 16) % 10``
  (4-5 "val", 6-9 "train", 0-3 "test", the maintainers' held-out part);
* E_video(s) = the L2-normalised mean-pooled camera embedding of a val_1 sentence (paraphrase-MiniLM-L3-v2; the
  unit sentence vectors reproduce the benchmark's published floor table to the last digit, raw ones do not);
* n = max(1, ceil(duration)) frames; frame t (centre t + 0.5 s) = mean of E_video(s) over the val_1 sentences
  whose raw ``[start, end]`` contains the centre (inclusive), the zero vector where none does;
* rng = numpy.random.default_rng(int(sha1(video_id).hexdigest(), 16) % 2**63);
  frames += rng.standard_normal((n, D)) * 0.5 / sqrt(D); frames += rng.standard_normal((1, D)) * 1.0 / sqrt(D);
  every frame L2-normalised; stored float16;
* queries = the val_2 sentences, ``<vid>#enc#<k>``; token features = the first 30 last-hidden-state rows of an
  all-MiniLM-L6-v2 pass over the whole sentence (float16); their mean-pooled sentence vectors (float32) are stored
  beside them for the zero-shot floor.

Layout written under ``<out_root>/<collection>/`` (the standard PRVR layout, ``prvr.data``)::

    FeatureData/<video_feature>/feature.hdf5                  one (n, D) dataset per video id
    TextData/<collection><split>.caption.txt                  <vid>#enc#<k> <sentence>
    TextData/<collection><split>.moments.jsonl                cap_id, video_id, windows, duration
    TextData/<text_feature>_<collection>_query_feat.hdf5      one (L, D) dataset per cap id
    TextData/<text_feature>_<collection>_query_sent.hdf5      one (1, D) dataset per cap id
    manifest.json                                             inputs, encoders, recipe, counts, output sha256s

Sentence encoding runs in chunks cached under ``<out_root>/<collection>/.capproxy_work/``; a restarted build skips
the chunks already done. Every final file is written atomically, the manifest last.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import shutil
import time
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from prvr.data.annotations import read_activitynet_captions
from prvr.data.captions import caption_path, moments_path, read_captions, write_captions, write_moments
from prvr.data.features import (
    HDF5FeatureStore,
    open_video_features,
    query_feature_path,
    write_hdf5_features,
)
from prvr.fileio import atomic_path, file_sha256, write_json_atomic
from prvr.metrics.retrieval import DEFAULT_KS, chunked_ranks, recall_metrics
from prvr.types import QueryRecord

__all__ = [
    "RECIPE_VERSION",
    "FRAME_NOISE",
    "SCENE_NOISE",
    "DEV_SPLIT_OF_BUCKET",
    "CapProxyVideo",
    "video_bucket",
    "dev_split",
    "all_split",
    "noise_seed",
    "frame_count",
    "frame_coverage",
    "make_frames",
    "edit_event_frames",
    "read_capproxy_inputs",
    "query_sentence_path",
    "manifest_path",
    "work_dir",
    "build_capproxy",
    "annotation_video_ids",
    "check_disjoint",
    "build_pretrain_corpus",
    "zero_shot_floor",
]

logger = logging.getLogger(__name__)

RECIPE_VERSION = "capproxy-v1"
SECONDS_PER_FRAME = 1.0
FRAME_CENTRE = 0.5  # frame t is centred at t + 0.5 s
FRAME_NOISE = 0.5  # norm (about) of the per-frame noise
SCENE_NOISE = 1.0  # norm (about) of the per-video "scene appearance" vector
FEATURE_DTYPE = np.float16
DEV_SPLIT_OF_BUCKET: dict[int, str] = {
    **{bucket: "test" for bucket in range(0, 4)},
    **{bucket: "val" for bucket in range(4, 6)},
    **{bucket: "train" for bucket in range(6, 10)},
}
_SPLIT_ORDER = ("train", "val", "test")
_WORK_FOLDER = ".capproxy_work"


# ----------------------------------------------------------------------------------------------------------------
# the recipe, one pure function per step


def _sha1_int(video_id: str) -> int:
    return int(hashlib.sha1(video_id.encode("utf-8")).hexdigest(), 16)


def video_bucket(video_id: str) -> int:
    """``int(sha1(video_id).hexdigest(), 16) % 10``, the bucket that fixes a video's DEV split."""
    return _sha1_int(video_id) % 10


def dev_split(video_id: str) -> str:
    """The DEV split of a video: buckets 0-3 "test" (held out), 4-5 "val" (DEV-VAL), 6-9 "train" (DEV-TRAIN)."""
    return DEV_SPLIT_OF_BUCKET[video_bucket(video_id)]


def all_split(name: str) -> Callable[[str], str]:
    """A split rule that puts every video into the split ``name`` (e.g. the maintainers' held-out build)."""
    _check_name(name, "split name")
    return lambda video_id: name


def noise_seed(video_id: str) -> int:
    """``int(sha1(video_id).hexdigest(), 16) % 2**63``, the seed of the video's noise generator."""
    return _sha1_int(video_id) % 2**63


def frame_count(duration: float) -> int:
    """n = max(1, ceil(duration)): one frame per second."""
    if not math.isfinite(duration) or duration < 0:
        raise ValueError(f"duration must be a finite number of seconds >= 0, got {duration!r}")
    return max(1, math.ceil(duration / SECONDS_PER_FRAME))


def frame_coverage(num_frames: int, windows: Sequence[tuple[float, float]]) -> np.ndarray:
    """Which sentence windows contain which frame centres (t + 0.5 s), inclusive at both ends.

    Args:
        num_frames: n.
        windows: S raw (start, end) windows in seconds (a reversed window covers nothing).

    Returns:
        (n, S) bool.
    """
    centres = np.arange(num_frames, dtype=np.float64) * SECONDS_PER_FRAME + FRAME_CENTRE  # (n,)
    bounds = np.asarray(windows, dtype=np.float64).reshape(-1, 2)  # (S, 2)
    return (centres[:, None] >= bounds[None, :, 0]) & (centres[:, None] <= bounds[None, :, 1])  # (n, S)


def make_frames(
    video_id: str, duration: float, windows: Sequence[tuple[float, float]], embeddings: np.ndarray
) -> np.ndarray:
    """The frames of one video, by the recipe above.

    Args:
        video_id: seeds the noise.
        duration: seconds; n = max(1, ceil(duration)).
        windows: S raw val_1 (start, end) windows.
        embeddings: (S, D) E_video(s) of the same sentences (unit vectors in the benchmark).

    Returns:
        (n, D) float64 unit rows: covered-sentence means + per-frame noise + one per-video scene vector.
    """
    embeddings = np.asarray(embeddings, dtype=np.float64)
    if embeddings.ndim != 2 or embeddings.shape[0] != len(windows):
        raise ValueError(
            f"video {video_id!r}: need one embedding row per window, got {embeddings.shape} for {len(windows)} windows"
        )
    num_frames, dim = frame_count(duration), embeddings.shape[1]
    cover = frame_coverage(num_frames, windows).astype(np.float64)  # (n, S)
    counts = cover.sum(axis=1, keepdims=True)  # (n, 1)
    frames = (cover @ embeddings) / np.maximum(counts, 1.0)  # (n, D); uncovered frames stay zero
    rng = np.random.default_rng(noise_seed(video_id))
    frames += rng.standard_normal((num_frames, dim)) * FRAME_NOISE / math.sqrt(dim)  # (n, D) per-frame noise
    frames += rng.standard_normal((1, dim)) * SCENE_NOISE / math.sqrt(dim)  # (1, D) the video's scene vector
    norms = np.linalg.norm(frames, axis=1, keepdims=True)  # (n, 1)
    return frames / np.maximum(norms, 1e-12)


def edit_event_frames(
    video_id: str, duration: float, windows: Sequence[tuple[float, float]], embeddings: np.ndarray, event: int,
    new_embedding: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Re-render one event of a video from a new sentence: the camera side of the synthesis (data_synthesis.md).

    The frames are :func:`make_frames` with row ``event`` of ``embeddings`` replaced by ``new_embedding``: the same
    video id, hence the same per-frame noise draw and the same scene vector. Only the frames whose centres the
    event's window contains (the span) differ from the source's; the caller keeps every other frame of the source.

    Args:
        video_id: the source video (seeds the noise).
        duration: seconds.
        windows: the S raw windows of the source timeline.
        embeddings: (S, D) E_video(s) of the source sentences.
        event: which of the S events is edited.
        new_embedding: (D,) E_video(p_e) of the new sentence.

    Returns:
        ((n, D) float64 unit rows of the edited video, (n,) bool span: the frames re-made).

    Raises:
        ValueError: ``event`` is out of range, ``new_embedding`` has the wrong size, or the event's window contains
            no frame centre (nothing to edit).
    """
    embeddings = np.array(embeddings, dtype=np.float64)  # (S, D), a copy: the caller's rows stay as they are
    if not 0 <= event < len(windows):
        raise ValueError(f"video {video_id!r}: event {event} is out of range (the timeline has {len(windows)})")
    new_embedding = np.asarray(new_embedding, dtype=np.float64).reshape(-1)  # (D,)
    if embeddings.ndim != 2 or new_embedding.shape[0] != embeddings.shape[1]:
        raise ValueError(f"video {video_id!r}: new_embedding has {new_embedding.shape[0]} dims, the source "
                         f"embeddings {embeddings.shape}")
    span = frame_coverage(frame_count(duration), windows)[:, event]  # (n,)
    if not span.any():
        raise ValueError(f"video {video_id!r}: event {event} {tuple(windows[event])} contains no frame centre "
                         "(t + 0.5 s); pick another event")
    embeddings[event] = new_embedding
    return make_frames(video_id, duration, windows, embeddings), span


def _unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


# ----------------------------------------------------------------------------------------------------------------
# inputs


@dataclass(frozen=True)
class CapProxyVideo:
    """One benchmark video: its val_1 timeline and its split.

    Attributes:
        video_id: the ActivityNet id (``v_...``).
        duration: seconds (val_1's value).
        split: the split it belongs to.
        sentences: the S val_1 sentences (whitespace runs collapsed to one space).
        windows: their S raw (start, end) timestamps as the file gives them (not clamped to the duration).
    """

    video_id: str
    duration: float
    split: str
    sentences: tuple[str, ...]
    windows: tuple[tuple[float, float], ...]


SplitRule = str | Callable[[str], str] | Mapping[str, str]


def _check_name(name: str, what: str) -> None:
    if not isinstance(name, str) or not name or "/" in name or "#" in name or any(c.isspace() for c in name):
        raise ValueError(f"{what} {name!r} must be a non-empty string without '/', '#' or whitespace")


def _resolve_split_rule(splits: SplitRule) -> tuple[Callable[[str], str], str]:
    if isinstance(splits, str):
        if splits == "dev":
            return dev_split, "dev"
        if splits.startswith("all:"):
            return all_split(splits[4:]), splits
        raise ValueError(f"splits={splits!r}: use 'dev', 'all:<split name>', a mapping or a callable")
    if isinstance(splits, Mapping):
        table = dict(splits)

        def lookup(video_id: str) -> str:
            if video_id not in table:
                raise ValueError(f"the split mapping has no entry for video {video_id!r}; give every video a split")
            return table[video_id]

        return lookup, "custom"
    if callable(splits):
        return splits, "custom"
    raise ValueError(f"splits must be 'dev', 'all:<name>', a mapping or a callable, got {type(splits).__name__}")


def _one_line(text: str) -> str:
    """Collapse whitespace runs (a few sentences carry a line break) so a text fits one caption-file line.

    WordPiece tokenisation splits on any whitespace, so the encodings are unchanged.
    """
    return " ".join(text.split())


def _raw_timestamps(path: Path) -> dict[str, list[tuple[float, float]]]:
    with open(path, encoding="utf-8") as handle:
        data = json.load(handle)
    raw: dict[str, list[tuple[float, float]]] = {}
    for video_id, entry in data.items():
        windows = []
        for k, window in enumerate(entry["timestamps"]):
            try:
                start, end = float(window[0]), float(window[1])
            except (TypeError, ValueError, IndexError):
                raise ValueError(f"{path}, video {video_id!r}, sentence {k}: bad timestamp {window!r}") from None
            windows.append((start, end))
        raw[video_id.strip()] = windows
    return raw


def read_capproxy_inputs(
    val1_path: str | os.PathLike[str], val2_path: str | os.PathLike[str], splits: SplitRule = "dev"
) -> tuple[list[CapProxyVideo], list[QueryRecord], dict[str, int]]:
    """Pair a val_1-style and a val_2-style file: videos from the first, queries from the second.

    Any pair of ActivityNet-Captions-format files works (no assumption on names or sizes); only videos present in
    both are kept, in val_1 file order.

    Args:
        val1_path: the file whose timelines make the frames.
        val2_path: the file whose sentences are the queries.
        splits: ``"dev"`` (bucket rule), ``"all:<name>"``, a video id -> split mapping, or a callable.

    Returns:
        (videos, queries in val_2 file order with ``<vid>#enc#<k>`` ids and one-line texts, counts of the
        pairing).
    """
    val1_path, val2_path = Path(val1_path), Path(val2_path)
    split_of, _ = _resolve_split_rule(splits)
    records1 = read_activitynet_captions(val1_path)
    records2 = read_activitynet_captions(val2_path)
    raw = _raw_timestamps(val1_path)
    by_video: dict[str, list[QueryRecord]] = {}
    for record in records1:
        by_video.setdefault(record.video_id, []).append(record)
    in_val2 = {record.video_id for record in records2}
    videos: list[CapProxyVideo] = []
    for video_id, records in by_video.items():
        if video_id not in in_val2:
            continue
        split = split_of(video_id)
        _check_name(split, f"split of video {video_id!r}")
        duration = records[0].duration
        if duration is None:
            raise ValueError(f"{val1_path}: video {video_id!r} has no duration")
        windows = raw[video_id]
        if len(windows) != len(records):
            raise ValueError(f"{val1_path}: video {video_id!r} has {len(windows)} timestamps, {len(records)} sentences")
        texts = tuple(_one_line(r.text) for r in records)
        videos.append(CapProxyVideo(video_id, float(duration), split, texts, tuple(windows)))
    kept = {video.video_id: video for video in videos}
    queries = [dataclasses.replace(record, text=_one_line(record.text))
               for record in records2 if record.video_id in kept]
    mismatched = sorted({q.video_id for q in queries if q.duration is not None
                         and abs(q.duration - kept[q.video_id].duration) > 1e-6})
    if mismatched:
        logger.warning("%d video(s) have different durations in the two files (val_1's is used for frames), e.g. %s",
                       len(mismatched), mismatched[:3])
    counts = {
        "videos": len(videos),
        "only_in_val_1": len(by_video) - len(videos),
        "only_in_val_2": len(in_val2 - set(by_video)),
    }
    if counts["only_in_val_1"] or counts["only_in_val_2"]:
        logger.warning("%s / %s: %d video(s) only in the first file and %d only in the second are left out",
                       val1_path.name, val2_path.name, counts["only_in_val_1"], counts["only_in_val_2"])
    if not videos:
        raise ValueError(f"{val1_path} and {val2_path} share no video id; pass two annotation sets of the same videos")
    return videos, queries, counts


# ----------------------------------------------------------------------------------------------------------------
# paths


def query_sentence_path(root: str | os.PathLike[str], collection: str, text_feature: str) -> Path:
    """``<root>/<collection>/TextData/<text_feature>_<collection>_query_sent.hdf5`` (mean-pooled query vectors)."""
    return Path(root) / collection / "TextData" / f"{text_feature}_{collection}_query_sent.hdf5"


def manifest_path(root: str | os.PathLike[str], collection: str) -> Path:
    """``<root>/<collection>/manifest.json``."""
    return Path(root) / collection / "manifest.json"


def work_dir(root: str | os.PathLike[str], collection: str) -> Path:
    """``<root>/<collection>/.capproxy_work``, the chunk cache of an unfinished (or ``keep_work``) build."""
    return Path(root) / collection / _WORK_FOLDER


# ----------------------------------------------------------------------------------------------------------------
# chunked, cached encoding


def _cached_chunks(
    folder: Path,
    texts: Sequence[str],
    encode_chunk: Callable[[list[str]], dict[str, np.ndarray]],
    key_info: dict[str, Any],
    chunk_size: int,
    progress: bool,
    desc: str,
) -> Iterator[dict[str, np.ndarray]]:
    """Encode ``texts`` chunk by chunk, each chunk cached as ``<index>-<key>.npz`` (key = encoder + texts hash).

    A chunk whose file exists and loads is not encoded again; a chunk file is written atomically, so an interrupted
    build leaves only complete chunks behind.
    """
    folder.mkdir(parents=True, exist_ok=True)
    starts = list(range(0, len(texts), chunk_size))
    header = json.dumps(key_info, sort_keys=True)
    bar = tqdm(total=len(texts), desc=desc, unit="sent", disable=not progress, leave=False)
    try:
        for index, start in enumerate(starts):
            chunk = list(texts[start : start + chunk_size])
            key = hashlib.sha256((header + "\n" + "\n".join(chunk)).encode("utf-8")).hexdigest()[:16]
            path = folder / f"{index:05d}-{key}.npz"
            arrays: dict[str, np.ndarray] | None = None
            if path.is_file():
                try:
                    with np.load(path, allow_pickle=False) as stored:
                        arrays = {name: stored[name] for name in stored.files}
                except (OSError, ValueError, zipfile.BadZipFile) as error:
                    logger.warning("re-encoding unreadable cache chunk %s (%s)", path, error)
            if arrays is None:
                arrays = encode_chunk(chunk)
                with atomic_path(path) as tmp:
                    with open(tmp, "wb") as handle:
                        np.savez(handle, **arrays)
            bar.update(len(chunk))
            yield arrays
    finally:
        bar.close()


def _encode_video_sentences(
    encoder: Any, texts: Sequence[str], folder: Path, chunk_size: int, progress: bool, desc: str
) -> np.ndarray:
    def encode_chunk(chunk: list[str]) -> dict[str, np.ndarray]:
        return {"vectors": np.asarray(encoder.encode_sentences(chunk), dtype=np.float32)}

    key_info = {"encoder": encoder.encoder_id, "params": encoder.params(), "kind": "sentence"}
    parts = [c["vectors"] for c in _cached_chunks(folder, texts, encode_chunk, key_info, chunk_size, progress, desc)]
    return np.concatenate(parts) if parts else np.zeros((0, encoder.dim), dtype=np.float32)  # (S_all, D)


def _encode_queries(
    encoder: Any, texts: Sequence[str], folder: Path, chunk_size: int, progress: bool, desc: str
) -> tuple[list[np.ndarray], np.ndarray]:
    def encode_chunk(chunk: list[str]) -> dict[str, np.ndarray]:
        encoded = encoder.encode(chunk)
        lengths = np.asarray([t.shape[0] for t in encoded.tokens], dtype=np.int64)
        stacked = np.concatenate(encoded.tokens).astype(FEATURE_DTYPE)  # (sum L, D), stored float16 anyway
        return {"tokens": stacked, "lengths": lengths, "sentences": np.asarray(encoded.sentences, np.float32)}

    key_info = {"encoder": encoder.encoder_id, "params": encoder.params(), "kind": "tokens",
                "dtype": np.dtype(FEATURE_DTYPE).name}
    tokens: list[np.ndarray] = []
    sentences: list[np.ndarray] = []
    for arrays in _cached_chunks(folder, texts, encode_chunk, key_info, chunk_size, progress, desc):
        tokens.extend(np.split(arrays["tokens"], np.cumsum(arrays["lengths"])[:-1]))
        sentences.append(arrays["sentences"])
    vectors = np.concatenate(sentences) if sentences else np.zeros((0, encoder.dim), dtype=np.float32)
    return tokens, vectors  # Nq arrays (L_i, D); (Nq, D)


# ----------------------------------------------------------------------------------------------------------------
# the build


def _split_order(names: set[str]) -> list[str]:
    return [s for s in _SPLIT_ORDER if s in names] + sorted(names - set(_SPLIT_ORDER))


def _get_encoder(name: str, cache: dict[str, Any], supplied: Mapping[str, Any], batch_size: int,
                 max_query_tokens: int, threads: int) -> Any:
    if name not in cache:
        if name in supplied:
            cache[name] = supplied[name]
        else:
            from prvr.text_encoders import load_encoder

            cache[name] = load_encoder(name, batch_size=batch_size, max_tokens=max_query_tokens, threads=threads)
    return cache[name]


def build_capproxy(
    out_root: str | os.PathLike[str],
    *,
    val1_path: str | os.PathLike[str],
    val2_path: str | os.PathLike[str],
    collection: str = "capproxy",
    splits: SplitRule = "dev",
    video_feature: str | Sequence[str] = "minilm_l3",
    text_feature: str = "minilm_l6",
    batch_size: int = 64,
    chunk_size: int = 512,
    max_query_tokens: int = 30,
    encoders: Mapping[str, Any] | None = None,
    threads: int = 0,
    keep_work: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Build the ANet-CapProxy benchmark (frames, queries, token features, moments, manifest).

    Deterministic: the same inputs and encoders give the same arrays. Resumable: sentence encodings are cached in
    chunks under :func:`work_dir`; a restarted build skips finished chunks (the cache is removed after a successful
    build unless ``keep_work``).

    Args:
        out_root: the data root; outputs go to ``<out_root>/<collection>/``.
        val1_path: the annotation file whose timelines make the frames (val_1 style).
        val2_path: the annotation file whose sentences are the queries (val_2 style).
        collection: the collection name in the PRVR layout.
        splits: ``"dev"`` (buckets 4-5 val, 6-9 train, 0-3 test), ``"all:<name>"`` (every video in one split), a
            video id -> split mapping, or a callable.
        video_feature: the camera(s): ``"minilm_l3"`` (the benchmark) and/or ``"minilm_l6"`` (the oracle); also the
            folder name under FeatureData.
        text_feature: the query backbone (``"minilm_l6"``); also the prefix of the query-feature files.
        batch_size: sentences per forward pass.
        chunk_size: sentences per cached chunk.
        max_query_tokens: L, the token features kept per query.
        encoders: feature name -> an already loaded encoder (tests, custom backbones); others are loaded with
            :func:`prvr.text_encoders.load_encoder`.
        threads: onnxruntime intra-op threads of the encoders loaded here (0 = its default). Torch's thread count
            is left to the process owner (the CLI's ``--threads``); on a busy 2-core machine 1 thread is often
            several times faster than 2.
        keep_work: keep the chunk cache after a successful build (a rebuild with other splits is then fast).
        progress: show tqdm bars.

    Returns:
        The manifest (also written to :func:`manifest_path`).
    """
    began = time.perf_counter()
    _check_name(collection, "collection")
    video_features = [video_feature] if isinstance(video_feature, str) else list(video_feature)
    if not video_features or len(set(video_features)) != len(video_features):
        raise ValueError(f"video_feature must name one or more distinct backbones, got {video_feature!r}")
    for name in [*video_features, text_feature]:
        _check_name(name, "feature name")
    if chunk_size < 1 or batch_size < 1 or max_query_tokens < 1 or threads < 0:
        raise ValueError("chunk_size, batch_size and max_query_tokens must be >= 1 and threads >= 0")
    val1_path, val2_path = Path(val1_path), Path(val2_path)
    _, split_rule = _resolve_split_rule(splits)
    videos, queries, pair_counts = read_capproxy_inputs(val1_path, val2_path, splits)
    root = Path(out_root)
    base = root / collection
    work = work_dir(root, collection)
    for folder in (base / "TextData", work):
        folder.mkdir(parents=True, exist_ok=True)
    inputs = {"val_1": {"file": val1_path.name, "sha256": file_sha256(val1_path)},
              "val_2": {"file": val2_path.name, "sha256": file_sha256(val2_path)}}
    supplied = dict(encoders or {})
    loaded: dict[str, Any] = {}
    timings: dict[str, float] = {}
    outputs: list[Path] = []

    # Video side: camera embeddings of every val_1 sentence, then the frames of every video.
    sentences = [text for video in videos for text in video.sentences]
    offsets = np.cumsum([0] + [len(video.sentences) for video in videos])
    encoder_info: dict[str, Any] = {"video": {}, "text": {}}
    for name in video_features:
        encoder = _get_encoder(name, loaded, supplied, batch_size, max_query_tokens, threads)
        if not hasattr(encoder, "encode_sentences"):
            raise ValueError(f"video_feature {name!r}: its encoder has no encode_sentences(texts)")
        tic = time.perf_counter()
        folder = work / f"video-{name}"
        embeddings = _unit_rows(_encode_video_sentences(encoder, sentences, folder, chunk_size, progress,
                                                        f"camera {name}"))  # (S_all, D) E_video(s)
        timings[f"encode_video_{name}_s"] = time.perf_counter() - tic
        tic = time.perf_counter()

        def frame_items(embeddings: np.ndarray = embeddings) -> Iterator[tuple[str, np.ndarray]]:
            for index, video in enumerate(videos):
                rows = embeddings[offsets[index] : offsets[index + 1]]  # (S, D)
                yield video.video_id, make_frames(video.video_id, video.duration, video.windows, rows)

        feature_dir = base / "FeatureData" / name
        feature_dir.mkdir(parents=True, exist_ok=True)
        attrs = {"recipe": RECIPE_VERSION, "video_encoder": encoder.encoder_id, "frame_noise": FRAME_NOISE,
                 "scene_noise": SCENE_NOISE, "seconds_per_frame": SECONDS_PER_FRAME,
                 "source_sha256": inputs["val_1"]["sha256"]}
        outputs.append(write_hdf5_features(feature_dir / "feature.hdf5", frame_items(), FEATURE_DTYPE, attrs))
        timings[f"frames_{name}_s"] = time.perf_counter() - tic
        encoder_info["video"][name] = {"id": encoder.encoder_id, "params": encoder.params()}

    # Query side: token features and sentence vectors of every val_2 sentence, captions, moments.
    text_encoder = _get_encoder(text_feature, loaded, supplied, batch_size, max_query_tokens, threads)
    if not hasattr(text_encoder, "encode"):
        raise ValueError(f"text_feature {text_feature!r}: its encoder has no encode(texts) -> EncodedTexts")
    tic = time.perf_counter()
    tokens, vectors = _encode_queries(text_encoder, [q.text for q in queries], work / f"query-{text_feature}",
                                      chunk_size, progress, f"queries {text_feature}")
    timings[f"encode_queries_{text_feature}_s"] = time.perf_counter() - tic
    encoder_info["text"][text_feature] = {"id": text_encoder.encoder_id, "params": text_encoder.params()}
    text_attrs = {"recipe": RECIPE_VERSION, "text_encoder": text_encoder.encoder_id,
                  "source_sha256": inputs["val_2"]["sha256"]}
    outputs.append(write_hdf5_features(
        query_feature_path(root, collection, text_feature),
        ((q.query_id, t) for q, t in zip(queries, tokens)), FEATURE_DTYPE,
        {**text_attrs, "max_tokens": int(text_encoder.params().get("max_tokens", max_query_tokens))},
    ))
    outputs.append(write_hdf5_features(
        query_sentence_path(root, collection, text_feature),
        ((q.query_id, v[None, :]) for q, v in zip(queries, vectors)), np.float32,
        {**text_attrs, "pooling": "masked mean over the whole sentence"},
    ))

    split_of_video = {video.video_id: video.split for video in videos}
    split_names = _split_order(set(split_of_video.values()))
    split_counts: dict[str, dict[str, int]] = {}
    for split in split_names:
        members = [video for video in videos if video.split == split]
        records = [q for q in queries if split_of_video[q.video_id] == split]
        split_counts[split] = {"videos": len(members), "queries": len(records),
                               "frames": sum(frame_count(video.duration) for video in members),
                               "video_sentences": sum(len(video.sentences) for video in members)}
        if records:
            write_captions(caption_path(root, collection, split), records)
            write_moments(moments_path(root, collection, split), records)
            outputs += [caption_path(root, collection, split), moments_path(root, collection, split)]
    stale = sorted(p.name for p in (base / "TextData").glob(f"{collection}*.caption.txt") if p not in outputs)
    if stale:
        logger.warning("caption files from an earlier build are not part of this one and were left as they are: %s",
                       stale)

    manifest: dict[str, Any] = {
        "benchmark": "ANet-CapProxy",
        "collection": collection,
        "recipe": {
            "version": RECIPE_VERSION,
            "seconds_per_frame": SECONDS_PER_FRAME,
            "frame_count": "max(1, ceil(duration))",
            "frame_centre": "t + 0.5 s",
            "containment": "inclusive, raw val_1 [start, end]",
            "sentence_embedding": "L2-normalised masked-mean pooled camera output",
            "uncovered_frame": "zero vector",
            "noise_seed": "int(sha1(video_id).hexdigest(), 16) % 2**63",
            "frame_noise": FRAME_NOISE,
            "scene_noise": SCENE_NOISE,
            "noise_order": ["standard_normal((n, D)) * frame_noise / sqrt(D)",
                            "standard_normal((1, D)) * scene_noise / sqrt(D)"],
            "frame_normalisation": "L2 per frame",
            "dtype": np.dtype(FEATURE_DTYPE).name,
            "max_query_tokens": int(text_encoder.params().get("max_tokens", max_query_tokens)),
            "query_tokens": "first max_query_tokens last-hidden-state rows of a whole-sentence pass",
        },
        "split_rule": split_rule,
        "inputs": inputs,
        "encoders": encoder_info,
        "video_features": video_features,
        "text_feature": text_feature,
        "counts": {**pair_counts, "queries": len(queries), "splits": split_counts},
        "outputs": {str(path.relative_to(base)): file_sha256(path) for path in outputs},
    }
    timings["total_s"] = time.perf_counter() - began
    manifest["build"] = {"wall_time_s": {k: round(v, 2) for k, v in timings.items()}}
    write_json_atomic(manifest_path(root, collection), manifest)
    if not keep_work:
        shutil.rmtree(work, ignore_errors=True)
    logger.info("built %s in %.1f s: %s", base, timings["total_s"], split_counts)
    return manifest


# ----------------------------------------------------------------------------------------------------------------
# the extra training corpus (train.json)


def annotation_video_ids(path: str | os.PathLike[str]) -> set[str]:
    """The video ids of an ActivityNet-Captions-format file (stripped, as the reader keys them)."""
    with open(path, encoding="utf-8") as handle:
        return {video_id.strip() for video_id in json.load(handle)}


def check_disjoint(train_path: str | os.PathLike[str], dev_paths: Sequence[str | os.PathLike[str]]) -> dict[str, int]:
    """Refuse an extra training file that shares a video with the DEV files (val_1 / val_2).

    Args:
        train_path: the extra training annotations (train.json).
        dev_paths: the files whose videos must stay unseen in training (DEV-TRAIN's and DEV-VAL's, held out incl.).

    Returns:
        ``{"train_videos", "dev_videos", "shared": 0}``.

    Raises:
        ValueError: some video id is in both, naming how many and a few of them.
    """
    if not dev_paths:
        raise ValueError("check_disjoint needs at least one DEV annotation file (val_1.json, val_2.json)")
    train_ids = annotation_video_ids(train_path)
    dev_ids: set[str] = set()
    for path in dev_paths:
        dev_ids |= annotation_video_ids(path)
    shared = sorted(train_ids & dev_ids)
    if shared:
        raise ValueError(
            f"{train_path} shares {len(shared)} of its {len(train_ids)} videos with the DEV files "
            f"({', '.join(Path(p).name for p in dev_paths)}), e.g. {shared[:5]}; training on them would leak DEV-VAL "
            "(or the held-out part) into training: remove them from the extra corpus"
        )
    return {"train_videos": len(train_ids), "dev_videos": len(dev_ids), "shared": 0}


def build_pretrain_corpus(
    out_root: str | os.PathLike[str],
    *,
    train_path: str | os.PathLike[str],
    dev_paths: Sequence[str | os.PathLike[str]],
    collection: str = "capproxy_pretrain",
    split: str = "train",
    **build_options: Any,
) -> dict[str, Any]:
    """The extra training corpus: train.json through the benchmark's recipe, as its own collection.

    train.json has ONE annotation set per video, so the same sentences are both the timeline (camera frames, with
    the benchmark's per-frame noise and per-video scene vector, :func:`make_frames`) and the queries (query
    backbone, unperturbed). These pairs are easier than DEV's (no annotator gap: every query's sentence is inside
    its video). The videos must share none with the DEV files (:func:`check_disjoint`, run first).

    Args:
        out_root: the data root; the corpus goes to ``<out_root>/<collection>/`` (one split, ``split``).
        train_path: train.json.
        dev_paths: val_1.json and val_2.json (their videos include DEV-TRAIN, DEV-VAL and the held-out part).
        collection: the collection name (not the DEV collection's: it would overwrite its features).
        split: the split name every video goes to.
        build_options: passed on to :func:`build_capproxy` (video_feature, text_feature, batch_size, threads, ...).

    Returns:
        The manifest, with ``pairing`` and ``disjoint_from`` added.
    """
    disjoint = check_disjoint(train_path, dev_paths)
    manifest = build_capproxy(out_root, val1_path=train_path, val2_path=train_path, collection=collection,
                              splits=f"all:{split}", **build_options)
    manifest["pairing"] = ("self: one annotation set, the same sentences are the timeline and the queries "
                           "(queries unperturbed)")
    manifest["disjoint_from"] = {
        **{Path(p).name: file_sha256(Path(p)) for p in dev_paths}, "checked": disjoint,
    }
    write_json_atomic(manifest_path(out_root, collection), manifest)
    return manifest


# ----------------------------------------------------------------------------------------------------------------
# the zero-shot floor


def zero_shot_floor(
    root: str | os.PathLike[str],
    *,
    collection: str = "capproxy",
    split: str = "val",
    video_feature: str = "minilm_l3",
    text_feature: str = "minilm_l6",
    chunk: int = 256,
    ks: Sequence[int] = DEFAULT_KS,
) -> dict[str, Any]:
    """Exact zero-shot retrieval: score(q, v) = max over frames of cos(mean-pooled query vector, frame).

    Brute force over all frames of the split's videos (the videos of its caption file), ``chunk`` queries at a
    time; ranks use the project's pessimistic tie rule (``prvr.metrics.retrieval``).

    Args:
        root: the data root of a build.
        collection: the collection name.
        split: which caption file's queries and videos.
        video_feature: the frames to score (``"minilm_l3"``: the camera floor; ``"minilm_l6"``: the oracle).
        text_feature: the query backbone whose sentence vectors were stored by the build.
        chunk: queries per block.
        ks: the R@K cut-offs.

    Returns:
        ``{"R@1", ..., "SumR", "MedR", "MeanR", "num_queries", "num_videos", "split", "video_feature"}``.
    """
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    records = read_captions(caption_path(root, collection, split))
    video_ids = list(dict.fromkeys(record.video_id for record in records))
    column = {video_id: index for index, video_id in enumerate(video_ids)}
    sentence_file = query_sentence_path(root, collection, text_feature)
    if not sentence_file.is_file():
        raise FileNotFoundError(f"{sentence_file} does not exist; rebuild with build_capproxy, which writes the "
                                f"mean-pooled query vectors beside the token features")
    with HDF5FeatureStore(sentence_file) as store:
        queries = np.concatenate([store[record.query_id] for record in records])  # (Nq, D)
    with open_video_features(root, collection, video_feature) as frames_store:
        blocks = [frames_store[video_id] for video_id in video_ids]
    starts = np.cumsum([0] + [block.shape[0] for block in blocks[:-1]])  # (V,) first frame of each video
    frames = _unit_rows(np.concatenate(blocks)).astype(np.float32)  # (T, D)
    query_tensor = torch.from_numpy(_unit_rows(queries).astype(np.float32))  # (Nq, D)
    target = torch.tensor([column[record.video_id] for record in records], dtype=torch.long)  # (Nq,)

    def score(chunk_queries: torch.Tensor) -> torch.Tensor:
        similarity = chunk_queries.numpy() @ frames.T  # (nq, T)
        return torch.from_numpy(np.maximum.reduceat(similarity, starts, axis=1))  # (nq, V)

    ranks = chunked_ranks(query_tensor, score, target, chunk=chunk)
    metrics: dict[str, Any] = dict(recall_metrics(ranks, ks))
    metrics.update({"num_videos": len(video_ids), "split": split, "video_feature": video_feature})
    return metrics
