"""`prvr index prune`: which generations' data go (the rule of prvr.index.prune), on FAISS and on Milvus (milvus-lite),
idempotence, and a prune interrupted between its steps and rerun ending where an uninterrupted one would."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest

from prvr.index import prune
from prvr.index.builder import build_index, remove_videos
from prvr.index.catalog import GenerationStatus
from prvr.index.layout import GENERATIONS_DIR, LOCK_NAME, open_active, open_index_database
from prvr.fileio import exclusive_lock

LATER = datetime.now(timezone.utc) + timedelta(hours=1)  # every generation retired by the tests is older than 600 s


def _grow(checkpoint: Path, corpus, out: Path, **options) -> None:
    """Generations 1 (val), 2 (+ test), 3 (one video removed): 1 and 2 retired, 3 active."""
    build_index(checkpoint, corpus.val, out, collection_name="synth", progress=False, **options)
    build_index(checkpoint, corpus.split("test"), out, collection_name="synth", progress=False)
    remove_videos(out, [corpus.val.video_ids[0]])


def _crashed_build(out: Path) -> str:
    """A ``building`` row and a half-written directory, as a build killed before its commit point leaves them."""
    from prvr.index.backend import load_token_index, start_generation

    with open_active(out) as active:
        params = dict(active.generation.params)
        dead = active.db.begin_generation(model_id=active.generation.model_id, factories=active.generation.factories,
                                          faiss_version="x", params=params, video_ids=[])
        name = active.db.get_generation(dead).directory
        if "engine" in params:  # Milvus: the build had copied the active generation into its own collections
            start_generation(load_token_index(active.directory, active.manifest), params, name)
    (out / GENERATIONS_DIR / name / "tokens").mkdir(parents=True)
    (out / GENERATIONS_DIR / name / "tokens" / "shard-000000.bin").write_bytes(b"x" * 100)
    return name


def _rows(out: Path) -> dict[str, str]:
    db = open_index_database(out)
    try:
        return {g.directory: g.status.value for g in db.generations()}
    finally:
        db.close()


def _directories(out: Path) -> set[str]:
    return {p.name for p in (out / GENERATIONS_DIR).iterdir()}


def _search(out: Path, dim: int) -> list:
    from prvr.retriever import Retriever

    vectors = np.random.default_rng(0).standard_normal((6, dim)).astype(np.float32)
    with Retriever.load(out) as retriever:
        return [[(int(v), round(float(s), 5)) for v, s in ranked.pairs()]
                for ranked in retriever.search_vectors(vectors, 5, 2)]


def test_prune_faiss_rule_dry_run_and_rollback_target(synthetic_corpus, tiny_checkpoint, tmp_path) -> None:
    out = tmp_path / "index"
    _grow(tiny_checkpoint, synthetic_corpus, out)
    crashed = _crashed_build(out)
    (out / GENERATIONS_DIR / "gen-000099").mkdir()  # an orphan: a directory no row names
    dim = synthetic_corpus.config.model.hidden_size
    before = _search(out, dim)

    # default rule, now: everything retired just now is kept (min-age); only the crash's leftovers go
    report = prune.prune_generations(out, dry_run=True)
    assert [e["directory"] for e in report.removed] == [crashed]
    assert [e["directory"] for e in report.kept] == ["gen-000002", "gen-000001"]
    assert "less than --min-age" in report.kept[1]["reason"]
    assert {e["directory"] for e in report.directories} == {crashed, "gen-000099"}
    assert report.bytes_freed == 100 and report.collections == []
    assert _rows(out)[crashed] == "building" and crashed in _directories(out)  # dry run: nothing changed

    # an hour later, keep 1: generation 1 goes, 2 stays as the rollback target, 3 is active
    plan = prune.prune_generations(out, keep=1, now=LATER, dry_run=True)
    report = prune.prune_generations(out, keep=1, now=LATER)
    assert report.as_dict() == {**plan.as_dict(), "dry_run": False}
    assert {e["directory"]: e["status"] for e in report.removed} == {crashed: "building", "gen-000001": "retired"}
    assert [e["directory"] for e in report.kept] == ["gen-000002"] and "rollback" in report.kept[0]["reason"]
    assert report.bytes_freed > 100
    assert _rows(out) == {"gen-000002": "retired", "gen-000003": "active"}
    assert _directories(out) == {"gen-000002", "gen-000003"}
    assert _search(out, dim) == before
    again = prune.prune_generations(out, keep=1, now=LATER)  # idempotent
    assert again.removed == [] and again.directories == [] and len(again.kept) == 1

    # the kept generation is a working rollback target; keep 0 then removes the (now retired) generation 3
    db = open_index_database(out)
    try:
        db.activate_generation(db.generations(GenerationStatus.RETIRED)[0].id)
    finally:
        db.close()
    rolled_back = _search(out, dim)
    report = prune.prune_generations(out, keep=0, now=LATER + timedelta(hours=1))
    assert [e["directory"] for e in report.removed] == ["gen-000003"]
    assert _rows(out) == {"gen-000002": "active"} and _directories(out) == {"gen-000002"}
    assert _search(out, dim) == rolled_back


def test_prune_interrupted_then_rerun_finishes(synthetic_corpus, tiny_checkpoint, tmp_path, monkeypatch) -> None:
    out = tmp_path / "index"
    _grow(tiny_checkpoint, synthetic_corpus, out)
    crashed = _crashed_build(out)
    dim = synthetic_corpus.config.model.hidden_size
    before = _search(out, dim)

    # killed between the row deletions and the sweep: the crashed build's data went before its row; the retired
    # generations' rows are gone and their directories are orphans
    def killed(*args, **kwargs):
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(prune, "_sweep", killed)
    with pytest.raises(KeyboardInterrupt):
        prune.prune_generations(out, keep=0, now=LATER)
    monkeypatch.undo()
    assert _rows(out) == {"gen-000003": "active"}
    assert _directories(out) == {"gen-000001", "gen-000002", "gen-000003"} and crashed not in _rows(out)
    assert _search(out, dim) == before

    # killed inside the sweep, after the first directory
    calls = []
    remove = prune._remove_directory

    def dies_second(path):
        calls.append(path.name)
        if len(calls) == 2:
            raise KeyboardInterrupt("killed")
        remove(path)

    monkeypatch.setattr(prune, "_remove_directory", dies_second)
    with pytest.raises(KeyboardInterrupt):
        prune.prune_generations(out, keep=0, now=LATER)
    monkeypatch.undo()
    assert calls == ["gen-000001", "gen-000002"]
    assert _directories(out) == {"gen-000002", "gen-000003"} and _search(out, dim) == before

    # the rerun finishes the job; a third run finds nothing
    report = prune.prune_generations(out, keep=0, now=LATER)
    assert report.removed == [] and [e["directory"] for e in report.directories] == ["gen-000002"]
    assert _rows(out) == {"gen-000003": "active"} and _directories(out) == {"gen-000003"}
    assert _search(out, dim) == before
    assert prune.prune_generations(out, keep=0, now=LATER).as_dict()["directories"] == []


def test_prune_refuses_during_a_build_and_bad_options(tiny_index, copy_index) -> None:
    out = copy_index(tiny_index)
    with exclusive_lock(out / LOCK_NAME):
        with pytest.raises(RuntimeError, match="another build holds"):
            prune.prune_generations(out)
    with pytest.raises(ValueError, match="--keep and --min-age"):
        prune.prune_generations(out, keep=-1)


def test_prune_cli(synthetic_corpus, tiny_checkpoint, tmp_path) -> None:
    from click.testing import CliRunner

    from prvr.cli import main
    from prvr.commands import index_cli

    assert (index_cli.DEFAULT_PRUNE_KEEP, index_cli.DEFAULT_PRUNE_MIN_AGE_S) == (prune.DEFAULT_KEEP,
                                                                                 prune.DEFAULT_MIN_AGE_S)
    out = tmp_path / "index"
    _grow(tiny_checkpoint, synthetic_corpus, out)
    runner = CliRunner()
    result = runner.invoke(main, ["index", "prune", str(out), "--keep", "0", "--min-age", "0", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "would remove generation 1 (gen-000001, retired)" in result.output
    assert "would remove 2 generations, 2 directories" in result.output
    assert _directories(out) == {"gen-000001", "gen-000002", "gen-000003"}
    result = runner.invoke(main, ["index", "prune", str(out), "--keep", "1", "--min-age", "0", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert [e["directory"] for e in report["removed"]] == ["gen-000001"] and report["bytes_freed"] > 0
    assert _directories(out) == {"gen-000002", "gen-000003"}
    result = runner.invoke(main, ["index", "prune", str(tmp_path / "index"), "--keep", "-1"])
    assert result.exit_code != 0 and "--keep" in result.output


# ------------------------------------------------------------------------------------------------------- Milvus


def test_prune_milvus_collections_interrupted_and_rerun(synthetic_corpus, tiny_checkpoint, tmp_path,
                                                        monkeypatch) -> None:
    pytest.importorskip("pymilvus")
    pytest.importorskip("milvus_lite")
    from prvr.index import milvus_store
    from prvr.index.milvus_store import MilvusTokenIndex

    url = str(tmp_path / "engine.db")
    out = tmp_path / "index"
    _grow(tiny_checkpoint, synthetic_corpus, out, backend="milvus", engine={"url": url})
    crashed = _crashed_build(out)
    client = milvus_store._client(url)
    with open_active(out) as active:
        uid = active.generation.params["engine"]["uid"]
    # another index on the same engine: never touched
    other = MilvusTokenIndex(4, url=url, prefix="prvr_0123456789ab_gen_000001", clip_weight=0.6, frame_weight=0.4)
    other._create_collections(1)

    def mine() -> set[str]:
        return {name for name in client.list_collections() if name.startswith(f"prvr_{uid}_")}

    def generation(name: str) -> set[str]:
        return {f"prvr_{uid}_{name.replace('-', '_')}_{kind}" for kind in ("clip", "frame")}

    assert mine() == generation("gen-000001") | generation("gen-000002") | generation("gen-000003") | \
        generation(crashed)
    dim = synthetic_corpus.config.model.hidden_size
    before = _search(out, dim)

    plan = prune.prune_generations(out, keep=1, now=LATER, dry_run=True)
    assert set(plan.collections) == generation("gen-000001") | generation(crashed)
    assert len(mine()) == 8

    # the engine fails in the sweep, after the crashed build's collections and one of generation 1's were dropped
    drop = milvus_store.drop_collections
    calls = []

    def fails_in_sweep(engine_url, names):
        calls.append(list(names))
        if len(calls) == 1:
            return drop(engine_url, names)
        drop(engine_url, names[:1])
        raise ConnectionError("engine gone")

    monkeypatch.setattr(milvus_store, "drop_collections", fails_in_sweep)
    with pytest.raises(ConnectionError):
        prune.prune_generations(out, keep=1, now=LATER)
    monkeypatch.undo()
    assert set(calls[0]) == generation(crashed) and set(calls[1]) == generation("gen-000001")
    assert _rows(out) == {"gen-000002": "retired", "gen-000003": "active"}  # rows gone, one orphan collection left
    assert mine() == generation("gen-000002") | generation("gen-000003") | {sorted(calls[1])[1]}
    assert _search(out, dim) == before

    report = prune.prune_generations(out, keep=1, now=LATER)
    assert report.removed == [] and report.collections == [sorted(calls[1])[1]]
    assert mine() == generation("gen-000002") | generation("gen-000003")
    assert other.collections["clip"] in client.list_collections()
    assert _directories(out) == {"gen-000002", "gen-000003"}
    assert _search(out, dim) == before
    assert prune.prune_generations(out, keep=1, now=LATER).collections == []
    other.drop()
