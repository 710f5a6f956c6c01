"""Crash-safe file writes (a temporary file beside the target, fsync, atomic rename, directory fsync) and the
exclusive lock file that serialises writers of one directory."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = [
    "atomic_path",
    "exclusive_lock",
    "file_sha256",
    "fsync_directory",
    "write_json_atomic",
    "write_text_atomic",
]


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a fresh temporary path beside ``path``; on success fsync it and ``os.replace`` it onto ``path``.

    The body writes the temporary file (text, HDF5, ...) and closes it. If the body raises, the temporary file is
    removed and ``path`` is left untouched, so readers never see a half-written file.

    Args:
        path: the final destination; its directory must exist.

    Returns:
        A context manager yielding the temporary path to write.
    """
    final = Path(path)
    if not final.parent.is_dir():
        raise FileNotFoundError(f"cannot write {final}: directory {final.parent} does not exist; create it first")
    tmp = final.parent / f".{final.name}.{uuid.uuid4().hex}.tmp"
    # O_EXCL: never clobber another writer's temp file; mode 0o666 lets the umask decide the final permissions.
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_directory(final.parent)


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8, ``\\n`` line endings kept as given) to ``path`` crash-safely (see :func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="\n") as handle:
            handle.write(text)


def write_json_atomic(path: str | os.PathLike[str], obj: Any, *, indent: int | None = 2, sort_keys: bool = True,
                      default: Callable[[Any], Any] | None = None) -> None:
    """Write ``obj`` as JSON plus a final newline to ``path`` crash-safely (see :func:`atomic_path`); ``default``
    converts what JSON cannot hold, as in :func:`json.dumps`."""
    write_text_atomic(path, json.dumps(obj, indent=indent, sort_keys=sort_keys, default=default) + "\n")


@contextmanager
def exclusive_lock(path: str | os.PathLike[str], *, wait: bool = False,
                   busy_message: str | None = None) -> Iterator[None]:
    """Hold an exclusive ``fcntl`` lock on the file ``path`` (created when absent) for the body.

    The kernel releases the lock when the process dies, so a crashed holder never leaves a stale lock behind.

    Args:
        path: the lock file; its directory must exist.
        wait: block until the lock is free; otherwise raise at once when another process holds it.
        busy_message: the RuntimeError's message when ``wait`` is false and the lock is held.
    """
    with open(path, "a+b") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            raise RuntimeError(busy_message or f"{path} is held by another process; wait for it to finish") from None
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def fsync_directory(directory: Path) -> None:
    """Persist a rename (best effort: some platforms and file systems cannot open directories)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def file_sha256(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()
