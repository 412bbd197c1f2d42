"""Teach the embedded model "star" with a LoRA adapter, and measure what it learned and what it cost.

    python benchmarks/lora_star.py                 # the trainer's defaults (rank 4)
    python benchmarks/lora_star.py --ranks 1 2 4 8 16
    python benchmarks/lora_star.py --quick         # fewer prompts and seeds
    python benchmarks/lora_star.py --full-unet --lr 3e-4   # the ceiling: every U-Net weight trained
    python benchmarks/lora_star.py --class-word '' # captions and prompts say "a red star", no class word

For each rank it trains `python -m sdcourse.training.train_lora --concept star` with the given
settings (timed), then judges, with the fixed judge:
- star: the share of "a {colour} star shape ..." pictures (the trainer's class word follows the
  star's word) drawn as a star in the right colour, on generation seeds the training never used;
- base: colour + shape adherence on the usual single-object prompts (circles, squares,
  triangles), before and after, to see what the adapter broke;
- the adapter's parameters (share of the U-Net's) and file size.
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

import torch  # noqa: E402

from sdcourse.data import shapes  # noqa: E402
from sdcourse.evaluate import prompt_adherence  # noqa: E402
from sdcourse.pipeline import load_pipeline  # noqa: E402
from sdcourse.training.train_lora import (  # noqa: E402
    CONCEPT_CLASS_WORDS, CONCEPT_PRIOR_SHARE, LoRASettings, concept_phrase, concept_pictures, prior_pictures, train_lora)


def star_prompts(n: int, word: str):
    """n star prompts ("a red star in the top left", ...), "star" written as `word`."""
    prompts = shapes.evaluation_prompts(n, seed=777, shapes=("star",))
    return [{**p, "prompt": p["prompt"].replace("star", word)} for p in prompts]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="pipeline folder (default: the embedded model)")
    parser.add_argument("--ranks", type=int, nargs="+", default=[LoRASettings.rank])
    parser.add_argument("--steps", type=int, default=LoRASettings.steps)
    parser.add_argument("--batch", type=int, default=LoRASettings.batch)
    parser.add_argument("--lr", type=float, default=LoRASettings.lr)
    parser.add_argument("--alpha", type=float, default=None, help="default: alpha = rank")
    parser.add_argument("--token", default=None, help="train and prompt with this word instead of 'star'")
    parser.add_argument("--prior-share", type=float, default=CONCEPT_PRIOR_SHARE,
                        help="share of each batch from pictures the model already knows (0: stars alone)")
    parser.add_argument("--train-text-encoder", action=argparse.BooleanOptionalAction, default=None,
                        help="also adapt the text encoder's attention (default: the trainer's, yes except with --full-unet)")
    parser.add_argument("--full-unet", action="store_true",
                        help="train every U-Net weight instead of an adapter, same data and loop (the ceiling)")
    parser.add_argument("--min-snr-gamma", type=float, default=LoRASettings.min_snr_gamma,
                        help="min-SNR loss weighting (0: plain squared error)")
    parser.add_argument("--caption-dropout", type=float, default=LoRASettings.caption_dropout,
                        help="share of captions replaced by the empty prompt")
    parser.add_argument("--targets", nargs="+", default=list(LoRASettings.targets), help="U-Net layers to adapt")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu (the figures in the README), or cuda for a quick sweep")
    parser.add_argument("--quick", action="store_true", help="16 prompts x 2 seeds instead of 32 x 4")
    parser.add_argument("--class-word", default=CONCEPT_CLASS_WORDS["star"],
                        help="the class word after the star's word in captions and prompts, as DreamBooth's "
                             "'a [V] dog' (default: the trainer's, 'shape'; '' for none)")
    args = parser.parse_args()
    if args.full_unet and len(args.ranks) > 1:
        parser.error(f"--full-unet trains no adapter, so --ranks {' '.join(map(str, args.ranks))} has nothing to sweep")
    torch.set_num_threads(args.threads)

    n_prompts, seeds = (16, (1000, 1001)) if args.quick else (32, (1000, 1001, 1002, 1003))
    base_prompts = shapes.evaluation_prompts(2 * n_prompts)
    word = concept_phrase(args.token or "star", args.class_word)
    stars = star_prompts(n_prompts, word)
    pipe = load_pipeline(args.model, device=args.device)
    unet_parameters = sum(p.numel() for p in pipe.unet.parameters())
    before = prompt_adherence(pipe, base_prompts, seeds=seeds)
    star_before = prompt_adherence(pipe, stars, seeds=seeds)
    print(f"base model: star right {star_before['both_correct']:.1f}%, base prompts both right "
          f"{before['both_correct']:.1f}% ({len(stars)} star and {len(base_prompts)} base prompts x {len(seeds)} seeds)")
    rows = []
    for rank in args.ranks:
        settings = LoRASettings(rank=rank, alpha=float(args.alpha or rank), steps=args.steps, batch=args.batch,
                                lr=args.lr, token=args.token, prior_share=args.prior_share,
                                targets=tuple(args.targets), train_text_encoder=args.train_text_encoder,
                                full_unet=args.full_unet,
                                min_snr_gamma=args.min_snr_gamma, caption_dropout=args.caption_dropout)
        pipe = load_pipeline(args.model, device=args.device)
        images, captions = concept_pictures("star", settings.n_pictures, settings.seed, word)
        with tempfile.TemporaryDirectory() as out:
            started = time.time()
            prior = prior_pictures(settings.n_pictures, settings.seed) if settings.prior_share else None
            path = train_lora(pipe, images, captions, settings, out, progress=False, prior=prior)
            minutes = (time.time() - started) / 60
            size_mb = path.stat().st_size / 1e6
        lora_parameters = unet_parameters if args.full_unet else sum(
            p.numel() for model in (pipe.unet, pipe.text_encoder) for n, p in model.named_parameters() if "lora" in n)
        star = prompt_adherence(pipe, stars, seeds=seeds)
        after = prompt_adherence(pipe, base_prompts, seeds=seeds)
        label = "full U-Net" if args.full_unet else f"rank {rank}"
        rows.append((label, lora_parameters,
                     100 * lora_parameters / unet_parameters, size_mb, minutes,
                     star["both_correct"], after["both_correct"], after["both_correct"] - before["both_correct"]))
        print(f"{label}: trained in {minutes:.2f} min", flush=True)

    print(f"\n{args.steps} steps x batch {args.batch} ({args.prior_share:.0%} known pictures), lr {args.lr:g}, "
          f"min-SNR gamma {args.min_snr_gamma:g}, caption dropout {args.caption_dropout:g}, "
          f"trained: {'every U-Net weight' if args.full_unet else ' '.join(args.targets)}, "
          f"text encoder {'adapted' if settings.train_text_encoder else 'frozen'}, the star called '{word}', "
          f"{args.device}, {args.threads} threads; U-Net {unet_parameters / 1e6:.2f} M parameters")
    print("| trained | parameters | share of U-Net | file | train time | star right | base both right | change |")
    print("|---|---|---|---|---|---|---|---|")
    for label, count, share, size_mb, minutes, star_ok, base_ok, change in rows:
        print(f"| {label} | {count:,} | {share:.2f}% | {size_mb:.2f} MB | {minutes:.2f} min | {star_ok:.1f}% | "
              f"{base_ok:.1f}% | {change:+.1f} |")


if __name__ == "__main__":
    main()
