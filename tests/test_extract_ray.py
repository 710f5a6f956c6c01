"""``prvr extract --ray``: the same cache, feature file, sidecar and failure list as the local path, on a local Ray
instance with two actors over generated videos (one of them undecodable); a second run is all cache hits."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from prvr.cli import main
from prvr.features.extract import FAILURES_FILE, read_sidecar
from prvr.features.ray_extract import RayOptions
from prvr.features.synthetic_video import write_video

pytest.importorskip("ray.data", reason="the ray extra is not installed (pip install -e '.[ray]')")


def _extract(videos: Path, out: Path, clip: Path, *extra: str):
    args = ["extract", "--videos", str(videos), "--out", str(out), "--backbone", f"clip:{clip}", "--fps", "2",
            "--batch-size", "4", "--device", "cpu", "--no-progress", *extra]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout[result.stdout.index("{"):])


def _features(folder: Path) -> dict[str, np.ndarray]:
    with h5py.File(folder / "feature.hdf5", "r") as handle:
        return {name: handle[name][()] for name in handle}


def test_ray_extraction_equals_the_local_path_and_resumes(tmp_path: Path, tiny_clip: Path, monkeypatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    videos = tmp_path / "videos"
    videos.mkdir()
    for n in range(5):
        write_video(videos / f"v{n}.mp4", np.arange(0, 1.0 + 0.4 * n, 0.1), width=32 + 8 * n)
    (videos / "broken.mp4").write_bytes(b"\x00" * 2048)
    local = _extract(videos, tmp_path / "local", tiny_clip)
    remote = _extract(videos, tmp_path / "ray", tiny_clip, "--ray", "--ray-workers", "2")
    assert remote["ok"] == local["ok"] == 5 and remote["failed"] == local["failed"] == 1
    assert remote["from_cache"] == 0
    local_dir = tmp_path / "local" / "videos" / "FeatureData" / "tiny_clip"
    ray_dir = tmp_path / "ray" / "videos" / "FeatureData" / "tiny_clip"
    expected, got = _features(local_dir), _features(ray_dir)
    assert sorted(got) == sorted(expected) == [f"v{n}" for n in range(5)]
    for name in expected:
        np.testing.assert_allclose(got[name], expected[name], rtol=0, atol=1e-6)
    strip = ("source",)
    assert [{k: v for k, v in row.items() if k not in strip} for row in read_sidecar(ray_dir)] == \
        [{k: v for k, v in row.items() if k not in strip} for row in read_sidecar(local_dir)]
    failures = json.loads((ray_dir / FAILURES_FILE).read_text())["failed"]
    assert [row["video_id"] for row in failures] == ["broken"] and failures[0]["reason"]
    again = _extract(videos, tmp_path / "ray", tiny_clip, "--ray", "--ray-workers", "2")  # all cached: no Ray run
    assert again["ok"] == 5 and again["from_cache"] == 5


def test_bad_ray_options_are_refused() -> None:
    with pytest.raises(ValueError, match="workers must be an int >= 1"):
        RayOptions(workers=0)
    with pytest.raises(ValueError, match="address is empty"):
        RayOptions(address="")
