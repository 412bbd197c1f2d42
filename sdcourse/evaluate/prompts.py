"""Prompts: reading what a prompt asks for, and writing evaluation prompts in the training captions' phrasings."""

from __future__ import annotations

import numpy as np

from ..arguments import choice
from ..data import shapes
from .judge import COLOUR_NAMES, SHAPE_NAMES
from .objects import POSITION_NAMES

SIZE_NAMES = shapes.SIZES


def parse_prompt(prompt: str) -> dict:
    """The colour and shape a single-object prompt asks for (the first ones it names); its size,
    if it names one, is `parse_size`'s."""
    words = prompt.lower().replace(",", " ").split()
    colour = next((w for w in words if w in COLOUR_NAMES), None)
    shape = next((w for w in words if w in SHAPE_NAMES), None)
    if colour is None or shape is None:
        raise ValueError(
            f"prompt={prompt!r} does not name a colour and a shape; allowed colours: "
            f"{list(COLOUR_NAMES)}, shapes: {list(SHAPE_NAMES)}"
        )
    return {"colour": colour, "shape": shape}


def parse_position(prompt: str) -> str:
    """The position a prompt names ("a red circle in the top left" -> "top left")."""
    text = " ".join(prompt.lower().replace(",", " ").split())
    named = [p for p in POSITION_NAMES if p in text]
    if len(named) != 1:
        raise ValueError(f"prompt={prompt!r} names {len(named)} positions; it must name one of {list(POSITION_NAMES)}")
    return named[0]


def parse_size(prompt: str) -> str | None:
    """The size a prompt names ("a small red circle" -> "small"), or None when it names none.

    Sizes are words of their own in the training captions ("a large blue square in the top
    left"); `parse_prompt` leaves them out, so that its answer compares with the judge's.
    """
    words = prompt.lower().replace(",", " ").split()
    named = [s for s in SIZE_NAMES if s in words]
    if len(named) > 1:
        raise ValueError(f"prompt={prompt!r} names {len(named)} sizes; it must name at most one of {list(SIZE_NAMES)}")
    return named[0] if named else None


def parse_two_objects(prompt: str) -> list[dict]:
    """The two objects ("a red circle and a blue square") a prompt asks for, in order."""
    parts = prompt.lower().split(" and ")
    if len(parts) != 2:
        raise ValueError(f"prompt={prompt!r} does not name two objects joined by 'and'")
    return [parse_prompt(part) for part in parts]


def _phrase(rng, colour, shape, size=None, position=None) -> str:
    words = ([size] if size else []) + [colour, shape]
    text = f"{shapes.article(words[0])} {' '.join(words)}"
    if position:
        text += f" {shapes.POSITION_WORDS[rng.integers(len(shapes.POSITION_WORDS))]} {position}"
    return text


def _background_suffix(rng, avoid) -> str:
    if rng.random() >= 0.4:
        return ""
    choices = [b for b in shapes.BACKGROUNDS if b not in avoid]
    background = choices[rng.integers(len(choices))]
    return f" on {shapes.article(background)} {background} background"


def position_prompts(n: int = 40, seed: int = 4321, shapes=shapes.BASE_SHAPES) -> list[dict]:
    """`n` single-object prompts that name a position, in the training captions' phrasings.

    Positions are cycled, so each appears about equally often; colour and shape are random.
    Returns dicts with keys prompt, colour, shape, position.
    """
    for shape in shapes:
        choice("shapes", shape, SHAPE_NAMES)
    rng = np.random.default_rng(seed)
    prompts = []
    for i in range(n):
        position = POSITION_NAMES[i % len(POSITION_NAMES)]
        colour = COLOUR_NAMES[rng.integers(len(COLOUR_NAMES))]
        shape = shapes[rng.integers(len(shapes))]
        size = SIZE_NAMES[rng.integers(len(SIZE_NAMES))] if rng.random() < 0.4 else None
        text = _phrase(rng, colour, shape, size, position) + _background_suffix(rng, {colour})
        prompts.append({"prompt": text, "colour": colour, "shape": shape, "position": position})
    return prompts


def two_object_prompts(n: int = 40, seed: int = 5432, shapes=shapes.BASE_SHAPES) -> list[dict]:
    """`n` prompts naming two objects of different colours and different shapes
    ("a red circle and a blue square"), so that swapping them is an error.

    Returns dicts with keys prompt and objects (two dicts with keys colour, shape).
    """
    for shape in shapes:
        choice("shapes", shape, SHAPE_NAMES)
    if len(set(shapes)) < 2:
        raise ValueError(f"shapes={shapes!r}; two different shapes are needed")
    rng = np.random.default_rng(seed)
    prompts = []
    for _ in range(n):
        colours = rng.choice(len(COLOUR_NAMES), 2, replace=False)
        kinds = rng.choice(len(shapes), 2, replace=False)
        objects = [{"colour": COLOUR_NAMES[c], "shape": shapes[s]} for c, s in zip(colours, kinds)]
        text = " and ".join(_phrase(rng, o["colour"], o["shape"]) for o in objects)
        text += _background_suffix(rng, {o["colour"] for o in objects})
        prompts.append({"prompt": text, "objects": objects})
    return prompts
