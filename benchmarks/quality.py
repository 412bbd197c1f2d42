"""Quality figures of the course's embedded tiny Stable Diffusion.

    python benchmarks/quality.py            # everything (about 5 minutes on 2 cores)
    python benchmarks/quality.py --quick    # fewer pictures, no guidance sweep

Prints:
- load time of `load_pipeline()` and time for 16 pictures at 25 steps with CFG;
- the judge's (shape/colour classifier's) own accuracy on fresh generator pictures;
- VAE reconstruction PSNR on fresh shape pictures and on photo crops;
- the tiny CLIP's zero-shot colour and shape accuracy on fresh pictures;
- prompt adherence (64 single-object prompts x 4 seeds, 25 DDIM steps) over guidance
  scales 1, 3, 5, 7.5, 10, 15.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Shared machines: spinning OpenMP threads slow everything down several times.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description="Quality figures of the embedded tiny SD.")
    parser.add_argument("--model", default=None, help="pipeline folder (default: the embedded model)")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    figures = {}

    # Load time: in a fresh process this includes importing diffusers.
    t = time.perf_counter()
    from sdcourse.pipeline import EMBEDDED_MODEL, load_pipeline

    pipe = load_pipeline(args.model)
    figures["load_seconds"] = round(time.perf_counter() - t, 2)
    print(f"load_pipeline(): {figures['load_seconds']:.2f} s (including imports)")
    t = time.perf_counter()
    load_pipeline(args.model)
    figures["reload_seconds"] = round(time.perf_counter() - t, 2)
    print(f"load_pipeline() again (libraries imported): {figures['reload_seconds']:.2f} s")

    # Speed: 16 pictures, 25 DDIM steps, classifier-free guidance (so batches of 32 in the U-Net).
    prompts16 = ["a red circle", "a blue square", "a green triangle", "a yellow circle"] * 4
    generator = torch.Generator().manual_seed(0)
    pipe(prompts16, height=64, width=64, num_inference_steps=25, guidance_scale=7.5, generator=generator)
    times = []
    for _ in range(3):
        t = time.perf_counter()
        pipe(prompts16, height=64, width=64, num_inference_steps=25, guidance_scale=7.5, generator=generator)
        times.append(time.perf_counter() - t)
    figures["seconds_16_images_25_steps_cfg"] = round(statistics.median(times), 2)
    print(f"16 pictures, 25 steps, CFG 7.5: {figures['seconds_16_images_25_steps_cfg']:.2f} s (median of 3)")

    # The judge.
    from sdcourse.evaluate import classifier_accuracy, prompt_adherence

    n = 300 if args.quick else 1000
    figures["classifier_accuracy"] = classifier_accuracy(n=n, seed=2024)
    print(f"classifier accuracy on {n} fresh pictures (4 shapes incl. star): {_fmt(figures['classifier_accuracy'])}")

    # VAE.
    from sdcourse.data import shapes
    from sdcourse.training.datasets import HELD_OUT_PHOTOS, photo_crops
    from sdcourse.training.train_vae import mean_psnr

    fresh, _, _ = shapes.make_dataset(256 if args.quick else 512, seed=4242)
    held_out = photo_crops(128 if args.quick else 256, seed=4243, names=HELD_OUT_PHOTOS)
    train_photos = photo_crops(128 if args.quick else 256, seed=4244)
    figures["vae_psnr"] = {
        "fresh_shapes": round(mean_psnr(pipe.vae, fresh), 2),
        "held_out_photo_crops": round(mean_psnr(pipe.vae, held_out), 2),
        "training_photos_fresh_crops": round(mean_psnr(pipe.vae, train_photos), 2),
    }
    print(f"VAE PSNR (dB): {figures['vae_psnr']}  (scaling_factor {pipe.vae.config.scaling_factor:.4f})")

    # CLIP zero-shot.
    from sdcourse.training.export import load_clip
    from sdcourse.training.train_clip import zero_shot_accuracy

    clip_dir = (Path(args.model).parent if args.model else EMBEDDED_MODEL.parent) / "tiny-clip"
    if clip_dir.exists():
        clip = load_clip(clip_dir, pipe.text_encoder)
        figures["clip_zero_shot"] = zero_shot_accuracy(clip, n=n, seed=999)
        print(f"CLIP zero-shot accuracy on {n} fresh pictures: {_fmt(figures['clip_zero_shot'])}")

    # Prompt adherence over guidance scales.
    prompts = shapes.evaluation_prompts(64)
    seeds = [0, 1, 2, 3]
    scales = [1.0, 7.5] if args.quick else [1.0, 3.0, 5.0, 7.5, 10.0, 15.0]
    if args.quick:
        prompts = prompts[:24]
    figures["adherence"] = {}
    print(f"prompt adherence: {len(prompts)} single-object prompts x {len(seeds)} seeds, 25 DDIM steps")
    print("  guidance  colour%  shape%  both%  diversity")
    for scale in scales:
        r = prompt_adherence(pipe, prompts, seeds=seeds, guidance_scale=scale, num_inference_steps=25)
        figures["adherence"][str(scale)] = {k: round(v, 2) if isinstance(v, float) else v for k, v in r.items()}
        print(f"  {scale:8.1f}  {r['colour_correct']:6.1f}  {r['shape_correct']:6.1f}  {r['both_correct']:5.1f}"
              f"  {r['diversity']:.3f}", flush=True)

    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))


def _fmt(acc: dict) -> str:
    return ", ".join(f"{k} {v:.1f}%" for k, v in acc.items())


if __name__ == "__main__":
    main()
