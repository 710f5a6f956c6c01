"""Two-tier token store through the product path: `build_index(refine_dtype=...)` writes a finer ``refine/`` store
beside a compressed one, the manifest records it, the Retriever re-scores the compressed tier's short list with it
(equal to a float32 one-tier index when the short list holds every video), `index add` / `remove` and a resumed
build keep both tiers on the same videos, and bad settings are refused with a message naming the fix."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from prvr.index.builder import build_index, remove_videos
from prvr.index.catalog import GenerationStatus, open_database
from prvr.index.layout import DB_NAME, REFINE_DIR, TOKENS_DIR, open_active
from prvr.index.manifest import IndexManifest
from prvr.index.token_store import TokenStore

FIRST_TIER = "pca16"  # 16 of the tiny model's D = 64 directions: scores far from float32's
REFINE_K = 20  # >= every video the tests ever hold (12 val + 4 test): the short list is the whole candidate set
QUERIES = ["a dog kicks a ball", "the cat jumps over the fence", "a man runs", "a man plays", "the dog runs",
           "a cat plays", "the man kicks the ball", "a dog jumps over a cat"]
K = 5
SCORE_TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def float_index(synthetic_corpus, tiny_checkpoint, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("refine-float") / "index"
    build_index(tiny_checkpoint, synthetic_corpus.val, out, collection_name="synth", token_dtype="float32",
                progress=False)
    return out


@pytest.fixture(scope="module")
def two_tier_index(synthetic_corpus, tiny_checkpoint, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("refine-two-tier") / "index"
    build_index(tiny_checkpoint, synthetic_corpus.val, out, collection_name="synth", token_dtype=FIRST_TIER,
                refine_dtype="float32", refine_k=REFINE_K, progress=False)
    return out


def _copy(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def _search(index_dir: Path, encoder, k: int = K) -> list[list[tuple[str, float]]]:
    from prvr.retriever import Retriever

    with Retriever.load(index_dir, text_encoder=encoder) as retriever:
        return [[(r.video_id, r.score) for r in row] for row in retriever.search(QUERIES, k=k, localize=False)]


def _assert_same_results(got: list[list[tuple[str, float]]], want: list[list[tuple[str, float]]]) -> None:
    assert [[video for video, _ in row] for row in got] == [[video for video, _ in row] for row in want]
    np.testing.assert_allclose([[score for _, score in row] for row in got],
                               [[score for _, score in row] for row in want], atol=SCORE_TOLERANCE, rtol=0)


def _tiers(index_dir: Path) -> tuple[TokenStore, TokenStore]:
    with open_active(index_dir) as active:
        directory = active.directory
    return TokenStore(directory / TOKENS_DIR, read_only=True), TokenStore(directory / REFINE_DIR, read_only=True)


# ---------------------------------------------------------------------------------------------- search


def test_two_tier_search_equals_the_float32_index(two_tier_index, float_index, query_bert) -> None:
    """With a short list holding every candidate, the float32 second tier gives the float32 one-tier ranking and
    scores; the compressed tier alone does not (so the comparison can tell the tiers apart)."""
    from prvr.retriever import Retriever
    from prvr.text_encoders import TokenFeatureEncoder

    encoder = TokenFeatureEncoder(query_bert)
    want = _search(float_index, encoder)
    _assert_same_results(_search(two_tier_index, encoder), want)
    with Retriever.load(two_tier_index, text_encoder=encoder) as retriever:
        assert retriever.store.dtype == FIRST_TIER and retriever.refine.dtype == "float32"
        assert retriever.refine_k == REFINE_K
        retriever.refine = None  # the compressed tier alone
        one_tier = [[r.score for r in row] for row in retriever.search(QUERIES, k=K, localize=False)]
    gap = np.abs(np.array(one_tier) - np.array([[score for _, score in row] for row in want])).max()
    assert gap > 10 * SCORE_TOLERANCE, f"{FIRST_TIER} alone scores within {gap} of float32: the test cannot tell"


def test_manifest_records_the_refine_tier(two_tier_index) -> None:
    with open_active(two_tier_index) as active:
        manifest, directory = active.manifest, active.directory
    assert manifest.token_store["dtype"] == FIRST_TIER
    assert manifest.refine == {"store": TokenStore(directory / REFINE_DIR, read_only=True).codec_record(),
                               "refine_k": REFINE_K}
    assert manifest.refine["store"]["dtype"] == "float32"
    assert IndexManifest.from_dict(json.loads(manifest.to_json())) == manifest
    store, refine = _tiers(two_tier_index)
    assert refine.video_ids.tolist() == store.video_ids.tolist() and len(refine) == 12


def test_old_manifests_read_and_bad_refine_records_are_refused(two_tier_index) -> None:
    with open_active(two_tier_index) as active:
        data = json.loads(active.manifest.to_json())
    old = {key: value for key, value in data.items() if key != "refine"}
    assert IndexManifest.from_dict(old).refine is None
    for bad in ({"store": data["refine"]["store"]}, {"store": data["refine"]["store"], "refine_k": 0},
                {"refine_k": 5}, {"store": data["refine"]["store"], "refine_k": True}):
        with pytest.raises(ValueError, match="refine must hold"):
            IndexManifest.from_dict({**data, "refine": bad})


def test_a_replaced_refine_folder_is_refused(two_tier_index, tmp_path) -> None:
    from prvr.retriever import Retriever

    out = _copy(two_tier_index, tmp_path / "index")
    with open_active(out) as active:
        directory = active.directory
    shutil.rmtree(directory / REFINE_DIR)
    shutil.copytree(directory / TOKENS_DIR, directory / REFINE_DIR)  # the compressed tokens in the refine folder
    with pytest.raises(ValueError, match="refine/ store of generation .* has dtype"):
        Retriever.load(out)


# ---------------------------------------------------------------------------------------------- add / remove


def test_add_and_remove_keep_both_tiers(two_tier_index, float_index, synthetic_corpus, tiny_checkpoint, query_bert,
                                        tmp_path) -> None:
    """`index add` copies the refine tier and appends the new videos to it (they are found, scored as by the float32
    index); `index remove` tombstones and compacts them in both tiers (never returned again)."""
    from prvr.text_encoders import TokenFeatureEncoder

    encoder = TokenFeatureEncoder(query_bert)
    two_tier = _copy(two_tier_index, tmp_path / "two-tier")
    one_tier = _copy(float_index, tmp_path / "float")
    added_split = synthetic_corpus.split("test")
    added_ids = set(added_split.video_ids)
    for out in (two_tier, one_tier):
        build_index(tiny_checkpoint, added_split, out, collection_name="synth", progress=False)
    with open_active(two_tier) as active:
        assert active.manifest.refine["refine_k"] == REFINE_K
        assert active.manifest.refine["store"]["dtype"] == "float32"
    store, refine = _tiers(two_tier)
    assert len(refine) == len(store) == 16 and refine.video_ids.tolist() == store.video_ids.tolist()
    everything = _search(two_tier, encoder, k=16)
    assert all(added_ids <= {video for video, _ in row} for row in everything)
    _assert_same_results(everything, _search(one_tier, encoder, k=16))

    for out in (two_tier, one_tier):
        remove_videos(out, sorted(added_ids))
    store, refine = _tiers(two_tier)
    assert len(refine) == len(store) == 12 and refine.num_entries == 12  # compacted: the tombstones are gone
    assert refine.video_ids.tolist() == store.video_ids.tolist()
    remaining = _search(two_tier, encoder, k=12)
    assert not any(added_ids & {video for video, _ in row} for row in remaining)
    _assert_same_results(remaining, _search(one_tier, encoder, k=12))


def test_a_later_build_keeps_the_tier_and_refuses_another(two_tier_index, float_index, synthetic_corpus,
                                                          tiny_checkpoint, tmp_path) -> None:
    two_tier = _copy(two_tier_index, tmp_path / "two-tier")
    with pytest.raises(ValueError, match="float32 refine tier, not --refine-dtype bfloat16"):
        build_index(tiny_checkpoint, synthetic_corpus.split("test"), two_tier, collection_name="synth",
                    refine_dtype="bfloat16", progress=False)
    one_tier = _copy(float_index, tmp_path / "float")
    with pytest.raises(ValueError, match="has no refine tier"):
        build_index(tiny_checkpoint, synthetic_corpus.split("test"), one_tier, collection_name="synth",
                    refine_dtype="float32", progress=False)


# ---------------------------------------------------------------------------------------------- resume

RESUME_SETTINGS = {"collection_name": "synth", "factory": "IVF2,Flat", "batch_size": 2, "checkpoint_every": 4,
                   "token_dtype": FIRST_TIER, "refine_dtype": "float32", "refine_k": REFINE_K, "progress": False}


def _store_contents(store: TokenStore) -> dict:
    tokens = store.get(store.video_ids)
    return {"ids": store.video_ids.tolist(), "entries": store.num_entries, "clip": tokens.clip.numpy(),
            "frame": tokens.frame.numpy()}


def test_a_resumed_build_truncates_both_tiers(synthetic_corpus, tiny_checkpoint, tmp_path, monkeypatch) -> None:
    """Killed after both stores committed 4 videos but before their snapshot was recorded, the build resumes from
    the post-training snapshot (0 entries): both tiers are truncated to it and end equal to an uninterrupted build."""
    from prvr.index import builder

    reference = tmp_path / "reference"
    build_index(tiny_checkpoint, synthetic_corpus.val, reference, **RESUME_SETTINGS)
    want = [_store_contents(tier) for tier in _tiers(reference)]

    out = tmp_path / "index"
    original = builder.write_snapshot
    calls: list[int] = []

    def killed_on_second(gen_dir, key, index, *, store_entries, **kwargs):
        calls.append(store_entries)
        if len(calls) == 2:  # the stores have committed 4 entries; resume.json still names the 0-entry snapshot
            raise KeyboardInterrupt
        return original(gen_dir, key, index, store_entries=store_entries, **kwargs)

    monkeypatch.setattr(builder, "write_snapshot", killed_on_second)
    with pytest.raises(KeyboardInterrupt):
        build_index(tiny_checkpoint, synthetic_corpus.val, out, **RESUME_SETTINGS)
    assert calls == [0, 4]
    with open_database(out / DB_NAME) as db:
        (building,) = db.generations(GenerationStatus.BUILDING)
    gen_dir = out / "generations" / building.directory
    assert TokenStore(gen_dir / TOKENS_DIR, read_only=True).num_entries == 4
    assert TokenStore(gen_dir / REFINE_DIR, read_only=True).num_entries == 4

    monkeypatch.setattr(builder, "write_snapshot", original)
    result = build_index(tiny_checkpoint, synthetic_corpus.val, out, **RESUME_SETTINGS)
    assert result.directory == gen_dir, "the build did not resume its generation"
    got = [_store_contents(tier) for tier in _tiers(out)]
    for tier_got, tier_want in zip(got, want):
        assert tier_got["ids"] == tier_want["ids"] and tier_got["entries"] == tier_want["entries"] == 12
        np.testing.assert_array_equal(tier_got["clip"], tier_want["clip"])
        np.testing.assert_array_equal(tier_got["frame"], tier_want["frame"])


def test_other_refine_settings_do_not_resume(synthetic_corpus, tiny_checkpoint, tmp_path, monkeypatch) -> None:
    from prvr.index import builder

    out = tmp_path / "index"
    original = builder.write_snapshot

    def killed_after_first(*args, **kwargs):
        original(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(builder, "write_snapshot", killed_after_first)
    with pytest.raises(KeyboardInterrupt):
        build_index(tiny_checkpoint, synthetic_corpus.val, out, **RESUME_SETTINGS)
    with open_database(out / DB_NAME) as db:
        (building,) = db.generations(GenerationStatus.BUILDING)
    monkeypatch.setattr(builder, "write_snapshot", original)
    result = build_index(tiny_checkpoint, synthetic_corpus.val, out, **{**RESUME_SETTINGS, "refine_k": 7})
    assert result.generation_id != building.id, "a build with another refine_k resumed a snapshot it did not write"
    assert result.manifest.refine["refine_k"] == 7


# ---------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(("settings", "message"), [
    ({"token_dtype": "bfloat16", "refine_dtype": "float32"}, "--token-dtype bfloat16 is not compressed"),
    ({"token_dtype": "float32", "refine_dtype": "bfloat16"}, "--token-dtype float32 is not compressed"),
    ({"token_dtype": "sq8", "refine_dtype": "fp8"}, "unknown --refine-dtype 'fp8'"),
    ({"token_dtype": "sq8", "refine_dtype": "sq8"}, "equals --token-dtype"),
    ({"token_dtype": "sq8", "refine_dtype": "float32", "refine_k": 0}, "--refine-k must be a positive int"),
    ({"token_dtype": "sq8", "refine_k": -3}, "--refine-k must be a positive int"),
])
def test_bad_refine_settings_are_refused(settings, message, synthetic_corpus, tiny_checkpoint, tmp_path) -> None:
    with pytest.raises(ValueError, match=message):
        build_index(tiny_checkpoint, synthetic_corpus.val, tmp_path / "index", collection_name="synth",
                    progress=False, **settings)


# ---------------------------------------------------------------------------------------------- CLI


def _build_args(synthetic_corpus, tiny_checkpoint, out: Path, *extra: str) -> list[str]:
    return ["build-index", "--checkpoint", str(tiny_checkpoint), "--data", str(synthetic_corpus.root),
            "--collection", "synth", "--split", "val", "--out", str(out), "--no-progress", *extra]


def test_cli_build_index_passes_the_refine_tier(synthetic_corpus, tiny_checkpoint, query_bert, tmp_path) -> None:
    """--refine-dtype / --refine-k reach the build; a refine codec that needs training (pcaK) is trained on the
    sample even when nothing else needs one (sq4, a Flat index), and the index searches."""
    from click.testing import CliRunner

    from prvr.cli import main
    from prvr.text_encoders import TokenFeatureEncoder

    out = tmp_path / "index"
    result = CliRunner().invoke(main, _build_args(synthetic_corpus, tiny_checkpoint, out, "--token-dtype", "sq4",
                                                  "--refine-dtype", "pca32", "--refine-k", "7"))
    assert result.exit_code == 0, result.output
    with open_active(out) as active:
        assert active.manifest.token_store["dtype"] == "sq4"
        refine = active.manifest.refine
        assert refine["store"]["dtype"] == "pca32" and refine["refine_k"] == 7
        assert refine["store"]["codebook"] is not None
    found = _search(out, TokenFeatureEncoder(query_bert))
    assert [len(row) for row in found] == [K] * len(QUERIES)


@pytest.mark.parametrize(("extra", "message"), [
    (["--refine-dtype", "float32"], "--token-dtype bfloat16 is not compressed"),
    (["--token-dtype", "sq8", "--refine-dtype", "float32", "--refine-k", "0"], "--refine-k must be a positive int"),
    (["--token-dtype", "sq8", "--refine-dtype", "f16"], "unknown --refine-dtype 'f16'"),
])
def test_cli_refuses_bad_refine_settings(extra, message, synthetic_corpus, tiny_checkpoint, tmp_path) -> None:
    from click.testing import CliRunner

    from prvr.cli import main

    result = CliRunner().invoke(main, _build_args(synthetic_corpus, tiny_checkpoint, tmp_path / "index", *extra))
    assert result.exit_code != 0 and message in result.output + str(result.exception), result.output


def test_cli_refine_k_default_matches_the_library() -> None:
    from prvr.commands import index_cli
    from prvr.index import builder

    assert index_cli.DEFAULT_REFINE_K == builder.DEFAULT_REFINE_K


def test_calibrate_passes_both_tiers(two_tier_index, tmp_path, monkeypatch) -> None:
    """`prvr index calibrate` on a two-tier index measures the two-tier search (refine= / refine_k= reach
    ``index.calibrate.calibrate``)."""
    from click.testing import CliRunner

    from prvr.cli import main
    from prvr.index import calibrate as calibrate_module

    out = _copy(two_tier_index, tmp_path / "index")
    original = calibrate_module.calibrate
    seen: dict = {}

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(calibrate_module, "calibrate", spy)
    result = CliRunner().invoke(main, ["index", "calibrate", str(out), "-k", "3", "--queries", "20",
                                       "--candidates", "4,8", "--dry-run", "--json"])
    assert result.exit_code == 0, result.output
    assert seen["refine"] is not None and seen["refine"].dtype == "float32" and seen["refine_k"] == REFINE_K
