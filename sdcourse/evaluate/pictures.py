"""Pictures in: every measure checks the pictures it is given, and reads them as uint8.

Pictures may be a uint8 array (N, 64, 64, 3), a float array in [0, 1] of that shape (what the
pipeline returns with output_type="np"), or a list of PIL images; anything else is refused with a
ValueError that names the argument, what was given and what is allowed.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from ..data import shapes
from ..images import eight_bit_picture, unit_to_uint8

SIZE = shapes.IMAGE_SIZE
ALLOWED_PICTURES = "a uint8 array (N, 64, 64, 3), a float array in [0, 1] of that shape, or a list of PIL images"


def as_pictures(images, name: str = "images") -> np.ndarray:
    """Check pictures and return them as a uint8 array (N, 64, 64, 3).

    Allowed: a uint8 array (N, 64, 64, 3), a float array in [0, 1] of that shape, or a list
    of PIL images (64x64). Anything else raises a ValueError that names `name`, what was given
    and what is allowed: a float array in [0, 255] or [-1, 1] would otherwise be misread.
    """
    if isinstance(images, (list, tuple)):
        others = sorted({type(im).__name__ for im in images if not isinstance(im, Image.Image)})
        if others:
            raise ValueError(f"{name}: a list holding {', '.join(others)}; allowed: {ALLOWED_PICTURES}")
        sizes = sorted({im.size for im in images if im.size != (SIZE, SIZE)})
        if sizes:
            raise ValueError(f"{name}: PIL images of size {sizes[0][0]}x{sizes[0][1]}; "
                             f"allowed: {ALLOWED_PICTURES}")
        if not images:
            return np.empty((0, SIZE, SIZE, 3), dtype=np.uint8)
        pictures = [eight_bit_picture(im, f"{name}[{i}]").convert("RGB") for i, im in enumerate(images)]
        return np.stack([np.asarray(picture) for picture in pictures])
    if not isinstance(images, np.ndarray):
        hint = " (convert it with .cpu().numpy(), channels last)" if isinstance(images, torch.Tensor) else ""
        raise ValueError(f"{name}: a {type(images).__name__}{hint}; allowed: {ALLOWED_PICTURES}")
    if images.ndim != 4 or images.shape[1:] != (SIZE, SIZE, 3):
        hint = ""
        if images.shape == (SIZE, SIZE, 3):
            hint = " (one picture: add a batch axis, images[None])"
        elif images.ndim == 4 and images.shape[1:] == (3, SIZE, SIZE):
            hint = " (channels first: use images.transpose(0, 2, 3, 1))"
        raise ValueError(f"{name}: an array of shape {images.shape}{hint}; allowed: {ALLOWED_PICTURES}")
    if images.dtype == np.uint8:
        return images
    if not np.issubdtype(images.dtype, np.floating):
        raise ValueError(f"{name}: an array of dtype {images.dtype}; allowed: {ALLOWED_PICTURES}")
    if images.size:
        if not np.isfinite(images).all():
            raise ValueError(f"{name}: a {images.dtype} array with NaN or infinite values; allowed: {ALLOWED_PICTURES}")
        low, high = float(images.min()), float(images.max())
        if low < 0 or high > 1:
            hint = ""
            if low >= -1 and low < 0:
                hint = " (pictures in [-1, 1]? give (images + 1) / 2)"
            elif low >= 0 and high <= 255:
                hint = " (pictures in [0, 255]? give images / 255, or uint8)"
            raise ValueError(f"{name}: a {images.dtype} array with values in [{low:.3g}, {high:.3g}]{hint}; "
                             f"allowed: {ALLOWED_PICTURES}")
    return unit_to_uint8(images)
