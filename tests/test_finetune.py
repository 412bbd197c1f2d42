"""Personalization: textual inversion, DreamBooth and pivotal tuning from one fine-tuning command,
and what each writes, loaded by diffusers and by the course's own pipeline."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from sdcourse.dreambooth import class_pictures, prior_preservation_loss
from sdcourse.pipeline import TextToImage, load_pipeline
from sdcourse.textual_inversion import (EMBEDDING_FILE, add_token, check_new_token, initializer_id,
                                        load_learned_embedding, row_mask, spell_out_learned_words)
from sdcourse.training.finetune import CHECKPOINT, DREAMBOOTH_PRIOR_WEIGHT, load_finetuned, main
from sdcourse.training.trainer import Trainer, TrainSettings

SETTINGS = ["--concept", "star", "--batch", "4", "--n-pictures", "8", "--threads", "1", "--quiet"]
SMALL = [*SETTINGS, "--steps", "3"]


def seeded(seed):
    return torch.Generator().manual_seed(seed)


def pixels(pictures):
    """PIL pictures as one int16 array, to compare in 0..255 levels."""
    return np.stack([np.asarray(picture, dtype=np.int16) for picture in pictures])


def draw(pipe, prompt, seed=0, steps=3):
    """diffusers' pictures, or the course pipeline's (it takes the same arguments)."""
    out = pipe(prompt, num_inference_steps=steps, generator=seeded(seed))
    return pixels(out.images if hasattr(out, "images") else out)


# ---- the pieces


def test_a_new_token_starts_from_its_initializers_row_in_a_new_last_row():
    pipe = load_pipeline()
    rows_before = pipe.text_encoder.get_input_embeddings().weight.detach().clone()
    [token_id] = add_token(pipe.tokenizer, pipe.text_encoder, "<star>", "shape")
    rows = pipe.text_encoder.get_input_embeddings().weight
    assert token_id == len(pipe.tokenizer) - 1 == rows.shape[0] - 1 == rows_before.shape[0]
    assert torch.equal(rows[token_id], rows_before[initializer_id(pipe.tokenizer, "shape")])
    assert torch.equal(rows[:-1], rows_before)
    assert pipe.tokenizer("a red <star>", add_special_tokens=False).input_ids[-1] == token_id


def test_a_word_of_several_vectors_is_spelled_out_as_diffusers_spells_it():
    pipe = load_pipeline()
    ids = add_token(pipe.tokenizer, pipe.text_encoder, "<star>", "shape", vectors=3)
    rows = pipe.text_encoder.get_input_embeddings().weight
    assert ids == list(range(len(pipe.tokenizer) - 3, len(pipe.tokenizer)))
    assert all(torch.equal(rows[i], rows[initializer_id(pipe.tokenizer, "shape")]) for i in ids)
    mine = spell_out_learned_words("a red <star> on a <star>", pipe.tokenizer)
    assert mine == "a red <star> <star>_1 <star>_2 on a <star> <star>_1 <star>_2"
    assert mine == pipe.maybe_convert_prompt("a red <star> on a <star>", pipe.tokenizer)
    assert spell_out_learned_words("a red circle", pipe.tokenizer) == "a red circle"
    with pytest.raises(ValueError, match=r"token '<star>_1' is already a word"):
        check_new_token(pipe.tokenizer, "<star>", vectors=2)


def test_a_token_the_vocabulary_holds_and_an_initializer_of_several_tokens_are_refused():
    tokenizer = load_pipeline().tokenizer
    with pytest.raises(ValueError, match=r"token 'star' is already a word of the tokenizer.*such as '<star>'"):
        check_new_token(tokenizer, "star")
    with pytest.raises(ValueError, match="token must be one word"):
        check_new_token(tokenizer, "two words")
    with pytest.raises(ValueError, match=r"initializer 'triangles' is 2 tokens \('tri', 'angles</w>'\)"):
        initializer_id(tokenizer, "triangles")


def test_the_gradient_mask_keeps_other_rows_still_but_weight_decay_would_move_them():
    torch.manual_seed(0)
    for weight_decay, others_still in ((0.0, True), (0.01, False)):
        rows = torch.nn.Parameter(torch.randn(6, 3))
        start = rows.detach().clone()
        rows.register_hook(lambda gradient: gradient * row_mask(6, [5]))
        optimizer = torch.optim.AdamW([rows], lr=0.1, weight_decay=weight_decay)
        for _ in range(3):
            optimizer.zero_grad()
            rows.pow(2).sum().backward()
            assert rows.grad[:5].abs().sum() == 0  # the mask zeroes the gradient of every other row
            optimizer.step()
        assert not torch.equal(rows[5], start[5])
        assert torch.equal(rows[:5], start[:5]) is others_still


def test_the_prior_preservation_loss_is_the_instance_mean_plus_lambda_times_the_prior_mean():
    per_picture = torch.tensor([1.0, 3.0, 10.0, 20.0, 30.0])
    is_prior = torch.tensor([False, False, True, True, True])
    assert prior_preservation_loss(per_picture, is_prior, 0.5) == pytest.approx(2.0 + 0.5 * 20.0)
    with pytest.raises(ValueError, match="needs both subject and class pictures"):
        prior_preservation_loss(per_picture, torch.zeros(5, dtype=torch.bool))


def test_class_pictures_are_drawn_by_the_model_itself_for_the_class_prompts():
    pipe = load_pipeline()
    images, captions = class_pictures(pipe, ["a red shape", "a blue shape"], 3, seed=1, steps=3, batch=2)
    assert images.shape == (3, 64, 64, 3) and images.dtype == np.uint8
    assert captions == ["a red shape", "a blue shape", "a red shape"]
    again, _ = class_pictures(pipe, ["a red shape", "a blue shape"], 3, seed=1, steps=3, batch=2)
    assert np.array_equal(images, again)


def test_a_parameter_group_with_an_lr_scale_learns_that_many_times_faster():
    a, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    model = torch.nn.ParameterList([a, b])
    settings = TrainSettings(steps=1, lr=0.1, schedule="constant", warmup=0, weight_decay=0.0)
    trainer = Trainer(model, lambda m, batch: -(m[0] + m[1]).sum(), lambda: {}, settings,
                      params=[{"params": [a]}, {"params": [b], "lr_scale": 5.0}], progress=False)
    trainer.fit()
    assert b.item() == pytest.approx(5 * a.item()) and a.item() == pytest.approx(0.1)


# ---- the command, each method


@pytest.mark.parametrize("vectors", [1, 3])
def test_textual_inversion_trains_its_rows_alone_and_diffusers_and_the_course_draw_the_same(tmp_path, one_thread,
                                                                                           vectors):
    out = tmp_path / "ti"
    main(["--method", "textual-inversion", "--out", str(out), "--checkpoint-every", "2", "--vectors", str(vectors),
          *SMALL])
    record = json.loads((out / "finetune.json").read_text())
    assert record["method"] == "textual-inversion" and record["word"] == "<star>"
    token, vector = load_learned_embedding(out / EMBEDDING_FILE)
    assert token == "<star>" and vector.shape == ((32,) if vectors == 1 else (vectors, 32))
    assert (out / EMBEDDING_FILE).stat().st_size <= 10_000

    # Every other row of the trained text encoder is bit-identical to the base model's: the
    # checkpoint holds the whole matrix as trained.
    base = load_pipeline()
    rows = base.text_encoder.get_input_embeddings().weight
    trained = torch.load(out / CHECKPOINT, weights_only=False)["model"]
    (name, matrix), = trained.items()
    assert "token_embedding" in name and torch.equal(matrix[:-vectors], rows)
    assert torch.equal(matrix[-vectors:].squeeze(0), vector)
    start = rows[initializer_id(base.tokenizer, "shape")]
    assert all(not torch.equal(row, start) for row in vector.reshape(vectors, -1))

    known = draw(base, "a red circle")
    assert load_finetuned(base, out) == "<star>"
    assert np.array_equal(draw(base, "a red circle"), known)  # prompts without the word draw as before
    theirs = draw(base, "a blue <star>", seed=3)
    assert np.abs(draw(TextToImage.from_pretrained(base), "a blue <star>", seed=3) - theirs).max() <= 1


@pytest.mark.parametrize("text_encoder", [False, True], ids=["unet", "unet-and-text-encoder"])
def test_dreambooth_writes_a_unet_diffusers_loads_and_the_course_pipeline_draws_the_same(tmp_path, one_thread,
                                                                                         text_encoder):
    out = tmp_path / "db"
    flag = "--train-text-encoder" if text_encoder else "--no-learn-word"  # the paper's rare word, as the encoder has it
    main(["--method", "dreambooth", "--out", str(out), "--class-pictures", "4", flag, *SMALL])
    record = json.loads((out / "finetune.json").read_text())
    assert record["word"] == "sks shape" and record["prior_pictures"] == 4
    assert record["settings"]["prior_loss_weight"] == DREAMBOOTH_PRIOR_WEIGHT
    assert (out / "text_encoder" / "model.safetensors").exists() == text_encoder
    pipe = load_pipeline()
    words_before = pipe.text_encoder(pipe.tokenizer("a red sks shape", return_tensors="pt").input_ids)[0]
    before = draw(pipe, "a red sks shape")
    load_finetuned(pipe, out)
    after = draw(pipe, "a red sks shape")
    assert not np.array_equal(before, after)  # every U-Net weight trained
    words_after = pipe.text_encoder(pipe.tokenizer("a red sks shape", return_tensors="pt").input_ids)[0]
    assert torch.equal(words_before, words_after) != text_encoder  # and the text encoder's, where asked
    assert np.abs(draw(TextToImage.from_pretrained(pipe), "a red sks shape") - after).max() <= 1



def test_dreambooth_with_a_learned_word_trains_the_unet_and_that_row_alone(tmp_path, one_thread):
    out = tmp_path / "db-word"
    main(["--method", "dreambooth", "--out", str(out), "--class-pictures", "4", *SMALL])  # the word learned: the default
    assert (out / "unet" / "diffusion_pytorch_model.safetensors").exists() and (out / EMBEDDING_FILE).exists()
    assert not (out / "text_encoder").exists()
    token, row = load_learned_embedding(out / EMBEDDING_FILE)
    pipe = load_pipeline()
    rows_before = pipe.text_encoder.get_input_embeddings().weight.detach().clone()
    assert token == "<sks>" and not torch.equal(row, rows_before[initializer_id(pipe.tokenizer, "shape")])
    assert load_finetuned(pipe, out) == "<sks> shape"
    rows = pipe.text_encoder.get_input_embeddings().weight.detach()
    assert torch.equal(rows[:-1], rows_before) and torch.equal(rows[-1], row)  # every other row as it was
    after = draw(pipe, "a red <sks> shape")
    assert np.abs(draw(TextToImage.from_pretrained(pipe), "a red <sks> shape") - after).max() <= 1


def test_pivotal_tuning_writes_the_word_and_the_adapter_and_both_load(tmp_path, one_thread):
    out = tmp_path / "pivotal"
    main(["--method", "pivotal", "--out", str(out), *SMALL])
    assert (out / EMBEDDING_FILE).exists() and (out / "pytorch_lora_weights.safetensors").exists()
    assert any("lora" in key for key in load_file(str(out / "pytorch_lora_weights.safetensors")))
    pipe = load_pipeline()
    assert load_finetuned(pipe, out) == "<star> shape"  # the new word, then the class word, as LoRA's captions
    assert pipe.tokenizer.convert_tokens_to_ids("<star>") == len(pipe.tokenizer) - 1


def test_a_finished_run_resumes_and_another_methods_folder_is_refused(tmp_path, one_thread, capsys):
    out = tmp_path / "ti"
    main(["--method", "textual-inversion", "--out", str(out), *SMALL])
    main(["--method", "textual-inversion", "--out", str(out), *SETTINGS, "--steps", "4"])
    assert torch.load(out / CHECKPOINT, weights_only=False)["step"] == 4
    before = sorted(p.name for p in out.iterdir())
    for overwrite in ([], ["--overwrite"]):
        with pytest.raises(SystemExit):
            main(["--method", "lora", "--out", str(out), *SMALL, *overwrite])
        assert "holds a textual-inversion run (finetune.json, learned_embeds.safetensors)" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == before


@pytest.mark.parametrize("args, message", [
    (["--method", "textual-inversion", "--token", "star"], "token 'star' is already a word of the tokenizer"),
    (["--method", "pivotal", "--initializer", "triangles"], "initializer 'triangles' is 2 tokens"),
    (["--method", "dreambooth", "--class-pictures", "0"], "needs class pictures to learn again, got class_pictures=0"),
    (["--method", "dreambooth", "--prior-share", "0.5", "--no-prior"], "--no-prior with --prior-share 0.5"),
    (["--method", "foo"], "invalid choice: 'foo' (choose from 'lora', 'textual-inversion', 'dreambooth', 'pivotal')"),
    (["--method", "pivotal", "--train-text-encoder"], "train_text_encoder belongs to method='lora' or 'dreambooth'"),
    (["--method", "dreambooth", "--text-encoder-lr-scale", "0"], "text_encoder_lr_scale"),
    (["--method", "dreambooth", "--no-learn-word", "--vectors", "4"], "vectors=4 belongs to a new word"),
    (["--method", "textual-inversion", "--vectors", "0"], "vectors must be at least 1, got 0"),
    (["--method", "lora", "--learn-word"], "learn_word belongs to method='dreambooth'"),
    (["--method", "dreambooth", "--learn-word", "--train-text-encoder"], "learn_word and train_text_encoder"),
    (["--method", "dreambooth", "--token", "sks"], "token 'sks' is already a word of the tokenizer, so its meaning "
     "would change for every prompt that uses it; choose a new one, such as '<sks>' (DreamBooth learns a new word's "
     "row by default; --no-learn-word keeps 'sks' as the text encoder has it)"),
])
def test_bad_input_is_refused_by_name_before_training(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit):
        main([*args, "--concept", "star", "--out", str(tmp_path / "run"), "--quiet"])
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run" / CHECKPOINT).exists()


@pytest.mark.parametrize("concept, word", [("star", "star shape"), ("pink", "pink")])
def test_lora_defaults_keep_the_class_word_and_adapt_the_text_encoder_too(tmp_path, concept, word):
    """A concept's LoRA captions say its word and then its class word ("a red star shape"; pink has
    none), and the text encoder gets an adapter too, as the embedded model's measured defaults."""
    from sdcourse.training.finetune import parse, word_of
    from sdcourse.training.train_lora import CONCEPT_PRIOR_SHARE, LoRASettings

    _, _, settings = parse(["--method", "lora", "--concept", concept, "--out", str(tmp_path)])
    assert word_of(settings, concept) == word
    assert settings.train_text_encoder and settings.prior_share == CONCEPT_PRIOR_SHARE
    _, _, settings = parse(["--method", "lora", "--concept", concept, "--out", str(tmp_path), "--class-word", "",
                            "--no-train-text-encoder"])
    assert word_of(settings, concept) == concept and not settings.train_text_encoder
    assert not LoRASettings(full_unet=True).train_text_encoder  # a full fine-tune trains the U-Net alone
    with pytest.raises(ValueError, match="class_word=' shape'; it must be words"):
        LoRASettings(class_word=" shape")


def test_each_methods_defaults_for_a_concept(tmp_path):
    """Measured on the embedded model: the new word alone draws more stars than the new word and
    the class word, and more as eight rows than as one; pivotal tuning prompts as LoRA does, with
    its share of known pictures."""
    from sdcourse.training.finetune import parse, word_of
    from sdcourse.training.train_lora import CONCEPT_PRIOR_SHARE

    expected = {"textual-inversion": ("<star>", 0.0), "pivotal": ("<star> shape", CONCEPT_PRIOR_SHARE),
                "dreambooth": ("<sks> shape", 0.5), "lora": ("star shape", CONCEPT_PRIOR_SHARE)}
    for method, (word, prior_share) in expected.items():
        _, _, settings = parse(["--method", method, "--concept", "star", "--out", str(tmp_path)])
        assert (word_of(settings, "star"), settings.prior_share) == (word, prior_share), method
        assert settings.train_text_encoder == (method == "lora"), method
        assert settings.vectors == (8 if method == "textual-inversion" else 1), method  # 8 rows: 48% -> 61% stars
        assert settings.learn_word == (method == "dreambooth"), method  # its word's row learned: 62% -> 91% stars
    _, _, settings = parse(["--method", "dreambooth", "--concept", "star", "--out", str(tmp_path), "--no-learn-word"])
    assert word_of(settings, "star") == "sks shape" and not settings.learn_word
    _, _, settings = parse(["--method", "textual-inversion", "--concept", "star", "--out", str(tmp_path),
                            "--class-word", "shape"])
    assert word_of(settings, "star") == "<star> shape"  # asked for, it is written


def test_train_lora_refuses_a_class_word_for_your_own_pictures(tmp_path, capsys):
    from sdcourse.training.train_lora import main as train_lora_main

    with pytest.raises(SystemExit):
        train_lora_main(["--images", str(tmp_path), "--class-word", "dog", "--out", str(tmp_path / "run")])
    assert "--class-word goes with --concept; with --images, write the class word in your captions" in \
        capsys.readouterr().err
