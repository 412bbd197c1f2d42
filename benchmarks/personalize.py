"""Four ways of teaching the embedded model a subject, on the same pictures, measured alike.

    python benchmarks/personalize.py                              # every method, its defaults
    python benchmarks/personalize.py --methods lora dreambooth --quick
    python benchmarks/personalize.py --model runs/third/tiny-sd --methods dreambooth --extra=--no-prior
    python benchmarks/personalize.py --concept pink
    python benchmarks/personalize.py --words-before-class sks zwx star circle   # DreamBooth's rare word

Each method runs `python -m sdcourse.training.finetune --method M --concept C` with its
defaults (timed by the command itself), is loaded into a fresh pipeline with `load_finetuned`,
and is judged with the fixed judge on generation seeds no training used:
- concept right: for star, "a {colour} {word} ..." prompts (varied phrasings; the word is what
  the run records, e.g. "<star>" or "sks shape") drawn with the right colour and as a star; for
  pink, "a {word} {shape} ..." prompts drawn as that shape (the judge) and pink (the colour
  measure `object_colours`: the judge knows only the palette);
- known kept: the usual single-object prompts (circles, squares, triangles), colour and shape
  both right, before and after, and the change in points;
- numbers trained, file size, minutes;
- variety: the mean RMS distance (0..1) between two seeds' pictures of one concept prompt, and
  copying: the mean RMS distance from each concept picture to the nearest training picture (a
  model that redraws its training pictures gets near 0).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from sdcourse.data import shapes  # noqa: E402
from sdcourse.evaluate import classify, object_colours, prompt_adherence  # noqa: E402
from sdcourse.loading import load_pipeline  # noqa: E402
from sdcourse.training.finetune import METHOD_FILES, METHODS, RECORD, load_finetuned, main as finetune  # noqa: E402
from sdcourse.training.finetune_data import concept_pictures  # noqa: E402
from sdcourse.training.train_clip import encoding_change  # noqa: E402


def concept_prompts(concept: str, n: int, word: str) -> list[dict]:
    """Prompts of the concept in varied phrasings, its word written as `word`: stars of every
    colour, or pink circles, squares and triangles (a colour's name swapped for pink's word)."""
    if concept == "star":
        return [{**p, "prompt": p["prompt"].replace("star", word)}
                for p in shapes.evaluation_prompts(n, seed=777, shapes=("star",))]
    return [{**p, "prompt": p["prompt"].replace(p["colour"], word, 1), "colour": "pink"}
            for p in shapes.evaluation_prompts(n, seed=779)]


def concept_right(pipe, prompts: list[dict], seeds) -> tuple[float, float, np.ndarray]:
    """(% right, variety, pictures) for the concept prompts: colour and shape both right, the
    colour by `object_colours` (which names pink), the shape by the judge."""
    result = prompt_adherence(pipe, prompts, seeds=seeds, return_images=True)
    pictures = result["images"]
    colours, guesses = object_colours(pictures), classify(pictures)
    asked = [p for p in prompts for _ in seeds]
    right = [c == p["colour"] and g["shape"] == p["shape"] for c, g, p in zip(colours, guesses, asked)]
    return 100 * float(np.mean(right)), result["diversity"], pictures


def copying(pictures: np.ndarray, training: np.ndarray) -> float:
    """Mean RMS distance (0..1) from each picture (floats in [0, 1]) to its nearest training
    picture (uint8)."""
    a = pictures.reshape(len(pictures), -1).astype(np.float32)
    b = training.reshape(len(training), -1).astype(np.float32) / 255
    squared = (a ** 2).sum(1)[:, None] + (b ** 2).sum(1)[None, :] - 2 * a @ b.T
    return float(np.sqrt(np.maximum(squared.min(1), 0) / a.shape[1]).mean())


def trained_numbers(method: str, pipe, base_parameters: int, text_encoder_trained: bool, vectors: int = 1,
                    learned_word: bool = False) -> int:
    width = pipe.text_encoder.get_input_embeddings().weight.shape[1]
    if method == "dreambooth":  # every U-Net weight, and every text-encoder weight or the new word's rows
        if text_encoder_trained:
            return base_parameters + sum(p.numel() for p in pipe.text_encoder.parameters())
        return base_parameters + (vectors * width if learned_word else 0)
    adapter = sum(p.numel() for model in (pipe.unet, pipe.text_encoder) for n, p in model.named_parameters()
                  if "lora" in n)  # the U-Net's adapter, and the text encoder's where it has one
    rows = vectors if method in ("textual-inversion", "pivotal") else 0  # the new word's rows
    return adapter + rows * width


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="pipeline folder (default: the embedded model)")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--concept", choices=("star", "pink"), default="star")
    parser.add_argument("--extra", action="append", default=[],
                        help="one more finetune argument, for every method (repeat: --extra=--steps --extra=300)")
    parser.add_argument("--quick", action="store_true", help="16 prompts x 2 seeds instead of 32 x 4")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--words-before-class", nargs="+", default=None, metavar="WORD",
                        help="only print how far each word, written before the class word ('a red WORD shape'), "
                             "moves the text encoder's output from 'a red shape'")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.words_before_class:
        pipe = load_pipeline(args.model)
        for word in args.words_before_class:
            change = 100 * encoding_change(pipe.text_encoder, pipe.tokenizer, "a red shape", f"a red {word} shape")
            print(f"'a red {word} shape': {change:.1f}% "
                  f"from 'a red shape' ({len(pipe.tokenizer.tokenize(word))} token(s))")
        return
    n_prompts, seeds = (16, (1000, 1001)) if args.quick else (32, (1000, 1001, 1002, 1003))
    known_prompts = shapes.evaluation_prompts(2 * n_prompts)

    base = load_pipeline(args.model)
    base_parameters = sum(p.numel() for p in base.unet.parameters())
    known_before = prompt_adherence(base, known_prompts, seeds=seeds)["both_correct"]
    plain = concept_right(base, concept_prompts(args.concept, n_prompts, args.concept), seeds)[0]
    print(f"base model: '{args.concept}' prompts right {plain:.1f}%, known prompts right {known_before:.1f}% "
          f"({n_prompts} concept and {2 * n_prompts} known prompts x {len(seeds)} seeds)", flush=True)

    rows = []
    for method in args.methods:
        with tempfile.TemporaryDirectory() as out:
            finetune(["--method", method, "--concept", args.concept, "--out", out, "--threads", str(args.threads),
                      "--quiet", *(["--model", args.model] if args.model else []), *args.extra])
            record = json.loads((Path(out) / RECORD).read_text())
            size = sum((Path(out) / f).stat().st_size for f in METHOD_FILES[method] if (Path(out) / f).exists())
            pipe = load_pipeline(args.model)
            word = load_finetuned(pipe, out)
        settings = record["settings"]
        training, _ = concept_pictures(args.concept, settings["n_pictures"], settings["seed"])
        right, variety, pictures = concept_right(pipe, concept_prompts(args.concept, n_prompts, word), seeds)
        known = prompt_adherence(pipe, known_prompts, seeds=seeds)["both_correct"]
        numbers = trained_numbers(method, pipe, base_parameters, bool(settings.get("train_text_encoder")),
                                  settings.get("vectors", 1), bool(settings.get("learn_word")))
        rows.append((method, word, numbers, size, record["minutes"], right, known, known - known_before, variety,
                     copying(pictures, training)))
        print(f"{method}: {record['minutes']:.2f} min, concept right {right:.1f}%", flush=True)

    print(f"\nextra finetune arguments: {' '.join(args.extra) or 'none'}; {args.threads} threads; "
          f"U-Net {base_parameters / 1e6:.2f} M parameters")
    print("| method | word | numbers trained | file | minutes | concept right | known right | change | variety | "
          "to nearest training picture |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for method, word, count, size, minutes, right, known, change, variety, nearest in rows:
        shown = f"{size / 1e3:.1f} KB" if size < 1e6 else f"{size / 1e6:.1f} MB"
        print(f"| {method} | {word} | {count:,} | {shown} | {minutes:.2f} | {right:.1f}% | {known:.1f}% | "
              f"{change:+.1f} | {variety:.3f} | {nearest:.3f} |")


if __name__ == "__main__":
    main()
