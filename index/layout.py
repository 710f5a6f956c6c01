"""The index directory: its file names, its database, its active generation.

Layout of an index directory::

    index.db                          SQLite metadata (catalog.py): videos, models, generations (the commit point)
    database.url                      instead of index.db: the SQLAlchemy URL of the metadata (e.g. PostgreSQL)
    models/                           the retrieval and moment checkpoints, copied and named by their sha256
    generations/gen-000001/
        faiss/                        FaissTokenIndex.save (clip.faiss, frame.faiss, videos.npz, faiss_index.json)
        tokens/                       TokenStore (bf16 shards + store.npz)
        refine/                       optional second-tier TokenStore (``build-index --refine-dtype``): finer tokens
                                      of the same videos that re-score the compressed tokens/ store's short list
        manifest.json                 IndexManifest
    .build.lock                       held (an fcntl lock) by the one running builder

Every reader of an index starts the same way: open its database, find the active generation, its directory and its
manifest. :func:`open_active` does that once for all of them (the Retriever, the builder's add / remove / calibrate,
`prvr index`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from prvr.fileio import write_text_atomic
from prvr.index.catalog import Database, IndexGeneration, open_database
from prvr.index.manifest import IndexManifest, load_manifest

__all__ = [
    "DB_NAME",
    "DATABASE_URL_FILE",
    "FAISS_DIR",
    "GENERATIONS_DIR",
    "LOCK_NAME",
    "MODELS_DIR",
    "REFINE_DIR",
    "TOKENS_DIR",
    "ActiveIndex",
    "database_location",
    "find_active",
    "generation_path",
    "is_index_dir",
    "open_active",
    "open_index_database",
    "record_database_url",
]

DB_NAME = "index.db"
DATABASE_URL_FILE = "database.url"  # when present: the SQLAlchemy URL of the index's metadata (else DB_NAME)
GENERATIONS_DIR = "generations"
FAISS_DIR = "faiss"
TOKENS_DIR = "tokens"
REFINE_DIR = "refine"  # the two-tier search's finer store (manifest ``refine``), beside the compressed TOKENS_DIR
MODELS_DIR = "models"  # checkpoints copied into the index, named by content hash
LOCK_NAME = ".build.lock"


def generation_path(index_dir: str | Path, directory_name: str) -> Path:
    """The directory of the generation named ``directory_name`` inside ``index_dir``."""
    return Path(index_dir) / GENERATIONS_DIR / directory_name


# ------------------------------------------------------------------------------------------------------ database


def is_index_dir(index_dir: str | Path) -> bool:
    """Whether ``index_dir`` holds an index's metadata (its SQLite file or the URL of another database)."""
    index_dir = Path(index_dir)
    return (index_dir / DB_NAME).is_file() or (index_dir / DATABASE_URL_FILE).is_file()


def database_location(index_dir: str | Path) -> str | Path:
    """The URL written in ``database.url`` (``${VAR}`` expanded: keep passwords in the environment), else the
    SQLite file ``index.db`` inside the index directory.

    Raises:
        ValueError: when ``database.url`` holds no URL or names an unset variable.
    """
    index_dir = Path(index_dir)
    url_file = index_dir / DATABASE_URL_FILE
    if not url_file.is_file():
        return index_dir / DB_NAME
    url = os.path.expandvars(url_file.read_text(encoding="utf-8").strip())
    if not url or "${" in url:
        raise ValueError(f"{url_file} holds no usable database URL ({url!r}); write one SQLAlchemy URL such as "
                         "postgresql+psycopg://prvr:${PRVR_DB_PASSWORD}@db-host/prvr and export the variables it names")
    return url


def record_database_url(index_dir: str | Path, database_url: str | None) -> None:
    """Write ``database.url`` for a new index; refuse another URL than an existing index's (``None``: nothing to do).

    Raises:
        ValueError: when the index already keeps its metadata elsewhere (another URL, or ``index.db``).
    """
    index_dir = Path(index_dir)
    url_file = index_dir / DATABASE_URL_FILE
    if database_url is None:
        return
    if url_file.is_file():
        recorded = url_file.read_text(encoding="utf-8").strip()
        if recorded != database_url.strip():
            raise ValueError(f"{index_dir} keeps its metadata at {recorded!r} ({url_file}), not {database_url!r}; "
                             "an index cannot move databases: build a new index directory")
        return
    if (index_dir / DB_NAME).is_file():
        raise ValueError(f"{index_dir} already keeps its metadata in {index_dir / DB_NAME}; an index cannot move "
                         "databases: build a new index directory for --database-url")
    write_text_atomic(url_file, database_url.strip() + "\n")


def open_index_database(index_dir: str | Path) -> Database:
    """Open the metadata database of an existing index directory.

    Raises:
        FileNotFoundError: ``index_dir`` is not an index directory.
    """
    index_dir = Path(index_dir)
    if not is_index_dir(index_dir):
        raise FileNotFoundError(f"{index_dir / DB_NAME} not found: {index_dir} is not an index directory; build one "
                                "with `prvr build-index`")
    return open_database(database_location(index_dir))


# ------------------------------------------------------------------------------------------------------ active generation


@dataclass(frozen=True)
class ActiveIndex:
    """The active generation of an index directory, with the open database it was read from.

    A context manager: leaving the block closes the database (or call :meth:`close`; a Retriever keeps it open).

    Attributes:
        db: the index's metadata database (open).
        generation: the active generation's row (detached).
        directory: its directory, ``index_dir/generations/<generation.directory>``.
        manifest: its manifest.
    """

    db: Database
    generation: IndexGeneration
    directory: Path
    manifest: IndexManifest

    def close(self) -> None:
        """Close the database."""
        self.db.close()

    def __enter__(self) -> ActiveIndex:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def find_active(db: Database, index_dir: str | Path) -> ActiveIndex | None:
    """The active generation of ``index_dir`` read from ``db`` (which the caller opened), or ``None`` before the
    first build committed.

    Raises:
        FileNotFoundError: when the active generation's manifest is missing.
        ValueError: when the manifest is corrupted.
    """
    generation = db.active_generation()
    if generation is None:
        return None
    directory = generation_path(index_dir, generation.directory)
    return ActiveIndex(db, generation, directory, load_manifest(directory))


def open_active(index_dir: str | Path) -> ActiveIndex:
    """Open the database of ``index_dir`` and read its active generation; the caller closes it (``with`` or
    :meth:`ActiveIndex.close`).

    Raises:
        FileNotFoundError: when ``index_dir`` is not an index directory or the manifest is missing.
        ValueError: when ``database.url`` or the manifest is unusable.
        RuntimeError: when no generation is active yet (no build finished).
    """
    index_dir = Path(index_dir)
    db = open_index_database(index_dir)
    try:
        active = find_active(db, index_dir)
        if active is None:
            raise RuntimeError(f"{index_dir} has no active index generation (no build finished yet); run "
                               "`prvr build-index` and wait for it to complete")
    except BaseException:
        db.close()
        raise
    return active
