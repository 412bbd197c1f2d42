"""The pictures a fine-tuning run learns from, with their captions.

- `concept_pictures`: a shape or colour the embedded model was never taught ("star", "pink"),
  drawn by the course's shapes generator;
- `prior_pictures`: what the embedded model already knows, mixed into batches so that the new
  word does not overwrite the old ones;
- `folder_pictures`: a folder of your own pictures, each with a caption.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..arguments import choice
from ..data import shapes
from ..images import eight_bit_picture

CONCEPTS = shapes.HELD_OUT_SHAPES + tuple(shapes.HELD_OUT_COLOURS)  # never taught to the embedded model
# Each concept's class, by the word the embedded model's captions cover it with: a star is one of
# the things "shape" names; pink is one of the colours of a caption that names none, so it has no
# word. Written after the concept's word ("a red star shape"), as DreamBooth writes "a sks dog",
# the class word brings the drawing the U-Net already has, and the concept's word has only to pick
# the concept out of it.
CONCEPT_CLASS_WORDS = {"star": shapes.CLASS_WORD, "pink": ""}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def add_data_arguments(parser, concept_help: str):
    """The fine-tuning commands' data and model flags: --concept or --images (one of them), --model."""
    data = parser.add_mutually_exclusive_group(required=True)
    data.add_argument("--concept", choices=CONCEPTS, help=concept_help)
    data.add_argument("--images", help="a folder of pictures with captions (metadata.jsonl or .txt files)")
    parser.add_argument("--model", default=None, help="a diffusers SD 1.x/2.x folder (default: the embedded model)")


def concept_phrase(word: str, class_word: str = "") -> str:
    """What captions and prompts say where the subject goes: its word, then its class word, if any."""
    return " ".join(w for w in (word, class_word) if w)


def concept_pictures(concept: str, n: int, seed: int = 0, token: str | None = None):
    """`n` one-object pictures of a concept the embedded model was never taught, uint8
    (n, 64, 64, 3), and their captions, the concept's word replaced by `token` if given.

    A held-out shape ("star"): stars of every colour, size and position. A held-out colour
    ("pink"): circles, squares and triangles in that colour.
    """
    choice("concept", concept, CONCEPTS)
    if concept in shapes.HELD_OUT_SHAPES:
        images, captions, _ = shapes.make_dataset(n, seed=seed, shapes=(concept,), n_objects=1)
    else:
        rng = np.random.default_rng([seed, 5])
        images = np.empty((n, shapes.IMAGE_SIZE, shapes.IMAGE_SIZE, 3), dtype=np.uint8)
        captions = []
        for i in range(n):
            scene = shapes.sample_scene(rng, n_objects=1)
            obj = scene.objects[0]
            obj.colour = concept  # named in the caption ...
            captions.append(shapes.describe([obj], scene.background, rng)[0])
            obj.colour = shapes.HELD_OUT_COLOURS[concept]  # ... drawn as its (r, g, b)
            images[i] = shapes.render(scene)
    if token:
        captions = [caption.replace(concept, token) for caption in captions]
    return images, list(captions)


def prior_pictures(n: int, seed: int = 0):
    """`n` pictures of what the embedded model already knows (its own training distribution:
    circles, squares and triangles in the named colours), uint8 (n, 64, 64, 3), and their captions.
    Mixed into a concept's batches, they keep the adapter from overwriting the old words."""
    images, captions, _ = shapes.make_dataset(n, seed=seed + 1, shapes=shapes.BASE_SHAPES)
    return images, list(captions)


def _utf8_text(path: Path) -> str:
    """The text of a caption file, which must be UTF-8; otherwise an error naming the file and the line."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")  # a byte-order mark, as some editors write, is dropped
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise ValueError(f"{path}, line {line}: not UTF-8 text (byte {raw[error.start]:#04x}); save the file "
                         "as UTF-8 (most editors offer it under 'Save as' or 'Encoding')") from None


def _caption_table(folder: Path) -> dict[str, str]:
    """file name -> caption, from metadata.jsonl, or else from a .txt beside each picture.

    Each line of metadata.jsonl is {"file_name": "...", "text": "..."}, both strings, one line per
    picture: a caption that is null, a number or a list, or a picture listed twice, is refused."""
    table, first_line = {}, {}
    metadata = folder / "metadata.jsonl"
    if not metadata.exists():
        return table
    for number, line in enumerate(_utf8_text(metadata).splitlines(), 1):
        if not line.strip():
            continue
        where = f"{metadata}, line {number}"
        try:
            entry = json.loads(line)
            name, text = entry["file_name"], entry["text"]
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise ValueError(f"{where}: expected {{\"file_name\": ..., \"text\": ...}}, "
                             f"got {line.strip()[:80]!r} ({error})") from None
        for key, value in (("file_name", name), ("text", text)):
            if not isinstance(value, str):
                raise ValueError(f"{where}: \"{key}\" is {json.dumps(value)[:80]}; it must be a string in quotes")
        if name in table:
            raise ValueError(f"{where}: {name} is listed again (first on line {first_line[name]}); "
                             "give each picture one line")
        table[name], first_line[name] = text, number
    return table


def folder_pictures(folder, resolution: int):
    """The pictures of `folder` (resized so the short side is `resolution`, centre-cropped to a
    square) and their captions. A picture without a caption, a caption without a picture, or
    an unreadable picture stops the run, naming the file: nothing is skipped silently."""
    from PIL import Image, UnidentifiedImageError

    folder = Path(folder)
    if not folder.is_dir():
        raise NotADirectoryError(f"--images {str(folder)!r} is not a folder of pictures")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"--images {folder}: no pictures ({', '.join(IMAGE_SUFFIXES)}) in it")
    table = _caption_table(folder)
    unknown = sorted(set(table) - {p.name for p in files})
    if unknown:
        raise FileNotFoundError(f"{folder / 'metadata.jsonl'} names {unknown[0]}, which is not a picture in {folder}")
    images, captions = [], []
    for path in files:
        if path.name in table:
            caption = table[path.name]
        elif path.with_suffix(".txt").exists():
            caption = _utf8_text(path.with_suffix(".txt")).strip()
        else:
            raise FileNotFoundError(f"{path} has no caption: add a line for it to metadata.jsonl, or write it "
                                    f"in {path.with_suffix('.txt').name}")
        if not caption:
            raise ValueError(f"the caption of {path} is empty")
        try:
            with Image.open(path) as picture:
                picture = eight_bit_picture(picture, str(path)).convert("RGB")
        except (UnidentifiedImageError, OSError) as error:
            raise ValueError(f"{path} cannot be read as a picture ({error})") from None
        scale = resolution / min(picture.size)
        w, h = max(resolution, round(picture.width * scale)), max(resolution, round(picture.height * scale))
        picture = picture.resize((w, h), Image.Resampling.BICUBIC)
        left, top = (w - resolution) // 2, (h - resolution) // 2
        images.append(np.asarray(picture.crop((left, top, left + resolution, top + resolution))))
        captions.append(caption)
    return np.stack(images), captions
