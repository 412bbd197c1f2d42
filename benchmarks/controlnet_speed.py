"""Speed of the from-scratch TextToImage with a ControlNet, against diffusers' StableDiffusionControlNetPipeline.

Run: python benchmarks/controlnet_speed.py [--images 16] [--steps 25] [--repeats 3] [--threads N]

Three pipelines make 16 pictures at 64x64 (25 steps, guidance 7.5, DDIM) with the embedded model:
  (a) diffusers' StableDiffusionControlNetPipeline,
  (b) the course's TextToImage holding the same ControlNet,
  (c) the course's TextToImage without a ControlNet (what the ControlNet adds to the cost).
The ControlNet is `ControlNetModel.from_unet` of the model's U-Net with small random zero
convolutions (seeded), steered by an outline of a circle. The runs take turns, so a busy machine
slows all three alike. Printed: the median wall time of each, and the ratios b / a and b / c.
On a machine whose cores are busy with other work, pass --threads 1: threads that wait for a
core make the timings meaningless.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from sdcourse.pipeline import TextToImage, load_pipeline  # noqa: E402

PROMPTS = ["a red circle", "a blue square", "a green triangle", "a yellow star"]


def controlnet_for(unet, seed=0):
    """A ControlNet made from `unet`, its zero convolutions given small random weights."""
    from diffusers import ControlNetModel

    torch.manual_seed(seed)
    controlnet = ControlNetModel.from_unet(unet)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for conv in [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block,
                     controlnet.controlnet_cond_embedding.conv_out]:
            conv.weight.copy_(0.05 * torch.randn(conv.weight.shape, generator=g))
            conv.bias.copy_(0.05 * torch.randn(conv.bias.shape, generator=g))
    return controlnet.eval()


def outline(size=64):
    """A white ring on black, the kind of picture an edge ControlNet reads."""
    y, x = np.mgrid[0:size, 0:size]
    r = np.hypot(x - size / 2, y - size / 2)
    ring = ((r > 14) & (r < 17)).astype(np.uint8) * 255
    return Image.fromarray(ring).convert("RGB")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--guidance", type=float, default=7.5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from diffusers import StableDiffusionControlNetPipeline

    pipe = load_pipeline()
    theirs = StableDiffusionControlNetPipeline(
        vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer, unet=pipe.unet,
        controlnet=controlnet_for(pipe.unet), scheduler=pipe.scheduler, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)
    theirs.set_progress_bar_config(disable=True)
    ours = TextToImage.from_pretrained(theirs)
    plain = TextToImage.from_pretrained(pipe)
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(args.images)]
    control = outline()
    settings = dict(num_inference_steps=args.steps, guidance_scale=args.guidance)
    runs = {
        "a: diffusers + ControlNet": lambda: theirs(prompts, image=control, height=64, width=64,
                                                    generator=torch.Generator().manual_seed(0), **settings),
        "b: ours + ControlNet": lambda: ours(prompts, image=control, generator=torch.Generator().manual_seed(0),
                                             **settings),
        "c: ours, no ControlNet": lambda: plain(prompts, generator=torch.Generator().manual_seed(0), **settings),
    }
    for run in runs.values():  # warm-up
        run()
    times = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)

    median = {name: statistics.median(values) for name, values in times.items()}
    print(f"{args.images} pictures at 64x64, {args.steps} steps, guidance {args.guidance}, "
          f"{torch.get_num_threads()} threads, median of {args.repeats}")
    for name, seconds in median.items():
        print(f"  {name:<26} {seconds:7.3f} s")
    a, b, c = median.values()
    print(f"b / a = {b / a:.2f} (ours / diffusers, both with the ControlNet)")
    print(f"b / c = {b / c:.2f} (ours with the ControlNet / ours without)")


if __name__ == "__main__":
    main()
