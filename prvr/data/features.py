"""Feature stores (HDF5, legacy BigFile, npy/npz folders) that return validated float32 (n, D) arrays per id.

Shape letters: n rows of one item (frames of a video, tokens of a query), D feature dimension.
Layout (MS-SL release): video features at ``<root>/<collection>/FeatureData/<feature>/feature.hdf5`` (one dataset per
video id, (n_frames, D_in)); query token features at
``<root>/<collection>/TextData/<text_feature>_<collection>_query_feat.hdf5`` (one dataset per cap id, (L, D_text)).
"""

from __future__ import annotations

import abc
import ast
import logging
import os
import tokenize
import zipfile
import zlib
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import h5py
import numpy as np

from prvr.fileio import atomic_path

__all__ = [
    "FeatureStore",
    "HDF5FeatureStore",
    "BigFileFeatureStore",
    "NpyDirectoryFeatureStore",
    "validate_features",
    "check_rank",
    "check_dtype",
    "check_size",
    "check_finite",
    "dominant_dim",
    "open_video_features",
    "query_feature_path",
    "open_query_features",
    "query_feature_backbone",
    "write_hdf5_features",
    "write_bigfile",
]

logger = logging.getLogger(__name__)


ROWS = "frames"  # what the rows of a video are called in errors (query stores say "tokens")


def check_rank(array: np.ndarray, *, source: str, key: str, rows: str = ROWS) -> None:
    """Refuse anything but a 2-D (rows, D) array: a 1-D (D,) vector is not silently read as a one-row video.

    Raises:
        ValueError: ``array.ndim != 2``; the message names ``source``, ``key`` and the expected shape.
    """
    if array.ndim == 2:
        return
    if array.ndim == 1:
        raise ValueError(
            f"{source}: features of {key!r} have shape {array.shape}, a 1-D vector; expected 2-D ({rows}, D). "
            f"Re-extract them, or save a single {rows[:-1]} as shape (1, {array.shape[0]})"
        )
    raise ValueError(
        f"{source}: features of {key!r} have shape {array.shape}, expected 2-D ({rows}, D); re-extract or reshape them"
    )


def check_dtype(array: np.ndarray, *, source: str, key: str) -> None:
    """Accept real numbers only: float16 / float32 / float64 and (un)signed integers (all read as float32).

    bool, complex, string, bytes, object and structured arrays are refused rather than guessed at.

    Raises:
        ValueError: another dtype; the message names ``source``, ``key`` and the dtype.
    """
    dtype = array.dtype
    if dtype.fields is None and (np.issubdtype(dtype, np.floating) or np.issubdtype(dtype, np.integer)):
        return
    kind = {"b": "boolean", "c": "complex", "O": "object (pickled Python values)", "U": "string", "S": "bytes",
            "V": "structured / raw bytes", "M": "datetime", "m": "timedelta"}.get(dtype.kind, "non-numeric")
    raise ValueError(
        f"{source}: features of {key!r} have dtype {dtype} ({kind}), expected real numbers (float16/32/64 or "
        f"integers); re-save them as float32"
    )


def check_size(array: np.ndarray, *, source: str, key: str, expected_dim: int | None, rows: str = ROWS,
               dim_origin: str | None = None) -> None:
    """Refuse 0 rows (a zero-frame video / empty query), 0 columns, or D != ``expected_dim`` (a 2-D array).

    ``dim_origin`` says where ``expected_dim`` came from (e.g. "the dimension of 9 of 10 items of the store").

    Raises:
        ValueError: the message names ``source``, ``key``, the shape found and the one expected.
    """
    if array.shape[0] == 0:
        raise ValueError(
            f"{source}: {key!r} has 0 {rows} (a zero-frame video / empty query, shape {array.shape}); re-extract "
            f"its features or drop it from the split"
        )
    if array.shape[1] == 0:
        raise ValueError(f"{source}: features of {key!r} have 0 columns (shape {array.shape}), expected ({rows}, D)")
    if expected_dim is not None and array.shape[1] != expected_dim:
        origin = f" ({dim_origin})" if dim_origin else ""
        raise ValueError(
            f"{source}: features of {key!r} have dimension {array.shape[1]}, expected {expected_dim}{origin}; "
            f"re-extract {key!r}, or check the feature name or set the model's input dim to {array.shape[1]}"
        )


def check_finite(array: np.ndarray, *, source: str, key: str, rows: str = ROWS) -> None:
    """Refuse NaN / inf values, with their counts and the first bad row (``array`` is a float array).

    Raises:
        ValueError: the message names ``source``, ``key``, the counts and the first bad row.
    """
    finite = np.isfinite(array)
    if finite.all():
        return
    n_nan = int(np.isnan(array).sum())
    n_inf = int(array.size - finite.sum()) - n_nan
    first = int(np.flatnonzero(~finite.reshape(finite.shape[0], -1).all(axis=1))[0])
    raise ValueError(
        f"{source}: features of {key!r} contain {n_nan} NaN and {n_inf} inf value(s) out of {array.size} "
        f"(first in {rows[:-1]} {first}); re-extract them (float16 overflow is a common cause)"
    )


def validate_features(
    array: Any, *, source: str, key: str, expected_dim: int | None = None, rows: str = ROWS,
    dim_origin: str | None = None,
) -> np.ndarray:
    """Check one item's features and return them as a C-contiguous float32 (n, D) array.

    The checks, in order: :func:`check_rank` (2-D; a 1-D vector is refused), :func:`check_dtype` (float16 /
    float32 / float64 / integers are converted to float32; bool, complex, object, strings are refused),
    :func:`check_size` (no zero rows or columns, D == expected_dim), :func:`check_finite` (no NaN / inf, before and
    after the conversion: a float64 beyond the float32 range is refused as an overflow, not stored as inf).

    Args:
        array: the raw features, expected (n, D).
        source: the file or folder they came from (named in errors).
        key: the item id (named in errors).
        expected_dim: D the caller needs, or None to accept any.
        rows: what a row is called in errors ("frames" for videos, "tokens" for queries).
        dim_origin: where ``expected_dim`` came from, for the message.

    Returns:
        (n, D) float32.

    Raises:
        ValueError: any check failed; the message names ``source`` and ``key``.
    """
    if isinstance(array, np.ndarray):
        raw = array
    else:
        try:
            raw = np.asarray(array)
        except (ValueError, TypeError) as error:  # ragged nested lists and the like
            raise ValueError(
                f"{source}: features of {key!r} are not an array ({error}); expected ({rows}, D)"
            ) from None
    check_rank(raw, source=source, key=key, rows=rows)
    check_dtype(raw, source=source, key=key)
    check_size(raw, source=source, key=key, expected_dim=expected_dim, rows=rows, dim_origin=dim_origin)
    if np.issubdtype(raw.dtype, np.floating):
        check_finite(raw, source=source, key=key, rows=rows)
    with np.errstate(over="ignore", invalid="ignore"):  # an overflow is reported just below
        out = np.ascontiguousarray(raw, dtype=np.float32)  # float16 / float64 / int -> float32
    if not np.isfinite(out).all():
        raise ValueError(
            f"{source}: features of {key!r} ({raw.dtype}) hold values beyond the float32 range (about 3.4e38); "
            f"rescale or re-extract them"
        )
    return out


def dominant_dim(shapes: Iterable[tuple[int, ...]], *, source: str) -> tuple[int, int, int]:
    """D of a store: the most common last axis among its 2-D items (ties: the first seen).

    Taking the majority (not the first item) means one odd item is the one named in errors, not every good one.

    Returns:
        ``(D, items with D, items)``.

    Raises:
        ValueError: no item is 2-D.
    """
    counts: dict[int, int] = {}
    total = 0
    for shape in shapes:
        total += 1
        if len(shape) == 2 and shape[1] > 0:
            counts[shape[1]] = counts.get(shape[1], 0) + 1
    if not counts:
        raise ValueError(f"{source} holds no 2-D (frames, D) features, so it has no feature dimension")
    dim = max(counts, key=lambda d: counts[d])  # max keeps the first of equal counts
    return dim, counts[dim], total


class FeatureStore(abc.ABC):
    """Read-only mapping id -> float32 (n, D) features, with validation on every read.

    Subclasses implement ``ids``, ``_read`` (raw array of a known id), ``_shape`` (its shape, cheaply) and
    optionally ``close``. ``dim`` is the most common D of the items (:func:`dominant_dim`), so one odd item is the one
    an error names. Every read goes through :func:`validate_features`: 2-D only (a 1-D vector is refused), real
    numbers only (float16/64 and integers are converted to float32), no empty items, no NaN/inf, D checked.
    Stores are context managers and may be pickled (handles are dropped and re-opened lazily).
    """

    rows: str = ROWS  # what a row is called in errors; query stores say "tokens"

    def __init__(self, path: str | os.PathLike[str], expected_dim: int | None = None) -> None:
        self.path = Path(path)
        self.expected_dim = expected_dim

    @abc.abstractmethod
    def ids(self) -> list[str]:
        """All item ids, in storage order."""

    @property
    def dim(self) -> int:
        """D, the feature dimension: the most common one among the items (read from their headers)."""
        return self._dim_census()[0]

    def _dim_census(self) -> tuple[int, int, int]:
        """``(D, items with D, items)``, computed once from the items' shapes."""
        cached = self.__dict__.get("_dim_cache")
        if cached is None:
            cached = dominant_dim((self._shape(key) for key in self.ids()), source=str(self.path))
            self.__dict__["_dim_cache"] = cached
        return cached

    @abc.abstractmethod
    def _read(self, key: str) -> np.ndarray:
        """The raw array of ``key`` (which is known to exist); unreadable data raises ValueError naming it."""

    @abc.abstractmethod
    def _shape(self, key: str) -> tuple[int, ...]:
        """The shape of ``key``'s array without reading its values; unreadable data raises ValueError."""

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key in self._id_set()

    def _id_set(self) -> set[str]:
        cached = self.__dict__.get("_ids_cache")
        if cached is None:
            cached = set(self.ids())
            self.__dict__["_ids_cache"] = cached
        return cached

    def __getitem__(self, key: str) -> np.ndarray:
        if key not in self:
            raise KeyError(f"{key!r} is not in {self.path} ({len(self)} ids); check the split and the feature name")
        census = self.__dict__.get("_dim_cache")
        origin = None
        if census is not None and self.expected_dim == census[0]:
            origin = f"the dimension of {census[1]} of the {census[2]} items in {self.path}"
        return validate_features(
            self._read(key), source=self._source(key), key=key, expected_dim=self.expected_dim, rows=self.rows,
            dim_origin=origin,
        )

    def _source(self, key: str) -> str:
        """The file named in the errors about ``key``."""
        return str(self.path)

    def __len__(self) -> int:
        return len(self._id_set())

    def __iter__(self) -> Iterator[str]:
        return iter(self.ids())

    def close(self) -> None:
        """Release file handles (the store re-opens them on the next read)."""

    def __enter__(self) -> FeatureStore:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r})"


# ----------------------------------------------------------------------------------------------------------------
# HDF5


class HDF5FeatureStore(FeatureStore):
    """One dataset per id at the root of an HDF5 file (MS-SL video and query feature files).

    The file is opened lazily and re-opened in a forked child (the opening pid is remembered), so one store can be
    shared with DataLoader workers. float16 datasets come back as float32; a 1-D dataset is refused (it is one
    vector, not (frames, D)); a truncated or corrupt file or dataset is a ValueError naming the file and the id.
    """

    def __init__(self, path: str | os.PathLike[str], expected_dim: int | None = None) -> None:
        super().__init__(path, expected_dim)
        if not self.path.is_file():
            raise FileNotFoundError(f"HDF5 feature file {self.path} does not exist")
        self._handle: h5py.File | None = None
        self._pid: int | None = None
        self._ids: list[str] | None = None

    def _file(self) -> h5py.File:
        if self._handle is None or self._pid != os.getpid():
            # After a fork the inherited handle must not be used (HDF5 is not fork-safe); drop it without closing.
            self._handle = None
            try:
                self._handle = h5py.File(self.path, "r")
            except OSError as error:
                raise ValueError(f"{self.path} is not a readable HDF5 file ({error}); re-create it") from None
            self._pid = os.getpid()
        return self._handle

    def ids(self) -> list[str]:
        if self._ids is None:
            try:
                self._ids = list(self._file().keys())
            except (OSError, RuntimeError, KeyError, ValueError) as error:
                raise ValueError(f"{self.path}: cannot list its datasets ({error}); the file is corrupt, re-create "
                                 "it") from None
        return list(self._ids)

    @property
    def dim(self) -> int:
        if not self.ids():
            raise ValueError(f"{self.path} holds no datasets, so it has no feature dimension")
        return super().dim

    @property
    def attrs(self) -> dict[str, Any]:
        """The file's root attributes (e.g. the backbone that produced the features)."""
        return {key: _plain_attr(value) for key, value in self._file().attrs.items()}

    def _dataset(self, key: str) -> h5py.Dataset:
        try:
            node = self._file()[key]
        except (OSError, RuntimeError, KeyError, ValueError) as error:
            raise ValueError(f"{self.path}: cannot open dataset {key!r} ({error}); the file is truncated or corrupt, "
                             "re-create it") from None
        if not isinstance(node, h5py.Dataset):
            raise ValueError(f"{self.path}: {key!r} is an HDF5 group, expected one dataset per id")
        return node

    def _shape(self, key: str) -> tuple[int, ...]:
        try:  # the low-level call is about twice as fast (the census of ``dim`` visits every dataset)
            shape = h5py.h5d.open(self._file().id, key.encode("utf-8")).shape
        except (KeyError, ValueError, OSError, RuntimeError, TypeError):  # a group, a broken link, a corrupt header:
            # the high-level path below says which, naming the file and the id
            shape = self._dataset(key).shape
        return tuple(int(n) for n in shape or ())

    def _read(self, key: str) -> np.ndarray:
        dataset = self._dataset(key)
        try:
            return np.asarray(dataset[()])
        except (OSError, RuntimeError, KeyError, ValueError, TypeError) as error:
            raise ValueError(f"{self.path}: cannot read dataset {key!r} ({error}); the file is truncated or "
                             "corrupt, or the dataset is not an array of numbers; re-create it") from None

    def close(self) -> None:
        if self._handle is not None and self._pid == os.getpid():
            self._handle.close()
        self._handle = None
        self._pid = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_handle"] = None
        state["_pid"] = None
        return state


def _plain_attr(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def write_hdf5_features(
    path: str | os.PathLike[str],
    items: Iterable[tuple[str, np.ndarray]],
    dtype: Any = np.float32,
    attrs: dict[str, Any] | None = None,
) -> Path:
    """Write one dataset per id, atomically (temp file in the same folder, fsync, rename).

    Args:
        path: the destination ``.hdf5`` file (its folder must exist).
        items: (id, (n, D) array) pairs; all arrays must share D.
        dtype: the stored dtype (float32 by default; float16 halves the size).
        attrs: root attributes, e.g. ``{"backbone": "openai/clip-vit-base-patch32"}``.

    Returns:
        ``path`` as a Path.

    Raises:
        ValueError: an invalid array (see :func:`validate_features`), an id that is empty or contains '/',
            a duplicate id, or arrays of different D.
    """
    path = Path(path)
    seen: set[str] = set()
    dim: int | None = None
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as handle:
            for key, array in items:
                if not isinstance(key, str) or not key or "/" in key:
                    raise ValueError(f"write_hdf5_features({path}): id {key!r} must be a non-empty string without '/'")
                if key in seen:
                    raise ValueError(f"write_hdf5_features({path}): duplicate id {key!r}")
                seen.add(key)
                rows = validate_features(array, source=f"write_hdf5_features({path})", key=key, expected_dim=dim)
                dim = rows.shape[1]
                with np.errstate(over="ignore"):  # overflow is detected just below
                    stored = rows.astype(dtype, copy=False)
                if np.issubdtype(stored.dtype, np.floating) and not np.isfinite(stored).all():
                    raise ValueError(
                        f"write_hdf5_features({path}): {key!r} overflows {np.dtype(dtype).name}; store it as float32"
                    )
                handle.create_dataset(key, data=stored)
            for name, value in (attrs or {}).items():
                handle.attrs[name] = value
    logger.debug("wrote %d feature sets to %s", len(seen), path)
    return path


# ----------------------------------------------------------------------------------------------------------------
# BigFile


class BigFileFeatureStore(FeatureStore):
    """The legacy BigFile folder: shape.txt, id.txt, feature.bin (float32 rows) and optional video2frames.txt.

    With ``video2frames.txt`` (a Python dict literal ``{video_id: [frame_id, ...]}``, parsed with
    ``ast.literal_eval``, never ``eval``) a video's features are the rows of its frame ids in order; without it each
    row id is a video with one row.
    """

    def __init__(self, directory: str | os.PathLike[str], expected_dim: int | None = None) -> None:
        super().__init__(directory, expected_dim)
        folder = self.path
        if not folder.is_dir():
            raise FileNotFoundError(f"BigFile folder {folder} does not exist")
        for name in ("shape.txt", "id.txt", "feature.bin"):
            if not (folder / name).is_file():
                raise FileNotFoundError(
                    f"BigFile folder {folder} has no {name}; expected shape.txt, id.txt, feature.bin"
                )
        self._rows, self._ndims = self._read_shape(folder / "shape.txt")
        row_ids = _read_utf8(folder / "id.txt").split()
        if len(row_ids) != self._rows:
            raise ValueError(
                f"{folder / 'id.txt'} lists {len(row_ids)} ids but shape.txt says {self._rows} rows; "
                f"the two files must describe the same feature.bin"
            )
        self._row_of: dict[str, int] = {}
        for row, row_id in enumerate(row_ids):
            if row_id in self._row_of:
                raise ValueError(
                    f"{folder / 'id.txt'}: duplicate row id {row_id!r} (rows {self._row_of[row_id]}, {row})"
                )
            self._row_of[row_id] = row
        expected_bytes = self._rows * self._ndims * 4
        actual_bytes = (folder / "feature.bin").stat().st_size
        if actual_bytes != expected_bytes:
            raise ValueError(
                f"{folder / 'feature.bin'} has {actual_bytes} bytes, expected nrows*ndims*4 = {self._rows}*"
                f"{self._ndims}*4 = {expected_bytes} (float32); the file is truncated or shape.txt is wrong"
            )
        mapping_file = folder / "video2frames.txt"
        if mapping_file.is_file():
            self._frames = _read_video2frames(mapping_file, self._row_of)
        else:
            self._frames = {row_id: [row_id] for row_id in row_ids}
        self._matrix: np.memmap | None = None

    @staticmethod
    def _read_shape(path: Path) -> tuple[int, int]:
        fields = _read_utf8(path).split()
        try:
            rows, ndims = (int(field) for field in fields)
        except ValueError:
            raise ValueError(f"{path} must hold two integers 'nrows ndims', got {' '.join(fields)!r}") from None
        if rows < 0 or ndims <= 0:
            raise ValueError(f"{path}: nrows must be >= 0 and ndims > 0, got {rows} {ndims}")
        return rows, ndims

    def _array(self) -> np.memmap:
        if self._matrix is None:
            self._matrix = np.memmap(self.path / "feature.bin", dtype=np.float32, mode="r",
                                     shape=(self._rows, self._ndims))  # (rows, D)
        return self._matrix

    def ids(self) -> list[str]:
        return list(self._frames)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key in self._frames

    def __len__(self) -> int:
        return len(self._frames)

    @property
    def dim(self) -> int:
        return self._ndims

    def _shape(self, key: str) -> tuple[int, ...]:
        return (len(self._frames[key]), self._ndims)

    def _read(self, key: str) -> np.ndarray:
        rows = [self._row_of[frame] for frame in self._frames[key]]
        if not rows:
            return np.zeros((0, self._ndims), dtype=np.float32)
        return np.array(self._array()[rows])  # (n, D) copy out of the memory map

    def close(self) -> None:
        self._matrix = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_matrix"] = None
        return state


def _read_utf8(path: Path) -> str:
    """A BigFile text file, decoded; bad UTF-8 is a ValueError naming the file and the byte."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not valid UTF-8 ({error.reason} at byte {error.start}); re-write the file as "
                         "UTF-8 text") from None


def _read_video2frames(path: Path, row_of: Mapping[str, int]) -> dict[str, list[str]]:
    """Parse ``{video_id: [frame_id, ...]}`` safely and check every frame id is a row of feature.bin."""
    text = _read_utf8(path)
    try:
        parsed = ast.literal_eval(text)  # literals only: calls, names and attributes are rejected
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as error:
        raise ValueError(
            f"{path} is not a Python dict literal {{video_id: [frame_id, ...]}} ({type(error).__name__}: {error}); "
            f"it is parsed as a literal, never executed"
        ) from None
    if not isinstance(parsed, dict):
        raise ValueError(f"{path} must hold a dict {{video_id: [frame_id, ...]}}, got {type(parsed).__name__}")
    frames: dict[str, list[str]] = {}
    for video_id, frame_ids in parsed.items():
        if not isinstance(video_id, str) or not isinstance(frame_ids, (list, tuple)):
            raise ValueError(f"{path}: entry {video_id!r} must map a string video id to a list of frame ids")
        if not all(isinstance(frame, str) for frame in frame_ids):
            raise ValueError(f"{path}: the frame ids of {video_id!r} must all be strings")
        unknown = [frame for frame in frame_ids if frame not in row_of]
        if unknown:
            raise ValueError(
                f"{path}: video {video_id!r} lists frame id(s) {unknown[:3]} that are not in id.txt "
                f"({len(unknown)} missing); the BigFile folder is inconsistent"
            )
        frames[video_id] = list(frame_ids)
    return frames


def write_bigfile(
    directory: str | os.PathLike[str], mapping: Mapping[str, np.ndarray], *, video2frames: bool = True
) -> Path:
    """Write a BigFile folder (for tests and fixtures).

    Args:
        directory: the folder to create or fill.
        mapping: video id -> (n, D) float array; all arrays share D.
        video2frames: write video2frames.txt with frame ids ``<video_id>_<i>``; when False every array must have
            one row and the video ids are the row ids.

    Returns:
        The folder.
    """
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    row_ids: list[str] = []
    blocks: list[np.ndarray] = []
    frames: dict[str, list[str]] = {}
    dim: int | None = None
    for video_id, array in mapping.items():
        rows = np.asarray(array, dtype=np.float32)
        if rows.ndim != 2 or (dim is not None and rows.shape[1] != dim):
            raise ValueError(
                f"write_bigfile({folder}): {video_id!r} has shape {rows.shape}, expected (n, {dim or 'D'})"
            )
        dim = rows.shape[1]
        if video2frames:
            frames[video_id] = [f"{video_id}_{i}" for i in range(rows.shape[0])]
            row_ids.extend(frames[video_id])
        else:
            if rows.shape[0] != 1:
                raise ValueError(f"write_bigfile({folder}): without video2frames each id needs exactly one row")
            row_ids.append(video_id)
        blocks.append(rows)
    if dim is None:
        raise ValueError(f"write_bigfile({folder}): nothing to write")
    matrix = np.concatenate(blocks, axis=0)  # (rows, D)
    (folder / "shape.txt").write_text(f"{matrix.shape[0]} {dim}", encoding="utf-8")
    (folder / "id.txt").write_text(" ".join(row_ids), encoding="utf-8")
    matrix.astype("<f4").tofile(folder / "feature.bin")
    if video2frames:
        (folder / "video2frames.txt").write_text(repr(frames), encoding="utf-8")
    return folder


# ----------------------------------------------------------------------------------------------------------------
# npy / npz folder


class NpyDirectoryFeatureStore(FeatureStore):
    """One file per video in a folder: ``<vid>.npy`` or ``<vid>.npz`` (key "features", or its only array).

    Files are loaded with ``allow_pickle=False``; a truncated or foreign file, an .npz with several arrays but no
    "features" and a 1-D array are ValueErrors naming the file.
    """

    def __init__(self, directory: str | os.PathLike[str], expected_dim: int | None = None) -> None:
        super().__init__(directory, expected_dim)
        if not self.path.is_dir():
            raise FileNotFoundError(f"feature folder {self.path} does not exist")
        self._files: dict[str, Path] = {}
        for entry in sorted(self.path.iterdir()):
            if entry.suffix not in (".npy", ".npz") or not entry.is_file():
                continue
            video_id = entry.name[: -len(entry.suffix)]
            if video_id in self._files:
                raise ValueError(
                    f"{self.path}: both {self._files[video_id].name} and {entry.name} exist for {video_id!r}; keep one"
                )
            self._files[video_id] = entry

    def ids(self) -> list[str]:
        return list(self._files)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key in self._files

    def __len__(self) -> int:
        return len(self._files)

    @property
    def dim(self) -> int:
        if not self._files:
            raise ValueError(f"{self.path} holds no .npy/.npz files, so it has no feature dimension")
        return super().dim

    def _source(self, key: str) -> str:
        return str(self._files[key])

    def _shape(self, key: str) -> tuple[int, ...]:
        file = self._files[key]
        try:
            if file.suffix == ".npy":
                with open(file, "rb") as handle:
                    return _npy_header_shape(handle)
            with zipfile.ZipFile(file) as archive:
                member = _npz_member(file, [name[:-4] for name in archive.namelist() if name.endswith(".npy")])
                with archive.open(f"{member}.npy") as handle:
                    return _npy_header_shape(handle)
        except _NUMPY_FILE_ERRORS as error:
            raise ValueError(f"{file} is not a readable numpy file without pickles ({error}); re-save it") from None

    def _read(self, key: str) -> np.ndarray:
        file = self._files[key]
        try:
            loaded = np.load(file, allow_pickle=False)
            if isinstance(loaded, np.ndarray):
                return loaded
            with loaded as archive:
                return np.asarray(archive[_npz_member(file, archive.files)])
        except _NUMPY_FILE_ERRORS as error:
            raise ValueError(f"{file} is not a readable numpy file without pickles ({error}); re-save it") from None


# np.load / zipfile on a truncated, foreign or pickled file: these, never anything else, become a ValueError
# (a corrupt .npy header is parsed by numpy with ast / tokenize, hence SyntaxError and TokenError)
_NUMPY_FILE_ERRORS = (OSError, EOFError, ValueError, KeyError, TypeError, zipfile.BadZipFile, zlib.error,
                      NotImplementedError, RuntimeError, OverflowError, MemoryError, SyntaxError,
                      tokenize.TokenError)


def _npz_member(file: Path, names: list[str]) -> str:
    """The array of an .npz that holds the features: "features", or its only array."""
    if "features" in names:
        return "features"
    if len(names) == 1:
        return names[0]
    raise ValueError(f"{file} holds arrays {names} but no 'features'; save the features under that key")


def _npy_header_shape(handle: Any) -> tuple[int, ...]:
    """The shape in a .npy header (the values are not read)."""
    version = np.lib.format.read_magic(handle)
    if version == (1, 0):
        shape, _, _ = np.lib.format.read_array_header_1_0(handle)
    elif version == (2, 0):
        shape, _, _ = np.lib.format.read_array_header_2_0(handle)
    else:  # (3, 0) only adds utf-8 field names, i.e. structured arrays, which are not features anyway
        raise ValueError(f".npy format version {version[0]}.{version[1]} is not supported for features")
    return tuple(int(n) for n in shape)


# ----------------------------------------------------------------------------------------------------------------
# resolving the standard layout


def open_video_features(
    root: str | os.PathLike[str], collection: str, feature_name: str, *, expected_dim: int | None = None
) -> FeatureStore:
    """Open ``<root>/<collection>/FeatureData/<feature_name>`` in whichever layout it is stored.

    Tried in order: ``<feature_name>/feature.hdf5``, ``<feature_name>.hdf5``, a BigFile folder ``<feature_name>/``
    (feature.bin present) and a folder of ``.npy``/``.npz`` files.

    Args:
        root: the data root.
        collection: the collection name.
        feature_name: e.g. ``"i3d"`` or ``"clip_vit_b32"``.
        expected_dim: D to check on every read, or None.

    Returns:
        A feature store.

    Raises:
        FileNotFoundError: none of the layouts is present (the message lists what was tried).
    """
    base = Path(root) / collection / "FeatureData"
    folder = base / feature_name
    tried: list[str] = []
    candidate = folder / "feature.hdf5"
    tried.append(str(candidate))
    if candidate.is_file():
        return HDF5FeatureStore(candidate, expected_dim)
    candidate = base / f"{feature_name}.hdf5"
    tried.append(str(candidate))
    if candidate.is_file():
        return HDF5FeatureStore(candidate, expected_dim)
    tried.append(f"{folder}/ (BigFile: shape.txt, id.txt, feature.bin)")
    if (folder / "feature.bin").is_file():
        return BigFileFeatureStore(folder, expected_dim)
    tried.append(f"{folder}/*.npy|*.npz")
    if folder.is_dir() and any(p.suffix in (".npy", ".npz") for p in folder.iterdir()):
        return NpyDirectoryFeatureStore(folder, expected_dim)
    raise FileNotFoundError(
        f"no video features {feature_name!r} for collection {collection!r}; tried: " + "; ".join(tried)
        + ". Check --root / the feature name (DataConfig.video_feature)."
    )


def query_feature_path(root: str | os.PathLike[str], collection: str, text_feature: str) -> Path:
    """``<root>/<collection>/TextData/<text_feature>_<collection>_query_feat.hdf5``.

    Args:
        root: the data root.
        collection: the collection name.
        text_feature: e.g. ``"roberta"``.

    Returns:
        The path (not checked for existence).
    """
    return Path(root) / collection / "TextData" / f"{text_feature}_{collection}_query_feat.hdf5"


def open_query_features(
    root: str | os.PathLike[str], collection: str, text_feature: str, *, expected_dim: int | None = None
) -> HDF5FeatureStore:
    """Open the query token features (one dataset per cap id, (L, D_text)).

    Args:
        root: the data root.
        collection: the collection name.
        text_feature: e.g. ``"roberta"``.
        expected_dim: D_text to check on every read, or None.

    Returns:
        The store.

    Raises:
        FileNotFoundError: the file is absent (the message names the expected path).
    """
    path = query_feature_path(root, collection, text_feature)
    if not path.is_file():
        raise FileNotFoundError(
            f"query features {path} do not exist; expected <root>/<collection>/TextData/"
            f"<text_feature>_<collection>_query_feat.hdf5 (DataConfig.text_feature={text_feature!r})"
        )
    store = HDF5FeatureStore(path, expected_dim)
    store.rows = "tokens"
    return store


def query_feature_backbone(root: str | os.PathLike[str], collection: str, text_feature: str) -> str | None:
    """The text backbone id a query feature file records (``text_backbone``; the benchmark builds' older
    ``text_encoder``), or None when the file records none or does not exist (a published release, say)."""
    path = query_feature_path(root, collection, text_feature)
    if not path.is_file():
        return None
    try:
        with h5py.File(path, "r") as handle:
            value = handle.attrs.get("text_backbone", handle.attrs.get("text_encoder"))
    except OSError as error:
        raise ValueError(f"{path} is not a readable HDF5 query feature file ({error}); re-create it") from None
    return None if value is None else str(_plain_attr(value))
