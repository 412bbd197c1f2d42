"""DreamBooth: a rare word for one subject, and the prior preservation that keeps its class.

DreamBooth fine-tunes every U-Net weight on a few pictures of a subject, captioned with a rare
word beside the subject's class ("a sks shape"). Trained on those pictures alone, the model
soon draws the subject for the class word too, and forgets the class's variety ("language
drift"). The paper's remedy: before training, the model itself draws pictures for the class
prompt ("a red shape"), and every step also learns those again,

    loss = instance loss + prior_loss_weight * prior loss,

each the squared error of the noise prediction, averaged over its own pictures.

Where the text encoder never learned the rare word (the tiny model's), "a sks shape" reaches the
U-Net nearly as "a shape" does, and the class pictures pull the subject back to the class; a new
word whose row trains beside the U-Net moves it apart (`training.methods.DreamBooth(learned_word=...)`).
"""

from __future__ import annotations

import numpy as np
import torch

from .arguments import real_number, whole_number
from .images import unit_to_uint8


def prior_preservation_loss(per_picture: torch.Tensor, is_prior: torch.Tensor, prior_loss_weight: float = 1.0):
    """The instance loss plus `prior_loss_weight` times the prior loss.

    per_picture: each picture's loss (batch,); is_prior: True for the class pictures (batch,).
    Each part is the mean over its own pictures, so the weight does not depend on how many of
    each a batch holds.
    """
    real_number("prior_loss_weight", prior_loss_weight, 0)
    is_prior = is_prior.to(per_picture.device).bool()
    if is_prior.all() or not is_prior.any():
        raise ValueError(f"a batch needs both subject and class pictures for prior preservation; it has "
                         f"{int((~is_prior).sum())} subject and {int(is_prior.sum())} class pictures")
    return per_picture[~is_prior].mean() + prior_loss_weight * per_picture[is_prior].mean()


@torch.no_grad()
def class_pictures(pipe, prompts: list[str], n: int, seed: int = 0, steps: int = 25, guidance_scale: float = 7.5,
                   batch: int = 16):
    """`n` pictures the model itself draws for the class prompts (taken in turn), uint8
    (n, H, W, 3), and the prompt of each: the prior that DreamBooth keeps."""
    n = whole_number("n", n, minimum=1)
    if not prompts:
        raise ValueError("prompts must hold at least one class prompt, such as 'a red shape', got none")
    captions = [prompts[i % len(prompts)] for i in range(n)]
    generator = torch.Generator().manual_seed(seed)
    images = []
    for start in range(0, n, batch):
        out = pipe(captions[start : start + batch], num_inference_steps=steps, guidance_scale=guidance_scale,
                   generator=generator, output_type="np").images
        images.append(unit_to_uint8(out))
    return np.concatenate(images), captions
