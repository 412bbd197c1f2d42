"""The VAE round trip: what survives encoding (posterior mean) and decoding, as the judge sees it, and PSNR."""

from __future__ import annotations

import numpy as np
import torch

from ..arguments import choice, whole_number
from ..data import shapes
from ..data.photos import HELD_OUT_PHOTOS, photo_crops
from ..images import images_to_tensor, to_uint8
from .judge import COLOUR_NAMES, classify
from .objects import POSITION_NAMES
from .pictures import SIZE, as_pictures


@torch.no_grad()
def _round_trip(vae, images: np.ndarray, batch: int = 64) -> np.ndarray:
    """Encode (posterior mean) and decode uint8 pictures; returns uint8 pictures."""
    param = next(vae.parameters())
    out = []
    for start in range(0, len(images), batch):
        x = images_to_tensor(images[start : start + batch]).to(param.device, param.dtype)
        out.append(to_uint8(vae.decode(vae.encode(x).latent_dist.mode()).sample))
    return np.concatenate(out) if out else np.empty((0, SIZE, SIZE, 3), dtype=np.uint8)


def psnr(images, reference) -> float:
    """Mean PSNR (dB, on the 0..1 scale) of pictures against their references."""
    a = as_pictures(images, "images").astype(np.float64) / 255
    b = as_pictures(reference, "reference").astype(np.float64) / 255
    if a.shape != b.shape:
        raise ValueError(f"images: shape {a.shape}, reference: shape {b.shape}; they must match")
    mse = ((a - b) ** 2).reshape(len(a), -1).mean(1)
    return float(np.mean(10 * np.log10(1.0 / np.maximum(mse, 1e-10))))


def round_trip_pictures(shape: str, size: str, n: int, seed: int = 3131) -> np.ndarray:
    """`n` fresh single-object pictures of one shape and size: colour, background (another
    colour or gray) and position at random."""
    choice("shape", shape, shapes.ALL_SHAPES)
    choice("size", size, shapes.SIZES)
    n = whole_number("n", n, minimum=0)
    rng = np.random.default_rng([seed, shapes.ALL_SHAPES.index(shape), shapes.SIZES.index(size)])
    images = np.empty((n, SIZE, SIZE, 3), dtype=np.uint8)
    for i in range(n):
        background = list(shapes.BACKGROUNDS)[rng.integers(len(shapes.BACKGROUNDS))]
        colours = [c for c in COLOUR_NAMES if c != background]
        spec = {"colour": colours[rng.integers(len(colours))], "shape": shape, "size": size,
                "position": POSITION_NAMES[rng.integers(len(POSITION_NAMES))]}
        images[i] = shapes.render(shapes.make_scene([spec], background, rng))
    return images


def vae_round_trip(vae, n_per_cell: int = 100, n_psnr: int = 256, seed: int = 3131, classifier=None) -> dict:
    """What survives a VAE's encode (posterior mean) and decode.

    vae: a diffusers AutoencoderKL (e.g. a pipeline's `vae`).
    For each shape (star included) and size, `n_per_cell` fresh pictures (`round_trip_pictures`)
    go through the VAE; `shape_kept[shape][size]` is the share (%) whose shape the judge still
    names, and `shape_clean[shape][size]` the judge's share on the same pictures before the VAE
    (the measure's own accuracy). PSNRs (dB) on `n_psnr` fresh shape pictures (the training
    mix of one and two objects, no stars), held-out photo crops and fresh crops of the
    training photos.
    """
    n_per_cell = whole_number("n_per_cell", n_per_cell, minimum=1)
    n_psnr = whole_number("n_psnr", n_psnr, minimum=1)
    kept, clean = {}, {}
    for shape in shapes.ALL_SHAPES:
        kept[shape], clean[shape] = {}, {}
        for size in shapes.SIZES:
            images = round_trip_pictures(shape, size, n_per_cell, seed)
            before = classify(images, classifier)
            after = classify(_round_trip(vae, images), classifier)
            clean[shape][size] = float(100 * np.mean([g["shape"] == shape for g in before]))
            kept[shape][size] = float(100 * np.mean([g["shape"] == shape for g in after]))
    fresh, _, _ = shapes.make_dataset(n_psnr, seed=4242)
    held_out = photo_crops(n_psnr, seed=4243, names=HELD_OUT_PHOTOS)
    training_photos = photo_crops(n_psnr, seed=4244)
    return {
        "shape_kept": kept,
        "shape_clean": clean,
        "psnr_fresh_shapes": psnr(_round_trip(vae, fresh), fresh),
        "psnr_held_out_photo_crops": psnr(_round_trip(vae, held_out), held_out),
        "psnr_training_photos_fresh_crops": psnr(_round_trip(vae, training_photos), training_photos),
        "n_per_cell": n_per_cell,
    }
