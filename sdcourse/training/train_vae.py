"""Stage 2: the VAE (diffusers AutoencoderKL), f=8 with 4 latent channels.

64x64x3 pictures become 8x8x4 latents: the same 48x compression as Stable Diffusion's
512x512x3 -> 64x64x4. The loss is SD's recipe without the parts that need big pretrained
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
from tqdm.auto import tqdm

from .common import images_to_tensor, restore_generator, resume, rng_state, save_checkpoint, save_grid, to_uint8


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
    """Encode (posterior mean) and decode; returns the reconstructions in [-1, 1]."""
    out = []
    for start in range(0, len(images_uint8), batch):
        x = images_to_tensor(images_uint8[start : start + batch])
        out.append(vae.decode(vae.encode(x).latent_dist.mode()).sample)
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


def train_vae(cfg, shape_images: np.ndarray, photo_images: np.ndarray, run_dir: Path, progress: bool = True):
    """Train the VAE on a mix of shape pictures and photo crops; resumes from run_dir/vae_ckpt.pt."""
    run_dir = Path(run_dir)
    ckpt_path = run_dir / "vae_ckpt.pt"
    vae = make_vae(cfg)
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    start, state = resume(ckpt_path, vae, opt)
    warmup = max(1, cfg.vae_steps // 30)

    def lr_at(step):
        if step < warmup:
            return cfg.vae_lr * (step + 1) / warmup
        t = (step - warmup) / max(1, cfg.vae_steps - warmup)
        return cfg.vae_lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * t)))

    n_photo = int(round(cfg.vae_batch * cfg.vae_photo_fraction))
    n_shape = cfg.vae_batch - n_photo
    gen = np.random.default_rng([cfg.seed, 22, start])
    restore_generator(gen, state)
    preview = np.concatenate([shape_images[:6], photo_images[:2]])
    bar = tqdm(range(start, cfg.vae_steps), desc="VAE", disable=not progress, initial=start,
               total=cfg.vae_steps, mininterval=2)
    vae.train()
    for step in bar:
        batch = np.concatenate([
            shape_images[gen.integers(0, len(shape_images), n_shape)],
            photo_images[gen.integers(0, len(photo_images), n_photo)],
        ])
        x = images_to_tensor(batch)
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample()).sample
        mse = F.mse_loss(recon, x)
        loss = mse + 0.1 * F.l1_loss(recon, x) + 0.5 * edge_loss(recon, x)
        loss = loss + cfg.vae_kl_weight * posterior.kl().mean()
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        bar.set_postfix(psnr=f"{10 * math.log10(4 / max(mse.item(), 1e-10)):.1f}dB")
        done = step + 1
        if done % cfg.checkpoint_every == 0 or done == cfg.vae_steps:
            save_checkpoint(ckpt_path, model=vae.state_dict(), opt=opt.state_dict(), step=done, rng=rng_state(gen))
        if done % cfg.sample_every == 0 or done == cfg.vae_steps:
            vae.eval()
            recon = reconstruct(vae, preview)
            save_grid(np.concatenate([preview, to_uint8(recon)]), run_dir / "samples" / f"vae_{done:06d}.png")
            vae.train()
    vae.eval()
    return vae


def finetune_decoder(cfg, vae, shape_images: np.ndarray, photo_images: np.ndarray, run_dir: Path,
                     progress: bool = True):
    """Train only the decoder further, with the encoder frozen (what SD did for its improved
    "ft-MSE" VAE). Latents do not change, so a U-Net trained on them stays valid.
    Resumes from run_dir/vae_decoder_ckpt.pt. Returns the VAE."""
    run_dir = Path(run_dir)
    ckpt_path = run_dir / "vae_decoder_ckpt.pt"
    steps = cfg.vae_decoder_steps
    vae.requires_grad_(False)
    params = list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters())
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=cfg.vae_decoder_lr, weight_decay=0.0)
    start, state = resume(ckpt_path, vae, opt)
    n_photo = int(round(cfg.vae_batch * cfg.vae_photo_fraction))
    n_shape = cfg.vae_batch - n_photo
    gen = np.random.default_rng([cfg.seed, 23, start])
    restore_generator(gen, state)
    bar = tqdm(range(start, steps), desc="VAE decoder", disable=not progress, initial=start, total=steps,
               mininterval=2)
    vae.decoder.train()
    for step in bar:
        batch = np.concatenate([
            shape_images[gen.integers(0, len(shape_images), n_shape)],
            photo_images[gen.integers(0, len(photo_images), n_photo)],
        ])
        x = images_to_tensor(batch)
        with torch.no_grad():
            z = vae.encode(x).latent_dist.sample()
        recon = vae.decode(z).sample
        mse = F.mse_loss(recon, x)
        loss = mse + 0.1 * F.l1_loss(recon, x) + 0.5 * edge_loss(recon, x)
        for group in opt.param_groups:
            group["lr"] = cfg.vae_decoder_lr * 0.5 * (1 + math.cos(math.pi * step / steps))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        bar.set_postfix(psnr=f"{10 * math.log10(4 / max(mse.item(), 1e-10)):.1f}dB")
        done = step + 1
        if done % cfg.checkpoint_every == 0 or done == steps:
            save_checkpoint(ckpt_path, model=vae.state_dict(), opt=opt.state_dict(), step=done, rng=rng_state(gen))
    vae.requires_grad_(False)
    vae.eval()
    return vae
