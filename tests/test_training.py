"""The build's training loop and stages: an interrupted run resumes exactly where it stopped,
a longer run extends a finished one, a checkpoint made with other settings is refused, and the
whole fast build writes only inside its run and out folders."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import sdcourse
from sdcourse.evaluate import CLASSIFIER_FILE, clip_image_folder
from sdcourse.tokenizer import MAX_LENGTH
from sdcourse.training.common import EMA, load_checkpoint, min_snr_weights
from sdcourse.training.config import fast_config
from sdcourse.training.datasets import tokenize_ids
from sdcourse.training.train_unet import train_unet
from sdcourse.training.trainer import MAY_CHANGE_ON_RESUME, CheckpointError, Trainer, TrainSettings, learning_rate

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def frozen_parts():
    from sdcourse.pipeline import load_pipeline

    pipe = load_pipeline()
    return pipe.vae, pipe.text_encoder, pipe.tokenizer


TINY_UNET = dict(unet_channels=(16, 32, 32), unet_groups=8, unet_heads=2, unet_batch=4, unet_warmup=2,
                 checkpoint_every=2, sample_every=0)


def tiny_unet_run(run_dir, total_steps, frozen_parts, init_unet=None, **overrides):
    vae, text_encoder, tokenizer = frozen_parts
    cfg = fast_config(**{**TINY_UNET, **overrides})
    rng = np.random.default_rng(0)
    latents = (rng.standard_normal((16, 4, 8, 8)).astype(np.float16),
               np.full((16, 4, 8, 8), 0.1, dtype=np.float16))
    token_ids = tokenize_ids(["a red circle", "a blue square"] * 16, tokenizer).reshape(16, 2, MAX_LENGTH)
    train_unet(cfg, latents, token_ids, text_encoder, vae, tokenizer, 0.5, run_dir, progress=False,
               total_steps=total_steps, init_unet=init_unet)
    return load_checkpoint(run_dir / "unet_ckpt.pt")


def test_unet_training_resumes_exactly(tmp_path, frozen_parts):
    torch.manual_seed(0)
    interrupted = tiny_unet_run(tmp_path / "interrupted", 4, frozen_parts)
    assert interrupted["step"] == 4
    resumed = tiny_unet_run(tmp_path / "interrupted", 6, frozen_parts)  # same folder: picks up at step 4
    torch.manual_seed(0)
    straight = tiny_unet_run(tmp_path / "straight", 6, frozen_parts)
    assert resumed["step"] == straight["step"] == 6
    for key, value in straight["model"].items():
        torch.testing.assert_close(resumed["model"][key], value, rtol=0, atol=0, msg=key)
    for key, value in straight["ema"]["model"].items():
        torch.testing.assert_close(resumed["ema"]["model"][key], value, rtol=0, atol=0, msg=key)
    changed = any(not torch.equal(interrupted["model"][k], v) for k, v in straight["model"].items())
    assert changed, "steps 5 and 6 should have changed the weights"


def test_unet_training_can_start_from_a_trained_unet(tmp_path, frozen_parts):
    from sdcourse.training.train_unet import make_unet

    torch.manual_seed(1)
    start = make_unet(fast_config(**TINY_UNET))
    start_weights = {k: v.clone() for k, v in start.state_dict().items()}
    # With a learning rate of 0 the weights cannot move: both they and their EMA stay the start's.
    # (The checkpoint holds the U-Net and the text encoder that trains along, as "unet.*" and "text_encoder.*".)
    still = tiny_unet_run(tmp_path / "still", 2, frozen_parts, init_unet=start, unet_lr=0.0)
    for key, value in start_weights.items():
        torch.testing.assert_close(still["model"]["unet." + key], value, rtol=0, atol=0, msg=key)
        torch.testing.assert_close(still["ema"]["model"]["unet." + key], value, rtol=0, atol=0, msg=key)
    # A real run trains a copy: the U-Net passed in is left as it was.
    moved = tiny_unet_run(tmp_path / "moved", 2, frozen_parts, init_unet=start)
    assert any(not torch.equal(moved["model"]["unet." + k], v) for k, v in start_weights.items())
    for key, value in start.state_dict().items():
        torch.testing.assert_close(value, start_weights[key], rtol=0, atol=0, msg=key)


def test_the_text_encoder_trains_along_on_a_copy_at_its_own_rate_or_stays_frozen(tmp_path, frozen_parts):
    _, text_encoder, _ = frozen_parts
    given = {k: v.clone() for k, v in text_encoder.state_dict().items()}
    along = tiny_unet_run(tmp_path / "along", 2, frozen_parts)
    moved = [k for k, v in given.items() if not torch.equal(along["model"]["text_encoder." + k], v)]
    assert moved, "the text encoder trains along at text_encoder_lr_scale > 0"
    assert all(torch.equal(v, given[k]) for k, v in text_encoder.state_dict().items()), "on a copy"
    frozen = tiny_unet_run(tmp_path / "frozen", 2, frozen_parts, text_encoder_lr_scale=0.0)
    assert not any(k.startswith("text_encoder.") for k in frozen["model"]) and "conv_in.weight" in frozen["model"]
    # The text encoder moves at its share of the learning rate: at scale 0.2 less than at scale 1.
    full = tiny_unet_run(tmp_path / "full", 2, frozen_parts, text_encoder_lr_scale=1.0)
    step = {name: max((run["model"]["text_encoder." + k] - v).abs().max().item() for k, v in given.items())
            for name, run in (("0.2", along), ("1", full))}
    assert step["0.2"] < step["1"]


def test_ema_moves_towards_the_weights():
    model = torch.nn.Linear(2, 2)
    ema = EMA(model, decay=0.9)
    with torch.no_grad():
        model.weight.add_(1.0)
    before = ema.model.weight.clone()
    ema.update(model)
    after = ema.model.weight
    assert torch.all((after - before) > 0) and torch.all(after < model.weight)


def test_unet_training_refuses_a_checkpoint_made_with_other_settings(tmp_path, frozen_parts):
    tiny_unet_run(tmp_path, 2, frozen_parts)
    with pytest.raises(CheckpointError, match=r"caption_dropout: the checkpoint has 0\.1, this run asks for 0\.5"):
        tiny_unet_run(tmp_path, 4, frozen_parts, caption_dropout=0.5)


class Interrupted(Exception):
    pass


def toy_run(checkpoint, steps=6, stop_after=None, record=None, **settings):
    """A small network trained by the Trainer on a fixed regression problem. Its batches come
    from a numpy generator and its dropout from torch's global one, so both must resume exactly.
    stop_after: raise Interrupted after that step, as if the run had been killed."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.ReLU(), torch.nn.Dropout(0.2), torch.nn.Linear(16, 1))
    data = np.random.default_rng(1).standard_normal((64, 4)).astype(np.float32)
    gen = np.random.default_rng(2)

    def next_batch():
        rows = torch.from_numpy(data[gen.integers(0, len(data), 8)])
        return rows[:, :3], rows[:, 3:]

    def loss(model, batch):
        x, y = batch
        return F.mse_loss(model(x), y)

    def after_step(trainer, step):
        if step == stop_after:
            raise Interrupted

    settings = {"steps": steps, "lr": 0.05, "warmup": 2, "ema_decay": 0.9, "checkpoint_every": 2, **settings}
    trainer = Trainer(model, loss, next_batch, TrainSettings(**settings), generator=gen, checkpoint=checkpoint,
                      name="toy", record=record, progress=False, after_step=after_step)
    trainer.fit()
    return load_checkpoint(checkpoint)


def assert_same_weights(a, b):
    assert a["step"] == b["step"]
    for part in ("model", "ema"):
        weights_a = a[part] if part == "model" else a[part]["model"]
        weights_b = b[part] if part == "model" else b[part]["model"]
        for key, value in weights_a.items():
            torch.testing.assert_close(weights_b[key], value, rtol=0, atol=0, msg=f"{part}: {key}")


def test_trainer_resumes_exactly_after_an_interrupt(tmp_path):
    with pytest.raises(Interrupted):
        toy_run(tmp_path / "interrupted.pt", stop_after=4)
    assert load_checkpoint(tmp_path / "interrupted.pt")["step"] == 4
    resumed = toy_run(tmp_path / "interrupted.pt")  # the same command again: picks up at step 4
    straight = toy_run(tmp_path / "straight.pt")
    assert_same_weights(resumed, straight)
    assert resumed["step"] == 6


def test_trainer_extends_a_finished_run_with_more_steps(tmp_path):
    toy_run(tmp_path / "short.pt", steps=4, schedule="constant")
    longer = toy_run(tmp_path / "short.pt", steps=6, schedule="constant")
    straight = toy_run(tmp_path / "straight.pt", steps=6, schedule="constant")
    assert_same_weights(longer, straight)


def test_trainer_refuses_a_resume_with_a_changed_setting(tmp_path):
    toy_run(tmp_path / "ckpt.pt", steps=2, record={"batch": 8})
    with pytest.raises(CheckpointError, match=r"lr: the checkpoint has 0\.05, this run asks for 0\.1") as error:
        toy_run(tmp_path / "ckpt.pt", steps=4, lr=0.1, record={"batch": 8})
    assert str(tmp_path / "ckpt.pt") in str(error.value) and "delete" in str(error.value)
    with pytest.raises(CheckpointError, match="batch: the checkpoint has 8, this run asks for 16"):
        toy_run(tmp_path / "ckpt.pt", steps=4, record={"batch": 16})
    with pytest.raises(CheckpointError, match="ema_decay"):
        toy_run(tmp_path / "ckpt.pt", steps=4, ema_decay=None, record={"batch": 8})


def test_trainer_accepts_a_changed_setting_that_may_change(tmp_path):
    assert {"steps", "checkpoint_every"} <= set(MAY_CHANGE_ON_RESUME)
    toy_run(tmp_path / "ckpt.pt", steps=2)
    assert toy_run(tmp_path / "ckpt.pt", steps=4, checkpoint_every=1, warmup=3)["step"] == 4


def test_trainer_refuses_a_damaged_checkpoint_naming_it(tmp_path):
    path = tmp_path / "ckpt.pt"
    toy_run(path, steps=2)
    path.write_bytes(path.read_bytes()[:100])  # cut short, as by a full disk
    with pytest.raises(CheckpointError, match="damaged") as error:
        toy_run(path, steps=4)
    assert str(path) in str(error.value) and "Delete it" in str(error.value)


def test_min_snr_weights_count_noisy_steps_fully_and_clean_ones_less():
    from diffusers import DDPMScheduler

    from sdcourse.schedules import SD_SCHEDULE

    alphas_cumprod = DDPMScheduler(**SD_SCHEDULE).alphas_cumprod
    snr = alphas_cumprod / (1 - alphas_cumprod)
    weights = min_snr_weights(alphas_cumprod, 5.0)
    assert torch.all(weights[snr <= 5] == 1)  # noisy steps: weight 1
    assert torch.allclose(weights[0], 5 / snr[0]) and weights[0] < 0.01  # t = 0: almost clean, counts little
    assert torch.all(weights.diff() >= 0)  # the noisier the step, the more it counts
    v_weights = min_snr_weights(alphas_cumprod, 5.0, "v_prediction")
    assert torch.allclose(v_weights, snr.clamp(max=5) / (snr + 1))
    assert torch.all(min_snr_weights(alphas_cumprod, 0) == 1)  # gamma 0: plain squared error


def test_learning_rate_schedules():
    cosine = TrainSettings(steps=10, lr=1.0, warmup=2, final_lr_fraction=0.1)
    assert [learning_rate(cosine, s) for s in (0, 1, 2)] == [0.5, 1.0, 1.0]
    assert learning_rate(cosine, 10) == pytest.approx(0.1)
    constant = TrainSettings(steps=10, lr=1.0, schedule="constant", warmup=4)
    assert [learning_rate(constant, s) for s in (0, 3, 9, 1000)] == [0.25, 1.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="schedule='linear'"):
        TrainSettings(steps=1, lr=1.0, schedule="linear")


def test_foreground_weights_count_the_shape_and_its_outline_more():
    from sdcourse.data import shapes
    from sdcourse.training.train_vae import foreground_weights, reconstruction_loss

    scene = shapes.make_scene([{"colour": "red", "shape": "square", "size": "small", "position": "center"}], "white")
    picture = shapes.render(scene)[None]
    weights = foreground_weights(picture, 4.0)
    assert weights.shape == (1, 1, 64, 64)
    assert weights[0, 0, 0, 0] == 1 and weights[0, 0, 32, 32] == 5
    shape_pixels = (np.abs(picture[0].astype(int) - 245).sum(-1) > 30).sum()
    assert (weights == 5).sum() > shape_pixels  # the ring around the outline counts too
    x = torch.zeros(1, 3, 64, 64)
    error = torch.zeros_like(x)
    error[..., 32, 32] = 1.0  # one wrong pixel on the shape, then one on the background
    on_shape = reconstruction_loss(x + error, x, weights)[0]
    on_background = reconstruction_loss(x + error.roll(30, dims=-1), x, weights)[0]
    assert on_shape > 2 * on_background


def test_clip_batches_end_with_whole_contrast_pairs_whose_keys_find_their_captions():
    from sdcourse.training.datasets import build_contrast_set
    from sdcourse.training.train_clip import caption_sampler

    cfg = fast_config(clip_batch=12, clip_contrast_pairs=3)
    train = {"images": np.zeros((5, 64, 64, 3), np.uint8),
             "token_ids": tokenize_ids([f"a red circle {i}" for i in range(10)]).reshape(5, 2, MAX_LENGTH)}
    contrast = build_contrast_set(4, seed=0, progress=False)
    assert contrast["images"].shape == (8, 64, 64, 3) and contrast["token_ids"].shape == (8, MAX_LENGTH)
    images, ids, keys = caption_sampler(cfg, train, contrast, np.random.default_rng(0))()
    assert len(images) == len(ids) == len(keys) == 12
    all_ids = np.concatenate([train["token_ids"].reshape(10, -1), contrast["token_ids"]])
    width = ids.shape[1]
    assert (all_ids[keys][:, :width] == ids.numpy()).all()
    rows = keys[6:] - 10  # the last 6: three whole pairs (rows 2i and 2i + 1)
    assert (rows[::2] % 2 == 0).all() and (rows[1::2] == rows[::2] + 1).all()
    assert (images[6:] == contrast["images"][rows]).all()
    assert len(caption_sampler(cfg, train, None, np.random.default_rng(0))()[0]) == 12


def test_word_sensitivity_measures_how_much_each_kind_of_word_moves_the_text_encoder(frozen_parts):
    from sdcourse.training.train_clip import WORD_PAIRS, word_sensitivity

    _, text_encoder, tokenizer = frozen_parts
    result = word_sensitivity(text_encoder, tokenizer)
    assert set(result) == set(WORD_PAIRS) and all(0 < value < 300 for value in result.values())
    assert word_sensitivity(text_encoder, tokenizer) == result  # no randomness


def _listing(folder):
    """Every file and folder under `folder`, with size and modification time of files."""
    folder = Path(folder)
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) if p.is_file() else None
            for p in folder.rglob("*")}


def test_a_build_writes_only_inside_its_run_and_out_folders(tmp_path):
    """A fast build (about a minute) leaves its folder's parent, its working folder and
    the package's assets (the fixed judge, the shipped CLIP image half) as they were."""
    root = Path(sdcourse.__file__).resolve().parent.parent
    assets = root / "sdcourse" / "assets"
    parent = tmp_path / "builds"
    parent.mkdir()
    (parent / "someone_elses.txt").write_text("untouched")
    before, assets_before = _listing(parent), _listing(assets)
    env = {**os.environ, "SDCOURSE_FAST": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(root)}
    command = [sys.executable, "-m", "sdcourse.training.build_model", "--run", "run", "--out", "out", "--quiet",
               "--threads", "2"]
    # The VAE alone first (it needs no captions), then the rest: the second call resumes
    done = subprocess.run([*command, "--stop-after", "vae_decoder"], cwd=parent, env=env, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (parent / "run" / "vae_decoder" / "config.json").exists()
    assert (parent / "run" / "finished" / "vae_decoder.json").exists()  # its marker, written after its files
    assert not (parent / "run" / "clip").exists() and not (parent / "out").exists()
    done = subprocess.run(command, cwd=parent, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "VAE" not in done.stdout  # its figures print only when it trains: it was not retrained

    after = _listing(parent)
    outside = {p: v for p, v in after.items() if p.split(os.sep)[0] not in ("run", "out")}
    assert outside == before
    assert _listing(assets) == assets_before
    assert (parent / "out" / "model_index.json").exists()
    assert (parent / "run" / "tiny-clip" / "config.json").exists()
    assert (parent / "run" / CLASSIFIER_FILE).exists()
    # the U-Net's class phase trained on from the U-Net stage, in a folder of its own
    assert (parent / "run" / "class_phase" / "unet_ckpt.pt").exists()
    assert (parent / "run" / "class_phase" / "unet" / "config.json").exists()
    assert not [p for p in after if p.endswith((".partial", ".replaced", ".tmp"))]
    assert {p.name for p in (parent / "run" / "finished").iterdir()} >= {
        "vae.json", "vae_decoder.json", "clip.json", "clip_refined.json", "clip_words.json", f"{CLASSIFIER_FILE}.json",
        "shipped.json"}
    assert clip_image_folder(parent / "out", parent / "run") == parent / "run" / "tiny-clip"
    # The VAE ships as its finished stage stored it, byte for byte (float16)
    weights = "diffusion_pytorch_model.safetensors"
    assert (parent / "out" / "vae" / weights).read_bytes() == (parent / "run" / "vae_decoder" / weights).read_bytes()

    # A run folder that holds only the finished stages (as build-stages/ keeps them in git)
    # resumes after them: nothing earlier is trained again
    kept = parent / "kept"
    kept.mkdir()
    for name in ("vae_decoder", "clip_words"):
        shutil.copytree(parent / "run" / name, kept / name)
    resumed = [*command[:4], "kept", *command[5:], "--stop-after", "clip_words"]
    done = subprocess.run(resumed, cwd=parent, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "CLIP" not in done.stdout and "VAE" not in done.stdout
    assert not any((kept / name).exists() for name in ("vae", "clip", "clip_refined"))
    assert (kept / "finished" / "clip_words.json").exists()  # taken once, as every file loads: marked now


# ---- damaged files: each named, with what to do ---------------------------------------------


def test_a_damaged_cached_data_set_is_refused_naming_the_file(tmp_path):
    from sdcourse.training.datasets import build_contrast_set, build_training_set

    cache = tmp_path / "train_set.npz"
    first = build_training_set(2, 1, seed=0, two_object_prob=0.0, cache=cache, progress=False)
    assert np.array_equal(build_training_set(2, 1, 0, 0.0, cache=cache, progress=False)["images"], first["images"])
    whole = cache.read_bytes()
    cache.write_bytes(whole[: len(whole) // 2])  # truncated
    with pytest.raises(ValueError, match=r"train_set\.npz is damaged .*delete it, and the next run draws it again"):
        build_training_set(2, 1, seed=0, two_object_prob=0.0, cache=cache, progress=False)
    assert cache.read_bytes() == whole[: len(whole) // 2]  # left as it was, for the learner to look at
    np.savez(cache, images=first["images"])  # another file under the same name
    with pytest.raises(ValueError, match=r"train_set\.npz lacks \['token_ids', 'captions'\]"):
        build_contrast_set(1, seed=0, cache=cache, progress=False)


def test_continue_rule_refuses_a_negative_text_encoder_learning_rate_naming_it(tmp_path, capsys):
    from sdcourse.training import continue_rule

    with pytest.raises(SystemExit):
        continue_rule.main(["unet", "--run", str(tmp_path / "try"), "--text-encoder-lr-scale", "-0.5"])
    message = capsys.readouterr().err
    assert "--text-encoder-lr-scale must be a number >= 0" in message and "got -0.5" in message
    assert not (tmp_path / "try").exists()
    with pytest.raises(SystemExit):
        continue_rule.main(["unet", "--run", str(tmp_path / "try"), "--held-out-weight", "0"])
    message = capsys.readouterr().err
    assert "--held-out-weight must be a number above 0" in message and "got 0.0" in message
    assert not (tmp_path / "try").exists()


# ---- --set: one setting changed for one build ----------------------------------------------


def test_a_build_setting_is_read_as_its_defaults_kind():
    from sdcourse.training.config import setting_from_text

    assert setting_from_text("text_encoder_lr_scale=1") == ("text_encoder_lr_scale", 1.0)
    assert isinstance(setting_from_text("text_encoder_lr_scale=1")[1], float)
    assert setting_from_text("clip_rule_steps = 0") == ("clip_rule_steps", 0)
    assert setting_from_text("clip_concept_words=False") == ("clip_concept_words", False)
    assert setting_from_text("clip_fresh_words=shape,star") == ("clip_fresh_words", ("shape", "star"))
    assert setting_from_text("unet_channels=32,64,64") == ("unet_channels", (32, 64, 64))


@pytest.mark.parametrize("text, message", [
    ("nonsense=1", r"'nonsense' is not a build setting; the settings are: seed, "),
    ("clip_rule_steps=1.5", r"clip_rule_steps must be a whole number, got '1.5'"),
    ("clip_concept_words=yes", r"clip_concept_words must be true or false, got 'yes'"),
    ("unet_channels=32,wide", r"unet_channels must be a whole number, got 'wide'"),
    ("threads=4", r"threads has an option of its own; use --threads"),
    ("text_encoder_lr_scale", r"write NAME=VALUE"),
])
def test_a_bad_build_setting_is_refused_naming_it(text, message):
    from sdcourse.training.config import setting_from_text

    with pytest.raises(ValueError, match=message):
        setting_from_text(text)


def test_the_build_takes_set_into_its_settings_and_refuses_a_bad_one_before_any_work(tmp_path, capsys):
    from sdcourse.training import build_model

    run = tmp_path / "run"
    with pytest.raises(SystemExit) as refused:
        build_model.main(["--fast", "--run", str(run), "--set", "unet_lr=fast", "--quiet"])
    assert refused.value.code == 2
    assert "--set 'unet_lr=fast': unet_lr must be a number, got 'fast'" in capsys.readouterr().err
    assert not run.exists()

    build_model.main(["--fast", "--run", str(run), "--set", "text_encoder_lr_scale=1.0", "--set", "clip_rule_steps=0",
                      "--stop-after", "data", "--quiet", "--threads", "1"])
    recorded = (run / "config.json").read_text()
    assert '"text_encoder_lr_scale": 1.0' in recorded and '"clip_rule_steps": 0' in recorded


def test_a_lab_build_takes_the_shipped_vae_and_text_encoder_and_trains_only_a_smaller_unet(tmp_path, capsys):
    """--size lab: the shipped model's VAE and text encoder ship again as they are (the same
    numbers), no CLIP, VAE or classifier stage runs, and the U-Net is the lab recipe's."""
    from safetensors.torch import load_file

    from sdcourse.loading import EMBEDDED_MODEL
    from sdcourse.training import build_model
    from sdcourse.training.config import LAB_RECIPE

    run, out = tmp_path / "run", tmp_path / "out"
    build_model.main(["--fast", "--size", "lab", "--run", str(run), "--out", str(out), "--quiet", "--threads", "2"])
    for part, weights in (("vae", "diffusion_pytorch_model.safetensors"), ("text_encoder", "model.safetensors")):
        ours, shipped = load_file(out / part / weights), load_file(EMBEDDED_MODEL / part / weights)
        assert ours.keys() == shipped.keys()
        assert all(torch.equal(ours[k].float(), shipped[k].float()) for k in ours), part
    unet_config = json.loads((out / "unet" / "config.json").read_text())
    assert tuple(unet_config["block_out_channels"]) == LAB_RECIPE["unet_channels"]
    made = {p.name for p in run.iterdir()}
    assert not made & {"vae", "vae_decoder", "clip", "clip_words", "clip_rule", "tiny-clip", CLASSIFIER_FILE}
    assert json.loads((run / "config.json").read_text())["size"] == "lab"


def test_a_run_folder_resumed_with_another_size_is_refused_naming_both(tmp_path, capsys):
    from sdcourse.training import build_model

    run = tmp_path / "run"
    build_model.main(["--fast", "--run", str(run), "--stop-after", "data", "--quiet", "--threads", "1"])
    with pytest.raises(SystemExit) as refused:
        build_model.main(["--fast", "--size", "lab", "--run", str(run), "--quiet"])
    assert refused.value.code == 2
    assert f"--size lab: the run folder {run} holds a --size full build" in capsys.readouterr().err
