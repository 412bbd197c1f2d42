"""Training a judge: the shape classifier of `sdcourse.evaluate`, on fresh generator pictures.

A build trains one into its run folder (a figure about the recipe); the fixed judge that every
comparison uses (`sdcourse.evaluate.CLASSIFIER_PATH`) is never replaced.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from ..data import shapes
from ..evaluate.judge import COLOUR_NAMES, SHAPE_NAMES, ShapeClassifier
from ..images import images_to_tensor
from .trainer import Trainer, TrainSettings


def _labels(labels):
    """The colour and shape class indices of single-object generator labels."""
    colour = torch.tensor([COLOUR_NAMES.index(l["objects"][0]["colour"]) for l in labels])
    shape = torch.tensor([SHAPE_NAMES.index(l["objects"][0]["shape"]) for l in labels])
    return colour, shape


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Make training pictures look a little like generated ones: blur, noise, colour shifts."""
    n = x.shape[0]
    blur = torch.rand(n, 1, 1, 1, generator=gen) < 0.5
    kernel = torch.tensor([1.0, 2.0, 1.0])
    kernel = (kernel[:, None] * kernel[None, :] / 16).expand(3, 1, 3, 3)
    x = torch.where(blur, F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernel, groups=3), x)
    x = x + 0.08 * torch.randn(n, 3, 1, 1, generator=gen)  # colour shift
    x = x + 0.05 * torch.rand(n, 1, 1, 1, generator=gen) * torch.randn(x.shape, generator=gen)
    return x.clamp(-1, 1)


def train_classifier(steps: int = 800, batch: int = 64, n_train: int = 20_000, seed: int = 7,
                     progress: bool = True, threads: int | None = None, checkpoint: str | Path | None = None,
                     mixed_precision: str = "no") -> ShapeClassifier:
    """Train a judge on fresh single-object generator pictures (all four shapes).

    checkpoint: a file to save progress to, and to resume from (None: no checkpoints).
    """
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    images, _, labels = shapes.make_dataset(n_train, seed=seed, shapes=shapes.ALL_SHAPES, n_objects=1)
    colour, shape = _labels(labels)
    model = ShapeClassifier()
    gen = torch.Generator().manual_seed(seed)

    def next_batch():
        idx = torch.randint(0, n_train, (batch,), generator=gen)
        return _augment(images_to_tensor(images[idx.numpy()]), gen), colour[idx], shape[idx]

    def loss(model, batch):
        x, colour_target, shape_target = batch
        lc, ls = model(x)
        return F.cross_entropy(lc, colour_target) + F.cross_entropy(ls, shape_target)

    settings = TrainSettings(steps=steps, lr=2e-3, weight_decay=1e-4, clip_grad_norm=None,
                             checkpoint_every=max(1, steps // 4), mixed_precision=mixed_precision)
    trainer = Trainer(model, loss, next_batch, settings, generator=gen, checkpoint=checkpoint, name="classifier",
                      record={"batch": batch, "n_train": n_train, "seed": seed}, progress=progress)
    return trainer.fit()
