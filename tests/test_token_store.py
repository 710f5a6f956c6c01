"""Token store: bf16 round trip, padding and masks, reopen, crash consistency, remove / compact, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from prvr.index.token_store import INDEX_NAME, TokenStore

DIM = 16


def _videos(seed: int, num_videos: int, num_clips: int = 4, num_frames: int = 9, dim: int = DIM):
    generator = torch.Generator().manual_seed(seed)
    clip = torch.randn(num_videos, num_clips, dim, generator=generator)  # (V, C, D)
    frame = torch.randn(num_videos, num_frames, dim, generator=generator)  # (V, F, D)
    lengths = torch.randint(1, num_frames + 1, (num_videos,), generator=generator)
    lengths[0] = num_frames
    mask = torch.arange(num_frames).unsqueeze(0) < lengths.unsqueeze(1)  # (V, F)
    return clip, frame, mask


def _check_tokens(store: TokenStore, ids, clip, frame, mask, *, normalized: bool = True) -> None:
    """store.get(ids) equals the (normalised) inputs rounded to bf16, valid frames first, zero padding."""
    expect_clip = F.normalize(clip, dim=-1) if normalized else clip
    expect_frame = F.normalize(frame, dim=-1) if normalized else frame
    got = store.get(ids, dtype=torch.bfloat16)
    assert got.clip.dtype == torch.bfloat16 and got.frame_mask.dtype == torch.bool
    assert torch.equal(got.clip, expect_clip.to(torch.bfloat16))
    lengths = mask.sum(dim=1)
    assert got.frame.shape[1] == int(lengths.max())
    for row in range(len(ids)):
        n = int(lengths[row])
        assert torch.equal(got.frame_mask[row], torch.arange(got.frame.shape[1]) < n)
        assert torch.equal(got.frame[row, :n], expect_frame[row][mask[row]].to(torch.bfloat16))
        assert not got.frame[row, n:].any()
    as_float = store.get(ids)
    assert as_float.clip.dtype == torch.float32
    torch.testing.assert_close(as_float.clip, expect_clip, atol=0, rtol=2**-8)


def test_round_trip_two_appends_any_order(tmp_path):
    clip, frame, mask = _videos(0, 12)
    store = TokenStore(tmp_path, DIM)
    ids = np.arange(12, dtype=np.int64) * 10 + 7
    store.append(ids[:5], clip[:5], frame[:5], mask[:5])
    store.append(ids[5:], clip[5:].numpy(), frame[5:].numpy(), mask[5:].numpy())  # numpy inputs too
    assert len(store) == 12 and int(ids[3]) in store and 8 not in store and "x" not in store
    order = np.array([11, 0, 5, 4, 4, 9])  # across both appends, with a duplicate
    _check_tokens(store, ids[order], clip[order], frame[order], mask[order])
    np.testing.assert_array_equal(store.video_ids, np.sort(ids))
    assert store.nbytes == int((4 + mask.sum(dim=1)).sum()) * DIM * 2


def test_unnormalised_store_keeps_raw_values(tmp_path):
    clip, frame, mask = _videos(1, 4)
    store = TokenStore(tmp_path, DIM, normalize=False)
    store.append(np.arange(4), 3.0 * clip, 3.0 * frame, mask)
    _check_tokens(store, np.arange(4), 3.0 * clip, 3.0 * frame, mask, normalized=False)
    assert not TokenStore(tmp_path).normalized  # the setting is stored


def test_reopen_and_refresh_see_new_videos(tmp_path):
    clip, frame, mask = _videos(2, 6)
    writer = TokenStore(tmp_path, DIM)
    writer.append(np.arange(3), clip[:3], frame[:3], mask[:3])
    reader = TokenStore(tmp_path, read_only=True)
    writer.append(np.arange(3, 6), clip[3:], frame[3:], mask[3:])
    assert len(reader) == 3 and 4 not in reader
    with pytest.raises(ValueError, match="refresh"):
        reader.get([4])
    reader.refresh()
    assert len(reader) == 6
    _check_tokens(TokenStore(tmp_path), np.arange(6), clip, frame, mask)
    with pytest.raises(RuntimeError, match="read_only"):
        reader.append(np.array([9]), clip[:1], frame[:1], mask[:1])
    stale_writer = TokenStore(tmp_path)
    writer.append(np.array([6]), clip[:1], frame[:1], mask[:1])
    stale_writer.append(np.array([7]), clip[1:2], frame[1:2], mask[1:2])  # re-reads the index under the lock
    _check_tokens(TokenStore(tmp_path), np.array([6, 7, 5]), clip[[0, 1, 5]], frame[[0, 1, 5]], mask[[0, 1, 5]])


def test_crash_between_shard_write_and_index_write(tmp_path, monkeypatch):
    clip, frame, mask = _videos(3, 8)
    store = TokenStore(tmp_path, DIM)
    store.append(np.arange(4), clip[:4], frame[:4], mask[:4])
    shard = next(tmp_path.glob("shard-*.bin"))
    committed = shard.stat().st_size

    # 1. garbage after the committed end (a writer died after writing, before committing the index)
    with open(shard, "ab") as handle:
        handle.write(b"\xff" * 100_000)  # longer than anything appended below
    reopened = TokenStore(tmp_path)
    assert len(reopened) == 4
    _check_tokens(reopened, np.arange(4), clip[:4], frame[:4], mask[:4])

    # 2. the real thing: the shard is written and fsynced, then the index write fails
    def crash() -> None:
        raise OSError("simulated power loss")

    monkeypatch.setattr(reopened, "_write_index", crash)
    with pytest.raises(OSError, match="power loss"):
        reopened.append(np.arange(4, 6), clip[4:6], frame[4:6], mask[4:6])
    monkeypatch.undo()
    assert shard.stat().st_size > committed  # the uncommitted bytes are there ...
    survivor = TokenStore(tmp_path)
    assert len(survivor) == 4 and 4 not in survivor  # ... and ignored
    _check_tokens(survivor, np.arange(4), clip[:4], frame[:4], mask[:4])

    # 3. the next append overwrites the garbage and everything reads back
    survivor.append(np.arange(4, 8), clip[4:], frame[4:], mask[4:])
    assert shard.stat().st_size == survivor.nbytes
    _check_tokens(TokenStore(tmp_path), np.arange(8), clip, frame, mask)


def test_truncated_shard_or_corrupted_index_raise(tmp_path):
    clip, frame, mask = _videos(4, 3)
    store = TokenStore(tmp_path, DIM)
    store.append(np.arange(3), clip, frame, mask)
    shard = next(tmp_path.glob("shard-*.bin"))
    data = shard.read_bytes()
    shard.write_bytes(data[:-2])
    with pytest.raises(ValueError, match=rf"{shard.name}.*truncated"):
        TokenStore(tmp_path)
    shard.write_bytes(data)
    (tmp_path / INDEX_NAME).write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match=rf"{INDEX_NAME} is corrupted"):
        TokenStore(tmp_path)


def test_remove_compact_and_re_append(tmp_path):
    clip, frame, mask = _videos(5, 10)
    store = TokenStore(tmp_path, DIM, shard_max_bytes=3 * 13 * DIM * 2)  # about 3 videos per shard
    ids = np.arange(10, dtype=np.int64) + 100
    store.append(ids, clip, frame, mask)
    assert len(store.describe()["shards"]) >= 3
    _check_tokens(store, ids, clip, frame, mask)  # gathers across shards
    before = store.nbytes
    store.remove(ids[[1, 4, 5, 9]])
    assert len(store) == 6 and int(ids[1]) not in store and store.nbytes == before
    with pytest.raises(ValueError, match="not in the token store"):
        store.get(ids[[0, 1]])
    with pytest.raises(ValueError, match="not in the token store"):
        store.remove(ids[[1]])
    keep = np.array([0, 2, 3, 6, 7, 8])
    old_shards = set(store.describe()["shards"])
    store.compact()
    assert store.nbytes < before and store.describe()["generation"] == 1
    assert not old_shards & {p.name for p in tmp_path.glob("shard-*.bin")}  # old generation deleted
    _check_tokens(TokenStore(tmp_path), ids[keep], clip[keep], frame[keep], mask[keep])
    store.append(ids[[1]], clip[[3]], frame[[3]], mask[[3]])  # a removed id can be stored again
    _check_tokens(store, ids[[1, 0]], clip[[3, 0]], frame[[3, 0]], mask[[3, 0]])
    store.remove(store.video_ids)
    store.compact()
    assert len(TokenStore(tmp_path)) == 0 and store.nbytes == 0


def test_invalid_inputs_raise_clear_errors(tmp_path):
    clip, frame, mask = _videos(6, 3)
    with pytest.raises(ValueError, match="needs a positive dim"):
        TokenStore(tmp_path / "new")
    with pytest.raises(FileNotFoundError, match="not a token store"):
        TokenStore(tmp_path / "missing", read_only=True)
    store = TokenStore(tmp_path, DIM)
    store.append(np.arange(3), clip, frame, mask)
    with pytest.raises(ValueError, match="stores D = 16"):
        TokenStore(tmp_path, 8)
    with pytest.raises(ValueError, match="already stored"):
        store.append(np.array([2]), clip[:1], frame[:1], mask[:1])
    with pytest.raises(ValueError, match="duplicates"):
        store.append(np.array([5, 5]), clip[:2], frame[:2], mask[:2])
    with pytest.raises(ValueError, match="no valid frame"):
        store.append(np.array([5]), clip[:1], frame[:1], torch.zeros(1, 9, dtype=torch.bool))
    with pytest.raises(ValueError, match="D = 16"):
        store.append(np.array([5]), clip[:1, :, :4], frame[:1, :, :4], mask[:1])
    with pytest.raises(ValueError, match="NaN"):
        store.append(np.array([5]), clip[:1] * float("nan"), frame[:1], mask[:1])
    with pytest.raises(ValueError, match="at least one"):
        store.get([])
    with pytest.raises(ValueError, match="dtype"):
        store.get([0], dtype=torch.float16)
    wide = torch.randn(1, 6, DIM)
    store.append(np.array([5]), wide, frame[:1], mask[:1])
    with pytest.raises(ValueError, match="different clip-token counts"):
        store.get([0, 5])
    assert store.get([5]).clip.shape == (1, 6, DIM)
    assert len(store) == 4


def test_float32_store_keeps_exact_values(tmp_path):
    from prvr.index.rerank import exact_rerank
    from prvr.index.protocol import Candidates

    rng = np.random.default_rng(4)
    clip = rng.standard_normal((5, 3, 16)).astype(np.float32)
    frame = rng.standard_normal((5, 6, 16)).astype(np.float32)
    mask = np.ones((5, 6), dtype=bool)
    mask[2, 4:] = False
    store = TokenStore(tmp_path / "f32", 16, dtype="float32")
    store.append(np.arange(5), clip, frame, mask)
    reopened = TokenStore(tmp_path / "f32", read_only=True)
    assert reopened.dtype == "float32" and reopened.nbytes == (15 + 28) * 16 * 4
    got = reopened.get([2, 0])
    unit = clip / np.linalg.norm(clip, axis=-1, keepdims=True)
    np.testing.assert_allclose(got.clip[1].numpy(), unit[0], rtol=0, atol=1e-7)
    assert got.frame_mask[0].sum() == 4
    query = rng.standard_normal((2, 16)).astype(np.float32)
    candidates = [Candidates(np.arange(5, dtype=np.int64), np.zeros(5, dtype=np.float32))] * 2
    for dtype in (torch.float32, torch.bfloat16):  # bf16 compute on float32 storage works too
        ranked = exact_rerank(query, candidates, reopened, clip_weight=0.6, frame_weight=0.4, k=5,
                              compute_dtype=dtype)
        assert len(ranked[0]) == 5
    reopened_rw = TokenStore(tmp_path / "f32")
    reopened_rw.remove([1])
    reopened_rw.compact()
    assert reopened_rw.dtype == "float32" and sorted(reopened_rw.video_ids.tolist()) == [0, 2, 3, 4]
    with pytest.raises(ValueError, match="dtype"):
        TokenStore(tmp_path / "bad", 16, dtype="float16")
