"""Crash safety under SIGKILL: `prvr build-index` and `prvr index add` killed at many random points never disturb
the serving generation, and the next run commits what the killed one meant to.

Each command is first run unkilled (twice; the faster run counts), to measure how long it takes to print its result
and when the directory of the generation it writes appears. Then :data:`KILLS` runs are SIGKILLed at seeded random
points: half at stratified uniform fractions of the whole run, half at stratified fractions of its write window
(from the generation directory to the result); the fractions reach past 1, so some runs commit or finish first. The
commands run in processes forked from a server that imported torch, faiss and prvr once (:data:`SERVER`, then
``prvr.cli.main`` with the command's argv), so the kills spread over the commands and not over the interpreter's
imports. After every kill:

(a) a Retriever opened before the kill, and a fresh ``Retriever.load``, answer the fixed queries exactly as the
    active generation did before the kill (video ids and float scores, compared with ``==``); a kill that landed
    after the commit must instead have activated a complete generation holding the new videos;
(b) ``prvr index info --json`` works and names the active generation;
(c) the same command run again (in-process, through click) succeeds: the split's videos are searchable, the video
    count is right and the old videos keep their scores.

At the end the active generation's recorded files all match their sizes and hashes, no ``building`` generation or
orphaned generation directory is left, and planted leftovers (a half-written generation directory, a partial
temporary checkpoint) break neither loading, ``prvr index info`` nor the next add.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import helpers
from prvr.cli import main
from prvr.data.dataset import PRVRCorpus, iter_query_batches
from prvr.fileio import file_sha256
from prvr.index.catalog import GenerationStatus, VideoStatus, open_database
from prvr.index.layout import DB_NAME, FAISS_DIR, GENERATIONS_DIR, MODELS_DIR, open_active
from prvr.retriever import Retriever

REPO = Path(__file__).resolve().parents[1]
KILLS = 8  # SIGKILLs per command
MEASURED = 2  # unkilled runs per command before the kills: the faster one sets the kill points
SPLIT_VIDEOS = 3  # videos each build / add brings
OVERSHOOT = 1.1  # kill points span [0, OVERSHOOT x the measured duration]: the last ones may land after the end
SEED = 2024
POLL = 0.002  # seconds between looks for the generation directory

# A fork server: imports everything slow once, then forks one process per `prvr` command (argv as a JSON line on
# stdin). The forked process runs prvr.cli.main and leaves with os._exit (no interpreter teardown, so nothing that
# the command did can depend on it); the server reports "started PID" and "exit PID CODE" on stdout.
SERVER = textwrap.dedent(
    """
    import json, os, sys, traceback
    import faiss, torch  # noqa: F401
    import prvr.commands.common, prvr.commands.index_cli, prvr.data.dataset, prvr.index.builder  # noqa: F401
    from prvr.cli import main

    print("ready", flush=True)
    for line in sys.stdin:
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                main(json.loads(line), prog_name="prvr")
            except SystemExit as done:
                code = done.code if isinstance(done.code, int) else int(done.code is not None)
            except BaseException:
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        print(f"started {pid}", flush=True)
        print(f"exit {pid} {os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])}", flush=True)
    """
)


Answers = list[list[tuple[str, float]]]


@dataclass(frozen=True)
class Run:
    """One run of a command: its exit code (0, or -9 when the kill landed) and, in seconds from its start, when its
    generation directory appeared and when it printed its result (None: it did not get there)."""

    code: int
    generation_at: float | None
    output_at: float | None


class _ForkServer:
    """Drives :data:`SERVER`: runs a `prvr` command in a fresh process and SIGKILLs it at a chosen moment."""

    def __init__(self, script: Path, log: Path) -> None:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
               "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        self.log = log
        with open(log, "wb") as stderr:
            self.process = subprocess.Popen([sys.executable, str(script)], stdin=subprocess.PIPE,
                                            stdout=subprocess.PIPE, stderr=stderr, env=env, cwd=str(REPO), bufsize=0)
        self._buffer = b""
        assert self._line(120) == "ready", f"the fork server did not start: {log.read_text()}"

    def _line(self, timeout: float) -> str | None:
        """The server's next stdout line, or None after ``timeout`` seconds."""
        assert self.process.stdout is not None
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([self.process.stdout], [], [], remaining)[0]:
                return None
            chunk = os.read(self.process.stdout.fileno(), 1 << 16)
            assert chunk, f"the fork server died: {self.log.read_text()}"
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.decode()

    def run(self, argv: list[str], generations: Path, kill: tuple[str, float] | None = None) -> Run:
        """Run ``prvr argv``, watching ``generations`` for the directory of the generation it writes.

        Args:
            argv: the command line after ``prvr``.
            generations: the index's ``generations/`` folder.
            kill: ``(anchor, seconds)``: SIGKILL the command that long after it started (anchor ``"start"``) or
                after its generation directory appeared (``"generation"``); None: let it finish.
        """
        assert self.process.stdin is not None
        known = set(os.listdir(generations))
        self.process.stdin.write((json.dumps(argv) + "\n").encode())
        self.process.stdin.flush()
        line = self._line(60)
        assert line is not None and line.startswith("started "), line
        pid, start = int(line.split()[1]), time.monotonic()
        generation_at = output_at = kill_at = None
        if kill is not None and kill[0] == "start":
            kill_at = start + kill[1]
        while True:
            now = time.monotonic()
            if generation_at is None and set(os.listdir(generations)) - known:
                generation_at = now - start
                if kill is not None and kill[0] == "generation":
                    kill_at = now + kill[1]
            if kill_at is not None and now >= kill_at:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                kill = kill_at = None
            wait = 60.0 if kill_at is None else kill_at - now
            line = self._line(min(wait, POLL) if generation_at is None else wait)
            if line is None:
                assert time.monotonic() - start < 60, f"prvr {argv[:2]} hangs: {self.log.read_text()}"
            elif line.startswith("{"):
                output_at = time.monotonic() - start
            elif line.startswith(f"exit {pid} "):
                code = int(line.split()[2])
                assert code in (0, -signal.SIGKILL), f"prvr {argv[:2]} failed ({code}): {self.log.read_text()}"
                return Run(code, generation_at, output_at)

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(timeout=60)


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    """Single-threaded torch and FAISS in this process too, as in the commands' processes (OMP_NUM_THREADS=1): on
    a small shared machine thread pools only spin against the other processes."""
    import faiss

    threads, faiss_threads = torch.get_num_threads(), faiss.omp_get_max_threads()
    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        faiss.omp_set_num_threads(faiss_threads)


@pytest.fixture(scope="module")
def crash_setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """A 12-video index (one active generation), its checkpoint, the fork server, and splits ``b0..`` / ``a0..`` of
    :data:`SPLIT_VIDEOS` videos each (``MEASURED + KILLS`` of each: the measuring runs, then the killed runs)."""
    from prvr.checkpoint import save_checkpoint
    from prvr.data.synthetic import make_synthetic_corpus
    from prvr.engine import config_for_corpus
    from prvr.index.builder import build_index
    from prvr.model import DreamPRVR

    tmp = tmp_path_factory.mktemp("crash")
    script = tmp / "fork_server.py"
    script.write_text(SERVER)
    server = _ForkServer(script, tmp / "fork_server.log")  # its imports overlap the setup below
    try:
        root = tmp / "data"
        extra = {f"{kind}{i}": SPLIT_VIDEOS for kind in "ba" for i in range(MEASURED + KILLS)}
        make_synthetic_corpus(root, "synth", splits={"val": 12, **extra}, seed=11, text_dim=helpers.TEXT_DIM,
                              frame_range=(20, 30))
        config = helpers.tiny_experiment_config()
        val = PRVRCorpus(root, "synth", "val", config.data)
        config = config_for_corpus(config, val)
        checkpoint = tmp / "model.pt"
        torch.manual_seed(0)
        save_checkpoint(checkpoint, model=DreamPRVR(config.model), config=config, epoch=0)
        base = tmp / "base"
        build_index(checkpoint, val, base, collection_name="synth", progress=False)
        yield {"root": root, "config": config, "val": val, "checkpoint": checkpoint, "base": base, "server": server}
    finally:
        server.close()


# ------------------------------------------------------------------------------------------------ checks


def _answers(retriever: Retriever, corpus: PRVRCorpus) -> tuple[int, Answers]:
    """(generation id, the exhaustive ranking of every video for every query of ``corpus``)."""
    k = retriever.num_videos
    rows: Answers = []
    for batch, _ in iter_query_batches(corpus, 64):
        found = retriever.search_features(batch, k, 200 * k, localize=False)
        rows.extend([(r.video_id, r.score) for r in row] for row in found)
    return retriever.generation_id, rows


def _load_answers(index_dir: Path, corpus: PRVRCorpus) -> tuple[int, Answers]:
    with Retriever.load(index_dir) as retriever:
        return _answers(retriever, corpus)


def _invoke(argv: list[str]) -> dict:
    """Run ``prvr argv`` in this process; its JSON output."""
    result = CliRunner().invoke(main, argv, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def _statuses(index_dir: Path) -> dict[str, GenerationStatus]:
    """Generation directory name -> status."""
    with open_database(index_dir / DB_NAME) as db:
        return {g.directory: g.status for g in db.generations()}


def _check_active_complete(index_dir: Path, num_videos: int) -> None:
    """The active generation holds ``num_videos`` videos and every file its row records has that size and hash."""
    with open_active(index_dir) as active:
        assert active.manifest.counts["videos"] == num_videos == active.generation.num_videos
        files = active.generation.files
        assert "manifest.json" in files and any(name.startswith("faiss/") for name in files)
        for name, entry in files.items():
            path = active.directory / name
            assert path.is_file() and path.stat().st_size == entry["size"], name
            assert file_sha256(path) == entry["sha256"], name


def _check_no_leftovers(index_dir: Path) -> None:
    """One active generation, none left ``building``, and every generation directory on disk has a row."""
    statuses = _statuses(index_dir)
    assert GenerationStatus.BUILDING not in statuses.values(), statuses
    assert list(statuses.values()).count(GenerationStatus.ACTIVE) == 1
    on_disk = {path.name for path in (index_dir / GENERATIONS_DIR).iterdir()}
    assert on_disk <= set(statuses), f"orphaned generation directories: {sorted(on_disk - set(statuses))}"


def _check_grown(before: Answers, after: Answers, old_ids: set[str], new_ids: set[str]) -> None:
    """``after`` ranks exactly the old and the new videos, and the old ones in the order and with the scores of
    ``before`` (a query-video score depends on that pair's tokens only)."""
    assert all({vid for vid, _ in row} == old_ids | new_ids for row in after)
    restricted = [[(vid, score) for vid, score in row if vid in old_ids] for row in after]
    assert [[vid for vid, _ in row] for row in restricted] == [[vid for vid, _ in row] for row in before]
    np.testing.assert_allclose([[s for _, s in row] for row in restricted], [[s for _, s in row] for row in before],
                               rtol=0, atol=1e-6)


def _check_debris_harmless(setup: dict, index_dir: Path, num_videos: int) -> None:
    """Planted debris of crashes (a half-written generation directory no row names, a partial temporary checkpoint
    copy) changes nothing: the index answers as before, info works, an add commits past it (and deletes the
    temporary copy)."""
    _check_no_leftovers(index_dir)
    before = _load_answers(index_dir, setup["val"])[1]
    stray = index_dir / GENERATIONS_DIR / "gen-999999"
    (stray / FAISS_DIR).mkdir(parents=True)
    (stray / FAISS_DIR / "clip.faiss").write_bytes(b"\0" * 100)
    (stray / "manifest.json").write_text('{"generation": "gen-99')  # truncated
    (index_dir / MODELS_DIR / "..incoming.pt.0123abcd.tmp").write_bytes(b"PK\3\4 partial")
    assert _load_answers(index_dir, setup["val"])[1] == before
    assert _invoke(["index", "info", str(index_dir), "--json"])["counts"]["videos"] == num_videos
    _invoke(["index", "add", str(index_dir), "--data", str(setup["root"]), "--collection", "synth", "--split", "val",
             "--no-progress"])  # nothing new to add: one more generation all the same
    _check_active_complete(index_dir, num_videos)
    assert "gen-999999" not in _statuses(index_dir)
    assert not list((index_dir / MODELS_DIR).glob(".*.tmp")), "the killed checkpoint copy was not cleaned up"
    assert _load_answers(index_dir, setup["val"])[1] == before


# ------------------------------------------------------------------------------------------------ the campaign


def _kill_plan(rng: np.random.Generator, measured: Run) -> list[tuple[str, float]]:
    """:data:`KILLS` kill points, in random order: half at stratified uniform fractions of ``[0, OVERSHOOT]`` times
    the whole run (from its start), half likewise over its write window (from the appearance of its generation
    directory to its result), where the interesting kills land whatever the machine's speed."""
    assert measured.generation_at is not None and measured.output_at is not None
    half = KILLS // 2
    spans = {"start": measured.output_at, "generation": measured.output_at - measured.generation_at}
    plan = [(anchor, float(OVERSHOOT * span * (stratum + rng.uniform()) / count))
            for (anchor, span), count in zip(spans.items(), (KILLS - half, half)) for stratum in range(count)]
    return [plan[i] for i in rng.permutation(KILLS)]


def _kill_campaign(setup: dict, index_dir: Path, argv_of: Callable[[str], list[str]], prefix: str) -> dict:
    """Measure one unkilled run of ``argv_of(split)``, then SIGKILL :data:`KILLS` runs at random points (see
    :func:`_kill_plan`), checking (a), (b) and (c) of the module docstring after each.

    Returns:
        How the kills landed: ``killed`` before the commit (of which ``partial``: with a half-written generation
        on disk), ``committed`` (killed after the commit), ``finished`` (before the kill).
    """
    server: _ForkServer = setup["server"]
    val = setup["val"]
    generations = index_dir / GENERATIONS_DIR
    splits = [f"{prefix}{i}" for i in range(MEASURED + KILLS)]
    runs = [server.run(argv_of(split), generations) for split in splits[:MEASURED]]
    assert all(run.code == 0 and run.generation_at is not None and run.output_at is not None for run in runs)
    measured = min(runs, key=lambda run: run.output_at or 0.0)  # the first run of a fresh process is the slowest
    plan = _kill_plan(np.random.default_rng(SEED + ord(prefix)), measured)
    landed = {"killed": 0, "partial": 0, "committed": 0, "finished": 0}
    serving = Retriever.load(index_dir)  # a server holding the active generation open across each kill
    try:
        generation, before = _answers(serving, val)
        num_videos = len(before[0])
        for split, kill in zip(splits[MEASURED:], plan):
            old_ids = {vid for vid, _ in before[0]}
            new_ids = set(PRVRCorpus(setup["root"], "synth", split, setup["config"].data).video_ids)
            code = server.run(argv_of(split), generations, kill).code
            statuses = _statuses(index_dir)
            # (a) the open Retriever and a fresh load answer byte-identically, or the kill came after a complete commit
            assert _answers(serving, val) == (generation, before), "the serving Retriever changed its answers"
            active_now, answers_now = _load_answers(index_dir, val)
            committed = active_now != generation
            if committed:
                _check_active_complete(index_dir, num_videos + SPLIT_VIDEOS)
                _check_grown(before, answers_now, old_ids, new_ids)
                landed["committed" if code else "finished"] += 1
            else:
                assert code == -signal.SIGKILL
                assert answers_now == before, f"killed {kill}: the answers changed"
                _check_active_complete(index_dir, num_videos)
                landed["killed"] += 1
                landed["partial"] += GenerationStatus.BUILDING in statuses.values()
            # (b) prvr index info works and names the active generation
            info = _invoke(["index", "info", str(index_dir), "--json"])
            assert info["active"] == next(name for name, s in _statuses(index_dir).items()
                                          if s is GenerationStatus.ACTIVE)
            assert info["counts"]["videos"] == num_videos + SPLIT_VIDEOS * committed
            # (c) the next run succeeds: the new videos are searchable, the old ones keep their scores
            output = _invoke(argv_of(split))
            assert output["new_videos"] == SPLIT_VIDEOS * (not committed)
            num_videos += SPLIT_VIDEOS
            assert output["videos"] == num_videos
            _check_no_leftovers(index_dir)
            _check_active_complete(index_dir, num_videos)
            serving.close()
            serving = Retriever.load(index_dir)
            generation, after = _answers(serving, val)
            _check_grown(before, after, old_ids, new_ids)
            before = after
    finally:
        serving.close()
    with open_database(index_dir / DB_NAME) as db:  # every video a killed run registered got indexed after all
        counts = db.count_by_status()
        assert counts[VideoStatus.PENDING] == 0 and counts[VideoStatus.INDEXED] == num_videos
    _check_debris_harmless(setup, index_dir, num_videos)
    print(f"\nprvr {argv_of('-')[0]}: unkilled run {measured.output_at:.2f} s (generation directory at "
          f"{measured.generation_at:.2f} s); kills {', '.join(f'{a} + {t:.3f} s' for a, t in sorted(plan))}; "
          f"landed {landed}")
    assert landed["killed"] >= KILLS // 2, f"only {landed['killed']} of {KILLS} kills landed mid-run: {landed}"
    assert landed["partial"] >= 1, f"no kill landed while a generation was being written: {landed}"
    return landed


def test_killed_build_index_keeps_serving(crash_setup, tmp_path) -> None:
    """`prvr build-index --out INDEX` over an index with an active generation, SIGKILLed at random points."""
    index_dir = tmp_path / "index"
    shutil.copytree(crash_setup["base"], index_dir)
    checkpoint, root = str(crash_setup["checkpoint"]), str(crash_setup["root"])

    def argv_of(split: str) -> list[str]:
        return ["build-index", "--checkpoint", checkpoint, "--data", root, "--collection", "synth", "--split", split,
                "--out", str(index_dir), "--batch-size", "1", "--no-progress"]

    _kill_campaign(crash_setup, index_dir, argv_of, "b")


def test_killed_index_add_keeps_serving(crash_setup, tmp_path) -> None:
    """`prvr index add INDEX --split ...`, SIGKILLed at random points."""
    index_dir = tmp_path / "index"
    shutil.copytree(crash_setup["base"], index_dir)
    root = str(crash_setup["root"])

    def argv_of(split: str) -> list[str]:
        return ["index", "add", str(index_dir), "--data", root, "--collection", "synth", "--split", split,
                "--batch-size", "1", "--no-progress"]

    _kill_campaign(crash_setup, index_dir, argv_of, "a")


class _Killed(BaseException):
    """Stands in for a SIGKILL at one exact point of the builder."""


def test_build_killed_while_removing_leftovers_leaves_no_orphan(crash_setup, tmp_path, monkeypatch) -> None:
    """A build that dies while deleting the directory of an earlier crashed build (a window too narrow for the
    random kills) must leave that directory on record, so the next build still removes it."""
    from prvr.index import builder

    index_dir = tmp_path / "index"
    shutil.copytree(crash_setup["base"], index_dir)
    with open_database(index_dir / DB_NAME) as db:  # what a build killed mid-write leaves: a building row + files
        active = db.active_generation()
        stale = db.get_generation(db.begin_generation(model_id=active.model_id, factories=dict(active.factories),
                                                      faiss_version="killed")).directory
    partial = index_dir / GENERATIONS_DIR / stale / "tokens"
    partial.mkdir(parents=True)
    for name in ("shard-0.bin", "shard-1.bin"):
        (partial / name).write_bytes(b"\0" * 64)
    real_rmtree = shutil.rmtree

    def dies_midway(path, *args, **kwargs):  # deletes a file of the leftovers, then the process is gone
        next(Path(path).rglob("*.bin")).unlink()
        raise _Killed

    monkeypatch.setattr(builder.shutil, "rmtree", dies_midway)
    with pytest.raises(_Killed):
        builder.build_index(crash_setup["checkpoint"], crash_setup["val"], index_dir, collection_name="synth",
                            progress=False)
    monkeypatch.setattr(builder.shutil, "rmtree", real_rmtree)
    assert _load_answers(index_dir, crash_setup["val"])[0] == active.id  # still serving
    result = builder.build_index(crash_setup["checkpoint"], crash_setup["val"], index_dir, collection_name="synth",
                                 progress=False)
    assert result.num_videos == 12 and result.new_videos == 0
    _check_no_leftovers(index_dir)
    assert not (index_dir / GENERATIONS_DIR / stale).exists()
