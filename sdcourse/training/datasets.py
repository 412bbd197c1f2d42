"""The fixed training set (shape pictures + tokenized captions), and the CLIP's contrast pairs.

The training set is made once per run and cached in the run folder, so a resumed run
(and every stage) sees exactly the same pictures.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..data import shapes
from ..files import write_atomically
from ..tokenizer import MAX_LENGTH, load_tokenizer

CACHED_ARRAYS = ("images", "token_ids", "captions")


def _load_cached(cache) -> dict:
    """The arrays of a cached set. A file that cannot be read, or lacks one of CACHED_ARRAYS, is
    refused by name, never drawn again in silence: a resumed stage must see the data it began with."""
    try:
        with np.load(cache, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except Exception as error:  # numpy and zipfile raise several error types for a damaged file
        raise ValueError(f"the cached data set {cache} is damaged ({type(error).__name__}: {error}); delete it, "
                         "and the next run draws it again from the same seed") from None
    missing = [key for key in CACHED_ARRAYS if key not in arrays]
    if missing:
        raise ValueError(f"the cached data set {cache} lacks {missing} (it holds {sorted(arrays)}); delete it, "
                         "and the next run draws it again from the same seed")
    return arrays


def cached(cache: Path | None, make) -> dict:
    """The set saved in `cache` if it is there (`_load_cached`); else `make()`'s, saved there
    atomically (a temporary name, then a rename: an interrupt never leaves half a file)."""
    if cache is not None and Path(cache).exists():
        return _load_cached(cache)
    data = make()
    if cache is not None:
        def save(temporary):
            with open(temporary, "wb") as file:  # a file object: numpy adds no ".npz" to the name
                np.savez(file, **data)

        write_atomically(cache, save)
    return data


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
    def draw():
        images = np.empty((n, 64, 64, 3), dtype=np.uint8)
        captions = []
        for i in tqdm(range(n), desc="drawing training pictures", disable=not progress, mininterval=2):
            scene = shapes.scene_at(i, seed, shapes.BASE_SHAPES, two_object_prob=two_object_prob)
            images[i] = shapes.render(scene)
            rng = np.random.default_rng([seed, i, 1])
            captions.append([scene.caption] + [shapes.recaption(scene, rng) for _ in range(captions_per_image - 1)])
        return captioned(images, captions)

    return cached(cache, draw)


def captioned(images: np.ndarray, captions: list[list[str]]) -> dict:
    """Pictures with k captions each, as the builders return them: images, token_ids (N, k,
    MAX_LENGTH) and captions (N, k)."""
    flat = [c for row in captions for c in row]
    token_ids = tokenize_ids(flat).reshape(len(images), len(captions[0]) if captions else 0, MAX_LENGTH)
    return {"images": images, "token_ids": token_ids, "captions": np.array(captions)}


def build_contrast_set(n_pairs: int, seed: int, cache: Path | None = None, progress: bool = True,
                       shapes_named=shapes.BASE_SHAPES) -> dict:
    """`n_pairs` pairs of pictures that differ in one thing their captions state
    (`shapes.contrast_pair`: a shape, a position, a size, or which colour goes with which shape),
    for the CLIP, with the shapes `shapes_named`. Rows 2i and 2i + 1 are pair i. Returns images uint8 (2 n_pairs, 64, 64, 3),
    token_ids int32 (2 n_pairs, MAX_LENGTH) and captions; cached like the training set."""
    def draw():
        rng = np.random.default_rng([seed, 77])
        images = np.empty((2 * n_pairs, 64, 64, 3), dtype=np.uint8)
        captions = []
        for i in tqdm(range(n_pairs), desc="drawing contrast pairs", disable=not progress, mininterval=2):
            for j, scene in enumerate(shapes.contrast_pair(rng, shapes_named)):
                images[2 * i + j] = shapes.render(scene)
                captions.append(scene.caption)
        return {"images": images, "token_ids": tokenize_ids(captions), "captions": np.array(captions)}

    return cached(cache, draw)


def build_rule_set(n: int, captions_per_image: int, seed: int, rule, two_object_prob: float = 0.3,
                   concept_rule=None, n_empty_stars: int = 0, cache: Path | None = None,
                   progress: bool = True, pictures: np.ndarray | None = None) -> dict:
    """`n` pictures drawn under a `shapes.CaptionRule` (stars and pink among them, at the rule's
    shares), each with `captions_per_image` captions, in the dict `build_training_set` returns.

    concept_rule: if given, every second caption follows it instead (a rule with
        concept_words=True: "star" and "pink" said, for a text encoder that should know them).
    n_empty_stars: one-star pictures appended whose captions are all empty: more stars among
        the pictures the U-Net learns its unconditional prediction from.
    pictures: the `n` pictures of this seed and rule, drawn before (another caption set of the
        same pictures): used instead of drawing them again.
    """
    if pictures is not None and len(pictures) != n:
        raise ValueError(f"pictures holds {len(pictures)} pictures; this set has n={n}")
    def draw():
        images = np.empty((n + n_empty_stars, 64, 64, 3), dtype=np.uint8)
        captions = []
        for i in tqdm(range(n), desc="drawing pictures under the caption rule", disable=not progress,
                      mininterval=2):
            scene = shapes.rule_scene_at(i, seed, rule, two_object_prob)
            images[i] = shapes.render(scene) if pictures is None else pictures[i]
            rng = np.random.default_rng([seed, i, 4])
            rules = [concept_rule if concept_rule is not None and j % 2 else rule for j in range(captions_per_image)]
            captions.append([shapes.recaption(scene, rng, r) for r in rules])
        stars, _, _ = shapes.make_dataset(n_empty_stars, seed=seed + 17, shapes=shapes.HELD_OUT_SHAPES, n_objects=1)
        images[n:] = stars
        captions += [[""] * captions_per_image for _ in range(n_empty_stars)]
        return captioned(images, captions)

    return cached(cache, draw)


def caption_rules(cfg):
    """A build's caption rule for the U-Net and for the CLIP (`shapes.CaptionRule`s, from a
    config.BuildConfig): None and None when it uses none (no stars, no pink); the CLIP's is None
    when the CLIP reads the U-Net's captions."""
    if not (cfg.class_share or cfg.colourless_share):
        return None, None
    rule = shapes.CaptionRule(cfg.class_share, cfg.colourless_share)
    said = shapes.CaptionRule(cfg.class_share, cfg.colourless_share, concept_words=True)
    return rule, (said if cfg.clip_concept_words else None)


def build_set_of(cfg, cache: Path | None = None, progress: bool = True) -> dict:
    """The training set a build's settings ask for: under its caption rule, or without one."""
    rule, _ = caption_rules(cfg)
    if rule is None:
        return build_training_set(cfg.n_train, cfg.captions_per_image, cfg.seed, cfg.two_object_prob,
                                  cache=cache, progress=progress)
    return build_rule_set(cfg.n_train, cfg.captions_per_image, cfg.seed, rule, cfg.two_object_prob,
                          cache=cache, progress=progress)


def build_clip_set_of(cfg, training_set: dict, cache: Path | None = None, progress: bool = True) -> dict:
    """What the build's CLIP reads: `training_set` itself, or (with `clip_concept_words`) its
    pictures with every second caption naming stars and pink by their own words."""
    rule, said = caption_rules(cfg)
    if said is None:
        return training_set
    return build_rule_set(cfg.n_train, cfg.captions_per_image, cfg.seed, rule, cfg.two_object_prob,
                          concept_rule=said, cache=cache, progress=progress, pictures=training_set["images"])
