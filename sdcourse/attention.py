"""Scaled dot-product attention, written out for teaching.

    Attention(Q, K, V) = softmax(Q K^T / sqrt(d)) V

`attention()` computes exactly that, either step by step (so the probabilities can be
returned and looked at) or with torch's fused `scaled_dot_product_attention`. Both give
the same numbers. `Attention` is the module around it, with diffusers' parameter names
(`to_q`, `to_k`, `to_v`, `to_out.0`) so diffusers weights load into it unchanged.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def attention(query, key, value, mask=None, *, use_sdpa=True, return_probs=False):
    """softmax(Q K^T / sqrt(d)) V over the last two dimensions.

    query: (batch, heads, query_tokens, head_dim)
    key, value: (batch, heads, key_tokens, head_dim)
    mask: None, a boolean tensor (True = may attend) or an additive float tensor,
        broadcastable to (batch, heads, query_tokens, key_tokens).
    Returns the output (batch, heads, query_tokens, head_dim), and with
    `return_probs=True` also the probabilities (batch, heads, query_tokens, key_tokens).
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


class Attention(nn.Module):
    """Multi-head attention with diffusers' parameter names.

    Self-attention when `context` is None; cross-attention otherwise: Q comes from
    `hidden_states` (the image), K and V from `context` (the text).
    Set `store_probs = True` to keep the last attention probabilities in `.last_probs`.
    """

    def __init__(self, query_dim, context_dim=None, heads=8, head_dim=64, bias=False, out_bias=True):
        super().__init__()
        inner_dim = heads * head_dim
        context_dim = query_dim if context_dim is None else context_dim
        self.heads = heads
        self.context_dim = context_dim
        self.to_q = nn.Linear(query_dim, inner_dim, bias=bias)
        self.to_k = nn.Linear(context_dim, inner_dim, bias=bias)
        self.to_v = nn.Linear(context_dim, inner_dim, bias=bias)
        self.to_out = nn.ModuleList([nn.Linear(inner_dim, query_dim, bias=out_bias), nn.Dropout(0.0)])
        self.use_sdpa = True
        self.store_probs = False
        self.last_probs = None

    def split_heads(self, x):
        batch, tokens, _ = x.shape  # (b, tokens, heads * head_dim)
        return x.view(batch, tokens, self.heads, -1).transpose(1, 2)  # (b, heads, tokens, head_dim)

    def forward(self, hidden_states, context=None, mask=None):
        if context is None:
            context = hidden_states
        elif context.shape[-1] != self.context_dim:
            raise ValueError(
                f"context (text embeddings) must have width {self.context_dim}, got {context.shape[-1]} "
                f"(shape {tuple(context.shape)})"
            )
        q = self.split_heads(self.to_q(hidden_states))
        k = self.split_heads(self.to_k(context))
        v = self.split_heads(self.to_v(context))
        if self.store_probs:
            out, self.last_probs = attention(q, k, v, mask, return_probs=True)
        else:
            out = attention(q, k, v, mask, use_sdpa=self.use_sdpa)
        batch, heads, tokens, head_dim = out.shape
        out = out.transpose(1, 2).reshape(batch, tokens, heads * head_dim)
        return self.to_out[1](self.to_out[0](out))
