"""The self-describing manifest of one index generation: model, checkpoint hash, data source, counts, FAISS setup."""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from prvr.fileio import write_text_atomic

__all__ = ["MANIFEST_NAME", "MANIFEST_FORMAT_VERSION", "IndexManifest", "load_manifest", "write_manifest"]

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT_VERSION = 1


def _utc_now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class IndexManifest:
    """What one generation directory holds and how it was made (``manifest.json``).

    Attributes:
        experiment_config: the checkpoint's embedded ``ExperimentConfig`` as JSON text.
        checkpoint_path: the checkpoint the tokens were encoded with: relative to the index directory (the builder
            copies it to models/<sha256[:16]>.pt), or absolute.
        checkpoint_sha256: its sha256 (64 hex chars); a Retriever refuses any other checkpoint.
        text_backbone: ``{"id": encoder id or name, "path": local model folder or None}``, or None when unknown.
        data_source: ``{"root", "collection", "split", "video_feature", "text_feature"}`` of the last added corpus.
        counts: ``{"videos", "new_videos", "clip_tokens", "frame_tokens", "ntotal"}``.
        faiss: ``describe()`` of the saved token index (``FaissTokenIndex``, or ``MilvusTokenIndex`` when
            ``backend`` is ``"milvus"``: engine URL without credentials, collections, index type).
        search_defaults: ``{"n_candidates", "candidates_per_video"}``.
        generation: the generation directory name (``gen-000001``).
        moment_checkpoint: ``{"path": relative to the index directory, "sha256": ...}`` of the moment localiser
            checkpoint copied into the index (``build-index --moment-checkpoint``), or None.
        moment_localizer: a training-free localiser's record, e.g. ``{"kind": "zero_shot", "smooth": 1}``
            (``prvr.moments.zero_shot``; what ``build-index --zero-shot`` records by default), or None; beside a
            moment checkpoint it says how search reads that model (``{"kind": "relevance_span"}`` or
            ``"denoiser"``, chosen by measurement).
        moment_frames: ``index.moment_frames.MomentFrameStore.record()`` of the localiser's finer frame tokens
            (``{"dir", "dim", "max_frames", "dtype", "videos", "bytes"}``), or None: the localiser reads the
            retrieval frame tokens (manifests written before the field existed).
        query_bank: the stored query-bank term (``index.bank``): ``{"file", "sha256", "k", "alpha", "source",
            "videos", "bank_queries"}``; search scores ``s(q, v) - alpha * t(v)``. None: plain scores.
        calibration: what ``prvr index calibrate`` measured and chose (``{"target", "k", "chosen", "grid", ...}``),
            or None; the chosen search parameters are also written into ``search_defaults``.
        token_store: ``TokenStore.codec_record()`` of the re-rank store: ``{"dtype", "bytes_per_token",
            "token_error"}`` plus, for a compressed store, ``"codec"`` (its parameters) and ``"codebook"`` (file inside
            ``tokens/`` and sha256); None in manifests written before the field existed (the store describes itself).
        refine: the second tier of a two-tier search (``build-index --refine-dtype``): ``{"store":
            TokenStore.codec_record() of the finer store in ``refine/``, "refine_k": short-list length}``; the
            compressed ``token_store`` keeps its best ``refine_k`` candidates, which the finer store re-scores
            (``index.search.search_topk``). None: one tier (and manifests written before the field existed).
        backend: the token-index back-end, ``"faiss"`` (files in ``faiss/``; manifests without the field) or
            ``"milvus"`` (collections in a Milvus engine, ``index.backend``).
        created_at: ISO-8601 UTC time of the build.
        format_version: manifest layout version.
    """

    experiment_config: str
    checkpoint_path: str
    checkpoint_sha256: str
    text_backbone: dict[str, Any] | None
    data_source: dict[str, Any]
    counts: dict[str, int]
    faiss: dict[str, Any]
    search_defaults: dict[str, Any]
    generation: str
    moment_checkpoint: dict[str, Any] | None = None
    moment_localizer: dict[str, Any] | None = None
    moment_frames: dict[str, Any] | None = None
    query_bank: dict[str, Any] | None = None
    calibration: dict[str, Any] | None = None
    token_store: dict[str, Any] | None = None
    refine: dict[str, Any] | None = None
    backend: str = "faiss"
    created_at: str = field(default_factory=_utc_now_iso)
    format_version: int = MANIFEST_FORMAT_VERSION

    def __post_init__(self) -> None:
        sha = self.checkpoint_sha256
        if not isinstance(sha, str) or len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
            raise ValueError(f"checkpoint_sha256 must be 64 lowercase hex characters, got {sha!r}")
        if self.text_backbone is not None and "id" not in self.text_backbone:
            raise ValueError(f"text_backbone must hold an 'id' (and a 'path' or None), got {self.text_backbone!r}")
        if self.moment_checkpoint is not None and not {"path", "sha256"} <= set(self.moment_checkpoint):
            raise ValueError(f"moment_checkpoint must hold 'path' and 'sha256', got {self.moment_checkpoint!r}")
        if self.moment_localizer is not None and "kind" not in self.moment_localizer:
            raise ValueError(f"moment_localizer must hold a 'kind', got {self.moment_localizer!r}")
        if self.query_bank is not None and not {"file", "sha256", "k", "alpha"} <= set(self.query_bank):
            raise ValueError(f"query_bank must hold 'file', 'sha256', 'k' and 'alpha', got {self.query_bank!r}")
        if self.refine is not None and not _is_refine_record(self.refine):
            raise ValueError(f"refine must hold a 'store' record and a positive int 'refine_k', got {self.refine!r}")

    def to_json(self) -> str:
        """The manifest as indented, key-sorted JSON text."""
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> IndexManifest:
        """Build a manifest from parsed JSON; unknown or missing keys raise ValueError."""
        names = {f.name for f in dataclasses.fields(cls)}
        required = {f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING
                    and f.default_factory is dataclasses.MISSING}
        unknown, missing = sorted(set(data) - names), sorted(required - set(data))
        if unknown or missing:
            raise ValueError(f"manifest keys do not match this code: unknown {unknown}, missing {missing}")
        return cls(**data)


def _is_refine_record(record: Any) -> bool:
    """Whether ``record`` is ``{"store": {...}, "refine_k": positive int}`` (the manifest's ``refine``)."""
    if not isinstance(record, dict) or not isinstance(record.get("store"), dict):
        return False
    refine_k = record.get("refine_k")
    return isinstance(refine_k, int) and not isinstance(refine_k, bool) and refine_k >= 1


def write_manifest(manifest: IndexManifest, directory: str | Path) -> Path:
    """Write ``directory/manifest.json`` crash-safely (temp file, fsync, rename, directory fsync).

    Args:
        manifest: the manifest.
        directory: an existing generation directory.

    Returns:
        The path written.
    """
    path = Path(directory) / MANIFEST_NAME
    write_text_atomic(path, manifest.to_json())
    return path


def load_manifest(directory: str | Path) -> IndexManifest:
    """Read ``directory/manifest.json``.

    Args:
        directory: a generation directory written by ``index.builder.build_index``.

    Returns:
        The manifest.

    Raises:
        FileNotFoundError: when the directory or its manifest is missing.
        ValueError: when the manifest is corrupted or of another format version.
    """
    path = Path(directory) / MANIFEST_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: {directory} is not a complete index generation (interrupted build?); "
            "rebuild with `prvr build-index` or activate another generation"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON ({error}); rebuild this index generation") from error
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(data).__name__}; rebuild this index generation")
    version = data.get("format_version")
    if version != MANIFEST_FORMAT_VERSION:
        raise ValueError(
            f"{path} has format_version {version!r}, this code reads {MANIFEST_FORMAT_VERSION}; "
            "rebuild the index with this version of prvr"
        )
    try:
        return IndexManifest.from_dict(data)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{path} is corrupted ({error}); rebuild this index generation") from error
