"""The real CLIP tokenizer: pinned ids, 49,408 tokens, 77-token context with a warning."""

import warnings

import pytest

from sdcourse.tokenizer import MAX_LENGTH, PromptTruncatedWarning, load_tokenizer, tokenize


def test_pinned_ids():
    assert load_tokenizer()("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]


def test_vocabulary_size_and_special_tokens():
    tok = load_tokenizer()
    assert len(tok) == 49408
    assert tok.model_max_length == 77 == MAX_LENGTH
    assert tok.convert_tokens_to_ids("<|startoftext|>") == 49406
    assert tok.convert_tokens_to_ids("<|endoftext|>") == 49407
    assert tok.convert_ids_to_tokens(320) == "a</w>"


def test_course_words_are_single_tokens():
    tok = load_tokenizer()
    for word in ["red", "green", "blue", "circle", "square", "triangle", "star"]:
        assert len(tok(word).input_ids) == 3, word


def test_padding_to_77():
    batch = tokenize(["a red circle", "a small blue square in the top left"])
    assert batch.input_ids.shape == (2, 77)
    assert batch.input_ids[0, 0] == 49406
    assert batch.input_ids[0, 4] == 49407  # end token, then padding (also <|endoftext|>)


def test_short_prompt_no_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error", PromptTruncatedWarning)
        tokenize("a red circle on a white background")


def test_long_prompt_warns_and_truncates():
    prompt = " ".join(["red circle"] * 40) + " purple elephant"
    with pytest.warns(PromptTruncatedWarning) as record:
        batch = tokenize(prompt)
    assert batch.input_ids.shape == (1, 77)
    assert batch.input_ids[0, -1] == 49407
    message = str(record[0].message)
    assert "7 tokens were dropped" in message  # 1 + 82 + 1 = 84 tokens, 77 kept
    assert "purple elephant" in message


def test_rebuild_from_open_clip_file(tmp_path):
    """The shipped vocabulary is exactly what the open-clip-torch wheel's BPE file gives.
    Needs the wheel: `pip download --no-deps open-clip-torch==3.3.0 -d DIR`, then
    SDCOURSE_OPEN_CLIP_WHEEL=DIR/open_clip_torch-3.3.0-py3-none-any.whl (CI does this)."""
    import os
    from pathlib import Path

    from sdcourse.tokenizer import TOKENIZER_DIR, build_vocab_files

    wheel = Path(os.environ.get("SDCOURSE_OPEN_CLIP_WHEEL", ""))
    if not wheel.is_file():
        pytest.skip("set SDCOURSE_OPEN_CLIP_WHEEL to a downloaded open_clip_torch wheel to run this test")
    out = build_vocab_files(wheel, tmp_path)
    assert (out / "vocab.json").read_bytes() == (TOKENIZER_DIR / "vocab.json").read_bytes()
    assert (out / "merges.txt").read_bytes() == (TOKENIZER_DIR / "merges.txt").read_bytes()
