"""The VectorIndex contract of the Milvus back-end against milvus-lite (the real engine, embedded), checked against
FAISS IDMap2,Flat on the same tokens: candidates, removal, counts, save/load (= reconnect), copy to a new generation,
and the topk cap of the engine."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

import helpers

pytest.importorskip("pymilvus")
pytest.importorskip("milvus_lite")

from prvr.index import milvus_store  # noqa: E402
from prvr.index.faiss_store import FaissTokenIndex  # noqa: E402
from prvr.index.milvus_store import MilvusTokenIndex, public_url  # noqa: E402
from prvr.index.protocol import VectorIndex  # noqa: E402
from prvr.index.search import search_topk  # noqa: E402
from prvr.index.token_store import TokenStore  # noqa: E402

DIM, CLIPS, FRAMES = 16, 4, 6
WEIGHTS = {"clip_weight": 0.6, "frame_weight": 0.4}
_names = itertools.count()


@pytest.fixture(scope="session")
def engine_url(tmp_path_factory) -> str:
    """One milvus-lite engine (one server process) for the whole session; tests use distinct collections."""
    return str(tmp_path_factory.mktemp("milvus") / "engine.db")


def _tokens(num_videos: int, seed: int, first_id: int = 0):
    rng = np.random.default_rng(seed)
    ids = np.arange(first_id, first_id + num_videos, dtype=np.int64) * 3 + 1  # sparse, non-zero ids
    clip = rng.standard_normal((num_videos, CLIPS, DIM)).astype(np.float32)
    frame = rng.standard_normal((num_videos, FRAMES, DIM)).astype(np.float32)
    mask = np.arange(FRAMES)[None, :] < rng.integers(1, FRAMES + 1, num_videos)[:, None]
    frame[~mask] = 0.0
    return ids, clip, frame, mask


def _pair(engine_url: str, *batches) -> tuple[FaissTokenIndex, MilvusTokenIndex]:
    faiss_index = FaissTokenIndex(DIM, factory="IDMap2,Flat", use_gpu=False, **WEIGHTS)
    milvus_index = MilvusTokenIndex(DIM, url=engine_url, prefix=f"test_{next(_names)}", index_type="FLAT", **WEIGHTS)
    for batch in batches:
        faiss_index.add(*batch)
        milvus_index.add(*batch)
    return faiss_index, milvus_index


def _assert_same_candidates(a, b) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.video_ids, y.video_ids)
        np.testing.assert_allclose(x.scores, y.scores, atol=1e-5)
        assert x.bound == pytest.approx(y.bound, abs=1e-5) or x.bound == y.bound


def test_candidates_equal_faiss_flat(engine_url) -> None:
    faiss_index, milvus_index = _pair(engine_url, _tokens(40, 0), _tokens(25, 1, first_id=40))
    assert isinstance(milvus_index, VectorIndex)
    assert milvus_index.num_videos == faiss_index.num_videos == 65
    assert milvus_index.ntotal == faiss_index.ntotal
    assert milvus_index.is_exact and milvus_index.describe()["clip"]["factory"] == "milvus:FLAT"
    queries = np.random.default_rng(9).standard_normal((7, DIM)).astype(np.float32)
    for n in (1, 5, 20, 200):
        _assert_same_candidates(faiss_index.search(queries, n), milvus_index.search(queries, n))


def test_remove_counts_and_reconnect(engine_url, tmp_path) -> None:
    batch = _tokens(30, 2)
    faiss_index, milvus_index = _pair(engine_url, batch)
    gone = batch[0][[0, 5, 17]]
    faiss_index.remove(gone)
    milvus_index.remove(gone)
    assert milvus_index.num_videos == 27 and milvus_index.ntotal == faiss_index.ntotal
    assert int(gone[0]) not in milvus_index and int(batch[0][1]) in milvus_index
    with pytest.raises(ValueError, match="not in the index"):
        milvus_index.remove(gone[:1])
    with pytest.raises(ValueError, match="already indexed"):
        milvus_index.add(batch[0][1:2], batch[1][1:2], batch[2][1:2], batch[3][1:2])
    queries = np.random.default_rng(3).standard_normal((5, DIM)).astype(np.float32)
    expected = faiss_index.search(queries, 10)
    _assert_same_candidates(expected, milvus_index.search(queries, 10))
    for candidates in milvus_index.search(queries, 100):
        assert not np.isin(gone, candidates.video_ids).any()

    milvus_index.save(tmp_path / "milvus")
    sidecar = (tmp_path / "milvus" / "milvus_index.json").read_text()
    assert engine_url in sidecar and "token" not in sidecar.lower().replace("tokens", "")
    reopened = MilvusTokenIndex.load(tmp_path / "milvus")
    assert reopened.num_videos == 27 and reopened.ntotal == milvus_index.ntotal
    _assert_same_candidates(expected, reopened.search(queries, 10))


def test_fork_copies_and_leaves_the_source_serving(engine_url) -> None:
    faiss_index, source = _pair(engine_url, _tokens(20, 4))
    queries = np.random.default_rng(5).standard_normal((4, DIM)).astype(np.float32)
    before = source.search(queries, 8)
    copy = source.fork(f"test_{next(_names)}")
    assert copy.collections != source.collections and copy.ntotal == source.ntotal
    _assert_same_candidates(before, copy.search(queries, 8))  # bit-exact float32 copy
    new = _tokens(5, 6, first_id=100)
    copy.add(*new)
    copy.remove(np.array([1, 4], dtype=np.int64))
    _assert_same_candidates(before, source.search(queries, 8))  # the source generation is untouched
    faiss_index.add(*new)
    faiss_index.remove(np.array([1, 4], dtype=np.int64))
    _assert_same_candidates(faiss_index.search(queries, 8), copy.search(queries, 8))
    copy.drop()
    assert not source.client.has_collection(copy.collections["clip"])


def test_topk_cap_still_certifies(engine_url, tmp_path, monkeypatch) -> None:
    """With the engine's topk cap hit, widening still ends with the exact, certified top-k."""
    batch = _tokens(40, 7)
    faiss_index, milvus_index = _pair(engine_url, batch)
    store = TokenStore(tmp_path / "tokens", DIM, normalize=True, dtype="float32")
    store.append(*batch)
    monkeypatch.setattr(milvus_store, "MAX_TOPK", 8)
    queries = np.random.default_rng(8).standard_normal((6, DIM)).astype(np.float32)
    exact = search_topk(faiss_index, store, queries, 5, 2, **WEIGHTS)
    capped = search_topk(milvus_index, store, queries, 5, 2, **WEIGHTS)
    for a, b in zip(exact, capped):
        assert b.certified
        np.testing.assert_array_equal(a.video_ids, b.video_ids)
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-6)


def test_approximate_index_certifies_nothing(engine_url) -> None:
    index = MilvusTokenIndex(DIM, url=engine_url, prefix=f"test_{next(_names)}", index_type="IVF_FLAT",
                             index_params={"nlist": 4}, **WEIGHTS)
    index.add(*_tokens(20, 10))
    index.set_nprobe(4)  # all lists: the same videos as exact search
    described = index.describe()
    assert not index.is_exact and described["clip"]["nlist"] == 4 and described["search_params"] == {"nprobe": 4}
    candidates = index.search(np.ones((1, DIM), dtype=np.float32), 5)[0]
    assert candidates.bound == float("inf") and len(candidates) == 5


def test_url_rules(tmp_path) -> None:
    with pytest.raises(ValueError, match="credentials"):
        public_url("http://root:secret@milvus:19530")
    with pytest.raises(ValueError, match=r"\.db"):
        public_url(str(tmp_path / "engine"))
    assert public_url("http://milvus:19530") == "http://milvus:19530"
    assert public_url(str(tmp_path / "x" / ".." / "e.db")) == str((tmp_path / "e.db").resolve())


# ------------------------------------------------------------------------------------------ end to end (CLI)


def _cli(*args: str) -> dict:
    from click.testing import CliRunner

    from prvr.cli import main

    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.stdout + result.stderr
    return json.loads(result.stdout)


def _build(data, checkpoint, bert, out, *extra: str) -> None:
    _cli("build-index", "--checkpoint", str(checkpoint), "--data", str(data), "--collection", "synth", "--split",
         "val", "--out", str(out), "--text-backbone", str(bert), "--no-progress", *extra)


def _top10(retriever, corpus, vectors) -> list:
    """Top-10 of every caption of the corpus and of random query vectors searched with 2 first-round candidates
    (so the exact search must widen and certify)."""
    from prvr.data.dataset import iter_query_batches

    rows = []
    for batch, _ in iter_query_batches(corpus, 64):
        rows.extend([(r.video_id, round(r.score, 5)) for r in row]
                    for row in retriever.search_features(batch, 10, localize=False))
    for ranked in retriever.search_vectors(vectors, 10, 2):
        assert ranked.certified
        rows.append([(int(v), round(float(s), 5)) for v, s in ranked.pairs()])
    return rows


def test_build_index_backend_milvus_end_to_end(engine_url, synthetic_corpus, tiny_checkpoint, query_bert,
                                               tmp_path, monkeypatch) -> None:
    from prvr.index import builder
    from prvr.index.catalog import GenerationStatus
    from prvr.index.layout import open_active
    from prvr.retriever import Retriever

    data, val, test = synthetic_corpus.root, synthetic_corpus.val, synthetic_corpus.split("test")
    _build(data, tiny_checkpoint, query_bert, tmp_path / "faiss")
    _build(data, tiny_checkpoint, query_bert, tmp_path / "milvus", "--backend", "milvus", "--engine-url", engine_url)
    with open_active(tmp_path / "milvus") as active:
        manifest = active.manifest
        assert manifest.backend == "milvus" and manifest.faiss["engine_url"] == engine_url
        assert manifest.faiss["clip"]["factory"] == "milvus:FLAT"
        uid = active.generation.params["engine"]["uid"]
        assert manifest.faiss["clip"]["collection"] == f"prvr_{uid}_gen_000001_clip"
    dim = synthetic_corpus.config.model.hidden_size
    vectors = np.random.default_rng(0).standard_normal((20, dim)).astype(np.float32)
    with Retriever.load(tmp_path / "faiss") as a, Retriever.load(tmp_path / "milvus") as b:
        assert _top10(a, val, vectors) == _top10(b, val, vectors)  # identical ids; scores equal to 1e-5

    # prvr index add: a new generation in new collections; search sees the new videos
    _cli("index", "add", str(tmp_path / "milvus"), "--data", str(data), "--collection", "synth", "--split", "test",
         "--no-progress")
    _cli("index", "add", str(tmp_path / "faiss"), "--data", str(data), "--collection", "synth", "--split", "test",
         "--no-progress")
    with Retriever.load(tmp_path / "faiss") as a, Retriever.load(tmp_path / "milvus") as b:
        assert b.num_videos == 16 and b.manifest.faiss["clip"]["collection"].endswith("gen_000002_clip")
        grown = _top10(b, test, vectors)
        assert grown == _top10(a, test, vectors)
        assert {v for row in grown[: len(test.video_ids)] for v, _ in row} & set(test.video_ids)
    info = _cli("index", "info", str(tmp_path / "milvus"), "--json")
    assert info["factories"]["clip"] == "milvus:FLAT" and info["counts"]["videos"] == 16

    # a build that fails mid-way leaves generation 2 serving and drops its own collections
    client = milvus_store._client(engine_url)
    before = set(client.list_collections())

    def broken_add(self, *args):
        raise RuntimeError("disk full")

    monkeypatch.setattr(milvus_store.MilvusTokenIndex, "add", broken_add)
    extra = tmp_path / "extra"
    from prvr.data.synthetic import make_synthetic_corpus
    from prvr.data.dataset import PRVRCorpus

    make_synthetic_corpus(extra, "synth", splits={"more": 3}, seed=11, text_dim=helpers.TEXT_DIM,
                          frame_range=(20, 30))
    more = PRVRCorpus(extra, "synth", "more", synthetic_corpus.config.data)
    with pytest.raises(RuntimeError, match="disk full"):
        builder.build_index(tiny_checkpoint, more, tmp_path / "milvus", collection_name="synth", progress=False)
    assert set(client.list_collections()) == before  # gen 3's copies dropped, gens 1-2 kept
    monkeypatch.undo()
    with open_active(tmp_path / "milvus") as active:
        assert active.generation.directory == "gen-000002"
        assert active.db.generations(GenerationStatus.BUILDING) == []
    with Retriever.load(tmp_path / "milvus") as b:
        assert _top10(b, test, vectors) == grown

    # a killed build (its row left `building`, its collections in the engine) is cleaned up by the next writer
    with open_active(tmp_path / "milvus") as active:
        index = builder.load_token_index(active.directory, active.manifest)
        params = dict(active.generation.params)
        dead = active.db.begin_generation(model_id=active.generation.model_id, factories=active.generation.factories,
                                          faiss_version="x", params=params, video_ids=[])
        name = active.db.get_generation(dead).directory
        orphan = builder.start_generation(index, params, name)
    assert orphan.collections["clip"] in client.list_collections()
    _cli("index", "remove", str(tmp_path / "milvus"), test.video_ids[0])
    assert orphan.collections["clip"] not in client.list_collections()
    with Retriever.load(tmp_path / "milvus") as b:
        assert b.num_videos == 15
