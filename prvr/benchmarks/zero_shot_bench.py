"""Zero-shot retrieval rows on a standard-layout split whose frames and queries share one space (ANet-CapProxy's
"oracle" features: L6 frames, L6 queries), through the project's exact evaluation (``prvr.engine``).

Shape letters: Nq queries, Nb bank queries, V videos, D the shared space.

Each row is a :class:`ZeroShotRow`: the score weights, the frame-token budget (``data.max_frames``), optionally event
tokens (``prvr.events``, ``model.events``) and query-bank normalisation ``s(q, v) - a * bank_term(v)``
(``prvr.zero_shot.bank_term``) with a bank split's captions. The videos are encoded once per (``max_frames``, event
settings), timed (``encode_s`` wall and ``encode_cpu_s`` process CPU seconds per 1,000 videos: the index-time
encoding, reading the features and the event segmentation included); the bank once per (weights,
max_frames, event settings). :data:`ROWS` names every row by a short key (``--variants`` of the script).
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from prvr.config import EventConfig
from prvr.data.dataset import PRVRCorpus
from prvr.engine import encode_corpus, encode_corpus_queries, rank_corpus
from prvr.metrics.retrieval import chunked_ranks, recall_metrics
from prvr.zero_shot import ZeroShotPRVR, bank_term, zero_shot_config

__all__ = ["ZeroShotRow", "DEFAULT_ROWS", "EVENT_ROWS", "ROWS", "run_rows"]


@dataclasses.dataclass(frozen=True)
class ZeroShotRow:
    """One measured variant."""

    name: str
    clip_weight: float = 0.0
    frame_weight: float = 1.0
    max_frames: int = 128
    bank_weight: float = 0.0  # a
    bank_k: int = 200
    normalize_query_tokens: bool = False  # True: mean of L2-normalised tokens (the family's preprocessing)
    events: EventConfig = EventConfig()  # event tokens (off)


DEFAULT_ROWS: tuple[ZeroShotRow, ...] = (
    ZeroShotRow("frame only (max over frames)"),
    ZeroShotRow("frame only, query = mean of L2-normalised tokens", normalize_query_tokens=True),
    ZeroShotRow("frame only, all frames (no 128-bin means)", max_frames=100_000),
    ZeroShotRow("0.6 clip / 0.4 frame", clip_weight=0.6, frame_weight=0.4),
    ZeroShotRow("0.2 clip / 0.8 frame", clip_weight=0.2, frame_weight=0.8),
    *(ZeroShotRow(f"frame only + bank (k {k}, a {a})", bank_weight=a, bank_k=k)
      for k in (50, 200, 500, 2000) for a in (0.5, 0.7, 1.0)),
    ZeroShotRow("0.2 clip / 0.8 frame + bank (k 500, a 0.5)", clip_weight=0.2, frame_weight=0.8, bank_weight=0.5,
                bank_k=500),
)


def _events(scales: tuple[int, ...], threshold: float, min_length: int, max_events: int) -> EventConfig:
    return EventConfig(enabled=True, scales=scales, threshold=threshold, min_length=min_length, max_events=max_events)


def _event_name(events: EventConfig) -> str:
    return (f"scales {','.join(map(str, events.scales))}, thr {events.threshold:g}, min {events.min_length}, "
            f"max {events.max_events}")


EVENT_SETTINGS: dict[str, EventConfig] = {
    "events-a": _events((2, 4, 8), 1.0, 2, 8),
    "events-b": _events((1, 2, 4, 8, 16), 1.0, 2, 16),
    "events-c": _events((4, 8, 16), 2.0, 4, 8),
    "events-d": _events((2, 4, 8, 16, 32), 0.0, 2, 32),
}
EVENT_ROWS: dict[str, ZeroShotRow] = {
    **{key: ZeroShotRow(f"frame only + events ({_event_name(events)})", events=events)
       for key, events in EVENT_SETTINGS.items()},
    **{f"bank-k500-a0.5+{key}": ZeroShotRow(f"frame only + bank (k 500, a 0.5) + events ({_event_name(events)})",
                                            bank_weight=0.5, bank_k=500, events=events)
       for key, events in EVENT_SETTINGS.items()},
}


def _key(row: ZeroShotRow) -> str:
    """A short key of an original row: ``plain``, ``bank-k500-a0.5``, ``0.2-clip-0.8-frame`` ..."""
    if row.name == "frame only (max over frames)":
        return "plain"
    name = row.name.lower().replace("frame only", "").replace("k ", "k").replace("a ", "a")
    words = re.sub(r"[^a-z0-9.]+", " ", name)
    return "-".join(words.split())


ROWS: dict[str, ZeroShotRow] = {**{_key(row): row for row in DEFAULT_ROWS}, **EVENT_ROWS}


def run_rows(root: str | Path, collection: str, split: str, *, video_feature: str, text_feature: str,
             bank_split: str | None, rows: Sequence[ZeroShotRow] = DEFAULT_ROWS,
             chunk: int = 512) -> list[dict[str, Any]]:
    """Evaluate each row; returns one dict per row: its settings, R@1/5/10/100, SumR, MedR, MeanR and seconds."""
    cache: dict[tuple[Any, ...], Any] = {}
    results = []
    for row in rows:
        start = time.perf_counter()
        config = zero_shot_config(1, video_backbone=None, video_feature=video_feature, text_feature=text_feature,
                                  clip_weight=row.clip_weight, frame_weight=row.frame_weight)
        config = dataclasses.replace(config, data=dataclasses.replace(
            config.data, max_frames=row.max_frames, cache_in_memory=False,
            normalize_query_tokens=row.normalize_query_tokens))
        corpus_key = ("corpus", row.max_frames, row.normalize_query_tokens, row.events)
        if corpus_key not in cache:
            corpus = PRVRCorpus(root, collection, split, config.data)
            dim = corpus.video_dim
            model = ZeroShotPRVR(zero_shot_config(dim, video_backbone=None, events=row.events).model)
            encode_start, encode_cpu = time.perf_counter(), time.process_time()
            tokens = encode_corpus(model, corpus, batch_size=chunk)
            encode_s = (time.perf_counter() - encode_start, time.process_time() - encode_cpu)  # wall, CPU
            queries, targets = encode_corpus_queries(model, corpus, batch_size=4096)
            cache[corpus_key] = (dim, tokens, queries, targets, encode_s)
        dim, tokens, queries, targets, encode_s = cache[corpus_key]
        model = ZeroShotPRVR(dataclasses.replace(config.model, video_dim=dim, text_dim=dim, hidden_size=dim,
                                                 events=row.events))
        if row.bank_weight == 0.0:
            ranks = torch.as_tensor(rank_corpus(model, queries, tokens, targets, query_chunk=chunk,
                                                video_chunk=chunk))
        else:
            if bank_split is None:
                raise ValueError(f"row {row.name!r} needs a bank split")
            key = ("bank", row.clip_weight, row.frame_weight, row.bank_k, *corpus_key)
            bank_key = ("bank", row.normalize_query_tokens)
            if key not in cache:
                if bank_key not in cache:
                    bank_corpus = PRVRCorpus(root, collection, bank_split, config.data)
                    cache[bank_key] = encode_corpus_queries(model, bank_corpus, batch_size=4096)[0]
                cache[key] = bank_term(model, cache[bank_key], tokens, k=row.bank_k, query_chunk=chunk,
                                       video_chunk=chunk)
            correction = row.bank_weight * cache[key]  # (V,)

            def score_rows(q: torch.Tensor) -> torch.Tensor:  # (nq, D) -> (nq, V)
                return model.score(q, tokens)["total"].float() - correction

            ranks = chunked_ranks(queries, score_rows, torch.as_tensor(targets, dtype=torch.long), chunk=chunk)
        metrics = recall_metrics(ranks)
        tokens_per_video = float(tokens.frame_mask.sum()) / len(tokens)
        results.append({**dataclasses.asdict(row), **{key: float(value) for key, value in metrics.items()},
                        "num_queries": int(len(targets)), "num_videos": len(tokens),
                        "frame_tokens_per_video": round(tokens_per_video, 2),
                        "event_tokens_per_video": row.events.tokens_added,
                        "distinct_events_per_video": _distinct_events(tokens, row.events),
                        "encode_s_per_1000_videos": round(1000 * encode_s[0] / len(tokens), 2),
                        "encode_cpu_s_per_1000_videos": round(1000 * encode_s[1] / len(tokens), 2),
                        "seconds": round(time.perf_counter() - start, 1)})
    return results


def _distinct_events(tokens: Any, events: EventConfig) -> float | None:
    """Mean count of distinct event tokens per video (the rest of the ``max_events`` slots repeat the last one)."""
    if not events.enabled:
        return None
    counts = []
    for row in range(len(tokens)):
        total = int(tokens.frame_mask[row].sum())
        slots = tokens.frame[row, total - events.max_events:total]  # (E, D)
        copies = int((slots == slots[-1]).all(dim=-1).sum())  # the last event and its padding copies
        counts.append(events.max_events - copies + 1)
    return round(sum(counts) / len(counts), 2)
