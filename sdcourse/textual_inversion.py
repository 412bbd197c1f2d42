"""Textual inversion: a new word whose embedding is the only thing that trains.

The text encoder starts by looking each token up in its input embedding matrix, one row per
word of the vocabulary. Textual inversion adds one row for a new word ("<star>"), starts it
from the row of a word that is near in meaning (the "initializer", such as "shape"), and
trains that row alone: the U-Net, the rest of the text encoder and every other row stay as
they were, so every prompt without the new word draws exactly what it drew before.

- `add_token`: the new word in the tokenizer, its row in the text encoder, copied from the
  initializer's row;
- `row_mask`: a (vocabulary, 1) mask that is 1 on the trained rows only; multiplied into the
  matrix's gradient, it keeps every other row still (with an optimizer without weight decay:
  AdamW's decay would shrink the other rows even with a zero gradient);
- `save_learned_embedding` / `load_learned_embedding`: the file diffusers'
  `pipe.load_textual_inversion(path)` reads, {token: vector} in learned_embeds.safetensors.

A word may also be learned as several vectors (`vectors` > 1): "<star>" then stands for the
tokens "<star> <star>_1 <star>_2 ...", one row each, and the file holds {token: (vectors, width)}.
diffusers names and spells out the extra tokens the same way (`vector_tokens`, `spell_out`).
"""

from __future__ import annotations

from pathlib import Path

import torch

EMBEDDING_FILE = "learned_embeds.safetensors"  # the name diffusers' textual-inversion script writes


def vector_tokens(token: str, vectors: int = 1) -> list[str]:
    """The tokens of a word learned as `vectors` vectors: "<star>", "<star>_1", ... (diffusers' names)."""
    if isinstance(vectors, bool) or not isinstance(vectors, int) or vectors < 1:
        raise ValueError(f"vectors must be a whole number of at least 1 (rows learned for the word), got {vectors!r}")
    return [token] + [f"{token}_{i}" for i in range(1, vectors)]


def spell_out(text: str, token: str, vectors: int = 1) -> str:
    """`text` with the word `token` written as its `vectors` tokens, as diffusers' pipeline does
    before tokenizing a prompt that holds a learned word of several vectors."""
    return text.replace(token, " ".join(vector_tokens(token, vectors)))


def spell_out_learned_words(prompt: str, tokenizer) -> str:
    """`prompt` with every learned word of several vectors in the tokenizer spelled out as its
    tokens ("<star>" -> "<star> <star>_1 <star>_2"): what diffusers' pipeline does to a prompt
    before tokenizing it, so that the course's pipeline reads the same tokens."""
    added = tokenizer.get_added_vocab()
    for token in set(tokenizer.tokenize(prompt)):
        vectors = 1
        while token in added and f"{token}_{vectors}" in added:
            vectors += 1
        if vectors > 1:
            prompt = spell_out(prompt, token, vectors)
    return prompt


def check_new_token(tokenizer, token: str, vectors: int = 1) -> str:
    """`token`, if it can be a new word: one word, not yet in the tokenizer's vocabulary (nor
    are the extra tokens of a word of several vectors)."""
    if not isinstance(token, str) or not token.strip() or token != token.strip() or " " in token:
        raise ValueError(f"token must be one word without spaces, such as '<star>', got {token!r}")
    for extra in vector_tokens(token, vectors)[1:]:
        check_new_token(tokenizer, extra)
    vocabulary = tokenizer.get_vocab()
    # CLIP's vocabulary holds most words twice: "star" inside a word and "star</w>" at its end.
    if token in vocabulary or f"{token}</w>" in vocabulary or token in tokenizer.get_added_vocab():
        suggestion = f"<{token.strip('<>')}>"
        suggestion = suggestion if suggestion != token else f"<{token.strip('<>')}-1>"
        raise ValueError(f"token {token!r} is already a word of the tokenizer, so its meaning would change for every "
                         f"prompt that uses it; choose a new one, such as {suggestion!r}")
    return token


def initializer_id(tokenizer, word: str) -> int:
    """The token id of `word`, which must be a single token of the vocabulary."""
    if not isinstance(word, str) or not word.strip():
        raise ValueError(f"initializer must be a word of the vocabulary, such as 'shape', got {word!r}")
    ids = tokenizer(word, add_special_tokens=False).input_ids
    if len(ids) != 1:
        pieces = tokenizer.convert_ids_to_tokens(ids)
        raise ValueError(f"initializer {word!r} is {len(ids)} tokens ({', '.join(map(repr, pieces))}), not one; "
                         "a new word's row starts from the row of a single token: give a word such as 'shape'")
    return ids[0]


def add_token(tokenizer, text_encoder, token: str, initializer: str, vectors: int = 1):
    """Add `token` to the tokenizer and a row for it to the text encoder's input embedding,
    copied from `initializer`'s row. With `vectors` > 1 the word is that many tokens
    (`vector_tokens`), each with such a row. Returns the list of their ids (the last rows), the
    word's own id first."""
    check_new_token(tokenizer, token, vectors)
    start = initializer_id(tokenizer, initializer)
    tokens = vector_tokens(token, vectors)
    tokenizer.add_tokens(tokens)
    token_ids = tokenizer.convert_tokens_to_ids(tokens)
    text_encoder.resize_token_embeddings(len(tokenizer))
    with torch.no_grad():
        rows = text_encoder.get_input_embeddings().weight
        rows[token_ids] = rows[start].clone()
    return token_ids


def row_mask(n_rows: int, trained_ids, dtype=torch.float32) -> torch.Tensor:
    """A (n_rows, 1) mask: 1 on the rows `trained_ids`, 0 elsewhere. The gradient of the
    embedding matrix times this mask moves the trained rows alone."""
    mask = torch.zeros(n_rows, 1, dtype=dtype)
    mask[list(trained_ids)] = 1
    return mask


def learned_embedding(text_encoder, token_ids) -> torch.Tensor:
    """The trained rows of `token_ids`, as a new float32 tensor: one row (width,) for a word of one
    token, as textual-inversion files hold it; (n, width) for a word of n tokens."""
    rows = text_encoder.get_input_embeddings().weight[list(token_ids)].detach().float().clone()
    return rows[0] if len(rows) == 1 else rows


def save_learned_embedding(path, token: str, vector: torch.Tensor) -> Path:
    """Write {token: vector} to `path` (safetensors), as diffusers' `load_textual_inversion` reads it."""
    from safetensors.torch import save_file

    path = Path(path)
    save_file({token: vector.detach().float().contiguous().cpu()}, str(path))
    return path


def load_learned_embedding(path) -> tuple[str, torch.Tensor]:
    """(token, vector) from a file `save_learned_embedding` wrote."""
    from safetensors.torch import load_file

    state = load_file(str(path))
    if len(state) != 1:
        raise ValueError(f"{path} holds {len(state)} tensors ({', '.join(sorted(state)[:5])}); a learned embedding "
                         "file holds one, named by its token")
    (token, vector), = state.items()
    return token, vector
