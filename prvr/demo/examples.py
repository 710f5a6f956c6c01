"""The demo's example queries, answered through the demo index and set beside the generated ground truth.

Two kinds of examples: held-out test queries (annotator B's sentence of a known event in a known video, so the rank
of the right video and the true window can be shown) and free English sentences (no single right answer). Each hit
is shown with a generated event of that video for comparison with the predicted moment: for a test query, the
query's own event in its target video and, in any other video, an event of the same kind (the same action on the same
thing), or none when the video holds no such event. A free sentence has no own event: its kind is that of the event,
among every hit video's events, whose sentence is closest to it (all-MiniLM-L6 sentence cosine).
:func:`moment_iou` compares a hit's top moment with the event shown, :func:`overlap_summary` counts them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from prvr.types import Moment

__all__ = ["FREE_QUERIES", "ExampleHit", "ExampleAnswer", "pick_test_queries", "answer_examples", "moment_iou",
           "overlap_summary"]

FREE_QUERIES: tuple[str, ...] = (
    "someone walks a dog on the beach",
    "a man plays the guitar on stage",
    "a woman is cooking pasta in the kitchen",
)


@dataclass(frozen=True)
class ExampleHit:
    """One retrieved video of an example.

    Attributes:
        rank: 1-based rank.
        video_id: the video.
        score: the retrieval score.
        moments: the predicted moments (seconds), best first; empty without a moment model.
        true_event: the generated event shown for comparison (``DemoEvent.to_dict()``), or None.
        how: why that event is shown (or why none is): the target event of a test query, or an event of the query's
            kind in another video (none if that video holds no such event).
        is_target: the hit is the video the (test) query was written about.
    """

    rank: int
    video_id: str
    score: float
    moments: tuple[Moment, ...]
    true_event: dict[str, Any] | None
    how: str
    is_target: bool


@dataclass(frozen=True)
class ExampleAnswer:
    """One example query and its hits.

    Attributes:
        query: the sentence.
        target: (video id, (start, end)) for a held-out test query, None for a free sentence.
        target_rank: rank of the target video among all indexed videos (None for a free sentence).
        hits: the top ``k``.
    """

    query: str
    target: tuple[str, tuple[float, float]] | None
    target_rank: int | None
    hits: tuple[ExampleHit, ...]


def pick_test_queries(timelines: Mapping[str, Mapping[str, Any]], seed: int,
                      count: int = 2) -> list[tuple[str, str, tuple[float, float]]]:
    """``count`` held-out test queries, drawn with ``seed``: (sentence, video id, (start, end))."""
    test = sorted(video_id for video_id, video in timelines.items() if video["split"] == "test")
    if not test:
        raise ValueError("the demo corpus has no test videos; build it with more videos")
    rng = np.random.default_rng([seed, 11])
    picks = []
    for video_id in rng.choice(test, size=min(count, len(test)), replace=False):
        events = timelines[str(video_id)]["events"]
        event = events[int(rng.integers(len(events)))]
        picks.append((str(event["query"]), str(video_id), (float(event["start"]), float(event["end"]))))
    return picks


def _iou(a: tuple[float, float], b: tuple[float, float]) -> float:
    from prvr.metrics.moments import temporal_iou_matrix

    return float(temporal_iou_matrix(np.array([a]), np.array([b]))[0, 0])


def _same_kind(events: Sequence[Mapping[str, Any]], kind: tuple[str, str],
               moments: Sequence[Moment]) -> Mapping[str, Any] | None:
    """The video's event of ``kind`` (action, thing); of several, the one the top moment overlaps most."""
    matches = [e for e in events if (str(e["action"]), str(e["thing"])) == kind]
    if not matches or not moments:
        return matches[0] if matches else None
    top = (moments[0].start_sec, moments[0].end_sec)
    return max(matches, key=lambda e: _iou(top, (float(e["start"]), float(e["end"]))))


def moment_iou(hit: ExampleHit) -> float | None:
    """IoU of the hit's top moment with the event shown beside it; None without a moment or an event."""
    if not hit.moments or hit.true_event is None:
        return None
    return _iou((hit.moments[0].start_sec, hit.moments[0].end_sec),
                (float(hit.true_event["start"]), float(hit.true_event["end"])))


def overlap_summary(answers: Sequence[ExampleAnswer]) -> dict[str, Any]:
    """How many printed moments overlap the event shown beside them, for the hits that have one.

    ``hits_with_event`` counts hits with a moment and an event, ``overlapping`` those with IoU > 0; the ``top_``
    pair counts only rank-1 hits and the ``target_`` pair only the target videos of test queries.
    """
    def count(hits: Sequence[ExampleHit]) -> tuple[int, int]:
        ious = [iou for iou in (moment_iou(h) for h in hits) if iou is not None]
        return len(ious), sum(iou > 0 for iou in ious)

    every = [hit for answer in answers for hit in answer.hits]
    summary: dict[str, Any] = {}
    for name, hits in (("", every), ("top_", [h for h in every if h.rank == 1]),
                       ("target_", [h for h in every if h.is_target])):
        with_event, overlapping = count(hits)
        summary[f"{name}hits_with_event"], summary[f"{name}overlapping"] = with_event, overlapping
    ious = [iou for iou in (moment_iou(h) for h in every) if iou is not None]
    summary["median_iou"] = round(float(np.median(ious)), 3) if ious else None
    return summary


def _closest_by_text(encoder: Any, query: str, events: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    if encoder is None or not events:
        return None
    vectors = np.asarray(encoder.encode([query] + [str(e["query"]) for e in events]).sentences, dtype=np.float64)
    vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)  # (1 + E, D)
    return events[int(np.argmax(vectors[1:] @ vectors[0]))]


def answer_examples(
    index_dir: str | Path,
    timelines: Mapping[str, Mapping[str, Any]],
    free_queries: Sequence[str] = FREE_QUERIES,
    test_queries: Sequence[tuple[str, str, tuple[float, float]]] = (),
    *,
    k: int = 3,
) -> list[ExampleAnswer]:
    """Search the demo index for each example and attach the ground truth.

    Args:
        index_dir: the demo index.
        timelines: video id -> generated video (``prvr.demo.build.read_timelines``).
        free_queries: free English sentences.
        test_queries: (sentence, target video id, (start, end)) held-out queries.
        k: hits per query.

    Returns:
        One :class:`ExampleAnswer` per query, test queries first.
    """
    from prvr.retriever import Retriever

    items: list[tuple[str, tuple[str, tuple[float, float]] | None]] = [
        (text, (video_id, window)) for text, video_id, window in test_queries
    ] + [(text, None) for text in free_queries]
    if not items:
        return []
    answers = []
    with Retriever.load(index_dir) as retriever:
        results = retriever.search([text for text, _ in items], k=k)
        for (text, target), hits in zip(items, results):
            kind, how_kind, own = None, "an event of the kind the query describes", None  # kind: (action, thing)
            if target is not None:
                own = next((e for e in timelines.get(target[0], {}).get("events", [])
                            if (float(e["start"]), float(e["end"])) == target[1]), None)
                kind = (str(own["action"]), str(own["thing"])) if own is not None else None
            else:  # a free sentence: the kind of the event, in any hit video, whose sentence is closest to it
                closest = _closest_by_text(retriever.text_encoder, text, [
                    e for hit in hits for e in timelines.get(hit.video_id, {}).get("events", [])])
                kind = (str(closest["action"]), str(closest["thing"])) if closest is not None else None
                how_kind = "an event of the kind closest to the query"
            shown = []
            for rank, hit in enumerate(hits, start=1):
                events = list(timelines.get(hit.video_id, {}).get("events", []))
                is_target = target is not None and hit.video_id == target[0]
                if is_target:
                    event, how = own, "the event the query was written about"
                elif kind is not None:
                    event = _same_kind(events, kind, hit.moments)
                    how = how_kind if event is not None else "this video holds no event of that kind"
                else:
                    event, how = None, "no text encoder to compare the events with"
                shown.append(ExampleHit(rank, hit.video_id, float(hit.score), tuple(hit.moments),
                                        dict(event) if event is not None else None, how, is_target))
            target_rank = next((h.rank for h in shown if h.is_target), None)
            if target is not None and target_rank is None:  # its rank among every indexed video
                everything = retriever.search(text, k=retriever.num_videos, n_candidates=retriever.num_videos,
                                              localize=False)
                target_rank = next((rank for rank, hit in enumerate(everything, start=1)
                                    if hit.video_id == target[0]), None)
            answers.append(ExampleAnswer(text, target, target_rank, tuple(shown)))
    return answers
