"""Finding objects without the judge: the foreground, where it is, how large it is, and each object alone."""

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
# An object is "large" when its extent (the mean of the width and the height, in pixels, of the
# bounding box of the largest connected foreground piece) is above this, else "small". The area
# cannot tell the sizes apart for every shape: a large star (256 to 409 px in the pictures below)
# is no bigger than a small circle (118 to 274 px) or square (110 to 270). The extent can: the
# generator draws a small shape with a half-width (`shapes.RADIUS`) of 6 to 9 px and a large one
# with 13 to 16, and a shape's extent is 1.72 (square) to 2.0 (circle, star) half-widths, so a
# small one is at most about 18 px across and a large one at least about 22.4. Measured on 4,000
# clean generator pictures (seed 11: the four shapes, both sizes, every position, colour and
# background), small shapes spanned 10.5 to 19.0 px (the most: a circle) and large ones 22.0 to
# 33.0 (the least: a square); at the half-widths nearest the gap (9 and 13), over every
# colour/background pair, small ones reached 19.0 and large ones 22.5. The threshold is the middle
# of the gap, 1.5 px from either side (an extent of exactly 20.5, never seen there, counts as small).
SIZE_THRESHOLD = 20.5


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


def _largest_piece(mask: np.ndarray, min_pixels: int = MIN_OBJECT_PIXELS):
    """Boolean mask of the largest connected piece (8-connected) of a foreground mask, or None
    when it has under `min_pixels` pixels (specks only, or no foreground)."""
    pieces = label(mask, connectivity=2)
    areas = np.bincount(pieces.ravel())[1:]
    if not areas.size or areas.max() < min_pixels:
        return None
    return pieces == int(np.argmax(areas)) + 1


def measure_size(images) -> list[dict]:
    """How large the object in each picture is, "small" or "large", found without the classifier.

    The object is the largest connected piece of the foreground (`foreground_mask`; pieces under
    MIN_OBJECT_PIXELS are specks). Its extent is the mean of the width and the height of its
    bounding box, in pixels; it is "large" when the extent is above SIZE_THRESHOLD (20.5 px, chosen
    on the generator's clean pictures: see its comment), else "small". A picture without an object
    has size None.

    Returns, per picture, {"size": "small", "large" or None, "extent": pixels or None, "pixels": n},
    `pixels` being the area of the piece measured.
    """
    images = as_pictures(images, "images")
    found = []
    for image in images:
        piece = _largest_piece(foreground_mask(image))
        if piece is None:
            found.append({"size": None, "extent": None, "pixels": 0})
            continue
        rows, cols = np.nonzero(piece)
        extent = float((rows.max() - rows.min() + 1) + (cols.max() - cols.min() + 1)) / 2
        found.append({"size": "large" if extent > SIZE_THRESHOLD else "small", "extent": extent,
                      "pixels": int(piece.sum())})
    return found


# The colours an object may be drawn in, by name: the palette and the held-out pink, which the
# judge (trained on the palette) cannot name.
OBJECT_COLOURS = {**shapes.COLOURS, **shapes.HELD_OUT_COLOURS}


def object_colours(images) -> list[str | None]:
    """The colour of the object in each picture, found without the judge: the name in
    OBJECT_COLOURS nearest (in RGB) to the median colour of the largest connected foreground
    piece (the median, so that anti-aliased edge pixels, part background, do not count), or
    None for a picture without an object. The one measure here that names pink."""
    images = as_pictures(images, "images")
    names = list(OBJECT_COLOURS)
    palette = np.array([OBJECT_COLOURS[name] for name in names], dtype=np.float32)
    found = []
    for image in images:
        piece = _largest_piece(foreground_mask(image))
        if piece is None:
            found.append(None)
            continue
        colour = np.median(image[piece].astype(np.float32), axis=0)
        found.append(names[int(np.argmin(np.linalg.norm(palette - colour, axis=1)))])
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
