"""Adherence: generate pictures for prompts, then score them against what each prompt asks for.

The three measures share one skeleton (`_adherence`): read the prompts, generate one picture per
(prompt, seed), score the pictures, count them. Each measure adds only how it reads a prompt
and how it scores:

- `prompt_adherence`: colour and shape of single-object prompts (the judge), and the size where
  the prompt names one (`measure_size`, no judge);
- `position_adherence`: is the object where the prompt says (`locate`, no judge);
- `two_object_adherence`: are both objects of "a red circle and a blue square" right.
"""

from __future__ import annotations

import numpy as np
import torch

from ..arguments import choice, random_seed, real_number, whole_number
from .judge import classify
from .objects import measure_size
from .pictures import SIZE
from .prompts import SIZE_NAMES, parse_position, parse_prompt, parse_size, parse_two_objects
from .scoring import colour_and_shape, score_positions, score_two_objects


def _generate(pipe, prompts: list[str], seeds: list, guidance_scale, num_inference_steps, batch_size) -> np.ndarray:
    """One picture per (prompt, seed), prompt-major, as a float array (N, 64, 64, 3) in [0, 1]."""
    guidance_scale = real_number("guidance_scale", guidance_scale, 0)
    num_inference_steps = whole_number("num_inference_steps", num_inference_steps, minimum=1)
    batch_size = whole_number("batch_size", batch_size, minimum=1)
    if not seeds:
        raise ValueError(f"seeds={seeds!r}; give at least one seed")
    seeds = [random_seed(f"seeds[{i}]", seed) for i, seed in enumerate(seeds)]
    jobs = [(prompt, seed) for prompt in prompts for seed in seeds]
    images = []
    for start in range(0, len(jobs), batch_size):
        chunk = jobs[start : start + batch_size]
        generators = [torch.Generator().manual_seed(seed) for _, seed in chunk]
        out = pipe([prompt for prompt, _ in chunk], height=SIZE, width=SIZE,
                   num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                   generator=generators, output_type="np")
        images.append(out.images)
    return np.concatenate(images) if images else np.empty((0, SIZE, SIZE, 3), dtype=np.float32)


def _adherence(read_prompt, score, pipe, prompts, seeds, guidance_scale, num_inference_steps, batch_size,
               classifier, return_images) -> dict:
    """The skeleton of every adherence measure.

    read_prompt(text) -> what a prompt string asks for (a dict; prompts given as dicts are taken
        as they are). score(images, jobs, n_seeds, classifier) -> (figures, details): `jobs` is the
        prompt dict of each picture; `details` (the judge's guesses, say) come back only with
        return_images, next to the pictures.
    """
    seeds = list(seeds)
    items = [p if isinstance(p, dict) else {"prompt": p, **read_prompt(p)} for p in prompts]
    images = _generate(pipe, [item["prompt"] for item in items], seeds, guidance_scale, num_inference_steps,
                       batch_size)
    jobs = [item for item in items for _ in seeds]
    result, details = score(images, jobs, len(seeds), classifier)
    result["n_images"] = len(jobs)
    if return_images:
        result["images"] = images
        result.update(details)
    return result


def _score_colour_and_shape(images, jobs, n_seeds, classifier):
    guesses = classify(images, classifier)
    colour_ok = [g["colour"] == item["colour"] for g, item in zip(guesses, jobs)]
    shape_ok = [g["shape"] == item["shape"] for g, item in zip(guesses, jobs)]
    both_ok = [c and s for c, s in zip(colour_ok, shape_ok)]
    distances = []
    for group in images.reshape(len(jobs) // n_seeds, n_seeds, -1):  # the pictures of one prompt
        for i in range(n_seeds):
            for j in range(i + 1, n_seeds):
                distances.append(float(np.sqrt(np.mean((group[i] - group[j]) ** 2))))
    asked = [item["size"] for item in jobs]
    found = [f["size"] for f in measure_size(images)]
    size_ok = [f == a for f, a in zip(found, asked) if a is not None]
    all_ok = [b and (a is None or f == a) for b, f, a in zip(both_ok, found, asked)]
    figures = {
        "colour_correct": float(100 * np.mean(colour_ok)),
        "shape_correct": float(100 * np.mean(shape_ok)),
        "both_correct": float(100 * np.mean(both_ok)),
        "diversity": float(np.mean(distances)) if distances else 0.0,
        "size_correct": float(100 * np.mean(size_ok)) if size_ok else None,
        "n_size_named": len(size_ok),
        "all_correct": float(100 * np.mean(all_ok)),
    }
    return figures, {"guesses": guesses, "sizes": found}


def _asked_size(item: dict):
    """The size a prompt asks for: the dict's "size" when it has one (None: no size asked for),
    else the size its text names (`parse_size`), or None."""
    if "size" not in item:
        return parse_size(item["prompt"])
    if item["size"] is not None:
        choice("size", item["size"], SIZE_NAMES)
    return item["size"]


def _score_position(images, jobs, n_seeds, classifier):
    where = score_positions(images, [item["position"] for item in jobs])
    guesses = classify(images, classifier)
    right = [found == item["position"] and colour_and_shape(g) == colour_and_shape(item)
             for found, g, item in zip(where["found"], guesses, jobs)]
    figures = {"position_correct": where["position_correct"], "all_correct": float(100 * np.mean(right))}
    return figures, {"found": where["found"]}


def _score_two_objects(images, jobs, n_seeds, classifier):
    figures = score_two_objects(images, [item["objects"] for item in jobs], classifier)
    return figures, {"guesses": figures.pop("guesses")}


def prompt_adherence(pipe, prompts, seeds=(0, 1, 2, 3), guidance_scale: float = 7.5,
                     num_inference_steps: int = 25, batch_size: int = 32, classifier=None,
                     return_images: bool = False) -> dict:
    """How often generated pictures show the colour and shape their prompt asks for, and the size
    where the prompt names one.

    prompts: strings ("a small red circle in the top left") or dicts with keys prompt,
        colour, shape (as `sdcourse.data.evaluation_prompts()` returns), and optionally size
        ("small", "large" or None); a dict without size asks for the size its prompt names.
    Every prompt is generated once per seed (64x64). Returns percentages colour_correct,
    shape_correct, both_correct (by the judge), and `diversity`: the mean pairwise RMS pixel
    distance (0..1 scale) among the pictures of the same prompt (0 = all identical). And for
    sizes (`measure_size`): size_correct, the share of the n_size_named pictures whose prompt
    names a size that have that size (None when no prompt names one), and all_correct, the
    share of all pictures with colour and shape right and, where the prompt names a size, the
    size right too. With return_images, also the judge's `guesses` and the `sizes` found.
    """
    def read_prompt(text):
        return {**parse_prompt(text), "size": parse_size(text)}

    prompts = [{**p, "size": _asked_size(p)} if isinstance(p, dict) else p for p in prompts]
    return _adherence(read_prompt, _score_colour_and_shape, pipe, prompts, seeds, guidance_scale,
                      num_inference_steps, batch_size, classifier, return_images)


def position_adherence(pipe, prompts, seeds=(0, 1, 2, 3), guidance_scale: float = 7.5,
                       num_inference_steps: int = 25, batch_size: int = 32, classifier=None,
                       return_images: bool = False) -> dict:
    """How often the object of a prompt that names one position is in that position (`locate`).

    prompts: strings ("a red circle in the top left") or dicts with keys prompt, colour, shape,
        position (as `position_prompts()` returns). Returns percentages position_correct and
        all_correct (position, colour and shape right, the last two by the judge).
    """
    def read_prompt(text):
        return {**parse_prompt(text), "position": parse_position(text)}

    return _adherence(read_prompt, _score_position, pipe, prompts, seeds, guidance_scale,
                      num_inference_steps, batch_size, classifier, return_images)


def two_object_adherence(pipe, prompts, seeds=(0, 1, 2, 3), guidance_scale: float = 7.5,
                         num_inference_steps: int = 25, batch_size: int = 32, classifier=None,
                         return_images: bool = False) -> dict:
    """How often both objects of a two-object prompt are right (colour and shape, in any order).

    prompts: strings ("a red circle and a blue square") or dicts with keys prompt and objects
        (as `two_object_prompts()` returns). Returns the percentages of `score_two_objects`.
    """
    def read_prompt(text):
        return {"objects": parse_two_objects(text)}

    return _adherence(read_prompt, _score_two_objects, pipe, prompts, seeds, guidance_scale,
                      num_inference_steps, batch_size, classifier, return_images)
