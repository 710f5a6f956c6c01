"""Slow exact references that tests compare the fast paths against (house style habit 9).

Each is a plain loop over the definition (float64 Python / NumPy arithmetic), short enough to check by eye, and
independent of the vectorised library code. Test modules import this as ``reference`` (``tests/`` is put on
``sys.path`` by pytest with ``tests/conftest.py``; see ``helpers.py``).

Shape letters: Nq queries, V videos, C clips, F frames, D token width.
"""

from __future__ import annotations

import numpy as np


def fused_scores(query: np.ndarray, clip: np.ndarray, frame: np.ndarray, mask: np.ndarray, *, clip_weight: float,
                 frame_weight: float) -> np.ndarray:
    """(Nq, V) fused cosine scores by an explicit loop over videos (float64): for each video, ``clip_weight`` x the
    best cosine over its clips + ``frame_weight`` x the best cosine over its valid frames.

    Args:
        query: (Nq, D) query vectors.
        clip: (V, C, D) clip tokens.
        frame: (V, F, D) frame tokens.
        mask: (V, F) bool, the valid frames.
    """

    def unit(x: np.ndarray) -> np.ndarray:
        return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)

    q = unit(query.astype(np.float64))
    out = np.zeros((q.shape[0], clip.shape[0]))
    for v in range(clip.shape[0]):
        clip_best = (unit(clip[v].astype(np.float64)) @ q.T).max(axis=0)  # (Nq,)
        frame_best = (unit(frame[v][mask[v]].astype(np.float64)) @ q.T).max(axis=0)  # (Nq,)
        out[:, v] = clip_weight * clip_best + frame_weight * frame_best
    return out
