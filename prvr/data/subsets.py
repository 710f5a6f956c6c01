"""Query subsets of a split: named lists of cap ids scored against the split's WHOLE video corpus.

A subset (e.g. ANet-CapProxy's unseen-words queries of DEV-VAL) is not a split of its own: its queries are ranked
among every video of the split, and only the metrics are taken over the subset. It is stored beside the caption
file, one cap id a line::

    <root>/<collection>/TextData/<collection><split>.<name>.qids.txt

``prvr eval`` and ``prvr train``'s per-epoch validation report every subset found there beside the full split.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from prvr.data.captions import caption_path
from prvr.fileio import write_text_atomic

__all__ = ["subset_path", "write_query_subset", "read_query_subset", "find_query_subsets"]

_SUFFIX = ".qids.txt"


def subset_path(root: str | os.PathLike[str], collection: str, split: str, name: str) -> Path:
    """``<root>/<collection>/TextData/<collection><split>.<name>.qids.txt``."""
    if not name or "." in name or "/" in name or any(c.isspace() for c in name):
        raise ValueError(f"subset name {name!r} must be non-empty, without '.', '/' or whitespace")
    return caption_path(root, collection, split).with_name(f"{collection}{split}.{name}{_SUFFIX}")


def write_query_subset(root: str | os.PathLike[str], collection: str, split: str, name: str,
                       cap_ids: Iterable[str]) -> Path:
    """Write a subset atomically; returns its path."""
    path = subset_path(root, collection, split, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, "".join(f"{cap_id}\n" for cap_id in cap_ids))
    return path


def read_query_subset(path: str | os.PathLike[str]) -> list[str]:
    """The cap ids of a subset file, in file order (blank lines skipped)."""
    return [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def find_query_subsets(root: str | os.PathLike[str], collection: str, split: str) -> dict[str, list[str]]:
    """Every subset stored for a split: name -> cap ids (empty when there is none)."""
    captions = caption_path(root, collection, split)
    prefix = f"{collection}{split}."
    found: dict[str, list[str]] = {}
    if not captions.parent.is_dir():
        return found
    for path in sorted(captions.parent.glob(f"{prefix}*{_SUFFIX}")):
        name = path.name[len(prefix) : -len(_SUFFIX)]
        if name and "." not in name:
            found[name] = read_query_subset(path)
    return found
