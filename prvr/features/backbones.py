"""Frozen backbones through transformers: image backbones (CLIP and other vision models, by registry) and text.

Shape letters: N images, H height, W width, S crop side, D feature dimension.

Every backbone loads from a local model folder. A hub name (``openai/clip-vit-base-patch32``) is resolved to a
folder of the Hugging Face cache first (downloaded when the hub is reachable), so a model folder you copied or
downloaded yourself works exactly like a hub name. Each backbone has a ``backbone_id``,
``<kind>:<name>@<sha256[:12] of its weight file>``, recorded in every feature file it writes; a model trained or
indexed on one backbone refuses features of another (:func:`check_backbone`).

Images are preprocessed with torch, batched on the backbone's device, following the model folder's
``preprocessor_config.json`` (the steps of transformers' image processors: resize the shorter side with bicubic
antialiased interpolation, round to 8 bits, centre-crop, rescale, normalise), so no PIL or torchvision is needed.
``tests/test_backbones.py`` checks the result against transformers' own CLIP processor.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import h5py
import numpy as np
import torch
import torch.nn.functional as F

from prvr.text_encoders import MINILM_L6_NAME, TokenFeatureEncoder, _weight_file, file_digest, find_minilm_l6_dir

__all__ = [
    "DEFAULT_IMAGE_BACKBONE",
    "DEFAULT_TEXT_BACKBONE",
    "ImageBackbone",
    "ImagePreprocessor",
    "ClipImageBackbone",
    "VisionModelBackbone",
    "register_image_backbone",
    "image_backbone_kinds",
    "load_image_backbone",
    "load_text_backbone",
    "resolve_model_dir",
    "backbone_ids_match",
    "check_backbone",
    "feature_file_backbone",
]

logger = logging.getLogger(__name__)

DEFAULT_IMAGE_BACKBONE = "clip:openai/clip-vit-base-patch32"
DEFAULT_TEXT_BACKBONE = "minilm-l6"

# The files a model folder needs (weights in one format, configs, tokenizers); other formats are not downloaded.
_DOWNLOAD_PATTERNS = ["*.json", "*.txt", "*.model", "*.safetensors"]
_DOWNLOAD_FALLBACK_PATTERNS = ["*.json", "*.txt", "*.model", "pytorch_model.bin"]

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")  # "name" or "owner/name"; anything else is a path

_OFFLINE_HINT = (
    "the model hub is not reachable from here and the model is not in the local Hugging Face cache; on a machine "
    "with access run `hf download {name} --local-dir DIR` (huggingface_hub's CLI), copy DIR here and pass its "
    "path instead of the hub name"
)


# ----------------------------------------------------------------------------------------------------------------
# model folders


def resolve_model_dir(name_or_path: str | os.PathLike[str], *, allow_download: bool = True) -> Path:
    """A local folder holding the model ``name_or_path`` (config.json, weights, processor / tokenizer files).

    Args:
        name_or_path: an existing folder, or a hub repository id such as ``openai/clip-vit-base-patch32``.
        allow_download: try the hub when the model is not in the local Hugging Face cache (``HF_HUB_OFFLINE=1``
            in the environment turns this off).

    Returns:
        The folder.

    Raises:
        FileNotFoundError: a path-like argument (``./x``, ``/x``, ``~/x``) that does not exist.
        RuntimeError: a hub id that is neither cached nor downloadable (the message says how to get it).
    """
    text = os.fspath(name_or_path)
    path = Path(text).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path} has no config.json; pass a transformers model folder (save_pretrained)")
        return path
    if not _HUB_ID.fullmatch(text) or path.exists():
        raise FileNotFoundError(f"model folder {text!r} does not exist; pass a local model folder or a hub id")
    from huggingface_hub import snapshot_download

    errors: list[str] = []
    allow_download = allow_download and os.environ.get("HF_HUB_OFFLINE", "").lower() not in ("1", "true", "yes", "on")
    for local_only in (True, False) if allow_download else (True,):
        for patterns in (_DOWNLOAD_PATTERNS, _DOWNLOAD_FALLBACK_PATTERNS):
            try:
                folder = Path(snapshot_download(text, allow_patterns=patterns, local_files_only=local_only))
            except Exception as error:  # the hub client raises many types (offline, 404, timeouts, ...)
                errors.append(f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}")
                continue
            if (folder / "config.json").is_file():
                try:
                    _weight_file(folder)
                except RuntimeError as error:
                    errors.append(str(error))
                    continue
                return folder
    raise RuntimeError(f"cannot load {text!r}: " + _OFFLINE_HINT.format(name=text) + f" (last error: {errors[-1]})")


def _model_name(spec: str, folder: Path) -> str:
    return spec if not Path(spec).expanduser().is_dir() else folder.resolve().name


def _backbone_id(kind: str, name: str, folder: Path) -> str:
    return f"{kind}:{name}@{file_digest(_weight_file(folder))[:12]}"


def _select_device(device: str | torch.device) -> torch.device:
    from prvr.engine import resolve_device

    return device if isinstance(device, torch.device) else resolve_device(device)


# ----------------------------------------------------------------------------------------------------------------
# preprocessing


@dataclass(frozen=True)
class ImagePreprocessor:
    """The image processor steps of a model folder's ``preprocessor_config.json``, batched in torch.

    Attributes:
        shortest_edge: resize so the shorter side has this many pixels (aspect kept), or None.
        resize_to: resize to exactly (height, width), or None (used when the config gives height/width).
        crop: centre-crop to (height, width), or None.
        rescale: multiply the 8-bit values by this (1/255), or None.
        mean: per-channel mean to subtract (after rescaling), or None to skip normalisation.
        std: per-channel standard deviation to divide by.
    """

    shortest_edge: int | None
    resize_to: tuple[int, int] | None
    crop: tuple[int, int] | None
    rescale: float | None
    mean: tuple[float, float, float] | None
    std: tuple[float, float, float] | None

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ImagePreprocessor:
        """Read a transformers ``preprocessor_config.json`` dict (CLIP, ViT, DINOv2, SigLIP ... processors)."""
        shortest_edge = resize_to = crop = None
        if config.get("do_resize", True):
            size = config.get("size", {})
            if isinstance(size, int):
                size = {"shortest_edge": size}
            if "shortest_edge" in size:
                shortest_edge = int(size["shortest_edge"])
            elif "height" in size and "width" in size:
                resize_to = (int(size["height"]), int(size["width"]))
            else:
                raise ValueError(f"preprocessor size {size!r} is not supported; expected shortest_edge or height/width")
        if config.get("do_center_crop", False):
            crop_size = config.get("crop_size", {})
            if isinstance(crop_size, int):
                crop_size = {"height": crop_size, "width": crop_size}
            crop = (int(crop_size["height"]), int(crop_size["width"]))
        rescale = float(config.get("rescale_factor", 1 / 255)) if config.get("do_rescale", True) else None
        mean = std = None
        if config.get("do_normalize", True):
            mean = tuple(float(v) for v in config["image_mean"])  # type: ignore[assignment]
            std = tuple(float(v) for v in config["image_std"])  # type: ignore[assignment]
        return cls(shortest_edge, resize_to, crop, rescale, mean, std)

    @classmethod
    def from_folder(cls, folder: Path, default: Mapping[str, Any] | None = None) -> ImagePreprocessor:
        """Read ``folder/preprocessor_config.json``; use ``default`` when absent (or fail when it is None)."""
        file = folder / "preprocessor_config.json"
        if file.is_file():
            return cls.from_config(json.loads(file.read_text(encoding="utf-8")))
        if default is None:
            raise FileNotFoundError(
                f"{folder} has no preprocessor_config.json; save the model's image processor there "
                "(processor.save_pretrained(folder))"
            )
        logger.info("%s has no preprocessor_config.json; using the model family's defaults", folder)
        return cls.from_config(default)

    def __call__(self, images: Sequence[np.ndarray], device: torch.device) -> torch.Tensor:
        """Preprocess RGB images (any sizes) into one batch.

        Args:
            images: N arrays (H_i, W_i, 3) uint8.
            device: where the work and the result go.

        Returns:
            (N, 3, S_h, S_w) float32 pixel values.
        """
        batch = []
        for image in images:
            if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
                raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {image.shape} {image.dtype}")
            x = torch.from_numpy(np.ascontiguousarray(image)).to(device)
            x = x.permute(2, 0, 1)[None].float()  # (1, 3, H, W)
            height, width = x.shape[-2:]
            size = self.resize_to
            if self.shortest_edge is not None:
                short, long = (height, width) if height <= width else (width, height)
                new_long = int(self.shortest_edge * long / short)
                size = (self.shortest_edge, new_long) if height <= width else (new_long, self.shortest_edge)
            if size is not None and tuple(size) != (height, width):
                x = F.interpolate(x, size=size, mode="bicubic", antialias=True, align_corners=False)
                x = x.round().clamp(0, 255)  # the processors resize 8-bit images
            if self.crop is not None:
                x = _center_crop(x, self.crop)
            batch.append(x)
        pixels = torch.cat(batch)  # (N, 3, S_h, S_w)
        if self.rescale is not None:
            pixels = pixels * self.rescale
        if self.mean is not None and self.std is not None:
            mean = torch.tensor(self.mean, device=device).view(1, 3, 1, 1)
            std = torch.tensor(self.std, device=device).view(1, 3, 1, 1)
            pixels = (pixels - mean) / std
        return pixels


def _center_crop(x: torch.Tensor, crop: tuple[int, int]) -> torch.Tensor:
    """Centre crop of (1, 3, H, W) to (1, 3, h, w); zero-padded first when the image is smaller than the crop."""
    height, width = x.shape[-2:]
    crop_h, crop_w = crop
    if height < crop_h or width < crop_w:
        pad_h, pad_w = max(crop_h - height, 0), max(crop_w - width, 0)
        x = F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
        height, width = x.shape[-2:]
    top = (height - crop_h) // 2
    left = (width - crop_w) // 2
    return x[..., top : top + crop_h, left : left + crop_w]


# ----------------------------------------------------------------------------------------------------------------
# image backbones


class ImageBackbone(Protocol):
    """What the extractor needs from a frame backbone."""

    backbone_id: str
    dim: int
    batch_size: int

    def encode_images(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """(N, D) float32 features of N RGB (H, W, 3) uint8 images."""
        ...


class _TransformersImageBackbone:
    """Shared batching of the transformers image backbones: subclasses implement ``_forward(pixels) -> (N, D)``."""

    kind = ""

    def __init__(self, folder: Path, *, name: str, device: str | torch.device, batch_size: int,
                 preprocessor: ImagePreprocessor, model: torch.nn.Module, dim: int) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model_dir = folder
        self.device = _select_device(device)
        self.batch_size = batch_size
        self.preprocessor = preprocessor
        self.model = model.eval().to(self.device)
        self.dim = dim
        self.backbone_id = _backbone_id(self.kind, name, folder)
        logger.info("loaded image backbone %s from %s on %s", self.backbone_id, folder, self.device)

    def _forward(self, pixels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def encode_images(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Encode N images, ``batch_size`` at a time.

        Args:
            images: N (H, W, 3) uint8 RGB arrays.

        Returns:
            (N, D) float32.
        """
        out = np.zeros((len(images), self.dim), dtype=np.float32)
        for start in range(0, len(images), self.batch_size):
            chunk = images[start : start + self.batch_size]
            with torch.inference_mode():
                pixels = self.preprocessor(chunk, self.device)  # (B, 3, S, S)
                out[start : start + len(chunk)] = self._forward(pixels).float().cpu().numpy()  # (B, D)
        return out


_IMAGE_BACKBONES: dict[str, Callable[..., ImageBackbone]] = {}


def register_image_backbone(kind: str) -> Callable[[Callable[..., ImageBackbone]], Callable[..., ImageBackbone]]:
    """Register a factory ``factory(name_or_path, *, device, batch_size) -> ImageBackbone`` under ``kind``.

    ``load_image_backbone("<kind>:<name or path>")`` then builds it.
    """

    def decorate(factory: Callable[..., ImageBackbone]) -> Callable[..., ImageBackbone]:
        if kind in _IMAGE_BACKBONES:
            raise ValueError(f"image backbone kind {kind!r} is already registered")
        _IMAGE_BACKBONES[kind] = factory
        return factory

    return decorate


def image_backbone_kinds() -> list[str]:
    """The registered kinds (``clip``, ``vision``, ...)."""
    return sorted(_IMAGE_BACKBONES)


class _JointImageBackbone(_TransformersImageBackbone):
    """An image tower projected into a joint image-text space (CLIP, SigLIP): ``get_image_features``."""

    def _forward(self, pixels: torch.Tensor) -> torch.Tensor:
        output = self.model.get_image_features(pixel_values=pixels)
        # transformers >= 5 returns the vision output with the projected vector as pooler_output; older: a tensor
        return output if isinstance(output, torch.Tensor) else output.pooler_output  # (B, D)


@register_image_backbone("clip")
class ClipImageBackbone(_JointImageBackbone):
    """CLIP's image tower and projection (``CLIPModel.get_image_features``): one D-dim vector per image.

    D is the projection dim (512 for ViT-B/32), the space CLIP shares with its text tower. Without a
    ``preprocessor_config.json`` in the folder, OpenAI CLIP's processor settings at the model's image size are used.

    Args:
        name_or_path: a model folder or hub id (``openai/clip-vit-base-patch32``).
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:1`` ...
        batch_size: images per forward pass.
        allow_download: try the hub when a hub id is not cached.
    """

    kind = "clip"

    def __init__(self, name_or_path: str | os.PathLike[str], *, device: str | torch.device = "auto",
                 batch_size: int = 32, allow_download: bool = True) -> None:
        from transformers import CLIPModel

        folder = resolve_model_dir(name_or_path, allow_download=allow_download)
        model = CLIPModel.from_pretrained(str(folder), local_files_only=True)
        side = int(model.config.vision_config.image_size)
        default = {"size": {"shortest_edge": side}, "do_center_crop": True, "crop_size": side,
                   "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711]}
        super().__init__(folder, name=_model_name(os.fspath(name_or_path), folder), device=device,
                         batch_size=batch_size, preprocessor=ImagePreprocessor.from_folder(folder, default),
                         model=model, dim=int(model.config.projection_dim))



@register_image_backbone("siglip")
class SiglipImageBackbone(_JointImageBackbone):
    """SigLIP's image tower (``SiglipModel.get_image_features``): one D-dim vector per image in the text's space.

    D is the vision hidden size (SigLIP's pooling head keeps it; the text tower matches it). Without a
    ``preprocessor_config.json`` in the folder, SigLIP's processor settings (resize to the model's image size, no
    crop, mean = std = 0.5) are used.

    Args:
        name_or_path: a model folder or hub id (``google/siglip-base-patch16-224``).
        device: ``auto``, ``cpu``, ``cuda`` ...
        batch_size: images per forward pass.
        allow_download: try the hub when a hub id is not cached.
    """

    kind = "siglip"

    def __init__(self, name_or_path: str | os.PathLike[str], *, device: str | torch.device = "auto",
                 batch_size: int = 32, allow_download: bool = True) -> None:
        from transformers import SiglipModel

        folder = resolve_model_dir(name_or_path, allow_download=allow_download)
        model = SiglipModel.from_pretrained(str(folder), local_files_only=True)
        side = int(model.config.vision_config.image_size)
        default = {"size": {"height": side, "width": side}, "do_center_crop": False,
                   "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}
        super().__init__(folder, name=_model_name(os.fspath(name_or_path), folder), device=device,
                         batch_size=batch_size, preprocessor=ImagePreprocessor.from_folder(folder, default),
                         model=model, dim=int(model.config.vision_config.hidden_size))



@register_image_backbone("vision")
class VisionModelBackbone(_TransformersImageBackbone):
    """Any transformers vision encoder (``AutoModel``: ViT, DINOv2, ...): its pooled output, else its first token.

    Args:
        name_or_path: a model folder (with ``preprocessor_config.json``) or hub id.
        device: ``auto``, ``cpu``, ``cuda`` ...
        batch_size: images per forward pass.
        allow_download: try the hub when a hub id is not cached.
    """

    kind = "vision"

    def __init__(self, name_or_path: str | os.PathLike[str], *, device: str | torch.device = "auto",
                 batch_size: int = 32, allow_download: bool = True) -> None:
        from transformers import AutoModel

        folder = resolve_model_dir(name_or_path, allow_download=allow_download)
        model = AutoModel.from_pretrained(str(folder), local_files_only=True)
        if "pixel_values" not in inspect.signature(model.forward).parameters:
            raise ValueError(f"{folder} holds a {type(model).__name__}, which takes no images; pass a vision model")
        super().__init__(folder, name=_model_name(os.fspath(name_or_path), folder), device=device,
                         batch_size=batch_size, preprocessor=ImagePreprocessor.from_folder(folder),
                         model=model, dim=int(model.config.hidden_size))

    def _forward(self, pixels: torch.Tensor) -> torch.Tensor:
        output = self.model(pixel_values=pixels)
        pooled = getattr(output, "pooler_output", None)
        return pooled if pooled is not None else output.last_hidden_state[:, 0]  # (B, D)


def load_image_backbone(spec: str = DEFAULT_IMAGE_BACKBONE, *, device: str | torch.device = "auto",
                        batch_size: int = 32, allow_download: bool = True) -> ImageBackbone:
    """Build a frame backbone from ``<kind>:<name or path>`` (a bare name or path means ``clip``).

    Args:
        spec: e.g. ``clip:openai/clip-vit-base-patch32``, ``clip:/models/clip-vit-base-patch32``,
            ``vision:/models/dinov2-small``.
        device: ``auto``, ``cpu``, ``cuda`` ...
        batch_size: images per forward pass.
        allow_download: try the hub for hub ids missing from the local cache.

    Returns:
        The backbone.
    """
    kind, target = _parse_image_spec(spec)
    return _IMAGE_BACKBONES[kind](target, device=device, batch_size=batch_size, allow_download=allow_download)


def image_backbone_id(spec: str, *, allow_download: bool = True) -> str:
    """The id :func:`load_image_backbone` would give ``spec`` (``kind:name@sha12`` of the weights), without loading
    the model: for a driver whose backbone runs elsewhere (``prvr extract --ray``)."""
    kind, target = _parse_image_spec(spec)
    folder = resolve_model_dir(target, allow_download=allow_download)
    return _backbone_id(kind, _model_name(target, folder), folder)


def _parse_image_spec(spec: str) -> tuple[str, str]:
    """``(kind, model folder or hub id)`` of ``<kind>:<target>`` (a bare name or path means ``clip``)."""
    kind, separator, target = spec.partition(":")
    if not separator or kind not in _IMAGE_BACKBONES:
        if separator and not Path(spec).expanduser().exists() and "/" not in kind:
            raise ValueError(f"unknown image backbone kind {kind!r} in {spec!r}; choose one of {image_backbone_kinds()}")
        kind, target = "clip", spec
    if not target:
        raise ValueError(f"backbone {spec!r} names no model; use <kind>:<model folder or hub id>")
    return kind, target


def load_text_backbone(spec: str = DEFAULT_TEXT_BACKBONE, *, allow_download: bool = True,
                       **kwargs: Any) -> TokenFeatureEncoder:
    """A token-feature text backbone: ``minilm-l6`` (the packaged all-MiniLM-L6-v2), a model folder or a hub id.

    Args:
        spec: what to load.
        allow_download: try the hub for hub ids missing from the local cache.
        **kwargs: passed to :class:`prvr.text_encoders.TokenFeatureEncoder` (max_tokens, batch_size, ...).

    Returns:
        The encoder; its ``encoder_id`` is ``<name>@<sha256[:12] of the weights>``.
    """
    if spec == DEFAULT_TEXT_BACKBONE:
        return TokenFeatureEncoder(find_minilm_l6_dir(), name=MINILM_L6_NAME, **kwargs)
    folder = resolve_model_dir(spec, allow_download=allow_download)
    return TokenFeatureEncoder(folder, name=_model_name(spec, folder), **kwargs)


# ----------------------------------------------------------------------------------------------------------------
# backbone ids


def _split_id(backbone_id: str) -> tuple[str, str, str]:
    """(kind, name, digest) of ``kind:name@digest``; missing parts are ''."""
    head, _, digest = backbone_id.rpartition("@") if "@" in backbone_id else (backbone_id, "", "")
    kind, separator, name = head.partition(":")
    if not separator or "/" in kind:
        kind, name = "", head
    return kind, name, digest


def backbone_ids_match(a: str, b: str) -> bool:
    """Whether two backbone ids name the same weights used the same way.

    Ids with a weight digest match when their kind and digest agree (the same weights loaded from a hub name and
    from a local folder carry different names); ids without one must be equal.

    >>> backbone_ids_match("clip:openai/clip-vit-base-patch32@0123456789ab", "clip:clip-vit-base-patch32@0123456789ab")
    True
    >>> backbone_ids_match("clip:m@0123456789ab", "vision:m@0123456789ab"), backbone_ids_match("i3d", "clip:m@01")
    (False, False)
    """
    kind_a, _, digest_a = _split_id(a)
    kind_b, _, digest_b = _split_id(b)
    if digest_a and digest_b:
        return kind_a == kind_b and digest_a == digest_b
    return a == b


def feature_file_backbone(path: str | os.PathLike[str]) -> str | None:
    """The ``backbone`` attribute of an HDF5 feature file (None for files without one, e.g. published releases)."""
    try:
        with h5py.File(path, "r") as handle:
            value = handle.attrs.get("backbone")
    except OSError as error:
        raise ValueError(f"{path} is not a readable HDF5 feature file ({error})") from None
    if value is None:
        return None
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def check_backbone(expected: str | None, features: str | os.PathLike[str] | None = None, *,
                   found: str | None = None, what: str = "the model") -> bool:
    """Refuse features made by another backbone than the one ``what`` was trained / indexed with.

    Args:
        expected: the backbone id recorded by the checkpoint or index (None: unknown).
        features: an HDF5 feature file whose ``backbone`` attribute is compared (or give ``found``).
        found: the features' backbone id, when already known.
        what: how the messages name the owner of ``expected`` (e.g. ``"checkpoint runs/x/best.pt"``).

    Returns:
        True when both ids are known and match; False when either is unknown (nothing to compare, logged).

    Raises:
        ValueError: the ids differ; the message names both and the fix.
    """
    if features is not None and found is None:
        found = feature_file_backbone(features)
    source = f"features {features}" if features is not None else "the features"
    if expected is None or found is None:
        logger.warning("cannot check the backbone of %s against %s: %s has no backbone id", source, what,
                       "the model" if expected is None else "the feature file")
        return False
    if not backbone_ids_match(expected, found):
        raise ValueError(
            f"{source} were made by backbone {found!r} but {what} expects {expected!r}; features of "
            f"different backbones live in different spaces: re-extract the videos with `prvr extract --backbone` "
            f"set to the model's backbone, or use a model trained on {found!r}"
        )
    return True
