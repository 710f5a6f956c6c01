"""Vector-index layer: FAISS token indexes for candidate videos, a bf16 token store and the exact re-rank."""

from __future__ import annotations

from index.faiss_store import FaissTokenIndex, choose_factory, decode_token_ids, encode_token_ids, nlist_for
from index.protocol import Candidates, VectorIndex
from index.rerank import exact_rerank
from index.search import RankedVideos, search_topk
from index.token_store import TokenStore

__all__ = [
    "Candidates",
    "FaissTokenIndex",
    "RankedVideos",
    "TokenStore",
    "VectorIndex",
    "choose_factory",
    "decode_token_ids",
    "encode_token_ids",
    "exact_rerank",
    "nlist_for",
    "search_topk",
]
