"""Tests of the ANet-CapProxy builder (recipe, splits, build outputs, determinism, resumability) and its encoders."""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from prvr.benchmarks import capproxy_dataset as capproxy
from prvr.benchmarks.capproxy_dataset import (
    build_capproxy,
    dev_split,
    frame_count,
    frame_coverage,
    make_frames,
    noise_seed,
    read_capproxy_inputs,
    video_bucket,
    zero_shot_floor,
)
from prvr.data.captions import caption_path, moments_path, read_captions, read_moments

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "activitynet_captions"
HAVE_DATA = (DATA / "val_1.json").is_file() and (DATA / "val_2.json").is_file()


def _have_backbones() -> bool:
    try:
        from prvr.text_encoders import find_minilm_l3_onnx, find_minilm_l6_dir

        import onnxruntime  # noqa: F401

        find_minilm_l6_dir()
        find_minilm_l3_onnx()
    except (ImportError, RuntimeError):
        return False
    return True


needs_data = pytest.mark.skipif(not HAVE_DATA, reason="needs ../shared/data/activitynet_captions")
needs_backbones = pytest.mark.skipif(not (HAVE_DATA and _have_backbones()),
                                     reason="needs the bench extra (onnxruntime + packaged MiniLM models) and the data")


# ----------------------------------------------------------------------------------------------------------------
# slow references, written independently of the library


def _sha1(video_id: str) -> int:
    return int(hashlib.sha1(video_id.encode()).hexdigest(), 16)


def naive_frames(video_id: str, duration: float, windows: list[tuple[float, float]], emb: np.ndarray) -> np.ndarray:
    n = max(1, math.ceil(duration))
    d = emb.shape[1]
    frames = np.zeros((n, d))
    for t in range(n):
        centre = t + 0.5
        covering = [emb[i] for i, (s, e) in enumerate(windows) if s <= centre <= e]
        if covering:
            frames[t] = np.mean(covering, axis=0)
    rng = np.random.default_rng(_sha1(video_id) % 2**63)
    frames += rng.standard_normal((n, d)) * 0.5 / math.sqrt(d)
    frames += rng.standard_normal((1, d)) * 1.0 / math.sqrt(d)
    for t in range(n):
        frames[t] /= np.linalg.norm(frames[t])
    return frames


# ----------------------------------------------------------------------------------------------------------------
# the recipe (no backbones needed)


def test_frame_count_is_ceil_of_duration() -> None:
    cases = {0.0: 1, 0.2: 1, 1.0: 1, 1.01: 2, 57.5: 58, 211.53: 212, 120.0: 120}
    for duration, expected in cases.items():
        assert frame_count(duration) == expected
    with pytest.raises(ValueError):
        frame_count(float("nan"))


def test_frame_coverage_on_a_constructed_example() -> None:
    # centres 0.5, 1.5, 2.5, 3.5, 4.5
    windows = [(0.5, 2.5), (2.6, 3.4), (3.0, 1.0), (3.5, 10.0), (0.0, 0.49)]
    cover = frame_coverage(5, windows)
    expected = np.array([
        [1, 0, 0, 0, 0],
        [1, 0, 0, 0, 0],
        [1, 0, 0, 0, 0],  # 2.5 is inside [0.5, 2.5] (inclusive end); [2.6, 3.4] holds no centre
        [0, 0, 0, 1, 0],  # 3.5 is inside [3.5, 10] (inclusive start); the reversed window covers nothing
        [0, 0, 0, 1, 0],
    ], dtype=bool)
    np.testing.assert_array_equal(cover, expected)


def test_make_frames_maps_sentences_to_frames_and_adds_the_noise_exactly() -> None:
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((3, 16))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    windows = [(0.0, 3.0), (2.0, 5.7), (9.0, 20.0)]  # frames 6-8 are uncovered; the last window overruns
    video_id = "v_constructed"
    frames = make_frames(video_id, 10.2, windows, emb)
    assert frames.shape == (11, 16)
    np.testing.assert_allclose(frames, naive_frames(video_id, 10.2, windows, emb), atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(frames, axis=1), 1.0, atol=1e-12)

    # Undo the recipe by hand: before normalisation frame t = mean of covering sentences + noise_t + scene.
    gen = np.random.default_rng(int(hashlib.sha1(b"v_constructed").hexdigest(), 16) % 2**63)
    per_frame = gen.standard_normal((11, 16)) * 0.5 / 4.0
    scene = gen.standard_normal((1, 16)) * 1.0 / 4.0
    content = np.zeros((11, 16))
    content[0:2] = emb[0]
    content[2:3] = (emb[0] + emb[1]) / 2  # centre 2.5 lies in [0, 3] and [2, 5.7]
    content[3:6] = emb[1]  # centres 3.5, 4.5, 5.5
    content[9:11] = emb[2]  # centres 9.5 and 10.5 (beyond the duration, inside the raw window)
    raw = content + per_frame + scene
    np.testing.assert_allclose(frames, raw / np.linalg.norm(raw, axis=1, keepdims=True), atol=1e-12)

    # the scene vector is shared: uncovered frames differ only by their per-frame noise
    np.testing.assert_allclose(frames[6:9] * np.linalg.norm(raw[6:9], axis=1, keepdims=True) - per_frame[6:9],
                               np.repeat(scene, 3, axis=0), atol=1e-12)


def test_noise_seed_and_split_assignment() -> None:
    ids = [f"v_{i:05d}" for i in range(200)] + ["v_--1DO2V4K74"]
    for video_id in ids:
        bucket = int(hashlib.sha1(video_id.encode()).hexdigest(), 16) % 10
        assert video_bucket(video_id) == bucket
        assert dev_split(video_id) == ("test" if bucket < 4 else "val" if bucket < 6 else "train")
        assert noise_seed(video_id) == int(hashlib.sha1(video_id.encode()).hexdigest(), 16) % 2**63
    assert {dev_split(v) for v in ids} == {"train", "val", "test"}


def _write_pair(folder: Path, v1: dict[str, Any], v2: dict[str, Any]) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    a, b = folder / "first.json", folder / "second.json"
    a.write_text(json.dumps(v1))
    b.write_text(json.dumps(v2))
    return a, b


def test_read_inputs_pairs_videos_and_keeps_raw_windows(tmp_path: Path) -> None:
    v1 = {"v_a": {"duration": 10.0, "timestamps": [[0, 4], [3, 12.5]], "sentences": [" one", "two"]},
          "v_b": {"duration": 5.0, "timestamps": [[0, 5]], "sentences": ["only first"]},
          "v_c": {"duration": 7.0, "timestamps": [[1, 2]], "sentences": ["three"]}}
    v2 = {"v_c": {"duration": 7.0, "timestamps": [[0, 7]], "sentences": [" q\nc  d"]},
          "v_a": {"duration": 10.0, "timestamps": [[2, 3], [5, 11]], "sentences": ["q a0", "q a1"]},
          "v_z": {"duration": 3.0, "timestamps": [[0, 1]], "sentences": ["only second"]}}
    a, b = _write_pair(tmp_path, v1, v2)
    videos, queries, counts = read_capproxy_inputs(a, b, "all:test")
    assert [v.video_id for v in videos] == ["v_a", "v_c"]  # first file's order
    assert videos[0].sentences == ("one", "two") and videos[0].windows == ((0.0, 4.0), (3.0, 12.5))
    assert {v.split for v in videos} == {"test"}
    assert [q.query_id for q in queries] == ["v_c#enc#0", "v_a#enc#0", "v_a#enc#1"]
    assert queries[0].text == "q c d"  # one line per caption
    assert queries[2].windows == ((5.0, 10.0),)  # query windows are clamped to the duration for moment metrics
    assert counts == {"videos": 2, "only_in_val_1": 1, "only_in_val_2": 1}
    videos, _, _ = read_capproxy_inputs(a, b, {"v_a": "x", "v_c": "y"})
    assert [v.split for v in videos] == ["x", "y"]
    with pytest.raises(ValueError, match="no entry"):
        read_capproxy_inputs(a, b, {"v_a": "x"})


@needs_data
def test_dev_files_hold_only_dev_buckets() -> None:
    videos, queries, counts = read_capproxy_inputs(DATA / "val_1.json", DATA / "val_2.json")
    splits = [v.split for v in videos]
    assert counts["videos"] == 2964 and splits.count("val") == 1019 and splits.count("train") == 1945
    val = {v.video_id for v in videos if v.split == "val"}
    assert sum(q.video_id in val for q in queries) == 3533


# ----------------------------------------------------------------------------------------------------------------
# building (real backbones on a handful of videos)


class CountingEncoder:
    """Wraps an encoder; counts calls and raises after ``fail_after`` calls (a simulated crash)."""

    def __init__(self, inner: Any, fail_after: int | None = None) -> None:
        self.inner, self.fail_after, self.calls = inner, fail_after, 0
        self.encoder_id, self.dim = inner.encoder_id, inner.dim

    def params(self) -> dict[str, Any]:
        return self.inner.params()

    def _tick(self) -> None:
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise KeyboardInterrupt("simulated interruption")
        self.calls += 1

    def encode(self, texts: list[str]) -> Any:
        self._tick()
        return self.inner.encode(texts)

    def encode_sentences(self, texts: list[str]) -> np.ndarray:
        self._tick()
        return self.inner.encode_sentences(texts)


@pytest.fixture(scope="module")
def backbones() -> Iterator[dict[str, Any]]:
    import torch

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from prvr.text_encoders import OnnxSentenceEncoder, TokenFeatureEncoder

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny batches: one thread avoids the thread-pool overhead (much faster on 2 cores)
    try:
        yield {"minilm_l3": OnnxSentenceEncoder(batch_size=8, threads=1),
               "minilm_l6": TokenFeatureEncoder.minilm_l6(batch_size=8)}
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def small_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    v1 = json.loads((DATA / "val_1.json").read_text())
    v2 = json.loads((DATA / "val_2.json").read_text())
    val = [v for v in v1 if v in v2 and dev_split(v) == "val"][:3]
    train = [v for v in v1 if v in v2 and dev_split(v) == "train"][:3]
    chosen = val + train
    extra = next(v for v in v1 if v not in chosen)  # only in the first file: must be left out
    folder = tmp_path_factory.mktemp("pair")
    return _write_pair(folder, {v: v1[v] for v in [*chosen, extra]}, {v: v2[v] for v in chosen})


def _read_h5(path: Path) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as handle:
        return {key: handle[key][()] for key in handle.keys()}


def _outputs(root: Path) -> dict[str, Any]:
    base = root / "capproxy"
    arrays = {str(p.relative_to(base)): _read_h5(p) for p in sorted(base.rglob("*.hdf5"))}
    texts = {str(p.relative_to(base)): p.read_text() for p in sorted((base / "TextData").iterdir())
             if p.suffix in (".txt", ".jsonl")}
    return {"arrays": arrays, "texts": texts}


def _assert_same_outputs(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a["texts"] == b["texts"]
    assert a["arrays"].keys() == b["arrays"].keys()
    for name, datasets in a["arrays"].items():
        assert datasets.keys() == b["arrays"][name].keys()
        for key, array in datasets.items():
            np.testing.assert_array_equal(array, b["arrays"][name][key], err_msg=f"{name}:{key}")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, backbones: dict[str, Any],
          small_pair: tuple[Path, Path]) -> tuple[Path, dict[str, Any]]:
    root = tmp_path_factory.mktemp("build")
    manifest = build_capproxy(root, val1_path=small_pair[0], val2_path=small_pair[1],
                              video_feature=["minilm_l3", "minilm_l6"], encoders=backbones, chunk_size=4,
                              progress=False)
    return root, manifest


@needs_backbones
def test_build_shapes_frames_and_queries(built: tuple[Path, dict[str, Any]], backbones: dict[str, Any],
                                         small_pair: tuple[Path, Path]) -> None:
    root, _ = built
    base = root / "capproxy"
    source = json.loads(small_pair[0].read_text())
    queries_source = json.loads(small_pair[1].read_text())
    frames = _read_h5(base / "FeatureData" / "minilm_l3" / "feature.hdf5")
    assert len(frames) == 6  # the video missing from the second file is left out
    for video_id, array in frames.items():
        entry = source[video_id]
        assert array.dtype == np.float16 and array.shape == (math.ceil(entry["duration"]), 384)
        np.testing.assert_allclose(np.linalg.norm(array.astype(np.float64), axis=1), 1.0, atol=2e-3)
        emb = backbones["minilm_l3"].encode_sentences(entry["sentences"]).astype(np.float64)
        emb /= np.linalg.norm(emb, axis=1, keepdims=True)
        expected = naive_frames(video_id, entry["duration"], [tuple(w) for w in entry["timestamps"]], emb)
        np.testing.assert_allclose(array.astype(np.float64), expected, atol=2e-3)
    with h5py.File(base / "FeatureData" / "minilm_l3" / "feature.hdf5", "r") as handle:
        assert handle.attrs["video_encoder"] == backbones["minilm_l3"].encoder_id
        assert handle.attrs["recipe"] == capproxy.RECIPE_VERSION

    tokens = _read_h5(base / "TextData" / "minilm_l6_capproxy_query_feat.hdf5")
    sentences = _read_h5(base / "TextData" / "minilm_l6_capproxy_query_sent.hdf5")
    all_caps = {}
    for split in ("train", "val"):
        records = read_captions(caption_path(root, "capproxy", split))
        moments = read_moments(moments_path(root, "capproxy", split))
        assert {dev_split(r.video_id) for r in records} == {split}
        assert [r.query_id for r in records] == list(moments)
        for record in records:
            k = int(record.query_id.rsplit("#", 1)[1])
            entry = queries_source[record.video_id]
            assert record.text == " ".join(entry["sentences"][k].split())
            windows, duration = moments[record.query_id]
            assert duration == entry["duration"]
            assert windows == ((entry["timestamps"][k][0], min(entry["timestamps"][k][1], duration)),)
            all_caps[record.query_id] = record.text
    assert set(tokens) == set(all_caps) == set(sentences)
    some = sorted(all_caps)[:4]
    encoded = backbones["minilm_l6"].encode([all_caps[c] for c in some])
    for cap_id, expected_tokens, expected_vector in zip(some, encoded.tokens, encoded.sentences):
        assert tokens[cap_id].dtype == np.float16 and tokens[cap_id].shape[1] == 384
        assert 2 <= tokens[cap_id].shape[0] <= 30
        np.testing.assert_allclose(tokens[cap_id], expected_tokens, atol=2e-2, rtol=1e-2)
        np.testing.assert_allclose(sentences[cap_id][0], expected_vector, atol=1e-4)


@needs_backbones
def test_manifest_content(built: tuple[Path, dict[str, Any]], backbones: dict[str, Any],
                          small_pair: tuple[Path, Path]) -> None:
    root, manifest = built
    base = root / "capproxy"
    assert json.loads((base / "manifest.json").read_text()) == manifest
    for name, path in (("val_1", small_pair[0]), ("val_2", small_pair[1])):
        assert manifest["inputs"][name]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert manifest["encoders"]["video"]["minilm_l3"]["id"] == backbones["minilm_l3"].encoder_id
    assert manifest["encoders"]["text"]["minilm_l6"]["id"] == backbones["minilm_l6"].encoder_id
    assert manifest["split_rule"] == "dev"
    recipe = manifest["recipe"]
    assert (recipe["frame_noise"], recipe["scene_noise"], recipe["dtype"], recipe["max_query_tokens"]) == (
        0.5, 1.0, "float16", 30)
    source = json.loads(small_pair[0].read_text())
    counts = manifest["counts"]
    assert counts["videos"] == 6 and counts["only_in_val_1"] == 1 and counts["only_in_val_2"] == 0
    for split in ("train", "val"):
        ids = [v for v in source if v in json.loads(small_pair[1].read_text()) and dev_split(v) == split]
        assert counts["splits"][split]["videos"] == 3
        assert counts["splits"][split]["frames"] == sum(math.ceil(source[v]["duration"]) for v in ids)
        assert counts["splits"][split]["queries"] == len(read_captions(caption_path(root, "capproxy", split)))
    assert "test" not in counts["splits"]
    assert len(manifest["outputs"]) == 2 + 2 + 2 * 2
    for relative, digest in manifest["outputs"].items():
        assert hashlib.sha256((base / relative).read_bytes()).hexdigest() == digest
    assert not (base / ".capproxy_work").exists()  # the chunk cache is removed after a successful build


@needs_backbones
def test_two_builds_are_identical(tmp_path: Path, built: tuple[Path, dict[str, Any]], backbones: dict[str, Any],
                                  small_pair: tuple[Path, Path]) -> None:
    root, manifest = built
    again = build_capproxy(tmp_path, val1_path=small_pair[0], val2_path=small_pair[1],
                           video_feature=["minilm_l3", "minilm_l6"], encoders=backbones, chunk_size=4,
                           progress=False)
    _assert_same_outputs(_outputs(root), _outputs(tmp_path))
    assert again["outputs"] == manifest["outputs"]


@needs_backbones
def test_interrupted_build_resumes_to_identical_outputs(tmp_path: Path, built: tuple[Path, dict[str, Any]],
                                                       backbones: dict[str, Any],
                                                       small_pair: tuple[Path, Path]) -> None:
    root, _ = built
    crashing = {"minilm_l3": CountingEncoder(backbones["minilm_l3"]),
                "minilm_l6": CountingEncoder(backbones["minilm_l6"], fail_after=3)}
    with pytest.raises(KeyboardInterrupt):
        build_capproxy(tmp_path, val1_path=small_pair[0], val2_path=small_pair[1],
                       video_feature=["minilm_l3", "minilm_l6"], encoders=crashing, chunk_size=4, progress=False)
    work = tmp_path / "capproxy" / ".capproxy_work"
    done_l3 = sorted((work / "video-minilm_l3").glob("*.npz"))
    done_l6 = sorted((work / "video-minilm_l6").glob("*.npz"))
    assert len(done_l3) == crashing["minilm_l3"].calls > 0 and len(done_l6) == 3
    assert not (tmp_path / "capproxy" / "manifest.json").exists()
    assert not list((tmp_path / "capproxy").rglob("*.tmp"))

    resumed = {name: CountingEncoder(encoder) for name, encoder in backbones.items()}
    build_capproxy(tmp_path, val1_path=small_pair[0], val2_path=small_pair[1],
                   video_feature=["minilm_l3", "minilm_l6"], encoders=resumed, chunk_size=4, progress=False)
    num_video_chunks = len(done_l3)
    assert resumed["minilm_l3"].calls == 0  # every camera chunk came from the cache
    num_query_chunks = math.ceil(len(_read_h5(tmp_path / "capproxy" / "TextData" /
                                              "minilm_l6_capproxy_query_feat.hdf5")) / 4)
    assert resumed["minilm_l6"].calls == (num_video_chunks - 3) + num_query_chunks
    _assert_same_outputs(_outputs(root), _outputs(tmp_path))


@needs_backbones
def test_all_split_puts_every_video_in_one_split(tmp_path: Path, backbones: dict[str, Any],
                                                 small_pair: tuple[Path, Path]) -> None:
    manifest = build_capproxy(tmp_path, val1_path=small_pair[0], val2_path=small_pair[1], splits="all:test",
                              encoders=backbones, progress=False)
    assert list(manifest["counts"]["splits"]) == ["test"] and manifest["split_rule"] == "all:test"
    assert len({r.video_id for r in read_captions(caption_path(tmp_path, "capproxy", "test"))}) == 6


@needs_backbones
def test_zero_shot_floor_matches_a_naive_loop(built: tuple[Path, dict[str, Any]]) -> None:
    root, _ = built
    base = root / "capproxy"
    for feature in ("minilm_l3", "minilm_l6"):
        frames = _read_h5(base / "FeatureData" / feature / "feature.hdf5")
        vectors = _read_h5(base / "TextData" / "minilm_l6_capproxy_query_sent.hdf5")
        records = read_captions(caption_path(root, "capproxy", "train"))
        videos = list(dict.fromkeys(r.video_id for r in records))
        ranks = []
        for record in records:
            q = vectors[record.query_id][0].astype(np.float64)
            q /= np.linalg.norm(q)
            scores = {}
            for v in videos:
                f = frames[v].astype(np.float64)
                scores[v] = max(float(row @ q) / np.linalg.norm(row) for row in f)
            ranks.append(1 + sum(s >= scores[record.video_id] for v, s in scores.items() if v != record.video_id))
        result = zero_shot_floor(root, split="train", video_feature=feature, ks=(1, 2))
        assert result["num_queries"] == len(records) and result["num_videos"] == 3
        assert result["R@1"] == pytest.approx(100 * np.mean(np.array(ranks) <= 1))
        assert result["R@2"] == pytest.approx(100 * np.mean(np.array(ranks) <= 2))


# ----------------------------------------------------------------------------------------------------------------
# encoders


@needs_backbones
def test_encoders(backbones: dict[str, Any]) -> None:
    l6, l3 = backbones["minilm_l6"], backbones["minilm_l3"]
    assert l6.encoder_id.startswith("all-MiniLM-L6-v2@") and len(l6.encoder_id.split("@")[1]) == 12
    assert l3.encoder_id.startswith("paraphrase-MiniLM-L3-v2@")
    short = "a man plays the guitar"
    long = " ".join(["the woman keeps talking to the camera while she paints the fence"] * 4)
    encoded = l6.encode([short, long])
    assert encoded.tokens[0].shape == (7, 384)  # [CLS] a man plays the guitar [SEP]
    assert encoded.tokens[1].shape == (30, 384)
    np.testing.assert_allclose(encoded.sentences[0], encoded.tokens[0].mean(axis=0), atol=1e-5)
    alone = l6.encode([long])
    np.testing.assert_allclose(alone.sentences[0], encoded.sentences[1], atol=1e-4)
    batch = l3.encode_sentences([short, long, "people dance"])
    single = np.concatenate([l3.encode_sentences([t]) for t in (short, long, "people dance")])
    np.testing.assert_allclose(batch, single, atol=1e-4)
    assert batch.shape == (3, 384) and batch.dtype == np.float32
    with pytest.raises(ValueError, match="empty"):
        l3.encode_sentences(["ok", "  "])


@needs_backbones
def test_cli_build_and_floor(tmp_path: Path, small_pair: tuple[Path, Path]) -> None:
    import importlib.util

    from click.testing import CliRunner

    script = Path(__file__).resolve().parents[1] / "scripts" / "build_capproxy.py"
    spec = importlib.util.spec_from_file_location("build_capproxy_script", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    import torch

    threads = torch.get_num_threads()
    runner = CliRunner()
    result = runner.invoke(module.main, ["build", "--out", str(tmp_path), "--val1", str(small_pair[0]),
                                         "--val2", str(small_pair[1]), "--all-split", "heldout", "--no-progress",
                                         "--threads", "1"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["splits"]["heldout"]["videos"] == 6
    torch.set_num_threads(threads)  # --threads 1 set the process's torch threads
    result = runner.invoke(module.main, ["floor", "--root", str(tmp_path), "--split", "heldout"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["num_videos"] == 6
    result = runner.invoke(module.main, ["floor", "--root", str(tmp_path), "--split", "nope"])
    assert result.exit_code == 1 and "does not exist" in result.output
