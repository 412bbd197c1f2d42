"""Try a caption rule (`shapes.CaptionRule`) cheaply, by continuing a finished model.

    python -m sdcourse.training.continue_rule clip --clip-star never --out runs/derisk/clip-never
    python -m sdcourse.training.continue_rule unet --text-encoder runs/derisk/clip-never \\
        --run runs/derisk/try1 --empty-star-share 0.02

A full build takes hours; a try of a rule takes minutes:

1. `clip`: the second edition's finished CLIP (build-stages/second-edition/clip_words) trains
   on for a few hundred steps of its words phase (`teach_words`' loop, both halves, contrast
   pairs too), on pictures drawn under the rule, so that its text encoder learns the class word
   "shape". `--clip-star never`: the CLIP never reads "star" or "pink" (stars are "shape" to it,
   as to the U-Net). `--clip-star said`: every second caption names them by their own word, as
   a real CLIP knows words its U-Net cannot draw. Writes the CLIPModel folder.
2. `unet`: a finished U-Net (`--source`, the shipped model by default; the tries in
   build-stages/third-edition-tries.md continued the second edition, `git archive 96ef7dd
   sdcourse/assets/tiny-sd`) trains on for `--steps` steps with the build's recipe (train_unet.py),
   on pictures drawn under the rule, read through the new text encoder, plus
   `--empty-star-share` of one-star pictures under the empty caption. Writes a pipeline folder:
   the shipped VAE and tokenizer, the new text encoder, the new U-Net.

Both resume from the checkpoints in their folders; the data is cached there too.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see build_model.py

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
from transformers import CLIPModel, CLIPTextModel  # noqa: E402

from ..arguments import probability, real_number, whole_number  # noqa: E402
from ..data import shapes  # noqa: E402
from ..files import claim_folder, refuse_overlap, write_json  # noqa: E402
from ..loading import load_pipeline  # noqa: E402
from . import config as config_mod  # noqa: E402
from .build_model import text_half  # noqa: E402
from .common import seed_everything, set_threads  # noqa: E402
from .datasets import build_contrast_set, build_rule_set  # noqa: E402
from .export import claim_pipeline_folder, save_pipeline  # noqa: E402
from .train_clip import train_jointly, word_sensitivity  # noqa: E402
from .train_unet import load_or_cache_latents, save_samples, train_unet  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SECOND_EDITION_CLIP = ROOT / "build-stages" / "second-edition" / "clip_words"
CLIP_STAR_CHOICES = ("never", "said")


def rules(class_share: float, colourless_share: float, clip_star: str = "never", held_out_weight: float = 1.0,
          known_weights=(1.0, 1.0, 1.0)):
    """The U-Net's rule, and the rule of every second CLIP caption (None: the same rule)."""
    rule = shapes.CaptionRule(class_share, colourless_share, held_out_weight=held_out_weight,
                              known_weights=tuple(known_weights))
    said = (shapes.CaptionRule(class_share, colourless_share, concept_words=True, held_out_weight=held_out_weight)
            if clip_star == "said" else None)
    return rule, said


CLIP_RUN_FILES = ("clip_set.npz", "contrast_set.npz", "clip_ckpt.pt", "continue_clip.json")


def continue_clip(args):
    out = claim_folder(args.out, "--out", owned=CLIP_RUN_FILES, overwrite=args.overwrite)
    refuse_overlap(out, args.source, "--out", "--source")
    out.mkdir(parents=True, exist_ok=True)
    cfg = config_mod.full_config(n_train=args.pictures, threads=args.threads, sample_every=0, checkpoint_every=100,
                                 clip_contrast_set=args.contrast_pairs, class_share=args.class_share,
                                 colourless_share=args.colourless_share, clip_concept_words=args.clip_star == "said")
    rule, said = rules(args.class_share, args.colourless_share, args.clip_star)
    data = build_rule_set(cfg.n_train, cfg.captions_per_image, cfg.seed, rule, cfg.two_object_prob, concept_rule=said,
                          cache=out / "clip_set.npz")
    contrast = build_contrast_set(cfg.clip_contrast_set, cfg.seed, cache=out / "contrast_set.npz")
    model = CLIPModel.from_pretrained(str(args.source), dtype=torch.float32).requires_grad_(True)
    started = time.time()
    model = train_jointly(cfg, model, data, contrast, args.steps, args.lr, out / "clip_ckpt.pt", "CLIP (rule)",
                          seed_tag=21)
    model.requires_grad_(False).eval().save_pretrained(str(out / "clip"))
    text_half(model).save_pretrained(str(out / "text_encoder"))
    log = {"rule": vars(args), "minutes": round((time.time() - started) / 60, 1),
           "word_sensitivity": word_sensitivity(text_half(model))}
    write_json(out / "continue_clip.json", json.loads(json.dumps(log, default=str)))
    print(json.dumps(log, default=str))


def continue_unet(args):
    run_dir = Path(args.run)
    out = Path(args.out) if args.out else run_dir / "tiny-sd"
    refuse_overlap(out, args.source, "--out", "--source")
    refuse_overlap(run_dir, args.source, "--run", "--source")
    claim_pipeline_folder(out, run_dir, args.overwrite)
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg = config_mod.full_config(n_train=args.pictures, threads=args.threads, unet_steps=args.steps, sample_every=0,
                                 unet_ema_decay=args.ema_decay, class_share=args.class_share,
                                 colourless_share=args.colourless_share,
                                 text_encoder_lr_scale=args.text_encoder_lr_scale)
    set_threads(cfg.threads)
    pipe = load_pipeline(args.source)
    if args.text_encoder:
        pipe.text_encoder = CLIPTextModel.from_pretrained(str(Path(args.text_encoder) / "text_encoder"),
                                                          dtype=torch.float32).eval()
    rule, _ = rules(args.class_share, args.colourless_share, held_out_weight=args.held_out_weight,
                    known_weights=args.known_weights)
    n_empty = round(args.empty_star_share * cfg.n_train)
    data = build_rule_set(cfg.n_train, cfg.captions_per_image, cfg.seed + 100, rule, cfg.two_object_prob,
                          n_empty_stars=n_empty, cache=run_dir / "train_set.npz")
    latents = load_or_cache_latents(pipe.vae, data["images"], run_dir / "latents.npz")
    started = time.time()
    seed_everything(cfg.seed + 3)
    unet, text_encoder = train_unet(cfg, latents, data["token_ids"], pipe.text_encoder, pipe.vae, pipe.tokenizer,
                      pipe.vae.config.scaling_factor, run_dir, init_unet=pipe.unet,
                      record={"from": str(Path(args.source).resolve()),
                              "rule": [args.class_share, args.colourless_share, args.held_out_weight,
                                       list(args.known_weights)],
                              "empty_stars": n_empty,
                              "text_encoder": str(args.text_encoder)})
    save_pipeline(unet, pipe.vae, text_encoder, pipe.tokenizer, out, run_dir)
    save_samples(unet, pipe.vae, text_encoder, pipe.tokenizer, run_dir / "samples" / "final.png")
    log = {"settings": vars(args), "empty_star_pictures": n_empty, "minutes": round((time.time() - started) / 60, 1)}
    write_json(run_dir / "continue_unet.json", json.loads(json.dumps(log, default=str)))
    print(f"pipeline written to {out}: {json.dumps(log, default=str)}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="stage", required=True)
    for name in ("clip", "unet"):
        p = sub.add_parser(name)
        p.add_argument("--class-share", type=float, default=0.3, help="share of known-shape mentions saying 'shape'")
        p.add_argument("--colourless-share", type=float, default=0.0, help="share of captions without a colour")
        p.add_argument("--pictures", type=int, default=8000)
        p.add_argument("--threads", type=int, default=2)
        p.add_argument("--overwrite", action="store_true", help="write over files in --out that are not this command's")
    clip = sub.choices["clip"]
    clip.add_argument("--clip-star", choices=CLIP_STAR_CHOICES, default="never")
    clip.add_argument("--source", default=str(SECOND_EDITION_CLIP), help="the CLIPModel folder to continue")
    clip.add_argument("--steps", type=int, default=500)
    clip.add_argument("--lr", type=float, default=3e-4)
    clip.add_argument("--contrast-pairs", type=int, default=2000, help="contrast pairs drawn, once")
    clip.add_argument("--out", required=True)
    unet = sub.choices["unet"]
    unet.add_argument("--source", default=str(ROOT / "sdcourse" / "assets" / "tiny-sd"))
    unet.add_argument("--text-encoder", default=None, help="a `clip` stage's folder (default: the source's)")
    unet.add_argument("--empty-star-share", type=float, default=0.0,
                      help="one-star pictures under the empty caption, as a share of --pictures")
    unet.add_argument("--held-out-weight", type=float, default=1.0,
                      help="stars are called 'shape' this many times as often as each known shape")
    unet.add_argument("--known-weights", type=float, nargs=3, default=(1.0, 1.0, 1.0),
                      metavar=("CIRCLE", "SQUARE", "TRIANGLE"),
                      help="each known shape is called 'shape' this many times --class-share of the time")
    unet.add_argument("--steps", type=int, default=1000)
    unet.add_argument("--ema-decay", type=float, default=0.995)
    unet.add_argument("--text-encoder-lr-scale", type=float, default=config_mod.BuildConfig.text_encoder_lr_scale,
                      help="the text encoder trains along at this times the U-Net's learning rate (0: frozen)")
    unet.add_argument("--run", required=True)
    unet.add_argument("--out", default=None, help="pipeline folder (default: <run>/tiny-sd)")
    args = parser.parse_args(argv)
    try:
        probability("--class-share", args.class_share)
        probability("--colourless-share", args.colourless_share, below_one=True)
        whole_number("--pictures", args.pictures, minimum=1)
        whole_number("--steps", args.steps, minimum=1)
        if args.stage == "unet":
            probability("--empty-star-share", args.empty_star_share)
            real_number("--held-out-weight", args.held_out_weight, 0, low_open=True,
                        meaning="times as often as each known shape; 1: equally often")
            shapes.CaptionRule(args.class_share, known_weights=tuple(args.known_weights))  # names a bad weight
            real_number("--text-encoder-lr-scale", args.text_encoder_lr_scale, 0,
                        meaning="times the U-Net's learning rate; 0: the text encoder stays frozen")
    except ValueError as error:
        parser.error(str(error))
    set_threads(args.threads)
    (continue_clip if args.stage == "clip" else continue_unet)(args)


if __name__ == "__main__":
    try:
        main()
    except (ValueError, FileExistsError) as error:  # a message to act on; the traceback would not help
        raise SystemExit(f"error: {error}") from None
