"""The metadata database on a real PostgreSQL server (a throwaway cluster, see ``pg.py``): the catalog's tests, an
index built, grown, searched and served with ``--database-url``, a password from the environment, and two
``prvr index add`` processes at once. Skips where no PostgreSQL can run (fails in CI: ``PRVR_REQUIRE_POSTGRES=1``)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import BigInteger, inspect, text
from sqlalchemy.exc import DatabaseError

from pg import PostgresServer, postgres  # noqa: F401  (the session fixture)
from prvr.index.catalog import Database, Video, VideoRecord, VideoStatus, open_database
from test_catalog import (  # the backend-neutral catalog tests, run again here on the fixtures below
    WRITER_SCRIPT,
    _generation,
    _model,
    _register,
    _statuses,
    test_abandon_generation,
    test_activation_is_atomic_when_a_step_fails,
    test_external_ids_preserve_order,
    test_generation_bad_input,
    test_generation_lifecycle,
    test_get_video_by_either_key,
    test_ids_are_never_reused,
    test_only_one_active_generation_in_the_schema,
    test_query_log,
    test_readonly_session_is_a_snapshot,
    test_register_is_idempotent_and_ordered,
    test_register_model_is_idempotent,
    test_register_rejects_bad_input_atomically,
    test_session_commits_or_rolls_back,
    test_soft_delete_keeps_history_and_frees_external_id,
    test_threads_read_while_one_writes,
    test_writers_wait_for_each_other,
)

REPO_ROOT = Path(__file__).resolve().parents[1]

CATALOG_TESTS = [  # re-exported: pytest collects them in this module, where `db` and `file_db` are PostgreSQL
    test_abandon_generation,
    test_activation_is_atomic_when_a_step_fails,
    test_external_ids_preserve_order,
    test_generation_bad_input,
    test_generation_lifecycle,
    test_get_video_by_either_key,
    test_ids_are_never_reused,
    test_only_one_active_generation_in_the_schema,
    test_query_log,
    test_readonly_session_is_a_snapshot,
    test_register_is_idempotent_and_ordered,
    test_register_model_is_idempotent,
    test_register_rejects_bad_input_atomically,
    test_session_commits_or_rolls_back,
    test_soft_delete_keeps_history_and_frees_external_id,
    test_threads_read_while_one_writes,
    test_writers_wait_for_each_other,
]


@pytest.fixture
def db(postgres: PostgresServer) -> Iterator[Database]:  # noqa: F811
    """A fresh PostgreSQL database with the schema (the name test_catalog's tests ask for)."""
    database = open_database(postgres.create_database())
    database.create_schema()
    yield database
    database.close()


@pytest.fixture
def file_db(db: Database) -> Database:
    """test_catalog's concurrency tests ask for a file database (several connections): a server database is one."""
    return db


# ------------------------------------------------------------------------------------------------------ catalog


def test_schema_on_postgres(db: Database) -> None:
    db.create_schema()  # idempotent
    inspector = inspect(db.engine)
    assert {"embedding_models", "videos", "index_generations", "generation_videos", "query_log"} <= set(
        inspector.get_table_names()
    )
    indexes = {index["name"]: index for index in inspector.get_indexes("videos")}
    assert indexes["uq_videos_live_external_id"]["unique"]
    assert "deleted_at IS NULL" in indexes["uq_videos_live_external_id"]["dialect_options"]["postgresql_where"]
    generation_indexes = {index["name"] for index in inspector.get_indexes("index_generations")}
    assert "uq_index_generations_one_active" in generation_indexes
    columns = {column["name"]: column for column in inspector.get_columns("videos")}
    assert isinstance(columns["id"]["type"], BigInteger) and columns["id"]["autoincrement"]
    assert "timestamp with time zone" in str(columns["created_at"]["type"]).lower() or columns["created_at"][
        "type"
    ].timezone
    checks = {check["name"] for check in inspector.get_check_constraints("videos")}
    assert {"ck_videos_deleted_at", "video_status"} <= checks  # enums are VARCHAR + CHECK, no native ENUM type
    with db.engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM pg_type WHERE typtype = 'e'")).scalar_one() == 0


def test_activation_is_atomic_when_postgres_refuses(db: Database) -> None:
    """A failure raised by the server itself (a trigger) in the last statement rolls back the whole activation."""
    model_id = _model(db)
    ids = _register(db, ["a", "b"])
    old = _generation(db, model_id, [ids["a"]])
    db.activate_generation(old)
    new = _generation(db, model_id, [ids["a"], ids["b"]])
    with db.session() as session:
        session.execute(text(
            "CREATE FUNCTION refuse_b() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            f"IF NEW.id = {ids['b']} AND NEW.status = 'indexed' THEN RAISE EXCEPTION 'refused'; END IF; "
            "RETURN NEW; END $$"
        ))
        session.execute(text("CREATE TRIGGER refuse_b BEFORE UPDATE OF status ON videos FOR EACH ROW "
                             "EXECUTE FUNCTION refuse_b()"))
    with pytest.raises(DatabaseError, match="refused"):
        db.activate_generation(new)
    assert db.active_generation().id == old  # type: ignore[union-attr]
    assert _statuses(db) == {"a": "indexed", "b": "pending"}


def test_processes_write_while_this_one_reads_and_writes(db: Database, tmp_path: Path) -> None:
    """A writer process and this process share the server database without errors or torn reads."""
    url = db.engine.url.render_as_string(hide_password=False)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    process = subprocess.Popen([sys.executable, "-c", WRITER_SCRIPT, url, "proc", "30"], env=env, cwd=tmp_path,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    own = 0
    while process.poll() is None:
        assert sum(db.count_by_status().values()) % 3 == 0
        if own < 20:
            _register(db, [f"main-{own}-{j}" for j in range(3)])
            own += 1
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr
    counts = db.count_by_status()
    assert counts[VideoStatus.DELETED] == 90 and sum(counts.values()) == 90 + 3 * own


def test_writers_registering_the_same_video_queue(db: Database) -> None:
    """Two writers registering one external id at once: the second waits for the first and gets its id (without the
    write lock, both miss the row and the second fails on the unique index)."""
    holding, errors, first_id = threading.Event(), [], []

    def slow_writer() -> None:
        try:
            with db.session() as session:
                video = Video(external_id="same", status=VideoStatus.PENDING)
                session.add(video)
                session.flush()
                first_id.append(video.id)
                holding.set()
                time.sleep(0.3)
        except Exception as error:
            errors.append(error)
            holding.set()

    thread = threading.Thread(target=slow_writer)
    thread.start()
    assert holding.wait(5)
    ids = db.register_videos([VideoRecord("same"), VideoRecord("other")])
    thread.join()
    assert errors == [] and ids["same"] == first_id[0] and ids["other"] > first_id[0]
