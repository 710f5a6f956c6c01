"""Compressed token encodings of the re-rank store: product quantisation (``pqM``) and per-token scalar
quantisation (``sq8`` / ``sq4``), each scored on the fly against unit queries.

Shape letters: T tokens, n queries, D hidden, M sub-quantisers, K centroids per sub-quantiser (256), d_s = D / M.

A codec turns (T, D) float32 unit tokens into (T, code_size) uint8 rows and back. Scores are inner products with the
decoded tokens, so for a unit query ``|score - exact| <= ||t - decode(encode(t))||`` (Cauchy-Schwarz); the store
records the largest such decode error it ever wrote, which bounds every token score it returns and hence every video
score ``w_c max clip + w_f max frame`` by ``(|w_c| + |w_f|) * max_error`` (a max moves by at most the largest change
of its arguments).

* ``pqM`` (Jegou et al., "Product quantization for nearest neighbor search", TPAMI 2011): D split into M sub-vectors,
  each replaced by the id of its nearest of 256 k-means centroids; M bytes per token. Scored with asymmetric distance
  computation: a (n, M, 256) table of query-centroid products, then M look-ups per token. Trained once per index on a
  sample (faiss k-means, fixed seed), the codebook saved beside the shards.
* ``sq8`` / ``sq4``: each coordinate rounded to a signed 8- or 4-bit integer times a per-token float32 scale
  (max |x| / 127 or / 7); D + 4 or D / 2 + 4 bytes per token; no training.
* ``pcaK``: the token projected on the K leading principal directions of a training sample (eigenvectors of the
  uncentred second moment, an orthonormal (K, D) basis B), then ``sq8`` of the K coordinates; K + 4 bytes per token.
  The decode error includes the energy outside the K directions, so the Cauchy-Schwarz bound above still holds.
  Scored by projecting the query once (``B q``, K values) and an integer product per token. Built for token sets of
  low intrinsic rank (the index benchmark's synthetic tokens hold 98.7 % of their energy in 32 directions, which
  product quantisation cuts into blocks: docs/bench/token_store.md); usually paired with a finer re-score tier
  (``index.search.search_topk``'s ``refine``) because the dropped energy is what separates near-ties.
"""

from __future__ import annotations

import io
import re
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import faiss
import numpy as np

__all__ = ["CODEC_NAMES_HELP", "PQ_CENTROIDS", "PrincipalCodec", "ProductQuantizerCodec", "ScalarQuantizerCodec",
           "TokenCodec", "is_codec_name", "make_codec"]

PQ_CENTROIDS = 256  # K: one byte per sub-quantiser code
PQ_TRAIN_ITERATIONS = 25
ADC_MAX_QUERIES = 8  # above this many queries, decode once and multiply (a GEMM beats n table look-ups per token)
ROWS_PER_STEP = 16384  # tokens decoded at once (16k x 512 x 4 B = 32 MB)
CODEC_NAMES_HELP = ("bfloat16, float32, sq8, sq4, pqM (M sub-quantisers dividing D, e.g. pq32) or pcaK (K <= D "
                    "principal directions, e.g. pca32)")
_PQ_NAME = re.compile(r"pq([1-9][0-9]*)")
_PCA_NAME = re.compile(r"pca([1-9][0-9]*)")


def is_codec_name(name: str) -> bool:
    """True for the compressed encodings (``pqM``, ``pcaK``, ``sq8``, ``sq4``), False for anything else."""
    return name in ("sq8", "sq4") or _PQ_NAME.fullmatch(name) is not None or _PCA_NAME.fullmatch(name) is not None


def make_codec(name: str, dim: int, *, seed: int = 0) -> TokenCodec:
    """A fresh (untrained where training applies) codec from its name.

    Args:
        name: ``"sq8"``, ``"sq4"``, ``"pqM"`` or ``"pcaK"``.
        dim: D.
        seed: k-means seed of a trainable codec.

    Raises:
        ValueError: on an unknown name or one that does not fit D, naming the fix.
    """
    if name in ("sq8", "sq4"):
        if name == "sq4" and dim % 2:
            raise ValueError(f"sq4 packs two coordinates per byte and needs an even D, got D = {dim}; use sq8")
        return ScalarQuantizerCodec(dim, bits=8 if name == "sq8" else 4)
    match = _PCA_NAME.fullmatch(name)
    if match is not None:
        if int(match.group(1)) > dim:
            raise ValueError(f"{name} keeps {match.group(1)} principal directions of D = {dim}; use pcaK with K <= "
                             f"{dim} (e.g. pca{min(32, dim)})")
        return PrincipalCodec(dim, int(match.group(1)))
    match = _PQ_NAME.fullmatch(name)
    if match is None:
        raise ValueError(f"unknown token store encoding {name!r}; use {CODEC_NAMES_HELP}")
    subquantizers = int(match.group(1))
    if dim % subquantizers:
        divisors = [m for m in (8, 16, 32, 64, 128) if dim % m == 0 and m <= dim]
        raise ValueError(f"{name} splits D = {dim} into {subquantizers} equal parts, which does not divide it; use "
                         f"pqM with M dividing {dim} (e.g. {', '.join(f'pq{m}' for m in divisors) or 'sq8'})")
    return ProductQuantizerCodec(dim, subquantizers, seed=seed)


class TokenCodec(ABC):
    """One token encoding: (T, D) float32 <-> (T, code_size) uint8, and scores of unit queries against codes."""

    name: str
    dim: int

    @property
    @abstractmethod
    def code_size(self) -> int:
        """Bytes per token."""

    @property
    def needs_training(self) -> bool:
        """True while the codec must still be trained (:meth:`train`) before it can encode."""
        return False

    def train(self, tokens: np.ndarray) -> None:
        """Fit the codec on (T, D) float32 sample tokens (a no-op for codecs without parameters)."""

    @abstractmethod
    def encode(self, tokens: np.ndarray) -> np.ndarray:
        """(T, D) float32 -> (T, code_size) uint8."""

    @abstractmethod
    def decode(self, codes: np.ndarray) -> np.ndarray:
        """(T, code_size) uint8 -> (T, D) float32."""

    def score(self, query: np.ndarray, codes: np.ndarray) -> np.ndarray:
        """(T, n) float32 products of the decoded tokens with the (n, D) float32 queries."""
        out = np.empty((codes.shape[0], query.shape[0]), dtype=np.float32)
        for first in range(0, codes.shape[0], ROWS_PER_STEP):
            out[first : first + ROWS_PER_STEP] = self.decode(codes[first : first + ROWS_PER_STEP]) @ query.T
        return out

    def params(self) -> dict[str, Any]:
        """JSON-serialisable parameters (recorded in the store meta and the index manifest)."""
        return {"name": self.name, "dim": self.dim, "code_size": self.code_size}

    def state_bytes(self) -> bytes | None:
        """The trained parameters as ``.npy`` bytes (deterministic), or None when the codec has none."""
        return None

    def load_state(self, path: Path) -> None:
        """Read the parameters written from :meth:`state_bytes`."""


class ScalarQuantizerCodec(TokenCodec):
    """Per-token symmetric scalar quantisation: ``x ~ scale * round(x / scale)``, ``scale = max|x| / (2^(b-1) - 1)``.

    Row layout: the signed integers (D bytes for 8 bits; D / 2 for 4 bits, low nibble first, offset by 8), then the
    float32 scale as 4 little-endian bytes.
    """

    def __init__(self, dim: int, *, bits: int) -> None:
        if bits not in (4, 8):
            raise ValueError(f"scalar quantisation supports 4 or 8 bits, got {bits}")
        self.dim = int(dim)
        self.bits = bits
        self.name = f"sq{bits}"
        self.levels = (1 << (bits - 1)) - 1  # 127 or 7

    @property
    def code_size(self) -> int:
        return (self.dim if self.bits == 8 else self.dim // 2) + 4

    def encode(self, tokens: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(tokens, dtype=np.float32)  # (T, D)
        scale = (np.abs(x).max(axis=1) / self.levels).astype(np.float32)  # (T,)
        safe = np.where(scale > 0, scale, 1.0).astype(np.float32)
        values = np.clip(np.rint(x / safe[:, None]), -self.levels, self.levels).astype(np.int8)  # (T, D)
        if self.bits == 8:
            body = values.view(np.uint8)
        else:
            shifted = (values + 8).astype(np.uint8)  # in [1, 15]
            body = shifted[:, 0::2] | (shifted[:, 1::2] << 4)  # (T, D / 2)
        return np.concatenate([body, scale[:, None].view(np.uint8)], axis=1)  # (T, code_size)

    def _values(self, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(T, D) float32 integers and (T,) float32 scales of stored rows."""
        body = codes[:, :-4]
        scale = np.ascontiguousarray(codes[:, -4:]).view(np.float32)[:, 0]  # (T,)
        if self.bits == 8:
            values = body.view(np.int8).astype(np.float32)
        else:
            values = np.empty((codes.shape[0], self.dim), dtype=np.float32)
            values[:, 0::2] = (body & 0x0F).astype(np.float32) - 8
            values[:, 1::2] = (body >> 4).astype(np.float32) - 8
        return values, scale

    def decode(self, codes: np.ndarray) -> np.ndarray:
        values, scale = self._values(codes)
        return values * scale[:, None]

    def score(self, query: np.ndarray, codes: np.ndarray) -> np.ndarray:
        out = np.empty((codes.shape[0], query.shape[0]), dtype=np.float32)
        for first in range(0, codes.shape[0], ROWS_PER_STEP):
            values, scale = self._values(codes[first : first + ROWS_PER_STEP])
            out[first : first + ROWS_PER_STEP] = (values @ query.T) * scale[:, None]  # (t, n)
        return out

    def params(self) -> dict[str, Any]:
        return {**super().params(), "bits": self.bits}


class ProductQuantizerCodec(TokenCodec):
    """Product quantisation with M sub-quantisers of 256 centroids (M bytes per token), faiss k-means training."""

    def __init__(self, dim: int, subquantizers: int, *, seed: int = 0) -> None:
        if subquantizers < 1 or dim % subquantizers:
            raise ValueError(f"pq{subquantizers} needs M dividing D = {dim}")
        self.dim = int(dim)
        self.subquantizers = int(subquantizers)
        self.seed = int(seed)
        self.name = f"pq{subquantizers}"
        self.centroids: np.ndarray | None = None  # (M, K, d_s) float32

    @property
    def code_size(self) -> int:
        return self.subquantizers

    @property
    def needs_training(self) -> bool:
        return self.centroids is None

    def _quantizer(self) -> faiss.ProductQuantizer:
        pq = faiss.ProductQuantizer(self.dim, self.subquantizers, 8)
        if self.centroids is not None:
            faiss.copy_array_to_vector(self.centroids.reshape(-1), pq.centroids)
        return pq

    def train(self, tokens: np.ndarray) -> None:
        """k-means (faiss, seed ``self.seed``, 25 iterations) of each sub-space on the sample.

        Raises:
            ValueError: with fewer than 256 sample tokens (one per centroid).
        """
        x = np.ascontiguousarray(tokens, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"training tokens must be (T, D = {self.dim}), got {x.shape}")
        if x.shape[0] < PQ_CENTROIDS:
            raise ValueError(f"{self.name} training needs at least {PQ_CENTROIDS} tokens (one per centroid), got "
                             f"{x.shape[0]}; index more videos at once or use --token-dtype bfloat16 / sq8")
        pq = faiss.ProductQuantizer(self.dim, self.subquantizers, 8)
        pq.cp.seed = self.seed
        pq.cp.niter = PQ_TRAIN_ITERATIONS
        pq.verbose = False
        pq.train(x)
        dsub = self.dim // self.subquantizers
        self.centroids = faiss.vector_to_array(pq.centroids).reshape(self.subquantizers, PQ_CENTROIDS, dsub).copy()
        self._pq = self._quantizer()

    def _trained(self) -> faiss.ProductQuantizer:
        if self.centroids is None:
            raise RuntimeError(f"the {self.name} codec is not trained: call train() (the builder trains it on a "
                               "sample)")
        if getattr(self, "_pq", None) is None:
            self._pq = self._quantizer()
        return self._pq

    def encode(self, tokens: np.ndarray) -> np.ndarray:
        pq = self._trained()
        return pq.compute_codes(np.ascontiguousarray(tokens, dtype=np.float32))  # (T, M)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        pq = self._trained()
        return pq.decode(np.ascontiguousarray(codes, dtype=np.uint8))  # (T, D)

    def score(self, query: np.ndarray, codes: np.ndarray) -> np.ndarray:
        """Asymmetric distance computation for a few queries; decode + GEMM for many."""
        self._trained()
        assert self.centroids is not None
        if query.shape[0] > ADC_MAX_QUERIES:
            return super().score(query, codes)
        num_queries, m, dsub = query.shape[0], self.subquantizers, self.dim // self.subquantizers
        parts = query.reshape(num_queries, m, dsub)  # (n, M, d_s)
        table = np.einsum("nmd,mkd->mkn", parts, self.centroids).reshape(m * PQ_CENTROIDS, num_queries)  # (M*K, n)
        offsets = (np.arange(m, dtype=np.intp) * PQ_CENTROIDS)[None, :]  # (1, M)
        out = np.empty((codes.shape[0], num_queries), dtype=np.float32)
        for first in range(0, codes.shape[0], ROWS_PER_STEP):
            rows = codes[first : first + ROWS_PER_STEP].astype(np.intp) + offsets  # (t, M)
            out[first : first + ROWS_PER_STEP] = table[rows].sum(axis=1)  # (t, M, n) -> (t, n)
        return out

    def params(self) -> dict[str, Any]:
        return {**super().params(), "subquantizers": self.subquantizers, "centroids": PQ_CENTROIDS,
                "seed": self.seed, "train_iterations": PQ_TRAIN_ITERATIONS}

    def state_bytes(self) -> bytes | None:
        if self.centroids is None:
            return None
        buffer = io.BytesIO()
        np.save(buffer, self.centroids, allow_pickle=False)  # .npy: no zip timestamps, byte-identical across builds
        return buffer.getvalue()

    def load_state(self, path: Path) -> None:
        centroids = np.load(path, allow_pickle=False)
        dsub = self.dim // self.subquantizers
        if centroids.shape != (self.subquantizers, PQ_CENTROIDS, dsub) or centroids.dtype != np.float32:
            raise ValueError(f"{path} holds a {centroids.dtype} {centroids.shape} codebook, {self.name} at D = "
                             f"{self.dim} needs float32 {(self.subquantizers, PQ_CENTROIDS, dsub)}; rebuild the store")
        self.centroids = centroids
        self._pq = self._quantizer()


class PrincipalCodec(TokenCodec):
    """K leading principal directions, then per-token ``sq8`` of the K coordinates (K + 4 bytes per token).

    Row layout: K signed bytes, then the float32 scale (max |coordinate| / 127) as 4 little-endian bytes. The basis
    is deterministic: eigenvectors of ``X^T X / T`` in float64 (numpy ``eigh``), by decreasing eigenvalue, each
    signed so that its largest-magnitude coordinate is positive.
    """

    def __init__(self, dim: int, components: int) -> None:
        if not 1 <= components <= dim:
            raise ValueError(f"pca{components} needs 1 <= K <= D = {dim}")
        self.dim = int(dim)
        self.components = int(components)
        self.name = f"pca{components}"
        self.basis: np.ndarray | None = None  # (K, D) float32, orthonormal rows
        self.explained: float | None = None  # share of the sample's energy inside the K directions
        self._inner = ScalarQuantizerCodec(self.components, bits=8)

    @property
    def code_size(self) -> int:
        return self.components + 4

    @property
    def needs_training(self) -> bool:
        return self.basis is None

    def train(self, tokens: np.ndarray) -> None:
        """The K leading eigenvectors of the sample's second moment.

        Raises:
            ValueError: with fewer sample tokens than K (the directions would not be determined).
        """
        x = np.ascontiguousarray(tokens, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"training tokens must be (T, D = {self.dim}), got {x.shape}")
        if x.shape[0] < self.components:
            raise ValueError(f"{self.name} training needs at least K = {self.components} tokens, got {x.shape[0]}; "
                             "index more videos at once or use --token-dtype bfloat16 / sq8")
        moment = np.zeros((self.dim, self.dim), dtype=np.float64)
        for first in range(0, x.shape[0], ROWS_PER_STEP):
            block = x[first : first + ROWS_PER_STEP].astype(np.float64)
            moment += block.T @ block
        values, vectors = np.linalg.eigh(moment / x.shape[0])  # ascending
        order = np.argsort(-values, kind="stable")[: self.components]
        basis = vectors[:, order].T  # (K, D)
        pivot = np.abs(basis).argmax(axis=1)
        basis *= np.sign(basis[np.arange(self.components), pivot])[:, None]
        self.basis = np.ascontiguousarray(basis, dtype=np.float32)
        total = float(values.clip(min=0).sum())
        self.explained = float(values[order].clip(min=0).sum() / total) if total > 0 else 1.0

    def _trained(self) -> np.ndarray:
        if self.basis is None:
            raise RuntimeError(f"the {self.name} codec is not trained: call train() (the builder trains it on a "
                               "sample)")
        return self.basis

    def encode(self, tokens: np.ndarray) -> np.ndarray:
        basis = self._trained()
        return self._inner.encode(np.ascontiguousarray(tokens, dtype=np.float32) @ basis.T)  # (T, K + 4)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        return self._inner.decode(codes) @ self._trained()  # (T, D)

    def score(self, query: np.ndarray, codes: np.ndarray) -> np.ndarray:
        """Products in the K-dimensional space: ``<B^T c, q> = <c, B q>``."""
        projected = np.ascontiguousarray(np.asarray(query, dtype=np.float32) @ self._trained().T)  # (n, K)
        return self._inner.score(projected, codes)

    def params(self) -> dict[str, Any]:
        return {**super().params(), "components": self.components}

    def state_bytes(self) -> bytes | None:
        if self.basis is None:
            return None
        buffer = io.BytesIO()
        np.save(buffer, self.basis, allow_pickle=False)
        return buffer.getvalue()

    def load_state(self, path: Path) -> None:
        basis = np.load(path, allow_pickle=False)
        if basis.shape != (self.components, self.dim) or basis.dtype != np.float32:
            raise ValueError(f"{path} holds a {basis.dtype} {basis.shape} basis, {self.name} at D = {self.dim} needs "
                             f"float32 {(self.components, self.dim)}; rebuild the store")
        self.basis = basis
