"""Tests of the extra training data (issue 17, parts 1 and 4): the train.json corpus builder and its disjointness
check, joint training over several splits, fine-tuning with ``--init-from``, and the unseen-words split."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from prvr.benchmarks.unseen_words import content_words, unseen_word_queries, unseen_words, vocabulary
from prvr.data.subsets import find_query_subsets, subset_path, write_query_subset
from prvr.types import QueryRecord

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "activitynet_captions"
HAVE_TRAIN = all((DATA / name).is_file() for name in ("train.json", "val_1.json", "val_2.json"))
needs_train = pytest.mark.skipif(not HAVE_TRAIN, reason="needs ../shared/data/activitynet_captions/train.json")


def _entry(duration: float, sentences: list[str], windows: list[list[float]]) -> dict[str, Any]:
    return {"duration": duration, "timestamps": windows, "sentences": sentences}


# ----------------------------------------------------------------------------------------------------------------
# the unseen-words rule


def test_content_words_rule_on_hand_written_sentences() -> None:
    assert content_words("The man is playing a GUITAR on stage.") == {"man", "playing", "guitar", "stage"}
    # length >= 3, alphabetic runs only (digits and apostrophes split tokens), stopwords out
    assert content_words("He's up on 2 ox-carts, isn't he?") == {"carts"}
    assert content_words("A an the of to it") == set()


def test_unseen_word_queries_on_hand_written_sentences() -> None:
    train = ["A man plays the guitar.", "Two women are dancing on a stage."]
    queries = [QueryRecord("v1#enc#0", "v1", "The man dances on the stage"),  # 'dances' is new
               QueryRecord("v1#enc#1", "v1", "Women playing? No: a man plays guitar"),  # 'playing' new
               QueryRecord("v2#enc#0", "v2", "The women are dancing, the man plays"),  # all known
               QueryRecord("v2#enc#1", "v2", "It is on a stage to be")]  # stopwords and a known word
    assert vocabulary(train) == {"man", "plays", "guitar", "two", "women", "dancing", "stage"}
    assert unseen_words(queries[0].text, vocabulary(train)) == ["dances"]
    assert [q.query_id for q in unseen_word_queries(queries, train)] == ["v1#enc#0", "v1#enc#1"]


def test_query_subset_files_round_trip(tmp_path: Path) -> None:
    path = write_query_subset(tmp_path, "col", "val", "unseen_words", ["a#enc#0", "b#enc#1"])
    assert path == subset_path(tmp_path, "col", "val", "unseen_words")
    assert path.name == "colval.unseen_words.qids.txt"
    assert find_query_subsets(tmp_path, "col", "val") == {"unseen_words": ["a#enc#0", "b#enc#1"]}
    assert find_query_subsets(tmp_path, "col", "train") == {}
    with pytest.raises(ValueError, match="subset name"):
        subset_path(tmp_path, "col", "val", "a.b")


def test_subset_metrics_take_the_full_split_ranks() -> None:
    from prvr.engine import subset_metrics

    ranks = np.array([1, 3, 20, 200])
    result = subset_metrics(ranks, ["a", "b", "c", "d"], {"hard": ["c", "d"]})["hard"]
    assert result["R@1"] == 0 and result["R@100"] == 50.0 and result["num_queries"] == 2
    with pytest.raises(ValueError, match="not queries of the split"):
        subset_metrics(ranks, ["a", "b", "c", "d"], {"bad": ["zz"]})


# ----------------------------------------------------------------------------------------------------------------
# the disjointness check and the builder


def test_disjointness_check_refuses_an_overlapping_corpus(tmp_path: Path) -> None:
    from prvr.benchmarks.capproxy_dataset import build_pretrain_corpus, check_disjoint

    dev = tmp_path / "val_1.json"
    dev.write_text(json.dumps({"v_dev": _entry(10.0, ["a man runs."], [[0, 5]])}))
    clean = tmp_path / "train_clean.json"
    clean.write_text(json.dumps({"v_other": _entry(8.0, ["a dog jumps."], [[1, 4]])}))
    overlapping = tmp_path / "train_overlap.json"
    overlapping.write_text(json.dumps({"v_other": _entry(8.0, ["x."], [[1, 4]]),
                                       " v_dev": _entry(10.0, ["y."], [[0, 5]])}))  # same id once stripped
    assert check_disjoint(clean, [dev]) == {"train_videos": 1, "dev_videos": 1, "shared": 0}
    with pytest.raises(ValueError, match="shares 1 of its 2 videos"):
        check_disjoint(overlapping, [dev])
    with pytest.raises(ValueError, match="shares 1"):  # the builder checks before any encoding
        build_pretrain_corpus(tmp_path / "out", train_path=overlapping, dev_paths=[dev], encoders={})
    assert not (tmp_path / "out").exists()


@needs_train
def test_real_train_json_is_disjoint_from_dev() -> None:
    from prvr.benchmarks.capproxy_dataset import check_disjoint

    counts = check_disjoint(DATA / "train.json", [DATA / "val_1.json", DATA / "val_2.json"])
    assert counts["train_videos"] == 10009 and counts["shared"] == 0


@needs_train
def test_build_pretrain_corpus_on_a_handful_of_train_videos(tmp_path: Path) -> None:
    from test_capproxy import _have_backbones

    if not _have_backbones():
        pytest.skip("needs the bench extra (onnxruntime + packaged MiniLM models)")
    import importlib.util

    import torch

    from prvr.data.captions import caption_path, read_captions, read_moments
    from prvr.data.features import open_query_features, open_video_features

    source = json.loads((DATA / "train.json").read_text())
    chosen = dict(list(source.items())[:4])
    small = tmp_path / "train_small.json"
    small.write_text(json.dumps(chosen))
    script = Path(__file__).resolve().parents[1] / "scripts" / "build_capproxy.py"
    spec = importlib.util.spec_from_file_location("build_capproxy_script_pretrain", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    threads = torch.get_num_threads()
    try:
        result = CliRunner().invoke(module.main, [
            "build-pretrain", "--out", str(tmp_path / "data"), "--train", str(small), "--dev",
            str(DATA / "val_1.json"), "--dev", str(DATA / "val_2.json"), "--threads", "1", "--no-progress"])
    finally:
        torch.set_num_threads(threads)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    n_sentences = sum(len(entry["sentences"]) for entry in chosen.values())
    assert summary["splits"]["train"]["videos"] == 4
    assert summary["splits"]["train"]["queries"] == n_sentences  # every sentence is also a query
    assert summary["disjoint_from"]["shared"] == 0
    root = tmp_path / "data"
    records = read_captions(caption_path(root, "capproxy_pretrain", "train"))
    # self-paired: the queries are the timeline's own sentences, in order, with their own windows
    for video_id, entry in chosen.items():
        texts = [r.text for r in records if r.video_id == video_id]
        assert texts == [" ".join(s.split()) for s in entry["sentences"]]
    moments = read_moments(root / "capproxy_pretrain" / "TextData" / "capproxy_pretraintrain.moments.jsonl")
    assert len(moments) == n_sentences
    manifest = json.loads((root / "capproxy_pretrain" / "manifest.json").read_text())
    assert manifest["pairing"].startswith("self") and set(manifest["disjoint_from"]) >= {"val_1.json", "val_2.json"}
    assert manifest["recipe"]["scene_noise"] == 1.0 and manifest["recipe"]["frame_noise"] == 0.5
    with open_video_features(root, "capproxy_pretrain", "minilm_l3") as store:
        frames = store[next(iter(chosen))]
        assert frames.shape[1] == 384
        np.testing.assert_allclose(np.linalg.norm(frames.astype(np.float32), axis=1), 1.0, atol=2e-3)
    with open_query_features(root, "capproxy_pretrain", "minilm_l6") as store:
        assert store[records[0].query_id].shape[1] == 384


# ----------------------------------------------------------------------------------------------------------------
# joint training and --init-from, on the tiny synthetic corpus


@pytest.fixture(scope="module")
def two_collections(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import helpers

    from prvr.data.synthetic import make_synthetic_corpus

    root = tmp_path_factory.mktemp("joint") / "data"
    make_synthetic_corpus(root, "synth", splits={"train": 10, "val": 6}, seed=3, text_dim=helpers.TEXT_DIM,
                          frame_range=(20, 30))
    make_synthetic_corpus(root, "extra", splits={"train": 7}, seed=4, text_dim=helpers.TEXT_DIM,
                          frame_range=(20, 30))
    return root


def _tiny_config() -> Any:
    import helpers

    return helpers.tiny_experiment_config()


def test_joint_corpus_adds_up_and_refuses_overlap(two_collections: Path) -> None:
    from prvr.commands.train_cli import open_train_corpus, parse_train_split
    from prvr.data.dataset import JointCorpus, PRVRCorpus, make_train_loader

    config = _tiny_config()
    main = PRVRCorpus(two_collections, "synth", "train", config.data)
    extra = PRVRCorpus(two_collections, "extra", "train", config.data)
    joint = open_train_corpus(str(two_collections), "synth", ("train", "extra:train"), config)
    assert isinstance(joint, JointCorpus)
    assert len(joint.video_ids) == len(main.video_ids) + len(extra.video_ids) == 17
    assert len(joint.queries) == len(main.queries) + len(extra.queries)
    seen_videos, seen_queries = set(), 0
    for videos, queries in make_train_loader(joint, 5, seed=0, epoch=0):
        seen_videos |= set(videos.video_ids)
        seen_queries += len(queries)
    assert seen_videos == set(joint.video_ids) and seen_queries == len(joint.queries)
    np.testing.assert_array_equal(joint.video(extra.video_ids[0])[1], extra.video(extra.video_ids[0])[1])
    assert parse_train_split("train", "synth") == ("synth", "train")
    assert parse_train_split("extra:train", "synth") == ("extra", "train")
    with pytest.raises(ValueError, match="must be disjoint"):
        JointCorpus([main, PRVRCorpus(two_collections, "synth", "train", config.data)])
    with pytest.raises(ValueError, match="same split twice"):
        open_train_corpus(str(two_collections), "synth", ("train", "synth:train"), config)


def _train(args: list[str]) -> Any:
    from prvr.cli import main

    return CliRunner().invoke(main, ["train", *args], catch_exceptions=False)


def test_joint_training_then_init_from_round_trip(two_collections: Path, tmp_path: Path) -> None:
    import torch

    from prvr.checkpoint import read_checkpoint

    common = ["--data", str(two_collections), "--collection", "synth", "--preset", "tiny", "--no-progress",
              "--video-feature", "synth", "--text-feature", "synth", "--set", "train.epochs=1",
              "--set", "model.block.widths=[null]", "--set", "model.registers.diffusion.steps=2"]
    pre = tmp_path / "pre"
    result = _train([*common, "--out", str(pre), "--train-split", "extra:train"])
    assert result.exit_code == 0, result.output
    joint = tmp_path / "joint"
    result = _train([*common, "--out", str(joint), "--train-split", "train", "--train-split", "extra:train"])
    assert result.exit_code == 0, result.output
    header = json.loads(result.output.splitlines()[0])
    assert header["train_videos"] == 17 and header["train_splits"] == "synth:train+extra:train"

    fine = tmp_path / "fine"
    result = _train([*common, "--out", str(fine), "--init-from", str(pre / "best.pt"), "--set", "train.lr=0"])
    assert result.exit_code == 0, result.output
    assert json.loads((fine / "init_from.json").read_text())["init_from"] == str(pre / "best.pt")
    # lr 0: fine-tuning changes nothing, so the weights are exactly the pre-trained ones (loaded, not re-drawn)
    before, after = read_checkpoint(pre / "best.pt")["model"], read_checkpoint(fine / "last.pt")["model"]
    assert before.keys() == after.keys()
    for key in before:
        torch.testing.assert_close(after[key], before[key], rtol=0, atol=0, msg=key)
    history = [json.loads(line) for line in (fine / "metrics.jsonl").read_text().splitlines()]
    assert len(history) == 1  # a fresh history and schedule: the pre-training's epochs are not counted


def test_init_from_config_mismatch_names_both_fields(two_collections: Path, tmp_path: Path) -> None:
    from prvr.checkpoint import save_checkpoint
    from prvr.engine import check_init_compatible, config_for_corpus, config_differences
    from prvr.data.dataset import PRVRCorpus
    from prvr.model import DreamPRVR

    config = _tiny_config()
    config = config_for_corpus(config, PRVRCorpus(two_collections, "synth", "train", config.data))
    import dataclasses

    size = config.model.hidden_size
    wider = dataclasses.replace(config, name="wider", model=dataclasses.replace(config.model, hidden_size=2 * size,
                                                                               ffn_size=8 * size))
    assert config_differences(config.model, wider.model, "model.") == [
        ("model.hidden_size", size, 2 * size), ("model.ffn_size", config.model.ffn_size, 8 * size)]
    check_init_compatible(config, dataclasses.replace(config, seed=5), "x.pt")  # seed / train / loss may differ
    with pytest.raises(ValueError, match=r"model\.hidden_size: %d in the checkpoint \(wider\), %d in this run "
                       r"\(tiny\); model\.ffn_size" % (2 * size, size)):
        check_init_compatible(wider, config, "x.pt")
    path = tmp_path / "wider.pt"
    save_checkpoint(path, model=DreamPRVR(wider.model), config=wider, epoch=1)
    result = _train(["--data", str(two_collections), "--collection", "synth", "--preset", "tiny", "--no-progress",
                     "--video-feature", "synth", "--text-feature", "synth", "--set", "train.epochs=1",
                     "--set", "model.block.widths=[null]", "--set", "model.registers.diffusion.steps=2",
                     "--out", str(tmp_path / "run"), "--init-from", str(path)])
    assert result.exit_code == 1
    assert "model.hidden_size" in result.output and "in the checkpoint (wider)" in result.output


def test_eval_reports_query_subsets(two_collections: Path, tmp_path: Path, tiny_checkpoint: Path) -> None:
    from prvr.cli import main
    from prvr.data.dataset import PRVRCorpus

    config = _tiny_config()
    pre = tmp_path / "run"
    result = _train(["--data", str(two_collections), "--collection", "synth", "--preset", "tiny", "--no-progress",
                     "--video-feature", "synth", "--text-feature", "synth", "--set", "train.epochs=1",
                     "--set", "model.block.widths=[null]", "--set", "model.registers.diffusion.steps=2",
                     "--out", str(pre)])
    assert result.exit_code == 0, result.output
    val = PRVRCorpus(two_collections, "synth", "val", config.data)
    chosen = [q.query_id for q in val.queries[::2]]
    write_query_subset(two_collections, "synth", "val", "odd", chosen)
    try:
        result = CliRunner().invoke(main, ["eval", "--checkpoint", str(pre / "best.pt"), "--data",
                                           str(two_collections), "--collection", "synth", "--split", "val",
                                           "--json"])
        assert result.exit_code == 0, result.output
        metrics = json.loads(result.output)
        assert metrics["subsets"]["odd"]["num_queries"] == len(chosen)
        assert metrics["num_queries"] == len(val.queries)
        text = CliRunner().invoke(main, ["eval", "--checkpoint", str(pre / "best.pt"), "--data",
                                         str(two_collections), "--collection", "synth", "--split", "val"]).output
        assert "synth/val subset odd: R@1" in text
    finally:
        subset_path(two_collections, "synth", "val", "odd").unlink()


def test_trivial_reference_joint_and_init_from(two_collections: Path, tmp_path: Path) -> None:
    from prvr.benchmarks.trivial import TrivialConfig, train_trivial
    from prvr.config import DataConfig

    data = DataConfig(video_feature="synth", text_feature="synth")
    config = TrivialConfig(epochs=1, hidden_size=16)
    records = train_trivial(two_collections, "synth", data, tmp_path / "pre", config,
                            train_parts=[("extra", "train")])
    assert len(records) == 1 and (tmp_path / "pre" / "best.pt").is_file()
    records = train_trivial(two_collections, "synth", data, tmp_path / "ft",
                            TrivialConfig(epochs=1, hidden_size=16, lr=0.0), init_from=tmp_path / "pre" / "best.pt")
    assert records[0]["val"]["SumR"] == train_trivial(
        two_collections, "synth", data, tmp_path / "pre-eval", TrivialConfig(epochs=1, hidden_size=16, lr=0.0),
        init_from=tmp_path / "pre" / "last.pt")[0]["val"]["SumR"]
    with pytest.raises(ValueError, match="hidden_size: 16 in the checkpoint, 32 in this run"):
        train_trivial(two_collections, "synth", data, tmp_path / "bad", TrivialConfig(epochs=1, hidden_size=32),
                      init_from=tmp_path / "pre" / "best.pt")


def test_grid_table_shows_the_subset_of_the_best_epoch(tmp_path: Path) -> None:
    from prvr.benchmarks.capproxy_grid import table_markdown, table_rows

    def val(sumr: float, unseen: float | None) -> dict[str, Any]:
        metrics: dict[str, Any] = {"R@1": 1.0, "R@5": 2.0, "R@10": 3.0, "R@100": 4.0, "SumR": sumr}
        if unseen is not None:
            metrics["subsets"] = {"unseen_words": {**metrics, "SumR": unseen}}
        return metrics

    for name, records in {"trivial-s0": [val(10.0, 5.0), val(12.0, 6.5)], "dreamprvr-s0": [val(9.0, None)]}.items():
        folder = tmp_path / name
        folder.mkdir()
        lines = [json.dumps({"epoch": i + 1, "val": v, "wall_seconds": 60.0 * (i + 1)}) for i, v in enumerate(records)]
        (folder / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    text = table_markdown(table_rows(tmp_path), "unseen_words")
    assert "unseen_words SumR" in text.splitlines()[0]
    trivial_line = next(line for line in text.splitlines() if line.startswith("| trivial"))
    assert "| 2 | 2 |" in trivial_line and "| 12.00 |" in trivial_line and "| 6.50 |" in trivial_line
    assert "| - | - | - | - | - |" in next(line for line in text.splitlines() if line.startswith("| DreamPRVR |"))
