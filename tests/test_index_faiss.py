"""FAISS token index against a naive brute force: exact Flat, IVF / HNSW recall, ids, removal, persistence, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from helpers import TOKEN_DIM, W_CLIP, W_FRAME, noisy_queries, synthetic_tokens
from reference import fused_scores
from prvr.index.faiss_store import (
    MAX_VIDEO_ID,
    FaissTokenIndex,
    choose_factory,
    decode_token_ids,
    encode_token_ids,
    gpu_available,
    nlist_for,
)
from prvr.index.protocol import Candidates, VectorIndex
from prvr.index.rerank import exact_rerank
from prvr.index.token_store import TokenStore
from prvr.similarity import video_scores

DIM = TOKEN_DIM


def _reference_scores(query, clip, frame, mask):
    """The float64 loop reference with this module's weights."""
    return fused_scores(query, clip, frame, mask, clip_weight=W_CLIP, frame_weight=W_FRAME)


def _assert_topk_equal(got: list[tuple[int, float]], ids: np.ndarray, scores: np.ndarray, k: int, tol: float) -> None:
    """Tie-aware: reported scores are the reference scores of the reported ids and the reference top-k sequence."""
    reference = dict(zip(ids.tolist(), scores.tolist()))
    expected = np.sort(scores)[::-1][:k]
    assert len(got) == min(k, len(ids))
    got_scores = np.array([score for _, score in got])
    np.testing.assert_allclose(got_scores, expected, atol=tol)
    for video_id, score in got:
        assert abs(reference[video_id] - score) <= tol
    assert len({video_id for video_id, _ in got}) == len(got)


def _build(factory: str | None, clip, frame, mask, ids, **kwargs) -> FaissTokenIndex:
    index = FaissTokenIndex(DIM, clip_weight=W_CLIP, frame_weight=W_FRAME, factory=factory, use_gpu=False, **kwargs)
    index.add(ids, clip, frame, mask)
    return index


def _same_candidates(a: list[Candidates], b: list[Candidates]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.video_ids, y.video_ids)
        np.testing.assert_allclose(x.scores, y.scores, atol=1e-6)


@pytest.fixture(scope="module")
def corpus():
    clip, frame, mask = synthetic_tokens(0, 150)
    ids = np.arange(150, dtype=np.int64) * 5 + 1000  # sparse, non-contiguous ids
    return ids, clip, frame, mask


# ------------------------------------------------------------------------------------------------------ ids


def test_token_id_round_trip_and_bounds():
    videos = np.array([0, 1, 7, 123456789, MAX_VIDEO_ID], dtype=np.int64)
    positions = np.array([0, 255, 3, 128, 17], dtype=np.int64)
    token_ids = encode_token_ids(videos, positions)
    assert token_ids.dtype == np.int64 and (token_ids >= 0).all()
    assert token_ids[1] == 1 * 256 + 255 and token_ids[2] == 7 * 256 + 3
    back_videos, back_positions = decode_token_ids(token_ids)
    np.testing.assert_array_equal(back_videos, videos)
    np.testing.assert_array_equal(back_positions, positions)
    grid = encode_token_ids(np.array([[4], [9]]), np.arange(3)[None, :])  # broadcast (2, 3)
    np.testing.assert_array_equal(grid, [[1024, 1025, 1026], [2304, 2305, 2306]])
    with pytest.raises(ValueError, match="token index"):
        encode_token_ids(np.array([1]), np.array([256]))
    with pytest.raises(ValueError, match="video ids"):
        encode_token_ids(np.array([-1]), np.array([0]))
    with pytest.raises(ValueError, match="video ids"):
        encode_token_ids(np.array([MAX_VIDEO_ID + 1]), np.array([0]))


def test_factory_choice():
    assert nlist_for(1_000_000) == 4096
    assert nlist_for(1) == 4
    assert choose_factory(10_000, 512) == "IDMap2,Flat"
    assert choose_factory(1_000_000, 512) == "IVF4096,Flat"
    assert choose_factory(1_000_000, 512, memory_budget_bytes=1_000_000 * 512) == "IVF4096,SQ8"
    assert choose_factory(1_000_000, 512, memory_budget_bytes=100_000_000) == "IVF4096,PQ64"
    index = FaissTokenIndex(DIM, clip_weight=1.0, frame_weight=0.0, factory="IVF{nlist},Flat", use_gpu=False)
    clip, frame, mask = synthetic_tokens(3, 64)
    index.add(np.arange(64), clip, frame, mask)
    assert index.describe()["clip"]["factory"] == f"IVF{nlist_for(64 * 8)},Flat"
    assert index.describe()["clip"]["nprobe"] == min(nlist_for(64 * 8), 16)
    hnsw = FaissTokenIndex(DIM, clip_weight=1.0, frame_weight=1.0, factory="HNSW8", use_gpu=False)
    assert hnsw.describe()["clip"]["factory"] == "HNSW8"  # resolved (IDMap2-wrapped) once built
    hnsw.add(np.arange(4), clip[:4], frame[:4], mask[:4])
    assert hnsw.describe()["clip"]["factory"] == "IDMap2,HNSW8"


def test_protocol_is_satisfied():
    index = FaissTokenIndex(DIM, clip_weight=W_CLIP, frame_weight=W_FRAME, use_gpu=False)
    assert isinstance(index, VectorIndex)


# ------------------------------------------------------------------------------------------------- exactness


def test_flat_search_plus_rerank_equals_brute_force(corpus, tmp_path):
    ids, clip, frame, mask = corpus
    index = _build(None, clip, frame, mask, ids, candidates_per_video=16)  # K' >= every token for N = V
    assert index.describe()["clip"]["factory"] == "IDMap2,Flat" and index.is_exact
    store = TokenStore(tmp_path / "store", DIM)
    store.append(ids, clip, frame, mask)
    query = noisy_queries(1, clip, 12)
    reference = _reference_scores(query, clip, frame, mask)  # (Nq, V) on the float tokens
    stored = store.get(ids)
    unit_query = torch.nn.functional.normalize(torch.from_numpy(query), dim=-1)
    # the store holds unit tokens rounded to bf16: the re-rank's exact score is the dot product with them
    stored_scores = video_scores(unit_query, stored, W_CLIP, W_FRAME, normalize=False)["total"].numpy()

    # every video as a candidate: the re-rank is a full exact ranking
    everything = index.search(query, len(ids))
    for row in everything:
        assert len(row) == len(ids) and row.bound == float("-inf")
        assert (np.diff(row.scores) <= 1e-7).all()
    # with every token returned, the approximate score is the exact (float32) score
    for n, row in enumerate(everything):
        np.testing.assert_allclose(row.scores, reference[n][np.searchsorted(ids, row.video_ids)], atol=1e-5)
    ranked = exact_rerank(query, everything, store, clip_weight=W_CLIP, frame_weight=W_FRAME, k=len(ids))
    for n in range(len(query)):
        _assert_topk_equal(ranked[n], ids, stored_scores[n], len(ids), tol=1e-5)
        _assert_topk_equal(ranked[n][:10], ids, reference[n], 10, tol=1e-2)  # bf16 storage vs float tokens

    # few candidates: Fagin's bound certifies the top-10 whenever the 10th exact score reaches it
    k, certified = 10, 0
    few = index.search(query, 30)
    ranked = exact_rerank(query, few, store, clip_weight=W_CLIP, frame_weight=W_FRAME, k=k)
    for n, row in enumerate(few):
        exact_of_row = reference[n][np.searchsorted(ids, row.video_ids)]
        assert (row.scores >= exact_of_row - 1e-5).all()  # approximate scores are upper bounds on Flat
        outside = np.setdiff1d(ids, row.video_ids)
        assert (reference[n][np.searchsorted(ids, outside)] <= row.bound + 1e-5).all()
        if ranked[n][-1][1] >= row.bound + 1e-2:  # margin covers the bf16 store
            certified += 1
            _assert_topk_equal(ranked[n], ids, stored_scores[n], k, tol=1e-5)
    assert certified >= len(query) // 2


def test_l2_metric_matches_inner_product(corpus):
    ids, clip, frame, mask = corpus
    query = noisy_queries(2, clip, 5)
    by_ip = _build("Flat", clip, frame, mask, ids).search(query, 20)
    by_l2 = _build("Flat", clip, frame, mask, ids, metric="l2").search(query, 20)
    for a, b in zip(by_ip, by_l2):
        np.testing.assert_array_equal(a.video_ids, b.video_ids)
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-5)


@pytest.mark.parametrize(
    ("factory", "tune", "bound"),
    # measured: IVF32 nprobe 1 / 2 / 8 -> 0.90 / 0.975 / 1.0; HNSW16 efSearch 16 -> 0.9975; SQ8 nprobe 2 -> 0.975
    [("IVF32,Flat", {"nprobe": 2}, 0.95), ("HNSW16", {"ef_search": 16}, 0.95), ("IVF32,SQ8", {"nprobe": 2}, 0.95)],
)
def test_approximate_recall_at_10(factory, tune, bound, tmp_path):
    clip, frame, mask = synthetic_tokens(5, 600)
    ids = np.arange(600, dtype=np.int64)
    query = noisy_queries(6, clip, 40)
    store = TokenStore(tmp_path, DIM)
    store.append(ids, clip, frame, mask)
    index = _build(factory, clip, frame, mask, ids, **tune)
    reference = _reference_scores(query, clip, frame, mask)
    candidates = index.search(query, 50)
    assert not index.is_exact and all(row.bound == float("inf") for row in candidates)  # nothing certified
    ranked = exact_rerank(query, candidates, store, clip_weight=W_CLIP, frame_weight=W_FRAME, k=10)
    hits = 0
    for n in range(len(query)):
        threshold = np.sort(reference[n])[::-1][9] - 5e-3  # tie-aware: anything scoring like the 10th counts
        hits += sum(reference[n][video] >= threshold for video, _ in ranked[n])
    recall = hits / (10 * len(query))
    assert recall >= bound, f"{factory}: recall@10 {recall:.3f} < {bound}"


def test_ivf_builds_are_deterministic():
    clip, frame, mask = synthetic_tokens(7, 300)
    ids = np.arange(300, dtype=np.int64) + 10
    query = noisy_queries(8, clip, 10)
    first = _build("IVF16,Flat", clip, frame, mask, ids, nprobe=4, seed=3)
    second = _build("IVF16,Flat", clip, frame, mask, ids, nprobe=4, seed=3)
    _same_candidates(first.search(query, 25), second.search(query, 25))
    centroids = [index._parts["clip"].ivf().quantizer for index in (first, second)]
    np.testing.assert_array_equal(*[q.reconstruct_n(0, q.ntotal) for q in centroids])


# ---------------------------------------------------------------------------------------------- add / remove


@pytest.mark.parametrize("factory", ["Flat", "IVF16,Flat", "HNSW16"])
def test_add_then_remove_restores_results(factory):
    clip, frame, mask = synthetic_tokens(9, 200)
    ids = np.arange(200, dtype=np.int64) * 3
    base, extra = slice(0, 150), slice(150, 200)
    query = noisy_queries(10, clip, 8)
    index = FaissTokenIndex(
        DIM, clip_weight=W_CLIP, frame_weight=W_FRAME, factory=factory, nprobe=16, ef_search=1024, use_gpu=False
    )  # nprobe = nlist and a wide HNSW beam: every configuration searches exhaustively here
    index.train(clip, frame, mask)  # trained on everything so both states share the quantizer
    index.add(ids[base], clip[base], frame[base], mask[base])
    before, ntotal = index.search(query, 20), index.ntotal
    index.add(ids[extra], clip[extra], frame[extra], mask[extra])
    assert index.num_videos == 200
    middle = index.search(query, 20)
    assert any(np.isin(row.video_ids, ids[extra]).any() for row in middle)
    index.remove(ids[extra][:1])  # one video: IDSelectorRange
    index.remove(ids[extra][1:])  # several: IDSelectorBatch
    assert index.num_videos == 150
    assert ids[extra][0] not in index and ids[0] in index
    _same_candidates(before, index.search(query, 20))
    if factory == "HNSW16":
        assert index.describe()["tombstones"] == 50 and index.ntotal > ntotal
        with pytest.raises(ValueError, match="tombstones"):
            index.add(ids[extra][:1], clip[extra][:1], frame[extra][:1], mask[extra][:1])
    else:
        assert index.ntotal == ntotal and index.describe()["tombstones"] == 0
        index.add(ids[extra], clip[extra], frame[extra], mask[extra])  # update = remove + add
        _same_candidates(middle, index.search(query, 20))


# ---------------------------------------------------------------------------------------------- persistence


@pytest.mark.parametrize("factory", ["Flat", "IVF16,Flat", "HNSW16"])
def test_save_load_round_trip_and_mmap_is_read_only(factory, corpus, tmp_path):
    ids, clip, frame, mask = corpus
    index = _build(factory, clip, frame, mask, ids, nprobe=5)
    if factory == "HNSW16":
        index.remove(ids[:3])  # tombstones are saved too
    query = noisy_queries(11, clip, 6)
    expected = index.search(query, 15)
    index.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.faiss", "faiss_index.json", "frame.faiss", "videos.npz"]
    for mmap in (False, True):
        loaded = FaissTokenIndex.load(tmp_path, mmap=mmap, verify=True, use_gpu=False)
        _same_candidates(expected, loaded.search(query, 15))
        described, original = loaded.describe(), index.describe()
        for key in ("num_videos", "ntotal", "tombstones", "clip", "frame", "clip_weight"):
            assert described[key] == original[key]
        assert loaded.read_only is mmap
    with pytest.raises(RuntimeError, match="read-only"):
        loaded.add(np.array([1]), clip[:1], frame[:1], mask[:1])
    with pytest.raises(RuntimeError, match="read-only"):
        loaded.remove(ids[5:6])
    with pytest.raises(RuntimeError, match="read-only"):
        loaded.train(clip, frame, mask)
    loaded.save(tmp_path / "copy")  # a mapped index can still be saved elsewhere
    _same_candidates(expected, FaissTokenIndex.load(tmp_path / "copy").search(query, 15))


def test_corrupted_or_truncated_files_give_clear_errors(corpus, tmp_path):
    ids, clip, frame, mask = corpus
    index = _build("Flat", clip, frame, mask, ids)
    index.save(tmp_path)
    clip_file = tmp_path / "clip.faiss"
    data = clip_file.read_bytes()

    clip_file.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"clip\.faiss.*truncated"):
        FaissTokenIndex.load(tmp_path)

    clip_file.write_bytes(b"XXXX" + data[4:])  # same size, broken header
    with pytest.raises(ValueError, match=r"clip\.faiss is not a readable FAISS index"):
        FaissTokenIndex.load(tmp_path)

    middle = bytearray(data)
    middle[len(data) // 2] ^= 0xFF  # same size, silent bit flip in the vectors: only the checksum sees it
    clip_file.write_bytes(bytes(middle))
    FaissTokenIndex.load(tmp_path)
    with pytest.raises(ValueError, match=r"clip\.faiss fails its sha256"):
        FaissTokenIndex.load(tmp_path, verify=True)

    clip_file.write_bytes(data)
    meta = tmp_path / "faiss_index.json"
    text = meta.read_text()
    meta.write_text(text[:20])
    with pytest.raises(ValueError, match=r"faiss_index\.json is corrupted"):
        FaissTokenIndex.load(tmp_path)
    meta.write_text(text)
    (tmp_path / "videos.npz").write_bytes(b"\0" * json.loads(text)["files"]["videos"]["bytes"])
    with pytest.raises(ValueError, match=r"videos\.npz is corrupted"):
        FaissTokenIndex.load(tmp_path)
    (tmp_path / "frame.faiss").unlink()
    with pytest.raises(FileNotFoundError, match=r"frame\.faiss is missing"):
        FaissTokenIndex.load(tmp_path)
    with pytest.raises(FileNotFoundError, match="not a saved"):
        FaissTokenIndex.load(tmp_path / "nowhere")


# ---------------------------------------------------------------------------------------------------- errors


def test_invalid_inputs_raise_clear_errors(corpus):
    ids, clip, frame, mask = corpus
    index = _build("Flat", clip[:20], frame[:20], mask[:20], ids[:20])
    query = noisy_queries(12, clip, 2)
    with pytest.raises(ValueError, match="empty query"):
        index.search(np.zeros((0, DIM), dtype=np.float32), 5)
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="n_candidates"):
            index.search(query, bad)
    with pytest.raises(ValueError, match="query must be"):
        index.search(query[0], 5)
    with pytest.raises(ValueError, match="query must be"):
        index.search(np.zeros((1, DIM + 1), dtype=np.float32), 5)
    with pytest.raises(ValueError, match="not in the index"):
        index.remove(np.array([ids[0], 999_999]))
    with pytest.raises(ValueError, match="already indexed"):
        index.add(ids[:1], clip[:1], frame[:1], mask[:1])
    with pytest.raises(ValueError, match="duplicates"):
        index.add(np.array([5, 5]), clip[:2], frame[:2], mask[:2])
    empty_mask = mask[20:21].copy()
    empty_mask[:] = False
    with pytest.raises(ValueError, match="no valid frame"):
        index.add(ids[20:21], clip[20:21], frame[20:21], empty_mask)
    with pytest.raises(ValueError, match="C <= 256"):
        index.add(np.array([1]), np.zeros((1, 257, DIM), np.float32), frame[:1], mask[:1])
    with pytest.raises(ValueError, match="token width"):
        index.add(np.array([1]), clip[:1, :, :8], frame[:1, :, :8], mask[:1])
    with pytest.raises(ValueError, match="nprobe applies to IVF"):
        index.set_nprobe(4)
    with pytest.raises(ValueError, match="clip_weight"):
        FaissTokenIndex(DIM, clip_weight=0.0, frame_weight=0.0)
    with pytest.raises(ValueError, match="metric"):
        FaissTokenIndex(DIM, clip_weight=1.0, frame_weight=0.0, metric="cosine-ish")
    with pytest.raises(ValueError, match="training tokens"):
        _build("IVF4096,Flat", clip[:2], frame[:2], mask[:2], ids[:2])
    assert index.num_videos == 20  # failed calls changed nothing
    empty = FaissTokenIndex(DIM, clip_weight=W_CLIP, frame_weight=W_FRAME, use_gpu=False)
    assert [len(row) for row in empty.search(query, 5)] == [0, 0]


def test_torch_inputs_and_set_nprobe(corpus):
    ids, clip, frame, mask = corpus
    index = FaissTokenIndex(DIM, clip_weight=W_CLIP, frame_weight=W_FRAME, factory="IVF16,Flat", use_gpu=False)
    index.add(torch.from_numpy(ids), torch.from_numpy(clip).bfloat16(), torch.from_numpy(frame), torch.from_numpy(mask))
    assert index.num_videos == len(ids)
    index.set_nprobe(16)
    assert index.describe()["clip"]["nprobe"] == 16 and index.describe()["frame"]["nprobe"] == 16
    result = index.search(torch.from_numpy(noisy_queries(13, clip, 2)), 10)
    assert all(row.video_ids.dtype == np.int64 and len(row) == 10 for row in result)


@pytest.mark.gpu
@pytest.mark.skipif(not gpu_available(), reason="needs FAISS with GPU support and a GPU")
def test_gpu_search_matches_cpu(corpus):
    ids, clip, frame, mask = corpus
    query = noisy_queries(14, clip, 4)
    cpu = _build("Flat", clip, frame, mask, ids)
    gpu = FaissTokenIndex(DIM, clip_weight=W_CLIP, frame_weight=W_FRAME, factory="Flat", use_gpu=True)
    gpu.add(ids, clip, frame, mask)
    _same_candidates(cpu.search(query, 20), gpu.search(query, 20))
    assert gpu.describe()["clip"]["on_gpu"]
    big = gpu.search(query, 5000)  # K' would exceed 2048: clamped on the GPU
    assert all(len(row) <= len(ids) for row in big)
