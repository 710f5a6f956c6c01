"""Retriever: typed results from raw text through a tiny local BERT, input errors, concurrent searches."""

from __future__ import annotations

import dataclasses
import threading

import pytest
import torch

from index.builder import build_index
from prvr.checkpoint import save_checkpoint
from prvr.config import apply_overrides, load_preset
from prvr.data.dataset import PRVRCorpus, iter_query_batches
from prvr.data.synthetic import make_synthetic_corpus
from prvr.model import DreamPRVR
from prvr.retriever import Retriever, SearchResult
from prvr.text_encoders import TokenFeatureEncoder

TEXT_DIM = 48
WORDS = ["a", "the", "dog", "kicks", "ball", "man", "runs", "cat", "jumps", "over", "fence", "##s", "plays"]


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("retriever")
    make_synthetic_corpus(tmp / "data", "synth", splits={"val": 12}, seed=7, text_dim=TEXT_DIM, frame_range=(20, 30))
    config = apply_overrides(
        load_preset("tiny"),
        ["data.video_feature=synth", "data.text_feature=synth", "model.block.widths=[null]",
         "model.registers.diffusion.steps=2"],
    )
    corpus = PRVRCorpus(tmp / "data", "synth", "val", config.data)
    config = dataclasses.replace(
        config, model=dataclasses.replace(config.model, video_dim=corpus.video_dim, text_dim=corpus.text_dim)
    )
    torch.manual_seed(0)
    save_checkpoint(tmp / "model.pt", model=DreamPRVR(config.model), config=config, epoch=0)
    build_index(tmp / "model.pt", corpus, tmp / "index", collection_name="synth", progress=False)
    return {"dir": tmp / "index", "corpus": corpus, "tmp": tmp}


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    from transformers import BertConfig, BertModel, BertTokenizer

    folder = tmp_path_factory.mktemp("bert")
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    BertTokenizer(str(vocab)).save_pretrained(str(folder))
    torch.manual_seed(0)
    config = BertConfig(vocab_size=5 + len(WORDS), hidden_size=TEXT_DIM, num_hidden_layers=1, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64)
    BertModel(config).save_pretrained(str(folder))
    return folder


def test_search_text_with_local_encoder(index_dir, bert_dir) -> None:
    encoder = TokenFeatureEncoder(bert_dir)
    with Retriever.load(index_dir["dir"], text_encoder=encoder) as retriever:
        results = retriever.search("a dog kicks a ball", k=5)
        assert len(results) == 5 and all(isinstance(r, SearchResult) for r in results)
        assert all(isinstance(r.video_id, str) and isinstance(r.score, float) and r.moments == () for r in results)
        assert set(r.video_id for r in results) <= set(index_dir["corpus"].video_ids)
        assert [r.score for r in results] == sorted((r.score for r in results), reverse=True)
        batch = retriever.search(["a dog kicks a ball", "the cat jumps over the fence"], k=3)
        assert len(batch) == 2 and [r.video_id for r in batch[0]] == [r.video_id for r in results[:3]]
        assert [r.score for r in batch[0]] == pytest.approx([r.score for r in results[:3]], abs=1e-5)  # padding
        # k larger than the index: every video once
        everything = retriever.search("a man runs", k=100, n_candidates=1000)
        assert sorted(r.video_id for r in everything) == sorted(index_dir["corpus"].video_ids)


def test_input_errors(index_dir) -> None:
    with Retriever.load(index_dir["dir"]) as retriever:
        with pytest.raises(RuntimeError, match="no text encoder"):
            retriever.search("a dog", k=3)
        batch, _ = next(iter_query_batches(index_dir["corpus"], 4))
        with pytest.raises(ValueError, match="k must be"):
            retriever.search_features(batch, k=0)
        with pytest.raises(ValueError, match="k must be"):
            retriever.search_features(batch, k=-2)
        with pytest.raises(ValueError, match="empty"):
            retriever.search("   ", k=3)
        with pytest.raises(ValueError, match="empty"):
            retriever.search([], k=3)


def test_no_active_generation_and_missing_index(tmp_path) -> None:
    from services.db import open_database

    with pytest.raises(FileNotFoundError, match="not an index directory"):
        Retriever.load(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with open_database(tmp_path / "empty" / "index.db") as db:
        db.create_schema()
    with pytest.raises(RuntimeError, match="no active index generation"):
        Retriever.load(tmp_path / "empty")


def test_concurrent_searches_match_sequential(index_dir, bert_dir) -> None:
    texts = ["a dog kicks a ball", "the man runs", "a cat plays", "the dog jumps over a fence"]
    with Retriever.load(index_dir["dir"], text_encoder=TokenFeatureEncoder(bert_dir)) as retriever:
        sequential = [retriever.search(text, k=4) for text in texts]
        results: dict[int, list] = {}
        errors: list[BaseException] = []

        def worker(offset: int) -> None:
            try:
                for round_ in range(3):
                    for i, text in enumerate(texts):
                        results[(offset, round_, i)] = retriever.search(text, k=4)
            except BaseException as error:  # surfaced below
                errors.append(error)

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert not errors, errors
    assert len(results) == 2 * 3 * len(texts)
    for (_, _, i), found in results.items():
        assert found == sequential[i]
