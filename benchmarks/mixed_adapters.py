"""Two LoRA adapters in one pipeline: the star's and pink's, each trained alone, asked for together.

    python benchmarks/mixed_adapters.py                  # trains both with the trainer's defaults
    python benchmarks/mixed_adapters.py --star runs/star-lora --pink runs/pink-lora --quick

Each adapter comes from `python -m sdcourse.training.train_lora --concept star` (and `pink`)
with its defaults (or from the folders given), and both are loaded into one diffusers pipeline
under their own names (`load_lora_weights(..., adapter_name=...)`, `set_adapters` with weight
1 each). Judged on generation seeds no training used:
- "a pink star shape ..." prompts (varied phrasings, the star's class word kept as its trainer
  writes it): the share drawn as a star (the fixed judge) in pink (`object_colours`, which names
  pink);
- each adapter's own prompts with both loaded (stars of the known colours; pink known shapes), to
  see what the other adapter costs it;
- known single-object prompts, colour and shape both right, before and with both adapters.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from sdcourse.data import shapes  # noqa: E402
from sdcourse.evaluate import classify, object_colours, prompt_adherence  # noqa: E402
from sdcourse.files import read_json  # noqa: E402
from sdcourse.lora import LORA_FILE  # noqa: E402
from sdcourse.loading import load_pipeline  # noqa: E402
from sdcourse.training.finetune_data import concept_phrase  # noqa: E402
from sdcourse.training.train_lora import main as train_lora  # noqa: E402


def star_word(folder: Path) -> str:
    """What the star adapter's captions called the star ("star shape"), from its record."""
    record = read_json(folder / "train_lora.json", "LoRA record")
    return concept_phrase(record.get("token") or "star", record.get("class_word", ""))


def prompts_for(n: int, colour_word: str | None, shape_word: str, seed: int) -> list[dict]:
    """n star prompts with "star" written as shape_word; with colour_word, the colour named is
    replaced by it and the picture must be pink."""
    prompts = []
    for p in shapes.evaluation_prompts(n, seed=seed, shapes=("star",)):
        text = p["prompt"].replace("star", shape_word)
        if colour_word:
            text, p = text.replace(p["colour"], colour_word, 1), {**p, "colour": "pink"}
        prompts.append({**p, "prompt": text})
    return prompts


def pink_prompts(n: int) -> list[dict]:
    """Pink circles, squares and triangles ("a pink circle ...")."""
    return [{**p, "prompt": p["prompt"].replace(p["colour"], "pink", 1), "colour": "pink"}
            for p in shapes.evaluation_prompts(n, seed=779)]


def right(pipe, prompts: list[dict], seeds) -> float:
    """% of pictures with colour (`object_colours`, pink included) and shape (the judge) both right."""
    pictures = prompt_adherence(pipe, prompts, seeds=seeds, return_images=True)["images"]
    asked = [p for p in prompts for _ in seeds]
    hits = [c == p["colour"] and g["shape"] == p["shape"]
            for c, g, p in zip(object_colours(pictures), classify(pictures), asked)]
    return 100 * float(np.mean(hits))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="pipeline folder (default: the embedded model)")
    parser.add_argument("--star", type=Path, default=None, help="a train_lora --concept star folder (default: train one)")
    parser.add_argument("--pink", type=Path, default=None, help="a train_lora --concept pink folder (default: train one)")
    parser.add_argument("--quick", action="store_true", help="16 prompts x 2 seeds instead of 32 x 4")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    n, seeds = (16, (1000, 1001)) if args.quick else (32, (1000, 1001, 1002, 1003))
    model = ["--model", args.model] if args.model else []

    with tempfile.TemporaryDirectory() as scratch:
        folders = {}
        for concept in ("star", "pink"):
            folder = getattr(args, concept)
            if folder is None:
                folder = Path(scratch) / concept
                started = time.time()
                train_lora(["--concept", concept, "--out", str(folder), "--threads", str(args.threads), "--quiet",
                            *model])
                print(f"{concept} adapter trained in {(time.time() - started) / 60:.2f} min", flush=True)
            folders[concept] = folder
        word = star_word(folders["star"])
        known_prompts = shapes.evaluation_prompts(2 * n)
        pipe = load_pipeline(args.model)
        known_before = prompt_adherence(pipe, known_prompts, seeds=seeds)["both_correct"]
        pink_star = prompts_for(n, "pink", word, seed=781)
        before = right(pipe, pink_star, seeds)
        for concept, folder in folders.items():
            pipe.load_lora_weights(str(folder), weight_name=LORA_FILE, adapter_name=concept)
        pipe.set_adapters(list(folders), adapter_weights=[1.0, 1.0])
        mixed = right(pipe, pink_star, seeds)
        stars = right(pipe, prompts_for(n, None, word, seed=777), seeds)
        pinks = right(pipe, pink_prompts(n), seeds)
        known = prompt_adherence(pipe, known_prompts, seeds=seeds)["both_correct"]

    print(f"\nboth adapters loaded, weight 1 each; {n} prompts of each kind x {len(seeds)} seeds")
    print("| prompts | base model | both adapters |")
    print("|---|---|---|")
    print(f"| 'a pink {word} ...', pink and a star | {before:.1f}% | {mixed:.1f}% |")
    print(f"| 'a red {word} ...' (known colours), right | | {stars:.1f}% |")
    print(f"| 'a pink circle ...' (known shapes), right | | {pinks:.1f}% |")
    print(f"| known prompts, both right | {known_before:.1f}% | {known:.1f}% ({known - known_before:+.1f}) |")


if __name__ == "__main__":
    main()
