"""The layers that the U-Net, the VAE and the text encoder are wired from.

- `attention()`: softmax(Q K^T / sqrt(d)) V, written out or with torch's fused kernel;
- `MultiHeadAttention`: the computation every attention layer shares (split into heads,
  attend, merge), with switches to use the written-out softmax and to keep the probabilities.
  `Attention` (here, diffusers' names `to_q` ... `to_out.0`, for the U-Net and the VAE) and
  the text encoder's `SelfAttention` (transformers' names `q_proj` ... `out_proj`) add only
  their projections;
- `ResnetBlock2D`: two 3x3 convolutions and a residual, with an optional timestep input;
- `Downsample2D` and `Upsample2D`: halve or double height and width.

Every block of a network reads the settings it shares with the others (group norm, activation,
timestep width, text width) from one small `BlockConfig`, so no constructor needs a dozen
arguments. Parameter names are diffusers' and transformers' own, so their weights load as they are.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

ACTIVATIONS = {"silu": F.silu, "swish": F.silu, "gelu": F.gelu, "relu": F.relu, "mish": F.mish}


@dataclass(frozen=True)
class BlockConfig:
    """The settings that every block of one network shares.

    norm_groups, norm_eps: the GroupNorm of every ResNet block (SD: 32 groups; eps 1e-5 in the
        U-Net, 1e-6 in the VAE).
    act_fn: the activation of the ResNet blocks, a key of ACTIVATIONS.
    temb_channels: width of the timestep embedding the ResNet blocks add; None for a network
        without a timestep (the VAE).
    cross_attention_dim: width of the text embeddings the U-Net's transformers attend to.
    use_linear_projection: the U-Net's transformers project in and out with a Linear (SD 2.x)
        instead of a 1x1 convolution (SD 1.x).
    """

    norm_groups: int = 32
    norm_eps: float = 1e-5
    act_fn: str = "silu"
    temb_channels: int | None = None
    cross_attention_dim: int | None = None
    use_linear_projection: bool = False

    def __post_init__(self):
        if self.act_fn not in ACTIVATIONS:
            raise ValueError(f"act_fn must be one of {sorted(ACTIVATIONS)}, got {self.act_fn!r}")


# ----------------------------------------------------------------------------
# Attention


def attention(query, key, value, mask=None, *, use_sdpa=True, return_probs=False):
    """softmax(Q K^T / sqrt(d)) V over the last two dimensions.

    query: (batch, heads, query_tokens, head_dim)
    key, value: (batch, heads, key_tokens, head_dim)
    mask: None, a boolean tensor (True = may attend) or an additive float tensor,
        broadcastable to (batch, heads, query_tokens, key_tokens).
    Returns the output (batch, heads, query_tokens, head_dim), and with
    `return_probs=True` also the probabilities (batch, heads, query_tokens, key_tokens).
    The written-out path and torch's fused `scaled_dot_product_attention` give the same numbers.
    """
    if query.shape[-1] != key.shape[-1]:
        raise ValueError(
            f"query and key must share head_dim: got query {tuple(query.shape)} and key {tuple(key.shape)}"
        )
    if use_sdpa and not return_probs:
        return F.scaled_dot_product_attention(query, key, value, attn_mask=mask)

    scores = query @ key.transpose(-2, -1) / math.sqrt(query.shape[-1])  # (b, h, q, k)
    if mask is not None:
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, float("-inf"))
        else:
            scores = scores + mask
    probs = scores.softmax(dim=-1)
    output = probs @ value  # (b, h, q, head_dim)
    return (output, probs) if return_probs else output


class MultiHeadAttention(nn.Module):
    """What every attention layer does once it has projected Q, K and V.

    Subclasses own the projections (and so the parameter names); `attend` splits the
    projected tokens into heads, runs `attention()` and merges the heads back.
    Set `use_sdpa = False` for the written-out softmax, `store_probs = True` to keep the last
    probabilities (batch, heads, query_tokens, key_tokens) in `.last_probs`.
    """

    def __init__(self, heads):
        super().__init__()
        self.heads = heads
        self.use_sdpa = True
        self.store_probs = False
        self.last_probs = None

    def split_heads(self, x):
        batch, tokens, _ = x.shape  # (b, tokens, heads * head_dim)
        return x.view(batch, tokens, self.heads, -1).transpose(1, 2)  # (b, heads, tokens, head_dim)

    def attend(self, q, k, v, mask=None):
        """q: (b, query_tokens, heads * head_dim), k and v: (b, key_tokens, heads * head_dim)."""
        q, k, v = self.split_heads(q), self.split_heads(k), self.split_heads(v)
        if self.store_probs:
            out, self.last_probs = attention(q, k, v, mask, return_probs=True)
        else:
            out = attention(q, k, v, mask, use_sdpa=self.use_sdpa)  # (b, heads, query_tokens, head_dim)
        batch, heads, tokens, head_dim = out.shape
        return out.transpose(1, 2).reshape(batch, tokens, heads * head_dim)  # (b, query_tokens, heads * head_dim)


class Attention(MultiHeadAttention):
    """Multi-head attention with diffusers' parameter names (`to_q`, `to_k`, `to_v`, `to_out.0`).

    Self-attention when `context` is None; cross-attention otherwise: Q comes from
    `hidden_states` (the image), K and V from `context` (the text).
    """

    def __init__(self, query_dim, context_dim=None, heads=8, head_dim=64, bias=False, out_bias=True):
        super().__init__(heads)
        inner_dim = heads * head_dim
        context_dim = query_dim if context_dim is None else context_dim
        self.context_dim = context_dim
        self.to_q = nn.Linear(query_dim, inner_dim, bias=bias)
        self.to_k = nn.Linear(context_dim, inner_dim, bias=bias)
        self.to_v = nn.Linear(context_dim, inner_dim, bias=bias)
        self.to_out = nn.ModuleList([nn.Linear(inner_dim, query_dim, bias=out_bias), nn.Dropout(0.0)])

    def forward(self, hidden_states, context=None, mask=None):
        if context is None:
            context = hidden_states
        elif context.shape[-1] != self.context_dim:
            raise ValueError(
                f"context (text embeddings) must have width {self.context_dim}, got {context.shape[-1]} "
                f"(shape {tuple(context.shape)})"
            )
        out = self.attend(self.to_q(hidden_states), self.to_k(context), self.to_v(context), mask)
        return self.to_out[1](self.to_out[0](out))


# ----------------------------------------------------------------------------
# ResNet block


class ResnetBlock2D(nn.Module):
    """Two 3x3 convolutions with a residual connection (diffusers' `ResnetBlock2D`).

        h = conv1(act(GroupNorm(x)))
        h = h + Linear(act(temb))           only with a timestep: one number per channel
        h = conv2(act(GroupNorm(h)))
        out = shortcut(x) + h               shortcut is a 1x1 conv when channels change

    With `config.temb_channels` set (the U-Net) the block takes a timestep embedding;
    without (the VAE) it has no `time_emb_proj` and takes none.
    """

    def __init__(self, in_channels, out_channels, config: BlockConfig):
        super().__init__()
        self.act = ACTIVATIONS[config.act_fn]
        self.norm1 = nn.GroupNorm(config.norm_groups, in_channels, eps=config.norm_eps)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.time_emb_proj = None
        if config.temb_channels is not None:
            self.time_emb_proj = nn.Linear(config.temb_channels, out_channels)
        self.norm2 = nn.GroupNorm(config.norm_groups, out_channels, eps=config.norm_eps)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1)
        self.conv_shortcut = None
        if in_channels != out_channels:
            self.conv_shortcut = nn.Conv2d(in_channels, out_channels, kernel_size=1)

    def forward(self, x, temb=None):
        # x: (batch, in_channels, height, width), temb: (batch, temb_channels) or None
        # h = conv1(act(GroupNorm(x)))
        h = self.conv1(self.act(self.norm1(x)))  # (batch, out_channels, height, width)
        if self.time_emb_proj is not None:
            if temb is None:
                raise ValueError("this ResNet block adds a timestep embedding: pass temb (batch, temb_channels)")
            # h = h + W act(temb) + b, one value per channel, broadcast over height and width
            h = h + self.time_emb_proj(self.act(temb))[:, :, None, None]
        # h = conv2(act(GroupNorm(h)))   (dropout would sit before conv2; SD uses none)
        h = self.conv2(self.act(self.norm2(h)))
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(x)  # 1x1 conv: in_channels -> out_channels
        # out = shortcut(x) + h
        return x + h  # (batch, out_channels, height, width)


# ----------------------------------------------------------------------------
# Resampling


class Downsample2D(nn.Module):
    """Halve height and width with a 3x3 convolution of stride 2.

    padding=1 (the U-Net) pads one pixel on every side. padding=0 (the VAE) pads one row at the
    bottom and one column on the right only, as the original Stable Diffusion code did; the
    weights were trained that way, so the choice must match them.
    """

    def __init__(self, channels, padding=1):
        super().__init__()
        if padding not in (0, 1):
            raise ValueError(f"padding must be 0 or 1, got {padding!r}")
        self.padding = padding
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=padding)

    def forward(self, x):  # (batch, channels, height, width)
        if self.padding == 0:
            x = F.pad(x, (0, 1, 0, 1))  # (left, right, top, bottom): (batch, channels, height + 1, width + 1)
        return self.conv(x)  # (batch, channels, height / 2, width / 2)


class Upsample2D(nn.Module):
    """Double height and width: repeat each pixel 2x2 (nearest neighbour), then a 3x3 convolution."""

    def __init__(self, channels):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, padding=1)

    def forward(self, x):  # (batch, channels, height, width)
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")  # (batch, channels, 2 height, 2 width)
        return self.conv(x)
