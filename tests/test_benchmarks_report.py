"""The shared benchmark helpers (prvr.benchmarks.report) on hand cases."""

from __future__ import annotations

import json

import numpy as np
import pytest

from prvr.benchmarks.report import median, median_ms, percentile, repeat_seconds, write_json, write_text


def test_linear_percentile_is_numpys() -> None:
    values = [3.0, 1.0, 4.0, 1.5, 9.0, 2.6]
    for q in (0, 25, 50, 99, 100):
        assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))


@pytest.mark.parametrize(("q", "expected"),
                         [(0, 1.0), (10, 1.0), (50, 3.0), (51, 3.0), (61, 4.0), (99, 5.0), (100, 5.0)])
def test_nearest_rank_percentile_is_a_measurement(q: float, expected: float) -> None:
    assert percentile([5.0, 1.0, 4.0, 2.0, 3.0], q, method="nearest_rank") == expected


def test_percentile_rejects_empty_input_and_bad_arguments() -> None:
    with pytest.raises(ValueError, match="no values"):
        percentile([], 50)
    with pytest.raises(ValueError, match=r"\[0, 100\]"):
        percentile([1.0], 101)
    with pytest.raises(ValueError, match="method"):
        percentile([1.0], 50, method="mean")  # type: ignore[arg-type]


def test_median_and_repeated_timings() -> None:
    assert median([4.0, 1.0, 3.0, 2.0]) == 2.5
    calls = []
    times = repeat_seconds(lambda: calls.append(1), 3)
    assert len(times) == 3 and len(calls) == 3 and all(t >= 0 for t in times)
    assert median_ms(lambda: None, 2) >= 0
    with pytest.raises(ValueError, match="repeats"):
        repeat_seconds(lambda: None, 0)


def test_write_json_and_text_create_the_folder(tmp_path) -> None:
    path = write_json(tmp_path / "a" / "b.json", {"x": 1, "p": tmp_path}, default=str)
    assert path.read_text(encoding="utf-8").endswith("}\n")
    assert json.loads(path.read_text(encoding="utf-8"))["x"] == 1
    assert write_text(tmp_path / "c" / "d.md", "# t").read_text(encoding="utf-8") == "# t"
