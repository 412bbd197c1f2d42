"""Classifier-free guidance (Ho & Salimans, 2022): push the prediction towards the prompt.

The U-Net predicts the noise twice at every step, once with the prompt's embedding
(eps_cond) and once with the embedding of the empty prompt "" (eps_uncond), and the sampler
uses

    eps = eps_uncond + w * (eps_cond - eps_uncond)

w (guidance_scale) = 1 gives eps_cond alone; w > 1 goes past it, away from the unconditional
prediction (Stable Diffusion's default is 7.5).

A negative prompt takes the empty prompt's place: eps_uncond becomes the prediction for the
negative prompt, so w > 1 pushes the image away from what the negative prompt describes.
"""

from __future__ import annotations

import torch

from sdcourse.arguments import real_number


def check_guidance_scale(guidance_scale) -> float:
    """Return guidance_scale as a float, or raise a ValueError unless it is a finite number >= 0."""
    return real_number("guidance_scale", guidance_scale, 0)


def uses_guidance(guidance_scale) -> bool:
    """Whether a call with this guidance_scale guides: checks it, then `guidance_scale > 1`.

    With w <= 1 a pipeline skips the unconditional pass and uses eps_cond alone, as diffusers'
    (`do_classifier_free_guidance`). Decide it once per call, before the denoising loop.
    """
    return check_guidance_scale(guidance_scale) > 1


def _combine(eps_uncond, eps_cond, w: float) -> torch.Tensor:
    return eps_uncond + w * (eps_cond - eps_uncond)


def classifier_free_guidance(eps_uncond, eps_cond, guidance_scale) -> torch.Tensor:
    """eps_uncond + guidance_scale * (eps_cond - eps_uncond).

    Any guidance_scale >= 0 is valid: 1 gives eps_cond alone, 0 gives eps_uncond, values in
    between mix the two, and values above 1 go beyond eps_cond. Pipelines, diffusers' included,
    skip the unconditional pass when guidance_scale <= 1 (see `uses_guidance`) and use eps_cond
    alone; `guided_noise_prediction` does the same. A negative or NaN guidance_scale raises a ValueError.
    """
    return _combine(eps_uncond, eps_cond, check_guidance_scale(guidance_scale))


def guided_noise_prediction(model, latents, t, cond_context, uncond_context, guidance_scale) -> torch.Tensor:
    """The guided prediction at timestep t, from ONE batched call of the denoiser.

    model: a denoiser called as model(latents, t, context) that returns a tensor; for a diffusers
        U-Net, `lambda x, t, c: unet(x, t, encoder_hidden_states=c).sample`.
    latents: (batch, C, h, w); cond_context: the prompt's embedding (batch, tokens, dim);
    uncond_context: the empty prompt's embedding, or a negative prompt's, of the same shape.

    As in diffusers, the two halves of the batch are [unconditional, conditional]: the model sees
    torch.cat([latents, latents]) with torch.cat([uncond_context, cond_context]), and the output
    is split back with chunk(2). t is one timestep (or one per sample, repeated for both halves).
    With guidance_scale <= 1 there is no guidance (`uses_guidance`): the model runs on the
    conditional half only, and uncond_context may be None.
    """
    if not uses_guidance(guidance_scale):
        return model(latents, t, cond_context)
    if uncond_context is None:
        raise ValueError(f"guidance_scale={guidance_scale} > 1 needs uncond_context (the empty or negative prompt's)")
    if uncond_context.shape != cond_context.shape:
        raise ValueError(
            "uncond_context must have the shape of cond_context: "
            f"uncond {tuple(uncond_context.shape)}, cond {tuple(cond_context.shape)}"
        )
    if isinstance(t, torch.Tensor) and t.ndim == 1 and len(t) == len(latents):
        t = torch.cat([t, t])  # one timestep per sample: both halves need theirs
    output = model(torch.cat([latents, latents]), t, torch.cat([uncond_context, cond_context]))
    eps_uncond, eps_cond = output.chunk(2)
    return _combine(eps_uncond, eps_cond, float(guidance_scale))
