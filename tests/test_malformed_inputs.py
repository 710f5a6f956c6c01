"""Issue 18, the data readers: every class of malformed input is refused with a message naming the file, the
video id or the line, through the library and through the CLI (exit code 1), and nothing named like a video is
skipped without being listed."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import socket
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from prvr.cli import main
from prvr.data.captions import read_captions, read_moments, read_text_lines
from prvr.data.dataset import PRVRCorpus
from prvr.data.features import (
    BigFileFeatureStore,
    HDF5FeatureStore,
    NpyDirectoryFeatureStore,
    open_video_features,
    validate_features,
    write_bigfile,
)
from prvr.features.cache import FeatureCache
from prvr.features.extract import FAILURES_FILE, read_sidecar, scan_videos

COLLECTION, SPLIT, FEATURE = "bad", "train", "feat"
TEXT_DIM = 4


# ----------------------------------------------------------------------------------------------------------------
# a tiny standard-layout collection whose parts each test breaks


def write_collection(root: Path, videos: dict[str, np.ndarray], *, layout: str = "hdf5",
                     captions: bytes | None = None, moments: bytes | None = None) -> Path:
    """``root/bad``: one caption per video, query features (2, TEXT_DIM), video features in ``layout``."""
    text = root / COLLECTION / "TextData"
    text.mkdir(parents=True)
    lines = captions if captions is not None else "".join(
        f"{vid}#enc#0 a person does thing {i}\n" for i, vid in enumerate(videos)).encode()
    (text / f"{COLLECTION}{SPLIT}.caption.txt").write_bytes(lines)
    if moments is not None:
        (text / f"{COLLECTION}{SPLIT}.moments.jsonl").write_bytes(moments)
    with h5py.File(text / f"{FEATURE}_{COLLECTION}_query_feat.hdf5", "w") as handle:
        for vid in videos:
            handle[f"{vid}#enc#0"] = np.ones((2, TEXT_DIM), np.float32)
    folder = root / COLLECTION / "FeatureData" / FEATURE
    folder.mkdir(parents=True)
    if layout == "hdf5":
        with h5py.File(folder / "feature.hdf5", "w") as handle:
            for vid, array in videos.items():
                handle[vid] = array
    elif layout == "npy":
        for vid, array in videos.items():
            np.save(folder / f"{vid}.npy", array)
    elif layout == "npz":
        for vid, array in videos.items():
            np.savez(folder / f"{vid}.npz", features=array)
    else:
        write_bigfile(folder, videos)
    return root


def data_check(root: Path) -> object:
    return CliRunner().invoke(main, ["data", "check", "--data", str(root), "--collection", COLLECTION, "--split",
                                     SPLIT, "--video-feature", FEATURE, "--text-feature", FEATURE])


def corpus_error(root: Path) -> str:
    """The ValueError of opening the split and reading every video (what `data check` does)."""
    from prvr.config import load_preset

    data = dataclasses.replace(load_preset("activitynet").data, video_feature=FEATURE, text_feature=FEATURE)
    with pytest.raises(ValueError) as info:
        corpus = PRVRCorpus(root, COLLECTION, SPLIT, data)
        for video_id in corpus.video_ids:
            corpus.video(video_id)
    return str(info.value)


def assert_cli_fails(result: object, *fragments: str) -> str:
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in result.output, (fragment, result.output)
    return result.output


GOOD = np.ones((3, 5), np.float32)


# ----------------------------------------------------------------------------------------------------------------
# 1. a 1-D feature array is not a one-frame video


@pytest.mark.parametrize("layout", ["hdf5", "npy", "npz"])
def test_a_1d_feature_array_is_refused_naming_file_and_id(tmp_path: Path, layout: str) -> None:
    root = write_collection(tmp_path, {"good": GOOD, "flat": np.ones(5, np.float32)}, layout=layout)
    message = corpus_error(root)
    assert "'flat'" in message and "(5,)" in message and "(frames, D)" in message
    expected_file = {"hdf5": "feature.hdf5", "npy": "flat.npy", "npz": "flat.npz"}[layout]
    assert expected_file in message
    assert_cli_fails(data_check(root), "'flat'", expected_file, "(frames, D)")


def test_1d_query_features_name_tokens(tmp_path: Path) -> None:
    path = tmp_path / "q.hdf5"
    with h5py.File(path, "w") as handle:
        handle["v#enc#0"] = np.ones(4, np.float32)
    store = HDF5FeatureStore(path)
    store.rows = "tokens"
    with pytest.raises(ValueError, match=r"q\.hdf5: features of 'v#enc#0' have shape \(4,\).*\(tokens, D\)"):
        store["v#enc#0"]


# ----------------------------------------------------------------------------------------------------------------
# 2. rank, shape, keys, dtype and finite values at every feature reader


@pytest.mark.parametrize(
    ("array", "fragment"),
    [
        (np.zeros((0, 5), np.float32), "0 frames"),
        (np.zeros((2, 3, 5), np.float32), "shape (2, 3, 5), expected 2-D (frames, D)"),
        (np.zeros((2, 0), np.float32), "0 columns"),
        (np.ones((2, 5), bool), "dtype bool (boolean)"),
        (np.ones((2, 5), np.complex64), "dtype complex64 (complex)"),
        (np.array([["a"] * 5] * 2), "(string)"),
        (np.array([[np.nan, 1, 1, 1, 1], [1, 1, 1, 1, np.inf]], np.float32), "1 NaN and 1 inf"),
        (np.full((2, 5), 1e300, np.float64), "beyond the float32 range"),
    ],
)
def test_validate_features_refuses_each_class(array: np.ndarray, fragment: str) -> None:
    with pytest.raises(ValueError) as info:
        validate_features(array, source="/data/f.hdf5", key="vid_9")
    assert fragment in str(info.value) and "/data/f.hdf5" in str(info.value) and "'vid_9'" in str(info.value)


def test_numeric_dtypes_are_converted_to_float32() -> None:
    for dtype in (np.float16, np.float32, np.float64, np.int8, np.int64, np.uint16):
        out = validate_features(np.arange(6).reshape(2, 3).astype(dtype), source="s", key="k")
        assert out.dtype == np.float32 and out.shape == (2, 3)
        np.testing.assert_array_equal(out, np.arange(6).reshape(2, 3))


def test_object_arrays_are_refused_at_every_reader(tmp_path: Path) -> None:
    strings = tmp_path / "s.hdf5"
    with h5py.File(strings, "w") as handle:
        handle["v"] = np.array([[b"a", b"b"]])
        handle.create_dataset("w", data=["x", "y"], dtype=h5py.string_dtype())
    with pytest.raises(ValueError, match=r"s\.hdf5: features of 'v' have dtype \|S1 \(bytes\)"):
        HDF5FeatureStore(strings)["v"]
    with pytest.raises(ValueError, match=r"s\.hdf5.*'w'"):
        HDF5FeatureStore(strings)["w"]
    folder = tmp_path / "npy"
    folder.mkdir()
    np.save(folder / "o.npy", np.array([[{"x": 1}]], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match=r"o\.npy is not a readable numpy file without pickles"):
        NpyDirectoryFeatureStore(folder)["o"]


@pytest.mark.parametrize("layout", ["hdf5", "npy", "npz", "bigfile"])
def test_nan_and_zero_frames_are_named_per_video_and_file(tmp_path: Path, layout: str) -> None:
    bad = GOOD.copy()
    bad[1, 2] = np.nan
    root = write_collection(tmp_path, {"good": GOOD, "nan_vid": bad}, layout=layout)
    message = corpus_error(root)
    assert "'nan_vid'" in message and "1 NaN" in message and "frame 1" in message
    assert {"hdf5": "feature.hdf5", "npy": "nan_vid.npy", "npz": "nan_vid.npz", "bigfile": "FeatureData"}[layout] \
        in message
    assert_cli_fails(data_check(root), "'nan_vid'", "NaN")


def test_npz_without_features_names_its_arrays(tmp_path: Path) -> None:
    np.savez(tmp_path / "v.npz", x=GOOD, y=GOOD)
    store = NpyDirectoryFeatureStore(tmp_path)
    with pytest.raises(ValueError, match=r"v\.npz holds arrays \['x', 'y'\] but no 'features'"):
        store["v"]
    with pytest.raises(ValueError, match=r"v\.npz holds arrays"):
        store.dim
    np.savez(tmp_path / "v.npz")  # no array at all
    with pytest.raises(ValueError, match=r"v\.npz holds arrays \[\] but no 'features'"):
        NpyDirectoryFeatureStore(tmp_path)["v"]


def test_truncated_files_are_project_errors_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "feature.hdf5"
    with h5py.File(path, "w") as handle:
        handle["v"] = np.ones((64, 64), np.float32)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=re.escape(str(path))):
        store = HDF5FeatureStore(path)
        store["v"]
    np.save(tmp_path / "t.npy", np.ones((8, 8), np.float32))
    (tmp_path / "t.npy").write_bytes((tmp_path / "t.npy").read_bytes()[:100])
    with pytest.raises(ValueError, match=r"t\.npy is not a readable numpy file"):
        NpyDirectoryFeatureStore(tmp_path)["t"]
    (tmp_path / "t.npy").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ValueError, match=r"t\.npy is not a readable numpy file"):
        NpyDirectoryFeatureStore(tmp_path)["t"]


def test_bigfile_checks_shape_and_values(tmp_path: Path) -> None:
    bad = GOOD.copy()
    bad[0, 0] = np.inf
    folder = write_bigfile(tmp_path / "big", {"good": GOOD, "inf_vid": bad})
    store = BigFileFeatureStore(folder, expected_dim=5)
    assert store["good"].shape == (3, 5)
    with pytest.raises(ValueError, match=r"big: features of 'inf_vid' contain 0 NaN and 1 inf.*frame 0"):
        store["inf_vid"]
    with pytest.raises(ValueError, match=r"'good' have dimension 5, expected 4"):
        BigFileFeatureStore(folder, expected_dim=4)["good"]


def test_extract_readers_of_their_own_outputs(tmp_path: Path) -> None:
    (tmp_path / "videos.jsonl").write_bytes(b'{"video_id": "a", "status": "ok"}\n[1, 2]\n')
    with pytest.raises(ValueError, match=r"videos\.jsonl, line 2: expected an object"):
        read_sidecar(tmp_path)
    (tmp_path / "videos.jsonl").write_bytes(b'{"video_id": "a\x00", "status": "ok"}\n')
    with pytest.raises(ValueError, match=r"videos\.jsonl, line 1: control character U\+0000"):
        read_sidecar(tmp_path)
    cache = FeatureCache(tmp_path / "cache")
    key = "ab" * 32
    file = cache.path(key)
    file.parent.mkdir(parents=True)
    with h5py.File(file, "w") as handle:
        handle["features"] = np.ones(4, np.float32)  # 1-D: refused, so the entry is a miss (re-extracted)
        handle.attrs["metadata"] = "{}"
    assert cache.get(key) is None and not file.exists()


# ----------------------------------------------------------------------------------------------------------------
# 3. control characters in caption and moments files


@pytest.mark.parametrize("char", ["\x00", "\x01", "\x1b", "\x7f", "\x0b", "\x0c", "\r", "\x85", "\u2028"])
def test_control_characters_in_captions_name_file_and_line(tmp_path: Path, char: str) -> None:
    captions = f"good#enc#0 a person walks\r\nnul#enc#0 a per{char}son runs\n".encode()
    root = write_collection(tmp_path, {"good": GOOD, "nul": GOOD}, captions=captions)
    path = root / COLLECTION / "TextData" / f"{COLLECTION}{SPLIT}.caption.txt"
    with pytest.raises(ValueError, match=rf"caption\.txt, line 2: control character U\+{ord(char):04X}.*column 16"):
        read_captions(path)
    assert_cli_fails(data_check(root), f"{COLLECTION}{SPLIT}.caption.txt, line 2", f"U+{ord(char):04X}")


def test_tabs_and_crlf_line_endings_are_fine(tmp_path: Path) -> None:
    path = tmp_path / "c.caption.txt"
    path.write_bytes(b"v#enc#0\ta person\twalks\r\nv#enc#1 runs\r\n")
    assert [r.text for r in read_captions(path)] == ["a person\twalks", "runs"]
    assert [line for _, line in read_text_lines(path)] == ["v#enc#0\ta person\twalks", "v#enc#1 runs", ""]


def test_control_characters_in_the_moments_sidecar(tmp_path: Path) -> None:
    moments = b'{"cap_id": "good#enc#0", "video_id": "good", "windows": [[0, 1]], "duration": 2}\n' \
              b'{"cap_id": "nul#enc#0", "video_id": "nul", "windows": [[0, 1]]}\x00\n'
    root = write_collection(tmp_path, {"good": GOOD, "nul": GOOD}, moments=moments)
    with pytest.raises(ValueError, match=r"moments\.jsonl, line 2: control character U\+0000 \(NUL\) at column 64"):
        read_moments(root / COLLECTION / "TextData" / f"{COLLECTION}{SPLIT}.moments.jsonl")
    assert_cli_fails(data_check(root), f"{COLLECTION}{SPLIT}.moments.jsonl, line 2", "NUL")


# ----------------------------------------------------------------------------------------------------------------
# 4. a dimension mismatch names the odd video, not the valid ones


@pytest.mark.parametrize("layout", ["hdf5", "npy"])
def test_dimension_mismatch_names_the_bad_video(tmp_path: Path, layout: str) -> None:
    # "a_wide" sorts first in the store: taking D from the first item used to blame the valid videos
    videos = {"b_ok": GOOD, "c_ok": GOOD, "a_wide": np.ones((3, 7), np.float32)}
    root = write_collection(tmp_path, videos, layout=layout)
    assert open_video_features(root, COLLECTION, FEATURE).dim == 5
    message = corpus_error(root)
    assert "'a_wide' have dimension 7, expected 5" in message and "2 of the 3 items" in message
    assert "b_ok" not in message and "c_ok" not in message
    assert_cli_fails(data_check(root), "'a_wide' have dimension 7, expected 5")


# ----------------------------------------------------------------------------------------------------------------
# 5. folder scans list every entry named like a video that is not a readable file


def make_bad_entries(folder: Path) -> dict[str, str]:
    """Entries named like videos that are not readable files -> the reason each must be listed with."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "clip.mp4").mkdir()
    (folder / "loop.mp4").symlink_to("loop.mp4")
    (folder / "broken.mkv").symlink_to("absent.mkv")
    os.mkfifo(folder / "pipe.mp4")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(folder / "sock.webm"))
    listener.close()
    (folder / "locked.mp4").write_bytes(b"\x00" * 64)
    (folder / "notes.txt").write_text("not named like a video: ignored")
    return {"clip.mp4": "a folder, not a video file", "loop.mp4": "a symlink loop",
            "broken.mkv": "a broken symlink", "pipe.mp4": "a FIFO", "sock.webm": "a socket",
            "locked.mp4": "not readable (permission denied)"}


def unreadable(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """Tests run as root, where chmod 000 still reads: make os.access say no for files called ``name``."""
    real = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, *a, **k: False if Path(path).name == name
                        else real(path, mode, *a, **k))


def test_scan_lists_every_skipped_entry_with_its_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    expected = make_bad_entries(tmp_path / "videos")
    (tmp_path / "videos" / "good.mp4").write_bytes(b"bytes")
    unreadable(monkeypatch, "locked.mp4")
    paths, skipped = scan_videos(tmp_path / "videos")
    assert [p.name for p in paths] == ["good.mp4"]
    reasons = {entry.path.name: entry.reason for entry in skipped}
    assert set(reasons) == set(expected)
    for name, reason in expected.items():
        assert reason in reasons[name], (name, reasons[name])


def test_extract_cli_lists_skipped_entries_in_failures(tmp_path: Path, tiny_clip: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from prvr.features.synthetic_video import write_video

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    videos = tmp_path / "in"
    expected = make_bad_entries(videos)
    unreadable(monkeypatch, "locked.mp4")
    args = ["extract", "--videos", str(videos), "--out", str(tmp_path / "out"), "--backbone", f"clip:{tiny_clip}",
            "--device", "cpu", "--no-progress", "--name", "tiny"]
    outcome = CliRunner().invoke(main, args)
    assert_cli_fails(outcome, "none of the 6 video(s) could be extracted", FAILURES_FILE)
    failures_file = tmp_path / "out" / "videos" / "FeatureData" / "tiny" / FAILURES_FILE
    failed = {Path(f["source"]).name: f["reason"] for f in json.loads(failures_file.read_text())["failed"]}
    assert set(failed) == set(expected)
    for name, reason in expected.items():
        assert reason in failed[name] and name in outcome.output  # the summary lists it too

    write_video(videos / "good.mp4", np.arange(0, 1.0, 0.1))  # one real video: the run succeeds, the rest listed
    outcome = CliRunner().invoke(main, args)
    assert outcome.exit_code == 0, outcome.output
    summary = json.loads(outcome.output[outcome.output.index("{"):])
    assert (summary["ok"], summary["failed"]) == (1, 6)
    assert {Path(f["source"]).name for f in summary["failures"]} == set(expected)
    with h5py.File(summary["features"], "r") as handle:
        assert list(handle) == ["good"]


def test_build_index_videos_reports_skipped_entries_on_stderr(tmp_path: Path, tiny_clip: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from helpers import save_untrained_checkpoint
    from prvr.features.synthetic_video import write_video

    checkpoint = tmp_path / "model.pt"
    save_untrained_checkpoint(checkpoint, video_dim=12, text_dim=16)
    videos = tmp_path / "in"
    expected = make_bad_entries(videos)
    unreadable(monkeypatch, "locked.mp4")
    write_video(videos / "good.mp4", np.arange(0, 1.0, 0.1))
    result = CliRunner().invoke(main, ["build-index", "--checkpoint", str(checkpoint),
                                       "--videos", str(videos), "--backbone", f"clip:{tiny_clip}", "--device", "cpu",
                                       "--out", str(tmp_path / "index"), "--no-progress"])
    assert result.exit_code == 0, result.output
    for name, reason in expected.items():
        line = next((ln for ln in result.stderr.splitlines() if ln.startswith("skipped") and name in ln), None)
        assert line is not None and reason in line, (name, result.stderr)
    assert "1 of 7 video files extracted" in result.stderr
