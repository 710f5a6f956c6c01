"""The query-bank term stored at index time (issue 20): each video's ``mean top-k s(bank, v)`` against a naive loop,
search with ``s(q, v) - a * t(v)`` against brute force over every video (ids and scores, widened on an exact index),
``index add`` / ``index remove`` keep the bank, and manifests without one load unchanged."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import reference
from prvr.checkpoint import load_model
from prvr.data.dataset import PRVRCorpus, iter_video_batches
from prvr.types import VideoTokens

K, ALPHA = 4, 0.5


def _bank(dim: int, count: int = 15, seed: int = 3) -> np.ndarray:
    vectors = np.random.default_rng(seed).normal(size=(count, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def _naive_terms(checkpoint: Path, corpus: PRVRCorpus, bank: np.ndarray, k: int) -> dict[str, float]:
    """Each video alone, each bank query alone: the mean of the k best scores."""
    model, _, _ = load_model(checkpoint)
    terms = {}
    for batch in iter_video_batches(corpus, 64):
        tokens = model.encode_videos(batch)
        for row, video in enumerate(batch.video_ids):
            one = VideoTokens(tokens.clip[row:row + 1], tokens.frame[row:row + 1], tokens.frame_mask[row:row + 1])
            scores = sorted((float(model.score(torch.from_numpy(b[None]), one)["total"][0, 0]) for b in bank),
                            reverse=True)
            terms[video] = float(np.mean(scores[:k]))
    return terms


@pytest.fixture()
def bank_index(synthetic_corpus, tiny_checkpoint, tmp_path) -> dict:
    from prvr.index.builder import build_index

    _, config, _ = load_model(tiny_checkpoint)
    bank = _bank(config.model.hidden_size)
    out = tmp_path / "index"
    build_index(tiny_checkpoint, synthetic_corpus.val, out, collection_name="synth", query_bank=bank, bank_k=K,
                bank_alpha=ALPHA, bank_source="test bank", token_dtype="float32", progress=False)
    return {"dir": out, "bank": bank}


def _stored_terms(index_dir: Path) -> tuple[dict[str, float], dict]:
    from prvr.index.bank import load_bank
    from prvr.index.layout import open_active

    with open_active(index_dir) as active:
        record = active.manifest.query_bank
        ids, terms, _ = load_bank(active.directory, record)
        external = active.db.external_ids([int(i) for i in ids])
    return dict(zip(external, terms.tolist())), record


def test_stored_terms_equal_a_naive_loop(bank_index, synthetic_corpus, tiny_checkpoint) -> None:
    stored, record = _stored_terms(bank_index["dir"])
    assert record["k"] == K and record["alpha"] == ALPHA and record["source"] == "test bank"
    assert record["videos"] == 12 and record["bank_queries"] == 15
    expected = _naive_terms(tiny_checkpoint, synthetic_corpus.val, bank_index["bank"], K)
    assert stored == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("alpha", [0.5, 5.0, -2.0])
def test_search_with_the_term_equals_brute_force(bank_index, alpha: float) -> None:
    from prvr.index.bank import VideoTerm
    from prvr.index.search import search_topk
    from prvr.retriever import Retriever

    with Retriever.load(bank_index["dir"]) as retriever:
        term = retriever.video_term
        assert term is not None
        if alpha != ALPHA:  # the same stored t(v), another weight: the bound must follow it
            term = VideoTerm(term.video_ids, (term.values / ALPHA * alpha).astype(np.float32))
        store, w = retriever.store, retriever.config.model
        ids = store.video_ids
        tokens = store.get(ids)
        queries = np.random.default_rng(11).normal(size=(6, store.dim)).astype(np.float32)
        raw = reference.fused_scores(queries, tokens.clip.numpy(), tokens.frame.numpy(), tokens.frame_mask.numpy(),
                                     clip_weight=w.clip_weight, frame_weight=w.frame_weight)  # (Nq, V)
        corrected = raw - term.of(ids)[None].astype(np.float64)
        for k in (1, 3, 12):
            found = search_topk(retriever.faiss_index, store, queries, k, 1, clip_weight=w.clip_weight,
                                frame_weight=w.frame_weight, video_term=term)
            for row, ranked in enumerate(found):
                order = np.lexsort((ids, -corrected[row]))[:k]
                assert ranked.video_ids.tolist() == ids[order].tolist()
                assert ranked.scores == pytest.approx(corrected[row, order], abs=1e-5)
                assert ranked.certified
        if alpha == ALPHA:  # what Retriever.search_vectors serves is the same ranking
            served = retriever.search_vectors(queries, 3, 1)
            assert [r.video_ids.tolist() for r in served] == [
                ids[np.lexsort((ids, -corrected[row]))[:3]].tolist() for row in range(len(queries))]


def test_add_and_remove_keep_the_bank(bank_index, synthetic_corpus, tiny_checkpoint) -> None:
    from prvr.index.builder import build_index, remove_videos

    test = PRVRCorpus(synthetic_corpus.root, "synth", "test", synthetic_corpus.config.data)
    build_index(tiny_checkpoint, test, bank_index["dir"], collection_name="synth", progress=False)
    stored, record = _stored_terms(bank_index["dir"])
    assert record["videos"] == 16
    expected = _naive_terms(tiny_checkpoint, test, bank_index["bank"], K)
    assert {v: stored[v] for v in expected} == pytest.approx(expected, abs=1e-5)
    with pytest.raises(ValueError, match="first build"):
        build_index(tiny_checkpoint, test, bank_index["dir"], collection_name="synth", query_bank=bank_index["bank"],
                    progress=False)
    remove_videos(bank_index["dir"], [test.video_ids[0]])
    assert _stored_terms(bank_index["dir"])[1] == record  # the file travels with the new generation


def test_manifests_without_a_query_bank_load_unchanged(tiny_index) -> None:
    from prvr.index.layout import open_active
    from prvr.index.manifest import IndexManifest
    from prvr.retriever import Retriever

    with open_active(tiny_index) as active:
        manifest = active.manifest
    assert manifest.query_bank is None
    old = json.loads(manifest.to_json())
    del old["query_bank"]
    assert IndexManifest.from_dict(old) == manifest
    with Retriever.load(tiny_index) as retriever:
        assert retriever.video_term is None
    with pytest.raises(ValueError, match="query_bank"):
        dataclasses.replace(manifest, query_bank={"file": "x"})


def test_build_index_query_bank_options(synthetic_corpus, tiny_checkpoint, query_bert, tmp_path) -> None:
    from click.testing import CliRunner

    import helpers
    from prvr.cli import main
    from prvr.index.layout import open_active

    runner = CliRunner()
    base = ["build-index", "--checkpoint", str(tiny_checkpoint), "--data", str(synthetic_corpus.root),
            "--collection", "synth", "--split", "val", "--no-progress"]
    result = runner.invoke(main, [*base, "--out", str(tmp_path / "split"), "--query-bank", "test", "--bank-k", "3",
                                  "--bank-alpha", "0.7"])
    assert result.exit_code == 0, result.output
    with open_active(tmp_path / "split") as active:
        record = active.manifest.query_bank
    test = PRVRCorpus(synthetic_corpus.root, "synth", "test", synthetic_corpus.config.data)
    assert (record["k"], record["alpha"], record["source"]) == (3, 0.7, "split test")
    assert record["videos"] == 12 and record["bank_queries"] == len(test.queries)

    sentences = tmp_path / "bank.txt"
    sentences.write_text("\n".join(["the dog kicks the ball", "a man runs", "", "a cat jumps over the fence"]) + "\n")
    result = runner.invoke(main, [*base, "--out", str(tmp_path / "file"), "--query-bank", str(sentences),
                                  "--text-backbone", str(query_bert)])
    assert result.exit_code == 0, result.output
    with open_active(tmp_path / "file") as active:
        record = active.manifest.query_bank
    assert record["bank_queries"] == 3 and record["source"] == f"file {sentences.resolve()}"
    assert helpers.WORDS  # the sentences use the query BERT's vocabulary
    result = runner.invoke(main, [*base, "--out", str(tmp_path / "none"), "--query-bank", str(sentences)])
    assert result.exit_code == 1 and "--text-backbone" in result.output, result.output
