"""Speed of the from-scratch TextToImage against diffusers' StableDiffusionPipeline, embedded model.

Run: python benchmarks/scratch_pipeline_speed.py [--images 16] [--steps 25] [--repeats 5] [--threads N]

Both make the same pictures (16 at 64x64, 25 steps, guidance 7.5, DDIM) from the same weights.
The runs alternate between the two pipelines, so a busy machine slows both alike. Printed, as
medians of the repeats:
- wall time, ours / diffusers (1.00 = same speed);
- ours: wall time / the time spent inside its networks' forward passes (text encoder, U-Net,
  VAE decoder), i.e. how much the pipeline itself adds above the compute (1.00 = nothing);
- pictures per second, both.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from sdcourse.pipeline import TextToImage, load_pipeline  # noqa: E402

PROMPTS = ["a red circle", "a blue square", "a green triangle", "a yellow star"]


class ForwardTimer:
    """Adds up the time spent inside the forward passes of some modules."""

    def __init__(self, modules):
        self.total = 0.0
        self._start = None
        for module in modules:
            module.register_forward_pre_hook(self._enter)
            module.register_forward_hook(self._leave)

    def _sync(self, module):
        device = next(module.parameters()).device
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def _enter(self, module, inputs):
        self._sync(module)
        self._start = time.perf_counter()

    def _leave(self, module, inputs, output):
        self._sync(module)
        self.total += time.perf_counter() - self._start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--guidance", type=float, default=7.5)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    theirs = load_pipeline()
    ours = TextToImage.from_pretrained(theirs)
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(args.images)]
    settings = dict(num_inference_steps=args.steps, guidance_scale=args.guidance)
    # the time inside the networks' forward passes (VAE: the decoder and its 1x1 conv before it)
    timer = ForwardTimer([ours.text_encoder, ours.unet, ours.vae.post_quant_conv, ours.vae.decoder])

    def run_ours():
        ours(prompts, generator=torch.Generator().manual_seed(0), **settings)

    def run_theirs():
        theirs(prompts, height=64, width=64, generator=torch.Generator().manual_seed(0), **settings)

    run_ours(), run_theirs()  # warm-up
    wall_ours, wall_theirs, overhead = [], [], []
    for _ in range(args.repeats):
        timer.total = 0.0
        start = time.perf_counter()
        run_ours()
        wall_ours.append(time.perf_counter() - start)
        overhead.append(wall_ours[-1] / timer.total)
        start = time.perf_counter()
        run_theirs()
        wall_theirs.append(time.perf_counter() - start)

    ours_s, theirs_s = statistics.median(wall_ours), statistics.median(wall_theirs)
    print(f"{args.images} pictures, {args.steps} steps, guidance {args.guidance}, {torch.get_num_threads()} threads, "
          f"median of {args.repeats}")
    print(f"wall time: ours {ours_s:.3f} s, diffusers {theirs_s:.3f} s, ours / diffusers = {ours_s / theirs_s:.2f}")
    print(f"ours: wall time / network forward time = {statistics.median(overhead):.3f}")
    print(f"pictures per second: ours {args.images / ours_s:.1f}, diffusers {args.images / theirs_s:.1f}")


if __name__ == "__main__":
    main()
