"""The build's first network: the VAE (diffusers AutoencoderKL), f=8 with 4 latent channels.

64x64x3 pictures become 8x8x4 latents: the same 48x compression as Stable Diffusion's
512x512x3 -> 64x64x4. Like SD's autoencoder it is generic: it trains on the whole shapes
world (every shape, the star the U-Net never learns included, any size, place and colour)
and on photo crops, never on captions. The shapes' pixels can count more in the loss
(`vae_foreground_weight`), so that small shapes keep their outlines. The loss is SD's recipe without the parts that need big pretrained
networks: reconstruction (squared + absolute error, plus an edge term that keeps shape
outlines sharp) and a very small KL term that keeps the latent space smooth.

After training, `scaling_factor` is chosen as SD chose 0.18215: 1 / (standard deviation
of the latents over training pictures), so scaled latents have unit variance.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..data import shapes
from ..images import images_to_tensor, to_uint8
from .common import save_grid
from .config import VAE_MODEL_SETTINGS
from .trainer import Trainer, TrainSettings


def make_vae(cfg):
    """A fresh AutoencoderKL: 4 levels (3 downsamplings, f=8), few channels at full resolution."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=tuple(cfg.vae_channels), layers_per_block=1,
        norm_num_groups=cfg.vae_groups, sample_size=64,
    )


def edge_loss(x, y):
    """Squared error of horizontal and vertical differences: penalises blurred outlines."""
    dx = lambda t: t[..., :, 1:] - t[..., :, :-1]
    dy = lambda t: t[..., 1:, :] - t[..., :-1, :]
    return F.mse_loss(dx(x), dx(y)) + F.mse_loss(dy(x), dy(y))


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of pictures in [-1, 1] (computed on the [0, 1] scale)."""
    mse = ((x.clamp(-1, 1) - y) / 2).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(1.0 / mse.clamp_min(1e-10))


@torch.no_grad()
def reconstruct(vae, images_uint8: np.ndarray, batch: int = 64) -> torch.Tensor:
    """Encode (posterior mean) and decode; returns the reconstructions in [-1, 1], on the CPU."""
    out = []
    for start in range(0, len(images_uint8), batch):
        x = images_to_tensor(images_uint8[start : start + batch]).to(vae.device)
        out.append(vae.decode(vae.encode(x).latent_dist.mode()).sample.cpu())
    return torch.cat(out)


@torch.no_grad()
def mean_psnr(vae, images_uint8: np.ndarray) -> float:
    return psnr(reconstruct(vae, images_uint8), images_to_tensor(images_uint8)).mean().item()


@torch.no_grad()
def latent_scaling_factor(vae, images_uint8: np.ndarray, batch: int = 128) -> float:
    """1 / std of latents sampled from the posterior (SD's way of choosing 0.18215)."""
    samples = []
    for start in range(0, len(images_uint8), batch):
        x = images_to_tensor(images_uint8[start : start + batch])
        samples.append(vae.encode(x).latent_dist.sample())
    return float(1.0 / torch.cat(samples).std())


def reconstruction_loss(recon, x, weights=None):
    """Squared error + a little absolute error + the edge term; returns (loss, plain mse).

    weights (batch, 1, H, W), optional: how much each pixel's error counts (see
    `foreground_weights`); the weighted errors are divided by the mean weight.
    """
    mse = F.mse_loss(recon, x)
    if weights is None:
        return mse + 0.1 * F.l1_loss(recon, x) + 0.5 * edge_loss(recon, x), mse
    scale = weights.mean()
    weighted_mse = (weights * (recon - x).pow(2)).mean() / scale
    weighted_l1 = (weights * (recon - x).abs()).mean() / scale
    return weighted_mse + 0.1 * weighted_l1 + 0.5 * edge_loss(recon, x), mse


def foreground_weights(images_uint8: np.ndarray, weight: float) -> torch.Tensor:
    """Per-pixel weights (N, 1, H, W): 1 on the background, 1 + weight on the shapes and on
    the one-pixel ring around them.

    A small shape covers 1% of a picture, so a plain squared error barely notices when its
    outline comes back round. Counting its pixels more makes the VAE keep it. The background
    is the median colour of a picture's border.
    """
    pixels = images_uint8.astype(np.int16)
    border = np.concatenate([pixels[:, 0], pixels[:, -1], pixels[:, :, 0], pixels[:, :, -1]], axis=1)
    background = np.median(border, axis=1)  # (N, 3)
    foreground = np.abs(pixels - background[:, None, None]).sum(-1) > 30  # (N, H, W)
    foreground = F.max_pool2d(torch.from_numpy(foreground).float()[:, None], 3, stride=1, padding=1)
    return 1 + weight * foreground


def psnr_shown(mse) -> dict:
    """The batch's PSNR for the progress bar (pictures in [-1, 1], so the peak-to-peak range is 2)."""
    return {"psnr": 10 * math.log10(4 / max(mse.item(), 1e-10))}


def fresh_pictures(n: int, generator) -> np.ndarray:
    """`n` new pictures (uint8) of the whole shapes world, `shapes.sample_any_scene`: every
    shape (the star too), any size, place and colour. The VAE never sees the same one twice."""
    return np.stack([shapes.render(shapes.sample_any_scene(generator)) for _ in range(n)])


def picture_sampler(cfg, photo_images: np.ndarray, generator):
    """next_batch for both VAE phases: fresh shape pictures (`fresh_pictures`) plus a share of
    photo crops, in [-1, 1], and with `cfg.vae_foreground_weight` the per-pixel weights of the
    loss (photos: all 1)."""
    n_photo = int(round(cfg.vae_batch * cfg.vae_photo_fraction))
    n_shape = cfg.vae_batch - n_photo

    def next_batch():
        pictures = fresh_pictures(n_shape, generator)
        photos = photo_images[generator.integers(0, len(photo_images), n_photo)]
        x = images_to_tensor(np.concatenate([pictures, photos]))
        if not cfg.vae_foreground_weight:
            return x
        weights = torch.cat([foreground_weights(pictures, cfg.vae_foreground_weight),
                             torch.ones(n_photo, 1, *x.shape[2:])])
        return x, weights

    return next_batch


def split_batch(batch):
    """(pictures, weights or None), whichever form `picture_sampler` gave."""
    return batch if isinstance(batch, (tuple, list)) else (batch, None)


VAE_SETTINGS = ("seed", *VAE_MODEL_SETTINGS, "n_photo_crops", "vae_batch", "vae_photo_fraction",
                     "vae_foreground_weight")


def train_vae(cfg, photo_images: np.ndarray, run_dir: Path, progress: bool = True):
    """Train the VAE on fresh pictures of the whole shapes world and photo crops; resumes
    from run_dir/vae_ckpt.pt."""
    run_dir = Path(run_dir)
    gen = np.random.default_rng([cfg.seed, 22, 0])
    preview = np.concatenate([fresh_pictures(6, np.random.default_rng([cfg.seed, 22, 1])), photo_images[:2]])

    def loss(vae, batch):
        x, weights = split_batch(batch)
        posterior = vae.encode(x).latent_dist
        loss, mse = reconstruction_loss(vae.decode(posterior.sample()).sample, x, weights)
        return loss + cfg.vae_kl_weight * posterior.kl().mean(), psnr_shown(mse)

    def after_step(trainer, done):
        if done % cfg.sample_every == 0 or done == cfg.vae_steps:
            recon = reconstruct(trainer.model.eval(), preview)
            save_grid(np.concatenate([preview, to_uint8(recon)]), run_dir / "samples" / f"vae_{done:06d}.png")
            trainer.train_mode()

    settings = TrainSettings(steps=cfg.vae_steps, lr=cfg.vae_lr, warmup=max(1, cfg.vae_steps // 30),
                             final_lr_fraction=0.01, weight_decay=0.0, clip_grad_norm=1.0,
                             checkpoint_every=cfg.checkpoint_every, mixed_precision=cfg.mixed_precision)
    trainer = Trainer(make_vae(cfg), loss, picture_sampler(cfg, photo_images, gen), settings,
                      generator=gen, checkpoint=run_dir / "vae_ckpt.pt", name="VAE",
                      record=cfg.pick(*VAE_SETTINGS, "vae_kl_weight"), progress=progress,
                      after_step=after_step if cfg.sample_every else None)
    return trainer.fit()


def finetune_decoder(cfg, vae, photo_images: np.ndarray, run_dir: Path, progress: bool = True):
    """Train only the decoder further, with the encoder frozen (what SD did for its improved
    "ft-MSE" VAE). Latents do not change, so a U-Net trained on them stays valid.
    Resumes from run_dir/vae_decoder_ckpt.pt. Returns the VAE."""
    vae.requires_grad_(False)
    params = list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters())
    for p in params:
        p.requires_grad_(True)
    gen = np.random.default_rng([cfg.seed, 23, 0])

    def loss(vae, batch):
        x, weights = split_batch(batch)
        with torch.no_grad():
            z = vae.encode(x).latent_dist.sample()
        loss, mse = reconstruction_loss(vae.decode(z).sample, x, weights)
        return loss, psnr_shown(mse)

    settings = TrainSettings(steps=cfg.vae_decoder_steps, lr=cfg.vae_decoder_lr, weight_decay=0.0,
                             clip_grad_norm=1.0, checkpoint_every=cfg.checkpoint_every,
                             mixed_precision=cfg.mixed_precision)
    trainer = Trainer(vae, loss, picture_sampler(cfg, photo_images, gen), settings, params=params,
                      generator=gen, checkpoint=Path(run_dir) / "vae_decoder_ckpt.pt", name="VAE decoder",
                      record=cfg.pick(*VAE_SETTINGS), progress=progress)
    return trainer.fit().requires_grad_(False)
