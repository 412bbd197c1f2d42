"""Teach a Stable Diffusion model a new concept with a LoRA adapter (peft + diffusers).

    python -m sdcourse.training.train_lora --concept star --out runs/star-lora
    python -m sdcourse.training.train_lora --images my-pictures --model path/to/sd15 --out runs/my-lora

The U-Net gets a rank-r adapter on its attention projections (peft's `add_adapter`, as
diffusers' own LoRA scripts do); only the adapter trains. Everything else (the VAE, the U-Net's
own weights, the text encoder) stays frozen. `--train-text-encoder` also gives the text
encoder's attention projections an adapter of the same rank (diffusers' DreamBooth LoRA script
has the same switch), so that the encoding of a word the text encoder never learned ("star",
encoded much like "triangle") can move. On the embedded model it did not help (README, "What it
learns"), so it is off by default. `--min-snr-gamma 5` and `--caption-dropout 0.1` train the
adapter with two parts of the embedded model's own recipe (the loss weighted towards the noisy
timesteps; some captions left empty); they are off by default, as in diffusers' LoRA scripts.
The result is `--out/pytorch_lora_weights.safetensors`, which `pipe.load_lora_weights(out)`
loads (both adapters). `--full-unet` trains every U-Net weight instead, with the same data and
loop, and writes `--out/unet`: the ceiling an adapter is measured against.

Data:
- `--concept star`: pictures of the shape the embedded model never saw, with captions such
  as "a small red star in the top left", from the course's shapes generator; `--concept pink`:
  shapes in a colour no caption ever named. `--token sks` writes a rare word in place of the
  concept's (the DreamBooth idea: a new word for a new thing).
- `--images FOLDER`: your own pictures, each with a caption: a `metadata.jsonl` with lines
  {"file_name": "cat1.png", "text": "a photo of sks cat"}, or a `.txt` beside each picture.
  They are resized and centre-cropped to the model's resolution (64 px for the embedded
  model, 512 for SD 1.x).

It runs on the course's training loop (trainer.py): tqdm progress, a checkpoint every
`--checkpoint-every` steps in --out, and a resumed run continues where the last one stopped.
Only the settings in trainer.MAY_CHANGE_ON_RESUME (the step count among them) may differ;
any other change is refused by name. On GPUs, the same script under accelerate:

    accelerate launch -m sdcourse.training.train_lora --images my-pictures --model sd15 \\
        --out runs/my-lora --mixed-precision fp16 --batch 4 --lr 1e-4
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see build_model.py

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from dataclasses import asdict, dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from ..data import shapes  # noqa: E402
from ..lora import DEFAULT_TARGETS, LORA_FILE, check_rank, linear_layer_endings, matches_target  # noqa: E402
from .common import images_to_tensor, min_snr_weights, save_grid, set_threads  # noqa: E402
from .trainer import PRECISIONS, CheckpointError, Trainer, TrainSettings  # noqa: E402

CONCEPTS = shapes.HELD_OUT_SHAPES + tuple(shapes.HELD_OUT_COLOURS)  # never taught to the embedded model
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
CHECKPOINT = "lora_ckpt.pt"
CONCEPT_PRIOR_SHARE = 0.75  # --concept's default prior_share (see LoRASettings; README, "What it learns")
TEXT_ENCODER_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")  # CLIP's attention, as diffusers' scripts adapt it


@dataclass
class LoRASettings:
    """What a LoRA run is made of. The defaults teach the embedded model "star" on a laptop CPU."""

    rank: int = 4
    alpha: float = 4.0
    steps: int = 600
    batch: int = 16
    lr: float = 1e-3  # the tiny model's; 1e-4 is usual for SD 1.x
    targets: tuple = DEFAULT_TARGETS
    n_pictures: int = 256  # --concept only: how many pictures to draw
    token: str | None = None  # --concept only: the word written instead of the concept's name
    # The share of each batch drawn from pictures the model already knows, with their captions
    # (DreamBooth's "prior preservation"), so that learning the new word does not overwrite the
    # old ones. 0 trains on the new pictures alone (the only choice with --images).
    prior_share: float = 0.0
    # Also adapt the text encoder's attention projections (TEXT_ENCODER_TARGETS), same rank and alpha,
    # so that the new word's encoding can move away from the known words it resembles.
    train_text_encoder: bool = False
    # Each timestep's loss weighted by min(SNR, gamma) / SNR, as the embedded model was trained
    # (train_unet.py; 5 there): the noisy timesteps, where a picture's shape is decided, count fully.
    # 0: plain squared error, as diffusers' LoRA scripts default to.
    min_snr_gamma: float = 0.0
    # The share of captions replaced by the empty prompt (0.1 in the embedded model's training), so
    # that the adapter also learns the unconditional prediction that guidance subtracts.
    caption_dropout: float = 0.0
    # Train every weight of the U-Net instead of an adapter (a full fine-tune): the ceiling an
    # adapter is measured against (benchmarks/lora_star.py --full-unet). rank, alpha and targets
    # are then unused, and out/unet holds the whole U-Net, which is what the pipeline loads.
    full_unet: bool = False
    seed: int = 0
    checkpoint_every: int = 50
    mixed_precision: str = "no"

    def __post_init__(self):
        whole = {"steps": 1, "batch": 1, "n_pictures": 1, "rank": 1, "checkpoint_every": 0}  # name: the least allowed
        for name, least in whole.items():
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                raise ValueError(f"{name}={value!r}; it must be a whole number, {least} or more")
        # name: (the allowed range, as the error says it; 0 allowed; the bound the value stays below)
        numbers = {"alpha": ("a number above 0", False, float("inf")),
                   "lr": ("a number above 0", False, float("inf")),
                   "min_snr_gamma": ("a number, 0 (no weighting) or more", True, float("inf")),
                   "prior_share": ("a number from 0 up to (not including) 1", True, 1),
                   "caption_dropout": ("a number from 0 up to (not including) 1", True, 1)}
        for name, (allowed, zero_allowed, high) in numbers.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not (0 <= value if zero_allowed else 0 < value) or not value < high:
                raise ValueError(f"{name}={value!r}; it must be {allowed}")
        if self.mixed_precision not in PRECISIONS:
            raise ValueError(f"mixed_precision={self.mixed_precision!r}; allowed: {', '.join(PRECISIONS)}")
        for name in ("train_text_encoder", "full_unet"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name}={getattr(self, name)!r}; it must be True or False")
        if self.full_unet and self.train_text_encoder:
            raise ValueError("full_unet=True with train_text_encoder=True: a full fine-tune trains the U-Net alone; "
                             "switch one of them off")
        if self.token is not None and (not self.token.strip() or " " in self.token.strip()):
            raise ValueError(f"token={self.token!r}; it must be one word, such as 'sks'")
        self.targets = tuple(self.targets)


# ----------------------------------------------------------------------------- data


def concept_pictures(concept: str, n: int, seed: int = 0, token: str | None = None):
    """`n` one-object pictures of a concept the embedded model was never taught, uint8
    (n, 64, 64, 3), and their captions, the concept's word replaced by `token` if given.

    A held-out shape ("star"): stars of every colour, size and position. A held-out colour
    ("pink"): circles, squares and triangles in that colour.
    """
    shapes._check_choice("concept", concept, CONCEPTS)
    if concept in shapes.HELD_OUT_SHAPES:
        images, captions, _ = shapes.make_dataset(n, seed=seed, shapes=(concept,), n_objects=1)
    else:
        rng = np.random.default_rng([seed, 5])
        images = np.empty((n, shapes.IMAGE_SIZE, shapes.IMAGE_SIZE, 3), dtype=np.uint8)
        captions = []
        for i in range(n):
            scene = shapes.sample_scene(rng, n_objects=1)
            obj = scene.objects[0]
            obj.colour = concept  # named in the caption ...
            captions.append(shapes.describe([obj], scene.background, rng)[0])
            obj.colour = shapes.HELD_OUT_COLOURS[concept]  # ... drawn as its (r, g, b)
            images[i] = shapes.render(scene)
    if token:
        captions = [caption.replace(concept, token) for caption in captions]
    return images, list(captions)


def prior_pictures(n: int, seed: int = 0):
    """`n` pictures of what the embedded model already knows (its own training distribution:
    circles, squares and triangles in the named colours), uint8 (n, 64, 64, 3), and their captions.
    Mixed into a concept's batches, they keep the adapter from overwriting the old words."""
    images, captions, _ = shapes.make_dataset(n, seed=seed + 1, shapes=shapes.BASE_SHAPES)
    return images, list(captions)


def _caption_table(folder: Path) -> dict[str, str]:
    """file name -> caption, from metadata.jsonl, or else from a .txt beside each picture."""
    table = {}
    metadata = folder / "metadata.jsonl"
    if metadata.exists():
        for number, line in enumerate(metadata.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                table[entry["file_name"]] = str(entry["text"])
            except (json.JSONDecodeError, KeyError, TypeError) as error:
                raise ValueError(f"{metadata}, line {number}: expected {{\"file_name\": ..., \"text\": ...}}, "
                                 f"got {line.strip()[:80]!r} ({error})") from None
    return table


def folder_pictures(folder, resolution: int):
    """The pictures of `folder` (resized so the short side is `resolution`, centre-cropped to a
    square) and their captions. A picture without a caption, a caption without a picture, or
    an unreadable picture stops the run, naming the file: nothing is skipped silently."""
    from PIL import Image, UnidentifiedImageError

    folder = Path(folder)
    if not folder.is_dir():
        raise NotADirectoryError(f"--images {str(folder)!r} is not a folder of pictures")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"--images {folder}: no pictures ({', '.join(IMAGE_SUFFIXES)}) in it")
    table = _caption_table(folder)
    unknown = sorted(set(table) - {p.name for p in files})
    if unknown:
        raise FileNotFoundError(f"{folder / 'metadata.jsonl'} names {unknown[0]}, which is not a picture in {folder}")
    images, captions = [], []
    for path in files:
        if path.name in table:
            caption = table[path.name]
        elif path.with_suffix(".txt").exists():
            caption = path.with_suffix(".txt").read_text(encoding="utf-8").strip()
        else:
            raise FileNotFoundError(f"{path} has no caption: add a line for it to metadata.jsonl, or write it "
                                    f"in {path.with_suffix('.txt').name}")
        if not caption:
            raise ValueError(f"the caption of {path} is empty")
        try:
            with Image.open(path) as picture:
                picture = picture.convert("RGB")
        except (UnidentifiedImageError, OSError) as error:
            raise ValueError(f"{path} cannot be read as a picture ({error})") from None
        scale = resolution / min(picture.size)
        w, h = max(resolution, round(picture.width * scale)), max(resolution, round(picture.height * scale))
        picture = picture.resize((w, h), Image.Resampling.BICUBIC)
        left, top = (w - resolution) // 2, (h - resolution) // 2
        images.append(np.asarray(picture.crop((left, top, left + resolution, top + resolution))))
        captions.append(caption)
    return np.stack(images), captions


# ----------------------------------------------------------------------------- training


@torch.no_grad()
def _encode_captions(pipe, captions: list[str]):
    """Token ids and the frozen text encoder's embeddings of `captions`, on the CPU."""
    ids = pipe.tokenizer(captions, padding="max_length", truncation=True, max_length=pipe.tokenizer.model_max_length,
                         return_tensors="pt").input_ids
    return ids, pipe.text_encoder(ids.to(pipe.unet.device))[0].to(pipe.unet.dtype).cpu()


@torch.no_grad()
def _encode(pipe, images: np.ndarray, captions: list[str], batch: int = 16):
    """Latent distributions (mean, std), token ids and text embeddings, computed once: the VAE
    is frozen, so every step would compute the same (and so is the text encoder, unless it trains)."""
    means, stds, token_ids, texts = [], [], [], []
    for start in range(0, len(images), batch):
        x = images_to_tensor(images[start : start + batch]).to(pipe.vae.device, pipe.vae.dtype)
        dist = pipe.vae.encode(x).latent_dist
        means.append(dist.mean.float().cpu())
        stds.append(dist.std.float().cpu())
        ids, text = _encode_captions(pipe, captions[start : start + batch])
        token_ids.append(ids)
        texts.append(text)
    return torch.cat(means), torch.cat(stds), torch.cat(token_ids), torch.cat(texts)


def add_peft_adapter(model, settings: LoRASettings, targets=None, what: str = "U-Net") -> list:
    """peft's LoRA on the layers of `model` (the U-Net, or the text encoder) that `targets`
    (default settings.targets) name: Linear layers, and the convolutions of the U-Net's ResNet
    blocks if named. Returns the adapter's parameters."""
    from peft import LoraConfig

    targets = tuple(settings.targets if targets is None else targets)
    layers = {name: module for name, module in model.named_modules() if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d))}
    for target in targets:
        matched = [name for name in layers if matches_target(name, target)]
        if not matched:
            convolutions = sorted({name.rsplit(".", 1)[-1] for name, m in layers.items() if isinstance(m, torch.nn.Conv2d)})
            raise ValueError(f"targets: {target!r} matches no Linear layer of the {what}; its Linear layers "
                             f"end in: {', '.join(linear_layer_endings(model))}"
                             + (f" (and its convolutions in: {', '.join(convolutions)})" if convolutions else ""))
        for name in matched:  # the narrowest layer decides
            layer = layers[name]
            if isinstance(layer, torch.nn.Linear):
                d_out, d_in = layer.weight.shape
            else:
                d_out, d_in = layer.out_channels, layer.in_channels
            check_rank(settings.rank, d_in, d_out)
    model.requires_grad_(False)
    with torch.random.fork_rng(devices=[]):  # peft draws A from torch's global generator: the same seed, the same A
        torch.manual_seed(settings.seed)
        model.add_adapter(LoraConfig(r=settings.rank, lora_alpha=settings.alpha, init_lora_weights="gaussian",
                                     target_modules=list(targets)))
    return [p for p in model.parameters() if p.requires_grad]


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
    from diffusers import DDPMScheduler, StableDiffusionPipeline
    from peft.utils import get_peft_model_state_dict

    if len(images) != len(captions):
        raise ValueError(f"{len(images)} pictures but {len(captions)} captions; give one caption per picture")
    n_prior = round(settings.batch * settings.prior_share)
    if n_prior >= settings.batch:
        raise ValueError(f"prior_share={settings.prior_share} with batch={settings.batch} leaves no room for the new "
                         "pictures in a batch; use a smaller prior_share or a larger batch")
    if n_prior and prior is None:
        raise ValueError(f"prior_share={settings.prior_share} needs prior=(images, captions) to draw from "
                         "(sdcourse.training.train_lora.prior_pictures)")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    unet, text_encoder = pipe.unet, pipe.text_encoder
    if settings.full_unet:
        unet.requires_grad_(True)
        params = list(unet.parameters())
    else:
        params = add_peft_adapter(unet, settings)  # first: a bad target or rank stops the run at once
    if settings.train_text_encoder:
        params += add_peft_adapter(text_encoder, settings, TEXT_ENCODER_TARGETS, "text encoder")
    mean, std, ids, text = _encode(pipe, images, captions)  # B = 0: the adapters change nothing yet
    if n_prior:
        prior_mean, prior_std, prior_ids, prior_text = _encode(pipe, *prior)
    empty_ids, empty_text = _encode_captions(pipe, [""])  # the empty prompt, for caption dropout
    if settings.train_text_encoder:
        # One module holds both, so that the loop trains, checkpoints and moves them together.
        model = torch.nn.ModuleDict({"unet": unet, "text_encoder": text_encoder})
        text, prior_text = ids, (prior_ids if n_prior else None)  # the captions are encoded at every step
        empty_text = empty_ids
    else:
        model = unet
    noise_schedule = DDPMScheduler.from_config(pipe.scheduler.config)
    prediction = noise_schedule.config.prediction_type
    snr_weight = min_snr_weights(noise_schedule.alphas_cumprod, settings.min_snr_gamma, prediction)
    scaling = pipe.vae.config.scaling_factor
    gen = torch.Generator().manual_seed(settings.seed)

    def next_batch():
        """Noisy latents of random pictures, their timesteps, what the U-Net must predict, and the captions."""
        idx = torch.randint(0, len(mean), (settings.batch - n_prior,), generator=gen)
        batch_mean, batch_std, batch_text = mean[idx], std[idx], text[idx]
        if n_prior:  # the rest of the batch: pictures the model already knows
            old = torch.randint(0, len(prior_mean), (n_prior,), generator=gen)
            batch_mean, batch_std = torch.cat([batch_mean, prior_mean[old]]), torch.cat([batch_std, prior_std[old]])
            batch_text = torch.cat([batch_text, prior_text[old]])
        if settings.caption_dropout:
            drop = torch.rand(settings.batch, generator=gen) < settings.caption_dropout
            batch_text = torch.where(drop.view(-1, *[1] * (batch_text.dim() - 1)), empty_text, batch_text)
        z0 = (batch_mean + batch_std * torch.randn(batch_mean.shape, generator=gen)) * scaling
        noise = torch.randn(z0.shape, generator=gen)
        t = torch.randint(0, noise_schedule.config.num_train_timesteps, (settings.batch,), generator=gen)
        target = noise if prediction == "epsilon" else noise_schedule.get_velocity(z0, noise, t)
        return noise_schedule.add_noise(z0, noise, t), t, batch_text, target, snr_weight[t]

    def loss(model, batch):
        zt, t, context, target, weight = batch  # context: text embeddings, or token ids when the text encoder trains
        if settings.train_text_encoder:
            model, context = model["unet"], model["text_encoder"](context)[0]
        error = model(zt.to(model.dtype), t, encoder_hidden_states=context.to(model.dtype)).sample.float() - target
        return (error.pow(2).mean((1, 2, 3)) * weight.to(error.device)).mean()

    train = TrainSettings(steps=settings.steps, lr=settings.lr, schedule="constant", warmup=min(20, settings.steps),
                          weight_decay=0.0, clip_grad_norm=1.0, checkpoint_every=settings.checkpoint_every,
                          mixed_precision=settings.mixed_precision)
    record = {**asdict(settings), **(data_record or {})}
    record.pop("steps")
    record.pop("checkpoint_every")
    record.pop("mixed_precision")
    trainer = Trainer(model, loss, next_batch, train, params=params, generator=gen, checkpoint=out / CHECKPOINT,
                      name="LoRA", record=record, progress=progress, save_trained_only=True)
    trainer.fit()
    # The trainer hands the model back on the CPU; the pipeline may live on a GPU.
    unet.to(pipe.vae.device)
    text_encoder.to(pipe.vae.device)
    if settings.full_unet:
        if trainer.accelerator.is_main_process:
            unet.save_pretrained(out / "unet", safe_serialization=True)
        return out / "unet" / "diffusion_pytorch_model.safetensors"
    if trainer.accelerator.is_main_process:
        # A saved adapter carries no alpha, and loaders then take alpha = rank: fold alpha / rank
        # into B, so that the file gives exactly the trained model (sdcourse.lora.export_lora does the same).
        fold = settings.alpha / settings.rank

        def adapter(model):  # save_lora_weights adds "unet." or "text_encoder."
            return {k: (v * fold if ".lora_B." in k else v).contiguous()
                    for k, v in get_peft_model_state_dict(model).items()}

        StableDiffusionPipeline.save_lora_weights(
            out, unet_lora_layers=adapter(unet), weight_name=LORA_FILE, safe_serialization=True,
            text_encoder_lora_layers=adapter(text_encoder) if settings.train_text_encoder else None)
    return out / LORA_FILE


def sample_grid(pipe, prompts, path, seed: int = 100):
    """One picture per prompt (25 DDIM steps, guidance 7.5), saved as a grid with titles."""
    images = pipe(prompts, num_inference_steps=25, guidance_scale=7.5, output_type="np",
                  generator=torch.Generator().manual_seed(seed)).images
    save_grid((images * 255).round().astype(np.uint8), path, titles=prompts, columns=min(8, len(prompts)))


def main(argv=None):
    from ..pipeline import load_pipeline

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    data = parser.add_mutually_exclusive_group(required=True)
    data.add_argument("--concept", choices=CONCEPTS, help="a shape or colour the embedded model never learned")
    data.add_argument("--images", help="a folder of pictures with captions (metadata.jsonl or .txt files)")
    parser.add_argument("--out", required=True, help="folder for the adapter, its checkpoint and sample grids")
    parser.add_argument("--model", default=None, help="a diffusers SD 1.x/2.x folder (default: the embedded model)")
    defaults = LoRASettings()
    parser.add_argument("--rank", type=int, default=defaults.rank)
    parser.add_argument("--alpha", type=float, default=defaults.alpha, help="the update is scaled by alpha / rank")
    parser.add_argument("--steps", type=int, default=defaults.steps)
    parser.add_argument("--batch", type=int, default=defaults.batch)
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--targets", nargs="+", default=list(defaults.targets), help="Linear layers to adapt")
    parser.add_argument("--n-pictures", type=int, default=defaults.n_pictures, help="--concept: pictures to draw")
    parser.add_argument("--token", default=None, help="--concept: a rare word to use instead of the concept's name")
    parser.add_argument("--prior-share", type=float, default=None,
                        help=f"--concept: share of each batch from pictures the model already knows "
                             f"(default {CONCEPT_PRIOR_SHARE}; 0 for the new pictures alone)")
    parser.add_argument("--train-text-encoder", action="store_true",
                        help="also adapt the text encoder's attention projections (same rank)")
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
    if args.prior_share and args.images:
        parser.error(f"--prior-share {args.prior_share} goes with --concept: the course has no pictures of what "
                     "your model already knows to mix in")
    prior_share = args.prior_share if args.prior_share is not None else (CONCEPT_PRIOR_SHARE if args.concept else 0.0)
    try:
        settings = LoRASettings(rank=args.rank, alpha=args.alpha, steps=args.steps, batch=args.batch, lr=args.lr,
                                targets=tuple(args.targets), n_pictures=args.n_pictures, token=args.token,
                                seed=args.seed, checkpoint_every=args.checkpoint_every,
                                mixed_precision=args.mixed_precision, prior_share=prior_share,
                                train_text_encoder=args.train_text_encoder, full_unet=args.full_unet,
                                min_snr_gamma=args.min_snr_gamma,
                                caption_dropout=args.caption_dropout)
    except ValueError as error:
        parser.error(str(error))
    set_threads(args.threads)
    started = time.time()
    from accelerate import PartialState

    process = PartialState()  # this process, one of several under `accelerate launch`
    device = args.device or str(process.device)
    pipe = load_pipeline(args.model, device=device)
    pipe.set_progress_bar_config(disable=True)
    resolution = pipe.unet.config.sample_size * pipe.vae_scale_factor
    if args.concept:
        images, captions = concept_pictures(args.concept, settings.n_pictures, settings.seed, settings.token)
        prior = prior_pictures(settings.n_pictures, settings.seed) if settings.prior_share else None
        data_record = {"data": f"concept {args.concept}"}
    else:
        images, captions = folder_pictures(args.images, resolution)
        prior = None
        data_record = {"data": str(Path(args.images).resolve()), "n_images": len(images)}
        if not args.quiet:
            print(f"{len(images)} pictures from {args.images}, {resolution} px")
    data_record["model"] = str(args.model or "embedded")
    out = Path(args.out)
    path = train_lora(pipe, images, captions, settings, out, progress=not args.quiet, data_record=data_record,
                      prior=prior)
    if not process.is_main_process:
        return
    word = settings.token or args.concept
    if args.concept in shapes.HELD_OUT_SHAPES:
        prompts = [f"a {colour} {word}" for colour in ("red", "blue", "green", "yellow")]
    elif args.concept:
        prompts = [f"a {word} {shape}" for shape in shapes.BASE_SHAPES] + [f"a {word} circle on a black background"]
    else:
        prompts = captions[:4]
    sample_grid(pipe, prompts, out / "samples.png")
    minutes = (time.time() - started) / 60
    (out / "train_lora.json").write_text(json.dumps({**asdict(settings), **data_record, "minutes": round(minutes, 2),
                                                    "pictures": len(images)}, indent=2))
    what = "U-Net" if settings.full_unet else "adapter"
    print(f"{what} written to {path} ({path.stat().st_size / 1e6:.2f} MB) in {minutes:.1f} min; "
          f"samples in {out / 'samples.png'}")


if __name__ == "__main__":
    try:
        main()
    except CheckpointError as error:
        raise SystemExit(f"error: {error}") from None
