"""Build (or reuse) everything `prvr demo` needs, in stages cached under the user's cache directory.

Stages, each recorded in ``<demo dir>/manifest.json`` only after its files are complete (atomic writes):

1. ``corpus``: the generated timelines (``prvr.demo.generator``) become the standard PRVR layout. Video side: one
   frame per second = the "camera" (paraphrase-MiniLM-L3-v2, ONNX) sentence vector of the caption covering that
   second (the place's idle description in the gaps), plus the ANet-CapProxy per-frame noise and per-video scene
   vector (``prvr.benchmarks.capproxy_dataset.make_frames``). Query side: all-MiniLM-L6-v2 token features of the query
   sentences, the same backbone ``prvr query`` runs on free text.
2. ``model``: a small DreamPRVR trained on the train split with early stopping on val (``prvr.engine.fit``).
3. ``moments``: a moment localiser (``prvr.moments.train.train_moments``) on the retrieval model's frame tokens,
   then every candidate localiser measured on the val split (the denoiser's spans, its relevance curve's runs, the
   retrieval model's own query-frame cosine cut at a few levels: ``prvr.demo.moments``); the best is recorded with
   every number, and its numbers on the held-out test split.
4. ``index``: every demo video indexed with ``index.builder.build_index``, the MiniLM-L6 text backbone and the chosen
   localiser recorded.

A later run checks the manifest (settings hash, every recorded file's sha256) and rebuilds only from the first stage
that is missing or does not verify; a stage cut off by a killed run left no record, so it is rebuilt (training resumes
from its ``last.pt``).

Layout of ``<cache>/demo/<GENERATOR_VERSION>-s<seed>-n<videos>/``::

    manifest.json           settings, stage records (files + sha256, facts), written after each stage
    data/demo/...           FeatureData/minilm_l3/feature.hdf5, TextData/demo{train,val,test,all}.caption.txt, ...
    data/demo/timelines.jsonl   the generated videos with their events (the ground truth shown by the demo)
    run/                    best.pt, last.pt, metrics.jsonl of the retrieval model
    moments/                the moment model's run (when built)
    index/                  the demo index (`prvr query TEXT --index <this>`)
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from prvr.demo.generator import GENERATOR_VERSION, DemoVideo, generate_corpus
from prvr.fileio import exclusive_lock, file_sha256, write_json_atomic, write_text_atomic

__all__ = [
    "DEMO_COLLECTION",
    "VIDEO_FEATURE",
    "TEXT_FEATURE",
    "INDEX_SPLIT",
    "DemoSettings",
    "DemoBuild",
    "default_cache_root",
    "demo_dir",
    "build_demo",
    "read_timelines",
    "read_manifest",
]

logger = logging.getLogger(__name__)

DEMO_COLLECTION = "demo"
VIDEO_FEATURE = "minilm_l3"
TEXT_FEATURE = "minilm_l6"
INDEX_SPLIT = "all"  # a caption split holding every video, so one build indexes the whole corpus
MANIFEST_NAME = "manifest.json"
TIMELINES_NAME = "timelines.jsonl"
STAGES: tuple[str, ...] = ("corpus", "model", "moments", "index")
_LOCK_NAME = ".demo.lock"
_FEATURE_DTYPE = np.float16
_ENCODE_BATCH = 128


@dataclass(frozen=True)
class DemoSettings:
    """Everything that decides what the demo builds; its JSON hash keys the cache.

    Attributes:
        seed: seeds the generator, the training and the index.
        videos: total videos; split into train / val / test by ``val_fraction`` / ``test_fraction``.
        val_fraction: share of the videos in the val split (early stopping).
        test_fraction: share in the test split (held-out videos, their queries are the examples).
        preset: the DreamPRVR preset trained.
        epochs: the most training epochs.
        patience: epochs without a better val SumR (moments: R1@0.5 + R1@0.7) before stopping.
        max_frames: F, frame tokens per video (longer videos are binned).
        moment_epochs: the most epochs of the moment model.
        moment_queries: the moment model trains on the first this many training queries.
        max_query_tokens: L, query token features kept.
    """

    seed: int = 0
    videos: int = 600
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    preset: str = "tiny"
    epochs: int = 8
    patience: int = 2
    max_frames: int = 64
    moment_epochs: int = 6
    moment_queries: int = 5000  # more than the train split holds: all of them
    max_query_tokens: int = 30

    def __post_init__(self) -> None:
        if self.videos < 20:
            raise ValueError(f"the demo needs at least 20 videos (train, val and test each get some), got "
                             f"{self.videos}")
        if not (0 < self.val_fraction < 0.5 and 0 < self.test_fraction < 0.5):
            raise ValueError("val_fraction and test_fraction must lie in (0, 0.5)")
        if min(self.epochs, self.patience, self.max_frames, self.moment_epochs, self.moment_queries,
               self.max_query_tokens) < 1:
            raise ValueError("epochs, patience, max_frames, moment_epochs, moment_queries and max_query_tokens must "
                             "be >= 1")

    def splits(self) -> dict[str, int]:
        """Videos per split (train / val / test), each at least 3."""
        val = max(3, round(self.videos * self.val_fraction))
        test = max(3, round(self.videos * self.test_fraction))
        return {"train": self.videos - val - test, "val": val, "test": test}

    def digest(self) -> str:
        text = json.dumps({"generator": GENERATOR_VERSION, **dataclasses.asdict(self)}, sort_keys=True)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class DemoBuild:
    """What :func:`build_demo` left in the cache.

    Attributes:
        directory: the demo directory.
        data_root: the PRVR data root (collection ``demo`` inside).
        checkpoint: the retrieval model's best.pt.
        moment_checkpoint: the moment model's checkpoint, or None when it was not built (and why in ``notes``).
        index_dir: the demo index.
        built: stages built by this call (the others were reused from the cache).
        seconds: wall seconds per stage built by this call.
        facts: per stage, what it recorded (counts, metrics).
        notes: things the user should know (e.g. no moment model).
    """

    directory: Path
    data_root: Path
    checkpoint: Path
    moment_checkpoint: Path | None
    index_dir: Path
    built: tuple[str, ...]
    seconds: dict[str, float]
    facts: dict[str, dict[str, Any]]
    notes: tuple[str, ...] = field(default_factory=tuple)


# ----------------------------------------------------------------------------------------------------------------
# where the cache lives


def default_cache_root() -> Path:
    """``$PRVR_CACHE``, else ``$XDG_CACHE_HOME/prvr``, else ``~/.cache/prvr``."""
    if os.environ.get("PRVR_CACHE"):
        return Path(os.environ["PRVR_CACHE"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "prvr"
    return Path.home() / ".cache" / "prvr"


def demo_dir(settings: DemoSettings, cache_root: str | os.PathLike[str] | None = None) -> Path:
    """``<cache root>/demo/<generator version>-s<seed>-n<videos>``."""
    root = Path(cache_root).expanduser() if cache_root is not None else default_cache_root()
    return root / "demo" / f"{GENERATOR_VERSION}-s{settings.seed}-n{settings.videos}"


def _data_root(directory: Path) -> Path:
    return directory / "data"


def _stage_dir(directory: Path, stage: str) -> Path:
    return {"corpus": directory / "data", "model": directory / "run", "moments": directory / "moments",
            "index": directory / "index"}[stage]


# ----------------------------------------------------------------------------------------------------------------
# manifest


def read_manifest(directory: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The demo manifest, or None when it is missing or unreadable (then everything is rebuilt)."""
    path = Path(directory) / MANIFEST_NAME
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and isinstance(manifest.get("stages"), dict) else None


def _record(directory: Path, files: Sequence[Path], facts: dict[str, Any], seconds: float,
            present: Sequence[Path] = ()) -> dict[str, Any]:
    """A stage's manifest entry: ``files`` are checked by sha256, ``present`` only for existence (files another
    component may legitimately touch, like the index's SQLite database)."""
    return {"files": {str(p.relative_to(directory)): file_sha256(p) for p in files},
            "present": [str(p.relative_to(directory)) for p in present], "facts": facts, "seconds": round(seconds, 2)}


def _verified(directory: Path, record: Any) -> bool:
    """True when every file the stage recorded exists with its recorded sha256."""
    if not isinstance(record, dict) or not isinstance(record.get("files"), dict):
        return False
    for relative, sha in record["files"].items():
        path = directory / relative
        if not path.is_file() or file_sha256(path) != sha:
            logger.warning("demo cache: %s is missing or changed; rebuilding from its stage", path)
            return False
    for relative in record.get("present", []):
        if not (directory / relative).exists():
            logger.warning("demo cache: %s is missing; rebuilding from its stage", directory / relative)
            return False
    facts = record.get("facts", {})
    if isinstance(facts, dict) and facts.get("skipped"):
        return False  # recorded by an older prvr that had no moment trainer: build the moment model now
    backbone = facts.get("text_backbone_path") if isinstance(facts, dict) else None
    if backbone and not Path(backbone).is_dir():
        logger.warning("demo cache: the index's text backbone %s is gone (reinstalled elsewhere?); rebuilding the "
                       "index", backbone)
        return False
    return True


def _demo_lock(directory: Path) -> contextlib.AbstractContextManager[None]:
    directory.mkdir(parents=True, exist_ok=True)
    return exclusive_lock(directory / _LOCK_NAME,
                          busy_message=f"another `prvr demo` is building {directory}; wait for it to finish")


# ----------------------------------------------------------------------------------------------------------------
# stage 1: the corpus


def _gap_windows(video: DemoVideo) -> list[tuple[float, float]]:
    """The stretches of [0, duration] outside every event (where the camera shows the empty place)."""
    gaps, cursor = [], 0.0
    for event in video.events:
        if event.start > cursor:
            gaps.append((cursor, event.start))
        cursor = max(cursor, event.end)
    if cursor < video.duration:
        gaps.append((cursor, video.duration))
    return gaps


def _batched_sentence_vectors(encode: Callable[[list[str]], np.ndarray], texts: Sequence[str], desc: str,
                              progress: bool) -> np.ndarray:
    parts = []
    with tqdm(total=len(texts), desc=desc, unit="sent", disable=not progress) as bar:
        for start in range(0, len(texts), _ENCODE_BATCH):
            chunk = list(texts[start : start + _ENCODE_BATCH])
            parts.append(np.asarray(encode(chunk), dtype=np.float32))
            bar.update(len(chunk))
    return np.concatenate(parts)  # (N, D)


def _build_corpus(directory: Path, settings: DemoSettings, progress: bool,
                  encoders: dict[str, Any] | None) -> tuple[list[Path], dict[str, Any]]:
    from prvr.benchmarks.capproxy_dataset import make_frames
    from prvr.data.captions import caption_path, moments_path, write_captions, write_moments
    from prvr.data.features import query_feature_path, write_hdf5_features
    from prvr.text_encoders import OnnxSentenceEncoder, TokenFeatureEncoder
    from prvr.types import QueryRecord

    root = _data_root(directory)
    base = root / DEMO_COLLECTION
    (base / "TextData").mkdir(parents=True, exist_ok=True)
    (base / "FeatureData" / VIDEO_FEATURE).mkdir(parents=True, exist_ok=True)
    splits = settings.splits()
    videos = generate_corpus(settings.seed, splits)
    encoders = dict(encoders or {})
    camera = encoders.get("camera") or OnnxSentenceEncoder()
    text_encoder = encoders.get("text") or TokenFeatureEncoder.minilm_l6(max_tokens=settings.max_query_tokens)

    # Video side: one camera vector per distinct sentence (event captions and idle views), unit length.
    sentences = sorted({e.caption for v in videos for e in v.events} | {v.idle_caption for v in videos})
    vectors = _batched_sentence_vectors(camera.encode_sentences, sentences, "camera (MiniLM-L3)", progress)
    vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    row_of = {text: row for row, text in enumerate(sentences)}

    def frame_items() -> Iterator[tuple[str, np.ndarray]]:
        for video in videos:
            gaps = _gap_windows(video)
            windows = [(e.start, e.end) for e in video.events] + gaps
            texts = [e.caption for e in video.events] + [video.idle_caption] * len(gaps)
            yield video.video_id, make_frames(video.video_id, video.duration, windows,
                                              vectors[[row_of[t] for t in texts]])  # (n, D)

    attrs = {"generator": GENERATOR_VERSION, "seed": settings.seed, "video_encoder": camera.encoder_id,
             "seconds_per_frame": 1.0}
    video_file = write_hdf5_features(base / "FeatureData" / VIDEO_FEATURE / "feature.hdf5", frame_items(),
                                     _FEATURE_DTYPE, attrs)

    # Query side: MiniLM-L6 token features of annotator B's sentences.
    records: dict[str, list[QueryRecord]] = {split: [] for split in splits}
    for video in videos:
        for k, event in enumerate(video.events):
            records[video.split].append(QueryRecord(f"{video.video_id}#enc#{k}", video.video_id, event.query,
                                                    ((event.start, event.end),), video.duration))
    every = [record for split in splits for record in records[split]]
    token_rows: list[np.ndarray] = []
    with tqdm(total=len(every), desc="queries (MiniLM-L6)", unit="sent", disable=not progress) as bar:
        for start in range(0, len(every), _ENCODE_BATCH):
            chunk = every[start : start + _ENCODE_BATCH]
            token_rows.extend(text_encoder.encode([r.text for r in chunk]).tokens)
            bar.update(len(chunk))
    query_file = Path(query_feature_path(root, DEMO_COLLECTION, TEXT_FEATURE))
    write_hdf5_features(query_file, ((r.query_id, t) for r, t in zip(every, token_rows)), _FEATURE_DTYPE,
                        {"generator": GENERATOR_VERSION, "seed": settings.seed,
                         "text_encoder": text_encoder.encoder_id})
    files = [video_file, query_file]
    for split, split_records in [*records.items(), (INDEX_SPLIT, every)]:
        write_captions(caption_path(root, DEMO_COLLECTION, split), split_records)
        write_moments(moments_path(root, DEMO_COLLECTION, split), split_records)
        files += [caption_path(root, DEMO_COLLECTION, split), moments_path(root, DEMO_COLLECTION, split)]
    timelines = base / TIMELINES_NAME
    write_text_atomic(timelines, "".join(json.dumps(v.to_dict()) + "\n" for v in videos))
    files.append(timelines)
    facts = {"videos": splits, "queries": {split: len(r) for split, r in records.items()},
             "camera": camera.encoder_id, "text_encoder": text_encoder.encoder_id,
             "text_encoder_path": str(getattr(text_encoder, "model_dir", "")),
             "distinct_camera_sentences": len(sentences),
             "hours_of_video": round(sum(v.duration for v in videos) / 3600, 2)}
    return files, facts


def read_timelines(directory: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """The generated videos of a built demo (video id -> its ``DemoVideo.to_dict()``)."""
    path = Path(directory) / "data" / DEMO_COLLECTION / TIMELINES_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; run `prvr demo` to build the demo first")
    with open(path, encoding="utf-8") as handle:
        return {row["video_id"]: row for row in map(json.loads, handle)}


# ----------------------------------------------------------------------------------------------------------------
# stage 2: the retrieval model


def _experiment_config(settings: DemoSettings) -> Any:
    """The preset with the demo's features and training settings (input dims still the preset's)."""
    from prvr.config import apply_overrides, load_preset

    config = apply_overrides(load_preset(settings.preset), [
        f"data.video_feature={json.dumps(VIDEO_FEATURE)}",
        f"data.text_feature={json.dumps(TEXT_FEATURE)}",
        f"data.max_query_tokens={settings.max_query_tokens}",
        f"data.max_frames={settings.max_frames}",
        f"train.epochs={settings.epochs}",
        f"train.patience={settings.patience}",
    ])
    return dataclasses.replace(config, name=f"demo-{settings.preset}", seed=settings.seed)


def _train_model(directory: Path, settings: DemoSettings, progress: bool,
                 on_epoch: Callable[[dict[str, Any]], None] | None) -> tuple[list[Path], dict[str, Any]]:
    from prvr.data.dataset import PRVRCorpus
    from prvr.engine import config_for_corpus, fit

    root, run_dir = _data_root(directory), _stage_dir(directory, "model")
    config = _experiment_config(settings)
    train = PRVRCorpus(root, DEMO_COLLECTION, "train", config.data)
    config = config_for_corpus(config, train)
    val = PRVRCorpus(root, DEMO_COLLECTION, "val", config.data, expected_video_dim=train.video_dim,
                     expected_text_dim=train.text_dim)
    result = None
    if (run_dir / "last.pt").is_file():  # a training cut off by a killed run continues where it stopped
        logger.info("resuming the demo training from %s", run_dir / "last.pt")
        try:
            result = fit(config, train, val, run_dir, resume=True, progress=progress, on_epoch=on_epoch)
        except ValueError as error:
            logger.warning("cannot resume %s (%s); training from scratch", run_dir, error)
        if result is not None and not (run_dir / "best.pt").is_file():
            logger.warning("%s has last.pt but no best.pt; training from scratch", run_dir)
            result = None
        if result is None:
            shutil.rmtree(run_dir)
    if result is None:
        result = fit(config, train, val, run_dir, progress=progress, on_epoch=on_epoch)
    test_metrics = _test_metrics(run_dir / "best.pt", root)
    facts = {"best_epoch": result.best_epoch, "epochs_run": result.epochs_run,
             "stopped_early": result.stopped_early,
             "val": {k: v for k, v in result.best_metrics.items() if k.startswith("R@") or k == "SumR"},
             "test": test_metrics}
    return [run_dir / "best.pt"], facts


def _test_metrics(checkpoint: Path, root: Path) -> dict[str, float]:
    """R@1/5/10 and SumR of the trained model on the held-out test videos, with chance for comparison."""
    from prvr.checkpoint import load_model
    from prvr.data.dataset import PRVRCorpus
    from prvr.engine import evaluate

    model, config, _ = load_model(checkpoint, "cpu")
    test = PRVRCorpus(root, DEMO_COLLECTION, "test", config.data)
    metrics = evaluate(model, test, config.train)
    n = len(test.video_ids)
    keep = {k: round(float(v), 2) for k, v in metrics.items() if k in ("R@1", "R@5", "R@10", "R@100", "SumR")}
    keep["chance_SumR"] = round(sum(100.0 * min(k, n) / n for k in (1, 5, 10, 100)), 2)
    keep["videos"] = n
    return keep


# ----------------------------------------------------------------------------------------------------------------
# stage 3: the moment model


def _train_moments(directory: Path, settings: DemoSettings, progress: bool,
                   on_epoch: Callable[[dict[str, Any]], None] | None) -> tuple[list[Path], dict[str, Any]]:
    """The ``tiny`` moment denoiser, conditioned on the retrieval model's frame tokens (what the index stores), then
    the localiser search uses, chosen by measurement on the val split (``prvr.demo.moments``)."""
    from prvr.checkpoint import load_model
    from prvr.data.dataset import PRVRCorpus
    from prvr.demo.moments import measure_readings
    from prvr.moments.config import apply_moment_overrides, load_moment_preset
    from prvr.moments.localizer import load_localizer
    from prvr.moments.train import MomentData, frame_source, train_moments

    # the explicit frame-query cosine: without it the tiny model's relevance stays near chance on the demo's ~2k
    # training queries (val R1@0.5 of its relevance span 10-14 after 3-12 epochs; 53 with it, 6 epochs at lr 1e-3)
    config = apply_moment_overrides(load_moment_preset("tiny"), [
        f"train.epochs={settings.moment_epochs}", f"train.patience={settings.patience}", f"seed={settings.seed}",
        "train.threads=0", "train.lr=0.001", "network.similarity_feature=true"])
    out = _stage_dir(directory, "moments")
    retrieval = _stage_dir(directory, "model") / "best.pt"

    def train(resume: bool) -> Any:
        return train_moments(_data_root(directory), DEMO_COLLECTION, out, None if resume else config,
                             retrieval_checkpoint=retrieval, resume=resume,
                             progress=progress, max_train_queries=settings.moment_queries, on_epoch=on_epoch)

    result = None
    if (out / "last.pt").is_file():  # cut off by a killed run: continue from its last epoch
        try:
            result = train(resume=True)
        except (ValueError, RuntimeError, KeyError) as error:
            logger.warning("cannot resume the moment training in %s (%s); training from scratch", out, error)
            shutil.rmtree(out)
    if result is None:
        result = train(resume=False)
    localizer = load_localizer(result.best_path)
    model, retrieval_config, _ = load_model(retrieval)
    measured: dict[str, Any] = {}
    for split in ("val", "test"):  # the choice is made on val; test, held out from it, reports the chosen one
        corpus = PRVRCorpus(_data_root(directory), DEMO_COLLECTION, split, retrieval_config.data)
        data = MomentData(corpus, frame_source(corpus, retrieval))
        measured[split] = measure_readings(localizer, data, retrieval_model=model,
                                           batch_size=localizer.config.train.eval_batch_size)
    chosen = measured["val"]["chosen"]
    facts = {"best_epoch": result.best_epoch, "epochs_run": result.epochs_run, "reading": chosen,
             "val": dict(measured["val"][chosen]), "test": dict(measured["test"][chosen]),
             "val_by_reading": measured["val"],
             "test_by_reading": {k: v for k, v in measured["test"].items() if k != "chosen"}}
    return [Path(result.best_path)], facts


# ----------------------------------------------------------------------------------------------------------------
# stage 4: the index


def _build_index(directory: Path, settings: DemoSettings, moment_checkpoint: Path | None,
                 moment_facts: dict[str, Any], progress: bool,
                 text_backbone: dict[str, Any] | None) -> tuple[list[Path], dict[str, Any]]:
    from prvr.index.builder import build_index
    from prvr.checkpoint import checkpoint_config
    from prvr.data.dataset import PRVRCorpus

    checkpoint = _stage_dir(directory, "model") / "best.pt"
    config = checkpoint_config(checkpoint)
    corpus = PRVRCorpus(_data_root(directory), DEMO_COLLECTION, INDEX_SPLIT, config.data,
                        expected_video_dim=config.model.video_dim)
    if text_backbone is None:
        from prvr.text_encoders import MINILM_L6_NAME, file_digest, find_minilm_l6_dir

        path = find_minilm_l6_dir()
        text_backbone = {"id": f"{MINILM_L6_NAME}@{file_digest(path / 'model.safetensors')[:12]}",
                         "path": str(path.resolve())}
    kwargs: dict[str, Any] = {}
    facts: dict[str, Any] = {"text_backbone": text_backbone["id"], "text_backbone_path": text_backbone.get("path"),
                             "moments": False}
    if moment_checkpoint is not None:
        from prvr.demo.moments import reading_record
        from prvr.moments.zero_shot import DENOISER_KIND

        kwargs["moment_checkpoint"] = moment_checkpoint
        reading = moment_facts.get("reading", DENOISER_KIND)
        kwargs["moment_localizer"] = reading_record(reading, moment_facts.get("val_by_reading", {}))
        facts.update(moments=True, moment_reading=reading)
    index_dir = _stage_dir(directory, "index")
    result = build_index(checkpoint, corpus, index_dir, collection_name=DEMO_COLLECTION, text_backbone=text_backbone,
                         progress=progress, **kwargs)
    facts.update(videos=result.num_videos, tokens=result.ntotal, generation=result.directory.name)
    return [result.directory / "manifest.json"], facts


# ----------------------------------------------------------------------------------------------------------------
# the whole build


def build_demo(
    settings: DemoSettings | None = None,
    *,
    cache_root: str | os.PathLike[str] | None = None,
    rebuild: bool = False,
    progress: bool = True,
    on_stage: Callable[[str, str], None] | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    encoders: dict[str, Any] | None = None,
    text_backbone: dict[str, Any] | None = None,
) -> DemoBuild:
    """Build the demo corpus, model, moment model and index, or reuse what the cache holds and verifies.

    Args:
        settings: what to build (default :class:`DemoSettings`).
        cache_root: the cache root (default :func:`default_cache_root`); the demo goes to :func:`demo_dir`.
        rebuild: discard the cached demo of these settings and build everything again.
        progress: show tqdm bars.
        on_stage: called as ``on_stage(stage, "build" | "reuse" | "done" | "skip")`` (the CLI prints it).
        on_epoch: called with each training epoch's record (see ``prvr.engine.fit``).
        encoders: ``{"camera": ..., "text": ...}`` already loaded encoders (tests pass small local models);
            default the packaged paraphrase-MiniLM-L3-v2 ONNX and all-MiniLM-L6-v2.
        text_backbone: the ``{"id", "path"}`` recorded in the index for `prvr query` (default the packaged
            all-MiniLM-L6-v2); must be the backbone of ``encoders["text"]`` when that is given.

    Returns:
        The :class:`DemoBuild`.
    """
    settings = settings or DemoSettings()
    directory = demo_dir(settings, cache_root)
    report = on_stage or (lambda stage, status: None)
    with _demo_lock(directory):
        manifest = None if rebuild else read_manifest(directory)
        if manifest is not None and manifest.get("settings_sha256") != settings.digest():
            logger.warning("demo cache %s was built with other settings; rebuilding", directory)
            manifest = None
        if manifest is None:
            for stage in STAGES:
                shutil.rmtree(_stage_dir(directory, stage), ignore_errors=True)
            manifest = {"settings": dataclasses.asdict(settings), "generator": GENERATOR_VERSION,
                        "settings_sha256": settings.digest(), "stages": {}}
        stages: dict[str, Any] = manifest["stages"]
        built: list[str] = []
        seconds: dict[str, float] = {}
        stale = False
        for stage in STAGES:
            if not stale and _verified(directory, stages.get(stage)):
                report(stage, "reuse")
                continue
            if not stale:  # the first stage to rebuild: drop it and every later stage's record and files
                for position, later in enumerate(STAGES[STAGES.index(stage):]):
                    stages.pop(later, None)
                    if position > 0 or later in ("corpus", "index"):  # a cut-off training resumes from last.pt
                        shutil.rmtree(_stage_dir(directory, later), ignore_errors=True)
                write_json_atomic(directory / MANIFEST_NAME, manifest)
                stale = True
            report(stage, "build")
            tic = time.perf_counter()
            if stage == "corpus":
                files, facts = _build_corpus(directory, settings, progress, encoders)
            elif stage == "model":
                files, facts = _train_model(directory, settings, progress, on_epoch)
            elif stage == "moments":
                files, facts = _train_moments(directory, settings, progress, on_epoch)
            else:
                moment_file = next(iter(stages["moments"]["files"]), None)
                files, facts = _build_index(directory, settings, directory / moment_file if moment_file else None,
                                            stages["moments"].get("facts", {}), progress, text_backbone)
            elapsed = time.perf_counter() - tic
            present = [_stage_dir(directory, "index") / "index.db"] if stage == "index" else []
            stages[stage] = _record(directory, files, facts, elapsed, present)
            write_json_atomic(directory / MANIFEST_NAME, manifest)
            built.append(stage)
            seconds[stage] = elapsed
            report(stage, "skip" if facts.get("skipped") else "done")
    facts_of = {stage: dict(stages[stage]["facts"]) for stage in STAGES}
    moment_files = list(stages["moments"]["files"])
    notes = tuple(str(facts[key]) for facts in facts_of.values() for key in ("skipped", "moments_note")
                  if key in facts)
    return DemoBuild(
        directory=directory,
        data_root=_data_root(directory),
        checkpoint=_stage_dir(directory, "model") / "best.pt",
        moment_checkpoint=directory / moment_files[0] if moment_files else None,
        index_dir=_stage_dir(directory, "index"),
        built=tuple(built),
        seconds={k: round(v, 2) for k, v in seconds.items()},
        facts=facts_of,
        notes=notes,
    )

