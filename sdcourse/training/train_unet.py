"""The build's U-Net (diffusers UNet2DConditionModel), with Stable Diffusion's recipe.

- It works on 8x8x4 latents; attention (self + cross) at 8x8 and 4x4, a plain block at 2x2.
- It reads the prompt through cross-attention on the frozen text encoder's
  last_hidden_state (77 tokens x 32 numbers).
- It predicts the added noise (epsilon), under SD's scaled_linear schedule
  (beta 0.00085 -> 0.012 over 1000 steps).
- Each step's loss is weighted by min(SNR, 5) / SNR ("min-SNR" weighting, Hang et al. 2023):
  nearly-clean timesteps, which only polish details, count less; the noisy ones, where
  colour, shape and layout are decided, count fully. It speeds up training several times.
  Set min_snr_gamma=0 for SD's plain mean squared error.
- 10% of captions are replaced by the empty prompt, so the same network also learns the
  unconditional prediction that classifier-free guidance needs.

Speed: the VAE is run once over the training set and the latent distributions (mean and
standard deviation) are cached; each step samples fresh latents from them, exactly what
encoding every batch would give, at a fraction of the cost. The weights kept are an
exponential moving average (EMA) of the trained ones.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..schedules import SD_SCHEDULE
from ..tokenizer import MAX_LENGTH
from ..images import images_to_tensor, unit_to_uint8
from .common import min_snr_weights, save_grid
from .config import DATA_SETTINGS, RULE_SETTINGS, UNET_MODEL_SETTINGS
from .pieces import BuildPieces, try_ema_update, try_training_loss
from .trainer import Trainer, TrainSettings

SAMPLE_PROMPTS = [
    "a red circle", "a blue square", "a green triangle", "a yellow circle on a black background",
    "a small purple square in the top left", "a large orange triangle in the bottom right",
    "a white circle on a blue background", "a red circle and a blue square",
]


def make_unet(cfg):
    """A fresh UNet2DConditionModel sized for 8x8 latents."""
    from diffusers import UNet2DConditionModel

    levels = len(cfg.unet_channels)
    down = ("CrossAttnDownBlock2D",) * min(levels, 2) + ("DownBlock2D",) * max(0, levels - 2)
    up = ("UpBlock2D",) * max(0, levels - 2) + ("CrossAttnUpBlock2D",) * min(levels, 2)
    return UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4,
        down_block_types=down, up_block_types=up,
        block_out_channels=tuple(cfg.unet_channels), layers_per_block=cfg.unet_layers_per_block,
        cross_attention_dim=cfg.clip_text_width, attention_head_dim=cfg.unet_heads,
        norm_num_groups=cfg.unet_groups,
    )


def make_scheduler(kind: str = "ddim"):
    """A sampler with SD's training schedule (DDIM or PNDM, configured as SD 1.x ships them)."""
    from diffusers import DDIMScheduler, PNDMScheduler

    if kind == "ddim":
        return DDIMScheduler(**SD_SCHEDULE, clip_sample=False, set_alpha_to_one=False, steps_offset=1,
                             prediction_type="epsilon", timestep_spacing="leading")
    if kind == "pndm":
        return PNDMScheduler(**SD_SCHEDULE, skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1,
                             prediction_type="epsilon")
    raise ValueError(f"kind={kind!r} is not allowed; choose 'ddim' or 'pndm'")


@torch.no_grad()
def cache_latents(vae, images_uint8: np.ndarray, batch: int = 128, progress: bool = True, device=None):
    """Posterior mean and std of every picture: two float16 arrays (N, 4, 8, 8), on the CPU.
    device: where to encode (a GPU encodes a build's training set in seconds); default the VAE's.
    The VAE is back where it was afterwards."""
    home = vae.device
    device = torch.device(device) if device is not None else home
    vae.to(device)
    means, stds = [], []
    try:
        for start in tqdm(range(0, len(images_uint8), batch), desc="encoding latents", disable=not progress,
                          mininterval=2):
            dist = vae.encode(images_to_tensor(images_uint8[start : start + batch]).to(device)).latent_dist
            means.append(dist.mean.half().cpu())
            stds.append(dist.std.half().cpu())
    finally:
        vae.to(home)
    return torch.cat(means).numpy(), torch.cat(stds).numpy()


def load_or_cache_latents(vae, images_uint8: np.ndarray, path: Path, progress: bool = True, device=None):
    """The latent distributions of a run's training set: read from `path` if a previous run
    saved them, else encoded now (on `device`, see `cache_latents`) and saved there (atomically,
    so an interrupt leaves no half file)."""
    path = Path(path)
    if path.exists():
        cached = np.load(path)
        return cached["mean"], cached["std"]
    latents = cache_latents(vae, images_uint8, progress=progress, device=device)
    tmp = path.with_name(path.stem + ".tmp.npz")
    np.savez(tmp, mean=latents[0], std=latents[1])
    tmp.replace(path)
    return latents


@torch.no_grad()
def encode_text(text_encoder, token_ids: torch.Tensor) -> torch.Tensor:
    """The frozen text encoder's last_hidden_state: what the U-Net cross-attends to."""
    return text_encoder(input_ids=token_ids).last_hidden_state


def training_loss(unet, batch: dict, empty_context, scheduler, caption_dropout: float, min_snr_gamma: float):
    """The loss of one U-Net training step, the course's own (the capstone, lesson 14, has the
    learner write it; the trainer then does the backward pass, the clipping and the update).

    batch: "latents", clean latents already scaled, (B, 4, h, w); "noise", the noise to add, of
        their shape; "timesteps", (B,); "context", the captions' encodings, (B, 77, width);
        "dropout_draws", (B,), uniform in [0, 1): caption i is dropped when its draw is below
        caption_dropout, and the empty caption's encoding, empty_context (1, 77, width), stands in;
    scheduler: a diffusers DDPMScheduler (add_noise, alphas_cumprod);
    min_snr_gamma: each example's squared error is weighted by min(SNR, gamma) / SNR (0: by 1).

    Returns the batch's mean weighted squared error of the predicted noise, a 0-d tensor.
    """
    t = batch["timesteps"]
    dropped = batch["dropout_draws"] < caption_dropout
    context = torch.where(dropped[:, None, None], empty_context, batch["context"])
    noisy = scheduler.add_noise(batch["latents"], batch["noise"], t)
    prediction = unet(noisy, t, encoder_hidden_states=context).sample
    weight = min_snr_weights(scheduler.alphas_cumprod, min_snr_gamma).to(t.device)[t]
    return ((prediction - batch["noise"]).pow(2).mean((1, 2, 3)) * weight).mean()


def build_pipeline(unet, vae, text_encoder, tokenizer, scheduler=None):
    """Put the networks together into a diffusers StableDiffusionPipeline (no safety checker)."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
        scheduler=scheduler or make_scheduler("ddim"), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def train_unet(cfg, latents, token_ids: np.ndarray, text_encoder, vae, tokenizer, scaling_factor: float,
               run_dir: Path, progress: bool = True, total_steps: int | None = None, init_unet=None,
               record: dict | None = None, pieces: BuildPieces | None = None):
    """Train the U-Net on cached latents; resumes from run_dir/unet_ckpt.pt.

    latents: the training set's latent distributions before scaling, (mean, std), as the latents
    stage caches them (each step draws from them and scales by scaling_factor); or one tensor of
    latents already scaled (a learner's encode_latents gives them), used as they are.
    With cfg.text_encoder_lr_scale > 0 a copy of the text encoder trains along, at that times
    the U-Net's learning rate (`text_encoder` itself is not changed); with 0 it stays frozen.
    total_steps (default cfg.unet_steps) may be raised on a resumed run to train longer:
    the learning rate is constant after warm-up, so training simply continues.
    init_unet: a trained UNet2DConditionModel to start from (and to seed the EMA) instead
    of fresh weights; see train_longer.py. record: more settings a resumed run must share.
    pieces: a learner's training_loss and ema_update (`pieces.py`), each tried on one batch
    before training; the course's own where None.
    Returns the EMA model's U-Net and text encoder (`text_encoder` itself when it stays frozen).
    """
    from diffusers import DDPMScheduler

    pieces = pieces or BuildPieces()
    compute_loss = pieces.training_loss or training_loss
    total_steps = total_steps or cfg.unet_steps
    run_dir = Path(run_dir)
    unet = make_unet(cfg) if init_unet is None else copy.deepcopy(init_unet).train().requires_grad_(True)
    noise_schedule = DDPMScheduler(**SD_SCHEDULE)
    text_encoder.requires_grad_(False).eval()
    trains_text = cfg.text_encoder_lr_scale > 0
    model = unet
    params = None
    if trains_text:  # one module, so that the loop trains, averages (EMA) and checkpoints both
        model = torch.nn.ModuleDict({"unet": unet, "text_encoder": copy.deepcopy(text_encoder).requires_grad_(True)})
        params = [{"params": list(unet.parameters())},
                  {"params": list(model["text_encoder"].parameters()), "lr_scale": cfg.text_encoder_lr_scale}]
    if isinstance(latents, torch.Tensor):
        scaled_latents = latents.float()
    else:
        scaled_latents = None
        mean, std = (torch.from_numpy(a) for a in latents)
    token_ids = torch.from_numpy(token_ids).long()
    n, k = token_ids.shape[:2]
    empty_ids = tokenizer("", padding="max_length", max_length=MAX_LENGTH).input_ids
    empty_ids = torch.from_numpy(np.asarray(empty_ids)).long()[None]  # (1, 77)
    empty_context = None if trains_text else encode_text(text_encoder, empty_ids)  # a trained encoder encodes in `loss`
    gen = torch.Generator().manual_seed(cfg.seed * 1000 + 33)

    def clean_latents(idx):
        if scaled_latents is not None:
            return scaled_latents[idx]
        return (mean[idx].float() + std[idx].float() * torch.randn(mean[idx].shape, generator=gen)) * scaling_factor

    def next_batch():
        """Clean latents of random pictures, the noise to add, its timesteps, the captions' encodings
        (their token ids while the text encoder trains: it encodes them in `loss`) and each caption's
        dropout draw."""
        idx = torch.randint(0, n, (cfg.unet_batch,), generator=gen)
        which = torch.randint(0, k, (cfg.unet_batch,), generator=gen)
        ids = token_ids[idx, which]
        dropout_draws = torch.rand(cfg.unet_batch, generator=gen)
        context = ids if trains_text else encode_text(text_encoder, ids)
        z0 = clean_latents(idx)
        noise = torch.randn(z0.shape, generator=gen)
        t = torch.randint(0, noise_schedule.config.num_train_timesteps, (cfg.unet_batch,), generator=gen)
        return {"latents": z0, "noise": noise, "timesteps": t, "context": context, "dropout_draws": dropout_draws}

    def loss(model, batch):
        unet, _ = parts(model)
        if trains_text:
            encoder = model["text_encoder"]
            context = encoder(input_ids=batch["context"]).last_hidden_state
            empty = encoder(input_ids=empty_ids.to(context.device)).last_hidden_state
        else:
            context, empty = batch["context"], empty_context.to(batch["context"].device)
        return compute_loss(unet, {**batch, "context": context}, empty, noise_schedule, cfg.caption_dropout,
                            cfg.min_snr_gamma)

    def after_step(trainer, done):
        if done % cfg.sample_every == 0 or done == total_steps:
            unet_now, text_now = parts(trainer.ema.model)
            save_samples(unet_now, vae, text_now, tokenizer, run_dir / "samples" / f"unet_{done:06d}.png")

    def parts(model):
        """(U-Net, text encoder) of the trained module."""
        return (model["unet"], model["text_encoder"]) if trains_text else (model, text_encoder)

    # A learner's pieces run once before training (on a batch drawn aside: the generator is put
    # back), so that one returning the wrong kind of result is named now, not hours from now.
    if pieces.training_loss is not None:
        state = gen.get_state()
        first_batch = next_batch()
        gen.set_state(state)
        try_training_loss(lambda batch: loss(model, batch), first_batch)
    if pieces.ema_update is not None:
        try_ema_update(pieces.ema_update, model, cfg.unet_ema_decay)

    settings = TrainSettings(steps=total_steps, lr=cfg.unet_lr, schedule="constant", warmup=cfg.unet_warmup,
                             weight_decay=0.01, clip_grad_norm=1.0, ema_decay=cfg.unet_ema_decay,
                             checkpoint_every=cfg.checkpoint_every, mixed_precision=cfg.mixed_precision)
    recorded = {**cfg.pick(*DATA_SETTINGS, *RULE_SETTINGS, *UNET_MODEL_SETTINGS, "unet_batch", "caption_dropout", "min_snr_gamma",
                           "text_encoder_lr_scale"),
                "scaling_factor": float(scaling_factor), **(record or {})}
    if pieces.given:  # a checkpoint trained with the learner's pieces is resumed only with pieces of the same names
        recorded["your_pieces"] = list(pieces.given)
    trainer = Trainer(model, loss, next_batch, settings, params=params, generator=gen,
                      checkpoint=run_dir / "unet_ckpt.pt", name="U-Net", record=recorded, progress=progress,
                      after_step=after_step if cfg.sample_every else None, ema_update=pieces.ema_update)
    trainer.fit()
    unet, trained_text = parts(trainer.ema.model.eval())
    return unet, trained_text.eval().requires_grad_(False)


@torch.no_grad()
def save_samples(unet, vae, text_encoder, tokenizer, path: Path, guidance_scale: float = 7.5):
    """A grid: each sample prompt at guidance 7.5 (top row) and 1.0 (bottom row), 25 DDIM steps."""
    # While training on a GPU: sample with copies next to the VAE (the text encoder too, when it
    # trains along), so that every network of the pipeline is on one device.
    if unet.device != vae.device:
        unet = copy.deepcopy(unet).to(vae.device)
    if text_encoder.device != vae.device:
        text_encoder = copy.deepcopy(text_encoder).to(vae.device)
    was_training = unet.training
    unet.eval()
    pipe = build_pipeline(unet, vae, text_encoder, tokenizer)
    rows = []
    for scale in (guidance_scale, 1.0):
        out = pipe(SAMPLE_PROMPTS, height=64, width=64, num_inference_steps=25, guidance_scale=scale,
                   generator=torch.Generator().manual_seed(0), output_type="np")
        rows.append(unit_to_uint8(out.images))
    titles = [f"{p} (cfg {guidance_scale})" for p in SAMPLE_PROMPTS] + [f"{p} (cfg 1)" for p in SAMPLE_PROMPTS]
    save_grid(np.concatenate(rows), path, titles=titles)
    if was_training:
        unet.train()
