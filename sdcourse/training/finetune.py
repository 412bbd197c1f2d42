"""Teach a Stable Diffusion model a new subject, by one of four methods.

    python -m sdcourse.training.finetune --method textual-inversion --concept star --out runs/star-ti
    python -m sdcourse.training.finetune --method dreambooth --concept star --out runs/star-db
    python -m sdcourse.training.finetune --method lora --concept pink --out runs/pink-lora
    python -m sdcourse.training.finetune --method pivotal --images my-pictures --token "<cup>" \\
        --initializer cup --model path/to/sd15 --out runs/my-cup

The methods (each a small "what trains" object of methods.py, trained by the fine-tuning core):

- `lora`: rank-r adapters on the U-Net's and the text encoder's attention (as train_lora.py,
  which is its shortcut); the concept keeps its own word, followed by its class word ("star
  shape"). Writes pytorch_lora_weights.safetensors.
- `textual-inversion`: a new word ("<star>"), whose input embedding rows, started from
  `--initializer`'s, are the only thing that trains. The word is `--vectors` tokens (8 by
  default; "<star> <star>_1 ..." in the captions), each with a row of its own, as diffusers'
  `num_vectors`. Writes learned_embeds.safetensors.
- `dreambooth`: every U-Net weight, on pictures captioned with a word for the subject and the
  class word ("a red <sks> shape"), with prior preservation: pictures the model itself draws for
  the class prompt ("a red shape") are learned again at every step (`--no-prior`: without them).
  By default the word is a new one whose row trains beside the U-Net (as textual inversion's);
  `--no-learn-word` keeps the paper's rare word ("sks") as the text encoder has it.
  Writes out/unet, a diffusers U-Net folder, and the word's learned_embeds.safetensors; with
  `--train-text-encoder` every text-encoder weight trains instead of the word's row (at
  `--text-encoder-lr-scale` times the rate), written as out/text_encoder.
- `pivotal`: a new word's row and a LoRA adapter together, the new word followed by the class
  word ("<star> shape"), as LoRA's. Writes both files.

`--out/finetune.json` records the method, the settings, the minutes, and `word`: what to write
in a prompt where the subject goes. `load_finetuned(pipe, out)` loads any of them into a
diffusers pipeline and returns that word.

Data: `--concept star` (or `pink`) draws pictures of a concept the embedded model's U-Net has
never been told the word for, from the course's shapes generator; `--images FOLDER` reads your
own pictures with captions (metadata.jsonl or a .txt beside each, as train_lora.py), which must
hold the word (`--token`, and for DreamBooth the class word after it).

A run checkpoints into --out and resumes when run again; any changed setting, other data or
another base model is refused by name. --out may be new, empty, or a run of the same method;
another method's files there are refused, whatever --overwrite says.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see build_model.py

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from dataclasses import asdict, dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from ..arguments import choice, real_number, whole_number  # noqa: E402
from ..data import shapes  # noqa: E402
from ..dreambooth import class_pictures  # noqa: E402
from ..files import claim_folder, folder_fingerprint, read_json, refuse_overlap, write_json  # noqa: E402
from ..images import unit_to_uint8  # noqa: E402
from ..loading import load_pipeline, resolve_model  # noqa: E402
from ..lora import LORA_FILE  # noqa: E402
from ..textual_inversion import EMBEDDING_FILE, check_new_token, initializer_id, spell_out  # noqa: E402
from .common import save_grid, set_threads  # noqa: E402
from .finetune_core import WhatTrains, fine_tune  # noqa: E402
from .finetune_data import (CONCEPT_CLASS_WORDS, add_data_arguments, concept_phrase, concept_pictures,  # noqa: E402
                            folder_pictures, prior_pictures)
from .methods import DreamBooth, PivotalTuning, TextualInversion, UNetAdapter, UNetAndTextEncoderAdapters  # noqa: E402
from .train_lora import CONCEPT_PRIOR_SHARE, LoRASettings  # noqa: E402
from .trainer import PRECISIONS, CheckpointError  # noqa: E402

METHODS = ("lora", "textual-inversion", "dreambooth", "pivotal")
CHECKPOINT = "finetune_ckpt.pt"
RECORD = "finetune.json"
UNET_FILES = ("unet/config.json", "unet/diffusion_pytorch_model.safetensors")
TEXT_ENCODER_FILES = ("text_encoder/config.json", "text_encoder/model.safetensors")
# What each method writes into --out, beside its checkpoint, record and sample grid.
METHOD_FILES = {"lora": (LORA_FILE,), "textual-inversion": (EMBEDDING_FILE,),
                # text_encoder/ only with --train-text-encoder, the new word's row only with --learn-word
                "dreambooth": UNET_FILES + TEXT_ENCODER_FILES + (EMBEDDING_FILE,),
                "pivotal": (LORA_FILE, EMBEDDING_FILE)}
COMMON_FILES = (CHECKPOINT, RECORD, "samples.png")

# Each method's defaults where they differ from LoRASettings' (measured on the embedded model:
# README, "Teaching the model a subject").
DREAMBOOTH_PRIOR_WEIGHT = 0.5  # lambda, the class pictures' part of DreamBooth's loss
METHOD_DEFAULTS = {
    "lora": dict(prior_share=CONCEPT_PRIOR_SHARE),
    # A new word alone draws more stars without the class word after it ("<star>", not "<star> shape").
    "textual-inversion": dict(steps=500, batch=32, lr=5e-3, prior_share=0.0, class_word="", vectors=8),
    # The rare word's row learned too: 62% -> 89% star right, with the prior; its weight 0.5 (the
    # paper's is 1): 92%, the known prompts still within 2 points (README).
    "dreambooth": dict(steps=600, batch=16, lr=2e-4, prior_share=0.5, prior_loss_weight=DREAMBOOTH_PRIOR_WEIGHT,
                       learn_word=True),
    "pivotal": dict(prior_share=CONCEPT_PRIOR_SHARE),
}
# (DreamBooth's, when its word is learned, is written "<sks>": a word the vocabulary lacks.)
DEFAULT_TOKENS = {"textual-inversion": "<{concept}>", "pivotal": "<{concept}>", "dreambooth": "sks"}
# For a concept of the shapes world: the word a new row starts from, and the class the concept
# belongs to, as the third edition's captions name it ("shape"; a colour is covered by captions
# that say none).
CONCEPT_INITIALIZERS = {"star": "shape", "pink": "colour"}


@dataclass
class FinetuneSettings(LoRASettings):
    """A fine-tuning run: the LoRA settings (steps, batch, lr, prior_share, rank, ...) and the
    method's own. token: the new word (textual inversion, pivotal) or the rare word (DreamBooth;
    None: the concept's own word, for LoRA). initializer: the word a new row starts from.
    class_word: the subject's class ("shape"), after the subject's word in the captions and
    prompts (none: ""), and in DreamBooth's class prompts. train_text_encoder (None: the
    method's default) gives LoRA an adapter on the text encoder too, and DreamBooth the whole
    text encoder to train. class_pictures: how many pictures the base model draws for the class
    prompts (DreamBooth's prior). embedding_lr_scale: pivotal tuning's row learns this many
    times faster than its adapter. text_encoder_lr_scale: DreamBooth's text encoder, where it
    trains, learns at this many times the U-Net's rate. vectors: textual inversion's and pivotal
    tuning's new word is this many tokens, each with a row of its own. learn_word: DreamBooth's
    word is a new one (token), whose row starts from initializer's and trains beside the U-Net at
    embedding_lr_scale times its rate."""

    method: str = "lora"
    initializer: str = "shape"
    class_pictures: int = 200
    embedding_lr_scale: float = 5.0
    text_encoder_lr_scale: float = 0.1
    vectors: int = 1
    learn_word: bool = False

    def __post_init__(self):
        self.method = choice("method", self.method, METHODS)
        if self.train_text_encoder is None:
            self.train_text_encoder = self.method == "lora" and not self.full_unet
        super().__post_init__()
        self.class_pictures = whole_number("class_pictures", self.class_pictures, minimum=0)
        self.embedding_lr_scale = real_number("embedding_lr_scale", self.embedding_lr_scale, 0, low_open=True)
        self.text_encoder_lr_scale = real_number("text_encoder_lr_scale", self.text_encoder_lr_scale, 0, low_open=True)
        self.vectors = whole_number("vectors", self.vectors, minimum=1)
        if self.vectors > 1 and self.method not in ("textual-inversion", "pivotal") and not self.learn_word:
            raise ValueError(f"vectors={self.vectors} belongs to a new word (method='textual-inversion' or "
                             f"'pivotal', or 'dreambooth' with learn_word), got method={self.method!r}")
        if self.method != "lora" and self.full_unet:
            raise ValueError(f"full_unet belongs to method='lora', got method={self.method!r}")
        if self.method not in ("lora", "dreambooth") and self.train_text_encoder:
            raise ValueError(f"train_text_encoder belongs to method='lora' or 'dreambooth', got method={self.method!r}")
        if self.learn_word and self.method != "dreambooth":
            raise ValueError(f"learn_word belongs to method='dreambooth' (textual inversion and pivotal tuning "
                             f"always learn their word), got method={self.method!r}")
        if self.learn_word and self.train_text_encoder:
            raise ValueError("learn_word and train_text_encoder: DreamBooth trains either the new word's row or "
                             "the whole text encoder; choose one")
        if self.method in ("textual-inversion", "pivotal", "dreambooth") and not self.token:
            raise ValueError(f"method={self.method!r} needs a token: the new or rare word, such as '<star>' or 'sks'")
        if self.method == "dreambooth" and self.prior_share and not self.class_pictures:
            raise ValueError(f"prior preservation (prior_share={self.prior_share}) needs class pictures to learn "
                             "again, got class_pictures=0; give some (200 is usual here), or turn the prior off")


def word_of(settings: FinetuneSettings, concept: str | None) -> str:
    """What to write in a prompt where the subject goes."""
    return concept_phrase(settings.token or concept or "", settings.class_word)


def what_trains(settings: FinetuneSettings) -> WhatTrains:
    if settings.method == "textual-inversion":
        return TextualInversion(settings.token, settings.initializer, settings.vectors)
    if settings.method == "pivotal":
        return PivotalTuning(settings.token, settings.initializer, settings.rank, settings.alpha, settings.targets,
                             settings.seed, settings.embedding_lr_scale, settings.vectors)
    if settings.method == "dreambooth":
        word = TextualInversion(settings.token, settings.initializer, settings.vectors) if settings.learn_word else None
        return DreamBooth(settings.train_text_encoder, settings.text_encoder_lr_scale, word,
                          settings.embedding_lr_scale)
    adapters = UNetAndTextEncoderAdapters if settings.train_text_encoder else UNetAdapter
    return adapters(settings.rank, settings.alpha, settings.targets, settings.seed)


def check_words(pipe, settings: FinetuneSettings):
    """Refuse a new token the vocabulary already holds, or an initializer of several tokens,
    before anything is drawn or trained."""
    if settings.method in ("textual-inversion", "pivotal") or settings.learn_word:
        try:
            check_new_token(pipe.tokenizer, settings.token, settings.vectors)
        except ValueError as error:
            if not settings.learn_word:
                raise
            raise ValueError(f"{error} (DreamBooth learns a new word's row by default; --no-learn-word keeps "
                             f"{settings.token!r} as the text encoder has it)") from None
        initializer_id(pipe.tokenizer, settings.initializer)


def class_prompts(settings: FinetuneSettings, concept: str | None) -> list[str]:
    """DreamBooth's class prompts: "a red shape" for each known colour (a shape concept), "a
    circle" for each known shape (a colour concept), or "a {class_word}" for your own pictures."""
    if concept in shapes.HELD_OUT_SHAPES:
        return [f"{shapes.article(colour)} {colour} {settings.class_word}" for colour in shapes.COLOURS]
    if concept:
        return [" ".join(w for w in ("a", settings.class_word, shape) if w) for shape in shapes.BASE_SHAPES]
    return [f"a {settings.class_word}"]


def training_data(pipe, settings: FinetuneSettings, concept: str | None, images_folder, resolution: int):
    """(images, captions, prior or None, data record) for the method."""
    word = word_of(settings, concept)
    if concept:
        images, captions = concept_pictures(concept, settings.n_pictures, settings.seed,
                                            word if word != concept else None)
        record = {"data": f"concept {concept}"}
    else:
        images, captions = folder_pictures(images_folder, resolution)
        missing = [c for c in captions if word not in c]
        if missing:
            raise ValueError(f"--images: {len(missing)} of {len(captions)} captions lack {word!r}, such as "
                             f"{missing[0]!r}; write it where the subject goes")
        record = {"data": str(Path(images_folder).resolve()), "n_images": len(images)}
    prior = None
    if settings.prior_share:
        if settings.method == "dreambooth":
            prior = class_pictures(pipe, class_prompts(settings, concept), settings.class_pictures, settings.seed + 1)
        elif concept:
            prior = prior_pictures(settings.n_pictures, settings.seed)
        else:
            raise ValueError(f"prior_share={settings.prior_share} needs pictures of what the model already knows; "
                             "the course has them for --concept only (use --no-prior with --images)")
    return images, captions, prior, record


def load_finetuned(pipe, out) -> str:
    """Load what `finetune` wrote into `out` into the diffusers pipeline `pipe` (in place): the
    LoRA adapter, the learned word, or the fine-tuned U-Net. Returns the word to prompt with."""
    from diffusers import UNet2DConditionModel

    out = Path(out)
    record = read_json(out / RECORD, "fine-tuning record")
    method = choice("method in finetune.json", record.get("method"), METHODS)
    if method in ("textual-inversion", "pivotal") or (out / EMBEDDING_FILE).is_file():  # DreamBooth: --learn-word
        pipe.load_textual_inversion(str(out / EMBEDDING_FILE))
    if method in ("lora", "pivotal"):
        pipe.load_lora_weights(str(out), weight_name=LORA_FILE)
    if method == "dreambooth":
        pipe.unet = UNet2DConditionModel.from_pretrained(str(out / "unet")).to(pipe.device, pipe.unet.dtype)
        if (out / "text_encoder").is_dir():  # trained too (--train-text-encoder)
            from transformers import CLIPTextModel

            pipe.text_encoder = CLIPTextModel.from_pretrained(str(out / "text_encoder")).to(
                pipe.device, pipe.text_encoder.dtype)
    return record["word"]


def claim_out(out: Path, method: str, overwrite: bool) -> Path:
    """--out may hold this method's run (resumed); another method's files are refused by name."""
    record = out / RECORD
    if record.exists():
        other = read_json(record, "fine-tuning record").get("method")
        if other != method:
            theirs = [f for f in METHOD_FILES.get(other, ()) if (out / f).exists()]
            raise FileExistsError(f"--out {out} holds a {other} run ({', '.join([RECORD, *theirs])}); a {method} run "
                                  "would mix its files with them: give another --out")
    for other, files in METHOD_FILES.items():
        theirs = [f for f in files if (out / f).exists() and f not in METHOD_FILES[method]]
        if other != method and theirs:
            raise FileExistsError(f"--out {out} holds {', '.join(theirs)}, written by a {other} run; a {method} run "
                                  "would mix its files with them: give another --out")
    return claim_folder(out, "--out", owned=(*COMMON_FILES, *METHOD_FILES[method]), overwrite=overwrite)


def sample_prompts(word: str, concept: str | None, captions: list[str]) -> list[str]:
    if concept in shapes.HELD_OUT_SHAPES:
        return [f"a {colour} {word}" for colour in ("red", "blue", "green", "yellow")]
    if concept:
        return [f"a {word} {shape}" for shape in shapes.BASE_SHAPES] + [f"a {word} circle on a black background"]
    return captions[:4]


def parse(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--method", required=True, choices=METHODS)
    add_data_arguments(parser, "a shape or colour the embedded model has no word for")
    parser.add_argument("--out", required=True, help="folder for what trains, its checkpoint and sample grid")
    parser.add_argument("--overwrite", action="store_true",
                        help="write into --out even if it holds files no fine-tuning run wrote")
    parser.add_argument("--token", default=None,
                        help="the new word (textual inversion, pivotal; default '<CONCEPT>') or the rare word "
                             "(DreamBooth; default 'sks')")
    parser.add_argument("--initializer", default=None,
                        help="the word a new row starts from (default: 'shape' for star, 'colour' for pink)")
    parser.add_argument("--class-word", default=None,
                        help="the subject's class, written after its word, as in 'a sks shape' (default: "
                             "'shape' for star, except with textual inversion; none for pink)")
    prior = parser.add_mutually_exclusive_group()
    prior.add_argument("--prior", dest="prior", action="store_true", default=None,
                       help="learn pictures of what the model knows too (default for lora, pivotal, dreambooth)")
    prior.add_argument("--no-prior", dest="prior", action="store_false", help="the new pictures alone")
    parser.add_argument("--prior-share", type=float, default=None, help="share of each batch from the prior")
    parser.add_argument("--prior-loss-weight", type=float, default=None,
                        help=f"DreamBooth's lambda (default {DREAMBOOTH_PRIOR_WEIGHT}; the paper's is 1)")
    parser.add_argument("--class-pictures", type=int, default=None, help="DreamBooth: class pictures to draw (200)")
    for name, kind in (("steps", int), ("batch", int), ("lr", float), ("rank", int), ("alpha", float),
                       ("n-pictures", int), ("min-snr-gamma", float), ("caption-dropout", float),
                       ("embedding-lr-scale", float), ("text-encoder-lr-scale", float), ("seed", int),
                       ("checkpoint-every", int)):
        parser.add_argument(f"--{name}", type=kind, default=None)
    parser.add_argument("--learn-word", action=argparse.BooleanOptionalAction, default=None,
                        help="DreamBooth: the word is a new one ('<sks>'), whose row trains beside the U-Net "
                             "(the default); --no-learn-word: the rare word 'sks' as it is")
    parser.add_argument("--vectors", type=int, default=None,
                        help="textual inversion, pivotal, DreamBooth with --learn-word: rows the new word learns "
                             "(default 8, 1 and 1)")
    parser.add_argument("--targets", nargs="+", default=None, help="LoRA: the U-Net's Linear layers to adapt")
    parser.add_argument("--train-text-encoder", action=argparse.BooleanOptionalAction, default=None,
                        help="LoRA: adapt the text encoder too (default: yes, except with --full-unet); "
                             "DreamBooth: train every text-encoder weight too")
    parser.add_argument("--mixed-precision", choices=PRECISIONS, default="no", help="bf16 or fp16 on GPUs")
    parser.add_argument("--device", default=None, help="cpu, cuda, mps (default: a GPU if there is one)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)

    chosen = {}
    if args.concept:
        chosen.update(initializer=CONCEPT_INITIALIZERS[args.concept], class_word=CONCEPT_CLASS_WORDS[args.concept])
    elif args.method in ("textual-inversion", "pivotal") and args.initializer is None:
        parser.error(f"--method {args.method} with --images needs --initializer: a word near your subject "
                     "(one token), whose row the new word starts from")
    elif args.method == "dreambooth" and args.class_word is None:
        parser.error("--method dreambooth with --images needs --class-word: your subject's class, such as 'cup'")
    chosen.update(METHOD_DEFAULTS[args.method])
    for name in ("steps", "batch", "lr", "rank", "alpha", "n_pictures", "min_snr_gamma", "caption_dropout",
                 "embedding_lr_scale", "text_encoder_lr_scale", "seed", "checkpoint_every", "vectors", "initializer",
                 "class_word", "class_pictures", "prior_share", "prior_loss_weight", "learn_word"):
        if getattr(args, name) is not None:
            chosen[name] = getattr(args, name)
    if args.targets is not None:
        chosen["targets"] = tuple(args.targets)
    if args.prior is False:
        if args.prior_share:
            parser.error(f"--no-prior with --prior-share {args.prior_share}: choose one")
        chosen.update(prior_share=0.0, prior_loss_weight=None)
    elif args.images and args.prior is None:
        chosen.update(prior_share=0.0, prior_loss_weight=None)  # no pictures of what your model knows
    if args.method == "dreambooth" and args.train_text_encoder and args.learn_word is None:
        chosen["learn_word"] = False  # the whole text encoder trains instead of one row
    if args.method == "dreambooth" and chosen.get("prior_share") and chosen.get("prior_loss_weight") is None:
        chosen["prior_loss_weight"] = DREAMBOOTH_PRIOR_WEIGHT
    token = args.token
    if token is None and args.method in DEFAULT_TOKENS:
        if args.images:
            parser.error(f"--method {args.method} with --images needs --token: the word your captions use")
        token = DEFAULT_TOKENS[args.method].format(concept=args.concept)
        if chosen.get("learn_word"):
            token = f"<{token}>"  # a word the vocabulary lacks: "<sks>"
    try:
        settings = FinetuneSettings(method=args.method, token=token, train_text_encoder=args.train_text_encoder,
                                    mixed_precision=args.mixed_precision, **chosen)
    except ValueError as error:
        parser.error(str(error))
    return parser, args, settings


def main(argv=None):
    parser, args, settings = parse(argv)
    model_folder = resolve_model(args.model)
    out = Path(args.out)
    try:
        refuse_overlap(out, model_folder, "--out", "--model")
        claim_out(out, settings.method, args.overwrite)
    except (ValueError, FileExistsError) as error:
        parser.error(str(error))
    set_threads(args.threads)
    started = time.time()
    from accelerate import PartialState

    process = PartialState()  # this process, one of several under `accelerate launch`
    pipe = load_pipeline(args.model, device=args.device or str(process.device))
    pipe.set_progress_bar_config(disable=True)
    try:
        check_words(pipe, settings)
    except ValueError as error:
        parser.error(str(error))
    resolution = pipe.unet.config.sample_size * pipe.vae_scale_factor
    images, captions, prior, record = training_data(pipe, settings, args.concept, args.images, resolution)
    if settings.vectors > 1:  # "<star>" is read as its tokens "<star> <star>_1 ..."
        captions = [spell_out(caption, settings.token, settings.vectors) for caption in captions]
    record.update(model=str(model_folder.resolve()), model_sha256=folder_fingerprint(model_folder))
    fine_tune(pipe, what_trains(settings), images, captions, settings, out, CHECKPOINT, prior=prior,
                     record=record, progress=not args.quiet)
    if not process.is_main_process:
        return
    word = word_of(settings, args.concept)
    prompts = sample_prompts(word, args.concept, captions)
    pictures = pipe(prompts, num_inference_steps=25, guidance_scale=7.5, output_type="np",
                    generator=torch.Generator().manual_seed(100)).images
    save_grid(unit_to_uint8(pictures), out / "samples.png", titles=prompts, columns=min(8, len(prompts)))
    minutes = (time.time() - started) / 60
    write_json(out / RECORD, json.loads(json.dumps(
        {"method": settings.method, "word": word, "minutes": round(minutes, 2), "pictures": len(images),
         "prior_pictures": 0 if prior is None else len(prior[0]), "settings": asdict(settings), **record},
        default=str)))
    written = [f for f in METHOD_FILES[settings.method] if (out / f).exists()]
    size = sum((out / f).stat().st_size for f in written)
    print(f"{', '.join(str(out / f) for f in written)} written ({size / 1e3:.1f} KB) in {minutes:.1f} min; "
          f"prompt with {word!r}; samples in {out / 'samples.png'}")


if __name__ == "__main__":
    try:
        main()
    except (CheckpointError, ValueError, FileExistsError) as error:
        raise SystemExit(f"error: {error}") from None
