"""How well a ControlNet places what text cannot: held-out outlines in, judged pictures out.

    python benchmarks/controlnet_quality.py --controlnet runs/controlnet/controlnet
    python benchmarks/controlnet_quality.py --controlnet DIR --model runs/third/tiny-sd --n 64 --scales 0 0.5 1

For `--n` held-out outlines (one object each: every shape, the star included, at every named
position and both sizes, drawn from a seed no training used), the prompt names the object's
colour and shape ("a red circle"; "a red shape" for a star, the word the model draws stars
under). With the outline as control, at each conditioning scale, the fixed judge and the
object measures say:
- place: the object lands where the outline is (the drawn object's centroid within 6 pixels of
  the outline's, about the distance between a position's centre and its edge of jitter);
- shape: the judge names the outline's shape;
- colour: the judge names the prompt's colour;
- all three at once.
Scale 0 is the base model with the same prompts: what text alone places.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from sdcourse.data import shapes  # noqa: E402
from sdcourse.evaluate import classify, locate  # noqa: E402
from sdcourse.loading import load_pipeline  # noqa: E402
from sdcourse.training.train_controlnet import draw_with_control  # noqa: E402

PLACE_TOLERANCE = 6.0  # pixels between the drawn object's centroid and the outline's


def held_out_outlines(n: int, seed: int = 9090):
    """`n` one-object scenes cycling through every shape, position and size: their outlines,
    prompts, and what each asks for."""
    rng = np.random.default_rng(seed)
    cells = [(shape, position, size) for shape in shapes.ALL_SHAPES for position in shapes.POSITIONS
             for size in shapes.SIZES]
    order = rng.permutation(len(cells))
    outlines, prompts, asked = [], [], []
    for i in range(n):
        shape, position, size = cells[order[i % len(cells)]]
        colour = list(shapes.COLOURS)[rng.integers(len(shapes.COLOURS))]
        scene = shapes.make_scene([{"colour": colour, "shape": shape, "position": position, "size": size}],
                                  background="gray" if colour != "gray" else "white", rng=rng)
        word = shapes.CLASS_WORD if shape in shapes.HELD_OUT_SHAPES else shape
        outlines.append(shapes.render_outline(scene))
        prompts.append(f"{shapes.article(colour)} {colour} {word}")
        asked.append({"colour": colour, "shape": shape, "centroid": locate(shapes.render(scene)[None])[0]["centroid"]})
    return np.stack(outlines), prompts, asked


def judge(pictures: np.ndarray, asked: list[dict]) -> dict:
    guesses, where = classify(pictures), locate(pictures)
    place = [w["centroid"] is not None and np.hypot(*np.subtract(w["centroid"], a["centroid"])) <= PLACE_TOLERANCE
             for w, a in zip(where, asked)]
    shape = [g["shape"] == a["shape"] for g, a in zip(guesses, asked)]
    colour = [g["colour"] == a["colour"] for g, a in zip(guesses, asked)]
    every = [p and s and c for p, s, c in zip(place, shape, colour)]
    return {name: 100 * float(np.mean(v)) for name, v in
            (("place", place), ("shape", shape), ("colour", colour), ("all three", every))}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--controlnet", required=True, help="a diffusers ControlNetModel folder")
    parser.add_argument("--model", default=None, help="the pipeline folder (default: the embedded model)")
    parser.add_argument("--n", type=int, default=72, help="held-out outlines (72 = every shape, position and size)")
    parser.add_argument("--seeds", type=int, default=2, help="seeds per outline")
    parser.add_argument("--scales", type=float, nargs="+", default=[0.0, 1.0])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from diffusers import ControlNetModel

    pipe = load_pipeline(args.model)
    controlnet = ControlNetModel.from_pretrained(args.controlnet).float().eval()
    outlines, prompts, asked = held_out_outlines(args.n)
    print(f"{args.n} held-out outlines x {args.seeds} seeds, 25 DDIM steps, guidance 7.5")
    print("| scale | place | shape | colour | all three |")
    print("|---|---|---|---|---|")
    for scale in args.scales:
        pictures = np.concatenate([draw_with_control(pipe, controlnet, outlines, prompts, seed=1000 + s, scale=scale)
                                   for s in range(args.seeds)])
        figures = judge(pictures, asked * args.seeds)
        print(f"| {scale:g} | {figures['place']:.1f}% | {figures['shape']:.1f}% | {figures['colour']:.1f}% | "
              f"{figures['all three']:.1f}% |", flush=True)


if __name__ == "__main__":
    main()
