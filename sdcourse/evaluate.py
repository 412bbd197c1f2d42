"""Measuring the tiny Stable Diffusion: does the picture show what the prompt asked for?

A small CNN (`ShapeClassifier`) names the colour and the shape of the object in a 64x64
picture (star included). It is trained on generator pictures, so it is a fair judge of
generated ones. The shipped weights (`CLASSIFIER_PATH`) are the fixed judge: every function
here uses them unless given another classifier, so a model measured before and after a
rebuild is judged the same way. A build trains a classifier of its own into its run folder
(a figure about the recipe); it never replaces the fixed judge.

The measures, each with a check of its own accuracy on clean generator pictures:

- `prompt_adherence`: colour and shape of single-object prompts (the classifier);
- `position_adherence`: is the object where the prompt says (`locate`, no classifier);
- `two_object_adherence`: are both objects of "a red circle and a blue square" right
  (`split_objects`, then the classifier on each);
- `vae_round_trip`: does the judge still name the shape after the VAE's encode and decode,
  per shape and size; and PSNR.

    >>> from sdcourse import load_pipeline
    >>> from sdcourse.evaluate import prompt_adherence
    >>> pipe = load_pipeline()
    >>> prompt_adherence(pipe, ["a red circle", "a blue square"], seeds=[0, 1])
    {'colour_correct': ..., 'shape_correct': ..., 'both_correct': ..., 'diversity': ..., ...}

Pictures may be given as a uint8 array (N, 64, 64, 3), a float array in [0, 1] of that
shape (what the pipeline returns with output_type="np"), or a list of PIL images; anything
else is refused with a ValueError.
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
FIXED_JUDGE = CLASSIFIER_PATH  # the judge of every comparison
CLASSIFIER_FILE = "shape_classifier.safetensors"  # its name in a build's run folder
COLOUR_NAMES = tuple(shapes.COLOURS)
SHAPE_NAMES = shapes.ALL_SHAPES
POSITION_NAMES = tuple(shapes.POSITIONS)
SIZE = shapes.IMAGE_SIZE
SIZE_NAMES = shapes.SIZES

# A pixel belongs to an object when its colour is at least this far (Euclidean distance in
# RGB, 0..255) from the background's. The closest object/background pair of the palette,
# orange on yellow, is 81 apart; half of that, 40, counts every pixel that an object covers
# at least half of (an anti-aliased edge pixel is a mix of the two colours), for every pair.
# The VAE's and the sampler's noise in flat areas is well below it.
FOREGROUND_THRESHOLD = 40.0
# Connected pieces of foreground smaller than this are specks, not objects: the smallest
# shape the generator draws (a small star) covers about 50 pixels.
MIN_OBJECT_PIXELS = 20

ALLOWED_PICTURES = "a uint8 array (N, 64, 64, 3), a float array in [0, 1] of that shape, or a list of PIL images"


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


# ----------------------------------------------------------------------------- pictures in


def as_pictures(images, name: str = "images") -> np.ndarray:
    """Check pictures and return them as a uint8 array (N, 64, 64, 3).

    Allowed: a uint8 array (N, 64, 64, 3), a float array in [0, 1] of that shape, or a list
    of PIL images (64x64). Anything else raises a ValueError that names `name`, what was given
    and what is allowed: a float array in [0, 255] or [-1, 1] would otherwise be misread.
    """
    if isinstance(images, (list, tuple)):
        from PIL import Image

        others = sorted({type(im).__name__ for im in images if not isinstance(im, Image.Image)})
        if others:
            raise ValueError(f"{name}: a list holding {', '.join(others)}; allowed: {ALLOWED_PICTURES}")
        sizes = sorted({im.size for im in images if im.size != (SIZE, SIZE)})
        if sizes:
            raise ValueError(f"{name}: PIL images of size {sizes[0][0]}x{sizes[0][1]}; "
                             f"allowed: {ALLOWED_PICTURES}")
        if not images:
            return np.empty((0, SIZE, SIZE, 3), dtype=np.uint8)
        return np.stack([np.asarray(im.convert("RGB")) for im in images])
    if not isinstance(images, np.ndarray):
        hint = " (convert it with .cpu().numpy(), channels last)" if isinstance(images, torch.Tensor) else ""
        raise ValueError(f"{name}: a {type(images).__name__}{hint}; allowed: {ALLOWED_PICTURES}")
    if images.ndim != 4 or images.shape[1:] != (SIZE, SIZE, 3):
        hint = ""
        if images.shape == (SIZE, SIZE, 3):
            hint = " (one picture: add a batch axis, images[None])"
        elif images.ndim == 4 and images.shape[1:] == (3, SIZE, SIZE):
            hint = " (channels first: use images.transpose(0, 2, 3, 1))"
        raise ValueError(f"{name}: an array of shape {images.shape}{hint}; allowed: {ALLOWED_PICTURES}")
    if images.dtype == np.uint8:
        return images
    if not np.issubdtype(images.dtype, np.floating):
        raise ValueError(f"{name}: an array of dtype {images.dtype}; allowed: {ALLOWED_PICTURES}")
    if images.size:
        if not np.isfinite(images).all():
            raise ValueError(f"{name}: a {images.dtype} array with NaN or infinite values; allowed: {ALLOWED_PICTURES}")
        low, high = float(images.min()), float(images.max())
        if low < 0 or high > 1:
            hint = ""
            if low >= -1 and low < 0:
                hint = " (pictures in [-1, 1]? give (images + 1) / 2)"
            elif low >= 0 and high <= 255:
                hint = " (pictures in [0, 255]? give images / 255, or uint8)"
            raise ValueError(f"{name}: a {images.dtype} array with values in [{low:.3g}, {high:.3g}]{hint}; "
                             f"allowed: {ALLOWED_PICTURES}")
    return (images * 255).round().astype(np.uint8)


def _to_tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div(127.5).sub(1)


# ----------------------------------------------------------------------------- the judge


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
    """Train a judge on fresh single-object generator pictures (all four shapes).

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


def save_classifier(model: ShapeClassifier, path: str | Path):
    """Save a classifier's weights. The fixed judge (CLASSIFIER_PATH) is never overwritten:
    replacing it would change every comparison; do that by hand if you mean it."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.resolve() == CLASSIFIER_PATH:
        raise ValueError(f"path={str(path)!r} is the fixed judge that every comparison uses; "
                         f"save a new classifier elsewhere (a build saves it in its run folder)")
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))


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
    from safetensors.torch import load_file

    if not Path(path).exists():
        raise FileNotFoundError(
            f"classifier weights not found: {path}; train some with "
            f"`python -m sdcourse.evaluate --train --out FILE`"
        )
    model = ShapeClassifier()
    model.load_state_dict(load_file(path))
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

    images: pictures (see the module's docstring). classifier: None for the fixed judge,
    a ShapeClassifier, or the path of saved weights.
    """
    images = as_pictures(images, "images")
    if not len(images):
        return []
    lc, ls = _judge(classifier)(_to_tensor(images))
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


# ----------------------------------------------------------------------------- finding objects


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
    asked-for place than any other; it is also the rule the generator uses to name a free position. A picture without foreground has position None; one with
    several objects gets the centroid of all of them.

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
    from skimage.measure import label

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


# ----------------------------------------------------------------------------- scoring pictures


def _pair(obj) -> tuple:
    return obj["colour"], obj["shape"]


def score_positions(images, positions) -> dict:
    """Share (%) of pictures whose object is at the expected position (`locate`).

    positions: one name from shapes.POSITIONS per picture. Also returns the positions found.
    """
    found = locate(images)
    positions = list(positions)
    if len(positions) != len(found):
        raise ValueError(f"positions: {len(positions)} names for {len(found)} pictures; give one per picture")
    for p in positions:
        shapes._check_choice("positions", p, shapes.POSITIONS)
    right = [f["position"] == p for f, p in zip(found, positions)]
    return {"position_correct": float(100 * np.mean(right)) if right else 0.0, "found": [f["position"] for f in found]}


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
        both.append(sorted(map(_pair, got)) == sorted(map(_pair, want)))
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


def two_object_measure_accuracy(n: int = 1000, seed: int = 2026, classifier=None) -> dict:
    """The two-object measure's own accuracy (%) on fresh two-object generator pictures (all shapes)."""
    images, _, labels = shapes.make_dataset(n, seed=seed, shapes=shapes.ALL_SHAPES, n_objects=2)
    result = score_two_objects(images, [l["objects"] for l in labels], classifier)
    return {k: v for k, v in result.items() if k != "guesses"}


# ----------------------------------------------------------------------------- prompts


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


def parse_position(prompt: str) -> str:
    """The position a prompt names ("a red circle in the top left" -> "top left")."""
    text = " ".join(prompt.lower().replace(",", " ").split())
    named = [p for p in POSITION_NAMES if p in text]
    if len(named) != 1:
        raise ValueError(f"prompt={prompt!r} names {len(named)} positions; it must name one of {list(POSITION_NAMES)}")
    return named[0]


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
    bad = [s for s in shapes if s not in SHAPE_NAMES]
    if bad:
        raise ValueError(f"shapes: {bad[0]!r} is not allowed; choose from {list(SHAPE_NAMES)}")
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
    bad = [s for s in shapes if s not in SHAPE_NAMES]
    if bad:
        raise ValueError(f"shapes: {bad[0]!r} is not allowed; choose from {list(SHAPE_NAMES)}")
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


# ----------------------------------------------------------------------------- generating and judging


def _generate(pipe, prompts: list[str], seeds, guidance_scale, num_inference_steps, batch_size) -> np.ndarray:
    """One picture per (prompt, seed), prompt-major, as a float array (N, 64, 64, 3) in [0, 1]."""
    if guidance_scale < 0:
        raise ValueError(f"guidance_scale={guidance_scale!r}; it must be >= 0")
    if num_inference_steps < 1:
        raise ValueError(f"num_inference_steps={num_inference_steps!r}; it must be >= 1")
    if not seeds:
        raise ValueError(f"seeds={seeds!r}; give at least one seed")
    jobs = [(prompt, seed) for prompt in prompts for seed in seeds]
    images = []
    for start in range(0, len(jobs), batch_size):
        chunk = jobs[start : start + batch_size]
        generators = [torch.Generator().manual_seed(seed) for _, seed in chunk]
        out = pipe([prompt for prompt, _ in chunk], height=SIZE, width=SIZE,
                   num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                   generator=generators, output_type="np")
        images.append(out.images)
    return np.concatenate(images) if images else np.empty((0, SIZE, SIZE, 3), dtype=np.float32)


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
    seeds = list(seeds)
    items = [p if isinstance(p, dict) else {"prompt": p, **parse_prompt(p)} for p in prompts]
    images = _generate(pipe, [item["prompt"] for item in items], seeds, guidance_scale, num_inference_steps,
                       batch_size)
    jobs = [item for item in items for _ in seeds]
    guesses = classify(images, classifier)
    colour_ok = [g["colour"] == item["colour"] for g, item in zip(guesses, jobs)]
    shape_ok = [g["shape"] == item["shape"] for g, item in zip(guesses, jobs)]
    both_ok = [c and s for c, s in zip(colour_ok, shape_ok)]

    distances = []
    per_prompt = images.reshape(len(items), len(seeds), -1)
    for group in per_prompt:
        for i in range(len(seeds)):
            for j in range(i + 1, len(seeds)):
                distances.append(float(np.sqrt(np.mean((group[i] - group[j]) ** 2))))
    result = {
        "colour_correct": float(100 * np.mean(colour_ok)),
        "shape_correct": float(100 * np.mean(shape_ok)),
        "both_correct": float(100 * np.mean(both_ok)),
        "diversity": float(np.mean(distances)) if distances else 0.0,
        "n_images": len(jobs),
    }
    if return_images:
        result["images"] = images
        result["guesses"] = guesses
    return result


def position_adherence(pipe, prompts, seeds=(0, 1, 2, 3), guidance_scale: float = 7.5,
                       num_inference_steps: int = 25, batch_size: int = 32, classifier=None,
                       return_images: bool = False) -> dict:
    """How often the object of a prompt that names one position is in that position (`locate`).

    prompts: strings ("a red circle in the top left") or dicts with keys prompt, colour, shape,
        position (as `position_prompts()` returns). Returns percentages position_correct and
        all_correct (position, colour and shape right, the last two by the judge).
    """
    seeds = list(seeds)
    items = [p if isinstance(p, dict) else {"prompt": p, **parse_prompt(p), "position": parse_position(p)}
             for p in prompts]
    images = _generate(pipe, [item["prompt"] for item in items], seeds, guidance_scale, num_inference_steps,
                       batch_size)
    jobs = [item for item in items for _ in seeds]
    where = score_positions(images, [item["position"] for item in jobs])
    guesses = classify(images, classifier)
    right = [f == item["position"] and _pair(g) == _pair(item)
             for f, g, item in zip(where["found"], guesses, jobs)]
    result = {"position_correct": where["position_correct"], "all_correct": float(100 * np.mean(right)),
              "n_images": len(jobs)}
    if return_images:
        result["images"] = images
        result["found"] = where["found"]
    return result


def two_object_adherence(pipe, prompts, seeds=(0, 1, 2, 3), guidance_scale: float = 7.5,
                         num_inference_steps: int = 25, batch_size: int = 32, classifier=None,
                         return_images: bool = False) -> dict:
    """How often both objects of a two-object prompt are right (colour and shape, in any order).

    prompts: strings ("a red circle and a blue square") or dicts with keys prompt and objects
        (as `two_object_prompts()` returns). Returns the percentages of `score_two_objects`.
    """
    seeds = list(seeds)
    items = [p if isinstance(p, dict) else {"prompt": p, "objects": parse_two_objects(p)} for p in prompts]
    images = _generate(pipe, [item["prompt"] for item in items], seeds, guidance_scale, num_inference_steps,
                       batch_size)
    result = score_two_objects(images, [item["objects"] for item in items for _ in seeds], classifier)
    result["n_images"] = len(images)
    if not return_images:
        del result["guesses"]
    else:
        result["images"] = images
    return result


# ----------------------------------------------------------------------------- the VAE


@torch.no_grad()
def _round_trip(vae, images: np.ndarray, batch: int = 64) -> np.ndarray:
    """Encode (posterior mean) and decode uint8 pictures; returns uint8 pictures."""
    param = next(vae.parameters())
    out = []
    for start in range(0, len(images), batch):
        x = _to_tensor(images[start : start + batch]).to(param.device, param.dtype)
        y = vae.decode(vae.encode(x).latent_dist.mode()).sample
        out.append(((y.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy())
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
    shapes._check_choice("shape", shape, shapes.ALL_SHAPES)
    shapes._check_choice("size", size, shapes.SIZES)
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
    from .training.datasets import HELD_OUT_PHOTOS, photo_crops

    for name, value in (("n_per_cell", n_per_cell), ("n_psnr", n_psnr)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r}; it must be a whole number of pictures, 1 or more")
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


# ----------------------------------------------------------------------------- a build's outputs


def clip_image_folder(model=None, run=None) -> Path | None:
    """Where the tiny CLIP's image half of a model is: `<run>/tiny-clip` for a build's run
    folder; else `tiny-clip` beside the pipeline folder (the shipped model's
    sdcourse/assets/tiny-clip). None if there is none."""
    from .pipeline import EMBEDDED_MODEL

    candidates = []
    if run is not None:
        candidates.append(Path(run) / "tiny-clip")
    candidates.append(Path(model if model is not None else EMBEDDED_MODEL).parent / "tiny-clip")
    return next((c for c in candidates if (c / "config.json").exists()), None)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Report a classifier's accuracy (the fixed judge's by "
                                                 "default), or train a new one.")
    parser.add_argument("--train", action="store_true", help="train a classifier and save it to --out")
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--out", default=None, help="where to save a trained classifier (not the fixed judge)")
    args = parser.parse_args()
    path = CLASSIFIER_PATH
    if args.train:
        if not args.out:
            parser.error("--train needs --out FILE (the fixed judge is never overwritten)")
        model = train_classifier(steps=args.steps, threads=2)
        save_classifier(model, args.out)
        path = args.out
    print("classifier accuracy on fresh generator pictures:", classifier_accuracy(classifier=load_classifier(path)))
