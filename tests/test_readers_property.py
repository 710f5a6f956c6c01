"""Property-based tests of the input readers over generated malformed files: every read is either correct or a
project error (ValueError / OSError) whose message names the file, never another exception.

Files go to ``tmp_path_factory`` folders (hypothesis reruns a test body many times; function-scoped tmp_path would
be shared between the examples). Examples are bounded so the whole file runs in a few seconds.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from prvr.data.captions import read_captions, read_moments
from prvr.data.features import BigFileFeatureStore, HDF5FeatureStore, NpyDirectoryFeatureStore, validate_features
from prvr.features.extract import read_sidecar

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
_counter = itertools.count()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Callable[[], Path]:
    """A fresh empty folder per hypothesis example."""
    base = tmp_path_factory.mktemp("readers-property")

    def fresh() -> Path:
        folder = base / f"example-{next(_counter)}"
        folder.mkdir()
        return folder

    return fresh


def outcome(read: Callable[[], Any], named: Path) -> Any:
    """``read()``, or the project error it raised, checked to name ``named`` (its path or file name)."""
    try:
        return read()
    except (ValueError, OSError) as error:
        assert str(named) in str(error) or named.name in str(error), str(error)
        return error


def read_all(store_factory: Callable[[], Any], named: Path) -> list[Any]:
    """Open a store and read each of its ids (and its D); each step is a correct value or a project error."""
    store = outcome(store_factory, named)
    if isinstance(store, Exception):
        return [store]
    ids = outcome(store.ids, named)
    if isinstance(ids, Exception):
        return [ids]
    results = [outcome(lambda: store.dim, named)]
    for key in ids:
        results.append(outcome(lambda key=key: store[key], named))
    store.close()
    return results


def assert_correct(got: Any, array: np.ndarray) -> None:
    """A successful read is exactly the input as float32 (n, D); a refusal has a reason we expect."""
    if isinstance(got, Exception):
        assert (
            array.ndim != 2 or 0 in array.shape or array.dtype.kind not in "fiu"
            or not np.isfinite(array.astype(np.float64)).all() or np.abs(array.astype(np.float64)).max() > 3.4e38
        ), f"a valid array was refused: {got}"
        return
    assert got.dtype == np.float32 and got.flags["C_CONTIGUOUS"] and got.shape == array.shape
    np.testing.assert_array_equal(got, array.astype(np.float32))


DTYPES = st.sampled_from([np.float16, np.float32, np.float64, np.int8, np.int32, np.uint8, np.bool_,
                          np.complex64])


@st.composite
def feature_arrays(draw: st.DrawFn) -> np.ndarray:
    dtype = draw(DTYPES)
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4))
    return draw(hnp.arrays(dtype, shape))


# ----------------------------------------------------------------------------------------------------------------
# arrays of any rank and dtype, through validate_features and each store


@SETTINGS
@given(array=feature_arrays())
def test_validate_features_is_correct_or_names_source_and_key(array: np.ndarray) -> None:
    try:
        got: Any = validate_features(array, source="/some/file.hdf5", key="vid")
    except ValueError as error:
        assert "/some/file.hdf5" in str(error) and "'vid'" in str(error)
        got = error
    assert_correct(got, array)


@SETTINGS
@given(arrays=st.lists(feature_arrays(), min_size=1, max_size=3))
def test_hdf5_store_over_any_arrays(workdir: Callable[[], Path], arrays: list[np.ndarray]) -> None:
    path = workdir() / "feature.hdf5"
    with h5py.File(path, "w") as handle:
        for i, array in enumerate(arrays):
            handle[f"v{i}"] = array
    results = read_all(lambda: HDF5FeatureStore(path), path)
    for got, array in zip(results[1:], arrays):
        assert_correct(got, array)


@SETTINGS
@given(arrays=st.lists(feature_arrays(), min_size=1, max_size=3), compressed=st.booleans(),
       key=st.sampled_from(["features", "other"]))
def test_npy_and_npz_stores_over_any_arrays(workdir: Callable[[], Path], arrays: list[np.ndarray], compressed: bool,
                                             key: str) -> None:
    folder = workdir()
    for i, array in enumerate(arrays):
        if i % 2 == 0:
            np.save(folder / f"v{i}.npy", array)
        else:
            (np.savez_compressed if compressed else np.savez)(folder / f"v{i}.npz", **{key: array})
    store = NpyDirectoryFeatureStore(folder)
    for i, array in enumerate(arrays):
        file = folder / (f"v{i}.npy" if i % 2 == 0 else f"v{i}.npz")
        assert_correct(outcome(lambda i=i: store[f"v{i}"], file), array)
    outcome(lambda: store.dim, folder)


# ----------------------------------------------------------------------------------------------------------------
# truncated and corrupted files


def _valid_hdf5(path: Path) -> None:
    with h5py.File(path, "w") as handle:
        handle["a"] = np.arange(40, dtype=np.float32).reshape(8, 5)
        handle["b"] = np.ones((3, 5), np.float16)


@SETTINGS
@given(cut=st.floats(0.0, 1.0), flips=st.lists(st.tuples(st.floats(0.0, 1.0), st.integers(1, 255)), max_size=4))
def test_truncated_or_corrupted_hdf5(workdir: Callable[[], Path], cut: float, flips: list[tuple[float, int]]) -> None:
    path = workdir() / "feature.hdf5"
    _valid_hdf5(path)
    data = bytearray(path.read_bytes())
    data = data[: int(len(data) * cut)] if cut < 1.0 else data
    for where, xor in flips:
        if data:
            data[int(where * (len(data) - 1))] ^= xor
    path.write_bytes(bytes(data))
    for got in read_all(lambda: HDF5FeatureStore(path), path):
        assert isinstance(got, (np.ndarray, Exception, int))


@SETTINGS
@given(cut=st.integers(0, 300), suffix=st.sampled_from([".npy", ".npz"]), flip=st.integers(0, 300))
def test_truncated_or_corrupted_numpy_files(workdir: Callable[[], Path], cut: int, suffix: str, flip: int) -> None:
    folder = workdir()
    file = folder / f"v{suffix}"
    array = np.arange(30, dtype=np.float32).reshape(6, 5)
    if suffix == ".npy":
        np.save(file, array)
    else:
        np.savez(file, features=array)
    data = bytearray(file.read_bytes())
    data = data[: min(cut, len(data))] if cut < len(data) else data
    if flip < len(data):
        data[flip] ^= 0x5A
    file.write_bytes(bytes(data))
    got = read_all(lambda: NpyDirectoryFeatureStore(folder), file)
    for value in got[1:]:
        if isinstance(value, np.ndarray):
            assert value.ndim == 2 and value.dtype == np.float32


@SETTINGS
@given(data=st.binary(max_size=300), suffix=st.sampled_from([".hdf5", ".npy", ".npz"]))
def test_random_bytes_as_feature_files(workdir: Callable[[], Path], data: bytes, suffix: str) -> None:
    folder = workdir()
    prefix = {".hdf5": b"\x89HDF\r\n\x1a\n", ".npy": b"\x93NUMPY\x01\x00", ".npz": b"PK\x03\x04"}[suffix]
    for name, payload in (("raw", data), ("magic", prefix + data)):
        if suffix == ".hdf5":
            path = folder / f"{name}.hdf5"
            path.write_bytes(payload)
            read_all(lambda: HDF5FeatureStore(path), path)
        else:
            file = folder / f"{name}{suffix}"
            file.write_bytes(payload)
            store = NpyDirectoryFeatureStore(folder)
            outcome(lambda: store[name], file)


@SETTINGS
@given(shape=st.text(max_size=12), ids=st.text(max_size=20), mapping=st.text(max_size=40),
       raw=st.binary(max_size=64), nbytes=st.integers(0, 64))
def test_bigfile_with_random_text_files(workdir: Callable[[], Path], shape: str, ids: str, mapping: str,
                                        raw: bytes, nbytes: int) -> None:
    folder = workdir()
    (folder / "shape.txt").write_text(shape, encoding="utf-8")
    (folder / "id.txt").write_bytes(ids.encode("utf-8") + raw[:3])
    (folder / "feature.bin").write_bytes(np.ones(nbytes // 4, "<f4").tobytes())
    (folder / "video2frames.txt").write_bytes(mapping.encode("utf-8") + raw[3:])
    try:
        store: Any = BigFileFeatureStore(folder)
    except (ValueError, OSError) as error:
        assert str(folder) in str(error), str(error)
        return
    for key in store.ids():
        outcome(lambda key=key: store[key], folder)


# ----------------------------------------------------------------------------------------------------------------
# caption, moments and sidecar files

CONTROLS = [chr(c) for c in [*range(0, 9), *range(10, 32), 127, *range(0x80, 0xA0), 0x2028, 0x2029] if c != 10]
# no "\n" inside a line's text: it would start another line and shift the line numbers the test expects
LINE_TEXT = st.text(st.one_of(st.characters(blacklist_categories=("Cs",), blacklist_characters="\n"),
                              st.sampled_from(CONTROLS)), max_size=12)


@SETTINGS
@given(lines=st.lists(st.tuples(st.sampled_from(["v1", "v2", "x"]), LINE_TEXT), max_size=6),
       ending=st.sampled_from(["\n", "\r\n"]), tail=st.binary(max_size=4))
def test_caption_files_with_random_text_and_control_characters(
    workdir: Callable[[], Path], lines: list[tuple[str, str]], ending: str, tail: bytes
) -> None:
    path = workdir() / "c.caption.txt"
    body = "".join(f"{vid}#enc#{k} {text}{ending}" for k, (vid, text) in enumerate(lines))
    path.write_bytes(body.encode("utf-8") + tail)
    got = outcome(lambda: read_captions(path), path)
    bad_lines = [n for n, (_, text) in enumerate(lines, start=1) if any(c in text for c in CONTROLS)]
    if isinstance(got, Exception):
        if bad_lines and not tail:
            first = min(bad_lines)
            message = str(got)
            # the error is on the first line with a control character, or an earlier line with another problem
            line = int(message.split(", line ")[1].split(":")[0])
            assert line <= first
        return
    assert not bad_lines or tail  # a control character never gets through
    for record in got:
        assert not any(c in record.text or c in record.query_id for c in CONTROLS)


@SETTINGS
@given(data=st.binary(max_size=200))
def test_random_bytes_as_text_files(workdir: Callable[[], Path], data: bytes) -> None:
    folder = workdir()
    for name, read in (("c.caption.txt", read_captions), ("m.moments.jsonl", read_moments)):
        path = folder / name
        path.write_bytes(data)
        outcome(lambda path=path, read=read: read(path), path)
    (folder / "videos.jsonl").write_bytes(data)
    outcome(lambda: read_sidecar(folder), folder / "videos.jsonl")


@SETTINGS
@given(objects=st.lists(st.dictionaries(st.sampled_from(["cap_id", "video_id", "windows", "duration"]),
                                        st.recursive(st.none() | st.booleans() | st.floats() | st.integers()
                                                     | st.text(max_size=4),
                                                     lambda inner: st.lists(inner, max_size=3), max_leaves=6)),
                        max_size=4),
       control=st.sampled_from(["", "\x00", "\x1b"]))
def test_moments_files_with_random_objects(workdir: Callable[[], Path], objects: list[dict[str, Any]],
                                           control: str) -> None:
    import json

    path = workdir() / "m.moments.jsonl"
    path.write_text("".join(json.dumps(obj) + control + "\n" for obj in objects), encoding="utf-8")
    got = outcome(lambda: read_moments(path), path)
    if control and objects:
        assert isinstance(got, ValueError)
