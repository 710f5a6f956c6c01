"""Compressed token store: codec error bounds against float64, memory-mapped round trip, bytes per video, determinism,
errors, and a compressed index searched through the Retriever against the float index."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from prvr.index.manifest import IndexManifest
from prvr.index.protocol import Candidates
from prvr.index.rerank import exact_rerank
from prvr.index.token_codec import make_codec
from prvr.index.token_store import CODEBOOK_NAME, INDEX_NAME, TokenStore

W_CLIP, W_FRAME = 0.6, 0.4


def _unit(rng: np.random.Generator, count: int, dim: int) -> np.ndarray:
    x = rng.standard_normal((count, dim))
    return x / np.linalg.norm(x, axis=1, keepdims=True)  # (T, D) float64


def _videos(seed: int, num_videos: int, num_clips: int = 4, num_frames: int = 9, dim: int = 32):
    generator = torch.Generator().manual_seed(seed)
    clip = torch.randn(num_videos, num_clips, dim, generator=generator)  # (V, C, D)
    frame = torch.randn(num_videos, num_frames, dim, generator=generator)  # (V, F, D)
    lengths = torch.randint(1, num_frames + 1, (num_videos,), generator=generator)
    mask = torch.arange(num_frames).unsqueeze(0) < lengths.unsqueeze(1)  # (V, F)
    return clip, frame, mask


# Measured on 4,096 random unit tokens in D = 64 (the hardest case: nothing to exploit), trained on 2,048 others:
# mean |score error| against float64 for unit queries; asserted with ~1.5x headroom.
# pca48 drops a quarter of isotropic tokens' energy (0.051 measured); pca64 keeps every direction (sq8 error only).
MEAN_SCORE_ERROR = {"sq8": 0.0008, "sq4": 0.015, "pq32": 0.045, "pq16": 0.065, "pca48": 0.075, "pca64": 0.0009}


@pytest.mark.parametrize("name", ["sq8", "sq4", "pq32", "pq16", "pca48", "pca64"])
def test_scores_within_the_decode_error_of_float64(name) -> None:
    """|s_codec - s_float64| <= ||t - decode(t)|| for every token and unit query (Cauchy-Schwarz, asserted on all
    4096 x 8 pairs); scalar codecs also meet their analytic decode bound sqrt(D) max|t| / (2 levels); the mean score
    error stays under MEAN_SCORE_ERROR; table look-up scores equal decode-then-multiply scores."""
    dim = 64
    rng = np.random.default_rng(0)
    train, tokens, queries = _unit(rng, 2048, dim), _unit(rng, 4096, dim), _unit(rng, 8, dim)
    codec = make_codec(name, dim, seed=0)
    codec.train(train.astype(np.float32))
    codes = codec.encode(tokens.astype(np.float32))
    assert codes.dtype == np.uint8 and codes.shape == (4096, codec.code_size)
    decoded = codec.decode(codes).astype(np.float64)
    decode_error = np.linalg.norm(decoded - tokens, axis=1)  # (T,)
    exact = tokens @ queries.T  # (T, n) float64
    scores = codec.score(queries.astype(np.float32), codes).astype(np.float64)
    assert (np.abs(scores - exact) <= decode_error[:, None] + 1e-5).all()
    assert np.abs(scores - exact).mean() <= MEAN_SCORE_ERROR[name]
    np.testing.assert_allclose(scores, decoded @ queries.T, atol=2e-5)
    many = codec.score(np.repeat(queries, 2, axis=0).astype(np.float32), codes)  # > 8 queries: the decode path
    np.testing.assert_allclose(many[:, ::2], scores, atol=2e-5)
    if name.startswith("sq"):
        levels = 127 if name == "sq8" else 7
        bound = np.sqrt(dim) * np.abs(tokens).max(axis=1) / (2 * levels)
        assert (decode_error <= bound + 1e-6).all()


@pytest.mark.parametrize("name", ["pq8", "pca8"])
def test_compressed_store_round_trip_memory_mapped(tmp_path, name) -> None:
    """build -> train -> append -> reopen read-only: memory-mapped uint8 codes, get() = decoded tokens, re-rank scores
    equal float64 scores of the decoded tokens, and every video score is within (w_c + w_f) * token_error of the
    exact float64 score of the original unit tokens."""
    dim = 32
    clip, frame, mask = _videos(0, 80, dim=dim)
    ids = np.arange(80, dtype=np.int64) * 3 + 1
    store = TokenStore(tmp_path, dim, dtype=name, codec_seed=3)
    store.train(clip, frame, mask)
    store.append(ids[:50], clip[:50], frame[:50], mask[:50])
    store.append(ids[50:], clip[50:], frame[50:], mask[50:])
    reader = TokenStore(tmp_path, read_only=True)
    width = 8 if name == "pq8" else 8 + 4
    assert reader.dtype == name and reader.bytes_per_token == width and reader.codec is not None
    assert isinstance(reader._maps[0], np.memmap) and reader.shard_tensor(0).dtype == torch.uint8
    assert reader.nbytes == int((4 + mask.sum(dim=1)).sum()) * width

    unit_clip = torch.nn.functional.normalize(clip, dim=-1).double()
    unit_frame = torch.nn.functional.normalize(frame, dim=-1).double()
    got = reader.get(ids)
    expected_clip = reader.codec.decode(reader.codec.encode(unit_clip.reshape(-1, dim).float().numpy()))
    np.testing.assert_allclose(got.clip.reshape(-1, dim).numpy(), expected_clip, atol=1e-6)
    assert not got.frame[~got.frame_mask].any()
    errors = torch.cat([(got.clip.double() - unit_clip).norm(dim=-1).reshape(-1),
                        (got.frame.double() - unit_frame).norm(dim=-1)[mask]])
    assert float(errors.max()) <= reader.token_error + 1e-6

    query = torch.nn.functional.normalize(torch.randn(4, dim, generator=torch.Generator().manual_seed(1)), dim=-1)
    ranked = exact_rerank(query, [Candidates(ids, np.zeros(80, np.float32))] * 4, reader, clip_weight=W_CLIP,
                          frame_weight=W_FRAME, k=80)
    q64 = query.double()
    bound = (W_CLIP + W_FRAME) * reader.token_error
    for n, row in enumerate(ranked):
        for video, score in row:
            v = int(np.flatnonzero(ids == video)[0])
            decoded = (W_CLIP * (got.clip[v].double() @ q64[n]).max()
                       + W_FRAME * (got.frame[v][got.frame_mask[v]].double() @ q64[n]).max())
            exact = (W_CLIP * (unit_clip[v] @ q64[n]).max() + W_FRAME * (unit_frame[v][mask[v]] @ q64[n]).max())
            assert abs(score - float(decoded)) <= 1e-5
            assert abs(score - float(exact)) <= bound + 1e-5

    writer = TokenStore(tmp_path)
    writer.remove(ids[:10])
    writer.compact()
    assert len(writer) == 70 and (tmp_path / CODEBOOK_NAME).is_file()
    torch.testing.assert_close(writer.get(ids[10:20]).clip, got.clip[10:20])  # same codebook after compaction


@pytest.mark.parametrize(("dim", "name"), [(256, "pq32"), (128, "pq32"), (256, "pq16")])
def test_bytes_per_video_within_the_budget(tmp_path, dim, name) -> None:
    """32 clip + 64 frame tokens: shards hold exactly 96 x M bytes per video. With the FAISS codes of an IVF,PQ16
    token index (16 B code + 8 B id per token) the total stays <= 8 KB per video (the 1M-videos target)."""
    clip, frame, mask = _videos(1, 8, num_clips=32, num_frames=64, dim=dim)
    mask[:] = True
    store = TokenStore(tmp_path, dim, dtype=name)
    store.train(clip, frame, mask)
    store.append(np.arange(8), clip, frame, mask)
    per_video = store.nbytes / 8
    assert per_video == 96 * store.codec.code_size
    index_entry = 8 + 4 + 8 + 4 + 4 + 1  # id, shard, row, clip count, frame count, tombstone in store.npz
    ivf_pq16 = 96 * (16 + 8)
    assert per_video + index_entry + ivf_pq16 <= 8 * 1024


def test_pca_codec_on_low_rank_tokens() -> None:
    """Rank-8 tokens (plus 1e-3 noise) in D = 64: pca8 finds their subspace (orthonormal basis, ~all energy
    explained), decodes within the sq8 rounding of the 8 coordinates plus the noise, is deterministic, and its
    basis round-trips through state_bytes / load_state."""
    dim, rank = 64, 8
    rng = np.random.default_rng(4)
    mix = rng.standard_normal((rank, dim))
    tokens = rng.standard_normal((3000, rank)) @ mix + 1e-3 * rng.standard_normal((3000, dim))
    tokens = (tokens / np.linalg.norm(tokens, axis=1, keepdims=True)).astype(np.float32)
    codec = make_codec("pca8", dim)
    assert codec.needs_training and codec.code_size == 12
    codec.train(tokens[:2000])
    basis = codec.basis.astype(np.float64)
    np.testing.assert_allclose(basis @ basis.T, np.eye(rank), atol=1e-5)
    assert codec.explained > 0.9999
    codes = codec.encode(tokens[2000:])
    error = np.linalg.norm(codec.decode(codes) - tokens[2000:], axis=1)
    coordinates = tokens[2000:] @ codec.basis.T
    rounding = np.sqrt(rank) * np.abs(coordinates).max(axis=1) / (2 * 127)
    assert (error <= rounding + 2e-3).all() and error.max() < 0.02
    again = make_codec("pca8", dim)
    again.train(tokens[:2000])
    assert again.state_bytes() == codec.state_bytes()
    assert (again.encode(tokens[2000:]) == codes).all()


def test_pca_names() -> None:
    with pytest.raises(ValueError, match="K <= 64"):
        make_codec("pca65", 64)
    with pytest.raises(ValueError, match="unknown token store encoding"):
        make_codec("pca0", 64)
    with pytest.raises(RuntimeError, match="not trained"):
        make_codec("pca4", 64).encode(np.zeros((1, 64), np.float32))
    with pytest.raises(ValueError, match="at least K = 16"):
        make_codec("pca16", 64).train(np.zeros((8, 64), np.float32))


def test_two_builds_are_byte_identical(tmp_path) -> None:
    clip, frame, mask = _videos(2, 40)
    files = []
    for name in ("a", "b"):
        store = TokenStore(tmp_path / name, 32, dtype="pq16", codec_seed=5)
        store.train(clip, frame, mask)
        store.append(np.arange(40), clip, frame, mask)
        files.append({path.name: path.read_bytes() for path in (tmp_path / name).glob("*.bin")} | {
            CODEBOOK_NAME: (tmp_path / name / CODEBOOK_NAME).read_bytes()})
    assert files[0] == files[1]
    other = TokenStore(tmp_path / "c", 32, dtype="pq16", codec_seed=6)
    other.train(clip, frame, mask)
    assert (tmp_path / "c" / CODEBOOK_NAME).read_bytes() != files[0][CODEBOOK_NAME]  # the seed matters


def test_clear_errors(tmp_path) -> None:
    with pytest.raises(ValueError, match="unknown token store dtype 'int8'.*pqM"):
        TokenStore(tmp_path / "a", 32, dtype="int8")
    with pytest.raises(ValueError, match="pq48 .* does not divide .*pq32"):
        TokenStore(tmp_path / "b", 256, dtype="pq48")
    with pytest.raises(ValueError, match="sq4 .* even D"):
        TokenStore(tmp_path / "c", 33, dtype="sq4")
    clip, frame, mask = _videos(3, 40)
    store = TokenStore(tmp_path / "d", 32, dtype="pq8")
    with pytest.raises(RuntimeError, match=r"call train\(\)"):
        store.append(np.arange(40), clip, frame, mask)
    with pytest.raises(ValueError, match="at least 256 tokens"):
        store.train(clip[:2].reshape(-1, 32))
    store.train(clip, frame, mask)
    with pytest.raises(RuntimeError, match="already has a pq8 codebook"):
        store.train(clip, frame, mask)
    store.append(np.arange(40), clip, frame, mask)
    (tmp_path / "d" / CODEBOOK_NAME).write_bytes(b"garbage")
    with pytest.raises(ValueError, match="does not match the sha256"):
        TokenStore(tmp_path / "d", read_only=True)


def test_old_stores_and_manifests_stay_readable(tmp_path) -> None:
    """A bf16 store whose meta has no codec keys, and a manifest without ``token_store``, load as before."""
    clip, frame, mask = _videos(4, 5)
    TokenStore(tmp_path, 32).append(np.arange(5), clip, frame, mask)
    with np.load(tmp_path / INDEX_NAME) as arrays:
        meta = json.loads(str(arrays["meta"]))
    assert "codec" not in meta and TokenStore(tmp_path, read_only=True).codec is None
    manifest = {"experiment_config": "{}", "checkpoint_path": "m.pt", "checkpoint_sha256": "0" * 64,
                "text_backbone": None, "data_source": {}, "counts": {}, "faiss": {}, "search_defaults": {},
                "generation": "gen-000001"}
    assert IndexManifest.from_dict(manifest).token_store is None


# ---------------------------------------------------------------------------------------------- through the index

# top-5 overlap of a compressed index with the float32 index over the 12 synthetic val videos, mean over queries
MIN_TOP5_OVERLAP = {"sq8": 0.95, "pq16": 0.7}
QUERIES = ["a dog kicks a ball", "the cat jumps over the fence", "a man runs", "a man plays", "the dog runs",
           "a cat plays", "the man kicks the ball", "a dog jumps over a cat"]


@pytest.fixture(scope="module")
def float_index(synthetic_corpus, tiny_checkpoint, tmp_path_factory):
    from prvr.index.builder import build_index

    out = tmp_path_factory.mktemp("float-index") / "index"
    build_index(tiny_checkpoint, synthetic_corpus.val, out, collection_name="synth", token_dtype="float32",
                progress=False)
    return out


@pytest.mark.parametrize("name", ["sq8", "pq16"])
def test_compressed_index_through_the_retriever(name, float_index, synthetic_corpus, tiny_checkpoint, query_bert,
                                                tmp_path) -> None:
    """Top-5 of a compressed index overlaps the float32 index's top-5 by >= MIN_TOP5_OVERLAP; the manifest records
    the codec; `index add` / `index remove` reuse the codebook (copied with the store) and keep searching."""
    from prvr.index.builder import build_index, remove_videos
    from prvr.retriever import Retriever
    from prvr.text_encoders import TokenFeatureEncoder

    out = tmp_path / "index"
    result = build_index(tiny_checkpoint, synthetic_corpus.val, out, collection_name="synth", token_dtype=name,
                         progress=False)
    record = result.manifest.token_store
    assert record["dtype"] == name and record["codec"]["name"] == name
    assert (record["codebook"] is not None) == name.startswith("pq")
    encoder = TokenFeatureEncoder(query_bert)
    with Retriever.load(float_index, text_encoder=encoder) as retriever:
        expected = [[r.video_id for r in row] for row in retriever.search(QUERIES, k=5, localize=False)]
    with Retriever.load(out, text_encoder=encoder) as retriever:
        assert retriever.store.dtype == name
        got = [[r.video_id for r in row] for row in retriever.search(QUERIES, k=5, localize=False)]
    overlap = np.mean([len(set(a) & set(b)) / 5 for a, b in zip(got, expected)])
    assert overlap >= MIN_TOP5_OVERLAP[name], (overlap, got, expected)

    added = build_index(tiny_checkpoint, synthetic_corpus.split("test"), out, collection_name="synth",
                        progress=False)
    assert added.num_videos == 16 and added.manifest.token_store["codebook"] == record["codebook"]
    removed = remove_videos(out, synthetic_corpus.split("test").video_ids)
    assert removed.num_videos == 12 and removed.manifest.token_store["codebook"] == record["codebook"]
    with Retriever.load(out, text_encoder=encoder) as retriever:
        assert [[r.video_id for r in row] for row in retriever.search(QUERIES, k=5, localize=False)] == got


def test_cli_rejects_a_bad_token_dtype(synthetic_corpus, tiny_checkpoint, tmp_path) -> None:
    from click.testing import CliRunner

    from prvr.cli import main

    result = CliRunner().invoke(main, ["build-index", "--checkpoint", str(tiny_checkpoint), "--data",
                                       str(synthetic_corpus.root), "--collection", "synth", "--split", "val", "--out",
                                       str(tmp_path / "index"), "--token-dtype", "pq7", "--no-progress"])
    assert result.exit_code != 0 and "pq7" in result.output + str(result.exception)
