"""The demo's example queries, answered through the demo index and set beside the generated ground truth.

Two kinds of examples: held-out test queries (annotator B's sentence of a known event in a known video, so the rank
of the right video and the true window can be shown) and free English sentences (no single right answer). Each hit
is shown with a generated event of that video for comparison with the predicted moment: the query's own event for
the target video of a test query, else the event whose sentence is closest to the query.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from prvr.types import Moment

__all__ = ["FREE_QUERIES", "ExampleHit", "ExampleAnswer", "pick_test_queries", "answer_examples"]

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
        how: why that event is shown: the target event of a test query, or the video's event whose sentence is
            closest to the query (all-MiniLM-L6 sentence cosine).
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
            shown = []
            for rank, hit in enumerate(hits, start=1):
                events = list(timelines.get(hit.video_id, {}).get("events", []))
                is_target = target is not None and hit.video_id == target[0]
                event = next((e for e in events if is_target and (float(e["start"]), float(e["end"])) == target[1]),
                             None) if target is not None else None
                how = "the event the query was written about"
                if event is None:
                    event, how = _closest_by_text(retriever.text_encoder, text, events), "closest to the query"
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
