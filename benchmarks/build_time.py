"""How long the full build of the tiny Stable Diffusion takes on this machine, stage by stage.

    python benchmarks/build_time.py                          # about 3 minutes on 2 cores
    python benchmarks/build_time.py --mixed-precision bf16   # bf16 arithmetic (CPUs with AVX-512 BF16)
    python benchmarks/build_time.py --threads 1
    OMP_WAIT_POLICY=ACTIVE python benchmarks/build_time.py   # a build with the cores to itself

Each network is built at its full size and trained for a few steps on batches of its full
size; the median time of one step is multiplied by the step count of the full config. Drawing
the training set is timed on 1,000 pictures and scaled to the full set. Setup work (loading,
caching latents, saving) is not counted, so the real build takes a little longer.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402


# The stages build-stages/second-edition keeps, which a build from there does not train again.
KEPT_STAGES = ("CLIP", "CLIP image encoder", "CLIP words", "VAE", "VAE decoder")


def seconds_per_step(step, repeats: int) -> float:
    step()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def trainer(model, params, loss_fn, precision="no"):
    """One step of the build's own training loop (optimizer, clipping, precision); `loss_fn`
    computes the loss on a fixed batch, or draws its own as the VAE's does."""
    from sdcourse.training.trainer import Trainer, TrainSettings

    loop = Trainer(model, lambda model, batch: loss_fn(), lambda: None,
                   TrainSettings(steps=1, lr=1e-4, mixed_precision=precision), params=list(params), progress=False)
    return lambda: loop.training_step(0)


def unet_training_step(cfg, precision="no"):
    """One step of the U-Net stage at cfg's size on a fixed batch (forward, backward, clipping, AdamW)."""
    from sdcourse.training.train_unet import make_unet

    unet = make_unet(cfg).train()
    noisy = torch.randn(cfg.unet_batch, 4, 8, 8)
    t = torch.randint(0, 1000, (cfg.unet_batch,))
    context = torch.randn(cfg.unet_batch, 77, cfg.clip_text_width)
    return trainer(unet, unet.parameters(), lambda: unet(noisy, t, encoder_hidden_states=context).sample.pow(2).mean(),
                   precision)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--mixed-precision", choices=("no", "bf16", "fp16"), default="no")
    args = parser.parse_args()
    precision = args.mixed_precision
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    from sdcourse.tokenizer import END_TOKEN_ID, START_TOKEN_ID
    from sdcourse.training.config import full_config
    import numpy as np

    from sdcourse.training.datasets import build_contrast_set, build_training_set
    from sdcourse.training.train_clip import as_tensor, make_clip
    from sdcourse.training.train_vae import make_vae, picture_sampler, reconstruction_loss, split_batch

    cfg = full_config(threads=args.threads)
    rows = []

    start = time.perf_counter()
    build_training_set(1000, cfg.captions_per_image, cfg.seed, cfg.two_object_prob, progress=False)
    rows.append(("data", "picture", (time.perf_counter() - start) / 1000, cfg.n_train))
    start = time.perf_counter()
    build_contrast_set(250, cfg.seed, progress=False)
    rows.append(("CLIP contrast pairs", "pair", (time.perf_counter() - start) / 250, cfg.clip_contrast_set))

    clip = make_clip(cfg).train()
    pixels = torch.randn(cfg.clip_batch, 3, 64, 64)
    ids = torch.randint(0, START_TOKEN_ID, (cfg.clip_batch, 16))
    ids[:, -1] = END_TOKEN_ID
    loss = lambda: clip(input_ids=ids, pixel_values=pixels).logits_per_image.logsumexp(1).mean()
    joint = seconds_per_step(trainer(clip, clip.parameters(), loss, precision), args.repeats)
    rows.append(("CLIP", f"batch {cfg.clip_batch}", joint, cfg.clip_steps))
    image_loss = lambda: as_tensor(clip.get_image_features(pixel_values=pixels)).pow(2).mean()
    rows.append(("CLIP image encoder", f"batch {cfg.clip_batch}",
                 seconds_per_step(trainer(clip, clip.vision_model.parameters(), image_loss, precision), args.repeats),
                 cfg.clip_image_steps))
    rows.append(("CLIP words", f"batch {cfg.clip_batch}", joint, cfg.clip_words_steps))
    rows.append(("CLIP rule phase", f"batch {cfg.clip_batch}", joint, cfg.clip_rule_steps))

    vae = make_vae(cfg).train()
    photos = np.random.default_rng(0).integers(0, 256, (64, 64, 64, 3), dtype=np.uint8)
    next_pictures = picture_sampler(cfg, photos, np.random.default_rng(1))  # draws fresh pictures, as the build

    def vae_loss():
        x, weights = split_batch(next_pictures())
        return reconstruction_loss(vae.decode(vae.encode(x).latent_dist.sample()).sample, x, weights)[0]

    rows.append(("VAE", f"batch {cfg.vae_batch}",
                 seconds_per_step(trainer(vae, vae.parameters(), vae_loss, precision), args.repeats), cfg.vae_steps))
    x = torch.rand(cfg.vae_batch, 3, 64, 64) * 2 - 1
    z = torch.randn(cfg.vae_batch, 4, 8, 8)
    decoder_loss = lambda: F.mse_loss(vae.decode(z).sample, x)
    rows.append(("VAE decoder", f"batch {cfg.vae_batch}",
                 seconds_per_step(trainer(vae, vae.decoder.parameters(), decoder_loss, precision), args.repeats),
                 cfg.vae_decoder_steps))

    unet_step = seconds_per_step(unet_training_step(cfg, precision), args.repeats)
    rows.append(("U-Net", f"batch {cfg.unet_batch}", unet_step, cfg.unet_steps))
    rows.append(("U-Net class phase", f"batch {cfg.unet_batch}", unet_step, cfg.class_phase_steps))

    print(f"full build, {args.threads} thread(s), mixed precision {precision}: time of one step x steps in the "
          "full config")
    print(f"{'stage':>20} | {'unit':>15} | {'s/unit':>7} | {'units':>6} | minutes")
    total = 0.0
    for name, unit, seconds, count in rows:
        minutes = seconds * count / 60
        total += minutes
        print(f"{name:>20} | {unit:>15} | {seconds:7.3f} | {count:6,} | {minutes:6.1f}")
    print(f"{'total':>20} | {'':>15} | {'':>7} | {'':>6} | {total:6.1f}")
    kept = sum(seconds * count / 60 for name, _, seconds, count in rows if name in KEPT_STAGES)
    print(f"from build-stages/second-edition (its {', '.join(KEPT_STAGES)} kept): {total - kept:.1f} minutes")


if __name__ == "__main__":
    main()
