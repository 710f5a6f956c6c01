"""Retriever: typed results from raw text through a tiny local BERT, input errors, concurrent searches."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from helpers import HIDDEN, TEXT_DIM, write_moment_checkpoint
from prvr.data.dataset import iter_query_batches
from prvr.retriever import Retriever, SearchResult
from prvr.text_encoders import TokenFeatureEncoder
from prvr.types import Localization, Moment


def test_search_text_with_local_encoder(tiny_index, synthetic_corpus, query_bert) -> None:
    encoder = TokenFeatureEncoder(query_bert)
    with Retriever.load(tiny_index, text_encoder=encoder) as retriever:
        results = retriever.search("a dog kicks a ball", k=5)
        assert len(results) == 5 and all(isinstance(r, SearchResult) for r in results)
        assert all(isinstance(r.video_id, str) and isinstance(r.score, float) and r.moments == () for r in results)
        assert set(r.video_id for r in results) <= set(synthetic_corpus.val.video_ids)
        assert [r.score for r in results] == sorted((r.score for r in results), reverse=True)
        batch = retriever.search(["a dog kicks a ball", "the cat jumps over the fence"], k=3)
        assert len(batch) == 2 and [r.video_id for r in batch[0]] == [r.video_id for r in results[:3]]
        assert [r.score for r in batch[0]] == pytest.approx([r.score for r in results[:3]], abs=1e-5)  # padding
        # k larger than the index: every video once
        everything = retriever.search("a man runs", k=100, n_candidates=1000)
        assert sorted(r.video_id for r in everything) == sorted(synthetic_corpus.val.video_ids)


def test_input_errors(tiny_index, synthetic_corpus) -> None:
    with Retriever.load(tiny_index) as retriever:
        with pytest.raises(RuntimeError, match="no text encoder"):
            retriever.search("a dog", k=3)
        batch, _ = next(iter_query_batches(synthetic_corpus.val, 4))
        with pytest.raises(ValueError, match="k must be"):
            retriever.search_features(batch, k=0)
        with pytest.raises(ValueError, match="k must be"):
            retriever.search_features(batch, k=-2)
        with pytest.raises(ValueError, match="empty"):
            retriever.search("   ", k=3)
        with pytest.raises(ValueError, match="no queries given"):
            retriever.search([], k=3)


def test_no_active_generation_and_missing_index(tmp_path) -> None:
    from prvr.index.catalog import open_database

    with pytest.raises(FileNotFoundError, match="not an index directory"):
        Retriever.load(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with open_database(tmp_path / "empty" / "index.db") as db:
        db.create_schema()
    with pytest.raises(RuntimeError, match="no active index generation"):
        Retriever.load(tmp_path / "empty")


def test_concurrent_searches_match_sequential(tiny_index, query_bert) -> None:
    texts = ["a dog kicks a ball", "the man runs", "a cat plays", "the dog jumps over a fence"]
    with Retriever.load(tiny_index, text_encoder=TokenFeatureEncoder(query_bert)) as retriever:
        sequential = [retriever.search(text, k=4) for text in texts]
        results: dict[int, list] = {}
        errors: list[BaseException] = []

        def worker(offset: int) -> None:
            try:
                for round_ in range(3):
                    for i, text in enumerate(texts):
                        results[(offset, round_, i)] = retriever.search(text, k=4)
            except BaseException as error:  # surfaced below
                errors.append(error)

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert not errors, errors
    assert len(results) == 2 * 3 * len(texts)
    for (_, _, i), found in results.items():
        assert found == sequential[i]


# ------------------------------------------------------------------------------------------------------- moments


def _check_moments(result, duration: float) -> None:
    assert result.duration == pytest.approx(duration)
    assert result.moments, "a video with a known duration gets moments"
    scores = [m.score for m in result.moments]
    assert scores == sorted(scores, reverse=True)
    for moment in result.moments:
        assert 0.0 <= moment.start_sec < moment.end_sec <= duration + 1e-9


def test_results_carry_moments_of_the_attached_localizer(copy_index, synthetic_corpus, query_bert, localizer_module,
                                                          caplog) -> None:
    import numpy as np

    from prvr.index.catalog import Video

    corpus = synthetic_corpus.val
    durations = {vid: next(r.duration for r in corpus.captions_of(vid)) for vid in corpus.video_ids}
    encoder = TokenFeatureEncoder(query_bert)
    localizer = localizer_module.CosineSpanLocalizer(TEXT_DIM, HIDDEN, seed=3)
    with Retriever.load(copy_index(), text_encoder=encoder, localizer=localizer) as retriever:  # durations change
        assert retriever.has_localizer
        results = retriever.search("a dog kicks a ball", k=3, relevance=True, num_moments=2)
        plain = retriever.search("a dog kicks a ball", k=3, localize=False)
        assert [r.video_id for r in plain] == [r.video_id for r in results]
        assert all(r.moments == () and r.relevance is None for r in plain)
        query_tokens = encoder.encode(["a dog kicks a ball"]).tokens[0].astype(np.float32)  # what search passed
        for result in results:
            _check_moments(result, durations[result.video_id])
            assert len(result.moments) <= 2
            internal = retriever.db.get_video(result.video_id).id
            stored = retriever.store.get([internal])
            frames = stored.frame[0][stored.frame_mask[0]].numpy()
            expected = localizer.localize(query_tokens, frames, durations[result.video_id], num_moments=2)
            assert result.moments == expected.moments
            assert result.relevance == pytest.approx(tuple(expected.relevance.tolist()))
        # a video whose duration is unknown gets no moments, a log line, and no crash
        target = results[0].video_id
        with retriever.db.session() as session:
            session.query(Video).filter(Video.external_id == target).update({"duration_s": None})
        with caplog.at_level("WARNING", logger="prvr.retriever"):
            again = retriever.search("a dog kicks a ball", k=3)
        assert again[0].video_id == target and again[0].moments == () and again[0].duration is None
        assert any("no known duration" in record.message for record in caplog.records)
        assert all(r.moments for r in again[1:])


def test_batched_search_encodes_once(tiny_index, query_bert) -> None:
    encoder = TokenFeatureEncoder(query_bert)
    calls = []
    original = encoder.encode

    def counting(texts):
        calls.append(list(texts))
        return original(texts)

    encoder.encode = counting
    texts = ["a dog kicks a ball", "the man runs", "a cat plays"]
    with Retriever.load(tiny_index, text_encoder=encoder) as retriever:
        batch = retriever.search(texts, k=4)
        assert len(calls) == 1 and calls[0] == texts
        single = [retriever.search(text, k=4) for text in texts]
    for row, alone in zip(batch, single):
        assert [r.video_id for r in row] == [r.video_id for r in alone]
        assert [r.score for r in row] == pytest.approx([r.score for r in alone], abs=1e-5)


def test_moment_checkpoint_in_the_manifest_is_loaded_lazily(tiny_checkpoint, synthetic_corpus, query_bert,
                                                            localizer_module, monkeypatch, tmp_path) -> None:
    import json

    from prvr.index.builder import build_index
    from prvr.moments import localizer as moment_localizer

    moment_file = write_moment_checkpoint(tmp_path / "moments.json")
    out = tmp_path / "index"
    build_index(tiny_checkpoint, synthetic_corpus.val, out, collection_name="synth", moment_checkpoint=moment_file,
                progress=False)
    from prvr.index.manifest import load_manifest
    from prvr.index.catalog import open_database

    with open_database(out / "index.db") as db:
        manifest = load_manifest(out / "generations" / db.active_generation().directory)
    stored = out / manifest.moment_checkpoint["path"]
    assert stored.is_file() and stored.read_bytes() == moment_file.read_bytes()
    monkeypatch.setattr(moment_localizer, "load_localizer", localizer_module.load_localizer)
    # the manifest records the hash of the copy: a replaced copy is refused
    original = stored.read_bytes()
    stored.write_text(json.dumps({"text_dim": TEXT_DIM, "dim": HIDDEN, "seed": 1}))
    with pytest.raises(ValueError, match="sha256"):
        Retriever.load(out, text_encoder=TokenFeatureEncoder(query_bert))
    stored.write_bytes(original)
    with Retriever.load(out, text_encoder=TokenFeatureEncoder(query_bert)) as retriever:
        assert retriever.has_localizer and retriever._localizer is None  # not loaded before the first search
        results = retriever.search("a man runs", k=2)
        assert retriever._localizer is not None and all(r.moments for r in results)
        assert retriever.search("a man runs", k=2, localize=False)[0].moments == ()
    # a localiser that reads other video features (raw 384-d frames) than the stored frame tokens is refused
    import types

    original_load = localizer_module.load_localizer

    def frames_localizer(path):
        found = original_load(path)
        found.config = types.SimpleNamespace(condition="frames", video_dim=384)
        return found

    monkeypatch.setattr(moment_localizer, "load_localizer", frames_localizer)
    with Retriever.load(out, text_encoder=TokenFeatureEncoder(query_bert)) as retriever:
        with pytest.raises(RuntimeError, match="condition 'retrieval'"):
            retriever.search("a man runs", k=2)
    def broken_loader(path):
        raise ValueError(f"{path} is not a moment checkpoint")

    monkeypatch.setattr(moment_localizer, "load_localizer", broken_loader)
    with Retriever.load(out, text_encoder=TokenFeatureEncoder(query_bert)) as retriever:
        with pytest.raises(RuntimeError, match="cannot be loaded .* not a moment checkpoint.*--no-moments"):
            retriever.search("a man runs", k=2)
        assert retriever.search("a man runs", k=2, localize=False)  # --no-moments still works


def test_near_copies_of_a_moment_are_dropped() -> None:
    from prvr.retriever import distinct_moments

    best, copy, other, weak = (Moment(10.0, 20.0, 0.9), Moment(10.5, 20.5, 0.85), Moment(40.0, 50.0, 0.8),
                               Moment(11.0, 19.0, 0.1))
    assert distinct_moments([copy, best, other, weak], 0.7) == (best, other)  # IoU(best, weak) = 0.8 > 0.7
    assert distinct_moments([copy, best, other, weak], 0.85) == (best, other, weak)  # IoU(best, copy) = 0.905
    assert distinct_moments([copy, best], 1.0) == (best, copy)  # 1.0 keeps everything, best first
    assert distinct_moments([], 0.7) == ()


def test_search_returns_distinct_moments(tiny_index, query_bert) -> None:
    class EchoingLocalizer:
        """Returns each span twice, shifted by half a frame: what a diffusion sampler's near-copies look like."""

        def localize(self, query_tokens, frame_tokens, duration, *, num_moments=5):
            step = duration / len(frame_tokens)
            base = [Moment(i * step, (i + 2) * step, 0.9 - 0.1 * i) for i in range(0, len(frame_tokens) - 1, 2)]
            copies = [Moment(m.start_sec + step / 4, m.end_sec + step / 4, m.score - 0.01) for m in base]
            moments = tuple(sorted(base + copies, key=lambda m: -m.score)[:num_moments])
            return Localization(moments, np.zeros(len(frame_tokens), np.float32))

        def localize_many(self, query_tokens, videos, durations, *, num_moments=5):
            return [self.localize(query_tokens, video, duration, num_moments=num_moments)
                    for video, duration in zip(videos, durations)]

    encoder = TokenFeatureEncoder(query_bert)
    with Retriever.load(tiny_index, text_encoder=encoder, localizer=EchoingLocalizer()) as retriever:
        results = retriever.search("a dog kicks a ball", k=2, num_moments=2)
    for result in results:
        assert len(result.moments) == 2
        first, second = result.moments
        assert second.start_sec >= first.end_sec  # the shifted copy of the first moment is gone
