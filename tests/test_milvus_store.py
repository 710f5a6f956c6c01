"""The VectorIndex contract of the Milvus back-end against milvus-lite (the real engine, embedded), checked against
FAISS IDMap2,Flat on the same tokens: candidates, removal, counts, save/load (= reconnect), copy to a new generation,
and the topk cap of the engine."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

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
