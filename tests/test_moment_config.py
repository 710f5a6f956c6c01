"""The nested MomentConfig: groups, validation, and the migration of the flat layout of before the nesting.

Old checkpoints (``moment_config`` holding the flat JSON), old flat presets and old flat dotted overrides must keep
working; the dicts below are written out by hand as the flat code wrote them.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from prvr.config import DataConfig, config_to_dict
from prvr.moments.config import (
    FLAT_MOMENT_FIELDS,
    InferenceConfig,
    MomentConfig,
    MomentLossConfig,
    NetworkConfig,
    SpanDiffusionConfig,
    VCMRConfig,
    apply_moment_overrides,
    load_moment_preset,
    migrate_moment_path,
)
from prvr.moments.denoiser import MomentDenoiser
from prvr.moments.localizer import DiffusionMomentLocalizer, load_localizer

# Every field of the flat MomentConfig, with a value that differs from its default.
OLD_FLAT: dict = {
    "name": "old", "seed": 7,
    "data": {"video_feature": "synth", "text_feature": "synth", "max_frames": 16},
    "condition": "retrieval", "video_dim": 12, "text_dim": 10,
    "hidden_size": 32, "num_heads": 4, "ffn_size": 64, "input_dropout": 0.2, "dropout": 0.05, "cross_layers": 1,
    "encoder_layers": 3, "relevance_feature": True,
    "decoder": "diffusionvmr", "decoder_layers": 3, "roi_points": 4, "decoder_roi": True, "dynamic_dim": 8,
    "diffusion_steps": 100, "schedule": "linear", "signal_scale": 1.5, "train_proposals": 6,
    "progressive_proposals": True,
    "sampling_steps": 4, "num_spans": 7, "eta": 0.5, "nms_threshold": 0.6, "relevance_rescore": 0.25,
    "relevance_proposal_step": 20,
    "cost_l1": 5.0, "cost_giou": 2.0, "cost_class": 3.0, "background_weight": 0.2,
    "sim_margin": 0.3, "sim_temperature": 0.4, "loss_weights": {"l1": 1.0, "sim_nce": 0.0},
    "lr": 1e-3, "weight_decay": 0.01, "grad_clip": 2.0, "batch_size": 8, "epochs": 3, "patience": 2,
    "eval_batch_size": 16, "threads": 2,
    "vcmr_mode": "softmax", "vcmr_alpha": 5.0, "vcmr_top_k": 3,
}

# What the flat code's MomentConfig().to_json() wrote (the defaults, all 48 fields).
OLD_DEFAULT_JSON = (
    '{"background_weight": 0.1, "batch_size": 32, "condition": "frames", "cost_class": 4.0, "cost_giou": 1.0, '
    '"cost_l1": 10.0, "cross_layers": 2, "data": {"cache_in_memory": true, "clip_bins": 32, "max_frames": 128, '
    '"max_query_tokens": 30, "text_feature": "roberta", "video_backbone": null, "video_feature": "i3d"}, '
    '"decoder": "momentdiff", "decoder_layers": 2, "decoder_roi": false, "diffusion_steps": 1000, "dropout": 0.1, '
    '"dynamic_dim": 64, "encoder_layers": 2, "epochs": 30, "eta": 0.0, "eval_batch_size": 64, "ffn_size": 1024, '
    '"grad_clip": 0.1, "hidden_size": 256, "input_dropout": 0.5, "loss_weights": {"ce": 4.0, "giou": 1.0, '
    '"l1": 10.0, "sim_bce": 4.0, "sim_nce": 4.0, "sim_rank": 4.0}, "lr": 0.0002, "name": "default", '
    '"nms_threshold": null, "num_heads": 8, "num_spans": 10, "patience": 10, "progressive_proposals": false, '
    '"relevance_feature": false, "relevance_proposal_step": null, "relevance_rescore": 0.0, "roi_points": 16, '
    '"sampling_steps": 2, "schedule": "cosine", "seed": 0, "signal_scale": 2.0, "sim_margin": 0.2, '
    '"sim_temperature": 0.5, "text_dim": 1024, "threads": 1, "train_proposals": 5, "vcmr_alpha": 20.0, '
    '"vcmr_mode": "exp", "vcmr_top_k": 10, "video_dim": 1024, "weight_decay": 0.0001}'
)

# The flat tiny preset as it was bundled before the nesting.
OLD_TINY_PRESET = {
    "name": "tiny", "hidden_size": 64, "num_heads": 4, "ffn_size": 128, "input_dropout": 0.1, "dropout": 0.0,
    "cross_layers": 1, "encoder_layers": 1, "decoder_layers": 2, "lr": 0.0005, "grad_clip": 1.0, "batch_size": 32,
    "epochs": 4, "patience": 4, "data": {"max_frames": 32}, "loss_weights": {"sim_nce": 0.0},
}


def _nested(config: MomentConfig, path: str):
    value = config
    for key in path.split("."):
        value = getattr(value, key)
    return value


def test_every_flat_field_lands_on_its_nested_path() -> None:
    assert len(OLD_FLAT) == 48 and set(OLD_FLAT) - set(FLAT_MOMENT_FIELDS) == {
        "name", "seed", "data", "condition", "video_dim", "text_dim"}
    config = MomentConfig.from_dict(OLD_FLAT)
    for key, value in OLD_FLAT.items():
        if key in ("data", "loss_weights"):
            continue
        assert _nested(config, FLAT_MOMENT_FIELDS.get(key, key)) == value, key
    assert config.data == DataConfig(video_feature="synth", text_feature="synth", max_frames=16)
    assert config.loss.weights == {"l1": 1.0, "giou": 1.0, "ce": 4.0, "sim_rank": 4.0, "sim_bce": 4.0,
                                   "sim_nce": 0.0}  # a partial dict merges into the defaults, as before
    # the exact table, spelled out for the groups that renamed a field
    assert FLAT_MOMENT_FIELDS["diffusion_steps"] == "diffusion.steps"
    assert FLAT_MOMENT_FIELDS["loss_weights"] == "loss.weights"
    assert FLAT_MOMENT_FIELDS["background_weight"] == "loss.background_weight"
    assert [FLAT_MOMENT_FIELDS[k] for k in ("vcmr_mode", "vcmr_alpha", "vcmr_top_k")] == [
        "vcmr.mode", "vcmr.alpha", "vcmr.top_k"]
    # nested JSON round trip, and the nested dict holds no flat name
    assert MomentConfig.from_json(config.to_json()) == config
    assert not set(config_to_dict(config)) & set(FLAT_MOMENT_FIELDS)


def test_old_default_json_equals_the_new_defaults() -> None:
    assert MomentConfig.from_json(OLD_DEFAULT_JSON) == MomentConfig()
    assert set(json.loads(OLD_DEFAULT_JSON)) == set(FLAT_MOMENT_FIELDS) | {"name", "seed", "data", "condition",
                                                                          "video_dim", "text_dim"}


def test_presets_are_nested_and_equal_the_old_flat_ones(tmp_path: Path) -> None:
    assert MomentConfig.from_dict(OLD_TINY_PRESET) == load_moment_preset("tiny")
    for name in ("tiny", "cpu", "diffusionvmr_cpu", "default"):
        preset = Path(__file__).parents[1] / "prvr" / "moments" / "presets" / f"{name}.json"
        assert not set(json.loads(preset.read_text())) & set(FLAT_MOMENT_FIELDS), name
    old_file = tmp_path / "old.json"  # a user's flat preset file still loads
    old_file.write_text(json.dumps(OLD_TINY_PRESET))
    assert load_moment_preset(str(old_file)) == load_moment_preset("tiny")


def test_unknown_and_doubled_keys_are_rejected_clearly() -> None:
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['no_such_field'\].*network.*sampling_steps"):
        MomentConfig.from_dict({"no_such_field": 1})
    with pytest.raises(ValueError, match=r"NetworkConfig: unknown key\(s\) \['nope'\]"):
        MomentConfig.from_dict({"network": {"nope": 1}})
    with pytest.raises(ValueError, match="name the same field"):
        MomentConfig.from_dict({"sampling_steps": 3, "inference": {"sampling_steps": 4}})
    mixed = MomentConfig.from_dict({"sampling_steps": 3, "inference": {"num_spans": 4}})  # both layouts, no clash
    assert (mixed.inference.sampling_steps, mixed.inference.num_spans) == (3, 4)
    with pytest.raises(ValueError, match="unknown"):
        apply_moment_overrides(MomentConfig(), ["no_such_field=1"])
    with pytest.raises(ValueError, match="unknown"):
        apply_moment_overrides(MomentConfig(), ["inference.no_such_field=1"])


def test_flat_and_nested_overrides_agree() -> None:
    base = load_moment_preset("tiny")
    flat = apply_moment_overrides(base, ["sampling_steps=4", "decoder=diffusionvmr", "epochs=5",
                                         "loss_weights.sim_nce=1.5", "diffusion_steps=50", "vcmr_top_k=3",
                                         "nms_threshold=null", "seed=3"])
    nested = apply_moment_overrides(base, ["inference.sampling_steps=4", "network.decoder=diffusionvmr",
                                           "train.epochs=5", "loss.weights.sim_nce=1.5", "diffusion.steps=50",
                                           "vcmr.top_k=3", "inference.nms_threshold=null", "seed=3"])
    assert flat == nested
    assert (nested.inference.sampling_steps, nested.network.decoder, nested.train.epochs) == (4, "diffusionvmr", 5)
    assert nested.loss.weights["sim_nce"] == 1.5 and nested.loss.weights["l1"] == base.loss.weights["l1"]
    assert (nested.diffusion.steps, nested.vcmr.top_k, nested.seed) == (50, 3, 3)
    assert migrate_moment_path("loss_weights.sim_nce") == "loss.weights.sim_nce"
    assert migrate_moment_path("train.epochs") == "train.epochs"
    assert migrate_moment_path("data.max_frames") == "data.max_frames"


def test_each_group_validates_itself_and_the_top_level_checks_across_groups() -> None:
    with pytest.raises(ValueError, match="network: hidden_size 64 must divide by num_heads 5"):
        NetworkConfig(hidden_size=64, num_heads=5)
    with pytest.raises(ValueError, match="multiple of 4"):
        NetworkConfig(hidden_size=6, num_heads=2)
    for bad in (dict(decoder_layers=0), dict(roi_points=0)):
        with pytest.raises(ValueError, match="must be >= 1"):
            NetworkConfig(**bad)
    for bad in (dict(steps=0), dict(signal_scale=0.0), dict(train_proposals=0)):
        with pytest.raises(ValueError, match="MomentConfig.diffusion"):
            SpanDiffusionConfig(**bad)
    for bad in (dict(sampling_steps=0), dict(num_spans=0), dict(relevance_proposal_step=-1)):
        with pytest.raises(ValueError, match="MomentConfig.inference"):
            InferenceConfig(**bad)
    with pytest.raises(ValueError, match="loss name"):
        MomentLossConfig(weights={"typo": 1.0})
    with pytest.raises(ValueError, match="top_k"):
        VCMRConfig(top_k=0)
    with pytest.raises(ValueError, match=r"sampling_steps must lie in \[1, diffusion.steps=10\]"):
        apply_moment_overrides(MomentConfig(), ["diffusion.steps=10", "inference.sampling_steps=11"])
    with pytest.raises(ValueError, match=r"relevance_proposal_step must be None or lie in \[0, diffusion.steps=10\)"):
        MomentConfig(diffusion=SpanDiffusionConfig(steps=10), inference=InferenceConfig(relevance_proposal_step=10))
    with pytest.raises(ValueError, match="sampling_steps"):  # an old flat checkpoint with a bad value still fails
        MomentConfig.from_dict({"diffusion_steps": 3, "sampling_steps": 4})


def test_an_old_flat_checkpoint_still_loads(tmp_path: Path) -> None:
    flat = {**json.loads(OLD_DEFAULT_JSON), **{k: v for k, v in OLD_FLAT.items() if k != "loss_weights"},
            "condition": "frames"}
    config = MomentConfig.from_dict(flat)
    torch.manual_seed(0)
    model = MomentDenoiser(config)
    path = tmp_path / "old.pt"
    torch.save({"format_version": 1, "moment_config": json.dumps(flat, sort_keys=True), "model": model.state_dict(),
                "epoch": 3}, path)  # what the flat code's save_moment_checkpoint wrote
    loaded = load_localizer(path)
    assert loaded.config == config
    assert loaded.config.inference.sampling_steps == 4 and loaded.config.network.decoder == "diffusionvmr"
    reference = DiffusionMomentLocalizer(model, config)
    rng = np.random.default_rng(0)
    query = rng.standard_normal((5, config.text_dim)).astype(np.float32)
    frames = rng.standard_normal((14, config.video_dim)).astype(np.float32)
    found = loaded.localize(query, frames, 30.0, num_moments=3)
    expected = reference.localize(query, frames, 30.0, num_moments=3)
    assert [dataclasses.astuple(m) for m in found.moments] == [dataclasses.astuple(m) for m in expected.moments]
    np.testing.assert_array_equal(found.relevance, expected.relevance)
