"""Checks for lesson 03: the U-Net, by its timestep embedding and by its numbers."""

from __future__ import annotations

import math

import torch

from ..unet import timestep_embedding as _package_timestep_embedding
from .core import Case, exercise_check

__all__ = ["check_timestep_embedding", "check_analyze_unet"]

SOLUTION_NOTEBOOK = "solutions/03_unet.ipynb"  # hint() points here after the last hint


# ---- warm-up: the sinusoidal timestep embedding ----------------------------------------------


def timestep_embedding_reference(t, dim, flip_sin_to_cos=True, freq_shift=0):
    # f_i = 10000 ** (-i / (half - freq_shift)), emb = [cos(t f), sin(t f)] (or sin first)
    return _package_timestep_embedding(t, dim, flip_sin_to_cos=flip_sin_to_cos, freq_shift=freq_shift)


def _embedding_variant(*, order=None, sign=-1.0, n_freqs="half", divide_by="half-shift", interleave=False):
    """A wrong embedding. order: None follows flip_sin_to_cos, "inverted" does the opposite."""

    def embed(t, dim, flip_sin_to_cos=True, freq_shift=0):
        half = dim // 2
        count = dim if n_freqs == "dim" else half
        denominator = {"half-shift": half - freq_shift, "half": half, "dim": dim}[divide_by]
        i = torch.arange(count, dtype=torch.float32)
        freqs = torch.exp(sign * math.log(10000) * i / denominator)
        angles = t.float()[:, None] * freqs[None, :]
        cos_first = flip_sin_to_cos if order is None else not flip_sin_to_cos
        first, second = (angles.cos(), angles.sin()) if cos_first else (angles.sin(), angles.cos())
        if interleave:
            return torch.stack([first, second], dim=-1).flatten(1)
        return torch.cat([first, second], dim=-1)

    return embed


def _embedding_cases():
    g = torch.Generator().manual_seed(3)
    return [
        Case("t = [0, 1, 10, 999], dim = 8, Stable Diffusion's order", (torch.tensor([0, 1, 10, 999]), 8)),
        Case("5 random t, dim = 320 (SD 1.5's first block width)", (torch.randint(0, 1000, (5,), generator=g), 320)),
        Case("t = [3, 500], dim = 16, DDPM's convention: sin first, freq_shift = 1",
             (torch.tensor([3, 500]), 16), {"flip_sin_to_cos": False, "freq_shift": 1}),
        Case("float t = [0.5, 250.25], dim = 6, cos first, freq_shift = 1",
             (torch.tensor([0.5, 250.25]), 6), {"flip_sin_to_cos": True, "freq_shift": 1}),
    ]


check_timestep_embedding = exercise_check(
    "timestep_embedding",
    timestep_embedding_reference,
    _embedding_cases,
    mistakes={
        "sin and cos are in the wrong order: flip_sin_to_cos=True puts the cosines first": _embedding_variant(
            order="inverted"
        ),
        "the exponent lost its minus sign: the frequencies must fall from 1 to about 1/10000": _embedding_variant(
            sign=1.0
        ),
        "dim frequencies instead of dim // 2: the cos half and the sin half get dim // 2 each": _embedding_variant(
            n_freqs="dim"
        ),
        "freq_shift was ignored: the exponent is -ln(10000) i / (half - freq_shift)": _embedding_variant(
            divide_by="half"
        ),
        "the exponent was divided by dim instead of half - freq_shift": _embedding_variant(divide_by="dim"),
        "cos and sin were interleaved (cos, sin, cos, sin, ...); they come as two halves, concatenated": (
            _embedding_variant(interleave=True)
        ),
    },
    hints=[
        "Use half = dim // 2 frequencies. One half of the output is the cosine of "
        "t times each frequency, the other half the sine.",
        "The frequencies fall from 1 towards 1/10000: f_i = exp(-ln(10000) * i / (half - "
        "freq_shift)) for i = 0, ..., half - 1. torch.arange and math.log build them.",
        "angles = t.float()[:, None] * freqs[None, :] has shape (batch, half). "
        "torch.cat([angles.cos(), angles.sin()], dim=-1) is SD's order; swap the two for the other.",
    ],
    solution=SOLUTION_NOTEBOOK,
)


# ---- the U-Net analyzer ----------------------------------------------------------------------


def _conv(c_in, c_out, kernel, bias=True):
    """Parameters of a Conv2d: one kernel x kernel filter per (input, output) pair, plus a bias per output."""
    return c_in * c_out * kernel * kernel + (c_out if bias else 0)


def _analyze(block_out_channels, layers_per_block=2, latent_size=64, *, bias=True, shortcut=True, skip_channels=True,
             up_extra=1, bytes_per_value=4, first_halving=0, mid_resnets=2, downsampled_skip=True):
    channels = list(block_out_channels)
    n, L = len(channels), layers_per_block

    def resnet(c_in, c_out):
        params = _conv(c_in, c_out, 3, bias) + _conv(c_out, c_out, 3, bias)  # conv1, conv2
        if shortcut and c_in != c_out:
            params += _conv(c_in, c_out, 1, bias)  # conv_shortcut
        return params

    levels = []
    for i, c in enumerate(channels):
        size = latent_size // 2 ** (i + first_halving)
        before = channels[i - 1] if i > 0 else channels[0]  # channels of the level above (conv_in's at the top)
        below = channels[i + 1] if i < n - 1 else channels[-1]  # channels arriving from below (the mid block's at the bottom)
        down = sum(resnet(before if k == 0 else c, c) for k in range(L))
        up_skips = ([c] * L + [before])[: L + up_extra]  # the last skip used here came from the level above
        up = 0
        for k, skip in enumerate(up_skips):
            x_channels = below if k == 0 else c
            up += resnet(x_channels + (skip if skip_channels else 0), c)
        stored = c * L + (before if downsampled_skip else 0)  # channels of the skips kept at this resolution
        levels.append({
            "resolution": size,
            "channels": c,
            "down_conv_params": down,
            "up_conv_params": up,
            "feature_map_bytes": c * size * size * bytes_per_value,
            "skip_bytes": stored * size * size * bytes_per_value,
        })
    mid = mid_resnets * resnet(channels[-1], channels[-1])
    return {  # totals first, so that a failure report shows them before it is cut short
        "total_conv_params": sum(lv["down_conv_params"] + lv["up_conv_params"] for lv in levels) + mid,
        "total_skip_bytes": sum(lv["skip_bytes"] for lv in levels),
        "mid_conv_params": mid,
        "levels": levels,
    }


def analyze_unet_reference(block_out_channels, layers_per_block=2, latent_size=64):
    return _analyze(block_out_channels, layers_per_block, latent_size)


def _analyzer_variant(**how):
    return lambda block_out_channels, layers_per_block=2, latent_size=64: _analyze(
        block_out_channels, layers_per_block, latent_size, **how
    )


def _analyzer_cases():
    return [
        Case("[64, 128, 256], 2 layers per block, 64x64 latents", ([64, 128, 256],)),
        Case("[32, 64, 128, 256], 2 layers per block, 64x64 latents", ([32, 64, 128, 256], 2, 64)),
        Case("SD 1.5: [320, 640, 1280, 1280], 2 layers, 64x64 latents", ([320, 640, 1280, 1280],),
             {"layers_per_block": 2, "latent_size": 64}),
        Case("[16, 32], 1 layer per block, 16x16 latents", ([16, 32], 1, 16)),
        Case("[8, 8, 24], 3 layers per block, 32x32 latents", ([8, 8, 24],), {"layers_per_block": 3, "latent_size": 32}),
    ]


check_analyze_unet = exercise_check(
    "analyze_unet",
    analyze_unet_reference,
    _analyzer_cases,
    mistakes={
        "the skip connection's channels were left out of the up ResNets' input: they take x and the skip, concatenated": (
            _analyzer_variant(skip_channels=False)
        ),
        "the convolutions were counted without their biases: a k x k conv has c_in c_out k^2 + c_out parameters": (
            _analyzer_variant(bias=False)
        ),
        "the 1x1 shortcut conv is missing: a ResNet whose channels change needs one": _analyzer_variant(shortcut=False),
        "the up path got layers_per_block ResNets per level; it has layers_per_block + 1, one more than the down path": (
            _analyzer_variant(up_extra=0)
        ),
        "the memory was counted at float16 (2 bytes a value); float32 takes 4": _analyzer_variant(bytes_per_value=2),
        "off-by-one in the resolutions: level 0 works at the full latent size, level i at latent_size / 2**i": (
            _analyzer_variant(first_halving=1)
        ),
        "only one mid-block ResNet was counted; the mid block has two (ResNet, transformer, ResNet)": _analyzer_variant(
            mid_resnets=1
        ),
        "skip_bytes misses one map per level: the output of conv_in (level 0) or of the halving above (other levels)": (
            _analyzer_variant(downsampled_skip=False)
        ),
    },
    hints=[
        "Write a helper resnet_params(a, b) first, with conv_params: two 3x3 convolutions, plus a "
        "1x1 shortcut when a and b differ. Every count is a sum of these.",
        "At level i, name the neighbours: c_above is the channels of the level before (c_0 at level "
        "0), c_below those of the level after (the last level's at the bottom).",
        "Down: resnet_params(c_above, c) once, then resnet_params(c, c) L - 1 times. Up: L + 1 ResNets from x "
        "plus skip channels, x = [c_below, c, ..., c] and skip = [c, ..., c, c_above].",
        "With r = latent_size // 2**i: feature_map_bytes = c * r * r * 4 and skip_bytes = sum(skip) "
        "* r * r * 4. The mid block is 2 * resnet_params(c_last, c_last).",
    ],
    solution=SOLUTION_NOTEBOOK,
)
