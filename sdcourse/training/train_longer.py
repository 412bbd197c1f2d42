"""Train a built tiny Stable Diffusion's U-Net for more steps, keeping its VAE and text encoder.

    python -m sdcourse.training.train_longer --from sdcourse/assets/tiny-sd --steps 6000 \\
        --run runs/tiny-sd-longer --out runs/tiny-sd-longer/tiny-sd

The U-Net is the part that gains most from more training: the VAE and text encoder are
already good (see the README), and the U-Net's prompt adherence keeps rising with steps.
This continues from a finished pipeline folder instead of rebuilding all three networks:

1. the same fixed training set as the build (same seed, same captions);
2. its latents, encoded once with the folder's VAE;
3. `--steps` more U-Net steps with the build's recipe and training loop (trainer.py:
   warm-up, EMA, caption dropout), starting from the folder's U-Net. Checkpoints go to the
   run folder, so running the same command again resumes, and a larger `--steps` trains on
   from where it stopped (any other change of settings is refused);
4. a new pipeline folder: the folder's VAE, text encoder and tokenizer, the new U-Net.

It never writes into the folder it reads (--out and --run must lie outside --from), and --out
is claimed first: a folder holding files this command did not write is refused unless
--overwrite. A resumed run checks that --from is still the same model (its files' SHA-256).
The CLIP image half and the evaluator's classifier next to the folder are left as they are.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see build_model.py

import argparse  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from accelerate import Accelerator  # noqa: E402

from ..files import folder_fingerprint, refuse_overlap, write_json  # noqa: E402
from . import config as config_mod  # noqa: E402
from .common import seed_everything, set_threads  # noqa: E402
from .datasets import build_set_of  # noqa: E402
from ..loading import load_pipeline, resolve_model  # noqa: E402
from .export import claim_pipeline_folder, save_pipeline  # noqa: E402
from .train_unet import load_or_cache_latents, save_samples, train_unet  # noqa: E402
from .trainer import PRECISIONS, CheckpointError  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--from", dest="source", required=True, help="the pipeline folder to continue from")
    parser.add_argument("--steps", type=int, required=True, help="how many more U-Net steps in total")
    parser.add_argument("--run", default="runs/tiny-sd-longer", help="run folder for caches and checkpoints")
    parser.add_argument("--out", default=None, help="pipeline folder to write (default: <run>/tiny-sd)")
    parser.add_argument("--overwrite", action="store_true",
                        help="write the pipeline over --out even if it holds files this command did not write")
    parser.add_argument("--mixed-precision", choices=PRECISIONS, default="no",
                        help="half-precision arithmetic for training (on GPUs): bf16 or fp16")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error(f"--steps must be a positive number of steps; got {args.steps}")

    cfg = config_mod.full_config(threads=args.threads, unet_steps=args.steps, sample_every=0,
                                 mixed_precision=args.mixed_precision)
    run_dir = Path(args.run)
    out = Path(args.out) if args.out else run_dir / "tiny-sd"
    try:
        refuse_overlap(out, args.source, "--out", "--from")
        if run_dir.resolve() == Path(args.source).resolve() or Path(args.source).resolve() in run_dir.resolve().parents:
            raise ValueError(f"--run {run_dir} is --from {args.source} or inside it: a command never writes into "
                             "the model it reads from; give another --run")
        claim_pipeline_folder(out, run_dir, args.overwrite)
    except (ValueError, FileExistsError) as error:
        parser.error(str(error))
    run_dir.mkdir(parents=True, exist_ok=True)
    progress = not args.quiet
    set_threads(cfg.threads)
    started = time.time()

    # This process, as accelerate sees it (one of several under `accelerate launch`): only the main one writes files.
    accelerator = Accelerator(mixed_precision=cfg.mixed_precision)
    pipe = load_pipeline(args.source)  # validated, float32
    with accelerator.main_process_first():  # the others then read the caches it wrote
        data = build_set_of(cfg, run_dir / "train_set.npz", progress)
        latents = load_or_cache_latents(pipe.vae, data["images"], run_dir / "latents.npz", progress)

    seed_everything(cfg.seed + 3)
    unet, text_encoder = train_unet(cfg, latents, data["token_ids"], pipe.text_encoder, pipe.vae, pipe.tokenizer,
                      pipe.vae.config.scaling_factor, run_dir, progress, init_unet=pipe.unet,
                      record={"from": str(Path(args.source).resolve()),
                              "from_sha256": folder_fingerprint(resolve_model(args.source))})
    accelerator.end_training()  # several processes: they are done working together
    if not accelerator.is_main_process:
        return
    save_pipeline(unet, pipe.vae, text_encoder, pipe.tokenizer, out, run_dir)
    save_samples(unet, pipe.vae, text_encoder, pipe.tokenizer, run_dir / "samples" / "final.png")
    minutes = round((time.time() - started) / 60, 1)
    write_json(run_dir / "train_longer_log.json",
               {"from": str(args.source), "steps": args.steps, "minutes_this_invocation": minutes})
    print(f"pipeline written to {out} after {args.steps} more U-Net steps ({minutes} min this run)")


if __name__ == "__main__":
    try:
        main()
    except CheckpointError as error:  # a message to act on; the traceback would not help
        raise SystemExit(f"error: {error}") from None
