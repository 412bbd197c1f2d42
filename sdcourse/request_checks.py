"""What every request for pictures must be: prompts, sizes, generators, input pictures, memory.

Both ways of making pictures check their arguments here: `generate` (a diffusers pipeline,
`sdcourse.loading`) and the from-scratch pipelines (`sdcourse.from_scratch`). Every mistake is a
ValueError that names the argument, the value given and what is allowed.
"""

from __future__ import annotations

import os

import torch
from PIL import Image

from sdcourse.arguments import probability, whole_number
from sdcourse.images import eight_bit_picture, mask_picture


def check_prompts(prompt, negative_prompt=None):
    """(prompts, negative prompts) as two lists of the same length.

    prompt: a non-empty string or a non-empty list of them. negative_prompt: None (the empty
    prompt ""), one string for every prompt, or a list with one per prompt.
    """
    prompts = [prompt] if isinstance(prompt, str) else prompt
    if not isinstance(prompts, (list, tuple)) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise ValueError(f"prompt must be a string or a non-empty list of strings, got {prompt!r}")
    if not all(p.strip() for p in prompts):
        raise ValueError(f"prompt must not be empty, got {prompt!r}; describe the picture you want")
    if negative_prompt is None:
        negatives = [""] * len(prompts)
    elif isinstance(negative_prompt, str):
        negatives = [negative_prompt] * len(prompts)
    elif isinstance(negative_prompt, (list, tuple)) and all(isinstance(n, str) for n in negative_prompt):
        negatives = list(negative_prompt)
        if len(negatives) != len(prompts):
            raise ValueError(
                f"negative_prompt has {len(negatives)} entries but prompt has {len(prompts)}: give one negative "
                "prompt per prompt, or one string for all of them"
            )
    else:
        raise ValueError(f"negative_prompt must be None, a string or a list of strings, got {negative_prompt!r}")
    return list(prompts), negatives


def check_strength(strength) -> float:
    """strength as a float in [0, 1]: how much noise img2img and inpainting add to the picture."""
    return probability("strength", strength, meaning="small: change the picture a little, 1: start from pure noise")


def check_size(height, width, factor: int = 8) -> tuple[int, int]:
    """height and width as ints (any integer type), each a positive multiple of the VAE's
    downsampling factor (8 for Stable Diffusion)."""
    sizes = []
    for name, value in (("height", height), ("width", width)):
        value = whole_number(name, value)
        if value < 1 or value % factor:
            raise ValueError(f"{name}={value}; it must be a positive multiple of {factor} (e.g. 64, 512)")
        sizes.append(value)
    return sizes[0], sizes[1]


# A rough peak for one picture, per pixel: float32 activations of the VAE decoder's
# full-resolution layers (128 channels in SD's), about three held at once. It overestimates
# the tiny model (32 channels) and is the right size for SD 1.x, which is what it guards.
BYTES_PER_PIXEL = 4 * 128 * 3


def memory_limit_bytes(device="cpu") -> int:
    """The memory a request may use: the GPU's, or the machine's RAM. $SDCOURSE_MEMORY_GB overrides it."""
    override = os.environ.get("SDCOURSE_MEMORY_GB")
    if override:
        try:
            return int(float(override) * 2**30)
        except ValueError:
            raise ValueError(f"SDCOURSE_MEMORY_GB={override!r}; it must be a number of GB, such as 16") from None
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_properties(device).total_memory
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not on this system: do not guess
        return 2**62


def check_memory(batch: int, height: int, width: int, device="cpu"):
    """Refuse, before anything is allocated, a request whose rough peak memory
    (batch x height x width x BYTES_PER_PIXEL) is more than the device has. Set
    SDCOURSE_MEMORY_GB to move the limit."""
    need = batch * height * width * BYTES_PER_PIXEL
    limit = memory_limit_bytes(device)
    if need > limit:
        raise ValueError(
            f"{batch} picture(s) of {height} x {width} would need about {need / 2**30:,.1f} GB at their peak, more "
            f"than the {limit / 2**30:,.1f} GB available: make fewer or smaller pictures at a time (or set "
            "SDCOURSE_MEMORY_GB if the estimate is wrong for your machine)"
        )


def check_generator(generator, batch):
    """None, one torch.Generator, or a list of them with one per picture; returns it (a list as a list)."""
    if generator is None or isinstance(generator, torch.Generator):
        return generator
    if isinstance(generator, (list, tuple)) and generator and all(isinstance(g, torch.Generator) for g in generator):
        if len(generator) != batch:
            raise ValueError(
                f"generator is a list of {len(generator)} generators for {batch} pictures: give one per picture "
                "(len(prompt) * num_images_per_prompt), or a single generator"
            )
        return list(generator)
    raise ValueError(f"generator must be a torch.Generator or a list of them, got {type(generator).__name__}")


def check_images(images, name, masks=False):
    """A PIL image or a list of them, as a list of 8-bit pictures (`sdcourse.images.eight_bit_picture`),
    or with `masks` 8-bit masks (`mask_picture`: a 0/1 mask is read as one)."""
    items = list(images) if isinstance(images, (list, tuple)) else [images]
    if not items or not all(isinstance(item, Image.Image) for item in items):
        raise ValueError(f"{name} must be a PIL image or a list of PIL images, got {type(images).__name__}")
    return [(mask_picture if masks else eight_bit_picture)(item, name) for item in items]


def check_image_count(count, batch):
    """Refuse `count` input images unless they divide the `batch` pictures evenly."""
    if batch % count:
        raise ValueError(f"image: {count} images for {batch} pictures; the number of pictures "
                         "(len(prompt) * num_images_per_prompt) must be a multiple of the number of images")
