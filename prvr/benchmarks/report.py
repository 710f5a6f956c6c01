"""Shared helpers of every benchmark: percentiles and medians of repeated timings, writing the result files, and
the token-store options of the scripts that build an index."""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Literal

import numpy as np

from prvr.fileio import write_json_atomic, write_text_atomic

__all__ = ["add_token_store_arguments", "median", "median_ms", "median_seconds", "percentile", "repeat_seconds",
           "write_json", "write_text"]

PercentileMethod = Literal["linear", "nearest_rank"]


def add_token_store_arguments(parser: argparse.ArgumentParser, *, default_dtype: str, dtype_help: str) -> None:
    """``--token-dtype``, ``--refine-dtype`` and ``--refine-k``, spelled and defaulted as ``prvr build-index``'s."""
    from prvr.index.search import DEFAULT_REFINE_K
    from prvr.index.token_codec import CODEC_NAMES_HELP

    parser.add_argument("--token-dtype", default=default_dtype, help=f"Token store encoding ({CODEC_NAMES_HELP}): "
                        f"{dtype_help}")
    parser.add_argument("--refine-dtype", default=None,
                        help="Second tier re-scoring the compressed store's short list (e.g. sq8 or bfloat16); "
                             "default none (one tier).")
    parser.add_argument("--refine-k", type=int, default=DEFAULT_REFINE_K, help="Short-list length of the second tier.")


def percentile(values: Iterable[float], q: float, *, method: PercentileMethod = "linear") -> float:
    """The q-th percentile (q in [0, 100]) of ``values``.

    Args:
        values: the measurements (at least one).
        q: the percentile, in [0, 100].
        method: ``"linear"`` interpolates between the two nearest ranks (numpy's default); ``"nearest_rank"`` is the
            smallest value with at least q% of the values at or below it (always one of the measurements).

    Returns:
        The percentile as a float.
    """
    data = [float(v) for v in values]
    if not data:
        raise ValueError("percentile of no values; measure at least once")
    if not 0 <= q <= 100:
        raise ValueError(f"q must lie in [0, 100], got {q}")
    if method == "linear":
        return float(np.percentile(np.asarray(data), q))
    if method == "nearest_rank":
        ordered = sorted(data)
        rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 100))))
        return ordered[rank - 1]
    raise ValueError(f"method must be 'linear' or 'nearest_rank', got {method!r}")


def median(values: Iterable[float]) -> float:
    """The median (``statistics.median``: the mean of the two middle values for an even count)."""
    return statistics.median(values)


def repeat_seconds(function: Callable[[], Any], repeats: int) -> list[float]:
    """Wall seconds of ``repeats`` calls of ``function`` (``time.perf_counter``), in call order."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return times


def median_seconds(function: Callable[[], Any], repeats: int) -> float:
    """Median wall seconds of ``repeats`` calls of ``function``."""
    return median(repeat_seconds(function, repeats))


def median_ms(function: Callable[[], Any], repeats: int, *, digits: int = 2) -> float:
    """Median wall milliseconds of ``repeats`` calls of ``function``, rounded to ``digits``."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(1000.0 * (time.perf_counter() - started))
    return round(median(times), digits)


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically, creating its folder; returns the path."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(target, text)
    return target


def write_json(path: str | os.PathLike[str], payload: Any, *, default: Callable[[Any], Any] | None = None) -> Path:
    """Write ``payload`` as indented JSON (keys in insertion order) plus a final newline to ``path`` atomically,
    creating its folder; returns the path."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(target, payload, sort_keys=False, default=default)
    return target
