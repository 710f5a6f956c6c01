"""Tests of the synthesised pairs (FVE event edit) and the hybrid selection on a tiny hand-made corpus.

No backbones: a hash-seeded fake encoder stands in for the camera and the query backbone, so every test runs on
the CPU in a few seconds. References are slow loops written independently of the library.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import torch

from prvr.benchmarks.capproxy_dataset import build_capproxy, dev_split, edit_event_frames, make_frames
from prvr.data.captions import caption_path, read_captions, read_moments
from prvr.synthesis.corpus import SynthesisConfig, read_scores, select_split, selection_path, synthesize_corpus
from prvr.synthesis.generator import EditRequest, EventEditGenerator, synthetic_video_id
from prvr.synthesis.selection import (
    SelectionConfig,
    cross_modal_relevance,
    model_margins,
    select,
    uni_modal_structure,
)
from prvr.text_encoders import EncodedTexts

DIM = 12


class FakeEncoder:
    """Deterministic hash-seeded sentence and token features; counts calls, can fail after ``fail_after``."""

    def __init__(self, name: str, fail_after: int | None = None) -> None:
        self.encoder_id, self.dim, self.fail_after, self.calls = f"fake-{name}", DIM, fail_after, 0
        self.salt = name

    def params(self) -> dict[str, Any]:
        return {"max_tokens": 5}

    def _tick(self) -> None:
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise KeyboardInterrupt("simulated interruption")
        self.calls += 1

    def _word(self, word: str) -> np.ndarray:
        seed = int(hashlib.sha1(f"{self.salt}:{word}".encode()).hexdigest(), 16) % 2**32
        return np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)

    def encode(self, texts: list[str]) -> EncodedTexts:
        self._tick()
        tokens = [np.stack([self._word(w) for w in text.split()][:5]) for text in texts]
        sentences = np.stack([np.mean([self._word(w) for w in text.split()], axis=0) for text in texts])
        return EncodedTexts(tokens, sentences.astype(np.float32))

    def encode_sentences(self, texts: list[str]) -> np.ndarray:
        return self.encode(texts).sentences


def _ids(split: str, count: int) -> list[str]:
    found, k = [], 0
    while len(found) < count:
        video_id = f"v_t{k:03d}"
        if dev_split(video_id) == split:
            found.append(video_id)
        k += 1
    return found


WORDS = "man woman dog ball runs jumps throws plays guitar piano water swims rides horse bike cooks".split()
NOVEL = "skateboard violin kayak juggles fencing archery".split()


def _sentence(rng: np.random.Generator, words: list[str]) -> str:
    return "a " + " ".join(rng.choice(words, size=3, replace=False))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A DEV build of 6 train + 2 val videos (fake camera), a pool file of other videos, the encoders."""
    folder = tmp_path_factory.mktemp("tiny")
    rng = np.random.default_rng(0)
    v1, v2, pool = {}, {}, {}
    for video_id in _ids("train", 6) + _ids("val", 2):
        duration = float(rng.integers(8, 20)) + 0.4
        windows = [[0.0, duration / 2], [duration / 3, duration + 3.0], [1.2, 4.0]]
        v1[video_id] = {"duration": duration, "timestamps": windows,
                        "sentences": [_sentence(rng, WORDS) for _ in windows]}
        v2[video_id] = {"duration": duration, "timestamps": [[0.0, duration / 2]], "sentences": [_sentence(rng, WORDS)]}
    for k in range(8):
        pool[f"v_pool{k}"] = {"duration": 30.0, "timestamps": [[0, 5], [5, 9]],
                              "sentences": [_sentence(rng, WORDS[:4] + NOVEL), _sentence(rng, WORDS)]}
    paths = {}
    for name, data in (("val_1", v1), ("val_2", v2), ("pool", pool)):
        paths[name] = folder / f"{name}.json"
        paths[name].write_text(json.dumps(data))
    encoders = {"minilm_l3": FakeEncoder("l3"), "minilm_l6": FakeEncoder("l6")}
    dev_root = folder / "dev"
    build_capproxy(dev_root, val1_path=paths["val_1"], val2_path=paths["val_2"], encoders=encoders, chunk_size=4,
                   progress=False)
    return {"folder": folder, "paths": paths, "dev_root": dev_root, "encoders": encoders}


def _synthesize(tiny: dict[str, Any], out: Path, seed: int = 0, encoders: dict[str, Any] | None = None,
                num: int = 6, pool: str = "all", **options: Any) -> dict[str, Any]:
    paths = tiny["paths"]
    return synthesize_corpus(out, source_root=tiny["dev_root"], val1_path=paths["val_1"], val2_path=paths["val_2"],
                             pool_path=paths["pool"], config=SynthesisConfig(num_candidates=num, seed=seed, pool=pool),
                             encoders=encoders or tiny["encoders"], chunk_size=3, progress=False, **options)


def _read_h5(path: Path) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as handle:
        return {key: handle[key][()] for key in handle.keys()}


def _outputs(root: Path) -> dict[str, Any]:
    base = root / "capproxy_synth"
    return {"arrays": {str(p.relative_to(base)): _read_h5(p) for p in sorted(base.rglob("*.hdf5"))},
            "texts": {p.name: p.read_text() for p in sorted((base / "TextData").iterdir())
                      if p.suffix in (".txt", ".jsonl")}}


def _assert_same(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a["texts"] == b["texts"]
    assert a["arrays"].keys() == b["arrays"].keys()
    for name, datasets in a["arrays"].items():
        assert datasets.keys() == b["arrays"][name].keys()
        for key, array in datasets.items():
            np.testing.assert_array_equal(array, b["arrays"][name][key], err_msg=f"{name}:{key}")


@pytest.fixture(scope="module")
def synth(tiny: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    _synthesize(tiny, root)
    return root


# ----------------------------------------------------------------------------------------------------------------
# the edit


def _naive_edit(video_id: str, duration: float, windows: list[tuple[float, float]], emb: np.ndarray, event: int,
                new: np.ndarray) -> np.ndarray:
    emb = emb.copy()
    emb[event] = new
    n, d = max(1, math.ceil(duration)), emb.shape[1]
    frames = np.zeros((n, d))
    for t in range(n):
        covering = [emb[i] for i, (s, e) in enumerate(windows) if s <= t + 0.5 <= e]
        if covering:
            frames[t] = np.mean(covering, axis=0)
    rng = np.random.default_rng(int(hashlib.sha1(video_id.encode()).hexdigest(), 16) % 2**63)
    frames += rng.standard_normal((n, d)) * 0.5 / math.sqrt(d)
    frames += rng.standard_normal((1, d)) * 1.0 / math.sqrt(d)
    return frames / np.linalg.norm(frames, axis=1, keepdims=True)


def test_edit_remakes_exactly_the_event_frames() -> None:
    rng = np.random.default_rng(3)
    windows = [(0.0, 3.2), (2.0, 6.0), (7.5, 9.0)]
    emb, new = rng.standard_normal((3, DIM)), rng.standard_normal(DIM)
    source = make_frames("v_x", 9.7, windows, emb)
    edited, span = edit_event_frames("v_x", 9.7, windows, emb, 1, new)
    # frame t is in the span iff its centre t + 0.5 lies in [2, 6]: frames 2..5
    assert span.tolist() == [False, False, True, True, True, True, False, False, False, False]
    np.testing.assert_array_equal(edited[~span], source[~span])  # same noise, same scene: bit-identical
    np.testing.assert_allclose(edited, _naive_edit("v_x", 9.7, windows, emb, 1, new), atol=1e-12)
    assert not np.allclose(edited[span], source[span])
    with pytest.raises(ValueError, match="no frame centre"):
        edit_event_frames("v_x", 9.7, [(0.6, 1.4)], emb[:1], 0, new)
    with pytest.raises(ValueError, match="out of range"):
        edit_event_frames("v_x", 9.7, windows, emb, 3, new)


def test_generator_keeps_every_other_stored_frame_bit_identical(tiny: dict[str, Any]) -> None:
    from prvr.benchmarks.capproxy_dataset import read_capproxy_inputs
    from prvr.data.features import open_video_features

    videos, _, _ = read_capproxy_inputs(tiny["paths"]["val_1"], tiny["paths"]["val_2"])
    video = next(v for v in videos if v.split == "train")
    camera_encoder = FakeEncoder("l3")
    texts = [*video.sentences, "a kayak juggles fencing"]
    vectors = camera_encoder.encode_sentences(texts).astype(np.float64)
    camera = {t: v / np.linalg.norm(v) for t, v in zip(texts, vectors)}
    with open_video_features(tiny["dev_root"], "capproxy", "minilm_l3") as store:
        stored = store[video.video_id]
    pair = EventEditGenerator(camera).generate(EditRequest(video, 0, texts[-1], "v_pool#0"), stored)
    assert pair.frames.dtype == stored.dtype
    assert pair.frames[~pair.span].tobytes() == stored[~pair.span].tobytes()
    expected = _naive_edit(video.video_id, video.duration, list(video.windows),
                           np.stack([camera[t] for t in video.sentences]), 0, camera[texts[-1]])
    np.testing.assert_array_equal(pair.frames[pair.span], expected[pair.span].astype(np.float16).astype(stored.dtype))
    assert pair.video_id == synthetic_video_id(video.video_id, 0) and pair.query.text == texts[-1]
    assert pair.query.windows == ((0.0, video.duration / 2),) and pair.query.duration == video.duration


# ----------------------------------------------------------------------------------------------------------------
# the built collection


def test_synthesized_collection_edits_exactly_the_moment(synth: Path, tiny: dict[str, Any]) -> None:
    from prvr.data.features import open_video_features

    records = read_scores(synth, "capproxy_synth")
    captions = read_captions(caption_path(synth, "capproxy_synth", "candidates"))
    moments = read_moments(synth / "capproxy_synth" / "TextData" / "capproxy_synthcandidates.moments.jsonl")
    assert [r["cap_id"] for r in records] == [c.query_id for c in captions] and len(records) == 6
    assert len({(r["source_video"], r["event"]) for r in records}) == 6 and len({r["sentence"] for r in records}) == 6
    pool_texts = {s for v in json.loads(tiny["paths"]["pool"].read_text()).values() for s in v["sentences"]}
    with open_video_features(synth, "capproxy_synth", "minilm_l3") as edited_store, \
            open_video_features(tiny["dev_root"], "capproxy", "minilm_l3") as source_store:
        for record, caption in zip(records, captions):
            assert caption.text == record["sentence"] in pool_texts
            edited, source = edited_store[record["video_id"]], source_store[record["source_video"]]
            (start, end), = moments[record["cap_id"]][0]
            raw_start, raw_end = record["window"]  # the timeline's raw window; the moment is it clamped
            assert (start, end) == (max(0.0, raw_start), min(record["duration"], raw_end))
            centres = np.arange(edited.shape[0]) + 0.5
            inside = (centres >= raw_start) & (centres <= raw_end)
            # the span is the moment's frames, plus the last (partial-second) frame when the raw window runs on
            assert ((centres >= start) & (centres <= end) <= inside).all()
            assert (inside & ~((centres >= start) & (centres <= end)) <= (centres > record["duration"])).all()
            assert edited[~inside].tobytes() == source[~inside].tobytes()
            assert (np.abs(edited[inside].astype(np.float64) - source[inside]).max(axis=1) > 0).all()
            assert record["span_frames"] == inside.sum() and record["edit_share"] == pytest.approx(inside.mean())


def test_synthesis_is_deterministic_per_seed(synth: Path, tiny: dict[str, Any], tmp_path: Path) -> None:
    _synthesize(tiny, tmp_path / "again")
    _assert_same(_outputs(synth), _outputs(tmp_path / "again"))
    _synthesize(tiny, tmp_path / "other", seed=1)
    assert read_scores(tmp_path / "other", "capproxy_synth") != read_scores(synth, "capproxy_synth")


def test_interrupted_synthesis_resumes_to_identical_outputs(synth: Path, tiny: dict[str, Any],
                                                            tmp_path: Path) -> None:
    failing = {"minilm_l3": FakeEncoder("l3", fail_after=2), "minilm_l6": FakeEncoder("l6")}
    with pytest.raises(KeyboardInterrupt):
        _synthesize(tiny, tmp_path, encoders=failing)
    resumed = {"minilm_l3": FakeEncoder("l3"), "minilm_l6": FakeEncoder("l6")}
    _synthesize(tiny, tmp_path, encoders=resumed)
    fresh = {"minilm_l3": FakeEncoder("l3"), "minilm_l6": FakeEncoder("l6")}
    _synthesize(tiny, tmp_path / "fresh", encoders=fresh)
    assert resumed["minilm_l3"].calls == fresh["minilm_l3"].calls - 2  # the two cached chunks were not re-encoded
    _assert_same(_outputs(tmp_path), _outputs(tmp_path / "fresh"))


def test_pool_must_be_disjoint_and_large_enough(tiny: dict[str, Any], tmp_path: Path) -> None:
    paths = tiny["paths"]
    with pytest.raises(ValueError, match="shares"):
        synthesize_corpus(tmp_path, source_root=tiny["dev_root"], val1_path=paths["val_1"], val2_path=paths["val_2"],
                          pool_path=paths["val_2"], encoders=tiny["encoders"], progress=False)
    with pytest.raises(ValueError, match="ask for fewer"):
        _synthesize(tiny, tmp_path, num=10_000)
    manifest = _synthesize(tiny, tmp_path / "novel", num=3, pool="novel")
    assert all(r["novel_words"] for r in read_scores(tmp_path / "novel", "capproxy_synth"))
    dev = [json.loads(paths[name].read_text()) for name in ("val_1", "val_2")]
    known = {w for d in dev for v, entry in d.items() if dev_split(v) == "train" for s in entry["sentences"]
             for w in s.split()}
    novel = {s for entry in json.loads(paths["pool"].read_text()).values() for s in entry["sentences"]
             if any(w not in known and len(w) >= 3 for w in s.split())}
    assert manifest["counts"]["pool_sentences"] == len(novel) > 0


# ----------------------------------------------------------------------------------------------------------------
# the selection signals against naive loops


def test_s_c_and_s_u_match_naive_loops() -> None:
    rng = np.random.default_rng(5)
    a, b, prompt = rng.standard_normal((7, DIM)), rng.standard_normal((7, DIM)), rng.standard_normal(DIM)
    span = np.array([0, 1, 1, 0, 1, 0, 0], dtype=bool)
    cos = [float(np.dot(b[i], prompt) / math.sqrt(np.dot(b[i], b[i]) * np.dot(prompt, prompt)))
           for i in range(7) if span[i]]
    assert cross_modal_relevance(prompt, b, span) == pytest.approx(sum(cos) / len(cos), abs=1e-12)
    pairs = [float(np.dot(a[i], b[i]) / math.sqrt(np.dot(a[i], a[i]) * np.dot(b[i], b[i])))
             for i in range(7) if span[i]]
    assert uni_modal_structure(a, b, span) == pytest.approx(sum(pairs) / len(pairs), abs=1e-12)
    assert uni_modal_structure(a, a, span) == pytest.approx(1.0)


def test_stored_scores_match_a_recomputation(synth: Path, tiny: dict[str, Any]) -> None:
    from prvr.data.features import open_video_features

    records = read_scores(synth, "capproxy_synth")
    with open_video_features(synth, "capproxy_synth", "minilm_l3") as edited_store, \
            open_video_features(tiny["dev_root"], "capproxy", "minilm_l3") as source_store:
        for record in records:
            edited = edited_store[record["video_id"]].astype(np.float64)
            source = source_store[record["source_video"]].astype(np.float64)
            span = np.asarray([bool(np.any(edited[t] != source[t])) for t in range(len(edited))])
            total = sum(np.dot(source[t], edited[t]) / (np.linalg.norm(source[t]) * np.linalg.norm(edited[t]))
                        for t in range(len(edited)) if span[t])
            assert record["s_u"] == pytest.approx(total / span.sum(), abs=1e-9)
            assert -1.0 <= record["s_c"] <= 1.0


class _ToyModel(torch.nn.Module):
    """Score = dot(query, mean of the video's frames): enough to test the margin bookkeeping."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.eye(DIM))

    @property
    def device(self) -> torch.device:
        return self.weight.device

    def encode_videos(self, videos: Any) -> Any:
        from prvr.types import VideoTokens

        return VideoTokens(videos.clip_feats @ self.weight, videos.frame_feats @ self.weight, videos.frame_mask)

    def encode_queries(self, queries: Any) -> torch.Tensor:
        return (queries.tokens * queries.mask[..., None]).sum(1)

    def score(self, q: torch.Tensor, tokens: Any) -> dict[str, torch.Tensor]:
        mask = tokens.frame_mask[..., None].float()
        pooled = (tokens.frame * mask).sum(1) / mask.sum(1)  # (V, D)
        return {"total": q @ pooled.T}


def test_model_margins_match_a_naive_double_loop(synth: Path) -> None:
    from prvr.config import DataConfig
    from prvr.data.dataset import PRVRCorpus, iter_query_batches, iter_video_batches

    corpus = PRVRCorpus(synth, "capproxy_synth", "candidates",
                        DataConfig(video_feature="minilm_l3", text_feature="minilm_l6", max_query_tokens=5))
    model = _ToyModel().eval()
    margins, ranks = model_margins(model, corpus, batch_videos=4, query_chunk=4, video_chunk=3)
    with torch.no_grad():
        videos = [model.encode_videos(batch) for batch in iter_video_batches(corpus, 1)]
        for batch, targets in iter_query_batches(corpus, 1):
            q, target = model.encode_queries(batch), int(targets[0])
            row = [float(model.score(q, v)["total"][0, 0]) for v in videos]
            own = row[target]
            others = [s for j, s in enumerate(row) if j != target]
            index = corpus.queries.index(next(r for r in corpus.queries if r.video_id == corpus.video_ids[target]))
            assert margins[index] == pytest.approx(own - max(others), abs=1e-6)
            assert ranks[index] == 1 + sum(s >= own for s in others)


def test_select_matches_a_naive_filter_and_ranking() -> None:
    rng = np.random.default_rng(9)
    scores = [{"s_c": float(a), "s_u": float(b), "margin": float(m)} for a, b, m in rng.random((40, 3))]
    hybrid = SelectionConfig(cross_modal=True, structure=True, model=True, min_cross_modal=0.3, min_structure=0.4,
                             budget=5)
    passing = [i for i in range(40) if scores[i]["s_c"] >= 0.3 and scores[i]["s_u"] >= 0.4]
    worst = []
    for _ in range(5):  # repeatedly pick the lowest margin left
        best = min((i for i in passing if i not in worst), key=lambda i: scores[i]["margin"])
        worst.append(best)
    assert select(scores, hybrid) == sorted(worst)
    only_sc = SelectionConfig(cross_modal=True, min_cross_modal=0.5, budget=100)
    assert select(scores, only_sc) == [i for i in range(40) if scores[i]["s_c"] >= 0.5]
    random_draw = select(scores, SelectionConfig(budget=7, seed=3))
    assert len(random_draw) == 7 and random_draw == select(scores, SelectionConfig(budget=7, seed=3))
    assert random_draw != select(scores, SelectionConfig(budget=7, seed=4))
    assert hybrid.name == "sc+su+model" and SelectionConfig().name == "unselected"
    with pytest.raises(ValueError, match="no \\['margin'\\] score"):
        select([{"s_c": 1.0, "s_u": 1.0}], hybrid)


def test_select_split_writes_a_trainable_split(synth: Path, tmp_path: Path) -> None:
    import shutil

    from prvr.benchmarks.trivial import TrivialConfig, TrivialPRVR, _checkpoint_payload
    from prvr.config import DataConfig
    from prvr.data.dataset import PRVRCorpus

    root = tmp_path / "data"
    shutil.copytree(synth, root)
    model = TrivialPRVR(DIM, DIM, TrivialConfig(hidden_size=8))
    checkpoint = tmp_path / "best.pt"
    torch.save(_checkpoint_payload(model, DIM, DIM), checkpoint)
    config = SelectionConfig(cross_modal=True, min_cross_modal=-1.0, model=True, budget=3)
    summary = select_split(root, config, checkpoint=checkpoint)
    assert summary["split"] == "sel_sc_model" and summary["selected"] == 3 and summary["candidates"] == 6
    lines = selection_path(root, "capproxy_synth", "sel_sc_model").read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    assert len(rows) == 6 and sum(r["selected"] for r in rows) == 3
    kept = sorted(r["margin"] for r in rows if r["selected"])
    assert kept == sorted(r["margin"] for r in rows)[:3]  # the three the model serves worst
    data = DataConfig(video_feature="minilm_l3", text_feature="minilm_l6", max_query_tokens=5)
    corpus = PRVRCorpus(root, "capproxy_synth", "sel_sc_model", data)
    assert sorted(q.query_id for q in corpus.queries) == sorted(r["cap_id"] for r in rows if r["selected"])
    assert all(q.windows for q in corpus.queries)
    manifest = json.loads((root / "capproxy_synth" / "manifest.json").read_text())
    assert manifest["selections"]["sel_sc_model"]["checkpoint"]["sha256"]
    with pytest.raises(ValueError, match="needs --checkpoint"):
        select_split(root, SelectionConfig(model=True))


def test_cli_synthesize_and_select(tiny: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util
    import sys

    from click.testing import CliRunner

    import prvr.text_encoders

    monkeypatch.setattr(prvr.text_encoders, "load_encoder", lambda name, **_: FakeEncoder(name[-2:]))
    script = Path(__file__).resolve().parents[1] / "scripts" / "build_capproxy.py"
    spec = importlib.util.spec_from_file_location("build_capproxy_script", script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "build_capproxy_script", module)
    spec.loader.exec_module(module)
    paths, out = tiny["paths"], tmp_path / "data"
    result = CliRunner().invoke(module.main, [
        "synthesize", "--out", str(out), "--source-root", str(tiny["dev_root"]), "--val1", str(paths["val_1"]),
        "--val2", str(paths["val_2"]), "--pool", str(paths["pool"]), "--num-candidates", "4", "--pool-filter", "all",
        "--chunk-size", "3", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["counts"]["candidates"] == 4
    result = CliRunner().invoke(module.main, ["select", "--root", str(out), "--structure", "0.0", "--budget", "2"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["split"] == "sel_su" and json.loads(result.output)["selected"] == 2
    result = CliRunner().invoke(module.main, ["select", "--root", str(out), "--split", "candidates"])
    assert result.exit_code == 1 and "candidates' own" in result.output
