"""The embedded demo: generator structure and determinism, the cached staged build, and the CLI."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import save_tiny_bert

from prvr.demo import build as demo_build
from prvr.demo.build import DemoSettings, build_demo, demo_dir, read_manifest, read_timelines
from prvr.demo.examples import (
    ExampleAnswer,
    ExampleHit,
    answer_examples,
    moment_iou,
    overlap_summary,
    pick_test_queries,
)
from prvr.demo.generator import (
    MAX_SECONDS,
    MIN_EVENT_SECONDS,
    MIN_SECONDS,
    generate_corpus,
    generate_video,
)
from prvr.demo.vocabulary import ACTIONS, PLACES, SUBJECTS, THINGS

SPLITS = {"train": 40, "val": 10, "test": 10}
ACTION_OF = {a.key: a for a in ACTIONS}
THING_OF = {t.key: t for t in THINGS}


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z]+|[^a-z\s]", text.lower())


# ----------------------------------------------------------------------------------------------------------------
# generator


def test_generator_is_deterministic_and_seeded() -> None:
    first, second = generate_corpus(3, SPLITS), generate_corpus(3, SPLITS)
    assert [v.to_dict() for v in first] == [v.to_dict() for v in second]
    other = generate_corpus(4, SPLITS)
    assert [v.to_dict()["events"] for v in other] != [v.to_dict()["events"] for v in first]
    # a video does not depend on the sizes of the splits
    assert generate_video(3, "test", 5).to_dict() == generate_corpus(3, {"train": 2, "test": 9})[2 + 5].to_dict()


def test_generator_structure() -> None:
    videos = generate_corpus(0, {"train": 300, "val": 50, "test": 50})
    assert len({v.video_id for v in videos}) == len(videos)
    coverages = []
    for video in videos:
        assert MIN_SECONDS <= video.duration <= MAX_SECONDS
        assert 3 <= len(video.events) <= 8
        previous_end = 0.0
        for event in video.events:
            assert 0.0 <= previous_end <= event.start < event.end <= video.duration  # ordered, disjoint, inside
            assert event.end - event.start >= MIN_EVENT_SECONDS - 0.11  # one decimal of rounding at each end
            previous_end = event.end
            action = ACTION_OF[event.action]
            assert event.place == video.place and video.place in action.places
            assert (event.thing == "") == (not action.things)
            if event.thing:
                assert event.thing in action.things
                assert not THING_OF[event.thing].places or video.place in THING_OF[event.thing].places
        coverages.append(sum(e.end - e.start for e in video.events) / video.duration)
    assert 0.55 <= float(np.mean(coverages)) <= 0.95 and max(coverages) < 1.0  # partial coverage: gaps exist
    lengths = [e.end - e.start for v in videos for e in v.events]
    assert np.std(lengths) > 5.0  # events of varying length
    seen = {(e.action, e.place) for v in videos for e in v.events}
    assert ("walk", "beach") in seen and ("play_music", "stage") in seen and ("cook", "kitchen") in seen
    assert {v.place for v in videos} == {p.key for p in PLACES}
    assert {e.subject for v in videos for e in v.events} == {s.key for s in SUBJECTS}


def _uses_one_of(sentence: str, forms: tuple[tuple[str, str], ...]) -> bool:
    """The sentence holds one of the verb forms, words before the object slot and after it in order."""
    text = " " + " ".join(_words(sentence)) + " "
    for pair in forms:
        for form in pair:
            head, _, tail = form.partition("{o}")
            head, tail = " ".join(_words(head)), " ".join(_words(tail))
            at = text.find(f" {head} ")
            if at >= 0 and (not tail or f" {tail} " in text[at + len(head):]):
                return True
    return False


def test_query_is_a_different_wording_than_the_caption() -> None:
    overlaps = []
    for action in ACTIONS:  # the two annotators' verb phrases are disjoint lists
        assert not set(action.caption) & set(action.query)
    for thing in THINGS:
        assert not set(thing.caption) & set(thing.query)
    for video in generate_corpus(1, {"train": 200}):
        for event in video.events:
            caption, query = set(_words(event.caption)), set(_words(event.query))
            assert _words(event.query) != _words(event.caption)
            action = ACTION_OF[event.action]
            assert _uses_one_of(event.caption, action.caption) and _uses_one_of(event.query, action.query)
            overlaps.append(len(caption & query) / len(caption | query))
    assert float(np.mean(overlaps)) < 0.35  # two wordings, not one sentence with a word swapped


def test_generator_rejects_bad_splits() -> None:
    with pytest.raises(ValueError, match="positive video counts"):
        generate_corpus(0, {"train": 0})
    with pytest.raises(ValueError, match="split name"):
        generate_corpus(0, {"a b": 2})


def test_settings_and_cache_location(tmp_path, monkeypatch) -> None:
    with pytest.raises(ValueError, match="at least 20 videos"):
        DemoSettings(videos=5)
    settings = DemoSettings(seed=7, videos=100)
    assert settings.splits() == {"train": 70, "val": 15, "test": 15}
    monkeypatch.setenv("PRVR_CACHE", str(tmp_path / "c"))
    assert demo_dir(settings).parent == tmp_path / "c" / "demo" and "s7-n100" in demo_dir(settings).name
    monkeypatch.delenv("PRVR_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert demo_dir(settings).parent == tmp_path / "x" / "prvr" / "demo"
    assert settings.digest() != DemoSettings(seed=8, videos=100).digest()


# ----------------------------------------------------------------------------------------------------------------
# the staged, cached build (tiny random encoders built here; the packaged MiniLMs are used by the slow CLI test)


@pytest.fixture(scope="module")
def tiny_encoders(tmp_path_factory):
    from prvr.text_encoders import TokenFeatureEncoder

    texts = [v.idle_caption + " " + e.caption + " " + e.query for v in generate_corpus(0, SPLITS) for e in v.events]
    words = sorted({w for text in texts for w in _words(text)} | set("someone walks a dog on the beach".split()))
    encoders = {}
    for name, seed, dim in (("camera", 1, 24), ("text", 2, 16)):
        folder = save_tiny_bert(tmp_path_factory.mktemp(name), words=words, hidden_size=dim, seed=seed)
        encoders[name] = TokenFeatureEncoder(folder, name=f"tiny-{name}", max_tokens=30)
    return encoders


SMALL = DemoSettings(seed=0, videos=24, epochs=1, moment_epochs=1, moment_queries=40)


@pytest.fixture(scope="module")
def small_demo(tmp_path_factory, tiny_encoders):
    cache = tmp_path_factory.mktemp("cache")
    backbone = {"id": tiny_encoders["text"].encoder_id, "path": str(tiny_encoders["text"].model_dir)}
    kwargs = {"cache_root": cache, "progress": False, "encoders": tiny_encoders, "text_backbone": backbone}
    stages: list[tuple[str, str]] = []
    first = build_demo(SMALL, on_stage=lambda stage, status: stages.append((stage, status)), **kwargs)
    return {"first": first, "stages": stages, "kwargs": kwargs}


def test_build_writes_every_stage_and_a_queryable_index(small_demo) -> None:
    first = small_demo["first"]
    assert first.built == ("corpus", "model", "moments", "index")
    assert [s for s in small_demo["stages"] if s[1] != "build"] == [(s, "done") for s in first.built]
    manifest = read_manifest(first.directory)
    assert manifest is not None and set(manifest["stages"]) == {"corpus", "model", "moments", "index"}
    assert first.checkpoint.is_file() and first.moment_checkpoint is not None and first.moment_checkpoint.is_file()
    corpus = first.facts["corpus"]
    assert corpus["videos"] == SMALL.splits() and corpus["text_encoder"].startswith("tiny-text@")
    timelines = read_timelines(first.directory)
    assert len(timelines) == SMALL.videos
    assert first.facts["index"]["videos"] == SMALL.videos and first.facts["index"]["moments"] is True

    # the index answers free text through the recorded text backbone, with moments inside the video
    answers = answer_examples(first.index_dir, timelines, ["someone walks a dog on the beach"],
                              pick_test_queries(timelines, seed=0, count=2), k=3)
    assert len(answers) == 3 and all(len(a.hits) == 3 for a in answers)
    kinds = {a.query: next(((h.true_event["action"], h.true_event["thing"]) for h in a.hits if h.true_event), None)
             for a in answers}  # every event shown beside one query is of one kind
    for answer in answers:
        scores = [hit.score for hit in answer.hits]
        assert scores == sorted(scores, reverse=True)
        for hit in answer.hits:
            assert hit.video_id in timelines and (hit.true_event is not None or "no event" in hit.how)
            if hit.true_event is not None and not hit.is_target:  # another video: an event of the query's kind
                assert (hit.true_event["action"], hit.true_event["thing"]) == kinds[answer.query]
            duration = timelines[hit.video_id]["duration"]
            assert hit.moments and all(0.0 <= m.start_sec <= m.end_sec <= duration for m in hit.moments)
    test_answers = answers[:2]
    assert all(a.target is not None and timelines[a.target[0]]["split"] == "test" for a in test_answers)
    for answer in test_answers:
        assert answer.target_rank is not None and 1 <= answer.target_rank <= SMALL.videos
        assert (answer.target_rank <= 3) == any(h.is_target for h in answer.hits)


def test_the_localiser_is_chosen_on_val_and_recorded(small_demo) -> None:
    from prvr.index.manifest import load_manifest

    from prvr.moments.zero_shot import RetrievalCosineLocalizer
    from prvr.retriever import Retriever

    first = small_demo["first"]
    moments = first.facts["moments"]
    readings = moments["val_by_reading"]  # every candidate measured on val, the best one chosen and recorded
    candidates = [name for name, found in readings.items() if isinstance(found, dict)]
    assert {"denoiser", "relevance_span", "retrieval_cosine@0.5"} <= set(candidates)
    best = max(readings[name]["R1@0.5"] + readings[name]["R1@0.7"] for name in candidates)
    assert readings[moments["reading"]]["R1@0.5"] + readings[moments["reading"]]["R1@0.7"] == best
    assert moments["test"] == moments["test_by_reading"][moments["reading"]]  # held-out numbers of the choice
    manifest = load_manifest(first.index_dir / "generations" / first.facts["index"]["generation"])
    assert manifest.moment_localizer["kind"] == moments["reading"].partition("@")[0]
    assert manifest.moment_localizer["measured"] == readings
    if moments["reading"].startswith("retrieval_cosine"):
        with Retriever.load(first.index_dir) as retriever:
            assert isinstance(retriever.localizer(), RetrievalCosineLocalizer)

    # the held-out test queries: the target video's printed moment lies inside it (overlap with the true event is
    # measured on the full demo, docs/bench/demo_moments.md: the tiny random encoders here are too weak for it)
    timelines = read_timelines(first.directory)
    answers = answer_examples(first.index_dir, timelines, [], pick_test_queries(timelines, seed=0, count=4),
                              k=SMALL.videos)
    for hit in (hit for answer in answers for hit in answer.hits if hit.is_target):
        duration = timelines[hit.video_id]["duration"]
        assert hit.moments and 0.0 <= hit.moments[0].start_sec < hit.moments[0].end_sec <= duration


def test_each_hit_is_shown_beside_an_event_of_the_query_kind(small_demo) -> None:
    first = small_demo["first"]
    timelines = read_timelines(first.directory)
    picks = pick_test_queries(timelines, seed=0, count=4)
    answers = answer_examples(first.index_dir, timelines, [], picks, k=SMALL.videos)
    for (_, video_id, window), answer in zip(picks, answers):
        own = next(e for e in timelines[video_id]["events"] if (e["start"], e["end"]) == window)
        for hit in answer.hits:
            kinds = {(e["action"], e["thing"]) for e in timelines[hit.video_id]["events"]}
            if hit.is_target:
                assert hit.true_event == own
            elif (own["action"], own["thing"]) in kinds:  # another video with an event of that kind: it is shown
                assert (hit.true_event["action"], hit.true_event["thing"]) == (own["action"], own["thing"])
            else:  # no such event: none is shown (not the nearest sentence), and the reason says so
                assert hit.true_event is None and "no event" in hit.how
    summary = overlap_summary(answers)
    with_event = [h for a in answers for h in a.hits if h.moments and h.true_event is not None]
    assert summary["hits_with_event"] == len(with_event)
    assert summary["overlapping"] == sum(moment_iou(h) > 0 for h in with_event)


def test_moment_iou_against_the_event_shown() -> None:
    from prvr.types import Moment

    def hit(start: float, end: float, event: tuple[float, float] | None, rank: int = 1) -> ExampleHit:
        shown = {"start": event[0], "end": event[1]} if event is not None else None
        return ExampleHit(rank, "v", 0.5, (Moment(start, end, 0.9),), shown, "", rank == 1)

    assert moment_iou(hit(10.0, 20.0, (15.0, 25.0))) == pytest.approx(5.0 / 15.0)
    assert moment_iou(hit(0.0, 5.0, (6.0, 9.0))) == 0.0
    assert moment_iou(hit(0.0, 5.0, None)) is None
    answers = [ExampleAnswer("q", None, None, (hit(10.0, 20.0, (15.0, 25.0)), hit(0.0, 5.0, (6.0, 9.0), rank=2),
                                               hit(0.0, 5.0, None, rank=3)))]
    assert overlap_summary(answers) == {"hits_with_event": 2, "overlapping": 1, "top_hits_with_event": 1,
                                        "top_overlapping": 1, "target_hits_with_event": 1, "target_overlapping": 1,
                                        "median_iou": pytest.approx(1 / 6, abs=1e-3)}


def test_second_run_reuses_the_cache(small_demo) -> None:
    first = small_demo["first"]
    before = first.checkpoint.stat().st_mtime_ns
    stages: list[tuple[str, str]] = []
    second = build_demo(SMALL, on_stage=lambda stage, status: stages.append((stage, status)),
                        **small_demo["kwargs"])
    assert second.built == () and stages == [(s, "reuse") for s in ("corpus", "model", "moments", "index")]
    assert first.checkpoint.stat().st_mtime_ns == before
    assert second.facts == first.facts


def test_a_stage_cut_off_by_a_killed_run_is_rebuilt(small_demo) -> None:
    first = small_demo["first"]
    manifest_path = first.directory / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    del manifest["stages"]["index"]  # what a run killed during the index stage leaves: no record of it
    manifest_path.write_text(json.dumps(manifest))
    shutil.rmtree(first.index_dir)
    first.index_dir.mkdir()
    (first.index_dir / "index.db").write_bytes(b"half written")
    rebuilt = build_demo(SMALL, **small_demo["kwargs"])
    assert rebuilt.built == ("index",)
    assert read_manifest(first.directory)["stages"]["index"]["facts"]["videos"] == SMALL.videos
    answers = answer_examples(rebuilt.index_dir, read_timelines(first.directory), ["a man plays the guitar"], k=2)
    assert len(answers[0].hits) == 2


def test_a_training_cut_off_resumes_from_last_checkpoint(small_demo) -> None:
    first = small_demo["first"]
    manifest_path = first.directory / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    for stage in ("model", "moments", "index"):  # killed during training: the corpus record is all that was written
        del manifest["stages"][stage]
    manifest_path.write_text(json.dumps(manifest))
    last = first.checkpoint.parent / "last.pt"
    stamp = last.stat().st_mtime_ns
    rebuilt = build_demo(SMALL, **small_demo["kwargs"])
    assert rebuilt.built == ("model", "moments", "index")
    assert last.stat().st_mtime_ns == stamp  # resumed after the epoch in last.pt: nothing trained again
    assert rebuilt.facts["model"]["epochs_run"] == SMALL.epochs
    assert rebuilt.facts["index"]["videos"] == SMALL.videos

    # without its best.pt (deleted by hand), the stage trains afresh instead of failing
    manifest = json.loads(manifest_path.read_text())
    for stage in ("model", "moments", "index"):
        del manifest["stages"][stage]
    manifest_path.write_text(json.dumps(manifest))
    first.checkpoint.unlink()
    again = build_demo(SMALL, **small_demo["kwargs"])
    assert again.built == ("model", "moments", "index") and again.checkpoint.is_file()
    assert last.stat().st_mtime_ns != stamp


def test_changed_files_fail_verification(small_demo) -> None:
    directory = small_demo["first"].directory
    record = read_manifest(directory)["stages"]["corpus"]
    assert demo_build._verified(directory, record)
    captions = directory / next(name for name in record["files"] if name.endswith("demotest.caption.txt"))
    original = captions.read_bytes()
    try:
        captions.write_bytes(original + b"x")
        assert not demo_build._verified(directory, record)
    finally:
        captions.write_bytes(original)
    assert not demo_build._verified(directory, None)
    index_record = dict(read_manifest(directory)["stages"]["index"])
    assert demo_build._verified(directory, index_record)
    index_record["facts"] = {**index_record["facts"], "text_backbone_path": str(directory / "moved-away")}
    assert not demo_build._verified(directory, index_record)  # a moved text backbone: the index is rebuilt
    assert read_manifest(directory / "nowhere") is None


def test_cli_help_lists_the_options() -> None:
    from prvr.cli import main

    result = CliRunner().invoke(main, ["demo", "--help"])
    assert result.exit_code == 0
    for option in ("--rebuild", "--cache-dir", "--seed", "--videos", "--epochs"):
        assert option in result.output


@pytest.mark.slow
def test_cli_end_to_end_with_the_packaged_encoders(tmp_path) -> None:
    pytest.importorskip("onnxruntime")
    from prvr.cli import main
    from prvr.text_encoders import find_minilm_l3_onnx, find_minilm_l6_dir

    try:
        find_minilm_l3_onnx(), find_minilm_l6_dir()
    except RuntimeError as error:
        pytest.skip(str(error))
    runner = CliRunner()
    args = ["demo", "--cache-dir", str(tmp_path), "--videos", "30", "--epochs", "1", "--no-progress", "-k", "2"]
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "does not look at pixels" in result.output and "train the retrieval model: done" in result.output
    match = re.search(r'query "someone walks a dog on the beach" --index (\S+)', result.output)
    assert match is not None
    again = runner.invoke(main, args)
    assert again.exit_code == 0 and "train the retrieval model: cached" in again.output
    assert "built " not in again.output
    query = runner.invoke(main, ["query", "someone walks a dog on the beach", "--index", match.group(1), "-k", "3"])
    assert query.exit_code == 0, query.output
