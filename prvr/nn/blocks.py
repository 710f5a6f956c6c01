"""DreamPRVR's register-augmented multi-branch Gaussian block: branched post-LN layers and mixture fusion.

Shape letters: B batch (videos), L token length (padded), K registers, S = L + K, N branches, D hidden, H heads,
E head width (D / H), F feed-forward width.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import Tensor, nn

from prvr.config import BlockConfig
from prvr.nn.attention import lengths_from_mask, register_attention_mask, stacked_priors
from prvr.nn.layers import LinearLayer, TransformerLayer, masked_softmax

__all__ = ["BranchedTransformerLayer", "MixtureFusion", "RegisterGaussianBlock"]

logger = logging.getLogger(__name__)

# (parameter name in BranchedTransformerLayer, path of the matching nn.Linear / nn.LayerNorm in TransformerLayer)
_LINEARS = (
    ("query", "attention.query"),
    ("key", "attention.key"),
    ("value", "attention.value"),
    ("out", "attention.out"),
    ("ffn_in", "ffn.0"),
    ("ffn_out", "ffn.3"),
)
_NORMS = (("attention_norm", "attention_norm"), ("ffn_norm", "ffn_norm"))


class BranchedTransformerLayer(nn.Module):
    """N independent post-LN transformer layers run as one: every weight carries a leading branch axis.

    Each branch is exactly a :class:`prvr.nn.layers.TransformerLayer` (same structure, same initialisation) with
    its own multiplicative attention prior; stacking turns the 6 projections of N layers into 6 batched matmuls
    instead of 6 N small ones (an 8-branch block is 16 layers per video, which matters on CPU). Linear weights are
    stored as (N, in, out); :meth:`from_layers` / :meth:`to_layers` convert from / to per-branch modules.
    """

    def __init__(self, num_branches: int, dim: int, heads: int, ffn_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        if num_branches < 1:
            raise ValueError(f"num_branches must be >= 1, got {num_branches}")
        if dim % heads != 0:
            raise ValueError(f"hidden size {dim} is not divisible by the number of heads {heads}")
        self.num_branches = num_branches
        self.dim = dim
        self.heads = heads
        self.ffn_dim = ffn_dim
        shapes = {"query": (dim, dim), "key": (dim, dim), "value": (dim, dim), "out": (dim, dim)}
        shapes.update({"ffn_in": (dim, ffn_dim), "ffn_out": (ffn_dim, dim)})
        for name, (fan_in, fan_out) in shapes.items():
            self.register_parameter(f"{name}_weight", nn.Parameter(torch.empty(num_branches, fan_in, fan_out)))
            self.register_parameter(f"{name}_bias", nn.Parameter(torch.empty(num_branches, fan_out)))
        for name, _ in _NORMS:
            self.register_parameter(f"{name}_weight", nn.Parameter(torch.ones(num_branches, dim)))
            self.register_parameter(f"{name}_bias", nn.Parameter(torch.zeros(num_branches, dim)))
        self.attention_dropout = nn.Dropout(dropout)
        self.ffn_dropout = nn.Dropout(dropout)
        self.dropout = nn.Dropout(dropout)
        # Initialise exactly like N freshly built TransformerLayers (nn.Linear / nn.LayerNorm defaults).
        self.load_layers([TransformerLayer(dim, heads, ffn_dim, dropout) for _ in range(num_branches)])

    @classmethod
    def from_layers(cls, layers: Sequence[TransformerLayer]) -> BranchedTransformerLayer:
        """A branched layer whose branch b has the weights of ``layers[b]`` (dropout taken from the first layer).

        Args:
            layers: N TransformerLayers of identical sizes.

        Returns:
            The branched layer, on the device/dtype of ``layers[0]``.
        """
        if len(layers) == 0:
            raise ValueError("from_layers needs at least one TransformerLayer")
        first = layers[0]
        dim = first.attention.query.in_features
        ffn_dim = first.ffn[0].out_features
        branched = cls(len(layers), dim, first.attention.heads, ffn_dim, first.dropout.p)
        branched = branched.to(device=first.attention.query.weight.device, dtype=first.attention.query.weight.dtype)
        branched.load_layers(layers)
        return branched

    @torch.no_grad()
    def load_layers(self, layers: Sequence[TransformerLayer]) -> None:
        """Copy the weights of N TransformerLayers into the branch slots (in place)."""
        if len(layers) != self.num_branches:
            raise ValueError(f"expected {self.num_branches} layers, got {len(layers)}")
        for b, layer in enumerate(layers):
            if layer.attention.heads != self.heads or layer.ffn[0].out_features != self.ffn_dim:
                raise ValueError("all layers must match the branched layer's heads and ffn width")
            for name, path in _LINEARS:
                linear = layer.get_submodule(path)
                getattr(self, f"{name}_weight")[b].copy_(linear.weight.t())  # nn.Linear keeps (out, in)
                getattr(self, f"{name}_bias")[b].copy_(linear.bias)
            for name, path in _NORMS:
                norm = layer.get_submodule(path)
                getattr(self, f"{name}_weight")[b].copy_(norm.weight)
                getattr(self, f"{name}_bias")[b].copy_(norm.bias)

    @torch.no_grad()
    def to_layers(self) -> list[TransformerLayer]:
        """N TransformerLayers holding copies of the branch weights, in this module's train/eval mode (the slow
        reference, for tests/inspection)."""
        weight = self.query_weight
        layers = []
        for b in range(self.num_branches):
            layer = TransformerLayer(self.dim, self.heads, self.ffn_dim, self.dropout.p)
            layer = layer.to(device=weight.device, dtype=weight.dtype).train(self.training)
            for name, path in _LINEARS:
                linear = layer.get_submodule(path)
                linear.weight.copy_(getattr(self, f"{name}_weight")[b].t())
                linear.bias.copy_(getattr(self, f"{name}_bias")[b])
            for name, path in _NORMS:
                norm = layer.get_submodule(path)
                norm.weight.copy_(getattr(self, f"{name}_weight")[b])
                norm.bias.copy_(getattr(self, f"{name}_bias")[b])
            layers.append(layer)
        return layers

    def _linear(self, x: Tensor, name: str) -> Tensor:
        """Per-branch affine map: (N, M, in) -> (N, M, out)."""
        weight = getattr(self, f"{name}_weight")  # (N, in, out)
        bias = getattr(self, f"{name}_bias")  # (N, out)
        return torch.baddbmm(bias[:, None, :], x, weight)

    def _norm(self, x: Tensor, name: str) -> Tensor:
        """Per-branch LayerNorm over the last axis of (N, B, S, D)."""
        weight = getattr(self, f"{name}_weight")[:, None, None, :]  # (N, 1, 1, D)
        bias = getattr(self, f"{name}_bias")[:, None, None, :]
        return F.layer_norm(x, (self.dim,)) * weight + bias

    def forward(self, x: Tensor, allowed: Tensor | None = None, priors: Tensor | None = None) -> Tensor:
        """Run all branches on the same input.

        Args:
            x: (B, S, D) input sequence, shared by every branch.
            allowed: (B, S, S) bool, True where row i may attend to key j (None = everything).
            priors: (B, N, S, S) multiplicative factors on the scaled logits, one per branch (None = plain).

        Returns:
            (B, N, S, D) branch outputs (a view of branch-major memory: ``rearrange(y, "b n s d -> (n b) s d")``
            is free).
        """
        batch, length, dim = x.shape
        n = self.num_branches
        if dim != self.dim:
            raise ValueError(f"expected hidden size {self.dim}, got input of shape {tuple(x.shape)}")
        if priors is not None and priors.shape != (batch, n, length, length):
            raise ValueError(f"priors must be (B, N, S, S) = {(batch, n, length, length)}, got {tuple(priors.shape)}")
        if allowed is not None and allowed.shape != (batch, length, length):
            raise ValueError(f"allowed must be (B, S, S) = {(batch, length, length)}, got {tuple(allowed.shape)}")
        shared = repeat(x, "b s d -> n (b s) d", n=n)  # (N, B*S, D), a stride-0 view
        q = rearrange(self._linear(shared, "query"), "n (b s) (h e) -> n b h s e", b=batch, h=self.heads)
        k = rearrange(self._linear(shared, "key"), "n (b s) (h e) -> n b h s e", b=batch, h=self.heads)
        v = rearrange(self._linear(shared, "value"), "n (b s) (h e) -> n b h s e", b=batch, h=self.heads)
        # (Q K^T / sqrt(E)) * prior with the scale folded into the small prior: one pass over the logits.
        scale = 1.0 / math.sqrt(q.shape[-1])
        factor = scale if priors is None else rearrange(priors, "b n s t -> n b 1 s t") * scale  # (N, B, 1, S, S)
        logits = torch.matmul(q, k.transpose(-1, -2)) * factor  # (N, B, H, S, S)
        mask = None if allowed is None else allowed[None, :, None]  # (1, B, 1, S, S)
        probs = self.attention_dropout(masked_softmax(logits, mask))  # (N, B, H, S, S)
        attended = rearrange(torch.matmul(probs, v), "n b h s e -> n (b s) (h e)")  # (N, B*S, D)
        attended = rearrange(self._linear(attended, "out"), "n (b s) d -> n b s d", b=batch)  # (N, B, S, D)
        h = self._norm(x[None] + self.dropout(attended), "attention_norm")  # (N, B, S, D)
        hidden = F.relu(self._linear(rearrange(h, "n b s d -> n (b s) d"), "ffn_in"))  # (N, B*S, F)
        ffn = rearrange(self._linear(self.ffn_dropout(hidden), "ffn_out"), "n (b s) d -> n b s d", b=batch)
        y = self._norm(h + self.dropout(ffn), "ffn_norm")  # (N, B, S, D)
        return rearrange(y, "n b s d -> b n s d")


class MixtureFusion(nn.Module):
    """Per-time-step mixture over branch outputs, length-agnostic and mask-aware.

    w0 = masked mean of the branch outputs over branches and valid time (B, D); u_b = one-query cross-attention of
    w0 over branch b's valid outputs, a post-LN block with FFN D -> D (weights shared by the branches) (B, N, D).
    Logits (our length-agnostic replacement of the reference code's MLP whose output width is the padded length):
    key_b = MLP(u_b) (Linear -> ReLU -> Linear), bias_b = Linear(D -> 1)(u_b) and
    logit_{b,t} = <key_b, y_{b,t}> / sqrt(D) + bias_b, i.e. each branch's summary scores that branch's own output
    at step t (content-based, so any length works and padding never enters). pi_t = softmax_b(logit_t / tau),
    z_t = sum_b pi_{t,b} y_{b,t}. Padded positions receive finite but meaningless values.
    """

    def __init__(self, dim: int, heads: int, dropout: float = 0.0, temperature: float = 0.6) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"fusion temperature must be > 0, got {temperature}")
        self.dim = dim
        self.temperature = temperature
        self.summary = TransformerLayer(dim, heads, ffn_dim=dim, dropout=dropout)
        self.key = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim))
        self.bias = nn.Linear(dim, 1)

    def forward(
        self, y: Tensor, mask: Tensor | None = None, *, return_weights: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Fuse the branches.

        Args:
            y: (B, N, L, D) branch outputs.
            mask: (B, L) bool, True on valid steps (None = all valid).
            return_weights: also return the mixture weights.

        Returns:
            z (B, L, D), or (z, pi) with pi (B, L, N) summing to 1 over branches.
        """
        batch, n, length, dim = y.shape
        if mask is None:
            mask = torch.ones(batch, length, dtype=torch.bool, device=y.device)
        if mask.shape != (batch, length):
            raise ValueError(f"mask must be (B, L) = {(batch, length)}, got {tuple(mask.shape)}")
        valid = mask.to(y.dtype)  # (B, L)
        count = (valid.sum(dim=1) * n).clamp(min=1.0)  # (B,)
        w0 = torch.einsum("bnld,bl->bd", y, valid) / count[:, None]  # (B, D)
        queries = repeat(w0, "b d -> (n b) 1 d", n=n)  # (N*B, 1, D)
        context = rearrange(y, "b n l d -> (n b) l d")  # (N*B, L, D); a view for BranchedTransformerLayer output
        key_mask = repeat(mask, "b l -> (n b) l", n=n)  # (N*B, L)
        u = rearrange(self.summary(queries, context, key_mask=key_mask), "(n b) 1 d -> b n d", n=n)  # (B, N, D)
        keys = self.key(u)  # (B, N, D)
        bias = self.bias(u)[..., 0]  # (B, N)
        logits = torch.einsum("bnd,bnld->bln", keys, y) / math.sqrt(dim) + bias[:, None, :]  # (B, L, N)
        pi = torch.softmax(logits / self.temperature, dim=-1)  # (B, L, N)
        z = torch.einsum("bln,bnld->bld", pi, y)  # (B, L, D)
        return (z, pi) if return_weights else z


class RegisterGaussianBlock(nn.Module):
    """[tokens ; registers] -> N parallel (Gaussian) transformer layers -> drop registers -> mixture fusion.

    With ``registers=None`` the same layers run on the tokens alone (the "registers off" ablation); with a single
    branch (``widths=(None,)``) the fusion is skipped (an MS-SL-like baseline).
    """

    def __init__(self, dim: int, heads: int, ffn_dim: int, dropout: float, config: BlockConfig) -> None:
        super().__init__()
        if len(config.widths) == 0:
            raise ValueError("BlockConfig.widths must name at least one branch, e.g. [null] for plain attention")
        self.widths = tuple(config.widths)
        self.register_proj = LinearLayer(dim, dim, dropout)
        self.layers = BranchedTransformerLayer(len(self.widths), dim, heads, ffn_dim, dropout)
        self.fusion = (
            MixtureFusion(dim, heads, dropout, config.fusion_temperature) if len(self.widths) > 1 else None
        )

    def forward(self, x: Tensor, mask: Tensor, registers: Tensor | None = None) -> Tensor:
        """Encode one token scale (clip or frame) of a padded batch of videos.

        Args:
            x: (B, L, D) tokens.
            mask: (B, L) bool prefix mask, True on valid tokens.
            registers: (B, K, D) registers (before the block's own projection), or None.

        Returns:
            (B, L, D); values at padded positions are unspecified.
        """
        batch, length, dim = x.shape
        if mask.shape != (batch, length):
            raise ValueError(f"mask must be (B, L) = {(batch, length)}, got {tuple(mask.shape)}")
        lengths = lengths_from_mask(mask)  # (B,)
        if registers is None:
            sequence, num_registers = x, 0
        else:
            if registers.dim() != 3 or registers.shape[0] != batch or registers.shape[2] != dim:
                raise ValueError(f"registers must be (B, K, D) with B={batch}, D={dim}, got {tuple(registers.shape)}")
            num_registers = registers.shape[1]
            sequence = torch.cat([x, self.register_proj(registers)], dim=1)  # (B, S, D)
        allowed = register_attention_mask(mask, num_registers)  # (B, S, S)
        priors = None
        if any(w is not None for w in self.widths):
            priors = stacked_priors(lengths, length, self.widths, num_registers, dtype=x.dtype)  # (B, N, S, S)
        y = self.layers(sequence, allowed, priors)[:, :, :length]  # (B, N, L, D)
        if self.fusion is None:
            return y[:, 0]
        return self.fusion(y, mask)
