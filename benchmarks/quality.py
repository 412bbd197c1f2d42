"""Quality figures of the course's tiny Stable Diffusion (the shipped one, or any build).

    python benchmarks/quality.py                      # the shipped model, everything
    python benchmarks/quality.py --quick              # fewer prompts and pictures
    python benchmarks/quality.py --run runs/tiny-sd   # a build: <run>/tiny-sd, <run>/tiny-clip
    python benchmarks/quality.py --model DIR --prompts 16 --seeds 2 --scales 7.5

Every figure is judged by the fixed judge (sdcourse/assets/shape_classifier.safetensors),
so two models measured here are comparable. Prints:
- load time of `load_pipeline()` and time for 16 pictures at 25 steps with CFG;
- each measure's own accuracy on clean generator pictures: the judge (colour, shape), the
  position measure, the size measure (per shape), the colour measure (pink too), the two-object measure;
- the VAE round trip: per shape and size, the share of fresh pictures whose shape the judge
  still names after encoding and decoding; PSNR on shape pictures and photo crops;
- how much the text encoder's output changes when a colour, shape, position or colour-shape
  binding word changes (a U-Net can follow only the words that move it);
- the tiny CLIP's zero-shot colour and shape accuracy, when its image half is found;
- prompt adherence (single-object prompts, colour and shape) over guidance scales; beside it,
  the size right on the prompts that name one, and colour, shape and (where named) size right;
- position right, for prompts that name one position;
- both objects right, for prompts that name two.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Shared machines: spinning OpenMP threads slow everything down several times.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Quality figures of the tiny SD.")
    parser.add_argument("--model", default=None,
                        help="pipeline folder (default: <run>/tiny-sd with --run, else the shipped model)")
    parser.add_argument("--run", default=None,
                        help="a build's run folder: the model defaults to <run>/tiny-sd, "
                             "the CLIP image half is <run>/tiny-clip")
    parser.add_argument("--clip", default=None,
                        help="folder of the CLIP's image half (default: found from --run or --model)")
    parser.add_argument("--judge", default=None, help="another classifier to judge with (default: the fixed judge)")
    parser.add_argument("--quick", action="store_true",
                        help="a quick run: 24 prompts at guidance 1 and 7.5, 20 position and 20 two-object prompts, "
                             "300 clean pictures per measure, 50 pictures per VAE cell")
    parser.add_argument("--prompts", type=int, default=None, help="single-object prompts (default 64; quick 24)")
    parser.add_argument("--position-prompts", type=int, default=None, help="position prompts (default 40; quick 20)")
    parser.add_argument("--two-object-prompts", type=int, default=None,
                        help="two-object prompts (default 40; quick 20)")
    parser.add_argument("--seeds", type=int, default=4, help="seeds per prompt (default 4)")
    parser.add_argument("--scales", default=None, help="guidance scales, comma-separated (default 1,3,5,7.5,10,15; "
                                                       "quick 1,7.5)")
    parser.add_argument("--guidance", type=float, default=7.5, help="guidance for position and two-object prompts")
    parser.add_argument("--steps", type=int, default=25, help="DDIM steps per picture")
    parser.add_argument("--n", type=int, default=None, help="clean pictures per measure's own accuracy (default 1000; "
                                                            "quick 300)")
    parser.add_argument("--vae-n", type=int, default=None, help="pictures per shape and size for the VAE round trip "
                                                                "(default 200; quick 50)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    args = parser.parse_args(argv)
    quick = args.quick

    def default(value, full, fast):
        return value if value is not None else (fast if quick else full)

    args.prompts = default(args.prompts, 64, 24)
    args.position_prompts = default(args.position_prompts, 40, 20)
    args.two_object_prompts = default(args.two_object_prompts, 40, 20)
    args.n = default(args.n, 1000, 300)
    args.vae_n = default(args.vae_n, 200, 50)
    scales = default(args.scales, "1,3,5,7.5,10,15", "1,7.5")
    try:
        args.scales = [float(s) for s in scales.split(",") if s.strip()]
    except ValueError:
        parser.error(f"--scales {scales!r}: give numbers separated by commas, e.g. 1,7.5")
    for name in ("prompts", "position_prompts", "two_object_prompts", "n", "vae_n"):
        if getattr(args, name) < 0:
            parser.error(f"--{name.replace('_', '-')} {getattr(args, name)}: it must be 0 or more")
    if args.seeds < 1:
        parser.error(f"--seeds {args.seeds}: it must be 1 or more")
    if args.model is None and args.run is not None:
        args.model = str(Path(args.run) / "tiny-sd")
    return args


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    figures = {"settings": {k: v for k, v in vars(args).items() if k not in ("json", "threads")}}

    # Load time: in a fresh process this includes importing diffusers.
    t = time.perf_counter()
    from sdcourse.pipeline import load_pipeline

    pipe = load_pipeline(args.model)
    figures["load_seconds"] = round(time.perf_counter() - t, 2)
    print(f"model: {args.model or 'the shipped model'}")
    print(f"load_pipeline(): {figures['load_seconds']:.2f} s (including imports)")
    t = time.perf_counter()
    load_pipeline(args.model)
    figures["reload_seconds"] = round(time.perf_counter() - t, 2)
    print(f"load_pipeline() again (libraries imported): {figures['reload_seconds']:.2f} s")

    # Speed: 16 pictures, 25 DDIM steps, classifier-free guidance (so batches of 32 in the U-Net).
    prompts16 = ["a red circle", "a blue square", "a green triangle", "a yellow circle"] * 4
    generator = torch.Generator().manual_seed(0)
    pipe(prompts16, height=64, width=64, num_inference_steps=25, guidance_scale=7.5, generator=generator)
    times = []
    for _ in range(3):
        t = time.perf_counter()
        pipe(prompts16, height=64, width=64, num_inference_steps=25, guidance_scale=7.5, generator=generator)
        times.append(time.perf_counter() - t)
    figures["seconds_16_images_25_steps_cfg"] = round(statistics.median(times), 2)
    print(f"16 pictures, 25 steps, CFG 7.5: {figures['seconds_16_images_25_steps_cfg']:.2f} s (median of 3)")

    from sdcourse import evaluate as ev

    judge = ev.load_classifier(args.judge) if args.judge else ev.load_classifier()
    print(f"judge: {args.judge or ev.CLASSIFIER_PATH}")

    # Each measure's own accuracy on clean generator pictures.
    n = args.n
    if n:
        own = {
            "judge": ev.classifier_accuracy(n=n, seed=2024, classifier=judge),
            "position": ev.position_measure_accuracy(n=n, seed=2025),
            "size": ev.size_measure_accuracy(n=n, seed=2027),
            "colour": ev.colour_measure_accuracy(n=n, seed=2028),
            "two_objects": ev.two_object_measure_accuracy(n=n, seed=2026, classifier=judge),
        }
        figures["measures_on_clean_pictures"] = own
        print(f"the measures on {n} clean generator pictures each (their own accuracy):")
        print(f"  judge, one object (4 shapes incl. star): {_fmt(own['judge'])}")
        print(f"  position of one object: {_fmt(own['position'])}")
        print(f"  size of one object (all, then per shape): {_fmt(own['size'])}")
        print(f"  colour of one object, without the judge (all, then pink): {_fmt(own['colour'])}")
        print(f"  two objects: {_fmt(own['two_objects'])}")

    # The VAE.
    if args.vae_n:
        vae = ev.vae_round_trip(pipe.vae, n_per_cell=args.vae_n, n_psnr=128 if args.quick else 256,
                                classifier=judge)
        figures["vae"] = vae
        sizes = list(next(iter(vae["shape_kept"].values())))
        print(f"VAE round trip (posterior mean): shape still named by the judge, % of {args.vae_n} fresh "
              f"pictures per cell (clean pictures in brackets)")
        print("  shape     " + "".join(f"{size:>16}" for size in sizes))
        for shape, row in vae["shape_kept"].items():
            cells = "".join(f"{row[size]:9.1f} ({vae['shape_clean'][shape][size]:5.1f})" for size in sizes)
            print(f"  {shape:9} {cells}")
        print(f"VAE PSNR (dB): fresh shapes {vae['psnr_fresh_shapes']:.2f}, held-out photo crops "
              f"{vae['psnr_held_out_photo_crops']:.2f}, training photos (fresh crops) "
              f"{vae['psnr_training_photos_fresh_crops']:.2f}  (scaling_factor {pipe.vae.config.scaling_factor:.4f})")

    # The text encoder: how much each kind of word moves what the U-Net reads.
    from sdcourse.training.train_clip import word_sensitivity

    figures["text_encoder_word_sensitivity"] = word_sensitivity(pipe.text_encoder, pipe.tokenizer)
    print("text encoder output (77 tokens) change when one kind of word changes, %: "
          + ", ".join(f"{kind} {value:.1f}" for kind, value in figures["text_encoder_word_sensitivity"].items()))

    # CLIP zero-shot.
    clip_dir = Path(args.clip) if args.clip else ev.clip_image_folder(args.model, args.run)
    if clip_dir is not None and (clip_dir / "config.json").exists() and n:
        from sdcourse.training.export import load_clip
        from sdcourse.training.train_clip import zero_shot_accuracy

        clip = load_clip(clip_dir, pipe.text_encoder)
        figures["clip_zero_shot"] = zero_shot_accuracy(clip, n=n, seed=999)
        print(f"CLIP zero-shot accuracy on {n} fresh pictures ({clip_dir}): {_fmt(figures['clip_zero_shot'])}")
    else:
        print(f"CLIP zero-shot: skipped (no CLIP image half found{'' if n else ', or --n 0'}; give --run or --clip)")

    from sdcourse.data import shapes

    seeds = list(range(args.seeds))
    steps = args.steps

    # Prompt adherence over guidance scales.
    if args.prompts:
        prompts = shapes.evaluation_prompts(args.prompts)
        figures["adherence"] = {}
        print(f"prompt adherence: {len(prompts)} single-object prompts x {len(seeds)} seeds, {steps} DDIM steps")
        n_sized = sum(ev.parse_size(p["prompt"]) is not None for p in prompts) * len(seeds)
        print(f"  size%: size right on the {n_sized} pictures whose prompt names a size; "
              f"all%: colour, shape and (where named) size right")
        print("  guidance  colour%  shape%  both%  diversity   size%   all%")
        for scale in args.scales:
            r = ev.prompt_adherence(pipe, prompts, seeds=seeds, guidance_scale=scale, num_inference_steps=steps,
                                    classifier=judge)
            figures["adherence"][str(scale)] = {k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()}
            size = "    -" if r["size_correct"] is None else f"{r['size_correct']:5.1f}"
            print(f"  {scale:8.1f}  {r['colour_correct']:6.1f}  {r['shape_correct']:6.1f}  {r['both_correct']:5.1f}"
                  f"  {r['diversity']:9.3f}   {size}  {r['all_correct']:5.1f}", flush=True)

    # Position.
    if args.position_prompts:
        prompts = ev.position_prompts(args.position_prompts)
        r = ev.position_adherence(pipe, prompts, seeds=seeds, guidance_scale=args.guidance,
                                  num_inference_steps=steps, classifier=judge)
        figures["position"] = r
        print(f"position: {len(prompts)} prompts naming one position x {len(seeds)} seeds, guidance {args.guidance}: "
              f"position right {r['position_correct']:.1f}%, position, colour and shape right {r['all_correct']:.1f}%")

    # Two objects.
    if args.two_object_prompts:
        prompts = ev.two_object_prompts(args.two_object_prompts)
        r = ev.two_object_adherence(pipe, prompts, seeds=seeds, guidance_scale=args.guidance,
                                    num_inference_steps=steps, classifier=judge)
        figures["two_objects"] = r
        print(f"two objects: {len(prompts)} prompts x {len(seeds)} seeds, guidance {args.guidance}: "
              f"both right {r['both_correct']:.1f}%, colours right {r['colours_correct']:.1f}%, "
              f"shapes right {r['shapes_correct']:.1f}%, two objects found {r['two_found']:.1f}%")

    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return figures


def _fmt(acc: dict) -> str:
    return ", ".join(f"{k.replace('_correct', '')} {v:.1f}%" for k, v in acc.items())


if __name__ == "__main__":
    main()
