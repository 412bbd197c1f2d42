"""The real CLIP tokenizer (byte-level BPE, 49,408 tokens, 77-token context).

Stable Diffusion 1.x reads prompts with OpenAI CLIP's tokenizer. Its vocabulary is built
from one file of BPE merges (`bpe_simple_vocab_16e6.txt.gz`, shipped with OpenAI's CLIP
and with open_clip) in a fixed way:

1. the 256 byte symbols (each byte mapped to a printable unicode character),
2. the same 256 symbols with `</w>` (end of word) appended,
3. one token per merge, for the first 48,894 merges, in order,
4. `<|startoftext|>` (49406) and `<|endoftext|>` (49407).

256 + 256 + 48,894 + 2 = 49,408 tokens. `build_vocab_files` does exactly that and writes
the `vocab.json` + `merges.txt` pair that transformers' `CLIPTokenizer` reads; the course
ships the result in `sdcourse/assets/clip_tokenizer/`.

    >>> tok = load_tokenizer()
    >>> tok("a photo of a cat").input_ids
    [49406, 320, 1125, 539, 320, 2368, 49407]
"""

from __future__ import annotations

import gzip
import json
import re
import zipfile
from functools import lru_cache
from pathlib import Path

from sdcourse import CourseWarning
from sdcourse import warn as warn_learner

TOKENIZER_DIR = Path(__file__).resolve().parent / "assets" / "clip_tokenizer"
VOCAB_SIZE = 49408
MAX_LENGTH = 77  # the text encoder's context: start token, up to 75 prompt tokens, end token
START_TOKEN_ID = 49406  # <|startoftext|>
END_TOKEN_ID = 49407  # <|endoftext|>, also the padding token
NUM_MERGES = 49152 - 256 - 2  # merges used by CLIP: 48,894
BPE_FILE_IN_WHEEL = "open_clip/bpe_simple_vocab_16e6.txt.gz"


class PromptTruncatedWarning(CourseWarning):
    """A prompt was longer than the text encoder's 77-token context and was cut."""


def bytes_to_unicode() -> dict[int, str]:
    """Map every byte 0..255 to a printable unicode character (CLIP's / GPT-2's table).

    Printable bytes keep their own character; the others (control characters, space...)
    are moved to code points from 256 upwards, so BPE never sees whitespace or control
    characters inside a token.
    """
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in codes)))


def read_merges(bpe_path: str | Path) -> list[tuple[str, str]]:
    """Read CLIP's merges from `bpe_simple_vocab_16e6.txt.gz`, or from the open-clip wheel
    (a zip) that contains it."""
    bpe_path = Path(bpe_path)
    if bpe_path.suffix == ".whl" or zipfile.is_zipfile(bpe_path):
        with zipfile.ZipFile(bpe_path) as wheel:
            raw = wheel.read(BPE_FILE_IN_WHEEL)
    else:
        raw = bpe_path.read_bytes()
    lines = gzip.decompress(raw).decode("utf-8").split("\n")
    merges = lines[1 : NUM_MERGES + 1]  # line 0 is a version header
    return [tuple(m.split()) for m in merges]


def build_vocab(merges: list[tuple[str, str]]) -> dict[str, int]:
    """CLIP's token -> id table, built from the merges as described in the module docstring."""
    symbols = list(bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols]
    vocab += ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    return {token: i for i, token in enumerate(vocab)}


def build_vocab_files(bpe_path: str | Path, out_dir: str | Path = TOKENIZER_DIR) -> Path:
    """Write `vocab.json` and `merges.txt` for transformers' CLIPTokenizer into `out_dir`."""
    merges = read_merges(bpe_path)
    vocab = build_vocab(merges)
    if len(vocab) != VOCAB_SIZE:
        raise ValueError(f"bpe_path={str(bpe_path)!r} gives {len(vocab)} tokens; CLIP has {VOCAB_SIZE}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    lines = ["#version: 0.2"] + [" ".join(m) for m in merges]
    (out_dir / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out_dir


def make_tokenizer(path: str | Path = TOKENIZER_DIR):
    """A fresh transformers CLIPTokenizer from a folder holding vocab.json + merges.txt."""
    from transformers import CLIPTokenizer

    path = Path(path)
    vocab = json.loads((path / "vocab.json").read_text(encoding="utf-8"))
    lines = (path / "merges.txt").read_text(encoding="utf-8").strip().split("\n")
    merges = [tuple(line.split()) for line in lines[1:]]  # line 0 is the "#version" header
    return CLIPTokenizer(
        vocab=vocab,
        merges=merges,
        model_max_length=MAX_LENGTH,
        bos_token="<|startoftext|>",
        eos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        pad_token="<|endoftext|>",  # Stable Diffusion 1.x pads with <|endoftext|>
    )


@lru_cache(maxsize=1)
def load_tokenizer():
    """The course's CLIP tokenizer (shared, cached instance)."""
    return make_tokenizer(TOKENIZER_DIR)


def tokenize(prompts, tokenizer=None, max_length: int = MAX_LENGTH, warn: bool = True):
    """Tokenize prompts the way Stable Diffusion does: pad to 77 tokens, truncate beyond.

    A prompt longer than the context is cut; with `warn=True` a PromptTruncatedWarning says
    how many tokens were dropped and which words they spelled. Returns the tokenizer's
    BatchEncoding with PyTorch tensors (`input_ids`, `attention_mask`).
    """
    if isinstance(prompts, str):
        prompts = [prompts]
    if max_length < 2:
        raise ValueError(f"max_length={max_length!r}; it must be at least 2 (start and end tokens)")
    tokenizer = tokenizer or load_tokenizer()
    if warn:
        for prompt in prompts:
            ids = tokenizer(prompt, truncation=False, verbose=False).input_ids
            if len(ids) > max_length:
                dropped = ids[max_length - 1 : -1]  # the end token is kept, so one more goes
                words = re.sub(r" ([,.!?;:])", r"\1", tokenizer.decode(dropped)).strip()  # "circle ," -> "circle,"
                if len(words) > 120:  # the warning stays short: the start of what was dropped
                    words = words[:117].rsplit(" ", 1)[0] + " ..."
                plural = "token was" if len(dropped) == 1 else "tokens were"
                warn_learner(
                    f"the prompt has {len(ids) - 2} tokens plus start and end, more than the {max_length}-token "
                    f"context holds: the last {len(dropped)} {plural} dropped: {words!r}",
                    PromptTruncatedWarning,
                    stacklevel=2,
                )
    return tokenizer(
        list(prompts), padding="max_length", max_length=max_length, truncation=True, return_tensors="pt"
    )


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Rebuild vocab.json + merges.txt from CLIP's BPE file.")
    parser.add_argument("bpe", help="bpe_simple_vocab_16e6.txt.gz, or an open_clip_torch wheel")
    parser.add_argument("--out", default=str(TOKENIZER_DIR))
    args = parser.parse_args()
    print(build_vocab_files(args.bpe, args.out))
