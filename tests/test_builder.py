"""Index builder: search over an exact index ranks like prvr.engine.evaluate; killed builds leave the old generation."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from prvr.index.builder import build_index
from prvr.index.layout import DB_NAME, find_active, generation_path, open_active
from prvr.index.manifest import load_manifest
from prvr.checkpoint import save_checkpoint
from prvr.config import apply_overrides, load_preset
from prvr.data.dataset import PRVRCorpus, iter_query_batches
from prvr.data.synthetic import make_synthetic_corpus
from prvr.engine import evaluate
from prvr.metrics.retrieval import recall_metrics
from prvr.model import DreamPRVR
from prvr.retriever import Retriever
from prvr.index.catalog import GenerationStatus, open_database

REPO = Path(__file__).resolve().parents[1]
# the tiny preset, lighter still: the CPU encodes every video a few times in this file
SMALL = [
    "data.video_feature=synth",
    "data.text_feature=synth",
    "model.block.widths=[null, 2.0]",
    "model.registers.diffusion.steps=2",
]


def _config(video_dim: int, text_dim: int, seed: int = 0):
    config = apply_overrides(load_preset("tiny"), SMALL)
    model = dataclasses.replace(config.model, video_dim=video_dim, text_dim=text_dim)
    return dataclasses.replace(config, model=model, seed=seed)


def _checkpoint(path: Path, video_dim: int, text_dim: int, seed: int) -> Path:
    config = _config(video_dim, text_dim, seed)
    torch.manual_seed(seed)
    model = DreamPRVR(config.model, seed=seed)
    save_checkpoint(path, model=model, config=config, epoch=0)
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("builder")
    make_synthetic_corpus(tmp / "data", "synth", splits={"val": 30, "test": 12}, seed=5, frame_range=(20, 40))
    config = _config(64, 48)
    val = PRVRCorpus(tmp / "data", "synth", "val", config.data)
    ckpt = _checkpoint(tmp / "model.pt", val.video_dim, val.text_dim, seed=0)
    out = tmp / "index"
    result = build_index(ckpt, val, out, collection_name="synth", batch_size=16, progress=False)
    return {"tmp": tmp, "config": config, "val": val, "ckpt": ckpt, "out": out, "result": result}


def _all_results(retriever: Retriever, corpus: PRVRCorpus, k: int) -> list[list[tuple[str, float]]]:
    """Top-k of every query; n_candidates large enough that the Flat token searches see every token (exhaustive)."""
    rows = []
    n_candidates = 200 * retriever.num_videos
    for batch, _ in iter_query_batches(corpus, 64):
        found = retriever.search_features(batch, k, n_candidates)
        rows.extend([(r.video_id, r.score) for r in row] for row in found)
    return rows


def test_layout_and_manifest(setup) -> None:
    result = setup["result"]
    assert result.num_videos == 30 and result.new_videos == 30
    assert result.directory == generation_path(setup["out"], "gen-000001")
    manifest = load_manifest(result.directory)
    assert manifest.counts["videos"] == 30
    assert manifest.faiss["clip"]["factory"] == "IDMap2,Flat"
    assert manifest.data_source["split"] == "val" and manifest.data_source["collection"] == "synth"
    assert json.loads(manifest.experiment_config)["model"]["text_dim"] == 48
    with open_database(setup["out"] / DB_NAME) as db:
        active = db.active_generation()
        assert active is not None and active.id == result.generation_id and active.num_videos == 30
        assert "manifest.json" in active.files and active.ntotal == result.ntotal


def test_open_active_reads_the_active_generation(setup, tmp_path) -> None:
    result = setup["result"]
    with open_active(setup["out"]) as active:
        assert active.generation.id == result.generation_id
        assert active.directory == result.directory and active.manifest == load_manifest(result.directory)
        assert active.db.active_generation().id == result.generation_id
    with pytest.raises(FileNotFoundError, match="not an index directory"):
        open_active(tmp_path / "nothing")
    with open_database(tmp_path / DB_NAME) as db:
        db.create_schema()
        assert find_active(db, tmp_path) is None
    with pytest.raises(RuntimeError, match=f"{tmp_path} has no active index generation.*prvr build-index"):
        open_active(tmp_path)


def test_exact_search_ranks_like_evaluate(setup) -> None:
    val, config = setup["val"], setup["config"]
    num_videos = len(val.video_ids)
    with Retriever.load(setup["out"]) as retriever:
        rows = _all_results(retriever, val, num_videos)
        model = retriever.model
    targets = [record.video_id for record in val.queries]
    assert all(len(row) == num_videos for row in rows)
    ranks = [1 + [vid for vid, _ in row].index(target) for row, target in zip(rows, targets)]
    ours = recall_metrics(np.asarray(ranks))
    reference = evaluate(model, val, config.train)
    for key in ("R@1", "R@5", "R@10", "R@100"):
        assert ours[key] == pytest.approx(reference[key], abs=1e-9), (key, ours, reference)
    # scores are the model's exact scores (up to bf16 token rounding), best first
    first = rows[0]
    assert [s for _, s in first] == sorted((s for _, s in first), reverse=True)


def test_checkpoint_mismatch_refused(setup) -> None:
    other = _checkpoint(setup["tmp"] / "other.pt", 64, 48, seed=1)
    with pytest.raises(ValueError, match="cannot share an index"):
        build_index(other, setup["val"], setup["out"], collection_name="synth", progress=False)
    with pytest.raises(ValueError, match="sha256"):
        Retriever.load(setup["out"], checkpoint=other)


CHILD = textwrap.dedent(
    """
    import sys, time
    from prvr.config import load_preset, apply_overrides
    from prvr.data.dataset import PRVRCorpus
    from prvr.model import DreamPRVR
    from prvr.index.builder import build_index

    original = DreamPRVR.encode_videos

    def slow(self, videos):  # slow the build down so that the kill lands inside it
        time.sleep(0.1)
        return original(self, videos)

    DreamPRVR.encode_videos = slow
    config = apply_overrides(load_preset("tiny"), ["data.video_feature=synth", "data.text_feature=synth"])
    corpus = PRVRCorpus(sys.argv[1], "synth", "test", config.data)
    print("ready", flush=True)
    build_index(sys.argv[2], corpus, sys.argv[3], collection_name="synth", batch_size=2, progress=False)
    print("done", flush=True)
    """
)


def test_killed_build_leaves_previous_generation(setup, tmp_path) -> None:
    import shutil

    out = tmp_path / "index"
    shutil.copytree(setup["out"], out)  # own copy: the module's index stays untouched
    val = setup["val"]
    with Retriever.load(out) as retriever:
        before = _all_results(retriever, val, 5)
        first_generation = retriever.generation_id
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    child = subprocess.Popen(
        [sys.executable, str(script), str(setup["tmp"] / "data"), str(setup["ckpt"]), str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=str(REPO),
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready", child.stderr.read() if child.stderr else ""
        delay = float(np.random.default_rng(1234).uniform(0.05, 0.5))  # the build takes > 0.6 s (6 slowed batches)
        time.sleep(delay)
        child.kill()  # SIGKILL
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == -9, "the build finished before the kill; slow it down further"
    with Retriever.load(out) as retriever:
        assert retriever.generation_id == first_generation
        assert _all_results(retriever, val, 5) == before
    # the next build cleans up the interrupted one and adds the test videos to the val videos
    test = PRVRCorpus(setup["tmp"] / "data", "synth", "test", setup["config"].data)
    result = build_index(setup["ckpt"], test, out, collection_name="synth", batch_size=16, progress=False)
    assert result.num_videos == 42 and result.new_videos == 12
    with open_database(out / DB_NAME) as db:
        assert db.generations(GenerationStatus.BUILDING) == []
        assert [g.id for g in db.generations(GenerationStatus.RETIRED)] == [first_generation]
    with Retriever.load(out) as retriever:
        assert retriever.num_videos == 42
        grown = _all_results(retriever, val, 42)
    # every val query's ranking over the grown index restricted to the val videos is the old ranking
    val_ids = set(val.video_ids)
    restricted = [[(v, s) for v, s in row if v in val_ids][:5] for row in grown]
    assert [[v for v, _ in row] for row in restricted] == [[v for v, _ in row] for row in before]


def test_ivf_factory_builds_and_searches(setup, tmp_path) -> None:
    test = PRVRCorpus(setup["tmp"] / "data", "synth", "test", setup["config"].data)
    result = build_index(setup["ckpt"], test, tmp_path / "ivf", collection_name="synth",
                         factory="IVF4,Flat", batch_size=32, progress=False)
    assert result.manifest.faiss["clip"]["nlist"] == 4
    with Retriever.load(tmp_path / "ivf") as retriever:
        rows = _all_results(retriever, test, 3)
    assert all(len(row) == 3 for row in rows)


def test_add_then_remove_restores_previous_results(setup, tmp_path) -> None:
    import shutil

    from prvr.index.builder import remove_videos

    out = tmp_path / "index"
    shutil.copytree(setup["out"], out)
    val = setup["val"]
    with Retriever.load(out) as retriever:
        before = _all_results(retriever, val, 30)
    test = PRVRCorpus(setup["tmp"] / "data", "synth", "test", setup["config"].data)
    grown = build_index(setup["ckpt"], test, out, collection_name="synth", batch_size=16, progress=False)
    assert grown.num_videos == 42
    with pytest.raises(ValueError, match="not in the active index generation"):
        remove_videos(out, ["no-such-video", test.video_ids[0]])
    with pytest.raises(ValueError, match="no video ids"):
        remove_videos(out, [])
    result = remove_videos(out, test.video_ids)
    assert result.num_videos == 30 and result.new_videos == 0
    assert result.manifest.counts["removed_videos"] == 12
    with Retriever.load(out) as retriever:
        after = _all_results(retriever, val, 30)
        assert retriever.store.describe()["tombstones"] == 0  # compacted
    assert [[v for v, _ in row] for row in after] == [[v for v, _ in row] for row in before]
    np.testing.assert_allclose([[s for _, s in row] for row in after], [[s for _, s in row] for row in before],
                               atol=1e-6)
    with open_database(out / DB_NAME) as db:
        assert len(db.generations(GenerationStatus.RETIRED)) == 2  # the previous generations stay for rollback
        assert db.get_video(test.video_ids[0]).status.value == "deleted"
    with pytest.raises(ValueError, match="not in the active index generation"):
        remove_videos(out, [test.video_ids[0]])  # already removed
    # re-adding the removed split registers the videos again under new ids
    again = build_index(setup["ckpt"], test, out, collection_name="synth", batch_size=16, progress=False)
    assert again.num_videos == 42 and again.new_videos == 12


def test_rewrite_manifest_only_changes_search_settings(setup, tmp_path) -> None:
    import shutil

    from prvr.index.builder import rewrite_manifest

    out = tmp_path / "index"
    shutil.copytree(setup["out"], out)
    manifest = load_manifest(generation_path(out, "gen-000001"))
    changed = dataclasses.replace(manifest, search_defaults={**manifest.search_defaults, "n_candidates": 7},
                                  calibration={"target": 0.9})
    rewrite_manifest(out, changed)
    assert load_manifest(generation_path(out, "gen-000001")).search_defaults["n_candidates"] == 7
    with open_database(out / DB_NAME) as db:  # the recorded hash follows the new file
        from prvr.fileio import file_sha256

        recorded = db.active_generation().files["manifest.json"]["sha256"]
        assert recorded == file_sha256(generation_path(out, "gen-000001") / "manifest.json")
    with pytest.raises(ValueError, match="only search_defaults"):
        rewrite_manifest(out, dataclasses.replace(changed, checkpoint_sha256="0" * 64))
    with Retriever.load(out) as retriever:
        assert retriever._default_candidates(None) == 7


REMOVE_CHILD = textwrap.dedent(
    """
    import sys, time
    from prvr.index import builder
    from prvr.index.faiss_store import FaissTokenIndex

    original = FaissTokenIndex.save

    def slow_save(self, directory):  # the kill lands between the token-store copy and the activation
        print("saving", flush=True)
        time.sleep(5)
        return original(self, directory)

    FaissTokenIndex.save = slow_save
    builder.remove_videos(sys.argv[1], sys.argv[2:])
    print("done", flush=True)
    """
)


def test_killed_remove_leaves_previous_generation(setup, tmp_path) -> None:
    import shutil

    from prvr.index.builder import remove_videos

    out = tmp_path / "index"
    shutil.copytree(setup["out"], out)
    val = setup["val"]
    with Retriever.load(out) as retriever:
        before = _all_results(retriever, val, 5)
        first_generation = retriever.generation_id
    script = tmp_path / "child.py"
    script.write_text(REMOVE_CHILD)
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    child = subprocess.Popen([sys.executable, str(script), str(out), *val.video_ids[:3]], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env, cwd=str(REPO))
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "saving", child.stderr.read() if child.stderr else ""
        time.sleep(float(np.random.default_rng(99).uniform(0.0, 1.0)))
        child.kill()
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == -9
    with Retriever.load(out) as retriever:  # the old generation is active and answers as before
        assert retriever.generation_id == first_generation and retriever.num_videos == 30
        assert _all_results(retriever, val, 5) == before
    result = remove_videos(out, val.video_ids[:3])  # the next writer cleans up and succeeds
    assert result.num_videos == 27
    with open_database(out / DB_NAME) as db:
        assert db.generations(GenerationStatus.BUILDING) == []


def test_metadata_in_another_database_by_url(setup, tmp_path, monkeypatch) -> None:
    """--database-url: the index keeps its metadata where the URL points (here a SQLite file elsewhere, standing in
    for PostgreSQL), reads the URL back with ${VAR} expanded, and refuses to move databases."""
    from click.testing import CliRunner

    from prvr.index.layout import DATABASE_URL_FILE
    from prvr.cli import main

    out = tmp_path / "index"
    metadata = tmp_path / "elsewhere" / "meta.db"
    monkeypatch.setenv("PRVR_TEST_META", str(metadata))
    url = "sqlite:///${PRVR_TEST_META}"
    test = PRVRCorpus(setup["tmp"] / "data", "synth", "test", setup["config"].data)
    build_index(setup["ckpt"], test, out, collection_name="synth", batch_size=16, progress=False, database_url=url)
    assert metadata.is_file() and not (out / DB_NAME).exists()
    assert (out / DATABASE_URL_FILE).read_text(encoding="utf-8").strip() == url  # the variable, not the value
    with Retriever.load(out) as retriever:
        assert retriever.num_videos == 12
    info = CliRunner().invoke(main, ["index", "info", str(out), "--json"])
    assert info.exit_code == 0, info.output

    with pytest.raises(ValueError, match="cannot move databases"):
        build_index(setup["ckpt"], test, out, collection_name="synth", progress=False, database_url="sqlite:///x.db")
    with pytest.raises(ValueError, match="cannot move databases"):  # an index with its own SQLite file
        build_index(setup["ckpt"], test, setup["out"], collection_name="synth", progress=False,
                    database_url="sqlite:///x.db")
    monkeypatch.delenv("PRVR_TEST_META")
    with pytest.raises(ValueError, match="export the variables"):
        Retriever.load(out)
