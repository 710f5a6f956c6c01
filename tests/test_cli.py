from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from prvr.cli import main

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture()
def runner() -> CliRunner:
    return CliRunner()


def run(runner: CliRunner, *args: str, code: int = 0):
    result = runner.invoke(main, list(args), catch_exceptions=False)
    assert result.exit_code == code, result.output
    return result


def test_help_lists_the_commands(runner) -> None:
    out = run(runner, "--help").output
    for command in ("train", "eval", "data", "presets", "config", "quickstart"):
        assert command in out


def test_presets_and_config(runner) -> None:
    rows = json.loads(run(runner, "presets", "--json").output)
    sizes = {row["preset"]: row["parameters"] for row in rows}
    assert 33e6 < sizes["activitynet"] < 41e6 and sizes["cpu"] < sizes["activitynet"]
    config = json.loads(run(runner, "config", "--preset", "tvr", "--set", "train.epochs=3").output)
    assert config["train"]["epochs"] == 3 and config["model"]["registers"]["num_registers"] == 8
    bad = run(runner, "config", "--set", "model.nope=1", code=1)
    assert "unknown key" in bad.output


def test_synth_train_eval_round_trip(runner, tmp_path) -> None:
    data = tmp_path / "data"
    run(runner, "data", "synth", "--out", str(data), "--train-videos", "40", "--val-videos", "20",
        "--test-videos", "20", "--seed", "1")
    check = json.loads(run(runner, "data", "check", "--data", str(data), "--collection", "synth",
                           "--split", "val", "--video-feature", "synth", "--text-feature", "synth").output)
    assert check["videos"] == 20 and check["has_moments"]
    out = run(runner, "train", "--data", str(data), "--collection", "synth", "--preset", "tiny",
              "--out", str(tmp_path / "run"), "--set", "train.epochs=2", "--video-feature", "synth", "--text-feature", "synth",
              "--no-progress").output
    lines = [json.loads(line) for line in out.strip().splitlines()]
    assert [line["epoch"] for line in lines if "epoch" in line] == [1, 2]
    assert lines[-1]["checkpoint"].endswith("best.pt")
    metrics_file = tmp_path / "metrics.json"
    result = json.loads(run(runner, "eval", "--checkpoint", str(tmp_path / "run" / "best.pt"), "--data", str(data),
                            "--collection", "synth", "--split", "test", "--json", "--out",
                            str(metrics_file)).output)
    assert set(result) >= {"R@1", "R@5", "R@10", "R@100", "SumR", "MedR", "MeanR"}
    assert json.loads(metrics_file.read_text())["SumR"] == result["SumR"]
    text = run(runner, "eval", "--checkpoint", str(tmp_path / "run" / "best.pt"), "--data", str(data),
               "--collection", "synth", "--split", "test").output
    assert "SumR" in text


def test_bad_inputs_exit_1_with_a_message(runner, tmp_path) -> None:
    data = tmp_path / "data"
    run(runner, "data", "synth", "--out", str(data), "--train-videos", "10", "--val-videos", "4",
        "--test-videos", "4")
    missing_split = run(runner, "train", "--data", str(data), "--collection", "synth", "--out",
                        str(tmp_path / "r"), "--train-split", "nosuch", "--set", "data.video_feature=synth",
                        "--set", "data.text_feature=synth", code=1)
    assert "Error:" in missing_split.output and "nosuch" in missing_split.output
    wrong_feature = run(runner, "data", "check", "--data", str(data), "--collection", "synth", code=1)
    assert "Error:" in wrong_feature.output
    not_a_checkpoint = tmp_path / "fake.pt"
    not_a_checkpoint.write_bytes(b"not a checkpoint")
    bad_ckpt = run(runner, "eval", "--checkpoint", str(not_a_checkpoint), "--data", str(data), "--collection",
                   "synth", code=1)
    assert "cannot be read" in bad_ckpt.output
    absent = run(runner, "eval", "--checkpoint", str(tmp_path / "absent.pt"), "--data", str(data), "--collection",
                 "synth", code=1)
    assert "does not exist" in absent.output
    usage = run(runner, "train", "--data", str(data), code=2)
    assert "Missing option" in usage.output


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data is absent")
def test_annotations_command_on_real_files(runner) -> None:
    out = json.loads(run(runner, "data", "annotations", str(SHARED / "tvr" / "tvr_val_release.jsonl")).output)
    assert out["queries"] == 10895 and out["videos"] == 2179 and out["with_timestamps"] == 10895
    out = json.loads(run(runner, "data", "annotations", str(SHARED / "charades_sta" / "charades_sta_test.txt"),
                         "--format", "charades").output)
    assert out["queries"] == 3720


def test_build_index_and_query_commands(runner, tmp_path) -> None:
    data = tmp_path / "data"
    run(runner, "data", "synth", "--out", str(data), "--train-videos", "12", "--val-videos", "6",
        "--test-videos", "6")
    run(runner, "train", "--data", str(data), "--collection", "synth", "--preset", "tiny", "--out",
        str(tmp_path / "run"), "--set", "train.epochs=1", "--video-feature", "synth", "--text-feature", "synth",
        "--no-progress")
    index_dir = tmp_path / "index"
    out = json.loads(run(runner, "build-index", "--checkpoint", str(tmp_path / "run" / "best.pt"), "--data",
                         str(data), "--collection", "synth", "--split", "test", "--out", str(index_dir),
                         "--no-progress").output)
    assert out["videos"] == 6 and out["generation"] == 1
    assert list((index_dir / "models").glob("*.pt"))  # the checkpoint travels with the index
    no_encoder = run(runner, "query", "a dog kicks a ball", "--index", str(index_dir), code=1)
    assert "Error:" in no_encoder.output and "search_features" in no_encoder.output
    empty = run(runner, "query", "   ", "--index", str(index_dir), code=1)
    assert "empty" in empty.output
    missing = run(runner, "query", "a dog", "--index", str(tmp_path), code=1)
    assert "not an index directory" in missing.output


def test_eval_reports_moment_metrics_with_a_moment_checkpoint(runner, tmp_path) -> None:
    data = tmp_path / "data"
    run(runner, "data", "synth", "--out", str(data), "--train-videos", "30", "--val-videos", "10",
        "--test-videos", "10", "--seed", "2")
    features = ("--video-feature", "synth", "--text-feature", "synth")
    run(runner, "train", "--data", str(data), "--collection", "synth", "--preset", "tiny", "--out",
        str(tmp_path / "run"), "--set", "train.epochs=1", *features, "--no-progress")
    run(runner, "train-moments", "--data", str(data), "--collection", "synth", "--preset", "tiny", "--out",
        str(tmp_path / "moments"), "--set", "train.epochs=1", *features, "--no-progress")
    args = ["eval", "--checkpoint", str(tmp_path / "run" / "best.pt"), "--data", str(data), "--collection", "synth",
            "--split", "test", "--moment-checkpoint", str(tmp_path / "moments" / "best.pt")]
    result = json.loads(run(runner, *args, "--json").output)
    assert result["moments"]["queries"] > 0
    assert set(result["moments"]) >= {"R1@0.3", "R1@0.5", "R1@0.7", "mAP"}
    assert "moments:" in run(runner, *args).output

    # select-moments re-measures the grid on a checkpoint and records the best setting in it
    moment_checkpoint = tmp_path / "moments" / "best.pt"
    selected = json.loads(run(runner, "select-moments", "--checkpoint", str(moment_checkpoint), "--data", str(data),
                              "--collection", "synth", "--max-queries", "12", "--no-progress").output)
    from prvr.moments.localizer import load_localizer, read_moment_checkpoint
    from prvr.moments.train import inference_grid

    recorded = read_moment_checkpoint(moment_checkpoint)["inference_selection"]
    assert selected["queries"] == recorded["queries"] == 12 and recorded["rows"] == selected["inference_selection"]
    assert len(recorded["rows"]) == len(inference_grid(load_localizer(moment_checkpoint).config))
    assert load_localizer(moment_checkpoint).config.inference.method == selected["chosen_inference"]["method"]
    missing = run(runner, "select-moments", "--checkpoint", str(moment_checkpoint), "--data", str(data),
                  "--collection", "synth", "--split", "nope", code=1).output
    assert "nope" in missing and "Traceback" not in missing
    (data / "synth" / "TextData" / "synthtest.moments.jsonl").unlink()
    assert "no timestamps" in run(runner, *args, code=1).output


def test_every_command_is_registered_on_the_group(runner) -> None:
    top = {"build-index", "config", "data", "demo", "eval", "extract", "extract-text", "index", "localize", "presets",
           "query", "quickstart", "select-moments", "serve", "train", "train-moments"}
    assert set(main.commands) == top
    assert set(main.commands["data"].commands) == {"synth", "check", "annotations"}
    assert set(main.commands["index"].commands) == {"info", "add", "remove", "calibrate", "prune"}
    out = run(runner, "--help").output
    assert all(f"  {name} " in out for name in top)


def _videos_or_data(tmp_path: Path, config=None, **given):
    from prvr.commands.common import corpus_to_index
    from prvr.config import load_preset

    options = {"videos": (), "root": None, "collection": None, "split": None, "backbone": None, "fps": 1.0,
               "device": "cpu", "progress": False, **given}
    return corpus_to_index(config or load_preset("tiny"), str(tmp_path / "index"), **options)


BUILD_INDEX = {"split_is_option": False, "verb": "index", "match_indexed_videos": False,
               "check_feature_backbone": True}
INDEX_ADD = {"split_is_option": True, "verb": "add", "match_indexed_videos": True, "check_feature_backbone": False}


def test_videos_or_data_refuses_both_and_neither_in_each_commands_words(tmp_path) -> None:
    video = tmp_path / "a.mp4"
    video.write_bytes(b"")
    with pytest.raises(ValueError) as error:
        _videos_or_data(tmp_path, videos=(str(video),), root=str(tmp_path), split="test", **BUILD_INDEX)
    assert str(error.value) == "give either --videos or --data/--collection, not both"
    with pytest.raises(ValueError) as error:
        _videos_or_data(tmp_path, videos=(str(video),), split="val", **INDEX_ADD)
    assert str(error.value) == "give either --videos or --data/--collection/--split, not both"
    with pytest.raises(ValueError) as error:
        _videos_or_data(tmp_path, root=str(tmp_path), split="test", **BUILD_INDEX)
    assert str(error.value) == ("nothing to index: give --data ROOT --collection NAME (features in the standard "
                                "layout) or --videos DIR (video files)")
    with pytest.raises(ValueError) as error:
        _videos_or_data(tmp_path, root=str(tmp_path), collection="synth", **INDEX_ADD)
    assert str(error.value) == ("nothing to add: give --data ROOT --collection NAME --split SPLIT (features in the "
                                "standard layout) or --videos DIR (video files)")


def test_videos_or_data_opens_the_split_of_the_data_options(tmp_path) -> None:
    from prvr.config import apply_overrides, load_preset
    from prvr.data.synthetic import make_synthetic_corpus

    config = apply_overrides(load_preset("tiny"), ["data.video_feature=synth", "data.text_feature=synth"])
    make_synthetic_corpus(tmp_path / "data", "synth", splits={"val": 3, "test": 2}, video_dim=config.model.video_dim,
                          text_dim=config.model.text_dim, frame_range=(4, 6))
    data = {"root": str(tmp_path / "data"), "collection": "synth"}
    corpus, collection = _videos_or_data(tmp_path, config, **data, split="test", **BUILD_INDEX)
    assert (collection, corpus.split, len(corpus.video_ids)) == ("synth", "test", 2)
    corpus, collection = _videos_or_data(tmp_path, config, **data, split="val", **INDEX_ADD)
    assert (collection, corpus.split, len(corpus.video_ids)) == ("synth", "val", 3)
