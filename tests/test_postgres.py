"""The metadata database on a real PostgreSQL server (a throwaway cluster, see ``pg.py``): the catalog's tests, an
index built, grown, searched and served with ``--database-url``, a password from the environment, and two
``prvr index add`` processes at once. Skips where no PostgreSQL can run (fails in CI: ``PRVR_REQUIRE_POSTGRES=1``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import BigInteger, inspect, select, text
from sqlalchemy.exc import DatabaseError, OperationalError

import helpers
from pg import PostgresServer, postgres  # noqa: F401  (the session fixture)
from prvr.cli import main
from prvr.index.catalog import (
    Database,
    GenerationStatus,
    QueryLog,
    Video,
    VideoRecord,
    VideoStatus,
    open_database,
)
from prvr.index.layout import DATABASE_URL_FILE, DB_NAME, open_index_database
import test_catalog
from test_catalog import WRITER_SCRIPT, _generation, _model, _register, _statuses

REPO_ROOT = Path(__file__).resolve().parents[1]

# the backend-neutral catalog tests, collected again in this module, where `db` and `file_db` are PostgreSQL
CATALOG_TEST_NAMES = (
    "test_abandon_generation",
    "test_activation_is_atomic_when_a_step_fails",
    "test_external_ids_preserve_order",
    "test_generation_bad_input",
    "test_generation_lifecycle",
    "test_get_video_by_either_key",
    "test_ids_are_never_reused",
    "test_only_one_active_generation_in_the_schema",
    "test_query_log",
    "test_readonly_session_is_a_snapshot",
    "test_register_is_idempotent_and_ordered",
    "test_register_model_is_idempotent",
    "test_register_rejects_bad_input_atomically",
    "test_session_commits_or_rolls_back",
    "test_soft_delete_keeps_history_and_frees_external_id",
    "test_threads_read_while_one_writes",
    "test_writers_wait_for_each_other",
)
globals().update({name: getattr(test_catalog, name) for name in CATALOG_TEST_NAMES})


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


# ------------------------------------------------------------------------------------------------------ an index

PASSWORD_ENV = "PRVR_TEST_PG_PASSWORD"
PASSWORD = "s3cret-only-in-the-environment"

# `prvr index add` that, once it holds the build lock, touches argv[1] and waits (<= 60 s) for argv[2] to appear
HOLDING_ADD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    import prvr.index.builder as builder
    from prvr.cli import main

    held, release = Path(sys.argv[1]), Path(sys.argv[2])
    original = builder._abandon_stale_builds

    def holding(db, index_dir):
        held.touch()
        deadline = time.monotonic() + 60
        while not release.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        original(db, index_dir)

    builder._abandon_stale_builds = holding
    sys.exit(main(sys.argv[3:]))
    """
)


@pytest.fixture(scope="module")
def corpus_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shared synthetic corpus' val (12) and test (4) splits, the same videos, plus 3 train videos."""
    from prvr.data.synthetic import make_synthetic_corpus

    root = tmp_path_factory.mktemp("pg-synthetic") / "data"
    make_synthetic_corpus(root, "synth", splits={"val": 12, "test": 4, "train": 3}, seed=7, text_dim=helpers.TEXT_DIM,
                          frame_range=(20, 30))
    return root


def _prvr(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout if result.exit_code == 0 else result.stdout + result.stderr


def _build_args(checkpoint: Path, root: Path, bert: Path, out: Path, split: str, url: str) -> list[str]:
    return ["build-index", "--checkpoint", str(checkpoint), "--data", str(root), "--collection", "synth", "--split",
            split, "--out", str(out), "--text-backbone", str(bert), "--no-progress", "--database-url", url]


def _add_args(out: Path, root: Path, split: str) -> list[str]:
    return ["index", "add", str(out), "--data", str(root), "--collection", "synth", "--split", split, "--no-progress"]


def test_index_round_trip_on_postgres_with_the_password_from_the_environment(
    postgres: PostgresServer, corpus_root: Path, tiny_checkpoint: Path, query_bert: Path, tmp_path: Path,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """build-index --database-url (a password role, ``${VAR}`` in the URL), index add, Retriever, prvr query and the
    service, all on PostgreSQL; the password is never written to disk."""
    from fastapi.testclient import TestClient

    from prvr.retriever import Retriever
    from prvr.services.app import ServiceSettings, create_app

    postgres.execute(f"CREATE ROLE prvr LOGIN PASSWORD '{PASSWORD}'")
    postgres.create_database("prvr_index", owner="prvr")
    url = postgres.url("prvr_index", user="prvr", password="${" + PASSWORD_ENV + "}", tcp=True)
    out = tmp_path / "index"
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    code, output = _prvr(*_build_args(tiny_checkpoint, corpus_root, query_bert, out, "val", url))
    assert code == 0, output
    assert (out / DATABASE_URL_FILE).read_text(encoding="utf-8").strip() == url and not (out / DB_NAME).exists()
    on_disk = [path for path in out.rglob("*") if path.is_file() and PASSWORD.encode() in path.read_bytes()]
    assert on_disk == [], "the password must stay in the environment"

    code, output = _prvr(*_add_args(out, corpus_root, "test"))
    assert code == 0, output
    assert json.loads(output)["videos"] == 16 and json.loads(output)["new_videos"] == 4
    with open_index_database(out) as db:
        assert db.engine.dialect.name == "postgresql" and db.engine.url.password == PASSWORD
        assert sum(db.count_by_status().values()) == 16 and db.count_by_status()[VideoStatus.INDEXED] == 16
        assert [g.status.value for g in db.generations()] == ["retired", "active"]

    with Retriever.load(out) as retriever:
        assert retriever.num_videos == 16
        library = [(hit.video_id, hit.score) for hit in retriever.search("a dog kicks a ball", k=3, localize=False)]
    code, output = _prvr("query", "a dog kicks a ball", "--index", str(out), "-k", "3", "--json")
    assert code == 0, output
    assert [hit["video_id"] for hit in json.loads(output)] == [video_id for video_id, _ in library]

    app = create_app(ServiceSettings(index_dir=out, poll_interval_s=0, query_log=True))
    with TestClient(app) as client:
        health = client.get("/health")
        assert health.status_code == 200 and health.json()["num_videos"] == 16, health.text
        response = client.get("/search", params={"q": "a dog kicks a ball", "k": 3})
        assert response.status_code == 200, response.text
        assert [hit["video_id"] for hit in response.json()["results"]] == [video_id for video_id, _ in library]
    with open_index_database(out) as db, db.session(readonly=True) as session:
        assert session.scalars(select(QueryLog.query_text)).all() == ["a dog kicks a ball"]

    other = tmp_path / "other"  # one database per index: another index directory on this URL is refused
    code, output = _prvr(*_build_args(tiny_checkpoint, corpus_root, query_bert, other, "val", url))
    assert code == 1 and "already holds the generations of another index" in output, output
    assert PASSWORD not in output and not (other / DATABASE_URL_FILE).exists()

    monkeypatch.setenv(PASSWORD_ENV, "wrong")
    with pytest.raises(OperationalError, match="password authentication failed"):
        Retriever.load(out)


def test_two_index_adds_at_once_on_postgres(
    postgres: PostgresServer, corpus_root: Path, tiny_checkpoint: Path, query_bert: Path, tmp_path: Path,  # noqa: F811
) -> None:
    """Two `prvr index add` processes on one PostgreSQL-backed index: the second fails at once with a clear message
    while the first holds the build lock, nothing is lost, and the retried add succeeds."""
    from prvr.retriever import Retriever

    out, url = tmp_path / "index", postgres.create_database()
    code, output = _prvr(*_build_args(tiny_checkpoint, corpus_root, query_bert, out, "test", url))
    assert code == 0, output
    held, release = tmp_path / "held", tmp_path / "release"
    first = subprocess.Popen([sys.executable, "-c", HOLDING_ADD, str(held), str(release), *_add_args(out, corpus_root,
                              "train")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not held.exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert held.exists(), first.communicate()[1] if first.poll() is not None else "no lock after 60 s"
        second = subprocess.run([sys.executable, "-m", "prvr.cli", *_add_args(out, corpus_root, "val")],
                                capture_output=True, text=True, timeout=120)
    finally:
        release.touch()
        first_out, first_err = first.communicate(timeout=120)
    assert second.returncode == 1 and "another build holds" in second.stderr, second.stderr
    assert first.returncode == 0, first_err
    assert json.loads(first_out)["videos"] == 7 and json.loads(first_out)["new_videos"] == 3
    with Retriever.load(out) as retriever:
        assert retriever.num_videos == 7
    with open_index_database(out) as db:
        assert sum(db.count_by_status().values()) == 7 and db.generations(GenerationStatus.BUILDING) == []
    code, output = _prvr(*_add_args(out, corpus_root, "val"))  # the retry
    assert code == 0, output
    assert json.loads(output)["videos"] == 19 and json.loads(output)["new_videos"] == 12
    with Retriever.load(out) as retriever:
        assert retriever.num_videos == 19
