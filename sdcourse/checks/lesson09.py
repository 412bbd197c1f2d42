"""Checks for lesson 09: img2img and inpainting by latent masking.

The references are diffusers' own code paths: `StableDiffusionImg2ImgPipeline.get_timesteps` with the
scheduler's `add_noise` for the start of img2img, and the latent-masking lines of
`StableDiffusionInpaintPipeline` (the path it takes with a 4-channel U-Net) for inpainting. The
inpainting check's inputs are recorded from real runs of the course's tiny model.
"""

from __future__ import annotations

from functools import lru_cache

import torch

from .core import Case, exercise_check

__all__ = ["check_img2img_start", "check_mask_latents"]

SOLUTION_NOTEBOOK = "solutions/09_img2img_inpainting.ipynb"  # hint() points here after the last hint


@lru_cache(maxsize=1)
def _diffusers_pipeline():
    from ..pipeline import EMBEDDED_MODEL, load_pipeline

    return load_pipeline(EMBEDDED_MODEL)  # always the embedded model: a check must stay small and fast


def _ddim_scheduler(config):
    """diffusers' DDIMScheduler with the same settings as one of the course's DDIM samplers."""
    from diffusers import DDIMScheduler

    return DDIMScheduler.from_config(dict(config))


def _ddim_sampler(**changes):
    from ..samplers import make_sampler

    return make_sampler("ddim", {**_diffusers_pipeline().scheduler.config, **changes})


@lru_cache(maxsize=1)
def _picture_latents():
    """The latents of a rendered scene (a large red circle and a small blue square), on the diffusion scale."""
    from ..data.shapes import make_scene, render
    from ..pipeline import TextToImage

    vae = TextToImage.from_pretrained(_diffusers_pipeline()).vae
    scene = make_scene([{"colour": "red", "shape": "circle", "position": "top left"},
                        {"colour": "blue", "shape": "square", "size": "small", "position": "bottom right"}])
    pixels = torch.from_numpy(render(scene)).permute(2, 0, 1)[None].float() / 127.5 - 1  # (1, 3, 64, 64)
    with torch.no_grad():
        return vae.encode(pixels).mode() * vae.scaling_factor  # (1, 4, 8, 8)


# ---- exercise 1: where img2img starts ---------------------------------------------------------


def _img2img_start(sampler, image_latents, noise, strength, num_inference_steps, *, start_rule="diffusers",
                   shift=0, noise_index=None, roots=True, all_timesteps=False):
    scheduler = _ddim_scheduler(sampler.config)
    scheduler.set_timesteps(num_inference_steps)
    n = num_inference_steps
    if start_rule == "diffusers":  # StableDiffusionImg2ImgPipeline.get_timesteps
        start = max(n - min(int(n * strength), n), 0)
    elif start_rule == "seed text":  # the first index taken as int(n * strength)
        start = int(n * strength)
    else:  # "rounded"
        start = n - round(n * strength)
    timesteps = scheduler.timesteps[start:]
    index = start + shift if noise_index is None else noise_index
    t = scheduler.timesteps[min(max(index, 0), n - 1)]
    if roots:
        latents = scheduler.add_noise(image_latents, noise, t[None])  # sqrt(ab) z0 + sqrt(1 - ab) eps
    else:
        alpha_bar = scheduler.alphas_cumprod[t]
        latents = alpha_bar * image_latents + (1 - alpha_bar) * noise
    return (scheduler.timesteps if all_timesteps else timesteps), latents


def img2img_start_reference(sampler, image_latents, noise, strength, num_inference_steps):
    # diffusers: run the last int(n * strength) of the n timesteps, and noise z0 to the first of them
    return _img2img_start(sampler, image_latents, noise, strength, num_inference_steps)


def _start_variant(**how):
    return lambda sampler, image_latents, noise, strength, num_inference_steps: _img2img_start(
        sampler, image_latents, noise, strength, num_inference_steps, **how)


def _start_cases():
    z0 = _picture_latents()
    g = torch.Generator().manual_seed(9)
    noise = torch.randn(z0.shape, generator=g)
    return [
        Case("strength 0.6, 25 steps (the lecture's setting)", (_ddim_sampler(), z0, noise, 0.6, 25)),
        Case("strength 0.35, 10 steps: 3.5 steps to run", (_ddim_sampler(), z0, noise, 0.35, 10)),
        Case("strength 1.0, 20 steps: every step runs", (_ddim_sampler(), z0, noise, 1.0, 20)),
        Case("strength 0.5, 8 steps, a DDIM sampler with 'trailing' spacing",
             (_ddim_sampler(timestep_spacing="trailing"), z0, noise, 0.5, 8)),
        Case("strength 0.3, 50 steps, two pictures at once",
             (_ddim_sampler(), z0.repeat(2, 1, 1, 1), torch.randn((2, *z0.shape[1:]), generator=g), 0.3, 50)),
    ]


check_img2img_start = exercise_check(
    "img2img_start",
    img2img_start_reference,
    _start_cases,
    mistakes={
        "the first step was taken at index int(n * strength): strength is the share of the steps that RUN, "
        "so they are the last int(n * strength), starting at index n - int(n * strength)": _start_variant(
            start_rule="seed text"
        ),
        "n * strength was rounded; the number of steps to run is its integer part, int(n * strength)": _start_variant(
            start_rule="rounded"
        ),
        "all the timesteps were returned; return only the ones that run, from the first one on": _start_variant(
            all_timesteps=True
        ),
        "the picture was noised to the level of the schedule's first timestep, whatever the strength": _start_variant(
            noise_index=0
        ),
        "the picture was noised one timestep too far (the one before the first that runs)": _start_variant(shift=-1),
        "the picture was noised one timestep short (to the second timestep that runs)": _start_variant(shift=1),
        "the square roots are missing: x_t = sqrt(alpha_bar) z_0 + sqrt(1 - alpha_bar) noise": _start_variant(
            roots=False
        ),
    },
    hints=[
        "Set the sampler's timesteps for num_inference_steps first. Strength decides how many of them run: "
        "the last ones, the least noisy.",
        "int(num_inference_steps * strength) steps run, so the first one is at index "
        "start = num_inference_steps - int(num_inference_steps * strength) of sampler.timesteps.",
        "t = sampler.timesteps[start] and alpha_bar = sampler.alphas_cumprod[t]; return "
        "(sampler.timesteps[start:], alpha_bar.sqrt() * image_latents + (1 - alpha_bar).sqrt() * noise).",
    ],
    solution=SOLUTION_NOTEBOOK,
)


# ---- exercise 2: the latent-masking step of inpainting ---------------------------------------


def _mask_latents(latents, image_latents, noise, mask, timesteps, i, alphas_cumprod, *, inverted=False,
                  level="next", noised=True, roots=True):
    # diffusers' inpainting loop with a 4-channel U-Net, after scheduler.step:
    #   known = z0 noised to the level of timesteps[i + 1] (z0 itself after the last step)
    #   latents = (1 - mask) * known + mask * latents
    n = len(timesteps)
    index = {"next": i + 1, "next, also at the end": min(i + 1, n - 1), "current": i}[level]
    known = image_latents
    if noised and index < n:
        alpha_bar = alphas_cumprod[timesteps[index]]
        if roots:
            known = alpha_bar.sqrt() * image_latents + (1 - alpha_bar).sqrt() * noise
        else:
            known = alpha_bar * image_latents + (1 - alpha_bar) * noise
    if inverted:
        return mask * known + (1 - mask) * latents
    return (1 - mask) * known + mask * latents


def mask_latents_reference(latents, image_latents, noise, mask, timesteps, i, alphas_cumprod):
    # the lines of diffusers' StableDiffusionInpaintPipeline, with its scheduler's add_noise
    scheduler = _ddim_scheduler(_diffusers_pipeline().scheduler.config)
    known = image_latents
    if i < len(timesteps) - 1:
        known = scheduler.add_noise(known, noise, torch.tensor([timesteps[i + 1]]))
    return (1 - mask) * known + mask * latents


def _mask_variant(**how):
    return lambda latents, image_latents, noise, mask, timesteps, i, alphas_cumprod: _mask_latents(
        latents, image_latents, noise, mask, timesteps, i, alphas_cumprod, **how)


@lru_cache(maxsize=1)
def _recorded_steps():
    """The inputs of every masking step in two short inpainting runs of the tiny model (DDIM, guidance 7.5).

    The course's Inpaint is run step by step, as diffusers runs it: the picture's latents z0, the noise,
    the mask at latent size; after each sampler step the latents are recorded, then masked.
    """
    import torch.nn.functional as F
    from PIL import Image, ImageDraw

    from ..pipeline import Inpaint, add_noise, first_step, mask_to_tensor

    sd = Inpaint.from_pretrained(_diffusers_pipeline())
    mask_picture = Image.new("L", (64, 64), 0)
    ImageDraw.Draw(mask_picture).ellipse([30, 30, 62, 62], fill=255)  # white: repaint the bottom right
    mask = F.interpolate(mask_to_tensor([mask_picture], 64, 64), size=(8, 8))  # (1, 1, 8, 8), 1 = repaint
    z0 = _picture_latents()
    alphas_cumprod = _ddim_scheduler(_diffusers_pipeline().scheduler.config).alphas_cumprod
    records = []
    for strength, steps in ((1.0, 4), (0.6, 5)):
        g = torch.Generator().manual_seed(0)
        cond, uncond = sd.encode_prompts(["a green triangle"], [""], guided=True, num_images_per_prompt=1)
        start = first_step(steps, strength)
        timesteps = sd.set_timesteps(steps)[start:].clone()
        noise = sd.initial_noise(1, 64, 64, g)
        latents = noise if strength == 1 else add_noise(sd.sampler, z0, noise, start)

        def after_step(i, x, strength=strength, steps=steps, timesteps=timesteps, noise=noise):
            records.append((f"strength {strength:g}, {steps} steps: after step {i + 1} of {len(timesteps)}",
                            (x.clone(), z0, noise, mask, timesteps, i, alphas_cumprod)))
            return mask_latents_reference(x, z0, noise, mask, timesteps, i, alphas_cumprod)

        with torch.no_grad():
            sd.denoise(latents, timesteps, cond, uncond, 7.5, g, after_step=after_step)
    return records


def _mask_cases():
    records = dict(_recorded_steps())
    chosen = ["strength 1, 4 steps: after step 1 of 4", "strength 1, 4 steps: after step 2 of 4",
              "strength 1, 4 steps: after step 4 of 4 (the last)", "strength 0.6, 5 steps: after step 1 of 3",
              "strength 0.6, 5 steps: after step 3 of 3 (the last)"]
    return [Case(label, records[label.replace(" (the last)", "")]) for label in chosen]


check_mask_latents = exercise_check(
    "mask_latents",
    mask_latents_reference,
    _mask_cases,
    mistakes={
        "the mask is inverted: white (1) marks the part to repaint, where the sampler's latents stay; "
        "the picture's latents go where the mask is 0": _mask_variant(inverted=True),
        "after the last step the known part must be the clean picture latents: there is no next timestep to "
        "noise them to": _mask_variant(level="next, also at the end"),
        "the picture's latents were noised to the level of timesteps[i], the step just taken; after step i "
        "the latents are at the level of the NEXT timestep, timesteps[i + 1]": _mask_variant(level="current"),
        "the known part was left clean at every step: until the last step it must be as noisy as the latents "
        "around it": _mask_variant(noised=False),
        "the square roots are missing: sqrt(alpha_bar) z_0 + sqrt(1 - alpha_bar) noise": _mask_variant(roots=False),
    },
    hints=[
        "Two parts: first make the known part (the picture's latents at the right noise level), then put it "
        "where the mask says to keep the picture, and the sampler's latents elsewhere.",
        "After step i the latents are at the level of timesteps[i + 1]. Noise image_latents to that level with "
        "the forward process and the same noise; after the last step, use image_latents as they are.",
        "alpha_bar = alphas_cumprod[timesteps[i + 1]]; known = alpha_bar.sqrt() * image_latents + "
        "(1 - alpha_bar).sqrt() * noise; return (1 - mask) * known + mask * latents.",
    ],
    solution=SOLUTION_NOTEBOOK,
)
