"""DreamPRVR on top of a CLIP / SigLIP backbone (issue 20): frames from the image tower (`prvr extract`), query token
features from the same model's text tower (`prvr extract-text --text-backbone clip:PATH`), `prvr train`, then
`build-index --text-backbone` and `prvr query`; the training features equal what the search-time query encoder
gives; the backbone ids recorded in the files, the checkpoint and the index; the bad inputs refused."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner

import helpers
from prvr.checkpoint import load_model
from prvr.cli import main
from prvr.features.synthetic_video import write_video

WORDS = ["a", "man", "walks", "dog", "woman", "cooks", "pasta", "on", "the", "beach", "kitchen", "plays", "guitar",
         "runs", "street", "swims", "pool"]
TEXT = {"vocab_size": 5 + len(WORDS), "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
        "num_attention_heads": 2, "max_position_embeddings": 16}
VISION = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
          "image_size": 32, "patch_size": 8}
# video stem -> (frame times in seconds, its captions); train and val captions of every video
VIDEOS = {
    "walk": (np.arange(0, 3.0, 0.5), ["a man walks the dog", "a man walks on the beach"]),
    "cook": (np.arange(0, 2.0, 0.25), ["a woman cooks pasta", "a woman cooks in the kitchen"]),
    "guitar": (np.arange(0, 4.0, 1.0), ["a man plays the guitar", "the man plays guitar on the street"]),
    "swim": (np.arange(0, 2.5, 0.5), ["a woman swims in the pool", "the woman swims"]),
    "run": (np.arange(0, 3.5, 0.5), ["a dog runs on the street", "a man runs on the beach"]),
}


def _save_tokenizer(folder: Path) -> None:
    """A WordPiece tokenizer: any tokenizer AutoTokenizer loads serves the text tower of a tiny random model."""
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "BertTokenizer", "do_lower_case": True, "model_max_length": 16}),
        encoding="utf-8")


def save_tiny_joint_model(folder: Path, kind: str) -> Path:
    """A tiny random CLIP (12-d joint space) or SigLIP (16-d) with a tokenizer, saved with save_pretrained."""
    from transformers import CLIPConfig, CLIPModel, SiglipConfig, SiglipModel

    folder.mkdir(parents=True)
    _save_tokenizer(folder)
    if kind == "clip":
        torch.manual_seed(0)
        config = CLIPConfig(text_config={**TEXT, "bos_token_id": 2, "eos_token_id": 3, "pad_token_id": 0},
                            vision_config=VISION, projection_dim=12)
        CLIPModel(config).save_pretrained(folder)
        (folder / "preprocessor_config.json").write_text(json.dumps(helpers.clip_processor_config(32)),
                                                         encoding="utf-8")
    else:
        torch.manual_seed(1)
        SiglipModel(SiglipConfig(text_config={**TEXT, "pad_token_id": 0}, vision_config=VISION)).save_pretrained(
            folder)  # no preprocessor config: the SigLIP defaults are used
    return folder


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("joint-models")
    return {kind: save_tiny_joint_model(root / f"tiny-{kind}", kind) for kind in ("clip", "siglip")}


@pytest.fixture(scope="module")
def user_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """What a user has: a folder of videos, an ActivityNet-Captions-style train file and a val caption.txt."""
    root = tmp_path_factory.mktemp("user")
    videos = root / "videos"
    videos.mkdir()
    for stem, (times, _) in VIDEOS.items():
        write_video(videos / f"{stem}.mp4", times)
    train = {stem: {"duration": float(times[-1]) + 0.5, "timestamps": [[0.0, float(times[-1])]],
                    "sentences": [texts[0]]} for stem, (times, texts) in VIDEOS.items()}
    (root / "train.json").write_text(json.dumps(train), encoding="utf-8")
    (root / "val.caption.txt").write_text("".join(f"{stem}#enc#1 {texts[1]}\n" for stem, (_, texts) in VIDEOS.items()),
                                          encoding="utf-8")
    return {"root": root, "videos": videos, "train": root / "train.json", "val": root / "val.caption.txt"}


def _invoke(*args: str) -> dict:
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 0, result.output
    return result


def _summary(result) -> dict:
    text = result.stdout
    return json.loads(text[text.index("{"):])


@pytest.fixture(scope="module", params=["clip", "siglip"])
def trained(request: pytest.FixtureRequest, models: dict[str, Path], user_files: dict[str, Path],
            tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The README's trained path, run through the CLI: extract frames, extract text, train 2 epochs, build-index."""
    kind = request.param
    spec = f"{kind}:{models[kind]}"
    work = tmp_path_factory.mktemp(f"trained-{kind}")
    data = work / "data"
    frames = _summary(_invoke("extract", "--videos", str(user_files["videos"]), "--out", str(data), "--backbone", spec,
                              "--collection", "videos", "--device", "cpu", "--no-progress"))
    text = _summary(_invoke("extract-text", "--data", str(data), "--collection", "videos", "--text-backbone", spec,
                            "--captions", f"train={user_files['train']}", "--captions", f"val={user_files['val']}",
                            "--no-progress"))
    run = work / "run"
    _invoke("train", "--data", str(data), "--collection", "videos", "--preset", "tiny", "--out", str(run),
            "--video-feature", frames["feature_name"], "--text-feature", text["text_feature"],
            "--set", "train.epochs=2", "--set", "train.threads=1", "--set", "model.block.widths=[null]",
            "--set", "model.registers.diffusion.steps=2", "--seed", "0", "--no-progress")
    index = work / "index"
    _invoke("build-index", "--checkpoint", str(run / "best.pt"), "--videos", str(user_files["videos"]), "--backbone",
            spec, "--text-backbone", spec, "--device", "cpu", "--out", str(index), "--no-progress")
    return {"kind": kind, "spec": spec, "data": data, "frames": frames, "text": text, "run": run, "index": index,
            "folder": models[kind]}


def test_text_features_equal_the_search_time_query_encoder(trained: dict) -> None:
    from prvr.index.layout import open_active
    from prvr.text_encoders import ClipTextEncoder, load_query_encoder

    text = trained["text"]
    assert text["splits"] == {"train": len(VIDEOS), "val": len(VIDEOS)} and text["text_backbone"].startswith(
        f"{trained['kind']}:tiny-{trained['kind']}@")
    with open_active(trained["index"]) as active:
        record = active.manifest.text_backbone
    assert record["kind"] == trained["kind"] and record["id"] == text["text_backbone"]
    encoder = load_query_encoder(record)  # exactly what Retriever.load builds for `prvr query` / `prvr serve`
    sentences = {f"{stem}#enc#{k}": texts[k] for stem, (_, texts) in VIDEOS.items() for k in (0, 1)}
    with h5py.File(text["features"], "r") as handle:
        assert handle.attrs["text_backbone"] == text["text_backbone"]
        assert json.loads(handle.attrs["text_backbone_record"])["kind"] == trained["kind"]
        stored = {key: np.asarray(handle[key]) for key in handle.keys()}
    assert set(stored) == set(sentences)
    for key, sentence in sentences.items():  # one sentence at a time, as `prvr query` encodes it
        searched = encoder.encode([sentence]).tokens[0]
        assert searched.shape == (1, encoder.dim)
        assert torch.equal(torch.from_numpy(stored[key]), torch.from_numpy(searched)), key
    # and the reference: the model's own get_text_features, padded the way it was trained
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(trained["folder"]).eval()
    tokenizer = AutoTokenizer.from_pretrained(trained["folder"])
    padding = "max_length" if trained["kind"] == "siglip" else "longest"
    inputs = tokenizer(["a man walks the dog"], padding=padding, max_length=16, truncation=True, return_tensors="pt")
    if trained["kind"] == "siglip":
        inputs.pop("attention_mask")
    inputs.pop("token_type_ids", None)
    with torch.no_grad():
        output = model.get_text_features(**inputs)
    output = output if isinstance(output, torch.Tensor) else output.pooler_output
    np.testing.assert_allclose(stored["walk#enc#0"], output.numpy(), rtol=1e-5, atol=1e-6)
    assert isinstance(encoder, ClipTextEncoder)


def test_backbone_ids_are_recorded_and_query_answers(trained: dict) -> None:
    _, config, _ = load_model(trained["run"] / "best.pt")
    assert config.data.text_backbone == trained["text"]["text_backbone"]
    assert config.data.video_backbone == trained["frames"]["backbone"]
    # one model, two towers: the frame and text ids name the same weights
    assert config.data.video_backbone.rpartition("@")[2] == config.data.text_backbone.rpartition("@")[2]
    assert config.model.video_dim == config.model.text_dim  # the joint space
    result = _invoke("query", "a woman cooks pasta", "--index", str(trained["index"]), "--json", "-k", "5")
    hits = json.loads(result.stdout)
    assert sorted(hit["video_id"] for hit in hits) == sorted(VIDEOS)
    assert all(np.isfinite(hit["score"]) for hit in hits)
    assert [hit["score"] for hit in hits] == sorted((hit["score"] for hit in hits), reverse=True)


def test_a_query_encoder_of_another_backbone_is_refused(trained: dict, models: dict[str, Path],
                                                        user_files: dict[str, Path], tmp_path: Path) -> None:
    from prvr.retriever import Retriever
    from prvr.text_encoders import ClipTextEncoder

    other = "siglip" if trained["kind"] == "clip" else "clip"
    result = CliRunner().invoke(main, ["build-index", "--checkpoint", str(trained["run"] / "best.pt"), "--data",
                                       str(trained["data"]), "--collection", "videos", "--split", "val",
                                       "--text-backbone", f"{other}:{models[other]}", "--out", str(tmp_path / "x")])
    assert result.exit_code == 1
    assert trained["text"]["text_backbone"] in result.output and f"{other}:tiny-{other}@" in result.output
    assert "--text-backbone" in result.output and not (tmp_path / "x").exists()
    with pytest.raises(ValueError, match=f"{other}:tiny-{other}@.*{trained['kind']}:tiny-{trained['kind']}@"):
        Retriever.load(trained["index"], text_encoder=ClipTextEncoder(models[other]))
    # a feature file of one backbone is never extended with another's features
    result = CliRunner().invoke(main, ["extract-text", "--data", str(trained["data"]), "--collection", "videos",
                                       "--text-backbone", f"{other}:{models[other]}", "--name",
                                       trained["text"]["text_feature"], "--no-progress"])
    assert result.exit_code == 1
    assert trained["text"]["text_backbone"] in result.output and f"{other}:tiny-{other}@" in result.output
    assert "--name" in result.output


def test_fine_tuning_or_evaluating_on_query_features_of_another_backbone_is_refused(
        trained: dict, models: dict[str, Path], user_files: dict[str, Path], tmp_path: Path) -> None:
    other = "siglip" if trained["kind"] == "clip" else "clip"
    data = tmp_path / "data"
    frames = _summary(_invoke("extract", "--videos", str(user_files["videos"]), "--out", str(data), "--backbone",
                              trained["spec"], "--collection", "videos", "--device", "cpu", "--no-progress"))
    text = _summary(_invoke("extract-text", "--data", str(data), "--collection", "videos", "--text-backbone",
                            f"{other}:{models[other]}", "--captions", f"train={user_files['train']}",
                            "--captions", f"val={user_files['val']}", "--no-progress"))
    result = CliRunner().invoke(main, ["train", "--data", str(data), "--collection", "videos", "--preset", "tiny",
                                       "--out", str(tmp_path / "run"), "--video-feature", frames["feature_name"],
                                       "--text-feature", text["text_feature"], "--init-from",
                                       str(trained["run"] / "best.pt"), "--set", "train.epochs=1",
                                       "--set", "model.block.widths=[null]",
                                       "--set", "model.registers.diffusion.steps=2", "--no-progress"])
    assert result.exit_code == 1
    assert trained["text"]["text_backbone"] in result.output and text["text_backbone"] in result.output, result.output
    # the other backbone's features under the name the checkpoint reads: `prvr eval` must refuse them
    _invoke("extract-text", "--data", str(data), "--collection", "videos", "--text-backbone",
            f"{other}:{models[other]}", "--split", "val", "--name", trained["text"]["text_feature"], "--no-progress")
    result = CliRunner().invoke(main, ["eval", "--checkpoint", str(trained["run"] / "best.pt"), "--data", str(data),
                                       "--collection", "videos", "--split", "val"])
    assert result.exit_code == 1
    assert trained["text"]["text_backbone"] in result.output and text["text_backbone"] in result.output, result.output


def test_a_backbone_without_a_text_tower_is_refused(models: dict[str, Path], tmp_path: Path) -> None:
    from transformers import ViTConfig, ViTModel

    vit = tmp_path / "tiny-vit"
    ViTModel(ViTConfig(**VISION)).save_pretrained(vit)
    (tmp_path / "none.pt").write_bytes(b"never read: the text backbone is checked first")
    runner = CliRunner()
    for spec, expected in ((f"vision:{vit}", "no text tower"), (f"clip:{vit}", "no text tower"),
                           (f"clip:{models['siglip']}", f"siglip:{models['siglip']}"),
                           (str(tmp_path / "missing"), "is not a folder")):
        result = runner.invoke(main, ["extract-text", "--data", str(tmp_path / "data"), "--text-backbone", spec])
        assert result.exit_code == 1 and expected in result.output, (spec, result.output)
        result = runner.invoke(main, ["build-index", "--checkpoint", str(tmp_path / "none.pt"), "--data",
                                      str(tmp_path), "--collection", "c", "--text-backbone", spec, "--out",
                                      str(tmp_path / "index")])
        assert result.exit_code == 1 and expected in result.output, (spec, result.output)


def test_imported_annotation_files_of_two_splits_get_distinct_ids(tmp_path: Path) -> None:
    """`extract-text --captions train=a.json --captions val=b.json` over the same videos: one feature file holds
    both splits, so their caption ids must not collide (they did: both started at <video>#enc#0)."""
    from prvr.commands.extract_cli import _import_captions
    from prvr.data.captions import caption_path, read_captions

    for split, sentence in (("train", "a man walks"), ("val", "a dog runs")):
        annotations = {stem: {"duration": 4.0, "timestamps": [[0.0, 2.0], [2.0, 4.0]],
                              "sentences": [sentence, sentence + " again"]} for stem in ("walk", "beach")}
        (tmp_path / f"{split}.json").write_text(json.dumps(annotations), encoding="utf-8")
        _import_captions(str(tmp_path / "data"), "videos", split, str(tmp_path / f"{split}.json"))
    train = [r.query_id for r in read_captions(caption_path(tmp_path / "data", "videos", "train"))]
    val = [r.query_id for r in read_captions(caption_path(tmp_path / "data", "videos", "val"))]
    assert sorted(train) == ["beach#enc#0", "beach#enc#1", "walk#enc#0", "walk#enc#1"]
    assert sorted(val) == ["beach#enc#2", "beach#enc#3", "walk#enc#2", "walk#enc#3"]
    _import_captions(str(tmp_path / "data"), "videos", "val", str(tmp_path / "val.json"))  # again: the same ids
    assert [r.query_id for r in read_captions(caption_path(tmp_path / "data", "videos", "val"))] == val
