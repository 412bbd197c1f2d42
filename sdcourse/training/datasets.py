"""The fixed training set (shape pictures + tokenized captions) and photo crops.

The training set is made once per run and cached in the run folder, so a resumed run
(and every stage) sees exactly the same pictures.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..data import shapes
from ..tokenizer import MAX_LENGTH, load_tokenizer

TRAIN_PHOTOS = ("astronaut", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field", "retina",
                "colorwheel")
HELD_OUT_PHOTOS = ("chelsea",)  # never used in training; for measuring reconstruction


def tokenize_ids(captions, tokenizer=None) -> np.ndarray:
    """Token ids (N, MAX_LENGTH) int32, padded as Stable Diffusion does."""
    tokenizer = tokenizer or load_tokenizer()
    ids = tokenizer(list(captions), padding="max_length", max_length=MAX_LENGTH, truncation=True).input_ids
    return np.asarray(ids, dtype=np.int32)


def build_training_set(n: int, captions_per_image: int, seed: int, two_object_prob: float,
                       cache: Path | None = None, progress: bool = True) -> dict:
    """`n` base-shape pictures (no stars), each with `captions_per_image` different captions.

    Returns a dict: images uint8 (n, 64, 64, 3), token_ids int32 (n, k, MAX_LENGTH),
    captions (n, k) str array.
    """
    if cache is not None and Path(cache).exists():
        data = np.load(cache, allow_pickle=False)
        return {key: data[key] for key in data.files}
    images = np.empty((n, 64, 64, 3), dtype=np.uint8)
    captions = []
    for i in tqdm(range(n), desc="drawing training pictures", disable=not progress, mininterval=2):
        scene = shapes.scene_at(i, seed, shapes.BASE_SHAPES, two_object_prob=two_object_prob)
        images[i] = shapes.render(scene)
        rng = np.random.default_rng([seed, i, 1])
        captions.append([scene.caption] + [shapes.recaption(scene, rng) for _ in range(captions_per_image - 1)])
    flat = [c for row in captions for c in row]
    token_ids = tokenize_ids(flat).reshape(n, captions_per_image, MAX_LENGTH)
    data = {"images": images, "token_ids": token_ids, "captions": np.array(captions)}
    if cache is not None:
        Path(cache).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(str(cache) + ".tmp.npz")
        np.savez(tmp, **data)
        tmp.replace(cache)
    return data


def build_contrast_set(n_pairs: int, seed: int, cache: Path | None = None, progress: bool = True) -> dict:
    """`n_pairs` pairs of pictures that differ in one thing their captions state
    (`shapes.contrast_pair`: a shape, a position, a size, or which colour goes with which shape),
    for the CLIP. Rows 2i and 2i + 1 are pair i. Returns images uint8 (2 n_pairs, 64, 64, 3),
    token_ids int32 (2 n_pairs, MAX_LENGTH) and captions; cached like the training set."""
    if cache is not None and Path(cache).exists():
        data = np.load(cache, allow_pickle=False)
        return {key: data[key] for key in data.files}
    rng = np.random.default_rng([seed, 77])
    images = np.empty((2 * n_pairs, 64, 64, 3), dtype=np.uint8)
    captions = []
    for i in tqdm(range(n_pairs), desc="drawing contrast pairs", disable=not progress, mininterval=2):
        for j, scene in enumerate(shapes.contrast_pair(rng)):
            images[2 * i + j] = shapes.render(scene)
            captions.append(scene.caption)
    data = {"images": images, "token_ids": tokenize_ids(captions), "captions": np.array(captions)}
    if cache is not None:
        tmp = Path(str(cache) + ".tmp.npz")
        np.savez(tmp, **data)
        tmp.replace(cache)
    return data


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


def build_rule_set(n: int, captions_per_image: int, seed: int, rule, two_object_prob: float = 0.3,
                   concept_rule=None, n_empty_stars: int = 0, cache: Path | None = None,
                   progress: bool = True) -> dict:
    """`n` pictures drawn under a `shapes.CaptionRule` (stars and pink among them, at the rule's
    shares), each with `captions_per_image` captions, in the dict `build_training_set` returns.

    concept_rule: if given, every second caption follows it instead (a rule with
        concept_words=True: "star" and "pink" said, for a text encoder that should know them).
    n_empty_stars: one-star pictures appended whose captions are all empty: more stars among
        the pictures the U-Net learns its unconditional prediction from.
    """
    if cache is not None and Path(cache).exists():
        data = np.load(cache, allow_pickle=False)
        return {key: data[key] for key in data.files}
    total = n + n_empty_stars
    images = np.empty((total, 64, 64, 3), dtype=np.uint8)
    captions = []
    for i in tqdm(range(n), desc="drawing pictures under the caption rule", disable=not progress, mininterval=2):
        scene = shapes.rule_scene_at(i, seed, rule, two_object_prob)
        images[i] = shapes.render(scene)
        rng = np.random.default_rng([seed, i, 4])
        rules = [concept_rule if concept_rule is not None and j % 2 else rule for j in range(captions_per_image)]
        captions.append([shapes.recaption(scene, rng, r) for r in rules])
    stars, _, _ = shapes.make_dataset(n_empty_stars, seed=seed + 17, shapes=shapes.HELD_OUT_SHAPES, n_objects=1)
    images[n:] = stars
    captions += [[""] * captions_per_image for _ in range(n_empty_stars)]
    flat = [c for row in captions for c in row]
    token_ids = tokenize_ids(flat).reshape(total, captions_per_image, MAX_LENGTH)
    data = {"images": images, "token_ids": token_ids, "captions": np.array(captions)}
    if cache is not None:
        Path(cache).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(str(cache) + ".tmp.npz")
        np.savez(tmp, **data)
        tmp.replace(cache)
    return data
