"""Probe: does a learned rotation (faiss OPQ) before product quantisation rescue the compressed token store?

On the index benchmark's synthetic corpus (``prvr.benchmarks.index_bench.SyntheticCorpus``), every video's unit
tokens are encoded and decoded with each faiss codec, and recall@10 of the video ranking from the decoded tokens
(``0.5 max clip + 0.5 max frame`` cosines, every video scored) is compared with the ranking from the float tokens;
it also prints the share of token energy in the top ``rank`` principal directions. The numbers are the correction
in docs/bench/token_store.md.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/probe_pq_rotation.py --videos 4000 --queries 200

The PCA rows project on the leading principal directions first (what the store's ``pcaK`` codec does, with per-token
rather than per-dimension 8-bit scales): recall@10 of the decoded tokens alone, without the second tier.
"""

from __future__ import annotations

import argparse
import time

import faiss
import numpy as np

from prvr.benchmarks.index_bench import SyntheticCorpus


def video_scores(queries: np.ndarray, tokens: np.ndarray, owner: np.ndarray, is_frame: np.ndarray,
                 num_videos: int) -> np.ndarray:
    """(Nq, V) fused scores: 0.5 * max clip cosine + 0.5 * max frame cosine per video (rows of a video contiguous)."""
    products = queries @ tokens.T  # (Nq, T)
    total = np.zeros((queries.shape[0], num_videos), dtype=np.float32)
    for kind in (False, True):
        rows = np.flatnonzero(is_frame == kind)
        starts = np.flatnonzero(np.r_[True, owner[rows][1:] != owner[rows][:-1]])
        total[:, owner[rows][starts]] += 0.5 * np.maximum.reduceat(products[:, rows], starts, axis=1)
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos", type=int, default=4000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--codecs", default="PQ32,OPQ32_256,PQ64,OPQ64_256,PCA32+SQ8,PCA64+SQ8",
                        help="faiss factory strings (OPQ<M>_256 = rotation, then PQ<M> below; '+' stands for the "
                             "factory's own comma, e.g. PCA32+SQ8 = PCA to 32 dims, then 8-bit scalar codes).")
    parser.add_argument("--train-tokens", type=int, default=65536)
    args = parser.parse_args()
    faiss.omp_set_num_threads(1)
    chunk = 2000
    corpus = SyntheticCorpus(args.videos, clips=32, frames=32, dim=256, rank=args.rank, seed=0, chunk=chunk)
    tokens, owner, is_frame = [], [], []
    for first in range(0, args.videos, chunk):
        ids, clip, frame, mask = corpus.chunk(first, min(chunk, args.videos - first))
        for i, video in enumerate(ids.tolist()):
            valid = frame[i][mask[i]]
            tokens += [clip[i], valid]
            owner += [video] * (clip.shape[1] + valid.shape[0])
            is_frame += [False] * clip.shape[1] + [True] * valid.shape[0]
    tokens = np.concatenate(tokens).astype(np.float32)
    tokens /= np.linalg.norm(tokens, axis=1, keepdims=True)
    owner, is_frame = np.asarray(owner), np.asarray(is_frame)
    energy = np.linalg.svd(tokens[:20000], full_matrices=False, compute_uv=False) ** 2
    print(f"energy in the top {args.rank} principal directions: {energy[:args.rank].sum() / energy.sum():.4f}")
    queries = corpus.queries(args.queries, seed=2)
    truth = np.argsort(-video_scores(queries, tokens, owner, is_frame, args.videos), axis=1)[:, :10]
    sample = tokens[np.random.default_rng(0).choice(tokens.shape[0], args.train_tokens, replace=False)]
    for factory in args.codecs.split(","):
        spec = factory.replace("+", ",")
        if factory.startswith("OPQ"):
            spec = f"{factory.split('_')[0]},PQ{factory[3:].split('_')[0]}"
        started = time.perf_counter()
        codec = faiss.index_factory(256, spec, faiss.METRIC_INNER_PRODUCT)
        codec.train(sample)
        codes = codec.sa_encode(tokens)
        decoded = codec.sa_decode(codes)
        error = np.linalg.norm(decoded - tokens, axis=1)
        found = np.argsort(-video_scores(queries, decoded, owner, is_frame, args.videos), axis=1)[:, :10]
        recall = np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth)])
        print(f"{spec:<12} {codes.shape[1]:>3} B/token  decode error mean {error.mean():.3f} max {error.max():.3f}  "
              f"recall@10 {recall:.4f}  ({time.perf_counter() - started:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
