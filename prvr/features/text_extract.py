"""Encode a collection's captions into its query token feature file with one text backbone (`prvr extract-text`).

Shape letters: L tokens of one query, D the text backbone's feature width.

Output: ``<root>/<collection>/TextData/<name>_<collection>_query_feat.hdf5``, one (L, D) float32 dataset per cap id
of every split encoded, as ``prvr.data.features.open_query_features`` reads it for `prvr train`. The file's root
attribute ``text_backbone`` is the encoder's id (``clip:<name>@<sha12>`` for a CLIP text tower), which
``prvr.engine.config_for_corpus`` copies into the checkpoint; ``text_backbone_record`` is the record (id, local
path, kind) that ``prvr.text_encoders.load_query_encoder`` loads the same encoder from. The tokens are exactly what
that encoder's ``encode(texts).tokens`` gives at search time (for a CLIP / SigLIP text tower: one token, the
projected text embedding, which DreamPRVR's query branch then reads as a one-token query).

Encoding a split into an existing file keeps the cap ids of the other splits (one file serves train and val); a file
written by another text backbone is refused rather than mixed.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from tqdm import tqdm

from prvr.data.captions import caption_path, read_captions
from prvr.data.features import query_feature_backbone, query_feature_path, write_hdf5_features

__all__ = ["TextExtractionResult", "caption_splits", "text_feature_name", "extract_query_features"]

logger = logging.getLogger(__name__)

ENCODE_CHUNK = 256  # sentences per encoder call (the encoder batches inside)


@dataclass(frozen=True)
class TextExtractionResult:
    """What :func:`extract_query_features` wrote.

    Attributes:
        path: the query feature file.
        feature_name: its name (``--text-feature`` / ``data.text_feature`` of `prvr train`).
        text_backbone: the encoder's id, recorded in the file.
        splits: split -> queries encoded.
        kept: cap ids of other splits kept from the existing file.
        dim: D.
    """

    path: Path
    feature_name: str
    text_backbone: str
    splits: dict[str, int]
    kept: int
    dim: int

    def summary(self) -> dict[str, Any]:
        return {"features": str(self.path), "text_feature": self.feature_name, "text_backbone": self.text_backbone,
                "splits": self.splits, "queries": sum(self.splits.values()), "kept_from_file": self.kept,
                "dim": self.dim}


def caption_splits(root: str | os.PathLike[str], collection: str) -> list[str]:
    """The splits of a collection that have a caption file ``TextData/<collection><split>.caption.txt``, sorted."""
    folder = Path(root) / collection / "TextData"
    suffix = ".caption.txt"
    names = [p.name[len(collection):-len(suffix)] for p in folder.glob(f"{collection}*{suffix}")] if folder.is_dir() \
        else []
    return sorted(name for name in names if name)


def text_feature_name(encoder_id: str) -> str:
    """The default query feature name of a text backbone: its model name in snake case (``clip:tiny-clip@..`` ->
    ``tiny_clip``), as ``prvr extract`` names a frame feature folder."""
    from prvr.features.extract import feature_name_for

    return feature_name_for(encoder_id)


def extract_query_features(root: str | os.PathLike[str], collection: str, encoder: Any, record: dict[str, Any], *,
                           splits: Sequence[str] | None = None, feature_name: str | None = None,
                           progress: bool = True) -> TextExtractionResult:
    """Encode the captions of ``splits`` with ``encoder`` into the collection's query feature file.

    Args:
        root: the data root.
        collection: the collection (``TextData/<collection><split>.caption.txt`` per split).
        encoder: a text encoder with ``encoder_id``, ``dim`` and ``encode(texts).tokens``
            (``prvr.text_encoders.load_text_encoder``).
        record: its ``{"id", "path", "kind"?}`` record, stored in the file.
        splits: the splits to encode (default: every split with a caption file).
        feature_name: the feature name (default :func:`text_feature_name` of the encoder id).
        progress: show a progress bar.

    Returns:
        What was written.

    Raises:
        FileNotFoundError: a split has no caption file.
        ValueError: no split to encode, one cap id with two texts in two splits, or an existing file of another text
            backbone (both ids named).
    """
    from prvr.features.backbones import backbone_ids_match

    wanted = list(splits) if splits else caption_splits(root, collection)
    if not wanted:
        raise ValueError(f"no caption files in {Path(root) / collection / 'TextData'} (expected "
                         f"{collection}<split>.caption.txt); write the captions first or pass --split")
    name = feature_name or text_feature_name(encoder.encoder_id)
    texts: dict[str, str] = {}
    counts: dict[str, int] = {}
    for split in wanted:
        records = read_captions(caption_path(root, collection, split))
        counts[split] = len(records)
        for query in records:
            if texts.setdefault(query.query_id, query.text) != query.text:
                raise ValueError(f"cap id {query.query_id!r} has two texts in the caption files of {collection} "
                                 f"(split {split!r} and an earlier one); cap ids must be unique across splits")
    path = query_feature_path(root, collection, name)
    previous = query_feature_backbone(root, collection, name)
    kept: dict[str, np.ndarray] = {}
    if path.is_file():
        if previous is None or not backbone_ids_match(previous, encoder.encoder_id):
            raise ValueError(
                f"{path} holds query features of text backbone {previous!r}, not {encoder.encoder_id!r}; features of "
                "two text backbones cannot share a file: pass another --name, or delete the file to re-extract")
        with h5py.File(path, "r") as handle:
            kept = {key: np.asarray(handle[key]) for key in handle.keys() if key not in texts}
    ids = list(texts)
    tokens: dict[str, np.ndarray] = {}
    bar = tqdm(total=len(ids), desc=f"queries {name}", unit="query", disable=not progress)
    for start in range(0, len(ids), ENCODE_CHUNK):
        chunk = ids[start:start + ENCODE_CHUNK]
        encoded = encoder.encode([texts[key] for key in chunk])
        for key, rows in zip(chunk, encoded.tokens):
            tokens[key] = np.asarray(rows, dtype=np.float32)  # (L, D)
        bar.update(len(chunk))
    bar.close()
    path.parent.mkdir(parents=True, exist_ok=True)
    attrs = {"text_backbone": encoder.encoder_id, "text_backbone_record": json.dumps(record, sort_keys=True),
             "encoder_params": json.dumps(encoder.params(), sort_keys=True)}
    write_hdf5_features(path, [*kept.items(), *tokens.items()], np.float32, attrs)
    logger.info("wrote %d query features (%d kept) to %s", len(tokens), len(kept), path)
    return TextExtractionResult(path, name, encoder.encoder_id, counts, len(kept), int(encoder.dim))
