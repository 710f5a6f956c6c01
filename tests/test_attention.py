"""Tests for the Gaussian temporal prior and the register attention mask (prvr.nn.attention)."""

from __future__ import annotations


import pytest
import torch

import reference
from prvr.nn.attention import (
    gaussian_prior,
    lengths_from_mask,
    register_attention_mask,
    stacked_priors,
)
from prvr.nn.layers import MultiHeadAttention, TransformerLayer


def prefix_mask(lengths: list[int], max_len: int) -> torch.Tensor:
    return torch.arange(max_len)[None, :] < torch.tensor(lengths)[:, None]


@pytest.mark.parametrize("width", [0.25, 1.0, 4.0, 16.0, 0.001, None])
def test_gaussian_prior_matches_naive_loop(width: float | None) -> None:
    lengths = [1, 2, 5, 9, 7]
    max_len = 9
    prior = gaussian_prior(torch.tensor(lengths), max_len, width, dtype=torch.float64)
    assert prior.shape == (len(lengths), max_len, max_len)
    for b, n in enumerate(lengths):
        torch.testing.assert_close(prior[b], reference.gaussian_prior(n, max_len, width), atol=1e-12, rtol=1e-9)


def test_gaussian_prior_float32_close_to_float64() -> None:
    lengths = torch.tensor([3, 64, 128])
    for width in (0.25, 2.0):
        p32 = gaussian_prior(lengths, 128, width)
        p64 = gaussian_prior(lengths, 128, width, dtype=torch.float64)
        assert p32.dtype == torch.float32
        torch.testing.assert_close(p32.double(), p64, atol=1e-5, rtol=1e-5)


def test_gaussian_prior_row_max_one_and_padding_ones() -> None:
    torch.manual_seed(0)
    lengths = torch.randint(1, 40, (6,))
    prior = gaussian_prior(lengths, 40, 0.5)
    for b, n in enumerate(lengths.tolist()):
        valid = prior[b, :n, :n]
        torch.testing.assert_close(valid.amax(dim=1), torch.ones(n))
        assert bool((valid >= 0).all()) and bool((valid <= 1).all())
        assert bool((prior[b, n:, :] == 1).all()) and bool((prior[b, :, n:] == 1).all())


def test_gaussian_prior_tiny_width_has_no_nan() -> None:
    # Width 0 is clamped to 0.01: the raw exponent underflows for long videos, the log-space max must not.
    prior = gaussian_prior(torch.tensor([128, 3]), 128, 0.0)
    assert bool(torch.isfinite(prior).all())
    torch.testing.assert_close(prior[0].amax(dim=1), torch.ones(128))


def test_gaussian_prior_independent_of_batch_padding() -> None:
    for n in (1, 2, 17, 32):
        alone = gaussian_prior(torch.tensor([n]), n, 1.0)[0]
        padded = gaussian_prior(torch.tensor([128, n, 5]), 128, 1.0)[1, :n, :n]
        assert torch.equal(alone, padded)


def test_gaussian_prior_rejects_bad_lengths() -> None:
    with pytest.raises(ValueError, match="lengths must lie"):
        gaussian_prior(torch.tensor([3, 10]), 8, 1.0)
    with pytest.raises(ValueError, match="integer"):
        gaussian_prior(torch.tensor([3.0]), 8, 1.0)


def test_huge_width_gives_plain_masked_attention() -> None:
    torch.manual_seed(1)
    lengths = torch.tensor([4, 11, 1])
    max_len = 11
    prior = gaussian_prior(lengths, max_len, 1e6)
    valid = prefix_mask(lengths.tolist(), max_len)
    assert bool(((prior - 1).abs() < 1e-6).all())
    attention = MultiHeadAttention(16, 4).eval()
    x = torch.randn(3, max_len, 16)
    gaussian = attention(x, key_mask=valid, prior=prior)
    plain = attention(x, key_mask=valid)
    torch.testing.assert_close(gaussian, plain, atol=1e-6, rtol=1e-6)
    # and a narrow width really changes the attention
    narrow = attention(x, key_mask=valid, prior=gaussian_prior(lengths, max_len, 0.25))
    assert not torch.allclose(narrow[1], plain[1], atol=1e-3)


def test_stacked_priors_layout() -> None:
    lengths = torch.tensor([5, 8, 1])
    widths = (None, 0.25, 2.0)
    k = 3
    stacked = stacked_priors(lengths, 8, widths, k)
    assert stacked.shape == (3, len(widths), 11, 11)
    for index, width in enumerate(widths):
        torch.testing.assert_close(stacked[:, index, :8, :8], gaussian_prior(lengths, 8, width))
    assert bool((stacked[:, :, 8:, :] == 1).all())  # register rows
    assert bool((stacked[:, :, :, 8:] == 1).all())  # token -> register entries
    assert bool((stacked[:, 0] == 1).all())  # the plain branch
    assert stacked_priors(lengths, 8, widths, 0).shape == (3, 3, 8, 8)


def test_register_attention_mask_matches_naive() -> None:
    token_mask = prefix_mask([3, 6, 0, 1], 6)
    for k in (0, 1, 4):
        mask = register_attention_mask(token_mask, k)
        assert mask.dtype == torch.bool and mask.shape == (4, 6 + k, 6 + k)
        assert torch.equal(mask, reference.register_mask(token_mask, k))
        assert not bool(mask[:, 6:, 6:].any())  # registers never attend to registers
        assert not bool(mask[:, :, :6][~token_mask[:, None, :].expand(-1, 6 + k, -1)].any())  # padded keys


def test_register_mask_in_a_layer_isolates_registers_and_padding() -> None:
    torch.manual_seed(2)
    dim, k, max_len = 16, 3, 7
    token_mask = prefix_mask([4, 7], max_len)
    allowed = register_attention_mask(token_mask, k)
    prior = stacked_priors(token_mask.sum(1), max_len, (0.5,), k)[:, 0]
    layer = TransformerLayer(dim, 4, 32).eval()
    x = torch.randn(2, max_len + k, dim)
    base = layer(x, attn_mask=allowed, prior=prior)

    # a register's input only changes its own output among the register rows
    moved = x.clone()
    moved[:, max_len + 1] += torch.randn(2, dim)
    out = layer(moved, attn_mask=allowed, prior=prior)
    others = [max_len, max_len + 2]
    torch.testing.assert_close(out[:, others], base[:, others], atol=0, rtol=0)
    assert not torch.allclose(out[:, max_len + 1], base[:, max_len + 1])

    # random values in padded frames never reach valid tokens or registers
    noisy = x.clone()
    noisy[0, 4:max_len] = 100 * torch.randn(max_len - 4, dim)
    out = layer(noisy, attn_mask=allowed, prior=prior)
    keep = list(range(4)) + list(range(max_len, max_len + k))
    torch.testing.assert_close(out[0, keep], base[0, keep], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(out[1], base[1], atol=0, rtol=0)


def test_lengths_from_mask() -> None:
    mask = prefix_mask([2, 0, 5], 5)
    assert lengths_from_mask(mask).tolist() == [2, 0, 5]
    with pytest.raises(ValueError, match="prefix"):
        lengths_from_mask(torch.tensor([[True, False, True]]))
