"""Removing the data of retired index generations (`prvr index prune`): FAISS generation directories and Milvus
collections.

Every build, ``index add`` and ``index remove`` writes a full new generation and retires the previous one; nothing
else ever deletes a retired generation, so without pruning an index grows by one snapshot per change (FAISS: a
directory; Milvus: two collections in the engine).

The rule. Under the index's build lock (so no build, add, remove or calibrate runs meanwhile; a running one makes
prune fail at once with the lock's message), prune removes

* generations left ``building`` by crashed builds (what the next build would remove anyway);
* ``retired`` generations, except the ``keep`` most recently retired ones (rollback targets) and any retired less than
  ``min_age_s`` ago: a service keeps answering from the generation it loaded until its poller (``prvr serve
  --poll-interval``, 2 s) swaps, and requests that hold the old Retriever finish on it;
* orphans: generation directories no database row names and collections of this index (``prvr_<uid>_*``) no row
  names, which only a prune or clean-up killed half-way leaves.

Never the active generation. A Retriever that never polls (a script holding ``Retriever.load`` for longer than
``min_age_s`` after the generation it loaded was retired) is invisible to the database: reload it, or pass a larger
``--min-age``.

Crash safety. A retired generation's row is deleted first (one transaction: from then on nothing can roll back onto
it), then the sweep removes every directory and collection that no row names. A prune killed anywhere leaves either
a retired row with all its data, or data no row names, which the next prune (or the same one, rerun) sweeps: the
operation is idempotent and a rerun finishes it. The reverse order would leave a ``retired`` row whose data is gone,
a rollback target that cannot load. A ``building`` row goes the other way, data first and row last, as in the
builder's own clean-up: nothing can activate it, and its row is the only record of the engine collections of a
build that never committed (when no generation ever became active, nothing else names the engine).
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from prvr.index.backend import drop_engine_collections, engine_collections
from prvr.index.builder import _build_lock
from prvr.index.catalog import Database, GenerationStatus, IndexGeneration
from prvr.index.layout import GENERATIONS_DIR, generation_path, open_index_database

__all__ = ["DEFAULT_KEEP", "DEFAULT_MIN_AGE_S", "PruneReport", "prune_generations"]

logger = logging.getLogger(__name__)

DEFAULT_KEEP = 1  # retired generations kept: the last one is the rollback target
DEFAULT_MIN_AGE_S = 600.0  # retired for less than this: a service may still answer from it (poll every 2 s)


@dataclass(frozen=True)
class PruneReport:
    """What a prune removed (or, with ``dry_run``, would remove).

    Attributes:
        removed: one entry per generation row deleted: ``{"generation", "directory", "status", "reason"}``.
        kept: one entry per retired generation kept: ``{"generation", "directory", "reason"}``.
        directories: generation directories deleted, with their bytes (``{"directory", "bytes"}``).
        collections: Milvus collections dropped.
        dry_run: nothing was changed.
    """

    removed: list[dict[str, Any]] = field(default_factory=list)
    kept: list[dict[str, Any]] = field(default_factory=list)
    directories: list[dict[str, Any]] = field(default_factory=list)
    collections: list[str] = field(default_factory=list)
    dry_run: bool = False

    @property
    def bytes_freed(self) -> int:
        return sum(int(entry["bytes"]) for entry in self.directories)

    def as_dict(self) -> dict[str, Any]:
        return {"dry_run": self.dry_run, "removed": self.removed, "kept": self.kept, "directories": self.directories,
                "collections": self.collections, "bytes_freed": self.bytes_freed}


def _directory_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def _plan(generations: list[IndexGeneration], keep: int, min_age_s: float,
          now: datetime) -> tuple[list[tuple[IndexGeneration, str]], list[dict[str, Any]]]:
    """(generations to delete with the reason, retired generations kept with the reason)."""
    doomed = [(g, "left building by an interrupted build") for g in generations
              if g.status is GenerationStatus.BUILDING]
    retired = [g for g in generations if g.status is GenerationStatus.RETIRED]
    epoch = datetime.min.replace(tzinfo=timezone.utc)
    retired.sort(key=lambda g: (g.retired_at or epoch, g.id), reverse=True)  # most recently retired first
    kept = []
    for rank, generation in enumerate(retired):
        age = now - (generation.retired_at or epoch)
        if rank < keep:
            reason = f"one of the {keep} most recently retired (rollback)"
        elif age < timedelta(seconds=min_age_s):
            reason = f"retired {age.total_seconds():.0f} s ago, less than --min-age {min_age_s:g} s"
        else:
            doomed.append((generation, f"retired {age.total_seconds():.0f} s ago"))
            continue
        kept.append({"generation": generation.id, "directory": generation.directory, "reason": reason})
    return doomed, kept


def _engines(generations: list[IndexGeneration]) -> dict[str, set[str]]:
    """``{engine url: {index uid}}`` recorded by the generations' rows (empty for FAISS)."""
    engines: dict[str, set[str]] = {}
    for generation in generations:
        engine = (generation.params or {}).get("engine")
        if engine:
            engines.setdefault(engine["url"], set()).add(engine["uid"])
    return engines


def _remove_directory(path: Path) -> None:
    shutil.rmtree(path)


def _remove_data(path: Path, report: PruneReport) -> None:
    if path.is_dir():
        size = _directory_bytes(path)
        if not report.dry_run:
            _remove_directory(path)
        report.directories.append({"directory": path.name, "bytes": size})


def _sweep(index_dir: Path, live: list[IndexGeneration], engines: dict[str, set[str]],
           report: PruneReport) -> None:
    """Delete every generation directory and drop every collection of this index that no live row names (and that
    this prune has not removed already)."""
    names = {g.directory for g in live} | {entry["directory"] for entry in report.directories}
    root = index_dir / GENERATIONS_DIR
    for path in sorted(root.iterdir()) if root.is_dir() else []:
        if path.name not in names:
            _remove_data(path, report)
    done = set(report.collections)
    for url, uids in engines.items():
        for name in engine_collections(url, uids, names, drop=not report.dry_run):
            if name not in done:
                report.collections.append(name)


def prune_generations(index_dir: str | Path, *, keep: int = DEFAULT_KEEP, min_age_s: float = DEFAULT_MIN_AGE_S,
                      dry_run: bool = False, now: datetime | None = None) -> PruneReport:
    """Remove the data of the retired generations that are no longer needed (the rule: module docstring).

    Args:
        index_dir: an index directory.
        keep: retired generations kept, most recently retired first (0: none beyond ``min_age_s``).
        min_age_s: retired generations younger than this are kept.
        dry_run: report what would be removed, change nothing.
        now: the time the ages are measured at (tests); default the current UTC time.

    Returns:
        A :class:`PruneReport`.

    Raises:
        ValueError: on a negative ``keep`` / ``min_age_s``.
        RuntimeError: when a build of this index is running (its lock is held).
        FileNotFoundError: when ``index_dir`` is not an index directory.
    """
    if keep < 0 or min_age_s < 0:
        raise ValueError(f"--keep and --min-age must be >= 0, got {keep} and {min_age_s}")
    index_dir = Path(index_dir)
    now = now or datetime.now(timezone.utc)
    db = open_index_database(index_dir)
    try:
        with _build_lock(index_dir):
            return _prune_locked(db, index_dir, keep, min_age_s, dry_run, now)
    finally:
        db.close()


def _prune_locked(db: Database, index_dir: Path, keep: int, min_age_s: float, dry_run: bool,
                  now: datetime) -> PruneReport:
    generations = db.generations()
    engines = _engines(generations)
    doomed, kept = _plan(generations, keep, min_age_s, now)
    report = PruneReport(kept=kept, dry_run=dry_run)
    for generation, reason in doomed:
        if generation.status is GenerationStatus.BUILDING:
            # data first, row last (as the builder's own clean-up): the row is what names the engine and uid of a
            # build that never committed, and no one can activate it meanwhile
            _remove_data(generation_path(index_dir, generation.directory), report)
            report.collections.extend(drop_engine_collections(generation.params, generation.directory,
                                                              dry_run=dry_run))
        if not dry_run:
            db.abandon_generation(generation.id)  # a retired row before its data: from here on that is an orphan
        report.removed.append({"generation": generation.id, "directory": generation.directory,
                               "status": generation.status.value, "reason": reason})
    gone = {generation.id for generation, _ in doomed}
    live = [g for g in generations if g.id not in gone] if dry_run else db.generations()
    _sweep(index_dir, live, engines, report)
    if not dry_run and (report.removed or report.directories or report.collections):
        logger.info("pruned %s: %d generations, %d directories (%d bytes), %d collections", index_dir,
                    len(report.removed), len(report.directories), report.bytes_freed, len(report.collections))
    return report

