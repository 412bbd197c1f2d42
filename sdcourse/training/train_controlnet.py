"""Train a ControlNet for the embedded model: outlines in, shapes where the outlines are.

    python -m sdcourse.training.train_controlnet --out runs/controlnet
    python -m sdcourse.training.train_controlnet --out sdcourse/assets/tiny-controlnet --overwrite   # the shipped one

A ControlNet is a trainable copy of the U-Net's encoder (its input convolution, time embedding,
down blocks and middle block) that also reads a control picture, here the wanted shapes'
outlines (`shapes.render_outline`: white on black, about 2 pixels wide, as an edge map looks).
Its outputs are added to the frozen U-Net's skip connections through 1x1 convolutions that start
at zero, so training starts from the base model's own pictures. Only the copy trains.

Data: pictures drawn under the build's caption rule (stars among them, named "shape"), each
with its caption and its outlines; half of the captions are left empty, as the ControlNet paper
trains, so that the copy learns to read the outlines rather than lean on the words.

The copy is diffusers' `ControlNetModel.from_unet` (the course's own, `sdcourse.controlnet`,
computes the same and loads the same weights). It trains with the fine-tuning core's loop
(finetune_core.py), checkpoints into --out and resumes there; `--samples-every N` saves a grid
of pictures for fixed outlines every N steps (samples/step_XXXXX.png), where the step at which
the model starts to follow the outlines shows. The result, --out/controlnet, is stored in
float16 as the pipeline's U-Net is; `sdcourse.load_pipeline(controlnet=FOLDER)` loads it.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see build_model.py

import argparse  # noqa: E402
import copy  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from dataclasses import asdict, dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from ..arguments import whole_number  # noqa: E402
from ..data import shapes  # noqa: E402
from ..files import claim_folder, folder_fingerprint, refuse_overlap, write_json  # noqa: E402
from ..images import unit_to_uint8  # noqa: E402
from ..loading import load_pipeline, resolve_model  # noqa: E402
from .common import save_grid, set_threads  # noqa: E402
from .finetune_core import FineTuneSettings, WhatTrains, fine_tune  # noqa: E402
from .trainer import PRECISIONS, CheckpointError  # noqa: E402

CHECKPOINT = "controlnet_ckpt.pt"
CONTROLNET_FILES = ("controlnet/config.json", "controlnet/diffusion_pytorch_model.safetensors")
RUN_FILES = (CHECKPOINT, *CONTROLNET_FILES, "train_controlnet.json")  # and samples/*.png
CONDITIONING_CHANNELS = (16, 32, 64, 128)  # the control picture's small encoder, 64 px -> the 8 x 8 latent grid


@dataclass
class ControlNetSettings(FineTuneSettings):
    """A ControlNet run: the shared fine-tuning settings, and the data's. class_share: the caption
    rule's (the build's), so that the captions read as the U-Net learned them."""

    steps: int = 3000
    batch: int = 32
    lr: float = 2e-4
    caption_dropout: float = 0.5
    n_pictures: int = 8000
    class_share: float = 0.4
    conditioning_channels: tuple = CONDITIONING_CHANNELS

    def __post_init__(self):
        super().__post_init__()
        self.n_pictures = whole_number("n_pictures", self.n_pictures, minimum=1)
        self.conditioning_channels = tuple(whole_number(f"conditioning_channels[{i}]", c, minimum=1)
                                           for i, c in enumerate(self.conditioning_channels))


def control_set(n: int, seed: int, class_share: float = 0.4, start: int = 0):
    """`n` pictures under the caption rule, uint8 (n, 64, 64, 3), their captions, and their
    outlines, uint8 (n, 64, 64, 3): what a ControlNet learns from (or is judged on)."""
    rule = shapes.CaptionRule(class_share)
    images = np.empty((n, shapes.IMAGE_SIZE, shapes.IMAGE_SIZE, 3), dtype=np.uint8)
    outlines = np.empty_like(images)
    captions = []
    for i in range(n):
        scene = shapes.rule_scene_at(start + i, seed, rule)
        images[i], outlines[i] = shapes.render(scene), shapes.render_outline(scene)
        captions.append(scene.caption)
    return images, captions, outlines


class ControlNetCopy(WhatTrains):
    """A ControlNet made from the U-Net (diffusers' `from_unet`); it alone trains. Each batch
    carries "control", the outlines of its pictures (uint8, N x 3 x H x W)."""

    name = "ControlNet"

    def __init__(self, conditioning_channels=CONDITIONING_CHANNELS):
        self.conditioning_channels = tuple(conditioning_channels)
        self.pipe = self.controlnet = None

    def attach(self, pipe):
        from diffusers import ControlNetModel

        self.pipe = pipe
        pipe.unet.requires_grad_(False)
        self.controlnet = ControlNetModel.from_unet(
            pipe.unet, conditioning_embedding_out_channels=self.conditioning_channels).to(pipe.unet.device)
        self.controlnet.requires_grad_(True).train()
        self._module = torch.nn.ModuleDict({"unet": pipe.unet, "controlnet": self.controlnet})
        return list(self.controlnet.parameters())

    @property
    def module(self):
        return self._module

    def predict(self, module, batch):
        text = batch["text"].to(module["unet"].dtype)
        control = batch["control"].to(module["unet"].dtype) / 255
        down, mid = module["controlnet"](batch["noisy"], batch["timesteps"], encoder_hidden_states=text,
                                         controlnet_cond=control, return_dict=False)
        return module["unet"](batch["noisy"], batch["timesteps"], encoder_hidden_states=text,
                              down_block_additional_residuals=down, mid_block_additional_residual=mid).sample

    def save(self, out):
        copy.deepcopy(self.controlnet).half().save_pretrained(str(Path(out) / "controlnet"), safe_serialization=True)

    def saved_file(self, out):
        return Path(out) / CONTROLNET_FILES[1]


def sample_outlines(seed: int = 4242, n: int = 8):
    """Fixed held-out outlines, one object each, the four shapes in turn (stars too), and
    prompts that name each object's colour ("shape" for a star, as the captions do)."""
    rng = np.random.default_rng(seed)
    outlines, prompts = [], []
    for i in range(n):
        shape = shapes.ALL_SHAPES[i % len(shapes.ALL_SHAPES)]
        obj = shapes.sample_scene(rng, shapes=(shape,), n_objects=1).objects[0]
        word = shapes.CLASS_WORD if shape in shapes.HELD_OUT_SHAPES else shape
        prompts.append(f"{shapes.article(obj.colour)} {obj.colour} {word}")
        outlines.append(shapes.render_outline(shapes.Scene([obj], "black", prompts[-1])))
    return np.stack(outlines), prompts


@torch.no_grad()
def draw_with_control(pipe, controlnet, outlines: np.ndarray, prompts: list[str], seed: int = 0, steps: int = 25,
                      scale: float = 1.0) -> np.ndarray:
    """Pictures (uint8) for the prompts with the outlines as control, 25 DDIM steps, guidance 7.5."""
    from PIL import Image

    from diffusers import StableDiffusionControlNetPipeline

    controlled = StableDiffusionControlNetPipeline(**pipe.components, controlnet=controlnet, requires_safety_checker=False)
    controlled.set_progress_bar_config(disable=True)
    out = controlled(prompts, image=[Image.fromarray(o) for o in outlines], num_inference_steps=steps,
                     controlnet_conditioning_scale=scale, generator=torch.Generator().manual_seed(seed),
                     output_type="np").images
    return unit_to_uint8(out)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder for the ControlNet, its checkpoint and sample grids")
    parser.add_argument("--model", default=None, help="the pipeline folder whose U-Net it controls (default: embedded)")
    parser.add_argument("--overwrite", action="store_true",
                        help="write into --out even if it holds files this command did not write")
    defaults = ControlNetSettings()
    for name in ("steps", "batch", "n_pictures", "seed", "checkpoint_every"):
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(defaults, name))
    for name in ("lr", "caption_dropout", "min_snr_gamma", "class_share"):
        parser.add_argument(f"--{name.replace('_', '-')}", type=float, default=getattr(defaults, name))
    parser.add_argument("--samples-every", type=int, default=250, help="a grid of pictures every N steps (0: none)")
    parser.add_argument("--mixed-precision", choices=PRECISIONS, default="no", help="bf16 or fp16 on GPUs")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    try:
        settings = ControlNetSettings(steps=args.steps, batch=args.batch, lr=args.lr, n_pictures=args.n_pictures,
                                      seed=args.seed, checkpoint_every=args.checkpoint_every,
                                      caption_dropout=args.caption_dropout, min_snr_gamma=args.min_snr_gamma,
                                      class_share=args.class_share, mixed_precision=args.mixed_precision)
        whole_number("--samples-every", args.samples_every, minimum=0)
        model_folder = resolve_model(args.model)
        out = Path(args.out)
        refuse_overlap(out, model_folder, "--out", "--model")
        grids = sorted(str(p.relative_to(out)) for p in (out / "samples").glob("step_*.png")) if out.is_dir() else []
        claim_folder(out, "--out", owned=(*RUN_FILES, *grids), overwrite=args.overwrite)
    except (ValueError, FileExistsError) as error:
        parser.error(str(error))
    set_threads(args.threads)
    started = time.time()
    pipe = load_pipeline(args.model)
    pipe.set_progress_bar_config(disable=True)
    images, captions, outlines = control_set(settings.n_pictures, settings.seed + 11, settings.class_share)
    what = ControlNetCopy(settings.conditioning_channels)
    fixed_outlines, fixed_prompts = sample_outlines()

    def samples(trainer, step):
        if args.samples_every and (step % args.samples_every == 0 or step == settings.steps):
            what.controlnet.eval()
            pictures = draw_with_control(pipe, what.controlnet, fixed_outlines, fixed_prompts)
            what.controlnet.train()
            save_grid(np.concatenate([fixed_outlines, pictures]), out / "samples" / f"step_{step:05d}.png",
                      titles=[*fixed_prompts, *[f"step {step}"] * len(pictures)], columns=len(pictures))

    record = {"data": "shapes world outlines", "model": str(model_folder.resolve()),
              "model_sha256": folder_fingerprint(model_folder)}
    path = fine_tune(pipe, what, images, captions, settings, out, CHECKPOINT,
                     extras={"control": torch.from_numpy(outlines).permute(0, 3, 1, 2).contiguous()},
                     record=record, progress=not args.quiet, after_step=samples)
    minutes = (time.time() - started) / 60
    write_json(out / "train_controlnet.json", json.loads(json.dumps(
        {**asdict(settings), **record, "minutes": round(minutes, 2)}, default=str)))
    size = sum((out / f).stat().st_size for f in CONTROLNET_FILES) / 1e6
    print(f"{path} written ({size:.1f} MB) in {minutes:.1f} min")


if __name__ == "__main__":
    try:
        main()
    except CheckpointError as error:
        raise SystemExit(f"error: {error}") from None
