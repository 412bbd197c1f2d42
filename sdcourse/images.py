"""Pictures and tensors: one conversion each way, and one from [0, 1] floats to uint8.

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
