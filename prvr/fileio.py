"""Crash-safe file writes: a temporary file beside the target, fsync, atomic rename, directory fsync."""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_path", "fsync_directory", "file_sha256"]


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
