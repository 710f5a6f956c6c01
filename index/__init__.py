"""Vector-index layer (installed as ``prvr.index``): FAISS token indexes for candidate videos, a bf16 token store, the
exact re-rank and the SQL catalog of videos and generations (``catalog``)."""

from __future__ import annotations

from prvr.index.faiss_store import FaissTokenIndex, choose_factory, decode_token_ids, encode_token_ids, nlist_for
from prvr.index.protocol import Candidates, VectorIndex
from prvr.index.rerank import exact_rerank
from prvr.index.search import RankedVideos, search_topk
from prvr.index.token_store import TokenStore

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
