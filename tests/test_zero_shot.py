"""The zero-shot model (issue 20): a CLIP / SigLIP backbone's own image and text embeddings behind DreamPRVR's
interface, checked against a direct ``get_image_features`` / ``get_text_features`` reference; `prvr build-index
--zero-shot` over video files, then `prvr query` and the service; old checkpoints still load; the bad inputs."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from fastapi.testclient import TestClient

import helpers
from prvr.checkpoint import atomic_torch_save, load_model, read_checkpoint
from prvr.cli import main
from prvr.data.preprocess import collate_queries, collate_videos, preprocess_query, preprocess_video
from prvr.data.synthetic import make_synthetic_corpus
from prvr.features.backbones import load_image_backbone
from prvr.features.synthetic_video import write_video
from prvr.model import DreamPRVR
from prvr.text_encoders import ClipTextEncoder
from prvr.zero_shot import ZeroShotPRVR, save_zero_shot_checkpoint, zero_shot_config

WORDS = ["a", "man", "walks", "dog", "woman", "cooks", "pasta", "on", "the", "beach", "kitchen", "plays", "guitar"]


def _save_tokenizer(folder: Path) -> list[str]:
    """A WordPiece vocabulary + tokenizer config: any tokenizer AutoTokenizer loads serves the text tower."""
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "BertTokenizer", "do_lower_case": True, "model_max_length": 16}),
        encoding="utf-8")
    return vocab


TEXT = {"vocab_size": 5 + len(WORDS), "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
        "num_attention_heads": 2, "max_position_embeddings": 16}
VISION = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
          "image_size": 32, "patch_size": 8}


def _tiny_clip(folder: Path) -> Path:
    from transformers import CLIPConfig, CLIPModel

    folder.mkdir(parents=True)
    _save_tokenizer(folder)
    config = CLIPConfig(text_config={**TEXT, "bos_token_id": 2, "eos_token_id": 3, "pad_token_id": 0},
                        vision_config=VISION, projection_dim=12)
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps(helpers.clip_processor_config(32)), encoding="utf-8")
    return folder


def _tiny_siglip(folder: Path) -> Path:
    from transformers import SiglipConfig, SiglipModel

    folder.mkdir(parents=True)
    _save_tokenizer(folder)
    config = SiglipConfig(text_config={**TEXT, "pad_token_id": 0}, vision_config=VISION)
    torch.manual_seed(1)
    SiglipModel(config).save_pretrained(folder)  # no preprocessor config: the SigLIP defaults are used
    return folder


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("zero-shot-models")
    return {"clip": _tiny_clip(root / "tiny-clip-text"), "siglip": _tiny_siglip(root / "tiny-siglip")}


def _reference_tokens(features: np.ndarray, bins: int) -> np.ndarray:
    """The family's bin means, by a plain loop (empty bins take the frame at their start), L2-normalised."""
    n = features.shape[0]
    bounds = np.clip(np.round(np.linspace(0, n, bins + 1)).astype(int), 0, n)
    rows = [features[s:e].mean(0) if e > s else features[min(s, n - 1)] for s, e in zip(bounds[:-1], bounds[1:])]
    rows = np.stack(rows)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_zero_shot_scores_equal_a_direct_image_text_reference(models: dict[str, Path], kind: str) -> None:
    from transformers import AutoModel

    folder = models[kind]
    rng = np.random.default_rng(0)
    videos = [rng.integers(0, 256, size=(n, 40, 48, 3), dtype=np.uint8) for n in (3, 40, 150)]  # 150 > 128 frames
    texts = ["a man walks the dog on the beach", "a woman cooks pasta", "plays the guitar"]

    # the product path: the frame backbone, the text tower as the query encoder, the zero-shot model
    backbone = load_image_backbone(f"{kind}:{folder}", device="cpu", allow_download=False)
    encoder = ClipTextEncoder(folder)
    assert backbone.dim == encoder.dim
    config = zero_shot_config(backbone.dim, video_backbone=backbone.backbone_id, clip_weight=0.3, frame_weight=0.7)
    model = ZeroShotPRVR(config.model)
    features = [backbone.encode_images(list(frames)) for frames in videos]
    batch = collate_videos([preprocess_video(f, config.data) for f in features], ["v0", "v1", "v2"])
    encoded = encoder.encode(texts)
    assert all(tokens.shape == (1, encoder.dim) for tokens in encoded.tokens)
    queries = collate_queries([preprocess_query(t) for t in encoded.tokens], ["q0", "q1", "q2"])
    scores = model.score(model.encode_queries(queries), model.encode_videos(batch))

    # the reference: get_image_features / get_text_features, cosine, max over frames (and over the clip bins)
    reference = AutoModel.from_pretrained(str(folder), local_files_only=True).eval()
    tokenizer = encoder.tokenizer
    padding = "max_length" if kind == "siglip" else "longest"
    with torch.no_grad():
        inputs = tokenizer(texts, padding=padding, max_length=16, truncation=True, return_tensors="pt")
        if kind == "siglip":
            text = reference.get_text_features(input_ids=inputs["input_ids"])
        else:
            text = reference.get_text_features(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        text = text if isinstance(text, torch.Tensor) else text.pooler_output
        text = torch.nn.functional.normalize(text, dim=-1).numpy()  # (Nq, D)
        image = [reference.get_image_features(pixel_values=backbone.preprocessor(list(frames), torch.device("cpu")))
                 for frames in videos]
    image = [(x if isinstance(x, torch.Tensor) else x.pooler_output).numpy() for x in image]
    for column, frames in enumerate(image):
        np.testing.assert_allclose(features[column], frames, rtol=1e-4, atol=1e-5)  # projected embeddings
        frame_rows = _reference_tokens(frames, 128) if len(frames) > 128 else (
            frames / np.linalg.norm(frames, axis=1, keepdims=True))
        frame_score = (text @ frame_rows.T).max(axis=1)  # (Nq,)
        clip_score = (text @ _reference_tokens(frames, 32).T).max(axis=1)  # (Nq,)
        np.testing.assert_allclose(scores["frame"][:, column].numpy(), frame_score, atol=1e-5)
        np.testing.assert_allclose(scores["clip"][:, column].numpy(), clip_score, atol=1e-5)
        np.testing.assert_allclose(scores["total"][:, column].numpy(), 0.3 * clip_score + 0.7 * frame_score,
                                   atol=1e-5)


def test_checkpoints_dispatch_on_the_model_kind(tmp_path: Path, tiny_checkpoint: Path) -> None:
    model, config, _ = load_model(tiny_checkpoint)
    assert isinstance(model, DreamPRVR) and config.model.kind == "dreamprvr"
    # a checkpoint written before the field existed (no "kind" in its JSON) still loads as DreamPRVR
    payload = read_checkpoint(tiny_checkpoint)
    raw = json.loads(payload["model_config"])
    del raw["model"]["kind"]
    atomic_torch_save({**payload, "model_config": json.dumps(raw)}, tmp_path / "old.pt")
    old, old_config, _ = load_model(tmp_path / "old.pt")
    assert isinstance(old, DreamPRVR) and old_config == config
    torch.testing.assert_close(old.state_dict(), model.state_dict())

    zero_config = zero_shot_config(12, video_backbone="clip:m@0123456789ab")
    save_zero_shot_checkpoint(tmp_path / "zs.pt", zero_config)
    zero, loaded, payload = load_model(tmp_path / "zs.pt")
    assert isinstance(zero, ZeroShotPRVR) and loaded == zero_config
    assert (loaded.model.clip_weight, loaded.model.frame_weight) == (0.0, 1.0)  # max over frames by default
    assert payload["zero_shot"]["video_backbone"] == "clip:m@0123456789ab"


@pytest.fixture(scope="module")
def video_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    videos = tmp_path_factory.mktemp("zero-shot-videos")
    write_video(videos / "walk.mp4", np.arange(0, 3.0, 0.1))
    write_video(videos / "cook.mp4", np.arange(0, 2.0, 0.1))
    return videos


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_build_index_zero_shot_from_videos_then_query_and_serve(models: dict[str, Path], video_folder: Path,
                                                                tmp_path: Path, kind: str) -> None:
    from prvr.index.layout import open_active
    from prvr.retriever import Retriever
    from prvr.services.app import ServiceSettings, create_app

    runner = CliRunner()
    index_dir = tmp_path / "index"
    result = runner.invoke(main, ["build-index", "--zero-shot", "--videos", str(video_folder), "--backbone",
                                  f"{kind}:{models[kind]}", "--device", "cpu", "--out", str(index_dir),
                                  "--no-progress"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout.strip().splitlines()[-1])["videos"] == 2
    with open_active(index_dir) as active:
        manifest = active.manifest
    assert manifest.checkpoint_path.startswith("models/")  # the zero-shot checkpoint is stored like any other
    assert manifest.text_backbone["kind"] == kind and Path(manifest.text_backbone["path"]) == models[kind].resolve()
    model, config, _ = load_model(index_dir / manifest.checkpoint_path)
    assert isinstance(model, ZeroShotPRVR) and config.data.video_backbone.startswith(f"{kind}:")

    result = runner.invoke(main, ["query", "a man walks the dog", "--index", str(index_dir), "--json", "-k", "2"])
    assert result.exit_code == 0, result.output
    hits = json.loads(result.stdout)
    assert {hit["video_id"] for hit in hits} == {"walk", "cook"}
    assert manifest.moment_localizer == {"kind": "zero_shot", "smooth": 1}  # moments without a moment checkpoint
    for hit in hits:  # moments in seconds inside the video
        assert hit["moments"] and hit["duration"] > 0
        for moment in hit["moments"]:
            assert 0.0 <= moment["start_sec"] < moment["end_sec"] <= hit["duration"] + 1e-9

    # the exact score of the search equals the model's own score of the extracted features
    with Retriever.load(index_dir) as retriever:
        searched = {hit.video_id: hit.score for hit in retriever.search("a man walks the dog", k=2)}
        corpus_features = index_dir / "features"
        assert corpus_features.is_dir()
    assert searched == pytest.approx({hit["video_id"]: hit["score"] for hit in hits}, abs=1e-6)

    app = create_app(ServiceSettings(index_dir=index_dir, poll_interval_s=0))
    with TestClient(app) as client:
        response = client.get("/search", params={"q": "a woman cooks pasta", "k": 2})
        assert response.status_code == 200, response.text
        body = response.json()
        assert {hit["video_id"] for hit in body["results"]} == {"walk", "cook"}
        for hit in body["results"]:
            assert hit["moments"] and all(0.0 <= m["start_sec"] < m["end_sec"] <= hit["duration"] + 1e-6
                                          for m in hit["moments"])


def test_zero_shot_needs_a_text_tower(models: dict[str, Path], video_folder: Path, tmp_path: Path) -> None:
    from transformers import ViTConfig, ViTModel

    vit = tmp_path / "tiny-vit"
    ViTModel(ViTConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                       image_size=32, patch_size=8)).save_pretrained(vit)
    runner = CliRunner()
    for spec in (f"vision:{vit}", f"clip:{vit}"):
        result = runner.invoke(main, ["build-index", "--zero-shot", "--videos", str(video_folder), "--backbone", spec,
                                      "--out", str(tmp_path / "index"), "--no-progress"])
        assert result.exit_code == 1
        assert "text tower" in result.output and "clip:PATH or siglip:PATH" in result.output, result.output
    result = runner.invoke(main, ["build-index", "--zero-shot", "--videos", str(video_folder), "--backbone",
                                  f"clip:{models['siglip']}", "--out", str(tmp_path / "index"), "--no-progress"])
    assert result.exit_code == 1 and f"siglip:{models['siglip']}" in result.output
    result = runner.invoke(main, ["build-index", "--videos", str(video_folder), "--out", str(tmp_path / "index")])
    assert result.exit_code == 1 and "--zero-shot" in result.output


def _features(root: Path, backbone_id: str, seed: int) -> Path:
    """A synthetic collection whose frames and queries share one 24-d space and whose feature file records an id."""
    make_synthetic_corpus(root, "synth", splits={"train": 6, "val": 4}, video_dim=24, text_dim=24, seed=seed,
                          frame_range=(4, 8))
    with h5py.File(root / "synth" / "FeatureData" / "synth" / "feature.hdf5", "a") as handle:
        handle.attrs["backbone"] = backbone_id
    return root


def test_zero_shot_index_of_features_refuses_another_backbone(tmp_path: Path) -> None:
    runner = CliRunner()
    first = _features(tmp_path / "a", "clip:model-a@0123456789ab", seed=1)
    other = _features(tmp_path / "b", "clip:model-b@ba9876543210", seed=2)
    index_dir = tmp_path / "index"
    data = ["--collection", "synth", "--video-feature", "synth", "--text-feature", "synth"]
    result = runner.invoke(main, ["build-index", "--zero-shot", "--data", str(first), *data, "--split", "val",
                                  "--out", str(index_dir), "--no-progress"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(main, ["index", "add", str(index_dir), "--data", str(first), "--collection", "synth",
                                  "--split", "train", "--no-progress"])
    assert result.exit_code == 0, result.output  # the same backbone extends the index
    result = runner.invoke(main, ["index", "add", str(index_dir), "--data", str(other), "--collection", "synth",
                                  "--split", "train", "--no-progress"])
    assert result.exit_code == 1
    assert "model-a@0123456789ab" in result.output and "model-b@ba9876543210" in result.output, result.output

    mismatched = tmp_path / "c"
    make_synthetic_corpus(mismatched, "synth", splits={"val": 4}, video_dim=24, text_dim=16, seed=3,
                          frame_range=(4, 8))
    result = runner.invoke(main, ["build-index", "--zero-shot", "--data", str(mismatched), *data, "--split", "val",
                                  "--out", str(tmp_path / "index-c"), "--no-progress"])
    assert result.exit_code == 1 and "one space" in result.output, result.output


def test_zero_shot_query_is_the_mean_of_its_tokens() -> None:
    config = zero_shot_config(4, video_backbone=None)
    model = ZeroShotPRVR(config.model)
    tokens = [np.array([[1.0, 0, 0, 0], [0, 1.0, 0, 0]]), np.array([[0, 0, 3.0, 0]])]
    vectors = model.encode_queries(collate_queries([preprocess_query(t) for t in tokens], ["a", "b"]))
    np.testing.assert_allclose(vectors.numpy(), [[2 ** -0.5, 2 ** -0.5, 0, 0], [0, 0, 1, 0]], atol=1e-6)
    with pytest.raises(ValueError, match="one space"):
        ZeroShotPRVR(dataclasses.replace(config.model, text_dim=5))


def test_bank_term_equals_a_naive_loop() -> None:
    from prvr.types import VideoTokens
    from prvr.zero_shot import bank_term

    generator = torch.Generator().manual_seed(0)
    config = zero_shot_config(6, video_backbone=None, clip_weight=0.4, frame_weight=0.6)
    model = ZeroShotPRVR(config.model)
    clip = torch.nn.functional.normalize(torch.randn(7, 4, 6, generator=generator), dim=-1)
    frame = torch.nn.functional.normalize(torch.randn(7, 5, 6, generator=generator), dim=-1)
    mask = torch.ones(7, 5, dtype=torch.bool)
    mask[2, 3:] = False
    tokens = VideoTokens(clip, frame, mask)
    bank = torch.nn.functional.normalize(torch.randn(11, 6, generator=generator), dim=-1)
    for k in (1, 3, 50):
        expected = []
        for v in range(7):
            scores = sorted((0.4 * float((clip[v] @ b).max()) + 0.6 * float((frame[v][mask[v]] @ b).max())
                             for b in bank), reverse=True)
            expected.append(np.mean(scores[:k]))
        got = bank_term(model, bank, tokens, k=k, query_chunk=4, video_chunk=3)
        np.testing.assert_allclose(got.numpy(), expected, atol=1e-6)
