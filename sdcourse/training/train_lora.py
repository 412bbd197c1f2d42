"""Teach a Stable Diffusion model a new concept with a LoRA adapter (peft + diffusers).

    python -m sdcourse.training.train_lora --concept star --out runs/star-lora
    python -m sdcourse.training.train_lora --images my-pictures --model path/to/sd15 --out runs/my-lora

The U-Net gets a rank-r adapter on its attention projections (peft's `add_adapter`, as
diffusers' own LoRA scripts do), and so do the text encoder's attention projections (diffusers'
DreamBooth LoRA script has the same switch, `--train-text-encoder`), so that the encoding of the
concept's word can move away from the known words it resembles; only the adapters train. Everything
else (the VAE, the U-Net's and the text encoder's own weights) stays frozen. `--no-train-text-encoder`
adapts the U-Net alone. `--min-snr-gamma 5` and `--caption-dropout 0.1` train the adapter with two
parts of the embedded model's own recipe (the loss weighted towards the noisy timesteps; some
captions left empty); they are off by default, as in diffusers' LoRA scripts. The defaults were
chosen by measurement on the embedded model (README, "What it learns").
The result is `--out/pytorch_lora_weights.safetensors`, which `pipe.load_lora_weights(out)`
loads (both adapters). `--full-unet` trains every U-Net weight instead, with the same data and
loop, and writes `--out/unet`: the ceiling an adapter is measured against.

Data:
- `--concept star`: pictures of the star, which the embedded model drew only as one of the
  things "shape" names, with captions such as "a small red star shape in the top left", from the
  course's shapes generator: the class word follows the concept's word, as DreamBooth writes "a
  sks dog" (`--class-word ''`: "a small red star in the top left"). `--concept pink`: shapes in a
  colour no caption ever named. `--token sks` writes a rare word in place of the concept's (the
  DreamBooth idea: a new word for a new thing).
- `--images FOLDER`: your own pictures, each with a caption: a `metadata.jsonl` with lines
  {"file_name": "cat1.png", "text": "a photo of sks cat"}, or a `.txt` beside each picture.
  They are resized and centre-cropped to the model's resolution (64 px for the embedded
  model, 512 for SD 1.x).

Each way of training (an adapter on the U-Net, on the text encoder too, every U-Net weight)
is a small object of methods.py that the flags choose (`what_trains`), trained by the
fine-tuning core (finetune_core.py) on the course's training loop (trainer.py): tqdm progress,
a checkpoint every `--checkpoint-every` steps in --out, and a resumed run continues where the
last one stopped.
Only the settings in trainer.MAY_CHANGE_ON_RESUME (the step count among them) may differ;
any other change is refused by name, and so is other data (the checkpoint keeps a SHA-256 of
the pictures and captions) or another base model (its folder and a SHA-256 of its weights and
configs). --out may be new, empty, or a folder of this command's (a run to resume); it may not
be --model or hold it or lie in it; other files in it are refused unless --overwrite. On GPUs, the same script under accelerate:

    accelerate launch -m sdcourse.training.train_lora --images my-pictures --model sd15 \\
        --out runs/my-lora --mixed-precision fp16 --batch 4 --lr 1e-4
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see build_model.py

import argparse  # noqa: E402
import time  # noqa: E402
from dataclasses import asdict, dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from ..arguments import flag, real_number, whole_number  # noqa: E402
from ..data import shapes  # noqa: E402
from ..files import claim_folder, folder_fingerprint, refuse_overlap, write_json  # noqa: E402
from ..lora import DEFAULT_TARGETS, LORA_FILE, target_names  # noqa: E402
from ..images import unit_to_uint8  # noqa: E402
from ..loading import load_pipeline, resolve_model  # noqa: E402
from .common import save_grid, set_threads  # noqa: E402
from .finetune_core import FineTuneSettings, WhatTrains, fine_tune  # noqa: E402
from .finetune_data import (CONCEPT_CLASS_WORDS, CONCEPTS, add_data_arguments, concept_phrase,  # noqa: E402, F401
                            concept_pictures, folder_pictures, prior_pictures)
from .methods import FullUNet, UNetAdapter, UNetAndTextEncoderAdapters  # noqa: E402
from .trainer import PRECISIONS, CheckpointError  # noqa: E402

CHECKPOINT = "lora_ckpt.pt"
# Every file a run writes into --out (a folder holding only these is a run to resume).
RUN_FILES = (CHECKPOINT, LORA_FILE, "unet/config.json", "unet/diffusion_pytorch_model.safetensors", "samples.png",
             "train_lora.json")
CONCEPT_PRIOR_SHARE = 0.25  # --concept's default prior_share (see FineTuneSettings; README, "What it learns")


@dataclass
class LoRASettings(FineTuneSettings):
    """What a LoRA run is made of: the shared fine-tuning settings (steps, batch, lr, prior_share,
    min_snr_gamma, caption_dropout, seed, ...), the adapter's and the data's. The defaults teach
    the embedded model "star" on a laptop CPU. prior_share > 0 needs pictures of what the model
    knows, so it goes with a concept only."""

    lr: float = 2e-3  # the tiny model's adapters; 1e-4 is usual for SD 1.x
    rank: int = 4
    alpha: float = 4.0
    targets: tuple = DEFAULT_TARGETS
    n_pictures: int = 256  # --concept only: how many pictures to draw
    token: str | None = None  # --concept only: the word written instead of the concept's name
    # --concept only: the concept's class word, written after its word in the captions ("a red star
    # shape"; finetune_data.CONCEPT_CLASS_WORDS). "": none.
    class_word: str = ""
    # Also adapt the text encoder's attention projections (methods.TEXT_ENCODER_TARGETS), same rank
    # and alpha, so that the new word's encoding can move away from the known words it resembles.
    # None: yes, except with full_unet.
    train_text_encoder: bool | None = None
    # Train every weight of the U-Net instead of an adapter (a full fine-tune): the ceiling an
    # adapter is measured against (benchmarks/lora_star.py --full-unet). rank, alpha and targets
    # are then unused, and out/unet holds the whole U-Net, which is what the pipeline loads.
    full_unet: bool = False

    def __post_init__(self):
        if self.train_text_encoder is None:
            self.train_text_encoder = not self.full_unet
        super().__post_init__()
        self.rank = whole_number("rank", self.rank, minimum=1)
        self.alpha = real_number("alpha", self.alpha, 0, low_open=True, meaning="the update is scaled by alpha / rank")
        self.targets = target_names(self.targets)
        self.n_pictures = whole_number("n_pictures", self.n_pictures, minimum=1)
        if self.token is not None and (not self.token.strip() or " " in self.token.strip()):
            raise ValueError(f"token={self.token!r}; it must be one word, such as 'sks'")
        if not isinstance(self.class_word, str) or self.class_word != self.class_word.strip():
            raise ValueError(f"class_word={self.class_word!r}; it must be words, such as 'shape' or 'dog' ('' for none)")
        flag("train_text_encoder", self.train_text_encoder)
        flag("full_unet", self.full_unet)
        if self.full_unet and self.train_text_encoder:
            raise ValueError("full_unet=True with train_text_encoder=True: a full fine-tune trains the U-Net alone; "
                             "switch one of them off (train_text_encoder=None chooses for you)")


def what_trains(settings: LoRASettings) -> WhatTrains:
    """The way of fine-tuning that the settings' switches choose (see methods.py)."""
    if settings.full_unet:
        return FullUNet()
    adapters = UNetAndTextEncoderAdapters if settings.train_text_encoder else UNetAdapter
    return adapters(settings.rank, settings.alpha, settings.targets, settings.seed)


def train_lora(pipe, images: np.ndarray, captions: list[str], settings: LoRASettings, out, progress: bool = True,
               data_record: dict | None = None, prior: tuple | None = None):
    """Train a LoRA adapter on `pipe.unet` (and, with settings.train_text_encoder, on
    `pipe.text_encoder`), in place, and write it to out/pytorch_lora_weights.safetensors.
    With settings.full_unet, train the U-Net's own weights instead and write out/unet.

    images: uint8 (N, H, W, 3) at the model's resolution; captions: one per picture.
    data_record: what describes the data (a resumed run must use the same). Returns the path.
    prior: (images, captions) the model already knows (`prior_pictures`); settings.prior_share of
        every batch is drawn from them. Needed when settings.prior_share > 0.
    """
    return fine_tune(pipe, what_trains(settings), images, captions, settings, out, CHECKPOINT, prior=prior,
                     record=data_record, progress=progress)


def sample_grid(pipe, prompts, path, seed: int = 100):
    """One picture per prompt (25 DDIM steps, guidance 7.5), saved as a grid with titles."""
    images = pipe(prompts, num_inference_steps=25, guidance_scale=7.5, output_type="np",
                  generator=torch.Generator().manual_seed(seed)).images
    save_grid(unit_to_uint8(images), path, titles=prompts, columns=min(8, len(prompts)))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_data_arguments(parser, "a shape or colour the embedded model never learned")
    parser.add_argument("--out", required=True, help="folder for the adapter, its checkpoint and sample grids")
    parser.add_argument("--overwrite", action="store_true",
                        help="write into --out even if it holds files this command did not write")
    defaults = LoRASettings()
    parser.add_argument("--rank", type=int, default=defaults.rank)
    parser.add_argument("--alpha", type=float, default=defaults.alpha, help="the update is scaled by alpha / rank")
    parser.add_argument("--steps", type=int, default=defaults.steps)
    parser.add_argument("--batch", type=int, default=defaults.batch)
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--targets", nargs="+", default=list(defaults.targets), help="Linear layers to adapt")
    parser.add_argument("--n-pictures", type=int, default=defaults.n_pictures, help="--concept: pictures to draw")
    parser.add_argument("--token", default=None, help="--concept: a rare word to use instead of the concept's name")
    parser.add_argument("--class-word", default=None,
                        help="--concept: the class word written after the concept's word, as in 'a red star shape' "
                             "(default: 'shape' for star, none for pink; '' for none)")
    parser.add_argument("--prior-share", type=float, default=None,
                        help=f"--concept: share of each batch from pictures the model already knows "
                             f"(default {CONCEPT_PRIOR_SHARE}; 0 for the new pictures alone)")
    parser.add_argument("--train-text-encoder", action=argparse.BooleanOptionalAction, default=None,
                        help="also adapt the text encoder's attention projections, same rank (default: yes, "
                             "except with --full-unet)")
    parser.add_argument("--full-unet", action="store_true",
                        help="train every U-Net weight instead of an adapter (the ceiling a LoRA is measured against); "
                             "writes --out/unet")
    parser.add_argument("--min-snr-gamma", type=float, default=defaults.min_snr_gamma,
                        help="weight each timestep's loss by min(SNR, gamma) / SNR (0: plain squared error)")
    parser.add_argument("--caption-dropout", type=float, default=defaults.caption_dropout,
                        help="share of captions replaced by the empty prompt (0: none)")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--checkpoint-every", type=int, default=defaults.checkpoint_every)
    parser.add_argument("--mixed-precision", choices=PRECISIONS, default="no", help="bf16 or fp16 on GPUs")
    parser.add_argument("--device", default=None, help="cpu, cuda, mps (default: accelerate's choice, a GPU if there is one)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.token is not None and args.images:
        parser.error("--token goes with --concept; with --images, write the rare word in your captions")
    if args.class_word is not None and args.images:
        parser.error("--class-word goes with --concept; with --images, write the class word in your captions")
    class_word = args.class_word if args.class_word is not None else CONCEPT_CLASS_WORDS.get(args.concept, "")
    if args.prior_share and args.images:
        parser.error(f"--prior-share {args.prior_share} goes with --concept: the course has no pictures of what "
                     "your model already knows to mix in")
    prior_share = args.prior_share if args.prior_share is not None else (CONCEPT_PRIOR_SHARE if args.concept else 0.0)
    try:
        settings = LoRASettings(rank=args.rank, alpha=args.alpha, steps=args.steps, batch=args.batch, lr=args.lr,
                                targets=tuple(args.targets), n_pictures=args.n_pictures, token=args.token,
                                class_word=class_word,
                                seed=args.seed, checkpoint_every=args.checkpoint_every,
                                mixed_precision=args.mixed_precision, prior_share=prior_share,
                                train_text_encoder=args.train_text_encoder, full_unet=args.full_unet,
                                min_snr_gamma=args.min_snr_gamma,
                                caption_dropout=args.caption_dropout)
    except ValueError as error:
        parser.error(str(error))
    model_folder = resolve_model(args.model)
    out = Path(args.out)
    try:
        refuse_overlap(out, model_folder, "--out", "--model")
        claim_folder(out, "--out", owned=RUN_FILES, overwrite=args.overwrite)
    except (ValueError, FileExistsError) as error:
        parser.error(str(error))
    set_threads(args.threads)
    started = time.time()
    from accelerate import PartialState

    process = PartialState()  # this process, one of several under `accelerate launch`
    device = args.device or str(process.device)
    pipe = load_pipeline(args.model, device=device)
    pipe.set_progress_bar_config(disable=True)
    resolution = pipe.unet.config.sample_size * pipe.vae_scale_factor
    word = concept_phrase(settings.token or args.concept or "", settings.class_word)
    if args.concept:
        images, captions = concept_pictures(args.concept, settings.n_pictures, settings.seed,
                                            word if word != args.concept else None)
        prior = prior_pictures(settings.n_pictures, settings.seed) if settings.prior_share else None
        data_record = {"data": f"concept {args.concept}"}
    else:
        images, captions = folder_pictures(args.images, resolution)
        prior = None
        data_record = {"data": str(Path(args.images).resolve()), "n_images": len(images)}
        if not args.quiet:
            print(f"{len(images)} pictures from {args.images}, {resolution} px")
    data_record.update(model=str(model_folder.resolve()), model_sha256=folder_fingerprint(model_folder))
    path = train_lora(pipe, images, captions, settings, out, progress=not args.quiet, data_record=data_record,
                      prior=prior)
    if not process.is_main_process:
        return
    if args.concept in shapes.HELD_OUT_SHAPES:
        prompts = [f"a {colour} {word}" for colour in ("red", "blue", "green", "yellow")]
    elif args.concept:
        prompts = [f"a {word} {shape}" for shape in shapes.BASE_SHAPES] + [f"a {word} circle on a black background"]
    else:
        prompts = captions[:4]
    sample_grid(pipe, prompts, out / "samples.png")
    minutes = (time.time() - started) / 60
    write_json(out / "train_lora.json", {**asdict(settings), **data_record, "minutes": round(minutes, 2),
                                         "pictures": len(images)})
    print(f"{path} written ({path.stat().st_size / 1e6:.2f} MB) in {minutes:.1f} min; "
          f"samples in {out / 'samples.png'}")


if __name__ == "__main__":
    try:
        main()
    except CheckpointError as error:
        raise SystemExit(f"error: {error}") from None
