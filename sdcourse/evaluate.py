"""Measuring the tiny Stable Diffusion: does the picture show what the prompt asked for?

A small CNN (`ShapeClassifier`) names the colour and the shape of the object in a 64x64
picture (star included). It is trained on generator pictures, so it is a fair judge of
generated ones: `prompt_adherence` generates pictures for prompts with known colour and
shape, and counts how often the classifier agrees with the prompt.

    >>> from sdcourse import load_pipeline
    >>> from sdcourse.evaluate import prompt_adherence
    >>> pipe = load_pipeline()
    >>> prompt_adherence(pipe, ["a red circle", "a blue square"], seeds=[0, 1])
    {'colour_correct': ..., 'shape_correct': ..., 'both_correct': ..., 'diversity': ..., ...}
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .data import shapes

CLASSIFIER_PATH = Path(__file__).resolve().parent / "assets" / "shape_classifier.safetensors"
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


def _to_tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div(127.5).sub(1)


def _labels(labels):
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
    """Train the judge on fresh single-object generator pictures (all four shapes).

    checkpoint: a file to save progress to, and to resume from (None: no checkpoints).
    """
    from .training.trainer import Trainer, TrainSettings

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    images, _, labels = shapes.make_dataset(n_train, seed=seed, shapes=shapes.ALL_SHAPES, n_objects=1)
    colour, shape = _labels(labels)
    model = ShapeClassifier()
    gen = torch.Generator().manual_seed(seed)

    def next_batch():
        idx = torch.randint(0, n_train, (batch,), generator=gen)
        return _augment(_to_tensor(images[idx.numpy()]), gen), colour[idx], shape[idx]

    def loss(model, batch):
        x, colour_target, shape_target = batch
        lc, ls = model(x)
        return F.cross_entropy(lc, colour_target) + F.cross_entropy(ls, shape_target)

    settings = TrainSettings(steps=steps, lr=2e-3, weight_decay=1e-4, clip_grad_norm=None,
                             checkpoint_every=max(1, steps // 4), mixed_precision=mixed_precision)
    trainer = Trainer(model, loss, next_batch, settings, generator=gen, checkpoint=checkpoint, name="classifier",
                      record={"batch": batch, "n_train": n_train, "seed": seed}, progress=progress)
    return trainer.fit()


def save_classifier(model: ShapeClassifier, path: str | Path = CLASSIFIER_PATH):
    from safetensors.torch import save_file

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))


@lru_cache(maxsize=4)
def load_classifier(path: str | Path = CLASSIFIER_PATH) -> ShapeClassifier:
    """The shipped classifier (or one saved at `path`)."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"classifier weights not found: {path}; train them with `python -m sdcourse.evaluate --train`"
        )
    model = ShapeClassifier()
    model.load_state_dict(load_file(str(path)))
    return model.eval()


@torch.no_grad()
def classify(images, classifier: ShapeClassifier | None = None) -> list[dict]:
    """Colour and shape of the object in each picture.

    images: uint8 array (N, 64, 64, 3), float array in [0, 1] of that shape (what the
    pipeline returns with output_type="np"), or a list of PIL images.
    """
    classifier = classifier or load_classifier()
    if isinstance(images, (list, tuple)):
        images = np.stack([np.asarray(im.convert("RGB")) for im in images])
    images = np.asarray(images)
    if images.dtype != np.uint8:
        images = (np.clip(images, 0, 1) * 255).round().astype(np.uint8)
    if images.ndim != 4 or images.shape[1:] != (64, 64, 3):
        raise ValueError(f"images has shape {images.shape}; allowed: (N, 64, 64, 3)")
    lc, ls = classifier(_to_tensor(images))
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
    return {"colour": 100 * colour, "shape": 100 * shape, "both": 100 * both}


def parse_prompt(prompt: str) -> dict:
    """The colour and shape a single-object prompt asks for (the first ones it names)."""
    words = prompt.lower().replace(",", " ").split()
    colour = next((w for w in words if w in COLOUR_NAMES), None)
    shape = next((w for w in words if w in SHAPE_NAMES), None)
    if colour is None or shape is None:
        raise ValueError(
            f"prompt={prompt!r} does not name a colour and a shape; allowed colours: "
            f"{list(COLOUR_NAMES)}, shapes: {list(SHAPE_NAMES)}"
        )
    return {"colour": colour, "shape": shape}


def prompt_adherence(pipe, prompts, seeds=(0, 1, 2, 3), guidance_scale: float = 7.5,
                     num_inference_steps: int = 25, batch_size: int = 32, classifier=None,
                     return_images: bool = False) -> dict:
    """How often generated pictures show the colour and shape their prompt asks for.

    prompts: strings ("a small red circle in the top left") or dicts with keys prompt,
        colour, shape (as `sdcourse.data.evaluation_prompts()` returns).
    Every prompt is generated once per seed (64x64). Returns percentages colour_correct,
    shape_correct, both_correct, and `diversity`: the mean pairwise RMS pixel distance
    (0..1 scale) among the pictures of the same prompt (0 = all identical).
    """
    if guidance_scale < 0:
        raise ValueError(f"guidance_scale={guidance_scale!r}; it must be >= 0")
    if num_inference_steps < 1:
        raise ValueError(f"num_inference_steps={num_inference_steps!r}; it must be >= 1")
    seeds = list(seeds)
    if not seeds:
        raise ValueError(f"seeds={seeds!r}; give at least one seed")
    items = [p if isinstance(p, dict) else {"prompt": p, **parse_prompt(p)} for p in prompts]
    jobs = [(item, seed) for item in items for seed in seeds]
    images = []
    for start in range(0, len(jobs), batch_size):
        chunk = jobs[start : start + batch_size]
        generators = [torch.Generator().manual_seed(seed) for _, seed in chunk]
        out = pipe([item["prompt"] for item, _ in chunk], height=64, width=64,
                   num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                   generator=generators, output_type="np")
        images.append(out.images)
    images = np.concatenate(images)
    guesses = classify(images, classifier)
    colour_ok = [g["colour"] == item["colour"] for g, (item, _) in zip(guesses, jobs)]
    shape_ok = [g["shape"] == item["shape"] for g, (item, _) in zip(guesses, jobs)]
    both_ok = [c and s for c, s in zip(colour_ok, shape_ok)]

    distances = []
    per_prompt = images.reshape(len(items), len(seeds), -1)
    for group in per_prompt:
        for i in range(len(seeds)):
            for j in range(i + 1, len(seeds)):
                distances.append(float(np.sqrt(np.mean((group[i] - group[j]) ** 2))))
    result = {
        "colour_correct": 100.0 * np.mean(colour_ok),
        "shape_correct": 100.0 * np.mean(shape_ok),
        "both_correct": 100.0 * np.mean(both_ok),
        "diversity": float(np.mean(distances)) if distances else 0.0,
        "n_images": len(jobs),
    }
    if return_images:
        result["images"] = images
        result["guesses"] = guesses
    return result


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Train the shape/colour classifier, or report its accuracy.")
    parser.add_argument("--train", action="store_true", help="train and save the classifier")
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--out", default=str(CLASSIFIER_PATH))
    args = parser.parse_args()
    if args.train:
        model = train_classifier(steps=args.steps, threads=2)
        save_classifier(model, args.out)
    print("classifier accuracy on fresh generator pictures:", classifier_accuracy(classifier=load_classifier(args.out)))
