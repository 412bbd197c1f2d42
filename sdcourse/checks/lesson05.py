"""Checks for lesson 05: text conditioning (tokens, the causal mask, CLIP's causal self-attention against
transformers', cross-attention)."""

from __future__ import annotations

import math
from functools import lru_cache

import torch
from torch import nn

from ..tokenizer import MAX_LENGTH
from .core import Case, exercise_check, values_close
from .lesson03 import randomize, run_with_weights  # the same-weights comparison of lesson 03's ResNet block

__all__ = ["check_count_tokens", "check_causal_mask", "check_clip_self_attention", "check_cross_attention"]

SOLUTION_NOTEBOOK = "solutions/05_text_conditioning.ipynb"  # hint() points here after the last hint

CONTEXT = MAX_LENGTH  # positions of CLIP's text encoder, start and end tokens included


def _tokenizer():
    from ..tokenizer import load_tokenizer  # imported late: loading the tokenizer takes a moment

    return load_tokenizer()


def _ids(prompt):
    # the prompt's ids with start and end tokens, never truncated (verbose=False: no length note)
    return _tokenizer()(prompt, verbose=False).input_ids


# ---- exercise 1: a token counter ----------------------------------------------------------


def count_tokens_reference(prompt):
    tokens = len(_ids(prompt)) - 2  # without <|startoftext|> and <|endoftext|>
    return tokens, tokens + 2 <= CONTEXT  # 77 positions hold the start token, 75 prompt tokens, the end token


def _count_words(prompt):
    words = len(prompt.split())
    return words, words + 2 <= CONTEXT


def _count_with_special_tokens(prompt):
    tokens = len(_ids(prompt))
    return tokens, tokens <= CONTEXT


def _count_fits_77(prompt):
    tokens = len(_ids(prompt)) - 2
    return tokens, tokens <= CONTEXT


def _count_fits_below_75(prompt):
    tokens = len(_ids(prompt)) - 2
    return tokens, tokens < CONTEXT - 2


def _count_after_truncation(prompt):
    from ..tokenizer import tokenize

    kept = int(tokenize(prompt, warn=False).attention_mask.sum()) - 2
    return kept, kept + 2 <= CONTEXT


def _count_padded(prompt):
    from ..tokenizer import tokenize

    tokens = tokenize(prompt, warn=False).input_ids.shape[1] - 2
    return tokens, tokens + 2 <= CONTEXT


def _count_cases():
    return [
        Case('"a photo of a cat"', ("a photo of a cat",)),
        Case('"photorealistic, highly detailed, 8k" (words split into pieces)', ("photorealistic, highly detailed, 8k",)),
        Case("the empty prompt", ("",)),
        Case('"a" 75 times: exactly the 75 usable positions', (" ".join(["a"] * 75),)),
        Case('"a" 76 times: one token too many', (" ".join(["a"] * 76),)),
        Case("a 100-token prompt", (", ".join(["a red circle"] * 25),)),
    ]


check_count_tokens = exercise_check(
    "count_tokens",
    count_tokens_reference,
    _count_cases,
    mistakes={
        "the start and end tokens were counted as part of the prompt; count only the prompt's own tokens": (
            _count_with_special_tokens
        ),
        "words were counted, not tokens: BPE splits some words into pieces, and punctuation is a token": _count_words,
        "the prompt was counted after tokenize(), which pads and truncates to 77: count without truncation": (
            _count_after_truncation
        ),
        "the padded length was counted: every prompt is padded to 77 ids, whatever its length": _count_padded,
        "the 2 special tokens were forgotten when deciding if it fits: only 75 of the 77 positions are for the prompt": (
            _count_fits_77
        ),
        "off by one: a prompt of exactly 75 tokens fits (75 + 2 = 77)": _count_fits_below_75,
    },
    hints=[
        "tokenizer(prompt).input_ids is the whole list of ids, never cut. Print it for a "
        "short prompt and look at what sits around the prompt's own ids.",
        "The list starts with the start token and ends with the end token. Neither "
        "belongs to the prompt, but each takes one of the 77 positions.",
        "tokens = len(tokenizer(prompt).input_ids) - 2, and fits = tokens + 2 <= 77.",
    ],
    solution=SOLUTION_NOTEBOOK,
)


# ---- exercise 2: the causal mask -----------------------------------------------------------


def causal_mask_reference(n):
    # mask[i, j] = True when token i may attend to token j, i.e. j <= i (itself and earlier tokens)
    return torch.ones(n, n, dtype=torch.bool).tril()


def _same_mask(got, expected):
    """Equal values AND the same dtype: a float 0/1 mask means something else to attention()."""
    return (
        isinstance(got, torch.Tensor)
        and isinstance(expected, torch.Tensor)
        and got.dtype == expected.dtype
        and values_close(got, expected)
    )


def _mask_cases():
    return [
        Case("n = 4", (4,)),
        Case("n = 1 (a single token sees itself)", (1,)),
        Case("n = 7", (7,)),
        Case("n = 77, CLIP's context", (77,)),
    ]


check_causal_mask = exercise_check(
    "causal_mask",
    causal_mask_reference,
    _mask_cases,
    mistakes={
        "the upper triangle: that lets each token see the tokens AFTER it (use tril, j <= i)": lambda n: (
            torch.ones(n, n, dtype=torch.bool).triu()
        ),
        "the diagonal is missing: every token may attend to itself": lambda n: (
            torch.ones(n, n, dtype=torch.bool).tril(diagonal=-1)
        ),
        "True and False are swapped: True means 'may attend', so the allowed part (j <= i) is True": lambda n: (
            torch.ones(n, n, dtype=torch.bool).triu(diagonal=1)
        ),
        "a float mask of 0s and 1s: attention() ADDS a float mask to the scores; return dtype torch.bool": lambda n: (
            torch.ones(n, n).tril()
        ),
        "no masking at all: every token sees every other token": lambda n: torch.ones(n, n, dtype=torch.bool),
    },
    compare=_same_mask,
    hints=[
        "Draw the 4 x 4 case on paper: row i is the token that looks, column j the "
        "token looked at. Which part of the square is allowed?",
        "The allowed part, j <= i, is the lower triangle with its diagonal. "
        "tril keeps exactly that part of a matrix.",
        "torch.ones(n, n, dtype=torch.bool).tril(): allow everything, then keep the lower triangle.",
    ],
    solution=SOLUTION_NOTEBOOK,
)


# ---- exercise 3: CLIP's causal self-attention, against transformers' ---------------------------
#
# The learner writes a class; the check builds it, gives it the weights of a transformers
# CLIPAttention (random, the same for every class tried), runs both and compares.

ATTENTION_LAYERS = "q_proj, k_proj, v_proj, out_proj"


def _check_attention_arguments(hidden_size, num_heads):
    for name, value in [("hidden_size", hidden_size), ("num_heads", num_heads)]:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if hidden_size % num_heads:
        raise ValueError(f"num_heads={num_heads} must divide hidden_size={hidden_size}: each head gets "
                         "hidden_size / num_heads numbers")


@lru_cache(maxsize=None)
def _transformers_attention_class():
    from transformers.masking_utils import create_causal_mask  # imported late: transformers takes a moment
    from transformers.models.clip.modeling_clip import CLIPAttention

    class TransformersCLIPSelfAttention(CLIPAttention):
        """transformers' CLIPAttention, called as CLIPTextModel calls it (transformers 5)."""

        def __init__(self, hidden_size, num_heads):
            from transformers import CLIPTextConfig

            # CLIPTextModel picks sdpa; a CLIPAttention built alone has no implementation set, and
            # then neither makes nor applies a causal mask
            config = CLIPTextConfig(hidden_size=hidden_size, num_attention_heads=num_heads,
                                    attn_implementation="sdpa")
            super().__init__(config)

        def forward(self, hidden_states):
            # as CLIPTextModel.forward: a causal mask for the config's implementation (None for sdpa,
            # which then masks by itself), and is_causal=True for every layer
            mask = create_causal_mask(config=self.config, inputs_embeds=hidden_states, attention_mask=None,
                                      past_key_values=None)
            return super().forward(hidden_states, attention_mask=mask, is_causal=True)[0]

    return TransformersCLIPSelfAttention


def transformers_clip_attention(hidden_size, num_heads):
    """transformers' CLIPAttention with the exercise's arguments, run with the text model's causal
    mask: the check's reference. forward(hidden_states) returns (batch, tokens, hidden_size)."""
    _check_attention_arguments(hidden_size, num_heads)
    return _transformers_attention_class()(hidden_size, num_heads)


def _attention_report(cls):
    """What a self-attention class does: build it, give it the weights of transformers' layer, run it."""
    if isinstance(cls, nn.Module):
        raise TypeError("pass the class itself, as in check_clip_self_attention(CLIPSelfAttention), not a layer "
                        "made from it")
    if not callable(cls):
        raise TypeError(f"pass a class, as in check_clip_self_attention(CLIPSelfAttention); got {type(cls).__name__}")

    def report(hidden_size, num_heads, x, seed=0):
        source = randomize(transformers_clip_attention(hidden_size, num_heads), seed)
        return run_with_weights(lambda: cls(hidden_size, num_heads), source, "transformers' CLIPAttention",
                                ATTENTION_LAYERS, (x,), seed=seed)

    return report


class _SelfAttention(nn.Module):
    """Plain causal self-attention. The mistakes below are copies with one class attribute changed."""

    mask = "causal"  # "causal", "none", "flipped", "zero fill", "after softmax"
    scale = "1/sqrt(head_dim)"  # "1/sqrt(head_dim)", "sqrt(head_dim)", "1/sqrt(hidden_size)", "none"
    split = "view, transpose"  # "view, transpose", "view only", "one head"
    merge = "transpose, reshape"  # "transpose, reshape", "reshape only", "not merged"
    softmax_dim = -1
    out_proj_used = True
    float32 = False

    def __init__(self, hidden_size, num_heads):
        super().__init__()
        self.heads, self.head_dim = num_heads, hidden_size // num_heads
        self.q_proj = nn.Linear(hidden_size, hidden_size)
        self.k_proj = nn.Linear(hidden_size, hidden_size)
        self.v_proj = nn.Linear(hidden_size, hidden_size)
        self.out_proj = nn.Linear(hidden_size, hidden_size)

    def _split(self, t):  # (batch, tokens, width) -> (batch, heads, tokens, head_dim)
        b, n, _ = t.shape
        if self.split == "one head":
            return t[:, None]
        if self.split == "view only":
            return t.view(b, self.heads, n, self.head_dim)
        return t.view(b, n, self.heads, self.head_dim).transpose(1, 2)

    def forward(self, x):
        b, n, width = x.shape
        q, k, v = self._split(self.q_proj(x)), self._split(self.k_proj(x)), self._split(self.v_proj(x))
        scores = q @ k.transpose(-2, -1)  # (batch, heads, tokens, tokens)
        scores = scores * {"1/sqrt(head_dim)": self.head_dim ** -0.5, "sqrt(head_dim)": self.head_dim ** 0.5,
                           "1/sqrt(hidden_size)": width ** -0.5, "none": 1.0}[self.scale]
        allowed = torch.ones(n, n, dtype=torch.bool).tril()  # j <= i
        if self.mask == "flipped":
            allowed = allowed.T
        if self.mask in ("causal", "flipped"):
            scores = scores.masked_fill(~allowed, float("-inf"))
        elif self.mask == "zero fill":
            scores = scores.masked_fill(~allowed, 0.0)
        probs = scores.softmax(dim=self.softmax_dim)
        if self.mask == "after softmax":
            probs = probs * allowed
        heads = probs @ v  # (batch, heads, tokens, head_dim)
        if self.merge == "not merged":
            return heads
        if self.merge == "reshape only":
            merged = heads.reshape(b, n, width)
        else:
            merged = heads.transpose(1, 2).reshape(b, n, width)
        out = self.out_proj(merged) if self.out_proj_used else merged
        return out.float() if self.float32 else out


def _attention_variant(**how):
    return type("CLIPSelfAttention", (_SelfAttention,), how)


def _self_attention_case(label, batch, tokens, hidden_size, num_heads, *, dtype=torch.float32, seed=0):
    x = torch.randn(batch, tokens, hidden_size, generator=torch.Generator().manual_seed(seed))
    return Case(label, (hidden_size, num_heads, x.to(dtype)), {"seed": seed})


def _self_attention_cases():
    return [
        _self_attention_case("batch 2, 5 tokens, width 16, 4 heads", 2, 5, 16, 4, seed=0),
        _self_attention_case("batch 1, 9 tokens, width 24, 2 heads", 1, 9, 24, 2, seed=1),
        _self_attention_case("a single token: it sees only itself", 3, 1, 8, 2, seed=2),
        _self_attention_case("77 tokens, width 32, 4 heads (the tiny model's text encoder)", 1, 77, 32, 4, seed=3),
        _self_attention_case("one head of width 12", 2, 6, 12, 1, seed=4),
        _self_attention_case("float64: batch 2, 7 tokens, width 8, 2 heads", 2, 7, 8, 2, dtype=torch.float64,
                             seed=5),
    ]


check_clip_self_attention = exercise_check(
    "clip_self_attention",
    transformers_clip_attention,
    _self_attention_cases,
    mistakes={
        "no causal mask: the tokens can see later tokens. Set the scores where j > i to -inf before the softmax": (
            _attention_variant(mask="none")
        ),
        "the mask is flipped: the tokens see the later tokens and not the earlier ones. Token i may see j <= i": (
            _attention_variant(mask="flipped")
        ),
        "the masked scores were set to 0; set them to -inf, so that the softmax gives them weight 0": (
            _attention_variant(mask="zero fill")
        ),
        "the mask was applied after the softmax, so the weights no longer sum to 1: mask the scores, then take "
        "the softmax": _attention_variant(mask="after softmax"),
        "the scores were multiplied by sqrt(head_dim); scale them by 1 / sqrt(head_dim)": _attention_variant(
            scale="sqrt(head_dim)"
        ),
        "the scale used the full width: scale by 1 / sqrt(head_dim), with head_dim = hidden_size / num_heads": (
            _attention_variant(scale="1/sqrt(hidden_size)")
        ),
        "the scores were not scaled: multiply them by 1 / sqrt(head_dim)": _attention_variant(scale="none"),
        "the heads were not split: each head attends with its own head_dim numbers of q, k and v": (
            _attention_variant(split="one head")
        ),
        "the heads were split with a plain view to (batch, heads, tokens, head_dim), which mixes the tokens: view "
        "as (batch, tokens, heads, head_dim), then swap the tokens and heads axes": _attention_variant(
            split="view only"
        ),
        "the heads were merged with a plain reshape, which mixes the tokens: first swap the heads and tokens axes "
        "back to (batch, tokens, heads, head_dim)": _attention_variant(merge="reshape only"),
        "the heads were not merged: the output is (batch, heads, tokens, head_dim); put the heads side by side "
        "into (batch, tokens, hidden_size) and apply out_proj": _attention_variant(merge="not merged"),
        "the softmax ran over the queries (dim=-2): each query's weights over the keys must sum to 1 (dim=-1)": (
            _attention_variant(softmax_dim=-2)
        ),
        "out_proj was not applied to the merged heads": _attention_variant(out_proj_used=False),
        "the output is float32 for float64 inputs: keep the inputs' dtype (a .float() or a tensor made in "
        "float32 changes it)": _attention_variant(float32=True),
    },
    hints=[
        "In __init__, make four nn.Linear(hidden_size, hidden_size) named q_proj, k_proj, v_proj and out_proj. "
        "In forward, q, k and v each go from (batch, tokens, hidden_size) to (batch, heads, tokens, head_dim).",
        "Split with .view(batch, tokens, heads, head_dim).transpose(1, 2). The scores q @ k.transpose(-2, -1) "
        "are (batch, heads, tokens, tokens); multiply them by head_dim ** -0.5.",
        "Set the scores where the causal mask is False to -inf (scores.masked_fill(~mask, float('-inf'))), "
        "take the softmax over the last axis, multiply by v, then transpose(1, 2).reshape(batch, tokens, "
        "hidden_size) and apply out_proj.",
    ],
    solution=SOLUTION_NOTEBOOK,
    prepare=_attention_report,
)


# ---- exercise 4: single-head cross-attention -----------------------------------------------


def _cross_attention(image_tokens, text_tokens, w_q, w_k, w_v, *, scale="sqrt_d", softmax_dim=-1, q_from_text=False):
    if q_from_text:
        image_tokens, text_tokens = text_tokens, image_tokens
    q = image_tokens @ w_q  # (batch, pixels, d)
    k = text_tokens @ w_k  # (batch, tokens, d)
    v = text_tokens @ w_v  # (batch, tokens, d)
    d = w_q.shape[1]
    divisor = {"sqrt_d": math.sqrt(d), "d": d, "none": 1.0, "sqrt_width": math.sqrt(image_tokens.shape[-1])}[scale]
    scores = q @ k.transpose(-2, -1) / divisor  # (batch, pixels, tokens)
    probs = scores.softmax(dim=softmax_dim)  # each pixel's weights over the tokens sum to 1
    return probs @ v  # (batch, pixels, d)


def cross_attention_reference(image_tokens, text_tokens, w_q, w_k, w_v):
    # softmax(Q K^T / sqrt(d)) V, with Q = image W_q, K = text W_k, V = text W_v
    return _cross_attention(image_tokens, text_tokens, w_q, w_k, w_v)


def _attention_case(label, batch, pixels, tokens, width, text_width, d, seed):
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(batch, pixels, width, generator=g)
    text = torch.randn(batch, tokens, text_width, generator=g)
    w_q = torch.randn(width, d, generator=g) / math.sqrt(width)
    w_k = torch.randn(text_width, d, generator=g) / math.sqrt(text_width)
    w_v = torch.randn(text_width, d, generator=g) / math.sqrt(text_width)
    return Case(label, (image, text, w_q, w_k, w_v))


def _attention_cases():
    return [
        _attention_case("batch 2, 6 pixels, 4 tokens, every width 8", 2, 6, 4, 8, 8, 8, seed=0),
        _attention_case("image width 12, text width 10, d = 4", 1, 9, 5, 12, 10, 4, seed=1),
        _attention_case("a 4x4 latent (16 pixels), 77 tokens of width 32, d = 16", 1, 16, 77, 24, 32, 16, seed=2),
        _attention_case("a single pixel", 3, 1, 7, 6, 5, 3, seed=3),
    ]


check_cross_attention = exercise_check(
    "cross_attention",
    cross_attention_reference,
    _attention_cases,
    mistakes={
        "Q came from the text and K, V from the image: the image asks (Q), the text answers (K, V)": (
            lambda *a: _cross_attention(*a, q_from_text=True)
        ),
        "the scores were divided by d; divide by sqrt(d)": lambda *a: _cross_attention(*a, scale="d"),
        "the scores were not scaled: divide Q K^T by sqrt(d)": lambda *a: _cross_attention(*a, scale="none"),
        "the softmax ran over the pixels; each pixel's weights over the TOKENS must sum to 1 (dim=-1)": (
            lambda *a: _cross_attention(*a, softmax_dim=-2)
        ),
        "the scale used the image width; d is the width of Q and K (w_q.shape[1])": (
            lambda *a: _cross_attention(*a, scale="sqrt_width")
        ),
    },
    hints=[
        "The image asks and the text answers: the queries come from "
        "image_tokens, the keys and values from text_tokens.",
        "q = image_tokens @ w_q is (batch, pixels, d), k and v are (batch, tokens, d), and the "
        "scores q @ k.transpose(-2, -1) are (batch, pixels, tokens).",
        "torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(d), dim=-1) @ v, with d = w_q.shape[1]: the softmax "
        "over the last axis gives each pixel weights over the tokens that sum to 1.",
    ],
    solution=SOLUTION_NOTEBOOK,
)
