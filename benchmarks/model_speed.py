"""Sampling speed of two or more model folders, side by side in one run.

Run: python benchmarks/model_speed.py MODEL_DIR [MODEL_DIR ...] [--images 16] [--steps 25] [--repeats 5]

Each folder is loaded with `load_pipeline` and makes the same pictures (16 at 64x64, 25 DDIM
steps, guidance 7.5, so the U-Net sees batches of 32). The runs take turns, so a busy machine
slows every model alike. Printed: the median wall time of each, and its ratio to the first
folder's (1.00 = same speed). To compare with an earlier edition of the shipped model, check
its folder out of git first, for example:

    git archive <commit> sdcourse/assets/tiny-sd | tar -x -C /tmp/earlier
    python benchmarks/model_speed.py /tmp/earlier/sdcourse/assets/tiny-sd sdcourse/assets/tiny-sd
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from sdcourse.pipeline import load_pipeline  # noqa: E402

PROMPTS = ["a red circle", "a blue square", "a green triangle", "a yellow circle"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", type=Path, help="pipeline folders; the first is the reference")
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--guidance", type=float, default=7.5)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    for folder in args.models:
        if not (folder / "model_index.json").is_file():
            parser.error(f"models: {str(folder)!r} holds no model_index.json; give pipeline folders")
    for name in ("images", "steps", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} {getattr(args, name)}: it must be 1 or more")
    torch.set_num_threads(args.threads)

    pipes = [load_pipeline(folder) for folder in args.models]
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(args.images)]

    def sample(pipe):
        start = time.perf_counter()
        pipe(prompts, height=64, width=64, num_inference_steps=args.steps, guidance_scale=args.guidance,
             generator=torch.Generator().manual_seed(0))
        return time.perf_counter() - start

    for pipe in pipes:
        sample(pipe)  # warm-up
    seconds = [[] for _ in pipes]
    for _ in range(args.repeats):
        for times, pipe in zip(seconds, pipes):
            times.append(sample(pipe))

    print(f"{args.images} pictures, {args.steps} DDIM steps, guidance {args.guidance}, {args.threads} threads, "
          f"median of {args.repeats}, taking turns")
    reference = statistics.median(seconds[0])
    for folder, pipe, times in zip(args.models, pipes, seconds):
        median = statistics.median(times)
        parameters = {part: sum(p.numel() for p in getattr(pipe, part).parameters()) / 1e6
                      for part in ("text_encoder", "unet", "vae")}
        sizes = ", ".join(f"{part} {count:.2f} M" for part, count in parameters.items())
        print(f"{str(folder):<50} {median:6.2f} s  ({median / reference:.2f}x the first)  [{sizes}]")


if __name__ == "__main__":
    main()
