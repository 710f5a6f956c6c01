from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from prvr.config import apply_overrides, load_preset
from prvr.data.preprocess import collate_queries, collate_videos, preprocess_query, preprocess_video
from prvr.losses import Criterion
from prvr.model import DreamPRVR, count_parameters

ABLATIONS = {
    "full": [],
    "registers_off": ["model.registers.enabled=false"],
    "no_diffusion": ["model.registers.diffusion.steps=0"],
    "gaussian_init": ["model.registers.init=gaussian"],
    "no_text_structure": ["loss.weights.div=0", "loss.weights.qsp=0"],
    "video_centric_noise": ["model.registers.diffusion.noise=video_centric"],
    "sampled_init": ["model.registers.sample_init_in_train=true"],
    "mssl_like": ["model.registers.enabled=false", "model.block.widths=[null]"],
    "gmmformer_like": ["model.registers.enabled=false"],
    "capproxy_recipe": ["model.projection_relu=false", "loss.weights.nce_fused=1.0"],
}


def tiny_config(*overrides: str):
    config = apply_overrides(load_preset("tiny"), list(overrides))
    return dataclasses.replace(config, model=dataclasses.replace(config.model, video_dim=12, text_dim=10))


def make_batch(config, lengths, queries_per_video=2, seed=0):
    rng = np.random.default_rng(seed)
    videos, tokens, video_index = [], [], []
    for v, n in enumerate(lengths):
        videos.append(preprocess_video(rng.standard_normal((n, config.model.video_dim)).astype(np.float32),
                                       config.data))
        for _ in range(queries_per_video):
            length = int(rng.integers(3, 12))
            tokens.append(preprocess_query(rng.standard_normal((length, config.model.text_dim)).astype(np.float32)))
            video_index.append(v)
    video_batch = collate_videos(videos, [f"v{i}" for i in range(len(lengths))])
    query_batch = collate_queries(tokens, [f"q{i}" for i in range(len(tokens))], np.asarray(video_index))
    return video_batch, query_batch


def test_published_preset_size_is_about_37m() -> None:
    n = count_parameters(DreamPRVR(load_preset("activitynet").model))
    assert 33e6 < n < 41e6, n


@pytest.mark.parametrize("name", list(ABLATIONS))
def test_every_variant_trains_one_step(name: str) -> None:
    torch.manual_seed(0)
    config = tiny_config(*ABLATIONS[name])
    model = DreamPRVR(config.model, seed=0)
    criterion = Criterion(config.loss, clip_weight=config.model.clip_weight, frame_weight=config.model.frame_weight)
    videos, queries = make_batch(config, [5, 40, 140, 1])
    outputs = model(videos, queries, generator=torch.Generator().manual_seed(0))
    losses = criterion(outputs, queries.video_index, epoch=0, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(losses["loss"])
    losses["loss"].backward()
    grads = [p.grad for p in model.query_encoder.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    has_registers = config.model.registers.enabled
    assert ("loss_kl" in losses) == (has_registers and config.model.registers.init == "pvs")
    assert ("loss_dre" in losses) == (has_registers and config.model.registers.diffusion.steps > 0)


def test_video_side_is_deterministic_and_batch_independent() -> None:
    torch.manual_seed(0)
    config = tiny_config()
    model = DreamPRVR(config.model, seed=0)
    model.train()  # encode_videos must switch to eval by itself
    videos, _ = make_batch(config, [7, 130, 33])
    first = model.encode_videos(videos)
    second = model.encode_videos(videos)
    assert torch.equal(first.clip, second.clip) and torch.equal(first.frame, second.frame)
    assert model.training  # restored
    alone, _ = make_batch(config, [7], seed=0)
    single = model.encode_videos(alone)
    torch.testing.assert_close(single.clip[0], first.clip[0], atol=1e-5, rtol=1e-5)
    n = int(alone.frame_mask[0].sum())
    torch.testing.assert_close(single.frame[0, :n], first.frame[0, :n], atol=1e-5, rtol=1e-5)
    assert first.clip.shape == (3, 32, config.model.hidden_size)
    assert first.frame.shape == (3, 128, config.model.hidden_size)
    assert first.registers is not None and first.registers.shape == (3, 2, config.model.hidden_size)


def test_query_encoder_ignores_padding_and_scores_shape() -> None:
    torch.manual_seed(0)
    config = tiny_config()
    model = DreamPRVR(config.model, seed=0)
    videos, queries = make_batch(config, [5, 9], queries_per_video=3)
    vectors = model.encode_queries(queries)
    assert vectors.shape == (6, config.model.hidden_size)
    one = dataclasses.replace(queries, tokens=queries.tokens[:1], mask=queries.mask[:1], query_ids=["q0"],
                              video_index=None)
    n = int(one.mask.sum())
    trimmed = dataclasses.replace(one, tokens=one.tokens[:, :n], mask=one.mask[:, :n])
    torch.testing.assert_close(model.encode_queries(trimmed)[0], vectors[0], atol=1e-5, rtol=1e-5)
    scores = model.score(vectors, model.encode_videos(videos))
    assert scores["total"].shape == (6, 2)
    expected = config.model.clip_weight * scores["clip"] + config.model.frame_weight * scores["frame"]
    torch.testing.assert_close(scores["total"], expected)


def test_empty_inputs_are_refused() -> None:
    config = tiny_config()
    model = DreamPRVR(config.model, seed=0)
    videos, queries = make_batch(config, [5])
    empty_mask = dataclasses.replace(queries, mask=torch.zeros_like(queries.mask))
    with pytest.raises(ValueError, match="no valid token"):
        model.encode_queries(empty_mask)
    with pytest.raises(ValueError, match="no valid frame"):
        model.encode_videos(dataclasses.replace(videos, frame_mask=torch.zeros_like(videos.frame_mask)))


def test_projection_relu_switch() -> None:
    videos, queries = make_batch(tiny_config(), [6, 9])
    for relu in (True, False):
        model = DreamPRVR(tiny_config(f"model.projection_relu={str(relu).lower()}").model, seed=0).eval()
        projected = model.query_encoder.project(queries.tokens)  # (Nq, L, D)
        assert bool((projected < 0).any()) is not relu  # ReLU leaves no negative value; without it some stay
        frames = model.video_encoder.frame_project(videos.frame_feats)  # (B, F, D)
        assert bool((frames < 0).any()) is not relu
