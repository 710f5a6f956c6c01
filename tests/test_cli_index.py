"""CLI: `prvr build-index`, `prvr query` (--json / --no-moments / moments table) and `prvr index
info|add|remove|calibrate`, with CliRunner on a tiny random model and a tiny local BERT."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from helpers import write_moment_checkpoint
from prvr.cli import main


@pytest.fixture(scope="module")
def workspace(synthetic_corpus, tiny_checkpoint, query_bert, tmp_path_factory):
    """The shared synthetic corpus (val 12 videos, test 4), tiny checkpoint and query BERT, plus a moment
    checkpoint for the test localiser plugin."""
    tmp = tmp_path_factory.mktemp("cli_index")
    return {"data": synthetic_corpus.root, "checkpoint": tiny_checkpoint, "corpus": synthetic_corpus,
            "bert": query_bert, "moments": write_moment_checkpoint(tmp / "moments.json")}


def _invoke(*args: str) -> tuple[int, str]:
    """Exit code and stdout (stderr carries progress bars of transformers); errors print on stderr, so a failure
    returns stdout + stderr."""
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout if result.exit_code == 0 else result.stdout + result.stderr


def _build(workspace, out, *extra: str) -> None:
    code, output = _invoke("build-index", "--checkpoint", str(workspace["checkpoint"]), "--data", str(workspace["data"]),
                           "--collection", "synth", "--split", "val", "--out", str(out), "--text-backbone",
                           str(workspace["bert"]), "--no-progress", *extra)
    assert code == 0, output


def test_index_lifecycle(workspace, tmp_path) -> None:
    out = tmp_path / "index"
    _build(workspace, out)

    code, output = _invoke("index", "info", str(out), "--json")
    assert code == 0, output
    info = json.loads(output)
    assert info["active"] == "gen-000001" and info["counts"]["videos"] == 12
    assert info["factories"]["clip"] == "IDMap2,Flat" and info["manifest"]["moment_checkpoint"] is None
    code, output = _invoke("index", "info", str(out))
    assert code == 0 and "active generation gen-000001" in output and "IDMap2,Flat" in output

    code, output = _invoke("query", "a dog kicks a ball", "--index", str(out), "-k", "3", "--json")
    assert code == 0, output
    before = json.loads(output)
    assert len(before) == 3 and all(r["moments"] == [] and r["duration"] > 0 for r in before)

    code, output = _invoke("index", "add", str(out), "--data", str(workspace["data"]), "--collection", "synth",
                           "--split", "test", "--no-progress")
    assert code == 0, output
    assert json.loads(output)["videos"] == 16 and json.loads(output)["new_videos"] == 4

    test_ids = workspace["corpus"].split("test").video_ids
    id_file = tmp_path / "ids.txt"
    id_file.write_text("\n".join(test_ids[1:]) + "\n")
    code, output = _invoke("index", "remove", str(out), test_ids[0], "--from-file", str(id_file))
    assert code == 0, output
    assert json.loads(output)["videos"] == 12

    code, output = _invoke("query", "a dog kicks a ball", "--index", str(out), "-k", "3", "--json")
    assert json.loads(output) == before  # add then remove restores the results

    code, output = _invoke("index", "info", str(out), "--json")
    statuses = [g["status"] for g in json.loads(output)["generations"]]
    assert statuses == ["retired", "retired", "active"]

    code, output = _invoke("index", "remove", str(out), "no-such-video")
    assert code == 1 and "not in the active index generation" in output
    code, output = _invoke("index", "remove", str(out))
    assert code == 1 and "no video ids" in output


def test_calibrate_stores_its_choice(workspace, tmp_path) -> None:
    out = tmp_path / "index"
    _build(workspace, out, "--factory", "IVF4,Flat")
    code, output = _invoke("index", "calibrate", str(out), "--target", "0.9", "-k", "5", "--queries", "30",
                           "--candidates", "5,12", "--json")
    assert code == 0, output
    result = json.loads(output)
    assert result["knob"] == "nprobe" and result["query_source"] == "heldout_tokens" and result["stored"]
    assert {e["nprobe"] for e in result["grid"]} == {1, 2, 4} and {e["n_candidates"] for e in result["grid"]} == {5, 12}
    assert (result["num_fit_queries"], result["num_held_out_queries"], result["held_out_fraction"]) == (21, 9, 0.3)
    assert result["margin_method"] == "normal@0.95" and result["held_out_passed"] is not None
    code, output = _invoke("index", "info", str(out), "--json")
    info = json.loads(output)
    defaults = info["search_defaults"]
    assert defaults["nprobe"] == result["chosen"]["nprobe"]
    assert defaults["n_candidates"] == result["chosen"]["n_candidates"]
    stored = info["manifest"]["calibration"]  # the manifest records both recalls, both part sizes, the margin
    for key in ("fit_recall", "held_out_recall", "num_fit_queries", "num_held_out_queries", "margin",
                "held_out_passed", "escalated_from"):
        assert stored[key] == result[key], key
    code, output = _invoke("index", "info", str(out))
    assert code == 0 and "calibrated: fitting part: 21 queries" in output and "held-out part: 9 queries" in output

    from prvr.retriever import Retriever

    with Retriever.load(out) as retriever:  # the Retriever uses the calibrated nprobe
        assert retriever.faiss_index.describe()["clip"]["nprobe"] == result["chosen"]["nprobe"]

    code, output = _invoke("index", "calibrate", str(out), "--data", str(workspace["data"]), "--collection", "synth",
                           "--split", "val", "-k", "5", "--dry-run", "--margin", "0.01", "--held-out-fraction", "0.5",
                           "--cost-by", "latency")
    assert code == 0, output
    assert "synth/val queries" in output and "dry run" in output and "<- chosen" in output
    assert "margin 0.0100, fixed" in output and "held-out part:" in output
    code, output = _invoke("index", "calibrate", str(out), "--data", str(workspace["data"]))
    assert code == 1 and "--data, --collection and --split together" in output
    code, output = _invoke("index", "calibrate", str(out), "--candidates", "a,b")
    assert code == 1 and "comma-separated integers" in output


@pytest.mark.parametrize(("flags", "message"), [
    (("--held-out-fraction", "1.0"), "Invalid value for '--held-out-fraction'"),
    (("--held-out-fraction", "-0.2"), "Invalid value for '--held-out-fraction'"),
    (("--margin", "lots"), "must be 'auto' or a number in [0, 1)"),
    (("--margin", "1.5"), "a fixed margin must lie in [0, 1)"),
    (("--confidence", "1"), "Invalid value for '--confidence'"),
    (("--cost-by", "speed"), "Invalid value for '--cost-by'"),
    (("--candidates", "0,100"), "--candidates needs positive integers"),
    (("--queries", "1"), "a held-out part needs at least 2 queries"),
])
def test_calibrate_refuses_bad_values(workspace, tmp_path_factory, flags, message) -> None:
    out = tmp_path_factory.getbasetemp() / "calibrate_flags_index"
    if not out.exists():
        _build(workspace, out, "--factory", "IVF4,Flat")
    code, output = _invoke("index", "calibrate", str(out), "-k", "5", "--candidates", "5", *flags)
    assert code != 0 and message in output, output


def test_a_calibration_stored_before_the_held_out_check_still_loads(workspace, tmp_path) -> None:
    import dataclasses

    from prvr.index.builder import rewrite_manifest
    from prvr.index.layout import open_active
    from prvr.retriever import Retriever

    out = tmp_path / "index"
    _build(workspace, out, "--factory", "IVF4,Flat")
    old = {"knob": "nprobe", "chosen": {"n_candidates": 12, "recall": 0.95, "ms_per_query": 1.0, "cost": 100.0,
                                        "nprobe": 2},
           "reached": True, "grid": [], "target": 0.9, "k": 5, "num_queries": 30, "query_source": "heldout_tokens"}
    with open_active(out) as active:
        manifest = active.manifest
    rewrite_manifest(out, dataclasses.replace(manifest, calibration=old,
                                              search_defaults={**manifest.search_defaults, "nprobe": 2,
                                                               "n_candidates": 12}))
    code, output = _invoke("index", "info", str(out))
    assert code == 0, output
    assert "recall@5 0.9500 on the calibration queries (no held-out check)" in output
    with Retriever.load(out) as retriever:
        assert retriever.faiss_index.describe()["clip"]["nprobe"] == 2


def test_cli_calibrate_defaults_match_the_library() -> None:
    from prvr.commands import index_cli
    from prvr.index import calibrate

    for name in ("DEFAULT_NUM_QUERIES", "DEFAULT_CANDIDATE_GRID", "DEFAULT_NPROBE_GRID", "DEFAULT_HELD_OUT_FRACTION",
                 "DEFAULT_CONFIDENCE"):
        assert getattr(index_cli, name) == getattr(calibrate, name), name


def _broken_loader(path):
    raise ValueError(f"{path} is not a moment checkpoint")


def test_query_shows_moments_and_no_moments_skips_them(workspace, localizer_module, tmp_path, monkeypatch) -> None:
    from prvr.moments import localizer as moment_localizer

    out = tmp_path / "index"
    _build(workspace, out, "--moment-checkpoint", str(workspace["moments"]))
    monkeypatch.setattr(moment_localizer, "load_localizer", localizer_module.load_localizer)
    code, output = _invoke("query", "the man runs", "--index", str(out), "-k", "2", "--json")
    assert code == 0, output
    results = json.loads(output)
    assert all(r["moments"] and 0 <= r["moments"][0]["start_sec"] <= r["moments"][0]["end_sec"] <= r["duration"]
               for r in results)
    code, output = _invoke("query", "the man runs", "--index", str(out), "-k", "2", "--moments", "1")
    assert code == 0 and "moments (start-end s, score)" in output
    assert len(output.strip().splitlines()) == 3 and output.strip().splitlines()[1].count("(") == 1
    code, output = _invoke("query", "the man runs", "--index", str(out), "-k", "2", "--json", "--no-moments")
    assert code == 0 and all(r["moments"] == [] for r in json.loads(output))
    assert [r["video_id"] for r in json.loads(output)] == [r["video_id"] for r in results]
    monkeypatch.setattr(moment_localizer, "load_localizer", _broken_loader)
    code, output = _invoke("query", "the man runs", "--index", str(out))
    assert code == 1 and "cannot be loaded" in output and "--no-moments" in output


def test_clear_errors(workspace, tmp_path) -> None:
    code, output = _invoke("index", "info", str(tmp_path))
    assert code == 1 and "not an index directory" in output
    out = tmp_path / "index"
    _build(workspace, out)
    code, output = _invoke("query", "   ", "--index", str(out))
    assert code == 1 and "the query is empty" in output
    code, output = _invoke("query", "a dog", "--index", str(out), "-k", "0")
    assert code == 2  # click's usage error
    (out / "generations" / "gen-000001" / "faiss" / "clip.faiss").write_bytes(b"truncated")
    code, output = _invoke("query", "a dog", "--index", str(out))
    assert code == 1 and "clip.faiss" in output and "rebuild" in output


def test_a_raw_frame_localiser_gets_its_own_frame_tokens(workspace, tmp_path) -> None:
    """build-index --moment-checkpoint with a localiser trained on the raw frames (condition 'frames', its own
    data.max_frames) stores those frames beside the retrieval tokens; search feeds them to it; index add extends them."""
    import dataclasses

    from prvr.index.layout import open_active
    from prvr.moments.config import apply_moment_overrides, load_moment_preset
    from prvr.moments.train import train_moments

    base = load_moment_preset("tiny")
    data = dataclasses.replace(base.data, video_feature="synth", text_feature="synth", max_frames=12)
    config = apply_moment_overrides(dataclasses.replace(base, data=data), ["train.epochs=1"])
    result = train_moments(workspace["data"], "synth", tmp_path / "moments", config, train_split="val",
                           val_split="test", select=False)
    from prvr.index.builder import build_index

    # from Python without moment_corpus the build refuses (search could never localise), before writing anything
    refused = tmp_path / "refused"
    with pytest.raises(ValueError, match="moment_corpus"):
        build_index(workspace["checkpoint"], workspace["corpus"].val, refused, collection_name="synth",
                    moment_checkpoint=result.best_path, progress=False)
    assert not refused.exists() or not any(refused.iterdir())
    out = tmp_path / "index"
    _build(workspace, out, "--moment-checkpoint", str(result.best_path))
    with open_active(out) as active:
        record = active.manifest.moment_frames
    video_dim = workspace["corpus"].val.video_dim
    assert record is not None and record["max_frames"] == 12 and record["dim"] == video_dim
    assert record["videos"] == 12 and record["bytes"] <= 12 * (12 * video_dim * 2 + 128)  # float16 + .npy header
    code, output = _invoke("query", "the man runs", "--index", str(out), "-k", "3", "--json")
    assert code == 0, output
    hits = json.loads(output)
    assert all(h["moments"] and 0 <= h["moments"][0]["start_sec"] <= h["moments"][0]["end_sec"] <= h["duration"]
               for h in hits)
    code, output = _invoke("index", "add", str(out), "--data", str(workspace["data"]), "--collection", "synth",
                           "--split", "test", "--no-progress")
    assert code == 0, output
    with open_active(out) as active:
        assert active.manifest.moment_frames["videos"] == 16
