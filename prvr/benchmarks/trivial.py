"""ANet-CapProxy's "trivial trained reference", reproduced inside the project's data and evaluation pipeline.

Two linear maps (one per side) on the features, attention-pooled query tokens, the DreamPRVR score
``0.6 max-clip + 0.4 max-frame cosine`` and a two-way multi-positive InfoNCE over that score with a temperature.
It is a yardstick, not a product: it measures, in the same loader and metrics as the trained DreamPRVR rows, what a
model with no video context at all reaches on the same features. The benchmark's authors measured their version
with outside tools (SumR 181.9 after 12 epochs); this one, whose exact recipe differs, reaches about 177.7
(docs/BENCHMARKS.md).
Metrics are written when the run ends: a killed run starts again from scratch (it takes about a minute).

Shape letters: B videos, C clip tokens, F frame tokens, Nq queries, L text tokens, D_in input, D hidden.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from prvr.config import DataConfig, TrainConfig
from prvr.checkpoint import atomic_torch_save
from prvr.data.dataset import JointCorpus, PRVRCorpus, make_train_loader
from prvr.data.subsets import find_query_subsets
from prvr.engine import evaluate
from prvr.fileio import write_json_atomic, write_text_atomic
from prvr.losses import infonce_loss
from prvr.similarity import video_scores
from prvr.types import QueryBatch, VideoBatch, VideoTokens

__all__ = ["TrivialConfig", "TrivialPRVR", "train_trivial", "load_trivial_weights"]


@dataclass(frozen=True)
class TrivialConfig:
    hidden_size: int = 256
    temperature: float = 0.05
    lr: float = 1e-3
    weight_decay: float = 0.01
    batch_videos: int = 64
    epochs: int = 12
    seed: int = 0
    clip_weight: float = 0.6
    frame_weight: float = 0.4


class TrivialPRVR(nn.Module):
    """Linear video map, attention-pooled linear query map; the same encode/score interface as DreamPRVR."""

    def __init__(self, video_dim: int, text_dim: int, config: TrivialConfig) -> None:
        super().__init__()
        self.config = config
        self.video_map = nn.Linear(video_dim, config.hidden_size)
        self.query_map = nn.Linear(text_dim, config.hidden_size)
        self.query_attention = nn.Linear(text_dim, 1)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def video_tokens(self, videos: VideoBatch) -> VideoTokens:
        return VideoTokens(self.video_map(videos.clip_feats), self.video_map(videos.frame_feats), videos.frame_mask)

    def query_vectors(self, queries: QueryBatch) -> Tensor:
        logits = self.query_attention(queries.tokens).squeeze(-1)  # (Nq, L)
        weights = logits.masked_fill(~queries.mask, float("-inf")).softmax(dim=-1)  # (Nq, L)
        pooled = torch.einsum("nl,nld->nd", weights, queries.tokens)  # (Nq, D_in)
        return self.query_map(pooled)  # (Nq, D)

    @torch.no_grad()
    def encode_videos(self, videos: VideoBatch) -> VideoTokens:
        return self.video_tokens(videos.to(self.device))

    @torch.no_grad()
    def encode_queries(self, queries: QueryBatch) -> Tensor:
        return self.query_vectors(queries.to(self.device))

    def score(self, queries: Tensor, tokens: VideoTokens) -> dict[str, Tensor]:
        return video_scores(queries, tokens, self.config.clip_weight, self.config.frame_weight)


def _checkpoint_payload(model: TrivialPRVR, video_dim: int, text_dim: int) -> dict:
    return {"trivial": asdict(model.config), "video_dim": video_dim, "text_dim": text_dim,
            "model": model.state_dict()}


def load_trivial_weights(model: TrivialPRVR, video_dim: int, text_dim: int, path: str | Path) -> None:
    """Fine-tuning: load the weights of a trivial run's ``best.pt`` / ``last.pt`` (its shapes must fit).

    Raises:
        ValueError: the file is not a trivial checkpoint, or its hidden size, input dims or score weights differ
            (every differing field named with both values).
    """
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or "trivial" not in payload:
        raise ValueError(f"--init-from {path}: not a checkpoint of the trivial reference (no 'trivial' config)")
    mine = {**asdict(model.config), "video_dim": video_dim, "text_dim": text_dim}
    saved = {**payload["trivial"], "video_dim": payload["video_dim"], "text_dim": payload["text_dim"]}
    fields = ("hidden_size", "video_dim", "text_dim", "clip_weight", "frame_weight")
    differing = [f"{k}: {saved.get(k)!r} in the checkpoint, {mine[k]!r} in this run" for k in fields
                 if saved.get(k) != mine[k]]
    if differing:
        raise ValueError(f"--init-from {path}: the checkpoint does not fit this run: {'; '.join(differing)}")
    model.load_state_dict(payload["model"])


def train_trivial(
    root: str | Path, collection: str, data: DataConfig, out_dir: str | Path, config: TrivialConfig,
    *, train_split: str = "train", val_split: str = "val", train_parts: Sequence[tuple[str, str]] = (),
    init_from: str | Path | None = None,
) -> list[dict]:
    """Train for ``config.epochs`` epochs, evaluating on ``val_split`` after each; writes ``metrics.jsonl``.

    The records have the layout of ``prvr train``'s (``epoch``, ``train.seconds``, ``val``, ``wall_seconds``), so the
    capproxy grid script tabulates and plots them beside the DreamPRVR rows. A finished run is not trained again.
    ``train_parts`` ((collection, split) pairs) replaces ``collection``/``train_split`` as the training data: two or
    more are trained jointly (:class:`prvr.data.dataset.JointCorpus`). ``init_from`` starts from the weights of an
    earlier run's ``best.pt`` (fine-tuning, new optimizer). The weights of the best and the last epoch are saved
    as ``best.pt`` / ``last.pt``; query subsets of the validation split are scored beside it.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    metrics_path = out / "metrics.jsonl"
    if metrics_path.is_file():
        history = [json.loads(line) for line in metrics_path.read_text(encoding="utf-8").splitlines() if line]
        if len(history) >= config.epochs:
            return history
    torch.manual_seed(config.seed)
    parts = [PRVRCorpus(root, owner, split, data) for owner, split in (train_parts or [(collection, train_split)])]
    train_corpus: PRVRCorpus | JointCorpus = parts[0] if len(parts) == 1 else JointCorpus(parts)
    val_corpus = PRVRCorpus(root, collection, val_split, data)
    subsets = find_query_subsets(root, collection, val_split) or None
    model = TrivialPRVR(train_corpus.video_dim, train_corpus.text_dim, config)
    if init_from is not None:
        load_trivial_weights(model, train_corpus.video_dim, train_corpus.text_dim, init_from)
    best_sumr = float("-inf")
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    eval_config = TrainConfig(batch_videos=config.batch_videos)
    history: list[dict] = []
    start = time.perf_counter()
    for epoch in range(config.epochs):
        model.train()
        epoch_start = time.perf_counter()
        for videos, queries in make_train_loader(train_corpus, config.batch_videos, seed=config.seed, epoch=epoch):
            assert queries.video_index is not None
            scores = model.score(model.query_vectors(queries), model.video_tokens(videos))["total"]  # (Nq, B)
            loss = infonce_loss(scores / config.temperature, queries.video_index)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        train_seconds = time.perf_counter() - epoch_start
        val = evaluate(model, val_corpus, eval_config, subsets=subsets)  # type: ignore[arg-type]
        history.append({"epoch": epoch + 1, "train": {"seconds": train_seconds}, "val": val,
                        "wall_seconds": time.perf_counter() - start})
        payload = _checkpoint_payload(model, train_corpus.video_dim, train_corpus.text_dim)
        if val["SumR"] > best_sumr:
            best_sumr = val["SumR"]
            atomic_torch_save(payload, out / "best.pt")
        atomic_torch_save(payload, out / "last.pt")
    write_text_atomic(metrics_path, "".join(json.dumps(record) + "\n" for record in history))
    write_json_atomic(out / "config.json", {"trivial": asdict(config), "data": asdict(data),
                                            "train": [f"{p.collection}:{p.split}" for p in parts],
                                            "init_from": str(init_from) if init_from else None}, sort_keys=False)
    return history
