"""A seeded synthetic PRVR corpus with learnable cross-modal structure, written in the standard data layout.

Shape letters: n frames of one video, Z latent width, D_in video feature width, D_text text feature width,
L tokens of one query.

Design (the idea of the ANet-CapProxy benchmark, with a fully synthetic world):

* Vocabulary of events. An event is a composition (subject, action, object) of three factors, each drawn from a
  small word list (12 x 12 x 12 = 1,728 events). Every factor value owns a random latent vector in R^Z (norm about
  1); the event latent is their normalised sum, so train and evaluation videos share factors but mostly not whole
  events (retrieval has to generalise compositionally).
* Videos. A video is a timeline at 1 frame per second of 20-120 frames holding 2-5 distinct events (each at least
  3 s long, lengths drawn from a Dirichlet-multinomial) and, with some probability, short idle gaps between them.
  Each event instance jitters its latent slightly (the same "dog" never looks exactly the same twice).
* Frame features ("the camera"). frame_t = A z_event(t) + s_video + noise_t, with A a fixed random linear map
  R^Z -> R^D_in (norm preserving on average), s_video one random "scene" vector shared by every frame of the video
  (content that no query talks about, norm ``scene_scale``) and per-frame Gaussian noise (norm ``frame_noise``).
  Idle frames carry only the scene and the noise.
* Query token features ("the text encoder"). A query describes ONE event of its video (partial relevance) with a
  template such as "a dog kicks the ball"; each factor word becomes B z_word with a DIFFERENT fixed random map
  B: R^Z -> R^D_text, filler words ("a", "the", "then", ...) have their own random text vectors, every token gets
  Gaussian noise (norm ``token_noise``) and is mixed a little with the sentence mean (``context_mix``, like a
  contextual encoder). Because A and B are independent, a zero-shot cosine between raw frames and pooled query
  tokens is at chance (even when D_in == D_text); a model has to learn the alignment, which is linear in
  expectation (a least-squares map from pooled query tokens to mean frame features already retrieves well above
  chance), while the scene vector and the partial relevance keep the task from being trivial.
* Ground truth. Each query keeps its event's window [start, end] in seconds and the video duration (moments
  sidecar), one query per event, so 2-5 queries per video.

Everything is drawn from ``numpy.random.default_rng`` streams keyed by (seed, purpose, split, video index), so a
build is deterministic and the arrays of two builds are identical; a split's videos do not depend on the other
splits' sizes. Written files (``root/collection/...``): ``FeatureData/<video_feature>/feature.hdf5``,
``TextData/<collection><split>.caption.txt``, ``TextData/<collection><split>.moments.jsonl`` and
``TextData/<text_feature>_<collection>_query_feat.hdf5`` (the cap ids of every split).
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from prvr.data.captions import caption_path, moments_path, write_captions, write_moments
from prvr.data.features import query_feature_path, write_hdf5_features
from prvr.types import QueryRecord

__all__ = ["SUBJECTS", "ACTIONS", "OBJECTS", "TEMPLATES", "make_synthetic_corpus"]

logger = logging.getLogger(__name__)

SUBJECTS: tuple[str, ...] = (
    "man", "woman", "child", "dog", "cat", "horse", "chef", "player", "girl", "boy", "bird", "robot",
)  # fmt: skip
ACTIONS: tuple[str, ...] = (
    "throws", "kicks", "holds", "paints", "cleans", "opens", "carries", "cuts", "pushes", "watches", "drops", "lifts",
)  # fmt: skip
OBJECTS: tuple[str, ...] = (
    "ball", "box", "door", "car", "cake", "chair", "bottle", "rope", "fence", "bag", "table", "kite",
)  # fmt: skip
TEMPLATES: tuple[str, ...] = (
    "a {subject} {action} a {object}",
    "the {subject} {action} the {object}",
    "a {subject} {action} the {object} again",
    "then the {subject} {action} a {object}",
    "we see a {subject} that {action} the {object}",
    "later a {subject} {action} the {object} slowly",
)
FILLERS: tuple[str, ...] = ("a", "the", "again", "then", "we", "see", "that", "later", "slowly")

# Stream purposes for the random generators (part of the seed key, never change them: they define the data).
_WORLD, _VIDEO = 0, 1
_MIN_EVENT_FRAMES, _MIN_IDLE_FRAMES, _MAX_IDLE_FRAMES = 3, 2, 8


@dataclass(frozen=True)
class _World:
    """The fixed random parts shared by every video: factor latents, the camera map and the text map."""

    factor_latents: tuple[np.ndarray, np.ndarray, np.ndarray]  # subjects (12, Z), actions (12, Z), objects (12, Z)
    camera: np.ndarray  # (D_in, Z)
    text_map: np.ndarray  # (D_text, Z)
    filler_vectors: dict[str, np.ndarray]  # word -> (D_text,)


def _make_world(seed: int, latent_dim: int, video_dim: int, text_dim: int) -> _World:
    rng = np.random.default_rng([seed, _WORLD])
    subjects, actions, objects = (
        rng.standard_normal((len(words), latent_dim)) / np.sqrt(latent_dim) for words in (SUBJECTS, ACTIONS, OBJECTS)
    )
    camera = rng.standard_normal((video_dim, latent_dim)) / np.sqrt(video_dim)  # (D_in, Z)
    text_map = rng.standard_normal((text_dim, latent_dim)) / np.sqrt(text_dim)  # (D_text, Z)
    fillers = {word: rng.standard_normal(text_dim) / np.sqrt(text_dim) for word in FILLERS}
    return _World((subjects, actions, objects), camera, text_map, fillers)


def _split_code(split: str) -> int:
    return zlib.crc32(split.encode("utf-8"))


def _timeline(rng: np.random.Generator, n: int, n_events: int, idle_prob: float) -> list[tuple[int | None, int, int]]:
    """Segments ``(event slot or None for idle, start frame, end frame)`` that tile ``[0, n)``."""
    kinds: list[int | None] = []
    for slot in range(n_events):
        if slot > 0 and rng.random() < idle_prob:
            kinds.append(None)
        kinds.append(slot)
    minimum = np.array([_MIN_EVENT_FRAMES if k is not None else _MIN_IDLE_FRAMES for k in kinds])
    # Idle gaps get a smaller share than events; lengths = minimum + Dirichlet-multinomial share of the rest.
    concentration = np.array([2.0 if k is not None else 0.5 for k in kinds])
    share = rng.dirichlet(concentration)
    lengths = minimum + rng.multinomial(n - int(minimum.sum()), share)
    idle = np.array([k is None for k in kinds])
    excess = np.where(idle, np.maximum(lengths - _MAX_IDLE_FRAMES, 0), 0)
    if excess.any():  # cap idle gaps; their extra frames go to the event before them
        lengths = lengths - excess
        for position in np.flatnonzero(excess):
            lengths[position - 1] += excess[position]
    segments: list[tuple[int | None, int, int]] = []
    start = 0
    for kind, length in zip(kinds, lengths.tolist()):
        segments.append((kind, start, start + length))
        start += length
    return segments


def _query_tokens(
    rng: np.random.Generator,
    world: _World,
    event: tuple[int, int, int],
    template: str,
    token_noise: float,
    context_mix: float,
) -> tuple[str, np.ndarray]:
    """The text of a query about ``event`` and its token features (L, D_text)."""
    words = dict(zip(("subject", "action", "object"), (SUBJECTS[event[0]], ACTIONS[event[1]], OBJECTS[event[2]])))
    text = template.format(**words)
    factor_of = {words["subject"]: 0, words["action"]: 1, words["object"]: 2}
    rows = []
    for word in text.split():
        if word in factor_of:
            factor = factor_of[word]
            rows.append(world.text_map @ world.factor_latents[factor][event[factor]])  # (D_text,)
        else:
            rows.append(world.filler_vectors[word])
    tokens = np.stack(rows)  # (L, D_text)
    text_dim = tokens.shape[1]
    tokens = tokens + rng.standard_normal(tokens.shape) * (token_noise / np.sqrt(text_dim))
    tokens = (1.0 - context_mix) * tokens + context_mix * tokens.mean(axis=0, keepdims=True)  # (L, D_text)
    return text, tokens.astype(np.float32)


def _make_video(
    rng: np.random.Generator,
    world: _World,
    video_id: str,
    *,
    frame_range: tuple[int, int],
    event_range: tuple[int, int],
    idle_prob: float,
    event_jitter: float,
    scene_scale: float,
    frame_noise: float,
    token_noise: float,
    context_mix: float,
) -> tuple[np.ndarray, list[tuple[QueryRecord, np.ndarray]]]:
    """One video's frames (n, D_in) and its queries with token features."""
    video_dim, latent_dim = world.camera.shape
    n = int(rng.integers(frame_range[0], frame_range[1] + 1))
    n_events = int(rng.integers(event_range[0], event_range[1] + 1))
    n_events = max(1, min(n_events, n // (_MIN_EVENT_FRAMES + _MIN_IDLE_FRAMES)))
    events: list[tuple[int, int, int]] = []
    while len(events) < n_events:
        event = (
            int(rng.integers(len(SUBJECTS))),
            int(rng.integers(len(ACTIONS))),
            int(rng.integers(len(OBJECTS))),
        )
        if event not in events:
            events.append(event)
    segments = _timeline(rng, n, n_events, idle_prob)

    scene = rng.standard_normal(video_dim) * (scene_scale / np.sqrt(video_dim))  # (D_in,)
    frames = np.empty((n, video_dim), dtype=np.float64)  # (n, D_in)
    frames[:] = scene
    for slot, start, end in segments:
        if slot is None:
            continue
        subject, action, obj = events[slot]
        latent = world.factor_latents[0][subject] + world.factor_latents[1][action] + world.factor_latents[2][obj]
        latent = latent / np.sqrt(3.0) + rng.standard_normal(latent_dim) * (event_jitter / np.sqrt(latent_dim))
        frames[start:end] += world.camera @ latent  # (D_in,) broadcast over the segment's frames
    frames += rng.standard_normal((n, video_dim)) * (frame_noise / np.sqrt(video_dim))

    queries: list[tuple[QueryRecord, np.ndarray]] = []
    for slot, start, end in segments:
        if slot is None:
            continue
        template = TEMPLATES[int(rng.integers(len(TEMPLATES)))]
        text, tokens = _query_tokens(rng, world, events[slot], template, token_noise, context_mix)
        record = QueryRecord(
            query_id=f"{video_id}#enc#{slot}",
            video_id=video_id,
            text=text,
            windows=((float(start), float(end)),),
            duration=float(n),
        )
        queries.append((record, tokens))
    return frames.astype(np.float32), queries


def make_synthetic_corpus(
    root: str | Path,
    collection: str = "synth",
    *,
    splits: Mapping[str, int] | None = None,
    video_dim: int = 64,
    text_dim: int = 48,
    seed: int = 0,
    latent_dim: int = 32,
    video_feature: str = "synth",
    text_feature: str = "synth",
    frame_range: tuple[int, int] = (20, 120),
    event_range: tuple[int, int] = (2, 5),
    idle_prob: float = 0.3,
    event_jitter: float = 0.3,
    scene_scale: float = 1.0,
    frame_noise: float = 0.5,
    token_noise: float = 0.3,
    context_mix: float = 0.2,
) -> dict[str, Any]:
    """Generate the synthetic corpus (see the module docstring) and write it in the standard PRVR layout.

    Args:
        root: data root; files go under ``root/collection``.
        collection: collection name (prefix of the caption files).
        splits: videos per split; default ``{"train": 300, "val": 100, "test": 100}``.
        video_dim: D_in, width of the frame features.
        text_dim: D_text, width of the query token features.
        seed: the seed of every random stream.
        latent_dim: Z, width of the shared latent event space (keep it <= min(D_in, D_text) for a learnable map).
        video_feature: feature folder name under FeatureData.
        text_feature: prefix of the query feature file.
        frame_range: inclusive (min, max) frames per video (1 frame per second).
        event_range: inclusive (min, max) events (= queries) per video.
        idle_prob: probability of an idle gap before each event but the first.
        event_jitter: norm of the per-instance latent jitter of an event.
        scene_scale: norm of the per-video scene vector shared by all frames.
        frame_noise: norm of the per-frame noise.
        token_noise: norm of the per-token noise.
        context_mix: weight of the sentence mean mixed into every token.

    Returns:
        A summary dict: root, collection, feature names, dims, seed, the written file paths and, per split, the
        numbers of videos and queries.
    """
    splits = dict(splits) if splits is not None else {"train": 300, "val": 100, "test": 100}
    if not splits or any(int(count) < 1 for count in splits.values()):
        raise ValueError(f"splits must map split names to positive video counts, got {splits}")
    if not 1 <= frame_range[0] <= frame_range[1]:
        raise ValueError(f"frame_range must satisfy 1 <= min <= max, got {frame_range}")
    if frame_range[0] < _MIN_EVENT_FRAMES:
        raise ValueError(f"frame_range min must be >= {_MIN_EVENT_FRAMES} frames (one event), got {frame_range}")
    if not 1 <= event_range[0] <= event_range[1]:
        raise ValueError(f"event_range must satisfy 1 <= min <= max, got {event_range}")
    if min(video_dim, text_dim, latent_dim) < 1:
        raise ValueError("video_dim, text_dim and latent_dim must be positive")
    if latent_dim > min(video_dim, text_dim):
        logger.warning("latent_dim %d > min(video_dim, text_dim): the cross-modal map is not fully recoverable",
                       latent_dim)

    root = Path(root)
    world = _make_world(seed, latent_dim, video_dim, text_dim)
    video_items: list[tuple[str, np.ndarray]] = []
    query_items: list[tuple[str, np.ndarray]] = []
    summary_splits: dict[str, dict[str, Any]] = {}
    for split, count in splits.items():
        records: list[QueryRecord] = []
        for index in range(int(count)):
            video_id = f"{collection}_{split}_{index:05d}"
            rng = np.random.default_rng([seed, _VIDEO, _split_code(split), index])
            frames, queries = _make_video(
                rng,
                world,
                video_id,
                frame_range=frame_range,
                event_range=event_range,
                idle_prob=idle_prob,
                event_jitter=event_jitter,
                scene_scale=scene_scale,
                frame_noise=frame_noise,
                token_noise=token_noise,
                context_mix=context_mix,
            )
            video_items.append((video_id, frames))
            for record, tokens in queries:
                records.append(record)
                query_items.append((record.query_id, tokens))
        captions_file = caption_path(root, collection, split)
        moments_file = moments_path(root, collection, split)
        captions_file.parent.mkdir(parents=True, exist_ok=True)
        write_captions(captions_file, records)
        write_moments(moments_file, records)
        summary_splits[split] = {
            "videos": int(count),
            "queries": len(records),
            "caption_file": str(captions_file),
            "moments_file": str(moments_file),
        }

    attrs = {"generator": "prvr.data.synthetic", "seed": int(seed)}
    video_file = root / collection / "FeatureData" / video_feature / "feature.hdf5"
    video_file.parent.mkdir(parents=True, exist_ok=True)
    write_hdf5_features(video_file, video_items, dtype=np.float32, attrs=attrs)
    query_file = Path(query_feature_path(root, collection, text_feature))
    query_file.parent.mkdir(parents=True, exist_ok=True)
    write_hdf5_features(query_file, query_items, dtype=np.float32, attrs=attrs)
    logger.info(
        "synthetic corpus %s: %d videos, %d queries under %s",
        collection,
        len(video_items),
        len(query_items),
        root / collection,
    )
    return {
        "root": str(root),
        "collection": collection,
        "video_feature": video_feature,
        "text_feature": text_feature,
        "video_dim": int(video_dim),
        "text_dim": int(text_dim),
        "latent_dim": int(latent_dim),
        "seed": int(seed),
        "video_feature_file": str(video_file),
        "query_feature_file": str(query_file),
        "splits": summary_splits,
    }
