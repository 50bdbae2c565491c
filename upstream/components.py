"""Transformer building blocks of EnCodecMAE, one job per module.

The numbers follow the published v1 checkpoints : attention without biases and
a head_dim^-0.5 scale, a ReLU feed-forward, and the ResiDual norm scheme (Xie et al. 2023),
in which every layer carries two streams: ``a`` (post-norm, what the layer computes on) and
``b`` (the un-normalised sum of every sub-layer output, normalised once at the end).

Shapes use B = batch, T = frames, D = model width, H = heads.
Padding masks are bool with True = padding, as in fairseq2 and PyTorch's key_padding_mask.
"""
from __future__ import annotations

import math
from typing import List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor


class SinusoidalPositions(nn.Module):
    """Fixed sinusoidal position table times one learnable scalar ``scale``.

    Channel 2i holds sin(t / 10000^(2i/D)), channel 2i+1 holds cos of the same angle.
    v1 keeps one instance for the encoder input and the decoder input, so both share ``scale``.
    """

    def __init__(self, dim: int, scale: float = 1.0):
        super().__init__()
        if dim % 2:
            raise ValueError(f"SinusoidalPositions: dim must be even (sin/cos channel pairs), got {dim}")
        self.dim = dim
        self.scale = nn.Parameter(torch.tensor(float(scale)))

    def table(self, length: int, device: Optional[torch.device] = None) -> Tensor:
        """The scaled table: (length, D) float32."""
        # built in float32 whatever the autocast dtype: bf16 cannot tell positions apart past ~256
        position = torch.arange(length, device=device, dtype=torch.float32)[:, None]
        inverse_frequency = torch.exp(
            torch.arange(0, self.dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / self.dim))
        angle = position * inverse_frequency  # (T, D/2)
        # stack then flatten interleaves the channels: [sin0, cos0, sin1, cos1, ...]
        table = torch.stack([angle.sin(), angle.cos()], dim=-1).reshape(length, self.dim)
        return self.scale * table

    def forward(self, x: Tensor) -> Tensor:
        """x (B, T, D) -> x + scale * table[:T]."""
        return x + self.table(x.shape[1], x.device)


class SelfAttention(nn.Module):
    """Multi-head self-attention, no biases, scale head_dim^-0.5, padded keys masked out.

    Heads are ``dim // heads`` wide and the projections ``inner = heads * head_dim`` wide, the v1
    rule: equal to ``dim`` when ``heads`` divides it, narrower otherwise (v1 large: 12 heads of 85
    channels, q/k/v 1024 -> 1020 and output 1020 -> 1024).

    ``interleaved_heads=True`` is the v1 layout *in the state dict*: projected channel c belongs to
    head c mod H. The parameters themselves are kept in the usual (H, head_dim) order, so that each
    head's channels are contiguous and attention runs without copies (faster, benchmarks/README.md);
    state-dict hooks convert on save and load, so files keep v1's layout.
    """

    def __init__(self, dim: int, heads: int, interleaved_heads: bool = True, dropout: float = 0.0):
        super().__init__()
        if not 1 <= heads <= dim:
            raise ValueError(f"SelfAttention: heads ({heads}) must be in 1..dim ({dim})")
        self.dim = dim
        self.heads = heads
        self.head_dim = dim // heads
        self.inner_dim = heads * self.head_dim
        self.interleaved_heads = interleaved_heads
        self.dropout = dropout
        self.wq = nn.Linear(dim, self.inner_dim, bias=False)
        self.wk = nn.Linear(dim, self.inner_dim, bias=False)
        self.wv = nn.Linear(dim, self.inner_dim, bias=False)
        self.wo = nn.Linear(self.inner_dim, dim, bias=False)
        if interleaved_heads:
            self.register_state_dict_post_hook(_to_interleaved)
            self.register_load_state_dict_pre_hook(_from_interleaved)

    def interleaved_order(self) -> Tensor:
        """index[c] = the (H, head_dim)-ordered channel that sits at v1's channel c = d * H + h."""
        channel = torch.arange(self.inner_dim)
        return (channel % self.heads) * self.head_dim + channel // self.heads

    def _split(self, x: Tensor) -> Tensor:
        """(B, T, inner) -> (B, H, T, head_dim), a view."""
        batch, frames, _ = x.shape
        return x.view(batch, frames, self.heads, self.head_dim).transpose(1, 2)

    def forward(self, x: Tensor, padding_mask: Optional[Tensor] = None) -> Tensor:
        """
        Args:
            x: (B, T, D).
            padding_mask: (B, T) bool, True = padding; those keys get no attention.
        Returns:
            (B, T, D). Rows at padded query positions are finite but meaningless.
        """
        q, k, v = self._split(self.wq(x)), self._split(self.wk(x)), self._split(self.wv(x))
        attend = None
        if padding_mask is not None:
            attend = ~padding_mask
            # a row with no valid key at all (an empty clip) would give NaN (softmax of all -inf);
            # let such a row attend everywhere instead: its output is padding anyway
            attend = attend | ~attend.any(dim=-1, keepdim=True)
            attend = attend[:, None, None, :]  # (B, 1, 1, T): broadcast over heads and queries
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attend, scale=self.head_dim ** -0.5,
                                             dropout_p=self.dropout if self.training else 0.0)
        batch, _, frames, _ = out.shape
        return self.wo(out.transpose(1, 2).reshape(batch, frames, self.inner_dim))


def _to_interleaved(module: SelfAttention, state_dict: dict, prefix: str, local_metadata) -> None:
    """state_dict hook: our (H, head_dim) channel order -> v1's interleaved order."""
    order = module.interleaved_order()
    for name in ("wq", "wk", "wv"):
        key = f"{prefix}{name}.weight"
        if key in state_dict:
            state_dict[key] = state_dict[key][order]
    if f"{prefix}wo.weight" in state_dict:
        state_dict[f"{prefix}wo.weight"] = state_dict[f"{prefix}wo.weight"][:, order]


def _from_interleaved(module: SelfAttention, state_dict: dict, prefix: str, local_metadata, strict, missing_keys,
                      unexpected_keys, error_msgs) -> None:
    """load_state_dict hook: v1's interleaved channel order -> ours (the inverse of ``_to_interleaved``)."""
    inverse = torch.argsort(module.interleaved_order())
    for name in ("wq", "wk", "wv"):
        key = f"{prefix}{name}.weight"
        if key in state_dict and state_dict[key].shape[0] == module.inner_dim:
            state_dict[key] = state_dict[key][inverse]
    key = f"{prefix}wo.weight"
    if key in state_dict and state_dict[key].dim() == 2 and state_dict[key].shape[1] == module.inner_dim:
        state_dict[key] = state_dict[key][:, inverse]


class FeedForward(nn.Sequential):
    """Linear D -> ff, ReLU, Linear ff -> D (then optional dropout).

    A Sequential so that the state-dict keys are ``0.*`` and ``2.*``, as in v1.
    """

    def __init__(self, dim: int, ff_dim: int, dropout: float = 0.0):
        super().__init__(nn.Linear(dim, ff_dim), nn.ReLU(), nn.Linear(ff_dim, dim), nn.Dropout(dropout))


class TransformerLayer(nn.Module):
    """One ResiDual layer over the pair (a, b):

        o = Attn(a):  a <- LN1(a + o),  b <- b + o
        f = FF(a):    a <- LN2(a + f),  b <- b + f

    ``feed_forward``: a module to use (shared with other layers of the stack); None builds one.
    """

    def __init__(self, dim: int, heads: int, ff_dim: int, interleaved_heads: bool = True, dropout: float = 0.0,
                 feed_forward: Optional[FeedForward] = None):
        super().__init__()
        self.attention = SelfAttention(dim, heads, interleaved_heads, dropout)
        self.feed_forward = feed_forward if feed_forward is not None else FeedForward(dim, ff_dim, dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, a: Tensor, b: Tensor, padding_mask: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        """a, b (B, T, D); padding_mask (B, T) bool True = padding -> new (a, b)."""
        o = self.attention(a, padding_mask)
        a, b = self.norm1(a + o), b + o
        f = self.feed_forward(a)
        return self.norm2(a + f), b + f


class TransformerStack(nn.Module):
    """N ResiDual layers and the final norm; the output is a + LN_final(b).

    ``shared_feed_forward=True`` gives every layer the same feed-forward module, as v1 built its
    stacks (the published models were trained that way): its parameters count and train once, and
    the state dict repeats them under each layer's name, as v1's files do.
    """

    def __init__(self, layers: int, dim: int, heads: int, ff_dim: int, interleaved_heads: bool = True,
                 dropout: float = 0.0, shared_feed_forward: bool = False):
        super().__init__()
        shared = FeedForward(dim, ff_dim, dropout) if shared_feed_forward else None
        self.layers = nn.ModuleList(
            [TransformerLayer(dim, heads, ff_dim, interleaved_heads, dropout, feed_forward=shared)
             for _ in range(layers)])
        self.final_norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor, padding_mask: Optional[Tensor] = None) -> Tuple[Tensor, List[Tensor]]:
        """
        Args:
            x: (B, T, D), positions already added.
            padding_mask: (B, T) bool, True = padding; None when nothing is padded. Callers know that on the host
                and pass None then: SDPA takes its fastest kernels without a mask, and the stack never reads the
                device to find out.
        Returns:
            output: (B, T, D) = a + LN_final(b) after the last layer.
            per_layer: the ``a`` stream after each layer, N tensors (B, T, D) (v1's hidden states).
        """
        a = b = x
        per_layer = []
        for layer in self.layers:
            a, b = layer(a, b, padding_mask)
            per_layer.append(a)
        return a + self.final_norm(b), per_layer
