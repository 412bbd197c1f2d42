"""Adherence of the lab build against its minutes: how long a lab has to train for a usable model.

    python benchmarks/lab_curve.py                       # 500 ... 4,000 U-Net steps, about 45 minutes
    python benchmarks/lab_curve.py --steps 250 500 1000 --run runs/lab-curve-short
    python benchmarks/lab_curve.py --fast                # the miniature build, to try the script

The lab build's learning rate is constant after its warm-up, so a build stopped at 1,000 steps
is the first 1,000 steps of a longer one. The script runs `build_model --size lab` to the first
step count, judges the pipeline it writes, resumes the same run to the next count, and so on. At
each point it prints the minutes the build has taken so far (its own stage times: drawing the
data, encoding the latents, the U-Net) and how often the fixed judge finds the colour and the
shape right on the capstone's 24 single-object prompts x 2 seeds, at guidance 7.5 and 25 DDIM
steps. The minutes are this machine's: compare machines by running the script on both.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from sdcourse import load_pipeline
from sdcourse.data.shapes import evaluation_prompts
from sdcourse.evaluate import load_classifier, prompt_adherence
from sdcourse.training import build_model


def build_minutes(run: Path) -> float:
    """Minutes of the stages that ran so far, from the run's build_log.json."""
    stages = json.loads((run / "build_log.json").read_text())["stages"]
    return sum(stages.values()) / 60


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[500, 1000, 2000, 3000, 4000],
                        help="U-Net step counts to judge at, increasing")
    parser.add_argument("--run", default="runs/lab-curve", help="run folder (resumed if it exists)")
    parser.add_argument("--prompts", type=int, default=24)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--fast", action="store_true", help="the miniature build (a try of the script)")
    parser.add_argument("--json", default=None, help="also write the curve to this file")
    args = parser.parse_args(argv)
    if any(b <= a for a, b in zip(args.steps, args.steps[1:])) or args.steps[0] < 1:
        parser.error(f"--steps {args.steps}: give positive step counts in increasing order, such as 500 1000 2000")

    torch.set_num_threads(args.threads)
    run = Path(args.run)
    judge = load_classifier()
    prompts = evaluation_prompts(args.prompts)
    seeds = tuple(range(args.seeds))
    curve = []
    print(f"{'U-Net steps':>11} | {'minutes':>7} | colour | shape | both")
    for steps in args.steps:
        out = run / f"tiny-sd-{steps}"
        with contextlib.redirect_stdout(io.StringIO()):  # the build's own report: its log, kept in the run
            build_model.main(["--size", "lab", "--run", str(run), "--out", str(out), "--unet-steps", str(steps),
                              "--threads", str(args.threads), "--quiet", *(["--fast"] if args.fast else [])])
        pipe = load_pipeline(out)
        pipe.set_progress_bar_config(disable=True)
        score = prompt_adherence(pipe, prompts, seeds=seeds, classifier=judge)
        point = {"unet_steps": steps, "minutes": round(build_minutes(run), 1),
                 **{k: round(score[k], 1) for k in ("colour_correct", "shape_correct", "both_correct")}}
        curve.append(point)
        print(f"{steps:>11,} | {point['minutes']:>7.1f} | {point['colour_correct']:5.0f}% | "
              f"{point['shape_correct']:4.0f}% | {point['both_correct']:3.0f}%", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(curve, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
