"""Checks for lesson 00: turning a network's output into a picture."""

import torch

from .core import Case, exercise_check

__all__ = ["check_to_uint8_image"]

SOLUTION_NOTEBOOK = "solutions/00_start_here.ipynb"  # hint() points here after the last hint


def to_uint8_image_reference(x: torch.Tensor) -> torch.Tensor:
    # (channels, height, width) in [-1, 1]  ->  (height, width, channels) uint8 in [0, 255]
    return ((x.clamp(-1, 1) + 1) / 2 * 255).round().to(torch.uint8).permute(1, 2, 0)


def _cases():
    generator = torch.Generator().manual_seed(0)
    return [
        Case("black, grey and white pixels", (torch.tensor([-1.0, 0.0, 1.0]).reshape(3, 1, 1),)),
        Case("a random 3x4x5 image in [-1, 1]", (torch.rand(3, 4, 5, generator=generator) * 2 - 1,)),
        Case("values beyond [-1, 1], as a network may give", (torch.tensor([-1.7, 0.25, 1.4]).reshape(3, 1, 1),)),
        Case("a non-square 3x2x6 image", (torch.linspace(-1, 1, 36).reshape(3, 2, 6),)),
    ]


check_to_uint8_image = exercise_check(
    "to_uint8_image",
    to_uint8_image_reference,
    _cases,
    mistakes={
        "the values were not shifted from [-1, 1] to [0, 1] before scaling by 255": lambda x: (
            (x.clamp(-1, 1) * 255).round().to(torch.uint8).permute(1, 2, 0)
        ),
        "channels were not moved last: pictures are (height, width, channels)": lambda x: (
            ((x.clamp(-1, 1) + 1) / 2 * 255).round().to(torch.uint8)
        ),
        "values were not clamped to [-1, 1] first, so they wrapped around in uint8": lambda x: (
            ((x + 1) / 2 * 255).round().to(torch.uint8).permute(1, 2, 0)
        ),
        "values were truncated instead of rounded": lambda x: (
            ((x.clamp(-1, 1) + 1) / 2 * 255).to(torch.uint8).permute(1, 2, 0)
        ),
    },
    hints=[
        "Work in steps: bring every value into [-1, 1] first, then map that range onto [0, 255], "
        "and only at the end change the dtype and the order of the axes.",
        "x.clamp(-1, 1) limits the values. Adding 1 and halving maps [-1, 1] onto "
        "[0, 1]; multiplying by 255 gives the pixel scale.",
        "Round before the cast, because the cast alone drops the fraction: "
        "((x.clamp(-1, 1) + 1) / 2 * 255).round().to(torch.uint8), then .permute(1, 2, 0) moves the channels last.",
    ],
    solution=SOLUTION_NOTEBOOK,
)
