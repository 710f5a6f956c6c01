"""Plain helpers shared by test modules (not fixtures, not tests): tiny model writers, synthetic tokens, fake
moment localisers, a live server in a thread.

Test modules import this as ``helpers`` (``tests/`` has no ``__init__.py``, so pytest puts it on ``sys.path``
when it loads ``tests/conftest.py``; that holds for ``python -m pytest`` from the repository root and for
``pytest tests/test_x.py``). The session fixtures built from these live in ``tests/conftest.py``.

Shape letters: V videos, C clips, F frames, D token width, Nq queries.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from prvr.types import Localization, Moment

# ------------------------------------------------------------------------------------------------ the synthetic index

TEXT_DIM = 48  # text feature width of the synthetic corpus, so the hidden size of the query BERT too
HIDDEN = 64  # the tiny preset's hidden size
# vocabulary of the query BERT (after the five special tokens): enough for the test queries
WORDS = ["a", "the", "dog", "kicks", "ball", "man", "runs", "cat", "jumps", "over", "fence", "##s", "plays"]
TINY_OVERRIDES = ["data.video_feature=synth", "data.text_feature=synth", "model.block.widths=[null]",
                  "model.registers.diffusion.steps=2"]


def tiny_experiment_config() -> Any:
    """The tiny preset with one branch and 2 register diffusion steps (size it with prvr.engine.config_for_corpus)."""
    from prvr.config import apply_overrides, load_preset

    return apply_overrides(load_preset("tiny"), TINY_OVERRIDES)


def save_untrained_checkpoint(path: Path, video_dim: int, text_dim: int) -> Any:
    """Save an untrained two-branch tiny DreamPRVR (torch seed 0) for ``video_dim`` / ``text_dim`` features at
    ``path`` (for tests that index features without captions to size a config from); returns its config."""
    import torch

    from prvr.checkpoint import save_checkpoint
    from prvr.config import apply_overrides, load_preset
    from prvr.model import DreamPRVR

    config = apply_overrides(load_preset("tiny"), ["model.block.widths=[null, 2.0]",
                                                   "model.registers.diffusion.steps=2"])
    config = dataclasses.replace(config, model=dataclasses.replace(config.model, video_dim=video_dim,
                                                                   text_dim=text_dim))
    torch.manual_seed(0)
    save_checkpoint(path, model=DreamPRVR(config.model, seed=0), config=config, epoch=0)
    return config


# ------------------------------------------------------------------------------------------------ tiny backbones

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
# vocabulary of the 16-d backbone BERT (after the five special tokens)
BACKBONE_WORDS = ["a", "man", "woman", "dog", "walks", "runs", "on", "the", "beach", "street", "is", "playing",
                  "guitar", "##s", "##ing"]


def clip_processor_config(side: int) -> dict:
    """What CLIPImageProcessor.save_pretrained writes for a model of image size ``side``."""
    return {"image_processor_type": "CLIPImageProcessor", "do_resize": True, "size": {"shortest_edge": side},
            "resample": 3, "do_center_crop": True, "crop_size": {"height": side, "width": side},
            "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": CLIP_MEAN,
            "image_std": CLIP_STD, "do_convert_rgb": True}


def save_tiny_clip(folder: Path, *, seed: int = 0, projection_dim: int = 12, processor: bool = True) -> Path:
    """A random CLIPModel with tiny sizes (32-px images, 12-d projection), saved with save_pretrained (+ its image
    processor config)."""
    from transformers import CLIPConfig, CLIPModel

    config = CLIPConfig(
        text_config={"vocab_size": 64, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "max_position_embeddings": 16, "bos_token_id": 0,
                     "eos_token_id": 1, "pad_token_id": 1},
        vision_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                       "num_attention_heads": 2, "image_size": 32, "patch_size": 8},
        projection_dim=projection_dim,
    )
    torch.manual_seed(seed)
    CLIPModel(config).save_pretrained(folder)
    if processor:
        (folder / "preprocessor_config.json").write_text(json.dumps(clip_processor_config(32)), encoding="utf-8")
    return folder


def save_tiny_bert(folder: Path, *, words: Sequence[str] = BACKBONE_WORDS, hidden_size: int = 16,
                   num_attention_heads: int = 2, intermediate_size: int = 32, seed: int = 0) -> Path:
    """A random one-layer BERT with a WordPiece vocabulary ``[PAD] [UNK] [CLS] [SEP] [MASK] *words`` written here,
    loadable with AutoModel / AutoTokenizer (so by :class:`prvr.text_encoders.TokenFeatureEncoder`)."""
    from transformers import BertConfig, BertModel

    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "BertTokenizer", "do_lower_case": True, "model_max_length": 64}),
        encoding="utf-8")
    config = BertConfig(vocab_size=len(vocab), hidden_size=hidden_size, num_hidden_layers=1,
                        num_attention_heads=num_attention_heads, intermediate_size=intermediate_size,
                        max_position_embeddings=64)
    torch.manual_seed(seed)
    BertModel(config).save_pretrained(folder)
    return folder


def save_query_bert(folder: Path) -> Path:
    """The query text encoder of the synthetic index: a tiny BERT over :data:`WORDS` of width :data:`TEXT_DIM`."""
    return save_tiny_bert(folder, words=WORDS, hidden_size=TEXT_DIM, num_attention_heads=4, intermediate_size=64)


# ------------------------------------------------------------------------------------------------ synthetic tokens

TOKEN_DIM = 32  # width of the synthetic FAISS tokens
W_CLIP, W_FRAME = 0.6, 0.4  # the fused score's weights in the FAISS tests


def synthetic_tokens(seed: int, num_videos: int, num_clips: int = 8, num_frames: int = 16, dim: int = TOKEN_DIM,
                     rank: int = 8) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Structured tokens: low intrinsic dimension, the tokens of one video correlated around the video's centre.

    Returns clip (V, C, D) float32, frame (V, F, D) float32 (zero where masked) and mask (V, F) bool; video 0 has
    every frame.
    """
    rng = np.random.default_rng(seed)
    basis = rng.standard_normal((rank, dim))  # (r, D)
    centre = rng.standard_normal((num_videos, 1, rank))  # (V, 1, r)
    clip = (centre + 0.6 * rng.standard_normal((num_videos, num_clips, rank))) @ basis  # (V, C, D)
    frame = (centre + 0.8 * rng.standard_normal((num_videos, num_frames, rank))) @ basis  # (V, F, D)
    clip += 0.1 * rng.standard_normal(clip.shape)
    frame += 0.1 * rng.standard_normal(frame.shape)
    lengths = rng.integers(1, num_frames + 1, num_videos)
    lengths[0] = num_frames
    mask = np.arange(num_frames)[None, :] < lengths[:, None]  # (V, F)
    frame[~mask] = 0.0
    return clip.astype(np.float32), frame.astype(np.float32), mask


def noisy_queries(seed: int, clip: np.ndarray, count: int) -> np.ndarray:
    """(count, D) noisy copies of random clip tokens (partially relevant queries)."""
    rng = np.random.default_rng(seed)
    videos = rng.integers(0, clip.shape[0], count)
    tokens = rng.integers(0, clip.shape[1], count)
    q = clip[videos, tokens] + 0.5 * rng.standard_normal((count, clip.shape[2])) * clip.std()
    return q.astype(np.float32)


# ------------------------------------------------------------------------------------------------ fake localisers

LOCALIZER_MODULE_NAME = "cosine_span_localizer"


class CosineSpanLocalizer:
    """A real, simple moment localiser for tests: cosine of each frame with the projected mean query token,
    moments = the best disjoint contiguous spans of above-average relevance (by enumerating every span)."""

    def __init__(self, text_dim: int, dim: int, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.projection = (rng.standard_normal((text_dim, dim)) / np.sqrt(text_dim)).astype(np.float32)  # (L_D, D)
        self.calls = 0

    def localize(self, query_tokens: np.ndarray, frame_tokens: np.ndarray, duration: float, *,
                 num_moments: int = 5) -> Localization:
        assert query_tokens.dtype == np.float32 and frame_tokens.dtype == np.float32
        self.calls += 1
        q = query_tokens.mean(axis=0) @ self.projection  # (D,)
        q = q / max(float(np.linalg.norm(q)), 1e-12)
        frames = frame_tokens / np.maximum(np.linalg.norm(frame_tokens, axis=1, keepdims=True), 1e-12)  # (F, D)
        relevance = (frames @ q).astype(np.float32)  # (F,)
        centred = relevance - relevance.mean()
        spans = []
        for start in range(len(relevance)):
            total = 0.0
            for end in range(start, len(relevance)):
                total += float(centred[end])
                spans.append((total, start, end))
        spans.sort(key=lambda span: (-span[0], span[1], span[2]))
        chosen: list[tuple[float, int, int]] = []
        for total, start, end in spans:
            if all(end < s or start > e for _, s, e in chosen):
                chosen.append((total, start, end))
            if len(chosen) == num_moments:
                break
        step = duration / len(relevance)
        moments = tuple(Moment(start * step, min(duration, (end + 1) * step), float(1 / (1 + np.exp(-total))))
                        for total, start, end in chosen)
        return Localization(moments, relevance)

    def localize_many(self, query_tokens, videos, durations, *, num_moments=5):
        return [self.localize(query_tokens, video, duration, num_moments=num_moments)
                for video, duration in zip(videos, durations)]


def load_localizer(path: str | Path) -> CosineSpanLocalizer:
    """The plugin entry point: a JSON moment checkpoint ``{"text_dim", "dim", "seed"}`` -> a localiser."""
    with open(path, encoding="utf-8") as handle:
        config = json.load(handle)
    return CosineSpanLocalizer(config["text_dim"], config["dim"], config["seed"])


# The source of the importable localiser plugin module (tests patch prvr.moments.localizer.load_localizer with
# its loader): it re-exports the two names above, so a test can monkeypatch the plugin module without touching this one.
LOCALIZER_SOURCE = '''"""Moment localiser plugin for tests (see tests/helpers.py)."""
from helpers import CosineSpanLocalizer, load_localizer  # noqa: F401
'''


def write_moment_checkpoint(path: Path, *, seed: int = 0) -> Path:
    """A JSON moment checkpoint for :func:`load_localizer` sized for the synthetic index."""
    path.write_text(json.dumps({"text_dim": TEXT_DIM, "dim": HIDDEN, "seed": seed}))
    return path


class PeakLocalizer:
    """A deterministic :class:`prvr.types.MomentLocalizer` for tests: relevance from the frame tokens, and one moment
    around each of the two highest frames."""

    def localize(self, query_tokens: np.ndarray, frame_tokens: np.ndarray, duration: float, *,
                 num_moments: int = 5) -> Localization:
        text = query_tokens.mean(axis=0)[: frame_tokens.shape[1]]  # (D',)
        logits = frame_tokens[:, : text.shape[0]] @ text  # (F,)
        relevance = 1.0 / (1.0 + np.exp(-logits))
        n_frames = frame_tokens.shape[0]
        moments = []
        for frame in np.argsort(-relevance, kind="stable")[: min(2, num_moments)]:
            start = max(0, int(frame) - 2) / n_frames * duration
            end = min(n_frames, int(frame) + 3) / n_frames * duration
            moments.append(Moment(start, end, float(relevance[frame])))
        return Localization(tuple(moments), relevance.astype(np.float32))

    def localize_many(self, query_tokens, videos, durations, *, num_moments=5):
        return [self.localize(query_tokens, video, duration, num_moments=num_moments)
                for video, duration in zip(videos, durations)]


def load_with_localizer(index_dir: Path):
    """``Retriever.load`` with a :class:`PeakLocalizer` attached (the service's loader in tests)."""
    from prvr.retriever import Retriever

    return Retriever.load(index_dir, localizer=PeakLocalizer())


# ------------------------------------------------------------------------------------------------ a live server

MEDIA_BYTES = bytes(range(256)) * 40  # 10240 bytes standing in for a video file (the service index's media)


@contextlib.contextmanager
def serve_in_thread(app) -> Iterator[str]:
    """Run ``app`` with uvicorn on a free loopback port in a thread; yields its base URL."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started and thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert server.started, "the server did not start"
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
    assert not thread.is_alive(), "the server did not stop"
