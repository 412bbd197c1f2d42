"""Procedural pictures of coloured shapes, with captions and structured labels.

Every picture is 64x64 RGB: one or two shapes (circle, square, triangle, and star on
request) of a given colour, size and position, on a plain background. The caption says
what is in it, in varied phrasings:

    "a red circle"
    "a red circle on a white background"
    "a small blue square in the top left"
    "a red circle and a blue square"

Pictures are deterministic: picture `index` of a set with seed `seed` is always the same,
whatever else is generated. The star is held out: base training data never contains it
(`BASE_SHAPES`), so the fine-tuning lessons can teach it later (`shapes=("star",)`).

    >>> images, captions, labels = make_dataset(8, seed=0)
    >>> images.shape, images.dtype
    ((8, 64, 64, 3), dtype('uint8'))
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

import numpy as np
from matplotlib.path import Path as _PolygonPath

from sdcourse.arguments import choice, real_number

IMAGE_SIZE = 64
SUPERSAMPLE = 4  # draw at 4x resolution, then average: smooth (anti-aliased) edges

COLOURS = {
    "red": (220, 30, 35),
    "green": (35, 165, 55),
    "blue": (35, 70, 225),
    "yellow": (245, 215, 30),
    "purple": (140, 45, 185),
    "orange": (250, 135, 20),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
BACKGROUNDS = {**COLOURS, "gray": (128, 128, 128)}
# A colour word no caption uses. The VAE sees colours like it (`sample_any_scene` draws any
# (r, g, b)), so the model can draw it; a LoRA can then teach the word.
HELD_OUT_COLOURS = {"pink": (240, 110, 170)}
BASE_SHAPES = ("circle", "square", "triangle")
HELD_OUT_SHAPES = ("star",)
ALL_SHAPES = BASE_SHAPES + HELD_OUT_SHAPES
SIZES = ("small", "large")
POSITIONS = {
    "top left": (16, 16),
    "top right": (48, 16),
    "bottom left": (16, 48),
    "bottom right": (48, 48),
    "center": (32, 32),
}
RADIUS = {"small": (6.0, 9.0), "large": (13.0, 16.0)}  # half-width range in pixels
JITTER = 2.5  # random shift of a shape's centre, in pixels

PREFIXES = ("a picture of ", "a photo of ", "an image of ", "a drawing of ")
POSITION_WORDS = ("in the", "at the")


@dataclass
class ShapeObject:
    """One shape in a picture. `center` (x, y) and `radius` are in pixels."""

    colour: str
    shape: str
    size: str
    position: str
    center: tuple[float, float] = (32.0, 32.0)
    radius: float = 10.0


@dataclass
class Scene:
    """Everything needed to draw a picture and to check a generated one."""

    objects: list[ShapeObject]
    background: str
    caption: str = ""
    mentioned: list[dict] = field(default_factory=list)  # what the caption states, per object

    def labels(self) -> dict:
        """Plain-dict labels: caption, background, and per object colour/shape/size/position."""
        return {
            "caption": self.caption,
            "background": self.background,
            "objects": [asdict(o) for o in self.objects],
            "mentioned": self.mentioned,
        }


def _place(rng, size, position):
    lo, hi = RADIUS[size]
    radius = float(rng.uniform(lo, hi))
    cx, cy = POSITIONS[position]
    cx += rng.uniform(-JITTER, JITTER)
    cy += rng.uniform(-JITTER, JITTER)
    margin = radius + 1.0
    cx = float(np.clip(cx, margin, IMAGE_SIZE - margin))
    cy = float(np.clip(cy, margin, IMAGE_SIZE - margin))
    return (cx, cy), radius


def make_scene(objects, background="white", rng=None, caption=None):
    """A scene with exactly the given objects.

    objects: list of dicts with keys colour, shape and optional size ("large") and
        position ("center"). background: a colour name from BACKGROUNDS.
    The caption defaults to the plain "a red circle and a blue square on a white background".
    """
    rng = rng if rng is not None else np.random.default_rng(0)
    choice("background", background, BACKGROUNDS)
    built = []
    for spec in objects:
        colour, shape = spec["colour"], spec["shape"]
        size, position = spec.get("size", "large"), spec.get("position", "center")
        choice("colour", colour, COLOURS)
        choice("shape", shape, ALL_SHAPES)
        choice("size", size, SIZES)
        choice("position", position, POSITIONS)
        center, radius = _place(rng, size, position)
        built.append(ShapeObject(colour, shape, size, position, center, radius))
    mentioned = [{"colour": o.colour, "shape": o.shape} for o in built]
    if caption is None:
        caption = " and ".join(_noun_phrase(o.colour, o.shape) for o in built)
        caption += f" on {article(background)} {background} background"
    return Scene(built, background, caption, mentioned)


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _noun_phrase(colour, shape, size=None):
    words = ([size] if size else []) + ([colour] if colour else []) + [shape]
    return f"{article(words[0])} {' '.join(words)}"


def _describe(rng, obj: ShapeObject, say_size: bool, say_position: bool):
    phrase = _noun_phrase(obj.colour, obj.shape, obj.size if say_size else None)
    if say_position:
        phrase += f" {POSITION_WORDS[rng.integers(len(POSITION_WORDS))]} {obj.position}"
    return phrase


def sample_scene(rng, shapes=BASE_SHAPES, n_objects=None, two_object_prob=0.3, rule=None) -> Scene:
    """A random scene and a random caption for it.

    shapes: the shapes that may appear (default BASE_SHAPES, without the held-out star).
    n_objects: 1, 2, or None for random (two objects with probability two_object_prob).
    rule: a `CaptionRule`, or None. With a rule, held-out shapes and colours appear too, at
    the rule's shares, and the caption names them as the rule says (`shapes` is then unused).
    Object colour always differs from the background colour.
    """
    for s in shapes:
        choice("shapes", s, ALL_SHAPES)
    if n_objects is None:
        n_objects = 2 if rng.random() < two_object_prob else 1
    if n_objects not in (1, 2):
        raise ValueError(f"n_objects={n_objects!r}; allowed: 1, 2 or None")

    background = list(BACKGROUNDS)[rng.integers(len(BACKGROUNDS))]
    colours = [c for c in COLOURS if c != background]
    positions = list(POSITIONS)
    if n_objects == 2:
        chosen_positions = [positions[i] for i in rng.choice(len(positions), 2, replace=False)]
    else:
        chosen_positions = [positions[rng.integers(len(positions))]]
    objects = []
    for position in chosen_positions:
        if rule is None:
            colour = colours[rng.integers(len(colours))]
            shape = shapes[rng.integers(len(shapes))]
        else:
            colour, shape = rule.pick_colour(rng, colours), rule.pick_shape(rng)
        # Two shapes with one in the centre must both be small, or they would overlap.
        if n_objects == 2 and "center" in chosen_positions:
            size = "small"
        else:
            size = SIZES[rng.integers(len(SIZES))]
        center, radius = _place(rng, size, position)
        objects.append(ShapeObject(colour, shape, size, position, center, radius))

    caption, mentioned = describe(objects, background, rng, rule)
    return Scene(objects, background, caption, mentioned)


def describe(objects, background, rng, rule=None):
    """A random caption for these objects: (caption, what it mentions per object).

    Colour and shape are always said; size, position, background and a lead-in such as
    "a picture of" only sometimes, so the model sees many phrasings of the same picture.
    With a `CaptionRule`, the shape is sometimes (a held-out shape always) said with the class
    word, and the colour sometimes (a held-out colour always) left out.
    """
    parts, mentioned = [], []
    if rule is not None:
        objects = rule.as_said(objects, rng)
    for obj in objects:
        say_size, say_position = rng.random() < 0.4, rng.random() < 0.4
        parts.append(_describe(rng, obj, say_size, say_position))
        info = {"colour": obj.colour, "shape": obj.shape}
        if say_size:
            info["size"] = obj.size
        if say_position:
            info["position"] = obj.position
        mentioned.append(info)
    caption = " and ".join(parts)
    if rng.random() < 0.4:
        caption += f" on {article(background)} {background} background"
    if rng.random() < 0.15:
        caption = PREFIXES[rng.integers(len(PREFIXES))] + caption
    return caption, mentioned


def recaption(scene: Scene, rng, rule=None) -> str:
    """Another random caption for the same scene (a different phrasing of the same picture)."""
    return describe(scene.objects, scene.background, rng, rule)[0]


def _shape_mask(obj: ShapeObject, xs, ys):
    """Boolean mask of the shape on a grid of pixel-centre coordinates."""
    cx, cy = obj.center
    r = obj.radius
    if obj.shape == "circle":
        return (xs - cx) ** 2 + (ys - cy) ** 2 <= r * r
    if obj.shape == "square":
        half = r * 0.86  # about the same area as the circle
        return (np.abs(xs - cx) <= half) & (np.abs(ys - cy) <= half)
    if obj.shape == "triangle":
        verts = [(cx, cy - r), (cx + r * 0.98, cy + r * 0.75), (cx - r * 0.98, cy + r * 0.75)]
    elif obj.shape == "star":
        angles = -np.pi / 2 + np.arange(10) * np.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, r * 1.08, r * 0.45)
        verts = list(zip(cx + radii * np.cos(angles), cy + radii * np.sin(angles)))
    else:
        raise ValueError(f"shape={obj.shape!r} is not allowed; choose one of {list(ALL_SHAPES)}")
    points = np.stack([xs.ravel(), ys.ravel()], axis=1)
    return _PolygonPath(verts).contains_points(points).reshape(xs.shape)


_GRID_CACHE = {}


def _grid(size: int, factor: int):
    key = (size, factor)
    if key not in _GRID_CACHE:
        coords = (np.arange(size * factor) + 0.5) / factor
        _GRID_CACHE[key] = np.meshgrid(coords, coords)
    return _GRID_CACHE[key]


def rgb(colour) -> tuple:
    """The (r, g, b) of a colour: a name from BACKGROUNDS (the palette and gray), or (r, g, b) itself."""
    if isinstance(colour, str):
        choice("colour", colour, BACKGROUNDS)
        return BACKGROUNDS[colour]
    if len(colour) != 3 or not all(0 <= c <= 255 for c in colour):
        raise ValueError(f"colour={colour!r}: give a colour name or an (r, g, b) tuple of numbers in [0, 255]")
    return tuple(colour)


def render(scene: Scene, size: int = IMAGE_SIZE) -> np.ndarray:
    """Draw a scene: uint8 array (size, size, 3). Shapes are drawn in order, last on top."""
    factor = SUPERSAMPLE
    xs, ys = _grid(size, factor)
    scale = size / IMAGE_SIZE
    canvas = np.empty((size * factor, size * factor, 3), dtype=np.float32)
    canvas[:] = rgb(scene.background)
    for obj in scene.objects:
        scaled = ShapeObject(obj.colour, obj.shape, obj.size, obj.position,
                             (obj.center[0] * scale, obj.center[1] * scale), obj.radius * scale)
        colour = HELD_OUT_COLOURS.get(obj.colour) if isinstance(obj.colour, str) else None
        canvas[_shape_mask(scaled, xs, ys)] = colour or rgb(obj.colour)
    image = canvas.reshape(size, factor, size, factor, 3).mean(axis=(1, 3))
    return np.round(image).astype(np.uint8)


OUTLINE_WIDTH = 2.0  # pixels at 64 px: about what a Canny edge map of such a picture shows


def render_outline(scene: Scene, size: int = IMAGE_SIZE, width: float = OUTLINE_WIDTH) -> np.ndarray:
    """The outlines of a scene's objects, white on black: uint8 (size, size, 3), a control
    picture for a ControlNet. Each outline is `width` pixels wide, centred on the shape's edge
    (half inside, half outside), drawn at SUPERSAMPLE times the size and averaged down, so its
    edges are anti-aliased as `render` draws shapes. Colour and background are not drawn."""
    from scipy.ndimage import binary_dilation, binary_erosion

    factor = SUPERSAMPLE
    xs, ys = _grid(size, factor)
    scale = size / IMAGE_SIZE
    half = max(1, round(width * scale * factor / 2))  # supersampled pixels on each side of the edge
    # A disc of this radius grows and shrinks the mask by about `half` (the ring comes out within 3% of `width`).
    disc = np.hypot(*np.mgrid[-half : half + 1, -half : half + 1]) <= half + 0.25
    canvas = np.zeros((size * factor, size * factor), dtype=np.float32)
    for obj in scene.objects:
        scaled = ShapeObject(obj.colour, obj.shape, obj.size, obj.position,
                             (obj.center[0] * scale, obj.center[1] * scale), obj.radius * scale)
        mask = _shape_mask(scaled, xs, ys)
        canvas[binary_dilation(mask, disc) & ~binary_erosion(mask, disc, border_value=0)] = 255
    image = canvas.reshape(size, factor, size, factor).mean(axis=(1, 3))
    return np.repeat(np.round(image).astype(np.uint8)[..., None], 3, axis=-1)


def sample_any_scene(rng, palette_share: float = 0.5, two_object_prob: float = 0.35) -> Scene:
    """A scene from a wider world than the captioned training set, for the VAE.

    Stable Diffusion's autoencoder is generic: it reconstructs things the U-Net was never
    taught. So the VAE sees every shape (the held-out star too), sizes between and around the
    named ones, positions anywhere, and colours beyond the palette (an (r, g, b) tuple in
    `colour` or `background`), on top of the named ones. There is no caption.
    """

    def any_colour(avoid=None):
        """A palette colour or a random (r, g, b), clearly different from `avoid`."""
        while True:
            if rng.random() < palette_share:
                colour = list(BACKGROUNDS)[rng.integers(len(BACKGROUNDS))]
            else:
                colour = tuple(int(c) for c in rng.integers(0, 256, 3))
            if avoid is None or np.abs(np.subtract(rgb(colour), rgb(avoid))).sum() > 120:
                return colour

    background = any_colour()
    objects = []
    for _ in range(2 if rng.random() < two_object_prob else 1):
        shape = ALL_SHAPES[rng.integers(len(ALL_SHAPES))]
        size = SIZES[rng.integers(len(SIZES))]
        if rng.random() < 0.5:  # a named position and size, as in the captioned set
            position = list(POSITIONS)[rng.integers(len(POSITIONS))]
            center, radius = _place(rng, size, position)
        else:  # anywhere, at any size from a little below "small" to a little above "large"
            radius = float(rng.uniform(RADIUS["small"][0] - 1, RADIUS["large"][1] + 2))
            center = tuple(float(rng.uniform(radius + 1, IMAGE_SIZE - radius - 1)) for _ in range(2))
            size = "small" if radius < (RADIUS["small"][1] + RADIUS["large"][0]) / 2 else "large"
            position = min(POSITIONS, key=lambda p: np.hypot(*np.subtract(POSITIONS[p], center)))
        objects.append(ShapeObject(any_colour(avoid=background), shape, size, position, center, radius))
    return Scene(objects, background)


CLASS_WORD = "shape"  # what a caption may call any shape; the only word the held-out shapes are drawn under


@dataclass(frozen=True)
class CaptionRule:
    """How captions name the held-out concepts: under a class word, never by their own word.

    Stable Diffusion's U-Net has drawn nearly everything under loose words ("a dog", "a logo");
    personalization then finds that drawing and gives it a word. Under this rule the U-Net
    draws stars and pink too, but only under words that cover the known concepts as well:

    - class_share: the share of known-shape mentions that say "shape" instead of the shape's
      name. Stars appear at the share that makes each of the four shapes called "shape"
      equally often (`star_share`), and are always called "shape".
    - held_out_weight: how many times as often as each known shape a star is called "shape"
      (1: equally often). Above 1, stars are a larger part of what "shape" shows.
    - known_weights: each known shape's share of "shape", times class_share (circle, square,
      triangle; all 1: each class_share). The model does not draw "shape" in the proportions
      it was shown, so these let a rule shown lean against what it draws.
    - colourless_share: the share of captions that leave the colour out. Pink objects appear
      at the share that makes each of the nine colours left out equally often
      (`pink_share`), and only in such captions.
    - concept_words: name the held-out concepts by their own word instead ("star", "pink"):
      for captions shown to the text encoder only, never to the U-Net.
    """

    class_share: float = 0.3
    colourless_share: float = 0.0
    concept_words: bool = False
    held_out_weight: float = 1.0
    known_weights: tuple = (1.0, 1.0, 1.0)

    def __post_init__(self):
        for name in ("class_share", "colourless_share"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
                raise ValueError(f"{name}={value!r}; it must be a number from 0 to 1")
        real_number("held_out_weight", self.held_out_weight, 0, low_open=True,
                    meaning="1: as often as each known shape")
        weights = tuple(self.known_weights)
        if len(weights) != len(BASE_SHAPES) or any(isinstance(w, bool) or not isinstance(w, (int, float)) or w < 0
                                                   or w * self.class_share > 1 for w in weights):
            raise ValueError(f"known_weights={self.known_weights!r}; it must be {len(BASE_SHAPES)} numbers "
                             f"({', '.join(BASE_SHAPES)}), each at least 0 and at most 1 / class_share")
        object.__setattr__(self, "known_weights", tuple(float(w) for w in weights))

    def class_share_of(self, shape: str) -> float:
        """The share of `shape`'s mentions that say "shape" (a known shape)."""
        return self.class_share * self.known_weights[BASE_SHAPES.index(shape)]

    @property
    def star_share(self) -> float:
        """Share of objects that are stars: s = w p (1 - s) / 3, w times each known shape's
        "shape" count on average (w = held_out_weight, p = class_share times the mean known weight)."""
        weighted = self.held_out_weight * self.class_share * sum(self.known_weights) / len(BASE_SHAPES)
        return weighted / (len(BASE_SHAPES) + weighted)

    @property
    def pink_share(self) -> float:
        """Share of objects that are pink: q (1 - t) / 8, each palette colour's colourless count."""
        return self.colourless_share / (len(COLOURS) + self.colourless_share)

    def pick_shape(self, rng) -> str:
        if rng.random() < self.star_share:
            return HELD_OUT_SHAPES[0]
        return BASE_SHAPES[rng.integers(len(BASE_SHAPES))]

    def pick_colour(self, rng, colours) -> str:
        if rng.random() < self.pink_share:
            return next(iter(HELD_OUT_COLOURS))
        return colours[rng.integers(len(colours))]

    def as_said(self, objects, rng) -> list:
        """The objects as one caption names them: "shape" for a shape said with the class word,
        "" for a colour left out. Draws the same numbers from rng whatever the objects are."""
        colourless = rng.random() < self.colourless_share
        general = [rng.random() < (self.class_share if o.shape in HELD_OUT_SHAPES else self.class_share_of(o.shape))
                   for o in objects]
        if not self.concept_words:  # a held-out colour is only ever left out
            colourless = colourless or any(o.colour in HELD_OUT_COLOURS for o in objects)
        said = []
        for obj, class_word in zip(objects, general):
            if obj.shape in HELD_OUT_SHAPES:
                shape = obj.shape if self.concept_words else CLASS_WORD
            else:
                shape = CLASS_WORD if class_word else obj.shape
            keep_colour = not colourless or (self.concept_words and obj.colour in HELD_OUT_COLOURS)
            said.append(replace(obj, shape=shape, colour=obj.colour if keep_colour else ""))
        return said


def rule_scene_at(index: int, seed: int, rule: CaptionRule, two_object_prob=0.3) -> Scene:
    """Scene number `index` of a set drawn under `rule` (the same every time)."""
    return sample_scene(np.random.default_rng([seed, index, 3]), two_object_prob=two_object_prob, rule=rule)


CONTRASTS = ("shape", "position", "size", "binding")


def contrast_pair(rng, shapes=BASE_SHAPES) -> tuple[Scene, Scene]:
    """Two scenes that differ in one thing, which both captions state.

    The difference is the shape, the position or the size of a single object, or, with two
    objects, which colour goes with which shape ("a red circle and a blue square" against "a
    blue circle and a red square"). Everything else, the caption's wording included, is the
    same. A text encoder trained contrastively on such pairs must read that word to tell the
    pictures apart; on random pictures, colour alone tells most of them apart.
    """
    kind = CONTRASTS[rng.integers(len(CONTRASTS))]
    background = list(BACKGROUNDS)[rng.integers(len(BACKGROUNDS))]
    colours = [c for c in COLOURS if c != background]

    def pick(options, avoid=None):
        options = [o for o in options if o != avoid]
        return options[rng.integers(len(options))]

    if kind == "binding":
        p1, p2 = (list(POSITIONS)[i] for i in rng.choice(len(POSITIONS), 2, replace=False))
        size = "small" if "center" in (p1, p2) else pick(SIZES)
        c1 = pick(colours)
        c2 = pick(colours, avoid=c1)
        s1 = pick(shapes)
        s2 = pick(shapes, avoid=s1)
        specs = [[(c1, s1, size, p1), (c2, s2, size, p2)], [(c2, s1, size, p1), (c1, s2, size, p2)]]
    else:
        colour, shape, size, position = pick(colours), pick(shapes), pick(SIZES), pick(list(POSITIONS))
        changed = {"shape": (colour, pick(shapes, avoid=shape), size, position),
                   "position": (colour, shape, size, pick(list(POSITIONS), avoid=position)),
                   "size": (colour, shape, pick(SIZES, avoid=size), position)}[kind]
        specs = [[(colour, shape, size, position)], [changed]]
    say_size = kind == "size" or rng.random() < 0.3
    say_position = kind == "position" or rng.random() < 0.3
    word = POSITION_WORDS[rng.integers(len(POSITION_WORDS))]
    say_background = rng.random() < 0.4
    scenes = []
    for objects in specs:
        built, phrases = [], []
        for colour, shape, size, position in objects:
            center, radius = _place(rng, size, position)
            built.append(ShapeObject(colour, shape, size, position, center, radius))
            phrase = _noun_phrase(colour, shape, size if say_size else None)
            phrases.append(phrase + (f" {word} {position}" if say_position else ""))
        caption = " and ".join(phrases)
        if say_background:
            caption += f" on {article(background)} {background} background"
        mentioned = [{"colour": o.colour, "shape": o.shape, **({"size": o.size} if say_size else {}),
                      **({"position": o.position} if say_position else {})} for o in built]
        scenes.append(Scene(built, background, caption, mentioned))
    return scenes[0], scenes[1]


def scene_at(index: int, seed: int = 0, shapes=BASE_SHAPES, n_objects=None, two_object_prob=0.3) -> Scene:
    """Scene number `index` of the set with this seed (the same every time)."""
    rng = np.random.default_rng([seed, index])
    return sample_scene(rng, shapes=shapes, n_objects=n_objects, two_object_prob=two_object_prob)


def make_dataset(n: int, seed: int = 0, shapes=BASE_SHAPES, n_objects=None, two_object_prob=0.3,
                 start: int = 0):
    """`n` pictures: (images uint8 (n, 64, 64, 3), captions list[str], labels list[dict]).

    Deterministic: the same (seed, index) always gives the same picture and caption.
    """
    if n < 0:
        raise ValueError(f"n={n!r}; it must be 0 or more")
    images = np.empty((n, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    captions, labels = [], []
    for i in range(n):
        scene = scene_at(start + i, seed, shapes, n_objects, two_object_prob)
        images[i] = render(scene)
        captions.append(scene.caption)
        labels.append(scene.labels())
    return images, captions, labels


def evaluation_prompts(n: int = 64, seed: int = 1234, shapes=BASE_SHAPES) -> list[dict]:
    """`n` single-object prompts in varied phrasings, each with the colour and shape it asks for.

    Colour/shape pairs are cycled so every combination appears about equally often.
    Returns dicts with keys prompt, colour, shape.
    """
    rng = np.random.default_rng(seed)
    pairs = [(c, s) for s in shapes for c in COLOURS]
    order = rng.permutation(len(pairs))
    prompts = []
    for i in range(n):
        colour, shape = pairs[order[i % len(pairs)]]
        scene = sample_scene(rng, shapes=(shape,), n_objects=1)
        obj = scene.objects[0]
        obj.colour = colour
        background = scene.background if scene.background != colour else "gray"
        text = _describe(rng, obj, rng.random() < 0.4, rng.random() < 0.4)
        if rng.random() < 0.4:
            text += f" on {article(background)} {background} background"
        prompts.append({"prompt": text, "colour": colour, "shape": shape})
    return prompts
