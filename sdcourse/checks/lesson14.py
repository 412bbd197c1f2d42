"""Checks for lesson 14, the capstone: the pieces of the build the learner writes (the U-Net's
training loss with caption dropout and min-SNR weights, the EMA update, and the training set
encoded to latents), each in the form `sdcourse.training.pieces` says the build takes."""

from __future__ import annotations

import copy

import numpy as np
import torch

from ..images import images_to_tensor
from ..schedules import SD_SCHEDULE
from ..training.common import ema_update as course_ema_update
from .core import Case, exercise_check
from .lesson04 import TINY_UNET

__all__ = ["check_training_loss", "check_ema_update", "check_encode_latents"]

SOLUTION_NOTEBOOK = "solutions/14_capstone.ipynb"


# ---- exercise 1: the U-Net's training loss, with caption dropout and min-SNR weights --------------


def training_loss_reference(unet, batch, empty_context, scheduler, caption_dropout, min_snr_gamma):
    """The build's own (`sdcourse.training.train_unet.training_loss`), imported when first used."""
    from ..training.train_unet import training_loss

    return training_loss(unet, batch, empty_context, scheduler, caption_dropout, min_snr_gamma)


def _loss(unet, batch, empty_context, scheduler, caption_dropout, min_snr_gamma, *, drop="below", stand_in="empty",
          weight="min over snr", gamma_zero="plain", reduce="each example", as_number=False):
    """The training loss written out, with the ways of getting it wrong that the check names."""
    draws = batch["dropout_draws"]
    dropped = {"below": draws < caption_dropout, "at or above": draws >= caption_dropout,
               "none": torch.zeros_like(draws, dtype=torch.bool)}[drop]
    empty = empty_context if stand_in == "empty" else torch.zeros_like(empty_context)
    context = torch.where(dropped[:, None, None], empty, batch["context"])
    t, noise = batch["timesteps"], batch["noise"]
    noisy = scheduler.add_noise(batch["latents"], noise, t)
    prediction = unet(noisy, t, encoder_hidden_states=context).sample
    alpha_bar = scheduler.alphas_cumprod[t]
    snr = alpha_bar / (1 - alpha_bar)
    if min_snr_gamma == 0 and gamma_zero == "plain":
        w = torch.ones_like(snr)
    else:
        w = {"min over snr": snr.clamp(max=min_snr_gamma) / snr,
             "inverted": snr / snr.clamp(max=min_snr_gamma),
             "max over snr": snr.clamp(min=min_snr_gamma) / snr,
             "over snr plus one": snr.clamp(max=min_snr_gamma) / (snr + 1)}[weight]
    per_example = (prediction - noise).pow(2).mean((1, 2, 3))
    loss = (per_example * w).mean() if reduce == "each example" else per_example.mean() * w.mean()
    return loss.item() if as_number else loss


def _loss_variant(**how):
    return lambda unet, batch, empty, scheduler, p, gamma: _loss(unet, batch, empty, scheduler, p, gamma, **how)


def _report_loss(fn):
    """Run fn on a fresh copy of the case's U-Net and report its loss, and whether it is a 0-d
    tensor that carries gradients (what the build's trainer calls backward on)."""
    def report(unet, batch, empty_context, caption_dropout, min_snr_gamma):
        from diffusers import DDPMScheduler

        loss = fn(unet, batch, empty_context, DDPMScheduler(**SD_SCHEDULE), caption_dropout, min_snr_gamma)
        is_tensor = isinstance(loss, torch.Tensor)
        value = float(loss.detach()) if is_tensor and loss.numel() == 1 else loss
        return {"loss": value, "a 0-d tensor that carries gradients": bool(is_tensor and loss.ndim == 0
                                                                           and loss.requires_grad)}
    return report


def _loss_cases():
    from diffusers import UNet2DConditionModel

    with torch.random.fork_rng(devices=[]):  # leave the learner's random state alone
        torch.manual_seed(14)
        unet = UNet2DConditionModel(**TINY_UNET)
        with torch.no_grad():
            for p in unet.parameters():  # off their defaults, so that the captions change the prediction
                p.add_(0.3 * torch.randn_like(p))
    g = torch.Generator().manual_seed(14)
    batch = {"latents": torch.randn(6, 4, 8, 8, generator=g), "noise": torch.randn(6, 4, 8, 8, generator=g),
             "timesteps": torch.tensor([0, 40, 180, 420, 700, 999]), "context": torch.randn(6, 5, 8, generator=g),
             "dropout_draws": torch.tensor([0.05, 0.93, 0.27, 0.61, 0.35, 0.12])}
    empty = torch.randn(1, 5, 8, generator=g)
    return [Case("6 latents, dropout 0.3 (3 draws below it), gamma 5", (unet, batch, empty, 0.3, 5.0)),
            Case("6 latents, dropout 0.1, gamma 1", (unet, batch, empty, 0.1, 1.0)),
            Case("6 latents, dropout 0.5, gamma 0 (plain squared error)", (unet, batch, empty, 0.5, 0.0))]


check_training_loss = exercise_check(
    "training_loss",
    training_loss_reference,
    _loss_cases,
    mistakes={
        "the captions kept were dropped and the dropped kept: caption i is dropped when its draw is below "
        "caption_dropout, so that that share of them go": _loss_variant(drop="at or above"),
        "no caption was dropped: replace the encodings of the captions whose draw is below caption_dropout by "
        "empty_context": _loss_variant(drop="none"),
        "the dropped captions became zeros; they become the empty caption's encoding, empty_context, which is what "
        "the U-Net reads for an empty prompt when it samples with guidance": _loss_variant(stand_in="zeros"),
        "the weight is inverted: min(SNR, gamma) / SNR, at most 1, not SNR / min(SNR, gamma)": _loss_variant(
            weight="inverted"),
        "max where min belongs: the weight caps the SNR at gamma, min(SNR, gamma) / SNR": _loss_variant(
            weight="max over snr"),
        "the weight for v-prediction, min(SNR, gamma) / (SNR + 1); this U-Net predicts the noise, so divide by the "
        "SNR alone": _loss_variant(weight="over snr plus one"),
        "gamma 0 made every weight 0 and the loss 0: gamma 0 means SD's plain squared error, a weight of 1 for "
        "every example": _loss_variant(gamma_zero="as any gamma"),
        "the mean weight times the mean error: weight each example's mean squared error by its own weight, then "
        "average": _loss_variant(reduce="batch"),
        "the loss was returned as a Python number: the trainer calls backward on it, so return the tensor, "
        "without .item()": _loss_variant(as_number=True),
    },
    hints=[
        "Three steps: choose each example's context (its caption's, or the empty caption's if it is dropped), "
        "predict the noise from the noisy latents, and weight each example's squared error by its timestep's weight.",
        "dropped = batch['dropout_draws'] < caption_dropout; torch.where(dropped[:, None, None], empty_context, "
        "batch['context']) is the context. scheduler.add_noise(latents, noise, timesteps) gives the noisy latents.",
        "The weight is min(SNR, gamma) / SNR: alpha_bar = scheduler.alphas_cumprod[timesteps]; snr = alpha_bar / "
        "(1 - alpha_bar); weight = snr.clamp(max=gamma) / snr, or ones when gamma is 0. Then "
        "loss = ((prediction - noise).pow(2).mean((1, 2, 3)) * weight).mean(), returned as the tensor.",
    ],
    solution=SOLUTION_NOTEBOOK,
    prepare=_report_loss,
)


# ---- exercise 2: the EMA update -------------------------------------------------------------------


def _ema(ema_model, model, decay, step, *, swapped=False, ramp="min", direction="ema", buffers=True,
         in_place=True):
    """The EMA update written out, with the ways of getting it wrong that the check names."""
    ramped = (1 + step) / (10 + step)
    d = {"min": min(decay, ramped), "none": decay, "max": max(decay, ramped)}[ramp]
    keep = 1 - d if swapped else d
    target = ema_model if in_place else copy.deepcopy(ema_model)
    with torch.no_grad():
        for ema_p, p in zip(target.parameters(), model.parameters()):
            if direction == "ema":
                ema_p.copy_(keep * ema_p + (1 - keep) * p)
            else:
                p.copy_(keep * ema_p + (1 - keep) * p)
        if buffers:
            for ema_b, b in zip(target.buffers(), model.buffers()):
                ema_b.copy_(b)
    return None if in_place else target


def _ema_variant(**how):
    return lambda ema_model, model, decay, step: _ema(ema_model, model, decay, step, **how)


def _report_ema(fn):
    """Train a small model (a linear layer and a batch norm) for a few steps, calling fn after each
    as the trainer does, and report the EMA model's weights and buffers and the model's weights."""
    def report(decay, steps, seed):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
            ema_model = copy.deepcopy(model).requires_grad_(False)
            for step in steps:
                with torch.no_grad():  # a training step's change to the weights, and to the norm's statistics
                    for p in model.parameters():
                        p.add_(0.5 * torch.randn_like(p))
                    model(torch.randn(8, 3))
                fn(ema_model, model, decay, step)
        return {"EMA weights": {k: v.detach().clone() for k, v in ema_model.named_parameters()},
                "EMA buffers": {k: v.clone() for k, v in ema_model.named_buffers()},
                "model weights": {k: v.detach().clone() for k, v in model.named_parameters()}}
    return report


def _ema_cases():
    return [Case("decay 0.9, updates 200 to 202 (the decay decides)", (0.9, [200, 201, 202], 0)),
            Case("decay 0.999, the first three updates (the warm-up decides)", (0.999, [1, 2, 3], 1)),
            Case("decay 0.5, updates 1 to 4", (0.5, [1, 2, 3, 4], 2))]


check_ema_update = exercise_check(
    "ema_update",
    course_ema_update,
    _ema_cases,
    mistakes={
        "the decay is swapped: the EMA keeps decay of itself and takes 1 - decay of the model, "
        "ema = decay * ema + (1 - decay) * w": _ema_variant(swapped=True),
        "the warm-up was left out: early on the decay is (1 + step) / (10 + step), min(decay, (1 + step) / "
        "(10 + step)), so that the average soon forgets the random first weights": _ema_variant(ramp="none"),
        "max where min belongs: the warm-up only ever lowers the decay, min(decay, (1 + step) / (10 + step))":
            _ema_variant(ramp="max"),
        "the model was moved toward the EMA: change ema_model's weights and leave the model's as they are":
            _ema_variant(direction="model"),
        "the buffers were left behind: copy the model's buffers (a norm's running statistics) into ema_model":
            _ema_variant(buffers=False),
        "ema_model was left as it was and a new model returned: change ema_model's weights in place, since the "
        "trainer keeps the model it passed": _ema_variant(in_place=False),
    },
    hints=[
        "First the decay for this step: the smaller of decay and (1 + step) / (10 + step). Then every weight of "
        "ema_model moves a little toward the model's, and the buffers are copied.",
        "Work under torch.no_grad() and write into ema_model's own tensors: go through ema_model.parameters() and "
        "model.parameters() in pairs, then ema_model.buffers() and model.buffers().",
        "d = min(decay, (1 + step) / (10 + step)); each pair of parameters: ema = d * ema + (1 - d) * w "
        "(ema_p.lerp_(p, 1 - d) does it in one call); each pair of buffers: ema_b.copy_(b). Return nothing.",
    ],
    solution=SOLUTION_NOTEBOOK,
    prepare=_report_ema,
)


# ---- exercise 3: the training set, encoded to latents once -----------------------------------------


def _encode(vae, images, batch_size, *, pick="mean", scale="times", last="kept", pixels="minus one to one",
            batched=True, no_grad=True):
    """The stage written out, with the ways of getting it wrong that the check names."""
    stop = len(images) if last == "kept" else len(images) - len(images) % batch_size
    step = batch_size if batched else len(images)
    factor = vae.config.scaling_factor
    parts = []
    with torch.set_grad_enabled(not no_grad):
        for start in range(0, stop, step):
            pictures = images_to_tensor(images[start : start + step])
            if pixels == "zero to one":
                pictures = (pictures + 1) / 2
            dist = vae.encode(pictures).latent_dist
            z = dist.mean if pick == "mean" else dist.sample()
            parts.append({"times": z * factor, "divided": z / factor, "not": z}[scale])
    return torch.cat(parts)


def encode_latents_reference(vae, images, batch_size):
    return _encode(vae, images, batch_size)


def _encode_variant(**how):
    return lambda vae, images, batch_size: _encode(vae, images, batch_size, **how)


def _report_encoding(fn):
    """Run fn with the VAE watched, and report its latents, whether they carry gradients, and how
    many pictures each call of vae.encode was given. Random draws come from a fixed seed."""
    def report(vae, images, batch_size):
        sizes = []
        encode = vae.encode

        def watched(pictures, *args, **kwargs):
            sizes.append(len(pictures))
            return encode(pictures, *args, **kwargs)

        vae.encode = watched
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            latents = fn(vae, images, batch_size)
        carries = isinstance(latents, torch.Tensor) and latents.requires_grad
        return {"latents": latents.detach() if carries else latents, "carries gradients": carries,
                "pictures per call of vae.encode": sizes}
    return report


def _tiny_vae(scaling_factor, seed):
    """A diffusers AutoencoderKL of the build's design, f = 8 with 4 latent channels, a few channels wide."""
    from diffusers import AutoencoderKL

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                             up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(4, 4, 8, 8),
                             layers_per_block=1, latent_channels=4, norm_num_groups=2, sample_size=64,
                             scaling_factor=scaling_factor).eval()


def _encoding_cases():
    rng = np.random.default_rng(14)
    pictures = rng.integers(0, 256, (10, 64, 64, 3), dtype=np.uint8)
    return [Case("10 pictures in batches of 4 (the last batch holds 2)", (_tiny_vae(0.72, 0), pictures, 4)),
            Case("6 pictures in batches of 3, scaling factor 0.18215 (SD 1.x's)",
                 (_tiny_vae(0.18215, 1), pictures[:6], 3))]


check_encode_latents = exercise_check(
    "encode_latents",
    encode_latents_reference,
    _encoding_cases,
    mistakes={
        "the latents were not scaled: multiply the mean by vae.config.scaling_factor, so that the U-Net's latents "
        "have a spread of about 1": _encode_variant(scale="not"),
        "the latents were divided by the scaling factor; encoding multiplies by it (decoding divides)":
            _encode_variant(scale="divided"),
        "the latents were sampled from the distribution; the stage keeps its mean, latent_dist.mean":
            _encode_variant(pick="sample"),
        "the last, partial batch was dropped: a range up to the number of pictures, in steps of batch_size, "
        "keeps it": _encode_variant(last="dropped"),
        "every picture went to the VAE at once: encode batch_size pictures at a time, so that a set of 30,000 "
        "fits in memory": _encode_variant(batched=False),
        "the pictures went in as 0 to 1; the VAE reads -1 to 1, as images_to_tensor gives them":
            _encode_variant(pixels="zero to one"),
        "the latents carry gradients: encode under torch.no_grad(), or their records would fill the memory "
        "long before 30,000 pictures": _encode_variant(no_grad=False),
    },
    hints=[
        "Go through the pictures batch_size at a time (the last batch may be smaller); turn each batch into the "
        "VAE's input, encode it, and keep the mean of its latent distribution, scaled.",
        "images_to_tensor(images[start : start + batch_size]) for start in range(0, len(images), batch_size) is "
        "the VAE's input, (B, 3, H, W) in -1 to 1.",
        "Under torch.no_grad(): vae.encode(pictures).latent_dist.mean * vae.config.scaling_factor for each "
        "batch, then torch.cat of them all.",
    ],
    solution=SOLUTION_NOTEBOOK,
    prepare=_report_encoding,
)
