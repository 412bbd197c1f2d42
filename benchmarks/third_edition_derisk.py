"""Measure a caption rule's try (sdcourse.training.continue_rule): its text encoder, then its model.

    python benchmarks/third_edition_derisk.py text sdcourse/assets/tiny-sd runs/derisk/clip-never
    python benchmarks/third_edition_derisk.py model runs/derisk/try1/tiny-sd

`text` (each argument: a pipeline folder, or a `continue_rule clip` folder) prints, per text
encoder: `word_sensitivity`; the cosine similarity of its whole output (77 x 32 numbers, what
the U-Net reads) for "a red star" against "a red triangle", "a red shape", ...; and lesson 11's
table, the output at the word in "a {word}".

`model` prints, judged by the fixed judge, on generation seeds no training used:
- "a {colour} star ..." prompts (varied phrasings): the share drawn as each shape (target: stars <= 25%);
- the same prompts with "shape" for "star": the share of each shape (target: each 10-40%);
- the empty prompt: the share of each shape;
- known single-object prompts: colour and shape both right (lora_star.py's quick set).

`ti` runs a quick textual inversion on a model folder: a new token "<star>", its input
embedding started from "shape"'s (or `--initializer WORD`'s), is the only thing trained (the
U-Net and the rest of the text encoder frozen), on star pictures captioned with it; then the
star prompts, "star" replaced by the token, are judged. The other words' embeddings do not
change, so known prompts cannot.
With `--class-word` the captions and prompts keep the class word after the token ("a red <star>
shape"), as DreamBooth keeps it.

LoRA figures come from `benchmarks/lora_star.py --model FOLDER --quick [--train-text-encoder]`.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from sdcourse.data import shapes  # noqa: E402

PHRASES = ["a red star", "a red triangle", "a red shape", "a red circle", "a red square", "a blue star"]
WORDS = ["circle", "square", "triangle", "shape", "star", "pink", "banana"]
SEEDS = (1000, 1001, 1002, 1003)


def load_text_encoder(folder: Path):
    from transformers import CLIPTextModel

    sub = folder / "text_encoder"
    return CLIPTextModel.from_pretrained(str(sub), dtype=torch.float32).eval()


@torch.no_grad()
def text_figures(folder: Path):
    from sdcourse.tokenizer import MAX_LENGTH, load_tokenizer
    from sdcourse.training.train_clip import word_sensitivity

    tokenizer = load_tokenizer()
    encoder = load_text_encoder(folder)

    def encode(texts):
        ids = tokenizer(texts, padding="max_length", max_length=MAX_LENGTH, return_tensors="pt").input_ids
        return encoder(input_ids=ids).last_hidden_state

    print(f"\n## {folder}")
    print("word_sensitivity:", word_sensitivity(encoder, tokenizer))
    whole = encode(PHRASES).flatten(1)
    sim = F.cosine_similarity(whole[:, None], whole[None], dim=-1)
    print("whole output, cosine: " + "; ".join(f"'{PHRASES[0]}' vs '{p}' {sim[0, i]:.3f}" for i, p in
                                               enumerate(PHRASES) if i))
    print("                      " + "; ".join(f"'a red shape' vs '{p}' {sim[2, i]:.3f}" for i, p in
                                               enumerate(PHRASES) if i not in (2,)))
    at_word = encode([f"a {w}" for w in WORDS])[:, 2]
    sim = F.cosine_similarity(at_word[:, None], at_word[None], dim=-1)
    print("at the word in 'a {word}':")
    print("          " + " ".join(f"{w:>8}" for w in WORDS))
    for i, w in enumerate(WORDS):
        print(f"{w:>9} " + " ".join(f"{sim[i, j]:8.2f}" for j in range(len(WORDS))))


def shares(guesses) -> str:
    counts = Counter(g["shape"] for g in guesses)
    return ", ".join(f"{s} {100 * counts[s] / len(guesses):.0f}%" for s in shapes.ALL_SHAPES)


def model_figures(folder: Path, n_prompts: int, grid: Path | None, guidance: float = 7.5, seeds=SEEDS):
    from sdcourse.evaluate import prompt_adherence
    from sdcourse.pipeline import load_pipeline

    pipe = load_pipeline(str(folder))
    star = shapes.evaluation_prompts(n_prompts, seed=777, shapes=("star",))
    as_shape = [{**p, "prompt": p["prompt"].replace("star", shapes.CLASS_WORD)} for p in star]
    star_result = prompt_adherence(pipe, star, seeds=seeds, guidance_scale=guidance, return_images=True)
    shape_result = prompt_adherence(pipe, as_shape, seeds=seeds, guidance_scale=guidance, return_images=True)
    empty = prompt_adherence(pipe, [{"prompt": "", "colour": "red", "shape": "star"}], seeds=range(2000, 2032),
                             return_images=True)
    known = prompt_adherence(pipe, shapes.evaluation_prompts(2 * n_prompts), seeds=seeds[:2], guidance_scale=guidance)
    print(f"\n## {folder}, guidance {guidance:g}, seeds {list(seeds)}")
    print(f"star prompts ({star_result['n_images']} pictures): stars {star_result['shape_correct']:.1f}% "
          f"[{shares(star_result['guesses'])}], colour right {star_result['colour_correct']:.1f}%")
    print(f"the same prompts saying 'shape' ({shape_result['n_images']}): [{shares(shape_result['guesses'])}], "
          f"colour right {shape_result['colour_correct']:.1f}%")
    print(f"empty prompt ({empty['n_images']}): [{shares(empty['guesses'])}]")
    print(f"known prompts ({known['n_images']}): both right {known['both_correct']:.1f}% "
          f"(colour {known['colour_correct']:.1f}%, shape {known['shape_correct']:.1f}%)")
    if grid:
        from sdcourse.training.common import save_grid

        images = np.concatenate([star_result["images"][::4][:8], shape_result["images"][::4][:8],
                                 empty["images"][:8]])
        titles = [p["prompt"] for p in star[:8]] + [p["prompt"] for p in as_shape[:8]] + ["(empty)"] * 8
        save_grid((images * 255).round().astype(np.uint8), grid, titles=titles, columns=8)
        print(f"grid: {grid}")


def textual_inversion(folder: Path, steps: int, batch: int, lr: float, token: str = "<star>", class_word: bool = False,
                      initializer: str = shapes.CLASS_WORD):
    import time

    from diffusers import DDPMScheduler

    from sdcourse.evaluate import prompt_adherence
    from sdcourse.pipeline import load_pipeline
    from sdcourse.images import images_to_tensor
    from sdcourse.textual_inversion import initializer_id
    from sdcourse.training.train_lora import concept_pictures

    pipe = load_pipeline(str(folder))
    started = time.time()
    pipe.tokenizer.add_tokens([token])
    new_id = pipe.tokenizer.convert_tokens_to_ids(token)
    pipe.text_encoder.resize_token_embeddings(len(pipe.tokenizer))
    table = pipe.text_encoder.get_input_embeddings().weight
    with torch.no_grad():
        table[new_id] = table[initializer_id(pipe.tokenizer, initializer)]
    pipe.unet.requires_grad_(False)
    pipe.text_encoder.requires_grad_(False)
    table.requires_grad_(True)
    keep = torch.arange(len(table)) != new_id
    table.register_hook(lambda grad: grad.masked_fill(keep[:, None], 0))  # only the new row learns
    said = token + (f" {shapes.CLASS_WORD}" if class_word else "")  # "<star> shape": DreamBooth's class word kept
    images, captions = concept_pictures("star", 256, seed=0, token=said)
    with torch.no_grad():
        latents = pipe.vae.encode(images_to_tensor(images)).latent_dist.mean * pipe.vae.config.scaling_factor
    ids = pipe.tokenizer(captions, padding="max_length", max_length=77, return_tensors="pt").input_ids
    schedule = DDPMScheduler.from_config(pipe.scheduler.config)
    optimizer = torch.optim.AdamW([table], lr=lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        idx = torch.randint(0, len(latents), (batch,), generator=gen)
        noise = torch.randn(latents[idx].shape, generator=gen)
        t = torch.randint(0, schedule.config.num_train_timesteps, (batch,), generator=gen)
        context = pipe.text_encoder(input_ids=ids[idx]).last_hidden_state
        pred = pipe.unet(schedule.add_noise(latents[idx], noise, t), t, encoder_hidden_states=context).sample
        loss = (pred - noise).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    minutes = (time.time() - started) / 60
    table.requires_grad_(False)
    stars = [{**p, "prompt": p["prompt"].replace("star", said)}
             for p in shapes.evaluation_prompts(16, seed=777, shapes=("star",))]
    result = prompt_adherence(pipe, stars, seeds=SEEDS[:2], return_images=True)
    print(f"\n## textual inversion on {folder}: {steps} steps x {batch}, lr {lr:g}, from '{initializer}', "
          f"{minutes:.1f} min")
    print(f"'{said}' prompts ({result['n_images']} pictures): stars {result['shape_correct']:.1f}%, "
          f"both right {result['both_correct']:.1f}% [{shares(result['guesses'])}]")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    text = sub.add_parser("text")
    text.add_argument("folders", nargs="+", type=Path)
    model = sub.add_parser("model")
    model.add_argument("folder", type=Path)
    model.add_argument("--prompts", type=int, default=16, help="star prompts (and as many 'shape' ones)")
    model.add_argument("--grid", type=Path, default=None, help="save a grid of pictures here")
    model.add_argument("--guidance", type=float, default=7.5)
    model.add_argument("--seeds", type=int, default=len(SEEDS), help="seeds per prompt, from 1000 on")
    ti = sub.add_parser("ti")
    ti.add_argument("folder", type=Path)
    ti.add_argument("--steps", type=int, default=500)
    ti.add_argument("--batch", type=int, default=32)
    ti.add_argument("--lr", type=float, default=5e-3)
    ti.add_argument("--class-word", action="store_true", help="captions and prompts say '<star> shape'")
    ti.add_argument("--initializer", default=shapes.CLASS_WORD, help="the word whose row the new one starts from")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.what == "text":
        for folder in args.folders:
            text_figures(folder)
    elif args.what == "ti":
        textual_inversion(args.folder, args.steps, args.batch, args.lr, class_word=args.class_word,
                          initializer=args.initializer)
    else:
        model_figures(args.folder, args.prompts, args.grid, args.guidance, tuple(range(1000, 1000 + args.seeds)))


if __name__ == "__main__":
    main()
