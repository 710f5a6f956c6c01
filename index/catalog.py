"""SQL metadata of the index: videos, embedding models, index generations (the build's commit point), the query log.

Vectors never live in SQL: the FAISS files and the token store hold them, and these tables hold what points at
them. The surrogate ``videos.id`` is the FAISS video id (token id = ``video_id << 8 | token``); it is never reused,
even if a row is ever hard-deleted (``sqlite_autoincrement``). A re-registered deleted video gets a new id, so stale
tombstones of the old id can never hide its new tokens.

Commit point: a build writes and fsyncs its files into a generation directory, then
:meth:`Database.activate_generation` flips the generation to ``active`` in ONE transaction: the previous active one
becomes ``retired`` and the new one's member videos become ``indexed``. A crash before that commit leaves the old
generation active and the half-built one ``building``.

SQLite (default) runs in WAL mode with ``busy_timeout`` and foreign keys on every connection; SQLAlchemy emits the
``BEGIN`` itself (the sqlite3 driver's legacy mode does not, which breaks repeatable reads): write sessions take
``BEGIN IMMEDIATE`` (writers queue on the lock instead of failing to upgrade), read-only sessions and plain
``engine.connect()`` a deferred ``BEGIN`` (a consistent snapshot that never blocks the writer). PostgreSQL (for scale;
tests/test_postgres.py runs the catalog's tests on a real server) gets the same guarantees: read-only sessions run in
``REPEATABLE READ`` (one snapshot; PostgreSQL's default READ COMMITTED takes a new one per statement) and write sessions
queue on one transaction-level advisory lock, as SQLite's single writer lock makes them (two writers registering the
same external id would otherwise both miss it and one would fail on the unique index). Other SQLAlchemy URLs work as
is.
"""

from __future__ import annotations

import enum
import json
import logging
import math
import operator
import os
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    delete,
    event,
    func,
    insert,
    select,
    text,
    update,
)
from sqlalchemy import Enum as SqlEnum
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker
from sqlalchemy.pool import StaticPool
from sqlalchemy.types import TypeDecorator

__all__ = [
    "Base",
    "Database",
    "EmbeddingModel",
    "GenerationStatus",
    "GenerationVideo",
    "IndexGeneration",
    "QueryLog",
    "Video",
    "VideoRecord",
    "VideoStatus",
    "open_database",
]

logger = logging.getLogger(__name__)

BUSY_TIMEOUT_MS = 5000
_CHUNK = 500  # ids per IN (...) list: far below every backend's bound-parameter limit
_BEGIN_OPTION = "prvr_begin"  # execution option read by the "begin" hooks: IMMEDIATE marks a write session
_WRITE_LOCK_KEY = 0x7072_7672  # "prvr": the PostgreSQL advisory lock that write sessions queue on (per database)

_EnumT = TypeVar("_EnumT", bound=enum.Enum)
_T = TypeVar("_T")


# ------------------------------------------------------------------------------------------------------ column types


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every backend (SQLite stores naive text; this re-attaches UTC on read)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: pass an aware one, e.g. datetime.now(timezone.utc)")
        return value.astimezone(timezone.utc)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


# BIGINT ids (room beyond 2**31 videos and tokens), but SQLite only autoincrements a column declared exactly INTEGER PRIMARY KEY (a rowid alias).
_Id = BigInteger().with_variant(Integer(), "sqlite")


class VideoStatus(str, enum.Enum):
    """Pipeline state of a video: ``pending`` when registered, ``indexed`` while a member of the active index
    generation, ``embedded`` when a later generation no longer holds it, ``deleted`` after :meth:`Database.soft_delete`.

    ``failed`` stays a valid value of the column (older databases may hold it); nothing in prvr sets it.
    """

    PENDING = "pending"
    EMBEDDED = "embedded"
    INDEXED = "indexed"
    FAILED = "failed"
    DELETED = "deleted"


class GenerationStatus(str, enum.Enum):
    """Life of an index generation: ``building`` -> ``active`` (exactly one at a time) -> ``retired``."""

    BUILDING = "building"
    ACTIVE = "active"
    RETIRED = "retired"


def _enum_values(enum_class: type[enum.Enum]) -> list[str]:
    return [str(member.value) for member in enum_class]


def _enum_type(enum_class: type[enum.Enum], name: str) -> SqlEnum:
    """A portable enum column: VARCHAR + CHECK holding the lowercase values (no PostgreSQL ENUM type to migrate)."""
    return SqlEnum(
        enum_class,
        name=name,
        native_enum=False,
        create_constraint=True,
        length=16,
        values_callable=_enum_values,
        validate_strings=True,
    )


# ------------------------------------------------------------------------------------------------------ ORM models


class Base(DeclarativeBase):
    """Declarative base of every prvr table."""

    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: UTCDateTime(), dict[str, Any]: JSON()}


class EmbeddingModel(Base):
    """A checkpoint that produced embeddings (name + sha256 identify it; its config travels with it)."""

    __tablename__ = "embedding_models"
    __table_args__ = (UniqueConstraint("name", "checkpoint_sha256", name="uq_embedding_models_name_sha256"),)

    id: Mapped[int] = mapped_column(_Id, primary_key=True)
    name: Mapped[str] = mapped_column(String(255))
    checkpoint_sha256: Mapped[str] = mapped_column(String(64))
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    dim: Mapped[int] = mapped_column(Integer, CheckConstraint("dim > 0", name="ck_embedding_models_dim"))
    created_at: Mapped[datetime] = mapped_column(default=_utcnow)

    def __repr__(self) -> str:
        return (
            f"EmbeddingModel(id={self.id}, name={self.name!r}, sha256={self.checkpoint_sha256[:12]}..., dim={self.dim})"
        )


class Video(Base):
    """One video: its external id, source and timing, and its pipeline status.

    ``external_id`` is unique among live rows (a partial unique index on ``deleted_at IS NULL``); soft-deleted rows
    stay as history and free their external id, and ``id`` is never reused.
    """

    __tablename__ = "videos"
    __table_args__ = (
        Index(
            "uq_videos_live_external_id",
            "external_id",
            unique=True,
            sqlite_where=text("deleted_at IS NULL"),
            postgresql_where=text("deleted_at IS NULL"),
        ),
        Index("ix_videos_external_id", "external_id"),
        Index("ix_videos_status", "status"),
        CheckConstraint("(status = 'deleted') = (deleted_at IS NOT NULL)", name="ck_videos_deleted_at"),
        CheckConstraint("duration_s IS NULL OR duration_s >= 0", name="ck_videos_duration"),
        CheckConstraint("fps IS NULL OR fps > 0", name="ck_videos_fps"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(_Id, primary_key=True, autoincrement=True)
    external_id: Mapped[str] = mapped_column(String(512))
    uri: Mapped[str | None] = mapped_column(Text)
    duration_s: Mapped[float | None] = mapped_column(Float)
    fps: Mapped[float | None] = mapped_column(Float)
    n_frames: Mapped[int | None] = mapped_column(Integer)
    n_clips: Mapped[int | None] = mapped_column(Integer)
    status: Mapped[VideoStatus] = mapped_column(_enum_type(VideoStatus, "video_status"), default=VideoStatus.PENDING)
    failure_reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=_utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=_utcnow, onupdate=_utcnow)
    deleted_at: Mapped[datetime | None] = mapped_column()

    def __repr__(self) -> str:
        return f"Video(id={self.id}, external_id={self.external_id!r}, status={self.status.value})"


class IndexGeneration(Base):
    """One immutable index build in its own directory; the ``active`` row is what searches must load.

    ``factories`` maps an index name (``clip``, ``frame``) to its FAISS factory string, ``params`` holds search
    defaults (nlist, nprobe, k', metric), ``files`` maps a file name inside ``directory`` to ``{"size", "sha256"}``.
    """

    __tablename__ = "index_generations"
    __table_args__ = (
        Index(
            "uq_index_generations_one_active",
            "status",
            unique=True,
            sqlite_where=text("status = 'active'"),
            postgresql_where=text("status = 'active'"),
        ),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(_Id, primary_key=True, autoincrement=True)
    created_at: Mapped[datetime] = mapped_column(default=_utcnow)
    directory: Mapped[str] = mapped_column(String(255), unique=True)
    factories: Mapped[dict[str, Any]] = mapped_column(default=dict)
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    ntotal: Mapped[int] = mapped_column(BigInteger, default=0)
    num_videos: Mapped[int] = mapped_column(Integer, default=0)
    faiss_version: Mapped[str] = mapped_column(String(32))
    model_id: Mapped[int] = mapped_column(_Id, ForeignKey("embedding_models.id"))
    files: Mapped[dict[str, Any]] = mapped_column(default=dict)
    status: Mapped[GenerationStatus] = mapped_column(
        _enum_type(GenerationStatus, "generation_status"), default=GenerationStatus.BUILDING
    )
    activated_at: Mapped[datetime | None] = mapped_column()
    retired_at: Mapped[datetime | None] = mapped_column()

    def __repr__(self) -> str:
        return (
            f"IndexGeneration(id={self.id}, directory={self.directory!r}, status={self.status.value}, "
            f"ntotal={self.ntotal}, num_videos={self.num_videos})"
        )


class GenerationVideo(Base):
    """Membership: the videos an index generation contains (they become ``indexed`` when it is activated)."""

    __tablename__ = "generation_videos"
    __table_args__ = (Index("ix_generation_videos_video_id", "video_id"),)

    generation_id: Mapped[int] = mapped_column(
        _Id, ForeignKey("index_generations.id", ondelete="CASCADE"), primary_key=True
    )
    video_id: Mapped[int] = mapped_column(_Id, ForeignKey("videos.id"), primary_key=True)


class QueryLog(Base):
    """One served query (optional logging; callers keep it off by default)."""

    __tablename__ = "query_log"
    __table_args__ = (Index("ix_query_log_created_at", "created_at"),)

    id: Mapped[int] = mapped_column(_Id, primary_key=True)
    created_at: Mapped[datetime] = mapped_column(default=_utcnow)
    query_text: Mapped[str] = mapped_column(Text)
    k: Mapped[int] = mapped_column(Integer)
    latency_ms: Mapped[float] = mapped_column(Float)
    n_results: Mapped[int] = mapped_column(Integer)
    generation_id: Mapped[int | None] = mapped_column(_Id)  # no FK: generation rows may be dropped, the log stays

    def __repr__(self) -> str:
        return f"QueryLog(id={self.id}, k={self.k}, latency_ms={self.latency_ms:.1f}, query_text={self.query_text!r})"


# ------------------------------------------------------------------------------------------------------ input records


@dataclass(frozen=True)
class VideoRecord:
    """What :meth:`Database.register_videos` needs to know about a video (unknown fields stay ``None``)."""

    external_id: str
    uri: str | None = None
    duration_s: float | None = None
    fps: float | None = None
    n_frames: int | None = None
    n_clips: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.external_id, str) or not self.external_id.strip():
            raise ValueError(f"external_id must be a non-empty string, got {self.external_id!r}")
        if self.uri is not None and (not isinstance(self.uri, str) or not self.uri):
            raise ValueError(f"uri of {self.external_id!r} must be a non-empty string or None, got {self.uri!r}")
        # normalise numpy scalars to Python numbers (the DB drivers cannot bind numpy types)
        for name, minimum, strict in (("duration_s", 0.0, False), ("fps", 0.0, True)):
            value = getattr(self, name)
            if value is None:
                continue
            try:
                number = float(value)
            except (TypeError, ValueError):
                number = math.nan
            if isinstance(value, bool) or not math.isfinite(number) or number < minimum or (strict and number == 0):
                raise ValueError(
                    f"{name} of {self.external_id!r} must be a finite number {'>' if strict else '>='} 0, got {value!r}"
                )
            object.__setattr__(self, name, number)
        for name in ("n_frames", "n_clips"):
            value = getattr(self, name)
            if value is None:
                continue
            object.__setattr__(self, name, _count(value, f"{name} of {self.external_id!r}"))

    @classmethod
    def coerce(cls, record: VideoRecord | Mapping[str, Any]) -> VideoRecord:
        """A :class:`VideoRecord` from itself or from a mapping with the same keys (unknown keys are an error)."""
        if isinstance(record, VideoRecord):
            return record
        if not isinstance(record, Mapping):
            raise ValueError(f"a video record must be a VideoRecord or a mapping, got {type(record).__name__}")
        known = {field.name for field in fields(cls)}
        unknown = sorted(set(record) - known)
        if unknown:
            raise ValueError(f"unknown video record keys {unknown}; allowed: {sorted(known)}")
        if "external_id" not in record:
            raise ValueError(f"video record {dict(record)!r} has no external_id")
        return cls(**record)

    def columns(self) -> dict[str, Any]:
        return {field.name: getattr(self, field.name) for field in fields(self)}


# ------------------------------------------------------------------------------------------------------ small helpers


def _chunks(items: Sequence[_T], size: int = _CHUNK) -> Iterator[Sequence[_T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _as_id(value: object) -> int:
    """An int id from an int or a numpy integer (bools and floats are refused)."""
    if isinstance(value, bool):
        raise ValueError(f"video ids must be integers, got {value!r}")
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise ValueError(f"video ids must be integers, got {value!r} ({type(value).__name__})") from None


def _as_ids(values: Iterable[object]) -> list[int]:
    if isinstance(values, (str, bytes)):
        raise ValueError(f"expected an iterable of integer ids, got the string {values!r}")
    return [_as_id(value) for value in values]


def _count(value: object, name: str, *, minimum: int = 0) -> int:
    """``value`` as an int >= ``minimum`` (numpy integers accepted; bools and floats refused)."""
    try:
        number = None if isinstance(value, bool) else operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        number = None
    if number is None or number < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return number


def _json_dict(value: Mapping[str, Any] | None, name: str) -> dict[str, Any]:
    """A JSON-serialisable mapping as it will read back from the database (tuples become lists)."""
    if value is not None and not isinstance(value, Mapping):
        raise ValueError(f"{name} must be a mapping, got {type(value).__name__}")
    try:
        loaded: dict[str, Any] = json.loads(json.dumps(dict(value or {})))
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name} must be JSON-serialisable: {error}") from None
    return loaded


def _as_enum(enum_class: type[_EnumT], value: _EnumT | str) -> _EnumT:
    try:
        return enum_class(value)
    except ValueError:
        raise ValueError(
            f"unknown {enum_class.__name__} {value!r}; expected one of {_enum_values(enum_class)}"
        ) from None


def _check_files(files: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Validate ``{name: {"size": int >= 0, "sha256": 64 hex chars}}`` and return a plain-dict copy."""
    if not isinstance(files, Mapping):
        raise ValueError(f"files must map a file name to {{'size', 'sha256'}}, got {type(files).__name__}")
    checked: dict[str, dict[str, Any]] = {}
    for name, info in files.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"file names must be non-empty strings, got {name!r}")
        if not isinstance(info, Mapping) or "size" not in info or "sha256" not in info:
            raise ValueError(f"files[{name!r}] must be a mapping with 'size' and 'sha256', got {info!r}")
        size, sha = info["size"], info["sha256"]
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ValueError(f"files[{name!r}]['size'] must be an int >= 0, got {size!r}")
        if not isinstance(sha, str) or len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha.lower()):
            raise ValueError(f"files[{name!r}]['sha256'] must be 64 hex characters, got {sha!r}")
        checked[name] = {**info, "size": size, "sha256": sha.lower()}
    return checked


def _mark_generation_videos(session: Session, generation_id: int, now: datetime) -> None:
    """Inside activation: members of the generation become ``indexed``; other ``indexed`` videos fall back to
    ``embedded`` (they are no longer in the active index). Soft-deleted members stay deleted."""
    members = select(GenerationVideo.video_id).where(GenerationVideo.generation_id == generation_id)
    session.execute(
        update(Video)
        .where(Video.id.in_(members), Video.status != VideoStatus.DELETED)
        .values(status=VideoStatus.INDEXED, failure_reason=None, updated_at=now),
        execution_options={"synchronize_session": False},
    )
    session.execute(
        update(Video)
        .where(Video.status == VideoStatus.INDEXED, Video.id.not_in(members))
        .values(status=VideoStatus.EMBEDDED, updated_at=now),
        execution_options={"synchronize_session": False},
    )


# ------------------------------------------------------------------------------------------------------ database


class Database:
    """An engine plus a session factory, with the typed helpers the index builder, CLI, Retriever and service use.

    Every helper runs in its own transaction and returns plain values or detached ORM rows (loaded attributes stay
    readable after the session closes). Build one with :func:`open_database`.

    Args:
        engine: a SQLAlchemy engine. :func:`open_database` also installs the SQLite connection settings.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sessions = sessionmaker(
            bind=engine.execution_options(**{_BEGIN_OPTION: "IMMEDIATE"}), expire_on_commit=False
        )
        # SQLite's deferred BEGIN already reads one snapshot; server databases need the isolation level for it
        snapshot = engine
        if engine.dialect.name != "sqlite":
            snapshot = engine.execution_options(isolation_level="REPEATABLE READ")
        self._read_sessions = sessionmaker(bind=snapshot, expire_on_commit=False)

    def __repr__(self) -> str:
        return f"Database({self.engine.url.render_as_string(hide_password=True)!r})"

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Dispose of the pooled connections (later calls open new ones; an in-memory database is lost)."""
        self.engine.dispose()

    def create_schema(self) -> None:
        """Create the missing tables and indexes (idempotent; use Alembic migrations to change existing ones)."""
        Base.metadata.create_all(self.engine)

    @contextmanager
    def session(self, *, readonly: bool = False) -> Iterator[Session]:
        """A session in one transaction: committed when the block succeeds, rolled back when it raises.

        Args:
            readonly: open a deferred (snapshot) transaction that never takes the SQLite write lock and is rolled back
                at the end; pending ORM changes in it are an error.

        Returns:
            A context manager yielding the :class:`sqlalchemy.orm.Session`.
        """
        maker = self._read_sessions if readonly else self._sessions
        with maker() as session:
            try:
                yield session
                if readonly:
                    if session.new or session.dirty or session.deleted:
                        raise RuntimeError("changes made in a read-only session; use db.session() to write")
                    session.expunge_all()  # detach first: a rollback would expire the loaded attributes
                    session.rollback()
                else:
                    session.commit()
            except BaseException:
                session.rollback()
                raise

    # -------------------------------------------------------------------------------------------- models

    def register_model(
        self, name: str, checkpoint_sha256: str, *, dim: int, config: Mapping[str, Any] | None = None
    ) -> int:
        """Register an embedding model (idempotent on ``(name, checkpoint_sha256)``).

        Args:
            name: a readable name (preset or run name).
            checkpoint_sha256: sha256 of the checkpoint file, 64 hex characters.
            dim: D, the embedding dimension.
            config: the model config as JSON-able data (stored with the row).

        Returns:
            The model id.

        Raises:
            ValueError: on a bad hash or dim, or when the pair exists with another dim or config.
        """
        sha = checkpoint_sha256.lower() if isinstance(checkpoint_sha256, str) else ""
        if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
            raise ValueError(f"checkpoint_sha256 must be 64 hex characters, got {checkpoint_sha256!r}")
        if not name:
            raise ValueError("model name must be a non-empty string")
        dim = _count(dim, "dim", minimum=1)
        config_dict = _json_dict(config, "model config")  # compared as stored: tuples -> lists
        with self.session() as session:
            existing = session.scalars(
                select(EmbeddingModel).where(EmbeddingModel.name == name, EmbeddingModel.checkpoint_sha256 == sha)
            ).one_or_none()
            if existing is not None:
                if existing.dim != dim or existing.config != config_dict:
                    raise ValueError(
                        f"model {name!r} with checkpoint {sha[:12]}... is already registered (id {existing.id}) with "
                        f"dim {existing.dim} and another config; register the new variant under another name"
                    )
                return existing.id
            model = EmbeddingModel(name=name, checkpoint_sha256=sha, dim=dim, config=config_dict)
            session.add(model)
            session.flush()
            return model.id

    # -------------------------------------------------------------------------------------------- videos

    def register_videos(self, records: Iterable[VideoRecord | Mapping[str, Any]]) -> dict[str, int]:
        """Insert new videos as ``pending``; known (live) external ids keep their id (idempotent).

        Known videos get their non-``None`` metadata (duration, fps, counts, a missing uri) updated. A soft-deleted
        external id is registered again as a new video with a new id.

        Args:
            records: :class:`VideoRecord` s or mappings with its keys.

        Returns:
            ``{external_id: video id}`` in input order (duplicates collapsed).

        Raises:
            ValueError: on invalid records, a repeated external id with different fields in the batch, or an
                external id already registered with a different uri.
        """
        wanted: dict[str, VideoRecord] = {}
        for raw in records:
            record = VideoRecord.coerce(raw)
            previous = wanted.setdefault(record.external_id, record)
            if previous != record:
                raise ValueError(
                    f"external id {record.external_id!r} appears twice in the batch with different fields: "
                    f"{previous} vs {record}"
                )
        if not wanted:
            return {}
        ids: dict[str, int] = {}
        with self.session() as session:
            existing: dict[str, Video] = {}
            for chunk in _chunks(list(wanted)):
                rows = session.scalars(select(Video).where(Video.external_id.in_(chunk), Video.deleted_at.is_(None)))
                existing.update((video.external_id, video) for video in rows)
            new_rows: list[dict[str, Any]] = []
            for external_id, record in wanted.items():
                video = existing.get(external_id)
                if video is None:
                    new_rows.append({**record.columns(), "status": VideoStatus.PENDING})
                    continue
                if record.uri is not None and video.uri is not None and record.uri != video.uri:
                    raise ValueError(
                        f"video {external_id!r} is already registered (id {video.id}) with uri {video.uri!r}, not "
                        f"{record.uri!r}; soft_delete it first to replace it, or use another external id"
                    )
                for name, value in record.columns().items():
                    if name != "external_id" and value is not None and getattr(video, name) != value:
                        setattr(video, name, value)
                ids[external_id] = video.id
            for row_chunk in _chunks(new_rows):
                inserted = session.execute(insert(Video).returning(Video.external_id, Video.id), list(row_chunk))
                ids.update((external_id, video_id) for external_id, video_id in inserted.all())
        if new_rows:
            logger.info("registered %d new videos (%d already known)", len(new_rows), len(wanted) - len(new_rows))
        return {external_id: ids[external_id] for external_id in wanted}

    def _current_statuses(self, session: Session, ids: Sequence[int]) -> dict[int, VideoStatus]:
        statuses: dict[int, VideoStatus] = {}
        for chunk in _chunks(ids):
            statuses.update(session.execute(select(Video.id, Video.status).where(Video.id.in_(chunk))).all())
        missing = [video_id for video_id in ids if video_id not in statuses]
        if missing:
            raise ValueError(f"unknown video ids {missing[:10]}{' ...' if len(missing) > 10 else ''} ({len(missing)})")
        return statuses

    def count_by_status(self) -> dict[VideoStatus, int]:
        """Number of videos per status (every status present, zeros included)."""
        counts = dict.fromkeys(VideoStatus, 0)
        with self.session(readonly=True) as session:
            counts.update(session.execute(select(Video.status, func.count()).group_by(Video.status)).all())
        return counts

    def get_video(self, key: str | int) -> Video | None:
        """One video by external id (the live row, else the most recent deleted one) or by surrogate id.

        Returns:
            The detached :class:`Video`, or ``None`` when there is none.
        """
        with self.session(readonly=True) as session:
            if isinstance(key, str):
                statement = (
                    select(Video)
                    .where(Video.external_id == key)
                    .order_by(Video.deleted_at.is_not(None), Video.id.desc())
                    .limit(1)
                )
                return session.scalars(statement).first()
            return session.get(Video, _as_id(key))

    def external_ids(self, ids: Iterable[int]) -> list[str]:
        """Map surrogate video ids (e.g. from FAISS) to external ids, order and repeats preserved.

        Raises:
            ValueError: on ids that are not in the table.
        """
        id_list = _as_ids(ids)
        unique_ids = list(dict.fromkeys(id_list))
        mapping: dict[int, str] = {}
        with self.session(readonly=True) as session:
            for chunk in _chunks(unique_ids):
                mapping.update(session.execute(select(Video.id, Video.external_id).where(Video.id.in_(chunk))).all())
        missing = [video_id for video_id in unique_ids if video_id not in mapping]
        if missing:
            raise ValueError(
                f"unknown video ids {missing[:10]}{' ...' if len(missing) > 10 else ''}: the index and the database "
                "disagree; point the Retriever at the database its index was built with"
            )
        return [mapping[video_id] for video_id in id_list]

    def video_durations(self, ids: Iterable[int]) -> list[float | None]:
        """Durations in seconds of surrogate video ids (None where unknown), order and repeats preserved.

        Raises:
            ValueError: on ids that are not in the table.
        """
        id_list = _as_ids(ids)
        unique_ids = list(dict.fromkeys(id_list))
        mapping: dict[int, float | None] = {}
        with self.session(readonly=True) as session:
            for chunk in _chunks(unique_ids):
                mapping.update(session.execute(select(Video.id, Video.duration_s).where(Video.id.in_(chunk))).all())
        missing = [video_id for video_id in unique_ids if video_id not in mapping]
        if missing:
            raise ValueError(f"unknown video ids {missing[:10]}: the index and the database disagree")
        return [mapping[video_id] for video_id in id_list]

    def soft_delete(self, external_ids: Iterable[str]) -> list[int]:
        """Mark live videos ``deleted`` (their rows and ids stay; remove them from the index and token store).

        Already deleted external ids are skipped (idempotent).

        Returns:
            The ids newly deleted, in input order.

        Raises:
            ValueError: on external ids that were never registered.
        """
        if isinstance(external_ids, str):
            raise ValueError(f"pass a list of external ids, not the string {external_ids!r}")
        wanted = list(dict.fromkeys(external_ids))
        if not wanted:
            return []
        now = _utcnow()
        with self.session() as session:
            live: dict[str, int] = {}
            known: set[str] = set()
            for chunk in _chunks(wanted):
                rows = session.execute(
                    select(Video.external_id, Video.id, Video.deleted_at).where(Video.external_id.in_(chunk))
                )
                for external_id, video_id, deleted_at in rows:
                    known.add(external_id)
                    if deleted_at is None:
                        live[external_id] = video_id
            unknown = [external_id for external_id in wanted if external_id not in known]
            if unknown:
                raise ValueError(f"unknown external ids {unknown[:10]} ({len(unknown)}); nothing was deleted")
            deleted = [live[external_id] for external_id in wanted if external_id in live]
            for id_chunk in _chunks(deleted):
                session.execute(
                    update(Video)
                    .where(Video.id.in_(id_chunk))
                    .values(status=VideoStatus.DELETED, deleted_at=now, failure_reason=None),
                    execution_options={"synchronize_session": False},
                )
        logger.info("soft-deleted %d videos", len(deleted))
        return deleted

    # -------------------------------------------------------------------------------------------- generations

    def begin_generation(
        self,
        *,
        model_id: int,
        factories: Mapping[str, str],
        faiss_version: str,
        directory: str | None = None,
        params: Mapping[str, Any] | None = None,
        video_ids: Iterable[int] = (),
    ) -> int:
        """Start an index generation (status ``building``); it is not searched until activated.

        Args:
            model_id: the embedding model whose tokens the index holds.
            factories: index name -> FAISS factory string, e.g. ``{"clip": "IDMap2,Flat"}``.
            faiss_version: ``faiss.__version__`` of the builder.
            directory: the generation's directory name, unique; default ``gen-{id:06d}``.
            params: search defaults to record (nlist, nprobe, k', metric, ...).
            video_ids: its member videos.

        Returns:
            The generation id.

        Raises:
            ValueError: on an unknown model or video, an empty factory map, or a directory name in use.
        """
        if not factories or not all(isinstance(k, str) and isinstance(v, str) and v for k, v in factories.items()):
            raise ValueError(f"factories must map index names to FAISS factory strings, got {dict(factories)!r}")
        if not faiss_version:
            raise ValueError("faiss_version must be a non-empty string (faiss.__version__)")
        if directory is not None and (
            not isinstance(directory, str)
            or not directory
            or directory in (".", "..")
            or any(c in directory for c in "/\\")
        ):
            raise ValueError(f"directory must be a plain directory name, got {directory!r}")
        factories_dict, params_dict = _json_dict(factories, "factories"), _json_dict(params, "params")
        members = list(dict.fromkeys(_as_ids(video_ids)))
        with self.session() as session:
            if session.get(EmbeddingModel, _as_id(model_id)) is None:
                raise ValueError(f"unknown embedding model id {model_id}; register it with register_model() first")
            if (
                directory is not None
                and session.scalars(select(IndexGeneration.id).where(IndexGeneration.directory == directory)).first()
                is not None
            ):
                raise ValueError(f"index generation directory {directory!r} is already taken; pick another name")
            generation = IndexGeneration(
                directory=directory or f".unnamed-{uuid.uuid4().hex}",
                factories=factories_dict,
                params=params_dict,
                faiss_version=faiss_version,
                model_id=_as_id(model_id),
                status=GenerationStatus.BUILDING,
            )
            session.add(generation)
            session.flush()
            if directory is None:
                generation.directory = f"gen-{generation.id:06d}"
            self._add_members(session, generation.id, members)
            generation_id = generation.id
        logger.info("began index generation %d (%s)", generation_id, directory or f"gen-{generation_id:06d}")
        return generation_id

    def _add_members(self, session: Session, generation_id: int, video_ids: Sequence[int]) -> None:
        if not video_ids:
            return
        self._current_statuses(session, video_ids)
        already: set[int] = set()
        for chunk in _chunks(video_ids):
            already.update(
                session.scalars(
                    select(GenerationVideo.video_id).where(
                        GenerationVideo.generation_id == generation_id, GenerationVideo.video_id.in_(chunk)
                    )
                )
            )
        rows = [{"generation_id": generation_id, "video_id": vid} for vid in video_ids if vid not in already]
        for row_chunk in _chunks(rows):
            session.execute(insert(GenerationVideo), list(row_chunk))

    def generation_video_ids(self, generation_id: int) -> list[int]:
        """Member video ids of a generation, ascending."""
        with self.session(readonly=True) as session:
            self._generation(session, generation_id)
            return list(
                session.scalars(
                    select(GenerationVideo.video_id)
                    .where(GenerationVideo.generation_id == _as_id(generation_id))
                    .order_by(GenerationVideo.video_id)
                )
            )

    @staticmethod
    def _generation(session: Session, generation_id: int) -> IndexGeneration:
        generation = session.get(IndexGeneration, _as_id(generation_id))
        if generation is None:
            raise ValueError(f"unknown index generation id {generation_id}; see Database.generations()")
        return generation

    def activate_generation(
        self, generation_id: int, *, ntotal: int | None = None, files: Mapping[str, Any] | None = None
    ) -> IndexGeneration:
        """Commit a build: in ONE transaction the active generation (if any) is retired, this one becomes active
        with its final metadata, its member videos become ``indexed`` and other ``indexed`` videos ``embedded``.

        Call it only after the generation's files are written, fsynced and renamed into place. Re-activating a
        retired generation is the rollback path; re-activating the active one refreshes its video statuses.

        Args:
            generation_id: the generation to activate.
            ntotal: total token count in its FAISS indexes (kept when ``None``).
            files: ``{file name: {"size": bytes, "sha256": hex}}`` of its files (kept when ``None``).

        Returns:
            The activated generation (detached).

        Raises:
            ValueError: on an unknown generation id or bad metadata. Any error rolls everything back.
        """
        checked_files = _check_files(files) if files is not None else None
        ntotal = None if ntotal is None else _count(ntotal, "ntotal")
        now = _utcnow()
        with self.session() as session:
            generation = self._generation(session, generation_id)
            num_videos = session.scalar(
                select(func.count()).select_from(GenerationVideo).where(GenerationVideo.generation_id == generation.id)
            )
            session.execute(
                update(IndexGeneration)
                .where(IndexGeneration.status == GenerationStatus.ACTIVE, IndexGeneration.id != generation.id)
                .values(status=GenerationStatus.RETIRED, retired_at=now),
                execution_options={"synchronize_session": False},
            )
            if generation.status is not GenerationStatus.ACTIVE:
                generation.status = GenerationStatus.ACTIVE
                generation.activated_at = now
                generation.retired_at = None
            generation.num_videos = int(num_videos or 0)
            if ntotal is not None:
                generation.ntotal = ntotal
            if checked_files is not None:
                generation.files = checked_files
            session.flush()
            _mark_generation_videos(session, generation.id, now)
        logger.info("activated index generation %s", generation)
        return generation

    def active_generation(self) -> IndexGeneration | None:
        """The generation searches must load, or ``None`` before the first build committed."""
        with self.session(readonly=True) as session:
            return session.scalars(
                select(IndexGeneration).where(IndexGeneration.status == GenerationStatus.ACTIVE)
            ).one_or_none()

    def get_generation(self, generation_id: int) -> IndexGeneration | None:
        """The generation with this id, or ``None``."""
        with self.session(readonly=True) as session:
            return session.get(IndexGeneration, _as_id(generation_id))

    def generations(self, status: GenerationStatus | str | None = None) -> list[IndexGeneration]:
        """All generations (or those with ``status``), by ascending id."""
        statement = select(IndexGeneration).order_by(IndexGeneration.id)
        if status is not None:
            statement = statement.where(IndexGeneration.status == _as_enum(GenerationStatus, status))
        with self.session(readonly=True) as session:
            return list(session.scalars(statement))

    def abandon_generation(self, generation_id: int) -> str:
        """Drop a ``building`` (e.g. crashed) or ``retired`` generation's rows.

        Returns:
            Its directory name, for the caller to delete.

        Raises:
            ValueError: on an unknown or the active generation.
        """
        with self.session() as session:
            generation = self._generation(session, generation_id)
            if generation.status is GenerationStatus.ACTIVE:
                raise ValueError(
                    f"index generation {generation.id} is active; activate another generation before dropping it"
                )
            directory = generation.directory
            session.execute(delete(GenerationVideo).where(GenerationVideo.generation_id == generation.id))
            session.delete(generation)
        logger.info("abandoned index generation %d (%s)", generation_id, directory)
        return directory

    # -------------------------------------------------------------------------------------------- query log

    def log_query(
        self, query_text: str, *, k: int, latency_ms: float, n_results: int, generation_id: int | None = None
    ) -> int:
        """Append one served query to the log.

        Args:
            query_text: the query as typed.
            k: results asked for.
            latency_ms: end-to-end latency in milliseconds.
            n_results: results returned.
            generation_id: the index generation that served it.

        Returns:
            The log row id.
        """
        k, n_results = _count(k, "k"), _count(n_results, "n_results")
        try:
            latency = float(latency_ms)
        except (TypeError, ValueError):
            latency = math.nan
        if not math.isfinite(latency) or latency < 0:
            raise ValueError(f"latency_ms must be a finite number >= 0, got {latency_ms!r}")
        row = QueryLog(
            query_text=str(query_text),
            k=k,
            latency_ms=latency,
            n_results=n_results,
            generation_id=None if generation_id is None else _as_id(generation_id),
        )
        with self.session() as session:
            session.add(row)
            session.flush()
            return row.id

# ------------------------------------------------------------------------------------------------------ engines


def _sqlite_on_connect(dbapi_connection: Any, connection_record: Any) -> None:
    """Per-connection SQLite settings; SQLAlchemy emits BEGIN itself (see :func:`_sqlite_on_begin`)."""
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
    finally:
        cursor.close()


def _sqlite_on_begin(connection: Connection) -> None:
    """Emit BEGIN: IMMEDIATE for :meth:`Database.session` writers, DEFERRED for everything else."""
    mode = connection.get_execution_options().get(_BEGIN_OPTION, "DEFERRED")
    connection.exec_driver_sql(f"BEGIN {mode}")


def _postgresql_on_begin(connection: Connection) -> None:
    """Write sessions (:meth:`Database.session`) take the advisory write lock first, waiting at most the busy
    timeout; the lock is released by their COMMIT or ROLLBACK."""
    if connection.get_execution_options().get(_BEGIN_OPTION) == "IMMEDIATE":
        connection.exec_driver_sql(f"SET LOCAL lock_timeout = {BUSY_TIMEOUT_MS}")
        connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_WRITE_LOCK_KEY})")


def _resolve_url(url_or_path: str | os.PathLike[str]) -> URL:
    if not isinstance(url_or_path, (str, os.PathLike)):
        raise ValueError(f"expected a database URL or a file path, got {type(url_or_path).__name__}")
    raw = os.fspath(url_or_path)
    if isinstance(url_or_path, str):
        if not raw.strip():
            raise ValueError("empty database location: pass a file path (SQLite) or a SQLAlchemy URL")
        if "://" in raw:
            try:
                return make_url(raw)
            except ArgumentError as error:
                raise ValueError(f"cannot parse database URL {raw!r}: {error}") from None
        if raw == ":memory:":
            return URL.create("sqlite+pysqlite", database=":memory:")
    path = Path(raw).expanduser().absolute()
    if path.is_dir():
        raise ValueError(f"{path} is a directory; pass a database file path such as {path / 'prvr.sqlite'}")
    return URL.create("sqlite+pysqlite", database=str(path))


def open_database(url_or_path: str | os.PathLike[str], *, echo: bool = False) -> Database:
    """Open (without creating tables) the metadata database.

    Args:
        url_or_path: a file path (a SQLite file; its parent directory is created), ``":memory:"``, or any SQLAlchemy
            URL (``sqlite:///x.db``, ``postgresql+psycopg://user@host/db``, ...).
        echo: log every SQL statement.

    Returns:
        A :class:`Database`; call :meth:`Database.create_schema` once on a new database.
    """
    url = _resolve_url(url_or_path)
    if url.get_backend_name() != "sqlite":
        try:
            server_engine = create_engine(url, echo=echo, pool_pre_ping=True)
        except (NoSuchModuleError, ImportError) as error:
            raise ValueError(
                f"cannot open {url.render_as_string(hide_password=True)!r}: {error}; install its driver (e.g. "
                "pip install 'psycopg[binary]' for postgresql+psycopg://) or check the URL scheme"
            ) from None
        if server_engine.dialect.name == "postgresql":
            event.listen(server_engine, "begin", _postgresql_on_begin)
        return Database(server_engine)
    database = url.database or ""
    in_memory = database in ("", ":memory:") or url.query.get("mode") == "memory"
    if in_memory:
        # one shared connection, so every session sees the same in-memory database (single-threaded use only)
        engine = create_engine(url, echo=echo, poolclass=StaticPool, connect_args={"check_same_thread": False})
    else:
        if not database.startswith("file:"):
            Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, echo=echo)
    hooks: list[tuple[str, Callable[..., None]]] = [("connect", _sqlite_on_connect), ("begin", _sqlite_on_begin)]
    for name, hook in hooks:
        event.listen(engine, name, hook)
    return Database(engine)
