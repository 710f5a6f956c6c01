"""Training of the moment denoiser on any split with timestamps (the ``<collection><split>.moments.jsonl`` sidecar).

Shape letters: B batch of (query, video) pairs, Q training proposals, F frames, L query tokens.

The video side is either the raw frame features of the layout (``condition="frames"``) or the frame tokens of a
trained DreamPRVR checkpoint (``condition="retrieval"``: what the index stores, the search-time condition; encoded
once per video and kept in RAM). One step: build the condition, corrupt the padded ground truth at one random t per
sample, denoise, Hungarian-match every layer, L_set + L_sim as a weighted sum by name, AdamW, gradient clipping.
Each epoch ends with R1@0.3/0.5/0.7 and mAP on the validation split and writes ``last.pt`` (and ``best.pt`` when
R1@0.5 + R1@0.7 improved); ``resume=True`` continues from ``last.pt``. The batch order and the noise of an epoch are
pure functions of (seed, epoch), so a resumed run replays the same epochs as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from prvr.checkpoint import atomic_torch_save, load_model
from prvr.data.dataset import PRVRCorpus, iter_video_batches
from prvr.engine import config_differences
from prvr.fileio import file_sha256, write_text_atomic
from prvr.metrics.moments import moment_metrics
from prvr.moments.condition import frame_labels, similarity_losses
from prvr.moments.config import InferenceConfig, MomentConfig, load_moment_preset
from prvr.moments.criterion import SetCriterion, weighted_sum
from prvr.moments.denoiser import MomentDenoiser, SpanDiffusion
from prvr.moments.localizer import (
    MOMENT_FORMAT_VERSION,
    DiffusionMomentLocalizer,
    pad_batch,
    read_moment_checkpoint,
)
from prvr.moments.matcher import HungarianMatcher
from prvr.moments.spans import span_se_to_cw
from prvr.types import QueryRecord

__all__ = ["MomentData", "MomentTrainResult", "frame_source", "train_moments", "evaluate_moments",
           "evaluate_checkpoint_on_split", "check_moment_init_compatible", "InferenceSelection",
           "inference_grid", "select_inference", "record_inference_selection", "lr_factor", "localizer_split_data",
           "predict_split", "save_moment_checkpoint", "train_step_proposals"]

logger = logging.getLogger(__name__)

FrameSource = Callable[[str], np.ndarray]  # video id -> (F, D_v) frame tokens


@dataclass(frozen=True)
class MomentBatch:
    """B (query, video) pairs ready for the network.

    Attributes:
        video: (B, F, D_v); video_mask: (B, F).
        text: (B, L, D_t); text_mask: (B, L).
        targets_cw: B tensors (G_b, 2) of normalised (centre, width) ground truth.
        windows_se: B tensors (G_b, 2) of normalised (start, end) ground truth.
        same_query_video: (B,) bool, True where the rolled-by-one query (the contrastive negative) is about the same
            video (those rows get no contrastive term).
    """

    video: Tensor
    video_mask: Tensor
    text: Tensor
    text_mask: Tensor
    targets_cw: list[Tensor]
    windows_se: list[Tensor]
    same_query_video: Tensor


class MomentData:
    """The (query, video) pairs of one split that have timestamps and a positive duration.

    Args:
        corpus: the split (its moments sidecar fills windows and durations).
        frames_of: video id -> (F, D_v) frame tokens (see :func:`frame_source`).
        max_queries: keep only the first N usable queries (quick runs); None keeps all.
    """

    def __init__(self, corpus: PRVRCorpus, frames_of: FrameSource, max_queries: int | None = None) -> None:
        usable = [r for r in corpus.queries if r.windows and r.duration is not None and r.duration > 0]
        if not usable:
            raise ValueError(f"{corpus.caption_file}: no query has timestamps and a duration; moment training needs "
                             f"the sidecar {corpus.moments_file} (cap_id, video_id, windows, duration per line)")
        skipped = len(corpus.queries) - len(usable)
        if skipped:
            logger.warning("%s: %d of %d queries have no timestamps or duration and are left out", corpus.split,
                           skipped, len(corpus.queries))
        self.corpus = corpus
        self.frames_of = frames_of
        self.records: list[QueryRecord] = usable[:max_queries] if max_queries else usable

    def __len__(self) -> int:
        return len(self.records)

    def windows_se(self, record: QueryRecord) -> Tensor:
        """(G, 2) normalised (start, end) windows of a record, clamped to [0, 1], start <= end."""
        duration = float(record.duration or 1.0)
        windows = torch.tensor(record.windows, dtype=torch.float32) / duration  # (G, 2)
        windows = windows.clamp(0.0, 1.0)
        return torch.stack([windows.min(1).values, windows.max(1).values], dim=1)

    def batch(self, indices: Sequence[int]) -> MomentBatch:
        """The :class:`MomentBatch` of the records at ``indices``."""
        records = [self.records[i] for i in indices]
        video, video_mask = pad_batch([self.frames_of(r.video_id) for r in records])
        text, text_mask = pad_batch([self.corpus.query_tokens(r.query_id) for r in records])
        windows = [self.windows_se(r) for r in records]
        video_ids = [r.video_id for r in records]
        same = torch.tensor([a == b for a, b in zip(video_ids, video_ids[1:] + video_ids[:1])])
        return MomentBatch(video, video_mask, text, text_mask, [span_se_to_cw(w) for w in windows], windows, same)

    def ground_truth(self) -> list[dict[str, Any]]:
        """QVHighlights-format ground truth (``qid``, ``relevant_windows`` in seconds) of the records."""
        return [{"qid": r.query_id, "relevant_windows": [list(w) for w in r.windows], "duration": r.duration}
                for r in self.records]


def frame_source(corpus: PRVRCorpus, retrieval_checkpoint: str | Path | None = None, *,
                 batch_size: int = 64, progress: bool = False) -> FrameSource:
    """Video id -> frame tokens: the raw preprocessed frames, or the retrieval model's frame tokens (cached).

    Args:
        corpus: the split whose videos are read.
        retrieval_checkpoint: a DreamPRVR checkpoint; its frame tokens (what the index stores) are computed once
            for every video of the corpus. None = raw frame features.
        batch_size: videos per encoder batch.
        progress: show a progress bar while encoding.
    """
    if retrieval_checkpoint is None:
        return lambda video_id: corpus.video(video_id)[1]
    model, _, _ = load_model(retrieval_checkpoint)
    cache: dict[str, np.ndarray] = {}
    batches = iter_video_batches(corpus, batch_size)
    total = math.ceil(len(corpus.video_ids) / batch_size)
    with torch.no_grad():
        for batch in tqdm(batches, total=total, desc=f"frame tokens {corpus.split}", disable=not progress):
            tokens = model.encode_videos(batch.to(model.device))
            frames = tokens.frame.float().cpu().numpy()  # (B, F, D)
            lengths = tokens.frame_mask.sum(1).cpu().numpy()  # (B,)
            for row, video_id in enumerate(batch.video_ids):
                cache[video_id] = np.ascontiguousarray(frames[row, : int(lengths[row])])
    return cache.__getitem__


def train_step_proposals(config: MomentConfig, epoch: int) -> int:
    """Training proposals of an epoch: ``diffusion.train_proposals``, or DiffusionVMR's growth from 1 to it over the
    epochs (``diffusion.progressive_proposals``)."""
    proposals = config.diffusion.train_proposals
    if not config.diffusion.progressive_proposals:
        return proposals
    fraction = epoch / max(config.train.epochs - 1, 1)
    return max(1, min(proposals, 1 + round((proposals - 1) * fraction)))


def lr_factor(warmup_fraction: float, decay: str, total_steps: int) -> Callable[[int], float]:
    """The learning-rate multiplier of optimiser step ``step`` (0-based): linear warm-up over
    ``ceil(warmup_fraction * total_steps)`` steps, then 1 ("constant") or a linear decay to 0 at ``total_steps``
    ("linear"); the schedule of :func:`prvr.engine.build_optimizer`."""
    total_steps = max(1, total_steps)
    warmup = math.ceil(warmup_fraction * total_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if decay == "constant":
            return 1.0
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return factor


def _epoch_generator(seed: int, epoch: int, purpose: int) -> torch.Generator:
    state = np.random.SeedSequence([seed & 0xFFFFFFFF, epoch, purpose]).generate_state(1)
    return torch.Generator().manual_seed(int(state[0]))


def _losses(model: MomentDenoiser, diffusion: SpanDiffusion, criterion: SetCriterion, config: MomentConfig,
            batch: MomentBatch, num_proposals: int, generator: torch.Generator) -> dict[str, Tensor]:
    condition = model.encode(batch.video, batch.video_mask, batch.text, batch.text_mask)
    x_start = diffusion.training_targets(batch.targets_cw, num_proposals, generator)  # (B, Q, 2)
    t = torch.randint(0, config.diffusion.steps, (x_start.shape[0],), generator=generator)  # (B,)
    noisy = diffusion.corrupt(x_start, t, generator)  # (B, Q, 2)
    output = model(noisy, t, condition)
    losses = criterion(output.spans, output.logits, batch.targets_cw)
    negative = None
    if config.loss.weights.get("sim_nce", 0.0) and batch.video.shape[0] > 1:
        rolled_text = torch.roll(batch.text, -1, 0)  # (B, L, D_t): each video with the next pair's query
        rolled_mask = torch.roll(batch.text_mask, -1, 0)
        negative = model.encode(batch.video, batch.video_mask, rolled_text, rolled_mask).relevance  # (B, F)
    labels = frame_labels(batch.windows_se, batch.video_mask)  # (B, F)
    sim = similarity_losses(condition.relevance, labels, condition.mask, negative,
                            negative_valid=~batch.same_query_video, margin=config.loss.sim_margin,
                            temperature=config.loss.sim_temperature, generator=generator)
    losses.update(sim)
    return losses


@torch.no_grad()
def predict_split(localizer: DiffusionMomentLocalizer, data: MomentData, *, num_spans: int | None = None,
                  steps: int | None = None, rescore: float | None = None, proposal_step: int | None = -1,
                  method: str | None = None, batch_size: int = 64, num_moments: int = 10,
                  progress: bool = False) -> list[dict[str, Any]]:
    """QVHighlights-format predictions of every record: ``qid``, ``pred_relevant_windows`` [[s, e, p], ...] (best
    first, seconds) and ``relevance`` (the (F,) curve, as a list). Every pair starts from the same seeded noise
    (see :meth:`DiffusionMomentLocalizer.predict`), so the predictions do not depend on the batching."""
    predictions: list[dict[str, Any]] = []
    starts = range(0, len(data), batch_size)
    for start in tqdm(starts, desc="localise", disable=not progress):
        indices = list(range(start, min(start + batch_size, len(data))))
        batch = data.batch(indices)
        spans_cw, p_fg, relevance = localizer.predict(batch.video, batch.video_mask, batch.text, batch.text_mask,
                                                      num_spans=num_spans, steps=steps, rescore=rescore,
                                                      proposal_step=proposal_step, method=method)
        lengths = batch.video_mask.sum(1).tolist()
        for row, index in enumerate(indices):
            record = data.records[index]
            result = localizer._postprocess(spans_cw[row], p_fg[row], relevance[row, : lengths[row]].numpy(),
                                            float(record.duration or 0.0), num_moments)
            predictions.append({"qid": record.query_id,
                                "pred_relevant_windows": [[m.start_sec, m.end_sec, m.score] for m in result.moments],
                                "relevance": result.relevance.tolist()})
    return predictions


def evaluate_moments(localizer: DiffusionMomentLocalizer, data: MomentData, **kwargs: Any) -> dict[str, float]:
    """R1@0.3/0.5/0.7, mAP@0.5/0.75 and mAP avg (percent) of the localiser on ``data`` (kwargs: predict_split's)."""
    predictions = predict_split(localizer, data, **kwargs)
    metrics = moment_metrics([{"qid": p["qid"], "pred_relevant_windows": p["pred_relevant_windows"]}
                              for p in predictions], data.ground_truth())
    keep = ("R1@0.3", "R1@0.5", "R1@0.7", "mAP@0.5", "mAP@0.75", "mAP")
    return {key: metrics[key] for key in keep}


# ----------------------------------------------------------------------------------------------------------------
# choosing the search-time setting by measurement


def inference_grid(config: MomentConfig) -> list[InferenceConfig]:
    """The localiser settings :func:`select_inference` measures, cheapest first (ties keep the earlier one).

    The relevance curve's best contiguous span (``method="relevance_span"``); the denoiser at 1 and 2 DDIM steps
    (more steps measured no better on capproxy, docs/bench/moments.md), each with and without the relevance proposal
    (refined from step 0) and with the relevance-aware rescore w in {0, 0.25, 1}; and 2 steps with eta = 1
    (DiffusionDet's stochastic DDIM, which re-noises x0_hat instead of re-using eps_hat) at w = 0.25. The number of
    spans and NMS stay the config's. Then the relevance span refined by the decoder from step 0 and ranked first
    (``method="refined_span"``; the sampled spans after it at w 1), measured last so a tie keeps the cheaper ones.
    """
    base = dataclasses.replace(config.inference, eta=0.0, relevance_proposal_step=None, relevance_rescore=0.0)
    grid = [dataclasses.replace(base, method="relevance_span", sampling_steps=1)]
    for steps, eta, rescores in ((1, 0.0, (0.0, 0.25, 1.0)), (2, 0.0, (0.0, 0.25, 1.0)), (2, 1.0, (0.25,))):
        for proposal_step in (None, 0):
            for rescore in rescores:
                if steps <= config.diffusion.steps:
                    grid.append(dataclasses.replace(base, method="denoiser", sampling_steps=steps, eta=eta,
                                                    relevance_proposal_step=proposal_step,
                                                    relevance_rescore=rescore))
    grid.append(dataclasses.replace(base, method="refined_span", sampling_steps=1, relevance_proposal_step=0,
                                    relevance_rescore=1.0))
    return grid


@dataclass(frozen=True)
class InferenceSelection:
    """What :func:`select_inference` measured: the chosen setting and one row per setting (metrics in percent)."""

    best: InferenceConfig
    rows: list[dict[str, Any]]
    queries: int


def _inference_row(setting: InferenceConfig) -> dict[str, Any]:
    return {"method": setting.method, "sampling_steps": setting.sampling_steps, "num_spans": setting.num_spans,
            "eta": setting.eta, "relevance_proposal_step": setting.relevance_proposal_step,
            "relevance_rescore": setting.relevance_rescore}


def select_inference(localizer: DiffusionMomentLocalizer, data: MomentData,
                     settings: Sequence[InferenceConfig] | None = None, *, batch_size: int = 64,
                     progress: bool = False) -> InferenceSelection:
    """Measure every localiser setting on ``data`` (the selection queries) and pick the best by R1@0.5 + R1@0.7
    (the training's selection score; ties keep the earlier, cheaper setting).

    Args:
        localizer: the trained localiser (its config's inference is the base of the default grid).
        data: the selection queries (the first 500 DEV-VAL queries on capproxy), never the report queries.
        settings: the settings to measure (default :func:`inference_grid`).
        batch_size: pairs per batch.
        progress: show a progress bar per setting.

    Returns:
        The :class:`InferenceSelection`.
    """
    settings = list(settings) if settings is not None else inference_grid(localizer.config)
    if not settings:
        raise ValueError("select_inference needs at least one setting to measure")
    rows, best, best_score = [], settings[0], -math.inf
    for setting in settings:
        # a localiser whose defaults are the setting: exactly what search runs once the setting is recorded
        measured = DiffusionMomentLocalizer(localizer.model, dataclasses.replace(localizer.config, inference=setting),
                                            localizer.device)
        metrics = evaluate_moments(measured, data, batch_size=batch_size, progress=progress)
        rows.append({**_inference_row(setting), **{key: round(value, 2) for key, value in metrics.items()}})
        score = _selection_score(metrics)
        if score > best_score:
            best, best_score = setting, score
    logger.info("inference selection on %d queries: %s", len(data), _inference_row(best))
    return InferenceSelection(best, rows, len(data))


def record_inference_selection(checkpoint: str | Path, selection: InferenceSelection) -> MomentConfig:
    """Write the chosen setting into a moment checkpoint: its ``moment_config.inference`` becomes
    ``selection.best`` (what :func:`~prvr.moments.localizer.load_localizer`, and so search, uses) and the measured
    rows go under ``inference_selection``. Returns the checkpoint's new config."""
    payload = read_moment_checkpoint(checkpoint)
    config = dataclasses.replace(MomentConfig.from_json(payload["moment_config"]), inference=selection.best)
    payload["moment_config"] = config.to_json(indent=None)
    payload["inference_selection"] = {"queries": selection.queries, "chosen": _inference_row(selection.best),
                                      "score": "R1@0.5 + R1@0.7", "rows": selection.rows}
    atomic_torch_save(payload, checkpoint)
    return config


def save_moment_checkpoint(path: str | Path, *, model: MomentDenoiser, config: MomentConfig, epoch: int,
                           state: dict[str, Any] | None = None) -> None:
    """Write weights, the full MomentConfig (JSON, key ``moment_config``) and optional resume state, atomically."""
    payload: dict[str, Any] = {"format_version": MOMENT_FORMAT_VERSION, "moment_config": config.to_json(indent=None),
                               "model": model.state_dict(), "epoch": epoch}
    if state:
        payload.update(state)
    atomic_torch_save(payload, path)


@dataclass(frozen=True)
class MomentTrainResult:
    """What :func:`train_moments` returns: the checkpoint paths, the best epoch (1-based) and its val metrics."""

    best_path: Path
    last_path: Path
    best_epoch: int
    best_metrics: dict[str, float]
    epochs_run: int
    history: list[dict[str, Any]]
    selection: InferenceSelection | None = None  # the measured localiser settings (``select=True``)


def _selection_score(metrics: dict[str, float]) -> float:
    return metrics["R1@0.5"] + metrics["R1@0.7"]


# the fields a fine-tune must share with the checkpoint it starts from: the weights must fit and mean the same
_INIT_FIELDS = ("network", "diffusion", "condition", "video_dim", "text_dim")


def check_moment_init_compatible(saved: MomentConfig, config: MomentConfig, path: str | Path) -> None:
    """Refuse to fine-tune ``config`` from a moment checkpoint whose network, diffusion or inputs differ.

    Like :func:`prvr.engine.check_init_compatible`: the network, the diffusion, the condition and the input widths
    must be equal field by field, and so must the data fields that change what a frame or a query token is
    (features, frame and token limits); loss, training, inference and seed may differ.

    Raises:
        ValueError: naming every differing field with both values.
    """
    differences = []
    for name in _INIT_FIELDS:
        differences += config_differences(getattr(saved, name), getattr(config, name), f"{name}.")
    differences += [(p, a, b) for p, a, b in config_differences(saved.data, config.data, "data.")
                    if p != "data.cache_in_memory" and not (p == "data.video_backbone" and (a is None or b is None))]
    if differences:
        lines = "; ".join(f"{name}: {a!r} in the checkpoint, {b!r} in this run" for name, a, b in differences)
        raise ValueError(f"--init-from {path}: the moment checkpoint does not fit this run: {lines}. Fine-tune with "
                         "the checkpoint's preset and network/diffusion/data overrides (loss, train and inference "
                         "fields may differ)")


def train_moments(
    root: str | Path,
    collection: str,
    out_dir: str | Path,
    config: MomentConfig | None = None,
    *,
    preset: str = "cpu",
    train_split: str = "train",
    val_split: str = "val",
    train_collection: str | None = None,
    init_from: str | Path | None = None,
    retrieval_checkpoint: str | Path | None = None,
    resume: bool = False,
    progress: bool = False,
    max_train_queries: int | None = None,
    max_val_queries: int | None = None,
    select: bool = True,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> MomentTrainResult:
    """Train a moment denoiser on a standard-layout collection with a moments sidecar; write best.pt / last.pt.

    Args:
        root: data root (``root/collection/...``).
        collection: collection name.
        out_dir: run folder (created); gets ``best.pt``, ``last.pt`` and ``history.jsonl``-like records via
            ``on_epoch``.
        config: the MomentConfig (default: the preset ``preset``). ``video_dim`` / ``text_dim`` / ``condition`` /
            ``data`` are taken from the data and the retrieval checkpoint.
        preset: moment preset used when ``config`` is None ("tiny" trains a few hundred videos in seconds).
        train_split: caption split to train on.
        val_split: caption split for the per-epoch metrics and the best checkpoint.
        train_collection: the collection of ``train_split`` when it is not ``collection`` (pre-training on
            ``capproxy_pretrain:train`` and validating on ``capproxy:val``; the CLI's ``--train-split
            COLLECTION:SPLIT``, as in ``prvr train``).
        init_from: start from this moment checkpoint's weights (fine-tuning: new optimizer and history; the configs
            must agree, :func:`check_moment_init_compatible`); recorded in ``out_dir/init_from.json``. A resumed run
            takes its weights from last.pt instead.
        retrieval_checkpoint: a DreamPRVR checkpoint whose frame tokens condition the denoiser (as at search time);
            None = raw frame features.
        resume: continue from ``out_dir/last.pt`` (same config).
        progress: show tqdm bars.
        max_train_queries: use only the first N training queries (quick runs).
        max_val_queries: evaluate on the first N validation queries only (on capproxy: the 500 selection queries).
        select: at the end, measure every localiser setting (:func:`inference_grid`) with the best weights on
            the validation queries and record the best in best.pt (:func:`select_inference`), so search uses it.
        on_epoch: called with each epoch's record (epoch, losses, val metrics, seconds).

    Returns:
        The :class:`MomentTrainResult`.
    """
    out_dir = Path(out_dir)
    last_path, best_path = out_dir / "last.pt", out_dir / "best.pt"
    resumed: dict[str, Any] | None = None
    if resume:
        resumed = read_moment_checkpoint(last_path)
        config = MomentConfig.from_json(resumed["moment_config"])
    elif config is None:
        config = load_moment_preset(preset)
    if config.train.threads > 0:
        torch.set_num_threads(config.train.threads)
    data_config = config.data
    if retrieval_checkpoint is not None:
        _, retrieval_config, _ = load_model(retrieval_checkpoint)
        data_config = retrieval_config.data
    elif config.condition == "retrieval":
        raise ValueError("this config conditions on retrieval frame tokens (condition='retrieval'); pass the "
                         "DreamPRVR checkpoint with retrieval_checkpoint / --retrieval-checkpoint")
    train_corpus = PRVRCorpus(root, train_collection or collection, train_split, data_config)
    val_corpus = PRVRCorpus(root, collection, val_split, data_config, expected_video_dim=train_corpus.video_dim,
                            expected_text_dim=train_corpus.text_dim)
    train_frames = frame_source(train_corpus, retrieval_checkpoint, progress=progress)
    val_frames = frame_source(val_corpus, retrieval_checkpoint, progress=progress)
    train_data = MomentData(train_corpus, train_frames, max_train_queries)
    val_data = MomentData(val_corpus, val_frames, max_val_queries)
    video_dim = int(train_data.frames_of(train_data.records[0].video_id).shape[1])
    derived = dict(data=data_config, video_dim=video_dim, text_dim=train_corpus.text_dim,
                   condition="retrieval" if retrieval_checkpoint is not None else "frames")
    if resumed is not None:
        mismatched = {k: v for k, v in derived.items() if getattr(config, k) != v}
        if mismatched:
            raise ValueError(f"cannot resume {last_path}: its config differs from this run's data in "
                             f"{sorted(mismatched)}; pass the same data and retrieval checkpoint, or start afresh")
    config = dataclasses.replace(config, **derived)

    torch.manual_seed(config.seed)
    model = MomentDenoiser(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.train.lr, weight_decay=config.train.weight_decay)
    steps_per_epoch = math.ceil(len(train_data) / config.train.batch_size)
    total_steps = config.train.epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_factor(config.train.warmup_fraction, config.train.lr_decay, total_steps))
    diffusion = SpanDiffusion(config)
    matcher = config.matcher
    criterion = SetCriterion(HungarianMatcher(matcher.cost_l1, matcher.cost_giou, matcher.cost_class),
                             config.loss.background_weight)
    history: list[dict[str, Any]] = []
    start_epoch, best_epoch, best_score, best_metrics, stale = 0, 0, -math.inf, {}, 0
    if resumed is not None:
        model.load_state_dict(resumed["model"])
        optimizer.load_state_dict(resumed["optimizer"])
        if "scheduler" in resumed:
            scheduler.load_state_dict(resumed["scheduler"])
        start_epoch = int(resumed["epoch"])
        history = list(resumed.get("history", []))
        best_epoch, best_score = int(resumed["best_epoch"]), float(resumed["best_score"])
        best_metrics, stale = dict(resumed.get("best_metrics", {})), int(resumed.get("stale", 0))
    out_dir.mkdir(parents=True, exist_ok=True)
    if resumed is None and init_from is not None:
        payload = read_moment_checkpoint(init_from)
        check_moment_init_compatible(MomentConfig.from_json(payload["moment_config"]), config, init_from)
        model.load_state_dict(payload["model"])
        record = {"init_from": str(init_from), "sha256": file_sha256(Path(init_from))}
        write_text_atomic(out_dir / "init_from.json", json.dumps(record, indent=2) + "\n")
        logger.info("fine-tuning from the weights of %s", init_from)
    localizer = DiffusionMomentLocalizer(model, config)

    epoch = start_epoch
    for epoch in range(start_epoch, config.train.epochs):
        if stale >= config.train.patience:
            break
        started = time.perf_counter()
        model.train()
        order = np.random.default_rng([config.seed, epoch]).permutation(len(train_data))
        generator = _epoch_generator(config.seed, epoch, 0)
        torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=_epoch_generator(config.seed, epoch, 1))))
        num_proposals = train_step_proposals(config, epoch)
        totals: dict[str, float] = {}
        steps = 0
        batches = range(0, len(order), config.train.batch_size)
        for start in tqdm(batches, desc=f"epoch {epoch + 1}", disable=not progress, leave=False):
            batch = train_data.batch(order[start : start + config.train.batch_size].tolist())
            losses = _losses(model, diffusion, criterion, config, batch, num_proposals, generator)
            loss = weighted_sum(losses, config.loss.weights)
            if not torch.isfinite(loss):
                raise RuntimeError(f"the moment loss became {loss.item()} at epoch {epoch + 1}; lower train.lr "
                                   f"({config.train.lr}) or train.grad_clip ({config.train.grad_clip})")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.train.grad_clip)
            optimizer.step()
            scheduler.step()
            steps += 1
            totals["loss"] = totals.get("loss", 0.0) + float(loss.detach())
            for key, value in losses.items():
                totals[key] = totals.get(key, 0.0) + float(value.detach())
        train_seconds = time.perf_counter() - started
        model.eval()
        metrics = evaluate_moments(localizer, val_data, batch_size=config.train.eval_batch_size,
                                   progress=progress)
        record = {"epoch": epoch + 1, "proposals": num_proposals,
                  "train": {key: value / max(steps, 1) for key, value in totals.items()},
                  "val": metrics, "train_s": round(train_seconds, 2),
                  "eval_s": round(time.perf_counter() - started - train_seconds, 2)}
        history.append(record)
        score = _selection_score(metrics)
        if score > best_score:
            best_score, best_epoch, best_metrics, stale = score, epoch + 1, metrics, 0
            save_moment_checkpoint(best_path, model=model, config=config, epoch=epoch + 1)
        else:
            stale += 1
        save_moment_checkpoint(last_path, model=model, config=config, epoch=epoch + 1, state={
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "history": history,
            "best_epoch": best_epoch,
            "best_score": best_score, "best_metrics": best_metrics, "stale": stale,
            "retrieval_checkpoint": str(retrieval_checkpoint) if retrieval_checkpoint is not None else ""})
        if on_epoch is not None:
            on_epoch(record)
    if not best_path.is_file():
        raise RuntimeError(f"no epoch ran (train.epochs={config.train.epochs}, resumed at {start_epoch}); raise "
                           "train.epochs")
    if select:
        model.load_state_dict(read_moment_checkpoint(best_path)["model"])
        selection = select_inference(DiffusionMomentLocalizer(model, config), val_data,
                                     batch_size=config.train.eval_batch_size, progress=progress)
        record_inference_selection(best_path, selection)
    return MomentTrainResult(best_path, last_path, best_epoch, best_metrics, len(history), history,
                             selection if select else None)


def localizer_split_data(localizer: DiffusionMomentLocalizer, checkpoint: str | Path, root: str | Path,
                         collection: str, split: str, *, retrieval_checkpoint: str | Path | None = None,
                         max_queries: int | None = None) -> MomentData:
    """A split's timestamped queries read the way ``localizer`` reads videos (its data config; the retrieval model's
    frame tokens for a retrieval-conditioned one), with clear errors for what is missing.

    Args:
        localizer: the loaded localiser; checkpoint: its file (named in the errors).
        root, collection, split: the data; the split needs a moments sidecar with timestamps.
        retrieval_checkpoint: the DreamPRVR checkpoint giving the frame tokens of a retrieval-conditioned localiser.
        max_queries: keep the first N queries.
    """
    config = localizer.config
    if config.condition == "retrieval" and retrieval_checkpoint is None:
        raise ValueError(f"{checkpoint} conditions on retrieval frame tokens; give the retrieval checkpoint")
    corpus = PRVRCorpus(root, collection, split, config.data, expected_text_dim=config.text_dim)
    if corpus.moments is None:
        raise ValueError(f"split {split!r} of {collection!r} has no timestamps ({corpus.moments_file} is missing); "
                         "moment metrics need that sidecar: pick a split that has it (prvr eval: or drop "
                         "--moment-checkpoint)")
    source = frame_source(corpus, retrieval_checkpoint if config.condition == "retrieval" else None)
    return MomentData(corpus, source, max_queries)


def evaluate_checkpoint_on_split(moment_checkpoint: str | Path, root: str | Path, collection: str, split: str, *,
                                 retrieval_checkpoint: str | Path | None = None) -> dict[str, Any]:
    """Moment metrics of a saved localiser on one split's ground-truth videos (``prvr eval --moment-checkpoint``).

    Args:
        moment_checkpoint: best.pt / last.pt of `prvr train-moments`.
        root, collection, split: the data; the split needs a moments sidecar with timestamps.
        retrieval_checkpoint: the DreamPRVR checkpoint giving the frame tokens of a retrieval-conditioned localiser.

    Returns:
        ``{"queries": N, "R1@0.3": ..., "mAP": ...}`` in percent.
    """
    from prvr.moments.localizer import load_localizer

    localizer = load_localizer(moment_checkpoint)
    config = localizer.config
    data = localizer_split_data(localizer, moment_checkpoint, root, collection, split,
                                retrieval_checkpoint=retrieval_checkpoint)
    return {"queries": len(data), **evaluate_moments(localizer, data, batch_size=config.train.eval_batch_size)}
