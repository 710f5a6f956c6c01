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
    assert {e["nprobe"] for e in result["grid"]} == {1, 2, 4}
    code, output = _invoke("index", "info", str(out), "--json")
    defaults = json.loads(output)["search_defaults"]
    assert defaults["nprobe"] == result["chosen"]["nprobe"]
    assert defaults["n_candidates"] == result["chosen"]["n_candidates"]

    from prvr.retriever import Retriever

    with Retriever.load(out) as retriever:  # the Retriever uses the calibrated nprobe
        assert retriever.faiss_index.describe()["clip"]["nprobe"] == result["chosen"]["nprobe"]

    code, output = _invoke("index", "calibrate", str(out), "--data", str(workspace["data"]), "--collection", "synth",
                           "--split", "val", "-k", "5", "--dry-run")
    assert code == 0, output
    assert "synth/val queries" in output and "dry run" in output and "<- chosen" in output
    code, output = _invoke("index", "calibrate", str(out), "--data", str(workspace["data"]))
    assert code == 1 and "--data, --collection and --split together" in output
    code, output = _invoke("index", "calibrate", str(out), "--candidates", "a,b")
    assert code == 1 and "comma-separated integers" in output


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
