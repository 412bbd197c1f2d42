"""Finding objects without the judge: the foreground, where it is, and each object alone."""

from __future__ import annotations

import numpy as np
from skimage.measure import label

from ..data import shapes
from .judge import classify
from .pictures import as_pictures

POSITION_NAMES = tuple(shapes.POSITIONS)

# A pixel belongs to an object when its colour is at least this far (Euclidean distance in
# RGB, 0..255) from the background's. The closest object/background pair of the palette,
# orange on yellow, is 81 apart; half of that, 40, counts every pixel that an object covers
# at least half of (an anti-aliased edge pixel is a mix of the two colours), for every pair.
# The VAE's and the sampler's noise in flat areas is well below it.
FOREGROUND_THRESHOLD = 40.0
# Connected pieces of foreground smaller than this are specks, not objects: the smallest
# shape the generator draws (a small star) covers about 50 pixels.
MIN_OBJECT_PIXELS = 20


def background_colour(image: np.ndarray) -> np.ndarray:
    """The background of one uint8 picture (64, 64, 3): the median colour of its border pixels."""
    border = np.concatenate([image[0], image[-1], image[1:-1, 0], image[1:-1, -1]])
    return np.median(border.astype(np.float32), axis=0)


def foreground_mask(image: np.ndarray, threshold: float = FOREGROUND_THRESHOLD) -> np.ndarray:
    """Boolean (64, 64): the pixels of one uint8 picture whose colour is at least `threshold`
    from the background's (see FOREGROUND_THRESHOLD for the choice)."""
    distance = np.linalg.norm(image.astype(np.float32) - background_colour(image), axis=-1)
    return distance >= threshold


def _nearest_position(x: float, y: float) -> str:
    return min(POSITION_NAMES, key=lambda p: (x - shapes.POSITIONS[p][0]) ** 2 + (y - shapes.POSITIONS[p][1]) ** 2)


def locate(images) -> list[dict]:
    """Where the object in each picture is, found without the classifier.

    The foreground (`foreground_mask`) gives a centroid (x, y) in pixels, with (32, 32) the
    middle of the picture; its position is the name in `shapes.POSITIONS` whose centre is
    nearest. So "center" means the centroid lies within the diamond |x - 32| + |y - 32| < 16
    (nearer (32, 32) than any corner centre such as (16, 16)); a corner position means the
    centroid is in that quadrant and outside the diamond. Why: the generator puts an object
    within 2.5 pixels of its position's centre in x and in y (a triangle's centroid lies up to
    2.7 pixels lower), so on clean pictures the centroid stays over 6 pixels from any boundary
    (6.4 at the least over 2,000 pictures), and a drawing counts as right when it is nearer the
    asked-for place than any other; it is also the rule the generator uses to name a free position.
    A picture without foreground has position None; one with several objects gets the centroid of
    all of them.

    Returns, per picture, {"position": name or None, "centroid": (x, y) or None, "pixels": n}.
    """
    images = as_pictures(images, "images")
    found = []
    for image in images:
        mask = foreground_mask(image)
        if not mask.any():
            found.append({"position": None, "centroid": None, "pixels": 0})
            continue
        rows, cols = np.nonzero(mask)
        x, y = float(cols.mean() + 0.5), float(rows.mean() + 0.5)  # pixel centres, as the generator draws
        found.append({"position": _nearest_position(x, y), "centroid": (x, y), "pixels": int(mask.sum())})
    return found


def split_objects(image: np.ndarray, n: int = 2, min_pixels: int = MIN_OBJECT_PIXELS) -> list[np.ndarray]:
    """The `n` largest objects of one uint8 picture (64, 64, 3), each painted alone on the background.

    Objects are the connected pieces of the foreground (8-connected, `skimage.measure.label`)
    of at least `min_pixels` pixels, largest first; each is copied onto a picture filled with
    the background colour. Fewer than `n` pictures come back when there are fewer objects.
    Two objects that touch count as one.
    """
    pieces = label(foreground_mask(image), connectivity=2)
    areas = np.bincount(pieces.ravel())[1:]
    order = [i + 1 for i in np.argsort(-areas, kind="stable") if areas[i] >= min_pixels][:n]
    background = np.round(background_colour(image)).astype(np.uint8)
    alone = []
    for piece in order:
        canvas = np.empty_like(image)
        canvas[:] = background
        canvas[pieces == piece] = image[pieces == piece]
        alone.append(canvas)
    return alone


def classify_objects(images, classifier=None, n: int = 2) -> list[list[dict]]:
    """Colour and shape of each of the `n` largest objects of every picture (`split_objects`,
    then the judge on each alone), largest first; a list per picture, shorter when fewer are found."""
    images = as_pictures(images, "images")
    pieces = [split_objects(image, n) for image in images]
    flat = [p for group in pieces for p in group]
    guesses = classify(np.stack(flat), classifier) if flat else []
    out, start = [], 0
    for group in pieces:
        out.append(guesses[start : start + len(group)])
        start += len(group)
    return out
