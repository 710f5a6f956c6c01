"""Extract frame-backbone features from a folder of video files into the standard PRVR layout, resumably.

Shape letters: n features of one video, K frames per feature, D feature dimension.

Output (``<root>`` is ``--out``)::

    <root>/<collection>/FeatureData/<feature_name>/feature.hdf5   one dataset per video id: (n, D) float32
    <root>/<collection>/FeatureData/<feature_name>/videos.jsonl   one line per video: source, duration, fps, status
    <root>/<collection>/FeatureData/<feature_name>/failures.json  the videos that failed and why
    <root>/<collection>/FeatureData/<feature_name>/cache/         per-video entries (prvr.features.cache)

``feature.hdf5`` records the backbone id and the sampling settings as root attributes, and each dataset its
video's duration. A video id is the file's stem; when two files share a stem the later ones (in sorted path order)
get ``-2``, ``-3``, ... Each video is hashed, looked up in the cache and only decoded and encoded on a miss; a file
that cannot be decoded is recorded as failed with the reason and the others go on; so is every entry of a scanned
folder that is named like a video but cannot be one (a folder, a symlink loop or broken symlink, a FIFO / socket /
device, an unreadable file): nothing named like a video is skipped without being listed. The three files are written
atomically at the end and describe exactly the videos of this run.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import stat
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from tqdm import tqdm

from prvr.data.captions import read_text_lines
from prvr.data.features import validate_features
from prvr.features.backbones import ImageBackbone, backbone_ids_match, feature_file_backbone
from prvr.features.cache import FeatureCache, cache_key
from prvr.features.frames import SamplingConfig, VideoDecodeError, VideoFrameSampler, VideoInfo
from prvr.fileio import atomic_path, file_sha256, write_text_atomic

__all__ = [
    "VIDEO_SUFFIXES",
    "FEATURE_FILE",
    "SIDECAR_FILE",
    "FAILURES_FILE",
    "VideoResult",
    "SkippedEntry",
    "scan_videos",
    "ExtractionResult",
    "find_videos",
    "assign_video_ids",
    "feature_name_for",
    "feature_folder",
    "encode_video",
    "EncodeJob",
    "Encoded",
    "EncodeRunner",
    "local_runner",
    "extract_videos",
    "read_sidecar",
]

logger = logging.getLogger(__name__)

VIDEO_SUFFIXES = frozenset(
    {".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".mts", ".flv", ".wmv", ".3gp",
     ".ogv", ".gif"}
)
FEATURE_FILE = "feature.hdf5"
SIDECAR_FILE = "videos.jsonl"
FAILURES_FILE = "failures.json"
CACHE_DIR = "cache"


@dataclass(frozen=True)
class VideoResult:
    """What happened to one video file.

    Attributes:
        video_id: its id in the feature file (the file stem, de-duplicated).
        source: the absolute path of the file.
        status: ``ok`` or ``failed``.
        reason: why it failed (None when ok).
        cached: the features came from the cache (no decoding, no backbone call).
        content_sha256: the file's sha256 (None when it could not be read).
        duration_sec, fps, frame_count, num_features, width, height, rotation, codec: see
            :class:`prvr.features.frames.VideoInfo` (None when failed).
    """

    video_id: str
    source: str
    status: str
    reason: str | None = None
    cached: bool = False
    content_sha256: str | None = None
    duration_sec: float | None = None
    fps: float | None = None
    frame_count: int | None = None
    num_features: int | None = None
    width: int | None = None
    height: int | None = None
    rotation: int | None = None
    codec: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ExtractionResult:
    """The outcome of :func:`extract_videos`.

    Attributes:
        folder: ``<root>/<collection>/FeatureData/<feature_name>``.
        feature_file: its ``feature.hdf5`` (absent when no video succeeded).
        feature_name: the FeatureData name (``DataConfig.video_feature``).
        backbone_id: the frame backbone's id.
        videos: one result per input file, in input order.
        backbone_calls: ``encode_images`` calls made (0 when everything came from the cache).
    """

    folder: Path
    feature_file: Path
    feature_name: str
    backbone_id: str
    videos: list[VideoResult]
    backbone_calls: int

    @property
    def succeeded(self) -> list[VideoResult]:
        return [video for video in self.videos if video.ok]

    @property
    def failed(self) -> list[VideoResult]:
        return [video for video in self.videos if not video.ok]

    def summary(self) -> dict[str, Any]:
        """A JSON-ready summary (counts, paths, failures)."""
        return {
            "features": str(self.feature_file) if self.succeeded else None,
            "feature_name": self.feature_name,
            "backbone": self.backbone_id,
            "videos": len(self.videos),
            "ok": len(self.succeeded),
            "from_cache": sum(video.cached for video in self.succeeded),
            "failed": len(self.failed),
            "failures": [{"video_id": v.video_id, "source": v.source, "reason": v.reason} for v in self.failed],
        }


# ----------------------------------------------------------------------------------------------------------------
# inputs


@dataclass(frozen=True)
class SkippedEntry:
    """A path named like a video (or given as one) that cannot be read as a video file.

    Attributes:
        path: the absolute path (not resolved: a symlink loop has no resolution).
        reason: why it was skipped, e.g. "a folder, not a video file".
    """

    path: Path
    reason: str


_FILE_KINDS = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
               (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def _not_a_video_file(path: Path) -> str | None:
    """Why ``path`` cannot be read as a video file, or None when it is a readable regular file."""
    try:
        info = os.lstat(path)
    except OSError as error:
        return f"cannot be examined ({error.strerror or error})"
    via = ""
    if stat.S_ISLNK(info.st_mode):
        target = os.readlink(path)
        try:
            info = os.stat(path)
        except OSError as error:
            if error.errno == errno.ELOOP:
                return f"a symlink loop ({path.name} -> {target}); point the link at a video file or remove it"
            if error.errno == errno.ENOENT:
                return f"a broken symlink (its target {target} does not exist)"
            return f"a symlink that cannot be followed ({target}: {error.strerror or error})"
        via = "a symlink to "
    if stat.S_ISDIR(info.st_mode):
        return f"{via}a folder, not a video file"
    for test, kind in _FILE_KINDS:
        if test(info.st_mode):
            return f"{via}{kind}, not a regular file"
    if not stat.S_ISREG(info.st_mode):
        return f"{via}not a regular file"
    if not os.access(path, os.R_OK):
        return "not readable (permission denied); make it readable (chmod a+r) or run as its owner"
    return None


def scan_videos(
    source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
) -> tuple[list[Path], list[SkippedEntry]]:
    """The video files of a folder (recursively, by suffix: :data:`VIDEO_SUFFIXES`) or the given files, and the
    entries that look like videos but cannot be read as files, each with its reason.

    Symlinked folders are not followed (as :meth:`pathlib.Path.rglob`); a subfolder that cannot be listed is a
    skipped entry too.

    Args:
        source: a folder, one file, or a list of files / folders.

    Returns:
        ``(videos, skipped)``: absolute resolved paths of readable regular files, sorted per folder; and the skipped
        entries in the same order.

    Raises:
        FileNotFoundError: a path does not exist, or a folder holds nothing named like a video.
    """
    sources = [source] if isinstance(source, (str, os.PathLike)) else list(source)
    paths: list[Path] = []
    skipped: list[SkippedEntry] = []
    for item in sources:
        path = Path(item).expanduser()
        if path.is_dir():
            found: list[Path] = []
            bad: list[SkippedEntry] = []

            def unlistable(error: OSError) -> None:
                where = Path(error.filename) if error.filename else path
                reason = f"a folder that cannot be listed ({error.strerror or error})"
                bad.append(SkippedEntry(where.absolute(), reason))

            for folder, dirnames, filenames in os.walk(path, onerror=unlistable, followlinks=False):
                for name in dirnames + filenames:
                    entry = Path(folder) / name
                    if entry.suffix.lower() not in VIDEO_SUFFIXES:
                        continue
                    reason = _not_a_video_file(entry)
                    if reason is None:
                        found.append(entry)
                    else:
                        bad.append(SkippedEntry(entry.absolute(), reason))
            if not found and not bad:
                raise FileNotFoundError(
                    f"{path} holds no video files (looked for {', '.join(sorted(VIDEO_SUFFIXES))}, recursively)"
                )
            paths.extend(sorted(found))
            skipped.extend(sorted(bad, key=lambda entry: entry.path))
        elif os.path.lexists(path):
            reason = _not_a_video_file(path)
            if reason is None:
                paths.append(path)
            else:
                skipped.append(SkippedEntry(path.absolute(), reason))
        else:
            raise FileNotFoundError(f"{path} does not exist; give a folder of videos or video files")
    for entry in skipped:
        logger.warning("skipping %s: %s", entry.path, entry.reason)
    return [p.resolve() for p in paths], skipped


def find_videos(source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> list[Path]:
    """The readable video files of :func:`scan_videos` (the skipped entries are logged as warnings).

    Args:
        source: a folder, one file, or a list of files / folders.

    Returns:
        Absolute paths, folders' files in sorted order.

    Raises:
        FileNotFoundError: a path does not exist, or a folder holds no video file.
    """
    return scan_videos(source)[0]


def assign_video_ids(paths: Iterable[Path]) -> list[str]:
    """One id per path: the stem, with ``-2``, ``-3`` ... appended to later paths whose stem is taken.

    >>> assign_video_ids([Path("a/x.mp4"), Path("b/x.mp4"), Path("x-2.avi"), Path("c/x.mkv")])
    ['x', 'x-3', 'x-2', 'x-4']
    """
    paths = list(paths)
    stems = [path.stem for path in paths]
    taken = set(stems)  # a file literally named x-2 keeps its id
    ids: list[str] = []
    used: set[str] = set()
    for stem in stems:
        candidate, number = stem, 1
        while candidate in used or (candidate != stem and candidate in taken):
            number += 1
            candidate = f"{stem}-{number}"
        used.add(candidate)
        ids.append(candidate)
    return ids


def feature_name_for(backbone_id: str) -> str:
    """A FeatureData folder name for a backbone id: its model name in lowercase snake case.

    >>> feature_name_for("clip:openai/clip-vit-base-patch32@0123456789ab")
    'clip_vit_base_patch32'
    """
    head = backbone_id.rpartition("@")[0] or backbone_id
    name = head.partition(":")[2] or head
    name = name.rstrip("/").rpartition("/")[2]
    slug = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")
    return slug or "features"


def feature_folder(root: str | os.PathLike[str], collection: str, feature_name: str) -> Path:
    """``<root>/<collection>/FeatureData/<feature_name>``."""
    return Path(root) / collection / "FeatureData" / feature_name


def read_sidecar(folder: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The per-video records of an extracted feature folder (``videos.jsonl``), in extraction order."""
    path = Path(folder) / SIDECAR_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; run `prvr extract` to create the feature folder")
    rows = []
    for number, line in read_text_lines(path, "extraction sidecar"):  # UTF-8, no control characters
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}, line {number}: not JSON ({error}); re-run `prvr extract`") from None
        if not isinstance(row, dict) or not isinstance(row.get("video_id"), str) or not row["video_id"] \
                or row.get("status") not in ("ok", "failed"):
            raise ValueError(f"{path}, line {number}: expected an object with a non-empty 'video_id' and a 'status' "
                             f"of ok / failed; re-run `prvr extract`")
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------------------------------------------
# one video


def encode_video(path: str | os.PathLike[str], backbone: ImageBackbone, sampling: SamplingConfig, *,
                 threads: int = 0) -> tuple[np.ndarray, VideoInfo, int]:
    """Decode, sample and encode one video, holding at most ``backbone.batch_size`` frames at a time.

    Args:
        path: the video file.
        backbone: the frame backbone.
        sampling: the sampling settings (K = ``frames_per_feature`` frames are averaged per feature).
        threads: decoder threads (0: FFmpeg's choice).

    Returns:
        ``(features, info, calls)``: (n, D) float32, the decoding facts, and the number of backbone calls.

    Raises:
        VideoDecodeError: the file yields no usable frames.
    """
    sampler = VideoFrameSampler(path, sampling, threads=threads)
    pending: list[np.ndarray] = []
    parts: list[np.ndarray] = []
    calls = 0
    for frame in sampler:
        pending.append(frame.image)
        if len(pending) == backbone.batch_size:
            parts.append(backbone.encode_images(pending))  # (B, D)
            calls += 1
            pending = []
    if pending:
        parts.append(backbone.encode_images(pending))
        calls += 1
    info = sampler.info
    assert info is not None  # the iteration finished
    k = sampling.frames_per_feature
    per_frame = np.concatenate(parts)  # (n * K, D)
    if per_frame.shape[0] != info.num_features * k:
        raise RuntimeError(f"{path}: sampled {per_frame.shape[0]} frames for {info.num_features} features x {k}")
    features = per_frame.reshape(info.num_features, k, -1).mean(axis=1)  # (n, D)
    return validate_features(features, source=str(path), key="features"), info, calls


# ----------------------------------------------------------------------------------------------------------------
# a folder


def _check_existing(feature_file: Path, backbone_id: str, sampling: SamplingConfig) -> None:
    if not feature_file.is_file():
        return
    try:
        found = feature_file_backbone(feature_file)
        with h5py.File(feature_file, "r") as handle:
            stored = handle.attrs.get("sampling")
        stored_sampling = json.loads(stored) if stored is not None else None
    except (OSError, ValueError, TypeError, KeyError, RuntimeError) as error:
        raise ValueError(f"{feature_file} is not a readable feature file of `prvr extract` ({error}); delete it "
                         "(its videos are re-written from the cache) or extract into another --out / --name") from None
    if found is not None and not backbone_ids_match(found, backbone_id):
        raise ValueError(
            f"{feature_file} holds features of backbone {found!r}, not {backbone_id!r}; extract into another --out "
            "or --name (features of two backbones cannot share a file)"
        )
    if stored_sampling is not None and stored_sampling != sampling.to_dict():
        raise ValueError(
            f"{feature_file} was extracted with sampling {stored}, not {json.dumps(sampling.to_dict())}; "
            "extract into another --out or --name, or use the same --fps / --frames-per-feature"
        )


def _write_feature_file(path: Path, cache: FeatureCache, entries: Sequence[tuple[str, str, VideoResult]],
                        attrs: dict[str, Any]) -> None:
    """Write ``feature.hdf5`` from cache entries (one video in memory at a time), atomically."""
    dim: int | None = None
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as handle:
            for video_id, key, result in entries:
                cached = cache.get(key)
                if cached is None:
                    raise RuntimeError(f"cache entry of {result.source} vanished while writing {path}; re-run")
                if dim is not None and cached.features.shape[1] != dim:
                    raise RuntimeError(f"{result.source}: dimension {cached.features.shape[1]} != {dim}")
                dim = cached.features.shape[1]
                dataset = handle.create_dataset(video_id, data=cached.features)
                dataset.attrs["duration_sec"] = float(result.duration_sec or 0.0)
            for name, value in attrs.items():
                handle.attrs[name] = value


@dataclass(frozen=True)
class EncodeJob:
    """One video to decode and encode (a cache miss): its position in the run, file, id, content hash and cache key."""

    order: int
    path: Path
    video_id: str
    digest: str
    key: str


@dataclass(frozen=True)
class Encoded:
    """What encoding one :class:`EncodeJob` gave: (n, D) features and the decoding facts, or the failure reason."""

    job: EncodeJob
    features: np.ndarray | None
    info: dict[str, Any] | None
    error: str | None = None
    calls: int = 0


EncodeRunner = Callable[[Sequence[EncodeJob]], Iterable[Encoded]]


def local_runner(backbone: ImageBackbone, sampling: SamplingConfig, *, threads: int = 0) -> EncodeRunner:
    """Encode the jobs one after another in this process (the default of :func:`extract_videos`)."""

    def run(jobs: Sequence[EncodeJob]) -> Iterator[Encoded]:
        for job in jobs:
            try:
                features, info, used = encode_video(job.path, backbone, sampling, threads=threads)
            except VideoDecodeError as error:
                yield Encoded(job, None, None, error=str(error))
                continue
            yield Encoded(job, features, info.to_dict(), calls=used)

    return run


def extract_videos(
    videos: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    out_root: str | os.PathLike[str],
    backbone: ImageBackbone,
    *,
    collection: str = "videos",
    feature_name: str | None = None,
    sampling: SamplingConfig | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    threads: int = 0,
    progress: bool = True,
    runner: EncodeRunner | None = None,
) -> ExtractionResult:
    """Extract the features of every video file into ``<out_root>/<collection>/FeatureData/<feature_name>``.

    Every file is hashed and looked up in the cache here; the misses go to ``runner`` (this process by default, or
    a Ray cluster: :func:`prvr.features.ray_extract.ray_runner`), and each encoded video enters the cache as soon
    as it arrives, so a killed run resumes where it stopped whichever runner did the work.

    Args:
        videos: a folder of videos (searched recursively), a file, or a list of them.
        out_root: the data root to write into.
        backbone: the frame backbone (see :func:`prvr.features.backbones.load_image_backbone`); its id keys the
            cache and is recorded in the feature file. With a ``runner`` only its ``backbone_id`` is read (e.g. a
            :class:`prvr.features.ray_extract.RayBackbone`).
        collection: the collection folder name.
        feature_name: the FeatureData name (default: from the backbone, e.g. ``clip_vit_base_patch32``).
        sampling: frame sampling (default: 1 feature per second, 1 frame per feature).
        cache_dir: the feature cache (default: ``cache/`` inside the feature folder).
        threads: decoder threads per video (0: FFmpeg's choice).
        progress: show a tqdm bar over the videos.
        runner: encodes the cache misses (default :func:`local_runner` of ``backbone``); it must encode with a
            backbone of the same id.

    Returns:
        The :class:`ExtractionResult`; failed videos are listed there and in ``failures.json``.

    Raises:
        FileNotFoundError: nothing named like a video.
        ValueError: the feature folder already holds features of another backbone or sampling.
    """
    sampling = sampling or SamplingConfig()
    paths, skipped = scan_videos(videos)
    video_ids = assign_video_ids(paths)
    if not collection or "/" in collection or collection in (".", ".."):
        raise ValueError(f"collection must be a plain folder name, got {collection!r}")
    name = feature_name or feature_name_for(backbone.backbone_id)
    if "/" in name or name in (".", ".."):
        raise ValueError(f"feature name must be a plain folder name, got {name!r}")
    folder = feature_folder(out_root, collection, name)
    folder.mkdir(parents=True, exist_ok=True)
    feature_file = folder / FEATURE_FILE
    _check_existing(feature_file, backbone.backbone_id, sampling)
    cache = FeatureCache(cache_dir if cache_dir is not None else folder / CACHE_DIR)
    runner = runner or local_runner(backbone, sampling, threads=threads)

    # entries named like videos that are not readable files fail like undecodable ones (failures.json, summary)
    results: list[VideoResult] = [VideoResult(entry.path.stem, str(entry.path), "failed", reason=entry.reason)
                                  for entry in skipped]
    by_order: dict[int, VideoResult] = {}  # the videos' results in path order
    keys: dict[int, str] = {}
    jobs: list[EncodeJob] = []
    for order, (path, video_id) in enumerate(zip(paths, video_ids)):
        try:
            digest = file_sha256(path)
        except OSError as error:
            by_order[order] = VideoResult(video_id, str(path), "failed", reason=f"cannot read the file ({error})")
            continue
        key = cache_key(digest, backbone.backbone_id, sampling)
        cached = cache.get(key)
        if cached is not None:
            by_order[order] = VideoResult(video_id, str(path), "ok", cached=True, content_sha256=digest,
                                          **_info_fields(cached.metadata))
            keys[order] = key
        else:
            jobs.append(EncodeJob(order, path, video_id, digest, key))
    calls = 0
    bar = tqdm(total=len(paths), initial=len(paths) - len(jobs), desc="extract", unit="video", disable=not progress)
    for done in runner(jobs):
        job = done.job
        bar.update(1)
        bar.set_postfix_str(job.path.name[-40:], refresh=False)
        if done.features is None or done.info is None:
            logger.warning("skipping %s: %s", job.path, done.error)
            by_order[job.order] = VideoResult(job.video_id, str(job.path), "failed", reason=done.error,
                                              content_sha256=job.digest)
            continue
        features = validate_features(done.features, source=str(job.path), key="features")
        calls += done.calls
        metadata = {**done.info, "backbone": backbone.backbone_id, "sampling": sampling.to_dict()}
        cache.put(job.key, features, metadata)
        by_order[job.order] = VideoResult(job.video_id, str(job.path), "ok", content_sha256=job.digest,
                                          **_info_fields(metadata))
        keys[job.order] = job.key
    bar.close()
    missing = [job.path for job in jobs if job.order not in by_order]
    if missing:
        raise RuntimeError(f"the encoder returned no result for {len(missing)} video(s), e.g. {missing[0]}; re-run "
                           "(the videos done so far are cached)")
    entries: list[tuple[str, str, VideoResult]] = []
    for order in sorted(by_order):
        result = by_order[order]
        results.append(result)
        if result.ok:
            entries.append((result.video_id, keys[order], result))

    attrs = {
        "backbone": backbone.backbone_id,
        "sampling": json.dumps(sampling.to_dict(), sort_keys=True),
        "feature_fps": float(sampling.fps),
        "frames_per_feature": int(sampling.frames_per_feature),
        "created_by": "prvr extract",
    }
    if entries:
        _write_feature_file(feature_file, cache, entries, attrs)
    else:
        feature_file.unlink(missing_ok=True)  # an empty feature file has no dimension; the loaders would refuse it
    write_text_atomic(folder / SIDECAR_FILE, "".join(json.dumps(r.to_dict(), sort_keys=True) + "\n" for r in results))
    failures = {"backbone": backbone.backbone_id,
                "failed": [{"video_id": r.video_id, "source": r.source, "reason": r.reason}
                           for r in results if not r.ok]}
    write_text_atomic(folder / FAILURES_FILE, json.dumps(failures, indent=2) + "\n")
    result = ExtractionResult(folder, feature_file, name, backbone.backbone_id, results, calls)
    logger.info("extracted %d of %d videos into %s (%d from the cache, %d failed)", len(result.succeeded),
                len(results), folder, sum(r.cached for r in result.succeeded), len(result.failed))
    return result


def _info_fields(metadata: dict[str, Any]) -> dict[str, Any]:
    keys = ("duration_sec", "fps", "frame_count", "num_features", "width", "height", "rotation", "codec")
    return {key: metadata.get(key) for key in keys}
