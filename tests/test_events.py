"""Event tokens (issue 20, ``prvr.events``): the multi-scale segmentation on hand-made step signals finds the steps
at their exact positions, at several scales, and handles a one-frame and a constant video; the zero-shot score with
event tokens equals a direct float64 reference; an index built with them keeps moments on the true frames only."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from prvr.config import EventConfig
from prvr.data.preprocess import collate_queries, collate_videos, preprocess_query, preprocess_video
from prvr.events import change_points, event_tokens, haar_changes, segment_events
from prvr.moments.zero_shot import ZeroShotMomentConfig, ZeroShotMomentLocalizer
from prvr.zero_shot import ZeroShotPRVR, save_zero_shot_checkpoint, zero_shot_config

ON = EventConfig(enabled=True, scales=(1, 2, 4, 8), threshold=1.0, min_length=2, max_events=16)


def _steps(lengths: list[int], dim: int = 16, seed: int = 0) -> np.ndarray:
    """Piecewise-constant frames: one random unit direction per segment, ``lengths[i]`` frames each."""
    directions = np.random.default_rng(seed).normal(size=(len(lengths), dim))
    return np.concatenate([np.repeat(d[None] / np.linalg.norm(d), n, axis=0) for d, n in zip(directions, lengths)])


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_haar_changes_is_a_direct_loop() -> None:
    frames = np.random.default_rng(1).normal(size=(11, 5))
    for h in (1, 2, 3, 20):
        expected = []
        for b in range(1, 11):
            before, after = frames[max(0, b - h):b].mean(axis=0), frames[b:min(11, b + h)].mean(axis=0)
            expected.append(1 - before @ after / np.linalg.norm(before) / np.linalg.norm(after))
        np.testing.assert_allclose(haar_changes(frames, h), expected, atol=1e-12)


@pytest.mark.parametrize("half_width", [1, 2, 4, 8])
def test_steps_are_found_at_their_exact_positions_at_every_scale(half_width: int) -> None:
    frames = _steps([13, 12, 14, 16])  # every segment at least 1.5 x the largest scale
    points = change_points(haar_changes(frames, half_width), half_width, threshold=1.0, min_length=2)
    assert points == [13, 25, 39]


def test_a_short_event_is_found_by_the_fine_scales_only() -> None:
    frames = _steps([20, 3, 20], seed=4)
    fine = [change_points(haar_changes(frames, h), h, threshold=1.0, min_length=2) for h in (1, 2)]
    assert fine == [[20, 23], [20, 23]]
    coarse = change_points(haar_changes(frames, 8), 8, threshold=1.0, min_length=2)
    assert len(coarse) == 1 and 20 <= coarse[0] <= 23  # one change at the coarse scale, inside the short event
    events = segment_events(frames, dataclasses.replace(ON, scales=(1, 8)))
    expected = [(0, coarse[0]), (coarse[0], 43)]  # coarsest scale first, then the fine events not seen yet
    expected += [event for event in [(0, 20), (20, 23), (23, 43)] if event not in expected]
    assert events == expected


def test_min_length_keeps_the_stronger_of_two_close_changes() -> None:
    frames = _steps([10, 1, 10], seed=2)
    changes = haar_changes(frames, 1)
    points = change_points(changes, 1, threshold=1.0, min_length=2)
    assert points == [10 if changes[9] >= changes[10] else 11]
    assert change_points(changes, 1, threshold=1.0, min_length=1) == [10, 11]


def test_the_threshold_is_relative_to_the_video_level() -> None:
    rng = np.random.default_rng(3)
    frames = _steps([15, 15], seed=5) + 0.01 * rng.normal(size=(30, 16))  # noise: every boundary changes a little
    assert change_points(haar_changes(frames, 1), 1, threshold=3.0, min_length=2) == [15]


def test_one_frame_and_constant_videos_are_one_event() -> None:
    one = np.array([[3.0, 4.0]])
    assert segment_events(one, ON) == [(0, 1)]
    np.testing.assert_allclose(event_tokens(one, ON), np.repeat([[0.6, 0.8]], ON.max_events, axis=0))
    constant = np.repeat([[1.0, 2.0, 2.0]], 9, axis=0)
    assert segment_events(constant, ON) == [(0, 9)]
    np.testing.assert_allclose(event_tokens(constant, ON)[0], [1 / 3, 2 / 3, 2 / 3])
    with pytest.raises(ValueError, match="non-empty"):
        segment_events(np.zeros((0, 3)), ON)


def test_event_tokens_are_unit_means_padded_to_max_events() -> None:
    frames = _steps([6, 5, 7], seed=6) * np.linspace(1, 3, 18)[:, None]  # lengths differ: means of unit frames
    config = dataclasses.replace(ON, scales=(2,), max_events=5)
    tokens = event_tokens(frames, config)
    unit = _unit(frames)
    expected = [_unit(unit[a:b].mean(axis=0)) for a, b in [(0, 6), (6, 11), (11, 18)]]
    np.testing.assert_allclose(tokens, np.stack([*expected, expected[-1], expected[-1]]), atol=1e-12)
    capped = event_tokens(frames, dataclasses.replace(config, max_events=2))
    np.testing.assert_allclose(capped, np.stack(expected[:2]), atol=1e-12)


def test_bad_event_settings_are_refused() -> None:
    for bad in ({"scales": ()}, {"scales": (0,)}, {"min_length": 0}, {"max_events": 0}, {"threshold": -1.0}):
        with pytest.raises(ValueError, match="events"):
            EventConfig(**bad)


def _videos(lengths: list[int], dim: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    videos = []
    for count in lengths:  # a few steps plus noise, so the segmentation has something to find
        steps = _steps([max(1, count // 3), max(1, count // 3), count], dim=dim, seed=int(rng.integers(1000)))
        videos.append((steps[:count] + 0.2 * rng.normal(size=(count, dim))).astype(np.float32))
    return videos


def test_scores_with_event_tokens_equal_a_float64_reference() -> None:
    dim, lengths = 12, [1, 5, 17, 40]
    config = zero_shot_config(dim, video_backbone=None, events=ON)
    model = ZeroShotPRVR(config.model)
    videos = _videos(lengths, dim, seed=8)
    batch = collate_videos([preprocess_video(v, config.data) for v in videos], [f"v{i}" for i in range(4)])
    tokens = model.encode_videos(batch)
    assert tokens.frame_mask.sum(dim=1).tolist() == [n + ON.max_events for n in lengths]
    rng = np.random.default_rng(9)
    raw_queries = [rng.normal(size=(int(n), dim)).astype(np.float32) for n in (1, 3, 6)]
    queries = model.encode_queries(collate_queries([preprocess_query(q, normalize=False) for q in raw_queries],
                                                   ["a", "b", "c"]))
    got = model.score(queries, tokens)["total"].numpy()  # (Nq, V)

    expected = np.zeros((3, 4))
    for column, video in enumerate(videos):  # float64 from the raw frames: frames, then the events' means
        frames = _unit(video.astype(np.float64))
        events = [_unit(frames[a:b].mean(axis=0)) for a, b in segment_events(frames, ON)]
        pool = np.concatenate([frames, np.stack(events)])  # (F + n, D)
        for row, query in enumerate(raw_queries):
            vector = _unit(query.astype(np.float64).mean(axis=0))
            expected[row, column] = (pool @ vector).max()
    np.testing.assert_allclose(got, expected, atol=1e-5)
    plain = ZeroShotPRVR(zero_shot_config(dim, video_backbone=None).model)
    assert (got >= plain.score(queries, plain.encode_videos(batch))["total"].numpy() - 1e-6).all()


def test_the_moment_localiser_skips_the_event_tokens() -> None:
    frames = _videos([30], 8, seed=10)[0]
    with_events = np.concatenate([frames, event_tokens(frames, ON).astype(np.float32)])
    query = np.random.default_rng(11).normal(size=(2, 8))
    plain = ZeroShotMomentLocalizer().localize(query, frames, 30.0)
    skipped = ZeroShotMomentLocalizer(ZeroShotMomentConfig(event_tokens=ON.max_events)).localize(
        query, with_events, 30.0)
    assert skipped.moments == plain.moments
    np.testing.assert_array_equal(skipped.relevance, plain.relevance)
    with pytest.raises(ValueError, match="event tokens"):
        ZeroShotMomentLocalizer(ZeroShotMomentConfig(event_tokens=30)).localize(query, frames, 30.0)


def test_an_index_with_event_tokens_searches_them_and_localises_on_frames(tmp_path: Path) -> None:
    import reference
    from prvr.data.dataset import PRVRCorpus
    from prvr.data.synthetic import make_synthetic_corpus
    from prvr.index.builder import build_index
    from prvr.retriever import Retriever

    root = tmp_path / "data"
    make_synthetic_corpus(root, "synth", splits={"val": 6}, video_dim=16, text_dim=16, seed=12, frame_range=(6, 20))
    config = zero_shot_config(16, video_backbone=None, video_feature="synth", text_feature="synth",
                              events=dataclasses.replace(ON, max_events=4))
    checkpoint = save_zero_shot_checkpoint(tmp_path / "zs.pt", config)
    corpus = PRVRCorpus(root, "synth", "val", config.data)
    build_index(checkpoint, corpus, tmp_path / "index", collection_name="synth", token_dtype="float32",
                progress=False)
    with Retriever.load(tmp_path / "index") as retriever:
        assert retriever.config.model.events == config.model.events  # the settings travel with the index
        assert retriever.manifest.moment_localizer == {"kind": "zero_shot", "smooth": 1, "event_tokens": 4}
        store = retriever.store
        ids = store.video_ids
        tokens = store.get(ids)
        lengths = {video: corpus.video(video)[1].shape[0] for video in corpus.video_ids}
        assert sorted(tokens.frame_mask.sum(dim=1).tolist()) == sorted(n + 4 for n in lengths.values())
        queries = np.random.default_rng(13).normal(size=(3, 16)).astype(np.float32)
        exact = reference.fused_scores(queries, tokens.clip.numpy(), tokens.frame.numpy(), tokens.frame_mask.numpy(),
                                       clip_weight=0.0, frame_weight=1.0)
        found = retriever.search_vectors(queries, 6, 6)
        for row, ranked in enumerate(found):
            assert ranked.video_ids.tolist() == ids[np.lexsort((ids, -exact[row]))].tolist()
        localizer = retriever.localizer()
        assert localizer.config.event_tokens == 4
    with pytest.raises(ValueError, match="event_tokens"):
        build_index(checkpoint, corpus, tmp_path / "index-b", collection_name="synth", progress=False,
                    moment_localizer={"kind": "zero_shot", "smooth": 1})


def test_build_index_zero_shot_events_flag(tmp_path: Path) -> None:
    import json

    from click.testing import CliRunner

    from prvr.cli import main
    from prvr.data.synthetic import make_synthetic_corpus

    root = tmp_path / "data"
    make_synthetic_corpus(root, "synth", splits={"val": 4}, video_dim=16, text_dim=16, seed=14, frame_range=(5, 9))
    data = ["--data", str(root), "--collection", "synth", "--split", "val", "--video-feature", "synth",
            "--text-feature", "synth", "--no-progress"]
    result = CliRunner().invoke(main, ["build-index", "--zero-shot", "--zero-shot-events", *data, "--out",
                                       str(tmp_path / "index")])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output.strip().splitlines()[-1])["tokens"] > 0
    result = CliRunner().invoke(main, ["index", "info", str(tmp_path / "index")])
    assert '"event_tokens": 8' in result.output, result.output


def _naive_change_points(d: np.ndarray, half_width: int, threshold: float, min_length: int) -> list[int]:
    """A direct loop: local maxima within h // 2 (strict on the left), above median + threshold x MAD, accepted
    strongest first while every event keeps min_length frames."""
    median = float(np.median(d))
    level = median + threshold * float(np.median(np.abs(d - median)))
    radius, accepted = half_width // 2, []
    candidates = [j for j in range(d.size) if d[j] > level + 1e-9
                  and all(d[j] > d[i] for i in range(max(0, j - radius), j))
                  and all(d[j] >= d[i] for i in range(j + 1, min(d.size, j + radius + 1)))]
    for j in sorted(candidates, key=lambda j: (-d[j], j)):
        if all(abs(j + 1 - edge) >= min_length for edge in [0, *accepted, d.size + 1]):
            accepted.append(j + 1)
    return sorted(accepted)


def test_change_points_equal_a_direct_loop() -> None:
    rng = np.random.default_rng(15)
    for trial in range(60):
        d = np.round(rng.random(int(rng.integers(1, 50))), 1)  # rounded: plateaus and ties
        h, threshold, min_length = int(rng.integers(1, 9)), float(rng.choice([0.0, 0.5, 2.0])), int(rng.integers(1, 5))
        assert change_points(d, h, threshold=threshold, min_length=min_length) == _naive_change_points(
            d, h, threshold, min_length), trial
