"""Scoring pictures against what was asked: positions (`locate`), sizes (`measure_size`) and two
objects (`classify_objects`), and each measure's own accuracy on clean generator pictures."""

from __future__ import annotations

import numpy as np

from ..arguments import choice, whole_number
from ..data import shapes
from .objects import classify_objects, locate, measure_size, object_colours


def colour_and_shape(obj: dict) -> tuple:
    """(colour, shape) of an object as a prompt asks for it or as the judge names it, to compare the two."""
    return obj["colour"], obj["shape"]


def _score_named(found: list[dict], asked, argument: str, key: str, allowed) -> dict:
    """Share (%) of pictures whose found `key` (a position, a size) is the one asked, and what
    was found. asked: one name from `allowed` per picture, given as `argument`."""
    asked = list(asked)
    if len(asked) != len(found):
        raise ValueError(f"{argument}: {len(asked)} names for {len(found)} pictures; give one per picture")
    for name in asked:
        choice(argument, name, allowed)
    right = [f[key] == name for f, name in zip(found, asked)]
    return {f"{key}_correct": float(100 * np.mean(right)) if right else 0.0, "found": [f[key] for f in found]}


def score_positions(images, positions) -> dict:
    """Share (%) of pictures whose object is where it should be (`locate`).

    positions: one name from shapes.POSITIONS per picture. Also returns the positions found.
    """
    return _score_named(locate(images), positions, "positions", "position", shapes.POSITIONS)


def score_sizes(images, sizes) -> dict:
    """Share (%) of pictures whose object is of the expected size (`measure_size`).

    sizes: one of shapes.SIZES ("small", "large") per picture. Also returns the sizes found.
    """
    return _score_named(measure_size(images), sizes, "sizes", "size", shapes.SIZES)


def score_two_objects(images, expected, classifier=None) -> dict:
    """How often both objects of a picture are right (colour and shape, in any order).

    expected: per picture, the two objects asked for: [{"colour", "shape"}, {"colour", "shape"}].
    Returns percentages both_correct (the two pairs match, in any order), colours_correct and
    shapes_correct (the two colours, resp. shapes, match whatever they are bound to: a picture
    with colours and shapes right but both not right has swapped them), two_found (the
    picture holds two separate objects), and the guesses.
    """
    guesses = classify_objects(images, classifier, n=2)
    expected = list(expected)
    if len(expected) != len(guesses):
        raise ValueError(f"expected: {len(expected)} entries for {len(guesses)} pictures; give one per picture")
    both, colours, kinds, two = [], [], [], []
    for want, got in zip(expected, guesses):
        if len(want) != 2:
            raise ValueError(f"expected: an entry with {len(want)} objects; each must list two")
        two.append(len(got) == 2)
        both.append(sorted(map(colour_and_shape, got)) == sorted(map(colour_and_shape, want)))
        colours.append(sorted(g["colour"] for g in got) == sorted(w["colour"] for w in want))
        kinds.append(sorted(g["shape"] for g in got) == sorted(w["shape"] for w in want))
    pct = lambda xs: float(100 * np.mean(xs)) if xs else 0.0  # noqa: E731
    return {"both_correct": pct(both), "colours_correct": pct(colours), "shapes_correct": pct(kinds),
            "two_found": pct(two), "guesses": guesses}


def position_measure_accuracy(n: int = 1000, seed: int = 2025) -> dict:
    """`locate`'s own accuracy (%) on fresh single-object generator pictures (all shapes, sizes, positions)."""
    images, _, labels = shapes.make_dataset(n, seed=seed, shapes=shapes.ALL_SHAPES, n_objects=1)
    result = score_positions(images, [l["objects"][0]["position"] for l in labels])
    return {"position": result["position_correct"]}


def size_measure_accuracy(n: int = 1000, seed: int = 2027) -> dict:
    """`measure_size`'s own accuracy (%) on fresh single-object generator pictures (all shapes, sizes,
    positions): overall ("size") and per shape (a shape none of the `n` pictures holds is left out)."""
    n = whole_number("n", n, minimum=1)
    images, _, labels = shapes.make_dataset(n, seed=seed, shapes=shapes.ALL_SHAPES, n_objects=1)
    asked = [l["objects"][0] for l in labels]
    found = score_sizes(images, [o["size"] for o in asked])["found"]
    right = [f == o["size"] for f, o in zip(found, asked)]
    result = {"size": float(100 * np.mean(right))}
    for shape in shapes.ALL_SHAPES:
        mine = [r for r, o in zip(right, asked) if o["shape"] == shape]
        if mine:
            result[shape] = float(100 * np.mean(mine))
    return result


def colour_measure_accuracy(n: int = 1000, seed: int = 2028) -> dict:
    """`object_colours`' own accuracy (%) on fresh single-object generator pictures, every shape,
    in the palette's colours and in pink: overall ("colour") and for pink alone."""
    n = whole_number("n", n, minimum=1)
    images, _, labels = shapes.make_dataset(n, seed=seed, shapes=shapes.ALL_SHAPES, n_objects=1)
    asked = [label["objects"][0]["colour"] for label in labels]
    # A third of the pictures again with the object in pink (the generator draws it by its (r, g, b)).
    rng = np.random.default_rng([seed, 8])
    pink = rng.permutation(n)[: max(1, n // 3)]
    scenes = [shapes.scene_at(int(i), seed, shapes.ALL_SHAPES, 1) for i in pink]
    for i, scene in zip(pink, scenes):
        scene.objects[0].colour = "pink"
        images[i], asked[i] = shapes.render(scene), "pink"
    found = object_colours(images)
    right = [f == a for f, a in zip(found, asked)]
    result = {"colour": float(100 * np.mean(right))}
    result["pink"] = float(100 * np.mean([r for r, a in zip(right, asked) if a == "pink"]))
    return result


def two_object_measure_accuracy(n: int = 1000, seed: int = 2026, classifier=None) -> dict:
    """The two-object measure's own accuracy (%) on fresh two-object generator pictures (all shapes)."""
    images, _, labels = shapes.make_dataset(n, seed=seed, shapes=shapes.ALL_SHAPES, n_objects=2)
    result = score_two_objects(images, [l["objects"] for l in labels], classifier)
    return {k: v for k, v in result.items() if k != "guesses"}
