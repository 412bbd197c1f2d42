"""Checks for lesson 08: the whole pipeline from scratch, against diffusers' StableDiffusionPipeline.

Both exercises run on the course's embedded tiny model (64x64 pictures), with a few steps, so a
check takes seconds. The reference is diffusers itself, with the same weights, seed and
arguments; a picture passes when no value differs by more than 1 (out of 255).
"""

from __future__ import annotations

import copy
from functools import lru_cache
from types import SimpleNamespace

import numpy as np
import torch

from .core import Case, exercise_check

__all__ = ["check_decode_latents", "check_text_to_image"]

SOLUTION_NOTEBOOK = "solutions/08_pipeline.ipynb"  # hint() points here after the last hint
STEPS = 3  # denoising steps per case: enough to show every mistake, few enough to stay fast


class Parts(SimpleNamespace):
    """The five parts of a pipeline: tokenizer, text_encoder, unet, vae, sampler.

    A check copies its inputs before every call, so that one call cannot change the next one's.
    The tokenizer holds no state a pipeline changes and is slow to copy, so copies share it.
    """

    def __deepcopy__(self, memo):
        shared = {"tokenizer": self.tokenizer}
        return Parts(**shared, **{k: copy.deepcopy(v, memo) for k, v in vars(self).items() if k not in shared})


@lru_cache(maxsize=1)
def _diffusers_pipeline():
    from ..pipeline import EMBEDDED_MODEL, load_pipeline

    return load_pipeline(EMBEDDED_MODEL)  # always the embedded model: a check must stay small and fast


@lru_cache(maxsize=4)
def course_parts(sampler="ddim") -> Parts:
    """The course's networks holding the embedded model's weights, and the sampler called `sampler`."""
    from ..pipeline import TextToImage

    sd = TextToImage.from_pretrained(_diffusers_pipeline(), sampler=sampler)
    return Parts(tokenizer=sd.tokenizer, text_encoder=sd.text_encoder, unet=sd.unet, vae=sd.vae, sampler=sd.sampler)


def _same_picture(got, expected):
    """uint8 pictures of the same shape that differ by at most 1 level anywhere."""
    return (
        isinstance(got, np.ndarray)
        and got.dtype == np.uint8
        and got.shape == expected.shape
        and int(np.abs(got.astype(np.int16) - expected.astype(np.int16)).max(initial=0)) <= 1
    )


def _same_decoded_picture(got, expected):
    """As `_same_picture`, and no more than 1 value in 1000 off at all. Two decoders that compute
    in another order may round a value that sits on a half level the other way; truncating
    instead of rounding moves about half of the values down by one."""
    if not _same_picture(got, expected):
        return False
    return float((got != expected).mean()) <= 0.001


def _to_uint8(pixels, *, map_range=True, clip=True, rounded=True):
    """(batch, 3, H, W) pixels in [-1, 1] -> uint8 (batch, H, W, 3), as diffusers' pipelines return them."""
    x = pixels / 2 + 0.5 if map_range else pixels  # [-1, 1] -> [0, 1]
    if clip:
        x = x.clamp(0, 1)
    x = (x * 255).round() if rounded else x * 255  # without round, the cast to uint8 drops the fraction
    if not clip:
        return x.permute(0, 2, 3, 1).numpy().astype(np.int64).astype(np.uint8)  # out-of-range values wrap around
    return x.permute(0, 2, 3, 1).numpy().astype(np.uint8)


# ---- warm-up: decode latents to a picture -------------------------------------------------


def decode_latents_reference(vae, latents):
    # pixels = VAE decoder(z / scaling_factor), then [-1, 1] -> 0..255, as diffusers' pipeline does
    pipe = _diffusers_pipeline()
    with torch.no_grad():
        pixels = pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample
    images = pipe.image_processor.postprocess(pixels, output_type="np")  # (batch, H, W, 3) in [0, 1]
    return (images * 255).round().astype(np.uint8)


def _decode_variant(scale="divide", **how):
    def decode(vae, latents):
        z = {"divide": latents / vae.scaling_factor, "multiply": latents * vae.scaling_factor, "none": latents}[scale]
        with torch.no_grad():
            pixels = vae.decode(z)
        return _to_uint8(pixels, **how)

    return decode


def _decode_cases():
    from ..data.shapes import make_scene, render

    vae = course_parts().vae
    g = torch.Generator().manual_seed(8)
    picture = torch.from_numpy(render(make_scene([{"colour": "red", "shape": "circle"}]))).permute(2, 0, 1)
    with torch.no_grad():
        circle = vae.encode(picture[None].float() / 127.5 - 1).mode() * vae.scaling_factor  # (1, 4, 8, 8)
    return [
        Case("the latents of a large red circle, shape (1, 4, 8, 8)", (vae, circle)),
        Case("random latents, shape (1, 4, 8, 8)", (vae, torch.randn(1, 4, 8, 8, generator=g))),
        Case("two random latents, shape (2, 4, 8, 8), twice as large", (vae, 2 * torch.randn(2, 4, 8, 8, generator=g))),
    ]


check_decode_latents = exercise_check(
    "decode_latents",
    decode_latents_reference,
    _decode_cases,
    mistakes={
        "the latents were not divided by the VAE's scaling factor before decoding": _decode_variant(scale="none"),
        "the latents were multiplied by the scaling factor; the decoder needs them divided by it": _decode_variant(
            scale="multiply"
        ),
        "the decoder's pixels are in [-1, 1]: map them to [0, 1] before scaling to 0..255": _decode_variant(
            map_range=False
        ),
        "the values were not clipped to [0, 1]: out-of-range values wrap around when cast to uint8": _decode_variant(
            clip=False
        ),
        "the values were truncated instead of rounded: casting to uint8 drops the fraction, so round first": (
            _decode_variant(rounded=False)
        ),
    },
    compare=_same_decoded_picture,
    hints=[
        "Undo the scaling the encoder side applied, decode, then turn the decoder's output into the "
        "usual picture format: values 0..255, channels last.",
        "The decoder expects z / vae.scaling_factor. Its output has shape (batch, 3, H, W) with values "
        "around [-1, 1], and some beyond.",
        "pixels = vae.decode(latents / vae.scaling_factor) inside torch.no_grad(); then "
        "((pixels / 2 + 0.5).clamp(0, 1) * 255).round(), permuted to (batch, H, W, 3), as uint8.",
    ],
    solution=SOLUTION_NOTEBOOK,
)


# ---- the exercise: text to image from the course's parts ----------------------------------


@lru_cache(maxsize=16)
def _diffusers_picture(twin, prompt, negative_prompt, num_inference_steps, guidance_scale, seed):
    import diffusers

    pipe = _diffusers_pipeline()
    components = {**pipe.components, "scheduler": getattr(diffusers, twin).from_config(pipe.scheduler.config)}
    swapped = diffusers.StableDiffusionPipeline(**components, requires_safety_checker=False)
    swapped.set_progress_bar_config(disable=True)
    image = swapped(prompt, negative_prompt=negative_prompt, height=64, width=64,
                    num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                    generator=torch.Generator().manual_seed(seed)).images[0]
    return np.asarray(image)


def text_to_image_reference(parts, prompt, negative_prompt="", num_inference_steps=25, guidance_scale=7.5, seed=0):
    # diffusers' StableDiffusionPipeline with the scheduler that parts.sampler reproduces
    twin = type(parts.sampler).twin
    return _diffusers_picture(twin, prompt, negative_prompt, num_inference_steps, guidance_scale, seed).copy()


def _scratch(parts, prompt, negative_prompt, num_inference_steps, guidance_scale, seed, *, swap=False,
             noise_sigma=True, scale_input=True, use_negative=True, **decode_how):
    """The pipeline from the course's parts; the keywords make it wrong in one chosen way."""
    from ..tokenizer import tokenize

    with torch.no_grad():
        def encode(text):
            return parts.text_encoder(tokenize(text, parts.tokenizer).input_ids)  # (1, 77, width)

        cond, uncond = encode(prompt), encode(negative_prompt if use_negative else "")
        context = torch.cat([uncond, cond])  # diffusers' order: [unconditional, conditional]
        sampler = parts.sampler
        sampler.set_timesteps(num_inference_steps)
        g = torch.Generator().manual_seed(seed)
        size = parts.unet.sample_size
        x = torch.randn(1, parts.unet.in_channels, size, size, generator=g)  # eps ~ N(0, I)
        if noise_sigma:
            x = x * sampler.init_noise_sigma  # x_T
        for t in sampler.timesteps:
            model_input = sampler.scale_model_input(x, t) if scale_input else x
            eps_uncond, eps_cond = parts.unet(torch.cat([model_input] * 2), t, context).chunk(2)
            if swap:
                eps_uncond, eps_cond = eps_cond, eps_uncond
            eps = eps_uncond + guidance_scale * (eps_cond - eps_uncond)
            x = sampler.step(eps, t, x, generator=g)
    return _decode_variant(**decode_how)(parts.vae, x)[0]


def _text_variant(**how):
    def text_to_image(parts, prompt, negative_prompt="", num_inference_steps=25, guidance_scale=7.5, seed=0):
        return _scratch(parts, prompt, negative_prompt, num_inference_steps, guidance_scale, seed, **how)

    return text_to_image


def _text_cases():
    return [
        Case(f"'a red circle', DDIM, {STEPS} steps, guidance 7.5, seed 0", (course_parts("ddim"), "a red circle"),
             {"num_inference_steps": STEPS, "guidance_scale": 7.5, "seed": 0}),
        Case(f"'a blue square on a yellow background', negative prompt 'a red circle', DDIM, {STEPS} steps, "
             "guidance 5, seed 1",
             (course_parts("ddim"), "a blue square on a yellow background", "a red circle"),
             {"num_inference_steps": STEPS, "guidance_scale": 5.0, "seed": 1}),
        Case(f"'a green triangle', Euler ancestral, {STEPS} steps, guidance 7.5, seed 2",
             (course_parts("euler_a"), "a green triangle"),
             {"num_inference_steps": STEPS, "guidance_scale": 7.5, "seed": 2}),
    ]


check_text_to_image = exercise_check(
    "text_to_image",
    text_to_image_reference,
    _text_cases,
    mistakes={
        "the latents were not divided by the VAE's scaling factor before decoding": _text_variant(scale="none"),
        "cond and uncond are swapped: guidance starts from the unconditional prediction and moves towards the "
        "prompt's, eps_uncond + w (eps_cond - eps_uncond)": _text_variant(swap=True),
        "the negative prompt was not used: it takes the empty prompt's place as the unconditional context": (
            _text_variant(use_negative=False)
        ),
        "the starting noise was not multiplied by the sampler's init_noise_sigma (1 for DDIM, larger for Euler)": (
            _text_variant(noise_sigma=False)
        ),
        "the U-Net got the latents without the sampler's scale_model_input (Euler samplers rescale them)": (
            _text_variant(scale_input=False)
        ),
        "the decoder's pixels are in [-1, 1]: map them to [0, 1] before scaling to 0..255": _text_variant(
            map_range=False
        ),
    },
    compare=_same_picture,
    hints=[
        "Follow the five steps of the lecture in order: encode both prompts, set the sampler's timesteps, "
        "draw the starting noise, loop over the timesteps, decode.",
        "Draw the noise of shape (1, 4, 8, 8) from torch.Generator().manual_seed(seed), scale it by "
        "sampler.init_noise_sigma, and pass the same generator to every sampler.step (Euler ancestral "
        "draws fresh noise at each step).",
        "In the loop: inp = sampler.scale_model_input(x, t); eps_uncond, eps_cond = unet(torch.cat([inp, inp]), "
        "t, torch.cat([c_neg, c])).chunk(2); eps = eps_uncond + w * (eps_cond - eps_uncond); "
        "x = sampler.step(eps, t, x, generator=g).",
        "Everything inside torch.no_grad(). After the loop, return decode_latents(vae, x)[0]: one picture "
        "of shape (64, 64, 3), dtype uint8.",
    ],
    solution=SOLUTION_NOTEBOOK,
)
