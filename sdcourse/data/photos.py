"""Crops of real photos (scikit-image's), for the VAE: Stable Diffusion's autoencoder is
generic, so the course's sees photos as well as shapes. One photo is held out, never trained on,
to measure how well the VAE reconstructs what it has never seen.
"""

from __future__ import annotations

import numpy as np

TRAIN_PHOTOS = ("astronaut", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field", "retina",
                "colorwheel")
HELD_OUT_PHOTOS = ("chelsea",)  # never used in training; for measuring reconstruction


def load_photo(name: str) -> np.ndarray:
    import skimage.data

    photo = getattr(skimage.data, name)()
    if photo.ndim == 2:
        photo = np.stack([photo] * 3, axis=-1)
    return photo[..., :3]


def photo_crops(n: int, seed: int, names=TRAIN_PHOTOS) -> np.ndarray:
    """`n` random 64x64 crops (uint8) of scikit-image's photos, at random zoom levels."""
    from skimage.transform import rescale

    rng = np.random.default_rng(seed)
    photos = [load_photo(name) for name in names]
    # A few zoom levels per photo, from "whole photo" to "full resolution detail".
    pyramids = []
    for photo in photos:
        levels = []
        for scale in (1.0, 0.5, 0.3, 0.18):
            small = photo if scale == 1.0 else (rescale(photo, scale, channel_axis=-1, anti_aliasing=True) * 255)
            small = np.asarray(small).astype(np.uint8)
            if min(small.shape[:2]) >= 64:
                levels.append(small)
        pyramids.append(levels)
    crops = np.empty((n, 64, 64, 3), dtype=np.uint8)
    for i in range(n):
        levels = pyramids[rng.integers(len(pyramids))]
        img = levels[rng.integers(len(levels))]
        y = rng.integers(img.shape[0] - 63)
        x = rng.integers(img.shape[1] - 63)
        crop = img[y : y + 64, x : x + 64]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        crops[i] = crop
    return crops
