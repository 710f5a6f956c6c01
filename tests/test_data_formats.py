"""Caption files, the moments sidecar and the feature stores (HDF5, BigFile, npy/npz) against the standard layout."""

from __future__ import annotations

import json
import multiprocessing
import os
import pickle
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from prvr import fileio as fileio_module
from prvr.data.captions import (
    caption_path,
    moments_path,
    read_captions,
    read_moments,
    write_captions,
    write_moments,
    with_caption_ids,
)
from prvr.fileio import atomic_path
from prvr.data.features import (
    BigFileFeatureStore,
    HDF5FeatureStore,
    NpyDirectoryFeatureStore,
    open_query_features,
    open_video_features,
    query_feature_path,
    validate_features,
    write_bigfile,
    write_hdf5_features,
)
from prvr.types import QueryRecord

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
UNIVTG = DATA / "univtg_example"


def _random_videos(seed: int, n_videos: int = 5, dim: int = 8) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        f"v_{i:03d}": rng.standard_normal((int(rng.integers(1, 9)), dim)).astype(np.float32) for i in range(n_videos)
    }


def _leftover_temp_files(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]


# ----------------------------------------------------------------------------------------------------------------
# captions


def test_caption_and_moment_paths_follow_the_layout(tmp_path: Path) -> None:
    assert caption_path(tmp_path, "tvr", "train") == tmp_path / "tvr" / "TextData" / "tvrtrain.caption.txt"
    assert moments_path(tmp_path, "tvr", "val") == tmp_path / "tvr" / "TextData" / "tvrval.moments.jsonl"


def test_read_captions_parses_ids_texts_and_skips_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "c.caption.txt"
    path.write_bytes(
        "v_a#enc#0 A man  jumps.  \r\n\n   \nv_a#enc#1\tsecond one\nv#b#enc#0 café ünïcode\n".encode("utf-8")
    )
    records = read_captions(path)
    assert records == [
        QueryRecord("v_a#enc#0", "v_a", "A man  jumps."),
        QueryRecord("v_a#enc#1", "v_a", "second one"),
        QueryRecord("v#b#enc#0", "v", "café ünïcode"),  # video id = part before the FIRST '#'
    ]


def test_read_captions_missing_file_names_the_layout(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"TextData/<collection><split>\.caption\.txt"):
        read_captions(caption_path(tmp_path, "tvr", "train"))


@pytest.mark.parametrize(
    ("content", "line", "pattern"),
    [
        (b"v#enc#0 fine\nv#enc#1\n", 2, "has no text"),
        (b"v#enc#0 fine\n\nvenc0 no hash here\n", 3, "has no '#'"),
        (b"v#enc#0 fine\nv#enc#1 also\nv#enc#0 again\n", 3, r"duplicate cap id 'v#enc#0' \(first on line 1\)"),
        (b"v#enc#0 fine\nv#enc#1 caf\xe9\n", 2, "not valid UTF-8"),
        (b"#enc#0 no video\n", 1, "video id is empty"),
    ],
)
def test_read_captions_errors_name_file_and_line(tmp_path: Path, content: bytes, line: int, pattern: str) -> None:
    path = tmp_path / "bad.caption.txt"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=pattern) as info:
        read_captions(path)
    assert f"{path}, line {line}:" in str(info.value)


def test_write_captions_round_trip_is_atomic(tmp_path: Path) -> None:
    path = tmp_path / "x.caption.txt"
    records = [QueryRecord("v1#enc#0", "v1", "hello world"), QueryRecord("v2#enc#0", "v2", " padded ")]
    write_captions(path, records)
    assert path.read_text(encoding="utf-8") == "v1#enc#0 hello world\nv2#enc#0 padded\n"
    assert read_captions(path) == [records[0], QueryRecord("v2#enc#0", "v2", "padded")]
    assert _leftover_temp_files(tmp_path) == []

    # An invalid record is rejected before anything is written: the old file is intact.
    with pytest.raises(ValueError, match="with_caption_ids"):
        write_captions(path, [QueryRecord("12345", "v1", "text")])
    with pytest.raises(ValueError, match="duplicate cap id"):
        write_captions(path, records + records[:1])
    assert read_captions(path)[0] == records[0]
    assert _leftover_temp_files(tmp_path) == []


def test_atomic_write_failure_keeps_old_file_and_removes_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "y.caption.txt"
    write_captions(path, [QueryRecord("a#enc#0", "a", "old")])

    def failing_replace(src: object, dst: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(fileio_module.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        write_captions(path, [QueryRecord("a#enc#0", "a", "new")])
    monkeypatch.undo()
    assert read_captions(path) == [QueryRecord("a#enc#0", "a", "old")]
    assert _leftover_temp_files(tmp_path) == []

    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "z.bin") as tmp:
            tmp.write_bytes(b"partial")
            raise RuntimeError("crash while writing")
    assert not (tmp_path / "z.bin").exists() and _leftover_temp_files(tmp_path) == []
    with pytest.raises(FileNotFoundError, match="does not exist"):
        with atomic_path(tmp_path / "missing_dir" / "f.txt"):
            pass


def test_with_caption_ids_numbers_each_video_in_order() -> None:
    records = [
        QueryRecord("9", "a", "t1", ((1.0, 2.0),), 5.0), QueryRecord("3", "b", "t2"), QueryRecord("7", "a", "t3")
    ]
    renamed = with_caption_ids(records)
    assert [r.query_id for r in renamed] == ["a#enc#0", "b#enc#0", "a#enc#1"]
    assert renamed[0].windows == ((1.0, 2.0),) and renamed[0].duration == 5.0 and renamed[2].text == "t3"


def test_moments_round_trip(tmp_path: Path) -> None:
    path = moments_path(tmp_path, "anet", "val")
    path.parent.mkdir(parents=True)
    records = [
        QueryRecord("v1#enc#0", "v1", "t", ((0.0, 2.5), (3.0, 4.0)), 10.0),
        QueryRecord("v2#enc#0", "v2", "u", (), None),
        QueryRecord("v2#enc#1", "v2", "w", ((1.0, 1.0),), 2.0),
    ]
    write_moments(path, records)
    assert read_moments(path) == {
        "v1#enc#0": (((0.0, 2.5), (3.0, 4.0)), 10.0),
        "v2#enc#0": ((), None),
        "v2#enc#1": (((1.0, 1.0),), 2.0),
    }
    first = json.loads(path.read_text(encoding="utf-8").splitlines()[0])
    assert first == {"cap_id": "v1#enc#0", "video_id": "v1", "windows": [[0.0, 2.5], [3.0, 4.0]], "duration": 10.0}
    assert _leftover_temp_files(path.parent) == []


@pytest.mark.parametrize(
    ("line", "pattern"),
    [
        ('{"cap_id": "v#enc#0", "video_id": "v", "windows": [[3, 1]], "duration": 5}', "start <= end"),
        ('{"cap_id": "v#enc#0", "video_id": "v", "windows": [[NaN, 1]], "duration": 5}', "non-finite"),
        ('{"cap_id": "v#enc#0", "video_id": "v", "windows": [[0, Infinity]]}', "non-finite"),
        ('{"cap_id": "v#enc#0", "video_id": "v", "windows": [[-1, 1]]}', "0 <= start"),
        ('{"cap_id": "v#enc#0", "video_id": "v", "windows": [["a", 1]]}', "pair of numbers"),
        ('{"cap_id": "v#enc#0", "video_id": "v", "windows": [], "duration": 0}', "duration"),
        ('{"cap_id": "v#enc#0", "video_id": "v", "windows": [], "duration": -3}', "duration"),
        ('{"cap_id": "v#enc#0", "windows": []}', r"missing key\(s\) \['video_id'\]"),
        ('{"cap_id": "v#enc#0", "video_id": "w", "windows": []}', "belongs to video 'v'"),
        ('{"cap_id": "v#enc#0", "video_id": "v", "windows": []', "not valid JSON"),
    ],
)
def test_read_moments_rejects_bad_lines(tmp_path: Path, line: str, pattern: str) -> None:
    path = tmp_path / "m.moments.jsonl"
    path.write_text('{"cap_id": "ok#enc#0", "video_id": "ok", "windows": [[0, 1]], "duration": 2}\n' + line + "\n")
    with pytest.raises(ValueError, match=pattern) as info:
        read_moments(path)
    assert f"{path}, line 2" in str(info.value)


def test_moments_duplicates_and_invalid_writes(tmp_path: Path) -> None:
    path = tmp_path / "m.moments.jsonl"
    line = '{"cap_id": "v#enc#0", "video_id": "v", "windows": []}\n'
    path.write_text(line + line)
    with pytest.raises(ValueError, match="duplicate cap id"):
        read_moments(path)
    with pytest.raises(ValueError, match="start <= end"):
        write_moments(tmp_path / "w.jsonl", [QueryRecord("v#enc#0", "v", "t", ((2.0, 1.0),), 3.0)])
    with pytest.raises(ValueError, match="non-finite"):
        write_moments(tmp_path / "w.jsonl", [QueryRecord("v#enc#0", "v", "t", ((float("nan"), 1.0),), 3.0)])
    with pytest.raises(ValueError, match="duration"):
        write_moments(tmp_path / "w.jsonl", [QueryRecord("v#enc#0", "v", "t", (), -1.0)])
    assert not (tmp_path / "w.jsonl").exists()
    with pytest.raises(FileNotFoundError, match="moments.jsonl"):
        read_moments(tmp_path / "absent.moments.jsonl")


# ----------------------------------------------------------------------------------------------------------------
# validate_features


def test_validate_features_accepts_and_converts() -> None:
    array = np.arange(12, dtype=np.float16).reshape(3, 4)
    out = validate_features(array, source="f.h5", key="v", expected_dim=4)
    assert out.dtype == np.float32 and out.flags["C_CONTIGUOUS"] and out.shape == (3, 4)
    np.testing.assert_array_equal(out, np.arange(12).reshape(3, 4))
    strided = np.ones((4, 6), dtype=np.float64)[:, ::2]
    assert validate_features(strided, source="s", key="k", expected_dim=None).flags["C_CONTIGUOUS"]


@pytest.mark.parametrize(
    ("array", "expected_dim", "pattern"),
    [
        (np.zeros((0, 4), np.float32), None, "zero-frame video"),
        (np.zeros(4, np.float32), None, r"expected 2-D"),
        (np.zeros((2, 3, 4), np.float32), None, r"expected 2-D"),
        (np.array([[1.0, np.nan], [np.inf, np.nan]], np.float32), None, "2 NaN and 1 inf"),
        (np.zeros((2, 5), np.float32), 4, "dimension 5, expected 4"),
        (np.array([["a", "b"]]), None, "dtype"),
    ],
)
def test_validate_features_errors_name_source_and_key(
    array: np.ndarray, expected_dim: int | None, pattern: str
) -> None:
    with pytest.raises(ValueError, match=pattern) as info:
        validate_features(array, source="/data/feat.hdf5", key="video_42", expected_dim=expected_dim)
    assert "/data/feat.hdf5" in str(info.value) and "video_42" in str(info.value)


# ----------------------------------------------------------------------------------------------------------------
# HDF5


def test_hdf5_round_trip_attrs_and_dtype(tmp_path: Path) -> None:
    videos = _random_videos(seed=0)
    path = tmp_path / "feature.hdf5"
    write_hdf5_features(path, videos.items(), attrs={"backbone": "clip-vit-b32", "fps": 0.5})
    assert _leftover_temp_files(tmp_path) == []
    with HDF5FeatureStore(path, expected_dim=8) as store:
        assert store.ids() == sorted(videos)  # HDF5 lists names in order
        assert len(store) == 5 and store.dim == 8 and "v_000" in store and "nope" not in store
        for key, array in videos.items():
            got = store[key]
            assert got.dtype == np.float32
            np.testing.assert_array_equal(got, array)
        assert store.attrs == {"backbone": "clip-vit-b32", "fps": 0.5}
        with pytest.raises(KeyError, match="nope"):
            store["nope"]
    half = tmp_path / "half.hdf5"
    write_hdf5_features(half, videos.items(), dtype=np.float16)
    with h5py.File(half, "r") as handle:
        assert handle["v_000"].dtype == np.float16
    store = HDF5FeatureStore(half)
    np.testing.assert_array_equal(store["v_001"], videos["v_001"].astype(np.float16).astype(np.float32))
    assert store["v_001"].dtype == np.float32
    store.close()


def test_hdf5_refuses_1d_and_bad_datasets(tmp_path: Path) -> None:
    path = tmp_path / "raw.hdf5"
    with h5py.File(path, "w") as handle:
        handle["one"] = np.arange(6, dtype=np.float32)
        handle["empty"] = np.zeros((0, 6), np.float32)
        handle["nan"] = np.array([[np.nan] * 6, [1.0] * 6], np.float32)
        handle["wide"] = np.zeros((2, 7), np.float32)
    store = HDF5FeatureStore(path, expected_dim=6)
    with pytest.raises(ValueError, match=r"raw\.hdf5: features of 'one' have shape \(6,\), a 1-D vector; expected 2-D \(frames, D\)"):
        store["one"]
    with pytest.raises(ValueError, match=r"raw\.hdf5.*'empty'.*zero-frame video"):
        store["empty"]
    with pytest.raises(ValueError, match=r"'nan' contain 6 NaN and 0 inf"):
        store["nan"]
    with pytest.raises(ValueError, match=r"'wide' have dimension 7, expected 6"):
        store["wide"]
    with pytest.raises(FileNotFoundError):
        HDF5FeatureStore(tmp_path / "absent.hdf5")
    (tmp_path / "junk.hdf5").write_bytes(b"not hdf5 at all")
    with pytest.raises(ValueError, match="not a readable HDF5 file"):
        HDF5FeatureStore(tmp_path / "junk.hdf5").ids()


def test_write_hdf5_rejects_bad_input_and_keeps_old_file(tmp_path: Path) -> None:
    path = tmp_path / "f.hdf5"
    write_hdf5_features(path, [("a", np.ones((2, 3)))])
    bad_inputs = [
        ([("a", np.ones((2, 3))), ("a", np.ones((1, 3)))], "duplicate id"),
        ([("a/b", np.ones((2, 3)))], "without '/'"),
        ([("a", np.ones((2, 3))), ("b", np.ones((2, 4)))], "expected 3"),
        ([("a", np.zeros((0, 3)))], "zero-frame video"),
        ([("a", np.full((1, 3), np.nan))], "NaN"),
    ]
    for items, pattern in bad_inputs:
        with pytest.raises(ValueError, match=pattern):
            write_hdf5_features(path, items)
    with pytest.raises(ValueError, match="overflows float16"):
        write_hdf5_features(path, [("a", np.full((1, 3), 1e6))], dtype=np.float16)
    with HDF5FeatureStore(path) as store:
        assert store.ids() == ["a"]
        np.testing.assert_array_equal(store["a"], np.ones((2, 3)))
    assert _leftover_temp_files(tmp_path) == []


def _sum_all(store: HDF5FeatureStore) -> float:
    return float(sum(store[key].sum() for key in store.ids()))


def _report_from_child(store: HDF5FeatureStore, queue: multiprocessing.Queue) -> None:
    inherited = store._handle  # the parent's open handle, inherited through fork (not pickled)
    total = _sum_all(store)
    queue.put((inherited is not None, store._handle is not inherited, store._pid == os.getpid(), total))


@pytest.mark.skipif(sys.platform == "win32" or "fork" not in multiprocessing.get_all_start_methods(),
                    reason="needs fork")
def test_hdf5_store_is_fork_and_pickle_safe(tmp_path: Path) -> None:
    videos = _random_videos(seed=1)
    path = tmp_path / "f.hdf5"
    write_hdf5_features(path, videos.items())
    store = HDF5FeatureStore(path)
    expected = float(sum(v.sum() for v in videos.values()))
    assert _sum_all(store) == pytest.approx(expected)  # the parent has the file open now
    handle = store._file()
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_report_from_child, args=(store, queue))
    child.start()
    had_handle, reopened, pid_is_child, total = queue.get(timeout=30)
    child.join(timeout=30)
    assert child.exitcode == 0
    assert had_handle and reopened and pid_is_child and total == pytest.approx(expected)
    assert store._file() is handle  # the parent keeps its handle
    np.testing.assert_array_equal(store["v_000"], videos["v_000"])
    clone = pickle.loads(pickle.dumps(store))
    assert clone._handle is None
    np.testing.assert_array_equal(clone["v_002"], videos["v_002"])
    clone.close()
    store.close()


def test_hdf5_reopens_when_the_pid_changes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "f.hdf5"
    write_hdf5_features(path, [("a", np.ones((1, 2)))])
    store = HDF5FeatureStore(path)
    first = store._file()
    monkeypatch.setattr(os, "getpid", lambda: -12345)
    second = store._file()
    assert second is not first and store["a"].shape == (1, 2)
    monkeypatch.undo()
    first.close()
    store.close()


# ----------------------------------------------------------------------------------------------------------------
# BigFile


def test_bigfile_matches_hdf5_with_the_same_content(tmp_path: Path) -> None:
    videos = _random_videos(seed=2, n_videos=7, dim=5)
    folder = write_bigfile(tmp_path / "big", videos)
    write_hdf5_features(tmp_path / "f.hdf5", videos.items())
    big, h5 = BigFileFeatureStore(folder, expected_dim=5), HDF5FeatureStore(tmp_path / "f.hdf5", expected_dim=5)
    assert sorted(big.ids()) == sorted(h5.ids()) and len(big) == len(h5) == 7 and big.dim == h5.dim == 5
    for key in h5.ids():
        np.testing.assert_array_equal(big[key], h5[key])
    # naive reference: raw little-endian float32 rows, frames looked up by position in id.txt
    raw = np.fromfile(folder / "feature.bin", dtype="<f4").reshape(-1, 5)
    row_ids = (folder / "id.txt").read_text().split()
    for key, array in videos.items():
        rows = [row_ids.index(f"{key}_{i}") for i in range(array.shape[0])]
        np.testing.assert_array_equal(big[key], raw[rows])
    clone = pickle.loads(pickle.dumps(big))
    np.testing.assert_array_equal(clone["v_003"], videos["v_003"])
    big.close()
    h5.close()


def test_bigfile_frames_in_listed_order_and_without_video2frames(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    single = {f"id{i}": rng.standard_normal((1, 4)).astype(np.float32) for i in range(4)}
    folder = write_bigfile(tmp_path / "single", single, video2frames=False)
    store = BigFileFeatureStore(folder)
    assert store.ids() == list(single) and not (folder / "video2frames.txt").exists()
    for key, array in single.items():
        np.testing.assert_array_equal(store[key], array)
    # frames are returned in the order video2frames lists them, not id.txt order
    (folder / "video2frames.txt").write_text("{'vid': ['id3', 'id0', 'id2'], 'other': ('id1',)}")
    store = BigFileFeatureStore(folder)
    np.testing.assert_array_equal(store["vid"], np.concatenate([single["id3"], single["id0"], single["id2"]]))
    assert store["other"].shape == (1, 4)


def test_bigfile_rejects_malicious_video2frames_without_running_it(tmp_path: Path) -> None:
    folder = write_bigfile(tmp_path / "big", _random_videos(seed=4, n_videos=2))
    marker = tmp_path / "pwned"
    payloads = [
        f"__import__('os').system('touch {marker}')",
        f"{{'v_000': __import__('os').system('touch {marker}')}}",
        f"(lambda: open('{marker}', 'w'))()",
    ]
    for payload in payloads:
        (folder / "video2frames.txt").write_text(payload)
        with pytest.raises(ValueError, match="never executed"):
            BigFileFeatureStore(folder)
        assert not marker.exists()


@pytest.mark.parametrize(
    ("content", "pattern"),
    [
        ("['v_000_0']", "must hold a dict"),
        ("{'v': 'v_000_0'}", "list of frame ids"),
        ("{1: ['v_000_0']}", "list of frame ids"),
        ("{'v': ['v_000_0', 3]}", "must all be strings"),
        ("{'v': ['v_000_0', 'ghost_frame']}", "not in id.txt"),
        ("{'v': [", "not a Python dict literal"),
    ],
)
def test_bigfile_validates_video2frames(tmp_path: Path, content: str, pattern: str) -> None:
    folder = write_bigfile(tmp_path / "big", _random_videos(seed=5, n_videos=2))
    (folder / "video2frames.txt").write_text(content)
    with pytest.raises(ValueError, match=pattern) as info:
        BigFileFeatureStore(folder)
    assert "video2frames.txt" in str(info.value)


def test_bigfile_consistency_errors(tmp_path: Path) -> None:
    videos = _random_videos(seed=6, n_videos=3, dim=4)
    folder = write_bigfile(tmp_path / "big", videos)
    n_rows = sum(v.shape[0] for v in videos.values())
    with open(folder / "feature.bin", "ab") as handle:
        handle.write(b"\0\0\0\0")
    with pytest.raises(ValueError, match=rf"feature\.bin has {n_rows * 16 + 4} bytes, expected") as info:
        BigFileFeatureStore(folder)
    assert str(folder / "feature.bin") in str(info.value)
    folder = write_bigfile(tmp_path / "big2", videos)
    (folder / "shape.txt").write_text(f"{n_rows + 1} 4")
    with pytest.raises(ValueError, match="lists .* ids but shape.txt says"):
        BigFileFeatureStore(folder)
    (folder / "shape.txt").write_text("ten four")
    with pytest.raises(ValueError, match="two integers"):
        BigFileFeatureStore(folder)
    (folder / "shape.txt").unlink()
    with pytest.raises(FileNotFoundError, match="shape.txt"):
        BigFileFeatureStore(folder)
    folder = write_bigfile(tmp_path / "big3", videos)
    (folder / "video2frames.txt").write_text("{'empty': [], 'v_000': ['v_000_0']}")
    with pytest.raises(ValueError, match="zero-frame video"):
        BigFileFeatureStore(folder)["empty"]
    with pytest.raises(ValueError, match="expected 3"):
        BigFileFeatureStore(folder, expected_dim=3)["v_000"]


# ----------------------------------------------------------------------------------------------------------------
# npy / npz folders


def test_npy_directory_store(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    a, b, c = (rng.standard_normal((n, 6)).astype(np.float32) for n in (3, 1, 4))
    np.save(tmp_path / "vid.a.npy", a)
    np.savez(tmp_path / "b.npz", features=b, other=np.zeros(2))
    np.savez(tmp_path / "c.npz", only_one=c.astype(np.float16))
    np.save(tmp_path / "d.npy", np.arange(6, dtype=np.float32))  # 1-D: refused
    (tmp_path / "readme.txt").write_text("ignored")
    store = NpyDirectoryFeatureStore(tmp_path, expected_dim=6)
    assert store.ids() == ["b", "c", "d", "vid.a"] and store.dim == 6 and len(store) == 4
    np.testing.assert_array_equal(store["vid.a"], a)
    np.testing.assert_array_equal(store["b"], b)
    np.testing.assert_array_equal(store["c"], c.astype(np.float16).astype(np.float32))
    with pytest.raises(ValueError, match=r"d\.npy: features of 'd' have shape \(6,\), a 1-D vector"):
        store["d"]

    np.savez(tmp_path / "e.npz", x=np.zeros((1, 6)), y=np.zeros((1, 6)))
    with pytest.raises(ValueError, match=r"holds arrays \['x', 'y'\] but no 'features'"):
        NpyDirectoryFeatureStore(tmp_path)["e"]
    np.save(tmp_path / "f.npy", np.array([{"x": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match=r"f\.npy is not a readable numpy file"):
        NpyDirectoryFeatureStore(tmp_path)["f"]
    np.save(tmp_path / "b.npy", b)
    with pytest.raises(ValueError, match="both b.npy and b.npz"):
        NpyDirectoryFeatureStore(tmp_path)


@pytest.mark.skipif(not (UNIVTG / "vid.npz").is_file(), reason="shared univtg_example data absent")
def test_npy_store_reads_the_real_univtg_features() -> None:
    store = NpyDirectoryFeatureStore(UNIVTG, expected_dim=512)
    video = store["vid"]
    assert video.shape == (15, 512) and video.dtype == np.float32
    assert 9.0 < float(np.linalg.norm(video, axis=1).mean()) < 13.0  # SOURCE.md: mean L2 norm about 11
    unit = video / np.linalg.norm(video, axis=1, keepdims=True)
    adjacent = (unit[1:] * unit[:-1]).sum(axis=1)
    assert adjacent.min() > 0.8 and adjacent.max() < 0.995  # SOURCE.md says 0.83 to 0.98; measured 0.863 to 0.991
    text = store["txt"]  # float16 on disk
    assert text.shape == (12, 512) and text.dtype == np.float32


# ----------------------------------------------------------------------------------------------------------------
# resolving the layout


def test_open_video_features_resolution_order(tmp_path: Path) -> None:
    videos = _random_videos(seed=8, n_videos=3, dim=4)
    base = tmp_path / "anet" / "FeatureData"
    with pytest.raises(FileNotFoundError) as info:
        open_video_features(tmp_path, "anet", "i3d")
    message = str(info.value)
    for tried in ("i3d/feature.hdf5", "i3d.hdf5", "BigFile", "*.npy|*.npz"):
        assert tried in message

    (base / "i3d").mkdir(parents=True)
    for key, array in videos.items():
        np.save(base / "i3d" / f"{key}.npy", array)
    assert isinstance(open_video_features(tmp_path, "anet", "i3d"), NpyDirectoryFeatureStore)
    write_bigfile(base / "i3d", videos)
    assert isinstance(open_video_features(tmp_path, "anet", "i3d"), BigFileFeatureStore)
    write_hdf5_features(base / "i3d.hdf5", videos.items())
    store = open_video_features(tmp_path, "anet", "i3d", expected_dim=4)
    assert isinstance(store, HDF5FeatureStore) and store.path == base / "i3d.hdf5"
    write_hdf5_features(base / "i3d" / "feature.hdf5", videos.items())
    store = open_video_features(tmp_path, "anet", "i3d")
    assert isinstance(store, HDF5FeatureStore) and store.path == base / "i3d" / "feature.hdf5"
    np.testing.assert_array_equal(store["v_001"], videos["v_001"])
    with pytest.raises(ValueError, match="expected 5"):
        open_video_features(tmp_path, "anet", "i3d", expected_dim=5)["v_001"]


def test_query_features(tmp_path: Path) -> None:
    path = query_feature_path(tmp_path, "tvr", "roberta")
    assert path == tmp_path / "tvr" / "TextData" / "roberta_tvr_query_feat.hdf5"
    with pytest.raises(FileNotFoundError, match="roberta_tvr_query_feat.hdf5"):
        open_query_features(tmp_path, "tvr", "roberta")
    path.parent.mkdir(parents=True)
    tokens = np.random.default_rng(9).standard_normal((7, 16)).astype(np.float32)
    write_hdf5_features(path, [("v1#enc#0", tokens)])
    with open_query_features(tmp_path, "tvr", "roberta", expected_dim=16) as store:
        np.testing.assert_array_equal(store["v1#enc#0"], tokens)
