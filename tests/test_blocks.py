"""Tests for the branched layer, the mixture fusion and the register-augmented Gaussian block (prvr.nn.blocks).

Run this file as a script for a timing print of the full-size frame block (forward + backward).
"""

from __future__ import annotations

import math

import pytest
import torch

from prvr.config import BlockConfig
from prvr.nn.attention import register_attention_mask, stacked_priors
from prvr.nn.blocks import BranchedTransformerLayer, MixtureFusion, RegisterGaussianBlock
from prvr.nn.layers import TransformerLayer

DIM, HEADS, FFN = 32, 4, 48
WIDTHS = (None, 0.25, 1.0, 8.0)


def prefix_mask(lengths: list[int], max_len: int) -> torch.Tensor:
    return torch.arange(max_len)[None, :] < torch.tensor(lengths)[:, None]


def make_block(widths: tuple[float | None, ...] = WIDTHS, dropout: float = 0.1, seed: int = 0) -> RegisterGaussianBlock:
    torch.manual_seed(seed)
    return RegisterGaussianBlock(DIM, HEADS, FFN, dropout, BlockConfig(widths=widths, fusion_temperature=0.6))


def naive_fusion(fusion: MixtureFusion, y: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Slow reference: one video and one branch at a time."""
    batch, n, length, dim = y.shape
    z = torch.zeros(batch, length, dim)
    pi = torch.zeros(batch, length, n)
    for b in range(batch):
        valid = int(mask[b].sum())
        w0 = y[b, :, :valid].reshape(-1, dim).mean(dim=0)  # (D,)
        logits = torch.zeros(length, n)
        for branch in range(n):
            u = fusion.summary(w0[None, None], y[b : b + 1, branch, :valid])[0, 0]  # (D,)
            key = fusion.key(u)
            bias = fusion.bias(u)[0]
            for t in range(length):
                logits[t, branch] = (key @ y[b, branch, t]) / math.sqrt(dim) + bias
        pi[b] = torch.softmax(logits / fusion.temperature, dim=-1)
        for t in range(length):
            z[b, t] = (pi[b, t][:, None] * y[b, :, t]).sum(dim=0)
    return z, pi


def test_branched_layer_equals_independent_layers() -> None:
    torch.manual_seed(0)
    layers = [TransformerLayer(DIM, HEADS, FFN, dropout=0.1).eval() for _ in WIDTHS]
    branched = BranchedTransformerLayer.from_layers(layers).eval()
    token_mask = prefix_mask([5, 9, 2], 9)
    k = 2
    x = torch.randn(3, 9 + k, DIM)
    allowed = register_attention_mask(token_mask, k)
    priors = stacked_priors(token_mask.sum(1), 9, WIDTHS, k)
    out = branched(x, allowed, priors)
    assert out.shape == (3, len(WIDTHS), 9 + k, DIM)
    for b, layer in enumerate(layers):
        reference = layer(x, attn_mask=allowed, prior=priors[:, b])
        torch.testing.assert_close(out[:, b], reference, atol=1e-5, rtol=1e-5)
    plain = branched(x, allowed, None)
    for b, layer in enumerate(layers):
        torch.testing.assert_close(plain[:, b], layer(x, attn_mask=allowed), atol=1e-5, rtol=1e-5)


def test_branched_layer_gradients_match_reference() -> None:
    torch.manual_seed(1)
    branched = BranchedTransformerLayer(3, DIM, HEADS, FFN, dropout=0.0)
    layers = branched.to_layers()
    x = torch.randn(2, 6, DIM, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    allowed = register_attention_mask(prefix_mask([4, 6], 5), 1)
    priors = stacked_priors(torch.tensor([4, 5]), 5, (None, 0.5, 2.0), 1)
    weights = torch.randn(2, 3, 6, DIM)
    (branched(x, allowed, priors) * weights).sum().backward()
    outputs = [layer(x_ref, attn_mask=allowed, prior=priors[:, b]) for b, layer in enumerate(layers)]
    sum((out * weights[:, b]).sum() for b, out in enumerate(outputs)).backward()
    torch.testing.assert_close(x.grad, x_ref.grad, atol=1e-5, rtol=1e-4)
    for b, layer in enumerate(layers):
        torch.testing.assert_close(branched.ffn_in_weight.grad[b], layer.ffn[0].weight.grad.t(), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(branched.query_bias.grad[b], layer.attention.query.bias.grad, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(branched.ffn_norm_weight.grad[b], layer.ffn_norm.weight.grad, atol=1e-5, rtol=1e-4)


def test_branched_layer_rejects_bad_shapes() -> None:
    branched = BranchedTransformerLayer(2, DIM, HEADS, FFN)
    with pytest.raises(ValueError, match="priors"):
        branched(torch.randn(1, 4, DIM), None, torch.ones(1, 3, 4, 4))
    with pytest.raises(ValueError, match="divisible"):
        BranchedTransformerLayer(2, 30, 4, FFN)


def test_mixture_fusion_matches_naive_and_weights_sum_to_one() -> None:
    torch.manual_seed(2)
    fusion = MixtureFusion(DIM, HEADS, dropout=0.1, temperature=0.3).eval()
    mask = prefix_mask([6, 3, 1], 6)
    y = torch.randn(3, 4, 6, DIM)
    z, pi = fusion(y, mask, return_weights=True)
    assert z.shape == (3, 6, DIM) and pi.shape == (3, 6, 4)
    torch.testing.assert_close(pi.sum(dim=-1), torch.ones(3, 6))
    assert bool((pi >= 0).all())
    z_ref, pi_ref = naive_fusion(fusion, y, mask)
    for b, n in enumerate([6, 3, 1]):
        torch.testing.assert_close(pi[b, :n], pi_ref[b, :n], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(z[b, :n], z_ref[b, :n], atol=1e-5, rtol=1e-5)
    # padded steps never influence valid ones
    noisy = y.clone()
    noisy[1, :, 3:] = 50 * torch.randn(4, 3, DIM)
    torch.testing.assert_close(fusion(noisy, mask)[1, :3], z[1, :3], atol=1e-5, rtol=1e-5)


def test_mixture_fusion_is_length_agnostic() -> None:
    torch.manual_seed(3)
    fusion = MixtureFusion(DIM, HEADS).eval()
    for length in (1, 7, 130):
        z = fusion(torch.randn(2, 3, length, DIM), prefix_mask([length, 1], length))
        assert z.shape == (2, length, DIM) and bool(torch.isfinite(z).all())


@pytest.mark.parametrize("with_registers", [True, False])
def test_block_output_shape(with_registers: bool) -> None:
    block = make_block().eval()
    x = torch.randn(3, 10, DIM)
    registers = torch.randn(3, 4, DIM) if with_registers else None
    out = block(x, prefix_mask([10, 4, 1], 10), registers)
    assert out.shape == (3, 10, DIM) and bool(torch.isfinite(out).all())


def test_single_branch_skips_fusion() -> None:
    block = make_block(widths=(None,)).eval()  # to_layers() copies the eval mode
    assert block.fusion is None
    x, registers = torch.randn(2, 5, DIM), torch.randn(2, 3, DIM)
    mask = prefix_mask([5, 2], 5)
    sequence = torch.cat([x, block.register_proj(registers)], dim=1)
    expected = block.layers.to_layers()[0](sequence, attn_mask=register_attention_mask(mask, 3))[:, :5]
    torch.testing.assert_close(block(x, mask, registers), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("with_registers", [True, False])
def test_block_batch_independence(with_registers: bool) -> None:
    block = make_block(seed=4).eval()
    torch.manual_seed(5)
    lengths = [20, 7, 13]
    x = torch.randn(3, 20, DIM)
    registers = torch.randn(3, 5, DIM)
    batch_out = block(x, prefix_mask(lengths, 20), registers if with_registers else None)
    for b, n in enumerate(lengths):
        alone = block(x[b : b + 1, :n], prefix_mask([n], n), registers[b : b + 1] if with_registers else None)
        torch.testing.assert_close(batch_out[b : b + 1, :n], alone, atol=1e-5, rtol=1e-5)


def test_block_ignores_padded_inputs() -> None:
    block = make_block(seed=6).eval()
    torch.manual_seed(7)
    mask = prefix_mask([12, 5], 12)
    x, registers = torch.randn(2, 12, DIM), torch.randn(2, 3, DIM)
    noisy = x.clone()
    noisy[1, 5:] = 100 * torch.randn(7, DIM)
    expected = block(x, mask, registers)[1, :5]
    torch.testing.assert_close(block(noisy, mask, registers)[1, :5], expected, atol=1e-5, rtol=1e-5)


def test_block_registers_matter_and_eval_is_deterministic() -> None:
    block = make_block(seed=8)
    torch.manual_seed(9)
    mask = prefix_mask([9, 6], 9)
    x, registers = torch.randn(2, 9, DIM), torch.randn(2, 4, DIM)
    block.eval()
    first = block(x, mask, registers)
    assert torch.equal(first, block(x, mask, registers))
    assert not torch.allclose(first, block(x, mask, torch.randn(2, 4, DIM)), atol=1e-4)
    block.train()
    assert not torch.allclose(block(x, mask, registers), block(x, mask, registers), atol=1e-6)  # dropout is live


def test_block_gradients_flow_everywhere() -> None:
    block = make_block(seed=10).train()
    torch.manual_seed(11)
    x = torch.randn(2, 8, DIM, requires_grad=True)
    registers = torch.randn(2, 4, DIM, requires_grad=True)
    out = block(x, prefix_mask([8, 3], 8), registers)
    (out * torch.randn_like(out)).sum().backward()
    for name, parameter in block.named_parameters():
        assert parameter.grad is not None, name
        assert bool(torch.isfinite(parameter.grad).all()), name
        assert float(parameter.grad.abs().sum()) > 0, name
    assert float(registers.grad.abs().sum()) > 0 and float(x.grad.abs().sum()) > 0


def test_full_size_block_runs() -> None:
    torch.manual_seed(12)
    block = RegisterGaussianBlock(384, 4, 1536, 0.31, BlockConfig()).eval()
    assert len(block.widths) == 8
    params = sum(p.numel() for p in block.parameters())
    assert 14_000_000 < params < 16_000_000  # 8 layers of 1.77 M + register projection + fusion
    out = block(torch.randn(2, 6, 384), prefix_mask([6, 3], 6), torch.randn(2, 4, 384))
    assert out.shape == (2, 6, 384)


def test_block_rejects_bad_inputs() -> None:
    block = make_block()
    with pytest.raises(ValueError, match="registers"):
        block(torch.randn(2, 5, DIM), prefix_mask([5, 5], 5), torch.randn(1, 3, DIM))
    with pytest.raises(ValueError, match="prefix"):
        block(torch.randn(1, 3, DIM), torch.tensor([[True, False, True]]), None)
    with pytest.raises(ValueError, match="at least one"):
        RegisterGaussianBlock(DIM, HEADS, FFN, 0.0, BlockConfig(widths=()))


if __name__ == "__main__":
    import time

    torch.manual_seed(0)
    batch, frames, k, dim = 128, 128, 4, 384
    block = RegisterGaussianBlock(dim, 4, 1536, 0.31, BlockConfig()).train()
    x = torch.randn(batch, frames, dim, requires_grad=True)
    registers = torch.randn(batch, k, dim, requires_grad=True)
    lengths = torch.randint(frames // 4, frames + 1, (batch,))
    mask = torch.arange(frames)[None, :] < lengths[:, None]
    for step in range(2):
        start = time.perf_counter()
        out = block(x, mask, registers)
        middle = time.perf_counter()
        out.square().mean().backward()
        end = time.perf_counter()
        print(
            f"step {step}: B={batch} L={frames}+{k} D={dim} branches=8 threads={torch.get_num_threads()}: "
            f"forward {middle - start:.2f} s, backward {end - middle:.2f} s"
        )
    with torch.no_grad():
        block.eval()
        start = time.perf_counter()
        block(x, mask, registers)
        print(f"eval forward (index time) {time.perf_counter() - start:.2f} s")
