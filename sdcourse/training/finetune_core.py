"""The fine-tuning core: one loop for every way of fine-tuning a Stable Diffusion pipeline.

Each way of fine-tuning is a small "what trains" object (a `WhatTrains`; the LoRA trainer's are
in methods.py). It says only what is particular to it:

    attach(pipe)            makes its part of the pipeline trainable (adding an adapter, a token
                            or a new network if it needs one); returns the parameters to train
    module                  the torch module the loop trains, checkpoints and moves
    encodes_text            False: each step's text input is the frozen text encoder's embeddings,
                            computed once; True: the captions' token ids, which `predict`
                            encodes at every step (part of the text encoder trains)
    predict(module, batch)  the U-Net's prediction for a batch (a dict: "noisy", "timesteps",
                            "text", and any extra input each picture carries)
    save(out), saved_file(out)  writes what trained, in the format its loader reads

`fine_tune` does the rest, the same way for each: the pictures and captions encoded once
(`encode_examples`), each step's batch drawn (`Batches`: new pictures and, with a prior share,
pictures the model already knows; caption dropout; noise at a random timestep), the squared-error
loss (min-SNR weighted), and the course's training loop (trainer.py) with its checkpoints.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..arguments import choice, probability, random_seed, real_number, whole_number
from ..dreambooth import prior_preservation_loss
from ..files import save_into
from ..images import images_to_tensor
from .common import min_snr_weights
from .trainer import MAY_CHANGE_ON_RESUME, PRECISIONS, Trainer, TrainSettings


@dataclass
class FineTuneSettings:
    """What every way of fine-tuning shares: the length of the run, its batches and their recipe.
    The defaults teach the embedded model "star" on a laptop CPU. A method's own settings extend it."""

    steps: int = 600
    batch: int = 16
    lr: float = 1e-3  # the tiny model's; 1e-4 is usual for SD 1.x
    # The share of each batch drawn from pictures the model already knows, with their captions
    # (DreamBooth's "prior preservation"), so that learning the new word does not overwrite the
    # old ones. 0 trains on the new pictures alone.
    prior_share: float = 0.0
    # None: one mean over the whole batch. A number: DreamBooth's loss, the new pictures' mean
    # plus this weight times the prior pictures' mean (sdcourse.dreambooth.prior_preservation_loss).
    prior_loss_weight: float | None = None
    # Each timestep's loss weighted by min(SNR, gamma) / SNR, as the embedded model was trained
    # (train_unet.py; 5 there): the noisy timesteps, where a picture's shape is decided, count fully.
    # 0: plain squared error, as diffusers' LoRA scripts default to.
    min_snr_gamma: float = 0.0
    # The share of captions replaced by the empty prompt (0.1 in the embedded model's training), so
    # that the model also learns the unconditional prediction that guidance subtracts.
    caption_dropout: float = 0.0
    seed: int = 0
    checkpoint_every: int = 50
    mixed_precision: str = "no"

    def __post_init__(self):
        self.steps = whole_number("steps", self.steps, minimum=1)
        self.batch = whole_number("batch", self.batch, minimum=1)
        self.lr = real_number("lr", self.lr, 0, low_open=True)
        self.prior_share = probability("prior_share", self.prior_share, below_one=True,
                                       meaning="0: the new pictures alone")
        if self.prior_loss_weight is not None:
            self.prior_loss_weight = real_number("prior_loss_weight", self.prior_loss_weight, 0,
                                                 meaning="None: one mean over the batch")
            if not self.prior_share:
                raise ValueError(f"prior_loss_weight={self.prior_loss_weight} weighs the prior pictures, but "
                                 "prior_share=0 draws none; give a prior_share, or prior_loss_weight=None")
        self.min_snr_gamma = real_number("min_snr_gamma", self.min_snr_gamma, 0, meaning="0: plain squared error")
        self.caption_dropout = probability("caption_dropout", self.caption_dropout, below_one=True)
        self.seed = random_seed("seed", self.seed)
        self.checkpoint_every = whole_number("checkpoint_every", self.checkpoint_every, minimum=0)
        self.mixed_precision = choice("mixed_precision", self.mixed_precision, PRECISIONS)


class WhatTrains(ABC):
    """One way of fine-tuning: what trains, how a training step calls it, and how it is saved."""

    name = "fine-tuning"  # shown on the progress bar and in checkpoint messages
    encodes_text = False  # True: each step's text input is token ids, encoded by `predict`

    @abstractmethod
    def attach(self, pipe) -> list:
        """Make this method's part of `pipe` trainable; return the parameters to train (or groups
        of them, {"params": [...], "lr_scale": x}, for parts that learn at x times the rate)."""

    @property
    @abstractmethod
    def module(self) -> torch.nn.Module:
        """The module the loop trains, checkpoints and moves between devices (after `attach`)."""

    def predict(self, module, batch: dict) -> torch.Tensor:
        """The U-Net's prediction for the batch. By default `module` is the U-Net and the batch's
        text is the captions' embeddings."""
        return unet_prediction(module, batch, batch["text"])

    @abstractmethod
    def save(self, out: Path):
        """Write what trained into the folder `out`."""

    @abstractmethod
    def saved_file(self, out: Path) -> Path:
        """The file `save` writes (what a pipeline loads)."""


def unet_prediction(unet, batch: dict, text_embeddings: torch.Tensor) -> torch.Tensor:
    """The U-Net's output for the batch's noisy latents and timesteps, given the captions' embeddings."""
    return unet(batch["noisy"].to(unet.dtype), batch["timesteps"],
                encoder_hidden_states=text_embeddings.to(unet.dtype)).sample


# ----------------------------------------------------------------------------- data


@dataclass
class Examples:
    """Pictures and their captions, encoded once: the VAE is frozen, so every step would compute
    the same latents (and so would the text encoder, unless it trains)."""

    mean: torch.Tensor  # each picture's latent distribution: mean and standard deviation
    std: torch.Tensor
    token_ids: torch.Tensor  # each caption's token ids ...
    embeddings: torch.Tensor  # ... and the frozen text encoder's embeddings of them
    # Inputs a method needs beside each picture (a ControlNet's control picture), one row per
    # picture: a batch carries the rows of the pictures it drew, under the same names.
    extras: dict = field(default_factory=dict)

    def __len__(self):
        return len(self.mean)

    def rows(self, index: torch.Tensor, text_as_ids: bool) -> dict:
        """The examples at `index`: latent mean and std, text input (ids or embeddings), extras."""
        text = self.token_ids if text_as_ids else self.embeddings
        return {"mean": self.mean[index], "std": self.std[index], "text": text[index],
                **{name: values[index] for name, values in self.extras.items()}}


@torch.no_grad()
def encode_captions(pipe, captions: list[str]):
    """Token ids and the frozen text encoder's embeddings of `captions`, on the CPU."""
    ids = pipe.tokenizer(captions, padding="max_length", truncation=True, max_length=pipe.tokenizer.model_max_length,
                         return_tensors="pt").input_ids
    return ids, pipe.text_encoder(ids.to(pipe.unet.device))[0].to(pipe.unet.dtype).cpu()


@torch.no_grad()
def encode_examples(pipe, images: np.ndarray, captions: list[str], extras: dict | None = None,
                    batch: int = 16) -> Examples:
    """Encode uint8 pictures (N, H, W, 3) and their captions (one each) once, `batch` at a time."""
    means, stds, token_ids, texts = [], [], [], []
    for start in range(0, len(images), batch):
        x = images_to_tensor(images[start : start + batch]).to(pipe.vae.device, pipe.vae.dtype)
        dist = pipe.vae.encode(x).latent_dist
        means.append(dist.mean.float().cpu())
        stds.append(dist.std.float().cpu())
        ids, text = encode_captions(pipe, captions[start : start + batch])
        token_ids.append(ids)
        texts.append(text)
    return Examples(torch.cat(means), torch.cat(stds), torch.cat(token_ids), torch.cat(texts), dict(extras or {}))


def data_fingerprint(images: np.ndarray, captions: list[str], prior: tuple | None = None) -> str:
    """SHA-256 over the pictures' pixels and their captions (and the prior's): a resumed run
    checks that it trains on the same data, not only on a folder of the same name."""
    digest = hashlib.sha256()
    for pictures, texts in [(images, captions), *([prior] if prior is not None else [])]:
        digest.update(np.ascontiguousarray(pictures).tobytes())
        digest.update("\0".join(map(str, texts)).encode())
    return digest.hexdigest()


def prior_count(settings: FineTuneSettings, prior) -> int:
    """How many pictures of each batch come from the prior; refuses a share that leaves no room
    for the new pictures, or one with no prior pictures to draw from."""
    n_prior = round(settings.batch * settings.prior_share)
    if n_prior >= settings.batch:
        raise ValueError(f"prior_share={settings.prior_share} with batch={settings.batch} leaves no room for the new "
                         "pictures in a batch; use a smaller prior_share or a larger batch")
    if n_prior and prior is None:
        raise ValueError(f"prior_share={settings.prior_share} needs prior=(images, captions) to draw from "
                         "(sdcourse.training.finetune_data.prior_pictures)")
    return n_prior


class Batches:
    """Draws each step's batch from `examples` (and, `n_prior` of each batch, from `prior`).

    A batch is a dict: "noisy" latents at random "timesteps", the "text" input of each picture's
    caption (ids or embeddings, as `text_as_ids` says; the empty prompt's for caption dropout),
    the "target" the U-Net must predict (the noise, or v), each picture's loss "weight" (min-SNR),
    and the examples' extras. Every draw comes from `self.generator`, which checkpoints keep.
    """

    def __init__(self, pipe, examples: Examples, settings: FineTuneSettings, text_as_ids: bool,
                 prior: Examples | None = None, n_prior: int = 0):
        from diffusers import DDPMScheduler

        if n_prior and set(prior.extras) != set(examples.extras):
            raise ValueError(f"the prior pictures carry {sorted(prior.extras)} but the new ones "
                             f"{sorted(examples.extras)}")
        self.examples, self.prior, self.n_prior, self.text_as_ids = examples, prior, n_prior, text_as_ids
        self.size, self.caption_dropout = settings.batch, settings.caption_dropout
        empty_ids, empty_embeddings = encode_captions(pipe, [""])
        self.empty_text = empty_ids if text_as_ids else empty_embeddings
        self.noise_schedule = DDPMScheduler.from_config(pipe.scheduler.config)
        self.prediction = self.noise_schedule.config.prediction_type
        self.snr_weight = min_snr_weights(self.noise_schedule.alphas_cumprod, settings.min_snr_gamma, self.prediction)
        self.scaling = pipe.vae.config.scaling_factor
        self.generator = torch.Generator().manual_seed(settings.seed)

    def __call__(self) -> dict:
        gen = self.generator
        index = torch.randint(0, len(self.examples), (self.size - self.n_prior,), generator=gen)
        rows = self.examples.rows(index, self.text_as_ids)
        if self.n_prior:  # the rest of the batch: pictures the model already knows
            old = self.prior.rows(torch.randint(0, len(self.prior), (self.n_prior,), generator=gen), self.text_as_ids)
            rows = {name: torch.cat([rows[name], old[name]]) for name in rows}
        prior = (torch.arange(self.size) >= self.size - self.n_prior)
        mean, std, text = rows.pop("mean"), rows.pop("std"), rows.pop("text")
        if self.caption_dropout:
            drop = torch.rand(self.size, generator=gen) < self.caption_dropout
            text = torch.where(drop.view(-1, *[1] * (text.dim() - 1)), self.empty_text, text)
        z0 = (mean + std * torch.randn(mean.shape, generator=gen)) * self.scaling
        noise = torch.randn(z0.shape, generator=gen)
        t = torch.randint(0, self.noise_schedule.config.num_train_timesteps, (self.size,), generator=gen)
        target = noise if self.prediction == "epsilon" else self.noise_schedule.get_velocity(z0, noise, t)
        return {"noisy": self.noise_schedule.add_noise(z0, noise, t), "timesteps": t, "text": text,
                "target": target, "weight": self.snr_weight[t], "prior": prior, **rows}


# ----------------------------------------------------------------------------- the loop


def fine_tune(pipe, what: WhatTrains, images: np.ndarray, captions: list[str], settings: FineTuneSettings, out,
              checkpoint: str, *, prior: tuple | None = None, extras: dict | None = None, record: dict | None = None,
              progress: bool = True, after_step=None) -> Path:
    """Train `what` on `pipe`, in place, with the pictures and their captions; write it into `out`.

    images: uint8 (N, H, W, 3) at the model's resolution; captions: one per picture.
    checkpoint: the checkpoint's file name in `out`.
    prior: (images, captions) the model already knows; settings.prior_share of every batch is drawn
        from them. Needed when settings.prior_share > 0.
    extras: per-picture inputs the method's `predict` reads from the batch, by name.
    record: what describes the data and the model; with the settings and the data's fingerprint
        (`data_fingerprint`), it is what a resumed run must share.
    after_step(trainer, step): called after each step (e.g. to draw pictures as it learns).
    Returns the file `what` saved.
    """
    if len(images) != len(captions):
        raise ValueError(f"{len(images)} pictures but {len(captions)} captions; give one caption per picture")
    n_prior = prior_count(settings, prior)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    params = what.attach(pipe)  # first: a bad target or rank stops the run at once
    examples = encode_examples(pipe, images, captions, extras)  # an adapter starts at zero: it changes nothing yet
    prior_examples = encode_examples(pipe, *prior) if n_prior else None
    batches = Batches(pipe, examples, settings, what.encodes_text, prior_examples, n_prior)

    def loss(module, batch):
        error = what.predict(module, batch).float() - batch["target"]
        per_picture = error.pow(2).mean((1, 2, 3)) * batch["weight"].to(error.device)
        if settings.prior_loss_weight is None:
            return per_picture.mean()
        return prior_preservation_loss(per_picture, batch["prior"], settings.prior_loss_weight)

    train = TrainSettings(steps=settings.steps, lr=settings.lr, schedule="constant", warmup=min(20, settings.steps),
                          weight_decay=0.0, clip_grad_norm=1.0, checkpoint_every=settings.checkpoint_every,
                          mixed_precision=settings.mixed_precision)
    identity = {name: value for name, value in {**asdict(settings), **(record or {})}.items()
                if name not in MAY_CHANGE_ON_RESUME}
    identity["data_sha256"] = data_fingerprint(images, captions, prior)
    trainer = Trainer(what.module, loss, batches, train, params=params, generator=batches.generator,
                      checkpoint=out / checkpoint, name=what.name, record=identity, progress=progress,
                      save_trained_only=True, after_step=after_step)
    trainer.fit()
    what.module.to(pipe.vae.device)  # the trainer hands the module back on the CPU; the pipeline may live on a GPU
    if trainer.accelerator.is_main_process:
        save_into(out, what.save)
    return what.saved_file(out)
