"""SQL metadata: schema, SQLite settings, video registry, id stability, generations and the video statuses they
set, the query log, WAL concurrency."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import delete, func, inspect, select, text
from sqlalchemy.exc import DatabaseError, IntegrityError
from sqlalchemy.orm import Session

import prvr.index.catalog as db_module
from prvr.index.catalog import (
    Database,
    GenerationStatus,
    IndexGeneration,
    QueryLog,
    Video,
    VideoRecord,
    VideoStatus,
    open_database,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
SHA_A = "a" * 64
SHA_B = "0123456789abcdef" * 4


@pytest.fixture
def db() -> Iterator[Database]:
    database = open_database(":memory:")
    database.create_schema()
    yield database
    database.close()


@pytest.fixture
def file_db(tmp_path: Path) -> Iterator[Database]:
    database = open_database(tmp_path / "meta" / "prvr.sqlite")
    database.create_schema()
    yield database
    database.close()


def _register(db: Database, names: list[str]) -> dict[str, int]:
    return db.register_videos([VideoRecord(name, uri=f"/videos/{name}.mp4") for name in names])


def _model(db: Database) -> int:
    return db.register_model("tiny", SHA_A, dim=8, config={"preset": "tiny"})


def _generation(db: Database, model_id: int, video_ids, directory: str | None = None) -> int:
    return db.begin_generation(
        model_id=model_id,
        factories={"clip": "IDMap2,Flat", "frame": "IDMap2,Flat"},
        faiss_version="1.15.1",
        directory=directory,
        params={"nprobe": 1},
        video_ids=video_ids,
    )


def _statuses(db: Database) -> dict[str, str]:
    with db.session(readonly=True) as session:
        return {v.external_id: v.status.value for v in session.scalars(select(Video).where(Video.deleted_at.is_(None)))}


def _count_videos(db: Database) -> int:
    with db.session(readonly=True) as session:
        return int(session.scalar(select(func.count()).select_from(Video)) or 0)


# ------------------------------------------------------------------------------------------------------ schema


def test_schema_creation_is_idempotent(db: Database) -> None:
    db.create_schema()
    tables = set(inspect(db.engine).get_table_names())
    assert {
        "embedding_models",
        "videos",
        "index_generations",
        "generation_videos",
        "query_log",
    } <= tables
    with db.engine.connect() as connection:
        indexes = {row[0] for row in connection.exec_driver_sql("SELECT name FROM sqlite_master WHERE type='index'")}
        videos_sql = connection.exec_driver_sql("SELECT sql FROM sqlite_master WHERE name='videos'").scalar_one()
    assert {"uq_videos_live_external_id", "uq_index_generations_one_active", "ix_videos_status"} <= indexes
    assert "AUTOINCREMENT" in videos_sql


def test_a_database_with_the_old_token_blocks_table_still_opens(tmp_path: Path) -> None:
    """Index databases written while the catalog had a token_blocks table keep working (the ORM ignores it)."""
    path = tmp_path / "index.db"
    with open_database(path) as old:
        old.create_schema()
        with old.engine.begin() as connection:
            connection.exec_driver_sql(
                "CREATE TABLE token_blocks (video_id INTEGER NOT NULL REFERENCES videos (id) ON DELETE CASCADE, "
                "kind VARCHAR(16) NOT NULL, n_tokens INTEGER NOT NULL, shard INTEGER NOT NULL, "
                "row_offset BIGINT NOT NULL, dtype VARCHAR(16) NOT NULL, sha256 VARCHAR(64), "
                "PRIMARY KEY (video_id, kind))"
            )
        ids = _register(old, ["a"])
        with old.engine.begin() as connection:
            connection.exec_driver_sql(
                f"INSERT INTO token_blocks VALUES ({ids['a']}, 'clip', 32, 0, 0, 'bfloat16', NULL)"
            )
    with open_database(path) as reopened:
        reopened.create_schema()
        assert _register(reopened, ["a", "b"])["a"] == ids["a"]
        assert reopened.soft_delete(["a"]) == [ids["a"]]
        assert "token_blocks" in inspect(reopened.engine).get_table_names()


def test_file_database_settings_on_every_connection(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "prvr.sqlite"
    database = open_database(str(path))
    database.create_schema()
    assert path.is_file()
    with database.engine.connect() as first, database.engine.connect() as second:  # two pooled connections
        for connection in (first, second):
            assert connection.exec_driver_sql("PRAGMA journal_mode").scalar_one() == "wal"
            assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar_one() == 1
            assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar_one() == db_module.BUSY_TIMEOUT_MS
    with pytest.raises(IntegrityError), database.session() as session:  # foreign keys are enforced
        session.add(IndexGeneration(directory="orphan", faiss_version="1.15.1", model_id=12345))
    database.close()
    reopened = open_database(f"sqlite:///{path}")
    assert reopened.register_videos([VideoRecord("x")]) == {"x": 1}
    reopened.close()


def test_open_database_rejects_bad_locations(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="directory"):
        open_database(tmp_path)
    with pytest.raises(ValueError, match="empty"):
        open_database("  ")
    with pytest.raises(ValueError, match="driver"):
        open_database("nosuchdialect://host/db")
    memory = open_database("sqlite://")
    memory.create_schema()
    assert memory.active_generation() is None


def test_session_commits_or_rolls_back(db: Database) -> None:
    with db.session() as session:
        session.add(Video(external_id="kept", status=VideoStatus.PENDING))
    with pytest.raises(RuntimeError, match="boom"), db.session() as session:
        session.add(Video(external_id="dropped", status=VideoStatus.PENDING))
        session.flush()
        raise RuntimeError("boom")
    assert db.get_video("kept") is not None and db.get_video("dropped") is None
    with pytest.raises(RuntimeError, match="read-only"), db.session(readonly=True) as session:
        session.add(Video(external_id="nope", status=VideoStatus.PENDING))
    assert db.get_video("nope") is None


# ------------------------------------------------------------------------------------------------------ registry


def test_register_is_idempotent_and_ordered(db: Database) -> None:
    first = db.register_videos([{"external_id": "b", "uri": "/b.mp4"}, VideoRecord("a", "/a.mp4", duration_s=3.0)])
    assert list(first) == ["b", "a"] and sorted(first.values()) == [1, 2]
    again = db.register_videos([VideoRecord("a", "/a.mp4", duration_s=3.0), VideoRecord("b", "/b.mp4")])
    assert again == {"a": first["a"], "b": first["b"]}
    assert _count_videos(db) == 2
    # duplicates in one batch collapse; metadata fills in; new ones are appended
    more = db.register_videos([VideoRecord("c"), VideoRecord("c"), VideoRecord("b", fps=2.0, n_clips=32)])
    assert more == {"c": 3, "b": first["b"]}
    video_b = db.get_video("b")
    assert video_b is not None and video_b.fps == 2.0 and video_b.n_clips == 32 and video_b.uri == "/b.mp4"
    assert video_b.status is VideoStatus.PENDING
    assert video_b.created_at.tzinfo is not None and video_b.created_at.utcoffset() == timezone.utc.utcoffset(None)
    assert db.register_videos([]) == {}


def test_register_rejects_bad_input_atomically(db: Database) -> None:
    _register(db, ["a"])
    with pytest.raises(ValueError, match="already registered"):
        db.register_videos([VideoRecord("new"), VideoRecord("a", uri="/somewhere/else.mp4")])
    assert db.get_video("new") is None, "a rejected batch must insert nothing"
    with pytest.raises(ValueError, match="twice"):
        db.register_videos([VideoRecord("x", uri="/1"), VideoRecord("x", uri="/2")])
    with pytest.raises(ValueError, match="unknown video record keys"):
        db.register_videos([{"external_id": "y", "url": "/typo"}])
    with pytest.raises(ValueError, match="fps"):
        db.register_videos([VideoRecord("z", fps=0.0)])
    with pytest.raises(ValueError, match="external_id"):
        db.register_videos([VideoRecord("")])
    with pytest.raises(ValueError, match="duration_s"):
        VideoRecord("nan", duration_s=float("nan"))
    with pytest.raises(ValueError, match="n_frames"):
        VideoRecord("half", n_frames=1.5)  # type: ignore[arg-type]
    assert _count_videos(db) == 1
    numpy_ids = db.register_videos([VideoRecord("np", duration_s=np.float32(2.5), n_frames=np.int64(7))])  # type: ignore[arg-type]
    video = db.get_video(numpy_ids["np"])
    assert video is not None and (video.duration_s, video.n_frames) == (2.5, 7) and type(video.n_frames) is int


def test_ids_are_never_reused(db: Database) -> None:
    """Random registers, soft deletes and raw hard deletes: every new id exceeds every id ever issued."""
    rng = random.Random(0)
    issued: set[int] = set()
    live: dict[str, int] = {}
    counter = 0
    for _ in range(60):
        op = rng.random()
        if op < 0.5 or not live:
            names = [f"v{counter + i}" for i in range(rng.randint(1, 3))]
            counter += len(names)
            ids = _register(db, names)
            for video_id in ids.values():
                assert video_id not in issued and video_id > max(issued, default=0)
                issued.add(video_id)
            live.update(ids)
        elif op < 0.75:
            name = max(live, key=live.__getitem__)  # the highest id: the one plain SQLite rowids would reuse
            db.soft_delete([name])
            del live[name]
        else:
            name = max(live, key=live.__getitem__)
            with db.session() as session:
                session.execute(delete(Video).where(Video.id == live.pop(name)))
    assert len(issued) > 20


def test_soft_delete_keeps_history_and_frees_external_id(db: Database) -> None:
    ids = _register(db, ["a", "b"])
    assert db.soft_delete(["a", "a"]) == [ids["a"]]
    assert db.soft_delete(["a"]) == []  # idempotent
    deleted = db.get_video(ids["a"])
    assert deleted is not None and deleted.status is VideoStatus.DELETED and deleted.deleted_at is not None
    with pytest.raises(ValueError, match="unknown external ids"):
        db.soft_delete(["b", "ghost"])
    assert _statuses(db)["b"] == "pending", "a rejected delete must change nothing"
    with pytest.raises(ValueError, match="list of external ids"):
        db.soft_delete("b")
    again = db.register_videos([VideoRecord("a", uri="/other.mp4")])  # a new video under the freed external id
    assert again["a"] > ids["b"]
    live = db.get_video("a")
    assert live is not None and live.id == again["a"] and live.status is VideoStatus.PENDING
    assert db.external_ids([ids["a"], again["a"]]) == ["a", "a"]
    assert db.count_by_status()[VideoStatus.DELETED] == 1


def test_external_ids_preserve_order(db: Database) -> None:
    names = [f"video-{i:03d}" for i in range(1200)]  # more than one IN (...) chunk
    ids = _register(db, names)
    rng = np.random.default_rng(0)
    picks = rng.choice(np.array(list(ids.values()), dtype=np.int64), size=2000)  # (2000,) with repeats
    by_id = {video_id: name for name, video_id in ids.items()}
    assert db.external_ids(picks) == [by_id[int(i)] for i in picks]
    assert db.external_ids([]) == []
    with pytest.raises(ValueError, match="unknown video ids"):
        db.external_ids([ids["video-000"], 99_999])
    with pytest.raises(ValueError, match="integers"):
        db.external_ids([True])
    with pytest.raises(ValueError, match="integers"):
        db.external_ids([1.0])  # type: ignore[list-item]


def test_get_video_by_either_key(db: Database) -> None:
    ids = _register(db, ["a"])
    by_name, by_id = db.get_video("a"), db.get_video(np.int64(ids["a"]))  # type: ignore[arg-type]
    assert by_name is not None and by_id is not None and by_name.id == by_id.id == ids["a"]
    assert db.get_video("missing") is None and db.get_video(42) is None
    with pytest.raises(ValueError, match="unknown GenerationStatus"):
        db.generations("done")


# ------------------------------------------------------------------------------------------------------ models


def test_register_model_is_idempotent(db: Database) -> None:
    model_id = _model(db)
    assert _model(db) == model_id
    with_tuple = db.register_model("tuple", SHA_A, dim=4, config={"sizes": (1, 2)})
    assert db.register_model("tuple", SHA_A, dim=4, config={"sizes": [1, 2]}) == with_tuple  # compared as stored
    with pytest.raises(ValueError, match="JSON"):
        db.register_model("bad", SHA_A, dim=4, config={"x": object()})
    assert db.register_model("tiny", SHA_B, dim=8) != model_id
    with pytest.raises(ValueError, match="already registered"):
        db.register_model("tiny", SHA_A, dim=16, config={"preset": "tiny"})
    with pytest.raises(ValueError, match="64 hex"):
        db.register_model("tiny", "xyz", dim=8)


# ------------------------------------------------------------------------------------------------------ generations


def test_generation_lifecycle(db: Database) -> None:
    model_id = _model(db)
    ids = _register(db, ["a", "b", "c", "d"])
    first = _generation(db, model_id, [ids["a"], ids["b"], ids["c"], ids["c"]])
    assert db.active_generation() is None, "a building generation is not searched"
    assert db.get_generation(first).status is GenerationStatus.BUILDING  # type: ignore[union-attr]
    files = {"clip/index.faiss": {"size": 1024, "sha256": SHA_B.upper()}}
    activated = db.activate_generation(first, ntotal=96, files=files)
    assert activated.status is GenerationStatus.ACTIVE and activated.directory == f"gen-{first:06d}"
    active = db.active_generation()
    assert active is not None and active.id == first and active.num_videos == 3 and active.ntotal == 96
    assert active.files["clip/index.faiss"]["sha256"] == SHA_B and active.activated_at is not None
    assert active.factories == {"clip": "IDMap2,Flat", "frame": "IDMap2,Flat"} and active.params == {"nprobe": 1}
    assert _statuses(db) == {"a": "indexed", "b": "indexed", "c": "indexed", "d": "pending"}

    # the next build drops "a" (deleted) and "b" (say it failed re-embedding), adds "d"
    db.soft_delete(["a"])
    second = _generation(db, model_id, [ids["a"], ids["c"], ids["d"]], directory="nightly-2")
    db.activate_generation(second, ntotal=64)
    assert [g.status for g in db.generations()] == [GenerationStatus.RETIRED, GenerationStatus.ACTIVE]
    assert db.generations("active")[0].directory == "nightly-2"
    assert _statuses(db) == {"b": "embedded", "c": "indexed", "d": "indexed"}
    assert db.get_video(ids["a"]).status is VideoStatus.DELETED  # type: ignore[union-attr]
    assert db.generation_video_ids(second) == sorted([ids["a"], ids["c"], ids["d"]])

    # rollback: re-activating the retired generation
    db.activate_generation(first)
    assert db.active_generation().id == first  # type: ignore[union-attr]
    assert db.get_generation(second).status is GenerationStatus.RETIRED  # type: ignore[union-attr]
    assert _statuses(db) == {"b": "indexed", "c": "indexed", "d": "embedded"}
    db.activate_generation(first)  # re-activating the active one is harmless
    assert len(db.generations("active")) == 1


def test_only_one_active_generation_in_the_schema(db: Database) -> None:
    model_id = _model(db)
    first, second = _generation(db, model_id, []), _generation(db, model_id, [])
    db.activate_generation(first)
    with pytest.raises(IntegrityError), db.session() as session:
        session.execute(text("UPDATE index_generations SET status = 'active' WHERE id = :id"), {"id": second})
    assert [g.id for g in db.generations(GenerationStatus.ACTIVE)] == [first]


def test_generation_bad_input(db: Database) -> None:
    model_id = _model(db)
    ids = _register(db, ["a"])
    with pytest.raises(ValueError, match="unknown index generation"):
        db.activate_generation(404)
    with pytest.raises(ValueError, match="unknown embedding model"):
        _generation(db, 404, [])
    with pytest.raises(ValueError, match="unknown video ids"):
        _generation(db, model_id, [ids["a"], 404])
    assert db.generations() == [], "a rejected begin must leave no row"
    _generation(db, model_id, [], directory="gen-x")
    with pytest.raises(ValueError, match="already taken"):
        _generation(db, model_id, [], directory="gen-x")
    with pytest.raises(ValueError, match="plain directory name"):
        _generation(db, model_id, [], directory="../escape")
    with pytest.raises(ValueError, match="factory"):
        db.begin_generation(model_id=model_id, factories={}, faiss_version="1.15.1")
    building = db.generations()[0].id
    with pytest.raises(ValueError, match="sha256"):
        db.activate_generation(building, files={"index.faiss": {"size": 1, "sha256": "nope"}})
    with pytest.raises(ValueError, match="size"):
        db.activate_generation(building, files={"index.faiss": {"sha256": SHA_A}})
    with pytest.raises(ValueError, match="ntotal"):
        db.activate_generation(building, ntotal=-1)
    assert db.active_generation() is None


def test_activation_is_atomic_when_a_step_fails(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    model_id = _model(db)
    ids = _register(db, ["a", "b"])
    old = _generation(db, model_id, [ids["a"]])
    db.activate_generation(old, ntotal=32)
    new = _generation(db, model_id, [ids["b"]])
    before = _statuses(db)
    seen: dict[str, object] = {}
    original = db_module._mark_generation_videos

    def failing_mark(session: Session, generation_id: int, now: datetime) -> None:
        original(session, generation_id, now)  # the videos really move inside the transaction ...
        seen["old"] = session.scalar(select(IndexGeneration.status).where(IndexGeneration.id == old))
        seen["new"] = session.scalar(select(IndexGeneration.status).where(IndexGeneration.id == new))
        seen["b"] = session.scalar(select(Video.status).where(Video.id == ids["b"]))
        raise OSError("disk vanished")  # ... and then the commit never happens

    monkeypatch.setattr(db_module, "_mark_generation_videos", failing_mark)
    with pytest.raises(OSError, match="disk vanished"):
        db.activate_generation(new, ntotal=64, files={"index.faiss": {"size": 1, "sha256": SHA_A}})
    assert seen == {"old": GenerationStatus.RETIRED, "new": GenerationStatus.ACTIVE, "b": VideoStatus.INDEXED}
    active = db.active_generation()
    assert active is not None and active.id == old and active.ntotal == 32
    failed = db.get_generation(new)
    assert failed is not None and failed.status is GenerationStatus.BUILDING and failed.files == {}
    assert failed.activated_at is None
    assert _statuses(db) == before == {"a": "indexed", "b": "pending"}
    monkeypatch.undo()
    db.activate_generation(new)
    assert db.active_generation().id == new  # type: ignore[union-attr]
    assert _statuses(db) == {"a": "embedded", "b": "indexed"}


def test_activation_is_atomic_when_the_database_refuses(file_db: Database) -> None:
    """A failure raised by SQLite itself (a trigger) in the last statement rolls back the whole activation."""
    model_id = _model(file_db)
    ids = _register(file_db, ["a", "b"])
    old = _generation(file_db, model_id, [ids["a"]])
    file_db.activate_generation(old)
    new = _generation(file_db, model_id, [ids["a"], ids["b"]])
    with file_db.session() as session:
        session.execute(
            text(
                "CREATE TRIGGER refuse_b BEFORE UPDATE OF status ON videos "
                f"WHEN NEW.id = {ids['b']} AND NEW.status = 'indexed' BEGIN SELECT RAISE(ABORT, 'refused'); END"
            )
        )
    with pytest.raises(DatabaseError, match="refused"):
        file_db.activate_generation(new)
    assert file_db.active_generation().id == old  # type: ignore[union-attr]
    assert file_db.get_generation(new).status is GenerationStatus.BUILDING  # type: ignore[union-attr]
    assert _statuses(file_db) == {"a": "indexed", "b": "pending"}


def test_abandon_generation(db: Database) -> None:
    model_id = _model(db)
    ids = _register(db, ["a"])
    generations = []
    for _ in range(3):
        generations.append(_generation(db, model_id, [ids["a"]]))
        db.activate_generation(generations[-1])
    building = _generation(db, model_id, [ids["a"]], directory="in-progress")
    db.activate_generation(generations[1])  # roll back: re-activate a retired generation
    assert {g.id: g.status for g in db.generations()} == {
        generations[0]: GenerationStatus.RETIRED,
        generations[1]: GenerationStatus.ACTIVE,
        generations[2]: GenerationStatus.RETIRED,
        building: GenerationStatus.BUILDING,
    }
    assert db.abandon_generation(building) == "in-progress"
    assert db.abandon_generation(generations[0]) == f"gen-{generations[0]:06d}"
    with pytest.raises(ValueError, match="unknown index generation"):
        db.generation_video_ids(generations[0])
    with pytest.raises(ValueError, match="is active"):
        db.abandon_generation(generations[1])
    assert [g.id for g in db.generations()] == [generations[1], generations[2]]
    assert db.active_generation().id == generations[1]  # type: ignore[union-attr]
    assert _generation(db, model_id, []) > building, "generation ids (and so directory names) are never reused"


# ------------------------------------------------------------------------------------------------------ query log


def test_query_log(db: Database) -> None:
    first = db.log_query("a person opens a door", k=10, latency_ms=12.5, n_results=10)
    second = db.log_query("a dog runs", k=5, latency_ms=3.0, n_results=2, generation_id=7)
    assert second > first
    with db.session(readonly=True) as session:
        recent = list(session.scalars(select(QueryLog).order_by(QueryLog.id.desc())))
    assert [q.query_text for q in recent] == ["a dog runs", "a person opens a door"]
    assert (recent[0].k, recent[0].n_results, recent[0].latency_ms, recent[0].generation_id) == (5, 2, 3.0, 7)
    assert recent[0].created_at.tzinfo is not None and recent[0].id == second
    with pytest.raises(ValueError, match="latency_ms"):
        db.log_query("x", k=1, latency_ms=-1.0, n_results=0)
    with pytest.raises(ValueError, match="n_results"):
        db.log_query("x", k=1, latency_ms=1.0, n_results=-3)
    with db.session(readonly=True) as session:
        assert session.scalar(select(func.count()).select_from(QueryLog)) == 2


# ------------------------------------------------------------------------------------------------------ concurrency


def test_readonly_session_is_a_snapshot(file_db: Database) -> None:
    """A read-only session keeps one snapshot while another connection commits (needs the explicit BEGIN)."""
    _register(file_db, ["a"])
    with file_db.session(readonly=True) as session:
        count = select(func.count()).select_from(Video)
        assert session.scalar(count) == 1
        _register(file_db, ["b"])  # commits on another pooled connection while the snapshot is open
        assert session.scalar(count) == 1
    assert _count_videos(file_db) == 2


def test_writers_wait_for_each_other(file_db: Database) -> None:
    """A second writer blocks on the busy timeout instead of failing while the first holds the write lock."""
    holding, errors = threading.Event(), []

    def slow_writer() -> None:
        try:
            with file_db.session() as session:
                session.add(Video(external_id="slow", status=VideoStatus.PENDING))
                session.flush()
                holding.set()
                time.sleep(0.3)
        except Exception as error:
            errors.append(error)
            holding.set()

    thread = threading.Thread(target=slow_writer)
    thread.start()
    assert holding.wait(5)
    start = time.perf_counter()
    ids = _register(file_db, ["fast"])
    waited = time.perf_counter() - start
    thread.join()
    assert errors == []
    assert waited > 0.1 and ids["fast"] > file_db.get_video("slow").id  # type: ignore[union-attr]


def test_threads_read_while_one_writes(file_db: Database) -> None:
    model_id = _model(file_db)
    done, errors = threading.Event(), []
    n_rounds = 40

    def writer() -> None:
        try:
            for i in range(n_rounds):
                names = [f"w{i}-{j}" for j in range(5)]
                ids = _register(file_db, names)
                if i % 2 == 0:
                    file_db.soft_delete(names)
                if i % 10 == 9:
                    file_db.activate_generation(_generation(file_db, model_id, ids.values()))
        except Exception as error:
            errors.append(error)
        finally:
            done.set()

    def reader() -> None:
        try:
            while not done.is_set():
                counts = file_db.count_by_status()
                assert sum(counts.values()) % 5 == 0, "a reader saw half of a transaction"
                active = file_db.active_generation()
                if active is not None:
                    file_db.external_ids(file_db.generation_video_ids(active.id))
        except Exception as error:
            errors.append(error)

    threads = [threading.Thread(target=writer)] + [threading.Thread(target=reader) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    assert sum(file_db.count_by_status().values()) == 5 * n_rounds
    assert len(file_db.generations()) == n_rounds // 10


WRITER_SCRIPT = textwrap.dedent(
    """
    import sys
    from prvr.index.catalog import VideoRecord, open_database

    db = open_database(sys.argv[1])
    for i in range(int(sys.argv[3])):
        names = [f"{sys.argv[2]}-{i}-{j}" for j in range(3)]
        db.register_videos([VideoRecord(name) for name in names])
        db.soft_delete(names)
    db.close()
    """
)


def test_processes_read_while_another_writes(file_db: Database, tmp_path: Path) -> None:
    """A writer process and this process (reading, and writing too) share the WAL database without errors."""
    path = str(file_db.engine.url.database)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    process = subprocess.Popen(
        [sys.executable, "-c", WRITER_SCRIPT, path, "proc", "30"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    reads = 0
    own = 0
    while process.poll() is None:
        counts = file_db.count_by_status()
        assert sum(counts.values()) % 3 == 0
        file_db.get_video(f"proc-{reads}-0")
        reads += 1
        if own < 20:
            _register(file_db, [f"main-{own}-{j}" for j in range(3)])
            own += 1
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr
    assert reads > 0
    assert file_db.count_by_status()[VideoStatus.DELETED] == 90
    assert sum(file_db.count_by_status().values()) == 90 + 3 * own
