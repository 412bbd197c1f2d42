"""Pictures and tensors: one conversion each way, one from [0, 1] floats to uint8, and the one
rule for pictures and masks of other depths (`eight_bit_picture`, `mask_picture`).

Pictures are uint8 arrays (N, H, W, 3): channels last, values 0..255, as numpy, PIL and the
shapes generator hold them. The networks (VAE, CLIP, the judge) take float tensors
(N, 3, H, W): channels first, values in [-1, 1].

    >>> pictures = np.zeros((2, 64, 64, 3), dtype=np.uint8)
    >>> images_to_tensor(pictures).shape
    torch.Size([2, 3, 64, 64])
    >>> np.array_equal(to_uint8(images_to_tensor(pictures)), pictures)
    True
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image


def images_to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 pictures (N, H, W, 3) -> float32 tensor (N, 3, H, W) in [-1, 1]: x / 127.5 - 1."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div(127.5).sub(1)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """Tensor (N, 3, H, W) in [-1, 1] -> uint8 pictures (N, H, W, 3): clamp, (x + 1) * 127.5, round.

    Any float dtype (float16 from a half-precision VAE, say) is rounded in float32; the pictures
    come back on the CPU."""
    images = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return images.permute(0, 2, 3, 1).cpu().numpy()


def unit_to_uint8(pictures: np.ndarray) -> np.ndarray:
    """Float pictures in [0, 1] (diffusers' output_type="np") -> uint8: x * 255, rounded, as
    diffusers' `numpy_to_pil` does. Values are expected in [0, 1] already (clamp first)."""
    return (pictures * 255).round().astype(np.uint8)


def eight_bit_picture(picture: Image.Image, name: str) -> Image.Image:
    """A PIL picture in 8 bits, by one rule for every depth:

    - 8-bit pictures (modes "RGB", "L", "RGBA", "P", "1", ...) come back as they are;
    - integer pictures of more bits (a 16-bit PNG opens in mode "I;16", or "I") hold 16-bit
      values: 0..65535, scaled to 0..255;
    - float pictures (mode "F") hold values in [0, 1], scaled to 0..255.
    The last two come back in mode "L" (grey). Values outside their range are a ValueError
    naming `name`: the picture is not what its mode says, and guessing would be silently wrong.
    """
    if not (picture.mode.startswith("I") or picture.mode == "F"):
        return picture
    values = np.asarray(picture, dtype=np.float64)
    top, kind = (1.0, "a float picture") if picture.mode == "F" else (65535.0, "a 16-bit picture")
    if values.size and not (np.isfinite(values).all() and 0 <= values.min() and values.max() <= top):
        raise ValueError(f"{name} is {kind} (mode {picture.mode!r}) with values from {values.min():g} to "
                         f"{values.max():g}; its values must lie in [0, {top:g}] (save it as an 8-bit picture)")
    return Image.fromarray((values * (255 / top)).round().astype(np.uint8), mode="L")


def mask_picture(mask: Image.Image, name: str) -> Image.Image:
    """A mask in 8 bits, where white (255) is the part to repaint: an integer or float mask that
    holds only 0s and 1s is a 0/1 mask and becomes 0 and 255; any other mask is a picture
    (`eight_bit_picture`). Bool masks (mode "1") are 0 and 255 already."""
    if mask.mode not in ("1", "P"):
        values = np.asarray(mask)
        if values.size and np.isin(values, (0, 1)).all():
            return Image.fromarray(values.astype(np.uint8) * 255)
    return eight_bit_picture(mask, name)
