"""The moment path's own frame tokens in the index, the relevance-span reading chosen by measurement, bad input."""

from __future__ import annotations

import dataclasses
import json
import types

import numpy as np
import pytest
import torch

from helpers import TEXT_DIM, write_moment_checkpoint
from prvr.moments.zero_shot import (
    DENOISER_KIND,
    RELEVANCE_SPAN_KIND,
    RelevanceSpanLocalizer,
    curve_moments,
    relevance_span_record,
    wrap_trained_localizer,
)
from prvr.types import Moment


# ----------------------------------------------------------------------------------------------------------------
# the span rule against a brute-force reference


def _best_span_reference(curve: np.ndarray) -> tuple[int, int]:
    """Every span [i, j] enumerated; the largest sum of curve - mean, earliest then shortest on ties."""
    centred = np.asarray(curve, dtype=np.float64) - np.mean(curve)
    best, span = -np.inf, (0, 0)
    for i in range(len(centred)):
        for j in range(i, len(centred)):
            total = float(centred[i : j + 1].sum())
            if total > best + 1e-12:
                best, span = total, (i, j)
    return span


@pytest.mark.parametrize("seed", range(5))
def test_curve_moments_best_span_matches_a_brute_force_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    curve = rng.standard_normal(int(rng.integers(2, 40)))
    duration = float(rng.uniform(5, 200))
    first, last = _best_span_reference(curve)
    moments = curve_moments(curve, duration, 3)
    assert moments[0].start_sec == pytest.approx(first / len(curve) * duration)
    assert moments[0].end_sec == pytest.approx((last + 1) / len(curve) * duration)
    assert moments[0].score == 1.0 and all(0 < m.score <= 1.0 for m in moments)
    for a in range(len(moments)):  # disjoint
        for b in range(a + 1, len(moments)):
            assert moments[a].end_sec <= moments[b].start_sec + 1e-9 or moments[b].end_sec <= moments[a].start_sec + 1e-9


def test_curve_moments_bad_input() -> None:
    assert curve_moments(np.array([0.3]), 12.0, 2) == (Moment(0.0, 12.0, 1.0),)  # one frame: the whole video
    assert curve_moments(np.zeros(5), 10.0, 2) == (Moment(0.0, 10.0, 1.0),)  # flat: the whole video, no NaN
    for duration in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="duration must be a finite number of seconds > 0"):
            curve_moments(np.array([0.1, 0.9]), duration, 1)
    with pytest.raises(ValueError, match="num_moments"):
        curve_moments(np.array([0.1, 0.9]), 5.0, 0)
    with pytest.raises(ValueError, match="finite"):
        curve_moments(np.array([0.1, np.nan]), 5.0, 1)


def test_wrap_trained_localizer_records() -> None:
    trained = object()
    assert wrap_trained_localizer(trained, None) is trained
    assert wrap_trained_localizer(trained, {"kind": DENOISER_KIND}) is trained
    wrapped = wrap_trained_localizer(trained, relevance_span_record({"denoiser": {}}))
    assert isinstance(wrapped, RelevanceSpanLocalizer) and wrapped.trained is trained
    with pytest.raises(ValueError, match="does not go with a moment checkpoint"):
        wrap_trained_localizer(trained, {"kind": "zero_shot"})


# ----------------------------------------------------------------------------------------------------------------
# the relevance-span reading of a real (tiny, untrained) denoiser: bad input


@pytest.fixture(scope="module")
def tiny_denoiser():
    from prvr.moments.config import apply_moment_overrides, load_moment_preset
    from prvr.moments.denoiser import MomentDenoiser
    from prvr.moments.localizer import DiffusionMomentLocalizer

    config = apply_moment_overrides(load_moment_preset("tiny"), ["data.max_frames=256"])
    config = dataclasses.replace(config, video_dim=12, text_dim=8, condition="frames")
    torch.manual_seed(0)
    return DiffusionMomentLocalizer(MomentDenoiser(config), config)


def test_relevance_span_reading_on_one_frame_and_zero_duration(tiny_denoiser) -> None:
    reading = RelevanceSpanLocalizer(tiny_denoiser)
    rng = np.random.default_rng(0)
    query = rng.standard_normal((4, 8)).astype(np.float32)
    one = reading.localize(query, rng.standard_normal((1, 12)).astype(np.float32), 7.5, num_moments=3)
    assert one.moments == (Moment(0.0, 7.5, 1.0),) and one.relevance.shape == (1,)
    assert np.isfinite(one.relevance).all()
    long = reading.localize(query, rng.standard_normal((200, 12)).astype(np.float32), 200.0, num_moments=3)
    assert long.relevance.shape == (200,)  # 256 tokens allowed: every second is read, none binned
    assert all(0.0 <= m.start_sec < m.end_sec <= 200.0 and np.isfinite(m.score) for m in long.moments)
    with pytest.raises(ValueError, match="duration must be a finite number of seconds > 0"):
        reading.localize(query, rng.standard_normal((5, 12)).astype(np.float32), 0.0)
    with pytest.raises(ValueError, match="non-empty"):
        reading.localize(query, np.zeros((0, 12), dtype=np.float32), 5.0)
    with pytest.raises(ValueError, match="empty query"):
        reading.localize(np.zeros((0, 8), dtype=np.float32), rng.standard_normal((5, 12)).astype(np.float32), 5.0)


# ----------------------------------------------------------------------------------------------------------------
# the moment frame store and the index built with it


def test_moment_frame_store_round_trip_and_errors(tmp_path) -> None:
    from prvr.index.moment_frames import MomentFrameStore

    store = MomentFrameStore(tmp_path / "mf", dim=6, max_frames=10)
    frames = np.random.default_rng(0).standard_normal((7, 6)).astype(np.float32)
    written = store.append(3, frames)
    assert written == 7 * 6 * 2
    again = MomentFrameStore(tmp_path / "mf", read_only=True)
    assert (again.dim, again.max_frames) == (6, 10) and 3 in again and 4 not in again
    np.testing.assert_allclose(again.get([3])[0], frames, atol=2e-3)  # float16
    assert again.record()["videos"] == 1
    with pytest.raises(ValueError, match="more than the store's max_frames"):
        store.append(4, np.zeros((11, 6)))
    with pytest.raises(ValueError, match="NaN or inf"):
        store.append(4, np.full((2, 6), np.nan))
    with pytest.raises(ValueError, match=r"\(F >= 1, 6\)"):
        store.append(4, np.zeros((0, 6)))
    with pytest.raises(KeyError, match="no moment frames"):
        again.get([4])
    with pytest.raises(RuntimeError, match="read-only"):
        again.append(5, frames)
    with pytest.raises(FileNotFoundError, match="has no moment frames"):
        MomentFrameStore(tmp_path / "none", read_only=True)
    with pytest.raises(ValueError, match="not 5-d"):
        MomentFrameStore(tmp_path / "mf", dim=5)


def _manifest(index_dir):
    from prvr.index.catalog import open_database
    from prvr.index.manifest import load_manifest

    with open_database(index_dir / "index.db") as db:
        return load_manifest(index_dir / "generations" / db.active_generation().directory)


def test_index_with_moment_frames_feeds_them_to_the_localiser(tiny_checkpoint, synthetic_corpus, query_bert,
                                                              localizer_module, monkeypatch, tmp_path) -> None:
    from prvr.data.dataset import PRVRCorpus
    from prvr.index.builder import build_index
    from prvr.moments import localizer as moment_localizer
    from prvr.retriever import Retriever
    from prvr.text_encoders import TokenFeatureEncoder

    val = synthetic_corpus.val
    fine_data = dataclasses.replace(synthetic_corpus.config.data, max_frames=12)  # 20-30 raw frames -> 12 bins
    fine = PRVRCorpus(synthetic_corpus.root, "synth", "val", fine_data)
    out = tmp_path / "index"
    moment_file = tmp_path / "moments.json"
    moment_file.write_text(json.dumps({"text_dim": TEXT_DIM, "dim": val.video_dim, "seed": 0}))
    build_index(tiny_checkpoint, val, out, collection_name="synth", moment_checkpoint=moment_file,
                moment_localizer=relevance_span_record(), moment_corpus=fine, progress=False)
    manifest = _manifest(out)
    record = manifest.moment_frames
    assert record["dim"] == val.video_dim and record["max_frames"] == 12 and record["videos"] == len(val.video_ids)
    tokens_bytes = len(val.video_ids) * 12 * val.video_dim * 2  # F x D x 2 bytes per video, plus a .npy header
    assert tokens_bytes < record["bytes"] <= tokens_bytes + 128 * len(val.video_ids)
    assert manifest.moment_localizer["kind"] == RELEVANCE_SPAN_KIND

    seen: list[np.ndarray] = []
    original = localizer_module.load_localizer

    def frames_localizer(path):
        found = original(path)
        found.config = types.SimpleNamespace(condition="frames", video_dim=val.video_dim)
        inner = found.localize_many

        def recording(query_tokens, videos, durations, *, num_moments=5):
            seen.extend(videos)
            return inner(query_tokens, videos, durations, num_moments=num_moments)

        found.localize_many = recording
        return found

    monkeypatch.setattr(moment_localizer, "load_localizer", frames_localizer)
    with Retriever.load(out, text_encoder=TokenFeatureEncoder(query_bert)) as retriever:
        assert isinstance(retriever.localizer(), RelevanceSpanLocalizer)  # the recorded reading
        results = retriever.search("a man runs", k=3)
        assert all(r.moments for r in results)
        assert seen and all(v.shape == (12, val.video_dim) for v in seen)  # the fine raw frames, not 64-d tokens
        expected = [fine.video(r.video_id)[1] for r in results]
        for got, want in zip(seen, expected):
            np.testing.assert_allclose(got, want, atol=2e-3)
        for result in results:  # the relevance reading: moments are the curve's runs, in seconds
            duration = result.duration
            assert all(0.0 <= m.start_sec < m.end_sec <= duration + 1e-9 for m in result.moments)

    # a later build must bring the moment frames of its new videos, and copies the old ones
    with pytest.raises(ValueError, match="pass moment_corpus"):
        build_index(tiny_checkpoint, synthetic_corpus.val, out, collection_name="synth", progress=False)
    test_split = PRVRCorpus(synthetic_corpus.root, "synth", "test", synthetic_corpus.config.data)
    fine_test = PRVRCorpus(synthetic_corpus.root, "synth", "test", fine_data)
    build_index(tiny_checkpoint, test_split, out, collection_name="synth", moment_corpus=fine_test, progress=False)
    assert _manifest(out).moment_frames["videos"] == len(val.video_ids) + len(test_split.video_ids)

    # a retrieval-token localiser does not fit an index that stores moment frames for it
    monkeypatch.setattr(moment_localizer, "load_localizer", localizer_module.load_localizer)
    wrong = tmp_path / "wrong"
    build_index(tiny_checkpoint, val, wrong, collection_name="synth", moment_checkpoint=write_moment_checkpoint(
        tmp_path / "retrieval_moments.json"), moment_corpus=fine, progress=False)

    def retrieval_localizer(path):
        found = localizer_module.load_localizer(path)
        found.config = types.SimpleNamespace(condition="retrieval", video_dim=64)
        return found

    monkeypatch.setattr(moment_localizer, "load_localizer", retrieval_localizer)
    with Retriever.load(wrong, text_encoder=TokenFeatureEncoder(query_bert)) as retriever:
        with pytest.raises(RuntimeError, match="moment frames"):
            retriever.search("a man runs", k=2)


def test_old_index_without_moment_frames_stays_readable(copy_index, query_bert, localizer_module) -> None:
    from prvr.index.manifest import MANIFEST_NAME, IndexManifest
    from prvr.retriever import Retriever
    from prvr.text_encoders import TokenFeatureEncoder

    out = copy_index()
    manifest = _manifest(out)
    assert manifest.moment_frames is None
    path = out / "generations" / manifest.generation / MANIFEST_NAME
    data = json.loads(path.read_text())
    data.pop("moment_frames")  # what an index written before the field existed holds
    assert IndexManifest.from_dict(data).moment_frames is None
    path.write_text(json.dumps(data))
    localizer = localizer_module.CosineSpanLocalizer(TEXT_DIM, 64)
    with Retriever.load(out, text_encoder=TokenFeatureEncoder(query_bert), localizer=localizer) as retriever:
        assert retriever.moment_frames is None
        assert all(r.moments for r in retriever.search("a man runs", k=2))  # the retrieval frame tokens
