"""How OpenMP's wait policy changes the build's speed: a full-size U-Net training step under each, side by side.

    python benchmarks/wait_policy.py            # PASSIVE and ACTIVE taking turns, about 2 minutes
    python benchmarks/wait_policy.py --busy     # the same beside another process computing on 2 threads

PyTorch's CPU threads meet at the end of every parallel operation. Under OMP_WAIT_POLICY=ACTIVE
a thread that arrives first spins until the others come; under PASSIVE it sleeps and is woken.
The tiny U-Net's step is thousands of short operations, so the waiting adds up. Spinning wins
while the build has the cores to itself, and loses badly when another process needs them: a
spinning thread holds a core that the thread it waits for could use. The build's commands set
PASSIVE unless OMP_WAIT_POLICY is already set, because a build often runs beside other work;
`OMP_WAIT_POLICY=ACTIVE python -m sdcourse.training.build_model ...` is the faster choice on
cores of its own.

The policy is read once, when PyTorch loads, so each measurement is a process of its own. The
policies take turns, `--rounds` times, each process timing `--steps` steps (the median printed)
of the build's U-Net step: batch 128, forward, backward, clipping and AdamW, as
`benchmarks/build_time.py` times it. A process that takes longer than `--limit` seconds is
stopped and reported as such.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
POLICIES = ("PASSIVE", "ACTIVE")


def median_step(steps: int, threads: int) -> float:
    """The median seconds of `steps` U-Net training steps after one warm-up (in this process's policy)."""
    sys.path.insert(0, str(HERE.parent))
    sys.path.insert(0, str(HERE))
    import torch
    from build_time import seconds_per_step, unet_training_step

    from sdcourse.training.config import full_config

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    return seconds_per_step(unet_training_step(full_config(threads=threads)), steps)


def competitor(seconds: float, threads: int):
    """Another process's work: matrix products on `threads` threads, for `seconds`."""
    import time

    import torch

    torch.set_num_threads(threads)
    a = torch.randn(512, 512)
    end = time.time() + seconds
    while time.time() < end:
        a = torch.tanh(a @ a)


def run_child(policy: str, args) -> float | None:
    """The median step of one process under `policy`; None if it ran past args.limit."""
    env = {**os.environ, "OMP_WAIT_POLICY": policy}
    command = [sys.executable, __file__, "--child", "--steps", str(args.steps), "--threads", str(args.threads)]
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=args.limit, check=True)
    except subprocess.TimeoutExpired:
        return None
    return float(done.stdout.split()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=6, help="steps timed in each process")
    parser.add_argument("--rounds", type=int, default=2, help="turns of each policy")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--busy", action="store_true", help="measure beside another process computing")
    parser.add_argument("--limit", type=float, default=120, help="seconds a process may take")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    for name in ("steps", "rounds", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} {getattr(args, name)}: give a whole number of at least 1")
    if args.limit <= 0:
        parser.error(f"--limit {args.limit}: give a number of seconds above 0")
    if args.child:
        print(f"{median_step(args.steps, args.threads):.4f}")
        return

    busy = None
    if args.busy:
        env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
        seconds = args.rounds * len(POLICIES) * args.limit
        program = (f"import sys; sys.path.insert(0, {str(HERE)!r}); "
                   f"from wait_policy import competitor; competitor({seconds}, {args.threads})")
        busy = subprocess.Popen([sys.executable, "-c", program], env=env)
    try:
        results = {policy: [] for policy in POLICIES}
        for _ in range(args.rounds):
            for policy in POLICIES:
                results[policy].append(run_child(policy, args))
    finally:
        if busy is not None:
            busy.kill()
            busy.wait()

    print(f"U-Net training step, batch 128, {args.threads} thread(s), {os.cpu_count()} CPUs, "
          + ("beside another process on the same cores" if args.busy else "nothing else running (check with top)"))
    print(f"{'OMP_WAIT_POLICY':>15} | {'s/step, each process':>28} | ratio to PASSIVE")
    medians = {}
    for policy, runs in results.items():
        finished = [r for r in runs if r is not None]
        medians[policy] = statistics.median(finished) if len(finished) == len(runs) else None
        shown = ", ".join("over the limit" if r is None else f"{r:.3f}" for r in runs)
        ratio = ("" if medians[policy] is None or medians["PASSIVE"] is None
                 else f"{medians[policy] / medians['PASSIVE']:.2f}x")
        print(f"{policy:>15} | {shown:>28} | {ratio}")


if __name__ == "__main__":
    main()
