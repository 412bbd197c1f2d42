"""The capstone's pieces of the build (lesson 14): the worked answers pass their checks, each
listed mistake fails and is named, the checks' references are the build's own, and the build
takes a learner's pieces, says whose each is, and names a piece that returns the wrong kind of
result before any training."""

import contextlib
import copy
import json
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler

from sdcourse.checks import check_ema_update, check_encode_latents, check_training_loss
from sdcourse.checks.lesson14 import _tiny_vae
from sdcourse.images import images_to_tensor
from sdcourse.schedules import SD_SCHEDULE
from sdcourse.tokenizer import MAX_LENGTH
from sdcourse.training.build_model import latents_stage
from sdcourse.training.common import ema_update, load_checkpoint
from sdcourse.training.config import fast_config
from sdcourse.training.datasets import tokenize_ids
from sdcourse.training.pieces import BuildPieces, PieceError, encode_training_set
from sdcourse.training.train_unet import cache_latents, train_unet, training_loss

ROOT = Path(__file__).resolve().parents[1]
CHECKS = {"training_loss": check_training_loss, "ema_update": check_ema_update, "encode_latents": check_encode_latents}

pytestmark = pytest.mark.usefixtures("one_thread")


def worked_answers() -> dict:
    """The functions the solution notebook defines, run in one namespace with its imports."""
    cells = json.loads((ROOT / "solutions" / "14_capstone.ipynb").read_text(encoding="utf-8"))["cells"]
    namespace = {"torch": torch, "np": np, "images_to_tensor": images_to_tensor}
    for cell in cells:
        source = "".join(cell["source"])
        if cell["cell_type"] == "code" and source.startswith("def "):
            exec(compile(source, "<solution cell>", "exec"), namespace)  # noqa: S102 (our own notebook)
    return {name: namespace[name] for name in CHECKS}


WORKED = worked_answers()


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_the_worked_answer_passes_its_check(name):
    assert CHECKS[name](WORKED[name], verbose=False)


@pytest.mark.parametrize("name, cause", [(name, cause) for name, check in sorted(CHECKS.items())
                                         for cause in check.mistakes], ids=lambda value: value[:50])
def test_each_listed_mistake_fails_and_is_named(name, cause):
    check = CHECKS[name]
    result = check(check.mistakes[cause], verbose=False)
    assert not result
    assert "likely cause: " + cause in result.report


def test_each_check_names_at_least_three_mistakes():
    assert all(len(check.mistakes) >= 3 for check in CHECKS.values())


def test_the_references_are_the_builds_own_pieces():
    assert check_ema_update.reference is ema_update
    case = check_training_loss.cases()[0]
    unet, batch, empty, p, gamma = case.args
    scheduler = DDPMScheduler(**SD_SCHEDULE)
    assert torch.equal(check_training_loss.reference(unet, batch, empty, scheduler, p, gamma),
                       training_loss(unet, batch, empty, scheduler, p, gamma))


def test_the_encoding_reference_is_the_cached_mean_scaled():
    vae = _tiny_vae(0.72, 0)
    pictures = np.random.default_rng(0).integers(0, 256, (5, 64, 64, 3), dtype=np.uint8)
    mean, _ = cache_latents(vae, pictures, batch=2, progress=False)  # the course's stage, in float16
    torch.testing.assert_close(check_encode_latents.reference(vae, pictures, 2), torch.from_numpy(mean).float() * 0.72,
                               atol=2e-3, rtol=2e-3)


# ---- the build takes the learner's pieces -----------------------------------------------------------


def test_the_build_says_whose_each_piece_is():
    said = []
    BuildPieces(training_loss=WORKED["training_loss"]).announce(said.append)
    assert said == ["training_loss: the function given, training_loss",
                    "ema_update: none given, so the build uses the course's own",
                    "encode_latents: none given, so the build uses the course's own"]
    said.clear()
    BuildPieces().announce(said.append)
    assert said == [], "the course's build, as the command line runs it, says nothing of pieces"


def test_a_piece_that_is_not_a_function_is_refused_by_name():
    with pytest.raises(TypeError, match=r"ema_update must be a function .*got a Python number, 0\.999"):
        BuildPieces(ema_update=0.999)


@pytest.fixture(scope="module")
def frozen_parts():
    from sdcourse.pipeline import load_pipeline

    pipe = load_pipeline()
    return pipe.vae, pipe.text_encoder, pipe.tokenizer


def unet_run(run_dir, frozen_parts, pieces=None, latents=None, **overrides):
    """Two steps of the build's U-Net stage at a tiny size; returns its checkpoint."""
    vae, text_encoder, tokenizer = frozen_parts
    cfg = fast_config(**{"unet_channels": (16, 32, 32), "unet_groups": 8, "unet_heads": 2, "unet_batch": 4,
                         "unet_warmup": 2, "checkpoint_every": 2, "sample_every": 0, "caption_dropout": 0.5, **overrides})
    rng = np.random.default_rng(0)
    if latents is None:
        latents = (rng.standard_normal((16, 4, 8, 8)).astype(np.float16), np.full((16, 4, 8, 8), 0.1, dtype=np.float16))
    token_ids = tokenize_ids(["a red circle", "a blue square"] * 16, tokenizer).reshape(16, 2, MAX_LENGTH)
    torch.manual_seed(0)
    train_unet(cfg, latents, token_ids, text_encoder, vae, tokenizer, 0.5, run_dir, progress=False, total_steps=2,
               pieces=pieces)
    return load_checkpoint(run_dir / "unet_ckpt.pt")


@pytest.mark.parametrize("text_encoder_lr_scale", [0.2, 0.0], ids=["text encoder trains along", "frozen"])
def test_given_the_courses_own_functions_as_pieces_the_unet_trains_exactly_as_the_course_build(
        tmp_path, frozen_parts, text_encoder_lr_scale):
    """The first try of each piece draws its batch aside: the training's random draws are the course's."""
    course = unet_run(tmp_path / "course", frozen_parts, text_encoder_lr_scale=text_encoder_lr_scale)
    given = unet_run(tmp_path / "given", frozen_parts, BuildPieces(training_loss, ema_update),
                     text_encoder_lr_scale=text_encoder_lr_scale)
    for part in ("model", "ema"):
        ours = course[part] if part == "model" else course[part]["model"]
        theirs = given[part] if part == "model" else given[part]["model"]
        for key, value in ours.items():
            torch.testing.assert_close(theirs[key], value, rtol=0, atol=0, msg=key)
    assert given["settings"]["your_pieces"] == ["training_loss", "ema_update"]
    assert "your_pieces" not in course["settings"]


def test_the_worked_pieces_train_the_unet_on_scaled_latents(tmp_path, frozen_parts):
    scaled = torch.randn(16, 4, 8, 8)
    checkpoint = unet_run(tmp_path, frozen_parts, BuildPieces(WORKED["training_loss"], WORKED["ema_update"]),
                          latents=scaled)
    assert checkpoint["step"] == 2
    assert checkpoint["settings"]["your_pieces"] == ["training_loss", "ema_update"]


def per_example_loss(unet, batch, empty_context, scheduler, caption_dropout, min_snr_gamma):
    noisy = scheduler.add_noise(batch["latents"], batch["noise"], batch["timesteps"])
    prediction = unet(noisy, batch["timesteps"], encoder_hidden_states=batch["context"]).sample
    return (prediction - batch["noise"]).pow(2).mean((1, 2, 3))


def as_number(*args):
    return training_loss(*args).item()


def detached(*args):
    return training_loss(*args).detach()


@pytest.mark.parametrize("piece, returned", [
    (per_example_loss, r"a float32 tensor of shape \(4,\)"),
    (as_number, r"a Python number, [\d.]+"),
    (detached, r"a float32 tensor of shape \(\) without gradients \(made under torch\.no_grad\(\), detached, or rebuilt from a "
               r"Python number\)"),
    (lambda *args: None, r"None"),
    (lambda *args: training_loss(*args) * float("nan"), r"a float32 tensor of shape \(\) holding nan"),
], ids=["one loss per example", "a Python number", "detached", "nothing returned", "not a number"])
def test_a_training_loss_returning_the_wrong_kind_of_result_is_named_before_training(
        tmp_path, frozen_parts, piece, returned):
    with pytest.raises(PieceError, match=r"^training_loss returned " + returned + r" on the build's first batch; the "
                       r"build expects the batch's loss as one number that carries gradients: a 0-d float tensor"):
        unet_run(tmp_path, frozen_parts, BuildPieces(training_loss=piece))
    assert not (tmp_path / "unet_ckpt.pt").exists(), "nothing was trained"


def new_average(ema_model, model, decay, step):
    averaged = copy.deepcopy(ema_model)
    ema_update(averaged, model, decay, step)
    return averaged


def in_float64(ema_model, model, decay, step):
    for ema_weight, weight in zip(ema_model.parameters(), model.parameters()):
        ema_weight.data = (decay * ema_weight + (1 - decay) * weight).double().detach()


@pytest.mark.parametrize("piece, message", [
    (new_average, r"^ema_update returned a ModuleDict model; the build expects it to change ema_model's weights in place "
                  r"and return None"),
    (in_float64, r"^ema_update changed the EMA model's unet\.conv_in\.weight: it left it a float64 tensor of shape "
                 r"\(16, 4, 3, 3\); the build expects every weight to keep the model's shape and dtype, a float32 "
                 r"tensor of shape \(16, 4, 3, 3\)"),
], ids=["a new model returned", "weights turned float64"])
def test_an_ema_update_with_the_wrong_result_is_named_before_training(tmp_path, frozen_parts, piece, message):
    with pytest.raises(PieceError, match=message):
        unet_run(tmp_path, frozen_parts, BuildPieces(ema_update=piece))
    assert not (tmp_path / "unet_ckpt.pt").exists(), "nothing was trained"


# ---- the latents stage takes the learner's encode_latents ----------------------------------------------


def latents_build(tmp_path, encode_latents, n=10):
    """What the latents stage reads of the build: its pieces, its VAE, its pictures, its folder."""
    pictures = np.random.default_rng(1).integers(0, 256, (n, 64, 64, 3), dtype=np.uint8)
    accelerator = types.SimpleNamespace(main_process_first=contextlib.nullcontext)
    return types.SimpleNamespace(pieces=BuildPieces(encode_latents=encode_latents), vae=_tiny_vae(0.72, 0),
                                 data={"images": pictures}, run_dir=tmp_path, progress=False, accelerator=accelerator,
                                 latents=None)


def test_the_latents_stage_uses_a_learners_encode_latents_and_caches_nothing(tmp_path):
    b = latents_build(tmp_path, WORKED["encode_latents"])
    latents_stage(b)
    torch.testing.assert_close(b.latents, check_encode_latents.reference(b.vae, b.data["images"], 4))
    assert b.latents.dtype == torch.float32 and not (tmp_path / "latents.npz").exists()


def without_the_last_partial_batch(vae, images, batch_size):
    whole = len(images) - len(images) % batch_size
    return check_encode_latents.reference(vae, images[:whole], batch_size)


@pytest.mark.parametrize("piece, returned", [
    (without_the_last_partial_batch, r"a float32 tensor of shape \(8, 4, 8, 8\); the build expects a float tensor of "
                                     r"shape \(9, 4, 8, 8\), one latent per picture"),
    (lambda vae, images, batch_size: check_encode_latents.reference(vae, images, batch_size).numpy(),
     r"a numpy array \(float32\) of shape \(9, 4, 8, 8\); the build expects a float tensor"),
    (lambda vae, images, batch_size: check_encode_latents.reference(vae, images, batch_size).round().long(),
     r"an int64 tensor of shape \(9, 4, 8, 8\); the build expects a float tensor"),
], ids=["the last partial batch dropped", "a numpy array", "integers"])
def test_an_encode_latents_with_the_wrong_result_is_named_after_one_batch(tmp_path, piece, returned):
    b = latents_build(tmp_path, piece)
    calls = []
    with pytest.raises(PieceError, match=r"^encode_latents, given 9 pictures in batches of 8 \(on the build's first "
                                         r"batch and one picture more\), returned " + returned):
        encode_training_set(lambda *args: calls.append(len(args[1])) or piece(*args), b.vae, b.data["images"], 8)
    assert calls == [9], "refused after one batch, before the whole set"


def test_main_hands_the_pieces_to_the_stages_and_says_whose_each_is(tmp_path, monkeypatch, capsys):
    from sdcourse.training import build_model

    seen = []
    monkeypatch.setattr(build_model, "STAGES", (("data", lambda b: seen.append(b.pieces)),))
    arguments = ["--run", str(tmp_path / "run"), "--stop-after", "data", "--quiet", "--fast"]
    build_model.main(arguments, ema_update=WORKED["ema_update"])
    assert seen[-1] == BuildPieces(ema_update=WORKED["ema_update"])
    printed = capsys.readouterr().out
    assert "ema_update: the function given, ema_update" in printed
    assert "training_loss: none given, so the build uses the course's own" in printed
    build_model.main(arguments)  # as the command line runs it: the course's own pieces, and no word of them
    assert seen[-1] == BuildPieces()
    assert "the course's own" not in capsys.readouterr().out
