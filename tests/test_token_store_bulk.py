"""Token store bulk appends (one index write per commit) and truncation (the rollback of a resumed index build)."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from prvr.index.token_store import TokenStore

DIM = 8


def _videos(seed: int, num_videos: int, num_clips: int = 3, num_frames: int = 7):
    generator = torch.Generator().manual_seed(seed)
    clip = torch.randn(num_videos, num_clips, DIM, generator=generator)  # (V, C, D)
    frame = torch.randn(num_videos, num_frames, DIM, generator=generator)  # (V, F, D)
    lengths = torch.randint(1, num_frames + 1, (num_videos,), generator=generator)
    mask = torch.arange(num_frames).unsqueeze(0) < lengths.unsqueeze(1)  # (V, F)
    return clip, frame, mask


def _layout(store: TokenStore) -> tuple:
    """Everything a reader sees: ids, placement, shard names and the committed bytes of every shard."""
    store.refresh()
    ids = store.video_ids
    placement = tuple(array.tolist() for array in store.locate(ids)) if len(ids) else ()
    shards = []
    for name, rows in zip(store._shard_names, store._shard_rows):
        data = (store.directory / name).read_bytes()[: int(rows) * store.bytes_per_token]
        shards.append((name, hashlib.sha256(data).hexdigest()))
    return ids.tolist(), placement, shards


@pytest.mark.parametrize("dtype", ["bfloat16", "sq8"])
def test_bulk_equals_plain_appends_across_shards(tmp_path, dtype):
    clip, frame, mask = _videos(0, 40)
    ids = np.arange(40, dtype=np.int64) * 3 + 1
    shard_bytes = 30 * DIM * 2  # a few videos per shard: the block rolls over shards several times
    plain = TokenStore(tmp_path / "plain", DIM, dtype=dtype, shard_max_bytes=shard_bytes)
    batched = TokenStore(tmp_path / "bulk", DIM, dtype=dtype, shard_max_bytes=shard_bytes)
    for step in range(0, 40, 6):
        plain.append(ids[step:step + 6], clip[step:step + 6], frame[step:step + 6], mask[step:step + 6])
    with batched.bulk():
        for step in range(0, 40, 6):
            batched.append(ids[step:step + 6], clip[step:step + 6], frame[step:step + 6], mask[step:step + 6])
            if step == 18:
                batched.commit()
    assert len(plain._shard_names) > 3
    assert _layout(plain) == _layout(batched)
    assert batched.token_error == plain.token_error
    reopened = TokenStore(tmp_path / "bulk", read_only=True)
    assert torch.equal(reopened.get(ids).frame, plain.get(ids).frame)


def test_bulk_commit_is_the_visibility_point(tmp_path):
    clip, frame, mask = _videos(1, 12)
    store = TokenStore(tmp_path, DIM)
    store.append(np.arange(4), clip[:4], frame[:4], mask[:4])
    reader = TokenStore(tmp_path, read_only=True)
    with pytest.raises(KeyboardInterrupt):
        with store.bulk():
            store.append(np.arange(4, 8), clip[4:8], frame[4:8], mask[4:8])
            store.commit()
            reader.refresh()
            assert len(reader) == 8
            store.append(np.arange(8, 12), clip[8:], frame[8:], mask[8:])
            reader.refresh()
            assert len(reader) == 8  # not committed yet
            raise KeyboardInterrupt  # an interrupted block: its uncommitted appends are gone, like a crash
    reader.refresh()
    assert len(reader) == 8 and len(store) == 8
    store.append(np.arange(8, 12), clip[8:], frame[8:], mask[8:])  # overwrites the uncommitted bytes
    fresh = TokenStore(tmp_path / "fresh", DIM)
    fresh.append(np.arange(12), clip, frame, mask)
    assert _layout(store)[:2] == _layout(fresh)[:2]
    assert torch.equal(store.get(np.arange(12)).frame, fresh.get(np.arange(12)).frame)


def test_bulk_refuses_duplicates_and_other_writes(tmp_path):
    clip, frame, mask = _videos(2, 6)
    store = TokenStore(tmp_path, DIM)
    store.append(np.arange(2), clip[:2], frame[:2], mask[:2])
    with store.bulk():
        store.append(np.arange(2, 4), clip[2:4], frame[2:4], mask[2:4])
        with pytest.raises(ValueError, match=r"\[3\] are already stored"):
            store.append(np.array([3, 5]), clip[4:], frame[4:], mask[4:])  # appended in this block
        with pytest.raises(ValueError, match=r"\[1\] are already stored"):
            store.append(np.array([1, 5]), clip[4:], frame[4:], mask[4:])  # committed before
        for action in (lambda: store.remove([0]), store.compact, lambda: store.truncate(1)):
            with pytest.raises(RuntimeError, match="inside a bulk"):
                action()
        with pytest.raises(RuntimeError, match="do not nest"):
            with store.bulk():
                pass
    assert store.video_ids.tolist() == [0, 1, 2, 3]
    with pytest.raises(RuntimeError, match="read_only"):
        with TokenStore(tmp_path, read_only=True).bulk():
            pass


def test_truncate_rolls_back_to_an_earlier_store(tmp_path):
    clip, frame, mask = _videos(3, 30)
    shard_bytes = 25 * DIM * 2
    store = TokenStore(tmp_path / "s", DIM, shard_max_bytes=shard_bytes)
    snapshots = {}
    for step in range(0, 30, 5):
        snapshots[store.num_entries] = _layout(store)
        store.append(np.arange(step, step + 5), clip[step:step + 5], frame[step:step + 5], mask[step:step + 5])
    store.remove([2, 3])  # tombstones of the kept part stay tombstones
    store.truncate(20)
    assert store.num_entries == 20 and store.video_ids.tolist() == [0, 1] + list(range(4, 20))
    store.truncate(10)
    ids, placement, shards = _layout(store)
    reference_ids, reference_placement, reference_shards = snapshots[10]
    assert [v for v in reference_ids if v not in (2, 3)] == ids
    assert shards == reference_shards
    store.append(np.arange(10, 30), clip[10:], frame[10:], mask[10:])  # grows again over the dropped rows
    fresh = TokenStore(tmp_path / "fresh", DIM, shard_max_bytes=shard_bytes)
    for step in range(0, 10, 5):
        fresh.append(np.arange(step, step + 5), clip[step:step + 5], frame[step:step + 5], mask[step:step + 5])
    fresh.append(np.arange(10, 30), clip[10:], frame[10:], mask[10:])
    fresh.remove([2, 3])
    assert _layout(store) == _layout(fresh)
    store.truncate(0)
    assert len(store) == 0 and store.nbytes == 0
    with pytest.raises(ValueError, match="holds 0"):
        store.truncate(1)
