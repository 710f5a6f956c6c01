"""The demo corpus generator: videos as timelines of events, each event told twice (caption and query wording).

A video happens in one place (``prvr.demo.vocabulary.PLACES``) with one main person and sometimes a second one. It
lasts 30-240 s and holds 3-8 events, one after the other, of varying length; the events cover part of the video and
the gaps show the place with nothing happening. An event is (subject, action, object, place), drawn so that the
parts fit together (a surfboard on the beach, pasta in the kitchen).

Each event gets two sentences, like two annotators describing one moment:

* ``caption``: annotator A's wording (the ``caption`` lists of the vocabulary and the caption templates), which the
  demo's "camera" turns into frame features;
* ``query``: annotator B's wording (the disjoint ``query`` lists and other templates), the sentence a user would
  search with.

Everything comes from ``numpy.random.default_rng([seed, purpose, split code, video index])`` streams, so a corpus is
a pure function of (seed, split sizes), and a video does not depend on the sizes of the other splits.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from prvr.demo.vocabulary import ACTIONS, PLACES, SUBJECTS, THINGS, Action, Place, Subject, Thing

__all__ = [
    "GENERATOR_VERSION",
    "MIN_SECONDS",
    "MAX_SECONDS",
    "MIN_EVENT_SECONDS",
    "DemoEvent",
    "DemoVideo",
    "generate_video",
    "generate_corpus",
    "caption_sentence",
    "query_sentence",
]

GENERATOR_VERSION = "demo-gen-v1"  # bump when any list or rule below changes: it is part of the cache key
MIN_SECONDS, MAX_SECONDS = 30.0, 240.0
MIN_EVENTS, MAX_EVENTS = 3, 8
MIN_EVENT_SECONDS = 3.0
SECOND_PERSON_PROBABILITY = 0.3
_VIDEO_STREAM = 7  # stream purpose (part of the seed key; never change it: it defines the data)

_CAPTION_TEMPLATES: tuple[str, ...] = (
    "{S} {V3} {P}.",
    "{P_}, {s} {V3}.",
    "{S} is seen {Ving} {P}.",
    "We see {s} {Ving} {P}.",
    "{S} {V3} {P} as the camera watches.",
)
_QUERY_TEMPLATES: tuple[str, ...] = (
    "{S} is {Ving} {P}",
    "{S} {V3} {P}",
    "there is {s} {Ving} {P}",
    "{S} {V3}",
    "{S} starts {Ving} {P}",
    "then {s} is {Ving}",
    "{P_} {s} {V3}",
)

_SUBJECTS: dict[str, Subject] = {s.key: s for s in SUBJECTS}
_THINGS: dict[str, Thing] = {t.key: t for t in THINGS}
_PLACES: dict[str, Place] = {p.key: p for p in PLACES}
_ACTIONS: dict[str, Action] = {a.key: a for a in ACTIONS}


@dataclass(frozen=True)
class DemoEvent:
    """One event of a video.

    Attributes:
        start: start in seconds.
        end: end in seconds (> start).
        subject, action, thing, place: vocabulary keys (``thing`` is "" for actions without object).
        caption: annotator A's sentence (the video side).
        query: annotator B's sentence (the search side).
    """

    start: float
    end: float
    subject: str
    action: str
    thing: str
    place: str
    caption: str
    query: str

    def to_dict(self) -> dict[str, object]:
        return {"start": self.start, "end": self.end, "subject": self.subject, "action": self.action,
                "thing": self.thing, "place": self.place, "caption": self.caption, "query": self.query}


@dataclass(frozen=True)
class DemoVideo:
    """One generated video: its duration, place, events in time order and what the gaps show.

    Attributes:
        video_id: the id in the PRVR layout.
        split: train / val / test.
        duration: seconds, in [MIN_SECONDS, MAX_SECONDS].
        place: the place key.
        events: 3-8 non-overlapping events, in time order, inside [0, duration].
        idle_caption: annotator A's description of the empty place (frames outside every event).
    """

    video_id: str
    split: str
    duration: float
    place: str
    events: tuple[DemoEvent, ...]
    idle_caption: str

    def to_dict(self) -> dict[str, object]:
        return {"video_id": self.video_id, "split": self.split, "duration": self.duration, "place": self.place,
                "idle_caption": self.idle_caption, "events": [event.to_dict() for event in self.events]}


# ----------------------------------------------------------------------------------------------------------------
# sentences


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _capitalise(text: str) -> str:
    return text[:1].upper() + text[1:]


def _render(template: str, subject: str, verb: tuple[str, str], thing: str, place: str) -> str:
    third, ing = (form.replace("{o}", thing) for form in verb)
    text = template.format(S=subject, s=subject, V3=third, Ving=ing, P=place, P_=_capitalise(place))
    return _capitalise(" ".join(text.split()))


def caption_sentence(rng: np.random.Generator, subject: str, action: str, thing: str, place: str) -> str:
    """Annotator A's sentence of an event (the video side): caption wordings and caption templates."""
    act = _ACTIONS[action]
    return _render(
        _pick(rng, _CAPTION_TEMPLATES),
        _pick(rng, _SUBJECTS[subject].caption),
        act.caption[int(rng.integers(len(act.caption)))],
        _pick(rng, _THINGS[thing].caption) if thing else "",
        _pick(rng, _PLACES[place].caption),
    )


def query_sentence(rng: np.random.Generator, subject: str, action: str, thing: str, place: str) -> str:
    """Annotator B's sentence of the same event (the search side): query wordings and query templates."""
    act = _ACTIONS[action]
    return _render(
        _pick(rng, _QUERY_TEMPLATES),
        _pick(rng, _SUBJECTS[subject].query),
        act.query[int(rng.integers(len(act.query)))],
        _pick(rng, _THINGS[thing].query) if thing else "",
        _pick(rng, _PLACES[place].query),
    )


# ----------------------------------------------------------------------------------------------------------------
# timelines


def _things_for(action: Action, place: str) -> tuple[str, ...]:
    return tuple(key for key in action.things if not _THINGS[key].places or place in _THINGS[key].places)


def _activities_at(place: str) -> list[tuple[str, str]]:
    """Every (action, thing) pair that can happen at ``place`` (thing "" for actions without objects)."""
    pairs: list[tuple[str, str]] = []
    for action in ACTIONS:
        if place not in action.places:
            continue
        if not action.things:
            pairs.append((action.key, ""))
        pairs.extend((action.key, thing) for thing in _things_for(action, place))
    return pairs


def _event_lengths(rng: np.random.Generator, actions: Sequence[str], covered: float) -> np.ndarray:
    """Split ``covered`` seconds among the events, each at least MIN_EVENT_SECONDS, in proportion to a draw from
    the action's usual length range (a cooking event tends to outlast a sip of coffee)."""
    usual = np.array([rng.uniform(*_ACTIONS[key].seconds) for key in actions])  # (n,)
    spare = covered - MIN_EVENT_SECONDS * len(actions)
    return MIN_EVENT_SECONDS + spare * usual / usual.sum()


def generate_video(seed: int, split: str, index: int, video_id: str | None = None) -> DemoVideo:
    """Generate one video of the demo corpus.

    Args:
        seed: the corpus seed.
        split: its split name (part of the random stream key).
        index: its index within the split.
        video_id: the id to give it (default ``s<seed>_<split>_<index:05d>``).

    Returns:
        The :class:`DemoVideo`.
    """
    rng = np.random.default_rng([seed, _VIDEO_STREAM, zlib.crc32(split.encode("utf-8")), index])
    video_id = video_id or f"s{seed}_{split}_{index:05d}"
    duration = round(float(math.exp(rng.uniform(math.log(MIN_SECONDS), math.log(MAX_SECONDS)))), 2)
    most = int(min(MAX_EVENTS, duration // (2 * MIN_EVENT_SECONDS)))
    n_events = int(rng.integers(MIN_EVENTS, max(MIN_EVENTS, most) + 1))
    place = PLACES[int(rng.integers(len(PLACES)))].key
    people = rng.choice(len(SUBJECTS), size=2, replace=False)
    main_person, other_person = SUBJECTS[int(people[0])].key, SUBJECTS[int(people[1])].key

    pool = _activities_at(place)
    chosen: list[tuple[str, str]] = []
    for _ in range(n_events):
        options = [pair for pair in pool if not chosen or pair != chosen[-1]]  # no event repeats the one before
        chosen.append(options[int(rng.integers(len(options)))])

    coverage = rng.uniform(0.55, 0.95)  # share of the video inside events; the rest is gaps
    lengths = _event_lengths(rng, [action for action, _ in chosen], coverage * duration)  # (n,)
    gaps = rng.dirichlet(np.full(n_events + 1, 0.7)) * (duration - lengths.sum())  # (n + 1,)
    starts = np.cumsum(gaps[:-1]) + np.concatenate([[0.0], np.cumsum(lengths)[:-1]])  # (n,) raw seconds
    last = math.floor(duration * 10) / 10
    events: list[DemoEvent] = []
    for slot, (action, thing) in enumerate(chosen):
        start = float(round(starts[slot], 1))  # rounding is monotone: events stay ordered and disjoint
        end = float(min(round(starts[slot] + lengths[slot], 1), last))
        subject = other_person if rng.random() < SECOND_PERSON_PROBABILITY else main_person
        events.append(DemoEvent(
            start=start, end=end, subject=subject, action=action, thing=thing, place=place,
            caption=caption_sentence(rng, subject, action, thing, place),
            query=query_sentence(rng, subject, action, thing, place),
        ))
    idle = _capitalise(_pick(rng, _PLACES[place].idle)) + "."
    return DemoVideo(video_id, split, duration, place, tuple(events), idle)


def generate_corpus(seed: int, splits: Mapping[str, int]) -> list[DemoVideo]:
    """All videos of a demo corpus, split by split in the given order.

    Args:
        seed: the corpus seed.
        splits: split name -> number of videos (each >= 1).

    Returns:
        The videos (ids ``s<seed>_<split>_<index>``).
    """
    if not splits or any(int(count) < 1 for count in splits.values()):
        raise ValueError(f"splits must map split names to positive video counts, got {dict(splits)}")
    for name in splits:
        if not name or "/" in name or "#" in name or any(c.isspace() for c in name):
            raise ValueError(f"split name {name!r} must be non-empty, without '/', '#' or whitespace")
    return [generate_video(seed, split, index) for split, count in splits.items() for index in range(int(count))]
