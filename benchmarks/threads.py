"""Sampling speed of the embedded model with different numbers of CPU threads, side by side.

    python benchmarks/threads.py                  # 1 and 2 threads
    python benchmarks/threads.py --threads 1 2 4 --repeats 7

The thread counts take turns (so a busy machine slows each alike) on the same pictures: a
red circle, 25 DDIM steps, guidance 7.5, in batches of 4 and of 16. Printed: the median time
of each and its ratio to the first count's. CONTRIBUTING's thread rule rests on these figures.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from sdcourse.pipeline import load_pipeline  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    pipe = load_pipeline()
    pipe.set_progress_bar_config(disable=True)
    sizes = (4, 16)
    times = {(n, size): [] for n in args.threads for size in sizes}
    for _ in range(args.repeats):
        for n in args.threads:
            torch.set_num_threads(n)
            for size in sizes:
                started = time.perf_counter()
                pipe(["a red circle"] * size, num_inference_steps=25, guidance_scale=7.5, output_type="np",
                     generator=torch.Generator().manual_seed(0))
                times[(n, size)].append(time.perf_counter() - started)
    print(f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(not set)')}, {os.cpu_count()} CPUs, "
          f"median of {args.repeats}")
    for size in sizes:
        first = statistics.median(times[(args.threads[0], size)])
        for n in args.threads:
            median = statistics.median(times[(n, size)])
            print(f"{size:2d} pictures, {n} thread{'s' if n > 1 else ''}: {median:.2f} s "
                  f"({median / first:.2f}x the time of {args.threads[0]})")


if __name__ == "__main__":
    main()
