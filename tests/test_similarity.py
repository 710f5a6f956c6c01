"""Max-over-token similarity against a python-loop reference: masks, chunking, argmax, fused scores."""

from __future__ import annotations


import pytest
import torch

import reference
from prvr.similarity import token_max_scores, video_scores
from prvr.types import VideoTokens


def _random_case(seed: int, num_queries: int = 5, num_videos: int = 6, num_tokens: int = 7, dim: int = 8):
    generator = torch.Generator().manual_seed(seed)
    query = torch.randn(num_queries, dim, generator=generator, dtype=torch.float64)
    tokens = torch.randn(num_videos, num_tokens, dim, generator=generator, dtype=torch.float64)
    lengths = torch.randint(1, num_tokens + 1, (num_videos,), generator=generator)
    lengths[0] = num_tokens  # one full video
    lengths[1] = 1  # one single-token video
    mask = torch.arange(num_tokens).unsqueeze(0) < lengths.unsqueeze(1)  # (B, T)
    return query, tokens, mask


@pytest.mark.parametrize("normalize", [False, True])
def test_matches_loop_with_mask(normalize: bool) -> None:
    query, tokens, mask = _random_case(0)
    expected, expected_pos = reference.max_similarity(query, tokens, mask, normalize)
    scores, positions = token_max_scores(query, tokens, mask, normalize, return_argmax=True)
    assert scores.shape == (5, 6)
    torch.testing.assert_close(scores, expected)
    assert torch.equal(positions, expected_pos)
    assert bool((positions < mask.sum(dim=1)).all())


def test_no_mask_equals_full_mask() -> None:
    query, tokens, _ = _random_case(1)
    full = torch.ones(tokens.shape[:2], dtype=torch.bool)
    expected, _ = reference.max_similarity(query, tokens, None, False)
    torch.testing.assert_close(token_max_scores(query, tokens, None), expected)
    torch.testing.assert_close(token_max_scores(query, tokens, full), expected)


@pytest.mark.parametrize("normalize", [False, True])
def test_padded_tokens_never_win(normalize: bool) -> None:
    query, tokens, mask = _random_case(2)
    query = query.abs()
    poisoned = tokens.clone()
    # Padded positions get huge values aligned with every query: they would win any unmasked max.
    poisoned[~mask] = 1e6
    expected, _ = reference.max_similarity(query, tokens, mask, normalize)
    scores, positions = token_max_scores(query, poisoned, mask, normalize, return_argmax=True)
    torch.testing.assert_close(scores, expected)
    lengths = mask.sum(dim=1)
    assert bool((positions < lengths.unsqueeze(0)).all())


@pytest.mark.parametrize("max_elements", [1, 7, 50, 300])
def test_chunking_equals_unchunked(max_elements: int) -> None:
    query, tokens, mask = _random_case(3, num_queries=9, num_videos=11)
    query_a = query.clone().requires_grad_(True)
    tokens_a = tokens.clone().requires_grad_(True)
    full = token_max_scores(query_a, tokens_a, mask, True)
    weights = torch.randn(full.shape, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    (full * weights).sum().backward()

    query_b = query.clone().requires_grad_(True)
    tokens_b = tokens.clone().requires_grad_(True)
    chunked, positions = token_max_scores(
        query_b, tokens_b, mask, True, max_elements=max_elements, return_argmax=True
    )
    (chunked * weights).sum().backward()
    torch.testing.assert_close(chunked, full)
    assert positions.shape == full.shape
    torch.testing.assert_close(query_b.grad, query_a.grad)
    torch.testing.assert_close(tokens_b.grad, tokens_a.grad)
    assert bool(torch.isfinite(tokens_b.grad).all())
    assert float(tokens_b.grad[~mask].abs().sum()) == 0.0  # padded tokens receive no gradient


def test_all_padded_video_raises() -> None:
    query, tokens, mask = _random_case(4)
    mask[3] = False
    with pytest.raises(ValueError, match="no valid token"):
        token_max_scores(query, tokens, mask)


def test_shape_errors() -> None:
    query, tokens, mask = _random_case(5)
    with pytest.raises(ValueError, match="width"):
        token_max_scores(query[:, :4], tokens, mask)
    with pytest.raises(ValueError, match="mask shape"):
        token_max_scores(query, tokens, mask[:, :3])
    with pytest.raises(ValueError, match="max_elements"):
        token_max_scores(query, tokens, mask, max_elements=0)


def test_cosine_is_scale_invariant() -> None:
    query, tokens, mask = _random_case(6)
    base = token_max_scores(query, tokens, mask, True)
    scaled = token_max_scores(query * 3.0, tokens * 0.25, mask, True)
    torch.testing.assert_close(base, scaled)
    assert float(base.abs().max()) <= 1.0 + 1e-12


def test_video_scores_fuses_clip_and_frame() -> None:
    generator = torch.Generator().manual_seed(7)
    query = torch.randn(4, 8, generator=generator, dtype=torch.float64)
    clip = torch.randn(3, 5, 8, generator=generator, dtype=torch.float64)
    frame = torch.randn(3, 6, 8, generator=generator, dtype=torch.float64)
    frame_mask = torch.tensor([[True] * 6, [True] * 2 + [False] * 4, [True] * 4 + [False] * 2])
    out = video_scores(query, VideoTokens(clip, frame, frame_mask), 0.6, 0.4)
    assert set(out) == {"clip", "frame", "total"}
    clip_ref, _ = reference.max_similarity(query, clip, None, True)
    frame_ref, _ = reference.max_similarity(query, frame, frame_mask, True)
    torch.testing.assert_close(out["clip"], clip_ref)
    torch.testing.assert_close(out["frame"], frame_ref)
    torch.testing.assert_close(out["total"], 0.6 * clip_ref + 0.4 * frame_ref)
    raw = video_scores(query, VideoTokens(clip, frame, frame_mask), 0.5, 0.5, normalize=False, max_elements=10)
    torch.testing.assert_close(raw["clip"], reference.max_similarity(query, clip, None, False)[0])
