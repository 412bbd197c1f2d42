"""Build the course's tiny Stable Diffusion from scratch, on CPU.

    python -m sdcourse.training.build_model --out sdcourse/assets/tiny-sd
    SDCOURSE_FAST=1 python -m sdcourse.training.build_model   # the same, in miniature

Stages, each resumable (run the same command again after an interrupt):

1. draw a fixed training set of shape pictures with several captions each (no stars);
2. train a tiny CLIP contrastively; keep its text encoder, frozen; then train its image
   encoder on alone against the locked text encoder (it learns shapes slowly);
3. train the VAE (shapes + photo crops); set scaling_factor = 1 / latent std;
   optionally train its decoder on alone (encoder frozen, as SD's ft-MSE VAE);
4. encode the training set once, caching the latent distributions;
5. train the U-Net (epsilon prediction, SD schedule, 10% empty captions, EMA weights);
6. train the evaluator's shape/colour classifier;
7. save one StableDiffusionPipeline folder (safetensors) + the CLIP's image half and the
   classifier next to it.

Everything goes to a run folder (default runs/tiny-sd, or runs/tiny-sd-fast): the cached
data, checkpoints, sample grids (samples/*.png) and build_log.json with the time taken.
"""

from __future__ import annotations

import os

# On a shared machine, OpenMP threads that spin while waiting for each other make every
# operation several times slower; passive waiting avoids that. Must be set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from ..data import shapes  # noqa: E402
from ..tokenizer import load_tokenizer
from . import config as config_mod
from .common import seed_everything, set_threads
from .datasets import HELD_OUT_PHOTOS, build_training_set, photo_crops


class StageLog:
    """Times each stage and writes the figures to build_log.json as it goes."""

    def __init__(self, path: Path):
        self.path = path
        self.data = json.loads(path.read_text()) if path.exists() else {"stages": {}, "figures": {}}

    def stage(self, name, seconds):
        self.data["stages"][name] = self.data["stages"].get(name, 0.0) + round(seconds, 1)
        self.save()

    def figure(self, name, value):
        self.data["figures"][name] = value
        self.save()

    def save(self):
        self.path.write_text(json.dumps(self.data, indent=2))


def save_clip_extras(clip, folder: Path):
    """Save the CLIP's image encoder, projections and logit scale (not the text encoder,
    which the pipeline already holds) so its zero-shot accuracy can be measured later."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    clip.config.to_json_file(str(folder / "config.json"))
    weights = {k: v.contiguous() for k, v in clip.state_dict().items() if not k.startswith("text_model.")}
    save_file(weights, str(folder / "model.safetensors"))


def load_clip(folder: Path, text_encoder):
    """Rebuild the full CLIPModel from saved extras plus the pipeline's text encoder."""
    from safetensors.torch import load_file
    from transformers import CLIPConfig, CLIPModel

    model = CLIPModel(CLIPConfig.from_json_file(str(Path(folder) / "config.json")))
    model.load_state_dict(load_file(str(Path(folder) / "model.safetensors")), strict=False)
    model.text_model.load_state_dict(text_encoder.state_dict())
    return model.eval()


def save_pipeline(unet, vae, text_encoder, tokenizer, out: Path):
    """Write the StableDiffusionPipeline folder. U-Net and VAE weights are stored in float16
    (diffusers loads them back as float32); the text encoder stays float32."""
    import copy

    from .train_unet import build_pipeline, make_scheduler

    out = Path(out)
    tmp = out.with_name(out.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    pipe = build_pipeline(copy.deepcopy(unet).half(), copy.deepcopy(vae).half(), text_encoder, tokenizer,
                          make_scheduler("ddim"))
    pipe.save_pretrained(str(tmp), safe_serialization=True)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out


def folder_size_mb(folder: Path) -> float:
    return sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file()) / 1e6


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=None, help="pipeline folder to write (default: <run>/tiny-sd)")
    parser.add_argument("--run", default=None, help="run folder for caches, checkpoints, samples")
    parser.add_argument("--fast", action="store_true", help="miniature build (also: SDCOURSE_FAST=1)")
    parser.add_argument("--unet-steps", type=int, default=None, help="override the U-Net step count")
    parser.add_argument("--vae-decoder-steps", type=int, default=None, help="override the decoder-only steps")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)

    fast = args.fast or config_mod.fast_mode_requested()
    overrides = {"threads": args.threads}
    if args.unet_steps:
        overrides["unet_steps"] = args.unet_steps
    if args.vae_decoder_steps is not None:
        overrides["vae_decoder_steps"] = args.vae_decoder_steps
    cfg = config_mod.fast_config(**overrides) if fast else config_mod.full_config(**overrides)
    run_dir = Path(args.run or ("runs/tiny-sd-fast" if fast else "runs/tiny-sd"))
    out = Path(args.out) if args.out else run_dir / "tiny-sd"
    extras_dir = out.parent  # classifier + CLIP image half go next to the pipeline folder
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    progress = not args.quiet
    set_threads(cfg.threads)
    seed_everything(cfg.seed)
    log = StageLog(run_dir / "build_log.json")
    tokenizer = load_tokenizer()
    started = time.time()

    # 1. Data.
    t = time.time()
    data = build_training_set(cfg.n_train, cfg.captions_per_image, cfg.seed, cfg.two_object_prob,
                              cache=run_dir / "train_set.npz", progress=progress)
    photos = photo_crops(cfg.n_photo_crops, cfg.seed)
    log.stage("data", time.time() - t)

    # 2. CLIP.
    from transformers import CLIPModel, CLIPTextModel

    from .train_clip import train_clip, zero_shot_accuracy

    t = time.time()
    if (run_dir / "clip" / "config.json").exists():
        clip = CLIPModel.from_pretrained(str(run_dir / "clip"), dtype=torch.float32).eval()
    else:
        seed_everything(cfg.seed + 1)
        clip = train_clip(cfg, data, run_dir, progress)
        clip.save_pretrained(str(run_dir / "clip"))
        acc = zero_shot_accuracy(clip, n=256 if fast else 1000)
        log.figure("clip_zero_shot", acc)
        print(f"CLIP zero-shot accuracy on fresh pictures: {acc}", flush=True)
    log.stage("clip", time.time() - t)
    text_encoder = CLIPTextModel(clip.config.text_config)
    text_encoder.load_state_dict(clip.text_model.state_dict())

    # 2b. CLIP image encoder, trained on with the text encoder locked.
    from .train_clip import refine_image_encoder

    t = time.time()
    if (run_dir / "clip_refined" / "config.json").exists():
        clip = CLIPModel.from_pretrained(str(run_dir / "clip_refined"), dtype=torch.float32).eval()
    elif cfg.clip_image_steps > 0:
        seed_everything(cfg.seed + 4)
        clip = refine_image_encoder(cfg, clip, data, run_dir, progress)
        clip.save_pretrained(str(run_dir / "clip_refined"))
        acc = zero_shot_accuracy(clip, n=256 if fast else 1000)
        log.figure("clip_zero_shot_after_image_phase", acc)
        print(f"CLIP zero-shot accuracy after the image-encoder phase: {acc}", flush=True)
    log.stage("clip_image", time.time() - t)
    text_encoder.eval().requires_grad_(False)

    # 3. VAE.
    from diffusers import AutoencoderKL

    from .train_vae import latent_scaling_factor, mean_psnr, train_vae

    t = time.time()
    if (run_dir / "vae" / "config.json").exists():
        vae = AutoencoderKL.from_pretrained(str(run_dir / "vae")).eval()
    else:
        seed_everything(cfg.seed + 2)
        vae = train_vae(cfg, data["images"], photos, run_dir, progress)
        scale = latent_scaling_factor(vae, data["images"][: min(2048, len(data["images"]))])
        vae.register_to_config(scaling_factor=scale)
        vae.save_pretrained(str(run_dir / "vae"))
        fresh, _, _ = shapes.make_dataset(64 if fast else 512, seed=4242)
        held_out = photo_crops(64 if fast else 256, seed=4243, names=HELD_OUT_PHOTOS)
        log.figure("vae", {"scaling_factor": scale, "psnr_fresh_shapes": mean_psnr(vae, fresh),
                           "psnr_held_out_photo": mean_psnr(vae, held_out)})
        print(f"VAE: {log.data['figures']['vae']}", flush=True)
    log.stage("vae", time.time() - t)

    # 3b. Optional: the decoder alone trains on (latents, hence the U-Net, are unaffected).
    from .train_vae import finetune_decoder

    t = time.time()
    if (run_dir / "vae_decoder" / "config.json").exists():
        vae = AutoencoderKL.from_pretrained(str(run_dir / "vae_decoder")).eval()
    elif cfg.vae_decoder_steps > 0:
        vae = finetune_decoder(cfg, vae, data["images"], photos, run_dir, progress)
        vae.save_pretrained(str(run_dir / "vae_decoder"))
        fresh, _, _ = shapes.make_dataset(64 if fast else 512, seed=4242)
        held_out = photo_crops(64 if fast else 256, seed=4243, names=HELD_OUT_PHOTOS)
        log.figure("vae_after_decoder_phase", {"psnr_fresh_shapes": mean_psnr(vae, fresh),
                                               "psnr_held_out_photo": mean_psnr(vae, held_out)})
        print(f"VAE after the decoder phase: {log.data['figures']['vae_after_decoder_phase']}", flush=True)
    log.stage("vae_decoder", time.time() - t)
    vae.requires_grad_(False)

    # 4. Latent cache.
    from .train_unet import load_or_cache_latents, save_samples, train_unet

    t = time.time()
    latents = load_or_cache_latents(vae, data["images"], run_dir / "latents.npz", progress)
    log.stage("latents", time.time() - t)

    # 5. U-Net.
    t = time.time()
    seed_everything(cfg.seed + 3)
    unet = train_unet(cfg, latents, data["token_ids"], text_encoder, vae, tokenizer,
                      vae.config.scaling_factor, run_dir, progress, total_steps=cfg.unet_steps)
    unet.save_pretrained(str(run_dir / "unet"))
    log.stage("unet", time.time() - t)
    log.figure("unet_steps", cfg.unet_steps)

    # 6. Evaluator's classifier.
    from ..evaluate import classifier_accuracy, save_classifier, train_classifier

    t = time.time()
    classifier_path = extras_dir / "shape_classifier.safetensors"
    if not (run_dir / "classifier.safetensors").exists():
        classifier = train_classifier(cfg.classifier_steps, cfg.classifier_batch, cfg.classifier_n_train,
                                      seed=cfg.seed + 7, progress=progress)
        save_classifier(classifier, run_dir / "classifier.safetensors")
        log.figure("classifier_accuracy", classifier_accuracy(n=256 if fast else 1000, classifier=classifier))
    log.stage("classifier", time.time() - t)

    # 7. Ship.
    t = time.time()
    save_pipeline(unet, vae, text_encoder, tokenizer, out)
    save_clip_extras(clip, extras_dir / "tiny-clip")
    shutil.copyfile(run_dir / "classifier.safetensors", classifier_path)
    save_samples(unet, vae, text_encoder, tokenizer, run_dir / "samples" / "final.png")
    log.stage("ship", time.time() - t)
    log.figure("pipeline_mb", round(folder_size_mb(out), 2))
    log.data["total_minutes_this_invocation"] = round((time.time() - started) / 60, 1)
    log.save()
    print(json.dumps(log.data, indent=2))
    print(f"pipeline written to {out} ({folder_size_mb(out):.1f} MB)")


if __name__ == "__main__":
    main()
