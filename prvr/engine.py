"""Training and evaluation loops. They take objects (model, corpus, config), never command-line arguments.

Shape letters: V videos in a corpus, Nq queries, C clip tokens, F frame tokens, D hidden.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.nn.utils import clip_grad_norm_
from tqdm import tqdm

from prvr.checkpoint import read_checkpoint, save_checkpoint
from prvr.config import DataConfig, ExperimentConfig, TrainConfig
from prvr.data.dataset import JointCorpus, PRVRCorpus, iter_query_batches, iter_video_batches, make_train_loader
from prvr.fileio import file_sha256, write_text_atomic
from prvr.losses import Criterion
from prvr.metrics.retrieval import chunked_ranks, recall_metrics
from prvr.model import DreamPRVR
from prvr.types import VideoTokens

__all__ = [
    "feature_backbone",
    "query_backbone",
    "config_for_corpus",
    "resolve_device",
    "build_optimizer",
    "train_one_epoch",
    "encode_corpus",
    "encode_corpus_queries",
    "rank_corpus",
    "evaluate",
    "subset_metrics",
    "fit",
    "FitResult",
    "config_differences",
    "check_init_compatible",
    "load_init_weights",
]

logger = logging.getLogger(__name__)


def feature_backbone(root: str | os.PathLike[str], collection: str, data: DataConfig) -> str | None:
    """The frame backbone id recorded in ``<root>/<collection>/FeatureData/<data.video_feature>/feature.hdf5``.

    Args:
        root: the data root holding ``<collection>/``.
        collection: the collection name.
        data: names the video feature, and the backbone it must have been made by (``data.video_backbone``, or None).

    Returns:
        The recorded id; None for feature releases without one, or for other layouts than ``feature.hdf5``.

    Raises:
        ValueError: ``data.video_backbone`` is set and the file records a different backbone.
    """
    from prvr.features.backbones import check_backbone, feature_file_backbone

    feature_file = Path(root) / collection / "FeatureData" / data.video_feature / "feature.hdf5"
    if not feature_file.is_file():
        return None
    found = feature_file_backbone(feature_file)
    if data.video_backbone is not None and found is not None:
        check_backbone(data.video_backbone, found=found, what="the checkpoint")
    return found


def query_backbone(root: str | os.PathLike[str], collection: str, data: DataConfig) -> str | None:
    """The text backbone id recorded in the collection's ``data.text_feature`` query feature file (None: none).

    Raises:
        ValueError: ``data.text_backbone`` is set and the file records a different text backbone.
    """
    from prvr.data.features import query_feature_backbone, query_feature_path
    from prvr.text_encoders import check_text_backbone

    found = query_feature_backbone(root, collection, data.text_feature)
    check_text_backbone(data.text_backbone, found, what="the checkpoint",
                        found_what=f"query features {query_feature_path(root, collection, data.text_feature)}")
    return found


def config_for_corpus(config: ExperimentConfig, corpus: PRVRCorpus | JointCorpus) -> ExperimentConfig:
    """``config`` prepared to train on ``corpus``: the input dims and the frame backbone id are read from the data.

    ``model.video_dim`` / ``model.text_dim`` become the corpus's feature dims (a preset's dims are only a guess) and
    ``data.video_backbone`` the backbone recorded in the corpus's feature file, when it records one: the checkpoint
    then carries it, and indexing features of another backbone is refused. Likewise ``data.text_backbone`` from the
    query feature file: an index then refuses a query encoder of another text backbone.

    Args:
        config: the resolved preset and overrides; ``corpus`` must have been opened with its ``config.data``.
        corpus: typically the training split.

    Returns:
        The config to train (and save in the checkpoint) with.

    Raises:
        ValueError: ``config.data.video_backbone`` is set and the feature file records a different backbone.
    """
    backbone_id = feature_backbone(corpus.root, corpus.collection, config.data)
    if backbone_id is not None:
        config = dataclasses.replace(config, data=dataclasses.replace(config.data, video_backbone=backbone_id))
    text_backbone = query_backbone(corpus.root, corpus.collection, config.data)
    if text_backbone is not None:
        config = dataclasses.replace(config, data=dataclasses.replace(config.data, text_backbone=text_backbone))
    dims = {"video_dim": corpus.video_dim, "text_dim": corpus.text_dim}
    if (config.model.video_dim, config.model.text_dim) != (dims["video_dim"], dims["text_dim"]):
        logger.info("input dims taken from the data: %s (preset had %d / %d)", dims, config.model.video_dim,
                    config.model.text_dim)
        config = dataclasses.replace(config, model=dataclasses.replace(config.model, **dims))
    return config


def resolve_device(name: str = "auto") -> torch.device:
    """"auto" -> CUDA when available, else CPU; otherwise the named device (checked)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available here; use --device cpu or auto")
    return device


def build_optimizer(
    model: torch.nn.Module, config: TrainConfig, total_steps: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW with no weight decay on biases and normalisation weights; linear warm-up then linear decay to 0."""
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        (no_decay if parameter.ndim <= 1 else decay).append(parameter)
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.lr,
    )
    total_steps = max(1, total_steps)
    warmup = max(1, math.ceil(config.warmup_fraction * total_steps))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def train_one_epoch(
    model: DreamPRVR,
    loader: Any,
    criterion: Criterion,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    *,
    epoch: int,
    device: torch.device,
    grad_clip: float,
    generator: torch.Generator | None = None,
    progress: bool = True,
) -> dict[str, float]:
    """One pass over the training loader. Returns mean losses, counts and throughput."""
    model.train()
    totals: dict[str, float] = {}
    steps = 0
    num_videos = 0
    num_queries = 0
    start = time.perf_counter()
    bar = tqdm(loader, desc=f"epoch {epoch + 1}", leave=False, disable=not progress, unit="batch")
    for videos, queries in bar:
        videos, queries = videos.to(device), queries.to(device)
        outputs = model(videos, queries, generator=generator)
        assert queries.video_index is not None
        losses = criterion(outputs, queries.video_index, epoch, generator=generator)
        loss = losses["loss"]
        if not torch.isfinite(loss):
            raise RuntimeError(
                f"non-finite training loss at epoch {epoch + 1} (parts: "
                f"{ {k: float(v) for k, v in losses.items()} }); lower train.lr or check the features for outliers"
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip > 0:
            clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        scheduler.step()
        for key, value in losses.items():
            totals[key] = totals.get(key, 0.0) + float(value.detach())
        steps += 1
        num_videos += len(videos)
        num_queries += len(queries)
        bar.set_postfix(loss=f"{loss.item():.4f}")
    elapsed = time.perf_counter() - start
    result = {key: value / max(1, steps) for key, value in totals.items()}
    result.update(
        steps=steps,
        seconds=elapsed,
        videos_per_second=num_videos / max(elapsed, 1e-9),
        queries_per_second=num_queries / max(elapsed, 1e-9),
        lr=float(scheduler.get_last_lr()[0]),
    )
    return result


@torch.no_grad()
def encode_corpus(
    model: DreamPRVR, corpus: PRVRCorpus, *, batch_size: int = 128, progress: bool = False
) -> VideoTokens:
    """Encode every video of the corpus (in corpus order) into CPU tokens, frames padded to the longest video."""
    chunks: list[VideoTokens] = []
    for batch in tqdm(
        iter_video_batches(corpus, batch_size), desc="videos", disable=not progress, leave=False, unit="batch"
    ):
        chunks.append(model.encode_videos(batch).to("cpu"))
    max_frames = max(chunk.frame.shape[1] for chunk in chunks)

    def pad(t: Tensor, value: float | bool) -> Tensor:
        extra = max_frames - t.shape[1]
        if extra == 0:
            return t
        filler = torch.full((t.shape[0], extra, *t.shape[2:]), value, dtype=t.dtype)
        return torch.cat([t, filler], dim=1)

    registers = [c.registers for c in chunks]
    return VideoTokens(
        clip=torch.cat([c.clip for c in chunks]),  # (V, C, D)
        frame=torch.cat([pad(c.frame, 0.0) for c in chunks]),  # (V, F, D)
        frame_mask=torch.cat([pad(c.frame_mask, False) for c in chunks]),  # (V, F)
        registers=torch.cat(registers) if all(r is not None for r in registers) else None,  # type: ignore[arg-type]
    )


@torch.no_grad()
def encode_corpus_queries(
    model: DreamPRVR, corpus: PRVRCorpus, *, batch_size: int = 1024
) -> tuple[Tensor, np.ndarray]:
    """All queries of the corpus -> (Nq, D) CPU vectors and the (Nq,) index of each query's video."""
    vectors, targets = [], []
    for batch, target in iter_query_batches(corpus, batch_size):
        vectors.append(model.encode_queries(batch).to("cpu"))
        targets.append(np.asarray(target))
    return torch.cat(vectors), np.concatenate(targets)


@torch.no_grad()
def rank_corpus(
    model: DreamPRVR,
    queries: Tensor,
    tokens: VideoTokens,
    targets: np.ndarray,
    *,
    query_chunk: int = 1024,
    video_chunk: int = 512,
) -> np.ndarray:
    """1-based rank of each query's video among all V videos, in chunks of queries x videos.

    Only (query_chunk, V) scores exist at a time, and only ``video_chunk`` videos' tokens are on the model's device.
    """
    device = model.device

    def score_rows(q: Tensor) -> Tensor:  # (nq, D) -> (nq, V), one video chunk on the device at a time
        q = q.to(device)
        columns = [
            model.score(q, _slice_tokens(tokens, start, start + video_chunk).to(device))["total"].float().cpu()
            for start in range(0, len(tokens), video_chunk)
        ]
        return torch.cat(columns, dim=1)

    ranks = chunked_ranks(queries, score_rows, torch.as_tensor(targets, dtype=torch.long), chunk=query_chunk)
    return ranks.numpy()


def subset_metrics(ranks: np.ndarray, cap_ids: Sequence[str],
                   subsets: dict[str, Sequence[str]]) -> dict[str, dict[str, float]]:
    """Recall metrics of each subset of queries: ``ranks`` (Nq,) in the order of ``cap_ids``.

    Raises:
        ValueError: a subset names a cap id that is not among ``cap_ids``, or is empty.
    """
    position = {cap_id: index for index, cap_id in enumerate(cap_ids)}
    result: dict[str, dict[str, float]] = {}
    for name, members in subsets.items():
        missing = [cap_id for cap_id in members if cap_id not in position]
        if missing or not members:
            raise ValueError(f"query subset {name!r}: " + (f"{len(missing)} of its {len(members)} cap ids are not "
                             f"queries of the split (e.g. {missing[:3]}); rebuild it for this split" if missing
                             else "it is empty"))
        rows = np.asarray([position[cap_id] for cap_id in members], dtype=np.int64)
        result[name] = dict(recall_metrics(torch.as_tensor(ranks[rows])))
    return result


def _slice_tokens(tokens: VideoTokens, start: int, stop: int) -> VideoTokens:
    registers = tokens.registers[start:stop] if tokens.registers is not None else None
    return VideoTokens(tokens.clip[start:stop], tokens.frame[start:stop], tokens.frame_mask[start:stop], registers)


@torch.no_grad()
def evaluate(
    model: DreamPRVR, corpus: PRVRCorpus, config: TrainConfig, *, progress: bool = False,
    subsets: dict[str, Sequence[str]] | None = None,
) -> dict[str, Any]:
    """R@1/5/10/100, SumR, median and mean rank of text-to-video retrieval over the whole corpus.

    ``subsets`` (name -> cap ids of the corpus, e.g. ``prvr.data.subsets.find_query_subsets``) add
    ``metrics["subsets"][name]``: the same ranks (among ALL the corpus' videos) taken over those queries only.
    """
    start = time.perf_counter()
    tokens = encode_corpus(model, corpus, batch_size=config.batch_videos, progress=progress)
    encoded = time.perf_counter()
    queries, targets = encode_corpus_queries(model, corpus, batch_size=config.eval_query_chunk)
    ranks = rank_corpus(
        model, queries, tokens, targets, query_chunk=config.eval_query_chunk, video_chunk=config.eval_video_chunk
    )
    metrics: dict[str, Any] = dict(recall_metrics(torch.as_tensor(ranks)))
    if subsets:
        metrics["subsets"] = subset_metrics(ranks, [record.query_id for record in corpus.queries], subsets)
    metrics["num_videos"] = len(tokens)
    metrics["video_seconds"] = encoded - start
    metrics["seconds"] = time.perf_counter() - start
    return metrics


# ----------------------------------------------------------------------------------------------------------------
# fine-tuning from a checkpoint (--init-from)


def config_differences(a: Any, b: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """The (dotted path, value in a, value in b) of every leaf field where two config dataclasses differ."""
    if dataclasses.is_dataclass(a) and dataclasses.is_dataclass(b) and type(a) is type(b):
        found: list[tuple[str, Any, Any]] = []
        for field in dataclasses.fields(a):
            found += config_differences(getattr(a, field.name), getattr(b, field.name), f"{prefix}{field.name}.")
        return found
    return [] if a == b else [(prefix.rstrip("."), a, b)]


def check_init_compatible(saved: ExperimentConfig, config: ExperimentConfig, path: str | Path) -> None:
    """Refuse to fine-tune ``config`` from a checkpoint whose model or inputs differ.

    The model config must be equal field by field (the weights must fit and mean the same), and so must the
    inputs (``data``: feature names, clip bins, frame and token limits; the frame backbone only when both record
    one). Loss, training schedule and seed may differ: a fine-tune gets a new optimizer and schedule.

    Raises:
        ValueError: naming every differing field with both values.
    """
    differences = config_differences(saved.model, config.model, "model.")
    for path_, a, b in config_differences(saved.data, config.data, "data."):
        if path_ == "data.cache_in_memory" or (
                path_ in ("data.video_backbone", "data.text_backbone") and (a is None or b is None)):
            continue
        differences.append((path_, a, b))
    if differences:
        lines = "; ".join(f"{name}: {a!r} in the checkpoint ({saved.name}), {b!r} in this run ({config.name})"
                          for name, a, b in differences)
        raise ValueError(f"--init-from {path}: the checkpoint's config does not fit this run: {lines}. Train with "
                         "the checkpoint's preset and model/data overrides (loss and train fields may differ)")


def load_init_weights(model: torch.nn.Module, config: ExperimentConfig, path: str | Path) -> ExperimentConfig:
    """Load a checkpoint's weights into ``model`` (weights only: no optimizer, schedule or history).

    Returns:
        The checkpoint's config (checked by :func:`check_init_compatible`).
    """
    payload = read_checkpoint(path)
    saved = ExperimentConfig.from_json(payload["model_config"])
    check_init_compatible(saved, config, path)
    model.load_state_dict(payload["model"])
    return saved


# ----------------------------------------------------------------------------------------------------------------
# the whole run


def _rounded(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: round(v, 4) if isinstance(v, float) else _rounded(v) if isinstance(v, dict) else v
            for k, v in metrics.items()}


@dataclass(frozen=True)
class FitResult:
    best_epoch: int
    best_metrics: dict[str, float]
    epochs_run: int
    stopped_early: bool
    run_dir: Path


def fit(
    config: ExperimentConfig,
    train_corpus: PRVRCorpus | JointCorpus,
    val_corpus: PRVRCorpus,
    run_dir: str | Path,
    *,
    resume: bool = False,
    init_from: str | Path | None = None,
    val_subsets: dict[str, Sequence[str]] | None = None,
    progress: bool = True,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> FitResult:
    """Train with early stopping on validation SumR, writing best.pt, last.pt and metrics.jsonl into ``run_dir``.

    A run can be cut off at any time: last.pt is rewritten atomically after every epoch and ``resume=True`` continues
    from it with the same data order, learning-rate schedule and random state.

    ``init_from`` starts from a checkpoint's weights (fine-tuning: new optimizer, schedule and history; the
    configs must agree, :func:`check_init_compatible`); it is recorded in ``run_dir/init_from.json``. On resume
    the weights come from last.pt instead. ``val_subsets`` (name -> cap ids of ``val_corpus``) are scored after
    every epoch beside the full split (``val.subsets``); selection stays on the full split's SumR.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(config.train.device)
    if config.train.threads > 0:
        torch.set_num_threads(config.train.threads)
    torch.manual_seed(config.seed)
    model = DreamPRVR(config.model, seed=config.seed).to(device)
    criterion = Criterion(config.loss, clip_weight=config.model.clip_weight, frame_weight=config.model.frame_weight)
    batches_per_epoch = math.ceil(len(train_corpus.video_ids) / config.train.batch_videos)
    optimizer, scheduler = build_optimizer(model, config.train, config.train.epochs * batches_per_epoch)

    history: list[dict[str, Any]] = []
    start_epoch, best_sumr, best_epoch, bad_epochs, elapsed_before = 0, -1.0, -1, 0, 0.0
    last_path, best_path = run_dir / "last.pt", run_dir / "best.pt"
    if resume:
        if not last_path.is_file():
            raise FileNotFoundError(f"--resume: {last_path} does not exist; start the run without --resume")
        payload = read_checkpoint(last_path)
        saved = ExperimentConfig.from_json(payload["model_config"])
        if saved.model != config.model or saved.loss != config.loss or saved.seed != config.seed:
            raise ValueError(
                f"--resume: the config in {last_path} differs from the requested one (model, loss or seed); resume "
                "with the same preset and overrides, or start a new run directory"
            )
        model.load_state_dict(payload["model"])
        optimizer.load_state_dict(payload["optimizer"])
        scheduler.load_state_dict(payload["scheduler"])
        start_epoch = int(payload["epoch"])
        history = json.loads(payload["history"])
        best_sumr, best_epoch = float(payload["best_sumr"]), int(payload["best_epoch"])
        bad_epochs, elapsed_before = int(payload["bad_epochs"]), float(payload["elapsed"])
        logger.info("resuming %s after epoch %d (best SumR %.2f at epoch %d)", run_dir, start_epoch, best_sumr,
                    best_epoch + 1)
        # the checkpoint's history is authoritative: drop lines of an epoch that was cut off before its checkpoint
        write_text_atomic(run_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in history))
    elif init_from is not None:
        load_init_weights(model, config, init_from)
        record = {"init_from": str(init_from), "sha256": file_sha256(Path(init_from))}
        write_text_atomic(run_dir / "init_from.json", json.dumps(record, indent=2) + "\n")
        logger.info("fine-tuning from the weights of %s", init_from)
    (run_dir / "config.json").write_text(config.to_json() + "\n", encoding="utf-8")

    run_start = time.perf_counter()
    stopped_early = False
    for epoch in range(start_epoch, config.train.epochs):
        if bad_epochs >= config.train.patience:
            stopped_early = True
            break
        torch.manual_seed(config.seed * 100_003 + epoch)  # dropout stream: reproducible per epoch, so resumable
        generator = torch.Generator(device=device)
        generator.manual_seed(config.seed * 1_000_003 + epoch)
        loader = make_train_loader(
            train_corpus, config.train.batch_videos, seed=config.seed, epoch=epoch,
            num_workers=config.train.num_workers,
        )
        train_stats = train_one_epoch(
            model, loader, criterion, optimizer, scheduler, epoch=epoch, device=device,
            grad_clip=config.train.grad_clip, generator=generator, progress=progress,
        )
        val_metrics = evaluate(model, val_corpus, config.train, subsets=val_subsets)
        improved = val_metrics["SumR"] > best_sumr
        if improved:
            best_sumr, best_epoch, bad_epochs = val_metrics["SumR"], epoch, 0
        else:
            bad_epochs += 1
        record = {
            "epoch": epoch + 1,
            "train": {k: round(v, 6) if isinstance(v, float) else v for k, v in train_stats.items()},
            "val": _rounded(val_metrics),
            "best_epoch": best_epoch + 1,
            "wall_seconds": round(elapsed_before + time.perf_counter() - run_start, 2),
        }
        history.append(record)
        with open(run_dir / "metrics.jsonl", "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        if on_epoch is not None:
            on_epoch(record)
        state = {
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "history": json.dumps(history),
            "best_sumr": best_sumr,
            "best_epoch": best_epoch,
            "bad_epochs": bad_epochs,
            "elapsed": elapsed_before + time.perf_counter() - run_start,
            "val_metrics": json.dumps(val_metrics),
        }
        if improved:
            save_checkpoint(best_path, model=model, config=config, epoch=epoch + 1,
                            state={"val_metrics": json.dumps(val_metrics)})
        save_checkpoint(last_path, model=model, config=config, epoch=epoch + 1, state=state)
    best_metrics = next((r["val"] for r in history if r["epoch"] == best_epoch + 1), {})
    return FitResult(best_epoch + 1, best_metrics, len(history), stopped_early, run_dir)
