"""Checks for lesson 05: text conditioning (tokens, the causal mask, cross-attention)."""

from __future__ import annotations

import math

import torch

from ..tokenizer import MAX_LENGTH
from .core import Case, exercise_check, values_close

__all__ = ["check_count_tokens", "check_causal_mask", "check_cross_attention"]

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


# ---- exercise 3: single-head cross-attention -----------------------------------------------


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
        "Divide the scores by math.sqrt(d) with d = w_q.shape[1], take the softmax over the last axis "
        "(each pixel's weights over the tokens sum to 1), and multiply by v.",
    ],
    solution=SOLUTION_NOTEBOOK,
)
