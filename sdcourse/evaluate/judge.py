"""The judge: a small CNN that names the colour and the shape of the object in a 64x64 picture.

The shipped weights (`CLASSIFIER_PATH`) are the fixed judge: every measure uses them unless
given another classifier, so a model measured before and after a rebuild is judged the same
way. A build trains a classifier of its own into its run folder (`sdcourse.training.judge`);
it never replaces the fixed judge.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn

from ..data import shapes
from ..files import save_safetensors
from ..images import images_to_tensor
from ..weights import StateDictMismatch, check_state_dict
from .pictures import as_pictures

CLASSIFIER_PATH = Path(__file__).resolve().parent.parent / "assets" / "shape_classifier.safetensors"
CLASSIFIER_FILE = "shape_classifier.safetensors"  # its name in a build's run folder
COLOUR_NAMES = tuple(shapes.COLOURS)
SHAPE_NAMES = shapes.ALL_SHAPES


class ShapeClassifier(nn.Module):
    """Four conv layers, global pooling, two heads: colour (8 classes) and shape (4 classes)."""

    def __init__(self, width: int = 16):
        super().__init__()

        def block(cin, cout, stride):
            return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.BatchNorm2d(cout), nn.ReLU())

        self.features = nn.Sequential(
            block(3, width, 2),              # 32x32
            block(width, width, 1),
            block(width, 2 * width, 2),      # 16x16
            block(2 * width, 2 * width, 1),
            block(2 * width, 4 * width, 2),  # 8x8
            block(4 * width, 4 * width, 1),
        )
        self.colour = nn.Linear(8 * width, len(COLOUR_NAMES))
        self.shape = nn.Linear(8 * width, len(SHAPE_NAMES))

    def forward(self, x):
        """x: (N, 3, 64, 64) in [-1, 1]. Returns (colour logits, shape logits)."""
        h = self.features(x)
        h = torch.cat([h.mean((2, 3)), h.amax((2, 3))], dim=1)
        return self.colour(h), self.shape(h)


def save_classifier(model: ShapeClassifier, path: str | Path):
    """Save a classifier's weights. The fixed judge (CLASSIFIER_PATH) is never overwritten:
    replacing it would change every comparison; do that by hand if you mean it."""
    path = Path(path)
    if path.resolve() == CLASSIFIER_PATH:
        raise ValueError(f"path={str(path)!r} is the fixed judge that every comparison uses; "
                         f"save a new classifier elsewhere (a build saves it in its run folder)")
    save_safetensors(path, model.state_dict())  # atomically: never half a file


def load_classifier(path: str | Path = CLASSIFIER_PATH) -> ShapeClassifier:
    """The fixed judge, or the classifier saved at `path` (a .safetensors file, or a build's
    run folder holding one)."""
    path = Path(path)
    if path.is_dir():
        found = [path / name for name in (CLASSIFIER_FILE, "classifier.safetensors") if (path / name).exists()]
        if not found:
            raise FileNotFoundError(f"no {CLASSIFIER_FILE} in the folder {path}")
        path = found[0]
    return _load_classifier(str(path.resolve()))


@lru_cache(maxsize=4)
def _load_classifier(path: str) -> ShapeClassifier:
    if not Path(path).exists():
        raise FileNotFoundError(
            f"classifier weights not found: {path}; train some with "
            f"`python -m sdcourse.evaluate --train --out FILE`"
        )
    fix = ("restore the course's copy (git checkout -- sdcourse/assets)" if Path(path) == CLASSIFIER_PATH
           else "train new ones with `python -m sdcourse.evaluate --train --out FILE`")
    try:
        weights = load_file(path)
    except Exception as error:  # safetensors raises several error types for a damaged file
        raise ValueError(f"the classifier weights {path} cannot be read ({error}): the file is damaged; {fix}") from None
    model = ShapeClassifier()
    try:
        check_state_dict(model, weights)
    except StateDictMismatch as error:
        raise ValueError(f"the classifier weights {path} hold another network, not the judge; {fix}.\n{error}") from None
    model.load_state_dict(weights)
    return model.eval()


def _judge(classifier) -> ShapeClassifier:
    """None: the fixed judge; a path: the classifier saved there; or a ShapeClassifier."""
    if classifier is None:
        return load_classifier()
    if isinstance(classifier, (str, Path)):
        return load_classifier(classifier)
    return classifier


@torch.no_grad()
def classify(images, classifier=None) -> list[dict]:
    """Colour and shape of the object in each picture, as the judge sees them.

    images: pictures (see `as_pictures`). classifier: None for the fixed judge,
    a ShapeClassifier, or the path of saved weights.
    """
    images = as_pictures(images, "images")
    if not len(images):
        return []
    lc, ls = _judge(classifier)(images_to_tensor(images))
    return [{"colour": COLOUR_NAMES[c], "shape": SHAPE_NAMES[s]}
            for c, s in zip(lc.argmax(1).tolist(), ls.argmax(1).tolist())]


def classifier_accuracy(n: int = 1000, seed: int = 2024, classifier=None) -> dict:
    """The judge's own accuracy (%) on fresh single-object generator pictures, all shapes."""
    images, _, labels = shapes.make_dataset(n, seed=seed, shapes=shapes.ALL_SHAPES, n_objects=1)
    guesses = classify(images, classifier)
    colour = np.mean([g["colour"] == l["objects"][0]["colour"] for g, l in zip(guesses, labels)])
    shape = np.mean([g["shape"] == l["objects"][0]["shape"] for g, l in zip(guesses, labels)])
    both = np.mean([g["colour"] == l["objects"][0]["colour"] and g["shape"] == l["objects"][0]["shape"]
                    for g, l in zip(guesses, labels)])
    return {"colour": float(100 * colour), "shape": float(100 * shape), "both": float(100 * both)}
