"""Check that ``Retriever.search`` over every query of a split reproduces ``prvr eval``'s R@K (same model, exact index).

Builds an exact (``IDMap2,Flat``) index of the split's videos with ``prvr build-index``'s builder (a float32 token
store by default: bfloat16 rounding, the default for serving, can swap near-tied videos, measured 1-2 of 3,533
capproxy queries), ranks every query of the split through ``Retriever.search_features`` (candidate search widened
until the top-100 is provably exact, then the exact re-rank from the token store), computes R@1/5/10/100 from the rank
of each query's video, runs ``prvr eval`` on the same checkpoint (the copy stored inside the index) in a subprocess
and compares. Ranks beyond 100 are not needed for R@K <= 100 and are not computed (MedR / MeanR are not compared).
The command line is ``scripts/check_retriever_eval.py``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from prvr.checkpoint import checkpoint_config
from prvr.data.dataset import PRVRCorpus, iter_query_batches
from prvr.index.builder import build_index
from prvr.metrics.retrieval import recall_metrics
from prvr.retriever import Retriever

__all__ = ["KS", "EvalCommandError", "check_retriever_against_eval", "retriever_ranks"]

KS = (1, 5, 10, 100)


class EvalCommandError(RuntimeError):
    """The ``prvr eval`` subprocess failed; ``stderr`` holds its error output."""

    def __init__(self, stderr: str) -> None:
        super().__init__("prvr eval failed; its stderr follows\n" + stderr)
        self.stderr = stderr


def retriever_ranks(index_dir: Path, corpus: PRVRCorpus, batch_size: int) -> tuple[np.ndarray, dict[str, float]]:
    """1-based rank of each query's video in the Retriever's top-100 (101 when it is not there), and timings."""
    ranks = []
    started = time.perf_counter()
    with Retriever.load(index_dir) as retriever:
        k = min(100, retriever.num_videos)
        for batch, targets in iter_query_batches(corpus, batch_size):
            rows = retriever.search_features(batch, k, localize=False)
            target_ids = [corpus.video_ids[int(t)] for t in np.asarray(targets)]
            for row, target in zip(rows, target_ids):
                found = [result.video_id for result in row]
                ranks.append(found.index(target) + 1 if target in found else 101)
    return np.asarray(ranks), {"search_seconds": time.perf_counter() - started}


def check_retriever_against_eval(
    checkpoint: str | os.PathLike[str],
    data: str,
    collection: str,
    split: str = "val",
    *,
    index_dir: str | os.PathLike[str] | None = None,
    batch_size: int = 256,
    text_backbone: str | None = None,
    token_dtype: str = "float32",
    refine_dtype: str | None = None,
    refine_k: int = 50,
    eval_cwd: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Build the exact index, rank every query through the Retriever, run ``prvr eval``, compare R@K and SumR.

    Args:
        checkpoint: best.pt of a ``prvr train`` run.
        data: the data root.
        collection: the collection name.
        split: the split whose queries and videos are compared.
        index_dir: where to build the index (None: a temporary folder, deleted afterwards).
        batch_size: queries per Retriever call.
        text_backbone: recorded in the index for ``prvr query`` (``'minilm-l6'`` or a local model folder).
        token_dtype: token store encoding: ``"float32"`` (identity expected), ``"bfloat16"`` or a compressed one
            (``index.token_codec``; R@K then measures what the codes cost).
        refine_dtype: the second tier of a two-tier index (``build_index``'s ``refine_dtype``), or None.
        refine_k: the second tier's short-list length.
        eval_cwd: working folder of the ``prvr eval`` subprocess (None: this process's).

    Returns:
        The report: ``checkpoint``, ``checkpoint_sha256``, ``token_dtype``, ``split``, ``videos``, ``queries``,
        ``retriever`` and ``prvr_eval`` (R@K and SumR of each), ``identical``, ``build_seconds``,
        ``search_seconds`` and ``different`` (the keys that differ).

    Raises:
        EvalCommandError: when the ``prvr eval`` subprocess fails.
    """
    from prvr.commands.common import text_backbone_record

    config = checkpoint_config(checkpoint)
    corpus = PRVRCorpus(data, collection, split, config.data,
                        expected_video_dim=config.model.video_dim, expected_text_dim=config.model.text_dim)
    folder = Path(index_dir) if index_dir else Path(tempfile.mkdtemp(prefix="check_retriever_"))
    try:
        started = time.perf_counter()
        built = build_index(checkpoint, corpus, folder, collection_name=collection,
                            factory="IDMap2,Flat", text_backbone=text_backbone_record(text_backbone),
                            token_dtype=token_dtype, refine_dtype=refine_dtype, refine_k=refine_k, progress=False)
        build_seconds = time.perf_counter() - started
        stored_checkpoint = folder / built.manifest.checkpoint_path  # the exact bytes the index was built with
        ranks, timings = retriever_ranks(folder, corpus, batch_size)
        ours = recall_metrics(ranks, KS)
        command = [sys.executable, "-c", "import sys; from prvr.cli import main; sys.exit(main())", "eval",
                   "--checkpoint", str(stored_checkpoint), "--data", data, "--collection", collection, "--split",
                   split, "--device", "cpu", "--json"]
        completed = subprocess.run(command, cwd=eval_cwd, capture_output=True, text=True, check=False)
        if completed.returncode != 0:
            raise EvalCommandError(completed.stderr)
        reference = json.loads(completed.stdout.strip().splitlines()[-1])
    finally:
        if not index_dir:
            shutil.rmtree(folder, ignore_errors=True)
    keys = [f"R@{k}" for k in KS] + ["SumR"]
    differ = [key for key in keys if abs(ours[key] - reference[key]) > 1e-9]
    return {
        "checkpoint": str(checkpoint),
        "checkpoint_sha256": built.manifest.checkpoint_sha256,
        "token_dtype": token_dtype,
        "refine": {"dtype": refine_dtype, "refine_k": refine_k} if refine_dtype is not None else None,
        "split": f"{collection}/{split}",
        "videos": built.num_videos,
        "queries": int(ranks.shape[0]),
        "retriever": {key: ours[key] for key in keys},
        "prvr_eval": {key: reference[key] for key in keys},
        "identical": not differ,
        "build_seconds": round(build_seconds, 1),
        "search_seconds": round(timings["search_seconds"], 1),
        "different": differ,
    }
