"""Speed of the from-scratch U-Net against diffusers' UNet2DConditionModel, same weights, on CPU.

Run: python benchmarks/unet_speed.py [--repeats 7] [--threads N]

Both models use torch's scaled_dot_product_attention. The runs alternate between the two
models, so a busy machine slows both alike; the minimum and the median of the repeats are
printed, with the ratio ours / diffusers (1.00 = same speed).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from diffusers import UNet2DConditionModel  # noqa: E402

from sdcourse.unet import UNet  # noqa: E402

# SD-like, but small: three levels, attention on the two upper ones.
CONFIG = {
    "sample_size": 32,
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": (64, 128, 256),
    "layers_per_block": 2,
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "cross_attention_dim": 256,
    "attention_head_dim": 4,  # the number of heads
    "norm_num_groups": 32,
}
BATCH, TOKENS, SIZE = 2, 77, 32


def time_once(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    reference = UNet2DConditionModel(**CONFIG).eval()
    ours = UNet.from_config(reference.config, use_sdpa=True).eval()
    ours.load_state_dict(reference.state_dict())

    sample = torch.randn(BATCH, 4, SIZE, SIZE)
    text = torch.randn(BATCH, TOKENS, CONFIG["cross_attention_dim"])
    timestep = torch.tensor([10, 900])

    def run_reference():
        return reference(sample, timestep, text).sample

    def run_ours():
        return ours(sample, timestep, text)

    with torch.inference_mode():
        diff = (run_reference() - run_ours()).abs().max().item()
        for _ in range(args.warmup):
            run_reference()
            run_ours()
        times = {"diffusers": [], "ours": []}
        for _ in range(args.repeats):
            times["diffusers"].append(time_once(run_reference))
            times["ours"].append(time_once(run_ours))

    params = sum(p.numel() for p in ours.parameters())
    print(f"U-Net with {params / 1e6:.1f}M parameters, batch {BATCH}, latents {SIZE}x{SIZE}, "
          f"{TOKENS} text tokens, {torch.get_num_threads()} threads, {args.repeats} repeats")
    print(f"max abs difference of the outputs: {diff:.2e}")
    for name, values in times.items():
        print(f"{name:>9}: min {min(values) * 1000:7.1f} ms   median {statistics.median(values) * 1000:7.1f} ms")
    ratio_min = min(times["ours"]) / min(times["diffusers"])
    ratio_median = statistics.median(times["ours"]) / statistics.median(times["diffusers"])
    print(f"ratio ours/diffusers: min {ratio_min:.3f}   median {ratio_median:.3f}")


if __name__ == "__main__":
    main()
