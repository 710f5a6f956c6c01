"""Resumable index builds: an interrupted or killed FAISS build, run again, resumes from its last snapshot and
commits exactly what an uninterrupted build commits; another build, or a failed one, does not resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from prvr.index import builder
from prvr.index.builder import build_index
from prvr.index.catalog import GenerationStatus, open_database
from prvr.index.faiss_store import FaissTokenIndex
from prvr.index.layout import DB_NAME, FAISS_DIR, TOKENS_DIR
from prvr.index.resume import RESUME_NAME
from prvr.index.token_store import TokenStore

REPO = Path(__file__).resolve().parents[1]
SETTINGS = {"collection_name": "synth", "factory": "IVF2,Flat", "batch_size": 2, "checkpoint_every": 4,
            "progress": False}


def _built(index_dir: Path) -> dict:
    """The committed generation as bytes and tokens: FAISS files, store contents, the generation's file list."""
    with open_database(index_dir / DB_NAME) as db:
        statuses = [g.status for g in db.generations()]
        active = db.active_generation()
        assert active is not None
        files = sorted(active.files)
    gen_dir = index_dir / "generations" / active.directory
    faiss_files = {p.name: p.read_bytes() for p in sorted((gen_dir / FAISS_DIR).iterdir()) if p.name != "faiss_index.json"}
    store = TokenStore(gen_dir / TOKENS_DIR, read_only=True)
    ids = store.video_ids
    tokens = store.get(ids)
    return {"statuses": statuses, "files": files, "faiss": faiss_files, "ids": ids.tolist(),
            "clip": tokens.clip.numpy(), "frame": tokens.frame.numpy(), "placement": [a.tolist() for a in store.locate(ids)]}


def _same(got: dict, want: dict) -> None:
    assert got["files"] == want["files"]
    assert not any(RESUME_NAME in name or "snapshot-" in name for name in got["files"])
    assert got["faiss"].keys() == want["faiss"].keys()
    for name in want["faiss"]:
        assert got["faiss"][name] == want["faiss"][name], name
    assert got["ids"] == want["ids"] and got["placement"] == want["placement"]
    np.testing.assert_array_equal(got["clip"], want["clip"])
    np.testing.assert_array_equal(got["frame"], want["frame"])


@pytest.fixture(scope="module")
def reference(synthetic_corpus, tiny_checkpoint, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("resume-ref") / "index"
    bank = np.random.default_rng(0).standard_normal((9, synthetic_corpus.config.model.hidden_size)).astype(np.float32)
    build_index(tiny_checkpoint, synthetic_corpus.val, out, query_bank=bank, bank_k=3, **SETTINGS)
    return {"built": _built(out), "bank": bank, "terms": np.load(next(out.glob("generations/*/bank_term*.npz")))}


def _interrupt_after(monkeypatch, calls: int, error: BaseException) -> list[int]:
    """Make FaissTokenIndex.add raise ``error`` on its ``calls``-th call; returns the list of ids each call added."""
    added: list[int] = []
    original = FaissTokenIndex.add

    def add(self, video_ids, *args, **kwargs):
        if len(added) == calls:
            raise error
        added.append(len(video_ids))
        return original(self, video_ids, *args, **kwargs)

    monkeypatch.setattr(FaissTokenIndex, "add", add)
    return added


def test_interrupted_build_resumes_to_the_uninterrupted_result(synthetic_corpus, tiny_checkpoint, tmp_path,
                                                               monkeypatch, reference) -> None:
    out = tmp_path / "index"
    kwargs = {**SETTINGS, "query_bank": reference["bank"], "bank_k": 3}
    _interrupt_after(monkeypatch, 3, KeyboardInterrupt())  # 6 videos added: one snapshot (after 4) + 2 redone
    with pytest.raises(KeyboardInterrupt):
        build_index(tiny_checkpoint, synthetic_corpus.val, out, **kwargs)
    with open_database(out / DB_NAME) as db:
        (building,) = db.generations(GenerationStatus.BUILDING)
    assert (out / "generations" / building.directory / RESUME_NAME).is_file()
    monkeypatch.undo()
    added = _interrupt_after(monkeypatch, 10**6, KeyboardInterrupt())  # counts only
    result = build_index(tiny_checkpoint, synthetic_corpus.val, out, **kwargs)
    assert sum(added) == 12 - 4, "the resumed build re-added videos its snapshot held"
    assert result.new_videos == 12 and result.manifest.counts["new_videos"] == 12
    _same(_built(out), reference["built"])
    terms = np.load(next(out.glob("generations/*/bank_term*.npz")))
    for name in reference["terms"].files:
        np.testing.assert_array_equal(terms[name], reference["terms"][name])


def test_other_build_or_failed_build_does_not_resume(synthetic_corpus, tiny_checkpoint, tmp_path,
                                                     monkeypatch, reference) -> None:
    out = tmp_path / "index"
    kwargs = {**SETTINGS, "query_bank": reference["bank"], "bank_k": 3}
    _interrupt_after(monkeypatch, 3, KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        build_index(tiny_checkpoint, synthetic_corpus.val, out, **kwargs)
    monkeypatch.undo()
    added = _interrupt_after(monkeypatch, 10**6, KeyboardInterrupt())
    build_index(tiny_checkpoint, synthetic_corpus.val, out, **{**kwargs, "batch_size": 3})  # another build
    assert sum(added) == 12, "a build with other settings resumed a snapshot it did not write"
    with open_database(out / DB_NAME) as db:
        assert db.generations(GenerationStatus.BUILDING) == []
    assert len(list((out / "generations").iterdir())) == 1

    failed = tmp_path / "failed"
    monkeypatch.undo()
    _interrupt_after(monkeypatch, 3, RuntimeError("disk full"))
    with pytest.raises(RuntimeError, match="disk full"):
        build_index(tiny_checkpoint, synthetic_corpus.val, failed, **kwargs)
    with open_database(failed / DB_NAME) as db:
        assert db.generations() == []  # a failed build is removed, snapshot and all
    assert not list((failed / "generations").glob("*"))


def test_snapshots_off_means_no_resume(synthetic_corpus, tiny_checkpoint, tmp_path, monkeypatch) -> None:
    out = tmp_path / "index"
    _interrupt_after(monkeypatch, 3, KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        build_index(tiny_checkpoint, synthetic_corpus.val, out, **{**SETTINGS, "checkpoint_every": 0})
    with open_database(out / DB_NAME) as db:
        assert db.generations(GenerationStatus.BUILDING) == []
    with pytest.raises(ValueError, match="checkpoint_every must be >= 0"):
        build_index(tiny_checkpoint, synthetic_corpus.val, out, **{**SETTINGS, "checkpoint_every": -1})


CHILD = textwrap.dedent(
    """
    import sys, time
    from prvr.data.dataset import PRVRCorpus
    from prvr.index.builder import build_index
    from prvr.index.faiss_store import FaissTokenIndex
    from prvr.config import ExperimentConfig

    root, checkpoint, out, config_json = sys.argv[1:5]
    original = FaissTokenIndex.add

    def slow_add(self, *args, **kwargs):
        time.sleep(0.3)  # so the parent's SIGKILL lands mid-build
        return original(self, *args, **kwargs)

    FaissTokenIndex.add = slow_add
    config = ExperimentConfig.from_json(open(config_json).read())
    corpus = PRVRCorpus(root, "synth", "val", config.data)
    build_index(checkpoint, corpus, out, collection_name="synth", factory="IVF2,Flat", batch_size=2,
                checkpoint_every=4, progress=False)
    """
)


def test_sigkilled_build_resumes(synthetic_corpus, tiny_checkpoint, tmp_path, reference) -> None:
    out = tmp_path / "index"
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    config_json = tmp_path / "config.json"
    config_json.write_text(synthetic_corpus.config.to_json())
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    child = subprocess.Popen([sys.executable, str(script), str(synthetic_corpus.root), str(tiny_checkpoint), str(out),
                              str(config_json)], env=env, cwd=str(REPO), stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not list(out.glob(f"generations/*/{RESUME_NAME}")) and child.poll() is None:
            assert time.monotonic() < deadline, "no snapshot was written"
            time.sleep(0.05)
        time.sleep(0.4)  # one more batch past the snapshot: the resumed build must redo it
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == -signal.SIGKILL, child.stderr.read() if child.stderr else ""
    result = build_index(tiny_checkpoint, synthetic_corpus.val, out, collection_name="synth", factory="IVF2,Flat",
                         batch_size=2, checkpoint_every=4, progress=False)
    assert result.num_videos == 12
    want = reference["built"]
    got = _built(out)
    # the reference has a query bank (its own files); compare the index and the store
    assert got["faiss"] == want["faiss"] and got["ids"] == want["ids"]
    np.testing.assert_array_equal(got["frame"], want["frame"])
    with open_database(out / DB_NAME) as db:
        assert [g.status for g in db.generations()] == [GenerationStatus.ACTIVE]
    assert builder.DEFAULT_CHECKPOINT_EVERY > 0


def test_interrupted_between_store_commit_and_snapshot(synthetic_corpus, tiny_checkpoint, tmp_path, monkeypatch,
                                                       reference) -> None:
    """The store committed appends the snapshot does not hold: the resumed build rolls the store back first."""
    out = tmp_path / "index"
    kwargs = {**SETTINGS, "query_bank": reference["bank"], "bank_k": 3}
    original = FaissTokenIndex.save
    saves: list[Path] = []

    def save(self, directory):
        saves.append(Path(directory))
        if len(saves) == 2:  # the snapshot after 4 videos, whose store entries are already committed
            raise KeyboardInterrupt
        return original(self, directory)

    monkeypatch.setattr(FaissTokenIndex, "save", save)
    with pytest.raises(KeyboardInterrupt):
        build_index(tiny_checkpoint, synthetic_corpus.val, out, **kwargs)
    (gen_dir,) = list((out / "generations").iterdir())
    assert len(TokenStore(gen_dir / TOKENS_DIR, read_only=True)) == 4  # committed past the snapshot (0 videos)
    monkeypatch.undo()
    build_index(tiny_checkpoint, synthetic_corpus.val, out, **kwargs)
    _same(_built(out), reference["built"])


def test_cli_build_index_resumes(synthetic_corpus, tiny_checkpoint, tmp_path, monkeypatch) -> None:
    from click.testing import CliRunner

    from prvr.cli import main as cli

    out = tmp_path / "index"
    argv = ["build-index", "--checkpoint", str(tiny_checkpoint), "--data", str(synthetic_corpus.root),
            "--collection", "synth", "--split", "val", "--out", str(out), "--factory", "IVF2,Flat",
            "--batch-size", "2", "--checkpoint-every", "4", "--no-progress"]
    _interrupt_after(monkeypatch, 3, KeyboardInterrupt())
    interrupted = CliRunner().invoke(cli, argv)
    assert interrupted.exit_code != 0
    monkeypatch.undo()
    added = _interrupt_after(monkeypatch, 10**6, KeyboardInterrupt())
    resumed = CliRunner().invoke(cli, argv)
    assert resumed.exit_code == 0, resumed.output
    assert sum(added) == 8 and '"new_videos": 12' in resumed.output
